//! The batch lane's storage: batch records, the rows a batch holds, and the write of its
//! results. One text of each statement serves both backends: it is written with SQLite's
//! `?N` parameters and `{now}` for the database's clock, and [`for_postgres`] turns it into
//! PostgreSQL's. Every write to a batch's rows is guarded by `status = 'batched' AND
//! batch_id = <the batch>`, so a result is written once whoever writes it (a worker that took
//! over a batch reads its results again) and a row cancelled meanwhile keeps `cancelled`.

use serde::Serialize;

use super::StoreError;
use crate::model::{ExecutionId, Status};

/// A provider batch as the store keeps it (the `batches` table).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct BatchRecord {
    pub id: i64,
    /// Random and unique: what the provider keeps with the batch, to find it again.
    pub tag: String,
    pub provider: String,
    /// The model of every request in it, when they named one.
    pub model: Option<String>,
    /// lanes' state: `open`, `sending`, `sent`, `collecting`, `done` or `failed`.
    pub state: String,
    pub provider_batch_id: Option<String>,
    /// The provider's word for where the batch is (`in_progress`, `ended`, ...).
    pub provider_status: Option<String>,
    pub items: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// How many times its requests were sent (2 only after a send whose answer was lost).
    pub sends: i64,
    pub created_at: i64,
    pub submitted_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub next_poll_at: i64,
    pub cost_usd: Option<f64>,
    pub saved_usd: Option<f64>,
    pub error: Option<String>,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
}

/// The columns of [`BatchRecord`].
pub(crate) const BATCH_COLUMNS: &str = "id, tag, provider, model, state, provider_batch_id, \
    provider_status, items, succeeded, failed, sends, created_at, submitted_at, ended_at, \
    next_poll_at, cost_usd, saved_usd, error, owner, lease_until";

/// A change to a batch record, written by the worker that holds its lease.
#[derive(Debug, Clone, Default)]
pub struct BatchUpdate {
    pub state: Option<&'static str>,
    pub provider_batch_id: Option<String>,
    pub provider_status: Option<String>,
    pub succeeded: Option<i64>,
    pub failed: Option<i64>,
    /// One more send of its requests.
    pub sent: bool,
    /// A send that the provider refused before creating anything (a 429): not counted.
    pub unsent: bool,
    pub submitted: bool,
    pub ended: bool,
    /// When to look at it next, in ms from now.
    pub poll_in_ms: Option<i64>,
    pub error: Option<String>,
    /// Adds to the batch's cost and saving.
    pub cost_usd: Option<f64>,
    pub saved_usd: Option<f64>,
}

/// How one row of a batch ended, as its result is written.
#[derive(Debug, Clone, Serialize)]
pub struct BatchEnd {
    pub id: ExecutionId,
    /// `completed`, `failed`, or `pending` (back to the live lane: a line that expired, was
    /// cancelled by the provider or failed with a class that a live call may not).
    pub status: &'static str,
    pub output: Option<String>,
    pub error: Option<String>,
    pub kind: Option<&'static str>,
    /// Whether the line counts as an attempt (it ran at the provider).
    pub attempt: bool,
}

/// A row a batch's result was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: ExecutionId,
    /// What it became.
    pub status: Status,
    /// Its attempts, this one included when it counted.
    pub attempts: i32,
    /// `""`: none.
    pub tenant: String,
}

/// The caps of a batch being opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenCaps<'a> {
    /// The most rows in it.
    pub max_items: u32,
    /// The most bytes of their inputs.
    pub max_bytes: u64,
    /// No batch is opened while the provider has this many open.
    pub max_open: u32,
    /// The provider's and its tenants' daily spend caps, for today, when it or a tenant has
    /// one: a batch is a claim of its rows, held by the caps as a live claim is (see
    /// [`super::spend::Spend::batch_room`]), and its rows reserve their estimates at the
    /// batch price until their results settle them.
    pub spend: Option<&'a super::spend::Spend>,
}

/// How many rows of a provider wait for a batch, and since when the oldest does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub count: u64,
    pub oldest_at: Option<i64>,
    /// The earliest deadline among them.
    pub first_deadline: Option<i64>,
}

/// SQLite's `now` in Unix ms, read inside the statement.
pub(crate) const SQLITE_NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// `sql` (written for SQLite with `?N`, `{now}`, `{model}`, `{is}`, and `{elements}` and
/// `{json}`, which read a JSON array of a parameter: `{elements}(CAST(?N AS {json}))`) for
/// PostgreSQL: `$N`, the database's clock, and its spellings of a JSON field, of a
/// comparison that holds between NULLs and of a JSON array's elements.
pub(crate) fn for_postgres(sql: &str, now: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out.replace("{now}", now)
        // `json`, not `jsonb`: it takes any text JSON takes (`jsonb` refuses `\u0000`).
        .replace("{model}", "(input::json ->> 'model')")
        .replace("{bytes}", "octet_length(input)")
        .replace("{max_tokens}", "(input::json ->> 'max_tokens')::bigint")
        .replace("{is}", "IS NOT DISTINCT FROM")
        .replace("{elements}", "json_array_elements_text")
        .replace("{json}", "JSON")
        .replace("{BATCH_COLUMNS}", BATCH_COLUMNS)
}

/// `sql` for SQLite.
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace("{now}", SQLITE_NOW)
        .replace("{model}", "json_extract(input, '$.model')")
        .replace("{bytes}", "length(CAST(input AS BLOB))")
        .replace("{max_tokens}", "json_extract(input, '$.max_tokens')")
        .replace("{is}", "IS")
        .replace("{elements}", "json_each")
        .replace("{json}", "TEXT")
        .replace("{BATCH_COLUMNS}", BATCH_COLUMNS)
}

/// The providers with rows that wait for a batch.
pub(crate) const HELD_PROVIDERS_SQL: &str = "SELECT DISTINCT provider FROM executions
     WHERE status = 'batched' AND batch_id IS NULL";

/// The rows of `?1` that wait for a batch: how many, the oldest's age, the first deadline.
/// Each an index read (`executions_held`, `executions_held_deadline`): the loop asks every
/// half second, with up to a million rows waiting.
pub(crate) const HELD_SQL: &str = "SELECT
        (SELECT COUNT(*) FROM executions
          WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL),
        (SELECT created_at FROM executions
          WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL ORDER BY id LIMIT 1),
        (SELECT MIN(deadline) FROM executions
          WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL
            AND deadline IS NOT NULL)";

/// Records batch `?2` (tag) of provider `?1`, leased to `?3` for `?4` ms, for the model of
/// its oldest waiting row of a tenant not in `?6` (a JSON array of the tenants at their spend
/// caps, or NULL), unless the provider has `?5` batches open already. Run in one
/// transaction (on PostgreSQL under the provider's batch lock, [`OPEN_LOCK_SQL`], so that
/// workers open one at a time): this, then [`FILL_BATCH_SQL`] with the new id, then
/// [`COUNT_BATCH_SQL`]; a batch that got no row is deleted ([`DROP_EMPTY_SQL`]).
pub(crate) const OPEN_BATCH_SQL: &str = "INSERT INTO batches (tag, provider, model, state, items,
                              created_at, next_poll_at, owner, lease_until)
     SELECT ?2, ?1, (SELECT {model} FROM executions
                      WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL
                        AND (?6 IS NULL OR tenant NOT IN
                               (SELECT value FROM {elements}(CAST(?6 AS {json}))))
                      ORDER BY id LIMIT 1),
            'open', 0, {now}, {now}, ?3, {now} + ?4
     WHERE EXISTS (SELECT 1 FROM executions
                    WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL
                      AND (?6 IS NULL OR tenant NOT IN
                             (SELECT value FROM {elements}(CAST(?6 AS {json})))))
       AND (SELECT COUNT(*) FROM batches
             WHERE provider = ?1 AND state NOT IN ('done', 'failed')) < ?5
     RETURNING id";

/// PostgreSQL's lock on opening batches of provider `$1`, held to the transaction's end.
pub(crate) const OPEN_LOCK_SQL: &str =
    "SELECT pg_advisory_xact_lock(hashtext('lanes-batches:' || $1)::bigint)";

/// Deletes batch `?1` when it holds no row.
pub(crate) const DROP_EMPTY_SQL: &str = "DELETE FROM batches WHERE id = ?1 AND items = 0";

/// See [`OPEN_BATCH_SQL`]: `?1` batch id, `?2` provider, `?3` most rows, `?4` most bytes,
/// `?5` the tenants left out.
/// The first row always goes in, whatever its size, so that a row too large for its own
/// batch is sent and refused by the provider (an error that names it) rather than held.
pub(crate) const FILL_BATCH_SQL: &str = "UPDATE executions SET batch_id = ?1
     WHERE status = 'batched' AND batch_id IS NULL AND id IN (
        SELECT id FROM (
            SELECT id, {bytes} + 512 AS own,
                   SUM({bytes} + 512) OVER (ORDER BY id) AS bytes
              FROM executions
             WHERE provider = ?2 AND status = 'batched' AND batch_id IS NULL
               AND {model} {is} (SELECT model FROM batches WHERE id = ?1)
               AND (?5 IS NULL OR tenant NOT IN
                      (SELECT value FROM {elements}(CAST(?5 AS {json}))))
             ORDER BY id LIMIT ?3) AS picked
         WHERE bytes <= ?4 OR bytes = own)";

/// A new batch's rows, for its spend caps: id, tenant, the input's bytes and its
/// `max_tokens`, oldest first (what an estimate needs: the inputs themselves are not read
/// while the transaction holds the write lock, or the provider's budget lock).
pub(crate) const BATCH_INPUTS_SQL: &str = "SELECT id, tenant, CAST({bytes} AS BIGINT),
            {max_tokens}
       FROM executions WHERE batch_id = ?1 AND status = 'batched' ORDER BY id";

/// Takes the rows `?2` (a JSON array of ids) out of new batch `?1`: they wait for another.
pub(crate) const UNFILL_SQL: &str = "UPDATE executions SET batch_id = NULL
     WHERE batch_id = ?1 AND status = 'batched' AND id IN
       (SELECT CAST(value AS BIGINT) FROM {elements}(CAST(?2 AS {json})))";

/// See [`OPEN_BATCH_SQL`].
pub(crate) const COUNT_BATCH_SQL: &str = "UPDATE batches SET items =
        (SELECT COUNT(*) FROM executions WHERE batch_id = ?1 AND status = 'batched')
     WHERE id = ?1
     RETURNING {BATCH_COLUMNS}";

/// A page of batch `?1`'s rows after id `?2`, at most `?3`: id and input.
pub(crate) const BATCH_ROWS_SQL: &str = "SELECT id, input FROM executions
     WHERE batch_id = ?1 AND status = 'batched' AND id > ?2 ORDER BY id LIMIT ?3";

/// The batches worker `?1` should drive now: its own, and those whose lease ran out, that
/// are not over and are due; it takes their lease for `?2` ms. At most `?3`.
pub(crate) const TAKE_BATCHES_SQL: &str = "UPDATE batches SET owner = ?1, lease_until = {now} + ?2
     WHERE (owner = ?1 OR owner IS NULL OR lease_until < {now})
       AND id IN (SELECT id FROM batches
                   WHERE state NOT IN ('done', 'failed') AND next_poll_at <= {now}
                     AND (owner = ?1 OR owner IS NULL OR lease_until < {now})
                   ORDER BY next_poll_at LIMIT ?3)
     RETURNING {BATCH_COLUMNS}";

/// Writes a [`BatchUpdate`] (`?3` to `?14`) to batch `?1` if worker `?2` still holds it
/// (its lease has not run out), and renews the lease for `?15` ms.
pub(crate) const UPDATE_BATCH_SQL: &str = "UPDATE batches SET
        state = COALESCE(?3, state),
        provider_batch_id = COALESCE(?4, provider_batch_id),
        provider_status = COALESCE(?5, provider_status),
        succeeded = COALESCE(?6, succeeded),
        failed = COALESCE(?7, failed),
        sends = sends + ?8,
        submitted_at = CASE WHEN ?9 THEN {now} ELSE submitted_at END,
        ended_at = CASE WHEN ?10 THEN COALESCE(ended_at, {now}) ELSE ended_at END,
        next_poll_at = COALESCE({now} + ?11, next_poll_at),
        error = COALESCE(?12, error),
        cost_usd = CASE WHEN ?13 IS NULL THEN cost_usd ELSE COALESCE(cost_usd, 0) + ?13 END,
        saved_usd = CASE WHEN ?14 IS NULL THEN saved_usd ELSE COALESCE(saved_usd, 0) + ?14 END,
        lease_until = {now} + ?15
     WHERE id = ?1 AND owner = ?2 AND lease_until > {now}";

/// Rows of provider `?1` waiting for a batch go to the live lane: all of them (`?2` NULL),
/// or those whose deadline is before `?2`.
pub(crate) const RELEASE_HELD_SQL: &str =
    "UPDATE executions SET status = 'pending', not_before = {now}
     WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL";

/// Rows of provider `?1` waiting for a batch whose deadline is before `?2` go to the live
/// lane (an index range of `executions_held_deadline`).
pub(crate) const RELEASE_DUE_SQL: &str =
    "UPDATE executions SET status = 'pending', not_before = {now}
     WHERE provider = ?1 AND status = 'batched' AND batch_id IS NULL
       AND deadline IS NOT NULL AND deadline < ?2";

/// Rows of batch `?1` still in it go to the live lane (the batch failed as a whole, or its
/// results did not name them), if worker `?2` still holds the batch: a worker that lost it
/// must not send live what the new holder is writing the results of.
pub(crate) const RELEASE_BATCH_SQL: &str =
    "UPDATE executions SET status = 'pending', not_before = {now}
     WHERE batch_id = ?1 AND status = 'batched'
       AND EXISTS (SELECT 1 FROM batches
                    WHERE id = ?1 AND owner = ?2 AND lease_until > {now})";

/// Every batch, newest first, at most `?1`.
pub(crate) const LIST_BATCHES_SQL: &str =
    "SELECT {BATCH_COLUMNS} FROM batches ORDER BY id DESC LIMIT ?1";

/// One batch.
pub(crate) const GET_BATCH_SQL: &str = "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1";

/// A random tag for a new batch: `lanes-` and 24 hex digits.
pub fn new_tag() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::rng().random();
    format!("lanes-{}", hex::encode(bytes))
}

/// The JSON array of `ends` the result writes read.
pub(crate) fn ends_json(ends: &[BatchEnd]) -> Result<String, StoreError> {
    serde_json::to_string(ends)
        .map_err(|e| StoreError::Other(format!("encoding a batch's results: {e}")))
}

/// Writes the results of batch `?1`'s rows still in it, from the JSON array `?2` of
/// [`BatchEnd`]s (`{ends}` reads it, per dialect). A line back to the live lane that ran
/// (and so counts as an attempt) fails instead when it was the last attempt.
/// `+x.batch_id` keeps SQLite from walking the batch's rows by `executions_batch` for each
/// result (2.2 s a page of 200 in a batch of 20,000): it looks each up by its id.
pub(crate) const FINISH_BATCHED_SQL: &str = "UPDATE executions AS x SET
        history = CASE WHEN x.history IS NULL AND {status} = 'completed' THEN NULL
                       ELSE {history} END,
        status = {status},
        output = CASE WHEN e.status = 'completed' THEN e.output ELSE x.output END,
        error = CASE WHEN e.status = 'completed' THEN NULL ELSE COALESCE(e.error, x.error) END,
        error_kind = CASE WHEN e.status = 'completed' THEN NULL
                          ELSE COALESCE(e.kind, x.error_kind) END,
        attempts = x.attempts + CASE WHEN e.attempt THEN 1 ELSE 0 END,
        rate_limited = x.rate_limited
                       + CASE WHEN e.kind = 'rate_limited' AND NOT e.attempt THEN 1 ELSE 0 END,
        started_at = CASE WHEN e.attempt
                          THEN COALESCE((SELECT submitted_at FROM batches WHERE id = ?1), {now})
                          ELSE x.started_at END,
        finished_at = CASE WHEN {status} IN ('completed', 'failed') THEN {now} ELSE NULL END,
        not_before = {now},
        worker = 'batch'
     FROM {ends}
     WHERE x.id = e.id AND x.status = 'batched' AND +x.batch_id = ?1
     RETURNING {returning}";

/// The history entry of a batch's line (the pairs of a JSON object, per dialect): as a live
/// attempt's, with `worker` `batch`, the batch's submission as its start, and the batch's
/// id. A line that went back to the live lane without running there (expired, cancelled)
/// is `returned`, a rate-limited one `rate_limited`: neither counts as an attempt. As live,
/// a first attempt that completes leaves the history empty (the row itself is that entry).
const BATCH_HISTORY_ENTRY: &str = "'attempt', x.attempts + 1,
        'started_at', COALESCE((SELECT submitted_at FROM batches WHERE id = ?1), {now}),
        'finished_at', {now}, 'worker', 'batch',
        'outcome', CASE WHEN {status} IN ('completed', 'failed') THEN {status}
                        WHEN e.kind = 'rate_limited' THEN 'rate_limited'
                        WHEN e.attempt THEN 'retried' ELSE 'returned' END,
        'error_kind', e.kind, 'error', substr(e.error, 1, {error_chars}),
        'retry_delay_ms', NULL,
        'provider', CASE WHEN x.route IS NULL THEN NULL ELSE x.provider END,
        'batch', ?1";

/// [`FINISH_BATCHED_SQL`] with its history entry: `push` appends an object of the given
/// pairs to a history column (the dialect's `history_push`).
fn finish_batched(push: impl Fn(&str, &str) -> String) -> String {
    let entry =
        BATCH_HISTORY_ENTRY.replace("{error_chars}", &super::HISTORY_ERROR_CHARS.to_string());
    FINISH_BATCHED_SQL.replace("{history}", &push("x.history", &entry))
}

const FINISH_STATUS: &str = "CASE WHEN e.status = 'pending' AND e.attempt \
     AND x.attempts + 1 >= x.max_attempts THEN 'failed' ELSE e.status END";

/// [`FINISH_BATCHED_SQL`] for SQLite.
pub(crate) fn finish_batched_sqlite() -> String {
    for_sqlite(
        &finish_batched(super::sqlite::history_push)
            .replace("{status}", FINISH_STATUS)
            .replace(
                "{ends}",
                "(SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.status') AS status,
                         json_extract(value, '$.output') AS output,
                         json_extract(value, '$.error') AS error,
                         json_extract(value, '$.kind') AS kind,
                         json_extract(value, '$.attempt') AS attempt
                    FROM json_each(?2)) AS e",
            )
            .replace("{returning}", "id, status, attempts, tenant"),
    )
}

/// [`FINISH_BATCHED_SQL`] for PostgreSQL.
pub(crate) fn finish_batched_postgres(now: &str) -> String {
    for_postgres(
        &finish_batched(super::postgres::history_push)
            .replace("{status}", FINISH_STATUS)
            .replace(
                "{ends}",
                "jsonb_to_recordset(?2::jsonb) AS e(id bigint, status text, output text,
                                                   error text, kind text, attempt boolean)",
            )
            .replace("{returning}", "x.id, x.status, x.attempts, x.tenant"),
        now,
    )
}

/// The batch lane's part of the queue's storage contract ([`super::Queue`] requires it).
#[async_trait::async_trait]
pub trait BatchStore {
    /// How many rows of `provider` wait for a batch (see `store/batches.rs`).
    async fn held(&self, provider: &str) -> Result<Held, StoreError>;

    /// Records a new batch of `provider` (tag `tag`, leased to `owner` for `lease_ms`) and
    /// gives it up to `max_items` waiting rows of one model, oldest first, within
    /// `max_bytes` of input and the spend caps (reserving the estimates of the rows it
    /// takes). `None` when no row waits, or the caps leave none.
    async fn open_batch(
        &self,
        provider: &str,
        tag: &str,
        owner: &str,
        lease_ms: i64,
        caps: OpenCaps<'_>,
    ) -> Result<Option<BatchRecord>, StoreError>;

    /// The providers with rows that wait for a batch.
    async fn held_providers(&self) -> Result<Vec<String>, StoreError>;

    /// A page of batch `batch`'s rows after id `after`: ids and inputs.
    async fn batch_rows(
        &self,
        batch: i64,
        after: ExecutionId,
        limit: u32,
    ) -> Result<Vec<(ExecutionId, String)>, StoreError>;

    /// The batches `owner` should drive now (its own and those whose lease ran out, due),
    /// leased to it for `lease_ms`.
    async fn take_batches(
        &self,
        owner: &str,
        lease_ms: i64,
        max: u32,
    ) -> Result<Vec<BatchRecord>, StoreError>;

    /// Writes `update` to batch `id` if `owner` still holds it (its lease has not run out),
    /// and renews the lease for `lease_ms`.
    async fn update_batch(
        &self,
        id: i64,
        owner: &str,
        lease_ms: i64,
        update: &BatchUpdate,
    ) -> Result<bool, StoreError>;

    /// Writes the results of batch `batch`'s rows that are still in it. Returns the rows
    /// written, with the status each took.
    async fn finish_batched(
        &self,
        batch: i64,
        ends: &[BatchEnd],
    ) -> Result<Vec<Written>, StoreError>;

    /// Rows of `provider` waiting for a batch go to the live lane: all (`deadline_before`
    /// `None`), or those whose deadline is before it.
    async fn release_held(
        &self,
        provider: &str,
        deadline_before: Option<i64>,
    ) -> Result<u64, StoreError>;

    /// Rows still in batch `batch` go to the live lane, if `owner` still holds it.
    async fn release_batch(&self, batch: i64, owner: &str) -> Result<u64, StoreError>;

    /// Frees every open batch's lease (a single worker's start-up: whoever held them is
    /// gone). Returns how many.
    async fn free_batch_leases(&self) -> Result<u64, StoreError>;

    /// The newest `limit` batches, newest first.
    async fn batches(&self, limit: u32) -> Result<Vec<BatchRecord>, StoreError>;

    /// Batch `id`.
    async fn batch(&self, id: i64) -> Result<Option<BatchRecord>, StoreError>;
}

/// The batch methods of [`super::Queue`], for a backend: `$write` is the pool that writes,
/// `$read` the one that reads, `$sql` turns a statement text into the backend's, and
/// `$finish` is the backend's [`FINISH_BATCHED_SQL`]. The backend's module has
/// `reserve_rows` (a claim's reservations), and its queue a `batch_spend_totals` method (the
/// day's spend of a provider and its capped tenants, read under the provider's budget lock
/// where the backend has one, so that the fleet's claims and batches see each other's
/// reservations).
macro_rules! batch_methods {
    ($ty:ty, $write:ident, $read:ident, $sql:expr, $finish:expr, $lock:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::batches::BatchStore for $ty {
            async fn held(
                &self,
                provider: &str,
            ) -> Result<$crate::store::batches::Held, StoreError> {
                let (count, oldest_at, first_deadline): (i64, Option<i64>, Option<i64>) =
                    sqlx::query_as(&$sql($crate::store::batches::HELD_SQL))
                        .bind(provider)
                        .fetch_one(&self.$read)
                        .await
                        .op("counting the rows waiting for a batch")?;
                Ok($crate::store::batches::Held {
                    count: u64::try_from(count).unwrap_or(0),
                    oldest_at,
                    first_deadline,
                })
            }

            async fn open_batch(
                &self,
                provider: &str,
                tag: &str,
                owner: &str,
                lease_ms: i64,
                caps: $crate::store::batches::OpenCaps<'_>,
            ) -> Result<Option<$crate::store::batches::BatchRecord>, StoreError> {
                const OP: &str = "opening a batch";
                // SQLite: the write lock from the first statement (the spend read comes
                // before any write).
                let lock: Option<&str> = $lock;
                let begin: &str = if lock.is_some() {
                    "BEGIN"
                } else {
                    "BEGIN IMMEDIATE"
                };
                let mut tx = self.$write.begin_with(begin).await.op(OP)?;
                if let Some(lock) = lock {
                    sqlx::query(lock)
                        .bind(provider)
                        .execute(&mut *tx)
                        .await
                        .op(OP)?;
                }
                // The caps as a claim reads them: nothing while the provider's is reached,
                // and none of the tenants at theirs.
                let mut totals = Vec::new();
                let mut excluded = None;
                if let Some(spend) = caps.spend {
                    totals = self.batch_spend_totals(&mut tx, provider, spend).await?;
                    let read = spend.read(&totals);
                    if read.full {
                        tx.rollback().await.op(OP)?;
                        return Ok(None);
                    }
                    excluded = read.excluded;
                }
                let id: Option<i64> =
                    sqlx::query_scalar(&$sql($crate::store::batches::OPEN_BATCH_SQL))
                        .bind(provider)
                        .bind(tag)
                        .bind(owner)
                        .bind(lease_ms)
                        .bind(i64::from(caps.max_open))
                        .bind(excluded.as_deref())
                        .fetch_optional(&mut *tx)
                        .await
                        .op(OP)?;
                let Some(id) = id else {
                    tx.rollback().await.op(OP)?;
                    return Ok(None);
                };
                sqlx::query(&$sql($crate::store::batches::FILL_BATCH_SQL))
                    .bind(id)
                    .bind(provider)
                    .bind(i64::from(caps.max_items.max(1)))
                    .bind(i64::try_from(caps.max_bytes).unwrap_or(i64::MAX))
                    .bind(excluded.as_deref())
                    .execute(&mut *tx)
                    .await
                    .op(OP)?;
                if let Some(spend) = caps.spend {
                    // Row by row, as a claim: what the provider's and each tenant's cap
                    // leave; the rest wait for a later batch. The rows kept reserve.
                    let rows: Vec<(ExecutionId, String, i64, Option<i64>)> =
                        sqlx::query_as(&$sql($crate::store::batches::BATCH_INPUTS_SQL))
                            .bind(id)
                            .fetch_all(&mut *tx)
                            .await
                            .op(OP)?;
                    let (kept, left) = spend.batch_room(&totals, &rows);
                    if !left.is_empty() {
                        let left = serde_json::to_string(&left).map_err(|e| {
                            StoreError::Other(format!("encoding a batch's rows: {e}"))
                        })?;
                        sqlx::query(&$sql($crate::store::batches::UNFILL_SQL))
                            .bind(id)
                            .bind(left)
                            .execute(&mut *tx)
                            .await
                            .op(OP)?;
                    }
                    reserve_rows(&mut *tx, spend, provider, kept).await?;
                }
                let record: $crate::store::batches::BatchRecord =
                    sqlx::query_as(&$sql($crate::store::batches::COUNT_BATCH_SQL))
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .op(OP)?;
                if record.items == 0 {
                    // Another worker took the rows first.
                    sqlx::query(&$sql($crate::store::batches::DROP_EMPTY_SQL))
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .op(OP)?;
                    tx.commit().await.op(OP)?;
                    return Ok(None);
                }
                tx.commit().await.op(OP)?;
                Ok(Some(record))
            }

            async fn held_providers(&self) -> Result<Vec<String>, StoreError> {
                sqlx::query_scalar(&$sql($crate::store::batches::HELD_PROVIDERS_SQL))
                    .fetch_all(&self.$read)
                    .await
                    .op("listing the providers with rows waiting for a batch")
            }

            async fn batch_rows(
                &self,
                batch: i64,
                after: ExecutionId,
                limit: u32,
            ) -> Result<Vec<(ExecutionId, String)>, StoreError> {
                sqlx::query_as(&$sql($crate::store::batches::BATCH_ROWS_SQL))
                    .bind(batch)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$read)
                    .await
                    .op("reading a batch's rows")
            }

            async fn take_batches(
                &self,
                owner: &str,
                lease_ms: i64,
                max: u32,
            ) -> Result<Vec<$crate::store::batches::BatchRecord>, StoreError> {
                sqlx::query_as(&$sql($crate::store::batches::TAKE_BATCHES_SQL))
                    .bind(owner)
                    .bind(lease_ms)
                    .bind(i64::from(max))
                    .fetch_all(&self.$write)
                    .await
                    .op("taking batches to drive")
            }

            async fn update_batch(
                &self,
                id: i64,
                owner: &str,
                lease_ms: i64,
                u: &$crate::store::batches::BatchUpdate,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(&$sql($crate::store::batches::UPDATE_BATCH_SQL))
                    .bind(id)
                    .bind(owner)
                    .bind(u.state)
                    .bind(&u.provider_batch_id)
                    .bind(&u.provider_status)
                    .bind(u.succeeded)
                    .bind(u.failed)
                    .bind(i64::from(u.sent) - i64::from(u.unsent))
                    .bind(u.submitted)
                    .bind(u.ended)
                    .bind(u.poll_in_ms)
                    .bind(&u.error)
                    .bind(u.cost_usd)
                    .bind(u.saved_usd)
                    .bind(lease_ms)
                    .execute(&self.$write)
                    .await
                    .op("updating a batch")?;
                Ok(done.rows_affected() > 0)
            }

            async fn finish_batched(
                &self,
                batch: i64,
                ends: &[$crate::store::batches::BatchEnd],
            ) -> Result<Vec<$crate::store::batches::Written>, StoreError> {
                if ends.is_empty() {
                    return Ok(Vec::new());
                }
                let rows: Vec<(i64, String, i32, String)> = sqlx::query_as(&$finish)
                    .bind(batch)
                    .bind($crate::store::batches::ends_json(ends)?)
                    .fetch_all(&self.$write)
                    .await
                    .op("writing a batch's results")?;
                rows.into_iter()
                    .map(|(id, status, attempts, tenant)| {
                        status
                            .parse()
                            .map(|status| $crate::store::batches::Written {
                                id,
                                status,
                                attempts,
                                tenant,
                            })
                            .map_err(|reason| StoreError::Corrupt { id, reason })
                    })
                    .collect()
            }

            async fn release_held(
                &self,
                provider: &str,
                deadline_before: Option<i64>,
            ) -> Result<u64, StoreError> {
                let (all, due) = (
                    $sql($crate::store::batches::RELEASE_HELD_SQL),
                    $sql($crate::store::batches::RELEASE_DUE_SQL),
                );
                let query = match deadline_before {
                    None => sqlx::query(&all).bind(provider),
                    Some(before) => sqlx::query(&due).bind(provider).bind(before),
                };
                let done = query
                    .execute(&self.$write)
                    .await
                    .op("moving rows that waited for a batch to the live lane")?;
                Ok(done.rows_affected())
            }

            async fn release_batch(&self, batch: i64, owner: &str) -> Result<u64, StoreError> {
                let done = sqlx::query(&$sql($crate::store::batches::RELEASE_BATCH_SQL))
                    .bind(batch)
                    .bind(owner)
                    .execute(&self.$write)
                    .await
                    .op("moving a batch's rows to the live lane")?;
                Ok(done.rows_affected())
            }

            async fn free_batch_leases(&self) -> Result<u64, StoreError> {
                let done = sqlx::query(
                    "UPDATE batches SET lease_until = NULL, owner = NULL
                  WHERE state NOT IN ('done', 'failed')",
                )
                .execute(&self.$write)
                .await
                .op("freeing the leases of open batches")?;
                Ok(done.rows_affected())
            }

            async fn batches(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::batches::BatchRecord>, StoreError> {
                sqlx::query_as(&$sql($crate::store::batches::LIST_BATCHES_SQL))
                    .bind(i64::from(limit))
                    .fetch_all(&self.$read)
                    .await
                    .op("listing batches")
            }

            async fn batch(
                &self,
                id: i64,
            ) -> Result<Option<$crate::store::batches::BatchRecord>, StoreError> {
                sqlx::query_as(&$sql($crate::store::batches::GET_BATCH_SQL))
                    .bind(id)
                    .fetch_optional(&self.$read)
                    .await
                    .op("reading a batch")
            }
        }
    };
}
pub(crate) use batch_methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_text_numbers_its_parameters_and_reads_its_clock() {
        assert_eq!(
            for_postgres("SELECT ?1, ?12, '?' FROM t WHERE a < {now}", "NOW()"),
            "SELECT $1, $12, '?' FROM t WHERE a < NOW()"
        );
    }
}
