//! A slow provider at its limit and a provider that traps every time do not slow a third.

use std::time::{Duration, Instant};

use lanes::model::Status;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_trapping_providers_do_not_slow_a_third() {
    let mut env = TestEnv::new();
    env.stub("slow", Some(1), &[]);
    env.stub("broken", Some(4), &[]);
    env.stub("fast", Some(4), &[]);
    let (daemon, queue) = env.start().await;

    // The slow lane is busy for 6 s; the broken one traps on every call.
    daemon
        .submit_many(&sleepers("slow", 3, 2000))
        .await
        .unwrap();
    let traps: Vec<_> = (0..20)
        .map(|_| job("broken", serde_json::json!({ "trap": true })))
        .collect();
    daemon.submit_many(&traps).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    daemon.submit_many(&sleepers("fast", 20, 50)).await.unwrap();
    let fast = wait_terminal(queue.as_ref(), Some("fast"), Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(count(&fast, Status::Completed), 20);

    // Structural, not timed: all of fast's batch (ideal: 20 x 50 ms / 4 = 250 ms) finished
    // while the slow lane's first execution still held its only slot.
    let slow = queue.list(Some("slow")).await.unwrap();
    let first_slow_finish = slow.iter().filter_map(|e| e.finished_at).min();
    let last_fast_finish = fast.iter().filter_map(|e| e.finished_at).max().unwrap();
    println!(
        "fast batch took {took:?} (ideal 250 ms) beside a saturated slow lane and a trapping lane"
    );
    assert!(
        first_slow_finish.is_none_or(|f| last_fast_finish < f),
        "fast finished at {last_fast_finish}, after slow freed a slot at {first_slow_finish:?}"
    );

    let broken = wait_terminal(queue.as_ref(), Some("broken"), Duration::from_secs(30)).await;
    assert_eq!(count(&broken, Status::Failed), 20);
    for e in &broken {
        assert_eq!(e.error_kind.as_deref(), Some("trap"));
        assert_eq!(e.attempts, 1, "a trap is permanent: not retried");
        let error = e.error.as_deref().unwrap();
        assert!(
            error.starts_with("provider `broken` (stub.wasm 0.1.0): trapped"),
            "{error}"
        );
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}
