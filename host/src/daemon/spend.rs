//! Daily spend caps, the daemon's side. The completer settles each batch's reservations
//! before it writes the batch (`Worker::settle_spend`); the notices that brings (80% of a
//! cap spent, or all of it, told once across the fleet) come here ([`tell`]): logged,
//! published, and, for a provider's cap, its lane paused until the next UTC day. The
//! claim's side is the store's (see [`crate::store::spend`]).

use tracing::warn;

use super::Shared;
use super::events::Event;
use crate::store::{SpendNotice, SpendScope};

/// Logs `notice`, publishes it, and pauses a provider whose cap is spent.
pub(super) fn tell(shared: &Shared, notice: SpendNotice) {
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
