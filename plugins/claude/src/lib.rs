//! Anthropic's Messages API (`POST {base_url}/v1/messages`) as a lanes provider.
//!
//! Config: `base_url` (default https://api.anthropic.com), `model`, `anthropic_version`
//! (default `2026-10-21`, what the current official SDK sends), `default_max_tokens` (the API
//! requires `max_tokens`; default 1024) and `auth` (`bearer`, the SDK's form and the default,
//! or `x-api-key`). The key is the provider's `api-key` secret.
//!
//! Sampling fields are sent only when the request sets them: the 2026-10-21 API version
//! rejects `temperature` even at its default value.

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::config;
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, FinishReason, ProviderError, ProviderInfo, Role, Usage,
};
use lanes_guest::{errors, http};
use serde_json::{Map, Value, json};

struct Claude;

/// The request body the Messages API expects.
fn body(request: &ChatRequest, model: &str) -> Map<String, Value> {
    // System turns have no place in `messages`: they join the top-level system prompt.
    let mut system: Vec<&str> = request.system.as_deref().into_iter().collect();
    let mut messages = Vec::new();
    let mut system_turns = Vec::new();
    for m in &request.messages {
        let text = lanes_guest::message_text(m);
        match m.role {
            Role::System => system_turns.push(text),
            Role::User | Role::Tool => messages.push(json!({"role": "user", "content": text})),
            Role::Assistant => messages.push(json!({"role": "assistant", "content": text})),
        }
    }
    system.extend(system_turns.iter().map(String::as_str));
    let max_tokens = match request.max_tokens {
        Some(n) => n,
        None => config::get("default_max_tokens")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024),
    };
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), lanes_guest::f32_json(t));
    }
    body
}

fn parse(response: &http::Response) -> Result<ChatResponse, ProviderError> {
    let value = lanes_guest::adapter::json(response)?;
    let text: String = value
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default();
    let finish_reason = match value.get("stop_reason").and_then(Value::as_str) {
        Some("end_turn") | Some("stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens") | Some("model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    let count = |key: &str| lanes_guest::count_at(&value, &format!("/usage/{key}"));
    Ok(ChatResponse {
        content: lanes_guest::text_content(text),
        refusal: None,
        model: lanes_guest::text_at(&value, "/model"),
        usage: Usage {
            // lanes counts every prompt token; Anthropic's `input_tokens` is the part that
            // was neither read from nor written to the prompt cache.
            input_tokens: count("input_tokens")
                .saturating_add(count("cache_read_input_tokens"))
                .saturating_add(count("cache_creation_input_tokens")),
            output_tokens: count("output_tokens"),
            cache_read_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
        },
        finish_reason,
    })
}

/// Maps an error reply `{"type":"error","error":{"type","message"}}`.
fn error(response: &http::Response) -> ProviderError {
    let text = response.text();
    let parsed: Option<(String, String, String)> =
        serde_json::from_str::<Value>(&text).ok().map(|v| {
            let field = |pointer: &str| {
                v.pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (
                field("/error/type"),
                field("/error/message"),
                field("/error/details/error_code"),
            )
        });
    let (kind, message, code) = parsed.unwrap_or_else(|| (String::new(), text, String::new()));
    let described = if kind.is_empty() {
        message.clone()
    } else {
        format!("{kind}: {message}")
    };
    // A spend limit is not lifted by waiting: the error code says so, and older answers
    // only say it in words.
    let spend_limit = code == "enforced_spend_limit_reached"
        || message.to_ascii_lowercase().contains("spend limit");
    let class = if response.status == 429 && spend_limit {
        ProviderError::Other(format!("HTTP 429: {described}"))
    } else if response.status == 529 {
        // Overloaded: wait as asked when the answer says how long.
        errors::report_wait(errors::retry_after_ms(response));
        ProviderError::Unavailable(format!("HTTP 529: {described}"))
    } else {
        errors::from_status(response, described)
    };
    errors::obey_should_retry(response, class)
}

impl HttpAdapter for Claude {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "claude".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 3,
            description: "Anthropic Messages API (/v1/messages)".into(),
            capabilities: Capabilities::empty(),
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        let key = lanes_guest::secret("api-key").ok_or_else(|| {
            ProviderError::Unauthorized("no API key: set api_key_env or api_key_file".into())
        })?;
        let built = HttpRequest::post("/v1/messages", Value::Object(body(request, &model))).header(
            "anthropic-version",
            lanes_guest::config_or("anthropic_version", "2026-10-21"),
        );
        Ok(if config::get("auth").as_deref() == Some("x-api-key") {
            built.header("x-api-key", key)
        } else {
            built.header("authorization", format!("Bearer {key}"))
        })
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(response)
    }

    fn classify_error(response: &http::Response) -> ProviderError {
        error(response)
    }
}

lanes_guest::export_http_adapter!(Claude);
