//! Within one provider, higher priority runs first and equal priorities run in FIFO order.

use std::time::Duration;

use lanes::model::{ChatInput, NewExecution};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_first_then_fifo() {
    let mut env = TestEnv::new();
    env.stub("one", Some(1), &[]);
    let queue = env.queue().await;
    let mut expected_high = Vec::new();
    let mut expected_low = Vec::new();
    for i in 0..12 {
        let priority = if i % 3 == 0 { 10 } else { 0 };
        let id = queue
            .submit(&NewExecution {
                tenant: None,
                cache: None,
                provider: "one".into(),
                input: ChatInput::prompt("p").with_extra(serde_json::json!({"sleep_ms": 15})),
                priority,
                max_attempts: 1,
                route: None,
                defer: Default::default(),
            })
            .await
            .unwrap();
        if priority == 10 {
            expected_high.push(id);
        } else {
            expected_low.push(id);
        }
    }
    let (daemon, queue) = env.start().await;
    let mut rows = wait_terminal(queue.as_ref(), Some("one"), Duration::from_secs(30)).await;
    rows.sort_by_key(|e| (e.started_at, e.id));
    let order: Vec<i64> = rows.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = expected_high.into_iter().chain(expected_low).collect();
    assert_eq!(order, expected);
    daemon.shutdown(Duration::from_secs(5)).await;
}
