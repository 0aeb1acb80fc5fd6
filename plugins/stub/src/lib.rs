//! A provider component whose behaviour the request drives: the tests, the benchmarks and
//! `lanes demo` use it in place of a real LLM API.
//!
//! Behaviour comes from the request's `extra` JSON object, with defaults from this provider's
//! config values (so one `stub.wasm` loaded under several names can act as several providers):
//!
//! | key | effect |
//! |---|---|
//! | `sleep_ms` (config `latency_ms`) | sleep this long before answering |
//! | `jitter_ms` (config `jitter_ms`) | add a pseudo-random 0..=N ms to the sleep |
//! | `error` (config `error`) | fail with `rate-limited`, `unavailable`, `invalid-request`, `unauthorized` or `other` |
//! | `fail_rate` (config `fail_rate`) | fail with `unavailable` on this fraction (0.0-1.0) of calls |
//! | `fail_until_ms` | fail with `error` (default `unavailable`) until the wall clock passes this Unix time in ms |
//! | `retry_after_ms` | the wait a `rate-limited` error carries, or an `unavailable` one reports through `hints.retry-after` |
//! | `trap` / `panic` | trap with `unreachable`, or panic (which also traps) |
//! | `loop` | spin forever |
//! | `alloc_mb` | allocate this many MiB, 1 MiB at a time; `-1` allocates without bound |
//! | `output_bytes` | answer with a text of this many bytes |
//! | `text` | answer with this text |
//! | `probe_file` / `probe_env` | try to read this host file / environment variable, and answer with what happened |
//! | `echo_secret` | log the `api-key` secret and fail with it in the error, as a careless API does |
//! | `stream_pieces` | when streaming, cut the text into this many deltas (default 4) |
//! | `stream_gap_ms` | when streaming, sleep this long before each text delta |
//! | `usage` | report this usage (`input_tokens`, `output_tokens`, `cache_read_tokens`, `cache_write_tokens`, `reasoning_tokens`; each optional) instead of counting words |
//!
//! Without `text` or `output_bytes`, the answer comes from the conversation:
//!
//! - the last message is a `tool` message: text `tool said: <its results' text parts>`;
//! - the request offers tools and the last user message starts with `call:NAME ARGS_JSON`:
//!   a `tool-call` part (id `call_1`, arguments `ARGS_JSON`, `{}` when absent), finish
//!   `tool-calls`;
//! - otherwise text `stub reply to: <the last message's text>`, or, when the request asks
//!   for JSON (`response-format` `json-object` or `json-schema`), that text as
//!   `{"reply": "stub reply to: ..."}`.
//!
//! When the request asks to stream, the answer also goes out as a few `stream.emit` deltas
//! (text pieces, or a tool call's start and arguments, then the usage) before it is returned.
//!
//! Config `default_limit` sets the limit that `info()` declares (default 4), and config
//! `info_trap` makes `info()` panic. It declares every capability: tools, JSON schemas,
//! images (base64 and URLs), reasoning and streaming.

use std::time::Duration;

use serde::Deserialize;

// No HTTP: the stub implements the export itself, on the SDK's bindings and helpers.
use lanes_guest::bindings::exports::lanes::provider::adapter::Guest;
use lanes_guest::bindings::lanes::provider::stream::{Delta, ToolCallArguments, ToolCallStart};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, ContentPart, FinishReason, ProviderError,
    ProviderInfo, RateLimit, ResponseFormat, ResultPart, Role, ToolCall, Usage,
};
use lanes_guest::bindings::lanes::provider::{config, hints, stream};

/// What the request asks the stub to do. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Behaviour {
    sleep_ms: Option<u64>,
    jitter_ms: Option<u64>,
    error: Option<String>,
    fail_rate: Option<f64>,
    fail_until_ms: Option<u64>,
    retry_after_ms: Option<u64>,
    trap: bool,
    panic: bool,
    #[serde(rename = "loop")]
    spin: bool,
    alloc_mb: Option<i64>,
    output_bytes: Option<usize>,
    text: Option<String>,
    probe_file: Option<String>,
    probe_env: Option<String>,
    echo_secret: bool,
    stream_pieces: Option<usize>,
    stream_gap_ms: Option<u64>,
    usage: Option<UsageKnob>,
}

/// The `usage` the stub reports when asked to.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageKnob {
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    cache_read_tokens: Option<u32>,
    cache_write_tokens: Option<u32>,
    reasoning_tokens: Option<u32>,
}

struct Stub;

fn config_u64(key: &str) -> Option<u64> {
    lanes_guest::config_parse(key).ok().flatten()
}

/// A cheap pseudo-random number from the clock: good enough for latency jitter and fail rates.
fn pseudo_random() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    // splitmix64
    let mut z = now.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn error_of(kind: &str, retry_after_ms: Option<u64>) -> ProviderError {
    let message = format!("stub asked to fail with {kind}");
    match kind {
        "rate-limited" => ProviderError::RateLimited(RateLimit {
            retry_after_ms,
            window_spent: false,
            message,
        }),
        "unavailable" => {
            // A 503 that says when to come back.
            if let Some(ms) = retry_after_ms {
                hints::retry_after(ms);
            }
            ProviderError::Unavailable(message)
        }
        "invalid-request" => ProviderError::InvalidRequest(message),
        "unauthorized" => ProviderError::Unauthorized(message),
        _ => ProviderError::Other(message),
    }
}

impl Guest for Stub {
    fn info() -> ProviderInfo {
        if config::get("info_trap").is_some() {
            panic!("stub: info() asked to trap");
        }
        ProviderInfo {
            name: "stub".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            default_limit: config_u64("default_limit").map_or(4, |v| v as u32),
            description: "Test provider: the request drives latency, errors, traps and memory"
                .to_string(),
            capabilities: Capabilities::TOOLS
                | Capabilities::JSON_SCHEMA
                | Capabilities::IMAGES
                | Capabilities::IMAGE_URLS
                | Capabilities::REASONING
                | Capabilities::STREAMING,
            image_media_types: Vec::new(),
        }
    }

    fn execute(request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let behaviour: Behaviour = match request.extra.as_deref() {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| ProviderError::InvalidRequest(format!("stub: bad extra: {e}")))?,
            None => Behaviour::default(),
        };

        let sleep_ms = behaviour.sleep_ms.or_else(|| config_u64("latency_ms"));
        let jitter_ms = behaviour.jitter_ms.or_else(|| config_u64("jitter_ms"));
        let total_sleep = sleep_ms.unwrap_or(0)
            + jitter_ms.map_or(0, |j| if j == 0 { 0 } else { pseudo_random() % (j + 1) });
        if total_sleep > 0 {
            std::thread::sleep(Duration::from_millis(total_sleep));
        }

        if behaviour.trap {
            lanes_guest::warn!("stub: trapping as asked");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
        if behaviour.panic {
            panic!("stub: panicking as asked");
        }
        if behaviour.spin {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(mb) = behaviour.alloc_mb {
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut i: i64 = 0;
            while mb < 0 || i < mb {
                held.push(vec![0xA5; 1 << 20]);
                i += 1;
            }
            std::hint::black_box(&held);
        }

        if behaviour.echo_secret {
            let key = lanes_guest::secret("api-key").unwrap_or_default();
            lanes_guest::warn!("stub: calling with key {key}");
            return Err(ProviderError::Unauthorized(format!(
                "Incorrect API key provided: {key}. You can find your API key at ..."
            )));
        }
        let error = behaviour.error.clone().or_else(|| config::get("error"));
        if let Some(until) = behaviour.fail_until_ms {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            if now < until {
                return Err(error_of(
                    error.as_deref().unwrap_or("unavailable"),
                    behaviour.retry_after_ms,
                ));
            }
        } else if let Some(kind) = error {
            return Err(error_of(&kind, behaviour.retry_after_ms));
        }
        let fail_rate = behaviour
            .fail_rate
            .or_else(|| config::get("fail_rate").and_then(|v| v.parse().ok()));
        if let Some(rate) = fail_rate
            && (pseudo_random() % 10_000) as f64 / 10_000.0 < rate
        {
            return Err(error_of("unavailable", None));
        }

        let answer = if let Some(path) = &behaviour.probe_file {
            Answer::Text(match std::fs::read_to_string(path) {
                Ok(content) => format!("file read: {content}"),
                Err(e) => format!("file denied: {e}"),
            })
        } else if let Some(name) = &behaviour.probe_env {
            Answer::Text(match std::env::var(name) {
                Ok(value) => format!("env read: {value}"),
                Err(e) => format!("env denied: {e}"),
            })
        } else {
            match (behaviour.output_bytes, behaviour.text) {
                (Some(n), _) => Answer::Text("x".repeat(n)),
                (None, Some(text)) => Answer::Text(text),
                (None, None) => conversation_answer(&request),
            }
        };
        let mut response = match answer {
            Answer::Text(text) => reply(text, &request),
            Answer::Call(call) => {
                let mut response = reply(String::new(), &request);
                response.content = vec![ContentPart::ToolCall(call)];
                response.finish_reason = FinishReason::ToolCalls;
                response
            }
        };
        if let Some(u) = &behaviour.usage {
            let usage = &mut response.usage;
            usage.input_tokens = u.input_tokens.unwrap_or(usage.input_tokens);
            usage.output_tokens = u.output_tokens.unwrap_or(usage.output_tokens);
            usage.cache_read_tokens = u.cache_read_tokens;
            usage.cache_write_tokens = u.cache_write_tokens;
            usage.reasoning_tokens = u.reasoning_tokens;
        }
        if request.stream {
            emit_stream(
                &response,
                behaviour.stream_pieces.unwrap_or(4),
                Duration::from_millis(behaviour.stream_gap_ms.unwrap_or(0)),
            );
        }
        Ok(response)
    }
}

/// What the stub answers when the request does not say.
enum Answer {
    Text(String),
    Call(ToolCall),
}

/// The answer the conversation calls for (see the module docs).
fn conversation_answer(request: &ChatRequest) -> Answer {
    let last = request.messages.last();
    if let Some(last) = last.filter(|m| m.role == Role::Tool) {
        let said: Vec<String> = last
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::ToolResult(r) => Some(
                    r.parts
                        .iter()
                        .filter_map(|p| match p {
                            ResultPart::Text(t) => Some(t.as_str()),
                            ResultPart::Image(_) => None,
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                ContentPart::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        return Answer::Text(format!("tool said: {}", said.join("\n")));
    }
    if !request.tools.is_empty()
        && let Some(user) = request.messages.iter().rev().find(|m| m.role == Role::User)
        && let Some(call) = lanes_guest::message_text(user).strip_prefix("call:")
    {
        let call = call.trim_start();
        let (name, arguments) = call.split_once(char::is_whitespace).unwrap_or((call, ""));
        let arguments = arguments.trim();
        return Answer::Call(ToolCall {
            id: "call_1".to_string(),
            name: name.to_string(),
            arguments: if arguments.is_empty() {
                "{}"
            } else {
                arguments
            }
            .to_string(),
        });
    }
    let last = last.map(lanes_guest::message_text).unwrap_or_default();
    let reply = format!("stub reply to: {last}");
    // Asked for JSON: an object with the reply, which a schema with a string `reply` takes.
    match &request.response_format {
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema(_)) => {
            Answer::Text(serde_json::json!({ "reply": reply }).to_string())
        }
        _ => Answer::Text(reply),
    }
}

/// Streams `response` as deltas: its text in up to `n` pieces (`gap` before each), each
/// tool call's start and arguments, then the usage.
fn emit_stream(response: &ChatResponse, n: usize, gap: Duration) {
    let mut call_index = 0;
    for part in &response.content {
        match part {
            ContentPart::Text(text) => {
                for piece in pieces(text, n) {
                    if !gap.is_zero() {
                        std::thread::sleep(gap);
                    }
                    stream::emit(&Delta::Text(piece.to_string()));
                }
            }
            ContentPart::ToolCall(call) => {
                stream::emit(&Delta::ToolCallStart(ToolCallStart {
                    index: call_index,
                    id: call.id.clone(),
                    name: call.name.clone(),
                }));
                for fragment in pieces(&call.arguments, 2) {
                    stream::emit(&Delta::ToolCallArguments(ToolCallArguments {
                        index: call_index,
                        fragment: fragment.to_string(),
                    }));
                }
                call_index += 1;
            }
            _ => {}
        }
    }
    stream::emit(&Delta::Usage(response.usage));
}

/// `text` cut into at most `n` non-empty pieces, on character boundaries.
fn pieces(text: &str, n: usize) -> Vec<&str> {
    let size = text.len().div_ceil(n.max(1)).max(1);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

fn reply(text: String, request: &ChatRequest) -> ChatResponse {
    let input_tokens: usize = request
        .messages
        .iter()
        .map(|m| lanes_guest::message_text(m).split_whitespace().count())
        .sum();
    ChatResponse {
        model: request
            .model
            .clone()
            .or_else(|| config::get("model"))
            .unwrap_or_else(|| "stub-1".to_string()),
        usage: Usage {
            input_tokens: input_tokens as u32,
            output_tokens: text.split_whitespace().count() as u32,
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
        },
        content: lanes_guest::text_content(text),
        refusal: None,
        finish_reason: FinishReason::Stop,
    }
}

lanes_guest::bindings::export!(Stub with_types_in lanes_guest::bindings);
