//! Scheduling policies: what a lane does when its provider pushes back. Each is set in
//! `[policy]` (defaults for every provider) and `[providers.NAME.policy]` (overrides), and
//! resolved per provider into a [`Policy`].
//!
//! - **Pauses.** A rate-limited answer that says how long to wait (and an unavailable one
//!   that does) pauses the provider's claims, fleet-wide, until the wait is over (but a
//!   refusal over the capacity on an adaptive lane, see `docs/policies.md`); the waiting
//!   executions resume spread over `resume_spread_ms`. Rate-limited attempts do not count
//!   against `max_attempts` but against `max_rate_limited`.
//! - **Circuit breaker.** `breaker_failures` transient failures in a row, or a failure ratio
//!   of `breaker_ratio` over the last `breaker_window` attempts, open the provider: no claims
//!   for a cool-down that doubles with each opening (`breaker_cooldown_ms` up to
//!   `breaker_max_cooldown_ms`). Then one probe at a time; a success closes it. An
//!   unauthorized answer opens it until the provider's config or key changes.
//! - **Adaptive limits** (`adaptive = true`): the limit moves between `adaptive_floor` and
//!   the configured limit: one less for each call refused over the provider's capacity
//!   (without a pause), a quarter less for a spent window, a tenth less when latency rises
//!   past `adaptive_latency_ratio` × its baseline, and one more after a window of successes,
//!   held back for a while from a level that was refused.
//! - **Priority aging** (`aging_ms`): a pending execution's priority rises by one for every
//!   `aging_ms` it waits, up to `aging_max`, so low-priority work is never starved.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[policy]` and `[providers.NAME.policy]`: every setting optional; a provider's own
/// settings win over `[policy]`, which wins over the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The longest wait a provider's retry-after may impose, in seconds (default 3600).
    pub max_retry_after_secs: Option<u64>,
    /// Pause the provider's claims while a rate-limited (or unavailable) answer's wait runs
    /// (default true).
    pub pause: Option<bool>,
    /// Executions waiting on a pause resume spread over this window, in ms (default 250).
    pub resume_spread_ms: Option<u64>,
    /// Rate-limited answers an execution may get before it fails (default 20). They do not
    /// count against `max_attempts`.
    pub max_rate_limited: Option<u32>,
    /// Transient failures in a row that open the circuit (default 5; 0 turns the breaker
    /// off).
    pub breaker_failures: Option<u32>,
    /// The failure ratio over the last `breaker_window` attempts that opens the circuit
    /// (default 0.5; 1.0 leaves only the run of failures).
    pub breaker_ratio: Option<f64>,
    /// How many recent attempts the ratio looks at (default 20).
    pub breaker_window: Option<u32>,
    /// The first cool-down of an open circuit, in ms; it doubles with each opening in a row
    /// (default 5000).
    pub breaker_cooldown_ms: Option<u64>,
    /// The longest cool-down, in ms (default 300000).
    pub breaker_max_cooldown_ms: Option<u64>,
    /// Adapt the limit to the provider's answers (default false).
    pub adaptive: Option<bool>,
    /// The lowest adaptive limit (default 1).
    pub adaptive_floor: Option<u32>,
    /// Latency above this multiple of its baseline shrinks the adaptive limit (default 2.0).
    pub adaptive_latency_ratio: Option<f64>,
    /// Priority aging: every this many ms a pending execution waits, its priority rises by
    /// one, so that low-priority work is never starved (default 0: off).
    pub aging_ms: Option<u64>,
    /// The most aging adds to an execution's priority (default 100).
    pub aging_max: Option<u32>,
}

/// One provider's policies, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_retry_after: Duration,
    pub pause: bool,
    pub resume_spread: Duration,
    pub max_rate_limited: u32,
    pub breaker_failures: u32,
    pub breaker_ratio: f64,
    pub breaker_window: u32,
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
    pub adaptive: bool,
    pub adaptive_floor: u32,
    pub adaptive_latency_ratio: f64,
    /// `None`: no aging.
    pub aging: Option<Duration>,
    pub aging_max: u32,
    /// Requests and tokens per minute (`[providers.NAME] rpm`, `tpm`), fleet-wide.
    pub budget: Option<crate::store::Budget>,
    /// How the lane is shared among tenants (`[providers.NAME] tenant_limit`, `fairness`).
    pub tenants: crate::store::Tenants,
    /// The daily spend caps that bear on its claims (`[providers.NAME] daily_usd`,
    /// `[tenants.NAME] daily_usd`), with a `day` of 0.
    pub spend: Option<crate::store::Spend>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::resolve(&PolicyConfig::default(), &PolicyConfig::default())
    }
}

impl Policy {
    /// A provider's policies: its own settings, then `[policy]`, then the defaults.
    pub fn resolve(own: &PolicyConfig, defaults: &PolicyConfig) -> Policy {
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                own.$field.or(defaults.$field).unwrap_or($default)
            };
        }
        Policy {
            max_retry_after: Duration::from_secs(pick!(max_retry_after_secs, 3600)),
            pause: pick!(pause, true),
            resume_spread: Duration::from_millis(pick!(resume_spread_ms, 250)),
            max_rate_limited: pick!(max_rate_limited, 20),
            breaker_failures: pick!(breaker_failures, 5),
            breaker_ratio: pick!(breaker_ratio, 0.5),
            breaker_window: pick!(breaker_window, 20),
            breaker_cooldown: Duration::from_millis(pick!(breaker_cooldown_ms, 5000)),
            breaker_max_cooldown: Duration::from_millis(pick!(breaker_max_cooldown_ms, 300_000)),
            adaptive: pick!(adaptive, false),
            adaptive_floor: pick!(adaptive_floor, 1),
            adaptive_latency_ratio: pick!(adaptive_latency_ratio, 2.0),
            aging: Some(pick!(aging_ms, 0))
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            aging_max: pick!(aging_max, 100),
            budget: None,
            tenants: crate::store::Tenants::NONE,
            spend: None,
        }
    }
}

impl PolicyConfig {
    /// Every problem of these settings, as `(key under prefix, reason)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.max_retry_after_secs == Some(0) {
            problems.push(("max_retry_after_secs", "must be at least 1".to_string()));
        }
        // A year: past that, a wait is garbage, and its end would not fit the database.
        if self
            .max_retry_after_secs
            .is_some_and(|s| s > 366 * 24 * 3600)
        {
            problems.push((
                "max_retry_after_secs",
                "must be at most 31622400 (a year)".into(),
            ));
        }
        if self.resume_spread_ms.is_some_and(|ms| ms > 600_000) {
            problems.push((
                "resume_spread_ms",
                "must be at most 600000 (10 minutes)".into(),
            ));
        }
        if let Some(r) = self.breaker_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            problems.push(("breaker_ratio", format!("{r} is not in (0, 1]")));
        }
        if self
            .breaker_window
            .is_some_and(|w| !(1..=10_000).contains(&w))
        {
            problems.push(("breaker_window", "must be from 1 to 10000".into()));
        }
        if self.breaker_cooldown_ms == Some(0) {
            problems.push(("breaker_cooldown_ms", "must be at least 1".into()));
        }
        if let (Some(first), Some(max)) = (self.breaker_cooldown_ms, self.breaker_max_cooldown_ms)
            && max < first
        {
            problems.push((
                "breaker_max_cooldown_ms",
                format!("must be at least breaker_cooldown_ms ({first})"),
            ));
        }
        if self
            .breaker_max_cooldown_ms
            .is_some_and(|ms| ms > 366 * 24 * 3600 * 1000)
        {
            problems.push(("breaker_max_cooldown_ms", "must be at most a year".into()));
        }
        if self.aging_ms.is_some_and(|ms| ms > 0 && ms < 100) {
            problems.push(("aging_ms", "must be 0 (off) or at least 100".into()));
        }
        if self.aging_max.is_some_and(|m| m > 1_000_000) {
            problems.push(("aging_max", "must be at most 1000000".into()));
        }
        if self.adaptive_floor == Some(0) {
            problems.push(("adaptive_floor", "must be at least 1".into()));
        }
        if let Some(r) = self.adaptive_latency_ratio
            && !(r > 1.0 && r.is_finite())
        {
            problems.push(("adaptive_latency_ratio", format!("{r} must be above 1")));
        }
        problems
    }
}

/// What a provider's policies make of it now, for `lanes status`, the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// `serving`, `paused` (a rate limit's wait), `open` (a circuit's cool-down) or
    /// `half_open` (an open circuit probing, one call at a time).
    pub kind: &'static str,
    /// Until when (Unix ms) it is paused or open.
    pub until: Option<i64>,
    pub reason: Option<String>,
    /// The adaptive limit, when the provider adapts.
    pub adaptive_limit: Option<u32>,
}

impl PolicyState {
    /// The state of a provider whose stored state is `state`, at the store's time `now`.
    pub fn of(state: Option<&crate::store::ProviderState>, now: i64) -> PolicyState {
        let Some(s) = state else {
            return PolicyState {
                kind: "serving",
                until: None,
                reason: None,
                adaptive_limit: None,
            };
        };
        let waiting = s.paused_until > now;
        let kind = match (s.circuit_open, waiting) {
            (true, true) => "open",
            (true, false) => "half_open",
            (false, true) => "paused",
            (false, false) => "serving",
        };
        PolicyState {
            kind,
            until: waiting.then_some(s.paused_until),
            reason: (kind != "serving").then(|| s.reason.clone()).flatten(),
            adaptive_limit: s.adaptive_limit,
        }
    }
}
