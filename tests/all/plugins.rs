//! Components while the daemon runs: hot drop-in, replacement, removal, half-copied files,
//! validation, WIT versions, the compile cache and `lanes plugins check`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lanes::config::ProviderConfig;
use lanes::model::Status;
use lanes::plugin::PluginHost;
use lanes::plugin::cache::CacheOutcome;

use crate::support::*;

async fn wait_for_lane(
    daemon: &lanes::Daemon,
    name: &str,
    present: bool,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    while daemon.lanes().contains_key(name) != present {
        assert!(
            started.elapsed() < timeout,
            "lane {name} present={present} not reached in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_component_serves_within_two_seconds() {
    let mut env = TestEnv::new();
    env.config.plugins_rescan_ms = 60_000; // file events, not polling, must do it
    let (daemon, queue) = env.start().await;
    queue
        .submit(&job("wit-0-1-0", serde_json::json!({})))
        .await
        .unwrap();

    let tmp = env.dir.path().join("incoming.wasm");
    std::fs::copy(fixture("wit-0-1-0.wasm"), &tmp).unwrap();
    let dropped = Instant::now();
    std::fs::rename(&tmp, env.plugins().join("echo.wasm")).unwrap();
    wait_for_lane(&daemon, "wit-0-1-0", true, Duration::from_secs(2)).await;
    println!(
        "new component serving {:?} after it was dropped in",
        dropped.elapsed()
    );
    let rows = wait_terminal(queue.as_ref(), Some("wit-0-1-0"), Duration::from_secs(5)).await;
    assert_eq!(
        rows[0].output.as_ref().unwrap()["text"],
        "wit-0-1-0 echoes: hello"
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_serves_new_work_from_the_new_version_and_remove_stops_claiming() {
    let mut env = TestEnv::new();
    env.stub("swap", Some(2), &[]);
    let (daemon, queue) = env.start().await;
    let old = daemon
        .submit_many(&sleepers("swap", 2, 1500))
        .await
        .unwrap();
    wait_until(
        queue.as_ref(),
        Some("swap"),
        Duration::from_secs(10),
        "2 running",
        |rows| count(rows, Status::Running) == 2,
    )
    .await;

    // Replace stub.wasm (which serves `swap`) with another component, atomically.
    let tmp = env.dir.path().join("next.wasm");
    std::fs::copy(fixture("wit-0-1-0.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, env.plugins().join("stub.wasm")).unwrap();
    wait_for_lane(&daemon, "wit-0-1-0", true, Duration::from_secs(3)).await;
    let new = daemon
        .submit(&job("swap", serde_json::json!({})))
        .await
        .unwrap();
    wait_terminal(queue.as_ref(), Some("swap"), Duration::from_secs(10)).await;
    for id in old {
        let e = queue.get(id).await.unwrap().unwrap();
        assert_eq!(
            e.output.unwrap()["text"],
            "stub reply to: hello",
            "running work finishes on the old version"
        );
    }
    let e = queue.get(new).await.unwrap().unwrap();
    assert_eq!(
        e.output.unwrap()["text"],
        "wit-0-1-0 echoes: hello",
        "new work uses the new version"
    );

    // Remove it: the lane stops claiming and its work stays pending.
    std::fs::remove_file(env.plugins().join("stub.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while daemon
        .plugin_files()
        .await
        .iter()
        .any(|f| f.file == "stub.wasm")
    {
        assert!(Instant::now() < deadline, "removal not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = daemon
        .submit(&job("swap", serde_json::json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        queue.get(waiting).await.unwrap().unwrap().status,
        Status::Pending
    );
    let out = env.lanes(&["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let swap = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "swap")
        .unwrap();
    assert_eq!(swap["pending"], 1);
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_copied_is_never_loaded_half_written() {
    let env = TestEnv::new();
    let (daemon, queue) = env.start().await;
    let bytes = std::fs::read(fixture("wit-0-1-0.wasm")).unwrap();
    let target = env.plugins().join("slow-copy.wasm");
    let mut file = std::fs::File::create(&target).unwrap();
    // Copy in 20 chunks, 60 ms apart, checking the daemon's view of the file as we go.
    for chunk in bytes.chunks(bytes.len().div_ceil(20)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let files = daemon.plugin_files().await;
        assert!(
            !files.iter().any(|f| f.file == "slow-copy.wasm"),
            "a half-written file was loaded: {files:?}"
        );
    }
    drop(file);
    wait_for_lane(&daemon, "wit-0-1-0", true, Duration::from_secs(3)).await;
    let files = daemon.plugin_files().await;
    let report = files.iter().find(|f| f.file == "slow-copy.wasm").unwrap();
    assert_eq!(report.status, "loaded");
    queue.list(None).await.unwrap();
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_replacement_leaves_the_previous_version_serving() {
    let env = TestEnv::new();
    let (daemon, queue) = env.start().await;
    let tmp = env.dir.path().join("broken.wasm");
    std::fs::write(&tmp, b"definitely not wasm").unwrap();
    std::fs::rename(&tmp, env.plugins().join("stub.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let report = loop {
        let files = daemon.plugin_files().await;
        let stub = files.into_iter().find(|f| f.file == "stub.wasm").unwrap();
        if stub.status == "rejected" {
            break stub;
        }
        assert!(
            Instant::now() < deadline,
            "the broken replacement was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(report.serving_previous);
    assert!(
        report
            .reason
            .unwrap()
            .contains("not a valid WebAssembly component")
    );
    let id = daemon
        .submit(&job("stub", serde_json::json!({})))
        .await
        .unwrap();
    wait_terminal(queue.as_ref(), Some("stub"), Duration::from_secs(5)).await;
    let e = queue.get(id).await.unwrap().unwrap();
    assert_eq!(e.output.unwrap()["text"], "stub reply to: hello");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_hits_after_restart_and_rebuilds_damaged_entries() {
    let env = TestEnv::new();
    let mut config = env.config.clone();
    let cache_dir = env.dir.path().join("cache");
    config.cache.dir = Some(cache_dir.clone());
    let stub = component("stub.wasm");

    let host = PluginHost::new(&config).unwrap();
    assert_eq!(host.load(&stub).await.unwrap().cache, CacheOutcome::Miss);
    // A new engine (a restart) with the same settings reads the entry back.
    let host = PluginHost::new(&config).unwrap();
    assert_eq!(host.load(&stub).await.unwrap().cache, CacheOutcome::Hit);

    let artifact = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let loaded = host.load(&stub).await.unwrap();
    assert_eq!(
        loaded.cache,
        CacheOutcome::Rebuilt,
        "a corrupt entry is rebuilt"
    );
    assert_eq!(host.load(&stub).await.unwrap().cache, CacheOutcome::Hit);

    // An entry that wasmtime refuses (stale: written for another engine) is rebuilt too.
    let checksum = artifact.with_extension("sha256");
    let junk = b"\x7fELF not an artifact of this engine".to_vec();
    std::fs::write(&artifact, &junk).unwrap();
    std::fs::write(&checksum, lanes::plugin::cache::sha256_hex(&junk)).unwrap();
    assert_eq!(host.load(&stub).await.unwrap().cache, CacheOutcome::Rebuilt);
    assert_eq!(host.load(&stub).await.unwrap().cache, CacheOutcome::Hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_prunes_what_has_gone_unused() {
    let mut env = TestEnv::new();
    let cache_dir = env.dir.path().join("cache");
    env.config.cache.dir = Some(cache_dir.clone());
    env.config.cache.prune_after_days = 7;
    let (daemon, _queue) = env.start().await;
    daemon.shutdown(Duration::from_secs(1)).await;
    let in_use: Vec<PathBuf> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        in_use.len(),
        2,
        "the stub's artifact and checksum: {in_use:?}"
    );

    let month_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 86_400);
    let plant = |name: &str, old: bool| {
        let path = cache_dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        if old {
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(month_ago).unwrap();
        }
        path
    };
    let other = "ab".repeat(32);
    let gone = [
        plant(&format!("{other}-0123456789abcdef.cwasm"), true),
        plant(&format!("{other}-0123456789abcdef.sha256"), true),
        plant(&format!("{other}-0123456789abcdef.tmp4242"), true),
    ];
    let kept = [
        plant(
            &format!("{}-0123456789abcdef.cwasm", "cd".repeat(32)),
            false,
        ),
        plant("notes.txt", true),
        plant("not-an-entry.cwasm", true),
    ];
    // The stub's own entry is old too, but in use.
    for path in &in_use {
        let file = std::fs::File::options().append(true).open(path).unwrap();
        file.set_modified(month_ago).unwrap();
    }

    let (daemon, _queue) = env.start().await;
    daemon.shutdown(Duration::from_secs(1)).await;
    for path in &gone {
        assert!(!path.exists(), "{} should be pruned", path.display());
    }
    for path in kept.iter().chain(&in_use) {
        assert!(path.exists(), "{} should be kept", path.display());
    }
    let touched = std::fs::metadata(&in_use[0]).unwrap().modified().unwrap();
    assert!(
        touched > month_ago,
        "a cache hit refreshes the entry's time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_check_validates_for_authors() {
    let env = TestEnv::new();
    let stub = component("stub.wasm");
    let stub = stub.to_str().unwrap();
    let out = env.lanes(&["plugins", "check", stub]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "loadable: provider `stub` 0.1.0 (wit 0.2, default limit 4, takes tools, \
             json_schema, images, image_urls, reasoning, sampling, streaming)"
        ),
        "{}",
        stdout(&out)
    );

    let out = env.lanes(&[
        "plugins",
        "check",
        stub,
        "--request",
        r#"{"prompt": "dry run"}"#,
        "--value",
        "model=m1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["execute"]["ok"]["text"], "stub reply to: dry run");
    assert_eq!(report["execute"]["ok"]["model"], "m1");

    let out = env.lanes(&[
        "plugins",
        "check",
        stub,
        "--request",
        r#"{"prompt": "x", "extra": {"error": "unauthorized"}}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    // Every released 0.1 version still loads and runs text, and takes nothing more: a
    // tool request is refused before any call.
    for version in ["0-1-0", "0-1-1", "0-1-2"] {
        let old = fixture(&format!("wit-{version}.wasm"));
        let out = env.lanes(&[
            "plugins",
            "check",
            old.to_str().unwrap(),
            "--request",
            r#"{"prompt": "hi"}"#,
        ]);
        assert!(
            out.status.success(),
            "a component built against {version} loads: {}",
            stderr(&out)
        );
        let said = stdout(&out);
        assert!(
            said.contains(&format!("wit-{version} echoes: hi")),
            "{said}"
        );
        assert!(
            said.contains("(wit 0.1, default limit 2, text only)"),
            "{said}"
        );
        let out = env.lanes(&[
            "plugins",
            "check",
            old.to_str().unwrap(),
            "--request",
            r#"{"prompt": "hi", "tools": [{"name": "f"}]}"#,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("`tools` needs the `tools` capability"),
            "{}",
            stderr(&out)
        );
    }

    let cases = [
        (
            fixture("wit-0-3-0.wasm"),
            "incompatible WIT version: built against lanes:provider@0.3.0",
        ),
        (
            fixture("not-a-provider.wasm"),
            "not a lanes provider component",
        ),
    ];
    for (path, needle) in cases {
        let out = env.lanes(&["plugins", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    let corrupt = env.dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm garbage").unwrap();
    let out = env.lanes(&["plugins", "check", corrupt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid WebAssembly component"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_of_one_component_serve_the_names_config_binds_them_to() {
    let mut env = TestEnv::new();
    for copy in ["late.wasm", "late2.wasm"] {
        std::fs::copy(env.plugins().join("stub.wasm"), env.plugins().join(copy)).unwrap();
    }
    env.config.providers.insert(
        "late".into(),
        ProviderConfig {
            component: Some("late.wasm".into()),
            ..ProviderConfig::default()
        },
    );
    env.config.providers.insert(
        "late2".into(),
        ProviderConfig {
            component: Some("late2.wasm".into()),
            ..ProviderConfig::default()
        },
    );
    // A third copy that nothing binds is still a duplicate of `stub`.
    std::fs::copy(
        env.plugins().join("stub.wasm"),
        env.plugins().join("spare.wasm"),
    )
    .unwrap();
    let (daemon, queue) = env.start().await;
    let lanes = daemon.lanes();
    for name in ["stub", "late", "late2"] {
        assert!(lanes.contains_key(name), "{name} serves: {lanes:?}");
    }
    let files = daemon.plugin_files().await;
    let status = |f: &str| files.iter().find(|r| r.file == f).map(|r| r.status);
    assert_eq!(status("late.wasm"), Some("loaded"), "{files:?}");
    assert_eq!(status("late2.wasm"), Some("loaded"), "{files:?}");
    let spare = files.iter().find(|r| r.file == "spare.wasm").unwrap();
    assert_eq!(spare.status, "rejected");
    assert!(
        spare
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("already provided by"),
        "{spare:?}"
    );
    daemon.submit_many(&sleepers("late2", 2, 1)).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("late2"), Duration::from_secs(20)).await;
    assert!(
        rows.iter()
            .all(|e| e.status == lanes::model::Status::Completed)
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_file_that_is_not_wasm_is_refused_in_one_line() {
    let env = TestEnv::new();
    let junk = env.plugins().join("junk.wasm");
    let bytes: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, bytes).unwrap();
    let out = env.lanes(&["plugins", "check", junk.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("junk.wasm") && err.contains("not a WebAssembly file"),
        "{err}"
    );
}
