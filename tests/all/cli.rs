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
