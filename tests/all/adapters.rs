//! The openai, claude and ollama components (lanes:provider 0.2) end to end, through the
//! API, against mock servers that replay each vendor's real shapes: every request field on
//! the wire exactly, rich answers (tool calls, reasoning, refusals, cache counts) mapped
//! back, a tool-call round trip as two executions, and streams sent piece by piece (events
//! cut across pieces) read back over `GET /v1/executions/{id}/stream`, with an error in the
//! middle of a stream retried.
//!
//! The expected request bodies are written from the vendors' wire formats
//! (`/work/shared/notes/wire-formats-0.2.md`: the SDK type files), not from what the
//! adapters send.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::api::{Api, start};
use crate::mock::{Chunked, MockApi, Recorded, Reply};
use crate::support::*;

/// A 1×1 PNG, base64.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// The pause between the pieces of a streamed reply.
const GAP: Duration = Duration::from_millis(40);

/// `body` in `pieces` pieces sent `gap` apart, some cut inside an event (or NDJSON line).
fn pieces(content_type: &str, body: &str, pieces: usize, gap: Duration) -> Chunked {
    let chunked = Chunked::cut(content_type, body, pieces, gap);
    assert_eq!(chunked.pieces.len(), pieces);
    assert!(
        chunked.pieces.iter().any(|p| !p.ends_with(b"\n")),
        "no piece ends inside an event"
    );
    chunked
}

/// The failing first attempt of a stream test is slow: the test's reader is connected
/// before the second attempt streams.
const SLOW: Duration = Duration::from_millis(150);

/// A daemon with its API and one provider, named as its component, against a mock API.
struct World {
    name: String,
    mock: MockApi,
    api: Api,
    daemon: lanes::Daemon,
    _server: lanes::api::ApiServer,
    _env: TestEnv,
}

impl World {
    /// `name` is `openai`, `claude` or `ollama`; its configured model is `model`.
    async fn new(name: &str, model: &str) -> World {
        let mock = MockApi::start().await;
        let mut env = TestEnv::new();
        let file = format!("{name}.wasm");
        env.add_component(&file);
        let key = env.dir.path().join("api.key");
        std::fs::write(&key, "sk-test\n").unwrap();
        let provider = env.adapter(name, &file, &mock.url(), model);
        if name != "ollama" {
            provider.api_key_file = Some(key);
        }
        env.config.retry.base_ms = 10;
        let (daemon, server, api) = start(&env).await;
        World {
            name: name.to_string(),
            mock,
            api,
            daemon,
            _server: server,
            _env: env,
        }
    }

    async fn submit(&self, input: Value) -> i64 {
        let body = json!({"provider": self.name, "input": input});
        let created = self.api.post("/v1/executions", body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        created.body["id"].as_i64().unwrap()
    }

    /// The ended execution of `id`, which must have completed.
    async fn ended(&self, id: i64) -> Value {
        let done = self.api.get(&format!("/v1/executions/{id}?wait=20s")).await;
        assert_eq!(done.body["status"], "completed", "{:#}", done.body);
        done.body
    }

    /// Runs `input` to its end and gives its output.
    /// The output of a run of `input`, its `cost` taken off (`costs.rs` and
    /// `tests/all/costs.rs` check prices; here the mapping is what counts).
    async fn output(&self, input: Value) -> Value {
        let id = self.submit(input).await;
        let mut output = self.ended(id).await["output"].clone();
        if let Some(o) = output.as_object_mut() {
            o.remove("cost");
        }
        output
    }

    /// The `n`th request the mock API got (from 0).
    fn request(&self, n: usize, path: &str) -> Recorded {
        let requests = self.mock.requests();
        let req = requests
            .get(n)
            .unwrap_or_else(|| panic!("{} requests, no #{n}", requests.len()))
            .clone();
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", path));
        req
    }

    /// The events of `id`'s stream until its `end`, each with when it came.
    async fn stream(&self, id: i64) -> Vec<(String, Value, Instant)> {
        let seen = std::sync::Mutex::new(Vec::new());
        self.api
            .events(
                &format!("/v1/executions/{id}/stream"),
                |name, data| {
                    let mut seen = seen.lock().unwrap();
                    seen.push((name.to_string(), data.clone(), Instant::now()));
                    name == "end"
                },
                Duration::from_secs(20),
            )
            .await;
        seen.into_inner().unwrap()
    }

    async fn end(self) {
        self.daemon.shutdown(Duration::from_secs(1)).await;
    }
}

/// What the deltas of a stream's last attempt join to.
#[derive(Debug, Default, PartialEq)]
struct Joined {
    text: String,
    reasoning: String,
    /// Each tool call's id, name and joined arguments, by index.
    calls: Vec<(String, String, String)>,
}

/// Joins the deltas of the last attempt of `events`; also gives the attempts seen and how
/// far apart the last attempt's first and last deltas came.
fn join(events: &[(String, Value, Instant)]) -> (Joined, Vec<u64>, Duration) {
    let mut joined = Joined::default();
    let mut attempts = Vec::new();
    let mut times: Vec<Instant> = Vec::new();
    for (name, data, at) in events {
        match name.as_str() {
            "attempt" => {
                attempts.push(data["attempt"].as_u64().unwrap());
                joined = Joined::default();
                times.clear();
            }
            "delta" => {
                times.push(*at);
                let s = |key: &str| data[key].as_str().unwrap().to_string();
                match data["type"].as_str().unwrap() {
                    "text" => joined.text.push_str(&s("text")),
                    "reasoning" => joined.reasoning.push_str(&s("text")),
                    "tool_call_start" => {
                        let index = data["index"].as_u64().unwrap() as usize;
                        assert_eq!(index, joined.calls.len(), "{data}");
                        joined.calls.push((s("id"), s("name"), String::new()));
                    }
                    "tool_call_arguments" => {
                        let index = data["index"].as_u64().unwrap() as usize;
                        joined.calls[index].2.push_str(&s("fragment"));
                    }
                    "usage" => {}
                    other => panic!("unknown delta {other}"),
                }
            }
            _ => {}
        }
    }
    let spread = match (times.first(), times.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    (joined, attempts, spread)
}

/// What an output's parts say, in the shape of [`Joined`].
fn parts_of(output: &Value) -> Joined {
    let mut joined = Joined {
        text: output["text"].as_str().unwrap().to_string(),
        ..Joined::default()
    };
    for part in output["content"].as_array().unwrap() {
        let s = |key: &str| part[key].as_str().unwrap().to_string();
        match part["type"].as_str().unwrap() {
            "reasoning" => joined.reasoning.push_str(&s("text")),
            "tool_call" => joined.calls.push((s("id"), s("name"), s("arguments"))),
            _ => {}
        }
    }
    joined
}

/// Checks a streamed execution: asked to stream, its first attempt failed `unavailable`
/// mid-stream (`error` names the error) and was retried; the second streamed piece by piece,
/// and its deltas join to the stored output, which is `expected`.
async fn check_stream(world: &World, id: i64, error: &str, expected: &Value) {
    let events = world.stream(id).await;
    let (joined, attempts, spread) = join(&events);
    let (name, end, _) = events.last().unwrap();
    assert_eq!(name, "end");
    assert_eq!(end["status"], "completed", "{end:#}");
    let mut output = end["output"].clone();
    if let Some(o) = output.as_object_mut() {
        o.remove("cost");
    }
    assert_eq!(&output, expected, "{output:#}");
    assert_eq!(attempts, [1, 2], "a retried attempt streams anew");
    assert_eq!(joined, parts_of(expected), "the deltas join to the output");
    assert!(
        spread >= GAP * 2,
        "the deltas came as the pieces came, not at once: {spread:?}"
    );
    let history = &end["history"][0];
    assert_eq!(
        (history["outcome"].as_str(), history["error_kind"].as_str()),
        (Some("retried"), Some("unavailable")),
        "{history:#}"
    );
    let said = history["error"].as_str().unwrap();
    assert!(said.contains(error), "{said}");
}

fn weather_tool() -> Value {
    json!({"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": false},
           "strict": true})
}

fn answer_schema() -> Value {
    json!({"type": "object", "properties": {"answer": {"type": "string"}},
           "required": ["answer"], "additionalProperties": false})
}

/// An input with every field 0.2 added: two tools (one strict), a system prompt, a user
/// turn of text and images (a URL one when `url_image`), an assistant turn with signed
/// reasoning, text and a tool call `call_id`, and the tool's result.
fn everything(call_id: &str, url_image: bool) -> Value {
    let mut user = vec![
        json!({"type": "text", "text": "What is in these pictures? And the weather in Paris?"}),
        json!({"type": "image", "data": PNG, "media_type": "image/png"}),
    ];
    if url_image {
        user.push(json!({"type": "image", "url": "https://example.com/cat.jpg"}));
    }
    json!({
        "system": "Answer in JSON.",
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [
                {"type": "reasoning", "text": "The weather needs the tool.", "signature": "sig-Eq1"},
                {"type": "reasoning", "text": "", "redacted": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_call", "id": call_id, "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"}]},
            {"role": "tool", "content": [
                {"type": "tool_result", "call_id": call_id, "content": "18°C, clear"}]}],
        "max_tokens": 8000,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["END"],
        "tools": [weather_tool(), {"name": "get_time"}],
        "tool_choice": {"name": "get_weather"},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "name": "answer", "description": "The answer",
                            "schema": answer_schema(), "strict": true},
        "reasoning": {"effort": "high"}
    })
}

/// The round trip's second input: the question, the first output's content as the
/// assistant turn, and the tool's result for `call_id`.
fn second_turn(first: &Value, call_id: &str, extra: Value) -> Value {
    let mut input = json!({
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": first["content"]},
            {"role": "tool", "content": [
                {"type": "tool_result", "call_id": call_id, "content": "18°C, clear"}]}],
        "tools": [weather_tool()]
    });
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    input
}

// ---------------------------------------------------------------------------------------
// OpenAI Chat Completions

const OPENAI: &str = "/v1/chat/completions";

/// The function tool of Chat Completions for [`weather_tool`].
fn openai_weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false},
        "strict": true}})
}

fn openai_completion(message: Value, finish_reason: &str, usage: Value) -> Reply {
    Reply::json(
        200,
        json!({"id": "chatcmpl-C9aQ1", "object": "chat.completion", "created": 1755770000,
               "model": "gpt-4.1-2025-04-14",
               "choices": [{"index": 0, "message": message, "logprobs": null,
                            "finish_reason": finish_reason}],
               "usage": usage, "service_tier": "default", "system_fingerprint": "fp_51e1070cf2"}),
    )
}

fn openai_usage(prompt: u32, completion: u32, cached: u32, written: u32, reasoning: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written,
                                     "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                         "accepted_prediction_tokens": 0,
                                         "rejected_prediction_tokens": 0}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_every_request_field_reaches_the_wire() {
    let w = World::new("openai", "gpt-4.1").await;
    w.mock.reply([openai_completion(
        json!({"role": "assistant", "content": "{\"answer\":\"A cat; 18°C\"}", "refusal": null}),
        "stop",
        openai_usage(900, 20, 0, 0, 0),
    )]);
    w.output(everything("call_1", true)).await;
    assert_eq!(
        w.request(0, OPENAI).body,
        json!({
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these pictures? And the weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
                // Chat Completions takes no reasoning back.
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C, clear"}],
            "max_completion_tokens": 8000,
            "top_p": 0.9,
            "seed": 42,
            "stop": ["END"],
            "tools": [openai_weather(), {"type": "function", "function": {"name": "get_time"}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "description": "The answer", "schema": answer_schema(),
                "strict": true}},
            "reasoning_effort": "high"
        })
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_rich_answers_map_back() {
    let w = World::new("openai", "gpt-4.1").await;
    w.mock.reply([
        openai_completion(
            json!({"role": "assistant", "content": "Checking both.", "refusal": null,
                   "annotations": [],
                   "tool_calls": [
                       {"id": "call_Qx1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                       {"id": "call_Qx2", "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"}}]}),
            "tool_calls",
            openai_usage(2006, 300, 1920, 64, 192),
        ),
        openai_completion(
            json!({"role": "assistant", "content": null,
                   "refusal": "I'm sorry, I can't help with that.", "annotations": []}),
            "stop",
            openai_usage(50, 10, 0, 0, 0),
        ),
    ]);
    let out = w
        .output(json!({"prompt": "Weather and time in Paris?",
                       "tools": [weather_tool(), {"name": "get_time"}]}))
        .await;
    assert_eq!(
        out,
        json!({"text": "Checking both.",
               "content": [
                   {"type": "text", "text": "Checking both."},
                   {"type": "tool_call", "id": "call_Qx1", "name": "get_weather",
                    "arguments": "{\"city\":\"Paris\"}"},
                   {"type": "tool_call", "id": "call_Qx2", "name": "get_time", "arguments": "{}"}],
               "model": "gpt-4.1-2025-04-14",
               // prompt_tokens already holds the cached ones.
               "usage": {"input_tokens": 2006, "output_tokens": 300, "cache_read_tokens": 1920,
                         "cache_write_tokens": 64, "reasoning_tokens": 192},
               "finish_reason": "tool_calls"})
    );
    let out = w
        .output(json!({"prompt": "Something it refuses",
                       "response_format": {"type": "json_schema", "name": "answer",
                                           "schema": answer_schema(), "strict": true}}))
        .await;
    assert_eq!(
        out,
        json!({"text": "", "content": [], "refusal": "I'm sorry, I can't help with that.",
               "model": "gpt-4.1-2025-04-14",
               "usage": {"input_tokens": 50, "output_tokens": 10, "cache_read_tokens": 0,
                         "cache_write_tokens": 0, "reasoning_tokens": 0},
               "finish_reason": "refusal"})
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tool_call_round_trip() {
    let w = World::new("openai", "gpt-4.1").await;
    w.mock.reply([
        openai_completion(
            json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                   "tool_calls": [{"id": "call_Qx1", "type": "function",
                                   "function": {"name": "get_weather",
                                                "arguments": "{\"city\":\"Paris\"}"}}]}),
            "tool_calls",
            openai_usage(60, 18, 0, 0, 0),
        ),
        openai_completion(
            json!({"role": "assistant", "content": "It is 18°C and clear in Paris.",
                   "refusal": null, "annotations": []}),
            "stop",
            openai_usage(90, 12, 0, 0, 0),
        ),
    ]);
    let first = w
        .output(
            json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                       "tools": [weather_tool()]}),
        )
        .await;
    assert_eq!(first["finish_reason"], "tool_calls");
    assert_eq!(
        w.request(0, OPENAI).body,
        json!({"model": "gpt-4.1",
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [openai_weather()]})
    );
    let second = w.output(second_turn(&first, "call_Qx1", json!({}))).await;
    assert_eq!(
        w.request(1, OPENAI).body,
        json!({"model": "gpt-4.1",
               "messages": [
                   {"role": "user", "content": "What is the weather in Paris?"},
                   // The assistant message as received: no content, the calls.
                   {"role": "assistant", "content": null, "tool_calls": [
                       {"id": "call_Qx1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_Qx1", "content": "18°C, clear"}],
               "tools": [openai_weather()]})
    );
    assert_eq!(
        second,
        json!({"text": "It is 18°C and clear in Paris.",
               "content": [{"type": "text", "text": "It is 18°C and clear in Paris."}],
               "model": "gpt-4.1-2025-04-14",
               "usage": {"input_tokens": 90, "output_tokens": 12, "cache_read_tokens": 0,
                         "cache_write_tokens": 0, "reasoning_tokens": 0},
               "finish_reason": "stop"})
    );
    w.end().await;
}

/// Chat Completions' SSE: unnamed `data:` events, then `data: [DONE]`.
fn openai_sse(chunks: &[Value], done: bool) -> String {
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

/// A `chat.completion.chunk` with one choice whose delta is `delta`.
fn openai_chunk(delta: Value, finish_reason: Value) -> Value {
    json!({"id": "chatcmpl-S2x", "object": "chat.completion.chunk", "created": 1755770000,
           "model": "gpt-4.1-2025-04-14", "service_tier": "default",
           "system_fingerprint": "fp_51e1070cf2",
           "choices": [{"index": 0, "delta": delta, "logprobs": null,
                        "finish_reason": finish_reason}],
           "usage": null, "obfuscation": "k3Rv"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streams_chunk_by_chunk() {
    let w = World::new("openai", "gpt-4.1").await;
    let args = |fragment: &str| {
        openai_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
            Value::Null,
        )
    };
    let good = openai_sse(
        &[
            openai_chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ),
            openai_chunk(json!({"content": "Checking the weather "}), Value::Null),
            openai_chunk(json!({"content": "in Paris (°C)."}), Value::Null),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_S1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            args("{\"ci"),
            args("ty\":\"Pa"),
            args("ris\"}"),
            openai_chunk(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-S2x", "object": "chat.completion.chunk", "created": 1755770000,
                   "model": "gpt-4.1-2025-04-14", "choices": [],
                   "usage": openai_usage(120, 25, 64, 0, 0), "obfuscation": "p0"}),
        ],
        true,
    );
    let failing = openai_sse(
        &[
            openai_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            openai_chunk(json!({"content": "Check"}), Value::Null),
            json!({"error": {"message": "The server had an error while processing your request.",
                             "type": "server_error", "param": null, "code": null}}),
        ],
        false,
    );
    let sse = "text/event-stream";
    w.mock
        .reply_chunked([pieces(sse, &failing, 3, SLOW), pieces(sse, &good, 9, GAP)]);
    let id = w
        .submit(
            json!({"prompt": "What is the weather in Paris?", "tools": [weather_tool()],
                       "stream": true}),
        )
        .await;
    let expected = json!({
        "text": "Checking the weather in Paris (°C).",
        "content": [
            {"type": "text", "text": "Checking the weather in Paris (°C)."},
            {"type": "tool_call", "id": "call_S1", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}"}],
        "model": "gpt-4.1-2025-04-14",
        "usage": {"input_tokens": 120, "output_tokens": 25, "cache_read_tokens": 64,
                  "cache_write_tokens": 0, "reasoning_tokens": 0},
        "finish_reason": "tool_calls"});
    check_stream(&w, id, "server_error", &expected).await;
    for n in 0..2 {
        assert_eq!(
            w.request(n, OPENAI).body,
            json!({"model": "gpt-4.1",
                   "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                   "tools": [openai_weather()],
                   "stream": true, "stream_options": {"include_usage": true}})
        );
    }
    w.end().await;
}

// ---------------------------------------------------------------------------------------
// Anthropic Messages

const CLAUDE: &str = "/v1/messages";

/// The Messages API's tool for [`weather_tool`].
fn claude_weather() -> Value {
    json!({"name": "get_weather", "description": "Current weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": false},
           "strict": true})
}

fn claude_message(content: Value, stop_reason: &str, usage: Value) -> Reply {
    Reply::json(
        200,
        json!({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
               "model": "claude-sonnet-4-5-20250929", "content": content,
               "stop_reason": stop_reason, "stop_sequence": null, "usage": usage}),
    )
    .header("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")
}

fn claude_usage(input: u32, written: u32, read: u32, output: u32) -> Value {
    json!({"input_tokens": input, "cache_creation_input_tokens": written,
           "cache_read_input_tokens": read,
           "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
           "output_tokens": output, "service_tier": "standard"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_every_request_field_reaches_the_wire() {
    let w = World::new("claude", "claude-sonnet-4-5").await;
    w.mock.reply([claude_message(
        json!([{"type": "text", "text": "{\"answer\":\"A cat; 18°C\"}"}]),
        "end_turn",
        claude_usage(900, 0, 0, 20),
    )]);
    // With thinking on, the API takes only `auto` (or `none`) as the tool choice and a
    // top_p of 0.95 or more; and a budget of tokens goes as it is.
    let mut input = everything("toolu_01A09q90qw90lq917835lq9", true);
    input["tool_choice"] = json!("auto");
    input["top_p"] = json!(0.95);
    input["reasoning"] = json!({"budget_tokens": 2048});
    w.output(input).await;
    let req = w.request(0, CLAUDE);
    assert_eq!(req.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(
        req.body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 8000,
            "system": "Answer in JSON.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these pictures? And the weather in Paris?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "The weather needs the tool.", "signature": "sig-Eq1"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                     "input": {"city": "Paris"}}]},
                // No tool role: the results are a user turn of tool_result blocks.
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                     "content": "18°C, clear"}]}],
            // No seed: the Messages API has none.
            "top_p": 0.95,
            "stop_sequences": ["END"],
            "tools": [claude_weather(),
                      {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "output_config": {"format": {"type": "json_schema", "schema": answer_schema()}}
        })
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_rich_answers_map_back() {
    let w = World::new("claude", "claude-sonnet-4-5").await;
    w.mock.reply([claude_message(
        json!([
            {"type": "thinking", "thinking": "Weather and time: two tools.",
             "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
            {"type": "text", "text": "Let me check "},
            {"type": "text", "text": "both."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}]),
        "tool_use",
        claude_usage(21, 188, 1920, 393),
    )]);
    let out = w
        .output(
            json!({"prompt": "Weather and time in Paris?", "max_tokens": 4096,
                       "reasoning": {"budget_tokens": 1024},
                       "tools": [weather_tool(), {"name": "get_time"}]}),
        )
        .await;
    assert_eq!(
        out,
        json!({"text": "Let me check both.",
               "content": [
                   {"type": "reasoning", "text": "Weather and time: two tools.",
                    "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
                   {"type": "reasoning", "text": "",
                    "redacted": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
                   {"type": "text", "text": "Let me check "},
                   {"type": "text", "text": "both."},
                   {"type": "tool_call", "id": "toolu_01A", "name": "get_weather",
                    "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"},
                   {"type": "tool_call", "id": "toolu_01B", "name": "get_time", "arguments": "{}"}],
               "model": "claude-sonnet-4-5-20250929",
               // input_tokens is the uncached part only: lanes adds the cache's.
               "usage": {"input_tokens": 2129, "output_tokens": 393, "cache_read_tokens": 1920,
                         "cache_write_tokens": 188},
               "finish_reason": "tool_calls"})
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_tool_call_round_trip() {
    let w = World::new("claude", "claude-sonnet-4-5").await;
    let signature = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";
    w.mock.reply([
        claude_message(
            json!([
                {"type": "thinking", "thinking": "I need the weather tool.", "signature": signature},
                {"type": "text", "text": "I'll check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                 "input": {"city": "Paris"}}]),
            "tool_use",
            claude_usage(60, 0, 0, 40),
        ),
        claude_message(
            json!([{"type": "text", "text": "It is 18°C and clear in Paris."}]),
            "end_turn",
            claude_usage(120, 0, 0, 12),
        ),
    ]);
    let thinking = json!({"max_tokens": 2048, "reasoning": {"budget_tokens": 1024}});
    let mut input = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                           "tools": [weather_tool()]});
    input["max_tokens"] = thinking["max_tokens"].clone();
    input["reasoning"] = thinking["reasoning"].clone();
    let first = w.output(input).await;
    assert_eq!(first["finish_reason"], "tool_calls");
    assert_eq!(
        w.request(0, CLAUDE).body,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 2048,
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [claude_weather()],
               "thinking": {"type": "enabled", "budget_tokens": 1024}})
    );
    let second = w.output(second_turn(&first, "toolu_01A", thinking)).await;
    assert_eq!(
        w.request(1, CLAUDE).body,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 2048,
               "messages": [
                   {"role": "user", "content": "What is the weather in Paris?"},
                   // As received, the signed thinking block unchanged.
                   {"role": "assistant", "content": [
                       {"type": "thinking", "thinking": "I need the weather tool.",
                        "signature": signature},
                       {"type": "text", "text": "I'll check."},
                       {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                        "input": {"city": "Paris"}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "toolu_01A",
                        "content": "18°C, clear"}]}],
               "tools": [claude_weather()],
               "thinking": {"type": "enabled", "budget_tokens": 1024}})
    );
    assert_eq!(
        second,
        json!({"text": "It is 18°C and clear in Paris.",
               "content": [{"type": "text", "text": "It is 18°C and clear in Paris."}],
               "model": "claude-sonnet-4-5-20250929",
               "usage": {"input_tokens": 120, "output_tokens": 12, "cache_read_tokens": 0,
                         "cache_write_tokens": 0},
               "finish_reason": "stop"})
    );
    w.end().await;
}

/// The Messages API's SSE: each event named by its `type`.
fn claude_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_streams_chunk_by_chunk() {
    let w = World::new("claude", "claude-sonnet-4-5").await;
    let start = json!({"type": "message_start", "message": {
        "id": "msg_01S", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null,
        "stop_sequence": null,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 10,
                  "cache_read_input_tokens": 100, "output_tokens": 1,
                  "service_tier": "standard"}}});
    let delta = |index: u32, delta: Value| json!({"type": "content_block_delta", "index": index, "delta": delta});
    let block = |index: u32, block: Value| json!({"type": "content_block_start", "index": index, "content_block": block});
    let stop = |index: u32| json!({"type": "content_block_stop", "index": index});
    let good = claude_sse(&[
        start.clone(),
        block(
            0,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ),
        delta(
            0,
            json!({"type": "thinking_delta", "thinking": "The user wants "}),
        ),
        delta(
            0,
            json!({"type": "thinking_delta", "thinking": "Paris weather."}),
        ),
        delta(
            0,
            json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}),
        ),
        stop(0),
        block(1, json!({"type": "text", "text": ""})),
        json!({"type": "ping"}),
        delta(1, json!({"type": "text_delta", "text": "I'll check "})),
        delta(
            1,
            json!({"type": "text_delta", "text": "the weather (°C)."}),
        ),
        stop(1),
        block(
            2,
            json!({"type": "tool_use", "id": "toolu_01S", "name": "get_weather", "input": {}}),
        ),
        delta(2, json!({"type": "input_json_delta", "partial_json": ""})),
        delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "{\"city\": "}),
        ),
        delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"}),
        ),
        stop(2),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"output_tokens": 89}}),
        json!({"type": "message_stop"}),
    ]);
    let failing = claude_sse(&[
        start,
        block(0, json!({"type": "text", "text": ""})),
        delta(0, json!({"type": "text_delta", "text": "I'll"})),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
               "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}),
    ]);
    let sse = "text/event-stream";
    w.mock
        .reply_chunked([pieces(sse, &failing, 3, SLOW), pieces(sse, &good, 9, GAP)]);
    let input = json!({"prompt": "What is the weather in Paris?", "tools": [weather_tool()],
                       "max_tokens": 2048, "reasoning": {"budget_tokens": 1024},
                       "stream": true});
    let id = w.submit(input).await;
    let expected = json!({
        "text": "I'll check the weather (°C).",
        "content": [
            {"type": "reasoning", "text": "The user wants Paris weather.",
             "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
            {"type": "text", "text": "I'll check the weather (°C)."},
            // The arguments as the model wrote them.
            {"type": "tool_call", "id": "toolu_01S", "name": "get_weather",
             "arguments": "{\"city\": \"Paris\"}"}],
        "model": "claude-sonnet-4-5-20250929",
        "usage": {"input_tokens": 135, "output_tokens": 89, "cache_read_tokens": 100,
                  "cache_write_tokens": 10},
        "finish_reason": "tool_calls"});
    check_stream(&w, id, "overloaded_error", &expected).await;
    for n in 0..2 {
        assert_eq!(
            w.request(n, CLAUDE).body,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 2048,
                   "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                   "tools": [claude_weather()],
                   "thinking": {"type": "enabled", "budget_tokens": 1024},
                   "stream": true})
        );
    }
    w.end().await;
}

// ---------------------------------------------------------------------------------------
// Ollama /api/chat

const OLLAMA: &str = "/api/chat";

/// Ollama's tool for [`weather_tool`]: the OpenAI shape, without `strict`.
fn ollama_weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}})
}

/// A whole (unstreamed) `/api/chat` answer.
fn ollama_done(message: Value, prompt: u32, eval: u32) -> Reply {
    Reply::json(
        200,
        json!({"model": "qwen3", "created_at": "2026-08-21T10:00:00.000000Z",
               "message": message, "done_reason": "stop", "done": true,
               "total_duration": 4883583458u64, "load_duration": 1334875,
               "prompt_eval_count": prompt, "prompt_eval_duration": 342546000,
               "eval_count": eval, "eval_duration": 4535599000u64}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_every_request_field_reaches_the_wire() {
    let w = World::new("ollama", "qwen3").await;
    w.mock.reply([ollama_done(
        json!({"role": "assistant", "content": "{\"answer\":\"A cat; 18°C\"}"}),
        900,
        20,
    )]);
    // Ollama takes base64 images only.
    w.output(everything("call_k3j9x0aa", false)).await;
    assert_eq!(
        w.request(0, OLLAMA).body,
        json!({
            "model": "qwen3",
            "stream": false,
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": "What is in these pictures? And the weather in Paris?",
                 "images": [PNG]},
                {"role": "assistant", "content": "Let me check.",
                 "thinking": "The weather needs the tool.",
                 "tool_calls": [{"id": "call_k3j9x0aa",
                                 "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "18°C, clear", "tool_name": "get_weather",
                 "tool_call_id": "call_k3j9x0aa"}],
            "options": {"num_predict": 8000, "top_p": 0.9, "seed": 42, "stop": ["END"]},
            // No tool_choice in Ollama: a named tool is offered alone.
            "tools": [ollama_weather()],
            "format": answer_schema(),
            "think": "high"
        })
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_rich_answers_map_back() {
    let w = World::new("ollama", "qwen3").await;
    w.mock.reply([ollama_done(
        json!({"role": "assistant", "content": "",
               "thinking": "Weather and time: two tools.",
               "tool_calls": [
                   {"id": "call_k3j9x0aa",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
                   // Older servers send no id.
                   {"function": {"index": 1, "name": "get_time", "arguments": {}}}]}),
        26,
        282,
    )]);
    let out = w
        .output(
            json!({"prompt": "Weather and time in Paris?", "reasoning": {"effort": "low"},
                       "tools": [weather_tool(), {"name": "get_time"}]}),
        )
        .await;
    assert_eq!(
        out,
        json!({"text": "",
               "content": [
                   {"type": "reasoning", "text": "Weather and time: two tools."},
                   {"type": "tool_call", "id": "call_k3j9x0aa", "name": "get_weather",
                    "arguments": "{\"city\":\"Paris\"}"},
                   {"type": "tool_call", "id": "call_1", "name": "get_time", "arguments": "{}"}],
               "model": "qwen3",
               "usage": {"input_tokens": 26, "output_tokens": 282},
               // done_reason stays `stop` on a tool call: the calls say it.
               "finish_reason": "tool_calls"})
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_tool_call_round_trip() {
    let w = World::new("ollama", "qwen3").await;
    w.mock.reply([
        ollama_done(
            json!({"role": "assistant", "content": "",
                   "tool_calls": [{"id": "call_k3j9x0aa",
                                   "function": {"index": 0, "name": "get_weather",
                                                "arguments": {"city": "Paris"}}}]}),
            60,
            18,
        ),
        ollama_done(
            json!({"role": "assistant", "content": "It is 18°C and clear in Paris."}),
            90,
            12,
        ),
    ]);
    let first = w
        .output(
            json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                       "tools": [weather_tool()]}),
        )
        .await;
    assert_eq!(first["finish_reason"], "tool_calls");
    assert_eq!(
        w.request(0, OLLAMA).body,
        json!({"model": "qwen3", "stream": false,
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [ollama_weather()]})
    );
    let second = w
        .output(second_turn(&first, "call_k3j9x0aa", json!({})))
        .await;
    assert_eq!(
        w.request(1, OLLAMA).body,
        json!({"model": "qwen3", "stream": false,
               "messages": [
                   {"role": "user", "content": "What is the weather in Paris?"},
                   {"role": "assistant", "content": "", "tool_calls": [
                       {"id": "call_k3j9x0aa",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                   {"role": "tool", "content": "18°C, clear", "tool_name": "get_weather",
                    "tool_call_id": "call_k3j9x0aa"}],
               "tools": [ollama_weather()]})
    );
    assert_eq!(
        second,
        json!({"text": "It is 18°C and clear in Paris.",
               "content": [{"type": "text", "text": "It is 18°C and clear in Paris."}],
               "model": "qwen3",
               "usage": {"input_tokens": 90, "output_tokens": 12},
               "finish_reason": "stop"})
    );
    w.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_streams_chunk_by_chunk() {
    let w = World::new("ollama", "qwen3").await;
    let line = |message: Value| {
        json!({"model": "qwen3", "created_at": "2026-08-21T10:00:00.000000Z",
               "message": message, "done": false})
    };
    let ndjson = |lines: &[Value]| -> String { lines.iter().map(|l| format!("{l}\n")).collect() };
    let good = ndjson(&[
        line(json!({"role": "assistant", "content": "", "thinking": "The user wants "})),
        line(json!({"role": "assistant", "content": "", "thinking": "Paris weather."})),
        line(json!({"role": "assistant", "content": "I'll check "})),
        line(json!({"role": "assistant", "content": "the weather (°C)."})),
        // Tool calls come whole.
        line(json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_k3j9x0aa",
             "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]})),
        json!({"model": "qwen3", "created_at": "2026-08-21T10:00:01.000000Z",
               "message": {"role": "assistant", "content": ""}, "done": true,
               "done_reason": "stop", "total_duration": 4883583458u64, "load_duration": 1334875,
               "prompt_eval_count": 26, "prompt_eval_duration": 342546000,
               "eval_count": 282, "eval_duration": 4535599000u64}),
    ]);
    // An error mid-stream: the status stays 200.
    let failing = ndjson(&[
        line(json!({"role": "assistant", "content": "I'll"})),
        json!({"error": "an error was encountered while running the model: unexpected EOF"}),
    ]);
    let nd = "application/x-ndjson";
    w.mock
        .reply_chunked([pieces(nd, &failing, 3, SLOW), pieces(nd, &good, 9, GAP)]);
    let input = json!({"prompt": "What is the weather in Paris?", "tools": [weather_tool()],
                       "reasoning": {"effort": "medium"}, "stream": true});
    let id = w.submit(input).await;
    let expected = json!({
        "text": "I'll check the weather (°C).",
        "content": [
            {"type": "reasoning", "text": "The user wants Paris weather."},
            {"type": "text", "text": "I'll check the weather (°C)."},
            {"type": "tool_call", "id": "call_k3j9x0aa", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}"}],
        "model": "qwen3",
        "usage": {"input_tokens": 26, "output_tokens": 282},
        "finish_reason": "tool_calls"});
    check_stream(&w, id, "unexpected EOF", &expected).await;
    for n in 0..2 {
        assert_eq!(
            w.request(n, OLLAMA).body,
            json!({"model": "qwen3", "stream": true,
                   "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                   "tools": [ollama_weather()], "think": "medium"})
        );
    }
    w.end().await;
}
