//! The instance pool, as the claim sees it: one permit per component instance an attempt
//! may hold. The engine's pooling allocator is fixed at start (`[engine] max_instances`), and
//! each of its slots reserves address space, so it cannot grow with the limits. A lane takes
//! an instance together with each slot, before it claims: no execution is claimed without a
//! free instance to run it in, so work beyond the pool waits as pending and never fails.
//!
//! A lane that had free slots but found no free instance, and may have work for them, waits
//! for one: the next instance freed wakes every lane that waits, and their producers claim
//! again. A lane waits only when it took no instance at all, or when its claim filled every
//! instance it took: one that claimed fewer rows than it held instances has nothing more it
//! can claim now (its queue is empty, or a tenant limit, a budget, a cap or a retry's time
//! holds the rest, each of which wakes it by its own means).
//! (Every lane that found the pool empty used to wait: then an idle worker whose limits add
//! up to more than the pool never rested. Each lane's empty claim took instances, so the
//! others found the pool short, waited, and were woken when it gave them back, to make an
//! empty claim of their own: 20,000 claims in 4 s, 88% of a core, with nothing queued.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The engine's instance pool, shared by every lane of a worker.
pub struct InstancePool {
    /// Instances attempts may hold at once: `[engine] max_instances`.
    size: u32,
    /// The engine's instance slots, the reserve for loading components included.
    engine: u32,
    semaphore: Arc<Semaphore>,
    /// Lanes that found no free instance and may have work for one, to wake when one frees.
    waiting: Mutex<Vec<Arc<Notify>>>,
    /// Whether `waiting` may hold a lane: an instance freed while none waits (the common
    /// case) takes no lock.
    any_waiting: AtomicBool,
    /// Times a claim took fewer slots than its lane had free, for want of an instance.
    held_back: AtomicU64,
}

/// Pool use, for the API, the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// Instances attempts may hold at once (`[engine] max_instances`).
    pub size: u32,
    /// The engine's instance slots, the reserve for loading components included.
    pub engine: u32,
    /// Instances held by attempts now.
    pub in_use: u32,
    /// Lanes waiting for a free instance now.
    pub waiting: u32,
    /// Claims held back by a full pool since start.
    pub held_back: u64,
    /// The slots of the worker's lanes, added up (set by the registry, which knows them).
    pub slots: u64,
}

/// One instance, held with a lane's slot for the attempt that runs in it. Dropping it frees
/// the instance and wakes the lanes that wait for one.
pub struct Instance {
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<InstancePool>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        drop(self.permit.take());
        // The permit back before the look at the list (see `InstancePool::wait`).
        std::sync::atomic::fence(Ordering::SeqCst);
        self.pool.wake_waiting();
    }
}

impl InstancePool {
    /// The pool of the engine `config` describes; `None` without a pooling allocator,
    /// where instances are not bounded.
    pub fn of(config: &crate::config::Config) -> Option<Arc<Self>> {
        config.engine.pooling.then(|| Self::new(&config.engine))
    }

    /// The pool of an engine configured by `engine`: `max_instances` for executions.
    pub fn new(engine: &crate::config::EngineConfig) -> Arc<Self> {
        let size = engine.max_instances.max(1);
        Arc::new(InstancePool {
            size,
            engine: engine.engine_slots(),
            semaphore: Arc::new(Semaphore::new(usize::try_from(size).unwrap_or(usize::MAX))),
            waiting: Mutex::new(Vec::new()),
            any_waiting: AtomicBool::new(false),
            held_back: AtomicU64::new(0),
        })
    }

    /// Instances attempts may hold at once.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Takes a free instance, if there is one.
    pub fn try_take(self: &Arc<Self>) -> Option<Instance> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(Instance {
                permit: Some(permit),
                pool: self.clone(),
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// Notes that `lane` waits for an instance (its `wake`, notified when one frees).
    pub fn wait(&self, lane: &Arc<Notify>) {
        let mut waiting = self.lock_waiting();
        if !waiting.iter().any(|w| Arc::ptr_eq(w, lane)) {
            waiting.push(lane.clone());
        }
        self.any_waiting.store(true, Ordering::SeqCst);
        drop(waiting);
        // An instance freed between the try and the note would wake no one. The fence keeps
        // the note before the look at the permits (the semaphore's own ordering is weaker).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.semaphore.available_permits() > 0 {
            self.wake_waiting();
        }
    }

    /// Counts a claim held back by the pool.
    pub fn note_held_back(&self) {
        self.held_back.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether lanes wait for an instance: a batch's freed slots then go back to the pool,
    /// for every lane to claim, rather than to a refill of their own lane.
    pub fn contended(&self) -> bool {
        self.any_waiting.load(Ordering::SeqCst)
    }

    /// Pool use now.
    pub fn usage(&self) -> PoolUse {
        let free = u32::try_from(self.semaphore.available_permits()).unwrap_or(u32::MAX);
        PoolUse {
            size: self.size,
            engine: self.engine,
            in_use: self.size.saturating_sub(free),
            waiting: u32::try_from(self.lock_waiting().len()).unwrap_or(u32::MAX),
            held_back: self.held_back.load(Ordering::Relaxed),
            slots: 0,
        }
    }

    fn wake_waiting(&self) {
        if !self.any_waiting.load(Ordering::SeqCst) {
            return;
        }
        let waiting = {
            let mut list = self.lock_waiting();
            self.any_waiting.store(false, Ordering::SeqCst);
            std::mem::take(&mut *list)
        };
        for lane in waiting {
            lane.notify_one();
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Notify>>> {
        // Every update is a single push or take: a poisoned list is still whole.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(max_instances: u32) -> crate::config::EngineConfig {
        crate::config::EngineConfig {
            pooling: true,
            max_instances,
        }
    }

    #[test]
    fn the_engine_keeps_a_few_slots_more_for_info_calls() {
        for (max, slots) in [(1, 2), (2, 3), (256, 264), (10_000, 10_008)] {
            let pool = InstancePool::new(&engine(max));
            assert_eq!((pool.size(), pool.usage().engine), (max, slots));
        }
    }

    #[tokio::test]
    async fn a_freed_instance_wakes_the_lanes_that_wait() {
        let pool = InstancePool::new(&engine(1));
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let held = pool.try_take().expect("one instance");
        assert!(pool.try_take().is_none());
        assert!(!pool.contended(), "finding none is not waiting");
        pool.wait(&a);
        pool.wait(&b);
        pool.wait(&b);
        assert_eq!(pool.usage().waiting, 2, "noted once");
        assert!(pool.contended());
        drop(held);
        assert!(!pool.contended());
        // Both were told, even though neither was waiting on its `Notify` yet.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.notified())
            .await
            .expect("a woken");
        tokio::time::timeout(std::time::Duration::from_secs(1), b.notified())
            .await
            .expect("b woken");
        assert_eq!(pool.usage().in_use, 0);
    }
}
