//! The policies of a running worker: each attempt's end, as the executor saw it, becomes a
//! pause, a circuit change or an adaptive limit (see [`crate::policy`]). A decision applies
//! to this worker's lane at once and is written to the store for the fleet by a background
//! task, so a slow database never slows an attempt; the store's claim enforces it on every
//! worker. The limit refresh brings other workers' decisions here ([`Governor::sync`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::events::{Event, EventBus, PauseReason};
use super::lane::Lane;
use crate::model::ErrorKind;
use crate::policy::Policy;
use crate::store::{ProviderState, Queue, StateChange};

/// How long an unauthorized answer keeps a circuit open: until the config or key changes,
/// which clears it; this is only what fits the clock.
const UNTIL_FIXED: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An attempt's end, as the policies weigh it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The error class; `None` when it completed.
    pub kind: Option<ErrorKind>,
    /// The wait the provider asked for.
    pub wait: Option<Duration>,
    pub duration: Duration,
    /// The error, for the state message.
    pub error: Option<String>,
    /// The component said the provider's request or token window is spent (a rate-limited
    /// message marked `(window spent: …)`, see [`crate::attempt::window_spent`]).
    pub spent: bool,
}

/// What a rate-limited answer says of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The provider refuses the calls over its capacity while it serves the others: the
    /// lane's other calls succeed. An adaptive lane takes one off its limit per refused
    /// call, and does not pause.
    Capacity,
    /// A request or token window is spent (the component said so), or nothing of the lane
    /// succeeds lately: the provider takes nothing until it resets. The lane pauses.
    Window,
}

/// One provider's recent health, in this worker.
#[derive(Default)]
struct Health {
    /// Transient failures in a row.
    failures_in_a_row: u32,
    /// The last attempts' outcomes (true: a transient failure), at most the window.
    recent: VecDeque<bool>,
    /// Open (cooling down, or probing once the cool-down is over).
    open: bool,
    /// When the cool-down ends: only attempts that start after it are probes; the ones
    /// that were already running when the circuit opened say nothing new.
    probe_after: Option<Instant>,
    /// Openings in a row, for the next cool-down.
    openings: u32,
    /// Opened for an unauthorized answer: only a new config or key closes it.
    unauthorized: bool,
    /// The adaptive limit's controller, when the provider adapts.
    adaptive: Option<Adaptive>,
    /// When the last call of the lane succeeded, and how long its calls take (an
    /// exponential average, in ms): whether the provider is serving the lane's other calls
    /// when one is refused.
    last_success: Option<Instant>,
    call_ms: f64,
}

impl Health {
    /// Notes a call that succeeded after `duration`.
    fn succeeded(&mut self, duration: Duration, now: Instant) {
        let ms = duration.as_secs_f64() * 1000.0;
        self.call_ms = if self.last_success.is_none() {
            ms
        } else {
            self.call_ms * 0.8 + ms * 0.2
        };
        self.last_success = Some(now);
    }

    /// What a rate-limited answer (`seen`) says: a spent window when the component said so;
    /// a refusal over the capacity when the provider serves the lane's other calls: one
    /// succeeded within twice the time a call takes (at least a second), or others are
    /// still on their way (`others_running`: they may yet succeed; the first burst of a
    /// lane set too high has no success behind it); else a spent window, since nothing
    /// gets through.
    fn refusal(&self, seen: &Seen, others_running: bool, now: Instant) -> Refusal {
        let serving = Duration::from_secs_f64((2.0 * self.call_ms / 1000.0).max(1.0));
        let others_succeed = self
            .last_success
            .is_some_and(|at| now.saturating_duration_since(at) <= serving);
        if !seen.spent && (others_succeed || others_running) {
            Refusal::Capacity
        } else {
            Refusal::Window
        }
    }
}

/// The adaptive limit's controller. Its rules follow TCP Vegas and Netflix's
/// concurrency-limits (`VegasLimit`, `Gradient2Limit`), for an API that refuses the calls
/// over its capacity instead of queueing them, so that the limit settles at the capacity
/// and stays there:
///
/// - each call refused over the capacity (a [`Refusal::Capacity`]) takes one off the limit:
///   a burst over the capacity takes off what it overshot, no more. The level refused is
///   remembered, and growing back to it is held for a while: 2 s, doubling each time a
///   probe of it is refused again, up to a minute. A window of successes at that level
///   (the probe held: the capacity grew) forgets it;
/// - a spent window ([`Refusal::Window`]) shrinks it by a quarter, once per burst (the lane
///   pauses besides);
/// - latency rising past `adaptive_latency_ratio` × its baseline shrinks it by a tenth: a
///   provider that queues answers later before it refuses;
/// - a window of successes (the limit's worth) grows it by one, unless the lane is not
///   using half its slots (Vegas's and Gradient2's "app-limited": its own demand, not the
///   provider, holds it back, so the limit learns nothing).
struct Adaptive {
    limit: u32,
    /// Successes since the last change.
    successes: u32,
    /// The latency baseline in ms: the lowest seen, drifting up slowly.
    baseline: f64,
    /// Recent latency in ms (an exponential average).
    recent: f64,
    samples: u32,
    changed: Instant,
    /// Whether the last change was a decrease: the answers of the burst that caused it are
    /// still coming in, and must neither shrink the limit again (but one by one, for each
    /// call refused over the capacity) nor let it grow yet.
    decreased: bool,
    /// The level last refused, when growing back to it is held.
    over: Option<Over>,
}

/// A level the provider refused, and how long growing back to it waits.
#[derive(Debug, Clone, Copy)]
struct Over {
    level: u32,
    since: Instant,
    hold: Duration,
}

/// The least time between two decreases by a quarter or a tenth: the answers of one burst
/// come together.
const DECREASE_GAP: Duration = Duration::from_millis(500);
/// How long growing back to a refused level waits, at first; it doubles with each probe of
/// the level that is refused, up to `LONGEST_HOLD`.
const FIRST_HOLD: Duration = Duration::from_secs(2);
const LONGEST_HOLD: Duration = Duration::from_secs(60);

impl Adaptive {
    fn new(limit: u32) -> Self {
        Adaptive {
            limit,
            successes: 0,
            baseline: 0.0,
            recent: 0.0,
            samples: 0,
            changed: Instant::now()
                .checked_sub(DECREASE_GAP)
                .unwrap_or_else(Instant::now),
            decreased: false,
            over: None,
        }
    }

    /// Remembers that `level` was refused (the limit was `before`): a probe of the same
    /// level refused again doubles its hold.
    fn refused(&mut self, level: u32, before: u32, now: Instant) {
        let hold = match self.over {
            Some(o) if o.level == level && before >= level => (o.hold * 2).min(LONGEST_HOLD),
            Some(o) if o.level == level => o.hold,
            _ => FIRST_HOLD,
        };
        self.over = Some(Over {
            level,
            since: now,
            hold,
        });
    }

    /// The new limit after `seen` (`refusal` when it was rate-limited), with `in_flight`
    /// of the lane's slots busy, with why, when it changes.
    fn step(
        &mut self,
        policy: &Policy,
        ceiling: u32,
        seen: &Seen,
        refusal: Option<Refusal>,
        (in_flight, slots): (u32, u32),
        now: Instant,
    ) -> Option<(u32, String)> {
        let floor = policy.adaptive_floor.min(ceiling).max(1);
        let before = self.limit.clamp(floor, ceiling);
        let settled = now.saturating_duration_since(self.changed) >= DECREASE_GAP;
        let may_decrease = settled || !self.decreased;
        let (limit, why) = match (seen.kind, refusal) {
            (Some(ErrorKind::RateLimited), Some(Refusal::Capacity)) => {
                // One call too many: one less (Vegas's drop, counted per refused call).
                let shrunk = before.saturating_sub(1).max(floor);
                self.refused(shrunk + 1, before, now);
                (
                    shrunk,
                    "a call over the provider's capacity was refused while others succeed"
                        .to_string(),
                )
            }
            (Some(ErrorKind::RateLimited), _) if may_decrease => {
                self.refused(before, before, now);
                // × 0.75, rounded down, and at least one less.
                let shrunk = (before * 3 / 4).min(before.saturating_sub(1));
                (shrunk, "rate limited: a window is spent".to_string())
            }
            (None, _) => {
                let ms = seen.duration.as_secs_f64() * 1000.0;
                self.samples = self.samples.saturating_add(1);
                self.recent = if self.samples == 1 {
                    ms
                } else {
                    self.recent * 0.8 + ms * 0.2
                };
                self.baseline = if self.baseline == 0.0 || ms < self.baseline {
                    ms
                } else {
                    self.baseline + (ms - self.baseline) * 0.01
                };
                let slow = self.samples >= 10
                    && self.recent > policy.adaptive_latency_ratio * self.baseline.max(1.0);
                if slow && may_decrease {
                    let shrunk = (f64::from(before) * 0.9).floor();
                    let shrunk = u32::try_from(shrunk as i64)
                        .unwrap_or(before)
                        .min(before - 1);
                    (
                        shrunk,
                        format!(
                            "latency {:.0} ms is past {} × its baseline {:.0} ms",
                            self.recent, policy.adaptive_latency_ratio, self.baseline
                        ),
                    )
                } else {
                    // Still the burst of the last decrease, or the lane's own demand holds
                    // it below half its slots: nothing to learn about the provider.
                    if (!settled && self.decreased) || in_flight.saturating_mul(2) < slots {
                        return None;
                    }
                    self.successes += 1;
                    if self.successes < before {
                        (before, String::new())
                    } else {
                        // A window of successes at the refused level: the capacity grew.
                        if self.over.is_some_and(|o| before >= o.level) {
                            self.over = None;
                        }
                        match self.over {
                            Some(o) if before + 1 >= o.level => {
                                if now.saturating_duration_since(o.since) < o.hold {
                                    (before, String::new())
                                } else {
                                    (
                                        before + 1,
                                        format!(
                                            "{before} successes; probing the level refused \
                                             {} ago",
                                            show(now.saturating_duration_since(o.since))
                                        ),
                                    )
                                }
                            }
                            _ => (before + 1, format!("{before} successes")),
                        }
                    }
                }
            }
            _ => (before, String::new()),
        };
        let limit = limit.clamp(floor, ceiling);
        self.limit = limit;
        if limit == before {
            return None;
        }
        self.successes = 0;
        self.changed = now;
        self.decreased = limit < before;
        Some((limit, why))
    }
}

/// The policies of every lane of this worker.
pub struct Governor {
    events: EventBus,
    health: Mutex<HashMap<Arc<str>, Health>>,
    writes: mpsc::UnboundedSender<(Arc<str>, StateChange)>,
}

impl Governor {
    /// A governor, and the task that writes its decisions to `queue`.
    pub fn new(
        queue: Arc<dyn Queue>,
        events: EventBus,
    ) -> (Governor, impl std::future::Future<Output = ()>) {
        let (writes, mut pending) = mpsc::unbounded_channel::<(Arc<str>, StateChange)>();
        let writer = async move {
            while let Some((provider, change)) = pending.recv().await {
                // A decision that cannot be written still holds in this worker; the fleet
                // learns of it from the next one.
                let mut backoff = Duration::from_millis(50);
                for attempt in 1..=5 {
                    match queue.change_state(&provider, &change).await {
                        Ok(_) => break,
                        Err(e) if attempt == 5 => {
                            warn!("provider {provider}: recording {change:?} failed: {e}")
                        }
                        Err(_) => {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                    }
                }
            }
        };
        let governor = Governor {
            events,
            health: Mutex::new(HashMap::new()),
            writes,
        };
        (governor, writer)
    }

    fn write(&self, lane: &Lane, change: StateChange) {
        // Only fails once the writer is gone, at shutdown.
        let _ = self.writes.send((lane.name_arc(), change));
    }

    /// Weighs one attempt's end on `lane` under `policy`.
    pub fn observe(&self, lane: &Lane, policy: &Policy, seen: &Seen) {
        let now = Instant::now();
        let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let health = all.entry(lane.name_arc()).or_default();
        let refusal = (seen.kind == Some(ErrorKind::RateLimited)).then(|| {
            // This attempt still holds its slot.
            match health.refusal(seen, lane.running() > 1, now) {
                // An adaptive limit at its floor has nothing left to take off: the lane
                // pauses, rather than knock again at once.
                Refusal::Capacity
                    if health.adaptive.as_ref().map_or(lane.limit(), |a| a.limit)
                        <= policy.adaptive_floor.max(1) =>
                {
                    Refusal::Window
                }
                refusal => refusal,
            }
        });
        if seen.kind.is_none() {
            health.succeeded(seen.duration, now);
        }
        // An adaptive lane answers a refusal over the capacity by shrinking its limit; the
        // refused call waits as asked, the others go on. A fixed lane has no other answer
        // than the pause, and pauses for every wait, as it always did.
        let over_capacity = policy.adaptive && refusal == Some(Refusal::Capacity);
        if let (Some(kind @ (ErrorKind::RateLimited | ErrorKind::Unavailable)), Some(wait)) =
            (seen.kind, seen.wait)
            && policy.pause
            && !over_capacity
        {
            self.pause(lane, policy, kind, wait);
        }
        if policy.adaptive {
            self.adapt(lane, policy, health, seen, refusal, now);
        }
        let started = Instant::now().checked_sub(seen.duration);
        let straggler = health.open
            && matches!((health.probe_after, started), (Some(after), Some(start)) if start < after);
        if straggler {
            return;
        }
        match seen.kind {
            None => {
                health.failures_in_a_row = 0;
                push(&mut health.recent, false, policy.breaker_window);
                if health.open && !health.unauthorized {
                    health.open = false;
                    health.openings = 0;
                    info!(
                        "provider {}: circuit closed: a probe succeeded",
                        lane.name()
                    );
                    self.write(lane, StateChange::Close);
                    self.events.publish(Event::CircuitChanged {
                        provider: lane.name_arc(),
                        open: false,
                        reason: "a probe succeeded".into(),
                    });
                }
            }
            Some(ErrorKind::Unauthorized) if policy.breaker_failures > 0 => {
                if !health.unauthorized {
                    health.unauthorized = true;
                    // The error already says "unauthorized: …".
                    let reason = format!(
                        "{}; fix the provider's key or config (a reload or a new key file \
                         closes it)",
                        seen.error
                            .as_deref()
                            .unwrap_or("unauthorized: the provider refused the credentials")
                    );
                    self.open(lane, health, UNTIL_FIXED, reason);
                }
            }
            Some(ErrorKind::Unavailable | ErrorKind::Timeout) => {
                health.failures_in_a_row += 1;
                push(&mut health.recent, true, policy.breaker_window);
                if policy.breaker_failures == 0 || health.unauthorized {
                    return;
                }
                let failed = health.recent.iter().filter(|f| **f).count();
                let window = usize::try_from(policy.breaker_window).unwrap_or(usize::MAX);
                let ratio_hit = health.recent.len() >= window
                    && failed as f64 >= policy.breaker_ratio * window as f64;
                let reason = if health.open {
                    Some("a probe failed".to_string())
                } else if health.failures_in_a_row >= policy.breaker_failures {
                    Some(format!(
                        "{} transient failures in a row",
                        health.failures_in_a_row
                    ))
                } else if ratio_hit {
                    Some(format!("{failed} of the last {window} attempts failed"))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let reason = match &seen.error {
                        Some(e) => format!("{reason} (last: {e})"),
                        None => reason,
                    };
                    let cooldown = cooldown(policy, health.openings);
                    self.open(lane, health, cooldown, reason);
                }
            }
            Some(_) => {}
        }
    }

    /// Moves the adaptive limit of `lane` after `seen`.
    fn adapt(
        &self,
        lane: &Lane,
        policy: &Policy,
        health: &mut Health,
        seen: &Seen,
        refusal: Option<Refusal>,
        now: Instant,
    ) {
        let ceiling = lane.ceiling();
        let adaptive = health
            .adaptive
            .get_or_insert_with(|| Adaptive::new(lane.limit()));
        // This attempt still holds its slot.
        let busy = (lane.running(), lane.slots());
        let Some((limit, why)) = adaptive.step(policy, ceiling, seen, refusal, busy, now) else {
            return;
        };
        let mut inputs = lane.inputs();
        inputs.adaptive = Some(limit);
        let old = lane.limit();
        crate::limits::apply(lane, inputs);
        info!(
            "provider {}: adaptive limit {old} -> {limit} ({why}; ceiling {ceiling})",
            lane.name()
        );
        self.write(lane, StateChange::Adaptive(Some(limit)));
        self.events.publish(Event::LimitChanged {
            provider: lane.name_arc(),
            old,
            new: limit,
        });
    }

    /// The adaptive limit of every provider that adapts, as this worker knows it.
    pub fn adaptive_limits(&self) -> HashMap<String, u32> {
        let all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter_map(|(name, h)| Some((name.to_string(), h.adaptive.as_ref()?.limit)))
            .collect()
    }

    /// Opens the circuit of `lane` for `cooldown`.
    fn open(&self, lane: &Lane, health: &mut Health, cooldown: Duration, reason: String) {
        health.open = true;
        health.openings += 1;
        health.failures_in_a_row = 0;
        health.recent.clear();
        health.probe_after = Some(Instant::now() + cooldown.min(UNTIL_FIXED / 2));
        // The circuit's own probe (one at a time) is the ramp.
        lane.pause_until(Instant::now() + cooldown, Duration::ZERO);
        let until = if cooldown >= UNTIL_FIXED {
            "until its config or key changes".to_string()
        } else {
            format!("for {}", show(cooldown))
        };
        warn!("provider {}: circuit open {until}: {reason}", lane.name());
        self.write(
            lane,
            StateChange::Open {
                for_ms: millis(cooldown),
                reason: reason.clone(),
            },
        );
        self.events.publish(Event::CircuitChanged {
            provider: lane.name_arc(),
            open: true,
            reason,
        });
    }

    /// Pauses `lane` for the wait its provider asked for.
    fn pause(&self, lane: &Lane, policy: &Policy, kind: ErrorKind, wait: Duration) {
        let wait = wait.min(policy.max_retry_after);
        // A short wait gets a short ramp: at most half of it.
        let ramp = policy.resume_spread.min(wait / 2);
        if wait.is_zero() || !lane.pause_until(Instant::now() + wait, ramp) {
            return;
        }
        let (reason, why) = match kind {
            ErrorKind::RateLimited => (
                format!("rate limited: the provider asked to wait {}", show(wait)),
                PauseReason::RateLimited {
                    for_ms: millis(wait),
                },
            ),
            _ => (
                format!("unavailable: the provider asked to wait {}", show(wait)),
                PauseReason::Unavailable {
                    for_ms: millis(wait),
                },
            ),
        };
        self.announce_pause(lane, wait, reason, why);
    }

    /// Logs a pause this worker put in place, records it for the fleet and publishes it.
    fn announce_pause(&self, lane: &Lane, wait: Duration, reason: String, why: PauseReason) {
        info!(
            "provider {}: claims paused for {}: {reason}",
            lane.name(),
            show(wait)
        );
        self.write(
            lane,
            StateChange::Pause {
                for_ms: millis(wait),
                reason,
            },
        );
        self.events.publish(Event::LanePaused {
            provider: lane.name_arc(),
            reason: why,
        });
    }

    /// Brings the fleet's decisions about `lane` here: a pause or an open circuit another
    /// worker recorded, or a circuit closed elsewhere. `now` is the store's clock.
    pub fn sync(&self, lane: &Lane, state: &ProviderState, now: i64) {
        let left = state.paused_until.saturating_sub(now);
        if left > 0 {
            let ramp = match lane.provider() {
                Some(p) if !state.circuit_open => p.policy.resume_spread,
                _ => Duration::ZERO,
            };
            let until = Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0));
            lane.pause_until(until, ramp);
        }
        let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let health = all.entry(lane.name_arc()).or_default();
        // A lane whose component is gone knows nothing of its policy: the fleet's adaptive
        // limit stays as it is (the workers that serve the provider keep it), rather than be
        // erased at every refresh as if the provider had stopped adapting.
        let adapts = lane.provider().map(|p| p.policy.adaptive);
        match (adapts, state.adaptive_limit, health.adaptive.as_mut()) {
            (None, _, _) => {}
            // Another worker moved the fleet's adaptive limit: follow it, unless this
            // worker just did.
            (Some(true), Some(fleet), Some(own))
                if fleet != own.limit && own.changed.elapsed() >= Duration::from_secs(1) =>
            {
                own.limit = fleet;
                own.successes = 0;
            }
            (Some(true), Some(fleet), None) => health.adaptive = Some(Adaptive::new(fleet)),
            // No longer adaptive: the configured limit applies again, fleet-wide.
            (Some(false), Some(_), _) => {
                health.adaptive = None;
                self.write(lane, StateChange::Adaptive(None));
            }
            (Some(false), None, Some(_)) => health.adaptive = None,
            _ => {}
        }
        if state.circuit_open {
            if !health.open {
                health.probe_after =
                    Some(Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0)));
            }
            health.open = true;
            health.openings = health.openings.max(state.openings);
            health.unauthorized = state
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("unauthorized"));
        } else if health.open {
            // Closed by another worker's probe, or by a new key: claim again at once.
            *health = Health::default();
            lane.resume();
        }
    }

    /// The provider of `lane` was bound anew (its config or key changed): a circuit that
    /// an unauthorized answer opened closes, and the lane claims again.
    pub fn rebound(&self, lane: &Lane) {
        let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let Some(health) = all.get_mut(lane.name()) else {
            return;
        };
        if health.unauthorized {
            *health = Health::default();
            info!(
                "provider {}: config or key changed: circuit closed",
                lane.name()
            );
            self.write(lane, StateChange::ClearUnauthorized);
            lane.resume();
            self.events.publish(Event::CircuitChanged {
                provider: lane.name_arc(),
                open: false,
                reason: "the provider's config or key changed".into(),
            });
        }
    }
}

fn push(recent: &mut VecDeque<bool>, failed: bool, window: u32) {
    recent.push_back(failed);
    while recent.len() > usize::try_from(window).unwrap_or(usize::MAX) {
        recent.pop_front();
    }
}

/// The cool-down after `openings` openings in a row: doubling, capped.
fn cooldown(policy: &Policy, openings: u32) -> Duration {
    let factor = 1u32.checked_shl(openings.min(20)).unwrap_or(u32::MAX);
    policy
        .breaker_cooldown
        .saturating_mul(factor)
        .min(policy.breaker_max_cooldown)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A duration for a log line: `1.5 s`, `250 ms`, `2 min`.
fn show(d: Duration) -> String {
    if d >= Duration::from_secs(120) {
        format!("{} min", d.as_secs() / 60)
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldowns_double_and_cap() {
        let policy = Policy {
            breaker_cooldown: Duration::from_secs(1),
            breaker_max_cooldown: Duration::from_secs(5),
            ..Policy::default()
        };
        let c: Vec<u64> = (0..5).map(|n| cooldown(&policy, n).as_secs()).collect();
        assert_eq!(c, [1, 2, 4, 5, 5]);
    }

    fn success() -> Seen {
        Seen {
            kind: None,
            wait: None,
            duration: Duration::from_millis(200),
            error: None,
            spent: false,
        }
    }

    fn limited(spent: bool) -> Seen {
        Seen {
            kind: Some(ErrorKind::RateLimited),
            wait: Some(Duration::from_secs(1)),
            duration: Duration::from_millis(5),
            error: Some("rate limited: HTTP 429".into()),
            spent,
        }
    }

    fn adaptive() -> Policy {
        Policy {
            adaptive: true,
            ..Policy::default()
        }
    }

    /// A lane set to 16 against a capacity of 4: the 12 calls refused of its first burst take
    /// it to 4, and it stays there: growing back to the refused level waits 2 s, then twice
    /// as long after a probe of it is refused again.
    #[test]
    fn refusals_over_the_capacity_take_off_the_overshoot_and_hold_the_level() {
        let policy = adaptive();
        let mut a = Adaptive::new(16);
        let t0 = Instant::now();
        let capacity = Some(Refusal::Capacity);
        for _ in 0..12 {
            a.step(&policy, 16, &limited(false), capacity, (16, 16), t0);
        }
        assert_eq!(a.limit, 4);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A second of full windows at 4: no probe of 5 yet.
        for i in 0..20 {
            assert_eq!(
                a.step(&policy, 16, &success(), None, (4, 4), at(600 + i * 20)),
                None
            );
        }
        // Past the hold, the next window probes 5; it is refused.
        let probe = a.step(&policy, 16, &success(), None, (4, 4), at(2_100));
        assert!(
            matches!(&probe, Some((5, why)) if why.contains("probing")),
            "{probe:?}"
        );
        a.step(&policy, 16, &limited(false), capacity, (5, 5), at(2_110));
        assert_eq!(a.limit, 4);
        // The next probe waits twice as long: 4 s.
        for ms in (2_700..6_000).step_by(100) {
            assert_eq!(
                a.step(&policy, 16, &success(), None, (4, 4), at(ms)),
                None,
                "{ms}"
            );
        }
        let probe = a.step(&policy, 16, &success(), None, (4, 4), at(6_200));
        assert_eq!(probe.map(|(l, _)| l), Some(5));
    }

    /// A probe that holds for a window of successes (the capacity grew) forgets the level,
    /// and the limit grows on at once.
    #[test]
    fn a_probe_that_holds_forgets_the_refused_level() {
        let policy = adaptive();
        let mut a = Adaptive::new(5);
        let t0 = Instant::now();
        a.step(
            &policy,
            16,
            &limited(false),
            Some(Refusal::Capacity),
            (5, 5),
            t0,
        );
        assert_eq!(a.limit, 4);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut ms = 2_100;
        let mut next = || {
            ms += 10;
            at(ms)
        };
        let mut grown = Vec::new();
        for _ in 0..40 {
            let busy = (a.limit, a.limit);
            if let Some((limit, _)) = a.step(&policy, 16, &success(), None, busy, next()) {
                grown.push(limit);
            }
        }
        assert!(a.over.is_none());
        assert_eq!(grown[..3], [5, 6, 7], "{grown:?}");
    }

    /// A lane that uses less than half its slots learns nothing of the provider: its limit
    /// does not grow (Vegas's and Gradient2's app-limited rule).
    #[test]
    fn a_lane_that_uses_few_of_its_slots_does_not_grow() {
        let policy = adaptive();
        let mut a = Adaptive::new(8);
        let later = Instant::now() + Duration::from_secs(1);
        for _ in 0..100 {
            assert_eq!(a.step(&policy, 16, &success(), None, (3, 8), later), None);
        }
        assert!(
            a.step(&policy, 16, &success(), None, (4, 8), later)
                .is_none()
        );
        for _ in 0..7 {
            a.step(&policy, 16, &success(), None, (4, 8), later);
        }
        assert_eq!(a.limit, 9);
    }

    async fn governor() -> (Governor, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn Queue> = Arc::new(
            crate::store::sqlite::SqliteQueue::open_path(&dir.path().join("q.db"))
                .await
                .unwrap(),
        );
        let (governor, writer) = Governor::new(queue, EventBus::default());
        tokio::spawn(writer);
        (governor, dir)
    }

    /// A 429 while the lane's other calls succeed is a refusal over the capacity: an
    /// adaptive lane takes one off its limit and goes on claiming. A 429 that says its window
    /// is spent (`x-ratelimit-remaining-requests: 0`) pauses the lane.
    #[tokio::test]
    async fn a_refusal_over_the_capacity_shrinks_and_a_spent_window_pauses() {
        let (governor, _dir) = governor().await;
        let policy = adaptive();
        let lane = Lane::new("p", 8);
        let _busy: Vec<_> = (0..3).map(|_| lane.try_acquire().unwrap()).collect();
        governor.observe(&lane, &policy, &success());
        governor.observe(&lane, &policy, &limited(false));
        assert_eq!(lane.paused_for(), None, "the other calls go on");
        assert_eq!(lane.limit(), 7);
        governor.observe(&lane, &policy, &limited(true));
        assert!(lane.paused_for().is_some(), "a spent window pauses");
    }

    /// With nothing of the lane succeeding or running besides, nothing gets through: a
    /// spent window, though the component did not say so. And a limit at its floor has
    /// nothing to take off: the lane pauses.
    #[tokio::test]
    async fn a_refusal_with_nothing_else_getting_through_pauses() {
        let (governor, _dir) = governor().await;
        let policy = adaptive();
        let alone = Lane::new("alone", 8);
        let _slot = alone.try_acquire().unwrap();
        governor.observe(&alone, &policy, &limited(false));
        assert!(alone.paused_for().is_some());
        let floor = Lane::new("floor", 1);
        let _busy: Vec<_> = (0..1).map(|_| floor.try_acquire().unwrap()).collect();
        governor.observe(&floor, &policy, &success());
        governor.observe(&floor, &policy, &limited(false));
        assert!(floor.paused_for().is_some());
    }

    /// A fixed lane, the reference, pauses for every 429 with a wait, whatever its kind.
    #[tokio::test]
    async fn a_fixed_lane_pauses_for_every_wait() {
        let (governor, _dir) = governor().await;
        let policy = Policy::default();
        let lane = Lane::new("p", 8);
        let _busy: Vec<_> = (0..3).map(|_| lane.try_acquire().unwrap()).collect();
        governor.observe(&lane, &policy, &success());
        governor.observe(&lane, &policy, &limited(false));
        assert!(lane.paused_for().is_some());
        assert_eq!(lane.limit(), 8);
    }

    /// Before, a worker whose component for the provider was gone wrote `Adaptive(None)` at
    /// every refresh, erasing the limit the fleet's other workers had found.
    #[tokio::test]
    async fn a_lane_without_a_component_keeps_the_fleets_adaptive_limit() {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn Queue> = Arc::new(
            crate::store::sqlite::SqliteQueue::open_path(&dir.path().join("q.db"))
                .await
                .unwrap(),
        );
        queue
            .change_state("p", &StateChange::Adaptive(Some(5)))
            .await
            .unwrap();
        let (governor, writer) = Governor::new(queue.clone(), EventBus::default());
        let writer = tokio::spawn(writer);
        let lane = Lane::new("p", 10);
        assert!(lane.provider().is_none());
        let (now, states) = queue.provider_states().await.unwrap();
        governor.sync(&lane, &states["p"], now);
        // The writer ends once the governor's sender is gone, having written all it got.
        drop(governor);
        writer.await.unwrap();
        let (_, states) = queue.provider_states().await.unwrap();
        assert_eq!(states["p"].adaptive_limit, Some(5));
    }
}
