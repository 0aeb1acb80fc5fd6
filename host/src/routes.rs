//! Routes (load balancing): `[routes.NAME] providers = [...], strategy = "capacity" |
//! "ordered"`. A submission may name a route instead of a provider; [`Routes::resolve`]
//! picks the member at submit time, and a retryable failure may move the next attempt to
//! another member ([`Routes::next`]). The row keeps its route, and each attempt's history
//! entry names the provider it ran on.
//!
//! The choice reads the queue's own state ([`Loads::of`], read by `daemon::routing`):
//! running and pending rows per member, limits (from the limit's owner, `limits`), policy
//! states (paused, open) and budgets (a member whose `rpm` is spent this minute). The same
//! holds for the CLI, the API and every worker of a fleet. This module does no I/O: the
//! config owns the routes' settings, and `daemon::routing` reads the queue and writes the
//! choices.

use std::collections::BTreeMap;

use crate::config::Config;
pub use crate::config::{RouteConfig, Strategy};
use crate::limits::Stored;
use crate::store::StatusCounts;

/// One member's state when a route chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The effective limit (the adaptive one when it is lower).
    pub limit: u32,
    /// Running and pending rows.
    pub busy: u64,
    /// Not paused, not cooling down after its circuit opened, not out of its request
    /// budget, and served by a component somewhere. A member whose circuit probes (the
    /// cool-down is over) counts as healthy while it has no work, so that it gets the one
    /// execution that can close its circuit.
    pub healthy: bool,
    /// Out of its request budget, paused (or cooling down after its circuit opened) for
    /// more than [`STRAND_AFTER_MS`], or served by no component: the routed work pending on
    /// it moves to healthy members (`daemon::routing::rebalance`). A member whose circuit
    /// probes keeps its work: one of it is the probe that can close the circuit.
    pub strands: bool,
}

/// A pause longer than this strands a member's routed work; a shorter one it waits out.
pub const STRAND_AFTER_MS: i64 = 1_000;

/// The state a choice reads, for every provider.
#[derive(Debug, Clone, Default)]
pub struct Loads {
    members: BTreeMap<String, Member>,
}

impl Loads {
    /// The members' state from what the store holds: their limits as the limit's owner
    /// resolves them ([`Stored::limit_of`]), their open rows (`counts`), the budgets'
    /// use of the last minute (`used`) and their policy states.
    pub fn of(
        config: &Config,
        stored: &Stored,
        counts: &BTreeMap<String, StatusCounts>,
        used: &BTreeMap<String, (i64, i64)>,
    ) -> Loads {
        let now = stored.now;
        let known = &stored.defaults;
        let states = &stored.states;
        let mut loads = Loads::default();
        for route in config.routes.values() {
            for name in &route.providers {
                let limit = stored.limit_of(name, config).0.effective;
                let state = states.get(name);
                // A member whose requests this minute are spent takes no more work now.
                let spent = crate::limits::budget_spent(config, name, used);
                let busy = counts
                    .get(name)
                    .map_or(0, |c| c.running.saturating_add(c.pending));
                // An open circuit whose cool-down is over probes one attempt at a time: a
                // member with no work of its own then takes one, so that it can close.
                let probing = state.is_some_and(|s| s.circuit_open && s.paused_until <= now);
                let stopped =
                    spent || state.is_some_and(|s| s.paused_until > now) || (probing && busy > 0);
                // Stopped for more than a moment (a pause, an open circuit's cool-down), out
                // of budget, or served by no component: its routed work would wait on it.
                let strands = spent
                    || !known.contains_key(name)
                    || state.is_some_and(|s| s.paused_until > now.saturating_add(STRAND_AFTER_MS));
                loads.members.insert(
                    name.clone(),
                    Member {
                        name: name.clone(),
                        limit,
                        busy,
                        healthy: !stopped && known.contains_key(name),
                        strands,
                    },
                );
            }
        }
        loads
    }

    /// Every member's state.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Counts one more row on `member`, so that a batch spreads as it is assigned.
    pub fn add(&mut self, member: &str) {
        if let Some(m) = self.members.get_mut(member) {
            m.busy = m.busy.saturating_add(1);
        }
    }

    fn get(&self, name: &str) -> Member {
        self.members.get(name).cloned().unwrap_or(Member {
            name: name.to_string(),
            limit: 1,
            busy: 0,
            healthy: false,
            strands: true,
        })
    }
}

/// The routes of a config.
#[derive(Debug, Clone, Copy)]
pub struct Routes<'a> {
    config: &'a Config,
}

impl<'a> Routes<'a> {
    pub fn new(config: &'a Config) -> Self {
        Routes { config }
    }

    /// The route named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&'a RouteConfig> {
        self.config.routes.get(name)
    }

    /// The member a new execution of route `name` goes to, among those that `can` run it
    /// (its component has the capabilities it needs), or `None` when `name` is not a route.
    pub fn resolve(&self, name: &str, loads: &Loads, can: &dyn Fn(&str) -> bool) -> Option<String> {
        let route = self.get(name)?;
        Some(pick(route, loads, None, can))
    }

    /// The member the next attempt of an execution of route `name`, which failed on
    /// `failed`, runs on: another healthy member when the strategy finds one, else `None`
    /// (it stays).
    pub fn next(
        &self,
        name: &str,
        failed: &str,
        loads: &Loads,
        can: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        let route = self.get(name)?;
        let chosen = pick(route, loads, Some(failed), can);
        (chosen != failed).then_some(chosen)
    }
}

/// Where the `pending` rows that `route` placed on `from` go, by the route's strategy, as
/// `(member, rows)` in order: only to healthy members other than `from`, and counted on
/// `loads` as they are placed, so that a capacity route spreads them by free share. Empty
/// when no other member is healthy: the work waits where it is.
pub fn plan_moves(
    route: &RouteConfig,
    loads: &mut Loads,
    from: &str,
    pending: u64,
    can: &dyn Fn(&str) -> bool,
) -> Vec<(String, u64)> {
    let mut plan: Vec<(String, u64)> = Vec::new();
    for _ in 0..pending {
        let to = pick(route, loads, Some(from), can);
        if to == from || !loads.get(&to).healthy || !can(&to) {
            break;
        }
        loads.add(&to);
        match plan.iter_mut().find(|(member, _)| *member == to) {
            Some((_, n)) => *n += 1,
            None => plan.push((to, 1)),
        }
    }
    plan
}

/// The member of `route` to use, never `avoid` when another healthy member exists. With no
/// healthy member the first one (other than `avoid` when possible) is used: the execution
/// waits there instead of being refused.
pub fn pick(
    route: &RouteConfig,
    loads: &Loads,
    avoid: Option<&str>,
    can: &dyn Fn(&str) -> bool,
) -> String {
    // A member without what the execution needs is no member for it (when another has).
    let all: Vec<Member> = route.providers.iter().map(|n| loads.get(n)).collect();
    let members: Vec<Member> = if all.iter().any(|m| can(&m.name)) {
        all.into_iter().filter(|m| can(&m.name)).collect()
    } else {
        all
    };
    let candidates: Vec<&Member> = members
        .iter()
        .filter(|m| m.healthy && Some(m.name.as_str()) != avoid)
        .collect();
    let chosen = match route.strategy {
        Strategy::Ordered => candidates.first().copied(),
        // The most free share of the limit: (limit − busy) ÷ limit, compared without
        // division as busy ÷ limit (smaller is freer); ties go to the earlier member.
        Strategy::Capacity => candidates.iter().copied().min_by(|a, b| {
            let left = u128::from(a.busy) * u128::from(b.limit);
            let right = u128::from(b.busy) * u128::from(a.limit);
            left.cmp(&right)
        }),
    };
    match chosen {
        Some(m) => m.name.clone(),
        None => members
            .iter()
            .find(|m| Some(m.name.as_str()) != avoid)
            .or(members.first())
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_routes_are_refused_with_the_key_named() {
        for (toml, key) in [
            ("[routes.chat]\nproviders = []", "routes.chat.providers"),
            (
                "[routes.chat]\nproviders = [\"a\", \"a\"]",
                "routes.chat.providers[1]",
            ),
            (
                "[routes.chat]\nproviders = [\"Bad\"]",
                "routes.chat.providers[0]",
            ),
            (
                "[routes.chat]\nproviders = [\"a\"]\nstrategy = \"random\"",
                "strategy",
            ),
            ("[routes.chat]\nproviders = [\"a\"]\nweight = 1", "weight"),
            (
                "[providers.chat]\n[routes.chat]\nproviders = [\"a\"]",
                "routes.chat",
            ),
            (
                "[routes.chat]\nproviders = [\"more\"]\n[routes.more]\nproviders = [\"a\"]",
                "routes.chat.providers[0]",
            ),
        ] {
            let error = Config::from_toml(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        let ok = Config::from_toml(
            "[routes.chat]\nproviders = [\"claude\", \"openai\"]\nstrategy = \"ordered\"",
        )
        .unwrap();
        assert_eq!(ok.routes["chat"].strategy, Strategy::Ordered);
    }

    fn loads(members: &[(&str, u32, u64, bool)]) -> Loads {
        Loads {
            members: members
                .iter()
                .map(|(n, limit, busy, healthy)| {
                    (
                        n.to_string(),
                        Member {
                            name: n.to_string(),
                            limit: *limit,
                            busy: *busy,
                            healthy: *healthy,
                            strands: !*healthy,
                        },
                    )
                })
                .collect(),
        }
    }

    fn route(strategy: Strategy) -> RouteConfig {
        RouteConfig {
            providers: vec!["a".into(), "b".into(), "c".into()],
            strategy,
        }
    }

    #[test]
    fn capacity_picks_the_freest_share_and_skips_the_unhealthy() {
        let r = route(Strategy::Capacity);
        // a: 3/4 busy, b: 1/2, c: 0/1 but unhealthy.
        let l = loads(&[("a", 4, 3, true), ("b", 2, 1, true), ("c", 1, 0, false)]);
        assert_eq!(pick(&r, &l, None, &|_| true), "b");
        // A batch spreads by share: 10 rows over limits 4 and 2 go about 2:1.
        let mut l = loads(&[("a", 4, 0, true), ("b", 2, 0, true), ("c", 1, 0, false)]);
        let mut got = BTreeMap::new();
        for _ in 0..12 {
            let m = pick(&r, &l, None, &|_| true);
            l.add(&m);
            *got.entry(m).or_insert(0) += 1;
        }
        assert_eq!(
            got,
            BTreeMap::from([("a".to_string(), 8), ("b".to_string(), 4)])
        );
    }

    #[test]
    fn ordered_uses_the_first_healthy_member_and_falls_back() {
        let r = route(Strategy::Ordered);
        let l = loads(&[("a", 1, 50, true), ("b", 1, 0, true), ("c", 1, 0, true)]);
        assert_eq!(pick(&r, &l, None, &|_| true), "a");
        let l = loads(&[("a", 1, 0, false), ("b", 1, 0, true), ("c", 1, 0, true)]);
        assert_eq!(pick(&r, &l, None, &|_| true), "b");
        // A retry avoids the member that failed.
        let l = loads(&[("a", 1, 0, true), ("b", 1, 0, true), ("c", 1, 0, true)]);
        assert_eq!(pick(&r, &l, Some("a"), &|_| true), "b");
        // Nothing healthy: the first member, so the work waits instead of being refused.
        let l = loads(&[("a", 1, 0, false), ("b", 1, 0, false), ("c", 1, 0, false)]);
        assert_eq!(pick(&r, &l, None, &|_| true), "a");
        assert_eq!(pick(&r, &l, Some("a"), &|_| true), "b");
    }

    /// A member whose circuit opened strands its routed work while it cools down; once the
    /// cool-down is over it takes one execution (its probe) and keeps it, so that a route
    /// whose first member recovers comes back to it.
    #[test]
    fn an_open_member_strands_work_while_cooling_and_takes_one_probe_after() {
        let config =
            Config::from_toml("[routes.r]\nproviders = [\"a\", \"b\"]\nstrategy = \"ordered\"")
                .unwrap();
        let open = |paused_until| crate::store::ProviderState {
            paused_until,
            circuit_open: true,
            ..Default::default()
        };
        let stored = |state| Stored {
            defaults: BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)]),
            states: BTreeMap::from([("a".to_string(), state)]),
            now: 10_000,
            ..Default::default()
        };
        let counts = |busy: u64| {
            BTreeMap::from([(
                "a".to_string(),
                StatusCounts {
                    pending: busy,
                    ..Default::default()
                },
            )])
        };
        let none = BTreeMap::new();
        let r = &config.routes["r"];
        // Cooling down for a minute: strands its work, and new work goes to `b`.
        let l = Loads::of(&config, &stored(open(70_000)), &counts(3), &none);
        assert!(l.get("a").strands && !l.get("a").healthy);
        assert_eq!(pick(r, &l, None, &|_| true), "b");
        // The cool-down is over and it has no work: it takes the next one, its probe.
        let l = Loads::of(&config, &stored(open(10_000)), &counts(0), &none);
        assert!(!l.get("a").strands && l.get("a").healthy);
        assert_eq!(pick(r, &l, None, &|_| true), "a");
        // With its probe pending, it keeps it and takes no more.
        let l = Loads::of(&config, &stored(open(10_000)), &counts(1), &none);
        assert!(!l.get("a").strands && !l.get("a").healthy);
        assert_eq!(pick(r, &l, None, &|_| true), "b");
    }

    #[test]
    fn stranded_work_moves_by_the_routes_strategy_and_only_to_healthy_members() {
        // Ordered: everything to the first healthy member after the one that strands it.
        let mut l = loads(&[("a", 4, 13, false), ("b", 4, 0, true), ("c", 4, 0, true)]);
        assert_eq!(
            plan_moves(&route(Strategy::Ordered), &mut l, "a", 13, &|_| true),
            vec![("b".to_string(), 13)]
        );
        // Capacity: by free share, b (limit 4) twice as much as c (limit 2).
        let mut l = loads(&[("a", 4, 12, false), ("b", 4, 0, true), ("c", 2, 0, true)]);
        assert_eq!(
            plan_moves(&route(Strategy::Capacity), &mut l, "a", 12, &|_| true),
            vec![("b".to_string(), 8), ("c".to_string(), 4)]
        );
        // Nothing healthy elsewhere: the work waits where it is.
        let mut l = loads(&[("a", 4, 5, false), ("b", 4, 0, false), ("c", 4, 0, false)]);
        assert!(plan_moves(&route(Strategy::Ordered), &mut l, "a", 5, &|_| true).is_empty());
    }
}
