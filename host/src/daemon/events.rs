//! The event bus: what happens in the daemon, as a closed set of [`Event`]s on a broadcast
//! channel. The API, metrics, the dashboard and policies subscribe here instead of reaching
//! into the daemon.
//!
//! Publishing never waits: a subscriber that falls more than [`CAPACITY`] events behind
//! loses the oldest ones and is told how many ([`Lagged`]), so a slow reader never slows the
//! hot path.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::{ErrorKind, ExecutionId};

/// How many events a subscriber may fall behind before it loses the oldest.
pub const CAPACITY: usize = 4096;

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
        /// Tokens the provider reported, for completed attempts.
        tokens: Option<(u32, u32)>,
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
            | Event::CircuitChanged { provider, .. } => Some(provider),
            Event::ComponentRejected { .. } => None,
        }
    }
}

/// The publishing side, cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
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
    rx: broadcast::Receiver<Event>,
}

impl Subscription {
    /// The next event; `Err(Lagged)` once after events were lost, then the oldest kept one.
    /// `None` when the daemon is gone.
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.recv().await {
            Ok(event) => Some(Ok(event)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl EventBus {
    /// A bus that keeps `capacity` events for each subscriber.
    pub fn new(capacity: usize) -> Self {
        EventBus {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Publishes an event to every subscriber; never waits.
    pub fn publish(&self, event: Event) {
        // An error only means that nobody listens.
        let _ = self.tx.send(event);
    }

    /// Publishes the event `make` builds, but builds it only when somebody listens.
    pub fn publish_with(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            self.publish(make());
        }
    }

    /// A new subscription: it sees events published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
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
    async fn events_are_built_only_for_listeners() {
        let bus = EventBus::new(4);
        bus.publish_with(|| unreachable!("nobody listens"));
        let mut sub = bus.subscribe();
        bus.publish_with(|| limit(3));
        assert_eq!(sub.recv().await, Some(Ok(limit(3))));
        drop(bus);
        assert_eq!(sub.recv().await, None);
    }
}
