//! The completer: writes finished attempts to the queue in batches, one transaction for
//! many rows (group commit), then frees their slots and publishes `Finished`.
//!
//! - A batch is written when `max_batch` results are queued, or when `max_wait_us` has
//!   passed since its first one; with `max_wait_us = 0` it is written at once, with the
//!   results of attempts that were ready to end then (see [`gather_ready`]), and what
//!   finishes during a write goes in the next one, so batches grow with the load.
//! - The backlog is bounded: when it is full, executors wait to hand over their result.
//!   Nothing is dropped.
//! - A write that fails is retried with backoff for as long as it takes. Until its result
//!   is written, an attempt's slot stays held and its row stays `running`, so a limit
//!   counted from the database and one counted from the lane agree. If the process dies
//!   first, recovery (or the lease) resumes the row and the attempt runs again; when that
//!   was its last attempt, recovery fails it as `interrupted` instead.
//! - A graceful shutdown writes every result handed over before it ends.
//! - Where the store can claim in the write's own round trip (every lane on SQLite, narrow
//!   lanes on PostgreSQL: see [`Queue::refills_with_finish`]), the slots a batch frees are
//!   refilled there: each such lane that may claim freely gets a claim for them in the
//!   same transaction, and the rows claimed go to its producer with the slots (see
//!   [`Lane::hand_over`]). A write retried after a failure goes alone, and a claim the
//!   store did not make (PostgreSQL: another worker held its lock) is left out; the
//!   producers then claim. Where every lane is refilled so, a batch is written in parts of
//!   a quarter of its lanes' slots, so that the first part's refills run while the next is
//!   written (see [`Worker::part_size`]), and the results that come in while a part is
//!   written join the batch before the next part (see [`Worker::write_in_parts`]).

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
use crate::model::{Execution, ExecutionId};
use crate::store::{Claim, Finish, Queue, StoreError};

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

    /// Settles spend reservations; see [`Queue::settle_spend`].
    async fn settle_spend(
        &self,
        ends: &[crate::store::SpendEnd<'_>],
    ) -> Result<Vec<crate::store::SpendNotice>, StoreError> {
        let _ = ends;
        Ok(Vec::new())
    }

    /// Stores cached answers and settles their waiters; see [`Queue::settle_cache`].
    async fn settle_cache(
        &self,
        ends: &[crate::store::CacheEnd<'_>],
    ) -> Result<crate::store::CacheSettled, StoreError> {
        let _ = ends;
        Ok(crate::store::CacheSettled::default())
    }

    /// Settles budget reservations; see [`Queue::settle_budgets`].
    async fn settle_budgets(&self, ends: &[(ExecutionId, i64)]) -> Result<(), StoreError> {
        let _ = ends;
        Ok(())
    }

    /// The largest lane limit whose slots [`ResultSink::write_and_claim`] refills; see
    /// [`Queue::refills_with_finish`].
    fn refills_with_write(&self) -> u32 {
        0
    }

    /// Whether every lane's slots are refilled in the write: the batch then goes in parts
    /// (see `Worker::part_size`).
    fn claims_with_write(&self) -> bool {
        self.refills_with_write() == u32::MAX
    }

    /// Writes a batch and, in the same round trip, claims for each offer; see
    /// [`Queue::finish_and_claim`]. A sink that cannot only writes.
    async fn write_and_claim(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
        offers: &[Offer],
    ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
        let written = self.write(owner, batch).await?;
        Ok((written, offers.iter().map(|_| None).collect()))
    }
}

/// Slots a batch frees in one lane, offered to a claim in the batch's own write.
pub struct Offer {
    pub provider: Arc<str>,
    /// The lane whose slots these are, to weigh the offer again after the write.
    pub lane: Arc<Lane>,
    /// The slots: the most rows to claim.
    pub slots: u32,
    /// The provider's limit.
    pub limit: u32,
    /// How the lane is shared among tenants.
    pub tenants: crate::store::Tenants,
    /// The provider's requests and tokens per minute, which the claim reserves against.
    pub budget: Option<crate::store::Budget>,
}

/// The queue as a [`ResultSink`].
pub struct QueueSink {
    pub queue: Arc<dyn Queue>,
    /// The lease a claim takes, in ms.
    pub lease_ms: i64,
}

#[async_trait]
impl ResultSink for QueueSink {
    async fn write(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError> {
        self.queue.finish_many(owner, batch).await
    }

    async fn settle_cache(
        &self,
        ends: &[crate::store::CacheEnd<'_>],
    ) -> Result<crate::store::CacheSettled, StoreError> {
        self.queue.settle_cache(ends).await
    }

    async fn settle_spend(
        &self,
        ends: &[crate::store::SpendEnd<'_>],
    ) -> Result<Vec<crate::store::SpendNotice>, StoreError> {
        self.queue.settle_spend(ends).await
    }

    async fn settle_budgets(&self, ends: &[(ExecutionId, i64)]) -> Result<(), StoreError> {
        self.queue.settle_budgets(ends).await
    }

    async fn slot_freed(&self, provider: &str) -> Result<(), StoreError> {
        self.queue.slot_freed(provider).await
    }

    fn refills_with_write(&self) -> u32 {
        self.queue.refills_with_finish()
    }

    async fn write_and_claim(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
        offers: &[Offer],
    ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
        let claims: Vec<(&str, Claim<'_>)> = offers
            .iter()
            .map(|o| {
                let claim = Claim {
                    owner,
                    max: o.slots,
                    limit: o.limit,
                    lease_ms: self.lease_ms,
                    budget: o.budget,
                    spend: None,
                    tenants: &o.tenants,
                };
                (&*o.provider, claim)
            })
            .collect();
        self.queue.finish_and_claim(owner, batch, &claims).await
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
    /// What a completed attempt used and cost.
    pub spent: Option<Arc<crate::daemon::events::Spent>>,
    /// The execution's tenant, for its spend caps.
    pub tenant: Option<String>,
    /// Its response cache key, with its provider's cache settings (none when a reload took
    /// the provider's cache away: its waiters are then let go to run their own).
    pub cache: Option<(String, Option<crate::config::ResponseCacheConfig>)>,
    /// The execution was cancelled while it ran: its row is already `cancelled`, and
    /// nothing of the attempt is written.
    pub cancelled: bool,
    /// The lane of the route member a retry moved to (`Finish::Retry::to`), told of the
    /// pending retry once it is written.
    pub moved_to: Option<Arc<Lane>>,
    /// Its provider had a budget, so its claim reserved: the reservation is settled with
    /// the batch. Taken from the provider the attempt ran under (a requeued row: the lane's
    /// provider then), so an attempt that ran under a budget a reload has since taken away
    /// is settled. A row that a reload's change caught between its claim and its start may
    /// go unsettled: its estimate then stays until the window passes it, on the safe side.
    pub budgeted: bool,
}

impl Completion {
    /// A claimed row that did not start, going back to pending without counting its attempt.
    pub fn requeue(execution: &Execution, lane: Arc<Lane>, slot: Option<Slot>) -> Self {
        // Claimed under the lane's provider as it is now.
        let budgeted = lane.provider().is_some_and(|p| p.policy.budget.is_some());
        Completion {
            budgeted,
            id: execution.id,
            attempt: execution.attempts,
            max_attempts: execution.max_attempts,
            lane,
            slot,
            finish: Finish::Requeue,
            duration_ms: 0,
            ended: Instant::now(),
            spent: None,
            tenant: execution.tenant.clone(),
            cache: None,
            cancelled: false,
            moved_to: None,
        }
    }
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
    /// Acts on a spend cap's notice (see `daemon::spend::tell`).
    pub on_spend: SpendNotices,
}

/// What the completer does with a spend cap's notice that its settle brought.
pub type SpendNotices = Arc<dyn Fn(crate::store::SpendNotice) + Send + Sync>;

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
            refillable: takes_refills,
            on_spend: parts.on_spend,
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

/// Takes into the batch the results of attempts that are about to end: yields to the
/// runtime while that brings more, at most [`GATHER_YIELDS`] times.
///
/// A claim starts many attempts at once, and the first to end wakes the completer at once
/// (tokio runs a task that another woke next). Written then, it went alone, the others'
/// in the batch after it, and its slot made a claim of its own: two writes and two claims
/// per claim's worth of results, cycle after cycle (3 PostgreSQL workers with shares of
/// 342 slots wrote 68–78 rows a batch on average; 159–179 now). A yielded task runs again
/// only after the tasks ready to run on its worker, so the attempts that can end now hand
/// their results over first; an attempt waiting on its provider is not ready, and costs no
/// wait.
async fn gather_ready(
    rx: &mut mpsc::Receiver<Completion>,
    batch: &mut Vec<Completion>,
    max_batch: usize,
) {
    for _ in 0..GATHER_YIELDS {
        if batch.len() >= max_batch {
            return;
        }
        tokio::task::yield_now().await;
        if take_queued(rx, batch, max_batch) == 0 {
            return;
        }
    }
}

/// Moves the results already queued into `batch`, up to `max_batch` in all, without
/// waiting. Returns how many it moved.
fn take_queued(
    rx: &mut mpsc::Receiver<Completion>,
    batch: &mut Vec<Completion>,
    max_batch: usize,
) -> usize {
    let before = batch.len();
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(_) => break,
        }
    }
    batch.len() - before
}

/// How many times, at most, [`gather_ready`] yields.
const GATHER_YIELDS: usize = 16;

/// The fewest results a write in parts takes (see [`Worker::part_size`]): below that a
/// write's own cost outweighs what the overlap gains.
const MIN_PART: usize = 16;

struct Worker {
    sink: Arc<dyn ResultSink>,
    max_batch: usize,
    max_wait: Duration,
    owner: Arc<str>,
    events: EventBus,
    stop_claiming: CancellationToken,
    /// Whether a lane may have the slots a batch frees refilled in its write: see
    /// [`takes_refills`] (a test stands in for it, having no component to serve a lane).
    refillable: fn(&Lane) -> bool,
    on_spend: SpendNotices,
}

/// Whether a lane may have the slots a batch frees refilled in the batch's write: not for a
/// spend-capped provider (the producer keeps its accounts: its estimates need the price
/// table), nor a lane with no component, or one paused, ramping up or paying back a lowered
/// limit. A budgeted provider's claim in the write reserves its budget as the producer's
/// does.
fn takes_refills(lane: &Lane) -> bool {
    lane.claims_freely()
        && !lane.pool_contended()
        && lane.provider().is_some_and(|p| p.policy.spend.is_none())
}

/// How many times the completer tries a settle after a batch's write.
const TRIES: u32 = 5;

/// Runs `op` up to [`TRIES`] times, 50 ms apart and doubling, telling `failed` of each
/// failure; `None` when every try failed.
pub(super) async fn retried<T, Fut>(
    mut op: impl FnMut() -> Fut,
    failed: impl Fn(u32, &StoreError),
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=TRIES {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) => failed(attempt, &e),
        }
        if attempt < TRIES {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    None
}

/// Settles the reservations of `n` attempts under `what` (budgets, spend caps) with `op`,
/// tried as [`retried`] does, with a warning for each failure.
async fn settle_retried<T, Fut>(what: &str, n: usize, op: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retried(op, |attempt, e| {
        warn!("{what}: settling {n} attempt(s) failed (try {attempt} of {TRIES}): {e}")
    })
    .await
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Completion>, close: CancellationToken) {
        let mut batch: Vec<Completion> = Vec::with_capacity(self.max_batch);
        // What one write takes of the batch: see `part_size`.
        let mut part: Vec<Completion> = Vec::with_capacity(self.max_batch);
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
            if !closing {
                gather_ready(&mut rx, &mut batch, self.max_batch).await;
            }
            // The `Started` of these attempts (and of others that started since) if no
            // message has carried them yet: see `EventBus::defer_with`.
            self.events.flush();
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
            self.write_in_parts(&mut rx, &mut batch, &mut part).await;
        }
    }

    /// Writes the whole batch, in parts of [`Worker::part_size`], each retried until it
    /// is written; `part` is scratch space, left empty.
    ///
    /// After each part, the results that came in while it was written join the batch, so
    /// that the database is kept busy while results keep coming. Writing only the batch
    /// taken in at the start left it idle at the end of each batch: its last part's
    /// refills had only just started, and the next batch waited for them. SQLite no-op,
    /// limit 256: the writes of 4 parts came in bursts with gaps of 1–3 ms between them,
    /// and a write was under way 75% of the time; with the results taken in between parts,
    /// 93%, and over 7 alternated pairs the run's median went from 20.4k executions/s to
    /// 22.5k. Where a batch is written whole, the next batch gathers them instead (see
    /// [`gather_ready`]).
    async fn write_in_parts(
        &self,
        rx: &mut mpsc::Receiver<Completion>,
        batch: &mut Vec<Completion>,
        part: &mut Vec<Completion>,
    ) {
        while !batch.is_empty() {
            let take = batch.len().min(self.part_size(batch));
            part.extend(batch.drain(..take));
            let mut back = self.flush(part).await;
            while !back.is_empty() {
                part.append(&mut back);
                back = self.flush(part).await;
            }
            if self.sink.claims_with_write() && take_queued(rx, batch, self.max_batch) > 0 {
                self.events.flush();
            }
        }
    }

    /// The most results one write takes. Where the sink refills the slots a write frees
    /// in the write itself, that is also a quarter of the slots of the lanes in the batch
    /// (at least [`MIN_PART`]), and a larger batch goes in parts, one after the other.
    ///
    /// Refilled slots start only when their write commits. A write of every slot's result
    /// left the lanes with nothing to run while it was written, and the database idle
    /// while they then ran: lanes and writes took turns. In parts, the slots of the first
    /// part run while the next is written. SQLite no-op, limit 256, 6 alternated runs of a
    /// benchmark built with mimalloc: 14.2k–15.7k executions/s in whole writes of up to
    /// 512, 15.8k–16.9k in parts; as shipped (glibc's malloc), 12 alternated runs in a
    /// noisier hour: medians of 10.7k and 9.2k whole, 11.2k and 10.5k in parts.
    /// PostgreSQL, whose producers claim after the write in a statement of their own, did
    /// worse in writes of 128 than of 512 (see also [`gather_ready`]): it writes whole
    /// batches.
    fn part_size(&self, batch: &[Completion]) -> usize {
        if !self.sink.claims_with_write() {
            return self.max_batch;
        }
        let mut lanes: Vec<&Arc<Lane>> = Vec::new();
        for c in batch {
            if !lanes.iter().any(|l| Arc::ptr_eq(l, &c.lane)) {
                lanes.push(&c.lane);
            }
        }
        let slots: usize = lanes
            .iter()
            .map(|l| usize::try_from(l.limit()).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add);
        (slots / 4).max(MIN_PART).min(self.max_batch)
    }

    /// Writes the batch (retrying until it is written), then frees its slots, or hands
    /// them to the executions claimed for them in the same write. Returns what must be
    /// written next: rows claimed for a lane whose producer has stopped, going back.
    async fn flush(&self, batch: &mut Vec<Completion>) -> Vec<Completion> {
        // Before the write: until it, the rows are still this worker's and running, so no
        // claim can take one again and reserve anew before its reservation is settled.
        self.settle_spend(batch).await;
        self.settle_budgets(batch).await;
        let offers = self.offers(batch);
        let (written, claimed) = self.write(batch, &offers).await;
        self.settle_cache(batch, &written).await;
        // Only the offers whose claims were made: a write retried alone made none, and a
        // store may leave one to the lane's producer (`None`).
        let claimed = claimed.unwrap_or_default();
        let made: Vec<(Offer, Vec<Execution>)> = offers
            .into_iter()
            .zip(claimed)
            .filter_map(|(offer, claimed)| Some((offer, claimed?)))
            .collect();
        // A lane may have paused (a 429 came in), or its limit dropped, while the write ran:
        // what the write claimed for it then goes back to pending unstarted, as its
        // producer would not have claimed it now.
        let mut back = Vec::new();
        let mut refills: BTreeMap<Arc<str>, Refill> = made
            .into_iter()
            .filter_map(|(offer, claimed)| {
                let lane = &offer.lane;
                if (self.refillable)(lane) && lane.limit() >= offer.limit {
                    return Some((offer, claimed));
                }
                if !claimed.is_empty() {
                    info!(
                        "provider {}: {} row(s) claimed with the last results go back to \
                         pending: the lane paused or its limit dropped meanwhile",
                        offer.provider,
                        claimed.len()
                    );
                }
                back.extend(
                    claimed
                        .iter()
                        .map(|e| Completion::requeue(e, Arc::clone(lane), None)),
                );
                None
            })
            .map(|(offer, mut claimed)| {
                // Popped from the end: the first claimed gets the first slot.
                claimed.reverse();
                let refill = Refill {
                    offered: offer.slots,
                    claimed,
                    placed: Vec::new(),
                    budgeted: offer.budget.is_some(),
                };
                (offer.provider, refill)
            })
            .collect();
        let now = Instant::now();
        // Lanes that freed a slot, with whether any row went back to pending for a retry,
        // and whether any slot paid a lowered limit's or share's debt instead of coming back.
        let mut freed: BTreeMap<Arc<str>, (Arc<Lane>, bool, bool)> = BTreeMap::new();
        // Sent when the loop ends: before the hand-over below, so that each `Finished` comes
        // before a refill's `Claimed`.
        let mut finished = self.events.batch();
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
            let forgotten = match c.slot {
                Some(slot) => match refills.get_mut(lane.name()) {
                    Some(refill) => refill.place(slot, &lane),
                    None => lane.release_quietly(slot),
                },
                None => false,
            };
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
            finished.push_with(|| Event::Finished {
                id: c.id,
                provider: lane.name_arc(),
                attempt: c.attempt,
                outcome,
                duration_ms: c.duration_ms,
                write_ms,
                spent: c.spent.clone(),
                batch: None,
            });
        }
        drop(finished);
        // One wake per lane for the whole batch: its freed slots make one claim.
        for (name, (lane, retried, forgotten)) in freed {
            if retried {
                lane.note_retry_quietly();
            }
            // A refill that found fewer rows than slots found nothing more due: the producer
            // need not claim, unless a retry may come due (it then sets its timer), or the
            // lane's budget may have held the refill back (the producer's claim then notes
            // it, and sets its timer for when the budget frees). Rows handed over wake it
            // anyway, to start them.
            let mut wake = true;
            // Slots the write refilled: this worker refilled them itself, whatever is free.
            let mut refilled = false;
            if let Some(refill) = refills.remove(&name) {
                wake = refill.filled() || refill.budgeted || lane.retry_noted();
                refilled = !refill.placed.is_empty();
                back.extend(refill.hand_over(&lane));
            }
            if wake {
                lane.wake();
            }
            // The lane refills its slots itself when it can; otherwise another worker should.
            // A slot that paid a debt is room this worker will not take: with shares, room
            // that another worker, held back by this one, waits for.
            let refills = !self.stop_claiming.is_cancelled()
                && lane.provider().is_some()
                && (lane.free() > 0 || refilled)
                && !forgotten;
            if !refills && let Err(e) = self.sink.slot_freed(&name).await {
                warn!("provider {name}: telling other workers of a free slot: {e}");
            }
        }
        back
    }

    /// The slots the batch frees in each lane that may refill them now (see
    /// [`takes_refills`]), when the sink can claim in the batch's own write: the lane's
    /// producer would claim as much right after.
    fn offers(&self, batch: &[Completion]) -> Vec<Offer> {
        let up_to = self.sink.refills_with_write();
        if up_to == 0 || self.stop_claiming.is_cancelled() {
            return Vec::new();
        }
        let mut slots: BTreeMap<&str, (&Arc<Lane>, u32)> = BTreeMap::new();
        for c in batch.iter().filter(|c| c.slot.is_some()) {
            slots.entry(c.lane.name()).or_insert((&c.lane, 0)).1 += 1;
        }
        slots
            .into_values()
            .filter(|(lane, _)| lane.limit() <= up_to && (self.refillable)(lane))
            .map(|(lane, slots)| Offer {
                lane: lane.clone(),
                provider: lane.name_arc(),
                slots,
                limit: lane.limit(),
                tenants: lane
                    .provider()
                    .map(|p| p.policy.tenants.clone())
                    .unwrap_or_default(),
                budget: lane.provider().and_then(|p| p.policy.budget),
            })
            .collect()
    }

    /// Settles the budget reservations of the batch's attempts of budgeted providers with
    /// the tokens they used (input and output of a completed one; none for another end),
    /// in one statement, before the write: until it, the rows are this worker's, so no
    /// claim can take one again and reserve anew before its reservation is settled (unless
    /// the worker's lease lapsed meanwhile: a reservation is found by its execution, so a
    /// settlement then also settles the new claim's, as the executor's did before; noted,
    /// as for `settle_spend`). Tried a few times: a reservation never settled keeps its
    /// estimate until the window passes it, on the safe side.
    async fn settle_budgets(&self, batch: &[Completion]) {
        let ends: Vec<(ExecutionId, i64)> = batch
            .iter()
            .filter(|c| c.budgeted)
            .map(|c| {
                let used = c.spent.as_ref().map_or(0, |s| {
                    i64::from(s.usage.input_tokens) + i64::from(s.usage.output_tokens)
                });
                (c.id, used)
            })
            .collect();
        if ends.is_empty() {
            return;
        }
        settle_retried("budgets", ends.len(), || self.sink.settle_budgets(&ends)).await;
    }

    /// Settles the spend reservations of the batch's attempts of capped providers and
    /// tenants with what they cost (a requeued or failed one, nothing), in one transaction,
    /// and acts on the notices it brings. Tried a few times: a reservation never settled
    /// stays until the upkeep lets it go, and what the attempt cost is not counted.
    async fn settle_spend(&self, batch: &[Completion]) {
        let mut caps: BTreeMap<&str, crate::store::Spend> = BTreeMap::new();
        let mut capped = Vec::new();
        for c in batch {
            let Some(provider) = c.lane.provider() else {
                continue;
            };
            let Some(spend) = &provider.policy.spend else {
                continue;
            };
            if !spend.applies(c.tenant.as_deref().unwrap_or("")) {
                continue;
            }
            caps.entry(c.lane.name()).or_insert_with(|| spend.today());
            capped.push(c);
        }
        if capped.is_empty() {
            return;
        }
        // Every capped completion's provider has its entry, from the loop above.
        let ends: Vec<crate::store::SpendEnd<'_>> = capped
            .iter()
            .map(|c| crate::store::SpendEnd {
                id: c.id,
                provider: c.lane.name(),
                tenant: c.tenant.as_deref().unwrap_or(""),
                usd: c.spent.as_ref().and_then(|s| s.cost_usd).unwrap_or(0.0),
                caps: &caps[c.lane.name()],
            })
            .collect();
        let settled =
            settle_retried("spend caps", ends.len(), || self.sink.settle_spend(&ends)).await;
        for notice in settled.into_iter().flatten() {
            (self.on_spend)(notice);
        }
    }

    /// Stores the answers of the batch's executions that use the response cache, and
    /// settles the executions waiting for them (completed from the answer, or due to run
    /// their own call after a failure or a cancel), then says so on the bus. Tried a few
    /// times: a waiter whose leader's end is never settled waits on.
    async fn settle_cache(&self, batch: &[Completion], written: &[bool]) {
        let ends: Vec<crate::store::CacheEnd<'_>> = batch
            .iter()
            .zip(written)
            .filter_map(|(c, ok)| {
                let (key, settings) = c.cache.as_ref()?;
                let output = match (&c.finish, ok) {
                    (Finish::Completed(_), true) if settings.is_none() => None,
                    (Finish::Completed(output), true) => Some(output.as_str()),
                    (Finish::Failed { .. }, true) => None,
                    // Cancelled, or no longer this worker's: its waiters run their own.
                    (_, false) => None,
                    _ => return None,
                };
                Some(crate::store::CacheEnd {
                    id: c.id,
                    provider: c.lane.name(),
                    key,
                    output,
                    ttl_ms: settings.map_or(0, |s| s.ttl_ms()),
                })
            })
            .collect();
        if ends.is_empty() {
            return;
        }
        let settled = retried(
            || self.sink.settle_cache(&ends),
            |attempt, e| {
                error!(
                    "the response cache: storing {} answer(s) and settling their waiters \
                     failed (try {attempt} of {TRIES}): {e}",
                    ends.len()
                )
            },
        )
        .await;
        let mut events = self.events.batch();
        for (id, provider) in settled.map(|s| s.completed).into_iter().flatten() {
            events.push_with(|| Event::Finished {
                id,
                provider: Arc::from(provider.as_str()),
                attempt: 0,
                outcome: Outcome::Completed,
                duration_ms: 0,
                write_ms: 0,
                spent: None,
                batch: None,
            });
        }
    }

    /// Writes the batch, with its offers' claims on the first try; retried with backoff
    /// (without the claims, which the producers then make) until it is written. Returns
    /// whether each row was written, and the claims' rows when they were made.
    async fn write(
        &self,
        batch: &[Completion],
        offers: &[Offer],
    ) -> (Vec<bool>, Option<Vec<Option<Vec<Execution>>>>) {
        let entries: Vec<(ExecutionId, &Finish)> =
            batch.iter().map(|c| (c.id, &c.finish)).collect();
        let mut offers = offers;
        let mut backoff = Duration::from_millis(10);
        let mut tries = 0u32;
        loop {
            let result = if offers.is_empty() {
                self.sink
                    .write(&self.owner, &entries)
                    .await
                    .map(|written| (written, None))
            } else {
                self.sink
                    .write_and_claim(&self.owner, &entries, offers)
                    .await
                    .map(|(written, claimed)| (written, Some(claimed)))
            };
            match result {
                Ok(done) => return done,
                Err(e) => {
                    tries += 1;
                    offers = &[];
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
    }
}

/// One lane's refill in a batch's write: the rows claimed, and the batch's slots they get.
struct Refill {
    offered: u32,
    /// Claimed rows still without a slot, the first last.
    claimed: Vec<Execution>,
    placed: Vec<(Execution, Slot)>,
    /// The lane has a budget, which may be what held the claim to fewer rows than slots.
    budgeted: bool,
}

impl Refill {
    /// Gives `slot` to the next claimed row, or back to the lane when none is left.
    /// Returns whether the slot paid a debt instead.
    fn place(&mut self, slot: Slot, lane: &Lane) -> bool {
        match self.claimed.pop() {
            Some(execution) => {
                self.placed.push((execution, slot));
                false
            }
            None => lane.release_quietly(slot),
        }
    }

    /// Whether every slot offered got a row.
    fn filled(&self) -> bool {
        u32::try_from(self.placed.len()).unwrap_or(u32::MAX) >= self.offered
    }

    /// Hands the placed rows to the lane's producer. Returns what must go back to pending:
    /// rows the producer can no longer start, and any the store claimed beyond the slots.
    fn hand_over(self, lane: &Arc<Lane>) -> Vec<Completion> {
        let unplaced = self.claimed.into_iter().map(|e| (e, None));
        let refused = match lane.hand_over(self.placed) {
            Ok(()) => Vec::new(),
            Err(refused) => refused,
        };
        refused
            .into_iter()
            .map(|(e, slot)| (e, Some(slot)))
            .chain(unplaced)
            .map(|(e, slot)| Completion::requeue(&e, lane.clone(), slot))
            .collect()
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
    use crate::store::Output;
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
                on_spend: Arc::new(|_| {}),
            },
        )
    }

    fn done(lane: &Arc<Lane>, id: ExecutionId) -> Completion {
        Completion {
            budgeted: false,
            moved_to: None,
            id,
            attempt: 1,
            max_attempts: 3,
            lane: lane.clone(),
            slot: Some(lane.try_acquire().expect("a free slot")),
            finish: if id % 2 == 0 {
                Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap())
            } else {
                Finish::Failed {
                    error: "no".into(),
                    kind: ErrorKind::InvalidRequest,
                }
            },
            duration_ms: 1,
            ended: Instant::now(),
            spent: None,
            tenant: None,
            cache: None,
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

    /// Without a wait, what is ready to end when a batch is due still goes in it: one
    /// attempt's result wakes the completer while the others of the same claim are about to
    /// hand theirs over. Written at once, the first made a batch of its own, and its slot
    /// a claim of its own, cycle after cycle.
    #[tokio::test]
    async fn results_about_to_be_handed_over_join_the_batch_without_a_wait() {
        let sink = recorder(0, true);
        let lane = Arc::new(Lane::new("p", 50));
        let c = completer(sink.clone(), 100, 100, 0);
        let h = c.handle();
        // The other attempts become ready to run as the first one hands its result over.
        let ready = Arc::new(tokio::sync::Notify::new());
        for id in 1..50 {
            let (h, end, ready) = (h.clone(), done(&lane, id), ready.clone());
            tokio::spawn(async move {
                ready.notified().await;
                h.send(end).await;
            });
        }
        let first = done(&lane, 0);
        tokio::spawn(async move {
            h.send(first).await;
            ready.notify_waiters();
        });
        until("50 written", || sink.written.lock().unwrap().len() == 50).await;
        let sizes: Vec<usize> = sink.batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![50]);
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

    fn claimed_row(id: ExecutionId) -> Execution {
        serde_json::from_value(serde_json::json!({
            "id": id, "provider": "p", "status": "running", "priority": 0,
            "input": {}, "output": null, "error": null, "error_kind": null,
            "attempts": 1, "max_attempts": 3, "not_before": 0, "resume": false,
            "created_at": 0, "started_at": 0, "finished_at": null, "owner": "me",
            "lease_until": 1, "worker": "me"
        }))
        .unwrap()
    }

    /// A refill of `offered` slots that claimed rows 1 and 2.
    fn refill_of(offered: u32) -> Refill {
        Refill {
            offered,
            claimed: vec![claimed_row(2), claimed_row(1)],
            placed: Vec::new(),
            budgeted: false,
        }
    }

    #[test]
    fn a_refill_gives_the_batch_slots_to_its_rows_in_claim_order() {
        let lane = Arc::new(Lane::new("p", 3));
        let mut refill = refill_of(3);
        for _ in 0..3 {
            assert!(!refill.place(lane.try_acquire().unwrap(), &lane));
        }
        assert!(!refill.filled(), "3 slots offered, 2 rows claimed");
        assert_eq!(
            (lane.running(), lane.free()),
            (2, 1),
            "the third slot is back"
        );
        assert!(refill.hand_over(&lane).is_empty());
        let handed: Vec<ExecutionId> = lane.take_handed().iter().map(|(e, _)| e.id).collect();
        assert_eq!(handed, vec![1, 2]);
    }

    #[test]
    fn rows_refilled_for_a_stopped_producer_go_back_with_their_slots() {
        let lane = Arc::new(Lane::new("p", 2));
        let mut refill = refill_of(2);
        refill.place(lane.try_acquire().unwrap(), &lane);
        refill.place(lane.try_acquire().unwrap(), &lane);
        assert!(refill.filled());
        assert!(lane.close_hand_over().is_empty());
        let back = refill.hand_over(&lane);
        let back: Vec<(ExecutionId, bool, bool)> = back
            .iter()
            .map(|c| (c.id, c.slot.is_some(), c.finish == Finish::Requeue))
            .collect();
        assert_eq!(back, vec![(1, true, true), (2, true, true)]);
        assert!(lane.take_handed().is_empty());
    }

    /// A sink that claims in its writes: `rows` rows of provider `p` per write, after
    /// failing the first `fail` writes that claim.
    struct Refiller {
        fail: Mutex<u32>,
        rows: usize,
        plain_writes: Mutex<u32>,
        /// The size of each write that claimed.
        sizes: Mutex<Vec<usize>>,
        /// A lane to pause while the write runs, as a 429 that comes in meanwhile does.
        pause_during: Mutex<Option<Arc<Lane>>>,
        /// Its claims are not made (`None`), as when another worker holds the lock.
        unmade: bool,
    }

    #[async_trait]
    impl ResultSink for Refiller {
        async fn write(
            &self,
            _owner: &str,
            batch: &[(ExecutionId, &Finish)],
        ) -> Result<Vec<bool>, StoreError> {
            *self.plain_writes.lock().unwrap() += 1;
            Ok(vec![true; batch.len()])
        }

        async fn slot_freed(&self, _provider: &str) -> Result<(), StoreError> {
            Ok(())
        }

        fn refills_with_write(&self) -> u32 {
            u32::MAX
        }

        async fn write_and_claim(
            &self,
            _owner: &str,
            batch: &[(ExecutionId, &Finish)],
            offers: &[Offer],
        ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
            {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(StoreError::Other("database is locked".into()));
                }
            }
            self.sizes.lock().unwrap().push(batch.len());
            if let Some(lane) = self.pause_during.lock().unwrap().take() {
                lane.pause_until(
                    std::time::Instant::now() + Duration::from_secs(60),
                    Duration::ZERO,
                );
            }
            let rows: Vec<Execution> = (0..self.rows)
                .map(|i| claimed_row(100 + i as i64))
                .collect();
            let claimed = offers
                .iter()
                .map(|_| (!self.unmade).then(|| rows.clone()))
                .collect();
            Ok((vec![true; batch.len()], claimed))
        }
    }

    /// Flushes 2 results of a lane of limit 2 through a sink that claims `rows` rows in its
    /// write; returns the lane and whether the flush woke it.
    /// A worker writing through `sink` with refills, for a lane of limit 2 that it refills
    /// in its writes.
    fn refilling_worker(sink: Arc<Refiller>) -> Worker {
        Worker {
            sink,
            max_batch: 8,
            max_wait: Duration::ZERO,
            owner: Arc::from("me"),
            events: EventBus::default(),
            stop_claiming: CancellationToken::new(),
            // The lane has no component: stand in for the check that it serves one.
            refillable: Lane::claims_freely,
            on_spend: Arc::new(|_| {}),
        }
    }

    fn refiller(fail: u32, rows: usize, pause_during: Option<Arc<Lane>>) -> Arc<Refiller> {
        Arc::new(Refiller {
            fail: Mutex::new(fail),
            rows,
            plain_writes: Mutex::new(0),
            sizes: Mutex::default(),
            pause_during: Mutex::new(pause_during),
            unmade: false,
        })
    }

    async fn flush_refilling(fail: u32, rows: usize) -> (Arc<Lane>, bool, Arc<Refiller>) {
        flush_through(refiller(fail, rows, None)).await
    }

    async fn flush_through(sink: Arc<Refiller>) -> (Arc<Lane>, bool, Arc<Refiller>) {
        let worker = refilling_worker(sink.clone());
        let lane = Arc::new(Lane::new("p", 2));
        // No retry may be pending: only the refill decides the wake.
        lane.take_retry_note();
        let mut batch = vec![done(&lane, 0), done(&lane, 2)];
        let back = worker.flush(&mut batch).await;
        assert!(back.is_empty());
        let woken = tokio::time::timeout(Duration::from_millis(50), lane.woken())
            .await
            .is_ok();
        (lane, woken, sink)
    }

    #[tokio::test]
    async fn a_refill_that_fills_every_slot_hands_the_rows_over_and_wakes_the_lane() {
        let (lane, woken, sink) = flush_refilling(0, 2).await;
        assert!(woken, "the producer starts what was handed over");
        assert_eq!((lane.running(), lane.free()), (2, 0));
        assert_eq!(lane.take_handed().len(), 2);
        assert_eq!(*sink.plain_writes.lock().unwrap(), 0);
    }

    /// A claim the store left to the producer (PostgreSQL: another worker held the
    /// provider's claim lock): the slots come back to the lane, which is woken to claim.
    #[tokio::test]
    async fn a_claim_the_store_did_not_make_frees_the_slots_and_wakes_the_lane() {
        let sink = Arc::new(Refiller {
            unmade: true,
            ..Arc::into_inner(refiller(0, 2, None)).unwrap()
        });
        let (lane, woken, sink) = flush_through(sink).await;
        assert_eq!(
            sink.sizes.lock().unwrap().len(),
            1,
            "the write went with its claim"
        );
        assert!(woken, "the producer claims for the freed slots itself");
        assert_eq!((lane.running(), lane.free()), (0, 2));
        assert!(lane.take_handed().is_empty());
    }

    #[tokio::test]
    async fn a_refill_that_found_no_rows_lets_the_lane_sleep() {
        let (lane, woken, _) = flush_refilling(0, 0).await;
        assert!(!woken, "nothing is due: no claim of its own");
        assert_eq!((lane.running(), lane.free()), (0, 2));
        assert!(lane.take_handed().is_empty());
    }

    #[tokio::test]
    async fn a_refill_that_found_fewer_rows_than_slots_hands_them_over() {
        let (lane, woken, _) = flush_refilling(0, 1).await;
        assert!(woken, "the producer starts what was handed over");
        assert_eq!((lane.running(), lane.free()), (1, 1));
        assert_eq!(lane.take_handed().len(), 1);
    }

    /// Before, the offer was weighed only before the write: a 429 that paused the lane
    /// while the write ran still started the rows it claimed, a burst right after the 429.
    #[tokio::test]
    async fn rows_refilled_for_a_lane_paused_during_the_write_go_back_unstarted() {
        let lane = Arc::new(Lane::new("p", 2));
        let sink = refiller(0, 2, Some(lane.clone()));
        let worker = refilling_worker(sink.clone());
        let mut batch = vec![done(&lane, 0), done(&lane, 2)];
        let back = worker.flush(&mut batch).await;
        assert_eq!(sink.sizes.lock().unwrap().len(), 1, "the write claimed");
        assert!(lane.take_handed().is_empty(), "nothing starts while paused");
        assert_eq!((lane.running(), lane.free()), (0, 2), "the slots came back");
        let back: Vec<_> = back
            .iter()
            .map(|c| (c.id, c.slot.is_some(), c.finish == Finish::Requeue))
            .collect();
        assert_eq!(back, vec![(100, false, true), (101, false, true)]);
    }

    #[tokio::test]
    async fn a_write_retried_without_its_claims_frees_the_slots_and_wakes_the_lane() {
        let (lane, woken, sink) = flush_refilling(1, 2).await;
        assert_eq!(*sink.plain_writes.lock().unwrap(), 1, "retried alone");
        assert!(woken, "the producer claims for the freed slots itself");
        assert_eq!((lane.running(), lane.free()), (0, 2));
        assert!(lane.take_handed().is_empty());
    }

    /// The sizes of the writes of `results` results of a lane of `limit`, written by a
    /// worker whose writes take up to 512, through a sink that claims in its writes or not,
    /// while `arriving` more wait in the channel; and how many of those were left there.
    async fn part_sizes(
        limit: u32,
        results: i64,
        arriving: i64,
        claims: bool,
    ) -> (Vec<usize>, usize) {
        let refiller = refiller(0, 0, None);
        let plain = recorder(0, true);
        let sink: Arc<dyn ResultSink> = if claims {
            refiller.clone()
        } else {
            plain.clone()
        };
        let worker = Worker {
            sink,
            max_batch: 512,
            max_wait: Duration::ZERO,
            owner: Arc::from("me"),
            events: EventBus::default(),
            stop_claiming: CancellationToken::new(),
            refillable: Lane::claims_freely,
            on_spend: Arc::new(|_| {}),
        };
        let lane = Arc::new(Lane::new("p", limit));
        let mut batch: Vec<Completion> = (0..results).map(|id| done(&lane, id)).collect();
        let (tx, mut rx) = mpsc::channel(64);
        for id in results..results + arriving {
            tx.send(done(&lane, id)).await.unwrap();
        }
        let mut part = Vec::new();
        worker.write_in_parts(&mut rx, &mut batch, &mut part).await;
        assert!(batch.is_empty() && part.is_empty());
        let left = rx.len();
        let held = u32::try_from(left).unwrap();
        assert_eq!(
            lane.free(),
            limit - held,
            "every written result's slot freed"
        );
        let sizes = if claims {
            refiller.sizes.lock().unwrap().clone()
        } else {
            plain.batches.lock().unwrap().iter().map(Vec::len).collect()
        };
        let written = i64::try_from(sizes.iter().sum::<usize>()).unwrap();
        assert_eq!(written + i64::try_from(left).unwrap(), results + arriving);
        (sizes, left)
    }

    #[tokio::test]
    async fn a_write_that_refills_takes_a_quarter_of_the_slots_at_a_time() {
        assert_eq!(part_sizes(256, 200, 0, true).await.0, vec![64, 64, 64, 8]);
        // Never below the smallest part, nor above the batch.
        assert_eq!(part_sizes(40, 40, 0, true).await.0, vec![16, 16, 8]);
        assert_eq!(part_sizes(8, 5, 0, true).await.0, vec![5]);
        // A sink whose producers claim after the write writes the batch whole.
        assert_eq!(part_sizes(256, 200, 0, false).await.0, vec![200]);
    }

    #[tokio::test]
    async fn results_that_arrive_while_a_part_is_written_join_the_batch() {
        // Taken in after the first part: the last part holds the batch's rest and them.
        assert_eq!(
            part_sizes(256, 200, 30, true).await,
            (vec![64, 64, 64, 38], 0)
        );
        // Not where the batch is written whole: the next batch gathers them.
        assert_eq!(part_sizes(256, 200, 30, false).await, (vec![200], 30));
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
