//! Bad input gets a clear error that names the problem, and the daemon keeps serving.

use std::time::Duration;

use lanes::model::Status;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_bad_input_and_the_daemon_keeps_serving() {
    let mut env = TestEnv::new();
    env.stub("ok", Some(2), &[]);
    let (daemon, queue) = env.start().await;

    let out = env.lanes(&["submit", "--provider", "ok", "--input", "{\"prompt\": "]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("input is not valid JSON"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).matches("EOF while parsing").count(),
        1,
        "each cause said once: {}",
        stderr(&out)
    );

    let out = env.lanes(&[
        "submit",
        "--provider",
        "ok",
        "--input",
        r#"{"messages": "hi"}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match the chat input format"),
        "{}",
        stderr(&out)
    );

    let out = env.lanes(&[
        "submit",
        "--provider",
        "nope",
        "--input",
        r#"{"prompt": "hi"}"#,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown provider `nope`") && err.contains("ok"),
        "{err}"
    );

    let out = env.lanes(&["limits", "set", "ok", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("'0'"), "{}", stderr(&out));

    // Numbers past what the database stores are refused up front, the same on every
    // backend, with the range named: never a wrapped value or a constraint error.
    for args in [
        &["limits", "set", "ok", "2147483648"][..],
        &[
            "submit",
            "--provider",
            "ok",
            "--max-attempts",
            "2147483648",
            "--input",
            r#"{"prompt": "hi"}"#,
        ][..],
    ] {
        let out = env.lanes(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("2147483648") && err.contains("1..=2147483647"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("CHECK"), "{err}");
    }
    assert!(queue.limits().await.unwrap().is_empty(), "no limit stored");

    let out = env.lanes(&["get", "999"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no execution with id 999"),
        "{}",
        stderr(&out)
    );

    // An invalid config: the command refuses it and names the field.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[providers.claude]\nlimit = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["--config", bad.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("providers.claude.limit"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&bad, "poll_interval_ms = \"soon\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["--config", bad.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("poll_interval_ms"),
        "{}",
        stderr(&out)
    );

    // A second `serve` on the same SQLite file is refused while this one runs.
    let out = env.lanes(&["serve"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another `lanes serve`"),
        "{}",
        stderr(&out)
    );

    // A row that another writer stored with broken input fails alone.
    sqlx::query(
        "INSERT INTO executions (provider, input, max_attempts, not_before, created_at)
         VALUES ('ok', '{broken', 3, 0, 0)",
    )
    .execute(queue.pool())
    .await
    .unwrap();

    // Through all of that, good work still runs.
    let out = env.lanes(&[
        "submit",
        "--provider",
        "ok",
        "--input",
        r#"{"prompt": "still here"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = env.lanes(&["wait", &id, "--timeout", "20", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(e["output"]["text"], "stub reply to: still here");

    let rows = wait_terminal(queue.as_ref(), Some("ok"), Duration::from_secs(20)).await;
    let broken = rows
        .iter()
        .find(|e| e.status == Status::Failed)
        .expect("broken row failed");
    assert_eq!(broken.error_kind.as_deref(), Some("bad_input"));
    assert!(
        broken
            .error
            .as_deref()
            .unwrap()
            .contains("not match the chat input format")
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_rejected_with_reasons_and_the_rest_serve() {
    let mut env = TestEnv::new();
    let plugins = env.plugins().to_path_buf();
    std::fs::write(
        plugins.join("corrupt.wasm"),
        b"\0asm\x0d\0\x01\0 this is not a component",
    )
    .unwrap();
    std::fs::copy(
        fixture("not-a-provider.wasm"),
        plugins.join("other-world.wasm"),
    )
    .unwrap();
    std::fs::copy(component("stub.wasm"), plugins.join("zz-stub-copy.wasm")).unwrap();
    std::fs::copy(fixture("wit-0-3-0.wasm"), plugins.join("future.wasm")).unwrap();
    env.stub("zero", None, &[("default_limit", "0")]);
    env.stub("trapper", None, &[("info_trap", "1")]);
    env.stub("works", Some(2), &[]);

    let out = env.lanes(&["plugins", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let reason = |file: &str| -> String {
        let f = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == file)
            .unwrap_or_else(|| panic!("{file} reported"));
        assert_eq!(f["status"], "rejected", "{file}");
        f["reason"].as_str().unwrap().to_string()
    };
    assert!(reason("corrupt.wasm").contains("not a valid WebAssembly component"));
    assert!(reason("other-world.wasm").contains("not a lanes provider component"));
    assert!(
        reason("zz-stub-copy.wasm")
            .contains("provider name `stub` is already provided by stub.wasm")
    );
    assert!(reason("future.wasm").contains("incompatible WIT version"));
    let rejected = |name: &str| -> String {
        report["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["provider"] == name)
            .unwrap_or_else(|| panic!("{name} rejected"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(rejected("zero").contains("default limit of 0"));
    let trapper = rejected("trapper");
    assert!(
        trapper.contains("info() failed") && trapper.contains("stub: info() asked to trap"),
        "{trapper}"
    );

    let text = stdout(&env.lanes(&["plugins", "list"]));
    assert!(
        text.contains("corrupt.wasm") && text.contains("rejected"),
        "{text}"
    );

    let (daemon, queue) = env.start().await;
    assert!(daemon.lanes().contains_key("works"));
    assert!(!daemon.lanes().contains_key("zero"));
    assert!(!daemon.lanes().contains_key("trapper"));
    assert!(!daemon.lanes().contains_key("trapper"));
    daemon.submit_many(&sleepers("works", 4, 10)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("works"), Duration::from_secs(20)).await;
    assert_eq!(count(&rows, Status::Completed), 4);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_is_named_at_once() {
    let mut env = TestEnv::new();
    // Nothing listens on port 1.
    env.config.database_url = "postgres://postgres@127.0.0.1:1/test".into();
    let started = std::time::Instant::now();
    let out = env.lanes(&["status"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_constraint_error_is_said_once() {
    let Some((env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    let queue = env.any_queue().await;
    let mut bad = job("x", serde_json::json!({}));
    // Past every front-end check: the table's own constraint refuses it.
    bad.max_attempts = 0;
    let err = queue.submit(&bad).await.unwrap_err();
    let text = lanes::errors::say_once(anyhow::Error::from(err).chain());
    assert_eq!(
        text.matches("violates check constraint").count(),
        1,
        "{text}"
    );
    assert!(
        text.starts_with("database: submitting an execution"),
        "{text}"
    );
}
