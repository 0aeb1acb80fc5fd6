//! Daily spend caps, the daemon's side. The completer settles each batch's reservations
//! before it writes the batch (`Worker::settle_spend`); the notices that brings (80% of a
//! cap spent, or all of it, told once across the fleet) come here ([`tell`]): logged and
//! published. What holds the work back is the claim's side, the store's (see
//! [`crate::store::spend`]): a capped provider or tenant claims nothing more that day.

use tracing::warn;

use super::Shared;
use super::events::Event;
use crate::store::{SpendNotice, SpendScope};

/// Logs `notice` and publishes it (for a provider's cap reached, as a `lane_paused` too).
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
            "{who}: {spent}: its work waits for the next UTC day (in {wait}) or a higher \
             cap; running attempts run to their end"
        );
        // No pause to undo: claims read the day's spend, so the provider's lane takes
        // nothing more today, unless a reload raises its cap.
        if notice.scope == SpendScope::Provider {
            let for_ms = i64::try_from(crate::clock::until_next_day().as_millis()).unwrap_or(0);
            shared.events.publish(Event::LanePaused {
                provider: std::sync::Arc::from(notice.name.as_str()),
                reason: super::events::PauseReason::SpendCap { for_ms },
            });
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
