//! The storage contract, run against SQLite and against PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use lanes::model::{ChatInput, ErrorKind, ExecutionId, NewExecution, Status, now_ms};
use lanes::store::{Change, Claim, Finish, Output, ProviderRecord, Queue};

use crate::support::*;

fn new(provider: &str, priority: i32) -> NewExecution {
    NewExecution {
        tenant: None,
        cache: None,
        provider: provider.into(),
        input: ChatInput::prompt("hi"),
        priority,
        max_attempts: 2,
        route: None,
        defer: Default::default(),
    }
}

fn claim(owner: &str, max: u32, limit: u32) -> Claim<'_> {
    Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        owner,
        max,
        limit,
        lease_ms: 60_000,
        budget: None,
        spend: None,
    }
}

/// A seeded pseudo-random source for the randomized cases: `rand(n)` is in `0..n`.
fn lcg(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    }
}

/// An end that retries after `delay_ms`, of kind `unavailable`.
fn retry_in(delay_ms: i64) -> Finish {
    Finish::Retry {
        error: "unavailable".into(),
        kind: ErrorKind::Unavailable,
        delay_ms,
        to: None,
    }
}

/// Runs `check` against a fresh SQLite queue and a fresh PostgreSQL schema.
macro_rules! contract {
    ($name:ident, $check:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let env = TestEnv::new();
                $check(env.any_queue().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((env, _schema)) = TestEnv::postgres().await else {
                    return;
                };
                $check(env.any_queue().await).await;
            }
        }
    };
}

contract!(
    claims_order_and_count,
    claims_follow_priority_then_fifo_and_count_attempts
);
async fn claims_follow_priority_then_fifo_and_count_attempts(q: Arc<dyn Queue>) {
    let low = q.submit(&new("a", 0)).await.unwrap();
    let high = q.submit(&new("a", 5)).await.unwrap();
    let low2 = q.submit(&new("a", 0)).await.unwrap();
    q.submit(&new("b", 9)).await.unwrap();
    let claimed = q.claim("a", claim("w1", 2, 10)).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![high, low]);
    for e in &claimed {
        assert_eq!((e.status, e.attempts), (Status::Running, 1));
        assert_eq!(e.worker.as_deref(), Some("w1"));
        assert!(e.lease_until.unwrap() > e.started_at.unwrap());
    }
    let rest = q.claim("a", claim("w1", 5, 10)).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![low2]);
}

contract!(claims_limit, claims_never_exceed_the_limit_across_workers);
async fn claims_never_exceed_the_limit_across_workers(q: Arc<dyn Queue>) {
    q.submit_many(&(0..6).map(|_| new("a", 0)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(q.claim("a", claim("w1", 5, 2)).await.unwrap().len(), 2);
    assert!(q.claim("a", claim("w2", 5, 2)).await.unwrap().is_empty());
    let running = q.list(Some("a")).await.unwrap();
    let first = running
        .iter()
        .find(|e| e.status == Status::Running)
        .unwrap();
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "x"})).unwrap());
    assert!(q.finish(first.id, "w1", &done).await.unwrap());
    assert_eq!(q.claim("a", claim("w2", 5, 2)).await.unwrap().len(), 1);
    // A raised limit lets more through.
    assert_eq!(q.claim("a", claim("w2", 5, 4)).await.unwrap().len(), 2);
}

contract!(
    owner_guard,
    a_worker_that_lost_its_row_cannot_overwrite_the_result
);
async fn a_worker_that_lost_its_row_cannot_overwrite_the_result(q: Arc<dyn Queue>) {
    let id = q.submit(&new("a", 0)).await.unwrap();
    let short = Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        lease_ms: 1,
        ..claim("paused", 1, 1)
    };
    q.claim("a", short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recovered = q.recover_interrupted().await.unwrap();
    assert_eq!(recovered.resumed, vec![(id, "a".to_string())]);
    let taken = q.claim("a", claim("other", 1, 1)).await.unwrap();
    assert_eq!(taken[0].attempts, 2);
    let theirs = Finish::Completed(Output::of(&serde_json::json!({"text": "from other"})).unwrap());
    assert!(q.finish(id, "other", &theirs).await.unwrap());
    let late = Finish::Completed(Output::of(&serde_json::json!({"text": "from paused"})).unwrap());
    assert!(
        !q.finish(id, "paused", &late).await.unwrap(),
        "the paused worker must not write"
    );
    let row = q.get(id).await.unwrap().unwrap();
    assert_eq!(row.output.unwrap()["text"], "from other");
    assert_eq!(
        (row.status, row.worker.as_deref()),
        (Status::Completed, Some("other"))
    );
}

contract!(
    recovery,
    recovery_resumes_first_or_fails_without_attempts_left
);
async fn recovery_resumes_first_or_fails_without_attempts_left(q: Arc<dyn Queue>) {
    let expired = |owner| Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        lease_ms: 1,
        ..claim(owner, 1, 10)
    };
    let a = q.submit(&new("a", 0)).await.unwrap();
    let b = q.submit(&new("a", 0)).await.unwrap();
    q.claim("a", expired("dead")).await.unwrap();
    let urgent = q.submit(&new("a", 100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let recovered = q.recover_interrupted().await.unwrap();
    assert_eq!(recovered.resumed, vec![(a, "a".to_string())]);
    let next = q.claim("a", expired("w")).await.unwrap();
    assert_eq!(
        next[0].id, a,
        "the interrupted row goes before priority 100"
    );
    assert_eq!(next[0].attempts, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The second interruption exhausts max_attempts = 2.
    let recovered = q.recover_interrupted().await.unwrap();
    assert_eq!(recovered.failed, vec![(a, "a".to_string())]);
    let row = q.get(a).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed);
    assert_eq!(
        row.error_kind.as_deref(),
        Some(ErrorKind::Interrupted.as_str())
    );
    assert!(row.error.unwrap().contains("attempt 2 of 2"));
    let next = q.claim("a", claim("w", 5, 10)).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![urgent, b]
    );
}

contract!(
    retry_and_requeue,
    retry_waits_and_requeue_gives_the_attempt_back
);
async fn retry_waits_and_requeue_gives_the_attempt_back(q: Arc<dyn Queue>) {
    let id = q.submit(&new("a", 0)).await.unwrap();
    q.claim("a", claim("w", 1, 1)).await.unwrap();
    let retry = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 60_000,
        to: None,
    };
    assert!(q.finish(id, "w", &retry).await.unwrap());
    assert!(q.claim("a", claim("w", 1, 1)).await.unwrap().is_empty());
    let due = q.next_due("a").await.unwrap().unwrap();
    assert!(
        (due - now_ms() - 60_000).abs() < 5_000,
        "due in about 60 s: {due}"
    );
    let short = q.submit(&new("b", 0)).await.unwrap();
    q.claim("b", claim("w", 1, 1)).await.unwrap();
    let soon = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 30,
        to: None,
    };
    assert!(q.finish(short, "w", &soon).await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    let again = q.claim("b", claim("w", 1, 1)).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].error.as_deref(), Some("busy"));
    assert!(q.finish(short, "w", &Finish::Requeue).await.unwrap());
    let row = q.get(short).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.attempts, row.resume),
        (Status::Pending, 1, true)
    );
    // A rate-limited retry gives its attempt back and is counted apart.
    q.claim("b", claim("w", 1, 1)).await.unwrap();
    let limited = Finish::Retry {
        error: "slow down".into(),
        kind: ErrorKind::RateLimited,
        delay_ms: 0,
        to: None,
    };
    assert!(q.finish(short, "w", &limited).await.unwrap());
    let row = q.get(short).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.attempts, row.rate_limited),
        (Status::Pending, 1, 1)
    );
    assert_eq!(row.history.last().unwrap().outcome, "rate_limited");
}

contract!(leases, renewing_keeps_a_lease_alive);
async fn renewing_keeps_a_lease_alive(q: Arc<dyn Queue>) {
    let id = q.submit(&new("a", 0)).await.unwrap();
    let first = q
        .claim(
            "a",
            Claim {
                tenants: &lanes::store::ROUND_ROBIN,
                lease_ms: 200,
                ..claim("w", 1, 1)
            },
        )
        .await
        .unwrap();
    let before = first[0].lease_until.unwrap();
    assert_eq!(q.renew_leases("w", 60_000).await.unwrap(), 1);
    assert_eq!(q.renew_leases("nobody", 60_000).await.unwrap(), 0);
    let row = q.get(id).await.unwrap().unwrap();
    assert!(row.lease_until.unwrap() > before + 30_000);
}

contract!(limits_counts_providers, limits_counts_and_providers);
async fn limits_counts_and_providers(q: Arc<dyn Queue>) {
    q.set_limit("a", 3).await.unwrap();
    q.set_limit("a", 4).await.unwrap();
    assert_eq!(q.limits().await.unwrap()["a"], 4);
    assert!(q.clear_limit("a").await.unwrap());
    assert!(!q.clear_limit("a").await.unwrap());
    assert!(q.limits().await.unwrap().is_empty());
    q.submit(&new("a", 0)).await.unwrap();
    q.submit(&new("a", 0)).await.unwrap();
    q.claim("a", claim("w", 1, 1)).await.unwrap();
    let counts = q.counts().await.unwrap();
    assert_eq!((counts["a"].pending, counts["a"].running), (1, 1));
    let record = ProviderRecord {
        name: "a".into(),
        component: "a.wasm".into(),
        version: "1.0.0".into(),
        default_limit: 2,
        description: "d".into(),
    };
    q.record_providers(std::slice::from_ref(&record))
        .await
        .unwrap();
    assert_eq!(q.providers().await.unwrap(), vec![record]);
}

contract!(history, each_attempt_is_kept_in_a_bounded_history);
async fn each_attempt_is_kept_in_a_bounded_history(q: Arc<dyn Queue>) {
    let mut job = new("h", 0);
    job.max_attempts = 100;
    let id = q.submit(&job).await.unwrap();
    let take = |lease_ms| {
        let q = q.clone();
        async move {
            let claim = Claim {
                tenants: &lanes::store::ROUND_ROBIN,
                owner: "w",
                max: 1,
                limit: 5,
                lease_ms,
                budget: None,
                spend: None,
            };
            assert_eq!(q.claim("h", claim).await.unwrap().len(), 1);
        }
    };
    let busy = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 0,
        to: None,
    };
    take(60_000).await;
    assert!(q.finish(id, "w", &busy).await.unwrap());
    take(60_000).await;
    assert!(q.finish(id, "w", &Finish::Requeue).await.unwrap());
    // An attempt whose worker is gone (its lease expired at once).
    take(0).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.recover_interrupted().await.unwrap();
    take(60_000).await;
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    assert!(q.finish(id, "w", &done).await.unwrap());

    let e = q.get(id).await.unwrap().unwrap();
    let seen: Vec<(i32, &str)> = e
        .history
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "retried"),
            (2, "returned"),
            (2, "interrupted"),
            (3, "completed")
        ]
    );
    let first = &e.history[0];
    assert_eq!(first.worker.as_deref(), Some("w"));
    assert_eq!(
        (first.error.as_deref(), first.error_kind.as_deref()),
        (Some("busy"), Some("unavailable"))
    );
    assert_eq!(first.retry_delay_ms, Some(0));
    assert!(first.started_at.unwrap() <= first.finished_at.unwrap());
    assert_eq!(e.history[3].error, None);

    // A first attempt that completes: its one entry comes from the row itself.
    let once = q.submit(&job).await.unwrap();
    take(60_000).await;
    assert!(q.finish(once, "w", &done).await.unwrap());
    let e = q.get(once).await.unwrap().unwrap();
    assert_eq!(e.history.len(), 1);
    let only = &e.history[0];
    assert_eq!((only.attempt, only.outcome.as_str()), (1, "completed"));
    assert_eq!(
        (only.started_at, only.finished_at, only.worker.as_deref()),
        (e.started_at, e.finished_at, Some("w"))
    );

    // Bounded: the newest are kept.
    let long = q.submit(&job).await.unwrap();
    for _ in 0..25 {
        take(60_000).await;
        assert!(q.finish(long, "w", &busy).await.unwrap());
    }
    let e = q.get(long).await.unwrap().unwrap();
    assert_eq!(e.history.len(), 20);
    assert_eq!(e.history.first().unwrap().attempt, 6);
    assert_eq!(e.history.last().unwrap().attempt, 25);
}

contract!(huge_limit, a_limit_past_what_is_stored_is_refused_alike);
async fn a_limit_past_what_is_stored_is_refused_alike(q: Arc<dyn Queue>) {
    let err = q
        .set_limit("a", 2_147_483_648)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("limit 2147483648 is too large"), "{err}");
    assert!(q.limits().await.unwrap().is_empty());
    q.set_limit("a", 2_147_483_647).await.unwrap();
    assert_eq!(q.limits().await.unwrap()["a"], 2_147_483_647);
}

contract!(batched_finish, a_batch_writes_every_kind_of_end_at_once);
async fn a_batch_writes_every_kind_of_end_at_once(q: Arc<dyn Queue>) {
    let ids = q
        .submit_many(&(0..5).map(|_| new("a", 0)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(ids.windows(2).filter(|w| w[0] < w[1]).count(), 4, "{ids:?}");
    let claimed = q.claim("a", claim("w", 5, 5)).await.unwrap();
    assert_eq!(claimed.len(), 5);
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let retry = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 60_000,
        to: None,
    };
    let failed = Finish::Failed {
        error: "bad".into(),
        kind: ErrorKind::InvalidRequest,
    };
    // ids[4] belongs to another worker now: that entry alone is not written.
    let held = q.renew_leases("w", 60_000).await.unwrap();
    assert_eq!(held, 5);
    let stolen = q.finish(ids[4], "w", &Finish::Requeue).await.unwrap();
    assert!(stolen);
    q.claim("a", claim("other", 1, 5)).await.unwrap();
    let batch = [
        (ids[0], &done),
        (ids[1], &retry),
        (ids[2], &failed),
        (ids[3], &Finish::Requeue),
        (ids[4], &done),
    ];
    let written = q.finish_many("w", &batch).await.unwrap();
    assert_eq!(written, vec![true, true, true, true, false]);
    // Written once: the same batch again changes nothing.
    let again = q.finish_many("w", &batch).await.unwrap();
    assert_eq!(again, vec![false; 5]);

    let get = |id| {
        let q = q.clone();
        async move { q.get(id).await.unwrap().unwrap() }
    };
    let e = get(ids[0]).await;
    assert_eq!(e.status, Status::Completed);
    assert_eq!(e.output, Some(serde_json::json!({"text": "ok"})));
    assert!(e.finished_at.is_some() && e.owner.is_none() && e.lease_until.is_none());
    let e = get(ids[1]).await;
    assert_eq!(e.status, Status::Pending);
    assert_eq!(
        (e.error.as_deref(), e.error_kind.as_deref()),
        (Some("busy"), Some("unavailable"))
    );
    assert!(e.not_before > now_ms() + 50_000 && e.finished_at.is_none());
    assert_eq!(e.attempts, 1);
    let e = get(ids[2]).await;
    assert_eq!(e.status, Status::Failed);
    assert_eq!(e.error_kind.as_deref(), Some("invalid_request"));
    assert!(e.finished_at.is_some() && e.output.is_none());
    let e = get(ids[3]).await;
    assert_eq!((e.status, e.attempts, e.resume), (Status::Pending, 0, true));
    assert!(e.started_at.is_none() && e.error.is_none());
    let e = get(ids[4]).await;
    assert_eq!(
        (e.status, e.owner.as_deref()),
        (Status::Running, Some("other"))
    );
}

contract!(
    completed_clears_the_error,
    a_completed_row_shows_no_error_of_an_earlier_try
);
/// A row that completes after a rate-limited try shows no `error` nor `error_kind`: a
/// client reads `error != null` as a failure. The earlier try's error stays in its history.
/// Checked on each way a completed row is written: alone, in a batch with another kind of
/// end, in a batch that moves a routed retry, and in a batch write that claims.
async fn a_completed_row_shows_no_error_of_an_earlier_try(q: Arc<dyn Queue>) {
    let ids = q
        .submit_many(&(0..4).map(|_| new("a", 0)).collect::<Vec<_>>())
        .await
        .unwrap();
    let others = q.submit_many(&[new("x", 0), new("x", 0)]).await.unwrap();
    assert_eq!(q.claim("a", claim("w", 4, 10)).await.unwrap().len(), 4);
    let limited = Finish::Retry {
        error: "429: slow down".into(),
        kind: ErrorKind::RateLimited,
        delay_ms: 0,
        to: None,
    };
    let batch: Vec<_> = ids.iter().map(|id| (*id, &limited)).collect();
    assert_eq!(q.finish_many("w", &batch).await.unwrap(), vec![true; 4]);
    assert_eq!(q.claim("a", claim("w", 4, 10)).await.unwrap().len(), 4);
    assert_eq!(q.claim("x", claim("w", 2, 10)).await.unwrap().len(), 2);
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let busy = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 60_000,
        to: None,
    };
    let moved = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 60_000,
        to: Some("y".into()),
    };
    assert!(q.finish(ids[0], "w", &done).await.unwrap());
    assert_eq!(
        q.finish_many("w", &[(ids[1], &done), (others[0], &busy)])
            .await
            .unwrap(),
        vec![true, true]
    );
    assert_eq!(
        q.finish_many("w", &[(ids[2], &done), (others[1], &moved)])
            .await
            .unwrap(),
        vec![true, true]
    );
    let (written, _) = q
        .finish_and_claim("w", &[(ids[3], &done)], &[("a", claim("w", 1, 10))])
        .await
        .unwrap();
    assert_eq!(written, vec![true]);

    let paths = ["alone", "with a retry", "with a move", "with a claim"];
    let mut rows = Vec::new();
    for id in &ids {
        rows.push(q.get(*id).await.unwrap().unwrap());
    }
    // Every path at once, so that a failure names each one that keeps the error.
    let errors: Vec<_> = paths
        .iter()
        .zip(&rows)
        .map(|(path, e)| (*path, e.status, e.error.clone(), e.error_kind.clone()))
        .collect();
    let none: Vec<_> = paths
        .iter()
        .map(|path| (*path, Status::Completed, None, None))
        .collect();
    assert_eq!(errors, none, "a completed row shows an earlier try's error");
    for (e, path) in rows.iter().zip(paths) {
        assert_eq!((e.attempts, e.rate_limited), (1, 1), "{path}");
        let seen: Vec<(i32, &str, Option<&str>, Option<&str>)> = e
            .history
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.outcome.as_str(),
                    a.error_kind.as_deref(),
                    a.error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    1,
                    "rate_limited",
                    Some(ErrorKind::RateLimited.as_str()),
                    Some("429: slow down")
                ),
                (1, "completed", None, None),
            ],
            "completed {path}: the history keeps the rate-limited try"
        );
    }
    // The other ends of those batches keep their errors.
    let e = q.get(others[0]).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.error.as_deref(), e.error_kind.as_deref()),
        (Status::Pending, Some("busy"), Some("unavailable"))
    );
    let e = q.get(others[1]).await.unwrap().unwrap();
    assert_eq!(
        (e.status, e.provider.as_str(), e.error.as_deref()),
        (Status::Pending, "y", Some("busy"))
    );
}

/// Three rows of "a" and two of "b", the first of each claimed by "w" (limit 1): the ids.
async fn one_running_in_a_and_b(q: &dyn Queue) -> Vec<ExecutionId> {
    let ids = q
        .submit_many(&[
            new("a", 0),
            new("a", 0),
            new("a", 0),
            new("b", 0),
            new("b", 0),
        ])
        .await
        .unwrap();
    assert_eq!(q.claim("a", claim("w", 1, 1)).await.unwrap()[0].id, ids[0]);
    assert_eq!(q.claim("b", claim("w", 1, 1)).await.unwrap()[0].id, ids[3]);
    ids
}

contract!(
    refill_in_the_write,
    a_batch_write_refills_the_slots_it_frees
);
async fn a_batch_write_refills_the_slots_it_frees(q: Arc<dyn Queue>) {
    let ids = one_running_in_a_and_b(q.as_ref()).await;
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    // Limit 1 for each: the claims see the rows this write ends as no longer running. "a"
    // offers 2 slots but its limit lets one run; "c" has nothing pending.
    let (written, claimed) = q
        .finish_and_claim(
            "w",
            &[(ids[0], &done), (ids[3], &done)],
            &[
                ("a", claim("w", 2, 1)),
                (
                    "b",
                    Claim {
                        tenants: &lanes::store::ROUND_ROBIN,
                        lease_ms: 5_000,
                        ..claim("w", 1, 1)
                    },
                ),
                ("c", claim("w", 1, 1)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written, vec![true, true]);
    assert_eq!(claimed.len(), 3);
    let status = |id| {
        let q = q.clone();
        async move { q.get(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(ids[0]).await, Status::Completed);
    assert_eq!(status(ids[3]).await, Status::Completed);
    let Some(got) = refilled_ids(q.as_ref(), &claimed) else {
        return;
    };
    assert_eq!(got, vec![vec![ids[1]], vec![ids[4]], vec![]]);
    let e = &claimed[0].as_ref().unwrap()[0];
    assert_eq!(
        (e.status, e.attempts, e.owner.as_deref()),
        (Status::Running, 1, Some("w"))
    );
    let lease = |e: &lanes::model::Execution| e.lease_until.zip(e.started_at).map(|(l, s)| l - s);
    assert_eq!(lease(e), Some(60_000));
    assert_eq!(
        lease(&claimed[1].as_ref().unwrap()[0]),
        Some(5_000),
        "each claim has its own lease"
    );
    assert_eq!(status(ids[2]).await, Status::Pending);
    // Claims come back in the order asked, whatever the providers' order: a store may take
    // them in another, say sorted by provider so that workers lock providers alike.
    let (written, claimed) = q
        .finish_and_claim(
            "w",
            &[(ids[1], &done), (ids[4], &done)],
            &[
                ("c", claim("w", 1, 1)),
                ("b", claim("w", 1, 1)),
                ("a", claim("w", 1, 1)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written, vec![true, true]);
    assert_eq!(
        refilled_ids(q.as_ref(), &claimed),
        Some(vec![vec![], vec![], vec![ids[2]]])
    );
}

contract!(
    refilled_rows_as_stored,
    a_row_refilled_in_a_write_is_the_row_as_stored
);
/// A row that a batch write claims comes back as `get` reads it, field for field: here one
/// retried before (its error and history kept), with a priority and a route. A row of the
/// batch cancelled meanwhile is not written.
async fn a_row_refilled_in_a_write_is_the_row_as_stored(q: Arc<dyn Queue>) {
    let routed = NewExecution {
        tenant: None,
        cache: None,
        route: Some("r".into()),
        ..new("a", 5)
    };
    let ids = q
        .submit_many(&[new("a", 0), new("a", 0), routed])
        .await
        .unwrap();
    assert_eq!(q.claim("a", claim("w", 3, 3)).await.unwrap().len(), 3);
    let retry = Finish::Retry {
        error: "busy \"now\" \\ ünï\ncode".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 0,
        to: None,
    };
    assert_eq!(
        q.finish_many("w", &[(ids[2], &retry)]).await.unwrap(),
        vec![true]
    );
    q.cancel(ids[1]).await.unwrap();
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let (written, claimed) = q
        .finish_and_claim(
            "w",
            &[(ids[0], &done), (ids[1], &done)],
            &[("a", claim("w", 2, 3))],
        )
        .await
        .unwrap();
    assert_eq!(
        written,
        vec![true, false],
        "the cancelled row is not written"
    );
    assert_eq!(
        q.get(ids[1]).await.unwrap().unwrap().status,
        Status::Cancelled
    );
    if q.refills_with_finish() == 0 {
        assert!(claimed.iter().all(Option::is_none), "{claimed:?}");
        return;
    }
    let [Some(rows)] = claimed.as_slice() else {
        panic!("one claim asked, {} answered", claimed.len());
    };
    let [e] = rows.as_slice() else {
        panic!("one row pending, {} claimed", rows.len());
    };
    assert_eq!(
        (e.id, e.attempts, e.priority, e.route.as_deref()),
        (ids[2], 2, 5, Some("r"))
    );
    assert_eq!(e.error.as_deref(), Some("busy \"now\" \\ ünï\ncode"));
    assert_eq!(e.history.len(), 1, "{:?}", e.history);
    assert_eq!(Some(e), q.get(ids[2]).await.unwrap().as_ref());
}

contract!(refill_many_lanes, a_batch_write_refills_many_lanes_at_once);
/// One write that refills 6 lanes, one row each. (SQLite: sqlx left the later claims'
/// parameters NULL past 3 of them, and such a write failed.)
async fn a_batch_write_refills_many_lanes_at_once(q: Arc<dyn Queue>) {
    let lanes = ["l0", "l1", "l2", "l3", "l4", "l5"];
    let first = q.submit_many(&[new("l0", 0)]).await.unwrap();
    let rest: Vec<_> = lanes.iter().map(|l| new(l, 0)).collect();
    let ids = q.submit_many(&rest).await.unwrap();
    assert_eq!(
        q.claim("l0", claim("w", 1, 1)).await.unwrap()[0].id,
        first[0]
    );
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let claims: Vec<_> = lanes.iter().map(|l| (*l, claim("w", 1, 1))).collect();
    let (written, claimed) = q
        .finish_and_claim("w", &[(first[0], &done)], &claims)
        .await
        .unwrap();
    assert_eq!(written, vec![true]);
    assert_eq!(claimed.len(), lanes.len());
    let Some(got) = refilled_ids(q.as_ref(), &claimed) else {
        return;
    };
    let want: Vec<Vec<i64>> = ids.iter().map(|id| vec![*id]).collect();
    assert_eq!(got, want);
}

/// The ids each claim of a batch write took, in the order asked; `None` from a store that
/// claims after the write, in the producer (its write takes none).
fn refilled_ids(
    q: &dyn Queue,
    claimed: &[Option<Vec<lanes::model::Execution>>],
) -> Option<Vec<Vec<i64>>> {
    if q.refills_with_finish() == 0 {
        assert!(claimed.iter().all(Option::is_none), "{claimed:?}");
        return None;
    }
    Some(
        claimed
            .iter()
            .map(|rows| {
                let rows = rows.as_ref().expect("every claim made");
                rows.iter().map(|e| e.id).collect()
            })
            .collect(),
    )
}

/// PostgreSQL: a batch write whose refill fails after an earlier claim of the same write
/// took its rows is undone whole, claims and all, and its retry claims each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_refill_undoes_its_write_and_its_claims() {
    let Some((env, schema)) = TestEnv::postgres().await else {
        return;
    };
    let q = env.any_queue().await;
    let ids = q
        .submit_many(&[new("a", 0), new("a", 0), new("boom", 0)])
        .await
        .unwrap();
    q.claim("a", claim("w", 1, 1)).await.unwrap();
    let admin = sqlx::PgPool::connect(&schema.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.provider = 'boom' AND NEW.status = 'running' THEN
             RAISE EXCEPTION 'no claims of boom';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER boom BEFORE UPDATE ON executions
            FOR EACH ROW EXECUTE FUNCTION boom();",
    )
    .execute(&admin)
    .await
    .unwrap();
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    // "a" sorts before "boom": its claim has taken a row when the second claim fails.
    let claims = [("boom", claim("w", 1, 1)), ("a", claim("w", 1, 1))];
    // The server may still be ending the last failed write (and letting go of its locks)
    // when its error reaches the client: a write then finds "boom"'s lock busy and leaves
    // that claim to the producer. Wait until the locks are free, as a later write would.
    let channel: String = sqlx::query_scalar("SELECT 'lanes:' || current_schema()")
        .fetch_one(&admin)
        .await
        .unwrap();
    let locks_free = || async {
        let mut tx = admin.begin().await.unwrap();
        for provider in ["a", "boom"] {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
                .bind(&channel)
                .bind(provider)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.rollback().await.unwrap();
    };
    for _ in 0..3 {
        locks_free().await;
        let err = q
            .finish_and_claim("w", &[(ids[0], &done)], &claims)
            .await
            .expect_err("the claim fails");
        assert!(err.to_string().contains("no claims of boom"), "{err}");
        let rows = q.list(None).await.unwrap();
        let seen: Vec<_> = rows.iter().map(|e| (e.status, e.attempts)).collect();
        assert_eq!(
            seen,
            vec![
                (Status::Running, 1),
                (Status::Pending, 0),
                (Status::Pending, 0)
            ],
            "the write and the first claim are undone with the failed one"
        );
    }
    sqlx::query("DROP TRIGGER boom ON executions")
        .execute(&admin)
        .await
        .unwrap();
    locks_free().await;
    let (written, claimed) = q
        .finish_and_claim("w", &[(ids[0], &done)], &claims)
        .await
        .unwrap();
    assert_eq!(written, vec![true]);
    assert_eq!(
        refilled_ids(q.as_ref(), &claimed),
        Some(vec![vec![ids[2]], vec![ids[1]]]),
        "in the order asked"
    );
    let rows = q.list(None).await.unwrap();
    let seen: Vec<_> = rows.iter().map(|e| (e.status, e.attempts)).collect();
    assert_eq!(
        seen,
        vec![
            (Status::Completed, 1),
            (Status::Running, 1),
            (Status::Running, 1)
        ]
    );
    admin.close().await;
}

/// An open transaction of another worker on the queue at `url` that holds the advisory lock
/// the store keys as `{prefix}{channel}:{provider}`: a claim lock (no prefix) or a budget
/// lock (`budget:`). Rolling it back (or dropping it) lets the lock go.
async fn another_worker_holds(
    url: &str,
    prefix: &str,
    provider: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let channel: String = sqlx::query_scalar("SELECT 'lanes:' || current_schema()")
        .fetch_one(&admin)
        .await
        .unwrap();
    let mut other = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || $2 || ':' || $3, 0))")
        .bind(prefix)
        .bind(&channel)
        .bind(provider)
        .execute(&mut *other)
        .await
        .unwrap();
    other
}

/// PostgreSQL: the estimate a budgeted claim in a batch write reserves
/// (`lanes_estimate_tokens`, migration 0021) is the Rust one a producer's claim reserves,
/// for every shape of content that counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_budget_estimates_match_their_rust_twin() {
    let Some((_env, schema)) = TestEnv::postgres().await else {
        return;
    };
    // The schema's migrations are applied when a queue opens it.
    let _q = lanes::store::open(&schema.url).await.unwrap();
    let admin = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let inputs = [
        r#"{"prompt":"hi"}"#,
        r#"{"prompt":"héllo wörld ✓ 😀","system":"be brief","max_tokens":50}"#,
        r#"{"messages":[{"role":"user","content":"abcdefghijkl"}],"max_tokens":7}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"part one"},
            {"type":"image","url":"data:image/png;base64,AAAA"},{"type":"text","text":"ü"}]},
           {"role":"assistant","content":[{"type":"tool_call","id":"c1","name":"f",
            "arguments":"{\"city\":\"Oslo\"}"}]},
           {"role":"tool","content":[{"type":"tool_result","id":"c1",
            "content":[{"type":"text","text":"cold"},{"content":"nested twice"}]}]}]}"#,
        r#"{"messages":[1,"x",null,{"content":7},{"content":{"text":"an object"}},[{"content":"in an array"}]]}"#,
        r#"{"max_tokens":-5,"prompt":"abcdefgh"}"#,
        r#"{"max_tokens":1.5,"prompt":"abcd"}"#,
        r#"{"max_tokens":"10","prompt":"abcd"}"#,
        r#"{"max_tokens":4294967295}"#,
        r#"{"system":5,"prompt":null,"messages":"not a list"}"#,
        r#"{"messages":[{"content":[{"text":5,"arguments":["x"],"content":[[{"text":"deep"}]]}]}]}"#,
        r#"{"prompt":"a\u0000bcdefg"}"#,
        r#"{"prompt":"\\u0000 and \u0000 abcd"}"#,
        r#"[1,2]"#,
        r#""a string""#,
        "not json",
        "",
    ];
    let mut counted = 0;
    for input in inputs {
        let value: serde_json::Value = serde_json::from_str(input).unwrap_or_default();
        let rust = lanes::store::estimate_tokens(&value);
        counted += usize::from(rust > 0);
        let sql: i64 = sqlx::query_scalar("SELECT lanes_estimate_tokens($1)")
            .bind(input)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert_eq!(sql, rust, "{input}");
    }
    assert_eq!(counted, 9, "the inputs that count tokens");
}

/// Ends the running rows of "a" and "b" of [`one_running_in_a_and_b`] in one batch write
/// that refills "a" under `a` and "b" at limit 1, while another worker holds a lock of "a"
/// (its `lock`, for the message): the write must neither wait for it nor fail. The claims.
async fn end_both_beside_a_busy_lock(
    q: &dyn Queue,
    ids: &[ExecutionId],
    a: Claim<'_>,
    lock: &str,
) -> Vec<Option<Vec<lanes::Execution>>> {
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let (written, claimed) = tokio::time::timeout(
        Duration::from_secs(10),
        q.finish_and_claim(
            "w",
            &[(ids[0], &done), (ids[3], &done)],
            &[("a", a), ("b", claim("w", 1, 1))],
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("the write waited for another worker's {lock} lock"))
    .unwrap();
    assert_eq!(written, vec![true, true]);
    claimed
}

/// PostgreSQL: a batch write never waits for the budget lock of a budgeted lane that another
/// worker's claim holds: its rows are written, and that claim is left to the lane's
/// producer (`None`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_busy_budget_lock_does_not_hold_the_write() {
    let Some((env, schema)) = TestEnv::postgres().await else {
        return;
    };
    let q = env.any_queue().await;
    let ids = one_running_in_a_and_b(q.as_ref()).await;
    let other = another_worker_holds(&schema.url, "budget:", "a").await;
    let budgeted = Claim {
        budget: Some(lanes::store::Budget {
            rpm: Some(100),
            tpm: Some(100_000),
        }),
        ..claim("w", 1, 1)
    };
    let claimed = end_both_beside_a_busy_lock(q.as_ref(), &ids, budgeted, "budget").await;
    assert!(claimed[0].is_none(), "{claimed:?}");
    assert_eq!(claimed[1].as_ref().map(Vec::len), Some(1));
    other.rollback().await.unwrap();
    // Once it is free, the write's claim reserves as the producer's does.
    let (_, claimed) = q
        .finish_and_claim("w", &[], &[("a", budgeted)])
        .await
        .unwrap();
    assert_eq!(claimed[0].as_ref().map(Vec::len), Some(1));
    assert_eq!(q.budget_usage().await.unwrap()["a"].0, 1);
}

/// PostgreSQL: a batch write never waits for a claim lock that another worker holds. Its
/// rows are written, and the other lanes refilled, at once; the claim for the busy provider
/// is not made (`None`), and falls to that lane's producer, whose claim keeps the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_busy_claim_lock_does_not_hold_the_write() {
    let Some((env, schema)) = TestEnv::postgres().await else {
        return;
    };
    let q = env.any_queue().await;
    let ids = one_running_in_a_and_b(q.as_ref()).await;
    // Another worker's claim of "a" under way: its lock, held in an open transaction.
    let other = another_worker_holds(&schema.url, "", "a").await;
    let claimed = end_both_beside_a_busy_lock(q.as_ref(), &ids, claim("w", 1, 1), "claim").await;
    let got: Vec<Option<Vec<i64>>> = claimed
        .iter()
        .map(|rows| rows.as_ref().map(|r| r.iter().map(|e| e.id).collect()))
        .collect();
    assert_eq!(got, vec![None, Some(vec![ids[4]])]);
    assert_eq!(
        q.get(ids[1]).await.unwrap().unwrap().status,
        Status::Pending
    );
    // The lock free again, the producer's claim takes "a"'s next row, within the limit.
    other.rollback().await.unwrap();
    let next = q.claim("a", claim("w", 2, 1)).await.unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[1]]);
}

/// SQLite: when a claim in a batch's write fails, the write is undone with it (the batch is
/// retried whole), and the connection it ran on is left with no transaction open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_refill_undoes_its_write_and_leaves_no_transaction_open() {
    let env = TestEnv::new();
    let q = env.queue().await;
    let ids = q.submit_many(&[new("a", 0), new("boom", 0)]).await.unwrap();
    q.claim("a", claim("w", 1, 1)).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER boom BEFORE UPDATE OF status ON executions
          WHEN NEW.provider = 'boom' AND NEW.status = 'running'
         BEGIN SELECT RAISE(ABORT, 'no claims of boom'); END",
    )
    .execute(q.pool())
    .await
    .unwrap();
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    for _ in 0..6 {
        let err = q
            .finish_and_claim("w", &[(ids[0], &done)], &[("boom", claim("w", 1, 1))])
            .await
            .expect_err("the claim fails");
        assert!(err.to_string().contains("no claims of boom"), "{err}");
        let e = q.get(ids[0]).await.unwrap().unwrap();
        assert_eq!(
            e.status,
            Status::Running,
            "the write is undone with the claim"
        );
    }
    // A spend-capped claim's reservations are the producer's: refused here, and nothing
    // written.
    let caps = lanes::store::Spend {
        day: 0,
        provider_usd: Some(1.0),
        tenants: Default::default(),
        price: None,
    };
    let capped = Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        spend: Some(&caps),
        ..claim("w", 1, 1)
    };
    let err = q
        .finish_and_claim("w", &[(ids[0], &done)], &[("a", capped)])
        .await
        .expect_err("a spend-capped claim is refused");
    assert!(
        err.to_string()
            .contains("provider a: a claim with a spend cap"),
        "{err}"
    );
    assert_eq!(
        q.get(ids[0]).await.unwrap().unwrap().status,
        Status::Running
    );
    // The write connection and every connection of the pool (4) at once: none is inside
    // a transaction.
    let mut conns = vec![q.writer().acquire().await.unwrap()];
    for _ in 0..4 {
        conns.push(q.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        sqlx::query("BEGIN IMMEDIATE; ROLLBACK")
            .execute(&mut **conn)
            .await
            .expect("no transaction left open");
    }
    drop(conns);
    let written = q.finish_many("w", &[(ids[0], &done)]).await.unwrap();
    assert_eq!(written, vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifies_what_other_workers_can_claim() {
    let Some((env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    let q = env.any_queue().await;
    let mut changes = q.listen().await.unwrap().expect("PostgreSQL notifies");
    let other = env.any_queue().await; // another worker's connection
    async fn heard(changes: &mut tokio::sync::mpsc::Receiver<Change>, what: &str) {
        let got = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
        assert_eq!(
            got.ok().flatten(),
            Some(Change::Provider("n".into())),
            "{what} wakes the others"
        );
    }
    let first = other.submit(&new("n", 0)).await.unwrap();
    heard(&mut changes, "a submission").await;
    let second = other.submit(&new("n", 0)).await.unwrap();
    heard(&mut changes, "a submission").await;
    // The claiming worker has 1 slot, the fleet 2. Every worker keeps to its share and
    // refills its own slots, so room left after a claim is another worker's to take.
    other.claim("n", claim("w", 1, 2)).await.unwrap();
    other.claim("n", claim("w", 1, 2)).await.unwrap();
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "x"})).unwrap());
    other.finish(first, "w", &done).await.unwrap();
    // Neither a claim, one that left room or one that filled the fleet, nor a finish (its
    // worker refills the slot) wakes anyone.
    let quiet = tokio::time::timeout(Duration::from_millis(500), changes.recv()).await;
    assert!(quiet.is_err(), "woken for nothing: {quiet:?}");
    other.slot_freed("n").await.unwrap();
    heard(&mut changes, "a slot its worker will not refill").await;
    let retry = Finish::Retry {
        error: "busy".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 0,
        to: None,
    };
    other.finish(second, "w", &retry).await.unwrap();
    heard(&mut changes, "a row back to pending").await;
    // A running row cancelled: its worker, whichever it is, hears which one.
    let third = other.submit(&new("n", 0)).await.unwrap();
    heard(&mut changes, "a submission").await;
    other.claim("n", claim("w", 5, 5)).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(300), changes.recv()).await;
    other.cancel(third).await.unwrap();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("a cancel is heard")
            .unwrap();
        if got == Change::Cancel(third) {
            break;
        }
    }
    assert!(
        TestEnv::new()
            .any_queue()
            .await
            .listen()
            .await
            .unwrap()
            .is_none()
    );
}

contract!(keyed, idempotency_keys_pages_and_cancels);
async fn idempotency_keys_pages_and_cancels(q: Arc<dyn Queue>) {
    use lanes::store::{Cancelled, ExecutionFilter, IdempotencyKey, Submitted};
    let key = |k: &str, f: &str| {
        Some(IdempotencyKey {
            key: k.into(),
            fingerprint: f.into(),
        })
    };
    let first = q
        .submit_keyed(&[(new("k", 0), key("a", "1")), (new("k", 0), None)])
        .await
        .unwrap();
    let Submitted::Created(a) = first[0] else {
        panic!("{first:?}")
    };
    assert!(matches!(first[1], Submitted::Created(_)));
    // The same key and fingerprint: the same execution; another fingerprint: a conflict,
    // and then nothing of that batch is written.
    let again = q
        .submit_keyed(&[(new("k", 0), key("a", "1"))])
        .await
        .unwrap();
    assert_eq!(again, vec![Submitted::Repeated(a)]);
    let before = q.list(None).await.unwrap().len();
    let clash = q
        .submit_keyed(&[(new("k", 0), None), (new("k", 0), key("a", "2"))])
        .await
        .unwrap();
    assert_eq!(clash[1], Submitted::Conflict(a));
    assert_eq!(q.list(None).await.unwrap().len(), before, "rolled back");

    // Pages: newest first, filtered, below a cursor.
    for _ in 0..3 {
        q.submit(&new("p", 0)).await.unwrap();
    }
    let page = |before_id, limit| ExecutionFilter {
        provider: Some("p".into()),
        before_id,
        limit,
        ..ExecutionFilter::default()
    };
    let top = q.list_page(&page(None, 2)).await.unwrap();
    assert_eq!(top.len(), 2);
    assert!(top[0].id > top[1].id);
    let rest = q.list_page(&page(Some(top[1].id), 2)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].id < top[1].id);
    let future = ExecutionFilter {
        created_after: Some(now_ms() + 60_000),
        limit: 10,
        ..ExecutionFilter::default()
    };
    assert!(q.list_page(&future).await.unwrap().is_empty());
    let completed = ExecutionFilter {
        status: Some(Status::Completed),
        limit: 10,
        ..ExecutionFilter::default()
    };
    assert!(q.list_page(&completed).await.unwrap().is_empty());

    // Cancels: pending at once; running under its owner, whose result is then not
    // written; ended ones are left as they are.
    assert_eq!(q.cancel(rest[0].id).await.unwrap(), Cancelled::Pending);
    let running = q.claim("p", claim("w", 1, 5)).await.unwrap();
    let id = running[0].id;
    assert_eq!(
        q.cancel(id).await.unwrap(),
        Cancelled::Running {
            owner: Some("w".into())
        }
    );
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "late"})).unwrap());
    assert!(
        !q.finish(id, "w", &done).await.unwrap(),
        "a cancelled row is not written"
    );
    let row = q.get(id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Cancelled);
    assert!(row.output.is_none());
    assert_eq!(row.history.last().unwrap().outcome, "cancelled");
    assert_eq!(
        q.cancel(id).await.unwrap(),
        Cancelled::Terminal(Status::Cancelled)
    );
    assert_eq!(q.cancel(999_999).await.unwrap(), Cancelled::NotFound);

    // Ended since: the two cancelled rows, and none in the future.
    let ended = |after| ExecutionFilter {
        finished_after: Some(after),
        limit: 10,
        ..ExecutionFilter::default()
    };
    let since: Vec<i64> = q
        .list_page(&ended(now_ms() - 60_000))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(since, vec![id, rest[0].id]);
    assert!(
        q.list_page(&ended(now_ms() + 60_000))
            .await
            .unwrap()
            .is_empty()
    );
    // The keys of those ids that have one.
    let keys = q.idempotency_keys(&[a, id, 999_999]).await.unwrap();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec![(a, "a".to_string())]
    );
    assert!(q.idempotency_keys(&[]).await.unwrap().is_empty());
    q.ping().await.unwrap();
}

contract!(aging, aging_raises_waiting_rows_once_per_interval);
async fn aging_raises_waiting_rows_once_per_interval(q: Arc<dyn Queue>) {
    // The sweeps below must all land between the second interval's end and the third's.
    // On a loaded CI machine a 50 ms margin was once not enough, so the margin is 250 ms,
    // and a try that stalled past it (it cannot tell a third interval from none) is made
    // again on a fresh provider instead of blaming the sweep.
    const EVERY: i64 = 500;
    let mut tries = 0;
    let (provider, id) = loop {
        tries += 1;
        let provider = format!("old{tries}");
        let id = q.submit(&new(&provider, 3)).await.unwrap();
        let submitted = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(1_250)).await;
        // Waited 1.25 s, every 0.5 s: two intervals, one rise per sweep.
        assert_eq!(q.age(&provider, EVERY, 10).await.unwrap(), 1);
        assert_eq!(q.age(&provider, EVERY, 10).await.unwrap(), 1);
        let third = q.age(&provider, EVERY, 10).await.unwrap();
        let waited = submitted.elapsed();
        if waited >= Duration::from_millis(1_450) && tries < 3 {
            continue;
        }
        assert_eq!(
            third, 0,
            "a third interval has not passed (waited {waited:?})"
        );
        break (provider, id);
    };
    let e = q.get(id).await.unwrap().unwrap();
    assert_eq!((e.priority, e.aged), (5, 2));
    // The cap, and other providers, are left alone.
    assert_eq!(q.age(&provider, 1, 2).await.unwrap(), 0);
    assert_eq!(q.age("other", 1, 10).await.unwrap(), 0);
    // Running rows do not age.
    q.claim(&provider, claim("w", 1, 1)).await.unwrap();
    assert_eq!(q.age(&provider, 1, 10).await.unwrap(), 0);
}

/// Where a claim is made: by a lane's producer, or in a batch write (with nothing to write).
#[derive(Clone, Copy)]
enum ClaimedBy {
    Producer,
    Write,
}

async fn claim_by(
    q: &dyn Queue,
    by: ClaimedBy,
    provider: &str,
    claim: Claim<'_>,
) -> Vec<lanes::model::Execution> {
    match by {
        ClaimedBy::Producer => q.claim(provider, claim).await.unwrap(),
        ClaimedBy::Write => {
            let (written, mut claimed) = q
                .finish_and_claim("w", &[], &[(provider, claim)])
                .await
                .unwrap();
            assert!(written.is_empty());
            claimed.remove(0).expect("no other worker holds a lock")
        }
    }
}

/// A budgeted claim takes no more than the minute's requests and tokens allow, reserves
/// what it took, and a settlement gives back the tokens an attempt did not use.
async fn budgets(q: Arc<dyn Queue>) {
    budgets_by(q, ClaimedBy::Producer).await;
}

/// [`budgets`], with every budgeted claim made in a batch write: the same rule.
async fn budgets_in_the_write(q: Arc<dyn Queue>) {
    budgets_by(q, ClaimedBy::Write).await;
}

async fn budgets_by(q: Arc<dyn Queue>, by: ClaimedBy) {
    let q = q.as_ref();
    use lanes::store::Budget;
    let with_max = |max_tokens: u32| NewExecution {
        tenant: None,
        cache: None,
        input: ChatInput {
            max_tokens: Some(max_tokens),
            ..ChatInput::prompt("12345678")
        },
        ..new("b", 0)
    };
    for _ in 0..10 {
        q.submit(&with_max(100)).await.unwrap();
    }
    let budgeted = |budget| Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        budget: Some(budget),
        spend: None,
        ..claim("w", 10, 100)
    };
    // Four requests a minute: four, then none.
    let rpm = Budget {
        rpm: Some(4),
        tpm: None,
    };
    let first = claim_by(q, by, "b", budgeted(rpm)).await;
    assert_eq!(first.len(), 4);
    assert!(claim_by(q, by, "b", budgeted(rpm)).await.is_empty());
    // Room frees when the oldest reservation leaves the minute.
    let frees = q.budget_frees_in("b").await.unwrap().unwrap();
    assert!((55_000..=60_000).contains(&frees), "{frees}");
    assert_eq!(q.budget_frees_in("other").await.unwrap(), None);
    // Each reservation is 100 + 8 / 4 = 102 tokens: 350 more tokens hold 3, not 4.
    let tpm = Budget {
        rpm: None,
        tpm: Some(4 * 102 + 350),
    };
    let second = claim_by(q, by, "b", budgeted(tpm)).await;
    assert_eq!(second.len(), 3);
    assert_eq!(q.budget_usage().await.unwrap()["b"], (7, 7 * 102));
    // Settling the first four with what they used (10 each) frees room for more.
    for e in &first {
        q.settle_budget(e.id, 10).await.unwrap();
    }
    assert_eq!(q.budget_usage().await.unwrap()["b"], (7, 4 * 10 + 3 * 102));
    let third = claim_by(q, by, "b", budgeted(tpm)).await;
    assert_eq!(third.len(), 3, "(758 - 346) / 102 = 4, but only 3 are left");
    // Without a budget, a claim ignores the ledger.
    assert!(claim_by(q, by, "b", claim("w", 10, 100)).await.is_empty());
}
contract!(budget_contract, budgets);
contract!(budget_in_the_write, budgets_in_the_write);

/// The requests and tokens each provider's budgeted claims read (`budget_used`, kept by the
/// ledger's triggers) match a recount of the ledger after claims by a producer and in a
/// write, settlements, and the deletion of reservations past the window.
async fn budget_used_matches_a_recount(q: Arc<dyn Queue>, url: &str) {
    use lanes::store::Budget;
    async fn rows(url: &str, sql: &str) -> Vec<(String, i64, i64)> {
        if url.starts_with("postgres") {
            let db = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&db).await.unwrap()
        } else {
            let db = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&db).await.unwrap()
        }
    }
    async fn check(url: &str) {
        let kept = rows(
            url,
            "SELECT provider, requests, tokens FROM budget_used
              WHERE requests <> 0 OR tokens <> 0 ORDER BY provider",
        )
        .await;
        let recount = rows(
            url,
            "SELECT provider, COUNT(*), CAST(SUM(tokens) AS BIGINT) FROM budget_ledger
              GROUP BY provider ORDER BY provider",
        )
        .await;
        assert_eq!(kept, recount);
    }
    for provider in ["b", "c"] {
        for _ in 0..6 {
            q.submit(&new(provider, 0)).await.unwrap();
        }
    }
    let budgeted = |max| Claim {
        budget: Some(Budget {
            rpm: Some(100),
            tpm: Some(100_000),
        }),
        ..claim("w", max, 10)
    };
    let first = q.claim("b", budgeted(2)).await.unwrap();
    q.claim("c", budgeted(1)).await.unwrap();
    check(url).await;
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let batch: Vec<_> = first.iter().map(|e| (e.id, &done)).collect();
    q.finish_and_claim("w", &batch, &[("b", budgeted(3)), ("c", budgeted(2))])
        .await
        .unwrap();
    check(url).await;
    q.settle_budgets(&[(first[0].id, 7), (first[1].id, 1_000)])
        .await
        .unwrap();
    check(url).await;
    // The oldest two reservations pass out of the window: the next claim deletes them.
    rows(
        url,
        "UPDATE budget_ledger SET at = at - 120000
          WHERE execution_id IN (SELECT execution_id FROM budget_ledger
                                  ORDER BY execution_id LIMIT 2)
         RETURNING provider, execution_id, tokens",
    )
    .await;
    q.claim("b", budgeted(1)).await.unwrap();
    q.claim("c", budgeted(1)).await.unwrap();
    check(url).await;
    assert_eq!(q.budget_usage().await.unwrap()["b"].0, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_budget_used_matches_a_recount() {
    let env = TestEnv::new();
    budget_used_matches_a_recount(env.any_queue().await, &env.config.database_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_budget_used_matches_a_recount() {
    let Some((env, schema)) = TestEnv::postgres().await else {
        return;
    };
    budget_used_matches_a_recount(env.any_queue().await, &schema.url).await;
}

/// A batch write that refills a budgeted lane and an unbudgeted one: both claims are made
/// in it, each gets its own rows back in the claims' order, and only the budgeted one
/// reserves, within its budget, counting what the producer reserved before.
async fn budgeted_and_plain_refills(q: Arc<dyn Queue>) {
    use lanes::store::Budget;
    for provider in ["a", "b", "c"] {
        for _ in 0..4 {
            q.submit(&new(provider, 0)).await.unwrap();
        }
    }
    let budget = Budget {
        rpm: Some(3),
        tpm: None,
    };
    let budgeted = |max| Claim {
        budget: Some(budget),
        ..claim("w", max, 10)
    };
    let running = q.claim("a", claim("w", 2, 10)).await.unwrap();
    assert_eq!(q.claim("b", budgeted(1)).await.unwrap().len(), 1);
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let batch: Vec<_> = running.iter().map(|e| (e.id, &done)).collect();
    let claims = [
        ("c", claim("w", 3, 10)),
        ("b", budgeted(4)),
        ("a", claim("w", 1, 10)),
    ];
    let (written, claimed) = q.finish_and_claim("w", &batch, &claims).await.unwrap();
    assert_eq!(written, vec![true, true]);
    let providers: Vec<Vec<&str>> = claimed
        .iter()
        .map(|c| {
            c.as_ref()
                .expect("made")
                .iter()
                .map(|e| e.provider.as_str())
                .collect()
        })
        .collect();
    assert_eq!(
        providers,
        vec![vec!["c"; 3], vec!["b"; 2], vec!["a"]],
        "3 requests a minute, one of them reserved before the write"
    );
    assert_eq!(q.budget_usage().await.unwrap()["b"].0, 3);
    assert!(!q.budget_usage().await.unwrap().contains_key("c"));
    for e in claimed.iter().flatten().flatten() {
        assert_eq!(
            q.get(e.id).await.unwrap().unwrap().status,
            Status::Running,
            "{e:?}"
        );
    }
}
contract!(budgeted_and_plain_refill, budgeted_and_plain_refills);

/// SQLite: the readiness check asks the claims' own connection too, so a daemon whose claims
/// cannot get it is not reported ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ping_checks_the_write_connection() {
    let env = TestEnv::new();
    let q = env.queue().await;
    q.ping().await.expect("ready");
    let held = q.writer().acquire().await.unwrap();
    let ping = tokio::spawn({
        let q = q.clone();
        async move { q.ping().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ping.is_finished(),
        "the check waits for the write connection"
    );
    drop(held);
    ping.await
        .unwrap()
        .expect("ready once the connection is free");
}

/// SQLite: the log is checkpointed by the queue's task beside the writes, not by the commit
/// that takes it past 1,000 pages: the rows reach the database file, and the log restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_log_is_checkpointed_beside_the_writes() {
    let env = TestEnv::new();
    let q = env.queue().await;
    let file = env.dir.path().join("lanes.db");
    let before = std::fs::metadata(&file).unwrap().len();
    // About 3 pages a row, a transaction each: some 3,000 pages of log.
    let row = NewExecution {
        input: lanes::model::ChatInput::prompt("x".repeat(8 * 1024)),
        ..job("p", serde_json::Value::Null)
    };
    for _ in 0..1000 {
        q.submit(&row).await.unwrap();
    }
    let wal = env.dir.path().join("lanes.db-wal");
    let start = std::time::Instant::now();
    while q.checkpoints_made() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no checkpoint was made: log {} bytes",
            std::fs::metadata(&wal).unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = std::fs::metadata(&file).unwrap().len();
    assert!(
        after > before + 2 * 1024 * 1024,
        "the rows reached the file: {before} -> {after} bytes"
    );
    // The log restarts at the next write once it was copied whole: it does not keep growing.
    let grown = std::fs::metadata(&wal).unwrap().len();
    for _ in 0..1000 {
        q.submit(&row).await.unwrap();
    }
    let again = std::fs::metadata(&wal).unwrap().len();
    assert!(
        again < grown * 2,
        "the log was reused: {grown} -> {again} bytes"
    );
}

/// SQLite: a claim that meets another connection's write waits for it (lanes' busy
/// handler), however long it holds the lock, and then claims as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_claim_waits_out_another_connections_write() {
    let env = TestEnv::new();
    let q = env.queue().await;
    q.submit(&new("a", 0)).await.unwrap();
    let mut holder = q.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    sqlx::query("UPDATE executions SET priority = 7")
        .execute(&mut *holder)
        .await
        .unwrap();
    let claim_task = tokio::spawn({
        let q = q.clone();
        async move { q.claim("a", claim("w1", 1, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !claim_task.is_finished(),
        "the claim waits for the write lock"
    );
    sqlx::query("COMMIT").execute(&mut *holder).await.unwrap();
    let claimed = claim_task
        .await
        .unwrap()
        .expect("claimed once the lock is free");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].priority, 7, "the claim ran after the write");
}

/// Spoils row `id`'s stored history behind the queue's back, as another writer might.
async fn spoil_history(url: &str, id: i64) {
    let sql = format!("UPDATE executions SET history = 'not json' WHERE id = {id}");
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// A claimed row whose stored history cannot be read is failed in place, with an error
/// that says so, and its history cleared so that it reads again; the rows claimed with it
/// run. Before, it failed the whole claim, and every row taken with it stayed `running`
/// until recovery claimed them again with it. Checked for a producer's claim, a budgeted
/// one, and (where the store has one) the refill of a batch write.
async fn an_unreadable_claimed_row_fails_alone(env: &TestEnv) {
    let q = env.any_queue().await;
    let url = &env.config.database_url;
    let failed_as_unreadable = |id| {
        let q = q.clone();
        async move {
            let e = q.get(id).await.unwrap().expect("the row reads again");
            assert_eq!(e.status, Status::Failed, "{e:?}");
            assert_eq!(
                e.error_kind.as_deref(),
                Some(ErrorKind::Other.as_str()),
                "{e:?}"
            );
            let error = e.error.unwrap_or_default();
            assert!(error.contains("could not be read"), "{error}");
            assert!(e.history.is_empty() && e.owner.is_none(), "{:?}", e.history);
        }
    };
    // A producer's claim.
    let ids = q
        .submit_many(&[new("a", 0), new("a", 0), new("a", 0)])
        .await
        .unwrap();
    spoil_history(url, ids[1]).await;
    let got: Vec<i64> = q
        .claim("a", claim("w", 3, 3))
        .await
        .expect("the claim stands")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, vec![ids[0], ids[2]]);
    failed_as_unreadable(ids[1]).await;
    // A budgeted claim reserves only what it runs.
    let ids = q.submit_many(&[new("b", 0), new("b", 0)]).await.unwrap();
    spoil_history(url, ids[0]).await;
    let budgeted = Claim {
        tenants: &lanes::store::ROUND_ROBIN,
        budget: Some(lanes::store::Budget {
            rpm: Some(10),
            tpm: None,
        }),
        ..claim("w", 2, 2)
    };
    let got = q.claim("b", budgeted).await.expect("the claim stands");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[1]]);
    failed_as_unreadable(ids[0]).await;
    assert_eq!(q.budget_usage().await.unwrap()["b"].0, 1);
    // A batch write's refill: the write and the good row's claim stand.
    let ids = q
        .submit_many(&[new("c", 0), new("c", 0), new("c", 0)])
        .await
        .unwrap();
    assert_eq!(q.claim("c", claim("w", 1, 3)).await.unwrap()[0].id, ids[0]);
    spoil_history(url, ids[1]).await;
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "ok"})).unwrap());
    let (written, claimed) = q
        .finish_and_claim("w", &[(ids[0], &done)], &[("c", claim("w", 2, 3))])
        .await
        .expect("the write stands");
    assert_eq!(written, vec![true]);
    if let Some(got) = refilled_ids(q.as_ref(), &claimed) {
        assert_eq!(got, vec![vec![ids[2]]]);
        failed_as_unreadable(ids[1]).await;
    }
    // Nothing is left `running` but the rows handed out.
    let counts = q.counts().await.unwrap();
    let running: u64 = counts.values().map(|c| c.running).sum();
    let handed_out = 2 + 1 + u64::from(q.refills_with_finish() > 0);
    assert_eq!(running, handed_out, "{counts:?}");
}

mod unreadable_claimed_row {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        an_unreadable_claimed_row_fails_alone(&TestEnv::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some((env, _schema)) = TestEnv::postgres().await else {
            return;
        };
        an_unreadable_claimed_row_fails_alone(&env).await;
    }
}

/// The claim cap is written once per SQL dialect (SQLite's `claim_cap`, PostgreSQL's
/// `lanes_claim`) beside its Rust twin, `limits::claim_cap`, the rule's owner: for each
/// policy state and running count, a claim takes exactly the room the Rust rule leaves.
async fn claim_caps_match_their_rust_twin(q: Arc<dyn Queue>) {
    use lanes::store::StateChange;
    let reason = || "test".to_string();
    let cases: Vec<(&str, Option<StateChange>, u32)> = vec![
        ("none", None, 0),
        ("none-busy", None, 3),
        (
            "paused",
            Some(StateChange::Pause {
                for_ms: 60_000,
                reason: reason(),
            }),
            0,
        ),
        (
            "probing",
            Some(StateChange::Open {
                for_ms: 0,
                reason: reason(),
            }),
            0,
        ),
        (
            "probing-busy",
            Some(StateChange::Open {
                for_ms: 0,
                reason: reason(),
            }),
            1,
        ),
        (
            "cooling",
            Some(StateChange::Open {
                for_ms: 60_000,
                reason: reason(),
            }),
            0,
        ),
        ("adaptive", Some(StateChange::Adaptive(Some(2))), 0),
        ("adaptive-busy", Some(StateChange::Adaptive(Some(2))), 3),
        ("adaptive-above", Some(StateChange::Adaptive(Some(8))), 1),
    ];
    const LIMIT: u32 = 5;
    for (provider, change, running) in cases {
        q.submit_many(&(0..10).map(|_| new(provider, 0)).collect::<Vec<_>>())
            .await
            .unwrap();
        if running > 0 {
            let got = q.claim(provider, claim("w", running, LIMIT)).await.unwrap();
            assert_eq!(got.len(), usize::try_from(running).unwrap());
        }
        if let Some(change) = &change {
            q.change_state(provider, change).await.unwrap();
        }
        let (now, states) = q.provider_states().await.unwrap();
        let cap = lanes::limits::claim_cap(LIMIT, states.get(provider), now);
        let got = q.claim(provider, claim("w", 10, LIMIT)).await.unwrap();
        assert_eq!(
            got.len(),
            usize::try_from(cap.saturating_sub(running)).unwrap(),
            "{provider}: {:?} with {running} running",
            states.get(provider)
        );
    }
}

contract!(claim_cap_twins, claim_caps_match_their_rust_twin);

/// Routed work moves off a member in claim order, in shares, in one statement; a running
/// row and another route's rows stay; the open counts read pending and running alone.
async fn routed_work_moves_in_shares_and_running_rows_stay(q: Arc<dyn Queue>) {
    let routed = |route: &str| NewExecution {
        tenant: None,
        cache: None,
        route: Some(route.into()),
        ..new("a", 0)
    };
    let ids = q
        .submit_many(&[
            routed("r"),
            routed("r"),
            routed("r"),
            routed("r"),
            routed("r"),
            routed("other"),
        ])
        .await
        .unwrap();
    // The first in claim order runs on `a`, and stays there.
    assert_eq!(q.claim("a", claim("w", 1, 5)).await.unwrap()[0].id, ids[0]);
    let pending = q.pending_routed("a").await.unwrap();
    assert_eq!(pending.get("r"), Some(&4));
    assert_eq!(pending.get("other"), Some(&1));
    let open = q.open_counts(&["a".to_string()]).await.unwrap();
    assert_eq!((open["a"].running, open["a"].pending), (1, 5));
    let moved = q
        .move_routed("a", "r", &[("b".to_string(), 2), ("c".to_string(), 5)])
        .await
        .unwrap();
    assert_eq!(moved, 4);
    let on = |id: i64| {
        let q = q.clone();
        async move { q.get(id).await.unwrap().unwrap().provider }
    };
    assert_eq!(on(ids[0]).await, "a", "running: stays");
    assert_eq!(
        (on(ids[1]).await, on(ids[2]).await),
        ("b".into(), "b".into())
    );
    assert_eq!(
        (on(ids[3]).await, on(ids[4]).await),
        ("c".into(), "c".into())
    );
    assert_eq!(on(ids[5]).await, "a", "another route's row stays");
    // Nothing left of `r` on `a`: a second move finds nothing.
    let again = q
        .move_routed("a", "r", &[("b".to_string(), 9)])
        .await
        .unwrap();
    assert_eq!(again, 0);
}

contract!(
    routed_moves,
    routed_work_moves_in_shares_and_running_rows_stay
);

/// Tenants share a lane: each dialect's claim takes exactly the rows its Rust twin
/// (`limits::fair_pick`) picks, over random queues (tenants with and without a name,
/// priorities, rows waiting for a retry, tenants with rows running, weights and tenant
/// limits), claim after claim. The last rounds have only named tenants, many of them, and
/// no retries, as a lane of many tenants mostly has: SQLite's claim then takes the first
/// tenants' heads without merging their queues, when those tie in class and running.
async fn fair_claims_match_their_rust_twin(q: Arc<dyn Queue>) {
    use lanes::limits::{PendingRow, fair_pick};
    use lanes::store::Tenants;
    use std::collections::BTreeMap;
    let mut rand = lcg(0x5eed_1234_abcd_0001);
    let names = ["", "a", "b", "c", "d", "e", "f", "g"];
    let many: Vec<String> = (0..24).map(|i| format!("t{i}")).collect();
    for round in 0..56 {
        let plain = round >= 40;
        let provider = format!("fair{}", round / 8);
        let limit = 60;
        // New rows: a random tenant and priority each.
        let batch: Vec<NewExecution> = (0..20 + rand(30))
            .map(|_| {
                let t = if plain {
                    many[usize::try_from(rand(24)).unwrap()].as_str()
                } else {
                    names[usize::try_from(rand(8)).unwrap()]
                };
                NewExecution {
                    tenant: (!t.is_empty()).then(|| t.to_string()),
                    ..new(&provider, i32::try_from(rand(3)).unwrap())
                }
            })
            .collect();
        q.submit_many(&batch).await.unwrap();
        // Some running rows end: completed, or back to pending for a retry not yet due.
        let running: Vec<_> = q
            .list(Some(&provider))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.status == Status::Running)
            .collect();
        let done = Finish::Completed(Output::of(&serde_json::json!({"text": "x"})).unwrap());
        let later = retry_in(600_000);
        let mut ends = Vec::new();
        for e in &running {
            if rand(3) == 0 {
                ends.push((e.id, if plain || rand(2) == 0 { &done } else { &later }));
            }
        }
        q.finish_many("w", &ends).await.unwrap();
        // What the twin picks from the queue as it stands.
        let rows = q.list(Some(&provider)).await.unwrap();
        let now = now_ms();
        let mut running: BTreeMap<String, u32> = BTreeMap::new();
        let mut pending = Vec::new();
        for e in &rows {
            let tenant = e.tenant.clone().unwrap_or_default();
            match e.status {
                Status::Running => *running.entry(tenant).or_default() += 1,
                Status::Pending => pending.push(PendingRow {
                    id: e.id,
                    tenant,
                    resume: e.resume,
                    priority: e.priority,
                    due: e.not_before <= now,
                }),
                _ => {}
            }
        }
        let weighted = !plain && round % 2 == 1;
        let weights: BTreeMap<String, f64> = if weighted {
            [("a".to_string(), 3.0), ("b".to_string(), 0.5)].into()
        } else {
            BTreeMap::new()
        };
        let tenant_limit = (round % 3 == 2).then_some(4);
        let rule = Tenants {
            limit: tenant_limit,
            weights: weighted.then(|| Arc::from(r#"{"a": 3.0, "b": 0.5}"#)),
        };
        // Small claims as often as large: a claim of `max` reads only its first `max` tenants.
        let max = u32::try_from(1 + rand(if !plain && round % 2 == 0 { 40 } else { 5 })).unwrap();
        let total: u32 = running.values().sum();
        let take = usize::try_from(max.min(limit - total.min(limit))).unwrap();
        let mut want = fair_pick(&pending, &running, &weights, tenant_limit, take);
        let got = q
            .claim(
                &provider,
                Claim {
                    tenants: &rule,
                    ..claim("w", max, limit)
                },
            )
            .await
            .unwrap();
        let mut got: Vec<i64> = got.iter().map(|e| e.id).collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            got, want,
            "round {round}: claim of {max} (limit {limit}, {total} running {running:?}, \
             tenant limit {tenant_limit:?}, weighted {weighted})"
        );
    }
}
contract!(fair_claim_twins, fair_claims_match_their_rust_twin);

/// Claims across tenants where the first tenants' heads are not the claim (see SQLite's
/// `claim_parts`, which takes those heads without merging when the tenants tie): a second
/// row of a higher class, or of a tenant with fewer running, comes before another tenant's
/// head; and a claim takes no more than the room under the limit, however many it asks for.
async fn a_claim_across_tenants_takes_second_rows_in_their_turn(q: Arc<dyn Queue>) {
    use lanes::store::ROUND_ROBIN;
    let of = |provider: &str, tenant: &str, priority: i32| NewExecution {
        tenant: Some(tenant.to_string()),
        ..new(provider, priority)
    };
    let take = |provider: &'static str, max: u32, limit: u32| {
        let q = q.clone();
        async move {
            let claimed = q
                .claim(
                    provider,
                    Claim {
                        tenants: &ROUND_ROBIN,
                        ..claim("w", max, limit)
                    },
                )
                .await
                .unwrap();
            let mut ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
            ids.sort_unstable();
            ids
        }
    };
    // A higher class: both of a's rows come before b's.
    let a = q
        .submit_many(&[
            of("ties-a", "a", 2),
            of("ties-a", "a", 2),
            of("ties-a", "b", 1),
        ])
        .await
        .unwrap();
    assert_eq!(take("ties-a", 2, 60).await, [a[0], a[1]]);
    // Fewer running: with b at 2 running, a's second row (share 1) comes before b's third.
    let b = q
        .submit_many(&[
            of("ties-b", "b", 0),
            of("ties-b", "b", 0),
            of("ties-b", "b", 0),
        ])
        .await
        .unwrap();
    assert_eq!(take("ties-b", 2, 60).await, [b[0], b[1]]);
    let a = q
        .submit_many(&[of("ties-b", "a", 0), of("ties-b", "a", 0)])
        .await
        .unwrap();
    assert_eq!(take("ties-b", 2, 60).await, [a[0], a[1]]);
    // The room: d has one of the limit's 3 running, so a claim of 3 takes 2, the heads of
    // the two tenants first in order.
    let d = q
        .submit_many(&[of("ties-c", "d", 0), of("ties-c", "d", 0)])
        .await
        .unwrap();
    assert_eq!(take("ties-c", 1, 3).await, [d[0]]);
    let abc = q
        .submit_many(&[
            of("ties-c", "a", 0),
            of("ties-c", "b", 0),
            of("ties-c", "c", 0),
        ])
        .await
        .unwrap();
    assert_eq!(take("ties-c", 3, 3).await, [abc[0], abc[1]]);
}
contract!(
    tenant_second_rows,
    a_claim_across_tenants_takes_second_rows_in_their_turn
);

/// The producer's `next_due` reads the delayed rows' index, not every pending row (2.9 s a
/// call at a million pending, with the lane's claims held up behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_next_due_reads_only_the_delayed_rows() {
    let steps = sqlite_plan(lanes::store::sqlite::NEXT_DUE_SQL).await;
    assert_eq!(
        steps,
        ["SEARCH executions USING INDEX executions_delayed (provider=? AND not_before>?)"]
    );
}

/// The steps of SQLite's plan for `sql` in a migrated database.
async fn sqlite_plan(sql: &str) -> Vec<String> {
    let env = TestEnv::new();
    let _queue = env.any_queue().await;
    let db = sqlx::SqlitePool::connect(&env.config.database_url)
        .await
        .unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
        .fetch_all(&db)
        .await
        .unwrap();
    plan.into_iter().map(|p| p.3).collect()
}

/// When a claim takes the first tenants' heads (see `claim_parts`), it looks each head up
/// by id. As a plain join SQLite read the lane's pending rows and looked each up among the
/// heads instead: the benchmark's deep queue (a million pending) ran for more than ten
/// minutes instead of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_claim_of_heads_looks_each_up_by_id() {
    let plan = sqlite_plan(lanes::store::sqlite::claim_statement()).await;
    let heads: Vec<&String> = plan.iter().filter(|step| step.contains(" hd ")).collect();
    assert_eq!(
        heads,
        ["SEARCH hd USING INTEGER PRIMARY KEY (rowid=?)"],
        "{plan:#?}"
    );
}

/// SQLite's `tenant_heads` (kept by triggers, read by the fair claim instead of walking the
/// tenants) equals a recount from `executions` after every kind of write: submissions,
/// claims, ends, retries (not yet due, and moved to another provider), requeues, cancels of
/// pending and running rows, aging, route moves and recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tenant_heads_match_a_recount() {
    type Head = (
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let env = TestEnv::new();
    let q = env.any_queue().await;
    let db = sqlx::SqlitePool::connect(&env.config.database_url)
        .await
        .unwrap();
    let mut rand = lcg(0x7e4a_17c0_0de5_0002);
    let names = ["", "a", "b", "c", "d", "e"];
    let done = Finish::Completed(Output::of(&serde_json::json!({"text": "x"})).unwrap());
    let (later, now) = (retry_in(600_000), retry_in(0));
    let moved = Finish::Retry {
        error: "moved".into(),
        kind: ErrorKind::Unavailable,
        delay_ms: 0,
        to: Some("heads-b".into()),
    };
    for round in 0..30_u64 {
        let provider = if rand(4) == 0 { "heads-b" } else { "heads-a" };
        let batch: Vec<NewExecution> = (0..1 + rand(12))
            .map(|_| {
                let t = names[usize::try_from(rand(6)).unwrap()];
                NewExecution {
                    tenant: (!t.is_empty()).then(|| t.to_string()),
                    route: (rand(3) == 0).then(|| "r".to_string()),
                    ..new(provider, i32::try_from(rand(3)).unwrap())
                }
            })
            .collect();
        q.submit_many(&batch).await.unwrap();
        let claimed = q
            .claim(
                provider,
                claim("w", u32::try_from(1 + rand(8)).unwrap(), 20),
            )
            .await
            .unwrap();
        let mut ends = Vec::new();
        for e in &claimed {
            match rand(7) {
                0 => ends.push((e.id, &done)),
                1 => ends.push((e.id, &later)),
                2 => ends.push((e.id, &now)),
                3 => ends.push((e.id, &moved)),
                4 => ends.push((e.id, &Finish::Requeue)),
                5 => {
                    q.cancel(e.id).await.unwrap();
                }
                _ => {}
            }
        }
        q.finish_many("w", &ends).await.unwrap();
        let pending: Vec<_> = q
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.status == Status::Pending)
            .collect();
        if let Some(e) = pending.get(usize::try_from(rand(8)).unwrap()) {
            q.cancel(e.id).await.unwrap();
        }
        if round % 5 == 4 {
            q.age("heads-a", 1, 3).await.unwrap();
            q.move_routed("heads-a", "r", &[("heads-b".to_string(), 2)])
                .await
                .unwrap();
        }
        if round % 10 == 9 {
            q.recover_interrupted().await.unwrap();
        }
        let kept: Vec<Head> = sqlx::query_as(
            "SELECT provider, tenant, running, resume, priority, head, nb FROM tenant_heads
              WHERE running > 0 OR head IS NOT NULL ORDER BY provider, tenant",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        let counted: Vec<Head> = sqlx::query_as(
            "SELECT g.provider, g.tenant, g.running, h.resume, h.priority, h.id, h.not_before
               FROM (SELECT provider, tenant, SUM(status = 'running') AS running
                       FROM executions
                      WHERE tenant <> '' AND status IN ('pending', 'running')
                      GROUP BY provider, tenant) g
               LEFT JOIN executions h ON h.id = (
                 SELECT id FROM executions
                  WHERE provider = g.provider AND tenant = g.tenant AND status = 'pending'
                  ORDER BY resume DESC, priority DESC, id LIMIT 1)
              ORDER BY g.provider, g.tenant",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert_eq!(kept, counted, "round {round}");
    }
}

/// The response cache in either dialect: a waiter is never claimed and is completed from its
/// leader's answer; a later submission is a hit; a failed or cancelled leader's waiters
/// become due; the cache clears.
async fn the_response_cache_answers_waits_and_releases(q: Arc<dyn Queue>) {
    use lanes::model::CacheRequest;
    use lanes::store::CacheEnd;
    let cached = |key: &str| NewExecution {
        cache: Some(CacheRequest {
            key: key.to_string(),
            ttl_ms: 60_000,
        }),
        ..new("c", 0)
    };
    let end = |id, key: &'static str, output: Option<&'static str>| CacheEnd {
        id,
        provider: "c",
        key,
        output,
        ttl_ms: 60_000,
    };
    let leader = q.submit(&cached("k-a")).await.unwrap();
    let waiter = q.submit(&cached("k-a")).await.unwrap();
    let got = q.claim("c", claim("w", 10, 10)).await.unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [leader]);
    assert_eq!(got[0].cache_key.as_deref(), Some("k-a"));
    let answer = r#"{"text":"x","model":"m","usage":{"input_tokens":1,"output_tokens":1},"finish_reason":"stop"}"#;
    let done = Finish::Completed(
        Output::of(&serde_json::from_str::<serde_json::Value>(answer).unwrap()).unwrap(),
    );
    q.finish_many("w", &[(leader, &done)]).await.unwrap();
    let settled = q
        .settle_cache(&[end(leader, "k-a", Some(answer))])
        .await
        .unwrap();
    assert_eq!(settled.completed, [(waiter, "c".to_string())]);
    let w = q.get(waiter).await.unwrap().unwrap();
    assert_eq!(w.status, Status::Completed);
    assert_eq!(w.output.as_ref().unwrap()["cached"], true);
    assert_eq!(w.history[0].outcome, "cached");
    // A hit, at once.
    let hit = q.submit(&cached("k-a")).await.unwrap();
    let h = q.get(hit).await.unwrap().unwrap();
    assert_eq!((h.status, h.attempts), (Status::Completed, 0));
    // A failed leader's waiter becomes due.
    let leader = q.submit(&cached("k-b")).await.unwrap();
    let waiter = q.submit(&cached("k-b")).await.unwrap();
    assert_eq!(
        q.claim("c", claim("w", 10, 10)).await.unwrap()[0].id,
        leader
    );
    let settled = q.settle_cache(&[end(leader, "k-b", None)]).await.unwrap();
    assert!(settled.released.contains("c"));
    assert_eq!(
        q.claim("c", claim("w", 10, 10)).await.unwrap()[0].id,
        waiter
    );
    // A cancelled pending leader's too.
    let leader = q.submit(&cached("k-c")).await.unwrap();
    let waiter = q.submit(&cached("k-c")).await.unwrap();
    q.cancel(leader).await.unwrap();
    assert_eq!(
        q.claim("c", claim("w", 10, 10)).await.unwrap()[0].id,
        waiter
    );
    // A leader that ends without settling (its worker died, or a running one was
    // cancelled): the upkeep lets its waiter go.
    let leader = q.submit(&cached("k-d")).await.unwrap();
    let waiter = q.submit(&cached("k-d")).await.unwrap();
    assert_eq!(
        q.claim("c", claim("w", 10, 10)).await.unwrap()[0].id,
        leader
    );
    q.cancel(leader).await.unwrap();
    assert!(q.claim("c", claim("w", 10, 10)).await.unwrap().is_empty());
    assert!(q.sweep_cache(&[]).await.unwrap().contains("c"));
    assert_eq!(
        q.claim("c", claim("w", 10, 10)).await.unwrap()[0].id,
        waiter
    );
    assert_eq!(q.cache_entries().await.unwrap().get("c"), Some(&1));
    assert_eq!(q.clear_cache(Some("c")).await.unwrap(), 1);
    assert!(q.cache_entries().await.unwrap().is_empty());
}
contract!(
    response_cache,
    the_response_cache_answers_waits_and_releases
);

/// Daily spend caps: a claim reserves each row's estimate and stops at the provider's cap,
/// leaves out the tenants at theirs, an attempt's end settles with its cost, each notice
/// comes once, and the next day starts afresh.
async fn spend_caps_reserve_settle_and_notify_once(q: Arc<dyn Queue>) {
    use lanes::store::{Spend, SpendEnd, SpendScope};
    let row = |tenant: Option<&str>| NewExecution {
        tenant: tenant.map(str::to_string),
        cache: None,
        input: ChatInput {
            max_tokens: Some(1000),
            ..ChatInput::prompt("12345678")
        },
        ..new("s", 0)
    };
    for _ in 0..10 {
        q.submit(&row(None)).await.unwrap();
    }
    // 1000 output tokens at $200 per million: each row reserves $0.20.
    let price = lanes::costs::Price {
        input: 0.0,
        output: 200.0,
        cache_read: None,
        cache_write: None,
        batch_discount: None,
    };
    let day = 20_000;
    let provider_cap = Spend {
        day,
        provider_usd: Some(1.0),
        tenants: Arc::new(Default::default()),
        price: Some(price),
    };
    let capped = |spend| Claim {
        spend: Some(spend),
        ..claim("w", 10, 100)
    };
    // $0, 0.2, 0.4, 0.6 and 0.8 are under the cap: five rows, the fifth reaching it.
    let first = q.claim("s", capped(&provider_cap)).await.unwrap();
    assert_eq!(first.len(), 5);
    assert!(
        q.claim("s", capped(&provider_cap))
            .await
            .unwrap()
            .is_empty()
    );
    let today = |rows: Vec<lanes::store::SpendRow>, scope, name: &str| {
        rows.into_iter()
            .find(|r| r.scope == scope && r.name == name)
            .map(|r| {
                (
                    (r.spent_usd * 1e6).round() / 1e6,
                    (r.reserved_usd * 1e6).round() / 1e6,
                )
            })
    };
    let rows = q.spend(day).await.unwrap();
    assert_eq!(
        today(rows.clone(), SpendScope::Provider, "s"),
        Some((0.0, 1.0))
    );
    assert_eq!(
        today(rows, SpendScope::Tenant, ""),
        None,
        "no cap, not counted"
    );
    // Each cost $0.10: $0.50 spent, nothing reserved, no notice.
    let end = |id, usd| SpendEnd {
        id,
        provider: "s",
        tenant: "",
        usd,
        caps: &provider_cap,
    };
    for e in &first {
        assert!(q.settle_spend(&[end(e.id, 0.1)]).await.unwrap().is_empty());
    }
    let rows = q.spend(day).await.unwrap();
    assert_eq!(today(rows, SpendScope::Provider, "s"), Some((0.5, 0.0)));
    // $0.5, 0.7 and 0.9 are under the cap: three more.
    let second = q.claim("s", capped(&provider_cap)).await.unwrap();
    assert_eq!(second.len(), 3);
    // Settled as one batch (as the completer does): $0.86 crosses 80%, one warning.
    let batch: Vec<SpendEnd> = second.iter().map(|e| end(e.id, 0.12)).collect();
    let notices = q.settle_spend(&batch).await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        (
            notices[0].scope,
            notices[0].name.as_str(),
            notices[0].reached
        ),
        (SpendScope::Provider, "s", false)
    );
    // A settle without a reservation (claimed before the caps were set) still counts:
    // $0.86 + 0.2 reaches the cap, told once.
    let reached = q.settle_spend(&[end(999_999, 0.2)]).await.unwrap();
    assert_eq!(reached.len(), 1);
    assert!(reached[0].reached);
    assert!(
        q.settle_spend(&[end(999_998, 0.2)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        q.claim("s", capped(&provider_cap))
            .await
            .unwrap()
            .is_empty()
    );
    // The next day starts afresh.
    let tomorrow = Spend {
        day: day + 1,
        ..provider_cap.clone()
    };
    let late = q.claim("s", capped(&tomorrow)).await.unwrap();
    assert_eq!(late.len(), 2);
    // A row that leaves `running` without a settle (its worker died) has its reservation
    // let go by the upkeep; claimed again, it reserves anew.
    let rows = q.spend(day + 1).await.unwrap();
    assert_eq!(today(rows, SpendScope::Provider, "s"), Some((0.0, 0.4)));
    assert_eq!(q.release_spend().await.unwrap(), 0, "both still run");
    q.finish_many("w", &[(late[0].id, &Finish::Requeue)])
        .await
        .unwrap();
    assert_eq!(q.release_spend().await.unwrap(), 1);
    let rows = q.spend(day + 1).await.unwrap();
    assert_eq!(today(rows, SpendScope::Provider, "s"), Some((0.0, 0.2)));
    let again = q.claim("s", capped(&tomorrow)).await.unwrap();
    assert_eq!(again.len(), 1);
    let rows = q.spend(day + 1).await.unwrap();
    assert_eq!(today(rows, SpendScope::Provider, "s"), Some((0.0, 0.4)));

    // A tenant's cap: its rows wait while the others' run, whatever the provider.
    for _ in 0..4 {
        q.submit(&NewExecution {
            provider: "t".into(),
            ..row(Some("a"))
        })
        .await
        .unwrap();
        q.submit(&NewExecution {
            provider: "t".into(),
            ..row(Some("b"))
        })
        .await
        .unwrap();
    }
    let tenant_cap = Spend {
        day,
        provider_usd: None,
        tenants: Arc::new([("a".to_string(), 0.5)].into_iter().collect()),
        price: Some(price),
    };
    let pair = q
        .claim(
            "t",
            Claim {
                max: 2,
                ..capped(&tenant_cap)
            },
        )
        .await
        .unwrap();
    assert_eq!(pair.len(), 2, "one of each tenant");
    let a = pair
        .iter()
        .find(|e| e.tenant.as_deref() == Some("a"))
        .unwrap();
    let notices = q
        .settle_spend(&[SpendEnd {
            id: a.id,
            provider: "t",
            tenant: "a",
            usd: 0.6,
            caps: &tenant_cap,
        }])
        .await
        .unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].scope, notices[0].reached),
        (SpendScope::Tenant, true)
    );
    let rest = q.claim("t", capped(&tenant_cap)).await.unwrap();
    assert_eq!(rest.len(), 3, "b's other three, none of a's");
    assert!(rest.iter().all(|e| e.tenant.as_deref() == Some("b")));
    let next_day = Spend {
        day: day + 1,
        ..tenant_cap.clone()
    };
    let resumed = q.claim("t", capped(&next_day)).await.unwrap();
    assert_eq!(resumed.len(), 3);
    assert!(resumed.iter().all(|e| e.tenant.as_deref() == Some("a")));
}
contract!(spend_caps, spend_caps_reserve_settle_and_notify_once);

/// A provider's cap measures its room on the rows the claim takes (shared among tenants),
/// costliest first, not on the next rows in plain order.
async fn a_capped_claim_measures_the_rows_it_takes(q: Arc<dyn Queue>) {
    use lanes::store::{Spend, SpendScope};
    let row = |tenant: &str, max_tokens: u32| NewExecution {
        tenant: Some(tenant.to_string()),
        cache: None,
        input: ChatInput {
            max_tokens: Some(max_tokens),
            ..ChatInput::prompt("12345678")
        },
        ..new("f", 0)
    };
    // Tenant a's five cheap rows first, then b's five that reserve $0.20 each.
    for _ in 0..5 {
        q.submit(&row("a", 1)).await.unwrap();
    }
    for _ in 0..5 {
        q.submit(&row("b", 1000)).await.unwrap();
    }
    let caps = Spend {
        day: 7,
        provider_usd: Some(0.5),
        tenants: Arc::new(Default::default()),
        price: Some(lanes::costs::Price {
            input: 0.0,
            output: 200.0,
            cache_read: None,
            cache_write: None,
            batch_discount: None,
        }),
    };
    // The claim would take all ten; costliest first, b's third reaches the cap: three
    // rows, which the claim takes in its order (a, b, a). Measured on the next rows in
    // plain order (a's five, then b's), the room would have been eight, and the claim's
    // eight (four of b's) would have reserved $0.80.
    let claimed = q
        .claim(
            "f",
            Claim {
                spend: Some(&caps),
                ..claim("w", 10, 100)
            },
        )
        .await
        .unwrap();
    let mut tenants: Vec<&str> = claimed
        .iter()
        .map(|e| e.tenant.as_deref().unwrap())
        .collect();
    tenants.sort_unstable();
    assert_eq!(tenants, ["a", "a", "b"]);
    let reserved = q
        .spend(7)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.scope == SpendScope::Provider)
        .unwrap()
        .reserved_usd;
    assert!((reserved - 0.2).abs() < 1e-3, "{reserved}");
}
contract!(
    capped_claim_order,
    a_capped_claim_measures_the_rows_it_takes
);

/// The batch lane's storage: held rows stay out of the live claim and the counts of
/// running; a batch takes them (one model at a time, oldest first, within its caps); its
/// results are written once, and not over a row cancelled meanwhile; what a batch did not
/// answer goes back to the live lane; and the lease keeps a batch to one worker.
async fn batches_hold_send_and_answer_once(q: Arc<dyn Queue>) {
    use lanes::model::Defer;
    use lanes::store::batches::{BatchEnd, BatchUpdate, OpenCaps};
    let caps = |max_items, max_bytes| OpenCaps {
        max_items,
        max_bytes,
        max_open: 10,
        spend: None,
    };
    let held = |model: &str| NewExecution {
        input: ChatInput {
            model: Some(model.into()),
            ..ChatInput::prompt("hi")
        },
        defer: Defer {
            deferrable: true,
            deadline: None,
            hold: true,
        },
        ..new("p", 0)
    };
    let mut ids = q
        .submit_many(&[held("m1"), held("m1"), held("m2"), held("m1")])
        .await
        .unwrap();
    let live = q.submit(&new("p", 0)).await.unwrap();
    ids.push(q.submit(&held("m1")).await.unwrap());
    assert_eq!(
        q.get(ids[0]).await.unwrap().unwrap().status,
        Status::Batched
    );
    // The live claim takes only the live row.
    let claimed = q.claim("p", claim("w", 10, 10)).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [live]);
    let held_now = q.held("p").await.unwrap();
    assert_eq!(held_now.count, 5);
    assert_eq!(q.counts().await.unwrap()["p"].batched, 5);

    // At most 2 rows, of the oldest's model (m1).
    let b = q
        .open_batch("p", "tag-1", "w1", 60_000, caps(2, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b.items, b.model.as_deref(), b.state.as_str()),
        (2, Some("m1"), "open")
    );
    let rows = q.batch_rows(b.id, 0, 100).await.unwrap();
    assert_eq!(
        rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [ids[0], ids[1]]
    );
    // Paged.
    assert_eq!(q.batch_rows(b.id, ids[0], 100).await.unwrap().len(), 1);
    // A byte cap smaller than any row still takes the oldest one.
    let tiny = q
        .open_batch("p", "tag-2", "w1", 60_000, caps(100, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((tiny.items, tiny.model.as_deref()), (1, Some("m2")));
    assert_eq!(q.held("p").await.unwrap().count, 2);

    // The lease: another worker cannot drive it, or write to it, until the lease runs out.
    assert!(q.take_batches("w2", 60_000, 10).await.unwrap().is_empty());
    let update = BatchUpdate {
        state: Some("sent"),
        provider_batch_id: Some("pb-1".into()),
        submitted: true,
        sent: true,
        ..Default::default()
    };
    assert!(!q.update_batch(b.id, "w2", 60_000, &update).await.unwrap());
    assert!(q.update_batch(b.id, "w1", 60_000, &update).await.unwrap());
    let taken = q.take_batches("w1", 60_000, 10).await.unwrap();
    assert_eq!(taken.len(), 2);
    let b = q.batch(b.id).await.unwrap().unwrap();
    assert_eq!(
        (b.state.as_str(), b.provider_batch_id.as_deref(), b.sends),
        ("sent", Some("pb-1"), 1)
    );
    assert!(b.submitted_at.is_some());

    // One row is cancelled while in the batch: its result is dropped.
    q.cancel(ids[1]).await.unwrap();
    let end = |id, status: &'static str, attempt| BatchEnd {
        id,
        status,
        output: (status == "completed").then(|| r#"{"text":"ok"}"#.to_string()),
        error: (status != "completed").then(|| "expired".to_string()),
        kind: (status != "completed").then_some("unavailable"),
        attempt,
    };
    let ends = [
        end(ids[0], "completed", true),
        end(ids[1], "completed", true),
    ];
    let written = q.finish_batched(b.id, &ends).await.unwrap();
    let written: Vec<(i64, Status, i32)> = written
        .iter()
        .map(|w| (w.id, w.status, w.attempts))
        .collect();
    assert_eq!(written, [(ids[0], Status::Completed, 1)]);
    // Written once: the same results again write nothing.
    assert!(q.finish_batched(b.id, &ends).await.unwrap().is_empty());
    let done = q.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(done.output.unwrap()["text"], "ok");
    assert_eq!((done.batch_id, done.attempts), (Some(b.id), 1));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    // Its history is its one attempt, the batch's.
    let entries: Vec<(&str, Option<&str>, Option<i64>, i32)> = done
        .history
        .iter()
        .map(|h| (h.outcome.as_str(), h.worker.as_deref(), h.batch, h.attempt))
        .collect();
    assert_eq!(entries, [("completed", Some("batch"), Some(b.id), 1)]);
    assert_eq!(
        q.get(ids[1]).await.unwrap().unwrap().status,
        Status::Cancelled
    );

    // The other batch: its row expired there and goes live, without counting an attempt;
    // a row the results never named goes live too.
    let written = q
        .finish_batched(tiny.id, &[end(ids[2], "pending", false)])
        .await
        .unwrap();
    let written: Vec<(i64, Status, i32)> = written
        .iter()
        .map(|w| (w.id, w.status, w.attempts))
        .collect();
    assert_eq!(written, [(ids[2], Status::Pending, 0)]);
    // Its history says so: given back, not an attempt, by that batch.
    let back = q.get(ids[2]).await.unwrap().unwrap();
    let h = &back.history;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (
            h[0].outcome.as_str(),
            h[0].worker.as_deref(),
            h[0].batch,
            h[0].attempt
        ),
        ("returned", Some("batch"), Some(tiny.id), 1)
    );
    assert_eq!(h[0].error_kind.as_deref(), Some("unavailable"));
    // Only the batch's holder sends its rows live.
    assert_eq!(q.release_batch(tiny.id, "w2").await.unwrap(), 0);
    assert_eq!(q.release_batch(tiny.id, "w1").await.unwrap(), 0);
    // At most `max_open` open batches of a provider: two are open.
    q.submit(&held("m1")).await.unwrap();
    let capped = OpenCaps {
        max_open: 2,
        ..caps(10, 1 << 20)
    };
    assert!(
        q.open_batch("p", "tag-3", "w1", 60_000, capped)
            .await
            .unwrap()
            .is_none()
    );
    // A lease that ran out: the worker can no longer write, another takes it over.
    assert!(
        q.update_batch(b.id, "w1", -1, &BatchUpdate::default())
            .await
            .unwrap()
    );
    assert!(
        !q.update_batch(b.id, "w1", 60_000, &BatchUpdate::default())
            .await
            .unwrap()
    );
    let taken = q.take_batches("w2", 60_000, 10).await.unwrap();
    assert_eq!(taken.iter().map(|b| b.id).collect::<Vec<_>>(), [b.id]);
    let claimed = q.claim("p", claim("w", 10, 10)).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[2]]);

    // What still waits goes live when the lane has no batch any more; deadlines first.
    let mut soon = held("m1");
    soon.defer.deadline = Some(lanes::model::now_ms() + 1_000);
    let soon = q.submit(&soon).await.unwrap();
    assert_eq!(
        q.release_held("p", Some(lanes::model::now_ms() + 60_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.get(soon).await.unwrap().unwrap().status, Status::Pending);
    assert_eq!(q.release_held("p", None).await.unwrap(), 3);
    assert_eq!(q.held("p").await.unwrap().count, 0);
    assert_eq!(q.batches(10).await.unwrap().len(), 2);
}
contract!(batch_storage, batches_hold_send_and_answer_once);

/// A batch is a claim for the spend caps: it opens nothing while its provider's cap is
/// reached, leaves out the tenants at theirs, takes rows while the provider and each tenant
/// are under their caps (by estimates at the batch price), and its rows keep their
/// reservations while they are in it.
async fn batches_are_held_by_the_spend_caps(q: Arc<dyn Queue>) {
    use lanes::model::Defer;
    use lanes::store::batches::OpenCaps;
    use lanes::store::{Spend, SpendScope};
    let held = |tenant: &str| NewExecution {
        tenant: Some(tenant.to_string()),
        cache: None,
        input: ChatInput {
            max_tokens: Some(1000),
            ..ChatInput::prompt("")
        },
        defer: Defer {
            deferrable: true,
            deadline: None,
            hold: true,
        },
        ..new("p", 0)
    };
    let mut rows: Vec<NewExecution> = (0..5).map(|_| held("a")).collect();
    rows.extend((0..12).map(|_| held("b")));
    let ids = q.submit_many(&rows).await.unwrap();
    // Each row: 1,000 output tokens at $200/M, half price in a batch: $0.10.
    let caps = Spend {
        day: 9,
        provider_usd: Some(1.0),
        tenants: Arc::new([("a".to_string(), 0.3)].into_iter().collect()),
        price: Some(lanes::costs::Price {
            input: 0.0,
            output: 200.0,
            cache_read: None,
            cache_write: None,
            batch_discount: Some(0.5),
        }),
    };
    let open = |spend| OpenCaps {
        max_items: 100,
        max_bytes: 1 << 20,
        max_open: 10,
        spend,
    };
    let b = q
        .open_batch("p", "tag-s1", "w1", 60_000, open(Some(&caps)))
        .await
        .unwrap()
        .unwrap();
    // Tenant a's first three reach its $0.30; b's first seven the provider's $1.00.
    let taken: Vec<i64> = q
        .batch_rows(b.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut expected = ids[..3].to_vec();
    expected.extend_from_slice(&ids[5..12]);
    assert_eq!(taken, expected);
    assert_eq!(b.items, 10);
    let reserved = |rows: Vec<lanes::store::SpendRow>, scope, name: &str| {
        rows.into_iter()
            .find(|r| r.scope == scope && r.name == name)
            .map_or(0.0, |r| r.reserved_usd)
    };
    let day = q.spend(9).await.unwrap();
    assert!((reserved(day.clone(), SpendScope::Provider, "p") - 1.0).abs() < 1e-6);
    assert!((reserved(day, SpendScope::Tenant, "a") - 0.3).abs() < 1e-6);
    // Nothing more while the provider's cap is reached; a batch's rows keep their
    // reservations through the upkeep.
    assert!(
        q.open_batch("p", "tag-s2", "w1", 60_000, open(Some(&caps)))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(q.release_spend().await.unwrap(), 0);
    // Without a provider cap, tenant a (at its cap) is left out: b's other five go.
    let tenants_only = Spend {
        provider_usd: None,
        ..caps.clone()
    };
    let b2 = q
        .open_batch("p", "tag-s3", "w1", 60_000, open(Some(&tenants_only)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2.items, 5);
    assert_eq!(
        q.held("p").await.unwrap().count,
        2,
        "tenant a's last two wait"
    );
    // A line's end settles its reservation.
    let notices = q
        .settle_spend(&[lanes::store::SpendEnd {
            id: ids[0],
            provider: "p",
            tenant: "a",
            usd: 0.05,
            caps: &caps,
        }])
        .await
        .unwrap();
    assert!(notices.is_empty());
    let day = q.spend(9).await.unwrap();
    assert!((reserved(day.clone(), SpendScope::Tenant, "a") - 0.2).abs() < 1e-6);
    let spent = day
        .iter()
        .find(|r| r.scope == SpendScope::Tenant && r.name == "a")
        .unwrap()
        .spent_usd;
    assert!((spent - 0.05).abs() < 1e-9);
    // A line the provider rate-limited goes back live without using up an attempt, counted
    // in `rate_limited` and in the history, as a live 429 is.
    let limited = lanes::store::batches::BatchEnd {
        id: ids[5],
        status: "pending",
        output: None,
        error: Some("429".into()),
        kind: Some("rate_limited"),
        attempt: false,
    };
    q.finish_batched(b.id, &[limited]).await.unwrap();
    let back = q.get(ids[5]).await.unwrap().unwrap();
    assert_eq!(
        (back.status, back.attempts, back.rate_limited),
        (Status::Pending, 0, 1)
    );
    let last = back.history.last().unwrap();
    assert_eq!(
        (last.outcome.as_str(), last.batch),
        ("rate_limited", Some(b.id))
    );
}
contract!(batch_spend, batches_are_held_by_the_spend_caps);
