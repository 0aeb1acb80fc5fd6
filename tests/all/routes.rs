//! Routes (load balancing) against two APIs with a true capacity (`capacity.rs`): a route
//! spreads its work by the members' free share, moves a failed attempt to a healthy member,
//! skips an open member, and an ordered route falls back in order. The history says where
//! each attempt ran.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lanes::model::{ChatInput, NewExecution, Status};
use lanes::policy::PolicyConfig;
use lanes::routes::{RouteConfig, Strategy};

use crate::capacity::CapacityMock;
use crate::support::*;

fn to(route: &str, n: usize) -> Vec<NewExecution> {
    (0..n)
        .map(|i| NewExecution {
            tenant: None,
            cache: None,
            provider: route.into(),
            input: ChatInput::prompt(format!("call {i}")),
            priority: 0,
            max_attempts: 5,
            route: None,
            defer: Default::default(),
        })
        .collect()
}

fn by_provider(rows: &[lanes::Execution]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in rows {
        *counts.entry(e.provider.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_spreads_by_capacity_moves_retries_and_skips_an_open_member() {
    let big = CapacityMock::start(4, 60).await;
    let small = CapacityMock::start(2, 60).await;
    let mut env = TestEnv::new();
    env.add_component("openai.wasm");
    env.adapter("big", "openai.wasm", &big.url(), "m").limit = Some(4);
    let s = env.adapter("small", "openai.wasm", &small.url(), "m");
    s.limit = Some(2);
    // Two transient failures in a row open `small`, for long enough to see it skipped.
    s.policy = PolicyConfig {
        breaker_failures: Some(2),
        breaker_cooldown_ms: Some(60_000),
        ..Default::default()
    };
    env.config.retry.base_ms = 10;
    env.config.retry.max_ms = 20;
    env.config.routes.insert(
        "chat".into(),
        RouteConfig {
            providers: vec!["big".into(), "small".into()],
            strategy: Strategy::Capacity,
        },
    );
    env.config.routes.insert(
        "backup".into(),
        RouteConfig {
            providers: vec!["small".into(), "big".into()],
            strategy: Strategy::Ordered,
        },
    );
    let (daemon, queue) = env.start().await;

    // By share of the limit: 4 and 2 take 2:1.
    let ids = daemon.submit_many(&to("chat", 30)).await.unwrap();
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(60),
        "the routed work to end",
        |rows| rows.len() == 30 && rows.iter().all(|e| e.status.is_terminal()),
    )
    .await;
    assert_eq!(
        by_provider(&rows),
        BTreeMap::from([("big".to_string(), 20), ("small".to_string(), 10)])
    );
    assert!(
        rows.iter()
            .all(|e| e.status == Status::Completed && e.route.as_deref() == Some("chat"))
    );
    assert_eq!(big.count(200) + small.count(200), 30);
    assert!(big.state.max_in_flight.load(Ordering::SeqCst) <= 4);
    assert!(small.state.max_in_flight.load(Ordering::SeqCst) <= 2);
    drop(ids);

    // An ordered route uses its first healthy member.
    let ordered = daemon.submit_many(&to("backup", 4)).await.unwrap();
    let rows = queue.list(None).await.unwrap();
    let placed: Vec<&str> = ordered
        .iter()
        .map(|id| rows.iter().find(|e| e.id == *id).unwrap().provider.as_str())
        .collect();
    assert_eq!(placed, ["small"; 4]);
    wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(30),
        "backup to end",
        |rows| rows.iter().all(|e| e.status.is_terminal()),
    )
    .await;

    // `small` goes down: its attempts fail and move to `big`, and once its circuit opens,
    // new work goes to `big` alone.
    small.state.retry_after_ms.store(0, Ordering::SeqCst);
    small.state.down.store(true, Ordering::SeqCst);
    let moved = daemon.submit_many(&to("chat", 6)).await.unwrap();
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(60),
        "the work on the down member to end",
        |rows| rows.iter().all(|e| e.status.is_terminal()),
    )
    .await;
    let mut moved_rows = 0;
    for id in &moved {
        let e = rows.iter().find(|e| e.id == *id).unwrap();
        assert_eq!(e.status, Status::Completed, "{e:?}");
        assert_eq!(e.provider, "big", "{e:?}");
        if e.history.len() > 1 {
            let first = &e.history[0];
            // It began on `small`, failed there, and the retry ran on `big`.
            assert_eq!(first.provider.as_deref(), Some("small"), "{:?}", e.history);
            assert_eq!(first.outcome, "retried");
            assert_eq!(e.history.last().unwrap().provider.as_deref(), Some("big"));
            moved_rows += 1;
        }
    }
    assert!(moved_rows >= 2, "some began on small: {moved_rows}");
    // Routes read the policy state the queue holds (as every worker of a fleet does).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, states) = queue.provider_states().await.unwrap();
        if states.get("small").is_some_and(|s| s.circuit_open) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "small never opened: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = daemon.submit_many(&to("chat", 6)).await.unwrap();
    let rows = queue.list(None).await.unwrap();
    for id in &after {
        let e = rows.iter().find(|e| e.id == *id).unwrap();
        assert_eq!(e.provider, "big", "an open member is skipped: {e:?}");
    }
    // The API's path (keyed submissions) routes too, and `lanes submit` from the CLI.
    let keyed = daemon
        .control()
        .submit_keyed(&[(to("chat", 1).remove(0), None)])
        .await
        .unwrap();
    let lanes::store::Submitted::Created(id) = keyed[0] else {
        panic!("{keyed:?}")
    };
    let e = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (e.provider.as_str(), e.route.as_deref()),
        ("big", Some("chat"))
    );
    let out = env.lanes(&[
        "submit",
        "--provider",
        "chat",
        "--input",
        r#"{"prompt": "hi"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: i64 = stdout(&out).trim().parse().unwrap();
    let e = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (e.provider.as_str(), e.route.as_deref()),
        ("big", Some("chat"))
    );
    let status = env.lanes(&["status"]);
    assert!(
        stdout(&status).contains("route chat (capacity): big, small"),
        "{}",
        stdout(&status)
    );
    // `lanes get` says where it ran.
    let shown = env.lanes(&["get", &moved[0].to_string()]);
    assert!(
        stdout(&shown).contains("(route chat)"),
        "{}",
        stdout(&shown)
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_out_of_its_request_budget_is_skipped() {
    let mut env = TestEnv::new();
    env.stub("metered", Some(4), &[]);
    env.stub("spare", Some(4), &[]);
    env.config.providers.get_mut("metered").unwrap().rpm = Some(2);
    env.config.routes.insert(
        "first".into(),
        RouteConfig {
            providers: vec!["metered".into(), "spare".into()],
            strategy: Strategy::Ordered,
        },
    );
    let (daemon, queue) = env.start().await;
    let early = daemon.submit_many(&to("first", 2)).await.unwrap();
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(20),
        "two done",
        |rows| rows.iter().all(|e| e.status.is_terminal()),
    )
    .await;
    for id in &early {
        let e = rows.iter().find(|e| e.id == *id).unwrap();
        assert_eq!(
            (e.provider.as_str(), e.status),
            ("metered", Status::Completed)
        );
    }
    // Its two requests this minute are spent: the ordered route falls back.
    let late = daemon.submit_many(&to("first", 2)).await.unwrap();
    let rows = queue.list(None).await.unwrap();
    for id in &late {
        assert_eq!(rows.iter().find(|e| e.id == *id).unwrap().provider, "spare");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// An ordered route whose first member always answers `unavailable`: once its circuit opens,
/// the work still pending on it moves to the next member at once, not one execution per
/// half-open probe. Before, 13 of these 20 were still pending on `down` 10 s later, with 0
/// attempts, while `big` idled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_never_strands_work_behind_an_open_member() {
    let mut env = TestEnv::new();
    env.stub("down", Some(2), &[("error", "unavailable")]);
    env.stub("big", Some(8), &[]);
    env.config.providers.get_mut("down").unwrap().policy = PolicyConfig {
        breaker_failures: Some(2),
        breaker_cooldown_ms: Some(60_000),
        ..Default::default()
    };
    env.config.retry.base_ms = 10;
    env.config.retry.max_ms = 20;
    env.config.routes.insert(
        "first".into(),
        RouteConfig {
            providers: vec!["down".into(), "big".into()],
            strategy: Strategy::Ordered,
        },
    );
    let (daemon, queue) = env.start().await;
    let ids = daemon.submit_many(&to("first", 20)).await.unwrap();
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(15),
        "every routed execution to complete",
        |rows| rows.len() == 20 && rows.iter().all(|e| e.status == Status::Completed),
    )
    .await;
    assert_eq!(
        by_provider(&rows),
        BTreeMap::from([("big".to_string(), 20)])
    );
    // Those that never ran on `down` moved without spending an attempt there.
    let untried = rows.iter().filter(|e| e.attempts == 1).count();
    assert!(
        untried >= 10,
        "{untried} of 20 ran on `big` alone: {rows:?}"
    );
    assert_eq!(ids.len(), 20);
    daemon.shutdown(Duration::from_secs(5)).await;
}
