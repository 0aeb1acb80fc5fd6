//! One provider's lane: a semaphore sized to its effective limit, the component serving it,
//! and the signal that wakes its dispatch loop.
//!
//! The semaphore is resizable. Raising the limit adds permits; lowering it forgets free
//! permits at once and records the rest as a debt that running executions pay back as they
//! finish, so no start ever exceeds the new limit (the completer weighs a refill claimed
//! in its write again once the write returns, for the same reason).
//!
//! On a shared queue the limit is the fleet's, and the semaphore holds this worker's even
//! share of it: the limit divided by the live workers that serve the provider, rounded up.
//! The store's claim still holds the whole fleet to the limit itself.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::pool::{Instance, InstancePool};
use crate::model::Execution;
use crate::plugin::Provider;

struct Capacity {
    limit: u32,
    /// Live workers of the fleet that serve the provider, this one included.
    workers: u32,
    /// Permits to forget as they come back, after a lowered limit or share.
    debt: u32,
}

impl Capacity {
    /// This worker's slots: its even share of the limit.
    fn slots(&self) -> u32 {
        share(self.limit, self.workers)
    }
}

pub use crate::limits::share;

/// A count of slots as semaphore permits.
fn permits(slots: u32) -> usize {
    usize::try_from(slots).unwrap_or(usize::MAX)
}

/// A provider's lane.
pub struct Lane {
    name: Arc<str>,
    semaphore: Arc<Semaphore>,
    capacity: Mutex<Capacity>,
    running: AtomicU32,
    /// The inputs its limit was last resolved from ([`crate::limits::apply`]).
    inputs: Mutex<crate::limits::LimitInputs>,
    /// Shared with the instance pool, which wakes the lane when an instance it waits for
    /// frees.
    wake: Arc<Notify>,
    /// The engine's instance pool: each slot holds an instance too. `None` without a pool
    /// (`[engine] pooling = false`), where instances are not bounded.
    pool: Option<Arc<InstancePool>>,
    provider: RwLock<Option<Arc<Provider>>>,
    /// Whether a pending row may be waiting for a later `not_before` (a retry): only then
    /// is the next due time worth a query.
    retry_pending: AtomicBool,
    /// No claims before this instant: a policy's pause (rate limit, open circuit). The
    /// store's claim enforces it for the fleet; this keeps the lane from even asking.
    pause: Mutex<Pause>,
    /// Executions the completer claimed into slots its batch freed, for the producer to
    /// start; `None` once the producer has stopped.
    handed: Mutex<Option<Vec<(Execution, Slot)>>>,
}

/// A lane's pause, and the ramp after it.
#[derive(Default)]
struct Pause {
    until: Option<std::time::Instant>,
    /// How long claims ramp up once the pause ends.
    ramp: std::time::Duration,
    /// While ramping: until when, and the time between single claims.
    ramping: Option<(std::time::Instant, std::time::Duration)>,
}

/// A running execution's slot, and the instance it runs in; give it back with
/// [`Lane::release`].
pub struct Slot(OwnedSemaphorePermit, Option<Instance>);

impl Lane {
    /// A lane with `limit` slots (at least 1), no component yet and no instance pool.
    pub fn new(name: &str, limit: u32) -> Self {
        Self::with_pool(name, limit, None)
    }

    /// A lane with `limit` slots (at least 1), each of which takes an instance of `pool`
    /// too, and no component yet.
    pub fn with_pool(name: &str, limit: u32, pool: Option<Arc<InstancePool>>) -> Self {
        let limit = limit.max(1);
        Lane {
            name: Arc::from(name),
            semaphore: Arc::new(Semaphore::new(permits(limit))),
            capacity: Mutex::new(Capacity {
                limit,
                workers: 1,
                debt: 0,
            }),
            running: AtomicU32::new(0),
            inputs: Mutex::new(crate::limits::LimitInputs {
                provider: name.to_string(),
                fallback: limit,
                ..Default::default()
            }),
            wake: Arc::new(Notify::new()),
            pool,
            provider: RwLock::new(None),
            // Rows from before this start may be waiting for their retry.
            retry_pending: AtomicBool::new(true),
            pause: Mutex::new(Pause::default()),
            handed: Mutex::new(Some(Vec::new())),
        }
    }

    /// Whether a claim for this lane may take any free slot now: no pause, no ramp after
    /// one, and no lowered limit or share still to pay back. Otherwise the producer decides
    /// how many to claim.
    pub fn claims_freely(&self) -> bool {
        let pause = self.pause();
        let now = std::time::Instant::now();
        pause.until.is_none()
            && pause.ramping.is_none_or(|(end, _)| end <= now)
            && self.lock_capacity().debt == 0
    }

    /// Hands executions claimed into this lane's slots to its producer, and wakes it (not
    /// for none). Gives them back when the producer has stopped.
    pub fn hand_over(&self, claimed: Vec<(Execution, Slot)>) -> Result<(), Vec<(Execution, Slot)>> {
        if claimed.is_empty() {
            return Ok(());
        }
        match self.handed().as_mut() {
            Some(handed) => handed.extend(claimed),
            None => return Err(claimed),
        }
        self.wake();
        Ok(())
    }

    /// Takes what was handed over, to start it.
    pub fn take_handed(&self) -> Vec<(Execution, Slot)> {
        self.handed()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Refuses further hand-overs (the producer stops) and returns what is left to start.
    pub fn close_hand_over(&self) -> Vec<(Execution, Slot)> {
        self.handed().take().unwrap_or_default()
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, Option<Vec<(Execution, Slot)>>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses claims until `until`, unless a later pause is in place; once it ends, claims
    /// ramp up over `ramp` (one at a time) so that the work it held back resumes spread, not
    /// in one instant. Returns whether the pause grew.
    pub fn pause_until(&self, until: std::time::Instant, ramp: std::time::Duration) -> bool {
        let mut pause = self.pause();
        if pause.until.is_some_and(|p| p >= until) {
            return false;
        }
        pause.until = Some(until);
        pause.ramp = ramp;
        true
    }

    /// Ends a pause at once, without a ramp, and wakes the lane.
    pub fn resume(&self) {
        *self.pause() = Pause::default();
        self.wake();
    }

    /// How long the pause still lasts, if the lane is paused.
    pub fn paused_for(&self) -> Option<std::time::Duration> {
        let mut pause = self.pause();
        let until = pause.until?;
        let now = std::time::Instant::now();
        let left = until.saturating_duration_since(now);
        if !left.is_zero() {
            return Some(left);
        }
        pause.until = None;
        if !pause.ramp.is_zero() {
            let step = pause.ramp / self.limit().max(1);
            pause.ramping = Some((now + pause.ramp, step));
        }
        None
    }

    /// While claims ramp up after a pause: the time between single claims.
    pub fn ramp_step(&self) -> Option<std::time::Duration> {
        let mut pause = self.pause();
        match pause.ramping {
            Some((end, step)) if std::time::Instant::now() < end => Some(step),
            _ => {
                pause.ramping = None;
                None
            }
        }
    }

    fn pause(&self) -> std::sync::MutexGuard<'_, Pause> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider's name, shared (for events).
    pub fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// The effective limit (the fleet's, on a shared queue).
    pub fn limit(&self) -> u32 {
        self.lock_capacity().limit
    }

    /// This worker's slots: the limit, or on a shared queue its share of it.
    pub fn slots(&self) -> u32 {
        self.lock_capacity().slots()
    }

    /// Executions running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }

    /// Slots free now.
    pub fn free(&self) -> u32 {
        u32::try_from(self.semaphore.available_permits()).unwrap_or(u32::MAX)
    }

    fn lock_capacity(&self) -> std::sync::MutexGuard<'_, Capacity> {
        // A panic while holding this lock cannot leave the counts half-updated (every update
        // is a single assignment), so a poisoned lock is still consistent.
        self.capacity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resizes the lane. Returns the previous limit. Only the limit's owner calls it
    /// ([`crate::limits::apply`]), and the lane's own tests.
    pub(crate) fn set_limit(&self, limit: u32) -> u32 {
        let limit = limit.max(1);
        let mut cap = self.lock_capacity();
        let old = cap.limit;
        self.resize(&mut cap, |c| c.limit = limit);
        drop(cap);
        self.wake();
        old
    }

    /// Shares the limit among `workers` live workers of the fleet (this one included).
    /// Returns this worker's slots before and after.
    pub fn set_workers(&self, workers: u32) -> (u32, u32) {
        let (old, new) = self.resize(&mut self.lock_capacity(), |c| c.workers = workers.max(1));
        if new != old {
            self.wake();
        }
        (old, new)
    }

    /// Applies `change` to the capacity and resizes the semaphore to its new slots.
    /// Returns the slots before and after.
    fn resize(&self, cap: &mut Capacity, change: impl FnOnce(&mut Capacity)) -> (u32, u32) {
        let old = cap.slots();
        change(cap);
        let new = cap.slots();
        if new > old {
            let mut grow = new - old;
            let repaid = grow.min(cap.debt);
            cap.debt -= repaid;
            grow -= repaid;
            self.semaphore.add_permits(permits(grow));
        } else if new < old {
            let shrink = old - new;
            let forgotten =
                u32::try_from(self.semaphore.forget_permits(permits(shrink))).unwrap_or(shrink);
            cap.debt += shrink - forgotten;
        }
        (old, new)
    }

    /// The limit its sources give, above any adaptive limit.
    pub fn ceiling(&self) -> u32 {
        self.inputs().sourced().0
    }

    /// The inputs its limit was last resolved from.
    pub fn inputs(&self) -> crate::limits::LimitInputs {
        self.inputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the inputs of its limit; only [`crate::limits::apply`] calls it, with the
    /// limit they resolve to.
    pub(crate) fn set_inputs(&self, inputs: crate::limits::LimitInputs) {
        *self.inputs.lock().unwrap_or_else(|p| p.into_inner()) = inputs;
    }

    /// Takes a free slot and a free instance of the pool, if there are both (see
    /// [`Lane::wait_for_instance`] for a lane that found no instance).
    pub fn try_acquire(&self) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        let instance = match &self.pool {
            Some(pool) => match pool.try_take() {
                Some(instance) => Some(instance),
                None => {
                    // The permit goes back as a released slot's does: a limit lowered
                    // while it was held made it a debt to pay, not a free slot.
                    let mut cap = self.lock_capacity();
                    if cap.debt > 0 {
                        cap.debt -= 1;
                        permit.forget();
                    }
                    return None;
                }
            },
            None => None,
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        Some(Slot(permit, instance))
    }

    /// Takes up to `n` slots, each with an instance. Fewer come back when the lane has
    /// fewer free slots, or when the instance pool is full: that counts as a claim held
    /// back by the pool.
    pub fn acquire_up_to(&self, n: u32) -> Vec<Slot> {
        let slots: Vec<Slot> = (0..n).map_while(|_| self.try_acquire()).collect();
        if slots.len() < permits(n)
            && self.free() > 0
            && let Some(pool) = &self.pool
        {
            pool.note_held_back();
        }
        slots
    }

    /// Has the lane woken when an instance of the pool frees: it has free slots, found no
    /// free instance, and may have work for one (see `pool`).
    pub fn wait_for_instance(&self) {
        if let Some(pool) = &self.pool {
            pool.wait(&self.wake);
        }
    }

    /// Whether other lanes wait for an instance of the pool this lane's slots take from.
    pub fn pool_contended(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.contended())
    }

    /// Gives a slot back (or forgets it, to pay a lowered limit's debt) and wakes the lane.
    pub fn release(&self, slot: Slot) {
        self.release_quietly(slot);
        self.wake();
    }

    /// Gives a slot back without waking the lane: the caller frees several, then wakes it
    /// once, so that they make one claim. Returns whether the slot paid a debt instead of
    /// coming back (the limit or the share was lowered).
    pub fn release_quietly(&self, slot: Slot) -> bool {
        self.running.fetch_sub(1, Ordering::SeqCst);
        let mut cap = self.lock_capacity();
        if cap.debt > 0 {
            cap.debt -= 1;
            // The lane's permit is forgotten; the instance goes back to the pool.
            let Slot(permit, instance) = slot;
            permit.forget();
            drop(instance);
            true
        } else {
            drop(slot);
            false
        }
    }

    /// Wakes the dispatch loop: a slot freed, work arrived or the limit changed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Lane::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Notes that a row may be waiting for a retry time, and wakes the lane.
    pub fn note_retry(&self) {
        self.retry_pending.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Notes that a row may still be waiting for a retry time, without waking the lane.
    pub fn note_retry_quietly(&self) {
        self.retry_pending.store(true, Ordering::SeqCst);
    }

    /// Whether a retry may be pending, leaving the note as it is.
    pub fn retry_noted(&self) -> bool {
        self.retry_pending.load(Ordering::SeqCst)
    }

    /// Whether a retry may be pending; clears the note (a caller that finds one notes it
    /// again).
    pub fn take_retry_note(&self) -> bool {
        self.retry_pending.swap(false, Ordering::SeqCst)
    }

    /// The component serving this lane, if any.
    pub fn provider(&self) -> Option<Arc<Provider>> {
        self.provider
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves the lane from `provider` (or stops claiming, with `None`). Running executions
    /// finish on the component they started with.
    pub fn set_provider(&self, provider: Option<Arc<Provider>>) {
        *self.provider.write().unwrap_or_else(|p| p.into_inner()) = provider;
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_the_limit_blocks_starts_until_running_drops_below_it() {
        let lane = Lane::new("a", 4);
        let slots: Vec<Slot> = (0..4).map(|_| lane.try_acquire().unwrap()).collect();
        lane.set_limit(2);
        assert!(lane.try_acquire().is_none());
        let mut slots = slots.into_iter();
        lane.release(slots.next().unwrap());
        lane.release(slots.next().unwrap());
        assert!(
            lane.try_acquire().is_none(),
            "2 still run: the limit is reached"
        );
        lane.release(slots.next().unwrap());
        let again = lane.try_acquire().expect("1 runs, limit 2");
        assert!(lane.try_acquire().is_none());
        lane.release(again);
        lane.release(slots.next().unwrap());
        assert_eq!(lane.free(), 2);
    }

    #[test]
    fn a_fleet_limit_is_shared_evenly_and_rounded_up() {
        let lane = Lane::new("a", 10);
        assert_eq!(lane.set_workers(3), (10, 4));
        assert_eq!((lane.limit(), lane.slots(), lane.free()), (10, 4, 4));
        let held: Vec<Slot> = (0..4).map(|_| lane.try_acquire().unwrap()).collect();
        assert!(lane.try_acquire().is_none(), "the share is reached");
        // A fourth worker joins: the share drops to 3 while 4 run, so one slot that comes
        // back is forgotten.
        assert_eq!(lane.set_workers(4), (4, 3));
        let mut held = held.into_iter();
        lane.release(held.next().unwrap());
        assert_eq!(lane.free(), 0);
        lane.release(held.next().unwrap());
        assert_eq!(lane.free(), 1);
        // The limit moves the share too: 20 over 4 workers.
        lane.set_limit(20);
        assert_eq!((lane.slots(), lane.free()), (5, 3));
        // The others leave: the whole limit is this worker's.
        assert_eq!(lane.set_workers(1), (5, 20));
        assert_eq!(lane.free(), 18);
        drop(held);
    }

    #[test]
    fn raising_the_limit_repays_debt_first() {
        let lane = Lane::new("a", 3);
        let held: Vec<Slot> = (0..3).map(|_| lane.try_acquire().unwrap()).collect();
        lane.set_limit(1); // debt 2
        lane.set_limit(4); // repays 2, adds 1
        assert_eq!(lane.free(), 1);
        for slot in held {
            lane.release(slot);
        }
        assert_eq!(lane.free(), 4);
        assert_eq!(lane.limit(), 4);
    }
}
