//! The clock of daily spend caps: the system's, shifted by `LANES_CLOCK_OFFSET_MS` (read once,
//! at first use) so that a test can start a daemon a few seconds before a UTC midnight and
//! watch a capped tenant resume on the next day.
//!
//! Only the caps read it: their day ([`day`]) and the pause until the next one
//! ([`until_next_day`]). Every other time in the queue is the store's (on PostgreSQL, the
//! server's clock), so an offset never moves a lease or a retry.

use std::sync::Once;
use std::sync::atomic::{AtomicI64, Ordering};

/// A day, in ms.
pub const DAY_MS: i64 = 86_400_000;

static OFFSET: AtomicI64 = AtomicI64::new(0);
static FROM_ENV: Once = Once::new();

/// The offset: `LANES_CLOCK_OFFSET_MS` (0 when it is unset; a value that is not a whole
/// number of ms is ignored, with a warning), or what [`set_offset_ms`] set.
fn offset_ms() -> i64 {
    FROM_ENV.call_once(|| {
        if let Ok(text) = std::env::var("LANES_CLOCK_OFFSET_MS") {
            match text.trim().parse() {
                Ok(ms) => OFFSET.store(ms, Ordering::Relaxed),
                Err(_) => tracing::warn!(
                    "LANES_CLOCK_OFFSET_MS={text:?} is not a whole number of ms: ignored"
                ),
            }
        }
    });
    OFFSET.load(Ordering::Relaxed)
}

/// Shifts the caps' clock by `ms` from the system's, over `LANES_CLOCK_OFFSET_MS`: for a
/// test whose process runs the daemon (the clock is the process's: nextest runs each test in
/// a process of its own).
pub fn set_offset_ms(ms: i64) {
    FROM_ENV.call_once(|| {});
    OFFSET.store(ms, Ordering::Relaxed);
}

/// Now on the caps' clock, in Unix ms.
pub fn now_ms() -> i64 {
    crate::model::now_ms().saturating_add(offset_ms())
}

/// The UTC day of `ms`: days since the Unix epoch.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Today, on the caps' clock.
pub fn day() -> i64 {
    day_of(now_ms())
}

/// How long until the next UTC day begins on the caps' clock.
pub fn until_next_day() -> std::time::Duration {
    let now = now_ms();
    let left = (day_of(now) + 1) * DAY_MS - now;
    std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// `day` as a date, `YYYY-MM-DD`.
pub fn date(day: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(date(0), "1970-01-01");
        // 2026-12-07T00:00:00Z
        assert_eq!(date(day_of(1_796_601_600_000)), "2026-12-07");
        assert_eq!(date(day_of(951_782_400_000)), "2000-02-29");
    }
}
