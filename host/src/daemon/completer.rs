//! The completer: writes finished attempts to the queue in batches, one transaction for
//! many rows (group commit), then frees their slots and publishes `Finished`.
//!
//! - A batch is written when `max_batch` results are queued, or when `max_wait_us` has
//!   passed since its first one; with `max_wait_us = 0` it is written at once, and what
//!   finishes during a write goes in the next one, so batches grow with the load.
//! - The backlog is bounded: when it is full, executors wait to hand over their result.
//!   Nothing is dropped.
//! - A write that fails is retried with backoff for as long as it takes. Until its result
//!   is written, an attempt's slot stays held and its row stays `running`, so a limit
//!   counted from the database and one counted from the lane agree. If the process dies
//!   first, recovery (or the lease) resumes the row and the attempt runs again; when that
//!   was its last attempt, recovery fails it as `interrupted` instead.
//! - A graceful shutdown writes every result handed over before it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::events::{Event, EventBus, Outcome};
use super::lane::{Lane, Slot};
use crate::config::CompleterConfig;
use crate::model::ExecutionId;
use crate::store::{Finish, Queue, StoreError};

/// Where the completer writes: the queue, or a stand-in in tests.
#[async_trait]
pub trait ResultSink: Send + Sync + 'static {
    /// Writes a batch in one transaction; see [`Queue::finish_many`].
    async fn write(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError>;

    /// Tells other workers that a slot of `provider` is free; see [`Queue::slot_freed`].
    async fn slot_freed(&self, provider: &str) -> Result<(), StoreError>;
}

/// The queue as a [`ResultSink`].
pub struct QueueSink(pub Arc<dyn Queue>);

#[async_trait]
impl ResultSink for QueueSink {
    async fn write(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError> {
        self.0.finish_many(owner, batch).await
    }

    async fn slot_freed(&self, provider: &str) -> Result<(), StoreError> {
        self.0.slot_freed(provider).await
    }
}

/// One attempt's end, on its way to the queue.
pub struct Completion {
    pub id: ExecutionId,
    /// The attempt's number, and how many the execution may have.
    pub attempt: i32,
    pub max_attempts: i32,
    pub lane: Arc<Lane>,
    /// The slot the attempt ran in, freed once the result is written; `None` for a claimed
    /// row that found no free slot.
    pub slot: Option<Slot>,
    pub finish: Finish,
    pub duration_ms: i64,
    /// When the attempt ended, for the write delay.
    pub ended: Instant,
    pub tokens: Option<(u32, u32)>,
    /// The execution was cancelled while it ran: its row is already `cancelled`, and
    /// nothing of the attempt is written.
    pub cancelled: bool,
    /// The lane of the route member a retry moved to (`Finish::Retry::to`), told of the
    /// pending retry once it is written.
    pub moved_to: Option<Arc<Lane>>,
}

/// Hands results to the completer. Cheap to clone.
#[derive(Clone)]
pub struct CompleterHandle {
    tx: mpsc::Sender<Completion>,
}

impl CompleterHandle {
    /// Queues a result for writing, waiting while the backlog is full.
    pub async fn send(&self, completion: Completion) {
        if let Err(mpsc::error::SendError(c)) = self.tx.send(completion).await {
            // Only after the completer has ended, which a shutdown does once every execution
            // has handed its result over: the row stays running and is resumed.
            error!(
                "execution {}: the completer has stopped; its result is not written, so the \
                 row stays running until recovery resumes it (or fails it as interrupted, if \
                 that was its last attempt)",
                c.id
            );
        }
    }
}

/// The running completer.
pub struct Completer {
    handle: CompleterHandle,
    close: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What the completer needs besides its sink.
pub struct CompleterParts {
    pub owner: Arc<str>,
    pub events: EventBus,
    /// Cancelled when the daemon stops claiming: a freed slot is then not refilled here.
    pub stop_claiming: CancellationToken,
    pub settings: CompleterConfig,
}

impl Completer {
    /// Starts the completer's task.
    pub fn spawn(sink: Arc<dyn ResultSink>, parts: CompleterParts) -> Completer {
        let backlog = usize::try_from(parts.settings.backlog)
            .unwrap_or(usize::MAX)
            .max(1);
        let (tx, rx) = mpsc::channel(backlog);
        let close = CancellationToken::new();
        let worker = Worker {
            sink,
            max_batch: usize::try_from(parts.settings.max_batch)
                .unwrap_or(1)
                .max(1),
            max_wait: Duration::from_micros(parts.settings.max_wait_us),
            owner: parts.owner,
            events: parts.events,
            stop_claiming: parts.stop_claiming,
        };
        let task = tokio::spawn(worker.run(rx, close.clone()));
        Completer {
            handle: CompleterHandle { tx },
            close,
            task,
        }
    }

    /// A handle for executors.
    pub fn handle(&self) -> CompleterHandle {
        self.handle.clone()
    }

    /// Writes everything handed over so far, then ends. Results sent after this are not
    /// written (their rows are resumed by the next start).
    pub async fn close(self) {
        self.close.cancel();
        drop(self.handle);
        if let Err(e) = self.task.await {
            error!("the completer ended abnormally: {e}");
        }
    }
}

struct Worker {
    sink: Arc<dyn ResultSink>,
    max_batch: usize,
    max_wait: Duration,
    owner: Arc<str>,
    events: EventBus,
    stop_claiming: CancellationToken,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Completion>, close: CancellationToken) {
        let mut batch: Vec<Completion> = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        loop {
            let received = if closing {
                rx.recv_many(&mut batch, self.max_batch).await
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut batch, self.max_batch) => n,
                    _ = close.cancelled() => {
                        // No new results: write what is queued, then end.
                        closing = true;
                        rx.close();
                        continue;
                    }
                }
            };
            if received == 0 {
                return;
            }
            if batch.len() < self.max_batch && !self.max_wait.is_zero() && !closing {
                let deadline = tokio::time::sleep(self.max_wait);
                tokio::pin!(deadline);
                while batch.len() < self.max_batch {
                    let room = self.max_batch - batch.len();
                    tokio::select! {
                        n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                        _ = &mut deadline => break,
                    }
                }
            }
            self.flush(&mut batch).await;
        }
    }

    /// Writes the batch (retrying until it is written), then frees its slots.
    async fn flush(&self, batch: &mut Vec<Completion>) {
        let written = {
            let entries: Vec<(ExecutionId, &Finish)> =
                batch.iter().map(|c| (c.id, &c.finish)).collect();
            let mut backoff = Duration::from_millis(10);
            let mut tries = 0u32;
            loop {
                match self.sink.write(&self.owner, &entries).await {
                    Ok(written) => break written,
                    Err(e) => {
                        tries += 1;
                        error!(
                            "writing {} result(s) failed (try {tries}), retrying in {backoff:?}; \
                             their slots stay held: {e}",
                            entries.len()
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        };
        let now = Instant::now();
        // Lanes that freed a slot, with whether any row went back to pending for a retry,
        // and whether any slot paid a lowered limit's or share's debt instead of coming back.
        let mut freed: BTreeMap<Arc<str>, (Arc<Lane>, bool, bool)> = BTreeMap::new();
        for (c, ok) in batch.drain(..).zip(written) {
            let outcome = match (&c.finish, ok) {
                (_, false) if c.cancelled => Outcome::Cancelled,
                (_, false) => Outcome::Lost,
                (Finish::Completed(_), true) => Outcome::Completed,
                (Finish::Retry { kind, delay_ms, .. }, true) => Outcome::Retried {
                    kind: *kind,
                    delay_ms: *delay_ms,
                },
                (Finish::Failed { kind, .. }, true) => Outcome::Failed { kind: *kind },
                (Finish::Requeue, true) => Outcome::Requeued,
            };
            log_end(&c, outcome);
            let lane = c.lane.clone();
            let forgotten = c.slot.is_some_and(|slot| lane.release_quietly(slot));
            let entry = freed
                .entry(lane.name_arc())
                .or_insert_with(|| (lane.clone(), false, false));
            entry.2 |= forgotten;
            if matches!(outcome, Outcome::Retried { .. }) {
                entry.1 = true;
                if let Some(to) = &c.moved_to {
                    freed
                        .entry(to.name_arc())
                        .or_insert_with(|| (to.clone(), true, false))
                        .1 = true;
                }
            }
            let write_ms = i64::try_from(now.duration_since(c.ended).as_millis()).unwrap_or(0);
            self.events.publish_with(|| Event::Finished {
                id: c.id,
                provider: lane.name_arc(),
                attempt: c.attempt,
                outcome,
                duration_ms: c.duration_ms,
                write_ms,
                tokens: c.tokens,
            });
        }
        // One wake per lane for the whole batch: its freed slots make one claim.
        for (name, (lane, retried, forgotten)) in freed {
            if retried {
                lane.note_retry_quietly();
            }
            lane.wake();
            // The lane refills its slots itself when it can; otherwise another worker should.
            // A slot that paid a debt is room this worker will not take: with shares, room
            // that another worker, held back by this one, waits for.
            let refills = !self.stop_claiming.is_cancelled()
                && lane.provider().is_some()
                && lane.free() > 0
                && !forgotten;
            if !refills && let Err(e) = self.sink.slot_freed(&name).await {
                warn!("provider {name}: telling other workers of a free slot: {e}");
            }
        }
    }
}

/// The log line of an attempt's end.
fn log_end(c: &Completion, outcome: Outcome) {
    let (id, provider) = (c.id, c.lane.name());
    match (&c.finish, outcome) {
        (_, Outcome::Cancelled) => info!(
            id,
            provider, "cancelled while running: attempt stopped, its result discarded"
        ),
        (_, Outcome::Lost) => {
            warn!(
                id,
                provider, "no longer owned by this worker; result not written"
            )
        }
        (Finish::Completed(_), _) => debug!(id, provider, "completed"),
        (Finish::Retry { error, .. }, Outcome::Retried { delay_ms, .. }) => warn!(
            id,
            provider,
            "attempt {} of {} failed, retrying in {delay_ms} ms: {error}",
            c.attempt,
            c.max_attempts,
        ),
        (Finish::Failed { error, .. }, _) => warn!(
            id,
            provider, "failed after attempt {} of {}: {error}", c.attempt, c.max_attempts
        ),
        _ => info!(id, provider, "returned to pending"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;
    use std::sync::Mutex;

    /// Records every batch; fails the first `fail` writes.
    struct Recorder {
        batches: Mutex<Vec<Vec<ExecutionId>>>,
        written: Mutex<Vec<ExecutionId>>,
        fail: Mutex<u32>,
        freed: Mutex<Vec<String>>,
        /// While set, writes wait for it to be cleared.
        hold: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl ResultSink for Recorder {
        async fn write(
            &self,
            _owner: &str,
            batch: &[(ExecutionId, &Finish)],
        ) -> Result<Vec<bool>, StoreError> {
            let _permit = self.hold.acquire().await.unwrap();
            self.batches
                .lock()
                .unwrap()
                .push(batch.iter().map(|(id, _)| *id).collect());
            {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(StoreError::Other("database is locked".into()));
                }
            }
            let mut written = self.written.lock().unwrap();
            for (id, _) in batch {
                assert!(!written.contains(id), "execution {id} written twice");
                written.push(*id);
            }
            Ok(vec![true; batch.len()])
        }

        async fn slot_freed(&self, provider: &str) -> Result<(), StoreError> {
            self.freed.lock().unwrap().push(provider.to_string());
            Ok(())
        }
    }

    fn recorder(fail: u32, open: bool) -> Arc<Recorder> {
        let r = Recorder {
            batches: Mutex::default(),
            written: Mutex::default(),
            fail: Mutex::new(fail),
            freed: Mutex::default(),
            hold: tokio::sync::Semaphore::new(if open { 1 << 20 } else { 0 }),
        };
        Arc::new(r)
    }

    fn completer(sink: Arc<Recorder>, max_batch: u32, backlog: u32, wait_us: u64) -> Completer {
        Completer::spawn(
            sink,
            CompleterParts {
                owner: Arc::from("me"),
                events: EventBus::default(),
                stop_claiming: CancellationToken::new(),
                settings: CompleterConfig {
                    max_batch,
                    max_wait_us: wait_us,
                    backlog,
                },
            },
        )
    }

    fn done(lane: &Arc<Lane>, id: ExecutionId) -> Completion {
        Completion {
            moved_to: None,
            id,
            attempt: 1,
            max_attempts: 3,
            lane: lane.clone(),
            slot: Some(lane.try_acquire().expect("a free slot")),
            finish: if id % 2 == 0 {
                Finish::Completed(serde_json::json!({"text": "ok"}))
            } else {
                Finish::Failed {
                    error: "no".into(),
                    kind: ErrorKind::InvalidRequest,
                }
            },
            duration_ms: 1,
            ended: Instant::now(),
            tokens: None,
            cancelled: false,
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch_and_take_everything_queued() {
        let sink = recorder(0, false);
        let lane = Arc::new(Lane::new("p", 100));
        let c = completer(sink.clone(), 8, 100, 0);
        let h = c.handle();
        for id in 0..20 {
            h.send(done(&lane, id)).await;
        }
        // Writes were held: now let them through; 20 queued make batches of 8, 8 and 4.
        sink.hold.add_permits(1 << 20);
        until("20 written", || sink.written.lock().unwrap().len() == 20).await;
        let sizes: Vec<usize> = sink.batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![8, 8, 4]);
        until("slots freed", || lane.free() == 100).await;
        c.close().await;
    }

    #[tokio::test]
    async fn a_short_wait_gathers_results_into_one_batch() {
        let sink = recorder(0, true);
        let lane = Arc::new(Lane::new("p", 10));
        let c = completer(sink.clone(), 100, 100, 200_000);
        let h = c.handle();
        for id in 0..5 {
            h.send(done(&lane, id)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        until("5 written", || sink.written.lock().unwrap().len() == 5).await;
        assert_eq!(
            sink.batches.lock().unwrap().len(),
            1,
            "one batch within the wait"
        );
        c.close().await;
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_with_the_slots_held_and_nothing_lost_or_doubled() {
        let sink = recorder(3, true);
        let lane = Arc::new(Lane::new("p", 4));
        let c = completer(sink.clone(), 16, 16, 0);
        let h = c.handle();
        for id in 0..4 {
            h.send(done(&lane, id)).await;
        }
        until("three failed tries", || {
            sink.batches.lock().unwrap().len() >= 3
        })
        .await;
        if sink.written.lock().unwrap().is_empty() {
            assert_eq!(
                lane.free(),
                0,
                "slots stay held until the result is written"
            );
            assert_eq!(lane.running(), 4);
        }
        until("4 written", || sink.written.lock().unwrap().len() == 4).await;
        until("slots freed", || lane.free() == 4).await;
        let mut written = sink.written.lock().unwrap().clone();
        written.sort();
        assert_eq!(written, vec![0, 1, 2, 3]);
        c.close().await;
    }

    #[tokio::test]
    async fn a_full_backlog_makes_executors_wait_and_drops_nothing() {
        let sink = recorder(0, false);
        let lane = Arc::new(Lane::new("p", 100));
        let c = completer(sink.clone(), 2, 4, 0);
        let h = c.handle();
        // The first batch is taken and its write held; 4 more fill the backlog.
        for id in 0..6 {
            h.send(done(&lane, id)).await;
        }
        until("a write under way", || sink.hold.available_permits() == 0).await;
        let blocked = tokio::spawn({
            let (h, lane) = (h.clone(), lane.clone());
            async move { h.send(done(&lane, 6)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !blocked.is_finished(),
            "the 7th waits for room in the backlog"
        );
        sink.hold.add_permits(1 << 20);
        blocked.await.unwrap();
        until("7 written", || sink.written.lock().unwrap().len() == 7).await;
        c.close().await;
        assert_eq!(lane.free(), 100);
    }

    #[tokio::test]
    async fn closing_writes_every_result_handed_over() {
        let sink = recorder(1, true);
        let lane = Arc::new(Lane::new("p", 50));
        let c = completer(sink.clone(), 7, 64, 0);
        let h = c.handle();
        for id in 0..50 {
            h.send(done(&lane, id)).await;
        }
        drop(h);
        c.close().await;
        assert_eq!(sink.written.lock().unwrap().len(), 50);
        assert_eq!(lane.free(), 50);
    }

    #[tokio::test]
    async fn a_lane_that_will_not_refill_tells_the_fleet() {
        let sink = recorder(0, true);
        let lane = Arc::new(Lane::new("p", 2));
        let c = completer(sink.clone(), 8, 8, 0);
        // No component serves the lane: it will not refill the slot itself.
        c.handle().send(done(&lane, 0)).await;
        until("slot freed", || !sink.freed.lock().unwrap().is_empty()).await;
        assert_eq!(sink.freed.lock().unwrap().as_slice(), ["p"]);
        c.close().await;
    }
}
