//! Plugin reload: scans the plugins folder (at start, and again when its files change and
//! have stopped changing), applies the result to the registry, and starts a producer for
//! each new lane. File events wake it at once; `plugins_rescan_ms` is the fallback where
//! events do not arrive. It also applies run-time limits within `limits_refresh_ms`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::Shared;
use super::events::Event;
use super::executor::Executor;
use super::lane::Lane;
use crate::config::Config;
use crate::plugin::{Catalog, Fingerprint, PluginHost, wasm_files};
use crate::retry::RetryPolicy;
use crate::store::{ProviderRecord, StoreError};

/// [`Reloader::first_scan`]'s result: the folder's listing, the config the scan bound its
/// providers under, and the catalog.
pub type FirstScan = (Vec<(PathBuf, Fingerprint)>, Arc<Config>, Catalog);

/// How long the plugins folder must stay unchanged before it is reloaded.
const SETTLE: Duration = Duration::from_millis(250);

/// Starts a producer for a newly opened lane.
pub type StartLane = Box<dyn Fn(Arc<Lane>) + Send + Sync>;

/// Loads components and keeps the lanes served by the newest good ones.
pub struct Reloader {
    shared: Arc<Shared>,
    plugins: PluginHost,
    /// The last scan; a rescan reuses what did not change. Held across a scan on purpose:
    /// reloads take turns, and each builds on the last.
    catalog: tokio::sync::Mutex<Catalog>,
    start_lane: StartLane,
    executor: Arc<Executor>,
}

/// Settings read once at start, which a reload cannot change: the rest of the config can.
pub const FIXED: &[&str] = &[
    "database_url",
    "plugins_dir",
    "lease_ms",
    "shutdown_grace_secs",
    "engine",
    "cache",
    "completer",
    "api",
];

impl Reloader {
    /// A reloader that has scanned nothing yet.
    pub fn new(
        shared: Arc<Shared>,
        plugins: PluginHost,
        start_lane: StartLane,
        executor: Arc<Executor>,
    ) -> Self {
        Reloader {
            shared,
            plugins,
            catalog: tokio::sync::Mutex::new(Catalog::default()),
            start_lane,
            executor,
        }
    }

    /// Applies a new, validated config: providers added, removed or changed (values,
    /// secrets, limits, base URL, allowed hosts, sandbox limits), retry and poll settings.
    /// Running executions finish on the settings they started with. Settings in [`FIXED`]
    /// keep their old values; their names are returned, for a warning, and so is a
    /// `sandbox.memory_mb` above the instance pool's slot, which holds instances to the
    /// slot's size until a restart.
    pub async fn apply_config(&self, mut fresh: Config) -> Result<Vec<String>, StoreError> {
        let old = self.shared.config.get();
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident),*) => {$(
                if fresh.$field != old.$field {
                    kept.push(stringify!($field).to_string());
                    fresh.$field = old.$field.clone();
                }
            )*};
        }
        keep!(
            database_url,
            plugins_dir,
            lease_ms,
            shutdown_grace_secs,
            engine,
            cache,
            completer,
            api
        );
        if let Some(slot_mb) = self.plugins.slot_mb()
            && fresh.max_memory_mb() > slot_mb
        {
            kept.push(format!(
                "sandbox.memory_mb above {slot_mb} (the instance pool's slots were sized at \
                 start: a provider's instances are held to {slot_mb} MiB)"
            ));
        }
        *self
            .executor
            .retry
            .write()
            .unwrap_or_else(|p| p.into_inner()) = RetryPolicy::from(&fresh.retry);
        self.shared.config.set(Arc::new(fresh));
        // A rescan binds every provider again under the new config (and re-reads its
        // secrets), and the registry serves the lanes from the new bindings.
        self.reload().await?;
        let runtime = self.shared.queue.limits().await?;
        self.shared.registry.apply_limits(
            &self.shared.config.get(),
            &runtime,
            &self.shared.governor.adaptive_limits(),
        );
        Ok(kept)
    }

    /// The outcome of every file in the plugins folder, as of the last scan.
    pub async fn files(&self) -> Vec<crate::plugin::FileReport> {
        self.catalog.lock().await.files.clone()
    }

    /// Rescans the plugins folder and applies the result. Returns the folder's listing as
    /// it was before the scan: a change after that point triggers another.
    pub async fn reload(&self) -> Result<Vec<(PathBuf, Fingerprint)>, StoreError> {
        let config = self.shared.config.get();
        let listing = wasm_files(&config.plugins_dir);
        let mut catalog = self.catalog.lock().await;
        let fresh = self.plugins.scan(&config, Some(&catalog)).await;
        self.apply(&config, &mut catalog, fresh).await?;
        Ok(listing)
    }

    /// The start's first scan of the plugins folder, which touches no database, so that
    /// the daemon runs it while the store recovers and connects; [`Reloader::apply_first`]
    /// applies it. Returns what [`Reloader::reload`] returns, with the config the scan
    /// bound under and the catalog.
    pub async fn first_scan(&self) -> FirstScan {
        let config = self.shared.config.get();
        let listing = wasm_files(&config.plugins_dir);
        let fresh = self.plugins.scan(&config, None).await;
        (listing, config, fresh)
    }

    /// Applies [`Reloader::first_scan`]'s catalog: the first lanes open.
    pub async fn apply_first(
        &self,
        (listing, config, fresh): FirstScan,
    ) -> Result<Vec<(PathBuf, Fingerprint)>, StoreError> {
        let mut catalog = self.catalog.lock().await;
        self.apply(&config, &mut catalog, fresh).await?;
        Ok(listing)
    }

    /// Records a scan's providers, reports its newly rejected files, and serves its lanes,
    /// under the config the scan bound them with.
    async fn apply(
        &self,
        config: &Config,
        catalog: &mut Catalog,
        fresh: Catalog,
    ) -> Result<(), StoreError> {
        let runtime = self.shared.queue.limits().await?;
        let records: Vec<ProviderRecord> = fresh
            .providers
            .values()
            .map(|p| ProviderRecord {
                name: p.name.to_string(),
                component: p.component.file.clone(),
                version: p.component.info.version.clone(),
                default_limit: p.default_limit,
                description: p.component.info.description.clone(),
            })
            .collect();
        self.shared.queue.record_providers(&records).await?;
        for file in &fresh.files {
            let known = catalog
                .files
                .iter()
                .any(|old| old.file == file.file && old.reason == file.reason);
            if let Some(reason) = &file.reason
                && !known
            {
                self.shared.events.publish(Event::ComponentRejected {
                    file: file.file.clone(),
                    reason: reason.clone(),
                });
            }
        }
        let applied = self.shared.registry.apply(config, &fresh, &runtime);
        for lane in applied.opened {
            (self.start_lane)(lane);
        }
        for lane in &applied.rebound {
            self.shared.governor.rebound(lane);
        }
        *catalog = fresh;
        // The providers this worker serves may have changed: tell the fleet.
        self.shared.fleet.notify_one();
        // Off the runtime's threads: trimming a large heap takes milliseconds, and the lanes
        // just opened are claiming.
        tokio::task::spawn_blocking(release_freed_memory);
        Ok(())
    }

    /// Reloads when the folder's files change and have stopped changing, so a file still
    /// being copied is not loaded until it is complete.
    pub async fn rescan_loop(
        self: Arc<Self>,
        mut seen: Vec<(PathBuf, Fingerprint)>,
        events: Arc<tokio::sync::Notify>,
        _watcher: Option<notify::RecommendedWatcher>,
    ) {
        let stop = self.shared.stop_claiming.clone();
        let mut keys = key_files(&self.shared.config.get());
        loop {
            let config = self.shared.config.get();
            let every = Duration::from_millis(config.plugins_rescan_ms);
            // A rotated key file (`api_key_file`) is used from the next attempt on.
            let keys_now = key_files(&config);
            if keys_now != keys {
                keys = keys_now;
                // Said once it is done: the next claim uses the new key.
                match self.reload().await {
                    Ok(_) => info!("a provider's key file changed: its providers are bound again"),
                    Err(e) => error!("applying a changed key file: {e}"),
                }
            }
            let mut now = wasm_files(&config.plugins_dir);
            if now == seen {
                tokio::select! {
                    _ = events.notified() => {}
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            // Load only once two looks `SETTLE` apart agree.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE) => {}
                    _ = stop.cancelled() => return,
                }
                let again = wasm_files(&config.plugins_dir);
                if again == now {
                    break;
                }
                now = again;
            }
            info!("plugins folder changed: reloading");
            match self.reload().await {
                Ok(listing) => seen = listing,
                Err(e) => {
                    error!("applying reloaded plugins: {e}");
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}

/// Gives the heap's free pages back to the system. Compiling a component allocates tens of
/// megabytes that are freed at once, and glibc keeps them otherwise: a daemon that compiled
/// its components at start would idle at nearly twice the memory of one that read them
/// from the compile cache.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused memory of the allocator to the system; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every `api_key_file` with its modification time and size, to notice a rotated key.
fn key_files(config: &Config) -> Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)> {
    config
        .providers
        .values()
        .filter_map(|p| p.api_key_file.clone())
        .map(|path| {
            let seen = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, seen)
        })
        .collect()
}

/// Within `limits_refresh_ms`: brings the fleet's policy decisions (pauses, circuits,
/// adaptive limits) to this worker's lanes, then applies limits stored by `lanes limits set`.
pub async fn refresh_limits_loop(shared: Arc<Shared>) {
    // When each provider's pending work last aged.
    let mut aged: std::collections::HashMap<String, std::time::Instant> = Default::default();
    // When the response cache was last swept.
    let mut swept = std::time::Instant::now();
    // Whether a spend cap was set at the last round.
    let mut was_capped = false;
    loop {
        let every = Duration::from_millis(shared.config.get().limits_refresh_ms);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stop_claiming.cancelled() => return,
        }
        match shared.queue.provider_states().await {
            Ok((now, states)) => {
                let none = crate::store::ProviderState::default();
                for (name, lane) in shared.registry.snapshot() {
                    shared
                        .governor
                        .sync(&lane, states.get(&name).unwrap_or(&none), now);
                }
            }
            Err(e) => error!("reading providers' states: {e}"),
        }
        match shared.queue.limits().await {
            Ok(runtime) => shared.registry.apply_limits(
                &shared.config.get(),
                &runtime,
                &shared.governor.adaptive_limits(),
            ),
            Err(e) => error!("reading limits: {e}"),
        }
        // A route member that opened, paused past a moment or ran out of budget strands
        // the routed work pending on it: it moves to the route's healthy members.
        // A member whose component is here takes what `from`'s does. A `from` that no
        // component serves here (removed, say) says nothing of what its rows need: they
        // move as any stranded row does, and one the new member cannot take fails there
        // when claimed, naming the capability.
        let takes = |to: &str, from: &str| {
            if shared.served(from).is_none() {
                return true;
            }
            let (to, from) = (shared.capabilities(to), shared.capabilities(from));
            crate::model::Capability::ALL
                .iter()
                .all(|c| !from.has(*c) || to.has(*c))
        };
        match super::routing::rebalance(shared.queue.as_ref(), &shared.config.get(), takes).await {
            Ok(took) => {
                for member in took {
                    shared.registry.wake(&member);
                }
            }
            Err(e) => error!("moving routed work off members that cannot run it: {e}"),
        }
        // The response cache's upkeep: waiters whose leader is gone become due, and each
        // cache keeps its newest `max_entries`. About once a second while a provider has a
        // cache; twice a minute otherwise, for waiters left from before a reload took the
        // caches away, so an idle daemon without caches does not write every second.
        let config = shared.config.get();
        let sizes: Vec<(String, u64)> = config
            .providers
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.response_cache?.max_entries)))
            .collect();
        let every = if sizes.is_empty() { 30 } else { 1 };
        if swept.elapsed() >= Duration::from_secs(every) {
            swept = std::time::Instant::now();
            match shared.queue.sweep_cache(&sizes).await {
                Ok(released) => {
                    for provider in released {
                        shared.registry.wake(&provider);
                    }
                }
                Err(e) => error!("the response cache's upkeep: {e}"),
            }
        }
        // Spend reservations of rows that ended without a settle, while a cap is set.
        let capped = config.providers.values().any(|p| p.daily_usd.is_some())
            || config.tenants.values().any(|t| t.daily_usd.is_some());
        if capped || was_capped {
            super::spend::release(&shared).await;
        }
        was_capped = capped;
        // Priority aging, at a quarter of each provider's interval (the sweep is idempotent:
        // a row rises once per interval whoever sweeps).
        for (name, lane) in shared.registry.snapshot() {
            let Some(provider) = lane.provider() else {
                continue;
            };
            let Some(every) = provider.policy.aging else {
                continue;
            };
            if aged.get(&name).is_some_and(|t| t.elapsed() < every / 4) {
                continue;
            }
            aged.insert(name.clone(), std::time::Instant::now());
            let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            match shared
                .queue
                .age(&name, every_ms, provider.policy.aging_max)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(provider = %name, "aging raised {n} pending execution(s)")
                }
                Err(e) => error!("provider {name}: aging: {e}"),
            }
        }
    }
}

/// Watches `dir` for file events; `None` (with a log line) where that is not possible.
pub fn watch(
    dir: &std::path::Path,
    events: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the folder is itself an event (open, access, close); reacting to those
        // would rescan forever. Only changes to `.wasm` files matter.
        let relevant = event.is_ok_and(|e| {
            !matches!(e.kind, notify::EventKind::Access(_))
                && (e.paths.is_empty()
                    || e.paths
                        .iter()
                        .any(|p| p.extension().is_some_and(|x| x == "wasm")))
        });
        if relevant {
            events.notify_one();
        }
    })
    .map_err(|e| warn!("cannot watch {}: {e}; polling only", dir.display()))
    .ok()?;
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            warn!("cannot watch {}: {e}; polling only", dir.display());
            None
        }
    }
}
