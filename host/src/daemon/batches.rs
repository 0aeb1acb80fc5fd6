//! The batch lane: work that can wait goes through a provider's batch API, at its batch
//! price, and the results come back into the queue as if each had run live.
//!
//! - At submission, [`hold`] decides: a `deferrable` execution of a provider with
//!   `[providers.NAME] batch` enabled, whose deadline (if any) leaves time for a batch to be
//!   sent and to end, is stored `batched` (held) instead of `pending`. It is then outside
//!   the live lane: its limit, leases and start-up recovery.
//! - [`run`] (one loop per daemon) opens a batch when a provider has `min_items` held, or
//!   its oldest has waited `max_wait_secs`: the batch is recorded (with a random tag) and
//!   given its rows before anything is sent. It then drives each batch it holds the lease
//!   of, a step at a time: send it (the component reads its requests a page at a time
//!   through `batch-io`), poll its state, and write its results (handed over a page at a
//!   time) once it ends. A worker that dies leaves its batches to the next one whose lease
//!   check finds them: a batch that was being sent is looked up by its tag where the API
//!   can (OpenAI's metadata), and sent again where it cannot (Anthropic), which the
//!   `sends` count and the `lanes_batch_resends` metric show.
//! - Held rows go to the live lane when their provider has no batch lane any more (the
//!   policy was turned off, or its component cannot send batches), and rows whose
//!   deadline comes within the provider's batch window go live too.
//!
//! Every write of a batch's rows is guarded in the store (see `store/batches.rs`): a result
//! is written once, and a row cancelled while in a batch stays cancelled.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Shared;
use super::events::{Event, Outcome, Spent};
use crate::attempt::Request;
use crate::config::{BatchConfig, Config, OnExpired};
use crate::model::{ChatInput, ErrorKind, ExecutionId, NewExecution, Status, now_ms};
use crate::plugin::Provider;
use crate::plugin::batch::{BatchIo, BatchOutcome, BatchSandbox, ItemOutcome};
use crate::plugin::{ExecError, ProviderErrorDisplay};
use crate::store::batches::{BatchEnd, BatchRecord, BatchUpdate, OpenCaps, Written, new_tag};
use crate::store::{Output, Queue, Spend, SpendEnd};

/// How often the loop looks for work.
const TICK: Duration = Duration::from_millis(500);

/// How long a worker holds a batch past a step's longest call, before another may take it
/// over.
const LEASE_MARGIN_MS: i64 = 10_000;

/// The longest wait before a send or a poll that failed is tried again.
const RETRY_MS: i64 = 30_000;

/// The soonest a batch's results are read again after a write of them failed.
const REREAD_MS: i64 = 5_000;

/// Rows read or written per page.
const PAGE: u32 = 500;

/// Marks each of `batch` that its provider's batch lane takes as held (`batched`): it is
/// deferrable, it does not use the response cache, and its deadline, if any, leaves time
/// for a batch to be sent and to end. The one place that decides it.
pub fn hold<'a>(config: &Config, batch: impl IntoIterator<Item = &'a mut NewExecution>) {
    let now = now_ms();
    for new in batch {
        new.defer.hold = new.defer.deferrable
            && new.cache.is_none()
            && config
                .providers
                .get(&new.provider)
                .and_then(|p| p.batch)
                .is_some_and(|b| b.holds(now, new.defer.deadline));
    }
}

/// The batch lane's loop, until claims stop.
pub async fn run(shared: Arc<Shared>) {
    if !shared.queue.shared() {
        // One worker per SQLite file: whoever held a batch before this start is gone.
        match shared.queue.free_batch_leases().await {
            Ok(0) => {}
            Ok(n) => info!("{n} open batch(es) of an earlier run taken over"),
            Err(e) => warn!("batch lane: freeing the leases of open batches: {e}"),
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shared.stop_claiming.cancelled() => return,
        }
        let config = shared.config.get();
        // Every provider with a batch lane, and every provider with rows waiting for one
        // (a provider whose `batch` was removed from the config: they go live).
        let mut names: std::collections::BTreeSet<String> = config
            .providers
            .iter()
            .filter(|(_, p)| p.batch.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        match shared.queue.held_providers().await {
            Ok(held) => names.extend(held),
            Err(e) => warn!("batch lane: {e}"),
        }
        let policy_of = |name: &str| {
            config
                .providers
                .get(name)
                .and_then(|p| p.batch)
                .unwrap_or(BatchConfig {
                    enabled: false,
                    ..BatchConfig::default()
                })
        };
        for name in &names {
            if let Err(e) = collect(&shared, name, &policy_of(name)).await {
                warn!(provider = %name, "batch lane: {e}");
            }
        }
        // One batch at a time, each leased for its provider's longest step: a lease is
        // renewed with each write of the record, and checked by it.
        let lease_ms = names
            .iter()
            .map(|n| lease_of(&policy_of(n)))
            .max()
            .unwrap_or(LEASE_MARGIN_MS)
            // A batch of a provider whose `batch` was removed runs under the defaults.
            .max(lease_of(&BatchConfig::default()));
        // Every batch that is due, one step each, before the loop sleeps again (up to 16,
        // so that new work is collected between them).
        for _ in 0..16 {
            if shared.stop_claiming.is_cancelled() {
                return;
            }
            let batches = match shared.queue.take_batches(&shared.owner, lease_ms, 1).await {
                Ok(batches) if batches.is_empty() => break,
                Ok(batches) => batches,
                Err(e) => {
                    warn!("batch lane: reading the open batches: {e}");
                    break;
                }
            };
            {
                for batch in batches {
                    let policy = policy_of(&batch.provider);
                    let step = Step {
                        shared: &shared,
                        batch: &batch,
                        policy: &policy,
                        lease_ms: lease_of(&policy),
                        sandbox: BatchSandbox {
                            timeout: Duration::from_secs(policy.transfer_timeout_secs),
                            ..BatchSandbox::default()
                        },
                    };
                    if let Err(e) = step.drive().await {
                        warn!(provider = %batch.provider, batch = batch.id, "batch lane: {e}");
                    }
                }
            }
        }
    }
}

/// How long a worker holds a batch of a provider with `policy`: its longest step (a lookup
/// and a send), and a margin.
fn lease_of(policy: &BatchConfig) -> i64 {
    i64::try_from(policy.transfer_timeout_secs.saturating_mul(2000))
        .unwrap_or(i64::MAX / 2)
        .saturating_add(LEASE_MARGIN_MS)
}

/// Opens the batches `provider`'s held rows call for, and sends rows that cannot wait for
/// a batch to the live lane.
async fn collect(shared: &Arc<Shared>, name: &str, policy: &BatchConfig) -> Result<(), String> {
    let queue = &shared.queue;
    let provider = shared.served(name);
    let limits = provider.as_ref().and_then(|p| p.batch_limits());
    if !policy.enabled || (provider.is_some() && limits.is_none()) {
        // No batch lane for it here: what waits for one runs live.
        let released = queue
            .release_held(name, None)
            .await
            .map_err(|e| e.to_string())?;
        if released > 0 {
            info!(
                provider = %name,
                "{released} execution(s) waiting for a batch run live: {}",
                if policy.enabled {
                    "the provider's component cannot send batches"
                } else {
                    "it has no batch lane"
                }
            );
            shared.registry.wake(name);
        }
        return Ok(());
    }
    // Deadlines first, whether or not a component serves the provider here.
    let now = now_ms();
    let window = i64::try_from(policy.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let released = queue
        .release_held(name, Some(now.saturating_add(window)))
        .await
        .map_err(|e| e.to_string())?;
    if released > 0 {
        info!(provider = %name, "{released} execution(s) run live: their deadline comes before a batch could end");
        shared.registry.wake(name);
    }
    let (Some(provider), Some(limits)) = (provider, limits) else {
        // No component serves it here (yet): the rows wait.
        return Ok(());
    };
    let spend = provider.policy.spend.as_ref().map(Spend::today);
    let max_wait = i64::try_from(policy.max_wait_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    loop {
        let held = queue.held(name).await.map_err(|e| e.to_string())?;
        let waited = held.oldest_at.is_some_and(|at| now - at >= max_wait);
        if held.count == 0 || (held.count < u64::from(policy.min_items) && !waited) {
            return Ok(());
        }
        let caps = OpenCaps {
            max_items: policy.max_items.min(limits.max_items).max(1),
            // The requests the component makes are larger than their inputs.
            max_bytes: limits.max_bytes / 10 * 9,
            max_open: policy.max_open,
            spend: spend.as_ref(),
        };
        let Some(batch) = queue
            .open_batch(name, &new_tag(), &shared.owner, lease_of(policy), caps)
            .await
            .map_err(|e| e.to_string())?
        else {
            // None waits any more, `max_open` batches are open, or the spend caps hold the
            // rows back until the next UTC day.
            return Ok(());
        };
        info!(
            provider = %name,
            batch = batch.id,
            "batch {} opened: {} execution(s){}",
            batch.id,
            batch.items,
            batch.model.as_deref().map(|m| format!(" of model {m}")).unwrap_or_default()
        );
    }
}

/// One step of a batch this worker holds.
struct Step<'a> {
    shared: &'a Arc<Shared>,
    batch: &'a BatchRecord,
    policy: &'a BatchConfig,
    lease_ms: i64,
    sandbox: BatchSandbox,
}

impl Step<'_> {
    /// Sends the batch, polls it, or writes its results.
    async fn drive(&self) -> Result<(), String> {
        let batch = self.batch;
        let Some(provider) = self.shared.served(&batch.provider) else {
            if self.overdue() {
                return self
                    .fail("no worker served its provider until its window ended")
                    .await;
            }
            // Another worker may serve it; look again later.
            return self
                .update(BatchUpdate {
                    poll_in_ms: Some(RETRY_MS),
                    ..Default::default()
                })
                .await;
        };
        if self.overdue() {
            // The provider should have ended it within its window: whatever keeps it open
            // (sends, polls or writes that keep failing), its rows run live.
            return self.fail("still open a day past its window").await;
        }
        let poll_ms = i64::try_from(self.policy.poll_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        match batch.state.as_str() {
            "open" | "sending" => self.send(&provider, poll_ms).await,
            "sent" => {
                let Some(id) = batch.provider_batch_id.as_deref() else {
                    return self.fail("sent, but its provider id was not kept").await;
                };
                let state = match provider.batch_status(id, &self.sandbox).await {
                    Ok(state) => state,
                    Err(e) => return self.call_failed(&e, "polling").await,
                };
                let status = state.status;
                self.update(BatchUpdate {
                    provider_status: Some(status.as_str().to_string()),
                    succeeded: Some(i64::from(state.succeeded)),
                    failed: Some(i64::from(state.failed)),
                    poll_in_ms: Some(poll_ms),
                    state: status.is_final().then_some("collecting"),
                    ended: status.is_final(),
                    error: state.message.clone(),
                    ..Default::default()
                })
                .await?;
                if status.is_final() {
                    self.collect_results(&provider).await?;
                }
                Ok(())
            }
            "collecting" => {
                // Renewed before the long read.
                self.update(BatchUpdate::default()).await?;
                self.collect_results(&provider).await
            }
            other => Err(format!(
                "batch {} is in an unknown state `{other}`",
                batch.id
            )),
        }
    }

    /// Sends the batch (after looking it up, when an earlier send may have reached the
    /// provider).
    async fn send(&self, provider: &Arc<Provider>, poll_ms: i64) -> Result<(), String> {
        let batch = self.batch;
        let queue = &self.shared.queue;
        if batch.state == "sending" {
            // A send that may have reached the provider: find it where the API can.
            match provider.batch_find(&batch.tag, &self.sandbox).await {
                Ok(Some(id)) => {
                    info!(provider = %batch.provider, batch = batch.id, "batch {} found at the provider as {id} after a lost send", batch.id);
                    return self.record_sent(id, poll_ms).await;
                }
                Ok(None) => {
                    warn!(provider = %batch.provider, batch = batch.id, "batch {} may have been sent before (its send was cut short, and the provider's API cannot look it up): sending it again", batch.id);
                }
                Err(e) => return self.call_failed(&e, "looking up").await,
            }
        }
        // Recorded (and the lease renewed) before anything is sent; if this worker stops
        // before the next write, the batch is looked at again only after a while.
        self.update(BatchUpdate {
            state: Some("sending"),
            sent: true,
            poll_in_ms: Some(RETRY_MS),
            ..Default::default()
        })
        .await?;
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source = RowSource {
            queue: queue.clone(),
            provider: provider.clone(),
            batch: batch.id,
            after: 0,
            refused: refused.clone(),
        };
        let sent = provider
            .batch_submit(&batch.tag, Box::new(source), &self.sandbox)
            .await;
        let refused = refused.lock().map(|r| r.clone()).unwrap_or_default();
        match sent {
            Ok(id) => {
                info!(provider = %batch.provider, batch = batch.id, "batch {} sent: {} execution(s), provider batch {id}", batch.id, batch.items);
                // The provider's id first: nothing may come between the send and its record.
                let recorded = self.record_sent(id, poll_ms).await;
                self.fail_refused(provider, refused).await;
                recorded
            }
            Err(e) => {
                let (kind, _) = crate::attempt::classify(&e);
                if kind == ErrorKind::RateLimited {
                    // Refused before anything was created: the next step sends it as new.
                    self.fail_refused(provider, refused).await;
                    if self.overdue() {
                        return self
                            .fail(&format!("still refused long past its window: {e}"))
                            .await;
                    }
                    self.update(BatchUpdate {
                        state: Some("open"),
                        unsent: true,
                        poll_in_ms: Some(RETRY_MS),
                        error: Some(format!("sending: {e}")),
                        ..Default::default()
                    })
                    .await?;
                    Err(format!(
                        "sending batch {}: {e} (sent again later)",
                        batch.id
                    ))
                } else if kind.is_retryable() {
                    // It may have been created before the answer was lost: the next step
                    // looks it up first (it stays `sending`).
                    self.fail_refused(provider, refused).await;
                    if self.overdue() {
                        return self
                            .fail(&format!("sends still failing long past its window: {e}"))
                            .await;
                    }
                    self.update(BatchUpdate {
                        poll_in_ms: Some(RETRY_MS),
                        error: Some(format!("sending: {e}")),
                        ..Default::default()
                    })
                    .await?;
                    Err(format!(
                        "sending batch {}: {e} (looked up, then sent again later)",
                        batch.id
                    ))
                } else {
                    self.fail_refused(provider, refused).await;
                    self.fail(&format!("sending: {e}")).await
                }
            }
        }
    }

    /// Records that the provider runs the batch as `id` (sent now, or found after a lost
    /// send), to be polled in `poll_ms`.
    async fn record_sent(&self, id: String, poll_ms: i64) -> Result<(), String> {
        self.update(BatchUpdate {
            state: Some("sent"),
            provider_batch_id: Some(id),
            submitted: true,
            poll_in_ms: Some(poll_ms),
            ..Default::default()
        })
        .await
    }

    /// Fails the rows whose input the component could not take (not sent), as a live claim
    /// fails them. A failed write only says so: those rows have no result, and go live when
    /// the batch's results are written.
    async fn fail_refused(&self, provider: &Arc<Provider>, refused: Vec<(ExecutionId, String)>) {
        if refused.is_empty() {
            return;
        }
        let ends: Vec<BatchEnd> = refused
            .into_iter()
            .map(|(id, error)| BatchEnd {
                id,
                status: "failed",
                output: None,
                error: Some(error),
                kind: Some(ErrorKind::BadInput.as_str()),
                attempt: false,
            })
            .collect();
        match self.shared.queue.finish_batched(self.batch.id, &ends).await {
            Ok(written) => {
                // Never sent: their reservations go at once.
                settle_written(self.shared, provider, self.batch.id, &written, |_| 0.0).await;
                publish(self.shared, &provider.name, self.batch.id, written, |_| {
                    (Some(ErrorKind::BadInput), None)
                });
            }
            Err(e) => warn!(
                batch = self.batch.id,
                "failing the rows the component refused: {e}"
            ),
        }
    }

    /// Reads an ended batch's results into its rows, sends the rows its results did not
    /// name to the live lane, and closes it.
    async fn collect_results(&self, provider: &Arc<Provider>) -> Result<(), String> {
        let batch = self.batch;
        let queue = &self.shared.queue;
        let Some(id) = batch.provider_batch_id.as_deref() else {
            return self.fail("ended, but its provider id was not kept").await;
        };
        let totals = Arc::new(std::sync::Mutex::new(Totals::default()));
        let sink = ResultSink {
            shared: self.shared.clone(),
            provider: provider.clone(),
            batch: batch.id,
            on_expired: self.policy.on_expired,
            totals: totals.clone(),
            writing: None,
        };
        let read = provider
            .batch_results(id, Box::new(sink), &self.sandbox)
            .await;
        let totals = totals.lock().map(|t| t.clone()).unwrap_or_default();
        if let Err(e) = read {
            return self.call_failed(&e, "reading the results of").await;
        }
        if let Some(e) = totals.write_error {
            // Kept in the batch: the next poll (from 5 s to 30 s later: each try reads the
            // whole results file again) reads the results again, and writes what was not
            // written.
            let poll_ms =
                i64::try_from(self.policy.poll_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            self.update(BatchUpdate {
                poll_in_ms: Some(poll_ms.clamp(REREAD_MS, RETRY_MS)),
                ..Default::default()
            })
            .await?;
            return Err(format!("writing the results of batch {}: {e}", batch.id));
        }
        let left = queue
            .release_batch(batch.id, &self.shared.owner)
            .await
            .map_err(|e| e.to_string())?;
        if left > 0 {
            warn!(provider = %batch.provider, batch = batch.id, "{left} execution(s) of batch {} had no result: they run live", batch.id);
            self.shared.registry.wake(&batch.provider);
        }
        self.update(BatchUpdate {
            state: Some("done"),
            ended: true,
            cost_usd: (totals.cost > 0.0).then_some(totals.cost),
            saved_usd: (totals.saved > 0.0).then_some(totals.saved),
            ..Default::default()
        })
        .await?;
        info!(provider = %batch.provider, batch = batch.id, "batch {} done", batch.id);
        Ok(())
    }

    /// The batch failed as a whole: its rows run live, and the record keeps why.
    async fn fail(&self, why: &str) -> Result<(), String> {
        let batch = self.batch;
        let released = self
            .shared
            .queue
            .release_batch(batch.id, &self.shared.owner)
            .await
            .map_err(|e| e.to_string())?;
        self.update(BatchUpdate {
            state: Some("failed"),
            ended: true,
            error: Some(why.to_string()),
            ..Default::default()
        })
        .await?;
        self.shared.registry.wake(&batch.provider);
        Err(format!(
            "batch {} failed ({why}): its {released} execution(s) run live",
            batch.id
        ))
    }

    /// A batch API call failed. A passing failure (a 429, a 5xx, a connection error) is
    /// tried again later; a 429 here never pauses the live lane, whose calls these are not.
    /// Any other (the batch is unknown, the key refused, the component cannot send batches)
    /// fails the batch, as does one still open long past its window.
    async fn call_failed(&self, error: &ExecError, doing: &str) -> Result<(), String> {
        let (kind, _) = crate::attempt::classify(error);
        if !kind.is_retryable() {
            return self.fail(&format!("{doing} it: {error}")).await;
        }
        if self.overdue() {
            return self
                .fail(&format!(
                    "still failing long past its window: {doing} it: {error}"
                ))
                .await;
        }
        self.update(BatchUpdate {
            poll_in_ms: Some(RETRY_MS),
            ..Default::default()
        })
        .await?;
        Err(format!(
            "{doing} batch {}: {error} (tried again later)",
            self.batch.id
        ))
    }

    /// Whether the batch is still open a day past the provider's window: the provider will
    /// never end it.
    fn overdue(&self) -> bool {
        let window =
            i64::try_from(self.policy.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        now_ms() - self.batch.created_at > window.saturating_add(86_400_000)
    }

    /// Writes `update` to the record, renewing the lease; an error when another worker
    /// took the batch over.
    async fn update(&self, update: BatchUpdate) -> Result<(), String> {
        let batch = self.batch;
        match self
            .shared
            .queue
            .update_batch(batch.id, &self.shared.owner, self.lease_ms, &update)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "batch {} was taken over by another worker (its lease ran out)",
                batch.id
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Publishes the end of each row written (its status and attempt), as the completer does
/// for a live attempt, and wakes the lane when some went back to it. `about` gives a row's
/// error class and what it used and cost.
fn publish(
    shared: &Shared,
    provider: &Arc<str>,
    batch: i64,
    written: Vec<Written>,
    mut about: impl FnMut(ExecutionId) -> (Option<ErrorKind>, Option<Arc<Spent>>),
) {
    let mut back_live = false;
    let mut events = shared.events.batch();
    for Written {
        id,
        status,
        attempts: attempt,
        ..
    } in written
    {
        let (kind, spent) = about(id);
        let kind = kind.unwrap_or(ErrorKind::Other);
        let outcome = match status {
            Status::Completed => Outcome::Completed,
            Status::Failed => Outcome::Failed { kind },
            _ => {
                back_live = true;
                Outcome::Retried { kind, delay_ms: 0 }
            }
        };
        events.push_with(|| Event::Finished {
            id,
            provider: provider.clone(),
            attempt,
            outcome,
            duration_ms: 0,
            write_ms: 0,
            spent,
            batch: Some(batch),
        });
    }
    drop(events);
    if back_live {
        shared.registry.wake(provider);
    }
}

/// Hands a batch's requests to its component, a page of rows at a time.
struct RowSource {
    queue: Arc<dyn Queue>,
    provider: Arc<Provider>,
    batch: i64,
    after: ExecutionId,
    /// Rows whose input the component cannot take: failed after the send.
    refused: Arc<std::sync::Mutex<Vec<(ExecutionId, String)>>>,
}

#[async_trait::async_trait]
impl BatchIo for RowSource {
    async fn next_items(&mut self, max: u32) -> Vec<(String, Request)> {
        // An empty answer ends the batch: pages whose rows were all refused are skipped.
        loop {
            let rows = match self
                .queue
                .batch_rows(self.batch, self.after, max.min(PAGE))
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // The send stops short; the provider gets fewer requests, and the rows
                    // left out run live when the results do not name them.
                    warn!(batch = self.batch, "reading a batch's rows: {e}");
                    return Vec::new();
                }
            };
            if rows.is_empty() {
                return Vec::new();
            }
            let mut items = Vec::with_capacity(rows.len());
            for (id, input) in rows {
                self.after = id;
                let request = serde_json::from_str::<serde_json::Value>(&input)
                    .map_err(|e| e.to_string())
                    .and_then(|v| ChatInput::from_value(v).map_err(|e| e.to_string()))
                    .and_then(|input| self.provider.request(&input, false));
                match request {
                    Ok(request) => items.push((id.to_string(), request)),
                    Err(e) => {
                        if let Ok(mut refused) = self.refused.lock() {
                            refused.push((id, e));
                        }
                    }
                }
            }
            if !items.is_empty() {
                return items;
            }
        }
    }

    async fn put_results(&mut self, _outcomes: Vec<BatchOutcome>) {}
}

/// What reading a batch's results came to: its cost and saving, and the first write that
/// failed (the results are then read again).
#[derive(Debug, Clone, Default)]
struct Totals {
    cost: f64,
    saved: f64,
    write_error: Option<String>,
}

/// Writes a batch's results into its rows as the component hands them over.
///
/// A page is written while the component reads and parses the next one: at most one write
/// is in flight, and pages are written in the order they came. Written one after the other,
/// the guest's read and the store's write added up: the batch benchmark wrote 17.0k-17.8k
/// rows/s that way and 22.1k-28.6k this way (release, alternated in one run). `finish`
/// waits for the last write, so the caller reads `totals` only once every page was written
/// or failed.
struct ResultSink {
    shared: Arc<Shared>,
    provider: Arc<Provider>,
    batch: i64,
    on_expired: OnExpired,
    totals: Arc<std::sync::Mutex<Totals>>,
    /// The page being written.
    writing: Option<tokio::task::JoinHandle<()>>,
}

/// Settles the spend reservations of the rows of batch `batch` whose results were just
/// written and that ended (`completed` or `failed`), each with what it cost at the batch
/// price (`usd`); the notices that brings are told as the completer tells them, and a
/// failed settle is tried again as the completer tries its own. After the write, so that a
/// worker that reads the results again (after a takeover) settles nothing twice: only the
/// rows it wrote. A row back to the live lane keeps its reservation until its live claim
/// reserves anew, or the upkeep lets it go.
async fn settle_written(
    shared: &Shared,
    provider: &Provider,
    batch: i64,
    written: &[Written],
    usd: impl Fn(ExecutionId) -> f64,
) {
    let Some(caps) = provider.policy.spend.as_ref().map(Spend::today) else {
        return;
    };
    let ends: Vec<SpendEnd<'_>> = written
        .iter()
        .filter(|w| matches!(w.status, Status::Completed | Status::Failed))
        .filter(|w| caps.applies(&w.tenant))
        .map(|w| SpendEnd {
            id: w.id,
            provider: &provider.name,
            tenant: &w.tenant,
            usd: usd(w.id),
            caps: &caps,
        })
        .collect();
    if ends.is_empty() {
        return;
    }
    let settled = super::completer::retried(
        || shared.queue.settle_spend(&ends),
        |attempt, e| warn!(batch, "settling a batch's spend (try {attempt}): {e}"),
    )
    .await;
    for notice in settled.unwrap_or_default() {
        super::spend::tell(shared, notice);
    }
}

impl ResultSink {
    /// The row end of one result, what it used and cost, and its error's class.
    fn end_of(
        &mut self,
        outcome: BatchOutcome,
    ) -> Option<(BatchEnd, Option<Arc<Spent>>, Option<ErrorKind>)> {
        let Ok(id) = outcome.custom_id.parse::<ExecutionId>() else {
            warn!(
                batch = self.batch,
                "a result names `{}`, not an execution of this batch", outcome.custom_id
            );
            return None;
        };
        let ended =
            |status, output: Option<String>, error: Option<(String, ErrorKind)>, attempt| {
                let kind = error.as_ref().map(|(_, k)| *k);
                let end = BatchEnd {
                    id,
                    status,
                    output,
                    error: error.map(|(e, _)| self.provider.view.scrub(&e)),
                    kind: kind.map(ErrorKind::as_str),
                    attempt,
                };
                (end, kind)
            };
        let (end, spent, kind) = match outcome.outcome {
            ItemOutcome::Succeeded(mut output) => {
                output.cost = self.provider.pricing.price(&output, true);
                let batch_usd = output.cost.as_ref().and_then(|c| c.usd);
                if let Some(usd) = batch_usd {
                    let saved = output.cost.as_ref().and_then(|c| c.saved_usd);
                    if let Ok(mut totals) = self.totals.lock() {
                        totals.cost += usd;
                        totals.saved += saved.unwrap_or(0.0);
                    }
                }
                let spent = Arc::new(Spent {
                    usage: output.usage,
                    model: output.model.clone(),
                    cost_usd: batch_usd,
                });
                match Output::of(&*output) {
                    Ok(text) => {
                        let (end, kind) =
                            ended("completed", Some(text.as_str().to_string()), None, true);
                        (end, Some(spent), kind)
                    }
                    Err(e) => {
                        let error =
                            format!("{}: output cannot be stored: {e}", self.provider.label());
                        let (end, kind) =
                            ended("failed", None, Some((error, ErrorKind::Other)), true);
                        // Billed all the same: it counts against the spend caps.
                        (end, Some(spent), kind)
                    }
                }
            }
            ItemOutcome::Failed(error) => {
                let error = ExecError::Provider(ProviderErrorDisplay(error, None));
                let (kind, _) = crate::attempt::classify(&error);
                // A class a live call may get past goes back to the live lane (while
                // attempts remain: the store fails it on the last).
                let status = if kind.is_retryable() {
                    "pending"
                } else {
                    "failed"
                };
                let message = format!("in batch {}: {error}", self.batch);
                // A rate-limited line does not use up an attempt, as live.
                let attempt = kind != ErrorKind::RateLimited;
                let (end, kind) = ended(status, None, Some((message, kind)), attempt);
                (end, None, kind)
            }
            ItemOutcome::Expired | ItemOutcome::Cancelled => {
                let what = if matches!(outcome.outcome, ItemOutcome::Expired) {
                    "expired"
                } else {
                    "was cancelled"
                };
                let message = format!("its request {what} in batch {} before it ran", self.batch);
                let status = match self.on_expired {
                    OnExpired::Live => "pending",
                    OnExpired::Fail => "failed",
                };
                let (end, kind) =
                    ended(status, None, Some((message, ErrorKind::Unavailable)), false);
                (end, None, kind)
            }
        };
        Some((end, spent, kind))
    }
}

#[async_trait::async_trait]
impl BatchIo for ResultSink {
    async fn next_items(&mut self, _max: u32) -> Vec<(String, Request)> {
        Vec::new()
    }

    async fn put_results(&mut self, outcomes: Vec<BatchOutcome>) {
        let mut ends = Vec::with_capacity(outcomes.len());
        let mut about = std::collections::HashMap::new();
        for outcome in outcomes {
            if let Some((end, spent, kind)) = self.end_of(outcome) {
                about.insert(end.id, (kind, spent));
                ends.push(end);
            }
        }
        self.finish().await;
        let page = write_page(
            self.shared.clone(),
            self.provider.clone(),
            self.batch,
            ends,
            about,
            self.totals.clone(),
        );
        self.writing = Some(tokio::spawn(page));
    }

    async fn finish(&mut self) {
        // The handle stays in place while it is awaited: a caller cut short here (the
        // component's wall clock ran out while it waited in `put_results`) leaves it for the
        // `finish` after the call, which must not return before the write has ended.
        let Some(writing) = self.writing.as_mut() else {
            return;
        };
        let ended = writing.await;
        self.writing = None;
        if let Err(e) = ended
            && let Ok(mut totals) = self.totals.lock()
        {
            totals
                .write_error
                .get_or_insert(format!("a page's write stopped: {e}"));
        }
    }
}

/// Writes one page of a batch's results (see [`ResultSink`]): the rows, their spend, their
/// events. A failed write is kept in `totals`: the batch stays open, and the next step reads
/// its results again.
async fn write_page(
    shared: Arc<Shared>,
    provider: Arc<Provider>,
    batch: i64,
    ends: Vec<BatchEnd>,
    mut about: std::collections::HashMap<ExecutionId, (Option<ErrorKind>, Option<Arc<Spent>>)>,
    totals: Arc<std::sync::Mutex<Totals>>,
) {
    match shared.queue.finish_batched(batch, &ends).await {
        Ok(written) => {
            settle_written(&shared, &provider, batch, &written, |id| {
                about
                    .get(&id)
                    .and_then(|(_, spent)| spent.as_ref())
                    .and_then(|s| s.cost_usd)
                    .unwrap_or(0.0)
            })
            .await;
            publish(&shared, &provider.name, batch, written, |id| {
                about.remove(&id).unwrap_or((None, None))
            });
        }
        Err(e) => {
            warn!(batch, "writing a batch's results: {e}");
            if let Ok(mut totals) = totals.lock() {
                totals.write_error.get_or_insert(e.to_string());
            }
        }
    }
}
