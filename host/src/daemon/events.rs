//! The event bus: what happens in the daemon, as a closed set of [`Event`]s on a broadcast
//! channel. The API, metrics, the dashboard and policies subscribe here instead of reaching
//! into the daemon.
//!
//! Publishing never waits: a subscriber that falls more than [`CAPACITY`] messages behind
//! loses the oldest ones and is told how many events it missed ([`Lagged`]), so a slow
//! reader never slows the hot path.
//!
//! Events that happen together (one claim's rows, one batch write's ends) go out as one
//! message of up to [`MAX_BATCH`] events ([`EventBus::batch`]): a subscriber that keeps up is
//! woken once for them, not once each. Waking a subscriber is most of what publishing
//! costs, and on a busy daemon each wake moved a task between threads.
//!
//! Each attempt's `Started` is published by its own task, so those cannot be gathered the
//! same way: they wait in the bus ([`EventBus::defer_with`]) and go out together with the
//! next message sent, or when [`EventBus::flush`] is called: by the executor when its
//! attempt first waits (on the provider), and by the completer when results reach it. So a
//! `Started` still comes after its execution's `Claimed` and before its `Finished`, and it
//! is held back at most until its attempt first waits or ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::model::{ErrorKind, ExecutionId};

/// How many messages a subscriber may fall behind before it loses the oldest. A message
/// holds one event, or up to [`MAX_BATCH`] published together.
pub const CAPACITY: usize = 4096;

/// The most events one message holds; it bounds what a lagging subscriber keeps in memory.
pub const MAX_BATCH: usize = 32;

/// How an attempt ended, as the queue recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished with an output.
    Completed,
    /// Failed and will run again after `delay_ms`.
    Retried { kind: ErrorKind, delay_ms: i64 },
    /// Failed for good.
    Failed { kind: ErrorKind },
    /// Taken back without counting the attempt (shutdown, or no free slot after a claim).
    Requeued,
    /// This worker no longer owned the row (its lease expired): nothing was written.
    Lost,
    /// The execution was cancelled while it ran: the attempt was stopped and nothing of it
    /// was written.
    Cancelled,
}

/// Why a lane stopped claiming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseReason {
    /// Its component was removed or rejected, and no other file serves its name.
    NoComponent,
    /// A rate-limited answer asked to wait this long.
    RateLimited { for_ms: i64 },
    /// An unavailable answer asked to wait this long.
    Unavailable { for_ms: i64 },
    /// Its `daily_usd` is spent: it waits this long, for the next UTC day.
    SpendCap { for_ms: i64 },
}

/// What a completed attempt used and cost: for the metrics, and to settle a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub usage: crate::model::Usage,
    /// The model the provider reported.
    pub model: String,
    /// Its cost in USD; `None` when its model has no price.
    pub cost_usd: Option<f64>,
}

/// Something that happened in the daemon. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker claimed an execution for an attempt.
    Claimed {
        id: ExecutionId,
        provider: Arc<str>,
        attempt: i32,
    },
    /// The attempt began running in a fresh instance.
    Started {
        id: ExecutionId,
        provider: Arc<str>,
        attempt: i32,
        /// From submission to this start.
        queue_wait_ms: i64,
    },
    /// The attempt's end is written to the queue.
    Finished {
        id: ExecutionId,
        provider: Arc<str>,
        attempt: i32,
        outcome: Outcome,
        /// How long the attempt ran.
        duration_ms: i64,
        /// From the attempt's end to its result being written (the completer's batch).
        write_ms: i64,
        /// What a completed attempt used and cost.
        spent: Option<Arc<Spent>>,
        /// The provider batch that ran it (see `daemon/batches.rs`): its `duration_ms` is 0,
        /// not a call's, and it is kept out of the latency figures.
        batch: Option<i64>,
    },
    /// A lane's effective limit changed.
    LimitChanged {
        provider: Arc<str>,
        old: u32,
        new: u32,
    },
    /// A component now serves a provider.
    ComponentLoaded {
        provider: Arc<str>,
        file: String,
        version: String,
    },
    /// A component file was rejected.
    ComponentRejected { file: String, reason: String },
    /// A lane stopped claiming.
    LanePaused {
        provider: Arc<str>,
        reason: PauseReason,
    },
    /// A provider's circuit opened (no claims for a cool-down, then one probe at a time) or
    /// closed.
    CircuitChanged {
        provider: Arc<str>,
        open: bool,
        reason: String,
    },
    /// 80% of a daily spend cap is spent, or all of it: told once across the fleet.
    SpendCap(crate::store::SpendNotice),
    /// A submission to this worker was answered from the response cache as it was
    /// inserted, whatever door it came through: completed, with no attempt.
    Cached { id: ExecutionId, provider: Arc<str> },
}

impl Event {
    /// The provider the event is about, if any.
    pub fn provider(&self) -> Option<&str> {
        match self {
            Event::Claimed { provider, .. }
            | Event::Started { provider, .. }
            | Event::Finished { provider, .. }
            | Event::LimitChanged { provider, .. }
            | Event::ComponentLoaded { provider, .. }
            | Event::LanePaused { provider, .. }
            | Event::CircuitChanged { provider, .. }
            | Event::Cached { provider, .. } => Some(provider),
            Event::SpendCap(notice) if notice.scope == crate::store::SpendScope::Provider => {
                Some(&notice.name)
            }
            Event::ComponentRejected { .. } | Event::SpendCap(_) => None,
        }
    }
}

/// Events published together, and the sequence number of the first: a subscriber that
/// lagged counts what it missed from the numbers.
#[derive(Debug, Clone)]
struct Message {
    first: u64,
    events: Arc<[Event]>,
}

/// The publishing side, cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Message>,
    /// Held while sending, so that sequence numbers go out in order.
    state: Arc<Mutex<State>>,
    /// Whether `state.deferred` holds events, read without the lock.
    deferred: Arc<AtomicBool>,
}

struct State {
    /// The sequence number of the next event sent.
    next: u64,
    /// Events published with [`EventBus::defer_with`], not sent yet; they go out before
    /// the next message.
    deferred: Vec<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

/// A subscriber fell behind and lost this many events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event subscriber fell behind and missed {0} event(s)")]
pub struct Lagged(pub u64);

/// One subscription to the bus.
pub struct Subscription {
    rx: broadcast::Receiver<Message>,
    /// The message being read, and the index of its next event.
    current: Option<(Message, usize)>,
    /// The sequence number of the next event this subscriber expects.
    expected: u64,
}

impl Subscription {
    /// The next event; `Err(Lagged)` once after events were lost, then the oldest kept one.
    /// `None` when the daemon is gone.
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        loop {
            if let Some((message, index)) = &mut self.current {
                if let Some(event) = message.events.get(*index) {
                    *index += 1;
                    self.expected = self.expected.saturating_add(1);
                    return Some(Ok(event.clone()));
                }
                self.current = None;
            }
            match self.rx.recv().await {
                Ok(message) => {
                    let missed = message.first.saturating_sub(self.expected);
                    self.expected = message.first;
                    self.current = Some((message, 0));
                    if missed > 0 {
                        return Some(Err(Lagged(missed)));
                    }
                }
                // The next message tells how many events were lost.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Events to publish together as one message, sent when the batch is dropped (or fills up).
/// Build one around a loop whose events belong together, and drop it before anything that
/// must come after them.
pub struct Batch<'a> {
    bus: &'a EventBus,
    events: Vec<Event>,
    listening: bool,
}

impl Batch<'_> {
    /// Adds the event `make` builds, but builds it only when somebody listens.
    pub fn push_with(&mut self, make: impl FnOnce() -> Event) {
        if !self.listening {
            return;
        }
        self.events.push(make());
        if self.events.len() >= MAX_BATCH {
            self.bus.send(std::mem::take(&mut self.events).into());
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.events.is_empty() {
            self.bus.send(std::mem::take(&mut self.events).into());
        }
    }
}

impl EventBus {
    /// A bus that keeps `capacity` messages for each subscriber.
    pub fn new(capacity: usize) -> Self {
        EventBus {
            tx: broadcast::channel(capacity.max(1)).0,
            state: Arc::new(Mutex::new(State {
                next: 0,
                deferred: Vec::new(),
            })),
            deferred: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Publishes an event to every subscriber; never waits.
    pub fn publish(&self, event: Event) {
        // One allocation, not a vector's and then the shared slice's.
        self.send(Arc::from([event]));
    }

    /// Publishes the event `make` builds, but builds it only when somebody listens.
    pub fn publish_with(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            self.publish(make());
        }
    }

    /// A batch of events to publish together (see [`Batch`]).
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            bus: self,
            events: Vec::new(),
            listening: self.tx.receiver_count() > 0,
        }
    }

    /// Publishes the event `make` builds (only when somebody listens) with the next message
    /// sent, or at the next [`EventBus::flush`]; at once when [`MAX_BATCH`] are waiting.
    /// For events that many tasks publish one each, and that may arrive a moment late:
    /// whoever publishes one must make sure that a flush or a message follows soon.
    pub fn defer_with(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let event = make();
        let mut state = self.lock();
        state.deferred.push(event);
        self.deferred.store(true, Ordering::Release);
        if state.deferred.len() >= MAX_BATCH {
            self.send_deferred(&mut state);
        }
    }

    /// Sends the deferred events, if any, as one message.
    pub fn flush(&self) {
        if self.deferred.load(Ordering::Acquire) {
            self.send_deferred(&mut self.lock());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, events: Arc<[Event]>) {
        let mut state = self.lock();
        self.send_deferred(&mut state);
        self.send_locked(&mut state, events);
    }

    fn send_deferred(&self, state: &mut State) {
        if state.deferred.is_empty() {
            return;
        }
        let events = std::mem::take(&mut state.deferred).into();
        self.deferred.store(false, Ordering::Release);
        self.send_locked(state, events);
    }

    fn send_locked(&self, state: &mut State, events: Arc<[Event]>) {
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let first = state.next;
        state.next = first.saturating_add(count);
        // An error only means that nobody listens.
        let _ = self.tx.send(Message { first, events });
    }

    /// A new subscription: it sees events sent from now on.
    pub fn subscribe(&self) -> Subscription {
        // Under the lock, so that no message is sent between reading the number and
        // joining the channel.
        let state = self.lock();
        Subscription {
            rx: self.tx.subscribe(),
            current: None,
            expected: state.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(new: u32) -> Event {
        Event::LimitChanged {
            provider: Arc::from("p"),
            old: 1,
            new,
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_many_it_missed_and_publishing_never_waits() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for n in 0..10 {
            bus.publish(limit(n));
            // The fast one keeps up.
            assert_eq!(fast.recv().await, Some(Ok(limit(n))));
        }
        assert_eq!(slow.recv().await, Some(Err(Lagged(6))));
        for n in 6..10 {
            assert_eq!(slow.recv().await, Some(Ok(limit(n))));
        }
    }

    #[tokio::test]
    async fn events_published_together_are_one_message_and_a_lag_counts_events() {
        let bus = EventBus::new(2);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        let publish = |range: std::ops::Range<u32>| {
            let mut batch = bus.batch();
            for n in range {
                batch.push_with(|| limit(n));
            }
        };
        publish(0..3);
        assert_eq!(fast.rx.len(), 1, "three events, one message");
        for n in 0..3 {
            assert_eq!(fast.recv().await, Some(Ok(limit(n))));
        }
        // 40 events make a full message and one of 8.
        publish(3..43);
        assert_eq!(fast.rx.len(), 2);
        for n in 3..43 {
            assert_eq!(fast.recv().await, Some(Ok(limit(n))));
        }
        bus.publish(limit(43));
        assert_eq!(fast.recv().await, Some(Ok(limit(43))));
        // The channel kept the last two messages: the slow one missed 3 + 32 events.
        assert_eq!(slow.recv().await, Some(Err(Lagged(35))));
        for n in 35..44 {
            assert_eq!(slow.recv().await, Some(Ok(limit(n))));
        }
        // A subscription joined later starts at the next event.
        let mut late = bus.subscribe();
        publish(44..46);
        assert_eq!(late.recv().await, Some(Ok(limit(44))));
        assert_eq!(late.recv().await, Some(Ok(limit(45))));
    }

    #[tokio::test]
    async fn deferred_events_go_out_with_the_next_message_or_a_flush_in_order() {
        let bus = EventBus::new(8);
        let mut sub = bus.subscribe();
        // Nothing to read: no message waiting, and the one read (if any) read to its end.
        let pending = |sub: &mut Subscription| {
            sub.rx.is_empty()
                && sub
                    .current
                    .as_ref()
                    .is_none_or(|(message, next)| *next >= message.events.len())
        };
        // Deferred ones wait: nothing is sent, and a flush sends them as one message.
        bus.defer_with(|| limit(0));
        bus.defer_with(|| limit(1));
        assert!(pending(&mut sub), "deferred events wait for a flush");
        bus.flush();
        assert_eq!(sub.rx.len(), 1, "two deferred events are one message");
        assert_eq!(sub.recv().await, Some(Ok(limit(0))));
        assert_eq!(sub.recv().await, Some(Ok(limit(1))));
        bus.flush();
        assert!(
            pending(&mut sub),
            "a flush with nothing deferred sends nothing"
        );
        // A message sent after deferred events carries them first: order is kept.
        bus.defer_with(|| limit(2));
        {
            let mut batch = bus.batch();
            batch.push_with(|| limit(3));
        }
        bus.defer_with(|| limit(4));
        bus.publish(limit(5));
        for n in 2..6 {
            assert_eq!(sub.recv().await, Some(Ok(limit(n))));
        }
        // A full batch of deferred events goes out without waiting for a flush.
        for n in 0..MAX_BATCH {
            bus.defer_with(|| limit(u32::try_from(n).unwrap()));
        }
        assert_eq!(sub.rx.len(), 1);
        for n in 0..MAX_BATCH {
            assert_eq!(sub.recv().await, Some(Ok(limit(u32::try_from(n).unwrap()))));
        }
        assert!(pending(&mut sub));
    }

    #[tokio::test]
    async fn events_are_built_only_for_listeners() {
        let bus = EventBus::new(4);
        bus.publish_with(|| unreachable!("nobody listens"));
        bus.defer_with(|| unreachable!("nobody listens"));
        bus.batch().push_with(|| unreachable!("nobody listens"));
        let mut sub = bus.subscribe();
        bus.publish_with(|| limit(3));
        assert_eq!(sub.recv().await, Some(Ok(limit(3))));
        drop(bus);
        assert_eq!(sub.recv().await, None);
    }
}
