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

/// kill -9 of a worker, `cycles` times, at varied points of a steady load, each time started
/// again; then every execution must be completed exactly once in the queue (0 lost, 0
/// stuck), and running rows never exceeded `limit`, as sampled during the run and as seen in
/// the start and finish times of the final attempts. On a shared queue, `workers` run at
/// once and the victim rotates; the survivors reclaim its rows once their leases expire.
pub(crate) async fn kill_loop(env: &TestEnv, workers: usize, limit: u32, cycles: usize) {
    let queue = env.any_queue().await;
    let n = 300;
    let mut batch = sleepers("loop", n, 25);
    // With a tenant limit, the work is three tenants' (and each is held to it).
    let tenant_limit = env
        .config
        .providers
        .get("loop")
        .and_then(|p| p.tenant_limit);
    for (i, job) in batch.iter_mut().enumerate() {
        // Each kill interrupts up to `limit` attempts, and resumed rows go first.
        job.max_attempts = 40;
        if tenant_limit.is_some() {
            job.tenant = Some(format!("t{}", i % 3));
        }
    }
    let ids: BTreeSet<i64> = queue
        .submit_many(&batch)
        .await
        .unwrap()
        .into_iter()
        .collect();

    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        async move {
            let mut max = 0;
            while !stop.is_cancelled() {
                let counts = queue.counts().await.unwrap();
                max = max.max(counts.get("loop").map_or(0, |c| c.running));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        }
    });
    let name = |i: usize| format!("loop{i}");
    let mut children: Vec<_> = (0..workers).map(|i| env.spawn_worker(&name(i))).collect();
    // A fixed pseudo-random sequence of kill points, 80..400 ms apart.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for cycle in 0..cycles {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 80 + (seed >> 33) % 320;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = cycle % workers;
        children[victim].kill().unwrap(); // SIGKILL
        children[victim].wait().unwrap();
        children[victim] = env.spawn_worker(&name(victim));
    }
    let outcome = try_wait_terminal(queue.as_ref(), Some("loop"), Duration::from_secs(120)).await;
    stop.cancel();
    let max_sampled = sampler.await.unwrap();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let logs: String = (0..workers).map(|i| env.log(&name(i))).collect();
    let rows = outcome.unwrap_or_else(|open| panic!("{open}\n{logs}"));

    assert_eq!(
        rows.iter().map(|e| e.id).collect::<BTreeSet<_>>(),
        ids,
        "no execution lost or added"
    );
    let not_done: Vec<_> = rows
        .iter()
        .filter(|e| e.status != Status::Completed || e.output.is_none() || e.owner.is_some())
        .collect();
    assert!(not_done.is_empty(), "{not_done:?}");
    let attempts: i32 = rows.iter().map(|e| e.attempts).sum();
    let resumed = logs.matches("Resuming interrupted execution").count();
    println!(
        "{cycles} kills: {n} executions completed in {attempts} attempts; {resumed} resumed; \
         max running sampled {max_sampled}"
    );
    assert!(resumed > 0, "the kills interrupted nothing\n{logs}");
    assert!(
        max_sampled <= u64::from(limit),
        "{max_sampled} running at once, limit {limit}"
    );
    let overlap = lanes::report::max_overlap(lanes::report::intervals(&rows));
    assert!(
        overlap <= limit as usize,
        "{overlap} overlapped, limit {limit}"
    );
    if let Some(tenant_limit) = tenant_limit {
        for t in ["t0", "t1", "t2"] {
            let mine: Vec<_> = rows
                .iter()
                .filter(|e| e.tenant.as_deref() == Some(t))
                .cloned()
                .collect();
            let overlap = lanes::report::max_overlap(lanes::report::intervals(&mine));
            println!("tenant {t}: at most {overlap} at once, tenant limit {tenant_limit}");
            assert!(
                overlap <= usize::try_from(tenant_limit).unwrap(),
                "tenant {t}: {overlap} overlapped, tenant limit {tenant_limit}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_loop_under_load_loses_nothing_and_keeps_the_limit() {
    let mut env = TestEnv::new();
    env.stub("loop", Some(4), &[]);
    // Three tenants' work, each held to 2 at once.
    env.config.providers.get_mut("loop").unwrap().tenant_limit = Some(2);
    kill_loop(&env, 1, 4, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_stops_the_daemon_gracefully() {
    use fs2::FileExt;
    let mut env = TestEnv::new();
    env.stub("early", Some(1), &[]);
    // Hold the database's start-up lock, so that `lanes serve` is provably still starting
    // (waiting to open the database) when the signal arrives.
    let db = env.config.sqlite_path().unwrap();
    let mut lock_path = db.into_os_string();
    lock_path.push(".init.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock_exclusive().unwrap();
    let mut serve = env.spawn_serve();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&serve);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        serve.try_wait().unwrap().is_none(),
        "killed by a SIGTERM during start-up:\n{}",
        env.serve_log()
    );
    drop(lock);
    let status = wait_exit(&mut serve, Duration::from_secs(60));
    let log = env.serve_log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("lanes serving") && log.contains("shutdown complete"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}
