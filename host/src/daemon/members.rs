//! Fleet membership, on a shared queue: this worker records the providers it serves, counts
//! the live workers that serve each, and keeps each lane at an even share of the provider's
//! fleet-wide limit ([`Lane::set_workers`](super::lane::Lane::set_workers)). Without it,
//! work stays with whichever worker claimed first: a worker refills the slots it frees
//! before the others hear of them.
//!
//! The record is renewed every third of `lease_ms` and lapses after `lease_ms`, as leases
//! do, so a worker killed with -9 gives its share back about when its executions are
//! reclaimed. A worker that stops gracefully leaves at once. Joining or leaving notifies the
//! fleet ([`Change::Workers`](crate::store::Change::Workers)), and every worker counts again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::Shared;

/// Renews this worker's record and resizes its lanes' shares until claims stop, then leaves
/// the fleet. Returns at once where the queue has no fleet (SQLite).
pub async fn membership_loop(shared: Arc<Shared>) {
    // Fixed at start, as the leases' (see `reload::FIXED`).
    let lease = shared.config.get().lease_ms;
    let ttl_ms = i64::try_from(lease).unwrap_or(i64::MAX);
    let every = Duration::from_millis((lease / 3).max(1));
    // Each lane's fleet as last logged, so that each change is logged once.
    let mut logged: HashMap<String, u32> = HashMap::new();
    loop {
        let lanes = shared.registry.snapshot();
        let serving: Vec<String> = lanes
            .iter()
            .filter(|(_, lane)| lane.provider().is_some())
            .map(|(name, _)| name.clone())
            .collect();
        match shared
            .queue
            .heartbeat(&shared.owner, &serving, ttl_ms)
            .await
        {
            Ok(Some(live)) => {
                for (name, lane) in &lanes {
                    // Until its own record is visible, a worker counts at least itself.
                    let workers = live.get(name).copied().unwrap_or(1).max(1);
                    let (_, slots) = lane.set_workers(workers);
                    if logged
                        .insert(name.clone(), workers)
                        .is_some_and(|w| w == workers)
                    {
                        continue;
                    }
                    info!(
                        "provider {name}: {workers} worker(s) share its limit of {}: \
                         {slots} slot(s) here",
                        lane.limit()
                    );
                }
            }
            Ok(None) => return,
            Err(e) => error!("{e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.fleet.notified() => {}
            _ = shared.stop_claiming.cancelled() => break,
        }
    }
    if let Err(e) = shared.queue.leave(&shared.owner).await {
        warn!("{e}; the others take over its share when its record lapses");
    }
}
