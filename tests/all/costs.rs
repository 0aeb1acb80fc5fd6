//! Costs: each answer priced from its usage and the price table (with the operator's
//! overrides), stored with the table's version; a model without a price says so and never
//! counts as 0; totals by provider, model and tenant in `lanes usage`, `GET /v1/usage` and
//! the metrics.

use std::time::Duration;

use lanes::costs::PriceOverride;
use lanes::model::{NewExecution, Status};

use crate::support::*;

/// `provider`'s job reporting `usage`, for `tenant`, asking for `model`.
fn priced(provider: &str, tenant: &str, model: &str, usage: serde_json::Value) -> NewExecution {
    let mut job = job(provider, serde_json::json!({ "usage": usage }));
    job.input.model = Some(model.to_string());
    job.tenant = Some(tenant.to_string());
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_priced_by_kind_and_add_up_by_provider_model_and_tenant() {
    let mut env = TestEnv::new();
    env.stub("paid", Some(4), &[]);
    env.stub("local", Some(4), &[]);
    // A model of the operator's own, and one field of a shipped model changed.
    env.config.prices.insert(
        "house-model".into(),
        PriceOverride {
            input: Some(2.0),
            output: Some(8.0),
            cache_read: Some(0.5),
            cache_write: Some(2.5),
            batch_discount: None,
        },
    );
    env.config.prices.insert(
        "gpt-4o".into(),
        PriceOverride {
            output: Some(12.0),
            ..PriceOverride::default()
        },
    );
    let queue = env.queue().await;
    let usage = serde_json::json!({
        "input_tokens": 1_000_000, "output_tokens": 500_000, "cache_read_tokens": 200_000,
        "cache_write_tokens": 100_000, "reasoning_tokens": 50_000
    });
    let ids = queue
        .submit_many(&[
            priced("paid", "acme", "house-model", usage.clone()),
            priced(
                "paid",
                "acme",
                "gpt-4o-2024-08-06",
                serde_json::json!({
                    "input_tokens": 1_000_000, "output_tokens": 1_000_000
                }),
            ),
            priced("local", "zeta", "llama3.2", usage.clone()),
        ])
        .await
        .unwrap();
    let (daemon, server, api) = crate::api::start(&env).await;
    let queue = daemon.queue().clone();
    let rows = wait_terminal(queue.as_ref(), None, Duration::from_secs(30)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:#?}"
    );
    let cost = |id: i64| {
        let e = rows.iter().find(|e| e.id == id).unwrap();
        e.output.as_ref().unwrap()["cost"].clone()
    };
    // house-model: 700k uncached input at 2, 200k cache reads at 0.5, 100k cache writes at
    // 2.5, 500k output at 8 (reasoning is part of output, not priced again).
    let house = cost(ids[0]);
    let want = 0.7 * 2.0 + 0.2 * 0.5 + 0.1 * 2.5 + 0.5 * 8.0;
    assert!(
        (house["usd"].as_f64().unwrap() - want).abs() < 1e-9,
        "{house}"
    );
    assert_eq!(house["priced_as"], "house-model");
    let version = house["prices"].as_str().unwrap().to_string();
    assert!(version.ends_with("+config"), "{version}");
    // A dated snapshot priced as its model, with the overridden output price and the
    // shipped input price.
    let dated = cost(ids[1]);
    assert_eq!(dated["priced_as"], "gpt-4o");
    let shipped_input = lanes::costs::PriceTable::shipped()
        .lookup("gpt-4o")
        .unwrap()
        .1
        .input;
    let want_dated = shipped_input + 12.0;
    assert!(
        (dated["usd"].as_f64().unwrap() - want_dated).abs() < 1e-9,
        "{dated}"
    );
    // No price: said, and no number.
    let local = cost(ids[2]);
    assert!(local.get("usd").is_none(), "{local}");
    assert!(
        local["unpriced"]
            .as_str()
            .unwrap()
            .contains("no price for model \"llama3.2\""),
        "{local}"
    );

    // The totals, by tenant, model and provider.
    let by_tenant = api.get("/v1/usage?by=tenant&since=1h").await;
    assert_eq!(by_tenant.status, 200, "{by_tenant:?}");
    let row = |answer: &crate::api::Answer, key: &str| {
        answer.body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("{key}: {}", answer.body))
    };
    let acme = row(&by_tenant, "acme");
    assert_eq!(acme["executions"], 2);
    assert!((acme["cost_usd"].as_f64().unwrap() - (want + want_dated)).abs() < 1e-9);
    assert_eq!(acme["unpriced"], 0);
    assert_eq!(acme["cache_read_tokens"], 200_000);
    let zeta = row(&by_tenant, "zeta");
    assert_eq!(
        (zeta["unpriced"].as_u64(), zeta["cost_usd"].as_f64()),
        (Some(1), Some(0.0))
    );
    assert_eq!(by_tenant.body["total"]["executions"], 3);
    let by_model = api.get("/v1/usage?by=model").await;
    assert_eq!(
        row(&by_model, "gpt-4o-2024-08-06")["output_tokens"],
        1_000_000
    );
    let bad = api.get("/v1/usage?by=colour").await;
    crate::api::problem(&bad, 400, "by `colour`");
    let later = api.get("/v1/usage?since=1h&until=2h").await;
    assert_eq!(later.status, 200);
    assert_eq!(later.body["total"]["executions"], 0, "an empty range");

    let metrics = api.get("/metrics").await.text;
    for line in [
        r#"lanes_unpriced_total{provider="local",model="llama3.2"} 1"#,
        r#"lanes_tokens_total{provider="paid",kind="cache_read"} 200000"#,
        r#"lanes_tokens_total{provider="paid",kind="reasoning"} 50000"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let metric = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"lanes_cost_usd_total{provider="paid",model="house-model"} "#)
        })
        .unwrap_or_else(|| panic!("no cost metric:\n{metrics}"));
    assert!(
        (metric.parse::<f64>().unwrap() - want).abs() < 1e-9,
        "{metric}"
    );
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;

    let out = env.lanes(&["usage", "--by", "provider", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paid = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "paid")
        .unwrap()
        .clone();
    assert!((paid["cost_usd"].as_f64().unwrap() - (want + want_dated)).abs() < 1e-9);
    let text = env.lanes(&["usage", "--by", "tenant"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("acme") && text.contains("1 completed execution(s) have no price"),
        "{text}"
    );
    let bad = env.lanes(&["usage", "--since", "yesterday"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since `yesterday`"));
}

/// Prices `provider`'s configured model, `house-model`, at $1 per million output tokens
/// (and input for free): an answer of 100,000 output tokens costs $0.10, and a claim
/// reserves $0.001 (1,000 output tokens, as no `max_tokens` is set).
fn dime_a_call(env: &mut TestEnv, provider: &str) {
    env.config.providers.get_mut(provider).unwrap().model = Some("house-model".into());
    env.config.prices.insert(
        "house-model".into(),
        PriceOverride {
            input: Some(0.0),
            output: Some(1.0),
            ..PriceOverride::default()
        },
    );
}

/// A tenant's `daily_usd` reached mid-run holds back that tenant only, never stops what
/// runs, and lets it go on the next UTC day. The caps' clock starts 12 s before a midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_reached_mid_run_pauses_that_tenant_only_until_the_next_day() {
    use lanes::clock::{DAY_MS, day_of};
    let real = lanes::model::now_ms();
    let midnight = (day_of(real) + 1) * DAY_MS;
    let before = 12_000;
    let offset = midnight - before - real;
    lanes::clock::set_offset_ms(offset);
    // Midnight on the store's clock (SQLite's is the system's).
    let midnight_here = midnight - offset;

    let mut env = TestEnv::new();
    env.stub("paid", Some(2), &[]);
    dime_a_call(&mut env, "paid");
    env.config.tenants.insert(
        "capped".into(),
        lanes::config::TenantConfig {
            daily_usd: Some(0.5),
            ..Default::default()
        },
    );
    let usage = serde_json::json!({ "input_tokens": 10, "output_tokens": 100_000 });
    let mut jobs = Vec::new();
    // 8 for the capped tenant: 5 to 7 reach its $0.50 today, and the rest stay under it
    // tomorrow.
    for (tenant, n) in [("capped", 8), ("free", 12)] {
        for _ in 0..n {
            let mut job = job(
                "paid",
                serde_json::json!({ "usage": usage, "sleep_ms": 100 }),
            );
            job.input.model = Some("house-model".into());
            job.tenant = Some(tenant.into());
            jobs.push(job);
        }
    }
    let queue = env.queue().await;
    queue.submit_many(&jobs).await.unwrap();
    let (daemon, server, api) = crate::api::start(&env).await;
    let queue = daemon.queue().clone();

    // While it waits: its state and reason, fleet-wide in the store.
    let mut seen_capped = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(11);
    while std::time::Instant::now() < deadline && lanes::model::now_ms() < midnight_here - 500 {
        let tenants = api.get("/v1/tenants").await;
        let capped = tenants.body["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == "capped")
            .cloned()
            .unwrap();
        if capped["state"] == "capped" && capped["running"] == 0 {
            seen_capped = Some(capped);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let capped = seen_capped.expect("the tenant shows as capped before midnight");
    assert!(
        capped["reason"]
            .as_str()
            .unwrap()
            .contains("daily_usd 0.50 spent"),
        "{capped}"
    );
    assert!(
        capped["spend"]["spent_usd"].as_f64().unwrap() >= 0.5,
        "{capped}"
    );
    let metrics = api.get("/metrics").await.text;
    for line in [
        r#"lanes_spend_cap_notices_total{scope="tenant",level="reached"} 1"#,
        r#"lanes_spend_cap_usd{scope="tenant",name="capped"} 0.5"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    let rows = wait_terminal(queue.as_ref(), None, Duration::from_secs(40)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:#?}"
    );
    let of = |tenant: &str| {
        rows.iter()
            .filter(|e| e.tenant.as_deref() == Some(tenant))
            .collect::<Vec<_>>()
    };
    // The free tenant never waited for the day: all of its work ended before midnight.
    assert!(
        of("free")
            .iter()
            .all(|e| e.finished_at.unwrap() < midnight_here),
        "{:?}",
        of("free").iter().map(|e| e.finished_at).collect::<Vec<_>>()
    );
    // The capped tenant ran up to its cap, with at most the lane's 2 in flight past it (they
    // ran to their end), and the rest after midnight.
    let early = of("capped")
        .iter()
        .filter(|e| e.started_at.unwrap() < midnight_here)
        .count();
    assert!((5..=7).contains(&early), "{early} started before midnight");
    assert_eq!(
        of("capped")
            .iter()
            .filter(|e| e.started_at.unwrap() >= midnight_here)
            .count(),
        8 - early
    );
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A provider's `daily_usd` reached: the provider shows as capped with its reason, what ran
/// ran to its end, the rest waits, pending, and a reload that raises the cap lets it run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_spent_its_daily_usd_pauses_with_its_reason() {
    let mut env = TestEnv::new();
    env.stub("metered", Some(1), &[]);
    dime_a_call(&mut env, "metered");
    env.config.providers.get_mut("metered").unwrap().daily_usd = Some(0.3);
    // A tenant cap far from reached: counted, shown, never in the way.
    env.config.tenants.insert(
        "t".into(),
        lanes::config::TenantConfig {
            daily_usd: Some(100.0),
            ..Default::default()
        },
    );
    let usage = serde_json::json!({ "input_tokens": 10, "output_tokens": 100_000 });
    let jobs: Vec<NewExecution> = (0..6)
        .map(|_| priced("metered", "t", "house-model", usage.clone()))
        .collect();
    env.queue().await.submit_many(&jobs).await.unwrap();
    let (daemon, server, api) = crate::api::start(&env).await;
    let mut paused = None;
    for _ in 0..200 {
        let providers = api.get("/v1/providers").await;
        let p = providers.body["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "metered")
            .cloned()
            .unwrap();
        if p["state"] == "capped" && p["running"] == 0 {
            paused = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = paused.expect("the provider shows as capped");
    assert_eq!(p["limits"]["claimable"], 0, "{p}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("daily_usd 0.30 spent (0.30 USD on "),
        "{p}"
    );
    assert_eq!(
        (p["pending"].as_u64(), p["spend"]["capped"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(
        (p["spend"]["spent_usd"].as_f64().unwrap() - 0.3).abs() < 1e-9,
        "{p}"
    );
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"lanes_spend_cap_notices_total{scope="provider",level="reached"} 1"#),
        "{metrics}"
    );
    // The CLI shows the same, from the queue.
    let out = env.lanes(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "spend today (UTC): 0.30 of 0.30 USD, 0.00 reserved",
        "daily_usd 0.30: 0.30 USD spent and 0.00 reserved today (UTC)",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let out = env.lanes(&["status", "--tenant"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let t = text
        .lines()
        .find(|l| l.starts_with("t "))
        .unwrap_or_default();
    assert!(
        t.contains("0.30/100.00") && t.ends_with("serving"),
        "{text}"
    );

    // A cap raised by a reload applies at once: the other three run.
    let mut raised = env.config.clone();
    raised.providers.get_mut("metered").unwrap().daily_usd = Some(1.0);
    daemon.reload_config(raised).await.unwrap();
    let rows = wait_terminal(daemon.queue().as_ref(), None, Duration::from_secs(30)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:#?}"
    );
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;
}
