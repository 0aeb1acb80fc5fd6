//! The registry of lanes: one [`Lane`] per provider name, the component serving it, and the
//! inputs of its limit, which the limit's owner ([`crate::limits`]) resolves. It opens lanes for new providers, idles lanes whose component is gone, and
//! applies limits stored at run time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use super::events::{Event, EventBus, PauseReason};
use super::lane::Lane;
use super::pool::InstancePool;
use crate::config::Config;
use crate::limits::{self, LimitInputs};
use crate::plugin::{Catalog, Provider};

/// What [`Registry::apply`] changed.
pub struct Applied {
    /// New lanes, whose producers must start.
    pub opened: Vec<Arc<Lane>>,
    /// Lanes now served by a new binding (a new component, config or key).
    pub rebound: Vec<Arc<Lane>>,
}

/// Every lane of this worker, by provider name.
pub struct Registry {
    events: EventBus,
    /// The engine's instance pool, which every lane's slots take from.
    pool: Option<Arc<InstancePool>>,
    /// Whether the lanes' slots add up to more than the pool, as last said in the log.
    over_pool: std::sync::atomic::AtomicBool,
    lanes: RwLock<BTreeMap<String, Arc<Lane>>>,
}

impl Registry {
    /// An empty registry whose lanes take instances of `pool`.
    pub fn new(events: EventBus, pool: Option<Arc<InstancePool>>) -> Self {
        Registry {
            events,
            pool,
            over_pool: std::sync::atomic::AtomicBool::new(false),
            lanes: RwLock::new(BTreeMap::new()),
        }
    }

    /// The lane of `name`, if one is open.
    pub fn get(&self, name: &str) -> Option<Arc<Lane>> {
        self.lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every lane, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<Lane>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The instance pool's use and the lanes' slots, when the engine has a pool.
    pub fn pool(&self) -> Option<super::pool::PoolUse> {
        let mut usage = self.pool.as_ref()?.usage();
        usage.slots = self.slots_total();
        Some(usage)
    }

    /// Wakes the lane of `name`, if one is open.
    pub fn wake(&self, name: &str) {
        if let Some(lane) = self.get(name) {
            lane.wake();
        }
    }

    /// The inputs of `provider`'s limit under `config`, given the run-time limits and the
    /// adaptive limit this worker knows (resolved by [`LimitInputs::resolve`]).
    pub fn inputs_of(
        config: &Config,
        provider: &Provider,
        runtime: &BTreeMap<String, u32>,
        adaptive: Option<u32>,
    ) -> LimitInputs {
        LimitInputs {
            provider: provider.name.to_string(),
            default: Some(provider.default_limit),
            configured: config
                .providers
                .get(provider.name.as_ref())
                .and_then(|p| p.limit),
            runtime: runtime.get(provider.name.as_ref()).copied(),
            fallback: config.fallback_limit,
            adaptive,
        }
    }

    /// Serves each lane from the catalog's component: opens lanes for new providers (and
    /// returns them, for their producers to start), and idles lanes whose component is gone.
    /// A lane whose provider was bound anew (its config or secrets changed) serves the new
    /// binding, and is returned too; running executions finish on the one they started with.
    pub fn apply(
        &self,
        config: &Config,
        catalog: &Catalog,
        runtime: &BTreeMap<String, u32>,
    ) -> Applied {
        let mut opened = Vec::new();
        let mut rebound = Vec::new();
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        for (name, lane) in lanes.iter() {
            if !catalog.providers.contains_key(name) && lane.provider().is_some() {
                warn!("provider {name}: component removed; its lane stops claiming");
                lane.set_provider(None);
                self.events.publish(Event::LanePaused {
                    provider: lane.name_arc(),
                    reason: PauseReason::NoComponent,
                });
            }
        }
        for (name, provider) in &catalog.providers {
            let loaded = || Event::ComponentLoaded {
                provider: provider.name.clone(),
                file: provider.component.file.clone(),
                version: provider.component.info.version.clone(),
            };
            match lanes.get(name) {
                Some(lane) => {
                    let same = lane
                        .provider()
                        .is_some_and(|old| Arc::ptr_eq(&old.component, &provider.component));
                    if !same {
                        info!("{}: now serving its lane", provider.label());
                        lane.set_provider(Some(provider.clone()));
                        self.events.publish(loaded());
                        rebound.push(lane.clone());
                    } else if !lane
                        .provider()
                        .is_some_and(|old| Arc::ptr_eq(&old, provider))
                    {
                        lane.set_provider(Some(provider.clone()));
                        rebound.push(lane.clone());
                    }
                }
                None => {
                    let inputs = Self::inputs_of(config, provider, runtime, None);
                    let limit = inputs.resolve();
                    let lane = Arc::new(Lane::with_pool(name, limit.effective, self.pool.clone()));
                    limits::apply(&lane, inputs);
                    lane.set_provider(Some(provider.clone()));
                    info!(
                        "{}: lane open, limit {} ({:?})",
                        provider.label(),
                        limit.effective,
                        limit.source
                    );
                    self.events.publish(loaded());
                    lanes.insert(name.clone(), lane.clone());
                    opened.push(lane);
                }
            }
        }
        drop(lanes);
        self.check_pool();
        Applied { opened, rebound }
    }

    /// The slots of every lane served by a component: what this worker may run at once if
    /// the pool allowed it.
    pub fn slots_total(&self) -> u64 {
        self.snapshot()
            .values()
            .filter(|lane| lane.provider().is_some())
            .map(|lane| u64::from(lane.slots()))
            .sum()
    }

    /// Says in the log when the lanes' slots come to add up to more than the instance
    /// pool, and when they fit again: the work beyond the pool then waits as pending. The
    /// open-file limit is checked against the calls that can run at once, the slots or the
    /// pool, whichever is fewer ([`super::fds::check`]).
    fn check_pool(&self) {
        let total = self.slots_total();
        let calls = self
            .pool
            .as_ref()
            .map_or(total, |p| total.min(u64::from(p.size())));
        super::fds::check(calls);
        let Some(pool) = &self.pool else {
            return;
        };
        let size = pool.size();
        let over = total > u64::from(size);
        if self
            .over_pool
            .swap(over, std::sync::atomic::Ordering::SeqCst)
            == over
        {
            return;
        }
        if over {
            warn!(
                "the lanes' limits add up to {total}, more than the {size} instances that \
                 executions may hold ([engine] max_instances): work beyond the pool waits as \
                 pending; raise max_instances and restart to run more at once"
            );
        } else {
            info!("the lanes' limits add up to {total}, within the instance pool of {size}");
        }
    }

    /// Resizes every lane whose effective limit changed under `config`, `runtime` and the
    /// adaptive limits.
    pub fn apply_limits(
        &self,
        config: &Config,
        runtime: &BTreeMap<String, u32>,
        adaptive: &std::collections::HashMap<String, u32>,
    ) {
        for (name, lane) in self.snapshot() {
            let Some(provider) = lane.provider() else {
                continue;
            };
            let inputs = Self::inputs_of(config, &provider, runtime, adaptive.get(&name).copied());
            let source = inputs.resolve().source;
            if let Some((old, new)) = limits::apply(&lane, inputs) {
                info!("Limit of provider {name} changed from {old} to {new} ({source:?})");
                self.events.publish(Event::LimitChanged {
                    provider: lane.name_arc(),
                    old,
                    new,
                });
            }
        }
        self.check_pool();
    }
}
