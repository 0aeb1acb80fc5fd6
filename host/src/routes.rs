//! Routes (load balancing): `[routes.NAME] providers = [...], strategy = "capacity" |
//! "ordered"`. A submission may name a route instead of a provider; [`Routes::resolve`]
//! picks the member at submit time, and a retryable failure may move the next attempt to
//! another member ([`Routes::next`]). The row keeps its route, and each attempt's history
//! entry names the provider it ran on.
//!
//! The choice reads the queue's own state ([`Loads::read`]): running and pending rows per
//! provider, limits (run-time, config, the component's default), policy states (paused,
//! open) and budgets (a member whose `rpm` is spent this minute). The same holds for the
//! CLI, the API and every worker of a fleet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::{Queue, StoreError};

/// How a route picks its member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The member with the most free share of its effective limit, skipping paused and open
    /// members.
    #[default]
    Capacity,
    /// The first healthy member, falling back in order.
    Ordered,
}

/// `[routes.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The member providers, in order.
    pub providers: Vec<String>,
    pub strategy: Strategy,
}

impl RouteConfig {
    /// What is wrong with this route, as `(key, reason)`.
    pub fn problems(&self, name: &str, config: &Config) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = crate::model::validate_provider_name(name) {
            problems.push((String::new(), e));
        }
        if config.providers.contains_key(name) {
            problems.push((
                String::new(),
                format!("`{name}` is also a provider: a route needs a name of its own"),
            ));
        }
        if self.providers.is_empty() {
            problems.push(("providers".into(), "must name at least one provider".into()));
        }
        for (i, member) in self.providers.iter().enumerate() {
            if let Err(e) = crate::model::validate_provider_name(member) {
                problems.push((format!("providers[{i}]"), e));
            } else if self.providers[..i].contains(member) {
                problems.push((
                    format!("providers[{i}]"),
                    format!("`{member}` is named twice"),
                ));
            } else if config.routes.contains_key(member) {
                problems.push((
                    format!("providers[{i}]"),
                    format!("`{member}` is a route: members must be providers"),
                ));
            }
        }
        problems
    }
}

/// One member's state when a route chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The effective limit (the adaptive one when it is lower).
    pub limit: u32,
    /// Running and pending rows.
    pub busy: u64,
    /// Not paused, not open, not out of its request budget, and served by a component
    /// somewhere.
    pub healthy: bool,
    /// Open, out of its request budget, paused for more than [`STRAND_AFTER_MS`], or
    /// served by no component: the routed work pending on it moves to healthy members
    /// ([`rebalance`]).
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
    /// Reads running and pending counts, limits and policy states from the queue.
    pub async fn read(queue: &dyn Queue, config: &Config) -> Result<Loads, StoreError> {
        let members: Vec<String> = config
            .routes
            .values()
            .flat_map(|r| r.providers.iter().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Only the members' open rows: the count reads the partial indexes, whatever the
        // size of the history (`counts` read the whole table, for each routed submission).
        let counts = queue.open_counts(&members).await?;
        let limits = queue.limits().await?;
        let known: BTreeMap<String, u32> = queue
            .providers()
            .await?
            .into_iter()
            .map(|p| (p.name, p.default_limit))
            .collect();
        let (now, states) = queue.provider_states().await?;
        let budgeted = config
            .routes
            .values()
            .flat_map(|r| &r.providers)
            .any(|p| config.policy_for(p).budget.is_some());
        let used = if budgeted {
            queue.budget_usage().await?
        } else {
            BTreeMap::new()
        };
        let mut loads = Loads::default();
        for route in config.routes.values() {
            for name in &route.providers {
                let configured = config.providers.get(name).and_then(|p| p.limit);
                let mut limit = limits
                    .get(name)
                    .copied()
                    .or(configured)
                    .or_else(|| known.get(name).copied())
                    .unwrap_or(config.fallback_limit)
                    .max(1);
                let state = states.get(name);
                if let Some(adaptive) = state.and_then(|s| s.adaptive_limit) {
                    limit = limit.min(adaptive.max(1));
                }
                // A member whose requests this minute are spent takes no more work now.
                let spent = config.policy_for(name).budget.is_some_and(|b| {
                    let requests = used.get(name).map_or(0, |u| u.0);
                    b.rpm.is_some_and(|rpm| requests >= i64::from(rpm))
                });
                let stopped =
                    spent || state.is_some_and(|s| s.paused_until > now || s.circuit_open);
                // Stopped for more than a moment: its routed work would wait on it.
                let strands = spent
                    || !known.contains_key(name)
                    || state.is_some_and(|s| {
                        s.circuit_open || s.paused_until > now.saturating_add(STRAND_AFTER_MS)
                    });
                let busy = counts
                    .get(name)
                    .map_or(0, |c| c.running.saturating_add(c.pending));
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
        Ok(loads)
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

    /// The member a new execution of route `name` goes to, or `None` when `name` is not a
    /// route.
    pub fn resolve(&self, name: &str, loads: &Loads) -> Option<String> {
        let route = self.get(name)?;
        Some(pick(route, loads, None))
    }

    /// The member the next attempt of an execution of route `name`, which failed on
    /// `failed`, runs on: another healthy member when the strategy finds one, else `None`
    /// (it stays).
    pub fn next(&self, name: &str, failed: &str, loads: &Loads) -> Option<String> {
        let route = self.get(name)?;
        let chosen = pick(route, loads, Some(failed));
        (chosen != failed).then_some(chosen)
    }
}

/// Sends each execution of `batch` whose `provider` names a route to the member the
/// route picks, keeping the route's name in `route`. One read of the queue's state serves
/// the whole batch, which spreads as it is assigned.
pub async fn assign<'b>(
    queue: &dyn Queue,
    config: &Config,
    batch: impl IntoIterator<Item = &'b mut crate::model::NewExecution>,
) -> Result<(), StoreError> {
    let routes = Routes::new(config);
    let mut routed: Vec<&mut crate::model::NewExecution> = batch
        .into_iter()
        .filter(|n| n.route.is_none() && routes.get(&n.provider).is_some())
        .collect();
    if routed.is_empty() {
        return Ok(());
    }
    let mut loads = Loads::read(queue, config).await?;
    for new in &mut routed {
        if let Some(member) = routes.resolve(&new.provider, &loads) {
            loads.add(&member);
            new.route = Some(std::mem::replace(&mut new.provider, member));
        }
    }
    Ok(())
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
) -> Vec<(String, u64)> {
    let mut plan: Vec<(String, u64)> = Vec::new();
    for _ in 0..pending {
        let to = pick(route, loads, Some(from));
        if to == from || !loads.get(&to).healthy {
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

/// Moves the pending work that routes placed on members that strand it (see
/// [`Member::strands`]) to the routes' healthy members, one statement per member and
/// route. Returns the members that took work, to wake. A route never strands work that
/// another member could run now.
pub async fn rebalance(queue: &dyn Queue, config: &Config) -> Result<Vec<String>, StoreError> {
    if config.routes.is_empty() {
        return Ok(Vec::new());
    }
    let mut loads = Loads::read(queue, config).await?;
    let stranding: Vec<String> = loads
        .members
        .values()
        .filter(|m| m.strands && m.busy > 0)
        .map(|m| m.name.clone())
        .collect();
    let mut took = std::collections::BTreeSet::new();
    for from in stranding {
        for (name, pending) in queue.pending_routed(&from).await? {
            // A route no longer in the config, or no longer with this member: its rows
            // stay where they are.
            let Some(route) = config.routes.get(&name) else {
                continue;
            };
            if !route.providers.contains(&from) {
                continue;
            }
            let plan = plan_moves(route, &mut loads, &from, pending);
            if plan.is_empty() {
                continue;
            }
            let moved = queue.move_routed(&from, &name, &plan).await?;
            let to: Vec<String> = plan.iter().map(|(m, n)| format!("{n} to `{m}`")).collect();
            tracing::info!(
                "route `{name}`: `{from}` cannot run its work now (open, paused, out of \
                 budget or without a component): {moved} pending execution(s) moved, {}",
                to.join(", ")
            );
            took.extend(plan.into_iter().map(|(m, _)| m));
        }
    }
    Ok(took.into_iter().collect())
}

/// The member of `route` to use, never `avoid` when another healthy member exists. With no
/// healthy member the first one (other than `avoid` when possible) is used: the execution
/// waits there instead of being refused.
pub fn pick(route: &RouteConfig, loads: &Loads, avoid: Option<&str>) -> String {
    let members: Vec<Member> = route.providers.iter().map(|n| loads.get(n)).collect();
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
        assert_eq!(pick(&r, &l, None), "b");
        // A batch spreads by share: 10 rows over limits 4 and 2 go about 2:1.
        let mut l = loads(&[("a", 4, 0, true), ("b", 2, 0, true), ("c", 1, 0, false)]);
        let mut got = BTreeMap::new();
        for _ in 0..12 {
            let m = pick(&r, &l, None);
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
        assert_eq!(pick(&r, &l, None), "a");
        let l = loads(&[("a", 1, 0, false), ("b", 1, 0, true), ("c", 1, 0, true)]);
        assert_eq!(pick(&r, &l, None), "b");
        // A retry avoids the member that failed.
        let l = loads(&[("a", 1, 0, true), ("b", 1, 0, true), ("c", 1, 0, true)]);
        assert_eq!(pick(&r, &l, Some("a")), "b");
        // Nothing healthy: the first member, so the work waits instead of being refused.
        let l = loads(&[("a", 1, 0, false), ("b", 1, 0, false), ("c", 1, 0, false)]);
        assert_eq!(pick(&r, &l, None), "a");
        assert_eq!(pick(&r, &l, Some("a")), "b");
    }

    #[test]
    fn stranded_work_moves_by_the_routes_strategy_and_only_to_healthy_members() {
        // Ordered: everything to the first healthy member after the one that strands it.
        let mut l = loads(&[("a", 4, 13, false), ("b", 4, 0, true), ("c", 4, 0, true)]);
        assert_eq!(
            plan_moves(&route(Strategy::Ordered), &mut l, "a", 13),
            vec![("b".to_string(), 13)]
        );
        // Capacity: by free share, b (limit 4) twice as much as c (limit 2).
        let mut l = loads(&[("a", 4, 12, false), ("b", 4, 0, true), ("c", 2, 0, true)]);
        assert_eq!(
            plan_moves(&route(Strategy::Capacity), &mut l, "a", 12),
            vec![("b".to_string(), 8), ("c".to_string(), 4)]
        );
        // Nothing healthy elsewhere: the work waits where it is.
        let mut l = loads(&[("a", 4, 5, false), ("b", 4, 0, false), ("c", 4, 0, false)]);
        assert!(plan_moves(&route(Strategy::Ordered), &mut l, "a", 5).is_empty());
    }
}
