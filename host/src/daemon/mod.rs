//! The daemon: the parts of a running worker, wired together. Data flows one way, with
//! events beside it:
//!
//! ```text
//! store ──► producer (one per lane) ──► executor (one task per attempt) ──► completer ──► store
//!              claims up to free slots     runs a fresh instance              batches results
//!                         └──────────────── events (EventBus) ────────────────┘
//! ```
//!
//! - [`registry`] holds the lanes ([`lane`]), their components and limits;
//! - [`producer`] claims for one lane; [`executor`] runs one attempt; [`completer`] writes
//!   results in batches and frees their slots;
//! - [`leases`] recovers interrupted executions and keeps this worker's leases;
//! - [`members`] records this worker in the fleet and shares each fleet-wide limit evenly;
//! - [`reload`] loads the plugins folder and applies run-time limits;
//! - [`events`] is the bus that the API, metrics, dashboard and policies subscribe to.
//!
//! This module starts the parts in order and shuts them down gracefully.

pub mod batches;
pub mod completer;
pub mod events;
pub mod executor;
pub mod fds;
pub mod lane;
pub mod leases;
pub mod members;
pub mod policies;
pub mod pool;
pub mod producer;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod spend;
pub mod streams;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::model::{ExecutionId, NewExecution};
use crate::plugin::PluginHost;
use crate::retry::RetryPolicy;
use crate::store::{Cancelled, Change, Queue, StoreError};
use completer::{Completer, CompleterParts, QueueSink};
use events::{EventBus, Subscription};
use executor::Executor;
use producer::Producer;
use registry::Registry;
use reload::Reloader;

/// Why the daemon could not start or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Plugins(String),
    #[error(
        "another `lanes serve` {}is already using {db} (lock file {lock}); SQLite allows one \
         worker",
        holder(.pid)
    )]
    Locked {
        db: String,
        lock: String,
        pid: Option<u32>,
    },
    #[error("lock file {path}: {reason}")]
    LockFile { path: String, reason: String },
}

/// What every part of a running worker shares: its settings, the queue, its identity, the
/// lanes, the event bus, and the signals that stop it.
pub struct Shared {
    /// The config in effect; a reload replaces it (see [`reload`]).
    pub config: LiveConfig,
    pub queue: Arc<dyn Queue>,
    /// This worker's id, as recorded on the rows it runs.
    pub owner: Arc<str>,
    pub registry: Registry,
    pub events: EventBus,
    /// The policies: pauses, circuits, adaptive limits.
    pub governor: Arc<policies::Governor>,
    /// Stops the producers and background loops.
    pub stop_claiming: CancellationToken,
    /// Stops renewing leases: only once every execution has ended.
    pub stop_leasing: CancellationToken,
    /// Wakes the membership loop: a worker joined or left the fleet, or the lanes changed.
    pub fleet: tokio::sync::Notify,
}

impl Shared {
    /// Whether `new` names a route rather than a provider.
    fn routes_to(&self, new: &NewExecution) -> bool {
        new.route.is_none() && self.config.get().routes.contains_key(&new.provider)
    }

    /// Sends each execution of `batch` that names a route to the member the route picks,
    /// among those whose component takes what its input needs.
    async fn route<'b>(
        &self,
        batch: impl IntoIterator<Item = &'b mut NewExecution>,
    ) -> Result<(), StoreError> {
        let config = self.config.get();
        let can = |new: &NewExecution, member: &str| self.takes(&new.input, member);
        routing::assign(self.queue.as_ref(), &config, batch, can).await
    }

    /// The capabilities `provider` declares beyond text: its component's here, or, when
    /// no component serves it here, the most any component this host loads may declare
    /// (another process of the fleet may serve it).
    pub fn capabilities(&self, provider: &str) -> crate::model::Capabilities {
        match self.served(provider) {
            Some(provider) => provider.capabilities(),
            None => crate::plugin::version::HOST_CAPABILITIES,
        }
    }

    /// The provider `name` as a component here serves it, if one does.
    pub fn served(&self, name: &str) -> Option<Arc<crate::plugin::Provider>> {
        self.registry.get(name).and_then(|lane| lane.provider())
    }

    /// Whether `member` can run `input`: its component (when one serves it here) has every
    /// capability the input needs and takes its images' media types.
    pub fn takes(&self, input: &crate::model::ChatInput, member: &str) -> bool {
        let has = self.capabilities(member);
        if !input.needs().iter().all(|n| has.has(n.capability)) {
            return false;
        }
        self.served(member).is_none_or(|p| {
            input
                .media_type_refused(&p.component.info.image_media_types)
                .is_none()
        })
    }
}

/// The config in effect, replaced whole by a reload. Readers take the current one and keep
/// it for what they are doing, so a running attempt finishes on the settings it began with.
pub struct LiveConfig(std::sync::RwLock<Arc<Config>>);

impl LiveConfig {
    /// The config in effect now.
    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, config: Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// A running daemon. Dropping it without [`Daemon::shutdown`] abandons running executions,
/// which the next start resumes.
pub struct Daemon {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    executor: Arc<Executor>,
    completer: Completer,
    stop_running: CancellationToken,
    executions: TaskTracker,
    background: TaskTracker,
    leasing: TaskTracker,
    _lock: DatabaseLock,
}

/// The SQLite file's lock: one `lanes serve` per file, since start-up recovery assumes that
/// any `running` row belongs to a process that is gone.
///
/// An advisory lock (`flock`) on `<db>.lock`, which the OS releases when the process ends,
/// however it ends: kill -9 leaves no stale lock. The file holds the holder's pid, for
/// `lanes reload` and for the refusal of a second serve. PostgreSQL takes none: a fleet
/// runs many workers on one database on purpose.
pub struct DatabaseLock {
    /// Held, never read: closing it releases the lock.
    _file: Option<std::fs::File>,
}

impl DatabaseLock {
    /// The lock file of the SQLite file `db`.
    pub fn path(db: &std::path::Path) -> PathBuf {
        let mut path = db.as_os_str().to_owned();
        path.push(".lock");
        PathBuf::from(path)
    }

    /// Takes the lock of `config`'s SQLite file, or refuses, naming the file and the pid of
    /// the `lanes serve` that holds it. `lanes serve` takes it before anything else (the
    /// API's port, the database), so that a second serve is told why it cannot start.
    pub fn take(config: &Config) -> Result<DatabaseLock, DaemonError> {
        use fs2::FileExt;
        let Some(db) = config.sqlite_path() else {
            return Ok(DatabaseLock { _file: None });
        };
        let lock_path = Self::path(&db);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DaemonError::LockFile {
                path: lock_path.display().to_string(),
                reason: e.to_string(),
            })?;
        match file.try_lock_exclusive() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() != fs2::lock_contended_error().raw_os_error() => {
                // No lock to be had here (a file system without locks): not another serve.
                return Err(DaemonError::LockFile {
                    path: lock_path.display().to_string(),
                    reason: format!("cannot lock it: {e}"),
                });
            }
            Err(_) => {
                // The holder writes its pid just after it takes the lock: one that is starting
                // this instant may not have written it yet.
                let pid = std::fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok());
                return Err(DaemonError::Locked {
                    db: db.display().to_string(),
                    lock: lock_path.display().to_string(),
                    pid,
                });
            }
        }
        // The pid, for `lanes reload` and for the next serve's refusal.
        {
            use std::io::Write;
            let mut writer = &file;
            let _ = file.set_len(0);
            let _ = writeln!(writer, "{}", std::process::id());
        }
        Ok(DatabaseLock { _file: Some(file) })
    }
}

/// `(pid N) ` when the lock file named the holder.
fn holder(pid: &Option<u32>) -> String {
    pid.map(|pid| format!("(pid {pid}) ")).unwrap_or_default()
}

/// What the control plane (the HTTP API) may do with a running daemon: submit, cancel,
/// change limits and look at its lanes and plugins. Cheap to clone; it outlives nothing:
/// once the daemon shuts down, its calls see a stopped daemon.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    executor: Arc<Executor>,
    reloader: Arc<Reloader>,
}

/// One lane as the control plane sees it.
#[derive(Debug, Clone)]
pub struct LaneView {
    pub provider: String,
    /// The component serving it, if any: `(file, version)`.
    pub component: Option<(String, String)>,
    /// Every source of its limit, under the config and run-time limits in effect.
    pub limits: Option<crate::limits::LimitView>,
    /// The lane's limit now.
    pub effective: u32,
    /// Attempts this worker runs now.
    pub running: u32,
}

impl Control {
    /// The queue this daemon serves.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.shared.queue
    }

    /// The streams of the attempts running here.
    pub fn streams(&self) -> &Arc<streams::Streams> {
        &self.executor.streams
    }

    /// The config in effect.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.get()
    }

    /// A subscription to the daemon's events, from now on.
    pub fn subscribe(&self) -> Subscription {
        self.shared.events.subscribe()
    }

    /// The capabilities `provider` declares beyond text: its component's here, or, when
    /// no component serves it here, the most any component this host loads may declare
    /// (another process of the fleet may serve it).
    pub fn capabilities(&self, provider: &str) -> crate::model::Capabilities {
        self.shared.capabilities(provider)
    }

    /// The image media types `provider`'s component here takes (empty: the usual four);
    /// `None` when no component serves it here.
    pub fn image_media_types(&self, provider: &str) -> Option<Vec<String>> {
        let provider = self.shared.served(provider)?;
        Some(provider.component.info.image_media_types.clone())
    }

    /// Whether `provider` is known: a lane, the config, or (on a fleet) another worker's
    /// loaded component.
    pub async fn knows(&self, provider: &str) -> Result<bool, StoreError> {
        let config = self.shared.config.get();
        if self.shared.registry.get(provider).is_some()
            || config.providers.contains_key(provider)
            || config.routes.contains_key(provider)
        {
            return Ok(true);
        }
        Ok(self
            .shared
            .queue
            .providers()
            .await?
            .iter()
            .any(|p| p.name == provider))
    }

    /// Queues executions in one transaction (see [`Queue::submit_keyed`]), wakes the lanes
    /// of those created, and publishes [`events::Event::Cached`] for those the response
    /// cache answered. A batch with a clashing key wrote nothing: it does neither.
    pub async fn submit_keyed(
        &self,
        batch: &[(NewExecution, Option<crate::store::IdempotencyKey>)],
    ) -> Result<Vec<crate::store::Submitted>, StoreError> {
        let mut routed = None;
        if batch.iter().any(|(n, _)| self.shared.routes_to(n)) {
            let mut owned = batch.to_vec();
            self.shared.route(owned.iter_mut().map(|(n, _)| n)).await?;
            routed = Some(owned);
        }
        if batch.iter().any(|(n, _)| n.defer.deferrable) {
            let owned = routed.get_or_insert_with(|| batch.to_vec());
            batches::hold(&self.shared.config.get(), owned.iter_mut().map(|(n, _)| n));
        }
        let batch = routed.as_deref().unwrap_or(batch);
        let done = self.shared.queue.submit_keyed(batch).await?;
        if done
            .iter()
            .any(|s| matches!(s, crate::store::Submitted::Conflict(_)))
        {
            return Ok(done);
        }
        let created: BTreeSet<&str> = batch
            .iter()
            .zip(&done)
            // An answered one is complete: no lane has work from it.
            .filter(|(_, s)| matches!(s, crate::store::Submitted::Created(_)))
            .map(|((n, _), _)| n.provider.as_str())
            .collect();
        for provider in created {
            self.shared.registry.wake(provider);
        }
        // Hits never reach a lane: the metrics learn of them here, whatever door they came
        // through.
        let mut events = self.shared.events.batch();
        for ((n, _), s) in batch.iter().zip(&done).filter(|(_, s)| s.cached()) {
            events.push_with(|| events::Event::Cached {
                id: s.id(),
                provider: n.provider.as_str().into(),
            });
        }
        drop(events);
        Ok(done)
    }

    /// Cancels an execution; a running one here is stopped at once (on another worker, by
    /// its notification).
    pub async fn cancel(&self, id: ExecutionId) -> Result<Cancelled, StoreError> {
        let done = self.shared.queue.cancel(id).await?;
        if matches!(done, Cancelled::Running { .. }) {
            self.executor.stop(id);
        }
        Ok(done)
    }

    /// Sets (`Some`) or clears (`None`) a provider's run-time limit, and applies it to this
    /// worker's lanes at once; other workers apply it within `limits_refresh_ms`. Returns
    /// whether a run-time limit was there to clear.
    pub async fn set_limit(&self, provider: &str, limit: Option<u32>) -> Result<bool, StoreError> {
        let had = match limit {
            Some(limit) => {
                self.shared.queue.set_limit(provider, limit).await?;
                true
            }
            None => self.shared.queue.clear_limit(provider).await?,
        };
        let runtime = self.shared.queue.limits().await?;
        self.shared.registry.apply_limits(
            &self.shared.config.get(),
            &runtime,
            &self.shared.governor.adaptive_limits(),
        );
        Ok(had)
    }

    /// Every lane of this worker, with its limits under the run-time limits `runtime`.
    pub fn lanes(&self, runtime: &BTreeMap<String, u32>) -> Vec<LaneView> {
        let config = self.shared.config.get();
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .map(|(name, lane)| {
                let provider = lane.provider();
                LaneView {
                    component: provider
                        .as_ref()
                        .map(|p| (p.component.file.clone(), p.component.info.version.clone())),
                    limits: provider.as_ref().map(|p| {
                        Registry::inputs_of(&config, p, runtime, lane.inputs().adaptive).resolve()
                    }),
                    effective: lane.limit(),
                    running: lane.running(),
                    provider: name,
                }
            })
            .collect()
    }

    /// This worker's instance pool and the lanes' slots, when the engine pools instances.
    pub fn pool(&self) -> Option<pool::PoolUse> {
        self.shared.registry.pool()
    }

    /// The outcome of every file in the plugins folder, as of the last scan.
    pub async fn plugin_files(&self) -> Vec<crate::plugin::FileReport> {
        self.reloader.files().await
    }
}

impl Daemon {
    /// The handle the control plane uses.
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
            executor: self.executor.clone(),
            reloader: self.reloader.clone(),
        }
    }

    /// Takes the SQLite file's lock, loads the plugins, recovers interrupted executions and
    /// starts every lane.
    pub async fn start(config: Config, queue: Arc<dyn Queue>) -> Result<Daemon, DaemonError> {
        let lock = DatabaseLock::take(&config)?;
        Self::start_locked(config, queue, lock).await
    }

    /// [`Daemon::start`] with the lock already taken ([`DatabaseLock::take`] with the same
    /// config), for `lanes serve`, which takes it before anything else. The daemon holds it
    /// until it is dropped.
    pub async fn start_locked(
        config: Config,
        queue: Arc<dyn Queue>,
        lock: DatabaseLock,
    ) -> Result<Daemon, DaemonError> {
        let plugins =
            PluginHost::new(&config).map_err(|e| DaemonError::Plugins(format!("{e:#}")))?;
        let owner: Arc<str> = Arc::from(format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let config = Arc::new(config);
        let events = EventBus::default();
        let (governor, policy_writer) = policies::Governor::new(queue.clone(), events.clone());
        // Ends once the governor is gone.
        tokio::spawn(policy_writer);
        let shared = Arc::new(Shared {
            governor: Arc::new(governor),
            registry: Registry::new(events.clone(), pool::InstancePool::of(&config)),
            config: LiveConfig(std::sync::RwLock::new(config.clone())),
            queue: queue.clone(),
            owner: owner.clone(),
            events: events.clone(),
            stop_claiming: CancellationToken::new(),
            stop_leasing: CancellationToken::new(),
            fleet: tokio::sync::Notify::new(),
        });
        let completer = Completer::spawn(
            Arc::new(QueueSink {
                queue: queue.clone(),
                lease_ms: i64::try_from(config.lease_ms).unwrap_or(i64::MAX),
            }),
            CompleterParts {
                owner,
                events: events.clone(),
                stop_claiming: shared.stop_claiming.clone(),
                settings: config.completer.clone(),
                on_spend: {
                    let weak = Arc::downgrade(&shared);
                    Arc::new(move |notice| {
                        if let Some(shared) = weak.upgrade() {
                            spend::tell(&shared, notice);
                        }
                    })
                },
            },
        );
        let stop_running = CancellationToken::new();
        let streams = Arc::new(streams::Streams::default());
        {
            // Runs until every execution has ended (leases stop last), so the end of each
            // attempt finds it to store its stream's tail.
            let weak = Arc::downgrade(&shared);
            let keep = move || {
                weak.upgrade()
                    .map_or(std::time::Duration::from_secs(3_600), |s| {
                        std::time::Duration::from_secs(s.config.get().streams.keep_secs)
                    })
            };
            tokio::spawn(
                streams
                    .clone()
                    .flusher(queue.clone(), keep, shared.stop_leasing.clone()),
            );
        }
        let executor = Arc::new(Executor {
            governor: shared.governor.clone(),
            retry: std::sync::RwLock::new(RetryPolicy::from(&config.retry)),
            events,
            completer: completer.handle(),
            stop_running: stop_running.clone(),
            running: Default::default(),
            streams: streams.clone(),
            shared: Arc::downgrade(&shared),
        });
        let executions = TaskTracker::new();
        let background = TaskTracker::new();
        let start_lane: reload::StartLane = {
            let (shared, executor) = (shared.clone(), executor.clone());
            let (executions, background) = (executions.clone(), background.clone());
            Box::new(move |lane| {
                let producer =
                    Producer::new(shared.clone(), executor.clone(), executions.clone(), lane);
                background.spawn(producer.run());
            })
        };
        let reloader = Arc::new(Reloader::new(
            shared.clone(),
            plugins,
            start_lane,
            executor.clone(),
        ));
        let daemon = Daemon {
            shared: shared.clone(),
            reloader: reloader.clone(),
            executor: executor.clone(),
            completer,
            stop_running,
            executions,
            background: background.clone(),
            leasing: TaskTracker::new(),
            _lock: lock,
        };

        // Watch before the first scan, so that no file dropped in meanwhile goes unnoticed.
        let file_events = Arc::new(tokio::sync::Notify::new());
        let watcher = reload::watch(&config.plugins_dir, file_events.clone());
        // Everything that can fail comes before the first lane starts. The plugins folder's
        // scan (reading, hashing and deserializing each component, and its `info()` call)
        // needs no database: it runs while the store recovers, listens and prepares.
        let (recovered, changes, warmed, scanned) = tokio::join!(
            leases::recover(&shared),
            queue.listen(),
            queue.warm_up(),
            reloader.first_scan()
        );
        recovered?;
        let changes = changes?;
        warmed?;
        let seen = reloader.apply_first(scanned).await?;
        info!(
            owner = %shared.owner,
            "lanes serving {} provider(s) from {}",
            shared.registry.snapshot().len(),
            config.plugins_dir.display()
        );

        background.spawn(reload::refresh_limits_loop(shared.clone()));
        background.spawn(batches::run(shared.clone()));
        if queue.shared() {
            daemon.leasing.spawn(leases::lease_loop(shared.clone()));
            background.spawn(members::membership_loop(shared.clone()));
        }
        if let Some(mut changes) = changes {
            let (shared, executor) = (shared.clone(), executor.clone());
            background.spawn(async move {
                loop {
                    tokio::select! {
                        change = changes.recv() => match change {
                            // Another worker's change: a submission, a freed slot, or a row
                            // back to pending, perhaps for a later retry.
                            Some(Change::Provider(provider)) => {
                                if let Some(lane) = shared.registry.get(&provider) {
                                    lane.note_retry();
                                }
                            }
                            Some(Change::Cancel(id)) => {
                                executor.stop(id);
                            }
                            Some(Change::Workers) => shared.fleet.notify_one(),
                            None => return,
                        },
                        _ = shared.stop_claiming.cancelled() => return,
                    }
                }
            });
        }
        background.spawn(reloader.rescan_loop(seen, file_events, watcher));
        Ok(daemon)
    }

    /// Queues an execution and wakes its lane at once.
    pub async fn submit(&self, new: &NewExecution) -> Result<ExecutionId, StoreError> {
        let mut new = std::borrow::Cow::Borrowed(new);
        if self.shared.routes_to(&new) {
            self.shared.route([new.to_mut()]).await?;
        }
        if new.defer.deferrable {
            batches::hold(&self.shared.config.get(), [new.to_mut()]);
        }
        let id = self.shared.queue.submit(&new).await?;
        self.shared.registry.wake(&new.provider);
        Ok(id)
    }

    /// Queues many executions in one transaction and wakes their lanes.
    pub async fn submit_many(
        &self,
        batch: &[NewExecution],
    ) -> Result<Vec<ExecutionId>, StoreError> {
        let mut batch = std::borrow::Cow::Borrowed(batch);
        if batch.iter().any(|n| self.shared.routes_to(n)) {
            self.shared.route(batch.to_mut().iter_mut()).await?;
        }
        if batch.iter().any(|n| n.defer.deferrable) {
            batches::hold(&self.shared.config.get(), batch.to_mut().iter_mut());
        }
        let ids = self.shared.queue.submit_many(&batch).await?;
        let providers: BTreeSet<&str> = batch.iter().map(|n| n.provider.as_str()).collect();
        for provider in providers {
            self.shared.registry.wake(provider);
        }
        Ok(ids)
    }

    /// The queue this daemon serves.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.shared.queue
    }

    /// This worker's owner id, as recorded on the rows it runs.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// The limit and running count of every lane.
    pub fn lanes(&self) -> BTreeMap<String, (u32, u32)> {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .map(|(name, lane)| (name, (lane.limit(), lane.running())))
            .collect()
    }

    /// A subscription to the daemon's events, from now on.
    pub fn subscribe(&self) -> Subscription {
        self.shared.events.subscribe()
    }

    /// Applies a new, validated config without a restart (see [`Reloader::apply_config`]).
    /// Returns the settings that cannot change while running and kept their old values.
    pub async fn reload_config(&self, config: Config) -> Result<Vec<String>, StoreError> {
        self.reloader.apply_config(config).await
    }

    /// The outcome of every file in the plugins folder, as of the last scan.
    pub async fn plugin_files(&self) -> Vec<crate::plugin::FileReport> {
        self.reloader.files().await
    }

    /// Stops claiming, lets running executions finish within `grace`, returns the rest to
    /// pending without counting their attempt, and writes every result before it returns.
    pub async fn shutdown(self, grace: Duration) {
        info!("shutting down: no new claims; waiting up to {grace:?} for running executions");
        self.shared.stop_claiming.cancel();
        self.background.close();
        self.background.wait().await;
        self.executions.close();
        if tokio::time::timeout(grace, self.executions.wait())
            .await
            .is_err()
        {
            warn!(
                "grace period over: returning {} running execution(s) to pending",
                self.executions.len()
            );
            self.stop_running.cancel();
            self.executions.wait().await;
        }
        // Every execution has handed its result over; write them all.
        self.completer.close().await;
        self.shared.stop_leasing.cancel();
        self.leasing.close();
        self.leasing.wait().await;
        info!("shutdown complete");
    }
}

/// SIGINT and SIGTERM, caught from the moment this is created: install it first, so that a
/// signal during start-up (opening the database, compiling components) is not fatal but
/// stops the daemon gracefully once it has started.
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers now. Must be called within the async runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let catch = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| warn!("cannot listen for {name} ({e})"))
                    .ok()
            };
            StopSignals {
                term: catch(SignalKind::terminate(), "SIGTERM"),
                int: catch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for the first signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
