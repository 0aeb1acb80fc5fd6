//! What the API learns from the event bus, through one subscription: per-provider numbers
//! over the last five minutes (for `/v1/providers` and the dashboard), the metrics, and the
//! long-polls waiting for an execution to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::metrics::Metrics;
use super::wire::WindowOut;
use crate::daemon::events::{Event, Outcome, Subscription};
use crate::model::ExecutionId;

/// Seconds of history kept per provider.
const WINDOW_SECS: usize = 300;
/// Duration samples kept per second and provider, for the percentiles.
const SAMPLES_PER_SEC: usize = 256;

#[derive(Default, Clone)]
struct Second {
    /// The Unix second this bucket holds, or 0 when unused.
    at: i64,
    completed: u64,
    failed: u64,
    retried: u64,
    /// Durations of completed attempts in ms; past `SAMPLES_PER_SEC`, every other one.
    samples: Vec<u32>,
    seen: u64,
}

struct Window {
    seconds: Vec<Second>,
}

impl Window {
    fn new() -> Self {
        Window {
            seconds: vec![Second::default(); WINDOW_SECS],
        }
    }

    fn bucket(&mut self, now: i64) -> &mut Second {
        let slot = usize::try_from(now.rem_euclid(WINDOW_SECS as i64)).unwrap_or(0);
        let b = &mut self.seconds[slot];
        if b.at != now {
            *b = Second {
                at: now,
                ..Second::default()
            };
        }
        b
    }

    fn record(&mut self, now: i64, outcome: &Outcome, duration_ms: Option<i64>) {
        let b = self.bucket(now);
        match outcome {
            Outcome::Completed => {
                b.completed += 1;
                // A batch's line is counted, but took no call to time.
                let Some(duration_ms) = duration_ms else {
                    return;
                };
                b.seen += 1;
                let ms = u32::try_from(duration_ms.max(0)).unwrap_or(u32::MAX);
                if b.samples.len() < SAMPLES_PER_SEC {
                    b.samples.push(ms);
                } else if b.seen.is_multiple_of(2) {
                    // Keep a spread of the second's samples, not only its first ones.
                    let i = usize::try_from(b.seen / 2).unwrap_or(0) % SAMPLES_PER_SEC;
                    b.samples[i] = ms;
                }
            }
            Outcome::Failed { .. } => b.failed += 1,
            Outcome::Retried { .. } => b.retried += 1,
            Outcome::Requeued | Outcome::Lost | Outcome::Cancelled => {}
        }
    }

    /// The last minute's totals and latency percentiles.
    fn last_minute(&self, now: i64) -> WindowOut {
        let mut out = WindowOut::default();
        let mut samples = Vec::new();
        for b in self
            .seconds
            .iter()
            .filter(|b| b.at > now - 60 && b.at <= now)
        {
            out.completed += b.completed;
            out.failed += b.failed;
            out.retried += b.retried;
            samples.extend_from_slice(&b.samples);
        }
        samples.sort_unstable();
        let pick = |q: f64| -> Option<u64> {
            if samples.is_empty() {
                return None;
            }
            // Nearest rank.
            let rank = (q * samples.len() as f64).ceil().max(1.0) as usize;
            samples.get(rank - 1).map(|v| u64::from(*v))
        };
        out.latency_p50_ms = pick(0.50);
        out.latency_p95_ms = pick(0.95);
        out
    }

    /// Completed, and failed plus retried, per 10 s over the last 5 minutes, oldest first.
    fn series(&self, now: i64) -> (Vec<u64>, Vec<u64>) {
        let mut done = vec![0; WINDOW_SECS / 10];
        let mut errors = vec![0; WINDOW_SECS / 10];
        for b in &self.seconds {
            let age = now - b.at;
            if b.at == 0 || !(0..WINDOW_SECS as i64).contains(&age) {
                continue;
            }
            let i = done.len() - 1 - usize::try_from(age / 10).unwrap_or(0);
            done[i] += b.completed;
            errors[i] += b.failed + b.retried;
        }
        (done, errors)
    }
}

/// Per-provider numbers over the last five minutes, from this worker's events.
#[derive(Default)]
pub struct Stats {
    windows: Mutex<HashMap<Arc<str>, Window>>,
}

/// One provider's recent numbers.
pub struct Recent {
    pub last_minute: WindowOut,
    pub throughput_5m: Vec<u64>,
    pub errors_5m: Vec<u64>,
}

impl Stats {
    fn record(&self, provider: &Arc<str>, outcome: &Outcome, duration_ms: Option<i64>) {
        let now = crate::model::now_ms() / 1000;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .entry(provider.clone())
            .or_insert_with(Window::new)
            .record(now, outcome, duration_ms);
    }

    /// `provider`'s numbers now.
    pub fn recent(&self, provider: &str) -> Recent {
        let now = crate::model::now_ms() / 1000;
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(provider) {
            Some(w) => {
                let (throughput_5m, errors_5m) = w.series(now);
                Recent {
                    last_minute: w.last_minute(now),
                    throughput_5m,
                    errors_5m,
                }
            }
            None => Recent {
                last_minute: WindowOut::default(),
                throughput_5m: vec![0; WINDOW_SECS / 10],
                errors_5m: vec![0; WINDOW_SECS / 10],
            },
        }
    }
}

/// Long-polls waiting for executions to end, woken by their `Finished` events.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<ExecutionId, (Arc<Notify>, usize)>>,
}

/// One registered wait; dropping it unregisters.
pub struct Wait<'a> {
    waiters: &'a Waiters,
    id: ExecutionId,
    pub notify: Arc<Notify>,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if let Some(entry) = waiting.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, (Arc<Notify>, usize)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a wait for `id`. Create the `notified()` future before reading the row, so
    /// that an end written meanwhile is not missed.
    pub fn register(&self, id: ExecutionId) -> Wait<'_> {
        let mut waiting = self.lock();
        let entry = waiting
            .entry(id)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Wait {
            waiters: self,
            id,
            notify: entry.0.clone(),
        }
    }

    /// Wakes the waits for `id`.
    pub fn wake(&self, id: ExecutionId) {
        if let Some((notify, _)) = self.lock().get(&id) {
            notify.notify_waiters();
        }
    }

    /// Wakes every wait (after lost events), to read its row again.
    fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

/// Feeds the stats, metrics and waits from the bus until the daemon is gone.
pub async fn observe(
    mut events: Subscription,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    waiters: Arc<Waiters>,
) {
    while let Some(event) = events.recv().await {
        let event = match event {
            Ok(event) => event,
            Err(lagged) => {
                metrics.events_lost(lagged.0);
                waiters.wake_all();
                continue;
            }
        };
        metrics.observe(&event);
        if let Event::Finished {
            id,
            provider,
            outcome,
            duration_ms,
            batch,
            ..
        } = &event
        {
            stats.record(provider, outcome, batch.is_none().then_some(*duration_ms));
            waiters.wake(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_the_last_minute_and_its_percentiles() {
        let mut w = Window::new();
        for ms in 1..=100 {
            w.record(1000, &Outcome::Completed, Some(ms));
        }
        w.record(
            1001,
            &Outcome::Failed {
                kind: crate::model::ErrorKind::Other,
            },
            Some(5),
        );
        // Older than a minute: not counted in it, but in the 5-minute series.
        w.record(900, &Outcome::Completed, Some(1));
        // An answer from a provider batch counts, but has no latency of a call.
        w.record(1001, &Outcome::Completed, None);
        let m = w.last_minute(1001);
        assert_eq!((m.completed, m.failed), (101, 1));
        assert_eq!((m.latency_p50_ms, m.latency_p95_ms), (Some(50), Some(95)));
        let (done, errors) = w.series(1001);
        assert_eq!(done.iter().sum::<u64>(), 102);
        assert_eq!(done[29], 101);
        assert_eq!(errors[29], 1);
    }
}
