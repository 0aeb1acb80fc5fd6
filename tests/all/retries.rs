//! The error class decides: retryable errors back off (or honor retry-after), permanent ones
//! fail at once, and `max_attempts` caps the attempts.

use std::time::Duration;

use lanes::model::{ChatInput, NewExecution, Status, now_ms};

use crate::support::*;

fn env() -> TestEnv {
    let mut env = TestEnv::new();
    env.stub("flaky", Some(4), &[]);
    env.config.retry.base_ms = 100;
    env.config.retry.max_ms = 1000;
    env
}

fn with_attempts(extra: serde_json::Value, max_attempts: i32) -> NewExecution {
    NewExecution {
        tenant: None,
        cache: None,
        provider: "flaky".into(),
        input: ChatInput::prompt("x").with_extra(extra),
        priority: 0,
        max_attempts,
        route: None,
        defer: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_back_off_until_max_attempts() {
    let env = env();
    let (daemon, queue) = env.start().await;
    let id = daemon
        .submit(&with_attempts(
            serde_json::json!({"error": "unavailable"}),
            4,
        ))
        .await
        .unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("flaky"), Duration::from_secs(30)).await;
    let e = rows.iter().find(|e| e.id == id).unwrap();
    assert_eq!(e.status, Status::Failed);
    assert_eq!(e.attempts, 4, "max_attempts caps the attempts");
    assert_eq!(e.error_kind.as_deref(), Some("unavailable"));
    assert!(
        e.error
            .as_deref()
            .unwrap()
            .contains("unavailable: stub asked to fail")
    );
    // Backoffs of 100, 200 and 400 ms nominal, jittered within their upper half.
    let spent = e.finished_at.unwrap() - e.created_at;
    println!("4 attempts with backoff took {spent} ms (at least 350 expected)");
    assert!(spent >= 350, "backoff too short: {spent} ms");
    // Every attempt is in the history, and `lanes get` shows it.
    let outcomes: Vec<&str> = e.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retried", "retried", "retried", "failed"]);
    assert!(
        e.history[..3]
            .iter()
            .all(|a| a.retry_delay_ms.unwrap() >= 50)
    );
    assert!(
        e.history
            .iter()
            .all(|a| a.worker.as_deref() == Some(daemon.owner()))
    );
    let out = env.lanes(&["get", &id.to_string()]);
    let text = stdout(&out);
    assert!(text.contains("history:"), "{text}");
    assert_eq!(text.matches(" retried ").count(), 3, "{text}");
    assert_eq!(text.matches(" failed ").count(), 1, "{text}");
    assert!(text.contains("[unavailable] "), "{text}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_then_success() {
    let env = env();
    let (daemon, queue) = env.start().await;
    let until = now_ms() + 250;
    let id = daemon
        .submit(&with_attempts(
            serde_json::json!({"fail_until_ms": until}),
            10,
        ))
        .await
        .unwrap();
    wait_terminal(queue.as_ref(), Some("flaky"), Duration::from_secs(30)).await;
    let e = queue.get(id).await.unwrap().unwrap();
    assert_eq!(e.status, Status::Completed);
    assert!(e.attempts >= 2, "attempts {}", e.attempts);
    // A completed execution shows no error; the transient ones are kept in its history.
    assert_eq!((e.error.as_deref(), e.error_kind.as_deref()), (None, None));
    let (last, tries) = e.history.split_last().unwrap();
    assert_eq!(last.outcome, "completed");
    assert_eq!(tries.len() + 1, usize::try_from(e.attempts).unwrap());
    assert!(
        tries
            .iter()
            .all(|a| a.outcome == "retried" && a.error.is_some()),
        "{:?}",
        e.history
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honored() {
    let env = env();
    let (daemon, queue) = env.start().await;
    let until = now_ms() + 300;
    let id = daemon
        .submit(&with_attempts(
            serde_json::json!({"fail_until_ms": until, "error": "rate-limited", "retry_after_ms": 1200}),
            3,
        ))
        .await
        .unwrap();
    wait_terminal(queue.as_ref(), Some("flaky"), Duration::from_secs(30)).await;
    let e = queue.get(id).await.unwrap().unwrap();
    // The rate-limited call is counted apart, not as an attempt.
    assert_eq!(
        (e.status, e.attempts, e.rate_limited),
        (Status::Completed, 1, 1)
    );
    let waited = e.started_at.unwrap() - e.created_at;
    println!("second call started {waited} ms after submission (retry-after 1200 ms)");
    assert!(waited >= 1200, "retry-after not honored: {waited} ms");
    assert!(waited < 5000, "retry-after overshot: {waited} ms");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let mut env = env();
    // An unauthorized answer would open the circuit and hold the rest back.
    env.config.policy.breaker_failures = Some(0);
    let (daemon, queue) = env.start().await;
    let mut ids = Vec::new();
    for kind in ["invalid-request", "unauthorized", "other"] {
        let id = daemon
            .submit(&with_attempts(serde_json::json!({"error": kind}), 5))
            .await
            .unwrap();
        ids.push((id, kind.replace('-', "_")));
    }
    // One attempt only: a retryable error with max_attempts 1 fails at once too.
    let single = daemon
        .submit(&with_attempts(
            serde_json::json!({"error": "unavailable"}),
            1,
        ))
        .await
        .unwrap();
    ids.push((single, "unavailable".into()));
    wait_terminal(queue.as_ref(), Some("flaky"), Duration::from_secs(30)).await;
    for (id, kind) in ids {
        let e = queue.get(id).await.unwrap().unwrap();
        assert_eq!(e.status, Status::Failed, "{kind}");
        assert_eq!(e.attempts, 1, "{kind} must not be retried");
        assert_eq!(e.error_kind.as_deref(), Some(kind.as_str()));
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}
