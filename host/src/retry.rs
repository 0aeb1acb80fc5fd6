//! When a failed attempt runs again: exponential backoff with jitter, or the provider's own
//! retry-after.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;
use crate::model::ErrorKind;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run again once this delay has passed.
    Retry(Duration),
    /// Stop: the error is permanent or no attempts remain.
    Fail,
}

/// The longest wait a provider's retry-after may impose. A larger one (or a garbled one)
/// would park the execution for years, and its end time would overflow the database's
/// 64-bit column, so it is capped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Backoff `base * 2^(attempt-1)`, capped at `max`, with "equal jitter": the delay is drawn
/// from the upper half of that window, so retries of many executions spread out but never
/// come sooner than half the nominal backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    base: Duration,
    max: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            base: Duration::from_millis(c.base_ms),
            max: Duration::from_millis(c.max_ms.max(c.base_ms)),
        }
    }
}

impl RetryPolicy {
    /// The nominal (un-jittered) backoff after attempt number `attempt` (1-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Decides what follows attempt `attempts` of `max_attempts` that failed with `kind`.
    pub fn decide(
        &self,
        attempts: u32,
        max_attempts: u32,
        kind: ErrorKind,
        retry_after: Option<Duration>,
    ) -> Decision {
        if !kind.is_retryable() || attempts >= max_attempts {
            return Decision::Fail;
        }
        if let Some(after) = retry_after {
            return Decision::Retry(after.min(MAX_RETRY_AFTER));
        }
        let nominal = self.nominal(attempts);
        let half = nominal / 2;
        let jitter =
            rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        Decision::Retry(half + Duration::from_millis(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetryConfig {
            base_ms: 100,
            max_ms: 1000,
        })
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = policy();
        let n: Vec<u128> = (1..=6).map(|a| p.nominal(a).as_millis()).collect();
        assert_eq!(n, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.nominal(200), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = policy();
        for _ in 0..200 {
            let Decision::Retry(d) = p.decide(3, 5, ErrorKind::Unavailable, None) else {
                panic!("should retry")
            };
            assert!((200..=400).contains(&d.as_millis()), "{d:?}");
        }
    }

    #[test]
    fn retry_after_wins_and_permanent_errors_fail() {
        let p = policy();
        let after = Some(Duration::from_millis(1234));
        assert_eq!(
            p.decide(1, 3, ErrorKind::RateLimited, after),
            Decision::Retry(Duration::from_millis(1234))
        );
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Trap,
            ErrorKind::Other,
        ] {
            assert_eq!(p.decide(1, 3, kind, None), Decision::Fail);
        }
        assert_eq!(p.decide(3, 3, ErrorKind::Unavailable, None), Decision::Fail);
    }

    #[test]
    fn a_huge_retry_after_is_capped_not_wrapped() {
        let huge = Some(Duration::from_millis(u64::MAX));
        assert_eq!(
            policy().decide(1, 3, ErrorKind::RateLimited, huge),
            Decision::Retry(MAX_RETRY_AFTER)
        );
    }
}
