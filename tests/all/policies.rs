//! Scheduling policies against an API with a true capacity (`capacity.rs`): rate-limit
//! pauses (one worker and a fleet of three), the circuit breaker, and unauthorized answers.

use std::time::{Duration, Instant};

use lanes::daemon::events::Event;
use lanes::model::{ChatInput, NewExecution, Status};
use lanes::policy::PolicyConfig;

use crate::capacity::{CapacityMock, Hit};
use crate::support::*;

/// An env with the OpenAI adapter as provider `cap`, pointed at `mock`, with `limit`.
fn env_for(mock: &CapacityMock, limit: u32) -> TestEnv {
    let mut env = TestEnv::new();
    env.add_component("openai.wasm");
    let key = env.dir.path().join("key");
    std::fs::write(&key, "good").unwrap();
    let p = env.adapter("cap", "openai.wasm", &mock.url(), "m");
    p.limit = Some(limit);
    p.api_key_file = Some(key);
    env.config.retry.base_ms = 10;
    env.config.retry.max_ms = 50;
    env
}

fn calls(n: usize, max_attempts: i32) -> Vec<NewExecution> {
    (0..n)
        .map(|i| NewExecution {
            tenant: None,
            cache: None,
            provider: "cap".into(),
            input: ChatInput::prompt(format!("call {i}")),
            priority: 0,
            max_attempts,
            route: None,
            defer: Default::default(),
        })
        .collect()
}

/// The calls that reached the API strictly between `from` and `to`.
fn hits_between(hits: &[Hit], from: Instant, to: Instant) -> Vec<Hit> {
    hits.iter()
        .filter(|h| h.at > from && h.at < to)
        .copied()
        .collect()
}

/// Waits for a circuit event of `cap`; returns when it came and whether it opened.
async fn circuit(events: &mut lanes::daemon::events::Subscription) -> (Instant, bool, String) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("a circuit change")
            .unwrap()
            .unwrap();
        if let Event::CircuitChanged { open, reason, .. } = event {
            return (Instant::now(), open, reason);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_pauses_claims_and_the_paused_work_resumes_spread() {
    let mock = CapacityMock::start(2, 100).await;
    // A limit set too high for the API's capacity of 2.
    let mut env = env_for(&mock, 6);
    env.config.policy = PolicyConfig {
        resume_spread_ms: Some(300),
        ..Default::default()
    };
    let (daemon, queue) = env.start().await;
    daemon.submit_many(&calls(20, 2)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("cap"), Duration::from_secs(60)).await;
    // A 429 storm fails nothing: rate-limited calls are not attempts (max_attempts is 2,
    // and some executions got a 429 or more).
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{:?}",
        rows.iter()
            .map(|e| (e.status, e.attempts, e.rate_limited))
            .collect::<Vec<_>>()
    );
    let limited: i32 = rows.iter().map(|e| e.rate_limited).sum();
    let hits = mock.hits();
    // Every 429 the host saw is counted on its execution (the client may resend a request
    // whose connection closed under it, so the API can have answered one or two more).
    let seen = usize::try_from(limited).unwrap();
    assert!(
        seen > 0 && seen <= mock.count(429),
        "{seen} counted, {} answered",
        mock.count(429)
    );
    // After the first 429 (retry-after: 1 s), nothing reaches the API until the pause ends,
    // but what was already on its way.
    let first = hits.iter().find(|h| h.status == 429).expect("a 429").at;
    let during = hits_between(
        &hits,
        first + Duration::from_millis(150),
        first + Duration::from_millis(950),
    );
    assert!(during.is_empty(), "calls during the pause: {during:?}");
    // The paused work resumes spread over the window, not in one instant.
    let after: Vec<Instant> = hits
        .iter()
        .filter(|h| h.at >= first + Duration::from_millis(950))
        .map(|h| h.at)
        .take(6)
        .collect();
    let spread = after.last().unwrap().duration_since(after[0]);
    assert!(
        spread >= Duration::from_millis(50),
        "resumed at once: {spread:?}"
    );
    println!(
        "20 calls, capacity 2, limit 6: {} answered 429, {} OK",
        mock.count(429),
        mock.count(200)
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_provider_opens_the_circuit_probes_once_and_closes() {
    let mock = CapacityMock::start(100, 20).await;
    mock.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    mock.state
        .retry_after_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let mut env = env_for(&mock, 3);
    env.config.policy = PolicyConfig {
        breaker_failures: Some(3),
        breaker_ratio: Some(1.0),
        breaker_cooldown_ms: Some(400),
        ..Default::default()
    };
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    daemon.submit_many(&calls(6, 50)).await.unwrap();

    let (opened, open, reason) = circuit(&mut events).await;
    assert!(
        open && reason.contains("3 transient failures in a row"),
        "{reason}"
    );
    // The probe after the cool-down fails: open again, for twice as long.
    let (reopened, open, reason) = circuit(&mut events).await;
    assert!(open && reason.contains("a probe failed"), "{reason}");
    let first_gap = reopened.duration_since(opened);
    assert!(
        first_gap >= Duration::from_millis(380),
        "probed after {first_gap:?}"
    );
    let hits = mock.hits();
    let probes = hits_between(&hits, opened + Duration::from_millis(50), reopened);
    assert_eq!(probes.len(), 1, "one probe at a time: {probes:?}");
    // The API comes back: the next probe closes the circuit, and the work completes.
    mock.state
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (closed, open, reason) = circuit(&mut events).await;
    assert!(!open && reason.contains("probe succeeded"), "{reason}");
    let second_gap = closed.duration_since(reopened);
    assert!(
        second_gap >= Duration::from_millis(760),
        "the second cool-down doubles: {second_gap:?}"
    );
    let rows = wait_terminal(queue.as_ref(), Some("cap"), Duration::from_secs(30)).await;
    assert!(rows.iter().all(|e| e.status == Status::Completed));
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_answer_holds_the_provider_until_its_key_changes() {
    let mock = CapacityMock::start(100, 10).await;
    *mock.state.key.lock().unwrap() = Some("good".into());
    let env = env_for(&mock, 2);
    let key = env.dir.path().join("key");
    std::fs::write(&key, "stale").unwrap();
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    daemon.submit_many(&calls(4, 3)).await.unwrap();
    let (_, open, reason) = circuit(&mut events).await;
    assert!(open && reason.starts_with("unauthorized"), "{reason}");
    assert!(reason.contains("key or config"), "{reason}");
    // `lanes status` says why, with no daemon needed (once the decision is written, a
    // moment after it is taken).
    let deadline = Instant::now() + Duration::from_secs(10);
    let cap = loop {
        let status: serde_json::Value =
            serde_json::from_str(&stdout(&env.lanes(&["status", "--json"]))).unwrap();
        let cap = status
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == "cap")
            .cloned()
            .unwrap();
        if cap["state"] == "open" || Instant::now() > deadline {
            break cap;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cap["state"], "open", "{cap}");
    assert!(
        cap["reason"].as_str().unwrap().starts_with("unauthorized"),
        "{cap}"
    );
    // The calls already on their way when the first 401 came back have ended by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = mock.count(401);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mock.count(401), refused, "no calls while the key is wrong");
    // A new key: the circuit closes and the rest of the work runs.
    std::fs::write(&key, "good").unwrap();
    let (_, open, reason) = circuit(&mut events).await;
    assert!(!open && reason.contains("key changed"), "{reason}");
    let rows = wait_terminal(queue.as_ref(), Some("cap"), Duration::from_secs(30)).await;
    let failed = rows.iter().filter(|e| e.status == Status::Failed).count();
    assert_eq!(failed, refused, "only the calls the API refused failed");
    assert_eq!(
        rows.iter()
            .filter(|e| e.status == Status::Completed)
            .count(),
        4 - refused
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_pause_holds_every_worker() {
    let Some((mut env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    let mock = CapacityMock::start(2, 100).await;
    env.add_component("openai.wasm");
    let key = env.dir.path().join("key");
    std::fs::write(&key, "good").unwrap();
    let p = env.adapter("cap", "openai.wasm", &mock.url(), "m");
    p.limit = Some(6);
    p.api_key_file = Some(key);
    env.config.retry.base_ms = 10;
    // A fixed limit of 6 on a capacity of 2 earns a 429 after each pause; here only the
    // pauses matter, not how many 429s an execution may take.
    env.config.policy.max_rate_limited = Some(1000);
    let mut workers: Vec<_> = (0..3).map(|i| env.spawn_worker(&format!("w{i}"))).collect();
    for i in 0..3 {
        wait_for_log(
            &env,
            &format!("w{i}"),
            "lanes serving",
            Duration::from_secs(60),
        )
        .await;
    }
    let queue = env.any_queue().await;
    queue.submit_many(&calls(16, 2)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("cap"), Duration::from_secs(90)).await;
    for w in &mut workers {
        terminate(w);
    }
    let failed: Vec<_> = rows
        .iter()
        .filter(|e| e.status != Status::Completed)
        .map(|e| (e.id, e.attempts, e.rate_limited, e.error.clone()))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let hits = mock.hits();
    let first = hits.iter().find(|h| h.status == 429).expect("a 429").at;
    let during = hits_between(
        &hits,
        first + Duration::from_millis(200),
        first + Duration::from_millis(900),
    );
    assert!(
        during.is_empty(),
        "calls during the fleet's pause (3 workers): {during:?}"
    );
    let workers_used: std::collections::BTreeSet<_> =
        rows.iter().filter_map(|e| e.worker.clone()).collect();
    assert!(
        workers_used.len() >= 2,
        "the fleet shared the work: {workers_used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_follows_the_capacity_down_and_back_up() {
    use std::sync::atomic::Ordering;
    let mock = CapacityMock::start(6, 40).await;
    mock.state.retry_after_ms.store(200, Ordering::SeqCst);
    let mut env = env_for(&mock, 8);
    env.config.policy = PolicyConfig {
        adaptive: Some(true),
        resume_spread_ms: Some(100),
        ..Default::default()
    };
    let (daemon, queue) = env.start().await;
    daemon.submit_many(&calls(3000, 5)).await.unwrap();
    let limit = || daemon.lanes()["cap"].0;
    // Samples the lane's limit for `secs`; the last second's mean.
    async fn settle(limit: &impl Fn() -> u32, secs: u64) -> f64 {
        let mut last = Vec::new();
        for tick in 0..secs * 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tick >= secs * 10 - 10 {
                last.push(f64::from(limit()));
            }
        }
        last.iter().sum::<f64>() / last.len() as f64
    }
    // 5 s: a refused probe holds growth back to the refused level for 2 s, then 4 s, and a
    // loaded machine's latency noise can take a step off on the way.
    let high = settle(&limit, 5).await;
    assert!(
        high >= 4.5,
        "the limit rises toward the capacity of 6: {high}"
    );
    mock.state.capacity.store(2, Ordering::SeqCst);
    let low = settle(&limit, 4).await;
    assert!(low <= 3.0, "the limit falls with the capacity to 2: {low}");
    let fleet = queue.provider_states().await.unwrap().1["cap"].adaptive_limit;
    assert!(
        fleet.is_some_and(|f| f <= 4),
        "the fleet's limit is stored: {fleet:?}"
    );
    mock.state.capacity.store(6, Ordering::SeqCst);
    let again = settle(&limit, 5).await;
    assert!(again >= 4.5, "the limit comes back up: {again}");
    let lanes_limits = env.lanes(&["limits", "--json"]);
    let views: serde_json::Value = serde_json::from_str(&stdout(&lanes_limits)).unwrap();
    assert!(views[0]["adaptive"].is_u64(), "{views}");
    println!(
        "adaptive: {} OK, {} answered 429 over 12 s with capacity 6 -> 2 -> 6",
        mock.count(200),
        mock.count(429)
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

/// Runs 12 calls through an adaptive lane set to 6 against an API that serves 2 at once
/// (300 ms each) and answers 429 with `retry-after: 1` beyond, `window_spent` saying why or
/// not; the rows, the lane's limits as they changed, and whether it paused.
async fn adaptive_refusals(
    window_spent: bool,
) -> (Vec<lanes::Execution>, Vec<u32>, bool, Vec<Hit>) {
    use std::sync::atomic::Ordering;
    let mock = CapacityMock::start(2, 300).await;
    mock.state
        .window_spent
        .store(window_spent, Ordering::SeqCst);
    let mut env = env_for(&mock, 6);
    env.config.policy = PolicyConfig {
        adaptive: Some(true),
        ..Default::default()
    };
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    daemon.submit_many(&calls(12, 2)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("cap"), Duration::from_secs(60)).await;
    daemon.shutdown(Duration::from_secs(1)).await;
    let (mut limits, mut paused) = (Vec::new(), false);
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(100), events.recv()).await
    {
        match event.expect("no event lost") {
            Event::LimitChanged { new, .. } => limits.push(new),
            Event::LanePaused { .. } => paused = true,
            _ => {}
        }
    }
    (rows, limits, paused, mock.hits())
}

/// A 429 while the lane's other calls succeed refuses only the calls over the API's
/// capacity: the adaptive lane takes them off its limit, and does not pause; the refused
/// calls wait as asked while the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_over_the_capacity_shrinks_the_adaptive_limit_without_a_pause() {
    let (rows, limits, paused, hits) = adaptive_refusals(false).await;
    assert!(rows.iter().all(|e| e.status == Status::Completed));
    assert!(
        rows.iter().any(|e| e.rate_limited > 0),
        "some calls were refused"
    );
    assert!(
        !paused,
        "a refusal over the capacity does not pause the lane"
    );
    assert!(
        limits.first() == Some(&5) && limits.iter().min() <= Some(&2),
        "one off the limit per refused call, down to the capacity: {limits:?}"
    );
    // The API kept serving the lane during the wait the first 429 asked for.
    let first = hits.iter().find(|h| h.status == 429).expect("a 429").at;
    let served = hits_between(&hits, first, first + Duration::from_millis(900));
    assert!(
        served.iter().any(|h| h.status == 200),
        "calls during the 429's wait: {served:?}"
    );
}

/// A 429 that says its window is spent (`x-ratelimit-remaining-requests: 0`, as OpenAI
/// sends) pauses the adaptive lane until the wait is over, though other calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_window_pauses_the_adaptive_lane() {
    let (rows, _, paused, hits) = adaptive_refusals(true).await;
    assert!(rows.iter().all(|e| e.status == Status::Completed));
    assert!(paused, "a spent window pauses the lane");
    let first = hits.iter().find(|h| h.status == 429).expect("a 429").at;
    let during = hits_between(
        &hits,
        first + Duration::from_millis(150),
        first + Duration::from_millis(950),
    );
    assert!(during.is_empty(), "calls during the pause: {during:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_lifts_starved_low_priority_work() {
    let mut env = TestEnv::new();
    env.stub("aging", Some(1), &[]);
    env.config.limits_refresh_ms = 100;
    env.config.providers.get_mut("aging").unwrap().policy = PolicyConfig {
        aging_ms: Some(200),
        ..Default::default()
    };
    let (daemon, queue) = env.start().await;
    let job_at = |priority: i32| NewExecution {
        tenant: None,
        cache: None,
        priority,

        defer: Default::default(),
        ..job("aging", serde_json::json!({"sleep_ms": 100}))
    };
    // The lane's one slot is busy when the low-priority execution arrives.
    daemon.submit(&job_at(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let low = daemon.submit(&job_at(0)).await.unwrap();
    // A stream of priority-5 work, faster than the lane drains it, for 4 s: without aging
    // the low one would wait until the stream ends.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(4) {
        daemon.submit(&job_at(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        if queue.get(low).await.unwrap().unwrap().started_at.is_some() {
            break;
        }
    }
    let e = queue.get(low).await.unwrap().unwrap();
    let waited = e.started_at.map(|s| s - e.created_at);
    assert!(
        waited.is_some_and(|w| w < 3000),
        "the low-priority execution started after {waited:?} ms"
    );
    assert!(
        e.aged >= 5 && e.priority == e.aged,
        "aged {} to {}",
        e.aged,
        e.priority
    );
    println!(
        "priority 0 among a stream of priority 5 started after {waited:?} ms (aged {})",
        e.aged
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_request_budget_holds_across_two_workers() {
    let Some((mut env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    env.stub("metered", Some(8), &[("latency_ms", "20")]);
    env.config.providers.get_mut("metered").unwrap().rpm = Some(20);
    let queue = env.any_queue().await;
    let a = lanes::Daemon::start(env.config.clone(), queue.clone())
        .await
        .unwrap();
    let b = lanes::Daemon::start(env.config.clone(), env.any_queue().await)
        .await
        .unwrap();
    let work: Vec<NewExecution> = (0..50)
        .map(|i| NewExecution {
            tenant: None,
            cache: None,
            provider: "metered".into(),
            input: ChatInput::prompt(format!("call {i}")),
            priority: 0,
            max_attempts: 1,
            route: None,
            defer: Default::default(),
        })
        .collect();
    a.submit_many(&work).await.unwrap();
    // The budget allows 20 in the minute, whichever worker claims them.
    let done = |rows: &[lanes::Execution]| count(rows, Status::Completed);
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(20),
        "20 done",
        |rows| done(rows) >= 20,
    )
    .await;
    assert_eq!(done(&rows), 20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = queue.list(None).await.unwrap();
    assert_eq!(done(&rows), 20, "nothing more within the minute");
    assert_eq!(count(&rows, Status::Pending), 30);
    // Each reservation was settled with what its attempt used.
    let used: i64 = rows
        .iter()
        .filter_map(|e| e.output.as_ref())
        .map(|o| {
            o["usage"]["input_tokens"].as_i64().unwrap()
                + o["usage"]["output_tokens"].as_i64().unwrap()
        })
        .sum();
    assert!(used > 0);
    assert_eq!(queue.budget_usage().await.unwrap()["metered"], (20, used));
    // Shown where the other policies are.
    let status = env.lanes(&["status"]);
    assert!(
        stdout(&status).contains("budget this minute: 20/20 requests"),
        "{}",
        stdout(&status)
    );
    let limits = env.lanes(&["limits"]);
    assert!(
        stdout(&limits).contains("metered: a budget of 20 requests per minute"),
        "{}",
        stdout(&limits)
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
