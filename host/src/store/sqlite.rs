//! The embedded backend: one SQLite file in WAL mode.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    BUDGET_WINDOW_MS, COLUMNS, Cancelled, Claim, Claimed, DbContext, ExecutionFilter, ExecutionRow,
    Finish, FinishRow, HISTORY_ERROR_CHARS, HISTORY_KEPT, IdempotencyKey, Inserted, ProviderRecord,
    ProviderState, Queue, Recovered, StateChange, StatusCounts, StoreError, StreamChunk,
    StreamPosition, Submitted, UsageBy, UsageRow, counts_by, estimate_tokens, execution_from_raw,
    execution_from_row, fold_counts, move_bounds, provider_records, provider_state, read_count,
    readable_claims, stored_count, unreadable_failure, usage_rows, usage_sql, written_flags,
};
use super::{CacheEnd, CacheSettled};
use crate::model::{Defer, ErrorKind, Execution, ExecutionId, NewExecution, now_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Rows as one JSON array, bound as the batch's `?1`.
fn json_rows<T: serde::Serialize>(rows: impl Iterator<Item = T>) -> Result<String, StoreError> {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows)
        .map_err(|e| StoreError::Other(format!("encoding a batch of results: {e}")))
}

/// An SQL expression: the row's attempt history with one more entry, the oldest dropped
/// past `HISTORY_KEPT`. The arguments are SQL expressions; the row's other columns are its
/// old values.
fn history_with(finished: &str, outcome: &str, kind: &str, error: &str, delay: &str) -> String {
    history_push(
        "history",
        &format!(
            "'attempt', attempts, 'started_at', started_at,
             'finished_at', {finished}, 'worker', worker, 'outcome', {outcome},
             'error_kind', {kind}, 'error', substr({error}, 1, {HISTORY_ERROR_CHARS}),
             'retry_delay_ms', {delay},
             'provider', CASE WHEN route IS NULL THEN NULL ELSE provider END"
        ),
    )
}

/// An SQL expression: the history column `history` with one more entry, the JSON object of
/// `pairs` (SQL), the oldest dropped past `HISTORY_KEPT`.
pub(crate) fn history_push(history: &str, pairs: &str) -> String {
    format!(
        "json_insert(
            CASE WHEN json_array_length(COALESCE({history}, '[]')) >= {HISTORY_KEPT}
                 THEN json_remove({history}, '$[0]') ELSE COALESCE({history}, '[]') END,
            '$[#]', json_object({pairs}))"
    )
}

/// The most rows of provider `provider` that may run at `now` under limit `limit` (SQL
/// parameters), given its policy state (see `provider_state`): none while paused, one while
/// an open circuit probes, and at most the adaptive limit. The SQLite twin of
/// [`crate::limits::claim_cap`], the rule's owner; `claim_caps_match_their_rust_twin`
/// holds them equal.
fn claim_cap(now: &str, provider: &str, limit: &str) -> String {
    format!(
        "COALESCE((SELECT CASE WHEN s.paused_until > {now} THEN 0
                               WHEN s.circuit = 'open' THEN MIN({limit}, 1)
                               ELSE MIN({limit}, COALESCE(s.adaptive_limit, {limit})) END
                          FROM provider_state s WHERE s.provider = {provider}), {limit})"
    )
}

/// The claim statement, with its parameters named: the owner, now, the provider, the most
/// rows, the limit, the lease, the tenant limit, the tenants' weights and the tenants a
/// spend cap leaves out (see [`claim_parts`]). One statement: SQLite serializes writers, so the running count, the
/// sub-select and the update see the same rows and no other claim can come in between.
fn claim_sql(params: [&str; 9]) -> String {
    let (picked, set) = claim_parts(params);
    format!("UPDATE executions SET {set} WHERE id IN ({picked}) RETURNING {COLUMNS}")
}

/// A claim's two halves (parameters as in [`claim_sql`]): the sub-select of the ids it
/// takes, and what it sets on them.
///
/// The ids are a merge of the tenants' queues, the SQLite twin of
/// [`crate::limits::fair_pick`] (`fair_claims_match_their_rust_twin` holds them equal): a
/// recursive query whose `ORDER BY` makes its queue a priority queue. It starts with the
/// first due row of each tenant it may take from, and, each time it takes a tenant's row,
/// puts that tenant's next row in the queue, its share key one higher; its `LIMIT` is the
/// room under the cap. The tenants come from `tenant_heads` (migration 0014, kept by
/// triggers): under round robin, only the first `max` whose head is due, in the index's order
/// (class, fewest running, oldest head), since a claim of `max` rows can take from no other
/// (each of those is ahead of any later tenant until it has given a row); then every tenant
/// whose head is not due yet (its first due row may come later), and the rows without a
/// tenant, which the triggers leave out (a seek for their head). Under `weighted`, every
/// tenant with pending rows: the share is not in the index. So its work follows the rows it
/// takes, not the tenants or the backlog behind them, while the tenants' heads are due (a
/// tenant whose first row waits for its retry, or for a cached answer, is looked at by every
/// claim until then). `INDEXED BY`: the daemon runs no `ANALYZE`, and without statistics
/// SQLite chose the `nb` index and sorted every due tenant (1.9 ms a claim at 2,000). A
/// tenant's next row is the next of the same class (`resume`, `priority`) by id, else the
/// first of a lower class: each an index seek. With one tenant pending (the common case,
/// and every queue without tenants) it reads that tenant's rows in order instead, as one
/// range of the index: the merge's seek per row cost a third of the no-op rate. (That
/// branch's `LIMIT` is 0 when the merge runs: a `WHERE` on the tenant count was checked
/// for every pending row, 7 ms a row at a million pending.) And when the first `room`
/// tenants in the index's order tie in class and running, and no other tenant may give a
/// row (`heads`), the claim is their heads, one each, and the merge does not run: each of
/// those heads is ahead of any tenant's second row (of the same class, its share is one
/// higher; of a lower class, it comes later anyway). That is a lane of many tenants with
/// few running each, the common case, and it saves the merge's queue and its seek for each
/// tenant's next row: the claim's select went from 6.2-6.9 to 3.8-4.0 µs a row at 1,000
/// tenants (SQLite in memory, the least of 5 runs), and `cargo bench -- tenants`' ratio to
/// one tenant from 0.68-0.80 to 0.72-0.98 (3 alternated runs). `heads` and the shortcut
/// read `first` in its `ORDER BY`'s order, which SQLite keeps for a CTE it materializes
/// (`first` is read several times); `store::tenant_second_rows` checks picks that rest on
/// it. The join is a `CROSS JOIN`, which keeps the heads the outer loop: as a plain join
/// SQLite read the lane's pending rows and looked each up among the heads (the benchmark's
/// deep queue, a million pending, ran for more than ten minutes instead of seconds).
fn claim_parts(
    [
        owner,
        now,
        provider,
        max,
        limit,
        lease,
        tenant_limit,
        weights,
        excluded,
    ]: [&str; 9],
) -> (String, String) {
    let due = format!("provider = {provider} AND status = 'pending' AND not_before <= {now}");
    // A tenant the claim may take from: under its tenant limit and not left out by a cap.
    let open = |t: &str, n: &str| {
        format!(
            "({tenant_limit} IS NULL OR {n} < {tenant_limit})
             AND ({excluded} IS NULL OR {t} NOT IN (SELECT value FROM json_each({excluded})))"
        )
    };
    let picked = format!(
        "WITH RECURSIVE
           first(t, head, n, resume, priority) AS (
             SELECT tenant, head, running, resume, priority
               FROM tenant_heads INDEXED BY tenant_heads_order
              WHERE provider = {provider} AND head IS NOT NULL AND nb <= {now} AND {open_named}
              ORDER BY resume DESC, priority DESC, running, head
              LIMIT CASE WHEN {weights} IS NULL THEN {max} ELSE -1 END),
           named(t, head, n) AS (
             SELECT t, head, n FROM first
             UNION ALL
             SELECT tenant, head, running FROM tenant_heads
              WHERE provider = {provider} AND head IS NOT NULL AND nb > {now} AND {open_named}),
           blank(t, head, n) AS (
             SELECT '', (SELECT id FROM executions
                          WHERE provider = {provider} AND status = 'pending' AND tenant = ''
                          ORDER BY resume DESC, priority DESC, id LIMIT 1),
                    (SELECT COUNT(*) FROM executions
                      WHERE provider = {provider} AND status = 'running' AND tenant = '')),
           seeds(t, head, n, w) AS (
             SELECT t, head, n,
                    CASE WHEN {weights} IS NULL THEN 1.0
                         ELSE COALESCE((SELECT value FROM json_each({weights})
                                         WHERE key = t), 1.0) END
               FROM (SELECT * FROM named
                     UNION ALL
                     SELECT t, head, n FROM blank WHERE head IS NOT NULL AND {open_blank})),
           room(n) AS (
             SELECT MAX(0, MIN({max}, {cap} - (SELECT COUNT(*) FROM executions
                                                 WHERE provider = {provider}
                                                   AND status = 'running')))),
           many(yes) AS (SELECT COUNT(*) > 1 FROM seeds),
           heads(yes) AS (
             SELECT {weights} IS NULL AND (SELECT yes FROM many)
                AND (SELECT COUNT(*) FROM seeds) = (SELECT COUNT(*) FROM first)
                AND COALESCE((SELECT (l.resume, l.priority, l.n) = (f.resume, f.priority, f.n)
                                FROM (SELECT * FROM first LIMIT 1) f,
                                     (SELECT * FROM first
                                       LIMIT 1 OFFSET (SELECT n FROM room) - 1) l), 0)),
           queue(id, t, n, w, k, resume, priority, share) AS (
             SELECT e.id, s.t, s.n, s.w, 1, e.resume, e.priority, s.n * 1.0 / s.w
               FROM seeds s JOIN executions e ON e.id = COALESCE(
                 (SELECT id FROM executions WHERE id = s.head AND not_before <= {now}),
                 (SELECT id FROM executions WHERE {due} AND tenant = s.t
                   ORDER BY resume DESC, priority DESC, id LIMIT 1))
              WHERE (SELECT yes FROM many) AND NOT (SELECT yes FROM heads)
             UNION ALL
             SELECT e.id, q.t, q.n, q.w, q.k + 1, e.resume, e.priority,
                    (q.n + q.k) * 1.0 / q.w
               FROM queue q JOIN executions e ON e.id = COALESCE(
                 (SELECT id FROM executions
                   WHERE {due} AND tenant = q.t AND resume = q.resume
                     AND priority = q.priority AND id > q.id
                   ORDER BY id LIMIT 1),
                 (SELECT id FROM executions
                   WHERE {due} AND tenant = q.t AND resume = q.resume
                     AND priority < q.priority
                   ORDER BY priority DESC, id LIMIT 1),
                 (SELECT id FROM executions
                   WHERE {due} AND tenant = q.t AND resume < q.resume
                   ORDER BY resume DESC, priority DESC, id LIMIT 1))
              WHERE {tenant_limit} IS NULL OR q.n + q.k < {tenant_limit}
              ORDER BY 6 DESC, 7 DESC, 8, 1
              LIMIT COALESCE((SELECT n FROM room), 0))
         SELECT id FROM queue
         UNION ALL
         SELECT hd.id FROM (SELECT head FROM first WHERE (SELECT yes FROM heads)
                             LIMIT (SELECT n FROM room)) f
           CROSS JOIN executions hd ON hd.id = f.head AND hd.provider = {provider}
                            AND hd.status = 'pending' AND hd.not_before <= {now}
         UNION ALL
         SELECT id FROM (
           SELECT e.id FROM seeds s JOIN executions e
                ON e.provider = {provider} AND e.status = 'pending' AND e.tenant = s.t
                   AND e.not_before <= {now}
            ORDER BY e.resume DESC, e.priority DESC, e.id
            LIMIT COALESCE((SELECT MIN(room.n, COALESCE({tenant_limit} - seeds.n, room.n))
                              FROM room, seeds, many WHERE NOT many.yes), 0))",
        cap = claim_cap(now, provider, limit),
        open_named = open("tenant", "running"),
        open_blank = open("t", "n"),
    );
    let set = format!(
        "status = 'running', owner = {owner}, worker = {owner}, started_at = {now},
         attempts = attempts + 1, resume = 0, lease_until = {now} + {lease}"
    );
    (picked, set)
}

/// A claim as statements for a transaction that holds the write lock: the ids it takes go
/// to the connection's temporary table `claim_picked` (see [`finish_and_claim_sql`]), then
/// one row, a JSON array of those rows (each an array of [`COLUMNS`]' values as the update
/// leaves them), then the update, which returns nothing. The table is emptied first, not
/// last, so that no id an earlier claim left there (one whose transaction was cut short)
/// can ever be claimed again with this one.
///
/// A statement hands each row it returns to the reading task on its own, and a reader
/// that keeps up is woken for each one: the connection's thread spent a quarter of its
/// time waking tasks and switching. One row per claim is one hand-over. SQLite no-op,
/// limit 256, 7 alternated pairs (with [`WRITTEN_SQL`] for the written ids): the run's
/// median went from 19.1k executions/s to 23.7k, and its ratio to the bare cycle in the
/// same run from 0.31 to 0.37. The JSON and the update each ran the sub-select until the
/// ids went to a table, so a claim across many tenants merged their queues twice: 1,000
/// tenants, 3 alternated pairs, the SQLite thread's CPU fell by 3.5%.
fn claim_json_sql(params: [&str; 9]) -> String {
    let [owner, now, _, _, _, lease, _, _, _] = params;
    let (picked, set) = claim_parts(params);
    format!(
        "DELETE FROM temp.claim_picked;
         INSERT OR IGNORE INTO temp.claim_picked (id) SELECT id FROM ({picked});
         SELECT json_group_array(json_array(
                id, provider, 'running', priority, input, output, error, error_kind,
                attempts + 1, max_attempts, not_before, json('false'), created_at, {now},
                finished_at, {owner}, {now} + {lease}, {owner}, history, rate_limited, aged,
                route, tenant, cache_key, json(CASE may_defer WHEN 0 THEN 'false' ELSE 'true' END),
                deadline, batch_id))
           FROM executions WHERE id IN temp.claim_picked;
         UPDATE executions SET {set} WHERE id IN temp.claim_picked"
    )
}

/// [`Queue::next_due`]: the earliest due time of `?1`'s pending rows that wait past now
/// (`?2`). `not_before > created_at` lets it read the partial index `executions_delayed`
/// (migration 0015), since a row due later than now was delayed past its creation; it read
/// every pending row before. Public for the test that checks its plan.
pub const NEXT_DUE_SQL: &str = "SELECT MIN(not_before) FROM executions
  WHERE provider = ?1 AND status = 'pending' AND not_before > created_at
    AND not_before > ?2 AND waits_for IS NULL";

/// The claim statement of [`claim_rows`], for the test that checks its plan.
pub fn claim_statement() -> &'static str {
    &CLAIM
}

/// The claim statement of [`claim_rows`].
static CLAIM: LazyLock<String> =
    LazyLock::new(|| claim_sql(["?1", "?2", "?3", "?4", "?5", "?6", "?7", "?8", "?9"]));

/// What a claim with a budget or spend caps does, for its errors.
const CLAIM_WITHIN_OP: &str = "claiming executions within the budget and spend caps";

/// Rows per statement of a batched submission.
const SUBMIT_CHUNK: usize = 5000;

/// Moves up to `max` due pending rows of `provider` to `running` (see [`Queue::claim`]),
/// none of the tenants of `excluded` (a JSON array).
async fn claim_rows<'e, E>(
    executor: E,
    provider: &str,
    claim: &Claim<'_>,
    max: u32,
    now: i64,
    excluded: Option<&str>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(&CLAIM)
        .bind(claim.owner)
        .bind(now)
        .bind(provider)
        .bind(i64::from(max))
        .bind(i64::from(claim.limit))
        .bind(claim.lease_ms)
        .bind(claim.tenants.limit.map(i64::from))
        .bind(claim.tenants.weights.as_deref())
        .bind(excluded)
        .fetch_all(executor)
        .await
        .op("claiming executions")
}

/// Claimed rows as executions, in claim order, and those that cannot be read (see
/// [`readable_claims`]).
fn claimed(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Claimed, StoreError> {
    readable_claims(rows.iter().map(execution_from_row))
}

/// Fails claimed rows of `owner` that cannot be read, with [`unreadable_failure`]'s error.
async fn fail_unreadable<'e, E>(
    executor: E,
    owner: &str,
    unreadable: &[(ExecutionId, String)],
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    if unreadable.is_empty() {
        return Ok(());
    }
    let rows = json_rows(
        unreadable
            .iter()
            .map(|(id, reason)| (*id, unreadable_failure(*id, reason))),
    )?;
    sqlx::query(
        "UPDATE executions SET status = 'failed', error = json_extract(b.value, '$[1]'),
                error_kind = ?3, finished_at = ?4, output = NULL, history = NULL,
                resume = 0, owner = NULL, lease_until = NULL
           FROM json_each(?1) AS b
          WHERE executions.id = json_extract(b.value, '$[0]')
            AND executions.owner = ?2 AND executions.status = 'running'",
    )
    .bind(rows)
    .bind(owner)
    .bind(ErrorKind::Other.as_str())
    .bind(now_ms())
    .execute(executor)
    .await
    .op("failing claimed rows that cannot be read")?;
    Ok(())
}

const FINISH_OP: &str = "recording attempts' ends";

/// The shape of a batch's write. Most batches hold only completed attempts: their rows need
/// two values each (`[id, output]`), not `FinishRow`'s nine, and a statement with no
/// per-row choice of outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Form {
    Completed,
    /// Any mix of ends.
    Mixed,
    /// Any mix, with a routed retry that moves its row to another provider.
    Moves,
}

impl Form {
    fn of(batch: &[(ExecutionId, &Finish)]) -> Form {
        if batch.iter().all(|(_, f)| matches!(f, Finish::Completed(_))) {
            Form::Completed
        } else if batch
            .iter()
            .any(|(_, f)| matches!(f, Finish::Retry { to: Some(_), .. }))
        {
            Form::Moves
        } else {
            Form::Mixed
        }
    }
}

/// A batch of ends as the JSON array the write of `form` reads: `[id, output]` for
/// [`Form::Completed`], else `FinishRow`'s fields as `$[0]` to `$[8]`.
fn finish_rows(batch: &[(ExecutionId, &Finish)], form: Form) -> Result<String, StoreError> {
    if form == Form::Completed {
        return json_rows(
            batch
                .iter()
                .map(|(id, finish)| (*id, FinishRow::new(*id, finish).output)),
        );
    }
    json_rows(batch.iter().map(|(id, finish)| {
        let r = FinishRow::new(*id, finish);
        (
            r.id,
            r.status,
            r.output,
            r.error,
            r.kind,
            r.delay_ms,
            r.requeue,
            r.rate_limited,
            r.to,
        )
    }))
}

/// The batch write of `form` over `finish_rows`' array (`?1`), by owner `?2` at `?3`,
/// returning the id of each row written. One statement: a batch costs one round trip to
/// the database thread however many rows it holds. Built once for each form.
fn finish_sql(form: Form) -> &'static str {
    fn returning(form: Form) -> String {
        format!("{} RETURNING executions.id", finish_update(form))
    }
    static COMPLETED: LazyLock<String> = LazyLock::new(|| returning(Form::Completed));
    static MIXED: LazyLock<String> = LazyLock::new(|| returning(Form::Mixed));
    static MOVES: LazyLock<String> = LazyLock::new(|| returning(Form::Moves));
    match form {
        Form::Completed => &COMPLETED,
        Form::Mixed => &MIXED,
        Form::Moves => &MOVES,
    }
}

/// The update of [`finish_sql`], returning nothing.
fn finish_update(form: Form) -> String {
    match form {
        Form::Completed => build_completed_sql(),
        Form::Mixed => build_finish_sql(false),
        Form::Moves => build_finish_sql(true),
    }
}

/// One row: a JSON array of the ids of the batch's rows that [`finish_update`] writes
/// (those still running under owner `?2`). Run before it, in the same transaction.
const WRITTEN_SQL: &str = "SELECT json_group_array(executions.id)
       FROM json_each(?1) AS b JOIN executions ON executions.id = json_extract(b.value, '$[0]')
      WHERE executions.owner = ?2 AND executions.status = 'running'";

/// [`Form::Completed`]'s write: what [`build_finish_sql`] does for a completed row, with
/// the outcome's values as constants.
fn build_completed_sql() -> String {
    let history = history_with("?3", "'completed'", "NULL", "NULL", "NULL");
    // A first attempt that completes leaves the history empty (see `build_finish_sql`).
    // An earlier try's error is cleared (see `FinishRow`).
    format!(
        "UPDATE executions SET
                history = CASE WHEN history IS NULL THEN NULL ELSE {history} END,
                status = 'completed',
                output = json_extract(b.value, '$[1]'),
                error = NULL, error_kind = NULL,
                finished_at = ?3,
                resume = 0,
                owner = NULL, lease_until = NULL
           FROM json_each(?1) AS b
          WHERE executions.id = json_extract(b.value, '$[0]')
            AND executions.owner = ?2 AND executions.status = 'running'"
    )
}

fn build_finish_sql(moves: bool) -> String {
    let moves = if moves {
        ",\n                    provider = COALESCE(json_extract(b.value, '$[8]'), provider)"
    } else {
        ""
    };
    let history = history_with(
        "?3",
        "CASE WHEN json_extract(b.value, '$[6]') THEN 'returned'
              WHEN json_extract(b.value, '$[7]') THEN 'rate_limited'
              WHEN json_extract(b.value, '$[1]') = 'pending' THEN 'retried'
              ELSE json_extract(b.value, '$[1]') END",
        "json_extract(b.value, '$[4]')",
        "json_extract(b.value, '$[3]')",
        "json_extract(b.value, '$[5]')",
    );
    // A first attempt that completes leaves the history empty: the row's own times and
    // worker describe it (see `execution_from_row`), and it is the common case.
    format!(
        "UPDATE executions SET
                history = CASE WHEN history IS NULL
                                    AND json_extract(b.value, '$[1]') = 'completed'
                               THEN NULL ELSE {history} END,
                status = json_extract(b.value, '$[1]'),
                output = CASE WHEN json_extract(b.value, '$[1]') = 'completed'
                              THEN json_extract(b.value, '$[2]') ELSE output END,
                error = CASE WHEN json_extract(b.value, '$[1]') = 'completed' THEN NULL
                             ELSE COALESCE(json_extract(b.value, '$[3]'), error) END,
                error_kind = CASE WHEN json_extract(b.value, '$[1]') = 'completed' THEN NULL
                                  ELSE COALESCE(json_extract(b.value, '$[4]'), error_kind) END,
                not_before = COALESCE(?3 + json_extract(b.value, '$[5]'), not_before),
                finished_at = CASE WHEN json_extract(b.value, '$[1]') = 'pending'
                                   THEN finished_at ELSE ?3 END,
                attempts = attempts - json_extract(b.value, '$[6]')
                           - json_extract(b.value, '$[7]'),
                rate_limited = rate_limited + json_extract(b.value, '$[7]'),
                resume = json_extract(b.value, '$[6]'),
                started_at = CASE WHEN json_extract(b.value, '$[6]')
                                  THEN NULL ELSE started_at END,
                owner = NULL, lease_until = NULL{moves}
           FROM json_each(?1) AS b
          WHERE executions.id = json_extract(b.value, '$[0]')
            AND executions.owner = ?2 AND executions.status = 'running'"
    )
}

/// What [`Queue::finish_and_claim`] does, for its errors.
const FINISH_AND_CLAIM_OP: &str = "recording attempts' ends and claiming for the slots they free";

/// Runs [`finish_and_claim_sql`]'s statements `sql` (with `pad` NULLs after the arguments)
/// for `batch` and the unbudgeted `claims`, on `conn`: one row for the ids written, then
/// one for each claim.
async fn write_and_claim(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    pad: usize,
    owner: &str,
    now: i64,
    batch: &[(ExecutionId, &Finish)],
    claims: &[(&str, Claim<'_>)],
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let form = Form::of(batch);
    let mut query = sqlx::query(sql)
        .bind(finish_rows(batch, form)?)
        .bind(owner)
        .bind(now);
    for (provider, claim) in claims {
        query = query
            .bind(*provider)
            .bind(i64::from(claim.max))
            .bind(i64::from(claim.limit))
            .bind(claim.lease_ms)
            .bind(claim.tenants.limit.map(i64::from))
            .bind(claim.tenants.weights.as_deref());
    }
    for _ in 0..pad {
        query = query.bind(None::<i64>);
    }
    query.fetch_all(conn).await.op(FINISH_AND_CLAIM_OP)
}

/// Whether each row of a batch was written, each claim's executions, and the claimed rows
/// that cannot be read, with why.
type WroteAndClaimed = (Vec<bool>, Vec<Vec<Execution>>, Vec<(ExecutionId, String)>);

/// Which rows of `batch` [`write_and_claim`]'s `rows` say were written, each of its
/// `claims` claims' executions, and the claimed rows that cannot be read.
fn read_write_and_claim(
    rows: &[sqlx::sqlite::SqliteRow],
    batch: &[(ExecutionId, &Finish)],
    claims: usize,
) -> Result<WroteAndClaimed, StoreError> {
    const OP: &str = FINISH_AND_CLAIM_OP;
    // The ids written, then each claim's rows, each a JSON array.
    let arrays: Vec<&str> = rows
        .iter()
        .map(|row| row.try_get::<&str, _>(0))
        .collect::<Result<_, _>>()
        .op(OP)?;
    let Some((written, claims_rows)) = arrays.split_first() else {
        return Err(StoreError::Other(format!(
            "{OP}: the write returned no rows"
        )));
    };
    if claims_rows.len() != claims {
        return Err(StoreError::Other(format!(
            "{OP}: {claims} claims returned {} results",
            claims_rows.len()
        )));
    }
    let ids: std::collections::HashSet<i64> = from_json(written)?;
    let mut claimed = Vec::with_capacity(claims);
    let mut unreadable = Vec::new();
    for array in claims_rows {
        let raw: Vec<ExecutionRow> = from_json(array)?;
        let (rows, bad) = readable_claims(raw.into_iter().map(execution_from_raw))?;
        claimed.push(rows);
        unreadable.extend(bad);
    }
    Ok((written_flags(batch, &ids), claimed, unreadable))
}

/// A statement string, and how many NULLs to bind after its arguments.
type Padded = (Arc<str>, usize);

/// The batch write and `claims` claims after it, in one transaction: `?1`–`?3` as in
/// [`finish_sql`], and for claim `k` (from 0) the provider, the most rows, the limit, the
/// lease, the tenant limit and the weights as `?(4+6k)` to `?(9+6k)`. It returns one row with the ids written
/// ([`WRITTEN_SQL`]), then one for each claim ([`claim_json_sql`]): a handful of rows
/// however large the batch. Built once for each form and count (a daemon has few lanes).
///
/// Also returns how many NULLs to bind after those parameters: see [`unnamed_positions`].
/// Without `own_transaction`, the statements leave out `BEGIN` and `COMMIT`, for a
/// transaction the caller holds (budgeted claims follow them in it).
fn finish_and_claim_sql(form: Form, claims: usize, own_transaction: bool) -> Padded {
    static BUILT: std::sync::Mutex<BTreeMap<(Form, usize, bool), Padded>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let sql = built
        .entry((form, claims, own_transaction))
        .or_insert_with(|| {
            let begin = if own_transaction {
                "BEGIN IMMEDIATE;"
            } else {
                ""
            };
            // A connection's temporary tables are its own, and last as long as it.
            let mut sql = format!(
                "CREATE TEMP TABLE IF NOT EXISTS claim_picked (id INTEGER PRIMARY KEY);
             {begin} {WRITTEN_SQL}; {};",
                finish_update(form)
            );
            for k in 0..claims {
                let p = |i: usize| format!("?{}", 4 + 6 * k + i);
                let (provider, max, limit, lease) = (p(0), p(1), p(2), p(3));
                let (tenant_limit, weights) = (p(4), p(5));
                sql.push_str(&claim_json_sql([
                    "?2",
                    "?3",
                    &provider,
                    &max,
                    &limit,
                    &lease,
                    &tenant_limit,
                    &weights,
                    // Claims with spend caps are the producer's; budgeted ones follow these
                    // (see `SqliteQueue::claim_within`).
                    "NULL",
                ]));
                sql.push(';');
            }
            if own_transaction {
                sql.push_str(" COMMIT");
            }
            let pad = unnamed_positions(&sql);
            (Arc::from(sql), pad)
        });
    sql.clone()
}

/// How many parameter positions the statements of `sql` leave unnamed: in a statement
/// that uses `?7` but not `?1`, position 1 has no name.
///
/// sqlx binds a statement's unnamed positions from the arguments, in order, counting on
/// from the previous statement's, and stops binding the statement (leaving its named
/// parameters NULL) once that count passes the number of arguments. Binding as many
/// NULLs after the arguments keeps it from stopping; what lands in an unnamed position is
/// never read.
fn unnamed_positions(sql: &str) -> usize {
    sql.split(';')
        .map(|statement| {
            let mut named = std::collections::BTreeSet::new();
            for (at, _) in statement.match_indices('?') {
                let digits: String = statement[at + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse::<usize>() {
                    named.insert(n);
                }
            }
            named
                .last()
                .map_or(0, |max| max.saturating_sub(named.len()))
        })
        .sum()
}

/// A JSON array that a statement built (see [`finish_and_claim_sql`]).
fn from_json<T: serde::de::DeserializeOwned>(array: &str) -> Result<T, StoreError> {
    serde_json::from_str(array)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        .op("reading what a batch write returned")
}

/// Reserves each claimed row's estimate for its capped provider and tenant on the caps'
/// day (see [`super::spend`]). A row claimed again (after its worker died) gives up the
/// reservation it had, which may be of another day.
async fn reserve_spend(
    tx: &mut sqlx::SqliteConnection,
    spend: &super::Spend,
    provider: &str,
    claimed: &[Execution],
) -> Result<(), StoreError> {
    reserve_rows(tx, spend, provider, spend.reservations(claimed)).await
}

/// Reserves `rows` (`(id, tenant, estimate)`, of provider `provider`) on the caps' day; a
/// row's earlier reservation goes (see [`reserve_spend`]).
async fn reserve_rows(
    tx: &mut sqlx::SqliteConnection,
    spend: &super::Spend,
    provider: &str,
    rows: Vec<(crate::model::ExecutionId, &str, f64)>,
) -> Result<(), StoreError> {
    const OP: &str = "reserving spend for claimed executions";
    if rows.is_empty() {
        return Ok(());
    }
    let old: Vec<super::spend::OpenReservation> = sqlx::query_as(
        "DELETE FROM spend_open WHERE execution_id IN (SELECT value FROM json_each(?1))
         RETURNING day, provider, tenant, usd",
    )
    .bind(json_rows(rows.iter().map(|r| r.0))?)
    .fetch_all(&mut *tx)
    .await
    .op(OP)?;
    sqlx::query(
        "INSERT INTO spend_open (execution_id, day, provider, tenant, usd)
         SELECT json_extract(value, '$[0]'), ?2, ?3, json_extract(value, '$[1]'),
                json_extract(value, '$[2]')
           FROM json_each(?1)",
    )
    .bind(json_rows(rows.iter())?)
    .bind(spend.day)
    .bind(provider)
    .execute(&mut *tx)
    .await
    .op(OP)?;
    let released = old
        .iter()
        .map(|o| (o.day, o.provider.as_str(), o.tenant.as_str(), -o.usd));
    let reserved = rows
        .iter()
        .map(|(_, tenant, usd)| (spend.day, provider, *tenant, *usd));
    let deltas = spend.deltas(provider, released.chain(reserved));
    add_reserved(tx, &deltas).await
}

/// Adds each `(day, scope, name, usd)` to that `spend` row's reserved USD, never below 0
/// (a release for a row that is not there leaves it below, and reads take it as 0).
async fn add_reserved(
    tx: &mut sqlx::SqliteConnection,
    deltas: &[(i64, &'static str, String, f64)],
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO spend (day, scope, name, reserved)
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                json_extract(value, '$[2]'), json_extract(value, '$[3]')
           FROM json_each(?1) WHERE true
         ON CONFLICT (day, scope, name) DO UPDATE
            SET reserved = MAX(0.0, reserved + excluded.reserved)",
    )
    .bind(json_rows(deltas.iter())?)
    .execute(&mut *tx)
    .await
    .op("reserving spend for claimed executions")?;
    Ok(())
}

/// Binds `?1` to `?9` of a submission's insert: provider, priority, input, max attempts,
/// now (due and created), the idempotency key and its fingerprint, route and tenant.
macro_rules! bind_submission {
    ($query:expr, $new:expr, $input:expr, $now:expr, $key:expr) => {
        $query
            .bind(&$new.provider)
            .bind($new.priority)
            .bind($input)
            .bind($new.max_attempts)
            .bind($now)
            .bind($key.map(|k| &k.key))
            .bind($key.map(|k| &k.fingerprint))
            .bind(&$new.route)
            .bind(&$new.tenant)
    };
}

/// A queue in one SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    /// One connection for the claims, the batch writes and the submissions: the hot path's
    /// writes.
    ///
    /// SQLite empties a connection's page cache whenever another connection has written
    /// since its last transaction, and sqlx hands out idle connections first in, first out,
    /// so on the shared pool every claim and every write began with a cold cache and read
    /// its pages again from the file (1,000 tenants: about 15k executions/s, 17k on one
    /// connection). On one connection of their own they keep it warm between them. They
    /// lose no concurrency: SQLite lets one connection write at a time anyway, and they
    /// queue for the connection in order. Submissions go here too: in the busy handler, a
    /// submission could wait out several claims in a row of a connection that never let go
    /// of the lock for long (a tenant's first row then started a slot turnover late).
    writer: SqlitePool,
    /// The log's checkpoints, made by a task beside the writes (see [`super::wal`]).
    checkpoints: Arc<super::wal::Checkpoints>,
    /// Stops that task when the last clone of this queue is dropped.
    _checkpointing: Arc<tokio_util::sync::DropGuard>,
}

impl SqliteQueue {
    /// A claim with a budget or spend caps, in `tx` (which holds the write lock): what the
    /// window and the day have used, the room it leaves for the next pending rows (by
    /// their estimates), the claim, and the reservations. A producer's budgeted claim runs
    /// it in a transaction of its own; a batch write's ([`Queue::finish_and_claim`]) in
    /// the write's.
    async fn claim_within(
        &self,
        tx: &mut sqlx::SqliteConnection,
        provider: &str,
        claim: &Claim<'_>,
        now: i64,
    ) -> Result<Vec<Execution>, StoreError> {
        let mut used = (0, 0);
        if claim.budget.is_some() {
            sqlx::query("DELETE FROM budget_ledger WHERE provider = ?1 AND at <= ?2")
                .bind(provider)
                .bind(now - BUDGET_WINDOW_MS)
                .execute(&mut *tx)
                .await
                .op(CLAIM_WITHIN_OP)?;
            // Kept by the ledger's triggers (migration 0017): one row, not a sum of the
            // ledger.
            used = sqlx::query_as(
                "SELECT COALESCE(MAX(requests), 0), COALESCE(MAX(tokens), 0) FROM budget_used
                  WHERE provider = ?1",
            )
            .bind(provider)
            .fetch_one(&mut *tx)
            .await
            .op(CLAIM_WITHIN_OP)?;
        }
        let mut excluded = None;
        let mut provider_total = 0.0;
        if let Some(spend) = claim.spend {
            let rows = self.spend_totals(tx, provider, spend).await?;
            let read = spend.read(&rows);
            if read.full {
                return Ok(Vec::new());
            }
            (provider_total, excluded) = (read.provider_total, read.excluded);
        }
        let mut room = claim.max;
        if let Some(requests) = super::spend::room_by_requests(claim, used, provider_total) {
            room = requests;
        } else if super::spend::weighs_estimates(claim) {
            // The rows this claim would take, in its order (a dry run, undone), by whose
            // estimates the room is measured: the claim then takes the first of them.
            sqlx::query("SAVEPOINT candidates")
                .execute(&mut *tx)
                .await
                .op(CLAIM_WITHIN_OP)?;
            let rows = claim_rows(
                &mut *tx,
                provider,
                claim,
                claim.max,
                now,
                excluded.as_deref(),
            )
            .await?;
            sqlx::query("ROLLBACK TO candidates; RELEASE candidates")
                .execute(&mut *tx)
                .await
                .op(CLAIM_WITHIN_OP)?;
            let inputs = rows.iter().map(|row| row.try_get::<&str, _>("input").ok());
            room = super::spend::room(claim, used, provider_total, inputs);
        }
        if room == 0 {
            return Ok(Vec::new());
        }
        let rows = claim_rows(&mut *tx, provider, claim, room, now, excluded.as_deref()).await?;
        let (claimed, unreadable) = claimed(&rows)?;
        fail_unreadable(&mut *tx, claim.owner, &unreadable).await?;
        if claim.budget.is_some() {
            let reservations =
                json_rows(claimed.iter().map(|e| (e.id, estimate_tokens(&e.input))))?;
            sqlx::query(
                "INSERT INTO budget_ledger (execution_id, provider, at, tokens)
                 SELECT json_extract(value, '$[0]'), ?2, ?3, json_extract(value, '$[1]')
                   FROM json_each(?1)",
            )
            .bind(reservations)
            .bind(provider)
            .bind(now)
            .execute(&mut *tx)
            .await
            .op(CLAIM_WITHIN_OP)?;
        }
        if let Some(spend) = claim.spend {
            reserve_spend(tx, spend, provider, &claimed).await?;
        }
        Ok(claimed)
    }

    /// The day's `(scope, name, spent + reserved)` rows of `provider` and the tenants
    /// `spend` caps, read in `tx` (which holds the write lock).
    async fn spend_totals(
        &self,
        tx: &mut sqlx::SqliteConnection,
        provider: &str,
        spend: &super::Spend,
    ) -> Result<Vec<(String, String, f64)>, StoreError> {
        sqlx::query_as(
            "SELECT scope, name, spent + MAX(reserved, 0.0) FROM spend
              WHERE day = ?1 AND ((scope = 'provider' AND name = ?2)
                    OR (scope = 'tenant' AND name IN (SELECT value FROM json_each(?3))))",
        )
        .bind(spend.day)
        .bind(provider)
        .bind(spend.tenant_names())
        .fetch_all(&mut *tx)
        .await
        .op("reading the day's spend")
    }

    /// [`SqliteQueue::spend_totals`], for a batch being opened (see `batch_methods!`).
    async fn batch_spend_totals(
        &self,
        tx: &mut sqlx::SqliteConnection,
        provider: &str,
        spend: &super::Spend,
    ) -> Result<Vec<(String, String, f64)>, StoreError> {
        self.spend_totals(tx, provider, spend).await
    }

    /// Opens (creating when missing) the database at `url` (`sqlite://PATH`) and applies
    /// migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .op("parsing database_url")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_WAIT)
            .foreign_keys(true)
            .pragma("cache_size", "-32768")
            // A log that grew large (its checkpoints fell behind) is cut back to 64 MiB
            // when it restarts, so the file does not keep its largest size on disk.
            .pragma("journal_size_limit", "67108864")
            .row_buffer_size(ROW_BUFFER);
        // Several processes may open a new file at once (`lanes serve` and `lanes submit`):
        // switching to WAL and migrating must happen in one of them at a time.
        let init_lock = init_lock(options.get_filename()).await?;
        let checkpoints = Arc::new(super::wal::Checkpoints::default());
        let pool = pool_options(4, &checkpoints)
            .connect_with(options.clone())
            .await
            .op("opening the database")?;
        MIGRATOR.run(&pool).await?;
        // Opened after the migrations: the first connection of a new file switched it to WAL.
        let writer = pool_options(1, &checkpoints)
            .connect_with(options.clone())
            .await
            .op("opening the database's write connection")?;
        drop(init_lock);
        let closed = tokio_util::sync::CancellationToken::new();
        tokio::spawn(super::wal::run(
            options,
            checkpoints.clone(),
            closed.clone(),
        ));
        Ok(SqliteQueue {
            pool,
            writer,
            checkpoints,
            _checkpointing: Arc::new(closed.drop_guard()),
        })
    }

    /// Opens the database file at `path`.
    pub async fn open_path(path: &Path) -> Result<Self, StoreError> {
        Self::open(&format!("sqlite://{}", path.display())).await
    }

    /// A transaction for submitting `new`: one that takes the write lock at once when a row
    /// uses the response cache, so that its look-ups and its insert see the same queue.
    async fn begin_for(
        &self,
        cached: bool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        const OP: &str = "submitting executions";
        if cached {
            self.writer.begin_with("BEGIN IMMEDIATE").await.op(OP)
        } else {
            self.writer.begin().await.op(OP)
        }
    }

    /// One submission answered from the response cache, when a fresh answer is there: one
    /// statement on the write connection that copies the answer into a completed row and
    /// returns the row. `None` when there is no fresh answer (or no cache, or the
    /// idempotency key is already stored): the submission's transaction then decides, as
    /// for any miss.
    ///
    /// A hit needs no leader and no single flight, so none of the write transaction that a
    /// miss takes (`BEGIN IMMEDIATE`, the look-ups, the insert, the commit: four round
    /// trips on the one write connection, each queued behind the lanes' claims and writes,
    /// then the API's read of the row). Through the API (the `cache` benchmark, a queued
    /// submission beside each hit), a hit went from p50 0.88-1.24 ms, p99 1.6-4.3 ms, to
    /// p50 0.57-0.69 ms, p99 1.2-3.3 ms (release, 4 runs each).
    ///
    /// The answer is copied as stored: `settle_cache` stores it in the form a hit serves
    /// (`as_hit`). An answer stored by an earlier version (not yet marked `cached`) is left
    /// to the transaction, which serves it through `as_hit`.
    async fn answer_from_cache(
        &self,
        new: &NewExecution,
        key: Option<&IdempotencyKey>,
        now: i64,
    ) -> Result<Option<Execution>, StoreError> {
        const OP: &str = "submitting an execution through the response cache";
        let Some(cache) = &new.cache else {
            return Ok(None);
        };
        let input = serde_json::to_string(&new.input)
            .map_err(|e| StoreError::Other(format!("serializing input: {e}")))?;
        let sql = format!(
            "INSERT INTO executions (provider, priority, input, max_attempts, not_before,
                                     created_at, idempotency_key, request_hash, route, tenant,
                                     cache_key, status, output, started_at, finished_at,
                                     history)
             SELECT ?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, COALESCE(?9, ''), ?10, 'completed',
                    c.output, ?5, ?5, ?11
               FROM response_cache c
              WHERE c.key = ?10 AND c.created_at > ?12
                AND json_valid(c.output) AND json_extract(c.output, '$.cached') = 1
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING {COLUMNS}"
        );
        let row = bind_submission!(sqlx::query(&sql), new, input, now, key)
            .bind(&cache.key)
            .bind(HIT_HISTORY.replace("NOW", &now.to_string()))
            .bind(now.saturating_sub(cache.ttl_ms))
            // Run to its end (`fetch_all`, not `fetch_optional`): SQLite commits an
            // autocommit statement with `RETURNING` after its last row, and a statement
            // reset after its first row commits without reporting a failed commit (sqlx
            // drops the reset's error) and without calling the log's hook.
            .fetch_all(&self.writer)
            .await
            .op(OP)?;
        row.first().map(execution_from_row).transpose()
    }

    /// How many checkpoints of the log the task beside the writes has made.
    pub fn checkpoints_made(&self) -> u64 {
        self.checkpoints.made()
    }

    /// The connection pool, for tests that inspect the table directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The claims' and batch writes' one connection, for tests that inspect it.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }
}

/// A pool of at most `max` connections, each with lanes' busy handler and its log's
/// checkpoints left to `checkpoints`' task.
fn pool_options(max: u32, checkpoints: &Arc<super::wal::Checkpoints>) -> SqlitePoolOptions {
    let checkpoints = checkpoints.clone();
    SqlitePoolOptions::new()
        .max_connections(max)
        // No ping before each use: it is a round trip to the connection's thread before every
        // claim and every batch write (sqlx still pings on the way back to the pool).
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let checkpoints = checkpoints.clone();
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                set_busy_handler(handle.as_raw_handle());
                super::wal::install(handle.as_raw_handle(), &checkpoints);
                Ok(())
            })
        })
}

/// How many rows a connection's thread may queue for the task reading a statement's rows
/// (sqlx's default is 50).
///
/// A claim returns a row for each execution it takes, and a batch write without refills
/// one for each result written. When the batch write with its refills still returned a
/// row per execution (128 for a part of 64), with room for 50 the connection's thread
/// stopped in the middle of the write's transaction, holding the write lock, until the
/// completer's task, queued behind attempts on a busy runtime, took rows out. With room
/// for 1024 it commits without waiting. SQLite no-op, limit 256, 7 alternated pairs: the
/// write's round trip went from p50 1.9–2.9 ms to 1.3–1.9 ms, and the run from a median of
/// 16.2k executions/s to 19.0k. (That write now returns a handful of rows: see
/// [`claim_json_sql`].) A channel holds only the rows queued in it: the room costs no
/// memory until it is used.
const ROW_BUFFER: usize = 1024;

/// How long a statement waits for another connection's write to end: `busy_timeout`.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// Replaces SQLite's busy handler on `db`. SQLite's own (`busy_timeout`) sleeps 1 ms at
/// the first collision, then 2, 5, 10 ms and more; the producers' claims and the
/// completer's writes run on different connections and collide all the time, so a lane
/// often waited a millisecond or more between a result and its next start (the benchmark's
/// gap p99 was 1.5–3.5 ms). A write holds the lock for a fraction of a millisecond, so this
/// one sleeps 100 µs, then half the time waited so far (at most 1 ms at a time), for
/// [`BUSY_WAIT`] in all, as before. It sleeps rather than spins: a yielding loop gave no
/// better figures and takes a core from the lock's holder on a small machine.
fn set_busy_handler(db: std::ptr::NonNull<libsqlite3_sys::sqlite3>) {
    use std::cell::Cell;
    use std::os::raw::{c_int, c_void};
    use std::time::Instant;
    thread_local! {
        /// When the current wait began (each connection has a thread of its own).
        static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    extern "C" fn busy(_: *mut c_void, tries: c_int) -> c_int {
        let now = Instant::now();
        let since = SINCE.with(|since| {
            if tries == 0 || since.get().is_none() {
                since.set(Some(now));
            }
            since.get().unwrap_or(now)
        });
        let waited = now.duration_since(since);
        if waited >= BUSY_WAIT {
            return 0;
        }
        std::thread::sleep(
            (waited / 2).clamp(Duration::from_micros(100), Duration::from_millis(1)),
        );
        1
    }
    // SAFETY: `db` is an open connection that the caller holds locked, and `busy` is a
    // plain function with the signature SQLite expects; it keeps no pointer.
    unsafe {
        libsqlite3_sys::sqlite3_busy_handler(db.as_ptr(), Some(busy), std::ptr::null_mut());
    }
}

/// Holds `<db>.init.lock` exclusively, waiting for any other process that holds it.
async fn init_lock(db: &Path) -> Result<Option<std::fs::File>, StoreError> {
    use fs2::FileExt;
    if db.as_os_str().is_empty() || db == Path::new(":memory:") {
        return Ok(None);
    }
    let mut path = db.as_os_str().to_owned();
    path.push(".init.lock");
    let path = std::path::PathBuf::from(path);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock_exclusive()?;
        Ok::<_, std::io::Error>(Some(file))
    })
    .await
    .map_err(|e| StoreError::Other(format!("locking the database for start-up: {e}")))?
    .map_err(|e| StoreError::Other(format!("locking the database for start-up: {e}")))
}

/// Inserts one execution; with a key already stored, inserts nothing and returns `None`.
async fn insert(
    conn: &mut sqlx::SqliteConnection,
    new: &NewExecution,
    key: Option<&IdempotencyKey>,
    now: i64,
) -> Result<Option<Inserted>, StoreError> {
    let input = serde_json::to_string(&new.input)
        .map_err(|e| StoreError::Other(format!("serializing input: {e}")))?;
    if let Some(cache) = &new.cache {
        return insert_cached(conn, new, &input, key, cache, now).await;
    }
    let query = sqlx::query_scalar(
        "INSERT INTO executions (provider, priority, input, max_attempts, not_before, created_at,
                                 idempotency_key, request_hash, route, tenant, status,
                                 may_defer, deadline)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, COALESCE(?9, ''), ?10, ?11, ?12)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    );
    bind_submission!(query, new, input, now, key)
        .bind(new.defer.status().as_str())
        .bind(new.defer.deferrable)
        .bind(new.defer.deadline)
        // To its end, as in `answer_from_cache`: in autocommit, its commit comes after the
        // row it returns.
        .fetch_all(conn)
        .await
        .op("submitting an execution")
        .map(|ids| ids.into_iter().next().map(|id| Inserted { id, hit: false }))
}

/// Inserts one execution that may be answered from the response cache: completed at once
/// from a fresh answer (a hit), else waiting for an open execution of the same key (single
/// flight), else as the key's first.
async fn insert_cached(
    conn: &mut sqlx::SqliteConnection,
    new: &NewExecution,
    input: &str,
    key: Option<&IdempotencyKey>,
    cache: &crate::model::CacheRequest,
    now: i64,
) -> Result<Option<Inserted>, StoreError> {
    const OP: &str = "submitting an execution through the response cache";
    let answer: Option<String> =
        sqlx::query_scalar("SELECT output FROM response_cache WHERE key = ?1 AND created_at > ?2")
            .bind(&cache.key)
            .bind(now.saturating_sub(cache.ttl_ms))
            .fetch_optional(&mut *conn)
            .await
            .op(OP)?;
    let hit = answer.as_deref().and_then(crate::responses::as_hit);
    let leader: Option<i64> = if hit.is_some() {
        None
    } else {
        // A waiter of higher priority raises its leader's: it must not wait behind work
        // it would have gone before.
        sqlx::query_scalar(
            "UPDATE executions SET priority = MAX(priority, ?2)
              WHERE id = (SELECT id FROM executions
                           WHERE cache_key = ?1 AND waits_for IS NULL
                             AND status IN ('pending', 'running')
                           ORDER BY id LIMIT 1)
             RETURNING id",
        )
        .bind(&cache.key)
        .bind(new.priority)
        .fetch_optional(&mut *conn)
        .await
        .op(OP)?
    };
    let answered = hit.is_some();
    let history = hit
        .as_ref()
        .map(|_| HIT_HISTORY.replace("NOW", &now.to_string()));
    sqlx::query_scalar(
        "INSERT INTO executions (provider, priority, input, max_attempts, not_before, created_at,
                                 idempotency_key, request_hash, route, tenant, cache_key,
                                 waits_for, status, output, started_at, finished_at, history)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, COALESCE(?10, ''), ?11, ?12,
                 CASE WHEN ?13 IS NULL THEN 'pending' ELSE 'completed' END, ?13,
                 CASE WHEN ?13 IS NULL THEN NULL ELSE ?6 END,
                 CASE WHEN ?13 IS NULL THEN NULL ELSE ?6 END, ?14)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(&new.provider)
    .bind(new.priority)
    .bind(input)
    .bind(new.max_attempts)
    // A waiter is never due until its leader ends (`settle_cache` makes it due).
    .bind(if leader.is_some() { i64::MAX } else { now })
    .bind(now)
    .bind(key.map(|k| &k.key))
    .bind(key.map(|k| &k.fingerprint))
    .bind(&new.route)
    .bind(&new.tenant)
    .bind(&cache.key)
    .bind(leader)
    .bind(hit)
    .bind(history)
    .fetch_optional(conn)
    .await
    .op(OP)
    .map(|id| id.map(|id| Inserted { id, hit: answered }))
}

/// The history of an execution answered from the cache: one record, attempt 0, `cached`.
const HIT_HISTORY: &str = r#"[{"attempt":0,"started_at":NOW,"finished_at":NOW,"worker":null,"outcome":"cached","error_kind":null,"error":null,"retry_delay_ms":null}]"#;

super::batches::batch_methods!(
    SqliteQueue,
    writer,
    pool,
    super::batches::for_sqlite,
    super::batches::finish_batched_sqlite(),
    None
);

#[async_trait]
impl Queue for SqliteQueue {
    async fn submit(&self, new: &NewExecution) -> Result<ExecutionId, StoreError> {
        const OP: &str = "submitting an execution";
        if new.cache.is_some() {
            if let Some(answered) = self.answer_from_cache(new, None, now_ms()).await? {
                return Ok(answered.id);
            }
            // The cache's look-ups and the insert in one write transaction: two identical
            // submissions cannot both find no leader.
            let mut tx = self.begin_for(true).await?;
            let id = insert(&mut tx, new, None, now_ms()).await?;
            tx.commit().await.op(OP)?;
            return id
                .map(|i| i.id)
                .ok_or_else(|| StoreError::Other("an insert without a key returned no id".into()));
        }
        let mut conn = self.writer.acquire().await.op(OP)?;
        insert(&mut conn, new, None, now_ms())
            .await?
            .map(|i| i.id)
            .ok_or_else(|| StoreError::Other("an insert without a key returned no id".into()))
    }

    async fn submit_many(&self, new: &[NewExecution]) -> Result<Vec<ExecutionId>, StoreError> {
        const OP: &str = "submitting executions";
        let now = now_ms();
        let mut ids = Vec::with_capacity(new.len());
        let mut tx = self
            .begin_for(new.iter().any(|n| n.cache.is_some()))
            .await?;
        // One statement per chunk over a JSON array of rows; the input is embedded as JSON
        // and stored as SQLite's text of it.
        for chunk in new.chunks(SUBMIT_CHUNK) {
            if chunk.iter().any(|n| n.cache.is_some()) {
                // Each may be a cache hit or a waiter: one at a time, in the batch's order.
                for n in chunk {
                    let inserted = insert(&mut tx, n, None, now).await?.ok_or_else(|| {
                        StoreError::Other("an insert without a key returned no id".into())
                    })?;
                    ids.push(inserted.id);
                }
                continue;
            }
            // Each `json_extract` parses its row again: a chunk without routes or tenants
            // (the common case) leaves those columns out (measured: +20% submit time with
            // the route).
            let routed = chunk.iter().any(|n| n.route.is_some());
            let tenanted = chunk.iter().any(|n| n.tenant.is_some());
            let deferred = chunk.iter().any(|n| n.defer != Defer::default());
            let rows = if deferred {
                json_rows(chunk.iter().map(|n| {
                    (
                        &n.provider,
                        n.priority,
                        &n.input,
                        n.max_attempts,
                        &n.route,
                        n.tenant.as_deref().unwrap_or(""),
                        n.defer.status().as_str(),
                        n.defer.deferrable,
                        n.defer.deadline,
                    )
                }))?
            } else if routed || tenanted {
                json_rows(chunk.iter().map(|n| {
                    (
                        &n.provider,
                        n.priority,
                        &n.input,
                        n.max_attempts,
                        &n.route,
                        n.tenant.as_deref().unwrap_or(""),
                    )
                }))?
            } else {
                json_rows(
                    chunk
                        .iter()
                        .map(|n| (&n.provider, n.priority, &n.input, n.max_attempts)),
                )?
            };
            let (extra_columns, extra_values) = if deferred {
                (
                    ", route, tenant, status, may_defer, deadline",
                    ", json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                       json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                       json_extract(value, '$[8]')",
                )
            } else if routed || tenanted {
                (
                    ", route, tenant",
                    ", json_extract(value, '$[4]'), json_extract(value, '$[5]')",
                )
            } else {
                ("", "")
            };
            let mut chunk_ids: Vec<i64> = sqlx::query_scalar(&format!(
                "INSERT INTO executions (provider, priority, input, max_attempts, not_before,
                                         created_at{extra_columns})
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'), ?2, ?2
                        {extra_values}
                   FROM json_each(?1) ORDER BY key
                 RETURNING id"
            ))
            .bind(rows)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .op(OP)?;
            // Ids rise in insertion order, which is the batch's order.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        tx.commit().await.op(OP)?;
        Ok(ids)
    }

    async fn get(&self, id: ExecutionId) -> Result<Option<Execution>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM executions WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("reading an execution")?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn list(&self, provider: Option<&str>) -> Result<Vec<Execution>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM executions WHERE ?1 IS NULL OR provider = ?1 ORDER BY id"
        ))
        .bind(provider)
        .fetch_all(&self.pool)
        .await
        .op("listing executions")?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn claim(&self, provider: &str, claim: Claim<'_>) -> Result<Vec<Execution>, StoreError> {
        if claim.max == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        if claim.budget.is_none() && claim.spend.is_none() {
            let rows = claim_rows(&self.writer, provider, &claim, claim.max, now, None).await?;
            let (claimed, unreadable) = claimed(&rows)?;
            fail_unreadable(&self.writer, claim.owner, &unreadable).await?;
            return Ok(claimed);
        }
        // A claim with a budget or spend caps, in one transaction that holds SQLite's write
        // lock from its first statement.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .op(CLAIM_WITHIN_OP)?;
        let claimed = self.claim_within(&mut tx, provider, &claim, now).await?;
        tx.commit().await.op(CLAIM_WITHIN_OP)?;
        Ok(claimed)
    }

    async fn renew_leases(&self, owner: &str, lease_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE executions SET lease_until = ?2 + ?3
              WHERE owner = ?1 AND status = 'running'",
        )
        .bind(owner)
        .bind(now_ms())
        .bind(lease_ms)
        .execute(&self.pool)
        .await
        .op("renewing leases")?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self, provider: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(NEXT_DUE_SQL)
            .bind(provider)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
            .op("reading the next retry time")
    }

    async fn finish_many(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError> {
        let form = Form::of(batch);
        let ids: Vec<i64> = sqlx::query_scalar(finish_sql(form))
            .bind(finish_rows(batch, form)?)
            .bind(owner)
            .bind(now_ms())
            .fetch_all(&self.writer)
            .await
            .op(FINISH_OP)?;
        Ok(written_flags(batch, &ids.into_iter().collect()))
    }

    fn refills_with_finish(&self) -> u32 {
        u32::MAX
    }

    async fn finish_and_claim(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
        claims: &[(&str, Claim<'_>)],
    ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
        if claims.is_empty() {
            return Ok((self.finish_many(owner, batch).await?, Vec::new()));
        }
        super::claims_for_a_write(claims)?;
        let now = now_ms();
        let (plain, budgeted): (Vec<_>, Vec<_>) = claims
            .iter()
            .enumerate()
            .partition(|(_, (_, c))| c.budget.is_none());
        let plain: Vec<(&str, Claim<'_>)> = plain.into_iter().map(|(_, c)| *c).collect();
        if budgeted.is_empty() {
            // The write and every claim in one string: one trip to the connection's thread
            // and one transaction, where a write and then a claim were two of each.
            let mut conn = self.writer.acquire().await.op(FINISH_AND_CLAIM_OP)?;
            let (sql, pad) = finish_and_claim_sql(Form::of(batch), claims.len(), true);
            let rows = match write_and_claim(&mut conn, &sql, pad, owner, now, batch, &plain).await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // A statement after `BEGIN` failed: the transaction is still open on
                    // this connection, and must not be left for the next user of it. A
                    // rollback that fails (there was none to undo, or it could not) costs
                    // the connection.
                    if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                        conn.close_on_drop();
                    }
                    return Err(e);
                }
            };
            let (written, claimed, unreadable) = read_write_and_claim(&rows, batch, claims.len())?;
            // After the commit: the batch's results and claims stand whatever this does. A
            // row it could not fail stays `running` until recovery.
            if let Err(e) = fail_unreadable(&mut *conn, owner, &unreadable).await {
                tracing::error!("{e}");
            }
            return Ok((written, claimed.into_iter().map(Some).collect()));
        }
        // Budgeted claims measure their room by the pending rows' estimates, read here: the
        // write and the plain claims in one string, then each budgeted claim as a producer
        // makes it, in one transaction (one commit, and the slots are refilled in it).
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .op(FINISH_AND_CLAIM_OP)?;
        let (sql, pad) = finish_and_claim_sql(Form::of(batch), plain.len(), false);
        let rows = write_and_claim(&mut tx, &sql, pad, owner, now, batch, &plain).await?;
        let (written, plain_claimed, unreadable) = read_write_and_claim(&rows, batch, plain.len())?;
        fail_unreadable(&mut *tx, owner, &unreadable).await?;
        let mut within = Vec::with_capacity(budgeted.len());
        for (k, (provider, claim)) in &budgeted {
            within.push((*k, self.claim_within(&mut tx, provider, claim, now).await?));
        }
        tx.commit().await.op(FINISH_AND_CLAIM_OP)?;
        // Back in the claims' order.
        let mut plain_claimed = plain_claimed.into_iter();
        let mut within = within.into_iter().peekable();
        let claimed = (0..claims.len())
            .map(|k| match within.next_if(|(at, _)| *at == k) {
                Some((_, rows)) => Some(rows),
                None => plain_claimed.next(),
            })
            .collect();
        Ok((written, claimed))
    }

    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let mut tx = self.pool.begin().await.op("starting recovery")?;
        let history = history_with("?1", "'interrupted'", "NULL", "NULL", "NULL");
        let failed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "UPDATE executions
                SET history = {history}, status = 'failed', finished_at = ?1, owner = NULL,
                    lease_until = NULL, error_kind = 'interrupted',
                    error = 'interrupted: the process running it stopped, and that was attempt '
                            || attempts || ' of ' || max_attempts
              WHERE status = 'running' AND attempts >= max_attempts
             RETURNING id, provider"
        ))
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await
        .op("failing interrupted executions without attempts left")?;
        let resumed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "UPDATE executions SET history = {history}, status = 'pending', resume = 1, owner = NULL,
                    lease_until = NULL
              WHERE status = 'running'
             RETURNING id, provider"
        ))
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await
        .op("returning interrupted executions to the queue")?;
        tx.commit().await.op("committing recovery")?;
        let mut recovered = Recovered { resumed, failed };
        recovered.resumed.sort();
        recovered.failed.sort();
        Ok(recovered)
    }

    async fn counts(&self) -> Result<BTreeMap<String, StatusCounts>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT provider, status, COUNT(*) FROM executions GROUP BY provider, status",
        )
        .fetch_all(&self.pool)
        .await
        .op("counting executions")?;
        fold_counts(rows)
    }

    async fn tenant_counts(&self) -> Result<BTreeMap<String, StatusCounts>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant, status, COUNT(*) FROM executions GROUP BY tenant, status",
        )
        .fetch_all(&self.pool)
        .await
        .op("counting executions by tenant")?;
        fold_counts(rows)
    }

    async fn settle_cache(&self, ends: &[CacheEnd<'_>]) -> Result<CacheSettled, StoreError> {
        const OP: &str = "settling the response cache";
        let mut settled = CacheSettled::default();
        if ends.is_empty() {
            return Ok(settled);
        }
        let now = now_ms();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.op(OP)?;
        for end in ends {
            let Some(output) = end.output else {
                let providers: Vec<String> = sqlx::query_scalar(
                    "UPDATE executions SET waits_for = NULL, not_before = ?2
                      WHERE waits_for = ?1 AND status = 'pending' RETURNING provider",
                )
                .bind(end.id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .op(OP)?;
                settled.released.extend(providers);
                continue;
            };
            // Stored as a hit serves it, so that a hit copies it in one statement
            // (`answer_from_cache`); `as_hit` gives an answer it made back unchanged.
            let hit = crate::responses::as_hit(output).unwrap_or_else(|| output.to_string());
            sqlx::query(
                "INSERT INTO response_cache (key, provider, output, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE
                    SET provider = excluded.provider, output = excluded.output,
                        created_at = excluded.created_at",
            )
            .bind(end.key)
            .bind(end.provider)
            .bind(&hit)
            .bind(now)
            .execute(&mut *tx)
            .await
            .op(OP)?;
            let completed: Vec<(i64, String)> = sqlx::query_as(
                "UPDATE executions
                    SET status = 'completed', output = ?2, started_at = ?3, finished_at = ?3,
                        waits_for = NULL, history = ?4
                  WHERE waits_for = ?1 AND status = 'pending' RETURNING id, provider",
            )
            .bind(end.id)
            .bind(hit)
            .bind(now)
            .bind(HIT_HISTORY.replace("NOW", &now.to_string()))
            .fetch_all(&mut *tx)
            .await
            .op(OP)?;
            settled.completed.extend(completed);
        }
        // Each cache that took an answer drops its expired ones, once per batch.
        for (provider, ttl_ms) in super::stored_caches(ends) {
            sqlx::query(
                "DELETE FROM response_cache
                  WHERE provider = ?1 AND created_at <= ?2",
            )
            .bind(provider)
            .bind(now.saturating_sub(ttl_ms))
            .execute(&mut *tx)
            .await
            .op(OP)?;
        }
        tx.commit().await.op(OP)?;
        Ok(settled)
    }

    async fn sweep_cache(
        &self,
        sizes: &[(String, u64)],
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        const OP: &str = "sweeping the response cache";
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.op(OP)?;
        let providers: Vec<String> = sqlx::query_scalar(
            "UPDATE executions SET waits_for = NULL, not_before = ?1
              WHERE waits_for IS NOT NULL AND status = 'pending'
                AND NOT EXISTS (SELECT 1 FROM executions l WHERE l.id = executions.waits_for
                                   AND l.status IN ('pending', 'running'))
             RETURNING provider",
        )
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await
        .op(OP)?;
        for (provider, max) in sizes {
            sqlx::query(
                "DELETE FROM response_cache
                  WHERE provider = ?1
                    AND key IN (SELECT key FROM response_cache WHERE provider = ?1
                                 ORDER BY created_at DESC LIMIT -1 OFFSET ?2)",
            )
            .bind(provider)
            .bind(i64::try_from(*max).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .op(OP)?;
        }
        tx.commit().await.op(OP)?;
        Ok(providers.into_iter().collect())
    }

    async fn clear_cache(&self, provider: Option<&str>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM response_cache WHERE ?1 IS NULL OR provider = ?1")
            .bind(provider)
            .execute(&self.pool)
            .await
            .op("clearing the response cache")?;
        Ok(done.rows_affected())
    }

    async fn cache_entries(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT provider, COUNT(*) FROM response_cache GROUP BY provider")
                .fetch_all(&self.pool)
                .await
                .op("counting cached answers")?;
        Ok(rows
            .into_iter()
            .map(|(p, n)| (p, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn usage(
        &self,
        by: UsageBy,
        since: i64,
        until: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query_as(&usage_sql(by, false))
            .bind(since)
            .bind(until)
            .fetch_all(&self.pool)
            .await
            .op("adding up usage")?;
        Ok(usage_rows(rows))
    }

    async fn open_counts(
        &self,
        providers: &[String],
    ) -> Result<BTreeMap<String, StatusCounts>, StoreError> {
        // One branch per status, so that each reads its own partial index.
        let names = serde_json::to_string(providers)
            .map_err(|e| StoreError::Other(format!("encoding provider names: {e}")))?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT provider, 'pending', COUNT(*) FROM executions
              WHERE status = 'pending' AND provider IN (SELECT value FROM json_each(?1))
              GROUP BY provider
             UNION ALL
             SELECT provider, 'running', COUNT(*) FROM executions
              WHERE status = 'running' AND provider IN (SELECT value FROM json_each(?1))
              GROUP BY provider",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .op("counting open executions")?;
        fold_counts(rows)
    }

    async fn pending_routed(&self, provider: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT route, COUNT(*) FROM executions
              WHERE provider = ?1 AND status = 'pending' AND route IS NOT NULL GROUP BY route",
        )
        .bind(provider)
        .fetch_all(&self.pool)
        .await
        .op("counting routed pending executions")?;
        Ok(counts_by(rows))
    }

    async fn move_routed(
        &self,
        from: &str,
        route: &str,
        to: &[(String, u64)],
    ) -> Result<u64, StoreError> {
        let bounds = json_rows(move_bounds(to).into_iter())?;
        let done = sqlx::query(
            "WITH moved AS (
                 SELECT id, row_number() OVER (ORDER BY resume DESC, priority DESC, id) AS n
                   FROM executions
                  WHERE provider = ?1 AND route = ?2 AND status = 'pending'),
             shares AS (
                 SELECT json_extract(value, '$[0]') AS member,
                        json_extract(value, '$[1]') AS after,
                        json_extract(value, '$[2]') AS upto
                   FROM json_each(?3))
             UPDATE executions SET provider = shares.member
               FROM moved JOIN shares ON moved.n > shares.after AND moved.n <= shares.upto
              WHERE executions.id = moved.id",
        )
        .bind(from)
        .bind(route)
        .bind(bounds)
        .execute(&self.pool)
        .await
        .op("moving routed executions")?;
        Ok(done.rows_affected())
    }

    async fn set_limit(&self, provider: &str, limit: u32) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO provider_limits (provider, max_running, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (provider) DO UPDATE SET max_running = ?2, updated_at = ?3",
        )
        .bind(provider)
        .bind(i64::from(stored_count("limit", limit)?))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .op("storing a limit")?;
        Ok(())
    }

    async fn clear_limit(&self, provider: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM provider_limits WHERE provider = ?1")
            .bind(provider)
            .execute(&self.pool)
            .await
            .op("clearing a limit")?;
        Ok(done.rows_affected() > 0)
    }

    async fn limits(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT provider, max_running FROM provider_limits")
                .fetch_all(&self.pool)
                .await
                .op("reading limits")?;
        rows.into_iter()
            .map(|(p, l)| Ok((p, read_count("limit", l)?)))
            .collect()
    }

    async fn record_providers(&self, providers: &[ProviderRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.op("recording providers")?;
        sqlx::query("DELETE FROM providers")
            .execute(&mut *tx)
            .await
            .op("recording providers")?;
        let now = now_ms();
        for p in providers {
            sqlx::query(
                "INSERT INTO providers (name, component, version, default_limit, description, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&p.name)
            .bind(&p.component)
            .bind(&p.version)
            .bind(i64::from(stored_count("default limit", p.default_limit)?))
            .bind(&p.description)
            .bind(now)
            .execute(&mut *tx)
            .await
            .op("recording providers")?;
        }
        tx.commit().await.op("recording providers")?;
        Ok(())
    }

    async fn submit_keyed(
        &self,
        batch: &[(NewExecution, Option<IdempotencyKey>)],
    ) -> Result<Vec<Submitted>, StoreError> {
        const OP: &str = "submitting executions";
        let now = now_ms();
        if let [(new, key)] = batch
            && let Some(answered) = self.answer_from_cache(new, key.as_ref(), now).await?
        {
            return Ok(vec![Submitted::Answered(Box::new(answered))]);
        }
        let mut tx = self
            .begin_for(batch.iter().any(|(n, _)| n.cache.is_some()))
            .await?;
        let mut out = Vec::with_capacity(batch.len());
        for (new, key) in batch {
            if let Some(inserted) = insert(&mut tx, new, key.as_ref(), now).await? {
                out.push(inserted.submitted());
                continue;
            }
            let Some(key) = key else {
                return Err(StoreError::Other(
                    "an insert without a key returned no id".into(),
                ));
            };
            let (id, hash): (i64, Option<String>) = sqlx::query_as(
                "SELECT id, request_hash FROM executions WHERE idempotency_key = ?1",
            )
            .bind(&key.key)
            .fetch_one(&mut *tx)
            .await
            .op("reading an idempotency key")?;
            out.push(key.outcome(id, hash.as_deref()));
        }
        if out.iter().any(|s| matches!(s, Submitted::Conflict(_))) {
            tx.rollback().await.op(OP)?;
        } else {
            tx.commit().await.op(OP)?;
        }
        Ok(out)
    }

    async fn list_page(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM executions
              WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR status = ?2)
                AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4)
                AND (?5 IS NULL OR id < ?5) AND (?7 IS NULL OR finished_at >= ?7)
              ORDER BY id DESC LIMIT ?6"
        ))
        .bind(filter.provider.as_deref())
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.created_after)
        .bind(filter.created_before)
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .bind(filter.finished_after)
        .fetch_all(&self.pool)
        .await
        .op("listing executions")?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn idempotency_keys(
        &self,
        ids: &[ExecutionId],
    ) -> Result<BTreeMap<ExecutionId, String>, StoreError> {
        const OP: &str = "reading idempotency keys";
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ids =
            serde_json::to_string(ids).map_err(|e| StoreError::Other(format!("{OP}: {e}")))?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, idempotency_key FROM executions
              WHERE id IN (SELECT value FROM json_each(?1)) AND idempotency_key IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .op(OP)?;
        Ok(rows.into_iter().collect())
    }

    async fn cancel(&self, id: ExecutionId) -> Result<Cancelled, StoreError> {
        const OP: &str = "cancelling an execution";
        let now = now_ms();
        // Two guarded statements rather than a read then a write: each is atomic, and a row
        // claimed between them is caught by the second.
        let pending = sqlx::query(
            "UPDATE executions SET status = 'cancelled', finished_at = ?2
              WHERE id = ?1 AND status IN ('pending', 'batched')",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .op(OP)?;
        if pending.rows_affected() > 0 {
            // Executions waiting for its answer (the response cache) run their own.
            sqlx::query(
                "UPDATE executions SET waits_for = NULL, not_before = ?2
                  WHERE waits_for = ?1 AND status = 'pending'",
            )
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .op(OP)?;
            return Ok(Cancelled::Pending);
        }
        let history = history_with("?2", "'cancelled'", "NULL", "NULL", "NULL");
        let running: Option<Option<String>> = sqlx::query_scalar(&format!(
            "UPDATE executions SET history = {history}, status = 'cancelled', finished_at = ?2,
                    owner = NULL, lease_until = NULL
              WHERE id = ?1 AND status = 'running'
             RETURNING worker"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .op(OP)?;
        if let Some(owner) = running {
            return Ok(Cancelled::Running { owner });
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM executions WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .op(OP)?;
        Cancelled::ended(id, status)
    }

    async fn change_state(&self, provider: &str, change: &StateChange) -> Result<bool, StoreError> {
        let now = now_ms();
        // A pause or an opening: an upsert that never shortens a pause in place.
        let upsert = |circuit: &str, set: &str| {
            format!(
                "INSERT INTO provider_state (provider, paused_until, reason, circuit, openings,
                                             updated_at)
                 VALUES (?1, ?2 + ?3, ?4, '{circuit}', {opened}, ?2)
                 ON CONFLICT (provider) DO UPDATE SET {set},
                        paused_until = MAX(paused_until, excluded.paused_until), updated_at = ?2",
                opened = i32::from(circuit == "open"),
            )
        };
        let pause = upsert(
            "closed",
            "reason = CASE WHEN excluded.paused_until > paused_until
                           THEN excluded.reason ELSE reason END",
        );
        let open = upsert(
            "open",
            "circuit = 'open', openings = openings + 1, reason = excluded.reason",
        );
        let query = match change {
            StateChange::Pause { for_ms, reason } => sqlx::query(&pause)
                .bind(provider)
                .bind(now)
                .bind(for_ms)
                .bind(reason),
            StateChange::Open { for_ms, reason } => sqlx::query(&open)
                .bind(provider)
                .bind(now)
                .bind(for_ms)
                .bind(reason),
            StateChange::Close => sqlx::query(
                "UPDATE provider_state SET circuit = 'closed', openings = 0,
                        reason = CASE WHEN paused_until > ?2 THEN reason END, updated_at = ?2
                  WHERE provider = ?1 AND circuit = 'open'",
            )
            .bind(provider)
            .bind(now),
            StateChange::ClearUnauthorized => sqlx::query(
                "UPDATE provider_state SET circuit = 'closed', openings = 0, paused_until = 0,
                        reason = NULL, updated_at = ?2
                  WHERE provider = ?1 AND circuit = 'open' AND reason LIKE 'unauthorized%'",
            )
            .bind(provider)
            .bind(now),
            StateChange::Adaptive(limit) => sqlx::query(
                "INSERT INTO provider_state (provider, adaptive_limit, updated_at)
                 VALUES (?1, ?3, ?2)
                 ON CONFLICT (provider) DO UPDATE SET adaptive_limit = ?3, updated_at = ?2
                  WHERE adaptive_limit IS NOT ?3",
            )
            .bind(provider)
            .bind(now)
            .bind(
                limit
                    .map(|l| stored_count("adaptive limit", l))
                    .transpose()?,
            ),
        };
        let done = query
            .execute(&self.pool)
            .await
            .op("recording a provider's state")?;
        Ok(done.rows_affected() > 0)
    }

    async fn age(&self, provider: &str, every_ms: i64, max: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE executions SET priority = priority + 1, aged = aged + 1
              WHERE provider = ?1 AND status = 'pending' AND aged < ?3
                AND priority < 2147483647 AND created_at <= ?4 - (aged + 1) * ?2",
        )
        .bind(provider)
        .bind(every_ms)
        .bind(i64::from(max))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .op("aging pending executions")?;
        Ok(done.rows_affected())
    }

    async fn settle_budgets(&self, ends: &[(ExecutionId, i64)]) -> Result<(), StoreError> {
        if ends.is_empty() {
            return Ok(());
        }
        // On the write connection: a write on another waits for SQLite's write lock.
        sqlx::query(
            "UPDATE budget_ledger SET tokens = json_extract(b.value, '$[1]'), settled = 1
               FROM json_each(?1) AS b
              WHERE budget_ledger.execution_id = json_extract(b.value, '$[0]')
                AND budget_ledger.settled = 0",
        )
        .bind(json_rows(ends.iter().copied())?)
        .execute(&self.writer)
        .await
        .op("settling budget reservations")?;
        Ok(())
    }

    async fn settle_spend(
        &self,
        ends: &[super::SpendEnd<'_>],
    ) -> Result<Vec<super::SpendNotice>, StoreError> {
        const OP: &str = "settling spend reservations";
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.op(OP)?;
        let open: Vec<super::spend::OpenReservation> = sqlx::query_as(
            "DELETE FROM spend_open WHERE execution_id IN (SELECT value FROM json_each(?1))
             RETURNING execution_id, day, provider, tenant, usd",
        )
        .bind(json_rows(ends.iter().map(|e| e.id))?)
        .fetch_all(&mut *tx)
        .await
        .op(OP)?;
        let open = open.into_iter().map(|o| (o.execution_id, o)).collect();
        let mut notices = Vec::new();
        for ((day, scope, name), sum) in super::spend::settled(ends, &open) {
            let total: (String, String, f64, i64, f64) = sqlx::query_as(
                "INSERT INTO spend (day, scope, name, spent) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (day, scope, name) DO UPDATE
                    SET spent = spent + excluded.spent, reserved = MAX(0.0, reserved - ?5)
                 RETURNING scope, name, spent, noticed, noticed_cap",
            )
            .bind(day)
            .bind(scope)
            .bind(&name)
            .bind(sum.spent)
            .bind(sum.released)
            .fetch_one(&mut *tx)
            .await
            .op(OP)?;
            if let Some((level, notice)) = sum.caps.notice_for(day, total) {
                let told = sqlx::query(
                    "UPDATE spend SET noticed = ?4, noticed_cap = ?5
                      WHERE day = ?1 AND scope = ?2 AND name = ?3
                        AND (noticed < ?4 OR noticed_cap <> ?5)",
                )
                .bind(day)
                .bind(scope)
                .bind(&notice.name)
                .bind(level)
                .bind(notice.cap_usd)
                .execute(&mut *tx)
                .await
                .op(OP)?;
                if told.rows_affected() == 1 {
                    notices.push(notice);
                }
            }
        }
        tx.commit().await.op(OP)?;
        Ok(notices)
    }

    async fn release_spend(&self) -> Result<u64, StoreError> {
        const OP: &str = "letting go the spend reservations of rows no longer running";
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.op(OP)?;
        let gone: Vec<super::spend::OpenReservation> = sqlx::query_as(
            "DELETE FROM spend_open
              WHERE NOT EXISTS (SELECT 1 FROM executions e
                                 WHERE e.id = spend_open.execution_id
                                   AND e.status IN ('running', 'batched'))
             RETURNING day, provider, tenant, usd",
        )
        .fetch_all(&mut *tx)
        .await
        .op(OP)?;
        for o in &gone {
            sqlx::query(
                "UPDATE spend SET reserved = MAX(0.0, reserved - ?4)
                  WHERE day = ?1 AND ((scope = 'provider' AND name = ?2)
                                      OR (scope = 'tenant' AND name = ?3))",
            )
            .bind(o.day)
            .bind(&o.provider)
            .bind(&o.tenant)
            .bind(o.usd)
            .execute(&mut *tx)
            .await
            .op(OP)?;
        }
        tx.commit().await.op(OP)?;
        Ok(u64::try_from(gone.len()).unwrap_or(u64::MAX))
    }

    async fn spend(&self, day: i64) -> Result<Vec<super::SpendRow>, StoreError> {
        let rows: Vec<(String, String, f64, f64)> = sqlx::query_as(
            "SELECT scope, name, spent, MAX(reserved, 0.0) FROM spend WHERE day = ?1
              ORDER BY scope, name",
        )
        .bind(day)
        .fetch_all(&self.pool)
        .await
        .op("reading the day's spend")?;
        Ok(super::spend::rows(rows))
    }

    async fn budget_usage(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT provider, COUNT(*), COALESCE(SUM(tokens), 0) FROM budget_ledger
              WHERE at > ?1 GROUP BY provider",
        )
        .bind(now_ms() - BUDGET_WINDOW_MS)
        .fetch_all(&self.pool)
        .await
        .op("reading budget use")?;
        Ok(rows.into_iter().map(|(p, r, t)| (p, (r, t))).collect())
    }

    async fn budget_frees_in(&self, provider: &str) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(at) FROM budget_ledger WHERE provider = ?1 AND at > ?2")
                .bind(provider)
                .bind(now - BUDGET_WINDOW_MS)
                .fetch_one(&self.pool)
                .await
                .op("reading budget use")?;
        Ok(oldest.map(|at| (at + BUDGET_WINDOW_MS - now).max(0)))
    }

    async fn append_stream(&self, chunks: &[StreamChunk]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.op("storing stream chunks")?;
        for c in chunks {
            sqlx::query(
                "INSERT OR REPLACE INTO stream_chunks
                   (execution_id, attempt, first, count, deltas, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(c.execution_id)
            .bind(c.attempt)
            .bind(c.first)
            .bind(c.count)
            .bind(&c.deltas)
            .bind(c.at)
            .execute(&mut *tx)
            .await
            .op("storing stream chunks")?;
        }
        tx.commit().await.op("storing stream chunks")?;
        Ok(())
    }

    async fn read_stream(
        &self,
        id: ExecutionId,
        from: StreamPosition,
    ) -> Result<Vec<StreamChunk>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT attempt, first, count, deltas, at FROM stream_chunks
              WHERE execution_id = ?1
                AND (attempt > ?2 OR (attempt = ?2 AND first + count > ?3))
              ORDER BY attempt, first",
        )
        .bind(id)
        .bind(from.attempt)
        .bind(from.index)
        .fetch_all(&self.pool)
        .await
        .op("reading a stream")?;
        Ok(rows
            .into_iter()
            .map(|row| StreamChunk::of_row(id, row))
            .collect())
    }

    async fn prune_streams(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM stream_chunks WHERE at < ?1")
            .bind(before)
            .execute(&self.pool)
            .await
            .op("pruning streams")?;
        Ok(done.rows_affected())
    }

    async fn provider_states(&self) -> Result<(i64, BTreeMap<String, ProviderState>), StoreError> {
        let rows: Vec<(String, i64, Option<String>, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT provider, paused_until, reason, circuit, openings, adaptive_limit
               FROM provider_state",
        )
        .fetch_all(&self.pool)
        .await
        .op("reading providers' states")?;
        let states = rows
            .into_iter()
            .map(|(p, a, b, c, d, e)| Ok((p, provider_state((a, b, c, d, e))?)))
            .collect::<Result<_, StoreError>>()?;
        Ok((now_ms(), states))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .op("checking the database")?;
        // The claims' and writes' own connection too: a daemon that cannot claim is not
        // ready. (Under load this waits for the claim or write in progress, a few ms.)
        sqlx::query("SELECT 1")
            .execute(&self.writer)
            .await
            .op("checking the database's write connection")?;
        Ok(())
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT name, component, version, default_limit, description FROM providers ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .op("reading providers")?;
        provider_records(rows)
    }
}
