//! The scale-out backend: several workers share one PostgreSQL queue.
//!
//! - A claim holds a transaction-scoped advisory lock per provider while it counts the
//!   provider's running rows and takes pending ones (`FOR UPDATE SKIP LOCKED`), so a limit
//!   holds across the whole fleet.
//! - Every timestamp comes from the database clock, so workers on different machines agree on
//!   leases and on recorded times.
//! - Every worker `LISTEN`s on the queue's channel (`lanes:<schema>`), and a change that
//!   another worker may act on `NOTIFY`s it with the provider's name, so pickup never waits
//!   for the poll interval: a submission, a row back to pending (retry, requeue, reclaim), a
//!   limit change, a slot freed by a worker that will not refill it, and a claim that left
//!   fleet capacity it could not take. A worker that finishes an attempt refills its own
//!   slot without a broadcast: waking every worker for each finish made them all queue for
//!   the provider's claim lock, mostly for nothing.
//! - Queues in other schemas of the same database neither hear nor lock each other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use sha2::Digest;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::{
    BUDGET_WINDOW_MS, COLUMNS, Cancelled, Change, Claim, DbContext, ExecutionFilter, Finish,
    FinishRow, HISTORY_ERROR_CHARS, HISTORY_KEPT, IdempotencyKey, ProviderRecord, ProviderState,
    Queue, Recovered, StateChange, StatusCounts, StoreError, StreamChunk, StreamPosition,
    Submitted, UsageBy, UsageRow, counts_by, estimate_tokens, execution_from_row, fold_counts,
    move_bounds, provider_records, provider_state, read_count, readable_claims, stored_count,
    unreadable_failure, usage_rows, usage_sql, written_flags,
};
use super::{CacheEnd, CacheSettled, Inserted};
use crate::model::{ErrorKind, Execution, ExecutionId, NewExecution};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// An SQL expression: the row's attempt history with one more entry, the oldest dropped
/// past `HISTORY_KEPT`. `row` qualifies the row's columns (`e.` or nothing); the other
/// arguments are SQL expressions. The row's columns are its old values.
fn history_with(row: &str, outcome: &str, kind: &str, error: &str, delay: &str) -> String {
    history_push(
        &format!("{row}history"),
        &format!(
            "'attempt', {row}attempts, 'started_at', {row}started_at,
             'finished_at', {NOW_MS}, 'worker', {row}worker, 'outcome', {outcome},
             'error_kind', {kind}, 'error', left({error}, {HISTORY_ERROR_CHARS}),
             'retry_delay_ms', {delay},
             'provider', CASE WHEN {row}route IS NULL THEN NULL ELSE {row}provider END"
        ),
    )
}

/// An SQL expression: the history column `history` with one more entry, the JSON object of
/// `pairs` (SQL), the oldest dropped past `HISTORY_KEPT`.
pub(crate) fn history_push(history: &str, pairs: &str) -> String {
    format!(
        "(
            CASE WHEN jsonb_array_length(COALESCE({history}, '[]')::jsonb) >= {HISTORY_KEPT}
                 THEN COALESCE({history}, '[]')::jsonb - 0
                 ELSE COALESCE({history}, '[]')::jsonb END
            || jsonb_build_array(jsonb_build_object({pairs}))
          )::text"
    )
}

/// The batch write of [`Queue::finish_many`]: `$1` owner, `$2`–`$8`, `$10` and `$11` the
/// batch's columns as arrays (see [`FinishRow`]), `$9` the notification channel.
///
/// One statement, in its own transaction: the batch's rows over arrays (`unnest`),
/// whatever their kinds, and a notification for each provider with a row back to
/// pending (any worker may take it, once due), delivered at commit.
///
/// Each row is found by primary key, so a write costs in proportion to its batch. The
/// owner and status checks compare with the batch's own columns, not with constants: as
/// `e.owner = $1 AND e.status = 'running'` they matched the running rows' partial index,
/// and the planner, whose statistics rarely see a running row, hash-joined the batch with
/// every running row of the fleet. With another worker's 5,000 rows running, a 100-row
/// write took 3.7–4.3 ms that way and 1.7–3.1 ms by key (alternated). The batch is
/// `MATERIALIZED` (PostgreSQL 12 and later) so that its constant columns stay columns and
/// the checks stay join conditions.
///
/// It runs on connections that plan without sequential scans ([`PgQueue::open`]'s
/// `writes`). Where they were allowed, a connection's first writes on a table of some tens
/// of thousands of rows read it whole (the planner prices pages as if read from disk), and
/// a statement first run while the queue was empty kept a plan that read the whole table
/// for every batch until the next ANALYZE. A worker that runs every running row itself paid
/// a little less the old way (5.1–5.7 ms per 400-row write, now 7.0–8.2 ms): the price of a
/// cost that no longer grows with the rest of the fleet.
static FINISH_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} SELECT id, (SELECT COUNT(*) FROM woken) FROM done",
        finish_ctes()
    )
});

/// The batch write of [`FINISH_SQL`] and, in the same statement, a claim for each provider
/// of `$12`-`$19` (provider, most rows, limit, lease, tenant limit, tenants' weights, `rpm`
/// and `tpm` budget, as arrays): the write and the refill of the slots it frees in one
/// round trip (see [`Queue::finish_and_claim`]).
///
/// Each claim is `lanes_try_claim` (migration 0020): `lanes_claim`, the one claim of
/// PostgreSQL (see [`claim_rows`]), when the provider's claim lock is free, else one row of
/// NULLs (the lane's producer claims instead), so that a write never waits for
/// another worker's claim. A budgeted provider's goes through `lanes_try_claim_within`
/// (migration 0021), which also takes the budget lock only if it is free, and measures and
/// reserves the budget as a producer's budgeted claim does ([`PgQueue::claim`]). The claims must see the write: `written` reads the whole of
/// `done`, which runs the update to completion, and the claims' list refers to `written`
/// (`WHERE w.n >= 0`), which makes it the outer side of their join, so that no claim starts
/// before the update has ended. `lanes_claim` is a volatile function: each of its
/// statements takes a new snapshot after the update's command, so its count of running
/// rows no longer holds the rows this write ended (the store test `refill_in_the_write`
/// fails otherwise). The claims take their providers' locks in the providers' order.
///
/// The first row carries the ids written (`lanes_written`) and the count of notifications;
/// each row carries one claimed execution and its claim's position (`lanes_k`, from 1), a
/// row of NULLs where the claim's lock was busy, or none where nothing was claimed.
static FINISH_AND_CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{},
         written AS MATERIALIZED (
           SELECT COALESCE(array_agg(id), '{{}}') AS ids, COUNT(*) AS n,
                  (SELECT COUNT(*) FROM woken) AS woken
             FROM done),
         claims AS MATERIALIZED (
           SELECT c.k AS lanes_k, e.*
             FROM written w,
                  LATERAL (SELECT u.*
                             FROM unnest($12::text[], $13::bigint[], $14::bigint[],
                                         $15::bigint[], $16::bigint[], $17::text[],
                                         $18::bigint[], $19::bigint[])
                                  WITH ORDINALITY AS u(provider, max, lim, lease, tenant_limit,
                                                       weights, rpm, tpm, k)
                            WHERE w.n >= 0
                            ORDER BY u.provider) c,
                  LATERAL lanes_try_claim_within($9, c.provider, $1, c.max, c.lim, c.lease,
                                                 c.tenant_limit, c.weights::jsonb, c.rpm,
                                                 c.tpm) e)
         SELECT CASE WHEN row_number() OVER () = 1 THEN w.ids END AS lanes_written,
                w.woken AS lanes_woken, c.*
           FROM written w LEFT JOIN claims c ON true",
        finish_ctes()
    )
});

/// The common table expressions of the batch write (see [`FINISH_SQL`]): `b` the batch,
/// `done` the rows written, `woken` the notifications.
fn finish_ctes() -> String {
    let history = history_with(
        "e.",
        "CASE WHEN b.requeue THEN 'returned' WHEN b.limited THEN 'rate_limited'
              WHEN b.status = 'pending' THEN 'retried' ELSE b.status END",
        "b.kind",
        "b.error",
        "b.delay",
    );
    format!(
        // A first attempt that completes leaves the history empty: the row's own times
        // and worker describe it (see `execution_from_row`), and it is the common case.
        "WITH b AS MATERIALIZED (
           SELECT u.*, $1::text AS owner, 'running'::text AS running
             FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bigint[], $8::bool[], $10::bool[], $11::text[])
                  AS u(id, status, output, error, kind, delay, requeue, limited, move_to)),
         done AS (
           UPDATE executions e SET
                  history = CASE WHEN e.history IS NULL AND b.status = 'completed'
                                 THEN NULL ELSE {history} END,
                  status = b.status,
                  output = CASE WHEN b.status = 'completed' THEN b.output ELSE e.output END,
                  error = CASE WHEN b.status = 'completed' THEN NULL
                               ELSE COALESCE(b.error, e.error) END,
                  error_kind = CASE WHEN b.status = 'completed' THEN NULL
                                    ELSE COALESCE(b.kind, e.error_kind) END,
                  not_before = COALESCE({NOW_MS} + b.delay, e.not_before),
                  finished_at = CASE WHEN b.status = 'pending' THEN e.finished_at
                                     ELSE {NOW_MS} END,
                  attempts = e.attempts - CASE WHEN b.requeue OR b.limited THEN 1 ELSE 0 END,
                  rate_limited = e.rate_limited + CASE WHEN b.limited THEN 1 ELSE 0 END,
                  resume = b.requeue,
                  started_at = CASE WHEN b.requeue THEN NULL ELSE e.started_at END,
                  owner = NULL, lease_until = NULL,
                  provider = COALESCE(b.move_to, e.provider)
             FROM b
            WHERE e.id = b.id AND e.owner = b.owner AND e.status = b.running
           RETURNING e.id, e.provider, b.status),
         woken AS (
           SELECT pg_notify($9, provider)
             FROM (SELECT DISTINCT provider FROM done WHERE status = 'pending') p)"
    )
}

/// How many live workers serve each provider (see [`Queue::workers`]).
async fn live_workers<'e, E>(executor: E) -> Result<BTreeMap<String, u32>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let live: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT provider, COUNT(*) FROM workers WHERE seen_until >= {NOW_MS} GROUP BY provider"
    ))
    .fetch_all(executor)
    .await?;
    Ok(live
        .into_iter()
        .map(|(provider, n)| (provider, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect())
}

/// Moves up to `max` due pending rows of `provider` to `running` (see [`Queue::claim`]),
/// none of the tenants of `excluded` (a JSON array).
async fn claim_rows<'e, E>(
    executor: E,
    channel: &str,
    provider: &str,
    claim: &Claim<'_>,
    max: u32,
    excluded: Option<&str>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    // One round trip: `lanes_claim` (migrations 0002, 0006, 0010-0012, 0015, 0017) takes the
    // provider's advisory lock, counts its running rows across the fleet, and takes up to
    // the room left with `FOR UPDATE SKIP LOCKED` (by primary key), shared among the
    // tenants. Its cap (none while paused, one while an open circuit probes, at most the
    // adaptive limit) is the PostgreSQL twin of `crate::limits::claim_cap`, and its order
    // that of `crate::limits::fair_pick`; the store tests
    // `claim_caps_match_their_rust_twin` and `fair_claims_match_their_rust_twin` hold them
    // equal.
    sqlx::query("SELECT * FROM lanes_claim($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)")
        .bind(channel)
        .bind(provider)
        .bind(claim.owner)
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

/// Takes the budget lock of `provider` in the queue on `channel` until the transaction of
/// `tx` ends, and returns the database clock once it holds it.
///
/// Keyed as `lanes_claim` keys the provider's claim lock (migration 0002 and its
/// restatements), by the queue's channel, which names its schema: queues in other schemas
/// of the server neither share the lock nor wait for it. The `budget:` in front keeps the
/// key apart from every claim lock, whose text starts with the channel's `lanes:`.
async fn lock_budget(
    tx: &mut sqlx::PgConnection,
    channel: &str,
    provider: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(&format!(
        "SELECT {NOW_MS}
           FROM (SELECT pg_advisory_xact_lock(hashtextextended('budget:' || $1 || ':' || $2, 0))) l"
    ))
    .bind(channel)
    .bind(provider)
    .fetch_one(tx)
    .await
    .op("taking a provider's budget lock")
}

/// The day's `(scope, name, spent + reserved)` rows of `provider` and the tenants `spend`
/// caps, read in `tx` (which holds the provider's budget lock).
async fn spend_totals(
    tx: &mut sqlx::PgConnection,
    provider: &str,
    spend: &super::Spend,
) -> Result<Vec<(String, String, f64)>, StoreError> {
    sqlx::query_as(
        "SELECT scope, name, spent + GREATEST(reserved, 0) FROM spend
          WHERE day = $1 AND ((scope = 'provider' AND name = $2)
                OR (scope = 'tenant' AND name IN (SELECT jsonb_array_elements_text($3::jsonb))))",
    )
    .bind(spend.day)
    .bind(provider)
    .bind(spend.tenant_names())
    .fetch_all(&mut *tx)
    .await
    .op("reading the day's spend")
}

/// Reserves each claimed row's estimate for its capped provider and tenant on the caps'
/// day (see [`super::spend`]). A row claimed again (after its worker died) gives up the
/// reservation it had, which may be of another day.
async fn reserve_spend(
    tx: &mut sqlx::PgConnection,
    spend: &super::Spend,
    provider: &str,
    claimed: &[Execution],
) -> Result<(), StoreError> {
    reserve_rows(tx, spend, provider, spend.reservations(claimed)).await
}

/// Reserves `rows` (`(id, tenant, estimate)`, of provider `provider`) on the caps' day; a
/// row's earlier reservation goes (see [`reserve_spend`]).
async fn reserve_rows(
    tx: &mut sqlx::PgConnection,
    spend: &super::Spend,
    provider: &str,
    rows: Vec<(crate::model::ExecutionId, &str, f64)>,
) -> Result<(), StoreError> {
    const OP: &str = "reserving spend for claimed executions";
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let usd: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let old: Vec<super::spend::OpenReservation> = sqlx::query_as(
        "DELETE FROM spend_open WHERE execution_id = ANY($1)
         RETURNING day, provider, tenant, usd",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .op(OP)?;
    sqlx::query(
        "INSERT INTO spend_open (execution_id, day, provider, tenant, usd)
         SELECT b.id, $4, $5, b.tenant, b.usd
           FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS b(id, tenant, usd)",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&usd)
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
    if deltas.is_empty() {
        return Ok(());
    }
    let days: Vec<i64> = deltas.iter().map(|d| d.0).collect();
    let scopes: Vec<&str> = deltas.iter().map(|d| d.1).collect();
    let names: Vec<&str> = deltas.iter().map(|d| d.2.as_str()).collect();
    let amounts: Vec<f64> = deltas.iter().map(|d| d.3).collect();
    // In key order: concurrent claims lock the rows they share in one order.
    sqlx::query(
        "INSERT INTO spend (day, scope, name, reserved)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[])
             AS d(day, scope, name, usd)
          ORDER BY day, scope, name
         ON CONFLICT (day, scope, name) DO UPDATE
            SET reserved = GREATEST(0, spend.reserved + EXCLUDED.reserved)",
    )
    .bind(&days)
    .bind(&scopes)
    .bind(&names)
    .bind(&amounts)
    .execute(&mut *tx)
    .await
    .op(OP)?;
    Ok(())
}

/// Claimed rows as executions, in claim order; the rows that cannot be read are failed
/// (see [`readable_claims`]).
async fn claimed<'e, E>(
    executor: E,
    owner: &str,
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<Execution>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let (claimed, unreadable) = readable_claims(rows.iter().map(execution_from_row))?;
    fail_unreadable(executor, owner, &unreadable).await?;
    Ok(claimed)
}

/// Fails claimed rows of `owner` that cannot be read (see [`readable_claims`]), with
/// [`unreadable_failure`]'s error.
async fn fail_unreadable<'e, E>(
    executor: E,
    owner: &str,
    unreadable: &[(ExecutionId, String)],
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    if unreadable.is_empty() {
        return Ok(());
    }
    let (ids, errors): (Vec<i64>, Vec<String>) = unreadable
        .iter()
        .map(|(id, reason)| (*id, unreadable_failure(*id, reason)))
        .unzip();
    sqlx::query(&format!(
        "UPDATE executions e SET status = 'failed', error = b.error, error_kind = $4,
                finished_at = {NOW_MS}, output = NULL, history = NULL, resume = false,
                owner = NULL, lease_until = NULL
           FROM unnest($1::bigint[], $2::text[]) AS b(id, error)
          WHERE e.id = b.id AND e.owner = $3 AND e.status = 'running'"
    ))
    .bind(&ids)
    .bind(&errors)
    .bind(owner)
    .bind(ErrorKind::Other.as_str())
    .execute(executor)
    .await
    .op("failing claimed rows that cannot be read")?;
    Ok(())
}

/// Rows per statement of a batched submission.
const SUBMIT_CHUNK: usize = 5000;

/// The longest channel name PostgreSQL accepts.
const MAX_IDENTIFIER: usize = 63;

/// The database clock in Unix milliseconds.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A queue in a PostgreSQL database (or one schema of it, through `search_path`).
#[derive(Clone)]
pub struct PgQueue {
    pool: PgPool,
    /// The batch write's connections, which plan without sequential scans (see
    /// [`FINISH_SQL`]).
    writes: PgPool,
    /// `lanes:<schema>`: the notification channel, and the prefix of advisory-lock keys.
    channel: String,
}

impl PgQueue {
    /// The largest limit of a lane whose freed slots a batch write refills in its own
    /// statement ([`FINISH_AND_CLAIM_SQL`]); a larger lane's producer claims after the write.
    ///
    /// The refill saves a lane the round trip of a claim between a result and the next
    /// start, a commit's wait included: latency-bound lanes of limits 2/3/3 and 20 ms calls
    /// (`cargo bench -- pg`), gap p50 0.94-0.97 ms and p99 2.7-5.0 ms with the claim after the
    /// write, 13-61 µs and 0.96-1.26 ms with it in the write. A slot idle for that long
    /// matters where a lane has few. A wide lane's producer instead claims the slots of
    /// several writes at once, beside the next write on another connection: refilling a lane
    /// of 1,024 in each write cost the server 10-20% more CPU per no-op (each claim counts
    /// the lane's running rows) and one worker about 12% of its no-op rate (5 alternated
    /// pairs). 64 is a judgement between the two, not a measured optimum.
    pub const REFILL_IN_WRITE_UP_TO: u32 = 64;

    /// The day's spend of `provider` and its capped tenants, read under the provider's
    /// budget lock, for a batch being opened (see `batch_methods!`): a live claim of the
    /// provider takes the same lock, so each sees the other's reservations.
    async fn batch_spend_totals(
        &self,
        tx: &mut sqlx::PgConnection,
        provider: &str,
        spend: &super::Spend,
    ) -> Result<Vec<(String, String, f64)>, StoreError> {
        lock_budget(tx, &self.channel, provider).await?;
        spend_totals(tx, provider, spend).await
    }

    /// Connects to `url` and applies migrations. A schema can be chosen with
    /// `?options[search_path]=NAME`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // One plain connection first: the pool retries until its timeout and then reports
        // only "pool timed out", hiding a refused connection or a bad password.
        let options: sqlx::postgres::PgConnectOptions = url.parse().op("parsing database_url")?;
        let first = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::ConnectOptions::connect(&options),
        )
        .await
        .map_err(|_| StoreError::Other("connecting to PostgreSQL: no answer in 10 s".into()))?
        .op("connecting to PostgreSQL")?;
        sqlx::Connection::close(first)
            .await
            .op("connecting to PostgreSQL")?;
        // A worker needs few connections: up to 5 here (claims, the lease loop, the API),
        // 2 for batch writes and 1 for the listener. Keep fleets well under the server's
        // max_connections.
        // No ping before each use: it is a round trip of its own before every claim and
        // every batch write. sqlx still pings a connection when it goes back to the pool and
        // drops one that broke; a statement on a connection that broke since fails, and the
        // producer claims again, the completer retries its write.
        let pool_of = |max| {
            PgPoolOptions::new()
                .max_connections(max)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
        };
        let pool = pool_of(5)
            .connect_with(options.clone())
            .await
            .op("connecting to PostgreSQL")?;
        // The completer writes one batch at a time; a second connection covers a write
        // that starts while the last one's connection goes back. The setting is a
        // statement, not a startup option: connection poolers such as PgBouncer refuse
        // startup options they do not know.
        let writes = pool_of(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, "SET enable_seqscan = off").await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        // sqlx takes an advisory lock, so workers starting together migrate one at a time.
        MIGRATOR.run(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .op("reading the current schema")?;
        let mut channel = format!("lanes:{schema}");
        if channel.len() > MAX_IDENTIFIER {
            channel = format!(
                "lanes:{}",
                &hex::encode(sha2::Sha256::digest(schema.as_bytes()))[..32]
            );
        }
        Ok(PgQueue {
            pool,
            writes,
            channel,
        })
    }

    /// Sends `provider` on the channel within `tx`: delivered when it commits.
    async fn notify(&self, tx: &mut sqlx::PgConnection, provider: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(provider)
            .execute(tx)
            .await
            .op("notifying other workers")?;
        Ok(())
    }

    /// The connection pool, for tests that inspect the tables directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Inserts one execution; with a key already stored, inserts nothing and returns `None`.
async fn insert(
    tx: &mut sqlx::PgConnection,
    new: &NewExecution,
    key: Option<&IdempotencyKey>,
) -> Result<Option<Inserted>, StoreError> {
    let input = serde_json::to_string(&new.input)
        .map_err(|e| StoreError::Other(format!("serializing input: {e}")))?;
    if let Some(cache) = &new.cache {
        return insert_cached(tx, new, &input, key, cache).await;
    }
    sqlx::query_scalar(&format!(
        "INSERT INTO executions (provider, priority, input, max_attempts, not_before, created_at,
                                 idempotency_key, request_hash, route, tenant, status,
                                 may_defer, deadline)
         VALUES ($1, $2, $3, $4, {NOW_MS}, {NOW_MS}, $5, $6, $7, COALESCE($8, ''), $9, $10,
                 $11)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id"
    ))
    .bind(&new.provider)
    .bind(new.priority)
    .bind(input)
    .bind(new.max_attempts)
    .bind(key.map(|k| &k.key))
    .bind(key.map(|k| &k.fingerprint))
    .bind(&new.route)
    .bind(&new.tenant)
    .bind(new.defer.status().as_str())
    .bind(new.defer.deferrable)
    .bind(new.defer.deadline)
    .fetch_optional(tx)
    .await
    .op("submitting an execution")
    .map(|id| id.map(|id| Inserted { id, hit: false }))
}

/// The response cache key of a submission that uses the cache.
fn cache_key(new: &NewExecution) -> Option<&str> {
    new.cache.as_ref().map(|c| c.key.as_str())
}

/// Takes the locks of response cache keys (a batch's submissions', or the ends a settle
/// stores), each once, in key order: two batches holding the same keys in another order
/// would deadlock if each row took its own as it came.
async fn lock_cache_keys<'a>(
    tx: &mut sqlx::PgConnection,
    keys: impl Iterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let mut keys: Vec<&str> = keys.collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('lanes-cache:' || $1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await
            .op("locking response cache keys")?;
    }
    Ok(())
}

/// Inserts one execution that may be answered from the response cache (see SQLite's
/// `insert_cached`), under a transaction lock on its key: two identical submissions on two
/// workers cannot both find no leader.
async fn insert_cached(
    tx: &mut sqlx::PgConnection,
    new: &NewExecution,
    input: &str,
    key: Option<&IdempotencyKey>,
    cache: &crate::model::CacheRequest,
) -> Result<Option<Inserted>, StoreError> {
    const OP: &str = "submitting an execution through the response cache";
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('lanes-cache:' || $1, 0))")
        .bind(&cache.key)
        .execute(&mut *tx)
        .await
        .op(OP)?;
    let answer: Option<String> = sqlx::query_scalar(&format!(
        "SELECT output FROM response_cache WHERE key = $1 AND created_at > {NOW_MS} - $2"
    ))
    .bind(&cache.key)
    .bind(cache.ttl_ms)
    .fetch_optional(&mut *tx)
    .await
    .op(OP)?;
    let hit = answer.as_deref().and_then(crate::responses::as_hit);
    let answered = hit.is_some();
    let leader: Option<i64> = if hit.is_some() {
        None
    } else {
        // A waiter of higher priority raises its leader's: it must not wait behind work
        // it would have gone before.
        sqlx::query_scalar(
            "UPDATE executions SET priority = GREATEST(priority, $2)
              WHERE id = (SELECT id FROM executions
                           WHERE cache_key = $1 AND waits_for IS NULL
                             AND status IN ('pending', 'running')
                           ORDER BY id LIMIT 1)
             RETURNING id",
        )
        .bind(&cache.key)
        .bind(new.priority)
        .fetch_optional(&mut *tx)
        .await
        .op(OP)?
    };
    sqlx::query_scalar(&format!(
        "INSERT INTO executions (provider, priority, input, max_attempts, not_before, created_at,
                                 idempotency_key, request_hash, route, tenant, cache_key,
                                 waits_for, status, output, started_at, finished_at, history)
         VALUES ($1, $2, $3, $4, CASE WHEN $10::bigint IS NULL THEN {NOW_MS} ELSE $12 END,
                 {NOW_MS}, $5, $6, $7, COALESCE($8, ''), $9, $10,
                 CASE WHEN $11::text IS NULL THEN 'pending' ELSE 'completed' END, $11,
                 CASE WHEN $11::text IS NULL THEN NULL ELSE {NOW_MS} END,
                 CASE WHEN $11::text IS NULL THEN NULL ELSE {NOW_MS} END,
                 CASE WHEN $11::text IS NULL THEN NULL ELSE
                   jsonb_build_array(jsonb_build_object(
                     'attempt', 0, 'started_at', {NOW_MS}, 'finished_at', {NOW_MS},
                     'worker', NULL, 'outcome', 'cached', 'error_kind', NULL, 'error', NULL,
                     'retry_delay_ms', NULL))::text END)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id"
    ))
    .bind(&new.provider)
    .bind(new.priority)
    .bind(input)
    .bind(new.max_attempts)
    .bind(key.map(|k| &k.key))
    .bind(key.map(|k| &k.fingerprint))
    .bind(&new.route)
    .bind(&new.tenant)
    .bind(&cache.key)
    .bind(leader)
    .bind(hit)
    // A waiter is never due until its leader ends (`settle_cache` makes it due).
    .bind(i64::MAX)
    .fetch_optional(tx)
    .await
    .op(OP)
    .map(|id| id.map(|id| Inserted { id, hit: answered }))
}

/// A batch statement's text for PostgreSQL (see `store/batches.rs`).
fn batch_sql(sql: &str) -> String {
    super::batches::for_postgres(sql, NOW_MS)
}

super::batches::batch_methods!(
    PgQueue,
    pool,
    pool,
    batch_sql,
    super::batches::finish_batched_postgres(NOW_MS),
    Some(super::batches::OPEN_LOCK_SQL)
);

#[async_trait]
impl Queue for PgQueue {
    async fn submit(&self, new: &NewExecution) -> Result<ExecutionId, StoreError> {
        let mut tx = self.pool.begin().await.op("submitting an execution")?;
        let id = insert(&mut tx, new, None)
            .await?
            .map(|i| i.id)
            .ok_or_else(|| StoreError::Other("an insert without a key returned no id".into()))?;
        self.notify(&mut tx, &new.provider).await?;
        tx.commit().await.op("submitting an execution")?;
        Ok(id)
    }

    async fn submit_many(&self, new: &[NewExecution]) -> Result<Vec<ExecutionId>, StoreError> {
        const OP: &str = "submitting executions";
        let mut tx = self.pool.begin().await.op(OP)?;
        let mut ids = Vec::with_capacity(new.len());
        lock_cache_keys(&mut tx, new.iter().filter_map(cache_key)).await?;
        // One statement per chunk, over arrays.
        for chunk in new.chunks(SUBMIT_CHUNK) {
            if chunk.iter().any(|n| n.cache.is_some()) {
                // Each may be a cache hit or a waiter: one at a time, in the batch's order.
                for n in chunk {
                    let inserted = insert(&mut tx, n, None).await?.ok_or_else(|| {
                        StoreError::Other("an insert without a key returned no id".into())
                    })?;
                    ids.push(inserted.id);
                }
                continue;
            }
            let mut providers = Vec::with_capacity(chunk.len());
            let mut priorities = Vec::with_capacity(chunk.len());
            let mut inputs = Vec::with_capacity(chunk.len());
            let mut max_attempts = Vec::with_capacity(chunk.len());
            let mut routes = Vec::with_capacity(chunk.len());
            let mut tenants = Vec::with_capacity(chunk.len());
            let mut statuses = Vec::with_capacity(chunk.len());
            let mut may_defer = Vec::with_capacity(chunk.len());
            let mut deadlines = Vec::with_capacity(chunk.len());
            for n in chunk {
                statuses.push(n.defer.status().as_str());
                may_defer.push(n.defer.deferrable);
                deadlines.push(n.defer.deadline);
                routes.push(n.route.as_deref());
                tenants.push(n.tenant.as_deref().unwrap_or(""));
                providers.push(n.provider.as_str());
                priorities.push(n.priority);
                inputs.push(
                    serde_json::to_string(&n.input)
                        .map_err(|e| StoreError::Other(format!("serializing input: {e}")))?,
                );
                max_attempts.push(n.max_attempts);
            }
            let mut chunk_ids: Vec<i64> = sqlx::query_scalar(&format!(
                "INSERT INTO executions (provider, priority, input, max_attempts, not_before,
                                         created_at, route, tenant, status, may_defer,
                                         deadline)
                 SELECT b.provider, b.priority, b.input, b.max_attempts, {NOW_MS}, {NOW_MS},
                        b.route, b.tenant, b.status, b.may_defer, b.deadline
                   FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[],
                               $6::text[], $7::text[], $8::bool[], $9::bigint[])
                        WITH ORDINALITY AS b(provider, priority, input, max_attempts, route,
                                             tenant, status, may_defer, deadline, n)
                  ORDER BY b.n
                 RETURNING id"
            ))
            .bind(&providers)
            .bind(&priorities)
            .bind(&inputs)
            .bind(&max_attempts)
            .bind(&routes)
            .bind(&tenants)
            .bind(&statuses)
            .bind(&may_defer)
            .bind(&deadlines)
            .fetch_all(&mut *tx)
            .await
            .op(OP)?;
            // Ids rise in insertion order, which is the batch's order.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        let providers: BTreeSet<&str> = new.iter().map(|n| n.provider.as_str()).collect();
        for provider in providers {
            self.notify(&mut tx, provider).await?;
        }
        tx.commit().await.op(OP)?;
        Ok(ids)
    }

    async fn get(&self, id: ExecutionId) -> Result<Option<Execution>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM executions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("reading an execution")?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn list(&self, provider: Option<&str>) -> Result<Vec<Execution>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM executions
              WHERE $1::text IS NULL OR provider = $1 ORDER BY id"
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
        if claim.budget.is_none() && claim.spend.is_none() {
            let rows =
                claim_rows(&self.pool, &self.channel, provider, &claim, claim.max, None).await?;
            return claimed(&self.pool, claim.owner, rows).await;
        }
        // A claim with a budget or spend caps, in one transaction under the provider's
        // budget lock, so that the fleet's claims see each other's reservations: what the
        // window and the day have used, the room it leaves for the next pending rows (by
        // their estimates), the claim, the reservations. (Claims of two providers for one
        // capped tenant take two locks: each sees the other's reservations once it commits.)
        const OP: &str = "claiming executions within the budget and spend caps";
        let mut tx = self.pool.begin().await.op(OP)?;
        let now = lock_budget(&mut tx, &self.channel, provider).await?;
        let mut used = (0, 0);
        if claim.budget.is_some() {
            // Not the rows a settlement holds now (see `lanes_try_claim_within`, migration
            // 0021): the next claim deletes them.
            sqlx::query(
                "DELETE FROM budget_ledger WHERE ctid = ANY (ARRAY(
                   SELECT ctid FROM budget_ledger WHERE provider = $1 AND at <= $2
                      FOR UPDATE SKIP LOCKED))",
            )
            .bind(provider)
            .bind(now - BUDGET_WINDOW_MS)
            .execute(&mut *tx)
            .await
            .op(OP)?;
            // Kept by the ledger's triggers (migration 0021): one row, not a sum of the
            // ledger.
            used = sqlx::query_as(
                "SELECT COALESCE(MAX(requests), 0)::bigint, COALESCE(MAX(tokens), 0)::bigint
                   FROM budget_used WHERE provider = $1",
            )
            .bind(provider)
            .fetch_one(&mut *tx)
            .await
            .op(OP)?;
        }
        let mut excluded = None;
        let mut provider_total = 0.0;
        if let Some(spend) = claim.spend {
            let rows = spend_totals(&mut tx, provider, spend).await?;
            let read = spend.read(&rows);
            if read.full {
                tx.commit().await.op(OP)?;
                return Ok(Vec::new());
            }
            (provider_total, excluded) = (read.provider_total, read.excluded);
        }
        let mut room = claim.max;
        if let Some(requests) = super::spend::room_by_requests(&claim, used, provider_total) {
            room = requests;
        } else if super::spend::weighs_estimates(&claim) {
            // The rows this claim would take, in its order (a dry run, undone), by whose
            // estimates the room is measured: the claim then takes the first of them (this
            // transaction holds the budget lock, so no other claim of the provider comes in
            // between).
            sqlx::query("SAVEPOINT candidates")
                .execute(&mut *tx)
                .await
                .op(OP)?;
            let rows = claim_rows(
                &mut *tx,
                &self.channel,
                provider,
                &claim,
                claim.max,
                excluded.as_deref(),
            )
            .await?;
            sqlx::query("ROLLBACK TO SAVEPOINT candidates")
                .execute(&mut *tx)
                .await
                .op(OP)?;
            let inputs = rows.iter().map(|row| row.try_get::<&str, _>("input").ok());
            room = super::spend::room(&claim, used, provider_total, inputs);
        }
        if room == 0 {
            tx.commit().await.op(OP)?;
            return Ok(Vec::new());
        }
        let rows = claim_rows(
            &mut *tx,
            &self.channel,
            provider,
            &claim,
            room,
            excluded.as_deref(),
        )
        .await?;
        let claimed = claimed(&mut *tx, claim.owner, rows).await?;
        if claim.budget.is_some() {
            let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
            let reserved: Vec<i64> = claimed.iter().map(|e| estimate_tokens(&e.input)).collect();
            sqlx::query(
                "INSERT INTO budget_ledger (execution_id, provider, at, tokens)
                 SELECT b.id, $3, $4, b.tokens
                   FROM unnest($1::bigint[], $2::bigint[]) AS b(id, tokens)",
            )
            .bind(&ids)
            .bind(&reserved)
            .bind(provider)
            .bind(now)
            .execute(&mut *tx)
            .await
            .op(OP)?;
        }
        if let Some(spend) = claim.spend {
            reserve_spend(&mut tx, spend, provider, &claimed).await?;
        }
        tx.commit().await.op(OP)?;
        Ok(claimed)
    }

    async fn renew_leases(&self, owner: &str, lease_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE executions SET lease_until = {NOW_MS} + $2
              WHERE owner = $1 AND status = 'running'"
        ))
        .bind(owner)
        .bind(lease_ms)
        .execute(&self.pool)
        .await
        .op("renewing leases")?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self, provider: &str) -> Result<Option<i64>, StoreError> {
        // Returned as a time on this host's clock: the caller sleeps until then.
        // `not_before > created_at` picks the partial index `executions_delayed` (migration
        // 0018); a row due later than now was always delayed past its creation.
        let wait_ms: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(not_before) - {NOW_MS} FROM executions
              WHERE provider = $1 AND status = 'pending' AND not_before > created_at
                AND not_before > {NOW_MS} AND waits_for IS NULL"
        ))
        .bind(provider)
        .fetch_one(&self.pool)
        .await
        .op("reading the next retry time")?;
        Ok(wait_ms.map(|w| crate::model::now_ms() + w))
    }

    async fn finish_many(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
    ) -> Result<Vec<bool>, StoreError> {
        const OP: &str = "recording attempts' ends";
        let rows: Vec<FinishRow> = batch.iter().map(|(id, f)| FinishRow::new(*id, f)).collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
        let outputs: Vec<Option<&str>> = rows.iter().map(|r| r.output).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error).collect();
        let kinds: Vec<Option<&str>> = rows.iter().map(|r| r.kind).collect();
        let delays: Vec<Option<i64>> = rows.iter().map(|r| r.delay_ms).collect();
        let requeues: Vec<bool> = rows.iter().map(|r| r.requeue).collect();
        let limited: Vec<bool> = rows.iter().map(|r| r.rate_limited).collect();
        let moves: Vec<Option<&str>> = rows.iter().map(|r| r.to).collect();
        let written: Vec<(i64, i64)> = sqlx::query_as(&FINISH_SQL)
            .bind(owner)
            .bind(&ids)
            .bind(&statuses)
            .bind(&outputs)
            .bind(&errors)
            .bind(&kinds)
            .bind(&delays)
            .bind(&requeues)
            .bind(&self.channel)
            .bind(&limited)
            .bind(&moves)
            .fetch_all(&self.writes)
            .await
            .op(OP)?;
        Ok(written_flags(
            batch,
            &written.iter().map(|(id, _)| *id).collect(),
        ))
    }

    fn refills_with_finish(&self) -> u32 {
        Self::REFILL_IN_WRITE_UP_TO
    }

    async fn finish_and_claim(
        &self,
        owner: &str,
        batch: &[(ExecutionId, &Finish)],
        claims: &[(&str, Claim<'_>)],
    ) -> Result<(Vec<bool>, Vec<Option<Vec<Execution>>>), StoreError> {
        const OP: &str = "recording attempts' ends and claiming for the slots they free";
        if claims.is_empty() {
            return Ok((self.finish_many(owner, batch).await?, Vec::new()));
        }
        super::claims_for_a_write(claims)?;
        let rows: Vec<FinishRow> = batch.iter().map(|(id, f)| FinishRow::new(*id, f)).collect();
        let answer = sqlx::query(&FINISH_AND_CLAIM_SQL)
            .bind(owner)
            .bind(rows.iter().map(|r| r.id).collect::<Vec<i64>>())
            .bind(rows.iter().map(|r| r.status).collect::<Vec<&str>>())
            .bind(rows.iter().map(|r| r.output).collect::<Vec<Option<&str>>>())
            .bind(rows.iter().map(|r| r.error).collect::<Vec<Option<&str>>>())
            .bind(rows.iter().map(|r| r.kind).collect::<Vec<Option<&str>>>())
            .bind(
                rows.iter()
                    .map(|r| r.delay_ms)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(rows.iter().map(|r| r.requeue).collect::<Vec<bool>>())
            .bind(&self.channel)
            .bind(rows.iter().map(|r| r.rate_limited).collect::<Vec<bool>>())
            .bind(rows.iter().map(|r| r.to).collect::<Vec<Option<&str>>>())
            .bind(claims.iter().map(|(p, _)| *p).collect::<Vec<&str>>())
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| i64::from(c.max))
                    .collect::<Vec<i64>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| i64::from(c.limit))
                    .collect::<Vec<i64>>(),
            )
            .bind(claims.iter().map(|(_, c)| c.lease_ms).collect::<Vec<i64>>())
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| c.tenants.limit.map(i64::from))
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| c.tenants.weights.as_deref())
                    .collect::<Vec<Option<&str>>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| c.budget.and_then(|b| b.rpm).map(i64::from))
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|(_, c)| {
                        c.budget
                            .and_then(|b| b.tpm)
                            .map(|t| i64::try_from(t).unwrap_or(i64::MAX))
                    })
                    .collect::<Vec<Option<i64>>>(),
            )
            .fetch_all(&self.writes)
            .await
            .op(OP)?;
        // Committed: from here on nothing fails the call, or the completer would write the
        // batch again and find its rows no longer running.
        let mut written = std::collections::HashSet::new();
        let mut rows_of: Vec<Vec<sqlx::postgres::PgRow>> =
            claims.iter().map(|_| Vec::new()).collect();
        let mut made = vec![true; claims.len()];
        for row in answer {
            match row.try_get::<Option<Vec<i64>>, _>("lanes_written") {
                Ok(ids) => written.extend(ids.into_iter().flatten()),
                // The rows then show as not written (lost), and this says why.
                Err(e) => tracing::error!("{OP}: reading the ids written: {e}"),
            }
            let k = row.try_get::<Option<i64>, _>("lanes_k").ok().flatten();
            let Some(k) = k
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| k.checked_sub(1))
            else {
                continue;
            };
            if row.try_get::<Option<i64>, _>("id").ok().flatten().is_none() {
                // Another worker held the provider's claim lock: its producer claims.
                if let Some(m) = made.get_mut(k) {
                    *m = false;
                }
            } else if let Some(rows) = rows_of.get_mut(k) {
                rows.push(row);
            }
        }
        let mut out = Vec::with_capacity(claims.len());
        let mut unreadable = Vec::new();
        for ((rows, made), (provider, _)) in rows_of.into_iter().zip(made).zip(claims) {
            if !made {
                out.push(None);
                continue;
            }
            match readable_claims(rows.iter().map(execution_from_row)) {
                Ok((rows, bad)) => {
                    out.push(Some(rows));
                    unreadable.extend(bad);
                }
                Err(e) => {
                    // The rows stay this worker's, running, until it stops: the same as a
                    // producer's claim that cannot be read.
                    tracing::error!("provider {provider}: {OP}: {e}");
                    out.push(None);
                }
            }
        }
        if let Err(e) = fail_unreadable(&self.pool, owner, &unreadable).await {
            // A row it could not fail stays running, as above.
            tracing::error!("{e}");
        }
        Ok((written_flags(batch, &written), out))
    }

    async fn warm_up(&self) -> Result<(), StoreError> {
        // An empty batch: it connects, sets the connection up and prepares the write.
        self.finish_many("", &[]).await.map(|_| ())
    }

    async fn recover_interrupted(&self) -> Result<Recovered, StoreError> {
        let mut tx = self.pool.begin().await.op("reclaiming expired leases")?;
        let history = history_with("", "'interrupted'", "NULL", "NULL", "NULL");
        let failed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "UPDATE executions
                SET history = {history},
                    status = 'failed', finished_at = {NOW_MS}, owner = NULL, lease_until = NULL,
                    error_kind = 'interrupted',
                    error = 'interrupted: the worker running it (' || owner
                            || ') stopped renewing its lease, and that was attempt '
                            || attempts || ' of ' || max_attempts
              WHERE status = 'running' AND lease_until < {NOW_MS} AND attempts >= max_attempts
             RETURNING id, provider"
        ))
        .fetch_all(&mut *tx)
        .await
        .op("failing expired executions without attempts left")?;
        let resumed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "UPDATE executions SET history = {history}, status = 'pending', resume = true, owner = NULL,
                    lease_until = NULL
              WHERE status = 'running' AND lease_until < {NOW_MS}
             RETURNING id, provider"
        ))
        .fetch_all(&mut *tx)
        .await
        .op("returning expired executions to the queue")?;
        let providers: std::collections::BTreeSet<&str> =
            resumed.iter().map(|(_, p)| p.as_str()).collect();
        for provider in providers {
            self.notify(&mut tx, provider).await?;
        }
        tx.commit().await.op("reclaiming expired leases")?;
        let mut recovered = Recovered { resumed, failed };
        recovered.resumed.sort();
        recovered.failed.sort();
        Ok(recovered)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn slot_freed(&self, provider: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.op("notifying other workers")?;
        self.notify(&mut conn, provider).await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        providers: &[String],
        ttl_ms: i64,
    ) -> Result<Option<BTreeMap<String, u32>>, StoreError> {
        const OP: &str = "recording this worker in the fleet";
        // Rows of workers that are gone, skipping any another worker is deleting: no waits,
        // and no deadlock between two workers clearing the same rows in different orders.
        sqlx::query(&format!(
            "DELETE FROM workers WHERE (owner, provider) IN
               (SELECT owner, provider FROM workers WHERE seen_until < {NOW_MS}
                  FOR UPDATE SKIP LOCKED)"
        ))
        .execute(&self.pool)
        .await
        .op(OP)?;
        let mut tx = self.pool.begin().await.op(OP)?;
        let left = sqlx::query("DELETE FROM workers WHERE owner = $1 AND provider <> ALL($2)")
            .bind(owner)
            .bind(providers)
            .execute(&mut *tx)
            .await
            .op(OP)?
            .rows_affected();
        // `xmax = 0` on a row an upsert returns: it was inserted, not updated.
        let joined: i64 = sqlx::query_scalar(&format!(
            "WITH up AS (
               INSERT INTO workers (owner, provider, seen_until)
               SELECT $1, p, {NOW_MS} + $3 FROM unnest($2::text[]) p
               ON CONFLICT (owner, provider) DO UPDATE SET seen_until = EXCLUDED.seen_until
               RETURNING xmax = 0 AS inserted)
             SELECT COUNT(*) FILTER (WHERE inserted) FROM up"
        ))
        .bind(owner)
        .bind(providers)
        .bind(ttl_ms)
        .fetch_one(&mut *tx)
        .await
        .op(OP)?;
        let live = live_workers(&mut *tx).await.op(OP)?;
        if left > 0 || joined > 0 {
            self.notify(&mut tx, Change::WORKERS).await?;
        }
        tx.commit().await.op(OP)?;
        Ok(Some(live))
    }

    async fn workers(&self) -> Result<Option<BTreeMap<String, u32>>, StoreError> {
        live_workers(&self.pool)
            .await
            .op("counting the fleet's workers")
            .map(Some)
    }

    async fn leave(&self, owner: &str) -> Result<(), StoreError> {
        const OP: &str = "leaving the fleet";
        let mut tx = self.pool.begin().await.op(OP)?;
        sqlx::query("DELETE FROM workers WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await
            .op(OP)?;
        self.notify(&mut tx, Change::WORKERS).await?;
        tx.commit().await.op(OP)?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Change>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .op("listening for notifications")?;
        listener
            .listen(&self.channel)
            .await
            .op("listening for notifications")?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                // `recv` reconnects by itself after a lost connection; notifications sent
                // meanwhile are lost, and the poll interval covers them.
                match listener.recv().await {
                    Ok(n) => {
                        let Some(change) = Change::parse(n.payload()) else {
                            continue;
                        };
                        if tx.send(change).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("notification listener: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if tx.is_closed() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Some(rx))
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
        let mut tx = self.pool.begin().await.op(OP)?;
        // The keys' locks, as submissions take them: a waiter being inserted now is either
        // seen here or sees its leader's end.
        lock_cache_keys(&mut tx, ends.iter().map(|e| e.key)).await?;
        for end in ends {
            let Some(output) = end.output else {
                let providers: Vec<String> = sqlx::query_scalar(&format!(
                    "UPDATE executions SET waits_for = NULL, not_before = {NOW_MS}
                      WHERE waits_for = $1 AND status = 'pending' RETURNING provider"
                ))
                .bind(end.id)
                .fetch_all(&mut *tx)
                .await
                .op(OP)?;
                for provider in providers {
                    self.notify(&mut tx, &provider).await?;
                    settled.released.insert(provider);
                }
                continue;
            };
            sqlx::query(&format!(
                "INSERT INTO response_cache (key, provider, output, created_at)
                 VALUES ($1, $2, $3, {NOW_MS})
                 ON CONFLICT (key) DO UPDATE
                    SET provider = excluded.provider, output = excluded.output,
                        created_at = excluded.created_at"
            ))
            .bind(end.key)
            .bind(end.provider)
            .bind(output)
            .execute(&mut *tx)
            .await
            .op(OP)?;
            let hit = crate::responses::as_hit(output).unwrap_or_else(|| output.to_string());
            let completed: Vec<(i64, String)> = sqlx::query_as(&format!(
                "UPDATE executions
                    SET status = 'completed', output = $2, started_at = {NOW_MS},
                        finished_at = {NOW_MS}, waits_for = NULL,
                        history = jsonb_build_array(jsonb_build_object(
                          'attempt', 0, 'started_at', {NOW_MS}, 'finished_at', {NOW_MS},
                          'worker', NULL, 'outcome', 'cached', 'error_kind', NULL,
                          'error', NULL, 'retry_delay_ms', NULL))::text
                  WHERE waits_for = $1 AND status = 'pending' RETURNING id, provider"
            ))
            .bind(end.id)
            .bind(hit)
            .fetch_all(&mut *tx)
            .await
            .op(OP)?;
            settled.completed.extend(completed);
        }
        // Each cache that took an answer drops its expired ones, once per batch.
        for (provider, ttl_ms) in super::stored_caches(ends) {
            sqlx::query(&format!(
                "DELETE FROM response_cache
                  WHERE provider = $1 AND created_at <= {NOW_MS} - $2"
            ))
            .bind(provider)
            .bind(ttl_ms)
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
        let mut tx = self.pool.begin().await.op(OP)?;
        let providers: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE executions w SET waits_for = NULL, not_before = {NOW_MS}
              WHERE w.waits_for IS NOT NULL AND w.status = 'pending'
                AND NOT EXISTS (SELECT 1 FROM executions l WHERE l.id = w.waits_for
                                   AND l.status IN ('pending', 'running'))
             RETURNING w.provider"
        ))
        .fetch_all(&mut *tx)
        .await
        .op(OP)?;
        let released: BTreeSet<String> = providers.into_iter().collect();
        for provider in &released {
            self.notify(&mut tx, provider).await?;
        }
        for (provider, max) in sizes {
            sqlx::query(
                "DELETE FROM response_cache
                  WHERE provider = $1
                    AND key IN (SELECT key FROM response_cache WHERE provider = $1
                                 ORDER BY created_at DESC OFFSET $2)",
            )
            .bind(provider)
            .bind(i64::try_from(*max).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .op(OP)?;
        }
        tx.commit().await.op(OP)?;
        Ok(released)
    }

    async fn clear_cache(&self, provider: Option<&str>) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM response_cache WHERE $1::text IS NULL OR provider = $1")
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
        let rows = sqlx::query_as(&usage_sql(by, true))
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
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT provider, 'pending', COUNT(*) FROM executions
              WHERE status = 'pending' AND provider = ANY($1) GROUP BY provider
             UNION ALL
             SELECT provider, 'running', COUNT(*) FROM executions
              WHERE status = 'running' AND provider = ANY($1) GROUP BY provider",
        )
        .bind(providers)
        .fetch_all(&self.pool)
        .await
        .op("counting open executions")?;
        fold_counts(rows)
    }

    async fn pending_routed(&self, provider: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT route, COUNT(*) FROM executions
              WHERE provider = $1 AND status = 'pending' AND route IS NOT NULL GROUP BY route",
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
        let bounds = move_bounds(to);
        let members: Vec<&str> = bounds.iter().map(|b| b.0).collect();
        let after: Vec<i64> = bounds.iter().map(|b| b.1).collect();
        let upto: Vec<i64> = bounds.iter().map(|b| b.2).collect();
        let mut tx = self.pool.begin().await.op("moving routed executions")?;
        // A row claimed meanwhile is `running` by the time the update reaches it, and one
        // that another worker's move took is on another member: both are checked again once
        // the row's lock is had, and such a row stays where it is.
        let done = sqlx::query(
            "UPDATE executions e SET provider = s.member
               FROM (SELECT id, row_number() OVER (ORDER BY resume DESC, priority DESC, id) AS n
                       FROM executions
                      WHERE provider = $1 AND route = $2 AND status = 'pending') m,
                    unnest($3::text[], $4::bigint[], $5::bigint[]) AS s(member, after, upto)
              WHERE e.id = m.id AND m.n > s.after AND m.n <= s.upto AND e.status = 'pending'
                AND e.provider = $1 AND e.route = $2",
        )
        .bind(from)
        .bind(route)
        .bind(&members)
        .bind(&after)
        .bind(&upto)
        .execute(&mut *tx)
        .await
        .op("moving routed executions")?;
        // The workers that serve the members claim what came to them now, not at a poll.
        for member in members {
            self.notify(&mut tx, member).await?;
        }
        tx.commit().await.op("moving routed executions")?;
        Ok(done.rows_affected())
    }

    async fn set_limit(&self, provider: &str, limit: u32) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.op("storing a limit")?;
        sqlx::query(&format!(
            "INSERT INTO provider_limits (provider, max_running, updated_at)
             VALUES ($1, $2, {NOW_MS})
             ON CONFLICT (provider) DO UPDATE SET max_running = $2, updated_at = {NOW_MS}"
        ))
        .bind(provider)
        .bind(stored_count("limit", limit)?)
        .execute(&mut *tx)
        .await
        .op("storing a limit")?;
        self.notify(&mut tx, provider).await?;
        tx.commit().await.op("storing a limit")?;
        Ok(())
    }

    async fn clear_limit(&self, provider: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM provider_limits WHERE provider = $1")
            .bind(provider)
            .execute(&self.pool)
            .await
            .op("clearing a limit")?;
        Ok(done.rows_affected() > 0)
    }

    async fn limits(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        let rows: Vec<(String, i32)> =
            sqlx::query_as("SELECT provider, max_running FROM provider_limits")
                .fetch_all(&self.pool)
                .await
                .op("reading limits")?;
        rows.into_iter()
            .map(|(p, l)| Ok((p, read_count("limit", i64::from(l))?)))
            .collect()
    }

    async fn record_providers(&self, providers: &[ProviderRecord]) -> Result<(), StoreError> {
        // Workers share this table: each upserts what it loaded and removes nothing, since
        // another worker may still serve a provider this one does not have.
        let mut tx = self.pool.begin().await.op("recording providers")?;
        for p in providers {
            sqlx::query(&format!(
                "INSERT INTO providers (name, component, version, default_limit, description, seen_at)
                 VALUES ($1, $2, $3, $4, $5, {NOW_MS})
                 ON CONFLICT (name) DO UPDATE SET component = $2, version = $3,
                        default_limit = $4, description = $5, seen_at = {NOW_MS}"
            ))
            .bind(&p.name)
            .bind(&p.component)
            .bind(&p.version)
            .bind(stored_count("default limit", p.default_limit)?)
            .bind(&p.description)
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
        let mut tx = self.pool.begin().await.op(OP)?;
        lock_cache_keys(&mut tx, batch.iter().filter_map(|(n, _)| cache_key(n))).await?;
        let mut out = Vec::with_capacity(batch.len());
        for (new, key) in batch {
            // A key another transaction is inserting makes this wait for it to end; then
            // the read below sees its row.
            if let Some(inserted) = insert(&mut tx, new, key.as_ref()).await? {
                out.push(inserted.submitted());
                continue;
            }
            let Some(key) = key else {
                return Err(StoreError::Other(
                    "an insert without a key returned no id".into(),
                ));
            };
            let (id, hash): (i64, Option<String>) = sqlx::query_as(
                "SELECT id, request_hash FROM executions WHERE idempotency_key = $1",
            )
            .bind(&key.key)
            .fetch_one(&mut *tx)
            .await
            .op("reading an idempotency key")?;
            out.push(key.outcome(id, hash.as_deref()));
        }
        if out.iter().any(|s| matches!(s, Submitted::Conflict(_))) {
            tx.rollback().await.op(OP)?;
            return Ok(out);
        }
        let created: BTreeSet<&str> = batch
            .iter()
            .zip(&out)
            .filter(|(_, s)| matches!(s, Submitted::Created(_)))
            .map(|((n, _), _)| n.provider.as_str())
            .collect();
        for provider in created {
            self.notify(&mut tx, provider).await?;
        }
        tx.commit().await.op(OP)?;
        Ok(out)
    }

    async fn list_page(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM executions
              WHERE ($1::text IS NULL OR provider = $1) AND ($2::text IS NULL OR status = $2)
                AND ($3::bigint IS NULL OR created_at >= $3)
                AND ($4::bigint IS NULL OR created_at < $4)
                AND ($5::bigint IS NULL OR id < $5)
                AND ($7::bigint IS NULL OR finished_at >= $7)
              ORDER BY id DESC LIMIT $6"
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
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, idempotency_key FROM executions
              WHERE id = ANY($1) AND idempotency_key IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .op("reading idempotency keys")?;
        Ok(rows.into_iter().collect())
    }

    async fn cancel(&self, id: ExecutionId) -> Result<Cancelled, StoreError> {
        const OP: &str = "cancelling an execution";
        // Two guarded statements rather than a read then a write: each is atomic, and a row
        // claimed between them is caught by the second.
        let pending = sqlx::query(&format!(
            "UPDATE executions SET status = 'cancelled', finished_at = {NOW_MS}
              WHERE id = $1 AND status IN ('pending', 'batched')"
        ))
        .bind(id)
        .execute(&self.pool)
        .await
        .op(OP)?;
        if pending.rows_affected() > 0 {
            // Executions waiting for its answer (the response cache) run their own.
            let mut tx = self.pool.begin().await.op(OP)?;
            let providers: Vec<String> = sqlx::query_scalar(&format!(
                "UPDATE executions SET waits_for = NULL, not_before = {NOW_MS}
                  WHERE waits_for = $1 AND status = 'pending' RETURNING provider"
            ))
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .op(OP)?;
            for provider in providers.iter().collect::<BTreeSet<_>>() {
                self.notify(&mut tx, provider).await?;
            }
            tx.commit().await.op(OP)?;
            return Ok(Cancelled::Pending);
        }
        let history = history_with("", "'cancelled'", "NULL", "NULL", "NULL");
        let mut tx = self.pool.begin().await.op(OP)?;
        let running: Option<Option<String>> = sqlx::query_scalar(&format!(
            "UPDATE executions SET history = {history}, status = 'cancelled',
                    finished_at = {NOW_MS}, owner = NULL, lease_until = NULL
              WHERE id = $1 AND status = 'running'
             RETURNING worker"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op(OP)?;
        if let Some(owner) = running {
            // Whichever worker runs it stops the attempt.
            self.notify(&mut tx, &format!("cancel:{id}")).await?;
            tx.commit().await.op(OP)?;
            return Ok(Cancelled::Running { owner });
        }
        tx.commit().await.op(OP)?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM executions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .op(OP)?;
        Cancelled::ended(id, status)
    }

    async fn change_state(&self, provider: &str, change: &StateChange) -> Result<bool, StoreError> {
        // A pause or an opening: an upsert that never shortens a pause in place. Times come
        // from the database clock, like every other on this backend.
        let upsert = |circuit: &str, set: &str| {
            format!(
                "INSERT INTO provider_state AS s (provider, paused_until, reason, circuit,
                                                  openings, updated_at)
                 VALUES ($1, {NOW_MS} + $2, $3, '{circuit}', {opened}, {NOW_MS})
                 ON CONFLICT (provider) DO UPDATE SET {set},
                        paused_until = GREATEST(s.paused_until, excluded.paused_until),
                        updated_at = {NOW_MS}",
                opened = i32::from(circuit == "open"),
            )
        };
        let pause = upsert(
            "closed",
            "reason = CASE WHEN excluded.paused_until > s.paused_until
                           THEN excluded.reason ELSE s.reason END",
        );
        let open = upsert(
            "open",
            "circuit = 'open', openings = s.openings + 1, reason = excluded.reason",
        );
        let close = format!(
            "UPDATE provider_state SET circuit = 'closed', openings = 0,
                    reason = CASE WHEN paused_until > {NOW_MS} THEN reason END,
                    updated_at = {NOW_MS}
              WHERE provider = $1 AND circuit = 'open'"
        );
        let clear = format!(
            "UPDATE provider_state SET circuit = 'closed', openings = 0, paused_until = 0,
                    reason = NULL, updated_at = {NOW_MS}
              WHERE provider = $1 AND circuit = 'open' AND reason LIKE 'unauthorized%'"
        );
        let adaptive = format!(
            "INSERT INTO provider_state AS s (provider, adaptive_limit, updated_at)
             VALUES ($1, $2, {NOW_MS})
             ON CONFLICT (provider) DO UPDATE SET adaptive_limit = $2, updated_at = {NOW_MS}
              WHERE s.adaptive_limit IS DISTINCT FROM $2"
        );
        let query = match change {
            StateChange::Pause { for_ms, reason } => {
                sqlx::query(&pause).bind(provider).bind(for_ms).bind(reason)
            }
            StateChange::Open { for_ms, reason } => {
                sqlx::query(&open).bind(provider).bind(for_ms).bind(reason)
            }
            StateChange::Close => sqlx::query(&close).bind(provider),
            StateChange::ClearUnauthorized => sqlx::query(&clear).bind(provider),
            StateChange::Adaptive(limit) => sqlx::query(&adaptive).bind(provider).bind(
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
        // Concurrent sweeps of several workers: a row locked by one is re-checked after it,
        // and no longer matches.
        let done = sqlx::query(&format!(
            "UPDATE executions SET priority = priority + 1, aged = aged + 1
              WHERE provider = $1 AND status = 'pending' AND aged < $3
                AND priority < 2147483647 AND created_at <= {NOW_MS} - (aged + 1) * $2"
        ))
        .bind(provider)
        .bind(every_ms)
        .bind(i64::from(max))
        .execute(&self.pool)
        .await
        .op("aging pending executions")?;
        Ok(done.rows_affected())
    }

    async fn settle_budgets(&self, ends: &[(ExecutionId, i64)]) -> Result<(), StoreError> {
        if ends.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE budget_ledger l SET tokens = b.tokens, settled = true
               FROM unnest($1::bigint[], $2::bigint[]) AS b(id, tokens)
              WHERE l.execution_id = b.id AND NOT l.settled",
        )
        .bind(ends.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
        .bind(ends.iter().map(|(_, t)| *t).collect::<Vec<i64>>())
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await.op(OP)?;
        let ids: Vec<i64> = ends.iter().map(|e| e.id).collect();
        let open: Vec<super::spend::OpenReservation> = sqlx::query_as(
            "DELETE FROM spend_open WHERE execution_id = ANY($1)
             RETURNING execution_id, day, provider, tenant, usd",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .op(OP)?;
        let open = open.into_iter().map(|o| (o.execution_id, o)).collect();
        let mut notices = Vec::new();
        // In key order: the order every settle and claim locks the `spend` rows in.
        for ((day, scope, name), sum) in super::spend::settled(ends, &open) {
            let total: (String, String, f64, i32, f64) = sqlx::query_as(
                "INSERT INTO spend (day, scope, name, spent) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (day, scope, name) DO UPDATE
                    SET spent = spend.spent + EXCLUDED.spent,
                        reserved = GREATEST(0, spend.reserved - $5)
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
                    "UPDATE spend SET noticed = $4, noticed_cap = $5
                      WHERE day = $1 AND scope = $2 AND name = $3
                        AND (noticed < $4 OR noticed_cap <> $5)",
                )
                .bind(day)
                .bind(scope)
                .bind(&notice.name)
                .bind(i32::try_from(level).unwrap_or(i32::MAX))
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
        let gone: Vec<(i64,)> = sqlx::query_as(
            "WITH gone AS (
               DELETE FROM spend_open o
                WHERE NOT EXISTS (SELECT 1 FROM executions e
                                   WHERE e.id = o.execution_id
                                     AND e.status IN ('running', 'batched'))
               RETURNING day, provider, tenant, usd),
             sums AS (
               SELECT day, 'provider' AS scope, provider AS name, SUM(usd) AS usd
                 FROM gone GROUP BY day, provider
               UNION ALL
               SELECT day, 'tenant', tenant, SUM(usd) FROM gone GROUP BY day, tenant),
             lowered AS (
               UPDATE spend s SET reserved = GREATEST(0, s.reserved - sums.usd)
                 FROM sums
                WHERE s.day = sums.day AND s.scope = sums.scope AND s.name = sums.name)
             SELECT COUNT(*) FROM gone",
        )
        .fetch_all(&self.pool)
        .await
        .op(OP)?;
        Ok(gone
            .first()
            .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0)))
    }

    async fn spend(&self, day: i64) -> Result<Vec<super::SpendRow>, StoreError> {
        let rows: Vec<(String, String, f64, f64)> = sqlx::query_as(
            "SELECT scope, name, spent, GREATEST(reserved, 0) FROM spend WHERE day = $1
              ORDER BY scope, name",
        )
        .bind(day)
        .fetch_all(&self.pool)
        .await
        .op("reading the day's spend")?;
        Ok(super::spend::rows(rows))
    }

    async fn budget_usage(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT provider, COUNT(*), COALESCE(SUM(tokens), 0)::bigint FROM budget_ledger
              WHERE at > {NOW_MS} - $1 GROUP BY provider"
        ))
        .bind(BUDGET_WINDOW_MS)
        .fetch_all(&self.pool)
        .await
        .op("reading budget use")?;
        Ok(rows.into_iter().map(|(p, r, t)| (p, (r, t))).collect())
    }

    async fn budget_frees_in(&self, provider: &str) -> Result<Option<i64>, StoreError> {
        let left: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(at) + $2 - {NOW_MS} FROM budget_ledger
              WHERE provider = $1 AND at > {NOW_MS} - $2"
        ))
        .bind(provider)
        .bind(BUDGET_WINDOW_MS)
        .fetch_one(&self.pool)
        .await
        .op("reading budget use")?;
        Ok(left.map(|ms| ms.max(0)))
    }

    async fn append_stream(&self, chunks: &[StreamChunk]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        // One statement for the lot: a row per chunk from parallel arrays.
        let column = |f: fn(&StreamChunk) -> i64| chunks.iter().map(f).collect::<Vec<i64>>();
        let deltas: Vec<&str> = chunks.iter().map(|c| c.deltas.as_str()).collect();
        sqlx::query(
            "INSERT INTO stream_chunks (execution_id, attempt, first, count, deltas, at)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::text[], $6::bigint[])
             ON CONFLICT (execution_id, attempt, first)
             DO UPDATE SET count = EXCLUDED.count, deltas = EXCLUDED.deltas, at = EXCLUDED.at",
        )
        .bind(column(|c| c.execution_id))
        .bind(column(|c| c.attempt))
        .bind(column(|c| c.first))
        .bind(column(|c| c.count))
        .bind(deltas)
        .bind(column(|c| c.at))
        .execute(&self.pool)
        .await
        .op("storing stream chunks")?;
        Ok(())
    }

    async fn read_stream(
        &self,
        id: ExecutionId,
        from: StreamPosition,
    ) -> Result<Vec<StreamChunk>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT attempt, first, count, deltas, at FROM stream_chunks
              WHERE execution_id = $1
                AND (attempt > $2 OR (attempt = $2 AND first + count > $3))
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
        let done = sqlx::query("DELETE FROM stream_chunks WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .op("pruning streams")?;
        Ok(done.rows_affected())
    }

    async fn provider_states(&self) -> Result<(i64, BTreeMap<String, ProviderState>), StoreError> {
        let now: i64 = sqlx::query_scalar(&format!("SELECT {NOW_MS}"))
            .fetch_one(&self.pool)
            .await
            .op("reading the database clock")?;
        let rows: Vec<(String, i64, Option<String>, String, i32, Option<i32>)> = sqlx::query_as(
            "SELECT provider, paused_until, reason, circuit, openings, adaptive_limit
               FROM provider_state",
        )
        .fetch_all(&self.pool)
        .await
        .op("reading providers' states")?;
        let states = rows
            .into_iter()
            .map(|(p, a, b, c, d, e)| {
                Ok((
                    p,
                    provider_state((a, b, c, i64::from(d), e.map(i64::from)))?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((now, states))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .op("checking the database")?;
        Ok(())
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT name, component, version, default_limit::bigint, description
               FROM providers ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .op("reading providers")?;
        provider_records(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatInput, now_ms};

    /// A queue in a schema of its own on the test server (`LANES_TEST_PG`, default
    /// postgres://postgres@127.0.0.1:5432/test), and a pool on the same schema; `None`,
    /// with a line, when no server answers outside CI.
    async fn queue() -> Option<(PgQueue, PgPool, PgPool, String)> {
        let base = std::env::var("LANES_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let admin = match PgPool::connect(&base).await {
            Ok(pool) => pool,
            Err(e) if std::env::var_os("CI").is_some() => panic!("cannot connect to {base}: {e}"),
            Err(e) => {
                eprintln!("skipping a PostgreSQL test: cannot connect to {base} ({e})");
                return None;
            }
        };
        // A test may make two queues within one millisecond.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = format!("lanes_unit_{}_{}_{made}", std::process::id(), now_ms());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options[search_path]={schema}");
        let queue = PgQueue::open(&url).await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        Some((queue, pool, admin, schema))
    }

    /// Closes the test's pool, then drops its schema.
    async fn drop_schema(pool: PgPool, admin: &PgPool, schema: &str) {
        pool.close().await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(admin)
            .await
            .unwrap();
    }

    fn new(provider: &str) -> NewExecution {
        NewExecution {
            provider: provider.into(),
            input: ChatInput::prompt("hi"),
            priority: 0,
            max_attempts: 1,
            route: None,
            tenant: None,
            cache: None,
            defer: Default::default(),
        }
    }

    /// The batch write looks its rows up by primary key, both as PostgreSQL first plans it
    /// (for the values at hand) and as it plans it once for all, with another worker's
    /// 2,000 rows running and statistics taken while nothing ran, as autovacuum mostly
    /// sees a queue. It used to read the whole running rows' index instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_write_looks_rows_up_by_primary_key() {
        let Some((queue, pool, admin, schema)) = queue().await else {
            return;
        };
        let others: Vec<NewExecution> = (0..20_000).map(|_| new("other")).collect();
        queue.submit_many(&others).await.unwrap();
        let mine: Vec<NewExecution> = (0..10).map(|_| new("n")).collect();
        queue.submit_many(&mine).await.unwrap();
        sqlx::query("ANALYZE executions")
            .execute(&pool)
            .await
            .unwrap();
        let claim = |owner, max| Claim {
            spend: None,
            tenants: &crate::store::ROUND_ROBIN,
            owner,
            max,
            limit: 5_000,
            lease_ms: 60_000,
            budget: None,
        };
        assert_eq!(
            queue
                .claim("other", claim("w2", 2_000))
                .await
                .unwrap()
                .len(),
            2_000
        );
        let ids: Vec<i64> = queue
            .claim("n", claim("w", 10))
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids.len(), 10);
        let mut conn = pool.acquire().await.unwrap();
        // The simple protocol, so that the statement's `$n` are the prepared statement's.
        sqlx::raw_sql(&format!("PREPARE finish AS {}", *FINISH_SQL))
            .execute(&mut *conn)
            .await
            .unwrap();
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::query(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            // EXECUTE's arguments cannot be parameters of EXPLAIN: written out instead.
            let n = ids.len();
            let list = |value: &str| vec![value; n].join(",");
            let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let plan: Vec<String> = sqlx::query_scalar(&format!(
                "EXPLAIN EXECUTE finish('w', '{{{ids}}}', '{{{completed}}}', '{{{nulls}}}',
                     '{{{nulls}}}', '{{{nulls}}}', '{{{nulls}}}', '{{{falses}}}', 'lanes:test',
                     '{{{falses}}}', '{{{nulls}}}')",
                completed = list("completed"),
                nulls = list("NULL"),
                falses = list("false"),
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan using executions_pkey on executions e"),
                "{mode}:\n{plan}"
            );
            assert!(!plan.contains("executions_running"), "{mode}:\n{plan}");
            assert!(!plan.contains("Seq Scan on executions"), "{mode}:\n{plan}");
        }
        drop(conn);
        drop_schema(pool, &admin, &schema).await;
    }

    /// The sequential and the index scans of `executions` in the transaction so far.
    async fn scans(tx: &mut sqlx::PgConnection) -> (i64, i64) {
        sqlx::query_as(
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables
              WHERE relid = 'executions'::regclass",
        )
        .fetch_one(tx)
        .await
        .unwrap()
    }

    /// A claim reads the table by key even when its plans were cached on an empty queue
    /// (migration 0013). PL/pgSQL's generic plans, made then, read the whole table for every
    /// claim and kept doing so as the queue filled, until an ANALYZE. The transaction's own
    /// statistics count the scans, so no timing is involved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_planned_on_an_empty_queue_reads_by_key_once_it_fills() {
        use sqlx::Connection;
        let Some((queue, pool, admin, schema)) = queue().await else {
            return;
        };
        let mut conn = pool.acquire().await.unwrap();
        let claim = "SELECT id FROM lanes_claim('lanes:test', 'p', 'w', $1, 100000, 60000, NULL, NULL, NULL)";
        // More runs than PostgreSQL plans for their values before it keeps a generic plan.
        for _ in 0..8 {
            let none: Vec<i64> = sqlx::query_scalar(claim)
                .bind(100_i64)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            assert!(none.is_empty());
        }
        let rows: Vec<NewExecution> = (0..5_000).map(|_| new("p")).collect();
        queue.submit_many(&rows).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let claimed: Vec<i64> = sqlx::query_scalar(claim)
            .bind(500_i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 500);
        let (seq, idx) = scans(&mut tx).await;
        assert_eq!(seq, 0, "sequential scans of the table in one claim");
        assert!(idx > 0);
        tx.commit().await.unwrap();
        drop(conn);
        drop_schema(pool, &admin, &schema).await;
    }

    /// The batch write reads the table by key even when its statement was prepared, and its
    /// plans cached, on an empty queue, as a worker's connections are when it starts first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_write_prepared_on_an_empty_queue_reads_by_key_once_it_fills() {
        use sqlx::Connection;
        let Some((queue, pool, admin, schema)) = queue().await else {
            return;
        };
        // A connection of the queue's own, as `finish_many` writes on.
        let mut conn = queue.writes.acquire().await.unwrap();
        // The statement as `finish_many` sends it, for completed attempts of `ids`.
        async fn write(conn: &mut sqlx::PgConnection, ids: &[i64]) -> usize {
            let n = ids.len();
            let texts: Vec<Option<&str>> = vec![None; n];
            let rows: Vec<(i64, i64)> = sqlx::query_as(&FINISH_SQL)
                .bind("w")
                .bind(ids)
                .bind(vec!["completed"; n])
                .bind(vec![Some("{\"text\":\"\"}"); n])
                .bind(&texts)
                .bind(&texts)
                .bind(vec![None::<i64>; n])
                .bind(vec![false; n])
                .bind("lanes:test")
                .bind(vec![false; n])
                .bind(&texts)
                .fetch_all(conn)
                .await
                .unwrap();
            rows.len()
        }
        for _ in 0..8 {
            assert_eq!(write(&mut conn, &[1, 2, 3]).await, 0);
        }
        let rows: Vec<NewExecution> = (0..5_000).map(|_| new("p")).collect();
        queue.submit_many(&rows).await.unwrap();
        let claim = Claim {
            tenants: &crate::store::ROUND_ROBIN,
            owner: "w",
            max: 500,
            limit: 5_000,
            lease_ms: 60_000,
            budget: None,
            spend: None,
        };
        let ids: Vec<i64> = queue
            .claim("p", claim)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let mut tx = conn.begin().await.unwrap();
        assert_eq!(write(&mut tx, &ids).await, 500);
        let (seq, idx) = scans(&mut tx).await;
        assert_eq!(seq, 0, "sequential scans of the table in one batch write");
        assert!(idx > 0);
        tx.commit().await.unwrap();
        drop(conn);
        drop_schema(pool, &admin, &schema).await;
    }

    /// A warm-up leaves the write pool with a connection set up and the batch write
    /// prepared on it, so that the first results after a start do not wait for either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_up_connects_the_write_pool_and_prepares_the_write() {
        let Some((queue, pool, admin, schema)) = queue().await else {
            return;
        };
        assert_eq!(queue.writes.size(), 0, "the write pool connects lazily");
        queue.warm_up().await.unwrap();
        assert_eq!(queue.writes.size(), 1);
        // The connection goes back to the pool on a task of its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queue.writes.num_idle() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the connection never came back"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut conn = queue.writes.acquire().await.unwrap();
        let (prepared, seqscan): (i64, String) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM pg_prepared_statements WHERE statement = $1),
                    current_setting('enable_seqscan')",
        )
        .bind(&*FINISH_SQL)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!((prepared, seqscan.as_str()), (1, "off"));
        drop(conn);
        drop_schema(pool, &admin, &schema).await;
    }

    /// A budget lock holds only its own schema's claims: with schema A's lock held in an
    /// open transaction, a budgeted claim of the same provider in schema B goes through,
    /// and one in schema A waits until the lock is let go. The key once named only the
    /// provider, and two deployments on one server took turns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_budget_lock_holds_only_its_own_schema() {
        let Some((a, pool_a, admin, schema_a)) = queue().await else {
            return;
        };
        let Some((b, pool_b, _, schema_b)) = queue().await else {
            return;
        };
        // Bounds each wait, so that a claim that waits where it must not fails an assertion
        // instead of hanging the test.
        const WAIT: Duration = Duration::from_secs(10);
        let budgeted = Claim {
            tenants: &crate::store::ROUND_ROBIN,
            owner: "w",
            max: 1,
            limit: 10,
            lease_ms: 60_000,
            budget: Some(crate::store::Budget {
                rpm: Some(10),
                tpm: None,
            }),
            spend: None,
        };
        a.submit(&new("p")).await.unwrap();
        b.submit(&new("p")).await.unwrap();
        let mut held = pool_a.begin().await.unwrap();
        lock_budget(&mut held, &a.channel, "p").await.unwrap();

        let other = tokio::time::timeout(WAIT, b.claim("p", budgeted))
            .await
            .expect("a budgeted claim in schema B waited for schema A's budget lock")
            .unwrap();
        assert_eq!(other.len(), 1);

        let mut same = tokio::spawn({
            let a = a.clone();
            async move { a.claim("p", budgeted).await }
        });
        let early = tokio::time::timeout(Duration::from_millis(300), &mut same).await;
        assert!(
            early.is_err(),
            "a budgeted claim in schema A did not wait for its own budget lock: {early:?}"
        );
        held.rollback().await.unwrap();
        let mine = tokio::time::timeout(WAIT, same)
            .await
            .expect("a budgeted claim in schema A still waited once its lock was let go")
            .unwrap()
            .unwrap();
        assert_eq!(mine.len(), 1);
        drop_schema(pool_b, &admin, &schema_b).await;
        drop_schema(pool_a, &admin, &schema_a).await;
    }

    /// Workers count each other per provider. A record that lapsed or left is not counted;
    /// joining, dropping a provider and leaving notify the fleet, and a renewal does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_count_each_other_per_provider() {
        let Some((queue, pool, admin, schema)) = queue().await else {
            return;
        };
        let mut changes = queue.listen().await.unwrap().unwrap();
        // Whether the fleet was told within `wait`: seconds for what must come, however
        // loaded the machine, and a moment for what must not.
        let mut told = async |wait_ms: u64| {
            let wait = Duration::from_millis(wait_ms);
            match tokio::time::timeout(wait, changes.recv()).await {
                Ok(Some(Change::Workers)) => true,
                Ok(other) => panic!("unexpected change {other:?}"),
                Err(_) => false,
            }
        };
        let names = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let counts = |v: &[(&str, u32)]| -> BTreeMap<String, u32> {
            v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
        };
        let beat = async |owner: &str, serving: &[&str], ttl: i64| {
            queue
                .heartbeat(owner, &names(serving), ttl)
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            beat("a", &["x", "y"], 60_000).await,
            counts(&[("x", 1), ("y", 1)])
        );
        assert!(told(5000).await, "a joined");
        assert_eq!(
            beat("b", &["x"], 60_000).await,
            counts(&[("x", 2), ("y", 1)])
        );
        assert!(told(5000).await, "b joined");
        assert_eq!(
            beat("a", &["x", "y"], 60_000).await,
            counts(&[("x", 2), ("y", 1)])
        );
        assert!(!told(300).await, "a renewal changes nobody's share");
        assert_eq!(beat("a", &["x"], 60_000).await, counts(&[("x", 2)]));
        assert!(told(5000).await, "a stopped serving y");
        // A record whose time is up counts for nobody, and the next heartbeat removes it.
        assert_eq!(beat("c", &["x"], -1).await, counts(&[("x", 2)]));
        assert!(told(5000).await);
        queue.leave("b").await.unwrap();
        assert!(told(5000).await, "b left");
        assert_eq!(beat("a", &["x"], 60_000).await, counts(&[("x", 1)]));
        let owners: Vec<String> = sqlx::query_scalar("SELECT owner FROM workers")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(owners, ["a"]);
        drop_schema(pool, &admin, &schema).await;
    }
}
