//! Each lane runs exactly up to its own limit, measured from recorded start and finish times.

use std::time::Duration;

use lanes::model::Status;
use lanes::report::{intervals, max_overlap};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lane_reaches_its_limit_and_never_exceeds_it() {
    let mut env = TestEnv::new();
    let lanes = [("l1", 1u32), ("l2", 2), ("l3", 3), ("l8", 8)];
    for (name, limit) in lanes {
        env.stub(name, Some(limit), &[]);
    }
    let (daemon, queue) = env.start().await;
    let mut batch = Vec::new();
    for (name, limit) in lanes {
        batch.extend(sleepers(name, 3 * limit as usize, 150));
    }
    daemon.submit_many(&batch).await.unwrap();

    for (name, limit) in lanes {
        let rows = wait_terminal(queue.as_ref(), Some(name), Duration::from_secs(60)).await;
        assert_eq!(
            count(&rows, Status::Completed),
            3 * limit as usize,
            "{name}"
        );
        let max = max_overlap(intervals(&rows));
        println!("{name}: limit {limit}, max concurrency seen {max}");
        assert_eq!(
            max, limit as usize,
            "{name}: max concurrency must equal the limit"
        );
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_default_then_config_then_fallback() {
    let mut env = TestEnv::new();
    env.stub("declared", None, &[("default_limit", "5")]);
    env.stub("configured", Some(2), &[("default_limit", "5")]);
    env.config.fallback_limit = 3;
    let (daemon, queue) = env.start().await;
    let lanes = daemon.lanes();
    assert_eq!(lanes["declared"].0, 5, "the component's info() default");
    assert_eq!(lanes["configured"].0, 2, "config outranks the component");
    assert_eq!(lanes["stub"].0, 4, "the stub's own default");

    // A provider nothing describes: pending, shown in status with the fallback limit.
    queue
        .submit(&job("ghost", serde_json::json!({})))
        .await
        .unwrap();
    let out = env.lanes(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ghost = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "ghost")
        .expect("ghost in status");
    assert_eq!(ghost["limit"], 3);
    assert_eq!(ghost["pending"], 1);
    assert!(ghost["component"].is_null());

    let out = env.lanes(&["limits", "--json"]);
    let views: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let configured = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["provider"] == "configured")
        .unwrap();
    assert_eq!(configured["default"], 5);
    assert_eq!(configured["configured"], 2);
    assert_eq!(configured["effective"], 2);
    assert_eq!(configured["source"], "config");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_work_runs_once_its_component_appears() {
    let mut env = TestEnv::new();
    std::fs::remove_file(env.plugins().join("stub.wasm")).unwrap();
    env.stub("late", Some(2), &[]);
    let (daemon, queue) = env.start().await;
    daemon.submit_many(&sleepers("late", 3, 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = queue.list(Some("late")).await.unwrap();
    assert_eq!(
        count(&rows, Status::Pending),
        3,
        "no component yet: stays pending"
    );

    // Copy, then rename: the daemon must never see half a file.
    let tmp = env.dir.path().join("stub.wasm.part");
    std::fs::copy(component("stub.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, env.plugins().join("stub.wasm")).unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("late"), Duration::from_secs(20)).await;
    assert_eq!(count(&rows, Status::Completed), 3);
    daemon.shutdown(Duration::from_secs(5)).await;
}
