//! A lane's producer: claims up to the lane's free slots in one statement and starts an
//! executor task for each claimed execution, then sleeps until something can change that:
//! a slot frees, a local submission arrives, the limit changes, a retry comes due, or the
//! poll interval (for rows other processes wrote) passes.
//!
//! Wake-ups coalesce: slots freed by one batch of results mean one claim, not one each. The
//! next due time is read only when a retry may be pending. The "Processing" log line samples
//! at most one claim a second per lane, so logging costs nothing under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;
use tracing::{error, info};

use super::Shared;
use super::completer::Completion;
use super::events::Event;
use super::executor::Executor;
use super::lane::{Lane, Slot};
use crate::model::{Execution, now_ms};
use crate::plugin::Provider;
use crate::store::{Claim, StoreError};

/// How often, at most, a lane logs what it claimed.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// One lane's claim loop.
pub struct Producer {
    shared: Arc<Shared>,
    executor: Arc<Executor>,
    executions: TaskTracker,
    lane: Arc<Lane>,
    log: ClaimLog,
    /// Whether the last budgeted claim found the budget spent, to log each change once.
    budget_spent: bool,
}

impl Producer {
    /// A producer for `lane`; its executions run on `executions`.
    pub fn new(
        shared: Arc<Shared>,
        executor: Arc<Executor>,
        executions: TaskTracker,
        lane: Arc<Lane>,
    ) -> Self {
        Producer {
            shared,
            executor,
            executions,
            lane,
            log: ClaimLog::default(),
            budget_spent: false,
        }
    }

    /// Claims and starts executions until the daemon stops claiming.
    pub async fn run(mut self) {
        self.claim_loop().await;
        // What the completer claimed for this lane but it did not start goes back.
        let handed = self.lane.close_hand_over();
        self.publish_claimed(handed.iter().map(|(execution, _)| execution));
        for (execution, slot) in handed {
            self.requeue(&execution, Some(slot)).await;
        }
    }

    async fn claim_loop(&mut self) {
        let stop = self.shared.stop_claiming.clone();
        loop {
            if stop.is_cancelled() {
                return;
            }
            self.start_handed().await;
            let mut wait = self.shared.config.get().poll_interval();
            let paused = self.lane.paused_for();
            if let Some(left) = paused {
                // The provider asked for a pause: wake when it ends.
                wait = wait.min(left);
            } else if let Some(provider) = self.lane.provider() {
                // Just after a pause, one claim at a time, spread over the ramp.
                let ramp = self.lane.ramp_step();
                if let Some(step) = ramp {
                    wait = wait.min(step);
                }
                let gate = crate::limits::Gate {
                    one_at_a_time: ramp.is_some(),
                    ..Default::default()
                };
                let free = crate::limits::claimable(self.lane.free(), &gate);
                if free > 0 {
                    match self.claim_and_start(&provider, free).await {
                        Ok(claimed) if claimed < free => {
                            if let Some(due) = self.next_due().await {
                                wait = wait.min(due);
                            }
                            if let Some(frees) = self.budget_frees_in().await {
                                wait = wait.min(frees);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => error!("provider {}: claim failed: {e}", self.lane.name()),
                    }
                }
            }
            tokio::select! {
                _ = self.lane.woken() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// How long until the next retry of this lane is due, when one may be pending.
    async fn next_due(&self) -> Option<Duration> {
        if !self.lane.take_retry_note() {
            return None;
        }
        match self.shared.queue.next_due(self.lane.name()).await {
            Ok(Some(due)) => {
                // Still pending: look again next time.
                self.lane.note_retry_quietly();
                let until = u64::try_from(due - now_ms()).unwrap_or(0).max(1);
                Some(Duration::from_millis(until))
            }
            Ok(None) => None,
            Err(e) => {
                self.lane.note_retry_quietly();
                error!("provider {}: {e}", self.lane.name());
                None
            }
        }
    }

    /// While the provider's budget is spent: how long until its oldest reservation leaves
    /// the window, so that the lane claims again when room frees, not on the next poll.
    async fn budget_frees_in(&self) -> Option<Duration> {
        if !self.budget_spent {
            return None;
        }
        match self.shared.queue.budget_frees_in(self.lane.name()).await {
            Ok(ms) => ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1))),
            Err(e) => {
                error!("provider {}: {e}", self.lane.name());
                None
            }
        }
    }

    /// Logs when the provider's budget runs out (a claim with free slots took nothing and
    /// the minute's requests or tokens are used up) and when work flows again. `capped`:
    /// the lane has spend caps too, which may be what held the claim back.
    async fn note_budget(&mut self, budget: crate::store::Budget, nothing: bool, capped: bool) {
        if !nothing {
            if self.budget_spent {
                self.budget_spent = false;
                info!(
                    "provider {}: claiming again within its budget",
                    self.lane.name()
                );
            }
            return;
        }
        if self.budget_spent {
            return;
        }
        let Ok(used) = self.shared.queue.budget_usage().await else {
            return;
        };
        let (requests, tokens) = used.get(self.lane.name()).copied().unwrap_or_default();
        let rpm_spent = budget.rpm.is_some_and(|r| requests >= i64::from(r));
        // A token budget refuses the next row when its estimate does not fit, however
        // much is left: any use of it may be the reason.
        let tpm_used = budget.tpm.is_some() && tokens > 0;
        if rpm_spent || tpm_used {
            self.budget_spent = true;
            let or_cap = if capped { " or its spend caps" } else { "" };
            info!(
                "provider {}: nothing fits its budget{or_cap} now ({requests} requests, \
                 {tokens} tokens in the last minute; rpm {:?}, tpm {:?}): pending work waits",
                self.lane.name(),
                budget.rpm,
                budget.tpm
            );
        }
    }

    /// Claims up to `free` executions and starts them. Returns how many it claimed.
    async fn claim_and_start(
        &mut self,
        provider: &Arc<Provider>,
        free: u32,
    ) -> Result<u32, StoreError> {
        let shared = self.shared.clone();
        // The slots are taken before the claim, so that a limit or a share lowered while it
        // runs cannot leave a claimed row without one (it would go back to pending, having
        // spent a budget's reservation for nothing); those left over are given back.
        // Each slot takes an instance of the pool too: no row is claimed that has no
        // instance to run in (see `pool`).
        let before = self.lane.running();
        let mut slots: Vec<Slot> = self.lane.acquire_up_to(free);
        if slots.is_empty() {
            // No instance (the lane had free slots): it may have work, so it waits for one.
            self.lane.wait_for_instance();
            return Ok(0);
        }
        let taken = slots.len();
        let spend = provider
            .policy
            .spend
            .as_ref()
            .map(crate::store::Spend::today);
        let claimed = shared
            .queue
            .claim(
                self.lane.name(),
                Claim {
                    owner: &shared.owner,
                    max: u32::try_from(slots.len()).unwrap_or(free),
                    limit: self.lane.limit(),
                    lease_ms: i64::try_from(shared.config.get().lease_ms).unwrap_or(i64::MAX),
                    budget: provider.policy.budget,
                    spend: spend.as_ref(),
                    tenants: &provider.policy.tenants,
                },
            )
            .await;
        let unused = slots
            .len()
            .saturating_sub(claimed.as_ref().map_or(0, Vec::len));
        for slot in slots.drain(..unused) {
            // Quietly: waking the lane here would only make it claim again at once.
            self.lane.release_quietly(slot);
        }
        let claimed = claimed?;
        if claimed.len() >= taken && u32::try_from(taken).is_ok_and(|t| t < free) {
            // Every instance it took has a row, and the pool held it to fewer than its free
            // slots: more work may wait for an instance.
            self.lane.wait_for_instance();
        }
        if let Some(budget) = provider.policy.budget {
            let capped = provider.policy.spend.is_some();
            self.note_budget(budget, claimed.is_empty(), capped).await;
        }
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
        self.log.note(&self.lane, claimed.len(), before);
        // Before any of them starts, so that each one's `Claimed` comes before its `Started`.
        self.publish_claimed(claimed.iter());
        for execution in claimed {
            // A store that returned more rows than it was asked for: the extra go back.
            match slots.pop() {
                Some(slot) => self.start(provider, execution, slot),
                None => self.requeue(&execution, None).await,
            }
        }
        Ok(count)
    }

    /// Starts what the completer claimed for this lane in the slots its batch freed.
    async fn start_handed(&mut self) {
        let handed = self.lane.take_handed();
        if handed.is_empty() {
            return;
        }
        // Their slots are held already: they ran the attempts whose results freed them.
        let count = u32::try_from(handed.len()).unwrap_or(u32::MAX);
        let before = self.lane.running().saturating_sub(count);
        self.log.note(&self.lane, handed.len(), before);
        let provider = self.lane.provider();
        self.publish_claimed(handed.iter().map(|(execution, _)| execution));
        for (execution, slot) in handed {
            match &provider {
                Some(provider) => self.start(provider, execution, slot),
                // The component went away since: the row goes back to pending.
                None => self.requeue(&execution, Some(slot)).await,
            }
        }
    }

    fn publish_claimed<'a>(&self, executions: impl Iterator<Item = &'a Execution>) {
        let mut batch = self.shared.events.batch();
        for execution in executions {
            batch.push_with(|| Event::Claimed {
                id: execution.id,
                provider: self.lane.name_arc(),
                attempt: execution.attempts,
            });
        }
    }

    /// Runs `execution` in `slot` on its own task.
    fn start(&self, provider: &Arc<Provider>, execution: Execution, slot: Slot) {
        let executor = self.executor.clone();
        let lane = self.lane.clone();
        let provider = provider.clone();
        self.executions
            .spawn(async move { executor.run(lane, provider, execution, slot).await });
    }

    /// Returns a claimed row to pending without counting its attempt.
    async fn requeue(&self, execution: &Execution, slot: Option<Slot>) {
        let back = Completion::requeue(execution, self.lane.clone(), slot);
        self.executor.completer.send(back).await;
    }
}

/// The lane's "Processing" line, at most once per [`LOG_EVERY`]. It samples one claim: the
/// rows it took, the lane's running count before it, and this worker's slots (its share of
/// the limit on a fleet), so that pending + running never exceed the limit on a line, as in
/// the design note. The claims and rows of the whole interval go with it as fields.
#[derive(Default)]
struct ClaimLog {
    last: Option<Instant>,
    claimed: usize,
    claims: usize,
}

impl ClaimLog {
    /// Notes a claim of `claimed` rows, made while `before` ran; logs it when one is due.
    fn note(&mut self, lane: &Lane, claimed: usize, before: u32) {
        self.claimed += claimed;
        self.claims += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        info!(
            claims = self.claims,
            claimed = self.claimed,
            "Processing {claimed} pending executions for provider {} ({before} currently \
             running, limit: {})",
            lane.name(),
            lane.slots()
        );
        self.last = Some(Instant::now());
        self.claimed = 0;
        self.claims = 0;
    }
}
