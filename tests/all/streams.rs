//! Streamed answers: deltas reach an SSE reader while the attempt runs, join to the stored
//! output, replay from the store after the end, survive a kill -9 as a new attempt's
//! stream, and a reader that does not keep up lags (and is told) without slowing the lane.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::api::{Api, start};
use crate::support::*;

async fn submit(api: &Api, input: Value) -> i64 {
    let created = api
        .post(
            "/v1/executions",
            json!({"provider": "stub", "input": input}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    created.body["id"].as_i64().unwrap()
}

/// The events of an SSE body: name and data.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(crate::api::sse_event)
        .collect()
}

/// The text of the `delta` events of the last attempt, in order.
fn joined(events: &[(String, Value)]) -> String {
    let mut text = String::new();
    for (name, data) in events {
        match name.as_str() {
            "attempt" => text.clear(),
            "delta" if data["type"] == "text" => text.push_str(data["text"].as_str().unwrap()),
            _ => {}
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_reach_a_reader_before_the_end_join_to_the_output_and_replay() {
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    let (daemon, _server, api) = start(&env).await;

    // Ten pieces, 100 ms apart: a second of streaming.
    let id = submit(
        &api,
        json!({"prompt": "hi", "stream": true,
               "extra": {"text": "abcdefghij", "stream_pieces": 10, "stream_gap_ms": 100}}),
    )
    .await;
    let path = format!("/v1/executions/{id}/stream");
    let events = api
        .events(&path, |name, _| name == "end", Duration::from_secs(20))
        .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"attempt"), "{names:?}");
    assert_eq!(events[0].1, json!({"attempt": 1}));
    assert_eq!(names.last(), Some(&"end"));
    let end = &events.last().unwrap().1;
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(joined(&events), "abcdefghij");
    assert_eq!(joined(&events), end["output"]["text"].as_str().unwrap());
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "delta" && d["type"] == "usage"),
        "{names:?}"
    );

    // The deltas came while the attempt ran: read a second stream and time each event.
    let id = submit(
        &api,
        json!({"prompt": "hi", "stream": true,
               "extra": {"text": "abcdefghij", "stream_pieces": 10, "stream_gap_ms": 100}}),
    )
    .await;
    let path = format!("/v1/executions/{id}/stream");
    let times = std::sync::Mutex::new(Vec::new());
    let began = Instant::now();
    api.events(
        &path,
        |name, _| {
            times
                .lock()
                .unwrap()
                .push((name.to_string(), began.elapsed()));
            name == "end"
        },
        Duration::from_secs(20),
    )
    .await;
    let times = times.into_inner().unwrap();
    let first = times.iter().find(|(n, _)| n == "delta").unwrap().1;
    let end = times.last().unwrap().1;
    assert!(
        end.saturating_sub(first) >= Duration::from_millis(500),
        "the first delta came {first:?} in, the end {end:?}: they should be ~0.9 s apart"
    );

    // After the end, the stream replays from the store, and a reader resumes after the
    // event id it last had.
    let replay = api
        .events(&path, |name, _| name == "end", Duration::from_secs(5))
        .await;
    assert_eq!(joined(&replay), "abcdefghij");
    let chunks = daemon
        .queue()
        .read_stream(id, lanes::store::StreamPosition::default())
        .await
        .unwrap();
    assert!(
        !chunks.is_empty() && chunks.len() < 12,
        "{} chunks",
        chunks.len()
    );

    // `lanes get ID --follow` prints the text as it streams, then the execution.
    let id = submit(
        &api,
        json!({"prompt": "hi", "stream": true,
               "extra": {"text": "klmnopqrst", "stream_pieces": 10, "stream_gap_ms": 50}}),
    )
    .await;
    let out = env.lanes(&["get", &id.to_string(), "--follow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("klmnopqrst\n"), "{}", stdout(&out));

    // A call that does not ask to stream has no deltas; its stream is just its end.
    let id = submit(&api, json!({"prompt": "quiet"})).await;
    let events = api
        .events(
            &format!("/v1/executions/{id}/stream"),
            |name, _| name == "end",
            Duration::from_secs(20),
        )
        .await;
    assert!(events.iter().all(|(n, _)| n == "end"), "{events:?}");
    assert_eq!(events[0].1["output"]["text"], "stub reply to: quiet");

    let missing = api.get("/v1/executions/999999/stream").await;
    crate::api::problem(&missing, 404, "no execution 999999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_does_not_keep_up_lags_and_is_told_and_the_lane_goes_on() {
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    let (daemon, server, api) = start(&env).await;
    let n = 100_000;
    let text = "x".repeat(n);
    let id = submit(
        &api,
        json!({"prompt": "hi", "stream": true,
               "extra": {"text": text, "stream_pieces": n}}),
    )
    .await;
    // The reader connects and reads nothing for two seconds: the attempt ends meanwhile,
    // and other work of the lane runs.
    let url = format!("http://{}/v1/executions/{id}/stream", server.addr());
    let reading = tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        parse_sse(&String::from_utf8_lossy(&body))
    });
    let queue = daemon.queue().clone();
    let done = wait_until(
        queue.as_ref(),
        Some("stub"),
        Duration::from_secs(20),
        "the streamed attempt ends",
        |rows| rows.iter().any(|r| r.id == id && r.status.is_terminal()),
    )
    .await;
    let other = submit(&api, json!({"prompt": "next"})).await;
    let other = api.get(&format!("/v1/executions/{other}?wait=20s")).await;
    assert_eq!(other.body["status"], "completed", "{other:?}");
    assert!(done.iter().any(|r| r.id == id));

    let events = reading.await.unwrap();
    let lag = events
        .iter()
        .find(|(name, _)| name == "lag")
        .unwrap_or_else(|| panic!("no lag event in {} events", events.len()));
    assert!(lag.1["behind"].as_u64().unwrap() >= 1_000, "{lag:?}");
    assert_eq!(joined(&events), text, "every delta, in order, however late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_stream_leaves_the_execution_to_run_again_with_a_new_stream() {
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    env.config.lease_ms = 2_000;
    let queue = env.any_queue().await;
    let mut serve = env.spawn_serve();
    let input = json!({"prompt": "hi", "stream": true,
        "extra": {"text": "abcdefghijklmnopqrst", "stream_pieces": 20, "stream_gap_ms": 200}});
    let id = queue
        .submit(&lanes::NewExecution {
            tenant: None,
            cache: None,
            provider: "stub".into(),
            input: lanes::ChatInput::from_value(input).unwrap(),
            priority: 0,
            max_attempts: 3,
            route: None,
            defer: Default::default(),
        })
        .await
        .unwrap();
    // Kill once the first attempt has stored some of its stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let chunks = queue
            .read_stream(id, lanes::store::StreamPosition::default())
            .await
            .unwrap();
        if chunks.iter().any(|c| c.attempt == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no chunk stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serve.kill().unwrap(); // SIGKILL
    serve.wait().unwrap();
    let mut serve = env.spawn_serve();
    let rows = wait_terminal(queue.as_ref(), Some("stub"), Duration::from_secs(30)).await;
    let _ = serve.kill();
    let _ = serve.wait();
    let row = rows.iter().find(|r| r.id == id).unwrap();
    assert_eq!(row.status, lanes::Status::Completed, "{row:?}");
    assert_eq!(row.attempts, 2, "run again after the kill");
    let chunks = queue
        .read_stream(id, lanes::store::StreamPosition::default())
        .await
        .unwrap();
    let mut second = String::new();
    for chunk in chunks.iter().filter(|c| c.attempt == 2) {
        let deltas: Vec<Value> = serde_json::from_str(&chunk.deltas).unwrap();
        for d in deltas.iter().filter(|d| d["type"] == "text") {
            second.push_str(d["text"].as_str().unwrap());
        }
    }
    assert!(
        chunks.iter().any(|c| c.attempt == 1),
        "the first stream is kept"
    );
    assert_eq!(
        second, "abcdefghijklmnopqrst",
        "the new attempt streams it all"
    );
    assert_eq!(
        row.output.as_ref().map(|o| o["text"].clone()),
        Some(json!("abcdefghijklmnopqrst"))
    );
}

/// A stream that stalls is cut by `stream_idle_timeout_ms` between two pieces, long before
/// the whole exchange's `request_timeout_ms`, and the attempt ends as `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_is_cut_by_the_idle_timeout() {
    let api = crate::mock::MockApi::start().await;
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\
                 \"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\
                 \"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    let body = format!("{first}data: [DONE]\n\n");
    let mut reply = crate::mock::Reply::json(200, json!({})).stall_after(first.len());
    reply.body = body;
    reply.headers = vec![("content-type".into(), "text/event-stream".into())];
    api.reply([reply]);
    let mut env = TestEnv::new();
    let oa = env.adapter("oa", "openai.wasm", &api.url(), "m");
    oa.request_timeout_ms = Some(30_000);
    oa.stream_idle_timeout_ms = Some(300);
    env.add_component("openai.wasm");
    let (daemon, _server, _api) = start(&env).await;
    let began = Instant::now();
    let id = daemon
        .submit(&lanes::NewExecution {
            tenant: None,
            cache: None,
            provider: "oa".into(),
            input: lanes::ChatInput::from_value(json!({"prompt": "hi", "stream": true})).unwrap(),
            priority: 0,
            max_attempts: 1,
            route: None,
            defer: Default::default(),
        })
        .await
        .unwrap();
    let rows = wait_until(
        daemon.queue().as_ref(),
        Some("oa"),
        Duration::from_secs(20),
        "the stalled attempt ends",
        |rows| rows.iter().any(|r| r.id == id && r.status.is_terminal()),
    )
    .await;
    let row = rows.iter().find(|r| r.id == id).unwrap();
    assert_eq!(row.status, lanes::Status::Failed, "{row:?}");
    assert_eq!(row.error_kind.as_deref(), Some("unavailable"), "{row:?}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "cut by the idle timeout, not the request's: {:?}",
        began.elapsed()
    );
    // What came before the stall reached the stream.
    let chunks = daemon
        .queue()
        .read_stream(id, lanes::store::StreamPosition::default())
        .await
        .unwrap();
    assert!(
        chunks.iter().any(|c| c.deltas.contains("Hel")),
        "{chunks:?}"
    );
}

/// On a PostgreSQL fleet, a worker that does not run the execution serves its stream from
/// the stored chunks, as it streams (at most about a flush behind), to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_of_a_fleet_serves_the_stream_from_the_store() {
    let Some((mut env, _schema)) = TestEnv::postgres().await else {
        return;
    };
    env.stub("stub", Some(4), &[]);
    // The worker that runs it: a `lanes serve` process with the stub.
    let mut runner = env.spawn_serve();
    // One that cannot (no component): its API serves the stream from the store.
    let mut reader_env = env.config.clone();
    let empty = env.dir.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    reader_env.plugins_dir = empty;
    reader_env.providers.clear();
    let queue = env.any_queue().await;
    let daemon = lanes::Daemon::start(reader_env.clone(), queue.clone())
        .await
        .expect("the reading worker starts");
    let server = lanes::api::serve(daemon.control(), &reader_env.api)
        .await
        .expect("API starts");
    let api = Api::new(server.addr());
    let id = queue
        .submit(&lanes::NewExecution {
            tenant: None,
            cache: None,
            provider: "stub".into(),
            input: lanes::ChatInput::from_value(json!({"prompt": "hi", "stream": true,
                "extra": {"text": "abcdefghij", "stream_pieces": 10, "stream_gap_ms": 150}}))
            .unwrap(),
            priority: 0,
            max_attempts: 3,
            route: None,
            defer: Default::default(),
        })
        .await
        .unwrap();
    let times = std::sync::Mutex::new(Vec::new());
    let began = Instant::now();
    let events = api
        .events(
            &format!("/v1/executions/{id}/stream"),
            |name, _| {
                times
                    .lock()
                    .unwrap()
                    .push((name.to_string(), began.elapsed()));
                name == "end"
            },
            Duration::from_secs(30),
        )
        .await;
    let _ = runner.kill();
    let _ = runner.wait();
    let end = &events.last().unwrap().1;
    assert_eq!(end["status"], "completed", "{end}");
    assert_ne!(end["worker"], json!(null));
    assert_eq!(joined(&events), "abcdefghij");
    let times = times.into_inner().unwrap();
    let first = times.iter().find(|(n, _)| n == "delta").unwrap().1;
    let last = times.last().unwrap().1;
    assert!(
        last.saturating_sub(first) >= Duration::from_millis(600),
        "the stored chunks came as the attempt ran: first delta {first:?}, end {last:?}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A stream keeps at most the sandbox's `max_output_bytes` of deltas: past it the rest are
/// dropped (and said in the log), and the answer itself is stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_at_most_the_output_cap_of_deltas() {
    let mut env = TestEnv::new();
    env.stub("stub", Some(4), &[]);
    env.config
        .providers
        .get_mut("stub")
        .unwrap()
        .sandbox
        .max_output_bytes = Some(5_000);
    let (daemon, _server, api) = start(&env).await;
    let text = "x".repeat(1_000);
    let id = submit(
        &api,
        json!({"prompt": "hi", "stream": true, "extra": {"text": text, "stream_pieces": 1000}}),
    )
    .await;
    let done = api.get(&format!("/v1/executions/{id}?wait=20s")).await;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    assert_eq!(done.body["output"]["text"], text);
    let kept: i64 = daemon
        .queue()
        .read_stream(id, lanes::store::StreamPosition::default())
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert!(kept > 0 && kept < 1_000, "{kept} deltas kept");
}
