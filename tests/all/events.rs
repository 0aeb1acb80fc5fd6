//! The event bus, seen from a subscriber of a running daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use lanes::daemon::events::{Event, Outcome};
use lanes::model::{ErrorKind, Status};

use crate::support::*;

/// The kind of an execution's event, for comparing sequences.
fn step(event: &Event) -> Option<(i64, &'static str, i32)> {
    match event {
        Event::Claimed { id, attempt, .. } => Some((*id, "claimed", *attempt)),
        Event::Started { id, attempt, .. } => Some((*id, "started", *attempt)),
        Event::Finished {
            id,
            attempt,
            outcome,
            ..
        } => Some((
            *id,
            match outcome {
                Outcome::Completed => "completed",
                Outcome::Retried { .. } => "retried",
                _ => "other",
            },
            *attempt,
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_is_claimed_started_and_finished_in_order() {
    let mut env = TestEnv::new();
    env.stub("ev", Some(3), &[]);
    env.config.retry.base_ms = 200;
    env.config.retry.max_ms = 400;
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    // Two fail until a time ahead, then complete: they come first, so their first attempt
    // is in the first claim and fails; a retry waits at least 100 ms, the one after at least
    // 200 ms more, so the third attempt is past the time whatever the load.
    let until = lanes::model::now_ms() + 300;
    let failing = || {
        job(
            "ev",
            serde_json::json!({"fail_until_ms": until, "sleep_ms": 1}),
        )
    };
    let mut batch = vec![failing(), failing()];
    batch.extend(sleepers("ev", 12, 5));
    let ids = daemon.submit_many(&batch).await.unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("ev"), Duration::from_secs(30)).await;
    assert!(rows.iter().all(|e| e.status == Status::Completed));

    let mut seen: BTreeMap<i64, Vec<(&'static str, i32)>> = BTreeMap::new();
    let mut finished = 0;
    while finished < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("events keep coming")
            .expect("the daemon is alive")
            .expect("no event lost at this pace");
        if let Some((id, what, attempt)) = step(&event) {
            assert_eq!(event.provider(), Some("ev"));
            seen.entry(id).or_default().push((what, attempt));
            if what == "completed" {
                finished += 1;
            }
        }
    }
    // Each attempt k is claimed, started and finished, in that order; every attempt but the
    // last was retried.
    let mut retried = 0;
    for id in &ids {
        let steps = &seen[id];
        assert_eq!(steps.len() % 3, 0, "execution {id}: {steps:?}");
        let attempts = steps.len() / 3;
        for (k, triple) in steps.chunks(3).enumerate() {
            let attempt = i32::try_from(k + 1).unwrap();
            let end = if k + 1 == attempts {
                "completed"
            } else {
                "retried"
            };
            assert_eq!(
                triple,
                [("claimed", attempt), ("started", attempt), (end, attempt)],
                "execution {id}: {steps:?}"
            );
        }
        retried += attempts - 1;
    }
    assert!(retried >= 2, "the two failing executions were retried");
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `Started` waits in the bus for company (see `EventBus::defer_with`), but never for the
/// attempt's end: an attempt that waits on its provider is reported started while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_attempt_is_reported_started_while_it_runs() {
    let mut env = TestEnv::new();
    env.stub("long", Some(2), &[]);
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    // Far longer than the wait below: a `Started` held back until the attempt ended (or
    // until its result reached the completer) would miss it.
    let id = daemon
        .submit(&job("long", serde_json::json!({"sleep_ms": 60_000})))
        .await
        .unwrap();
    let started = async {
        loop {
            match events.recv().await {
                Some(Ok(Event::Started { id: started, .. })) if started == id => return,
                Some(Ok(Event::Finished { .. })) => panic!("finished before it started"),
                None => panic!("the daemon is gone"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("reported started while the attempt runs");
    let row = queue.get(id).await.unwrap().expect("the row");
    assert_eq!(row.status, Status::Running);
    // Stopped, not waited for.
    daemon.control().cancel(id).await.unwrap();
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_slows_nothing_and_learns_what_it_missed() {
    let mut env = TestEnv::new();
    env.stub("lag", Some(16), &[]);
    let (daemon, queue) = env.start().await;
    let mut idle = daemon.subscribe();
    // 3 events per execution. Each attempt waits (1 ms), so each `Started` goes out on
    // its own as its attempt first waits: twice as many messages of those alone as the
    // bus keeps for one subscriber.
    let n = lanes::daemon::events::CAPACITY;
    daemon
        .submit_many(&sleepers("lag", 2 * n, 1))
        .await
        .unwrap();
    let rows = wait_terminal(queue.as_ref(), Some("lag"), Duration::from_secs(120)).await;
    assert!(rows.iter().all(|e| e.status == Status::Completed));
    let first = idle.recv().await.expect("the daemon is alive");
    let missed = first.expect_err("it fell behind").0;
    assert!(missed >= n as u64, "missed {missed}");
    // Then it reads on from the oldest event kept.
    assert!(idle.recv().await.unwrap().is_ok());
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_rate_limit_and_a_failure_are_reported_with_their_kind() {
    let mut env = TestEnv::new();
    env.stub("kinds", Some(2), &[]);
    // The exact retry-after, without the spread of resumes, and no pause: the 60 s wait
    // would hold the other execution back.
    env.config.policy.resume_spread_ms = Some(0);
    env.config.policy.pause = Some(false);
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    let limited = daemon
        .submit(&job(
            "kinds",
            serde_json::json!({"error": "rate-limited", "retry_after_ms": 60000}),
        ))
        .await
        .unwrap();
    let bad = daemon
        .submit(&job(
            "kinds",
            serde_json::json!({"error": "invalid-request"}),
        ))
        .await
        .unwrap();
    let mut outcomes = BTreeMap::new();
    while outcomes.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Event::Finished { id, outcome, .. } = event {
            outcomes.insert(id, outcome);
        }
    }
    assert_eq!(
        outcomes[&limited],
        Outcome::Retried {
            kind: ErrorKind::RateLimited,
            delay_ms: 60_000
        }
    );
    assert_eq!(
        outcomes[&bad],
        Outcome::Failed {
            kind: ErrorKind::InvalidRequest
        }
    );
    let e = queue.get(bad).await.unwrap().unwrap();
    assert_eq!(e.status, Status::Failed, "Finished comes after the write");
    daemon.shutdown(Duration::from_secs(5)).await;
}
