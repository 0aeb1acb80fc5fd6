//! The clients against a real `lanes serve`: the Python client's pytest suite
//! (`clients/python/tests`, sync and async), run once against one daemon, and the fan-out
//! example (`examples/fanout`) with its own config. The client is the wheel
//! `scripts/build-clients` builds and installs in a venv with pytest; `scripts/test` runs
//! that once per run and sets `LANES_TEST_CLIENTS`, and without it the first test runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

/// The token the daemon under test requires, so the suite checks auth too.
const TOKEN: &str = "client-tests-token";

/// The venv holding the Python client's wheel and pytest.
pub fn clients_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("LANES_TEST_CLIENTS") {
        return PathBuf::from(dir).join("venv");
    }
    let root = repo_root();
    let out = root.join("target/clients");
    std::fs::create_dir_all(&out).expect("creating target/clients");
    // nextest runs each test in a process of its own: the lock makes this module's tests
    // take turns at the build, and the run's id lets the second use what the first built.
    let lock = std::fs::File::create(out.join(".lock")).expect("creating target/clients/.lock");
    lock.lock().expect("locking target/clients/.lock");
    let stamp = out.join(".built-for-run");
    let run = std::env::var("NEXTEST_RUN_ID").ok();
    if run.is_some() && std::fs::read_to_string(&stamp).ok() == run {
        return out.join("venv");
    }
    let status = Command::new("bash")
        .arg(root.join("scripts/build-clients"))
        .arg(&out)
        .status()
        .expect("running scripts/build-clients");
    assert!(status.success(), "scripts/build-clients failed");
    if let Some(run) = run {
        std::fs::write(&stamp, run).expect("writing target/clients/.built-for-run");
    }
    out.join("venv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_passes_its_suite_against_a_real_daemon() {
    let python = clients_venv().join("bin/python");
    assert!(python.is_file(), "{} was not built", python.display());

    // What clients/python/tests/conftest.py says the suite expects of its daemon.
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    env.config.api.max_body_bytes = 65536;
    env.config.tenants.insert(
        "billing".into(),
        lanes::config::TenantConfig {
            daily_usd: Some(1000.0),
            ..Default::default()
        },
    );
    let token_file = env.dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    env.config.api.token_file = Some(token_file);
    let mut serve = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;

    let tests = repo_root().join("clients/python");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(tests)
            .env("LANES_TEST_URL", format!("http://{addr}"))
            .env("LANES_TEST_TOKEN", TOKEN)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("LANES_BIN")
            .env_remove("LANES_URL")
            .env_remove("LANES_API_TOKEN")
            .output()
            .expect("running pytest")
    })
    .await
    .unwrap();
    let exit = terminate(&mut serve);
    assert!(
        out.status.success(),
        "the Python client's tests failed:\n{}{}\nserve.log:\n{}",
        stdout(&out),
        stderr(&out),
        env.serve_log()
    );
    assert!(
        exit.success(),
        "lanes serve exited with {exit}:\n{}",
        env.serve_log()
    );
    // The summary line, such as `37 passed in 9.12s`.
    let summary = stdout(&out);
    eprintln!("{}", summary.trim().lines().next_back().unwrap_or_default());
    assert!(
        summary.contains(" passed") && !summary.contains(" skipped"),
        "every test of the suite must run:\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_example_summarizes_its_1000_documents() {
    let python = clients_venv().join("bin/python");
    assert!(python.is_file(), "{} was not built", python.display());
    let example = repo_root().join("examples/fanout");

    // The example's own config, as its README runs it: the database and the plugins folder
    // are relative to the current folder, here the env's (which holds plugins/stub.wasm).
    let env = TestEnv::new();
    let log = std::fs::File::create(env.dir.path().join("fanout.log")).unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_lanes"))
        .arg("--config")
        .arg(example.join("lanes.toml"))
        .arg("serve")
        .current_dir(env.dir.path())
        .env("LANES_API__ADDR", "127.0.0.1:0")
        .env("LANES_CACHE__DIR", repo_root().join("target/test-cache"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning lanes serve");
    let addr = api_addr(&env, "fanout").await;

    let out_file = env.dir.path().join("summaries.jsonl");
    let (dir, out_path) = (env.dir.path().to_path_buf(), out_file.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(example.join("fanout.py"))
            .arg("--url")
            .arg(format!("http://{addr}"))
            .arg("--out")
            .arg(out_path)
            .current_dir(dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("LANES_API_TOKEN")
            .output()
            .expect("running fanout.py")
    })
    .await
    .unwrap();
    let exit = terminate(&mut serve);
    let printed = stdout(&out);
    assert!(
        out.status.success(),
        "fanout.py failed:\n{printed}{}\nfanout.log:\n{}",
        stderr(&out),
        env.log("fanout")
    );
    assert!(exit.success(), "lanes serve exited with {exit}");
    eprintln!("{printed}");
    assert!(printed.contains("1000 documents in"), "{printed}");
    assert!(printed.contains(": 1000 completed"), "{printed}");
    // Every member of the route took a share.
    for member in ["fast-small", "steady", "flaky"] {
        assert!(
            printed.contains(&format!("{member} ")),
            "{member}: {printed}"
        );
    }
    let lines = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(lines.lines().count(), 1000);
    let open: Vec<&str> = lines
        .lines()
        .filter(|l| !l.contains(r#""status": "completed""#))
        .collect();
    assert!(open.is_empty(), "not completed: {open:?}");
}
