//! Tenants share a lane: a backlog of one does not hold back another, weights hold, and
//! the tenant is carried by every way in and shown by every way out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lanes::config::{Fairness, TenantConfig};
use lanes::model::{NewExecution, Status, now_ms};
use lanes::store::Queue;

use crate::support::*;

fn of(tenant: &str, provider: &str, extra: serde_json::Value) -> NewExecution {
    NewExecution {
        tenant: Some(tenant.to_string()),
        ..job(provider, extra)
    }
}

/// Waits until `ids` are all terminal.
async fn until_done(queue: &dyn Queue, ids: &[i64], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut open = 0;
        for id in ids {
            let e = queue.get(*id).await.unwrap().unwrap();
            if !e.status.is_terminal() {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {} still open",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `provider` has completed at least `n`.
async fn until_completed(queue: &dyn Queue, provider: &str, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while queue
        .counts()
        .await
        .unwrap()
        .get(provider)
        .map_or(0, |c| c.completed)
        < n
    {
        assert!(
            Instant::now() < deadline,
            "{provider}: fewer than {n} completed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tenant A has 100,000 pending when tenant B submits 10: B's first starts at the next
/// free slot, and B's 10 finish before A starts 100 more. From the rows' timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_one_tenant_does_not_hold_back_another() {
    let mut env = TestEnv::new();
    env.stub("shared", Some(4), &[]);
    let queue = env.queue().await;
    let sleep = serde_json::json!({"sleep_ms": 20});
    let backlog: Vec<NewExecution> = (0..100_000)
        .map(|_| of("a", "shared", sleep.clone()))
        .collect();
    let a_ids = queue.submit_many(&backlog).await.unwrap();
    let (daemon, queue) = env.start().await;
    until_completed(queue.as_ref(), "shared", 20, Duration::from_secs(30)).await;
    let submitted = now_ms();
    let b: Vec<NewExecution> = (0..10).map(|_| of("b", "shared", sleep.clone())).collect();
    let b_ids = queue.submit_many(&b).await.unwrap();
    until_done(queue.as_ref(), &b_ids, Duration::from_secs(30)).await;
    daemon.shutdown(Duration::from_secs(10)).await;

    let mut b_rows = Vec::new();
    for id in &b_ids {
        b_rows.push(queue.get(*id).await.unwrap().unwrap());
    }
    assert!(b_rows.iter().all(|e| e.status == Status::Completed));
    let b_first_start = b_rows.iter().filter_map(|e| e.started_at).min().unwrap();
    let b_last_finish = b_rows.iter().filter_map(|e| e.finished_at).max().unwrap();
    // A's rows run in id order: read those around B's run.
    let mut a_after = Vec::new();
    for id in &a_ids[..400] {
        let e = queue.get(*id).await.unwrap().unwrap();
        if e.started_at.is_some_and(|s| s >= submitted) {
            a_after.push(e);
        }
    }
    let a_before_b = a_after
        .iter()
        .filter(|e| e.started_at.unwrap() < b_first_start)
        .count();
    let a_during_b = a_after
        .iter()
        .filter(|e| e.started_at.unwrap() <= b_last_finish)
        .count();
    println!(
        "B's first started {} ms after its submission, with {a_before_b} of A's started \
         before it; B's 10 finished {} ms after, while {a_during_b} of A's started",
        b_first_start - submitted,
        b_last_finish - submitted
    );
    // One slot turnover: the first slot freed after B's submission (allowing one whose
    // write was under way as B came in).
    assert!(
        a_before_b <= 1,
        "{a_before_b} of A's started before B's first"
    );
    assert!(a_during_b < 100, "A started {a_during_b} while B's 10 ran");
}

/// Under `fairness = "weighted"`, two tenants with work waiting run in proportion to their
/// weights: 3 : 1 over the first 10,000 executions, within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_over_ten_thousand_executions() {
    let mut env = TestEnv::new();
    env.stub("weighed", Some(8), &[]);
    env.config.providers.get_mut("weighed").unwrap().fairness = Fairness::Weighted;
    env.config.tenants.insert(
        "heavy".into(),
        TenantConfig {
            weight: Some(3.0),
            ..Default::default()
        },
    );
    let queue = env.queue().await;
    let work: Vec<NewExecution> = (0..20_000)
        .map(|i| {
            let tenant = if i % 2 == 0 { "heavy" } else { "light" };
            of(tenant, "weighed", serde_json::json!({}))
        })
        .collect();
    queue.submit_many(&work).await.unwrap();
    let (daemon, queue) = env.start().await;
    until_completed(queue.as_ref(), "weighed", 10_000, Duration::from_secs(120)).await;
    daemon.shutdown(Duration::from_secs(10)).await;
    let mut started: Vec<_> = queue
        .list(Some("weighed"))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.started_at.is_some())
        .collect();
    started.sort_by_key(|e| (e.started_at, e.id));
    let mut by_tenant: BTreeMap<String, u32> = BTreeMap::new();
    for e in started.iter().take(10_000) {
        *by_tenant.entry(e.tenant.clone().unwrap()).or_default() += 1;
    }
    let heavy = f64::from(by_tenant["heavy"]);
    let share = heavy / 10_000.0;
    println!("first 10,000 started: {by_tenant:?}, heavy's share {share:.4} (weights 3 : 1)");
    assert!(
        (share / 0.75 - 1.0).abs() <= 0.05,
        "heavy ran {share:.4} of the first 10,000, not 0.75 within 5%"
    );
}

/// The tenant goes in through the API, the CLI and a JSONL file, is refused when bad with
/// its name, and comes out in the execution, `GET /v1/tenants`, `lanes status --tenant` and
/// the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_goes_in_every_way_and_shows_everywhere() {
    let mut env = TestEnv::new();
    env.stub("t", Some(4), &[]);
    env.config.tenants.insert(
        "idle".into(),
        TenantConfig {
            weight: Some(2.0),
            ..Default::default()
        },
    );
    // Through the CLI, before the daemon runs.
    env.write_config();
    let out = env.lanes(&[
        "submit",
        "--provider",
        "t",
        "--input",
        r#"{"prompt":"hi"}"#,
        "--tenant",
        "cli-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let bad = env.lanes(&[
        "submit",
        "--provider",
        "t",
        "--input",
        r#"{"prompt":"hi"}"#,
        "--tenant",
        "no way",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("tenant `no way` has ' '"),
        "{bad:?}"
    );
    let file = env.dir.path().join("lines.jsonl");
    std::fs::write(
        &file,
        "{\"input\": {\"prompt\": \"a\"}, \"tenant\": \"file-1\"}\n{\"input\": {\"prompt\": \"b\"}}\n",
    )
    .unwrap();
    let load = env.lanes(&[
        "submit",
        "--file",
        file.to_str().unwrap(),
        "--provider",
        "t",
        "--tenant",
        "file-2",
    ]);
    assert!(load.status.success(), "{load:?}");

    let (daemon, server, api) = crate::api::start(&env).await;
    let answer = api
        .post(
            "/v1/executions",
            serde_json::json!({"provider": "t", "input": {"prompt": "x"}, "tenant": "acme"}),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.body["tenant"], "acme");
    let refused = api
        .post(
            "/v1/executions",
            serde_json::json!({"provider": "t", "input": {"prompt": "x"}, "tenant": ""}),
        )
        .await;
    crate::api::problem(&refused, 422, "tenant must be 1 to 64 characters");
    let queue = daemon.queue().clone();
    wait_terminal(queue.as_ref(), Some("t"), Duration::from_secs(30)).await;

    let tenants = api.get("/v1/tenants").await;
    assert_eq!(tenants.status, 200);
    let row = |name: &str| {
        tenants.body["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {}", tenants.body))
    };
    for name in ["cli-1", "file-1", "file-2", "acme"] {
        assert_eq!(row(name)["completed"], 1, "{}", tenants.body);
    }
    assert_eq!(row("idle")["weight"], 2.0);
    assert_eq!(row("idle")["completed"], 0);
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"lanes_tenant_executions{tenant="acme",status="completed"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;

    let status = env.lanes(&["status", "--tenant", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let acme = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == "acme")
        .unwrap();
    assert_eq!(acme["completed"], 1);
}
