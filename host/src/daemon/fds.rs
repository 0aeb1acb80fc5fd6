//! Open files. Each running call holds an outbound connection, so a worker whose lanes may
//! run thousands of calls at once needs as many descriptors. `lanes serve` raises its soft
//! open-file limit to the hard one at start ([`raise`]); the registry says in the log when
//! the limits add up to more than the soft limit allows ([`check`]).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

/// Descriptors a worker keeps for itself beside its calls: the database's connections,
/// the API's listener and clients, the plugins folder's watch, the logs.
const OWN: u64 = 64;

/// Raises the process's soft open-file limit to its hard limit, and says so in the log.
pub fn raise() {
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    if soft >= hard {
        return;
    }
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) if now > soft => info!("open files: soft limit raised from {soft} to {now}"),
        Ok(_) => {}
        Err(e) => warn!("open files: raising the soft limit {soft} to {hard}: {e}"),
    }
}

/// Whether the last check found the limit too low, so that each change is said once.
static TOO_LOW: AtomicBool = AtomicBool::new(false);

/// Says in the log when `calls` calls at once (the lanes' slots, added up) would need more
/// descriptors than the soft limit allows, and again once they fit.
pub fn check(calls: u64) {
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    let need = calls.saturating_add(OWN);
    let too_low = need > soft;
    if TOO_LOW.swap(too_low, Ordering::SeqCst) == too_low {
        return;
    }
    if too_low {
        warn!(
            "open files: the lanes' limits add up to {calls} calls at once, which may need \
             {need} open files (one connection each, and {OWN} for lanes itself), more than \
             the soft limit of {soft} (hard {hard}); calls past it fail to connect: raise \
             LimitNOFILE (systemd) or `ulimit -n`"
        );
    } else {
        info!("open files: the lanes' limits fit the soft limit of {soft} again");
    }
}
