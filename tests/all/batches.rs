//! Batch lanes, through the openai and claude components against `batch_api.rs`, a local
//! server that speaks both providers' batch APIs (and their live calls): deferrable work
//! is held, sent as a batch, polled, and its results written back as if each had run live,
//! at the batch price; a deadline forces a live run; a cancel in a batch discards the
//! result; expired lines go live; a restart takes over an open batch and sends nothing
//! twice; the component's transfers stream, under its memory cap.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use lanes::config::BatchConfig;
use lanes::costs::PriceOverride;
use lanes::model::{ChatInput, Defer, NewExecution, Status, now_ms};
use lanes::plugin::batch::{BatchIo, BatchOutcome, BatchSandbox, BatchStatus, ItemOutcome};
use lanes::store::Queue;
use lanes::store::batches::BatchStore;

use crate::batch_api::BatchApi;
use crate::support::*;

/// A provider `name` of `file` against `api`, with a batch lane that sends at 5 held (or
/// after 1 s) and polls every second.
fn batch_provider(env: &mut TestEnv, name: &str, file: &str, api: &BatchApi, model: &str) {
    env.add_component(file);
    let key = keyed(env, name);
    let p = env.adapter(name, file, &api.url(), model);
    p.api_key_file = Some(key);
    p.batch = Some(BatchConfig {
        min_items: 5,
        max_wait_secs: 1,
        poll_secs: 1,
        ..BatchConfig::default()
    });
    // A price with the batch discount, so that a batch's cost and saving show.
    env.config.prices.insert(
        model.into(),
        PriceOverride {
            input: Some(1_000_000.0),
            output: Some(2_000_000.0),
            cache_read: None,
            cache_write: None,
            batch_discount: Some(0.5),
        },
    );
}

/// A key file for provider `name` (the claude adapter calls nothing without a key).
fn keyed(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let path = env.dir.path().join(format!("{name}.key"));
    std::fs::write(&path, "test-key\n").unwrap();
    path
}

fn deferrable(provider: &str, text: &str) -> NewExecution {
    NewExecution {
        defer: Defer {
            deferrable: true,
            deadline: None,
            hold: false,
        },
        ..job(provider, serde_json::Value::Null)
    }
    .with_prompt(text)
}

trait WithPrompt {
    fn with_prompt(self, text: &str) -> Self;
}

impl WithPrompt for NewExecution {
    fn with_prompt(mut self, text: &str) -> Self {
        self.input = ChatInput::prompt(text);
        self
    }
}

/// Submits `n` deferrable executions to `provider`, their prompts `WORD i`.
async fn submit_deferrable(
    daemon: &lanes::Daemon,
    provider: &str,
    word: &str,
    n: usize,
) -> Vec<i64> {
    daemon
        .submit_many(
            &(0..n)
                .map(|i| deferrable(provider, &format!("{word} {i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap()
}

/// Waits (up to 30 s) until `n` batches are `sent`, and returns them.
async fn sent(queue: &dyn Queue, n: usize) -> Vec<lanes::store::batches::BatchRecord> {
    let start = std::time::Instant::now();
    loop {
        let batches = queue.batches(10).await.unwrap();
        let sent: Vec<_> = batches
            .iter()
            .filter(|b| b.state == "sent")
            .cloned()
            .collect();
        if sent.len() == n {
            return sent;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never sent: {batches:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The batch records once each has reached a final state (`done` or `failed`): a batch is
/// marked done after its last page is written, so just after its rows have ended.
async fn settled(queue: &dyn Queue) -> Vec<lanes::store::batches::BatchRecord> {
    let start = std::time::Instant::now();
    loop {
        let batches = queue.batches(10).await.unwrap();
        if batches
            .iter()
            .all(|b| b.state == "done" || b.state == "failed")
        {
            return batches;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never settled: {batches:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ended(queue: &dyn Queue, ids: &[i64], timeout: Duration) -> Vec<lanes::Execution> {
    let rows = wait_until(queue, None, timeout, "the executions to end", |rows| {
        ids.iter()
            .all(|id| rows.iter().any(|e| e.id == *id && e.status.is_terminal()))
    })
    .await;
    ids.iter()
        .map(|id| rows.iter().find(|e| e.id == *id).unwrap().clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferrable_work_goes_through_the_openai_batch_api_and_back() {
    let api = BatchApi::start().await;
    api.set_duration(Duration::from_secs(2));
    api.fail_when(|text| text.contains("refuse"));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    // The live lane runs one at a time; the batch is outside its limit.
    env.config.providers.get_mut("openai").unwrap().limit = Some(1);
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();

    let mut batch: Vec<NewExecution> = (0..6)
        .map(|i| deferrable("openai", &format!("question {i}")))
        .collect();
    batch.push(deferrable("openai", "please refuse this"));
    // A deadline sooner than a batch could end: it runs live.
    let mut urgent = deferrable("openai", "urgent");
    urgent.defer.deadline = Some(now_ms() + 60_000);
    batch.push(urgent);
    // Not deferrable: live.
    batch.push(job("openai", serde_json::Value::Null).with_prompt("live one"));
    let ids = daemon.submit_many(&batch).await.unwrap();
    let first = queue.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(first.status, Status::Batched, "held for the batch lane");
    assert!(first.deferrable);

    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    // One batch of the 7 deferrable rows, sent once, with lanes' tag in its metadata.
    assert_eq!(api.created(), 1, "{:?}", api.batches());
    assert_eq!(api.items_sent_twice(), 0);
    let sent = &api.batches()[0];
    assert_eq!(sent.items, 7);
    assert!(
        sent.metadata["lanes_batch"]
            .as_str()
            .is_some_and(|t| t.starts_with("lanes-")),
        "{:?}",
        sent.metadata
    );
    // Its input file is deleted once the results are read (right after they are written).
    let input = format!("/v1/files/{}", sent.input_file_id.as_deref().unwrap());
    let start = std::time::Instant::now();
    while !api
        .requests()
        .iter()
        .any(|r| r.method == "DELETE" && r.path == input && r.status == 200)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "{input} kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch_id = rows[0].batch_id.expect("ran in a batch");
    for (i, e) in rows[..6].iter().enumerate() {
        assert_eq!(e.status, Status::Completed, "{:?}", e.error);
        let out = e.output.as_ref().unwrap();
        assert_eq!(out["text"], format!("echo: question {i}"));
        // Priced at the batch price: half of 2 input words at $1/token and 3 output
        // words at $2/token.
        assert_eq!(out["cost"]["usd"].as_f64(), Some((2.0 + 3.0 * 2.0) * 0.5));
        assert_eq!((e.batch_id, e.attempts), (Some(batch_id), 1));
        assert!(e.started_at.is_some() && e.finished_at.is_some());
    }
    // A request the provider refused fails with the class a live call would get.
    let refused = &rows[6];
    assert_eq!(refused.status, Status::Failed);
    assert_eq!(refused.error_kind.as_deref(), Some("invalid_request"));
    assert!(
        refused.error.as_deref().unwrap().contains("in batch"),
        "{:?}",
        refused.error
    );
    // The deadline and the plain row ran live: no batch, the live price.
    for e in &rows[7..] {
        assert_eq!(e.status, Status::Completed, "{:?}", e.error);
        assert_eq!(e.batch_id, None);
    }
    assert_eq!(rows[7].output.as_ref().unwrap()["text"], "echo: urgent");
    // The live ones kept to the lane's limit, and did not wait for the batch to end.
    let live = rows[7..]
        .iter()
        .map(|e| (e.started_at.unwrap(), e.finished_at.unwrap()));
    assert!(lanes::report::max_overlap(live) <= 1);
    let batch_ended = queue
        .batch(batch_id)
        .await
        .unwrap()
        .unwrap()
        .ended_at
        .unwrap();
    assert!(
        rows[7..]
            .iter()
            .all(|e| e.finished_at.unwrap() < batch_ended),
        "the live lane ran while the batch was open"
    );

    // Each end was published, a batch's with its batch (and no duration of a call).
    let mut from_batch = std::collections::BTreeMap::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        if let lanes::daemon::events::Event::Finished { id, batch, .. } = event {
            from_batch.insert(id, batch);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = if i < 7 { Some(batch_id) } else { None };
        assert_eq!(from_batch.get(id), Some(&expected), "execution {id}");
    }

    // The batch's record: its counts, times, cost and saving.
    settled(queue.as_ref()).await;
    let record = queue.batch(batch_id).await.unwrap().unwrap();
    assert_eq!(
        (record.state.as_str(), record.items, record.sends),
        ("done", 7, 1)
    );
    assert_eq!(record.provider_status.as_deref(), Some("ended"));
    assert!(record.submitted_at.is_some() && record.ended_at.is_some());
    let cost = record.cost_usd.unwrap();
    assert!((cost - 6.0 * 4.0).abs() < 1e-6, "{cost}");
    assert!((record.saved_usd.unwrap() - cost).abs() < 1e-6);
    // Each answer keeps its saving, and the usage totals add it up.
    assert_eq!(
        rows[0].output.as_ref().unwrap()["cost"]["saved_usd"].as_f64(),
        Some(4.0)
    );
    let usage = queue
        .usage(lanes::store::UsageBy::Provider, 0, now_ms() + 1)
        .await
        .unwrap();
    assert!((usage[0].saved_usd - 24.0).abs() < 1e-6, "{usage:?}");
    // With the two live answers at the live price: 1 + 2 × 2 and 2 + 3 × 2.
    assert!(
        (usage[0].cost_usd - 24.0 - 5.0 - 8.0).abs() < 1e-6,
        "{usage:?}"
    );

    // The dashboard shows the batch, its state and what it saved.
    let server = lanes::api::serve(daemon.control(), &env.config.api)
        .await
        .unwrap();
    let mut browser = crate::dashboard::Browser::launch().await;
    browser
        .call(
            "Page.navigate",
            serde_json::json!({"url": format!("http://{}/", server.addr())}),
        )
        .await;
    let row = format!("document.querySelector('#batches tr[data-id=\"{batch_id}\"]')");
    browser
        .wait_for(
            &format!(
                "!!{row} && {row}.querySelector('.batch-state').textContent === 'done' \
                 && {row}.querySelector('.saved').textContent === '$24.0000'"
            ),
            "the batch on the dashboard",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_batch_keeps_a_cancel_and_sends_expired_lines_live() {
    let api = BatchApi::start().await;
    // Long enough to cancel one row and expire the batch by hand.
    api.set_duration(Duration::from_secs(3600));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "claude", "claude.wasm", &api, "claude-batch");
    let (daemon, queue) = env.start().await;
    let ids = submit_deferrable(&daemon, "claude", "line", 6).await;
    // Sent: the provider has it.
    let start = std::time::Instant::now();
    while api.batches().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "never sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = api.batches()[0].clone();
    assert_eq!(sent.items, 6);
    // Row 0 is cancelled while in the batch, though the provider runs it.
    queue.cancel(ids[0]).await.unwrap();
    // The first 3 ran; the batch's window ends with the other 3 unprocessed.
    assert!(api.set_done(&sent.id, 3));
    assert!(api.expire_batch(&sent.id, 0.5));
    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    assert_eq!(rows[0].status, Status::Cancelled, "its result is discarded");
    for e in &rows[1..] {
        assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    }
    // Lines 1 and 2 came from the batch; 3 to 5 expired there and ran live, their
    // expiry kept in the history of errors, not counted as an attempt.
    for e in &rows[1..3] {
        assert_eq!(e.attempts, 1);
        assert!(e.output.as_ref().unwrap()["cost"]["usd"].as_f64().is_some());
    }
    for e in &rows[3..] {
        assert_eq!(e.attempts, 1, "the expired line did not count");
        assert_eq!(
            e.output.as_ref().unwrap()["text"],
            format!("echo: line {}", e.id - ids[0])
        );
    }
    assert_eq!(api.created(), 1);
}

/// Results handed over as the component reads them.
#[derive(Default)]
struct Collected {
    outcomes: Mutex<Vec<BatchOutcome>>,
    pages: Mutex<usize>,
}

struct Sink(Arc<Collected>);

#[async_trait::async_trait]
impl BatchIo for Sink {
    async fn next_items(&mut self, _max: u32) -> Vec<(String, lanes::attempt::Request)> {
        Vec::new()
    }
    async fn put_results(&mut self, outcomes: Vec<BatchOutcome>) {
        *self.0.pages.lock().unwrap() += 1;
        self.0.outcomes.lock().unwrap().extend(outcomes);
    }
}

/// Requests from memory, a page at a time.
struct Source {
    provider: Arc<lanes::plugin::Provider>,
    left: std::vec::IntoIter<(String, ChatInput)>,
}

#[async_trait::async_trait]
impl BatchIo for Source {
    async fn next_items(&mut self, max: u32) -> Vec<(String, lanes::attempt::Request)> {
        (&mut self.left)
            .take(max as usize)
            .map(|(id, input)| (id, self.provider.request(&input, false).unwrap()))
            .collect()
    }
    async fn put_results(&mut self, _: Vec<BatchOutcome>) {}
}

/// The component's own calls, without the daemon: 50,000 requests go up and 50,000 results
/// come down in pages, within the component's 64 MiB, for both APIs; states, a cancel, a
/// lookup by tag (OpenAI only) and the error classes of the batch calls themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_components_stream_50000_requests_up_and_their_results_down() {
    let api = BatchApi::start().await;
    let mut env = TestEnv::new();
    for (name, file) in [("openai", "openai.wasm"), ("claude", "claude.wasm")] {
        env.add_component(file);
        let key = keyed(&env, name);
        env.adapter(name, file, &api.url(), "model-a").api_key_file = Some(key);
    }
    env.config.sandbox.memory_mb = 64;
    let host = lanes::plugin::PluginHost::new(&env.config).unwrap();
    let sandbox = BatchSandbox {
        timeout: Duration::from_secs(120),
        ..BatchSandbox::default()
    };
    for (name, file) in [("openai", "openai.wasm"), ("claude", "claude.wasm")] {
        let component = Arc::new(host.load(&env.plugins().join(file)).await.unwrap());
        let provider = Arc::new(host.bind(&env.config, name, component).await.unwrap());
        let limits = provider.batch_limits().expect("declares batches");
        assert!(limits.max_items >= 50_000, "{limits:?}");
        let inputs: Vec<(String, ChatInput)> = (0..50_000)
            .map(|i| {
                (
                    i.to_string(),
                    ChatInput::prompt(format!("request number {i}")),
                )
            })
            .collect();
        let tag = format!("lanes-test-{name}");
        let id = provider
            .batch_submit(
                &tag,
                Box::new(Source {
                    provider: provider.clone(),
                    left: inputs.into_iter(),
                }),
                &sandbox,
            )
            .await
            .unwrap();
        let found = provider.batch_find(&tag, &sandbox).await.unwrap();
        match name {
            "openai" => assert_eq!(found.as_deref(), Some(id.as_str())),
            _ => assert_eq!(found, None, "Anthropic's API cannot look a batch up"),
        }
        let state = provider.batch_status(&id, &sandbox).await.unwrap();
        assert_eq!(state.status, BatchStatus::Ended, "{state:?}");
        assert_eq!(state.total, 50_000);
        let collected = Arc::new(Collected::default());
        provider
            .batch_results(&id, Box::new(Sink(collected.clone())), &sandbox)
            .await
            .unwrap();
        let outcomes = collected.outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 50_000, "{name}");
        assert!(
            *collected.pages.lock().unwrap() >= 10,
            "{name}: handed over in pages"
        );
        let seven = outcomes.iter().find(|o| o.custom_id == "7").unwrap();
        match &seven.outcome {
            ItemOutcome::Succeeded(out) => {
                assert_eq!(out.text, "echo: request number 7")
            }
            other => panic!("{name}: {other:?}"),
        }
        // The upload went as it was made: chunked, never whole in the component.
        let upload = api.uploads().last().unwrap().clone();
        assert!(upload.chunked, "{name}: {upload:?}");
        assert_eq!(upload.items, 50_000);
    }

    // A cancel, and a batch call's own errors: a 429 is a rate limit (the live lane does
    // not pause for it), a wrong key is unauthorized.
    let component = Arc::new(host.load(&env.plugins().join("openai.wasm")).await.unwrap());
    let openai = Arc::new(host.bind(&env.config, "openai", component).await.unwrap());
    api.set_duration(Duration::from_secs(3600));
    let id = openai
        .batch_submit(
            "lanes-cancel",
            Box::new(Source {
                provider: openai.clone(),
                left: vec![("1".to_string(), ChatInput::prompt("x"))].into_iter(),
            }),
            &sandbox,
        )
        .await
        .unwrap();
    openai.batch_cancel(&id, &sandbox).await.unwrap();
    let state = openai.batch_status(&id, &sandbox).await.unwrap();
    assert!(
        matches!(
            state.status,
            BatchStatus::Cancelling | BatchStatus::Cancelled
        ),
        "{state:?}"
    );
    api.set_rate_limited(Some(Duration::from_secs(2)));
    let e = openai.batch_status(&id, &sandbox).await.unwrap_err();
    assert_eq!(
        lanes::attempt::classify(&e).0,
        lanes::model::ErrorKind::RateLimited,
        "{e}"
    );
    api.set_rate_limited(None);
    api.set_key(Some("the-right-key"));
    let e = openai.batch_status(&id, &sandbox).await.unwrap_err();
    assert_eq!(
        lanes::attempt::classify(&e).0,
        lanes::model::ErrorKind::Unauthorized,
        "{e}"
    );
}

/// A `lanes serve` killed (-9) while its batch runs at the provider: the next start takes
/// the batch over, polls it and writes its results once; nothing is lost and nothing is
/// sent twice. Then the one window left: a send whose answer was lost (the batch back in
/// `sending`, with no provider id). OpenAI's API finds it by its tag, so nothing is sent
/// twice; Anthropic's cannot, so it is sent again, and the record and the metric say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_batch_open_loses_nothing_and_sends_nothing_twice() {
    let api = BatchApi::start().await;
    api.set_duration(Duration::from_secs(4));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    batch_provider(&mut env, "claude", "claude.wasm", &api, "claude-batch");
    let queue = env.queue().await;
    let held = |provider: &str, i: usize| NewExecution {
        defer: Defer {
            deferrable: true,
            deadline: None,
            hold: true,
        },
        ..job(provider, serde_json::Value::Null).with_prompt(&format!("item {i}"))
    };
    let ids = queue
        .submit_many(&(0..10).map(|i| held("openai", i)).collect::<Vec<_>>())
        .await
        .unwrap();

    let mut serve = env.spawn_serve();
    sent(queue.as_ref(), 1).await;
    serve.kill().unwrap(); // SIGKILL, with the batch open at the provider
    serve.wait().unwrap();
    assert!(
        queue
            .list(Some("openai"))
            .await
            .unwrap()
            .iter()
            .all(|e| e.status == Status::Batched)
    );

    let mut serve = env.spawn_serve();
    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    assert!(
        rows.iter()
            .all(|e| e.status == Status::Completed && e.attempts == 1),
        "{rows:?}"
    );
    assert_eq!((api.created(), api.items_sent_twice()), (1, 0));

    // A lost send, on each API: the batch is back in `sending` without its provider id,
    // as if the worker died between the provider's answer and the record of its id.
    let ids = queue
        .submit_many(
            &(0..5)
                .map(|i| held("openai", i))
                .chain((0..5).map(|i| held("claude", i)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    sent(queue.as_ref(), 2).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    sqlx::query(
        "UPDATE batches SET state = 'sending', provider_batch_id = NULL
          WHERE state = 'sent'",
    )
    .execute(queue.writer())
    .await
    .unwrap();
    // A log of its own, so that the API's address read from it is this process's.
    let mut serve = env.spawn_worker("last");
    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:?}"
    );
    let batches = settled(queue.as_ref()).await;
    let sends = |provider: &str| {
        batches
            .iter()
            .find(|b| b.provider == provider && b.items == 5)
            .map(|b| (b.state.clone(), b.sends))
    };
    assert_eq!(
        sends("openai"),
        Some(("done".into(), 1)),
        "found by its tag"
    );
    assert_eq!(sends("claude"), Some(("done".into(), 2)), "sent again");
    // 1 + 1 OpenAI batches, and the Anthropic one twice; its 5 requests ran twice.
    assert_eq!((api.created(), api.items_sent_twice()), (4, 5));
    let api_ = crate::api::Api::new(api_addr(&env, "last").await);
    let metrics = api_.get("/metrics").await.text;
    assert!(
        metrics.contains("lanes_batch_resends{provider=\"claude\"} 1"),
        "{metrics}"
    );
    // The API shows the batches and the executions' place in them.
    let listed = api_.get("/v1/batches").await;
    assert_eq!(listed.body["batches"].as_array().unwrap().len(), 3);
    let one = &listed.body["batches"][0];
    let got = api_.get(&format!("/v1/batches/{}", one["id"])).await;
    assert_eq!(got.body["provider_batch_id"], one["provider_batch_id"]);
    assert_eq!(api_.get("/v1/batches/999999").await.status.as_u16(), 404);
    let e = api_.get(&format!("/v1/executions/{}", ids[0])).await;
    assert_eq!(e.body["deferrable"], true);
    assert!(e.body["batch_id"].is_i64());
    assert!(terminate(&mut serve).success());
}

/// A 429 on a batch call is the batch's, not the lane's: the send is tried again later (and
/// not counted as a resend), while the provider's live lane goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_batch_call_does_not_pause_the_live_lane() {
    let api = BatchApi::start().await;
    api.set_batch_rate_limited(Some(Duration::from_secs(60)));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    let (daemon, queue) = env.start().await;
    let held = submit_deferrable(&daemon, "openai", "later", 5).await;
    // The batch's send is refused...
    let start = std::time::Instant::now();
    loop {
        let batches = queue.batches(10).await.unwrap();
        if batches.first().is_some_and(|b| {
            b.error
                .as_deref()
                .is_some_and(|e| e.contains("rate limited"))
        }) {
            assert_eq!((batches[0].state.as_str(), batches[0].sends), ("open", 0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{batches:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...while live work runs at once, the lane unpaused.
    let live: Vec<i64> = daemon
        .submit_many(
            &(0..3)
                .map(|i| job("openai", serde_json::Value::Null).with_prompt(&format!("now {i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let rows = ended(queue.as_ref(), &live, Duration::from_secs(20)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:?}"
    );
    let (now, states) = queue.provider_states().await.unwrap();
    assert!(
        states
            .get("openai")
            .is_none_or(|s| s.paused_until <= now && !s.circuit_open),
        "the live lane is not paused: {states:?}"
    );
    assert!(
        held.iter()
            .all(|id| api.item_count_seen(&id.to_string()) == 0),
        "nothing was sent"
    );
}

/// On PostgreSQL, two workers share a provider's batch lane: its held rows go into one
/// batch, sent once; a kill -9 of the worker that holds it leaves it to the other once its
/// lease runs out, which polls it and writes its results once: 0 lost, 0 sent twice. The
/// history names the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_takes_over_a_batch_after_a_kill_9() {
    let Some((mut env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    let api = BatchApi::start().await;
    api.set_duration(Duration::from_secs(3));
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    // A short lease (twice the transfer timeout and 10 s): the takeover comes after 12 s.
    if let Some(batch) = env
        .config
        .providers
        .get_mut("openai")
        .and_then(|p| p.batch.as_mut())
    {
        batch.transfer_timeout_secs = 1;
    }
    let queue = env.any_queue().await;
    let held = |i: usize| NewExecution {
        defer: Defer {
            deferrable: true,
            deadline: None,
            hold: true,
        },
        ..job("openai", serde_json::Value::Null).with_prompt(&format!("item {i}"))
    };
    let ids = queue
        .submit_many(&(0..12).map(held).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut workers = [env.spawn_worker("w0"), env.spawn_worker("w1")];
    let sent = sent(queue.as_ref(), 1).await.remove(0);
    assert_eq!(sent.items, 12, "one batch for the fleet: {sent:?}");
    // Kill the worker that holds it (its owner id holds its pid).
    let owner = sent.owner.clone().unwrap_or_default();
    let pid_of = |c: &std::process::Child| format!(":{}:", c.id());
    let holder = workers
        .iter()
        .position(|c| owner.contains(&pid_of(c)))
        .unwrap_or_else(|| panic!("no worker holds {owner}"));
    workers[holder].kill().unwrap();
    workers[holder].wait().unwrap();
    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    assert!(
        rows.iter()
            .all(|e| e.status == Status::Completed && e.attempts == 1),
        "{rows:?}"
    );
    assert_eq!((api.created(), api.items_sent_twice()), (1, 0));
    let batches = settled(queue.as_ref()).await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!((batches[0].state.as_str(), batches[0].sends), ("done", 1));
    let survivor = &workers[1 - holder];
    assert!(
        batches[0]
            .owner
            .as_deref()
            .is_some_and(|o| o.contains(&pid_of(survivor))),
        "the other worker wrote the results: {batches:?}"
    );
    let history = &rows[0].history;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0].worker.as_deref(), history[0].batch),
        (Some("batch"), Some(sent.id))
    );
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// A provider's spend cap holds a batch as it holds a live claim: a batch takes the rows
/// whose estimates (at the batch price) fit what is left of the cap, each line's cost
/// settles its row's reservation when written, and the rest go in later batches as the
/// settled spend leaves room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_holds_a_batch_to_what_fits() {
    use lanes::store::SpendScope;
    let api = BatchApi::start().await;
    api.set_duration(Duration::from_millis(500));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    // Each row reserves about 1,000 output tokens at $2 each, half price: $1,001 with its
    // prompt. The cap lets four go at a time.
    env.config.providers.get_mut("openai").unwrap().daily_usd = Some(3_500.0);
    let (daemon, queue) = env.start().await;
    let ids = submit_deferrable(&daemon, "openai", "capped", 10).await;
    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(60)).await;
    assert!(
        rows.iter().all(|e| e.status == Status::Completed),
        "{rows:?}"
    );
    let mut batches = queue.batches(10).await.unwrap();
    batches.reverse();
    let sizes: Vec<i64> = batches.iter().map(|b| b.items).collect();
    assert_eq!(sizes, [4, 4, 2], "{batches:?}");
    // Each line's cost was settled: the day's spend is what the rows cost, none reserved.
    // (A page's settle follows its write: the last one may come just after the rows end.)
    let cost: f64 = rows
        .iter()
        .map(|e| e.output.as_ref().unwrap()["cost"]["usd"].as_f64().unwrap())
        .sum();
    let start = std::time::Instant::now();
    loop {
        let day = queue.spend(lanes::clock::day()).await.unwrap();
        let provider = day
            .into_iter()
            .find(|r| r.scope == SpendScope::Provider)
            .expect("the provider's spend");
        if (provider.spent_usd - cost).abs() < 1e-6 && provider.reserved_usd.abs() < 1e-6 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{provider:?}, the rows cost {cost}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(daemon);
}

/// A write of a batch's results that fails leaves the batch collecting: the results are
/// read again at the next poll, and each execution is written, and published, once, from
/// the batch (none runs live). The component reads the next page while the last is
/// written: no page is lost or doubled that way either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_result_write_is_read_again_and_written_once() {
    let api = BatchApi::start().await;
    api.set_duration(Duration::from_millis(500));
    let mut env = TestEnv::new();
    batch_provider(&mut env, "openai", "openai.wasm", &api, "gpt-batch");
    let n = 450; // Pages of 200: three hand-overs.
    env.config.providers.get_mut("openai").unwrap().batch = Some(BatchConfig {
        min_items: 450,
        max_wait_secs: 60,
        poll_secs: 1,
        ..BatchConfig::default()
    });
    let (daemon, queue) = env.start().await;
    let mut events = daemon.subscribe();
    // Every write of a result fails until the trigger goes (as a full disk would).
    let db = sqlx::SqlitePool::connect(&env.config.database_url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER fail_results BEFORE UPDATE OF status ON executions
         WHEN OLD.status = 'batched' AND NEW.status IN ('completed', 'failed')
         BEGIN SELECT RAISE(ABORT, 'injected: database or disk is full'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let ids = submit_deferrable(&daemon, "openai", "question", n).await;
    let downloads = || {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/content") && r.status == 200)
            .count()
    };
    // A second read shows that the first one's writes failed: the batch stayed open. (The
    // download is logged as it starts: this read's writes may fail or not.)
    let start = std::time::Instant::now();
    while downloads() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the results were not read again: {:?}",
            queue.batches(10).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = queue.list(Some("openai")).await.unwrap();
    assert!(rows.iter().all(|e| e.status == Status::Batched));
    let record = &queue.batches(10).await.unwrap()[0];
    assert_eq!(record.state, "collecting", "{record:?}");
    sqlx::query("DROP TRIGGER fail_results")
        .execute(&db)
        .await
        .unwrap();

    let rows = ended(queue.as_ref(), &ids, Duration::from_secs(30)).await;
    for (i, e) in rows.iter().enumerate() {
        assert_eq!(e.status, Status::Completed, "{:?}", e.error);
        assert_eq!(
            e.output.as_ref().unwrap()["text"],
            format!("echo: question {i}")
        );
        assert_eq!((e.attempts, e.batch_id), (1, Some(record.id)));
    }
    // None ran live.
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.path.contains("/chat/completions")),
        "a row ran live"
    );
    let batches = settled(queue.as_ref()).await;
    assert_eq!((batches[0].state.as_str(), batches[0].sends), ("done", 1));
    let cost = batches[0].cost_usd.unwrap();
    assert!((cost - 450.0 * 4.0).abs() < 1e-6, "{cost}");
    // One end published for each, from the batch, and none for the failed writes.
    let mut finished = std::collections::BTreeMap::<i64, usize>::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        if let lanes::daemon::events::Event::Finished { id, batch, .. } = event {
            assert_eq!(batch, Some(record.id), "execution {id} ended live");
            *finished.entry(id).or_default() += 1;
        }
    }
    assert_eq!(finished.len(), n);
    assert!(finished.values().all(|c| *c == 1), "{finished:?}");
}
