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
    let kill = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = next_message(&socket, Duration::from_secs(20));
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(serve.wait().unwrap().success());
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
