//! `lanes limits set` changes a running daemon's limit within a second, up and down, and the
//! change survives a restart.

use std::time::Duration;

use lanes::model::{Status, now_ms};
use lanes::report::{intervals, max_overlap};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_applies_live_and_no_start_exceeds_the_new_limit() {
    let mut env = TestEnv::new();
    env.stub("live", Some(6), &[]);
    let (daemon, queue) = env.start().await;
    daemon
        .submit_many(&sleepers("live", 150, 100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;

    let down_at = now_ms();
    let out = env.lanes(&["limits", "set", "live", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let up_at = now_ms();
    let out = env.lanes(&["limits", "set", "live", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let rows = wait_terminal(queue.as_ref(), Some("live"), Duration::from_secs(60)).await;
    assert_eq!(count(&rows, Status::Completed), 150);
    let window = |from: i64, to: i64| -> Vec<usize> {
        rows.iter()
            .filter_map(|e| e.started_at)
            .filter(|s| *s >= from && *s < to)
            .map(|s| running_at_start(&rows, s))
            .collect()
    };
    let before = window(0, down_at);
    let low = window(down_at + 1000, up_at);
    let high = window(up_at + 1000, i64::MAX);
    println!(
        "max running at a start: before {:?}, after set 2 {:?}, after set 4 {:?}",
        before.iter().max(),
        low.iter().max(),
        high.iter().max()
    );
    assert_eq!(before.iter().max(), Some(&6));
    assert!(!low.is_empty() && low.iter().all(|n| *n <= 2), "{low:?}");
    assert!(!high.is_empty() && high.iter().all(|n| *n <= 4), "{high:?}");
    assert_eq!(high.iter().max(), Some(&4), "the raised limit is used");
    assert!(max_overlap(intervals(&rows)) <= 6);
    assert_eq!(daemon.lanes()["live"].0, 4);
    daemon.shutdown(Duration::from_secs(5)).await;

    // The run-time limit outlives the process.
    let (daemon, _queue) = env.start().await;
    assert_eq!(daemon.lanes()["live"].0, 4);
    let out = env.lanes(&["limits", "--json"]);
    let views: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let live = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["provider"] == "live")
        .unwrap();
    assert_eq!(
        (live["effective"].as_u64(), live["source"].as_str()),
        (Some(4), Some("runtime"))
    );
    let out = env.lanes(&["limits", "clear", "live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(daemon.lanes()["live"].0, 6, "back to the configured limit");
    daemon.shutdown(Duration::from_secs(5)).await;
}
