//! The executor: runs one attempt of a claimed execution in a fresh instance, decides how it
//! ended (completed, retry after a delay, failed), and hands that to the completer. It does
//! no database work itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::completer::{CompleterHandle, Completion};
use super::events::{Event, EventBus, Spent};
use super::lane::{Lane, Slot};
use super::policies::{Governor, Seen};
use crate::attempt;
use crate::model::{ChatInput, ErrorKind, Execution, ExecutionId, now_ms};
use crate::plugin::{ExecError, Provider};
use crate::retry::{Decision, Failed, RetryPolicy};
use crate::store::{Finish, Output};

/// The number of an attempt's stream: its attempt counting the rate-limited ones too
/// (which give their attempt back), so that a rerun after a 429 in the middle of a stream
/// starts a new stream rather than writing over the old one's.
fn stream_number(execution: &Execution) -> i64 {
    i64::from(execution.attempts) + i64::from(execution.rate_limited)
}

/// The longest an attempt's end waits for its stream's last deltas to be stored.
const STREAM_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs attempts. Shared by every lane.
pub struct Executor {
    /// Replaced by a config reload.
    pub(super) retry: std::sync::RwLock<RetryPolicy>,
    pub(super) events: EventBus,
    pub(super) completer: CompleterHandle,
    /// Takes running attempts away (they return to pending) once the grace period is over.
    pub(super) stop_running: CancellationToken,
    /// The attempts running now, by execution, to stop one that is cancelled.
    pub(super) running: std::sync::Mutex<HashMap<ExecutionId, CancellationToken>>,
    /// Weighs each attempt's end: pauses, circuits, adaptive limits.
    pub(super) governor: Arc<Governor>,
    /// The streams of attempts that stream.
    pub(super) streams: Arc<super::streams::Streams>,
    /// The config, queue and lanes, for moving a routed execution's retry to another
    /// member. Weak: the daemon's parts own the executor, not the other way round.
    pub(super) shared: std::sync::Weak<super::Shared>,
}

impl Executor {
    /// Runs one attempt in `slot` and hands its end, with the slot, to the completer.
    pub async fn run(
        &self,
        lane: Arc<Lane>,
        provider: Arc<Provider>,
        mut execution: Execution,
        slot: Slot,
    ) {
        let started_at = execution.started_at.unwrap_or_else(now_ms);
        // Deferred: sent with the next message, when the attempt first waits (below), or
        // when the completer takes results in, whichever comes first. A burst of attempts
        // that end without waiting then wakes subscribers once, not once each.
        self.events.defer_with(|| Event::Started {
            id: execution.id,
            provider: lane.name_arc(),
            attempt: execution.attempts,
            queue_wait_ms: (started_at - execution.created_at).max(0),
        });
        let began = Instant::now();
        // The attempt consumes the input; the rest of the row stays for the hand-over. A
        // routed execution keeps what its input needs, for where a retry may move.
        let input = std::mem::take(&mut execution.input);
        let routed_input: Option<ChatInput> = match &execution.route {
            Some(_) => ChatInput::from_value_capped(input.clone(), usize::MAX).ok(),
            None => None,
        };
        let cancel = CancellationToken::new();
        self.running_attempts().insert(execution.id, cancel.clone());
        let (mut finish, spent) = {
            let attempt = self.attempt(&lane, &provider, &execution, input, began);
            let mut attempt = std::pin::pin!(attempt);
            let mut waited = false;
            let attempt = std::future::poll_fn(|cx| {
                let poll = attempt.as_mut().poll(cx);
                if poll.is_pending() && !waited {
                    waited = true;
                    self.events.flush();
                }
                poll
            });
            tokio::select! {
                end = attempt => end,
                _ = self.stop_running.cancelled() => (Finish::Requeue, None),
                // The row is already `cancelled`: whatever is sent is not written.
                _ = cancel.cancelled() => (Finish::Requeue, None),
            }
        };
        // However the attempt ended (cancelled and shutdowns included), its stream ends
        // and is stored before its end is written: a reader that sees the end has it all.
        if let Some(live) = self.streams.live(execution.id)
            && live.attempt == stream_number(&execution)
        {
            self.streams.end(&live, STREAM_END_WAIT).await;
        }
        let moved_to = match (&mut finish, &execution.route) {
            (Finish::Retry { to, .. }, Some(route)) => {
                let target = self
                    .move_target(execution.id, route, lane.name(), routed_input.as_ref())
                    .await;
                *to = target.as_ref().map(|(name, _)| name.clone());
                target.and_then(|(_, lane)| lane)
            }
            _ => None,
        };
        self.running_attempts().remove(&execution.id);
        let ended = Instant::now();
        self.completer
            .send(Completion {
                id: execution.id,
                attempt: execution.attempts,
                max_attempts: execution.max_attempts,
                lane,
                slot: Some(slot),
                finish,
                duration_ms: i64::try_from(ended.duration_since(began).as_millis())
                    .unwrap_or(i64::MAX),
                ended,
                spent,
                tenant: execution.tenant.clone(),
                cache: execution
                    .cache_key
                    .clone()
                    .map(|key| (key, provider.response_cache)),
                cancelled: cancel.is_cancelled(),
                moved_to,
                budgeted: provider.policy.budget.is_some(),
            })
            .await;
    }

    /// Where the retry of an execution of `route` that failed on `failed` runs: another
    /// member when the route's strategy finds a healthy one (with its lane here, if this
    /// worker has one), else `None`.
    async fn move_target(
        &self,
        id: ExecutionId,
        route: &str,
        failed: &str,
        input: Option<&ChatInput>,
    ) -> Option<(String, Option<Arc<Lane>>)> {
        let shared = self.shared.upgrade()?;
        let config = shared.config.get();
        let loads = match super::routing::read_loads(shared.queue.as_ref(), &config).await {
            Ok(loads) => loads,
            Err(e) => {
                tracing::warn!(
                    "route `{route}`: the retry stays on `{failed}`: reading the members' load: {e}"
                );
                return None;
            }
        };
        let can = |member: &str| input.is_none_or(|input| shared.takes(input, member));
        let to = crate::routes::Routes::new(&config).next(route, failed, &loads, &can)?;
        tracing::info!(
            id,
            "route `{route}`: the next attempt moves from `{failed}` to `{to}`"
        );
        let lane = shared.registry.get(&to);
        Some((to, lane))
    }

    /// Stops the attempt of `id` if it runs here; its row must already be `cancelled`.
    pub fn stop(&self, id: ExecutionId) {
        if let Some(token) = self.running_attempts().get(&id) {
            token.cancel();
        }
    }

    fn running_attempts(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, CancellationToken>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One attempt: how it ended, and the tokens it used when it completed.
    async fn attempt(
        &self,
        lane: &Lane,
        provider: &Provider,
        execution: &Execution,
        input: serde_json::Value,
        began: Instant,
    ) -> (Finish, Option<Arc<Spent>>) {
        // Stored inputs were checked at submission; the image cap is not applied again.
        let input = match ChatInput::from_value_capped(input, usize::MAX) {
            Ok(input) => input,
            Err(e) => {
                let finish = Finish::Failed {
                    error: format!("{}: {e}", provider.label()),
                    kind: ErrorKind::BadInput,
                };
                return (finish, None);
            }
        };
        // Submission refuses what no component can take; this catches what was queued
        // another way, or for a component since replaced by one that lacks it.
        let stream = provider.streams(&input);
        let request = match provider.request(&input, stream) {
            Ok(request) => request,
            Err(e) => {
                let finish = Finish::Failed {
                    error: format!("{}: {e}", provider.label()),
                    kind: ErrorKind::BadInput,
                };
                return (finish, None);
            }
        };
        let sink = stream.then(|| {
            let live = self.streams.open(
                execution.id,
                stream_number(execution),
                provider.sandbox.max_output_bytes,
            );
            self.streams.sink(&live)
        });
        let error = match provider.execute(request, sink).await {
            Ok(output) => {
                self.governor.observe(
                    lane,
                    &provider.policy,
                    &Seen {
                        kind: None,
                        wait: None,
                        duration: began.elapsed(),
                        error: None,
                        spent: false,
                    },
                );
                let mut output = output;
                output.cost = provider.pricing.price(&output, false);
                let spent = Arc::new(Spent {
                    usage: output.usage,
                    model: output.model.clone(),
                    cost_usd: output.cost.as_ref().and_then(|c| c.usd),
                });
                let finish = match Output::of(&output) {
                    Ok(output) => Finish::Completed(output),
                    Err(e) => Finish::Failed {
                        error: format!("{}: output cannot be stored: {e}", provider.label()),
                        kind: ErrorKind::Other,
                    },
                };
                return (finish, Some(spent));
            }
            Err(e) => e,
        };
        if let ExecError::PoolExhausted(reason) = &error {
            // The claim took an instance for this attempt, so only instances outside the
            // claims (more `info()` calls at once than the engine keeps slots for) can fill the pool: the
            // host's own condition, which must not spend one of the execution's attempts.
            tracing::warn!(
                id = execution.id,
                "{}: no free instance ({reason}); the execution goes back to pending",
                provider.label()
            );
            return (Finish::Requeue, None);
        }
        let (kind, wait) = attempt::classify(&error);
        let message = format!("{}: {error}", provider.label());
        // Only the provider's own answers (and its silence) say how it is; a full instance
        // pool or a trapping component says nothing about its health.
        if matches!(error, ExecError::Provider(_) | ExecError::Timeout(_)) {
            self.governor.observe(
                lane,
                &provider.policy,
                &Seen {
                    kind: Some(kind),
                    wait,
                    duration: began.elapsed(),
                    error: Some(error.to_string()),
                    spent: attempt::window_spent(&error),
                },
            );
        }
        let retry = self.retry.read().unwrap_or_else(|p| p.into_inner()).clone();
        let failed = Failed {
            kind,
            attempts: u32::try_from(execution.attempts).unwrap_or(0),
            max_attempts: u32::try_from(execution.max_attempts).unwrap_or(1).max(1),
            rate_limited: u32::try_from(execution.rate_limited).unwrap_or(0),
            wait,
        };
        let finish = match retry.decide(failed, &provider.policy) {
            Decision::Retry(delay) => Finish::Retry {
                error: message,
                kind,
                delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                to: None,
            },
            Decision::Fail => Finish::Failed {
                error: message,
                kind,
            },
        };
        (finish, None)
    }
}
