//! The exact-match response cache: hits, misses, expiry, bypass, tenants apart, single
//! flight (50 identical submissions, one provider call; a failed leader lets each waiter run
//! its own), eviction by count, a restart, and clearing it through the API.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use lanes::config::ResponseCacheConfig;

use crate::api::{Answer, Api};
use crate::support::*;

async fn submit(api: &Api, provider: &str, input: Value, extra: Value) -> Answer {
    let mut body = json!({"provider": provider, "input": input});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let answer = api.post("/v1/executions", body).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer
}

/// Waits until execution `id` ended; its body.
async fn ended(api: &Api, id: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = api.get(&format!("/v1/executions/{id}?wait=5s")).await.body;
        if ["completed", "failed", "cancelled"].contains(&e["status"].as_str().unwrap()) {
            return e;
        }
        assert!(Instant::now() < deadline, "{e}");
    }
}

/// A submission's answer that was not a hit: queued (the daemon may have claimed it).
fn assert_queued(e: &Value) {
    assert!(
        e["status"] == "pending" || e["status"] == "running",
        "not queued: {e}"
    );
}

fn input(prompt: &str, temperature: Option<f64>) -> Value {
    let mut i = json!({"prompt": prompt, "extra": {"sleep_ms": 200}});
    if let Some(t) = temperature {
        i["temperature"] = json!(t);
    }
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_repeat_from_the_cache_once_per_key_and_never_across_tenants() {
    let mut env = TestEnv::new();
    env.stub("short", Some(8), &[]);
    env.stub("long", Some(64), &[]);
    let cache = |ttl_secs, max_entries| {
        Some(ResponseCacheConfig {
            ttl_secs,
            max_entries,
        })
    };
    env.config
        .providers
        .get_mut("short")
        .unwrap()
        .response_cache = cache(2, 3);
    env.config.providers.get_mut("long").unwrap().response_cache = cache(3600, 1000);
    let (daemon, server, api) = crate::api::start(&env).await;

    // A miss runs; the same request again is answered at once, marked, at no cost.
    let first = submit(&api, "short", input("q1", Some(0.0)), json!({})).await;
    assert_queued(&first.body);
    let first = ended(&api, &first.body["id"]).await;
    assert_eq!(first["status"], "completed");
    let hit = submit(&api, "short", input("q1", Some(0.0)), json!({}))
        .await
        .body;
    assert_eq!(hit["status"], "completed", "{hit}");
    assert_eq!(hit["output"]["cached"], true);
    assert_eq!(hit["output"]["cost"]["usd"], 0.0);
    assert_eq!(hit["output"]["text"], first["output"]["text"]);
    assert_eq!(hit["attempts"], 0);
    assert_eq!(hit["history"][0]["outcome"], "cached");
    // Not cached: `cache: false`, an unset temperature (the provider's default samples),
    // another tenant's same request.
    for extra in [json!({"cache": false}), json!({"tenant": "other"})] {
        let e = submit(&api, "short", input("q1", Some(0.0)), extra)
            .await
            .body;
        assert_queued(&e);
    }
    for _ in 0..2 {
        let e = submit(&api, "short", input("q-default", None), json!({}))
            .await
            .body;
        assert_queued(&e);
        ended(&api, &e["id"]).await;
    }
    // `cache: true` caches a sampled request too.
    let sampled = submit(
        &api,
        "short",
        input("q-sampled", Some(0.9)),
        json!({"cache": true}),
    )
    .await;
    ended(&api, &sampled.body["id"]).await;
    let again = submit(
        &api,
        "short",
        input("q-sampled", Some(0.9)),
        json!({"cache": true}),
    )
    .await;
    assert_eq!(again.body["output"]["cached"], true);
    // Expiry: past the ttl, a miss again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let expired = submit(&api, "short", input("q1", Some(0.0)), json!({}))
        .await
        .body;
    assert_queued(&expired);
    ended(&api, &expired["id"]).await;
    // Eviction by count: at most 3 answers for `short`.
    for q in ["e1", "e2", "e3", "e4"] {
        let e = submit(&api, "short", input(q, Some(0.0)), json!({}))
            .await
            .body;
        ended(&api, &e["id"]).await;
    }
    // The upkeep trims it within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = api.get("/metrics").await.text;
        if metrics.contains(r#"lanes_cache_entries{provider="short"} 3"#) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains(r#"lanes_cache_hits_total{provider="short"} 2"#),
        "{metrics}"
    );

    // Single flight: 50 identical submissions at once make one call.
    let flight = input("q-flight", Some(0.0));
    let answers = futures_util::future::join_all(
        (0..50).map(|_| submit(&api, "long", flight.clone(), json!({}))),
    )
    .await;
    let mut calls = 0;
    let mut text = None;
    for a in &answers {
        let e = ended(&api, &a.body["id"]).await;
        assert_eq!(e["status"], "completed", "{e}");
        calls += e["attempts"].as_i64().unwrap();
        let t = e["output"]["text"].clone();
        assert!(text.get_or_insert(t.clone()) == &t);
    }
    assert_eq!(
        calls, 1,
        "50 identical submissions made {calls} provider calls"
    );
    // A failed leader: each waiter runs its own call (and fails its own way).
    let failing = json!({"prompt": "q-fail", "temperature": 0.0, "extra": {"sleep_ms": 200, "error": "invalid-request"}});
    let answers = futures_util::future::join_all(
        (0..5).map(|_| submit(&api, "long", failing.clone(), json!({"max_attempts": 1}))),
    )
    .await;
    for a in &answers {
        let e = ended(&api, &a.body["id"]).await;
        assert_eq!(
            (e["status"].as_str(), e["attempts"].as_i64()),
            (Some("failed"), Some(1)),
            "{e}"
        );
    }
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;

    // An answer is stored as a hit serves it; one stored by an earlier version (as the
    // provider gave it) is still served, marked and at no cost, by the transaction's way.
    let queue = env.queue().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT output FROM response_cache")
        .fetch_all(queue.pool())
        .await
        .unwrap();
    assert!(
        stored.iter().all(|o| o.contains(r#""cached":true"#)),
        "{stored:?}"
    );
    sqlx::query(
        "UPDATE response_cache
            SET output = json_set(json_remove(output, '$.cached'), '$.cost.usd', 0.5)",
    )
    .execute(queue.pool())
    .await
    .unwrap();
    drop(queue);

    // The cache is in the database: after a restart it still answers; the API clears it.
    let (daemon, server, api) = crate::api::start(&env).await;
    let after = submit(&api, "long", flight.clone(), json!({})).await.body;
    assert_eq!(after["output"]["cached"], true, "{after}");
    assert_eq!(after["output"]["cost"]["usd"], 0.0, "{after}");
    // Every door's hits count in the metrics: a batch's (two) and the OpenAI-compatible
    // endpoint's (its second identical call), beside the single one above.
    let batch = api
        .post(
            "/v1/executions:batch",
            json!({"executions": [{"provider": "long", "input": flight},
                                  {"provider": "long", "input": flight}]}),
        )
        .await;
    assert_eq!(batch.status, 201, "{batch:?}");
    for entry in batch.body["executions"].as_array().unwrap() {
        let e = api
            .get(&format!("/v1/executions/{}", entry["id"]))
            .await
            .body;
        assert_eq!(e["output"]["cached"], true, "{e}");
    }
    let chat = r#"{"model": "long", "temperature": 0,
                   "messages": [{"role": "user", "content": "q-door"}]}"#;
    let addr = api.base.trim_start_matches("http://");
    for _ in 0..2 {
        let answer =
            crate::front_door::post_plainly(addr, "/openai/v1/chat/completions", chat).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // A batch whose key clashes wrote nothing, and counts no hit.
    let keyed = json!({"provider": "long", "input": {"prompt": "other"}, "idempotency_key": "k1"});
    assert_eq!(api.post("/v1/executions", keyed).await.status, 201);
    let clash = api
        .post(
            "/v1/executions:batch",
            json!({"executions": [{"provider": "long", "input": flight},
                                  {"provider": "long", "input": {"prompt": "another"},
                                   "idempotency_key": "k1"}]}),
        )
        .await;
    assert_eq!(clash.status, 409, "{clash:?}");
    // The metrics count events, a moment after the answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = api.get("/metrics").await.text;
        if metrics.contains(r#"lanes_cache_hits_total{provider="long"} 4"#) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still 4 a moment later: the clashing batch's hit was not counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"lanes_cache_hits_total{provider="long"} 4"#),
        "{metrics}"
    );
    let cleared = api
        .send(
            hyper::Method::DELETE,
            "/v1/cache?provider=long",
            Value::Null,
        )
        .await;
    assert_eq!(cleared.status, 200, "{cleared:?}");
    assert!(
        cleared.body["dropped"].as_u64().unwrap() >= 1,
        "{}",
        cleared.body
    );
    let miss = submit(&api, "long", flight, json!({})).await.body;
    assert_queued(&miss);
    ended(&api, &miss["id"]).await;
    server.shutdown().await;
    daemon.shutdown(Duration::from_secs(5)).await;
}
