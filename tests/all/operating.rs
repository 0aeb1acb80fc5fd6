//! Running lanes as a host daemon: systemd readiness, `config check` and `config show`,
//! shell completions and man pages.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The next notification on `socket`, or panics after `timeout`.
fn next_message(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let mut env = TestEnv::new();
    env.stub("unit", Some(2), &[]);
    let socket_path = env.plugins().parent().unwrap().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = env.write_config();
    let log_path = env.plugins().parent().unwrap().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = next_message(&socket, Duration::from_secs(60));
    // Ready only once the lanes are open: the line that says so is already written.
    let log_then = std::fs::read_to_string(&log_path).unwrap();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving 2 provider(s)"), "{ready}");
    assert!(
        log_then.contains("lane open") && log_then.contains("lanes serving"),
        "READY=1 before the lanes were open:\n{log_then}"
    );
    println!("READY=1 after {:?}", started.elapsed());

    // `lanes reload` signals it through the lock file's pid: RELOADING=1, then READY=1. A
    // setting that cannot change while running is named, and keeps its value.
    env.config.lease_ms += 1;
    // So does a memory cap above the instance pool's slots, which were sized at start: it
    // was held to the slot without a word.
    let slot_mb = env.config.max_memory_mb().max(64);
    env.config.sandbox.memory_mb = slot_mb + 64;
    let out = env.lanes(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reloading = next_message(&socket, Duration::from_secs(20));
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let ready_again = next_message(&socket, Duration::from_secs(20));
    assert!(ready_again.contains("READY=1"), "{ready_again}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("config reloaded, except lease_ms"),
        "the fixed setting is named:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "sandbox.memory_mb above {slot_mb} (the instance pool's slots"
        )),
        "the memory cap past the pool's slots is named:\n{log}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = next_message(&socket, Duration::from_secs(20));
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(serve.wait().unwrap().success());
    // With no daemon, `lanes reload` says so (and signals no stale pid).
    let out = env.lanes(&["reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no running `lanes serve`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_reports_every_problem_with_its_key() {
    let env = TestEnv::new();
    let path = env.plugins().parent().unwrap().join("three.toml");
    std::fs::write(
        &path,
        "database_url = \"mysql://db\"\nfallback_limit = 0\n\n[providers.claude]\nlimit = 0\n",
    )
    .unwrap();
    let out = env.lanes(&["config", "check", "--config", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for key in ["database_url", "fallback_limit", "providers.claude.limit"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(err.contains("3 problem(s)"), "{err}");
    // A good config passes, and the database is not touched to say so.
    let out = env.lanes(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK"), "{}", stdout(&out));
    assert!(
        !env.config.sqlite_path().unwrap().exists(),
        "check opened the database"
    );
}

#[test]
fn config_check_reports_type_errors_beside_the_other_problems() {
    let env = TestEnv::new();
    let path = env.plugins().parent().unwrap().join("types.toml");
    // Two values of the wrong type, and one that types alone cannot refuse.
    std::fs::write(
        &path,
        "poll_interval_ms = \"soon\"\nfallback_limit = 0\n\n[providers.claude]\nlimit = \"many\"\n",
    )
    .unwrap();
    let out = env.lanes(&["config", "check", "--config", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for key in [
        "poll_interval_ms",
        "providers.claude.limit",
        "fallback_limit",
    ] {
        let prefix = format!("error: invalid config: {key}: ");
        assert_eq!(
            err.lines().filter(|l| l.starts_with(&prefix)).count(),
            1,
            "no one line for {key} in:\n{err}"
        );
    }
    assert!(err.contains("3 problem(s)"), "{err}");
    // `serve` refuses the file, with the same three problems on its one line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["--config", path.to_str().unwrap(), "serve"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: invalid config"))
        .unwrap_or_else(|| panic!("no refusal in:\n{err}"));
    for key in [
        "poll_interval_ms",
        "providers.claude.limit",
        "fallback_limit",
    ] {
        assert!(line.contains(key), "{key} missing from: {line}");
    }
}

#[test]
fn config_show_prints_the_effective_config_without_the_password() {
    let mut env = TestEnv::new();
    env.config.database_url = "postgres://lanes:s3cret@db.example:5432/q".into();
    let out = env.lanes(&["config", "show"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("postgres://lanes:***@db.example:5432/q"),
        "{text}"
    );
    // It is the config in effect: it parses back.
    lanes::Config::from_toml(&text.replace("lanes:***@", "lanes@")).unwrap();
}

#[test]
fn completions_and_man_pages_are_generated() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.lanes(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(
            script.contains("submit") && script.contains("limits"),
            "{shell}"
        );
    }
    let dir = env.plugins().parent().unwrap().join("man");
    let out = env.lanes(&["man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.join("lanes-serve.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(dir.join("lanes.1").exists() && dir.join("lanes-config.1").exists());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        println!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("contrib/systemd/lanes.service")).unwrap();
    // The unit runs /usr/local/bin/lanes; verify checks that the binary exists, so point it
    // at the one this test run built.
    let unit = unit.replace("/usr/local/bin/lanes", env!("CARGO_BIN_EXE_lanes"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanes.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_log(env: &TestEnv, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.serve_log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no `{text}` in the log:\n{}",
            env.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_values_base_urls_and_keys_under_load() {
    use crate::mock::{MockApi, Reply};
    use lanes::model::Status;
    let (old_api, new_api) = (MockApi::start().await, MockApi::start().await);
    for api in [&old_api, &new_api] {
        api.fallback(|_| {
            Reply::json(
                200,
                serde_json::json!({"id": "c", "object": "chat.completion", "created": 1,
                    "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            )
        });
    }
    let mut env = TestEnv::new();
    env.config.plugins_rescan_ms = 200;
    env.stub("rl", Some(2), &[("latency_ms", "300")]);
    env.add_component("openai.wasm");
    let key = env.plugins().parent().unwrap().join("openai.key");
    std::fs::write(&key, "key-one").unwrap();
    env.adapter("oa", "openai.wasm", &old_api.url(), "gpt-x")
        .api_key_file = Some(key.clone());
    let queue = env.queue().await;
    let mut serve = env.spawn_serve();
    wait_log(&env, "lanes serving").await;
    let run_oa = |queue: std::sync::Arc<lanes::SqliteQueue>| async move {
        let id = queue
            .submit(&job("oa", serde_json::json!({})))
            .await
            .unwrap();
        let rows = wait_terminal(queue.as_ref(), Some("oa"), Duration::from_secs(30)).await;
        let e = rows.into_iter().find(|e| e.id == id).unwrap();
        assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    };
    run_oa(queue.clone()).await;
    assert_eq!(
        old_api.requests()[0].header("authorization"),
        Some("Bearer key-one")
    );

    // Under load: 2 running on the old settings when the reload comes.
    // Jobs without a sleep of their own take the provider's latency_ms.
    let plain = |n| {
        (0..n)
            .map(|_| job("rl", serde_json::json!({})))
            .collect::<Vec<_>>()
    };
    let ids = queue.submit_many(&plain(8)).await.unwrap();
    wait_until(
        queue.as_ref(),
        Some("rl"),
        Duration::from_secs(30),
        "2 running",
        |rows| count(rows, Status::Running) == 2,
    )
    .await;
    env.config.providers.get_mut("rl").unwrap().limit = Some(4);
    env.config.providers.get_mut("rl").unwrap().config.insert(
        "latency_ms".into(),
        lanes::config::ConfigValue::String("0".into()),
    );
    env.config.providers.get_mut("oa").unwrap().base_url = Some(new_api.url());
    // A provider entry the reload adds: a new name for the stub.
    env.stub("added", Some(1), &[]);
    env.write_config();
    signal(&serve, "-HUP");
    wait_log(&env, "config reloaded").await;
    let rows = wait_terminal(queue.as_ref(), Some("rl"), Duration::from_secs(30)).await;
    assert_eq!(rows.len(), ids.len(), "nothing lost");
    assert!(rows.iter().all(|e| e.status == Status::Completed));
    let ran = |e: &lanes::Execution| e.finished_at.unwrap() - e.started_at.unwrap();
    let old = rows.iter().filter(|e| ran(e) >= 250).count();
    let new = rows.iter().filter(|e| ran(e) < 150).count();
    assert!(
        old >= 2,
        "the running ones finish on the old settings: {old}"
    );
    assert!(new >= 4, "new attempts use the new settings: {new}");
    let overlap = lanes::report::max_overlap(lanes::report::intervals(&rows));
    assert!((3..=4).contains(&overlap), "the new limit of 4: {overlap}");

    let added = queue
        .submit(&job("added", serde_json::json!({})))
        .await
        .unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("added"), Duration::from_secs(30)).await;
    assert!(
        rows.iter()
            .any(|e| e.id == added && e.status == Status::Completed)
    );

    // The new base URL, with the old key.
    run_oa(queue.clone()).await;
    let seen = new_api.requests();
    assert_eq!(seen.len(), 1, "the new base URL serves");
    assert_eq!(seen[0].header("authorization"), Some("Bearer key-one"));
    // A rotated key file is used by the next attempt, without a signal.
    std::fs::write(&key, "key-number-two").unwrap();
    wait_log(&env, "key file changed").await;
    run_oa(queue.clone()).await;
    assert_eq!(
        new_api.requests()[1].header("authorization"),
        Some("Bearer key-number-two")
    );

    // A config that fails validation changes nothing.
    env.config.providers.get_mut("rl").unwrap().limit = Some(0);
    env.write_config();
    signal(&serve, "-HUP");
    wait_log(&env, "config reload refused").await;
    let more = queue.submit_many(&plain(4)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("rl"), Duration::from_secs(30)).await;
    assert!(more.iter().all(|id| {
        rows.iter()
            .any(|e| e.id == *id && e.status == Status::Completed)
    }));
    let log = env.serve_log();
    let refused = log
        .lines()
        .find(|l| l.contains("config reload refused"))
        .unwrap();
    assert!(refused.contains("providers.rl.limit"), "{refused}");
    signal(&serve, "-TERM");
    assert!(serve.wait().unwrap().success(), "{}", env.serve_log());
}

/// `lanes serve` with `env`'s config as it is now; its exit status and stderr, or a panic
/// when it is still running after 30 s.
fn serve_to_exit(env: &TestEnv) -> (std::process::ExitStatus, String) {
    let config = env.write_config();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            terminate(&mut child);
            panic!("a second `lanes serve` on the same SQLite file started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_sqlite_file_is_told_that_another_serve_holds_it() {
    let mut env = TestEnv::new();
    env.stub("unit", Some(2), &[]);
    let mut first = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;
    let db = env.config.sqlite_path().unwrap().display().to_string();
    // Another port, so that the port cannot be the reason; then the first one's own port,
    // which the lock must be checked before.
    for api in ["127.0.0.1:0".to_string(), addr.to_string()] {
        env.config.api.addr = api.clone();
        let (status, err) = serve_to_exit(&env);
        assert!(!status.success(), "api.addr {api}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "api.addr {api}: not one line:\n{err}");
        let line = lines[0];
        for needle in [
            db.as_str(),
            "another `lanes serve`",
            &format!("pid {}", first.id()),
        ] {
            assert!(
                line.contains(needle),
                "api.addr {api}: no `{needle}` in: {line}"
            );
        }
    }
    // The first one keeps serving: its API answers and its lanes run new work.
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first serve exited"
    );
    let health = crate::api::Api::new(addr).get("/healthz").await;
    assert_eq!(health.body["status"], "ok");
    env.config.api.addr = "127.0.0.1:0".into();
    let out = env.lanes(&[
        "submit",
        "--provider",
        "unit",
        "--input",
        r#"{"prompt": "still here"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = env.lanes(&["wait", &id, "--timeout", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(terminate(&mut first).success());
}

/// `lanes serve` runs each call on its own connection: it raises its soft open-file limit to
/// the hard one at start, and says in the log when the limits need more files than even
/// that allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_open_file_limit_and_says_when_the_limits_need_more() {
    let mut env = TestEnv::new();
    env.stub("wide", Some(600), &[]);
    // A pool as wide as the limits: calls at once are the lanes' slots, not the pool's.
    env.config.engine.max_instances = 1_000;
    let config = env.write_config();
    let run = |soft: u32, hard: u32, name: &str| {
        let log_path = env.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let script = format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" --config \"$1\" serve --no-api"
        );
        let child = Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_lanes")])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        (child, log_path)
    };
    let wait_for = |path: &std::path::Path, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            if log.contains(text) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Soft 256 under a hard 4096: raised, and 600 calls fit.
    let (mut serve, path) = run(256, 4096, "raised");
    let log = wait_for(&path, "lanes serving");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        log.contains("open files: soft limit raised from 256 to 4096"),
        "{log}"
    );
    assert!(!log.contains("more than the soft limit"), "{log}");
    // A hard limit of 512: 600 calls at once cannot all connect, and the log says so.
    let (mut serve, path) = run(512, 512, "too-low");
    let log = wait_for(&path, "lanes serving");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        // `wide`'s 600 and the stub's own default of 4, and 64 for lanes itself.
        log.contains(
            "the lanes' limits add up to 604 calls at once, which may need 668 open files"
        ) && log.contains("more than the soft limit of 512 (hard 512)"),
        "{log}"
    );
}
