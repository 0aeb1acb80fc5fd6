//! OpenAI's Chat Completions API (`POST {base_url}/v1/chat/completions`) as a lanes
//! provider. With `base_url` it serves any OpenAI-compatible server (vLLM, the llama.cpp
//! server, LM Studio).
//!
//! Config: `base_url` (default https://api.openai.com), `model` and `max_tokens_field`
//! (`max_completion_tokens`, the default, or `max_tokens` for older compatible servers). The
//! key, when set, is the provider's `api-key` secret, sent as a Bearer token.

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, FinishReason, ProviderError, ProviderInfo, RateLimit,
    Usage,
};
use lanes_guest::{errors, http};
use serde_json::{Map, Value, json};

struct OpenAi;

/// The request body Chat Completions expects.
fn body(request: &ChatRequest, model: &str) -> Map<String, Value> {
    let messages = lanes_guest::chat_messages(request);
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = request.max_tokens {
        let field = lanes_guest::config_or("max_tokens_field", "max_completion_tokens");
        body.insert(field, json!(n));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), lanes_guest::f32_json(t));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    body
}

fn parse(response: &http::Response) -> Result<ChatResponse, ProviderError> {
    let value = lanes_guest::adapter::json(response)?;
    let choice = value
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::Unavailable("reply has no choices".into()))?;
    let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    let count = |key: &str| lanes_guest::count_at(&value, &format!("/usage/{key}"));
    Ok(ChatResponse {
        content: lanes_guest::text_content(lanes_guest::text_at(choice, "/message/content")),
        refusal: None,
        model: lanes_guest::text_at(&value, "/model"),
        usage: Usage {
            input_tokens: count("prompt_tokens"),
            output_tokens: count("completion_tokens"),
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
        },
        finish_reason,
    })
}

/// Maps an error reply `{"error":{"message","type","code"}}`.
fn error(response: &http::Response) -> ProviderError {
    let text = response.text();
    let value: Option<Value> = serde_json::from_str(&text).ok();
    let field = |key: &str| {
        value
            .as_ref()
            .and_then(|v| v.pointer(&format!("/error/{key}")))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = field("code").unwrap_or_default();
    let message = match (field("message"), code.is_empty()) {
        (Some(m), true) => m,
        (Some(m), false) => format!("{code}: {m}"),
        (None, _) => text,
    };
    let class = if response.status == 429 {
        // Quota is not restored by waiting.
        if code == "insufficient_quota" {
            ProviderError::Other(format!("HTTP 429: {message}"))
        } else {
            let reset = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
                .iter()
                .filter_map(|h| response.header(h).and_then(errors::go_duration_ms))
                .max();
            // OpenAI's limits are windows of requests and tokens: its own refusal
            // (`rate_limit_exceeded`) or a remaining count of 0 says one is spent. Without
            // either (a compatible server over its capacity), the host weighs it.
            let spent = errors::spent_window(response)
                .or_else(|| (code == "rate_limit_exceeded").then(|| format!("code {code}")));
            ProviderError::RateLimited(errors::mark_spent(
                RateLimit {
                    retry_after_ms: errors::retry_after_ms(response).or(reset),
                    window_spent: false,
                    message: format!("HTTP 429: {message}"),
                },
                spent,
            ))
        }
    } else {
        errors::from_status(response, message)
    };
    errors::obey_should_retry(response, class)
}

impl HttpAdapter for OpenAi {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "openai".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 3,
            description: "OpenAI Chat Completions API and compatible servers".into(),
            capabilities: Capabilities::empty(),
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "https://api.openai.com";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        let body = Value::Object(body(request, &model));
        Ok(HttpRequest::post("/v1/chat/completions", body).bearer_auth())
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(response)
    }

    fn classify_error(response: &http::Response) -> ProviderError {
        error(response)
    }
}

lanes_guest::export_http_adapter!(OpenAi);
