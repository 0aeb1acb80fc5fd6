//! `GET /v1/executions/{id}/stream`: an execution's deltas over SSE, live from memory when
//! its attempt runs here, else from the stored chunks (on a fleet, at most about a flush
//! behind), and replayed after the end.
//!
//! Events: `attempt` (`{"attempt": N}`: a stream begins; after a retry, the reader drops
//! what it had), `delta` (a `Delta`, with the SSE id `ATTEMPT:INDEX` that `Last-Event-ID`
//! resumes after), `lag` (`{"behind": N}`: the reader is that many deltas behind the
//! attempt) and `end` (the ended execution, as `GET /v1/executions/{id}` gives it).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use tokio::sync::mpsc;

use super::AppState;
use super::problem::Problem;
use super::wire::ExecutionOut;
use crate::model::{Execution, ExecutionId};
use crate::store::StreamPosition;

/// How long a reader woken by a delta waits for the ones right behind it.
const GATHER: Duration = Duration::from_millis(2);

/// Deltas read from a live stream in one step.
const BATCH: usize = 256;

/// A reader this many deltas behind is told so (at most once a second).
const LAG_TELL: usize = 1_000;

/// How often the stored chunks of a stream that runs on another worker are read.
const STORED_POLL: Duration = Duration::from_millis(100);

/// Stream an execution's deltas as they come, or replay them after its end.
#[utoipa::path(
    get, path = "/v1/executions/{id}/stream", tag = "executions",
    params(
        ("id" = i64, Path, description = "The execution's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`ATTEMPT:INDEX`)"),
    ),
    responses(
        (status = 200, description = "An event stream: `attempt`, `delta` (a `Delta`), `lag` and, last, `end` (the execution)", content_type = "text/event-stream", body = crate::api::wire::StreamEventDoc),
        (status = 400, description = "The id is not a number, or a bad `Last-Event-ID`", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such execution", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<axum::response::Response, Problem> {
    let from = match headers.get("last-event-id") {
        Some(value) => resume_after(value.to_str().unwrap_or_default())
            .ok_or_else(|| Problem::bad_request("`Last-Event-ID` must be ATTEMPT:INDEX"))?,
        None => StreamPosition::default(),
    };
    if state.control.queue().get(id).await?.is_none() {
        return Err(Problem::not_found(format!("no execution {id}")));
    }
    // The events as SSE text, a batch of deltas to a frame (one write, not one per delta),
    // and a comment after 15 s without one to keep the connection alive.
    let frames = futures_util::stream::unfold(spawn_follow(state, id, from), |mut rx| async {
        let frame = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Ok(Some(item)) => item.sse(),
            Ok(None) => return None,
            Err(_) => ":\n\n".to_string(),
        };
        Some((Ok::<_, Infallible>(axum::body::Bytes::from(frame)), rx))
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(frames),
    )
        .into_response())
}

/// How long a stream stays quiet before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a follower of a stream reads, in order.
pub(super) enum Item {
    /// A stream begins (a retry's starts over).
    Attempt(i64),
    /// Deltas `first`, `first + 1`, ... of attempt `attempt`, as JSON (`model::Delta`s).
    Deltas {
        attempt: i64,
        first: i64,
        jsons: Vec<Arc<str>>,
    },
    /// The reader is this many deltas behind.
    Lag(usize),
    /// The execution ended; nothing follows.
    End(Box<Execution>),
}

impl Item {
    /// Its SSE text on `/v1/executions/{id}/stream`: one event, or one per delta.
    fn sse(self) -> String {
        let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        match self {
            Item::Attempt(attempt) => event("attempt", &format!("{{\"attempt\":{attempt}}}")),
            Item::Deltas {
                attempt,
                first,
                jsons,
            } => {
                let mut text = String::with_capacity(jsons.iter().map(|j| j.len() + 40).sum());
                for (i, json) in (first..).zip(&jsons) {
                    use std::fmt::Write;
                    let _ = write!(text, "event: delta\nid: {attempt}:{i}\ndata: {json}\n\n");
                }
                text
            }
            Item::Lag(behind) => event("lag", &format!("{{\"behind\":{behind}}}")),
            Item::End(execution) => event(
                "end",
                &serde_json::to_string(&ExecutionOut::from(*execution)).unwrap_or_default(),
            ),
        }
    }
}

/// Follows the stream of `id` from `from` in a task of its own, until its end, the
/// server's stop, or the receiver's drop. A reader that falls behind holds only this task
/// back, never the lane.
pub(super) fn spawn_follow(
    state: AppState,
    id: ExecutionId,
    from: StreamPosition,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel::<Item>(64);
    let stop = state.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = follow(&state, id, from, &tx) => {}
            _ = stop.cancelled() => {}
            _ = tx.closed() => {}
        }
    });
    rx
}

/// The place after event id `ATTEMPT:INDEX`.
fn resume_after(id: &str) -> Option<StreamPosition> {
    let (attempt, index) = id.split_once(':')?;
    Some(StreamPosition {
        attempt: attempt.parse().ok()?,
        index: index.parse::<i64>().ok()?.checked_add(1)?,
    })
}

/// What the reader has: the attempt it follows, and the next delta's index.
struct Reader<'a> {
    tx: &'a mpsc::Sender<Item>,
    at: StreamPosition,
    told_lag: Option<tokio::time::Instant>,
}

impl Reader<'_> {
    async fn send(&self, item: Item) -> Result<(), ()> {
        self.tx.send(item).await.map_err(|_| ())
    }

    /// Moves to `attempt` if it is a new one, and says so.
    async fn attempt(&mut self, attempt: i64) -> Result<(), ()> {
        if attempt != self.at.attempt {
            self.at = StreamPosition { attempt, index: 0 };
            self.send(Item::Attempt(attempt)).await?;
        }
        Ok(())
    }

    /// Sends the deltas from `first` on (their JSON) that the reader has not had.
    async fn deltas(&mut self, first: i64, jsons: Vec<Arc<str>>) -> Result<(), ()> {
        let skip = usize::try_from(self.at.index.saturating_sub(first)).unwrap_or(usize::MAX);
        if skip >= jsons.len() {
            return Ok(());
        }
        let jsons: Vec<Arc<str>> = jsons.into_iter().skip(skip).collect();
        let first = first + i64::try_from(skip).unwrap_or(i64::MAX);
        let next = first + i64::try_from(jsons.len()).unwrap_or(i64::MAX);
        let attempt = self.at.attempt;
        self.send(Item::Deltas {
            attempt,
            first,
            jsons,
        })
        .await?;
        self.at.index = next;
        Ok(())
    }

    /// Tells a reader far behind by how much, at most once a second.
    async fn lag(&mut self, behind: usize) -> Result<(), ()> {
        let now = tokio::time::Instant::now();
        if behind < LAG_TELL
            || self
                .told_lag
                .is_some_and(|t| now - t < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.told_lag = Some(now);
        self.send(Item::Lag(behind)).await
    }
}

/// Sends the stream of `id` from `from` until its end (or the reader leaves).
async fn follow(
    state: &AppState,
    id: ExecutionId,
    from: StreamPosition,
    tx: &mpsc::Sender<Item>,
) -> Result<(), ()> {
    let mut reader = Reader {
        tx,
        at: from,
        told_lag: None,
    };
    let streams = state.control.streams().clone();
    let waiter = state.waiters.register(id);
    let watch = streams.watch(id);
    let shared = state.control.queue().shared();
    // The last attempt read live to its end: it stays in memory a moment after.
    let mut live_done = 0;
    loop {
        // Enabled before looking, so that a stream opening meanwhile wakes this reader.
        let opened = watch.opened();
        tokio::pin!(opened);
        opened.as_mut().enable();
        // Live here: from memory, at the reader's pace.
        let live = streams
            .live(id)
            .filter(|l| l.attempt > live_done && l.attempt >= reader.at.attempt);
        if let Some(live) = live {
            reader.attempt(live.attempt).await?;
            loop {
                let changed = live.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let index = usize::try_from(reader.at.index).unwrap_or(usize::MAX);
                let read = live.read(index, BATCH);
                reader.deltas(reader.at.index, read.deltas).await?;
                let index = usize::try_from(reader.at.index).unwrap_or(usize::MAX);
                reader.lag(read.total.saturating_sub(index)).await?;
                if index < read.total {
                    continue;
                }
                if read.ended {
                    live_done = live.attempt;
                    break;
                }
                changed.await;
                // Deltas that come back to back go out together: one write for those of
                // the next moment, not one each (an LLM's come tens of ms apart, and
                // each goes at once).
                tokio::time::sleep(GATHER).await;
            }
            continue;
        }
        // Elsewhere, or over: from the store. The end is read first, so the chunks read
        // after it are all there are (an attempt's tail is stored before its end).
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let execution = match state.control.queue().get(id).await {
            Ok(Some(e)) => e,
            _ => return Err(()),
        };
        let ended = execution.status.is_terminal();
        let chunks = match state.control.queue().read_stream(id, reader.at).await {
            Ok(chunks) => chunks,
            Err(e) => {
                tracing::warn!("execution {id}: reading its stream: {e}");
                Vec::new()
            }
        };
        let newest = chunks.iter().map(|c| c.attempt).max().unwrap_or(0);
        for chunk in chunks {
            reader.attempt(chunk.attempt).await?;
            if chunk.first > reader.at.index {
                if !ended && chunk.attempt == newest {
                    // A chunk not stored yet: read again.
                    break;
                }
                // The attempt is over, so it never will be (a write that failed): go on
                // past it.
                reader.at.index = chunk.first;
            }
            let deltas: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(&chunk.deltas).unwrap_or_default();
            let jsons = deltas.iter().map(|d| Arc::from(d.get())).collect();
            reader.deltas(chunk.first, jsons).await?;
        }
        if ended {
            reader.send(Item::End(Box::new(execution))).await?;
            return Ok(());
        }
        let poll = if shared {
            STORED_POLL
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            _ = opened => {}
            _ = notified => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_resume_after_their_delta() {
        assert_eq!(
            resume_after("2:41"),
            Some(StreamPosition {
                attempt: 2,
                index: 42
            })
        );
        assert_eq!(resume_after("2"), None);
        assert_eq!(resume_after("x:1"), None);
    }
}
