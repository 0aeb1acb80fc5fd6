//! The TypeScript client (`clients/typescript`): its node tests (`node --test`) run against a
//! real `lanes serve` with a bearer token and the stub component as provider `stub`, and
//! every one must pass. `scripts/test` builds the client once per run
//! (`scripts/build-ts-client`: `npm ci`, then `tsc`) and sets `LANES_TEST_TS_CLIENT`; without
//! it, the test runs the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

/// The client's folder, built.
fn client_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("clients/typescript");
        if std::env::var_os("LANES_TEST_TS_CLIENT").is_some() {
            return dir;
        }
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/build-ts-client"))
            .status()
            .expect("running scripts/build-ts-client");
        assert!(status.success(), "scripts/build-ts-client failed");
        dir
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_passes_its_node_tests_against_a_real_serve() {
    let dir = client_dir();
    let mut env = TestEnv::new();
    env.stub("stub", Some(8), &[]);
    let token_file = env.dir.path().join("api.token");
    std::fs::write(&token_file, "ts-client-token\n").unwrap();
    env.config.api.token_file = Some(token_file);
    let mut child = env.spawn_serve();
    let addr = api_addr(&env, "serve").await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=tap", "test/"])
            .current_dir(dir)
            .env("LANES_TEST_URL", format!("http://{addr}"))
            .env("LANES_TEST_TOKEN", "ts-client-token")
            .output()
            .expect("running node --test")
    })
    .await
    .unwrap();
    assert!(terminate(&mut child).success());
    let report = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\nserve.log:\n{}",
        env.serve_log()
    );
    // Every test ran: none skipped for want of the server's address or token.
    assert!(
        report.contains("\n# fail 0") && report.contains("\n# skipped 0"),
        "{report}"
    );
    let summary: Vec<&str> = report.lines().filter(|l| l.starts_with("# ")).collect();
    eprintln!("{}", summary.join("\n"));
}
