//! The daemon: one dispatch loop per lane, start-up recovery, live limits, plugin rescans
//! and graceful shutdown.
//!
//! A lane's loop claims up to its free slots in one statement, starts each claimed execution
//! in its own task, then sleeps until something can change its decision: a slot frees, a
//! local submission arrives, the limit changes, a retry comes due, or the poll interval (for
//! rows that other processes wrote) passes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::attempt;
use crate::config::Config;
use crate::lane::{Lane, Slot};
use crate::limits::LimitView;
use crate::model::{ChatInput, ErrorKind, Execution, ExecutionId, NewExecution, now_ms};
use crate::plugin::{Catalog, Fingerprint, PluginHost, Provider, wasm_files};
use crate::retry::{Decision, RetryPolicy};
use crate::store::{Claim, Finish, ProviderRecord, Queue, StoreError};

/// Why the daemon could not start or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Plugins(String),
    #[error(
        "another `lanes serve` is already using {db} (lock file {lock}); SQLite allows one worker"
    )]
    Locked { db: String, lock: String },
    #[error("lock file {path}: {reason}")]
    LockFile { path: String, reason: String },
}

/// The shared state of a running daemon.
struct Inner {
    config: Arc<Config>,
    queue: Arc<dyn Queue>,
    plugins: PluginHost,
    owner: String,
    retry: RetryPolicy,
    lanes: RwLock<BTreeMap<String, Arc<Lane>>>,
    /// The last scan of the plugins folder; a rescan reuses what did not change.
    catalog: tokio::sync::Mutex<Catalog>,
    /// Stops the lanes from claiming.
    stop_claiming: CancellationToken,
    /// Takes running executions away (they return to pending) once the grace period is over.
    stop_running: CancellationToken,
    executions: TaskTracker,
    background: TaskTracker,
    /// Stops renewing leases: only once every execution has ended, since a lease that lapsed
    /// during the grace period would let another worker run the same execution again.
    stop_leasing: CancellationToken,
    leasing: TaskTracker,
}

/// A running daemon. Dropping it without [`Daemon::shutdown`] abandons running executions,
/// which the next start resumes.
pub struct Daemon {
    inner: Arc<Inner>,
    _lock: Option<std::fs::File>,
}

/// Takes the SQLite file's lock: one `serve` per file, since start-up recovery assumes that
/// any `running` row belongs to a process that is gone.
fn lock_database(config: &Config) -> Result<Option<std::fs::File>, DaemonError> {
    use fs2::FileExt;
    let Some(db) = config.sqlite_path() else {
        return Ok(None);
    };
    let mut lock_path = db.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DaemonError::LockFile {
            path: lock_path.display().to_string(),
            reason: e.to_string(),
        })?;
    file.try_lock_exclusive().map_err(|_| DaemonError::Locked {
        db: db.display().to_string(),
        lock: lock_path.display().to_string(),
    })?;
    Ok(Some(file))
}

impl Daemon {
    /// Loads the plugins, recovers interrupted executions and starts every lane.
    pub async fn start(config: Config, queue: Arc<dyn Queue>) -> Result<Daemon, DaemonError> {
        let lock = lock_database(&config)?;
        let plugins =
            PluginHost::new(&config).map_err(|e| DaemonError::Plugins(format!("{e:#}")))?;
        let owner = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let inner = Arc::new(Inner {
            retry: RetryPolicy::from(&config.retry),
            config: Arc::new(config),
            queue,
            plugins,
            owner,
            lanes: RwLock::new(BTreeMap::new()),
            catalog: tokio::sync::Mutex::new(Catalog::default()),
            stop_claiming: CancellationToken::new(),
            stop_running: CancellationToken::new(),
            executions: TaskTracker::new(),
            background: TaskTracker::new(),
            stop_leasing: CancellationToken::new(),
            leasing: TaskTracker::new(),
        });

        inner.recover().await?;
        // Everything that can fail comes before the first lane starts.
        let changes = inner.queue.listen().await?;

        // Watch before the first scan, so that no file dropped in meanwhile goes unnoticed.
        let events = Arc::new(tokio::sync::Notify::new());
        let watcher = watch(&inner.config.plugins_dir, events.clone());
        let seen = inner.reload_plugins().await?;
        info!(
            owner = %inner.owner,
            "lanes serving {} provider(s) from {}",
            inner.lanes_snapshot().len(),
            inner.config.plugins_dir.display()
        );

        let limits_task = inner.clone();
        inner
            .background
            .spawn(async move { limits_task.refresh_limits_loop().await });
        if inner.queue.shared() {
            let leases = inner.clone();
            inner
                .leasing
                .spawn(async move { leases.lease_loop().await });
        }
        if let Some(mut changes) = changes {
            let wake = inner.clone();
            inner.background.spawn(async move {
                loop {
                    tokio::select! {
                        provider = changes.recv() => match provider {
                            Some(provider) => {
                                if let Some(lane) = wake.lane(&provider) {
                                    lane.wake();
                                }
                            }
                            None => return,
                        },
                        _ = wake.stop_claiming.cancelled() => return,
                    }
                }
            });
        }
        let rescan_task = inner.clone();
        inner
            .background
            .spawn(async move { rescan_task.rescan_loop(seen, events, watcher).await });
        Ok(Daemon { inner, _lock: lock })
    }

    /// Queues an execution and wakes its lane at once.
    pub async fn submit(&self, new: &NewExecution) -> Result<ExecutionId, StoreError> {
        let id = self.inner.queue.submit(new).await?;
        if let Some(lane) = self.inner.lane(&new.provider) {
            lane.wake();
        }
        Ok(id)
    }

    /// Queues many executions in one transaction and wakes their lanes.
    pub async fn submit_many(
        &self,
        batch: &[NewExecution],
    ) -> Result<Vec<ExecutionId>, StoreError> {
        let ids = self.inner.queue.submit_many(batch).await?;
        let providers: BTreeSet<&str> = batch.iter().map(|n| n.provider.as_str()).collect();
        for provider in providers {
            if let Some(lane) = self.inner.lane(provider) {
                lane.wake();
            }
        }
        Ok(ids)
    }

    /// The queue this daemon serves.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.queue
    }

    /// This worker's owner id, as recorded on the rows it runs.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The limit and running count of every lane.
    pub fn lanes(&self) -> BTreeMap<String, (u32, u32)> {
        self.inner
            .lanes_snapshot()
            .into_iter()
            .map(|(name, lane)| (name, (lane.limit(), lane.running())))
            .collect()
    }

    /// The outcome of every file in the plugins folder, as of the last scan.
    pub async fn plugin_files(&self) -> Vec<crate::plugin::FileReport> {
        self.inner.catalog.lock().await.files.clone()
    }

    /// Stops claiming, lets running executions finish within `grace`, and returns the rest
    /// to pending without counting their attempt.
    pub async fn shutdown(self, grace: Duration) {
        let inner = &self.inner;
        info!("shutting down: no new claims; waiting up to {grace:?} for running executions");
        inner.stop_claiming.cancel();
        inner.background.close();
        inner.background.wait().await;
        inner.executions.close();
        if tokio::time::timeout(grace, inner.executions.wait())
            .await
            .is_err()
        {
            warn!(
                "grace period over: returning {} running execution(s) to pending",
                inner.executions.len()
            );
            inner.stop_running.cancel();
            inner.executions.wait().await;
        }
        inner.stop_leasing.cancel();
        inner.leasing.close();
        inner.leasing.wait().await;
        info!("shutdown complete");
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        let grace = Duration::from_secs(self.inner.config.shutdown_grace_secs);
        self.shutdown(grace).await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the daemon");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Inner {
    fn lane(&self, name: &str) -> Option<Arc<Lane>> {
        self.lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Returns executions whose worker is gone to the queue (or fails them when that was
    /// their last attempt), and wakes their lanes.
    async fn recover(&self) -> Result<(), StoreError> {
        let recovered = self.queue.recover_interrupted().await?;
        for (id, provider) in &recovered.resumed {
            info!("Resuming interrupted execution: {id} (provider: {provider})");
            if let Some(lane) = self.lane(provider) {
                lane.wake();
            }
        }
        for (id, provider) in &recovered.failed {
            warn!("Interrupted execution {id} (provider: {provider}) had no attempts left: failed");
        }
        Ok(())
    }

    /// With a shared queue: renews this worker's leases every third of `lease_ms`, and
    /// reclaims the executions of workers whose leases expired. Renewal goes on through a
    /// graceful shutdown, until the last execution has ended; reclaiming stops with claims.
    async fn lease_loop(self: Arc<Self>) {
        let lease = self.config.lease_ms;
        let every = Duration::from_millis((lease / 3).max(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.stop_leasing.cancelled() => return,
            }
            if let Err(e) = self.queue.renew_leases(&self.owner, lease as i64).await {
                error!("renewing leases: {e}");
            }
            if self.stop_claiming.is_cancelled() {
                continue;
            }
            if let Err(e) = self.recover().await {
                error!("reclaiming expired leases: {e}");
            }
        }
    }

    fn lanes_snapshot(&self) -> BTreeMap<String, Arc<Lane>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn limit_of(&self, provider: &Provider, runtime: &BTreeMap<String, u32>) -> LimitView {
        LimitView::resolve(
            provider.name.as_ref(),
            Some(provider.default_limit),
            self.config
                .providers
                .get(provider.name.as_ref())
                .and_then(|p| p.limit),
            runtime.get(provider.name.as_ref()).copied(),
            self.config.fallback_limit,
        )
    }

    /// Serves each lane from the catalog's component, creating lanes for new providers and
    /// idling lanes whose component is gone.
    /// Rescans the plugins folder and applies the result to the lanes. Returns the folder's
    /// listing as it was before the scan: a change after that point triggers another.
    async fn reload_plugins(self: &Arc<Self>) -> Result<Vec<(PathBuf, Fingerprint)>, StoreError> {
        let listing = wasm_files(&self.config.plugins_dir);
        // Held across the scan on purpose: reloads take turns, and each builds on the last.
        let mut catalog = self.catalog.lock().await;
        let fresh = self.plugins.scan(&self.config, Some(&catalog)).await;
        let runtime = self.queue.limits().await?;
        self.apply_catalog(&fresh, &runtime).await?;
        *catalog = fresh;
        Ok(listing)
    }

    async fn apply_catalog(
        self: &Arc<Self>,
        catalog: &Catalog,
        runtime: &BTreeMap<String, u32>,
    ) -> Result<(), StoreError> {
        let records: Vec<ProviderRecord> = catalog
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
        self.queue.record_providers(&records).await?;
        let mut new_lanes = Vec::new();
        {
            let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
            for (name, lane) in lanes.iter() {
                if !catalog.providers.contains_key(name) && lane.provider().is_some() {
                    warn!("provider {name}: component removed; its lane stops claiming");
                    lane.set_provider(None);
                }
            }
            for (name, provider) in &catalog.providers {
                let limit = self.limit_of(provider, runtime);
                match lanes.get(name) {
                    Some(lane) => {
                        let same = lane
                            .provider()
                            .is_some_and(|old| Arc::ptr_eq(&old.component, &provider.component));
                        if !same {
                            info!("{}: now serving its lane", provider.label());
                            lane.set_provider(Some(provider.clone()));
                        }
                    }
                    None => {
                        let lane = Arc::new(Lane::new(name, limit.effective));
                        lane.set_provider(Some(provider.clone()));
                        info!(
                            "{}: lane open, limit {} ({:?})",
                            provider.label(),
                            limit.effective,
                            limit.source
                        );
                        lanes.insert(name.clone(), lane.clone());
                        new_lanes.push(lane);
                    }
                }
            }
        }
        for lane in new_lanes {
            let inner = self.clone();
            self.background
                .spawn(async move { inner.lane_loop(lane).await });
        }
        Ok(())
    }

    /// One lane's dispatch loop.
    async fn lane_loop(self: Arc<Self>, lane: Arc<Lane>) {
        let poll = self.config.poll_interval();
        loop {
            if self.stop_claiming.is_cancelled() {
                return;
            }
            let mut wait = poll;
            if let Some(provider) = lane.provider() {
                let free = lane.free();
                if free > 0 {
                    match self.claim_and_start(&lane, &provider, free).await {
                        Ok(claimed) if claimed < free => {
                            // Slots remain: sleep no longer than the next retry's due time.
                            match self.queue.next_due(lane.name()).await {
                                Ok(Some(due)) => {
                                    let until = (due - now_ms()).max(1) as u64;
                                    wait = wait.min(Duration::from_millis(until));
                                }
                                Ok(None) => {}
                                Err(e) => error!("provider {}: {e}", lane.name()),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => error!("provider {}: claim failed: {e}", lane.name()),
                    }
                }
            }
            tokio::select! {
                _ = lane.woken() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop_claiming.cancelled() => return,
            }
        }
    }

    /// Claims up to `free` executions and starts them. Returns how many it claimed.
    async fn claim_and_start(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        provider: &Arc<Provider>,
        free: u32,
    ) -> Result<u32, StoreError> {
        let claimed = self
            .queue
            .claim(
                lane.name(),
                Claim {
                    owner: &self.owner,
                    max: free,
                    limit: lane.limit(),
                    lease_ms: self.config.lease_ms as i64,
                },
            )
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        info!(
            "Processing {} pending executions for provider {} ({} currently running, limit: {})",
            claimed.len(),
            lane.name(),
            lane.running(),
            lane.limit()
        );
        let count = claimed.len() as u32;
        for execution in claimed {
            // Only this loop takes slots, and it claimed no more than were free; a limit
            // lowered meanwhile can still leave none, and then the row goes back untouched.
            let Some(slot) = lane.try_acquire() else {
                if let Err(e) = self
                    .queue
                    .finish(execution.id, &self.owner, &Finish::Requeue)
                    .await
                {
                    error!(
                        "execution {}: could not return it to pending: {e}",
                        execution.id
                    );
                }
                continue;
            };
            let inner = self.clone();
            let lane = lane.clone();
            let provider = provider.clone();
            self.executions.spawn(async move {
                inner.run_execution(&lane, &provider, execution, slot).await;
            });
        }
        Ok(count)
    }

    /// Runs one attempt and records how it ended.
    async fn run_execution(
        &self,
        lane: &Lane,
        provider: &Provider,
        execution: Execution,
        slot: Slot,
    ) {
        let id = execution.id;
        let finish = tokio::select! {
            finish = self.attempt(provider, &execution) => finish,
            _ = self.stop_running.cancelled() => Finish::Requeue,
        };
        match &finish {
            Finish::Completed(_) => tracing::debug!(id, provider = lane.name(), "completed"),
            Finish::Retry {
                error, delay_ms, ..
            } => warn!(
                id,
                provider = lane.name(),
                "attempt {} of {} failed, retrying in {delay_ms} ms: {error}",
                execution.attempts,
                execution.max_attempts,
            ),
            Finish::Failed { error, .. } => warn!(
                id,
                provider = lane.name(),
                "failed after attempt {} of {}: {error}",
                execution.attempts,
                execution.max_attempts
            ),
            Finish::Requeue => info!(id, provider = lane.name(), "returned to pending"),
        }
        self.record(id, &finish).await;
        lane.release(slot);
        // The lane refills the slot itself when it can; otherwise another worker should.
        let refills =
            !self.stop_claiming.is_cancelled() && lane.provider().is_some() && lane.free() > 0;
        if !refills
            && matches!(finish, Finish::Completed(_) | Finish::Failed { .. })
            && let Err(e) = self.queue.slot_freed(lane.name()).await
        {
            warn!(
                "provider {}: telling other workers of a free slot: {e}",
                lane.name()
            );
        }
    }

    /// Writes an attempt's end, retrying briefly when the database is busy: losing a result
    /// would mean running the call again after the next restart.
    async fn record(&self, id: ExecutionId, finish: &Finish) {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self.queue.finish(id, &self.owner, finish).await {
                Ok(true) => return,
                Ok(false) => {
                    warn!("execution {id}: no longer owned by this worker; result not written");
                    return;
                }
                Err(e) if attempt < 5 => {
                    warn!("execution {id}: writing the result failed (try {attempt}): {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => error!(
                    "execution {id}: writing the result failed, it will run again after a restart: {e}"
                ),
            }
        }
    }

    async fn attempt(&self, provider: &Provider, execution: &Execution) -> Finish {
        let input = match ChatInput::from_value(execution.input.clone()) {
            Ok(input) => input,
            Err(e) => {
                return Finish::Failed {
                    error: format!("{}: {e}", provider.label()),
                    kind: ErrorKind::BadInput,
                };
            }
        };
        let error = match provider.execute(attempt::to_request(&input)).await {
            Ok(response) => {
                let output = attempt::to_output(response);
                return match serde_json::to_value(&output) {
                    Ok(value) => Finish::Completed(value),
                    Err(e) => Finish::Failed {
                        error: format!("{}: output cannot be stored: {e}", provider.label()),
                        kind: ErrorKind::Other,
                    },
                };
            }
            Err(e) => e,
        };
        let (kind, retry_after) = attempt::classify(&error);
        let message = format!("{}: {error}", provider.label());
        match self.retry.decide(
            execution.attempts.max(0) as u32,
            execution.max_attempts.max(1) as u32,
            kind,
            retry_after,
        ) {
            Decision::Retry(delay) => Finish::Retry {
                error: message,
                kind,
                delay_ms: delay.as_millis() as i64,
            },
            Decision::Fail => Finish::Failed {
                error: message,
                kind,
            },
        }
    }

    /// Applies limits stored by `lanes limits set` within `limits_refresh_ms`.
    async fn refresh_limits_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.limits_refresh_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.stop_claiming.cancelled() => return,
            }
            let runtime = match self.queue.limits().await {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!("reading limits: {e}");
                    continue;
                }
            };
            for (name, lane) in self.lanes_snapshot() {
                let Some(provider) = lane.provider() else {
                    continue;
                };
                let view = self.limit_of(&provider, &runtime);
                if view.effective != lane.limit() {
                    let old = lane.set_limit(view.effective);
                    info!(
                        "Limit of provider {name} changed from {old} to {} ({:?})",
                        view.effective, view.source
                    );
                }
            }
        }
    }

    /// Reloads the plugins folder when its files change and have stopped changing, so a
    /// file still being copied is not loaded until it is complete. File events wake it at
    /// once; `plugins_rescan_ms` is the fallback where events do not arrive.
    async fn rescan_loop(
        self: Arc<Self>,
        mut seen: Vec<(PathBuf, Fingerprint)>,
        events: Arc<tokio::sync::Notify>,
        _watcher: Option<notify::RecommendedWatcher>,
    ) {
        let every = Duration::from_millis(self.config.plugins_rescan_ms);
        loop {
            let mut now = wasm_files(&self.config.plugins_dir);
            if now == seen {
                tokio::select! {
                    _ = events.notified() => {}
                    _ = tokio::time::sleep(every) => {}
                    _ = self.stop_claiming.cancelled() => return,
                }
                continue;
            }
            // Load only once two looks `SETTLE` apart agree.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE) => {}
                    _ = self.stop_claiming.cancelled() => return,
                }
                let again = wasm_files(&self.config.plugins_dir);
                if again == now {
                    break;
                }
                now = again;
            }
            info!("plugins folder changed: reloading");
            match self.reload_plugins().await {
                Ok(listing) => seen = listing,
                Err(e) => {
                    error!("applying reloaded plugins: {e}");
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}

/// How long the plugins folder must stay unchanged before it is reloaded.
const SETTLE: Duration = Duration::from_millis(250);

/// Watches `dir` for file events; `None` (with a log line) where that is not possible.
fn watch(
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
