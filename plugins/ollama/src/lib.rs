//! Ollama's chat API (`POST {base_url}/api/chat`) as a lanes provider.
//!
//! Config: `base_url` (default http://127.0.0.1:11434) and `model`. There is no auth.
//! `"stream": false` is always sent, since Ollama streams NDJSON when the field is missing;
//! an NDJSON reply is still understood.

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, FinishReason, ProviderError, ProviderInfo, Usage,
};
use lanes_guest::http;
use serde_json::{Map, Value, json};

struct Ollama;

/// The request body Ollama expects.
fn body(request: &ChatRequest, model: &str) -> Map<String, Value> {
    let messages = lanes_guest::chat_messages(request);
    let mut options = Map::new();
    if let Some(t) = request.temperature {
        options.insert("temperature".into(), lanes_guest::f32_json(t));
    }
    if let Some(n) = request.max_tokens {
        options.insert("num_predict".into(), json!(n));
    }
    if !request.stop.is_empty() {
        options.insert("stop".into(), json!(request.stop));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(false));
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    body
}

/// Reads a reply: one JSON object, or NDJSON lines whose contents are joined.
fn parse(text: &str) -> Result<ChatResponse, ProviderError> {
    let mut content = String::new();
    let mut last = Value::Null;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable reply: {e}")))?;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(ProviderError::Unavailable(format!(
                "error in stream: {error}"
            )));
        }
        if let Some(piece) = value.pointer("/message/content").and_then(Value::as_str) {
            content.push_str(piece);
        }
        last = value;
    }
    let count = |key: &str| lanes_guest::count_at(&last, &format!("/{key}"));
    let finish_reason = match last.get("done_reason").and_then(Value::as_str) {
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    Ok(ChatResponse {
        content: lanes_guest::text_content(content),
        refusal: None,
        model: lanes_guest::text_at(&last, "/model"),
        usage: Usage {
            input_tokens: count("prompt_eval_count"),
            output_tokens: count("eval_count"),
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
        },
        finish_reason,
    })
}

impl HttpAdapter for Ollama {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "ollama".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 2,
            description: "Ollama chat API (/api/chat), local or remote".into(),
            capabilities: Capabilities::empty(),
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:11434";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        Ok(HttpRequest::post(
            "/api/chat",
            Value::Object(body(request, &model)),
        ))
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(&response.text())
    }
}

lanes_guest::export_http_adapter!(Ollama);
