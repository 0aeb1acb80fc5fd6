//! Routes against the queue: reads the members' state for a choice ([`read_loads`]),
//! assigns routed submissions ([`assign`]) and moves work off members that strand it
//! ([`rebalance`]). The choices themselves are `crate::routes`', which does no I/O.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::limits::Stored;
use crate::routes::{Loads, Routes, plan_moves};
use crate::store::{Queue, StoreError};

/// Reads what a route's choice needs from the queue: the limits' stored inputs, the
/// members' open rows (the partial indexes only, whatever the size of the history) and,
/// when a member has a budget, the budgets' use.
pub async fn read_loads(queue: &dyn Queue, config: &Config) -> Result<Loads, StoreError> {
    let members: Vec<String> = config
        .routes
        .values()
        .flat_map(|r| r.providers.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let counts = queue.open_counts(&members).await?;
    let stored = Stored::read(queue).await?;
    let budgeted = members
        .iter()
        .any(|p| config.policy_for(p).budget.is_some());
    let used = if budgeted {
        queue.budget_usage().await?
    } else {
        BTreeMap::new()
    };
    Ok(Loads::of(config, &stored, &counts, &used))
}

/// Sends each execution of `batch` whose `provider` names a route to the member the
/// route picks, keeping the route's name in `route`. One read of the queue's state serves
/// the whole batch, which spreads as it is assigned.
pub async fn assign<'b>(
    queue: &dyn Queue,
    config: &Config,
    batch: impl IntoIterator<Item = &'b mut crate::model::NewExecution>,
    can: impl Fn(&crate::model::NewExecution, &str) -> bool,
) -> Result<(), StoreError> {
    let routes = Routes::new(config);
    let mut routed: Vec<&mut crate::model::NewExecution> = batch
        .into_iter()
        .filter(|n| n.route.is_none() && routes.get(&n.provider).is_some())
        .collect();
    if routed.is_empty() {
        return Ok(());
    }
    let mut loads = read_loads(queue, config).await?;
    for new in &mut routed {
        let can = |member: &str| can(new, member);
        if let Some(member) = routes.resolve(&new.provider, &loads, &can) {
            loads.add(&member);
            new.route = Some(std::mem::replace(&mut new.provider, member));
        }
    }
    Ok(())
}

/// Moves the pending work that routes placed on members that strand it (see
/// [`Member::strands`]) to the routes' healthy members, one statement per member and
/// route. Returns the members that took work, to wake. A route never strands work that
/// another member could run now. Rows move without their inputs being read, so only to a
/// member that `takes(to, from)`: one whose component takes all that `from`'s does.
pub async fn rebalance(
    queue: &dyn Queue,
    config: &Config,
    takes: impl Fn(&str, &str) -> bool,
) -> Result<Vec<String>, StoreError> {
    if config.routes.is_empty() {
        return Ok(Vec::new());
    }
    let mut loads = read_loads(queue, config).await?;
    let stranding: Vec<String> = loads
        .members()
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
            let can = |to: &str| takes(to, &from);
            let plan = plan_moves(route, &mut loads, &from, pending, &can);
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
