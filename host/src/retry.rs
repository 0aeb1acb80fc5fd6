//! When a failed attempt runs again: exponential backoff with jitter, or the provider's own
//! retry-after.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;
use crate::model::ErrorKind;
use crate::policy::Policy;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run again once this delay has passed.
    Retry(Duration),
    /// Stop: the error is permanent or no attempts remain.
    Fail,
}

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

    /// Decides what follows an attempt that failed with `kind`: attempt `attempts` of
    /// `max_attempts`, after `rate_limited` rate-limited answers, the provider having asked
    /// to wait `wait`, under `policy`.
    ///
    /// - A rate-limited answer is retried until the execution has had
    ///   `policy.max_rate_limited` of them, whatever its attempts: it does not count as one.
    /// - A wait the provider asked for is capped at `policy.max_retry_after`, and spread by
    ///   up to `policy.resume_spread`, so that the executions a pause held back do not all
    ///   resume in one instant.
    /// - Without a wait, the backoff applies.
    pub fn decide(&self, failed: Failed, policy: &Policy) -> Decision {
        let retry = match failed.kind {
            ErrorKind::RateLimited => failed.rate_limited < policy.max_rate_limited,
            kind => kind.is_retryable() && failed.attempts < failed.max_attempts,
        };
        if !retry {
            return Decision::Fail;
        }
        if let Some(wait) = failed.wait {
            let wait = wait.min(policy.max_retry_after);
            // Spread over the resume window, but never more than half the wait itself.
            let spread = policy.resume_spread.min(wait / 2);
            let spread = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
            let jitter = rand::rng().random_range(0..=spread);
            return Decision::Retry(
                wait.min(policy.max_retry_after) + Duration::from_millis(jitter),
            );
        }
        let step = match failed.kind {
            ErrorKind::RateLimited => failed.rate_limited.saturating_add(1),
            _ => failed.attempts,
        };
        let nominal = self.nominal(step);
        let half = nominal / 2;
        let jitter =
            rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        Decision::Retry(half + Duration::from_millis(jitter))
    }
}

/// A failed attempt, as [`RetryPolicy::decide`] weighs it.
#[derive(Debug, Clone, Copy)]
pub struct Failed {
    pub kind: ErrorKind,
    /// Attempts so far, this one included (rate-limited ones are given back).
    pub attempts: u32,
    pub max_attempts: u32,
    /// Rate-limited answers before this one.
    pub rate_limited: u32,
    /// The wait the provider asked for.
    pub wait: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: ErrorKind, attempts: u32, max_attempts: u32, wait: Option<Duration>) -> Failed {
        Failed {
            kind,
            attempts,
            max_attempts,
            rate_limited: 0,
            wait,
        }
    }

    /// The default policies without the resume spread, for exact waits.
    fn exact() -> Policy {
        Policy {
            resume_spread: Duration::ZERO,
            ..Policy::default()
        }
    }

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
            let Decision::Retry(d) = p.decide(failed(ErrorKind::Unavailable, 3, 5, None), &exact())
            else {
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
            p.decide(failed(ErrorKind::RateLimited, 1, 3, after), &exact()),
            Decision::Retry(Duration::from_millis(1234))
        );
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Trap,
            ErrorKind::Other,
        ] {
            assert_eq!(p.decide(failed(kind, 1, 3, None), &exact()), Decision::Fail);
        }
        assert_eq!(
            p.decide(failed(ErrorKind::Unavailable, 3, 3, None), &exact()),
            Decision::Fail
        );
    }

    #[test]
    fn rate_limits_have_their_own_cap_and_waits_spread() {
        let p = policy();
        // The last attempt, rate-limited: retried all the same, up to max_rate_limited.
        let mut limited = failed(ErrorKind::RateLimited, 3, 3, Some(Duration::from_secs(1)));
        let spread = Policy {
            resume_spread: Duration::from_millis(500),
            ..Policy::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let Decision::Retry(d) = p.decide(limited, &spread) else {
                panic!("a rate limit is not an attempt")
            };
            assert!((1000..=1500).contains(&d.as_millis()), "{d:?}");
            seen.insert(d.as_millis() / 50);
        }
        assert!(seen.len() > 3, "resumes spread over the window: {seen:?}");
        limited.rate_limited = spread.max_rate_limited;
        assert_eq!(p.decide(limited, &spread), Decision::Fail);
        // An unavailable answer with a wait is waited for as asked.
        assert_eq!(
            p.decide(
                failed(
                    ErrorKind::Unavailable,
                    1,
                    3,
                    Some(Duration::from_millis(700))
                ),
                &exact()
            ),
            Decision::Retry(Duration::from_millis(700))
        );
    }

    #[test]
    fn a_huge_retry_after_is_capped_not_wrapped() {
        let huge = Some(Duration::from_millis(u64::MAX));
        let capped = Policy {
            max_retry_after: Duration::from_secs(90),
            ..exact()
        };
        assert_eq!(
            policy().decide(failed(ErrorKind::RateLimited, 1, 3, huge), &capped),
            Decision::Retry(Duration::from_secs(90))
        );
    }
}
