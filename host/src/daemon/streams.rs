//! Streams: the deltas of streamed attempts, from the component to their readers and the
//! store.
//!
//! An attempt that streams opens a [`Live`] stream here. The component's `stream.emit`
//! appends each delta to it (serialized once, under a short lock) and wakes its readers; it
//! never waits for one. The flusher stores what is new of every live stream as one chunk per
//! stream about every [`FLUSH_EVERY`] (sooner past [`FLUSH_BYTES`]), all in one write, so
//! that another worker's API can serve the stream from the store, and so that it can be
//! replayed after the end until `[streams] keep_secs` passes. An attempt's end stores the
//! rest before the completer writes the execution's end: a reader that sees the end has
//! every chunk.
//!
//! A reader of a stream live here reads it from memory, at its own pace (see
//! `api::streams`): a slow one lags behind and is told, and the lane goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::model::{Delta, ExecutionId, now_ms};
use crate::plugin::DeltaSink;
use crate::store::{Queue, StreamChunk};

/// How often the new deltas of live streams are stored.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A live stream with this many bytes not yet stored is flushed at once.
pub const FLUSH_BYTES: usize = 16 * 1024;

/// The most chunks kept to write again after a failed write.
const MAX_UNWRITTEN: usize = 512;

/// How often stored chunks older than `keep_secs` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The streams of the attempts running here.
pub struct Streams {
    live: Mutex<HashMap<ExecutionId, Arc<Live>>>,
    /// Wakes the flusher: a stream opened, ended, or has much unstored.
    flush_now: Notify,
    /// Chunks a write failed to store, written again with the next round's.
    unwritten: Mutex<Vec<StreamChunk>>,
    /// Wakes the readers waiting for the stream of an execution to open here, by
    /// execution: an opening wakes only its own readers.
    opened: Mutex<HashMap<ExecutionId, Arc<Notify>>>,
}

/// A reader's wait for the stream of one execution to open here (see [`Streams::watch`]).
pub struct Watch<'a> {
    streams: &'a Streams,
    id: ExecutionId,
    notify: Arc<Notify>,
}

impl Watch<'_> {
    /// Resolves when the stream opens (register it before looking, then await it).
    pub fn opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut opened = self
            .streams
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's and this one: no other reader waits for it.
        if Arc::strong_count(&self.notify) <= 2 {
            opened.remove(&self.id);
        }
    }
}

/// The stream of one attempt running here.
pub struct Live {
    pub id: ExecutionId,
    /// The attempt's number, from 1; a retry opens a new stream.
    pub attempt: i64,
    /// The most bytes of deltas it keeps (the sandbox's `max_output_bytes`): a component
    /// that streams without end must not fill the host's memory.
    cap: usize,
    state: Mutex<LiveState>,
    /// Wakes its readers: a delta came, or it ended.
    changed: Notify,
}

#[derive(Default)]
struct LiveState {
    /// Every delta of the attempt so far, as JSON.
    deltas: Vec<Arc<str>>,
    /// How many of them the flusher has taken to store.
    stored: usize,
    /// Bytes of the deltas not yet taken.
    unstored_bytes: usize,
    /// Bytes of every delta kept.
    bytes: usize,
    ended: bool,
    /// Told when the end's flush is stored.
    flushed: Vec<oneshot::Sender<()>>,
}

/// What a reader got from a live stream.
pub struct Read {
    pub deltas: Vec<Arc<str>>,
    /// How many deltas the stream holds in all.
    pub total: usize,
    pub ended: bool,
}

impl Live {
    /// The deltas from `index` on (at most `max`), and whether the attempt ended.
    pub fn read(&self, index: usize, max: usize) -> Read {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = index.min(state.deltas.len());
        let to = state.deltas.len().min(from.saturating_add(max));
        Read {
            deltas: state.deltas[from..to].to_vec(),
            total: state.deltas.len(),
            ended: state.ended,
        }
    }

    /// Resolves after the next change (register it before reading, then await it).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn push(&self, delta: &Delta) -> bool {
        let Ok(json) = serde_json::to_string(delta) else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.ended {
            return false;
        }
        if state.bytes + json.len() > self.cap {
            // The answer is capped the same way when it returns (`OutputTooLarge`).
            if state.bytes <= self.cap {
                state.bytes = self.cap + 1;
                tracing::warn!(
                    id = self.id,
                    "the attempt's stream passed {} bytes (sandbox.max_output_bytes): \
                     its further deltas are dropped",
                    self.cap
                );
            }
            return false;
        }
        state.bytes += json.len();
        state.unstored_bytes += json.len();
        state.deltas.push(Arc::from(json));
        let urgent = state.unstored_bytes >= FLUSH_BYTES;
        drop(state);
        self.changed.notify_waiters();
        urgent
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            live: Mutex::new(HashMap::new()),
            flush_now: Notify::new(),
            unwritten: Mutex::new(Vec::new()),
            opened: Mutex::new(HashMap::new()),
        }
    }
}

impl Streams {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the stream of attempt `attempt` of `id`, which keeps at most `cap` bytes of
    /// deltas, replacing any earlier one here.
    pub fn open(self: &Arc<Self>, id: ExecutionId, attempt: i64, cap: usize) -> Arc<Live> {
        let live = Arc::new(Live {
            id,
            attempt,
            cap,
            state: Mutex::new(LiveState::default()),
            changed: Notify::new(),
        });
        if let Some(old) = self.map().insert(id, live.clone()) {
            old.end_now();
        }
        self.flush_now.notify_one();
        let waiting = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(notify) = waiting {
            notify.notify_waiters();
        }
        live
    }

    /// Where the component's deltas for `live` go.
    pub fn sink(self: &Arc<Self>, live: &Arc<Live>) -> DeltaSink {
        let (streams, live) = (Arc::downgrade(self), live.clone());
        Arc::new(move |delta: Delta| {
            if live.push(&delta)
                && let Some(streams) = streams.upgrade()
            {
                streams.flush_now.notify_one();
            }
        })
    }

    /// The stream of `id` live here, if its attempt runs here.
    pub fn live(&self, id: ExecutionId) -> Option<Arc<Live>> {
        self.map().get(&id).cloned()
    }

    /// A reader's wait for the stream of `id` to open here.
    pub fn watch(&self, id: ExecutionId) -> Watch<'_> {
        let notify = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        Watch {
            streams: self,
            id,
            notify,
        }
    }

    /// Ends `live`: no more deltas are taken, and what was not stored is, before this
    /// returns (or after `wait`, whichever comes first: a store that does not answer must
    /// not hold the attempt's end).
    pub async fn end(&self, live: &Live, wait: Duration) {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = live.state.lock().unwrap_or_else(|p| p.into_inner());
            state.ended = true;
            state.flushed.push(tx);
        }
        live.changed.notify_waiters();
        self.flush_now.notify_one();
        let _ = tokio::time::timeout(wait, rx).await;
    }

    /// Stores the new deltas of every live stream, drops the ended ones, and deletes old
    /// chunks, until `stop`. One write per round for every stream.
    pub async fn flusher(
        self: Arc<Self>,
        queue: Arc<dyn Queue>,
        keep: impl Fn() -> Duration + Send + 'static,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut pruned = Instant::now() - PRUNE_EVERY;
        loop {
            let idle = self.map().is_empty();
            let woken = self.flush_now.notified();
            tokio::select! {
                _ = stop.cancelled() => {
                    // The attempts still running are taken away; store what they sent.
                    self.flush(queue.as_ref()).await;
                    return;
                }
                _ = woken => {}
                _ = tokio::time::sleep(FLUSH_EVERY), if !idle => {}
                _ = tokio::time::sleep(PRUNE_EVERY), if idle => {}
            }
            self.flush(queue.as_ref()).await;
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                let keep = i64::try_from(keep().as_millis()).unwrap_or(i64::MAX);
                if let Err(e) = queue.prune_streams(now_ms().saturating_sub(keep)).await {
                    tracing::warn!("deleting old stream chunks: {e}");
                }
            }
        }
    }

    /// One round of the flusher.
    async fn flush(&self, queue: &dyn Queue) {
        let now = now_ms();
        let mut chunks =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        let mut told = Vec::new();
        {
            let mut map = self.map();
            map.retain(|_, live| {
                let mut state = live.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.stored < state.deltas.len() {
                    let new = &state.deltas[state.stored..];
                    let mut text = String::with_capacity(state.unstored_bytes + new.len() + 2);
                    text.push('[');
                    for (i, d) in new.iter().enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str(d);
                    }
                    text.push(']');
                    chunks.push(StreamChunk {
                        execution_id: live.id,
                        attempt: live.attempt,
                        first: i64::try_from(state.stored).unwrap_or(i64::MAX),
                        count: i64::try_from(new.len()).unwrap_or(i64::MAX),
                        deltas: text,
                        at: now,
                    });
                    state.stored = state.deltas.len();
                    state.unstored_bytes = 0;
                }
                told.append(&mut state.flushed);
                !state.ended
            });
        }
        if let Err(e) = queue.append_stream(&chunks).await {
            // Written again with the next round's (at most the last few hundred: the
            // output is stored with the execution either way).
            tracing::warn!("storing {} stream chunks (tried again): {e}", chunks.len());
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
            chunks.truncate(MAX_UNWRITTEN);
            *unwritten = chunks;
        }
        for tx in told {
            let _ = tx.send(());
        }
    }
}

impl Live {
    /// Ends it without a flush: a newer attempt of the same execution replaced it.
    fn end_now(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.ended = true;
        for tx in state.flushed.drain(..) {
            let _ = tx.send(());
        }
        drop(state);
        self.changed.notify_waiters();
    }
}
