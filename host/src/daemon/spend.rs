//! Daily spend caps, the daemon's side: each attempt's end settles its reservation, and the
//! notices that brings (80% of a cap spent, or all of it, told once across the fleet) are
//! logged, published, and, for a provider's cap, pause its lane until the next UTC day.
//! The claim's side is the store's (see [`crate::store::spend`]).

use tracing::warn;

use super::Shared;
use super::events::{Event, Spent};
use crate::model::Execution;
use crate::store::{Spend, SpendEnd, SpendNotice, SpendScope};

/// Settles the spend reservation of `execution`'s attempt on `provider` with what it cost
/// (0 unless it completed with a price), and acts on the notices it brings. A settle that
/// fails leaves the estimate reserved until the upkeep lets it go: the cap errs on the
/// safe side.
pub(super) async fn settle(
    shared: &Shared,
    provider: &str,
    caps: &Spend,
    execution: &Execution,
    spent: Option<&Spent>,
) {
    let tenant = execution.tenant.as_deref().unwrap_or("");
    // Neither capped: it reserved nothing, and its cost counts against no cap. (One claimed
    // under caps a reload took away is let go by the upkeep, see `release`.)
    if !caps.applies(tenant) {
        return;
    }
    let caps = Spend {
        day: crate::clock::day(),
        ..caps.clone()
    };
    let end = SpendEnd {
        id: execution.id,
        provider,
        tenant,
        usd: spent.and_then(|s| s.cost_usd).unwrap_or(0.0),
    };
    match shared.queue.settle_spend(&end, &caps).await {
        Ok(notices) => {
            for notice in notices {
                tell(shared, notice);
            }
        }
        Err(e) => warn!(
            "execution {}: settling its spend reservation: {e}",
            execution.id
        ),
    }
}

/// Logs `notice`, publishes it, and pauses a provider whose cap is spent.
fn tell(shared: &Shared, notice: SpendNotice) {
    let who = match notice.scope {
        SpendScope::Provider => format!("provider {}", notice.name),
        SpendScope::Tenant if notice.name.is_empty() => "the executions without a tenant".into(),
        SpendScope::Tenant => format!("tenant {}", notice.name),
    };
    let spent = format!(
        "{:.2} of its daily_usd {:.2} spent today ({} UTC)",
        notice.spent_usd,
        notice.cap_usd,
        crate::clock::date(crate::clock::day())
    );
    if !notice.reached {
        warn!("{who}: {spent}: 80% of its spend cap");
    } else {
        let wait = crate::clock::until_next_day();
        let wait = match wait.as_secs() {
            s if s < 120 => format!("{s} s"),
            s => format!("{} min", s.div_ceil(60)),
        };
        warn!(
            "{who}: {spent}: its work waits for the next UTC day (in {wait}); running \
             attempts run to their end"
        );
        if notice.scope == SpendScope::Provider
            && let Some(lane) = shared.registry.get(&notice.name)
        {
            shared.governor.pause_for_spend(
                &lane,
                format!("spend cap: {spent}: claims wait for the next UTC day"),
            );
        }
    }
    shared.events.publish(Event::SpendCap(notice));
}

/// The upkeep's part: lets go the reservations of rows that ended without a settle (see
/// [`crate::store::Queue::release_spend`]). Runs while any cap is set, and once after the
/// last one goes.
pub(super) async fn release(shared: &Shared) {
    match shared.queue.release_spend().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!("let go {n} spend reservation(s) of rows no longer running"),
        Err(e) => tracing::error!("the spend caps' upkeep: {e}"),
    }
}
