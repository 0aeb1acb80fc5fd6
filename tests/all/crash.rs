//! kill -9 and graceful shutdown of a real `lanes serve` process.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lanes::model::Status;

use crate::support::*;

fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lanes serve did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_completes_everything_exactly_once() {
    let mut env = TestEnv::new();
    env.stub("crashy", Some(4), &[]);
    let queue = env.queue().await;
    let ids = queue
        .submit_many(&sleepers("crashy", 40, 300))
        .await
        .unwrap();

    let mut serve = env.spawn_serve();
    let at_kill = wait_until(
        queue.as_ref(),
        Some("crashy"),
        Duration::from_secs(60),
        "some completed and 4 running",
        |rows| count(rows, Status::Completed) >= 8 && count(rows, Status::Running) == 4,
    )
    .await;
    serve.kill().unwrap(); // SIGKILL
    serve.wait().unwrap();
    let rows = queue.list(Some("crashy")).await.unwrap();
    let interrupted: BTreeSet<i64> = rows
        .iter()
        .filter(|e| e.status == Status::Running)
        .map(|e| e.id)
        .collect();
    let waiting: BTreeSet<i64> = rows
        .iter()
        .filter(|e| e.status == Status::Pending)
        .map(|e| e.id)
        .collect();
    assert!(
        !interrupted.is_empty(),
        "kill -9 should leave running rows: {at_kill:?}"
    );

    let mut serve = env.spawn_serve();
    let rows = wait_terminal(queue.as_ref(), Some("crashy"), Duration::from_secs(60)).await;
    sigterm(&serve);
    assert!(wait_exit(&mut serve, Duration::from_secs(20)).success());

    assert_eq!(rows.len(), ids.len(), "no execution lost or duplicated");
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:?}"
    );
    assert!(rows.iter().all(|e| e.owner.is_none() && e.output.is_some()));
    for e in &rows {
        let expected = if interrupted.contains(&e.id) { 2 } else { 1 };
        assert_eq!(
            e.attempts, expected,
            "execution {}: the interrupted attempt counts",
            e.id
        );
    }
    // Resumed first: every interrupted row started no later than any row that was waiting.
    let resumed_last = rows
        .iter()
        .filter(|e| interrupted.contains(&e.id))
        .filter_map(|e| e.started_at)
        .max()
        .unwrap();
    let waiting_first = rows
        .iter()
        .filter(|e| waiting.contains(&e.id))
        .filter_map(|e| e.started_at)
        .min()
        .unwrap();
    assert!(resumed_last <= waiting_first);
    let log = env.serve_log();
    for id in &interrupted {
        assert!(
            log.contains(&format!(
                "Resuming interrupted execution: {id} (provider: crashy)"
            )),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_work_finish_and_returns_the_rest_to_pending() {
    let mut env = TestEnv::new();
    env.stub("graceful", Some(3), &[]);
    env.config.shutdown_grace_secs = 2;
    let queue = env.queue().await;
    let short = queue
        .submit(&job("graceful", serde_json::json!({"sleep_ms": 700})))
        .await
        .unwrap();
    let long = queue
        .submit_many(&sleepers("graceful", 2, 30_000))
        .await
        .unwrap();

    let mut serve = env.spawn_serve();
    wait_until(
        queue.as_ref(),
        Some("graceful"),
        Duration::from_secs(30),
        "3 running",
        |rows| count(rows, Status::Running) == 3,
    )
    .await;
    sigterm(&serve);
    let started = Instant::now();
    assert!(wait_exit(&mut serve, Duration::from_secs(20)).success());
    println!("exited {:?} after SIGTERM (grace 2 s)", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));

    let e = queue.get(short).await.unwrap().unwrap();
    assert_eq!(
        e.status,
        Status::Completed,
        "finished within the grace period"
    );
    for id in long {
        let e = queue.get(id).await.unwrap().unwrap();
        assert_eq!(e.status, Status::Pending, "returned to pending");
        assert_eq!(e.attempts, 0, "a shutdown does not use up an attempt");
        assert!(e.owner.is_none());
    }
}
