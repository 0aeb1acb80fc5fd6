//! The compatible endpoints through the real SDKs against one real `lanes serve`: Python's
//! `openai` (`/openai/v1`, `front_door/openai_sdk.py`) and `anthropic` (`/anthropic/v1`,
//! `front_door/anthropic_sdk.py`), in the clients' venv that `scripts/build-clients`
//! makes, and the `openai` npm package (`front_door/node/openai_sdk.mjs`, installed by
//! `npm ci` into `target/front-door-node`): the SDKs' types parse every answer, `model` names
//! a provider, an alias or `PROVIDER/MODEL`, errors are the SDKs' own exceptions, and the
//! SDKs' retries of a 504 at `max_wait` find the execution they repeat: one row, one call.

use std::process::Command;

use lanes::model::Status;

use crate::support::*;

const TOKEN: &str = "front-door-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_and_anthropic_sdks_call_the_queue_through_the_compatible_endpoints() {
    let python = crate::clients::clients_venv().join("bin/python");
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    env.stub("slow", Some(4), &[("latency_ms", "3000")]);
    env.stub("patient", Some(4), &[("latency_ms", "3000")]);
    // The npm package's providers.
    env.stub("nstub", Some(4), &[]);
    env.stub("nslow", Some(4), &[("latency_ms", "3000")]);
    env.stub("held", Some(4), &[]);
    env.stub("broken", Some(4), &[]);
    // The Anthropic SDK's providers, apart so each script's rows can be counted.
    env.stub("astub", Some(4), &[]);
    env.stub("aslow", Some(4), &[("latency_ms", "3000")]);
    // Streams, and a provider that takes text only (a 0.1 component).
    env.stub("ostream", Some(4), &[]);
    env.stub("nstream", Some(4), &[]);
    env.stub("astream", Some(4), &[]);
    env.text_only("atext", Some(4));
    let aliases = &mut env.config.front_door.models;
    aliases.insert("fast".into(), "stub/stub-model".into());
    aliases.insert("afast".into(), "astub/stub-model".into());
    env.config.front_door.max_wait_secs = 1;
    let token_file = env.dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    env.config.api.token_file = Some(token_file);
    let mut serve = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;
    // A provider paused for 10 minutes (a rate limit's wait) and one whose circuit is open
    // as long: longer than max_wait, so calls to them are refused at once.
    let queue = env.queue().await;
    sqlx::query(
        "INSERT INTO provider_state (provider, paused_until, reason, circuit, updated_at)
         VALUES ('held', ?1, '429 from the provider', 'closed', ?2),
                ('broken', ?1, '5 failures in a row', 'open', ?2)",
    )
    .bind(lanes::model::now_ms() + 600_000)
    .bind(lanes::model::now_ms())
    .execute(queue.pool())
    .await
    .unwrap();
    let run = |name: &'static str| {
        let python = python.clone();
        async move {
            let script = repo_root().join("tests/all/front_door").join(name);
            tokio::task::spawn_blocking(move || {
                Command::new(python)
                    .arg(script)
                    .env("LANES_TEST_URL", format!("http://{addr}"))
                    .env("LANES_TEST_TOKEN", TOKEN)
                    .env("PYTHONDONTWRITEBYTECODE", "1")
                    .output()
                    .expect("running an SDK script")
            })
            .await
            .unwrap()
        }
    };
    let node = {
        let dir = node_sdk_dir();
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(dir.join("openai_sdk.mjs"))
                .env("LANES_TEST_URL", format!("http://{addr}"))
                .env("LANES_TEST_TOKEN", TOKEN)
                .output()
                .expect("running node")
        })
    };
    // One after the other: each holds calls open for seconds.
    let outs = [
        run("openai_sdk.py").await,
        run("anthropic_sdk.py").await,
        node.await.unwrap(),
    ];
    terminate(&mut serve);
    for out in &outs {
        assert!(
            out.status.success(),
            "an SDK script failed:\n{}{}\nserve.log:\n{}",
            stdout(out),
            stderr(out),
            env.serve_log()
        );
    }
    let seen: serde_json::Value = serde_json::from_str(stdout(&outs[0]).trim()).unwrap();
    let anthropic: serde_json::Value = serde_json::from_str(stdout(&outs[1]).trim()).unwrap();
    let npm: serde_json::Value = serde_json::from_str(stdout(&outs[2]).trim()).unwrap();
    let rows = queue.list(None).await.unwrap();
    let of = |provider: &str| rows.iter().filter(|e| e.provider == provider).count();
    // The plain call, the alias's, the keyed pair (one row); the refused calls queued none.
    assert_eq!(of("stub"), 3, "{rows:#?}");
    assert_eq!(of("nope"), 0);
    assert_eq!(
        (of("held"), of("broken")),
        (0, 0),
        "refused at once, queued nothing"
    );
    // The SDK retried the 504s, and every retry found the first attempt's execution.
    assert!(seen["slow_retries"].as_i64().unwrap() >= 1, "{seen}");
    assert_eq!(of("slow"), 1, "one row for the retried call: {rows:#?}");
    let slow = rows.iter().find(|e| e.provider == "slow").unwrap();
    assert_eq!((slow.status, slow.attempts), (Status::Completed, 1));
    assert_eq!(Some(slow.id), seen["slow"].as_i64());
    // The client that timed out and retried on its own: one row too.
    assert_eq!(
        of("patient"),
        1,
        "one row for the timed-out call: {rows:#?}"
    );
    let alias = rows
        .iter()
        .find(|e| Some(e.id) == seen["alias"].as_i64())
        .unwrap();
    assert_eq!(alias.priority, 5);
    assert_eq!(alias.tenant.as_deref(), Some("acme"));
    assert_eq!(alias.input["model"], "stub-model");
    assert_eq!(alias.input["max_tokens"], 7);
    assert_eq!(alias.input["messages"][0]["role"], "system");
    // Through the npm package: the plain call, and one row for the retried slow call.
    assert_eq!((of("nstub"), of("nslow")), (1, 1), "{rows:#?}");
    assert!(rows.iter().any(|e| Some(e.id) == npm["plain"].as_i64()));
    assert!(
        rows.iter()
            .any(|e| Some(e.id) == npm["slow"].as_i64() && e.attempts == 1)
    );
    // The same through the Anthropic SDK: the plain call and the alias's; the refused ones
    // (an unknown model, top_k, tools to a text-only provider, a wrong key) queued none.
    assert_eq!(of("astub"), 2, "{rows:#?}");
    assert!(
        anthropic["slow_retries"].as_i64().unwrap() >= 1,
        "{anthropic}"
    );
    assert_eq!(of("aslow"), 1, "one row for the retried call: {rows:#?}");
    let alias = rows
        .iter()
        .find(|e| Some(e.id) == anthropic["alias"].as_i64())
        .unwrap();
    assert_eq!(alias.tenant.as_deref(), Some("team:b"));
    assert_eq!(
        (
            alias.priority,
            &alias.input["system"],
            &alias.input["model"]
        ),
        (
            3,
            &serde_json::json!("be brief"),
            &serde_json::json!("stub-model")
        )
    );
}

/// The `openai` npm package, installed once per run (`npm ci`, the lock in
/// `front_door/node`) into `target/front-door-node` beside a copy of the test script.
fn node_sdk_dir() -> std::path::PathBuf {
    let root = repo_root();
    let src = root.join("tests/all/front_door/node");
    let out = root.join("target/front-door-node");
    std::fs::create_dir_all(&out).expect("creating target/front-door-node");
    let lock = std::fs::File::create(out.join(".lock")).expect("creating its .lock");
    lock.lock().expect("locking target/front-door-node/.lock");
    for file in ["package.json", "package-lock.json", "openai_sdk.mjs"] {
        std::fs::copy(src.join(file), out.join(file)).expect("copying the npm test");
    }
    let installed = std::fs::read_to_string(out.join("node_modules/openai/package.json"))
        .is_ok_and(|p| p.contains("\"version\": \"6.49.0\""));
    if !installed {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&out)
            .status()
            .expect("running npm ci");
        assert!(status.success(), "npm ci failed in {}", out.display());
    }
    out
}

/// The API's load test through the OpenAI-compatible endpoint: 200 clients of the real
/// `openai` SDK (async, `front_door/openai_load.py`) make 20,000 calls to a provider that
/// answers in 20 ms. None is lost or doubled: 20,000 rows, each completed on its first
/// attempt, each answered to its own caller. Prints the rate and what lanes added to the
/// provider's 20 ms, from the rows' own times (created to finished).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sdk_clients_make_twenty_thousand_calls_through_the_openai_endpoint() {
    const CALLS: usize = 20_000;
    const LATENCY_MS: i64 = 20;
    let python = crate::clients::clients_venv().join("bin/python");
    let mut env = TestEnv::new();
    env.stub("load", Some(64), &[("latency_ms", "20")]);
    let token_file = env.dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    env.config.api.token_file = Some(token_file);
    let mut serve = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;
    let script = repo_root().join("tests/all/front_door/openai_load.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("LANES_TEST_URL", format!("http://{addr}"))
            .env("LANES_TEST_TOKEN", TOKEN)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("running the load script")
    })
    .await
    .unwrap();
    terminate(&mut serve);
    assert!(
        out.status.success(),
        "the load script failed:\n{}{}\nserve.log:\n{}",
        stdout(&out),
        stderr(&out),
        env.serve_log()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let mut ids: Vec<i64> = seen["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        CALLS,
        "each call answered with its own execution"
    );
    let rows = env.queue().await.list(Some("load")).await.unwrap();
    assert_eq!(rows.len(), CALLS, "one row per call");
    assert!(
        rows.iter()
            .all(|e| e.status == Status::Completed && e.attempts == 1),
        "every call completed on its first attempt"
    );
    let mut added: Vec<i64> = rows
        .iter()
        .filter_map(|e| e.finished_at.map(|f| f - e.created_at - LATENCY_MS))
        .collect();
    added.sort_unstable();
    let at = |p: usize| added[(added.len() - 1) * p / 100];
    println!(
        "openai SDK load: {CALLS} calls from 200 clients at {:.0}/s; lanes added to the \
         provider's {LATENCY_MS} ms (created to finished): p50 {} ms, p99 {} ms",
        seen["rate"].as_f64().unwrap_or(0.0),
        at(50),
        at(99)
    );
}

/// With `[front_door] at_max_wait = "accepted"`, a call held `max_wait_secs` is answered 202
/// with its execution's id and where to poll it, and runs on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_past_max_wait_can_be_accepted_instead() {
    let mut env = TestEnv::new();
    env.stub("slow", Some(4), &[("latency_ms", "2000")]);
    env.config.front_door.max_wait_secs = 1;
    env.config.front_door.at_max_wait = lanes::config::AtMaxWait::Accepted;
    let mut serve = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;
    let body = r#"{"model": "slow", "messages": [{"role": "user", "content": "hi"}]}"#;
    let answer = post_plainly(&addr.to_string(), "/openai/v1/chat/completions", body).await;
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(lower.contains("x-lanes-execution-id: 1\r\n"), "{answer}");
    assert!(lower.contains("location: /v1/executions/1\r\n"), "{answer}");
    assert!(answer.contains(r#""poll":"/v1/executions/1""#), "{answer}");
    let rows = wait_terminal(
        env.queue().await.as_ref(),
        Some("slow"),
        std::time::Duration::from_secs(30),
    )
    .await;
    terminate(&mut serve);
    assert_eq!(
        rows.iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![Status::Completed],
        "it ran on to its end"
    );
}

/// POSTs the JSON `body` to `path` of the server at `addr` over plain HTTP/1.1, and returns
/// the whole answer, head and body: for the doors the OpenAPI document does not describe,
/// which `crate::api::Api` checks each answer against.
pub async fn post_plainly(addr: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}
