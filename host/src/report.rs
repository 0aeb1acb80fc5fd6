//! Figures computed from the queue's recorded times: the concurrency a provider really
//! reached, and latency percentiles. The demo, the tests and the benchmarks share them.

use crate::model::Execution;

/// The most executions that overlapped in time, from `[start, finish)` intervals in ms.
///
/// A finish and a start at the same millisecond do not overlap: a lane starts new work only
/// after the slot's previous execution recorded its finish.
pub fn max_overlap(intervals: impl IntoIterator<Item = (i64, i64)>) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for (start, finish) in intervals {
        events.push((start, 1));
        events.push((finish, -1));
    }
    // At equal times, finishes (-1) sort before starts (+1).
    events.sort();
    let (mut now, mut max) = (0usize, 0usize);
    for (_, delta) in events {
        if delta > 0 {
            now += 1;
        } else {
            now = now.saturating_sub(1);
        }
        max = max.max(now);
    }
    max
}

/// The `[started_at, finished_at)` intervals of finished executions.
pub fn intervals<'a>(executions: impl IntoIterator<Item = &'a Execution>) -> Vec<(i64, i64)> {
    executions
        .into_iter()
        .filter_map(|e| Some((e.started_at?, e.finished_at?)))
        .collect()
}

/// The `p`-th percentile (0-100) of `values`, by nearest rank.
pub fn percentile(values: &mut [i64], p: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_touching_intervals_as_sequential() {
        assert_eq!(max_overlap([(0, 10), (10, 20), (20, 30)]), 1);
        assert_eq!(max_overlap([(0, 10), (5, 15), (9, 12), (12, 20)]), 3);
        assert_eq!(max_overlap(Vec::new()), 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50));
        assert_eq!(percentile(&mut v, 99.0), Some(99));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
