//! The queue's storage. Every SQL statement lives below this module; the rest of the host
//! sees only the [`Queue`] trait, implemented by [`sqlite`] (embedded, one worker) and
//! [`postgres`] (a fleet of workers sharing one queue). [`open`] picks one by URL.
//!
//! Invariants every backend keeps:
//! - a claim moves rows from `pending` to `running` atomically, so no row runs twice at once;
//! - a claim never brings a provider's running rows, across every worker, above the limit it
//!   is given;
//! - claims take interrupted rows (`resume`) first, then higher priority, then older rows;
//! - a running row changes only through the worker that owns it (`owner`), so a worker that
//!   lost a row (its lease expired and another took over) cannot overwrite what another wrote.

pub mod batches;
pub mod postgres;
pub mod spend;
pub mod sqlite;
pub mod wal;

pub use spend::{Spend, SpendEnd, SpendNotice, SpendRow, SpendScope};

use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{AttemptRecord, ErrorKind, Execution, ExecutionId, NewExecution, Status};
use sqlx::FromRow;

/// A failed storage operation, named by what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database: applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: row {id} is corrupt: {reason}")]
    Corrupt { id: ExecutionId, reason: String },
    #[error("database: {0}")]
    Other(String),
}

/// Attach the operation's name to a sqlx error.
pub(crate) trait DbContext<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> DbContext<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { op, source })
    }
}

/// How many executions of one provider are in each status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Held for a provider batch, or inside one.
    pub batched: u64,
}

impl StatusCounts {
    /// Adds `n` to the count of `status`.
    pub fn add(&mut self, status: Status, n: u64) {
        match status {
            Status::Pending => self.pending += n,
            Status::Running => self.running += n,
            Status::Completed => self.completed += n,
            Status::Failed => self.failed += n,
            Status::Cancelled => self.cancelled += n,
            Status::Batched => self.batched += n,
        }
    }
}

/// A provider as the daemon loaded it, kept so that other commands can see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderRecord {
    pub name: String,
    pub component: String,
    pub version: String,
    pub default_limit: u32,
    pub description: String,
}

/// What start-up recovery did with rows a stopped process left `running`.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Back to pending, to be claimed first: `(id, provider)`.
    pub resumed: Vec<(ExecutionId, String)>,
    /// Failed because the interrupted attempt was their last.
    pub failed: Vec<(ExecutionId, String)>,
}

/// A completed attempt's output as JSON text, serialized once where the attempt ends: the
/// batch writes bind the text as it is, with no JSON tree built per execution in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output(String);

impl Output {
    /// `value` serialized as JSON.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Output)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How an attempt ended, as the queue records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Completed(Output),
    /// Back to pending for `delay_ms` (from the database's clock), keeping the error.
    Retry {
        error: String,
        kind: ErrorKind,
        delay_ms: i64,
        /// Another member of the execution's route to run the next attempt on.
        to: Option<String>,
    },
    Failed {
        error: String,
        kind: ErrorKind,
    },
    /// Back to pending without counting the attempt (a graceful shutdown took it away).
    Requeue,
}

/// The queue's storage contract.
#[async_trait]
pub trait Queue: batches::BatchStore + Send + Sync + 'static {
    /// Inserts a pending execution and returns its id.
    async fn submit(&self, new: &NewExecution) -> Result<ExecutionId, StoreError>;

    /// Inserts many pending executions in one transaction and returns their ids in order.
    async fn submit_many(&self, new: &[NewExecution]) -> Result<Vec<ExecutionId>, StoreError>;

    async fn get(&self, id: ExecutionId) -> Result<Option<Execution>, StoreError>;

    /// Every execution, or one provider's, in id order.
    async fn list(&self, provider: Option<&str>) -> Result<Vec<Execution>, StoreError>;

    /// Atomically moves due pending rows of `provider` to `running` under `owner`, counting
    /// an attempt for each and leasing them for `lease_ms`, and returns them in claim order.
    /// It claims at most `max`, and no more than keeps the provider's running rows, across
    /// every worker, within `limit`.
    async fn claim(&self, provider: &str, claim: Claim<'_>) -> Result<Vec<Execution>, StoreError>;

    /// Extends the lease of every row `owner` runs by `lease_ms`. Returns how many it holds.
    async fn renew_leases(&self, owner: &str, lease_ms: i64) -> Result<u64, StoreError>;

    /// The earliest `not_before` of `provider`'s pending rows that are not yet due.
    async fn next_due(&self, provider: &str) -> Result<Option<i64>, StoreError>;

    /// Records how an attempt ended. Returns false when `owner` no longer owns the row, in
    /// which case nothing was written. A row that goes back to pending (a retry, a requeue)
    /// wakes the other workers; a completed or failed one does not, because the worker that
    /// freed the slot refills it itself, or calls [`Queue::slot_freed`] when it will not.
    async fn finish(
        &self,
        id: ExecutionId,
        owner: &str,
        finish: &Finish,
    ) -> Result<bool, StoreError> {
        let written = self.finish_many(owner, &[(id, finish)]).await?;
        Ok(written.first().copied().unwrap_or(false))
    }

    /// Records how many attempts ended, in one transaction (group commit): at most one
    /// statement per kind of end. Returns, in order, whether each was written; like
    /// [`Queue::finish`], a row `owner` no longer runs is left as it is. Either every row
    /// of the batch is written or none is, so a failed batch can be retried whole.
    async fn finish_many(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError>;

    /// The largest limit of a lane whose freed slots the completer refills in the batch's
    /// own write ([`Queue::finish_and_claim`], one round trip, not a write and then a claim
    /// per provider): 0 where that claims nothing, `u32::MAX` for every lane. The store
    /// says, since what the claim in the write costs is its own (see
    /// `PgQueue::REFILL_IN_WRITE_UP_TO`).
    fn refills_with_finish(&self) -> u32 {
        0
    }

    /// Writes `batch` as [`Queue::finish_many`] does, then claims for each
    /// `(provider, claim)` as [`Queue::claim`] does, seeing the batch written (so the rows it
    /// ends no longer count against a limit), reserving a budget's requests and tokens as
    /// that does; a claim here has no spend cap. Returns whether each row was written and
    /// each claim's executions, in order, or `None` for a claim the store did not make,
    /// which falls to the lane's producer (PostgreSQL: another worker held the provider's
    /// claim lock or budget lock, or the claimed rows could not be read).
    /// Either the write and the claims made are all done or none is, so a failure can be
    /// retried whole. A store that cannot claim in the write's round trip (see
    /// [`Queue::refills_with_finish`]) only writes, and makes no claim.
    async fn finish_and_claim(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
        claims: &[(&str, Claim<'_>)],
    ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
        let written = self.finish_many(owner, batch).await?;
        Ok((written, claims.iter().map(|_| None).collect()))
    }

    /// Returns the `running` rows whose worker is gone to pending with `resume` set, or
    /// fails them when the interrupted attempt was their last. On SQLite (one worker, held by
    /// a lock file) that is every running row; on PostgreSQL, the rows whose lease expired.
    async fn recover_interrupted(&self) -> Result<Recovered, StoreError>;

    /// Whether rows of other workers can be running: leases then need renewing and expired
    /// ones reclaiming while the daemon runs.
    fn shared(&self) -> bool {
        false
    }

    /// Tells the other workers that a slot of `provider` is free and this worker will not
    /// take it (it is stopping, lost the provider's component, or lowered its limit).
    async fn slot_freed(&self, _provider: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records that `owner` serves `providers` for the next `ttl_ms` (and no longer serves
    /// any other), and returns how many live workers serve each provider, itself included.
    /// Tells the other workers when it joined or left a provider. `None` where one worker
    /// has the queue to itself.
    async fn heartbeat(
        &self,
        _owner: &str,
        _providers: &[String],
        _ttl_ms: i64,
    ) -> Result<Option<BTreeMap<String, u32>>, StoreError> {
        Ok(None)
    }

    /// How many live workers serve each provider; `None` where one worker has the queue to
    /// itself.
    async fn workers(&self) -> Result<Option<BTreeMap<String, u32>>, StoreError> {
        Ok(None)
    }

    /// Takes `owner` out of the fleet (it is stopping) and tells the other workers, so that
    /// they share its part of each limit at once.
    async fn leave(&self, _owner: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// A stream of changes made in other processes: a provider's queue changed (a
    /// submission, or a slot freed), or a running execution was cancelled; `None` where the
    /// backend cannot notify.
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Change>>, StoreError> {
        Ok(None)
    }

    /// Readies what the daemon's batch writes use (PostgreSQL: a connection of the write
    /// pool, with the write prepared on it), so that the first results after a start do
    /// not wait for a connection. An error here is one every write would meet.
    async fn warm_up(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Counts by provider and status.
    async fn counts(&self) -> Result<BTreeMap<String, StatusCounts>, StoreError>;

    /// Counts by tenant (`""` for the rows without one) and status, across providers.
    async fn tenant_counts(&self) -> Result<BTreeMap<String, StatusCounts>, StoreError>;

    /// The ends of executions that used the response cache: a completed one's answer is
    /// stored under its key (then the provider's answers past its `ttl` are dropped; the
    /// count is [`Queue::sweep_cache`]'s) and completes the executions waiting for it; a
    /// failed or cancelled one's waiters become due, to run their own calls.
    async fn settle_cache(&self, ends: &[CacheEnd<'_>]) -> Result<CacheSettled, StoreError>;

    /// The response cache's upkeep: executions waiting for a leader that is no longer open
    /// (it failed at start-up recovery, its worker died before settling, its cancel raced
    /// the wait) become due, and each provider of `sizes` keeps at most its `max_entries`
    /// answers, the newest. Returns the providers whose waiters became due.
    async fn sweep_cache(&self, sizes: &[(String, u64)]) -> Result<BTreeSet<String>, StoreError>;

    /// Drops the stored answers of `provider` (every provider's with `None`); how many.
    async fn clear_cache(&self, provider: Option<&str>) -> Result<u64, StoreError>;

    /// The stored answers of each provider.
    async fn cache_entries(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// The usage and cost of the executions completed in `[since, until)` (Unix ms),
    /// grouped by `by`, in key order.
    async fn usage(&self, by: UsageBy, since: i64, until: i64)
    -> Result<Vec<UsageRow>, StoreError>;

    /// The running and pending rows of each of `providers` (the other counts stay 0). It
    /// reads the partial indexes of open rows only, so its cost does not grow with the
    /// history, unlike [`Queue::counts`]: routes read it for each routed submission.
    async fn open_counts(
        &self,
        providers: &[String],
    ) -> Result<BTreeMap<String, StatusCounts>, StoreError>;

    /// The pending rows of `provider` that a route placed there, by route.
    async fn pending_routed(&self, provider: &str) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Moves the pending rows that route `route` placed on `from` to other members, in
    /// claim order and in one statement: the first `to[0].1` rows to `to[0].0`, the next
    /// `to[1].1` to `to[1].0`, and so on. A row claimed meanwhile stays. Returns how many
    /// moved.
    async fn move_routed(
        &self,
        from: &str,
        route: &str,
        to: &[(String, u64)],
    ) -> Result<u64, StoreError>;

    /// Stores a run-time limit; it outranks config and component defaults.
    async fn set_limit(&self, provider: &str, limit: u32) -> Result<(), StoreError>;

    /// Removes a run-time limit.
    async fn clear_limit(&self, provider: &str) -> Result<bool, StoreError>;

    /// Every run-time limit.
    async fn limits(&self) -> Result<BTreeMap<String, u32>, StoreError>;

    /// Records the providers this worker loaded (SQLite replaces the record; on PostgreSQL,
    /// workers share it and each upserts its own).
    async fn record_providers(&self, providers: &[ProviderRecord]) -> Result<(), StoreError>;

    /// The providers the daemon last loaded.
    async fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError>;

    /// Inserts pending executions in one transaction, each with an optional idempotency
    /// key. A key already stored with the same fingerprint gives back its execution
    /// ([`Submitted::Repeated`]); with another fingerprint it is a [`Submitted::Conflict`],
    /// and then nothing of the batch is written.
    async fn submit_keyed(
        &self,
        batch: &[(NewExecution, Option<IdempotencyKey>)],
    ) -> Result<Vec<Submitted>, StoreError>;

    /// One page of executions, newest first (see [`ExecutionFilter`]).
    async fn list_page(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError>;

    /// The idempotency keys of those of `ids` that were submitted with one (`lanes export`
    /// recovers a batch load's `custom_id` from it; see [`BatchKey`]).
    async fn idempotency_keys(
        &self,
        ids: &[ExecutionId],
    ) -> Result<BTreeMap<ExecutionId, String>, StoreError>;

    /// Cancels a pending or running execution. A running one is left to its worker to stop:
    /// the row is `cancelled` at once, so whatever the attempt ends with is not written,
    /// and on PostgreSQL every worker is told (see [`Change::Cancel`]).
    async fn cancel(&self, id: ExecutionId) -> Result<Cancelled, StoreError>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a policy decision about `provider` (see [`StateChange`]). Returns whether it
    /// changed anything. Claims obey the result at once, on every worker.
    async fn change_state(&self, provider: &str, change: &StateChange) -> Result<bool, StoreError>;

    /// Priority aging: raises by one the priority of `provider`'s pending executions that
    /// have waited another `every_ms` since they were created, up to `max` in all. Returns
    /// how many rose. Safe to run from every worker at once: a row rises once per interval.
    async fn age(&self, provider: &str, every_ms: i64, max: u32) -> Result<u64, StoreError>;

    /// Every provider's policy state, as of the database's clock `now` (Unix ms).
    async fn provider_states(&self) -> Result<(i64, BTreeMap<String, ProviderState>), StoreError>;

    /// Settles the open budget reservation of `id` with the tokens its attempt used.
    async fn settle_budget(&self, id: ExecutionId, tokens: i64) -> Result<(), StoreError> {
        self.settle_budgets(&[(id, tokens)]).await
    }

    /// Settles the open budget reservations of many attempts, each `(id, tokens used)`, in
    /// one statement: the completer's, for a batch of ends.
    async fn settle_budgets(&self, ends: &[(ExecutionId, i64)]) -> Result<(), StoreError>;

    /// Requests and tokens of each budgeted provider in the last minute.
    async fn budget_usage(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError>;

    /// How long, in ms, until the oldest reservation of `provider` leaves the window (and
    /// frees its room); `None` when it has none.
    async fn budget_frees_in(&self, provider: &str) -> Result<Option<i64>, StoreError>;

    /// Settles the open spend reservations of `ends`' executions with what their attempts
    /// cost (an attempt claimed without one counts on its caps' day), in one transaction,
    /// and returns the notices that brings: a cap whose 80% or whole the spend now reaches,
    /// each told once across the fleet.
    async fn settle_spend(&self, ends: &[SpendEnd<'_>]) -> Result<Vec<SpendNotice>, StoreError>;

    /// Lets go the spend reservations of rows that are no longer running (or in a provider
    /// batch) without their end having settled them (recovered after a worker died,
    /// cancelled, put back at shutdown, back from a batch to the live lane). Returns how
    /// many.
    async fn release_spend(&self) -> Result<u64, StoreError>;

    /// What each provider and tenant spent and has reserved on `day` (days since the Unix
    /// epoch, UTC).
    async fn spend(&self, day: i64) -> Result<Vec<SpendRow>, StoreError>;

    /// Stores chunks of streamed deltas, in one transaction.
    async fn append_stream(&self, chunks: &[StreamChunk]) -> Result<(), StoreError>;

    /// The stored chunks of `id` from `from` on, oldest first: every chunk of a later
    /// attempt, and those of `from.attempt` that hold a delta at `from.index` or later.
    async fn read_stream(
        &self,
        id: ExecutionId,
        from: StreamPosition,
    ) -> Result<Vec<StreamChunk>, StoreError>;

    /// Deletes the chunks stored before `before` (Unix ms); how many.
    async fn prune_streams(&self, before: i64) -> Result<u64, StoreError>;
}

/// A run of an attempt's streamed deltas as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    pub execution_id: ExecutionId,
    pub attempt: i64,
    /// The index of its first delta within the attempt's stream.
    pub first: i64,
    /// How many deltas it holds.
    pub count: i64,
    /// The deltas, as a JSON array of `model::Delta`.
    pub deltas: String,
    /// When it was stored (Unix ms).
    pub at: i64,
}

impl StreamChunk {
    /// A chunk of `id` from its columns `attempt, first, count, deltas, at`.
    pub(crate) fn of_row(
        id: ExecutionId,
        (attempt, first, count, deltas, at): (i64, i64, i64, String, i64),
    ) -> Self {
        StreamChunk {
            execution_id: id,
            attempt,
            first,
            count,
            deltas,
            at,
        }
    }
}

/// A place in an execution's stream: delta `index` of attempt `attempt`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub attempt: i64,
    pub index: i64,
}

/// A provider's policy state, shared by every worker of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// No claims before this time (Unix ms): a pause or an open circuit's cool-down.
    pub paused_until: i64,
    /// Why it is paused or open.
    pub reason: Option<String>,
    /// Open: once the cool-down is over, one probe at a time until a success closes it.
    pub circuit_open: bool,
    /// Openings in a row, for the next cool-down.
    pub openings: u32,
    /// The adaptive limit, when the provider adapts.
    pub adaptive_limit: Option<u32>,
}

/// What a policy decided. Durations are from now, on the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// No claims for `for_ms`; a later pause already in place is kept.
    Pause { for_ms: i64, reason: String },
    /// Opens the circuit for `for_ms` and counts an opening.
    Open { for_ms: i64, reason: String },
    /// Closes an open circuit (a probe succeeded).
    Close,
    /// Closes a circuit that an unauthorized answer opened (the config or key changed).
    ClearUnauthorized,
    /// Sets (or, with `None`, removes) the adaptive limit.
    Adaptive(Option<u32>),
}

/// Reads a stored provider state row.
pub(crate) fn provider_state(
    (paused_until, reason, circuit, openings, adaptive): (
        i64,
        Option<String>,
        String,
        i64,
        Option<i64>,
    ),
) -> Result<ProviderState, StoreError> {
    Ok(ProviderState {
        paused_until,
        reason,
        circuit_open: circuit == "open",
        openings: read_count("circuit openings", openings)?,
        adaptive_limit: adaptive
            .map(|a| read_count("adaptive limit", a))
            .transpose()?,
    })
}

/// An idempotency key and the fingerprint of the request that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// `key` with the fingerprint of `new` as submitted, before a route picks its member
    /// (the same request gives the same fingerprint wherever it ran): its provider or
    /// route, input, priority and max attempts, and its tenant when it names one.
    pub fn of(key: String, new: &NewExecution) -> Result<Self, StoreError> {
        use sha2::Digest;
        // The normalized request: `{"prompt": …}` and its messages form are the same. The
        // tenant joins only when set, so a key stored before tenants keeps its fingerprint.
        let base = (&new.provider, &new.input, new.priority, new.max_attempts);
        let normalized = match &new.tenant {
            None => serde_json::to_string(&base),
            Some(tenant) => serde_json::to_string(&(base, tenant)),
        }
        .map_err(|e| StoreError::Other(format!("serializing input: {e}")))?;
        Ok(IdempotencyKey {
            key,
            fingerprint: hex::encode(sha2::Sha256::digest(normalized.as_bytes())),
        })
    }

    /// What a stored execution `id` of this key, stored with `fingerprint`, means.
    pub(crate) fn outcome(&self, id: ExecutionId, fingerprint: Option<&str>) -> Submitted {
        if fingerprint == Some(self.fingerprint.as_str()) {
            Submitted::Repeated(id)
        } else {
            Submitted::Conflict(id)
        }
    }
}

/// What [`Queue::submit_keyed`] did with one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new execution.
    Created(ExecutionId),
    /// A new execution answered from the response cache as it was inserted: completed,
    /// and its row as inserted, so that the caller needs no read to show it and no lane
    /// is woken for it.
    Answered(Box<Execution>),
    /// A new execution answered from the response cache as it was inserted, completed,
    /// whose row was not read (a hit inside a larger batch, or on PostgreSQL).
    Cached(ExecutionId),
    /// The key was stored with the same request: its execution.
    Repeated(ExecutionId),
    /// The key was stored with another request: that execution.
    Conflict(ExecutionId),
}

impl Submitted {
    /// Whether the response cache answered it as it was inserted.
    pub fn cached(&self) -> bool {
        matches!(self, Submitted::Answered(_) | Submitted::Cached(_))
    }

    /// The execution's id, whatever was done.
    pub fn id(&self) -> ExecutionId {
        match self {
            Submitted::Created(id)
            | Submitted::Cached(id)
            | Submitted::Repeated(id)
            | Submitted::Conflict(id) => *id,
            Submitted::Answered(e) => e.id,
        }
    }
}

/// One submission a backend inserted: its id, and whether the response cache answered it
/// (then it is completed, and no lane has work from it).
#[derive(Debug, Clone, Copy)]
struct Inserted {
    id: ExecutionId,
    hit: bool,
}

impl Inserted {
    /// What [`Queue::submit_keyed`] says of it.
    fn submitted(self) -> Submitted {
        if self.hit {
            Submitted::Cached(self.id)
        } else {
            Submitted::Created(self.id)
        }
    }
}

/// Which executions [`Queue::list_page`] returns: every filter given, newest first.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub provider: Option<String>,
    pub status: Option<Status>,
    /// Created at or after this time (Unix ms).
    pub created_after: Option<i64>,
    /// Created before this time (Unix ms).
    pub created_before: Option<i64>,
    /// Ended (completed, failed or cancelled) at or after this time (Unix ms); rows that
    /// have not ended are left out.
    pub finished_after: Option<i64>,
    /// Only ids below this one: the cursor of the next page.
    pub before_id: Option<ExecutionId>,
    /// At most this many.
    pub limit: u32,
}

/// The idempotency key of one line of a batch load (`lanes submit --file`): the line's
/// `custom_id` scoped by the batch's name, as `batch/NAME/CUSTOM_ID`. The name has no `/`,
/// so the `custom_id` (which may) is all after the second `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchKey<'a> {
    pub name: &'a str,
    pub custom_id: &'a str,
}

impl<'a> BatchKey<'a> {
    const PREFIX: &'static str = "batch/";

    /// The stored key.
    pub fn key(&self) -> String {
        format!("{}{}/{}", Self::PREFIX, self.name, self.custom_id)
    }

    /// The batch name and `custom_id` of a stored key, when a batch load wrote it.
    pub fn parse(key: &'a str) -> Option<Self> {
        let (name, custom_id) = key.strip_prefix(Self::PREFIX)?.split_once('/')?;
        Some(BatchKey { name, custom_id })
    }
}

/// What [`Queue::cancel`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending and is cancelled.
    Pending,
    /// It was running under `owner`, and is cancelled; its worker stops the attempt.
    Running {
        owner: Option<String>,
    },
    /// It had already ended.
    Terminal(Status),
    NotFound,
}

impl Cancelled {
    /// A row that was neither pending nor running, by its stored status (`None`: no row).
    pub(crate) fn ended(id: ExecutionId, status: Option<String>) -> Result<Cancelled, StoreError> {
        match status {
            None => Ok(Cancelled::NotFound),
            Some(s) => Ok(Cancelled::Terminal(
                s.parse()
                    .map_err(|reason| StoreError::Corrupt { id, reason })?,
            )),
        }
    }
}

/// A change another process made that this worker may act on (see [`Queue::listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A provider's queue changed: a submission, a freed slot, a row back to pending.
    Provider(String),
    /// An execution was cancelled while running: its worker stops the attempt.
    Cancel(ExecutionId),
    /// A worker joined or left the fleet: each worker counts the fleet again.
    Workers,
}

impl Change {
    /// The payload of [`Change::Workers`].
    pub const WORKERS: &str = "workers:";

    /// A notification's payload: a provider name, `cancel:ID` or [`Change::WORKERS`]
    /// (provider names have no `:`).
    pub fn parse(payload: &str) -> Option<Change> {
        if payload == Change::WORKERS {
            return Some(Change::Workers);
        }
        match payload.strip_prefix("cancel:") {
            Some(id) => id.parse().ok().map(Change::Cancel),
            None => Some(Change::Provider(payload.to_string())),
        }
    }
}

/// The parameters of one claim.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub owner: &'a str,
    /// The most rows to claim (this worker's free slots).
    pub max: u32,
    /// The provider's limit across every worker.
    pub limit: u32,
    pub lease_ms: i64,
    /// The provider's requests and tokens per minute, when it has a budget: the claim then
    /// also reserves against it (see [`Budget`]).
    pub budget: Option<Budget>,
    /// How the claim shares the lane among tenants.
    pub tenants: &'a Tenants,
    /// The day's spend caps that bear on this claim (the provider's, the tenants'): the
    /// claim then also reserves against them (see [`Spend`]).
    pub spend: Option<&'a Spend>,
}

/// One end for [`Queue::settle_cache`].
#[derive(Debug, Clone, Copy)]
pub struct CacheEnd<'a> {
    pub id: ExecutionId,
    pub provider: &'a str,
    pub key: &'a str,
    /// The stored answer of a completed execution; `None` for one that failed or was
    /// cancelled.
    pub output: Option<&'a str>,
    /// The provider's `response_cache` `ttl_secs`, in ms.
    pub ttl_ms: i64,
}

/// The providers whose caches `ends` store an answer in, each with its `ttl_ms`: what a
/// settle then trims of expired answers, once each.
pub(crate) fn stored_caches<'a>(ends: &[CacheEnd<'a>]) -> BTreeMap<&'a str, i64> {
    ends.iter()
        .filter(|e| e.output.is_some())
        .map(|e| (e.provider, e.ttl_ms))
        .collect()
}

/// What [`Queue::settle_cache`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheSettled {
    /// Waiters completed from an answer, with their providers.
    pub completed: Vec<(ExecutionId, String)>,
    /// Providers whose waiters became due.
    pub released: BTreeSet<String>,
}

/// What [`Queue::usage`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    Provider,
    /// The model the provider reported.
    Model,
    Tenant,
}

impl UsageBy {
    /// The grouping key as SQL over `executions`, in either dialect (`output` holds the
    /// stored `ChatOutput`'s JSON).
    pub(crate) fn key_sql(self, postgres: bool) -> &'static str {
        match (self, postgres) {
            (UsageBy::Provider, _) => "provider",
            (UsageBy::Tenant, _) => "tenant",
            (UsageBy::Model, false) => "COALESCE(json_extract(output, '$.model'), '')",
            (UsageBy::Model, true) => "COALESCE(output::jsonb ->> 'model', '')",
        }
    }
}

/// One group's usage and cost (see [`Queue::usage`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UsageRow {
    /// The provider, model or tenant (`""`: none).
    pub key: String,
    /// Completed executions.
    pub executions: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// The cost of the priced ones, in USD.
    pub cost_usd: f64,
    /// Completed executions without a price (their model has none, or they completed
    /// before lanes priced answers): their cost is not in `cost_usd`.
    pub unpriced: u64,
    /// What answers from provider batches saved against the live price, in USD.
    pub saved_usd: f64,
}

impl UsageRow {
    /// `rows` added up (`key` empty).
    pub fn total(rows: &[UsageRow]) -> UsageRow {
        let mut t = UsageRow::default();
        for r in rows {
            t.executions += r.executions;
            t.input_tokens += r.input_tokens;
            t.output_tokens += r.output_tokens;
            t.cache_read_tokens += r.cache_read_tokens;
            t.cache_write_tokens += r.cache_write_tokens;
            t.reasoning_tokens += r.reasoning_tokens;
            t.cost_usd += r.cost_usd;
            t.unpriced += r.unpriced;
            t.saved_usd += r.saved_usd;
        }
        t
    }
}

/// The columns of a [`UsageRow`], as SQLite and PostgreSQL read them from `output`.
pub(crate) fn usage_sql(by: UsageBy, postgres: bool) -> String {
    let num: fn(&str) -> String = if postgres {
        // SUM of bigint is numeric in PostgreSQL: cast back, as the row decodes i64.
        |path| format!("COALESCE(SUM((output::jsonb #>> '{{{path}}}')::bigint), 0)::bigint")
    } else {
        |path| {
            format!(
                "COALESCE(SUM(json_extract(output, '$.{}')), 0)",
                path.replace(',', ".")
            )
        }
    };
    let (real, params) = if postgres {
        (
            "COALESCE(SUM((output::jsonb #>> '{cost,usd}')::float8), 0)",
            ("$1", "$2"),
        )
    } else {
        (
            "COALESCE(SUM(json_extract(output, '$.cost.usd')), 0.0)",
            ("?1", "?2"),
        )
    };
    let saved = if postgres {
        "COALESCE(SUM((output::jsonb #>> '{cost,saved_usd}')::float8), 0)"
    } else {
        "COALESCE(SUM(json_extract(output, '$.cost.saved_usd')), 0.0)"
    };
    let unpriced = if postgres {
        "COUNT(*) FILTER (WHERE output::jsonb #>> '{cost,usd}' IS NULL)"
    } else {
        "SUM(json_extract(output, '$.cost.usd') IS NULL)"
    };
    format!(
        "SELECT {key} AS k, COUNT(*), {input}, {output}, {cache_read}, {cache_write},
                {reasoning}, {real}, {unpriced}, {saved}
           FROM executions
          WHERE status = 'completed' AND finished_at >= {since} AND finished_at < {until}
          GROUP BY k ORDER BY k",
        key = by.key_sql(postgres),
        input = num("usage,input_tokens"),
        output = num("usage,output_tokens"),
        cache_read = num("usage,cache_read_tokens"),
        cache_write = num("usage,cache_write_tokens"),
        reasoning = num("usage,reasoning_tokens"),
        since = params.0,
        until = params.1,
    )
}

/// One row of [`usage_sql`]: the key, the count, five token sums, the cost, the unpriced.
pub(crate) type UsageTuple = (String, i64, i64, i64, i64, i64, i64, f64, i64, f64);

/// Rows of [`usage_sql`] as [`UsageRow`]s.
pub(crate) fn usage_rows(rows: Vec<UsageTuple>) -> Vec<UsageRow> {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    rows.into_iter()
        .map(|r| UsageRow {
            key: r.0,
            executions: n(r.1),
            input_tokens: n(r.2),
            output_tokens: n(r.3),
            cache_read_tokens: n(r.4),
            cache_write_tokens: n(r.5),
            reasoning_tokens: n(r.6),
            cost_usd: r.7,
            unpriced: n(r.8),
            saved_usd: r.9,
        })
        .collect()
}

/// How a provider's lane is shared among the tenants with work in it (the last step of
/// the limit's rule, `crate::limits::fair_pick`): `[providers.NAME] tenant_limit` and
/// `fairness`, with `[tenants.NAME] weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenants {
    /// The most rows of one tenant running at once, across the fleet.
    pub limit: Option<u32>,
    /// Under `fairness = "weighted"`, each named tenant's weight as a JSON object
    /// (`{"acme": 2.5}`; a tenant it does not name weighs 1). `None`: round robin, every
    /// tenant weighs 1.
    pub weights: Option<std::sync::Arc<str>>,
}

impl Tenants {
    /// Round robin, with no tenant limit: what a provider without tenant settings gets.
    pub const NONE: Tenants = Tenants {
        limit: None,
        weights: None,
    };
}

/// [`Tenants::NONE`] to borrow: a claim of a provider without tenant settings.
pub static ROUND_ROBIN: Tenants = Tenants::NONE;

/// A provider's budget per minute, across the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// The length of a budget's window, in ms.
pub const BUDGET_WINDOW_MS: i64 = 60_000;

impl Budget {
    /// How many of `candidates` (estimated tokens of the next pending rows, in claim order)
    /// fit in what is left of the window after `used_requests` and `used_tokens`.
    pub fn room(&self, used_requests: i64, used_tokens: i64, candidates: &[i64]) -> usize {
        let requests = self
            .rpm
            .map_or(i64::MAX, |rpm| i64::from(rpm) - used_requests);
        let mut tokens = self.tpm.map_or(i64::MAX, |tpm| {
            i64::try_from(tpm).unwrap_or(i64::MAX) - used_tokens
        });
        let mut fit = 0;
        for estimate in candidates {
            if i64::try_from(fit).unwrap_or(i64::MAX) >= requests || *estimate > tokens {
                break;
            }
            tokens -= estimate;
            fit += 1;
        }
        fit
    }
}

/// The tokens an attempt of `input` is expected to use, reserved when it is claimed: its
/// `max_tokens` plus the length of its text ÷ 4.
pub fn estimate_tokens(input: &serde_json::Value) -> i64 {
    let max_tokens = input
        .get("max_tokens")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    max_tokens.max(0) + prompt_tokens(input)
}

/// The prompt tokens an attempt of `input` is expected to use: the length of its text ÷ 4.
pub fn prompt_tokens(input: &serde_json::Value) -> i64 {
    let mut chars = 0usize;
    let mut add = |v: Option<&serde_json::Value>| {
        chars += v.and_then(serde_json::Value::as_str).map_or(0, str::len);
    };
    add(input.get("system"));
    add(input.get("prompt"));
    if let Some(messages) = input.get("messages").and_then(serde_json::Value::as_array) {
        for m in messages {
            add_content(&mut chars, m.get("content"));
        }
    }
    i64::try_from(chars / 4).unwrap_or(i64::MAX)
}

/// The text of a message's content: a string, or its parts' `text` (tool calls' `arguments`,
/// tool results' content). Images are not counted.
fn add_content(chars: &mut usize, content: Option<&serde_json::Value>) {
    match content {
        Some(serde_json::Value::String(text)) => *chars += text.len(),
        Some(serde_json::Value::Array(parts)) => {
            for part in parts {
                for key in ["text", "arguments"] {
                    *chars += part
                        .get(key)
                        .and_then(serde_json::Value::as_str)
                        .map_or(0, str::len);
                }
                add_content(chars, part.get("content"));
            }
        }
        _ => {}
    }
}

/// Opens the queue at `url`: `sqlite://PATH` or `postgres://...`.
pub async fn open(url: &str) -> Result<Arc<dyn Queue>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgQueue::open(url).await?))
    } else {
        Ok(Arc::new(sqlite::SqliteQueue::open(url).await?))
    }
}

/// The columns every execution query returns: the fields of [`ExecutionRow`].
pub(crate) const COLUMNS: &str = "id, provider, status, priority, input, output, error, \
    error_kind, attempts, max_attempts, not_before, resume, created_at, started_at, \
    finished_at, owner, lease_until, worker, history, rate_limited, aged, route, tenant, \
    cache_key, may_defer, deadline, batch_id";

/// An execution as both backends store it. Read from a row, or (SQLite's batch write)
/// from a JSON array of [`COLUMNS`]' values, in that order.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(crate) struct ExecutionRow {
    id: i64,
    provider: String,
    status: String,
    priority: i32,
    input: String,
    output: Option<String>,
    error: Option<String>,
    error_kind: Option<String>,
    attempts: i32,
    max_attempts: i32,
    not_before: i64,
    resume: bool,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    owner: Option<String>,
    lease_until: Option<i64>,
    worker: Option<String>,
    history: Option<String>,
    rate_limited: i32,
    aged: i32,
    route: Option<String>,
    /// `''` for none: a key column, so that one index holds each tenant's pending rows.
    tenant: String,
    cache_key: Option<String>,
    may_defer: bool,
    deadline: Option<i64>,
    batch_id: Option<i64>,
}

/// Reads an execution from a row of either backend.
pub(crate) fn execution_from_row<'r, R: sqlx::Row>(row: &'r R) -> Result<Execution, StoreError>
where
    ExecutionRow: sqlx::FromRow<'r, R>,
{
    ExecutionRow::from_row(row)
        .op("reading an execution")
        .and_then(execution_from_raw)
}

/// The execution a stored row holds.
pub(crate) fn execution_from_raw(raw: ExecutionRow) -> Result<Execution, StoreError> {
    let id = raw.id;
    let corrupt = |reason: String| StoreError::Corrupt { id, reason };
    let status: Status = raw.status.parse().map_err(corrupt)?;
    let ran_on = raw.route.as_ref().map(|_| raw.provider.clone());
    Ok(Execution {
        id,
        provider: raw.provider,
        status,
        priority: raw.priority,
        // Input that another writer stored as invalid JSON is kept as a string: the attempt
        // then fails with a clear error instead of the row blocking its lane's claims.
        input: serde_json::from_str(&raw.input).unwrap_or(serde_json::Value::String(raw.input)),
        output: raw
            .output
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| corrupt(format!("output: {e}")))?,
        error: raw.error,
        error_kind: raw.error_kind,
        attempts: raw.attempts,
        rate_limited: raw.rate_limited,
        aged: raw.aged,
        route: raw.route,
        tenant: (!raw.tenant.is_empty()).then_some(raw.tenant),
        cache_key: raw.cache_key,
        deferrable: raw.may_defer,
        deadline: raw.deadline,
        batch_id: raw.batch_id,
        max_attempts: raw.max_attempts,
        not_before: raw.not_before,
        resume: raw.resume,
        created_at: raw.created_at,
        started_at: raw.started_at,
        finished_at: raw.finished_at,
        owner: raw.owner,
        lease_until: raw.lease_until,
        history: {
            let mut history: Vec<AttemptRecord> = raw
                .history
                .map(|h| serde_json::from_str(&h))
                .transpose()
                .map_err(|e| corrupt(format!("history: {e}")))?
                .unwrap_or_default();
            // A completed attempt is written to the history only after an earlier one; a
            // first attempt that completed is the row itself.
            if status == Status::Completed
                && history.last().is_none_or(|a| a.attempt != raw.attempts)
            {
                history.push(AttemptRecord {
                    attempt: raw.attempts,
                    started_at: raw.started_at,
                    finished_at: raw.finished_at,
                    worker: raw.worker.clone(),
                    outcome: "completed".to_string(),
                    error_kind: None,
                    error: None,
                    retry_delay_ms: None,
                    provider: ran_on,
                    // Answered by a batch's line: the batch that ran it.
                    batch: raw
                        .batch_id
                        .filter(|_| raw.worker.as_deref() == Some("batch")),
                });
            }
            history
        },
        worker: raw.worker,
    })
}

/// One attempt's end as a batched write stores it: every kind of end in one row shape, so
/// that each backend writes a whole batch in one statement. The statement sets `status`;
/// `output` when completed; `error` and `error_kind` when retried or failed, and clears
/// them when completed (a client reads an error as a failure; an earlier try's error stays
/// in the history); `not_before` to now + `delay_ms` when retried; `finished_at` when
/// completed or failed; and, for a requeue, takes the attempt back (`attempts - 1`,
/// `resume`, no `started_at`).
#[derive(Debug, Serialize)]
pub(crate) struct FinishRow<'a> {
    pub id: ExecutionId,
    pub status: &'static str,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
    pub kind: Option<&'static str>,
    pub delay_ms: Option<i64>,
    pub requeue: bool,
    /// A rate-limited retry: the attempt is given back and counted in `rate_limited`
    /// instead, so a storm of 429s does not use up `max_attempts`.
    pub rate_limited: bool,
    /// The provider the retry moves to (a route's other member).
    pub to: Option<&'a str>,
}

impl<'a> FinishRow<'a> {
    pub fn new(id: ExecutionId, finish: &'a Finish) -> Self {
        let mut row = FinishRow {
            id,
            status: "pending",
            output: None,
            error: None,
            kind: None,
            delay_ms: None,
            requeue: false,
            rate_limited: false,
            to: None,
        };
        match finish {
            Finish::Completed(output) => {
                row.status = "completed";
                row.output = Some(output.as_str());
            }
            Finish::Retry {
                error,
                kind,
                delay_ms,
                to,
            } => {
                row.to = to.as_deref();
                row.error = Some(error);
                row.kind = Some(kind.as_str());
                row.delay_ms = Some(*delay_ms);
                row.rate_limited = *kind == ErrorKind::RateLimited;
            }
            Finish::Failed { error, kind } => {
                row.status = "failed";
                row.error = Some(error);
                row.kind = Some(kind.as_str());
            }
            Finish::Requeue => row.requeue = true,
        }
        row
    }
}

/// Refuses, for [`Queue::finish_and_claim`], a claim with a spend cap: its estimates need
/// the price table, so its reservations are the producer's (see [`Queue::claim`]). A
/// budget's are made in the write as in a producer's claim.
pub(crate) fn claims_for_a_write(claims: &[(&str, Claim<'_>)]) -> Result<(), StoreError> {
    match claims.iter().find(|(_, c)| c.spend.is_some()) {
        Some((provider, _)) => Err(StoreError::Other(format!(
            "provider {provider}: a claim with a spend cap cannot go with a batch write"
        ))),
        None => Ok(()),
    }
}

/// Which entries of `batch` were written, given the ids the statements returned.
pub(crate) fn written_flags(
    batch: &[(ExecutionId, &Finish)],
    written: &std::collections::HashSet<i64>,
) -> Vec<bool> {
    batch.iter().map(|(id, _)| written.contains(id)).collect()
}

/// Executions claimed, and the ids of claimed rows that cannot be read, with why.
pub(crate) type Claimed = (Vec<Execution>, Vec<(ExecutionId, String)>);

/// Claimed rows as executions in start order (see [`sort_claimed`]), with the rows that
/// cannot be read set apart: their ids and why. Any other error is the claim's.
///
/// One row whose stored history or output another writer spoiled must not fail the claim
/// of every row taken with it: they would stay `running` until recovery, which claims
/// them again with it, and so on. The caller fails such rows with
/// [`unreadable_failure`]'s error.
pub(crate) fn readable_claims(
    rows: impl IntoIterator<Item = Result<Execution, StoreError>>,
) -> Result<Claimed, StoreError> {
    let mut claimed = Vec::new();
    let mut unreadable = Vec::new();
    for row in rows {
        match row {
            Ok(execution) => claimed.push(execution),
            Err(StoreError::Corrupt { id, reason }) => unreadable.push((id, reason)),
            Err(e) => return Err(e),
        }
    }
    sort_claimed(&mut claimed);
    Ok((claimed, unreadable))
}

/// The error an unreadable claimed row fails with, logged once at warn level. The row is
/// failed, not run: its history or output could not be written after the attempt either.
/// Failing it clears those two columns, so that it reads (and lists) again.
pub(crate) fn unreadable_failure(id: ExecutionId, reason: &str) -> String {
    let error =
        format!("its stored row could not be read ({reason}); its history and output were cleared");
    tracing::warn!("execution {id}: failed when claimed: {error}");
    error
}

/// Puts freshly claimed rows in start order: higher priority first, then FIFO. (The claim
/// itself took interrupted rows first; it clears `resume`, so that is not visible here.)
pub(crate) fn sort_claimed(rows: &mut [Execution]) {
    rows.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
}

/// How many ended attempts an execution's history keeps (the newest).
pub const HISTORY_KEPT: i64 = 20;

/// How much of an attempt's error its history keeps, in characters.
pub const HISTORY_ERROR_CHARS: i64 = 1000;

/// A count (a limit) as both backends store it: a 32-bit signed integer. Larger values are
/// refused the same way on both, never wrapped.
pub(crate) fn stored_count(what: &str, value: u32) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|_| {
        StoreError::Other(format!(
            "{what} {value} is too large: the most lanes stores is {}",
            crate::model::MAX_COUNT
        ))
    })
}

/// A count read back from either backend; the schema's checks keep it positive.
pub(crate) fn read_count(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Other(format!("the stored {what} {value} is out of range")))
}

/// Folds `(provider, status, count)` rows into counts per provider.
/// `(name, COUNT(*))` rows as counts by name (a count is never negative).
pub(crate) fn counts_by(rows: Vec<(String, i64)>) -> BTreeMap<String, u64> {
    rows.into_iter()
        .map(|(name, n)| (name, u64::try_from(n).unwrap_or(0)))
        .collect()
}

/// The cumulative upper bounds of [`Queue::move_routed`]'s shares, in claim order: each
/// member with the row numbers `(after, up to]` it takes.
pub(crate) fn move_bounds(to: &[(String, u64)]) -> Vec<(&str, i64, i64)> {
    let mut upto = 0i64;
    to.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(member, n)| {
            let after = upto;
            upto = upto.saturating_add(i64::try_from(*n).unwrap_or(i64::MAX));
            (member.as_str(), after, upto)
        })
        .collect()
}

pub(crate) fn fold_counts(
    rows: Vec<(String, String, i64)>,
) -> Result<BTreeMap<String, StatusCounts>, StoreError> {
    let mut counts: BTreeMap<String, StatusCounts> = BTreeMap::new();
    for (provider, status, n) in rows {
        let status: Status = status
            .parse()
            .map_err(|e: String| StoreError::Other(format!("counts of `{provider}`: {e}")))?;
        counts
            .entry(provider)
            .or_default()
            .add(status, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

/// `(name, component, version, default_limit, description)` rows as records.
pub(crate) fn provider_records(
    rows: Vec<(String, String, String, i64, String)>,
) -> Result<Vec<ProviderRecord>, StoreError> {
    rows.into_iter()
        .map(|(name, component, version, default_limit, description)| {
            Ok(ProviderRecord {
                default_limit: read_count("default limit", default_limit)?,
                name,
                component,
                version,
                description,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::estimate_tokens;

    #[test]
    fn estimates_count_text_parts_as_strings() {
        let string = serde_json::json!({"max_tokens": 10, "system": "abcd",
            "messages": [{"role": "user", "content": "abcdefgh"}]});
        assert_eq!(estimate_tokens(&string), 10 + 12 / 4);
        let parts = serde_json::json!({"max_tokens": 10, "system": "abcd",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image", "url": "https://example.com/a.png"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_call", "id": "c", "name": "f", "arguments": "{}"}]},
                {"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "c", "content": "ab"}]}]});
        assert_eq!(estimate_tokens(&parts), 10 + (4 + 4 + 2 + 2) / 4);
    }
}
