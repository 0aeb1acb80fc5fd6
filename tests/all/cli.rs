//! The `lanes` binary: environment overrides, JSON logs, and exit codes.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_env_overrides_and_wait_exit_codes() {
    let mut env = TestEnv::new();
    env.stub("cli", Some(2), &[]);
    // One execution fails unauthorized on purpose; the breaker would stop the lane.
    env.config.policy.breaker_failures = Some(0);
    let config = env.write_config();
    // LANES_* overrides the file: the limit of `cli` becomes 3.
    let log_path = env.dir.path().join("json.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "serve",
        ])
        .env("LANES_PROVIDERS__CLI__LIMIT", "3")
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();

    let ok = env.lanes(&[
        "submit",
        "--provider",
        "cli",
        "--input",
        r#"{"prompt": "a"}"#,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok_id = stdout(&ok).trim().to_string();
    let bad = env.lanes(&[
        "submit",
        "--provider",
        "cli",
        "--max-attempts",
        "1",
        "--input",
        r#"{"prompt": "b", "extra": {"error": "unauthorized"}}"#,
    ]);
    let bad_id = stdout(&bad).trim().to_string();

    // Input from a file.
    let file = env.dir.path().join("input.json");
    std::fs::write(
        &file,
        r#"{"messages": [{"role": "user", "content": "from a file"}]}"#,
    )
    .unwrap();
    let from_file = env.lanes(&[
        "submit",
        "--provider",
        "cli",
        "--input",
        &format!("@{}", file.display()),
        "--json",
    ]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let submitted: serde_json::Value = serde_json::from_str(&stdout(&from_file)).unwrap();
    let out = env.lanes(&[
        "wait",
        &submitted["id"].to_string(),
        "--timeout",
        "20",
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(e["output"]["text"], "stub reply to: from a file");
    let missing = env.lanes(&[
        "submit",
        "--provider",
        "cli",
        "--input",
        "@/no/such/file.json",
    ]);
    assert!(
        stderr(&missing).contains("reading input file /no/such/file.json"),
        "{}",
        stderr(&missing)
    );

    let out = env.lanes(&["wait", &ok_id, "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("stub reply to: a"));
    let out = env.lanes(&["wait", &bad_id, "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    // A pending execution of a provider without a component: wait times out with exit 2.
    let queue = env.queue().await;
    let ghost = queue
        .submit(&job("ghost", serde_json::json!({})))
        .await
        .unwrap();
    let out = env.lanes(&["wait", &ghost.to_string(), "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(2));

    // JSON logs: one object a line, with the lane's decision and the overridden limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if text.contains("Processing") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Processing ")
                && m.contains(" pending executions for provider cli (")
                && m.ends_with("limit: 3)"))),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_each_providers_bar() {
    use std::io::{BufRead, BufReader};
    let mut env = TestEnv::new();
    env.stub("w", Some(2), &[]);
    let (daemon, _queue) = env.start().await;
    daemon.submit_many(&sleepers("w", 12, 300)).await.unwrap();
    let config = env.write_config();
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .arg("--config")
        .arg(&config)
        .args(["status", "--watch", "--interval-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = tokio::task::spawn_blocking({
        let stdout = watch.stdout.take().unwrap();
        move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("w "))
                .take(8)
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    // Not a terminal: a plain line per tick, the bar full while both slots run.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[####################]    2/2")),
        "{lines:#?}"
    );
    let pendings: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split("pending").nth(1)?.split_whitespace().next())
        .collect();
    assert!(
        pendings.len() >= 2,
        "the pending count never moved: {lines:#?}"
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn cancel_from_the_cli() {
    let env = TestEnv::new();
    let out = env.lanes(&[
        "submit",
        "--provider",
        "nobody-yet",
        "--allow-unknown",
        "--input",
        r#"{"prompt": "x"}"#,
    ]);
    let id = stdout(&out).trim().to_string();
    let out = env.lanes(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cancelled"));
    let again = env.lanes(&["cancel", &id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is cancelled"),
        "{}",
        stderr(&again)
    );
    let missing = env.lanes(&["cancel", "999999"]);
    assert!(stderr(&missing).contains("no execution with id 999999"));
    let get = env.lanes(&["get", &id, "--json"]);
    let e: serde_json::Value = serde_json::from_str(&stdout(&get)).unwrap();
    assert_eq!(e["status"], "cancelled");
}

/// The "Processing" line samples one claim: the rows it took and the running count before
/// it, under the lane's limit, so that pending + running never exceed the limit on a line.
/// Before, the line summed a second's claims and showed the count after them:
/// `Processing 3 pending executions for provider b (3 currently running, limit: 3)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_processing_line_keeps_pending_and_running_within_the_limit() {
    let mut env = TestEnv::new();
    env.stub("p", Some(3), &[]);
    let mut serve = env.spawn_serve();
    wait_for_log(&env, "serve", "lanes serving", Duration::from_secs(30)).await;
    let queue = env.any_queue().await;
    queue.submit_many(&sleepers("p", 90, 60)).await.unwrap();
    wait_terminal(queue.as_ref(), Some("p"), Duration::from_secs(60)).await;
    let _ = serve.kill();
    let _ = serve.wait();
    let log = env.serve_log();
    let lines: Vec<(u32, u32, u32)> = log
        .lines()
        .filter_map(|line| {
            let rest = line.split("Processing ").nth(1)?;
            let (pending, rest) = rest.split_once(" pending executions for provider p (")?;
            let (running, rest) = rest.split_once(" currently running, limit: ")?;
            let (limit, _) = rest.split_once(')')?;
            Some((
                pending.parse().ok()?,
                running.parse().ok()?,
                limit.parse().ok()?,
            ))
        })
        .collect();
    assert!(
        lines.len() >= 2,
        "a line a second for ~1.8 s of work:\n{log}"
    );
    for (pending, running, limit) in lines {
        assert_eq!(limit, 3, "{log}");
        assert!(
            pending + running <= limit,
            "{pending} + {running} > {limit}:\n{log}"
        );
    }
}

/// Writes `lines` as a JSON Lines file named `name` in the env's folder.
fn jsonl_file(env: &TestEnv, name: &str, lines: &[serde_json::Value]) -> String {
    let path = env.dir.path().join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// An OpenAI Batch input line asking `prompt` of the chat completions endpoint.
fn openai_line(custom_id: &str, prompt: &str) -> serde_json::Value {
    serde_json::json!({
        "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-test", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": prompt}
        ], "max_completion_tokens": 50, "temperature": 0.2, "stop": ["END"]}
    })
}

/// `submit --file`: a file with bad lines queues nothing and names each bad line;
/// `--skip-bad` queues the rest. An OpenAI Batch file queues once per batch name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_load_refuses_bad_files_and_queues_each_custom_id_once() {
    let mut env = TestEnv::new();
    env.stub("j", Some(2), &[]);
    let queue = env.queue().await;
    use serde_json::json;
    let mixed = jsonl_file(
        &env,
        "mixed.jsonl",
        &[
            json!({"input": {"prompt": "one"}}),
            json!({"input": {"prompt": "two", "temprature": 1}}),
            json!({"input": {"prompt": "three"}, "priority": 5, "provider": "j"}),
            openai_line("c1", "four"),
            json!({"custom_id": "c2", "body": {"messages": [{"role": "user", "content": "x"}], "tools": []}}),
        ],
    );
    // The blank line is passed over but counted, and the last line is not JSON.
    std::fs::write(
        &mixed,
        std::fs::read_to_string(&mixed).unwrap() + "\n{not json\n",
    )
    .unwrap();
    let out = env.lanes(&["submit", "--file", &mixed, "--provider", "j"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let bad: Vec<&str> = err.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(bad.len(), 3, "{err}");
    assert!(
        bad[0].starts_with("line 2: ") && bad[0].contains("temprature"),
        "{err}"
    );
    assert!(
        bad[1].starts_with("line 5: ") && bad[1].contains("body.tools"),
        "{err}"
    );
    assert!(bad[2].starts_with("line 7: not JSON"), "{err}");
    assert!(err.contains("nothing was queued"), "{err}");
    assert!(queue.list(None).await.unwrap().is_empty());

    let out = env.lanes(&["submit", "--file", &mixed, "--provider", "j", "--skip-bad"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .lines()
            .filter(|l| l.starts_with("line "))
            .count(),
        3,
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("queued 3 execution(s)"),
        "{}",
        stdout(&out)
    );
    let rows = queue.list(Some("j")).await.unwrap();
    let prompts: Vec<(&str, i32)> = rows
        .iter()
        .map(|e| {
            (
                e.input["messages"][0]["content"].as_str().unwrap_or(""),
                e.priority,
            )
        })
        .collect();
    assert_eq!(prompts, [("one", 0), ("three", 5), ("be brief", 0)]);
    assert_eq!(rows[2].input["messages"][1]["content"], "four");
    assert_eq!(rows[2].input["model"], "gpt-test");
    assert_eq!(rows[2].input["max_tokens"], 50);
    assert_eq!(rows[2].input["stop"], json!(["END"]));

    // An OpenAI Batch file: queued once, again under another name.
    let batch = jsonl_file(
        &env,
        "batch.jsonl",
        &[openai_line("a", "alpha"), openai_line("b", "beta")],
    );
    let load = |extra: &[&str]| {
        let mut args = vec!["submit", "--file", &batch, "--provider", "j", "--json"];
        args.extend_from_slice(extra);
        let out = env.lanes(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        (report["queued"].clone(), report["already_queued"].clone())
    };
    assert_eq!(load(&[]), (json!(2), json!(0)));
    assert_eq!(load(&[]), (json!(0), json!(2)));
    assert_eq!(load(&["--name", "other"]), (json!(2), json!(0)));
    assert_eq!(queue.list(Some("j")).await.unwrap().len(), 7);
    // Without a provider, an OpenAI line names none.
    let out = env.lanes(&["submit", "--file", &batch]);
    assert!(
        stderr(&out).contains("line 1: no provider"),
        "{}",
        stderr(&out)
    );
}

/// `export`: completed rows in lanes' shape, and every ended row in OpenAI Batch's output
/// shape, with the `custom_id`s of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_export_writes_results_in_both_shapes() {
    let mut env = TestEnv::new();
    env.stub("j", Some(4), &[]);
    // One execution fails unauthorized on purpose; the breaker would stop the lane.
    env.config.policy.breaker_failures = Some(0);
    let (daemon, queue) = env.start().await;
    let file = jsonl_file(
        &env,
        "results.jsonl",
        &[
            openai_line("a", "alpha"),
            openai_line("b", "beta gamma"),
            serde_json::json!({"custom_id": "bad", "max_attempts": 1,
                "input": {"prompt": "no", "extra": {"error": "unauthorized"}}}),
        ],
    );
    let out = env.lanes(&["submit", "--file", &file, "--provider", "j"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = wait_terminal(queue.as_ref(), Some("j"), Duration::from_secs(20)).await;
    assert_eq!(count(&rows, lanes::Status::Completed), 2);
    let export = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["export"];
        all.extend_from_slice(args);
        let out = env.lanes(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };

    let lines = export(&["--status", "completed", "--since", "1h"]);
    assert_eq!(lines.len(), 2);
    for (line, (custom_id, prompt)) in lines.iter().zip([("b", "beta gamma"), ("a", "alpha")]) {
        let row = rows.iter().find(|e| e.id == line["id"]).unwrap();
        assert_eq!(line["custom_id"], custom_id);
        assert_eq!(line["batch"], "results.jsonl");
        assert_eq!(line["provider"], "j");
        assert_eq!(line["status"], "completed");
        assert_eq!(line["input"], row.input);
        assert_eq!(line["output"]["text"], format!("stub reply to: {prompt}"));
        assert_eq!(line["output"]["model"], "gpt-test");
        assert_eq!(line["error"], serde_json::Value::Null);
        assert_eq!(line["finished_at"], row.finished_at.unwrap());
    }
    assert!(export(&["--since", "2999-01-01T00:00:00Z"]).is_empty());

    let lines = export(&["--format", "openai"]);
    assert_eq!(lines.len(), 3);
    let by_id = |id: &str| lines.iter().find(|l| l["custom_id"] == id).unwrap();
    for (custom_id, prompt) in [("a", "alpha"), ("b", "beta gamma")] {
        let line = by_id(custom_id);
        assert_eq!(line["error"], serde_json::Value::Null);
        let response = &line["response"];
        assert_eq!(response["status_code"], 200);
        assert!(response["request_id"].is_string());
        let body = &response["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-test");
        let choice = &body["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(
            choice["message"]["content"],
            format!("stub reply to: {prompt}")
        );
        assert_eq!(choice["finish_reason"], "stop");
        let usage = &body["usage"];
        let words = 2 + prompt.split_whitespace().count();
        assert_eq!(usage["prompt_tokens"], words);
        assert_eq!(usage["completion_tokens"], words + 1);
        assert_eq!(usage["total_tokens"], 2 * words + 1);
    }
    let failed = by_id("bad");
    assert_eq!(failed["response"], serde_json::Value::Null);
    assert_eq!(failed["error"]["code"], "unauthorized");
    assert!(failed["error"]["message"].is_string());
    daemon.shutdown(Duration::from_secs(1)).await;
}
