//! The one owner of a provider's limit. Every part that needs a limit (the registry, the
//! policies, routes, the API, `lanes status` and `lanes limits`) asks this module; none
//! rebuilds the precedence. Its rule, in order:
//!
//! 1. **Sources.** The most specific wins: a run-time limit (`lanes limits set`), then
//!    config (`[providers.NAME] limit`), then the component's default, then
//!    `fallback_limit` for a provider that nothing describes.
//! 2. **Adaptive.** An adaptive limit caps it (never below 1). The result is the
//!    *effective* limit: the fleet's, what `limits.effective` means in the API, the metrics
//!    and the dashboard.
//! 3. **Share.** On a fleet each live worker runs at most its even share of it, rounded up
//!    ([`share`]).
//! 4. **Gates.** What may be *claimed* now ([`claim_cap`], [`claimable`]): nothing while
//!    paused, one at a time while a pause ramps out or an open circuit probes, nothing while
//!    the request budget is spent, and no more than the instance pool has free. The claim
//!    statement enforces the pause, the probe and the budget fleet-wide; the producer
//!    applies the ramp, and its slots take the pool's instances (`daemon::pool`).
//!
//! [`LimitInputs::resolve`] is a pure function of stored inputs, so the daemon and the
//! CLI (which works with no daemon running) compute the same limit. [`apply`] is the only
//! caller of `Lane::set_limit`. The claim cap of step 4 is also written once per SQL
//! dialect, in the store's claims (`store::sqlite`'s `claim_cap` and PostgreSQL's
//! `lanes_claim`); `tests/all/store.rs` (`claim_caps_match_their_rust_twin`) holds them
//! equal to [`claim_cap`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::store::{ProviderState, Queue, StoreError};

/// Where a limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    Runtime,
    Config,
    Component,
    Fallback,
}

/// Every stored input of one provider's limit, before any is applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitInputs {
    pub provider: String,
    /// The component's `info()` default, when a component serves (or served) the provider.
    pub default: Option<u32>,
    pub configured: Option<u32>,
    pub runtime: Option<u32>,
    /// `fallback_limit`.
    pub fallback: u32,
    /// The adaptive limit, when the provider adapts.
    pub adaptive: Option<u32>,
}

/// Every source of one provider's limit, and the one in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitView {
    pub provider: String,
    /// The component's `info()` default, when a component serves the provider.
    pub default: Option<u32>,
    pub configured: Option<u32>,
    pub runtime: Option<u32>,
    /// The adaptive limit, when the provider adapts: it caps the effective one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<u32>,
    /// The limit of its sources, capped by the adaptive one: the fleet's limit.
    pub effective: u32,
    pub source: LimitSource,
}

impl LimitInputs {
    /// The inputs of `provider` under `config`, from what the store holds.
    pub fn stored(provider: &str, config: &Config, stored: &Stored) -> Self {
        LimitInputs {
            provider: provider.to_string(),
            default: stored.defaults.get(provider).copied(),
            configured: config.providers.get(provider).and_then(|p| p.limit),
            runtime: stored.runtime.get(provider).copied(),
            fallback: config.fallback_limit,
            adaptive: stored.states.get(provider).and_then(|s| s.adaptive_limit),
        }
    }

    /// The limit of the sources alone (steps 1 of the rule), with where it came from.
    pub fn sourced(&self) -> (u32, LimitSource) {
        let (limit, source) = self
            .runtime
            .map(|l| (l, LimitSource::Runtime))
            .or(self.configured.map(|l| (l, LimitSource::Config)))
            .or(self.default.map(|l| (l, LimitSource::Component)))
            .unwrap_or((self.fallback, LimitSource::Fallback));
        (limit.max(1), source)
    }

    /// Steps 1 and 2 of the rule: the effective limit, and every source beside it.
    pub fn resolve(&self) -> LimitView {
        let (sourced, source) = self.sourced();
        let effective = match self.adaptive {
            Some(a) => sourced.min(a.max(1)),
            None => sourced,
        };
        LimitView {
            provider: self.provider.clone(),
            default: self.default,
            configured: self.configured,
            runtime: self.runtime,
            adaptive: self.adaptive,
            effective,
            source,
        }
    }
}

/// One worker's even share of a fleet's `limit` among `workers`, rounded up: at least 1
/// (step 3 of the rule).
pub fn share(limit: u32, workers: u32) -> u32 {
    limit.div_ceil(workers.max(1)).max(1)
}

/// The most rows of a provider that may run at the database's time `now` under `limit`,
/// given its policy state: none while paused, one while an open circuit probes, and at
/// most the adaptive limit (step 4's part that the claim statement enforces fleet-wide).
///
/// The Rust twin of the claim's SQL: `store::sqlite`'s `claim_cap` and PostgreSQL's
/// `lanes_claim` (migrations) write the same rule, and a store test holds them equal.
pub fn claim_cap(limit: u32, state: Option<&ProviderState>, now: i64) -> u32 {
    let Some(s) = state else {
        return limit;
    };
    if s.paused_until > now {
        0
    } else if s.circuit_open {
        limit.min(1)
    } else {
        limit.min(s.adaptive_limit.unwrap_or(limit))
    }
}

/// Whether `provider`'s request budget (`rpm`) is spent in the last minute, given each
/// budgeted provider's `(requests, tokens)` of it (`Queue::budget_usage`): no claim then
/// takes its work (a gate of step 4), and routes skip it.
pub fn budget_spent(config: &Config, provider: &str, used: &BTreeMap<String, (i64, i64)>) -> bool {
    config.policy_for(provider).budget.is_some_and(|b| {
        let requests = used.get(provider).map_or(0, |u| u.0);
        b.rpm.is_some_and(|rpm| requests >= i64::from(rpm))
    })
}

/// What holds a worker's claims back beside its free slots (step 4 of the rule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gate {
    /// A pause (a provider's wait, an open circuit's cool-down) is in place.
    pub paused: bool,
    /// Claims ramp up after a pause, or an open circuit probes: one at a time.
    pub one_at_a_time: bool,
    /// The request budget of the minute is spent.
    pub budget_spent: bool,
    /// Free instances of the pool, when the engine has one.
    pub pool_free: Option<u32>,
}

/// How many rows a worker may claim now into `free` slots, behind `gate`.
pub fn claimable(free: u32, gate: &Gate) -> u32 {
    if gate.paused || gate.budget_spent {
        return 0;
    }
    let mut n = free;
    if gate.one_at_a_time {
        n = n.min(1);
    }
    if let Some(pool) = gate.pool_free {
        n = n.min(pool);
    }
    n
}

/// A pending row as [`fair_pick`] weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRow {
    pub id: i64,
    /// `""` for a row without a tenant: those are one tenant of their own.
    pub tenant: String,
    pub resume: bool,
    pub priority: i32,
    /// Its `not_before` has passed.
    pub due: bool,
}

/// The rows a claim of `take` takes from `pending`, in order: the last step of the rule,
/// how a lane is shared among tenants. `running` holds each tenant's running rows,
/// `weights` the weights that differ from 1 (round robin: none).
///
/// The order: interrupted rows (`resume`) first, then higher priority, then the tenant with
/// the fewest running for its weight, counting the rows this claim gives it ((running + k
/// − 1) ÷ weight for its k-th), then the lower id. A tenant at `tenant_limit` gets none.
///
/// The Rust twin of the claim in each dialect (SQLite's `claim_parts`, PostgreSQL's
/// `lanes_claim`); the store test `fair_claims_match_their_rust_twin` holds them equal.
pub fn fair_pick(
    pending: &[PendingRow],
    running: &BTreeMap<String, u32>,
    weights: &BTreeMap<String, f64>,
    tenant_limit: Option<u32>,
    take: usize,
) -> Vec<i64> {
    let mut by_tenant: BTreeMap<&str, Vec<&PendingRow>> = BTreeMap::new();
    for row in pending.iter().filter(|r| r.due) {
        by_tenant.entry(&row.tenant).or_default().push(row);
    }
    // (resume, priority, share, id), smallest first.
    let mut keyed: Vec<(bool, std::cmp::Reverse<i32>, f64, i64)> = Vec::new();
    for (tenant, mut rows) in by_tenant {
        rows.sort_by_key(|r| (!r.resume, std::cmp::Reverse(r.priority), r.id));
        let n = running.get(tenant).copied().unwrap_or(0);
        let w = weights.get(tenant).copied().unwrap_or(1.0);
        let room = tenant_limit.map_or(usize::MAX, |l| {
            usize::try_from(l.saturating_sub(n)).unwrap_or(usize::MAX)
        });
        for (k, row) in rows.into_iter().take(room).enumerate() {
            let count = f64::from(n) + f64::from(u32::try_from(k).unwrap_or(u32::MAX));
            keyed.push((
                !row.resume,
                std::cmp::Reverse(row.priority),
                count / w,
                row.id,
            ));
        }
    }
    keyed.sort_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then(a.2.total_cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().take(take).map(|k| k.3).collect()
}

/// What the store holds about every provider's limit: read once by the API, the CLI and
/// routes, each then resolving the providers it shows.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The default limit of each provider's component, as the fleet recorded it.
    pub defaults: BTreeMap<String, u32>,
    /// Run-time limits.
    pub runtime: BTreeMap<String, u32>,
    /// Policy states (pauses, circuits, adaptive limits).
    pub states: BTreeMap<String, ProviderState>,
    /// The database's clock when the states were read (Unix ms).
    pub now: i64,
}

impl Stored {
    /// Reads the stored inputs of every provider's limit.
    pub async fn read(queue: &dyn Queue) -> Result<Stored, StoreError> {
        let defaults = queue
            .providers()
            .await?
            .into_iter()
            .map(|p| (p.name, p.default_limit))
            .collect();
        let runtime = queue.limits().await?;
        let (now, states) = queue.provider_states().await?;
        Ok(Stored {
            defaults,
            runtime,
            states,
            now,
        })
    }

    /// The limit of `provider` under `config`, and what may be claimed of it now across
    /// the fleet ([`claim_cap`]).
    pub fn limit_of(&self, provider: &str, config: &Config) -> (LimitView, u32) {
        let view = LimitInputs::stored(provider, config, self).resolve();
        let cap = claim_cap(view.effective, self.states.get(provider), self.now);
        (view, cap)
    }
}

/// Resizes `lane` to the effective limit of `inputs`, which become the lane's. The only
/// caller of `Lane::set_limit`. Returns the old and new limits when it changed.
pub fn apply(lane: &crate::daemon::lane::Lane, inputs: LimitInputs) -> Option<(u32, u32)> {
    let effective = inputs.resolve().effective;
    lane.set_inputs(inputs);
    let old = lane.set_limit(effective);
    (old != effective).then_some((old, effective))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(default: Option<u32>, configured: Option<u32>, runtime: Option<u32>) -> LimitInputs {
        LimitInputs {
            provider: "a".into(),
            default,
            configured,
            runtime,
            fallback: 7,
            adaptive: None,
        }
    }

    #[test]
    fn most_specific_source_wins() {
        assert_eq!(inputs(Some(2), Some(3), Some(4)).resolve().effective, 4);
        assert_eq!(
            inputs(Some(2), Some(3), None).resolve().source,
            LimitSource::Config
        );
        assert_eq!(inputs(Some(2), None, None).resolve().effective, 2);
        let unknown = inputs(None, None, None).resolve();
        assert_eq!(
            (unknown.effective, unknown.source),
            (7, LimitSource::Fallback)
        );
    }

    #[test]
    fn the_adaptive_limit_caps_the_sources_and_never_drops_below_one() {
        let mut i = inputs(None, Some(10), None);
        i.adaptive = Some(4);
        assert_eq!(i.resolve().effective, 4);
        i.adaptive = Some(0);
        assert_eq!(i.resolve().effective, 1);
        i.adaptive = Some(40);
        assert_eq!(i.resolve().effective, 10, "adaptive never raises it");
    }

    #[test]
    fn gates_hold_claims_back_in_order() {
        let open = Gate::default();
        assert_eq!(claimable(5, &open), 5);
        assert_eq!(
            claimable(
                5,
                &Gate {
                    one_at_a_time: true,
                    ..open
                }
            ),
            1
        );
        assert_eq!(
            claimable(
                5,
                &Gate {
                    paused: true,
                    ..open
                }
            ),
            0
        );
        assert_eq!(
            claimable(
                5,
                &Gate {
                    budget_spent: true,
                    ..open
                }
            ),
            0
        );
        assert_eq!(
            claimable(
                5,
                &Gate {
                    pool_free: Some(2),
                    ..open
                }
            ),
            2
        );
        let state = ProviderState {
            paused_until: 100,
            ..ProviderState::default()
        };
        assert_eq!(claim_cap(5, Some(&state), 99), 0);
        assert_eq!(claim_cap(5, Some(&state), 100), 5);
        assert_eq!(share(10, 3), 4);
    }
}
