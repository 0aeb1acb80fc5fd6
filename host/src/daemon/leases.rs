//! Leases and recovery: returns the executions of a worker that is gone to the queue (to be
//! claimed first), or fails those whose interrupted attempt was their last. At start-up
//! that is every `running` row on SQLite (one worker per file, held by its lock file). With
//! a shared queue (PostgreSQL), this worker also renews its own leases every third of
//! `lease_ms`, and reclaims the rows of workers whose leases expired.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::Shared;
use crate::store::StoreError;

/// Returns executions whose worker is gone to the queue, and wakes their lanes.
pub async fn recover(shared: &Shared) -> Result<(), StoreError> {
    let recovered = shared.queue.recover_interrupted().await?;
    for (id, provider) in &recovered.resumed {
        info!("Resuming interrupted execution: {id} (provider: {provider})");
        shared.registry.wake(provider);
    }
    for (id, provider) in &recovered.failed {
        warn!("Interrupted execution {id} (provider: {provider}) had no attempts left: failed");
    }
    Ok(())
}

/// Renews this worker's leases, and reclaims expired ones. Renewal goes on through a
/// graceful shutdown, until the last execution has ended (`stop_leasing`), since a lease
/// that lapsed during the grace period would let another worker run the same execution
/// again; reclaiming stops with claims.
pub async fn lease_loop(shared: Arc<Shared>) {
    // Fixed at start: a reload keeps it (see `reload::FIXED`).
    let lease = shared.config.get().lease_ms;
    let lease_ms = i64::try_from(lease).unwrap_or(i64::MAX);
    let every = Duration::from_millis((lease / 3).max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stop_leasing.cancelled() => return,
        }
        if let Err(e) = shared.queue.renew_leases(&shared.owner, lease_ms).await {
            error!("renewing leases: {e}");
        }
        if shared.stop_claiming.is_cancelled() {
            continue;
        }
        if let Err(e) = recover(&shared).await {
            error!("reclaiming expired leases: {e}");
        }
    }
}
