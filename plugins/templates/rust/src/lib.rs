//! {{name}}: a lanes provider for an OpenAI-compatible chat API
//! (`POST {base_url}/v1/chat/completions`).
//!
//! Config (`[providers.{{name}}]`): `base_url` and `model`. The key, when the operator sets
//! `api_key_env` or `api_key_file`, is the `api-key` secret, sent as a Bearer token.
//!
//! The SDK's `HttpAdapter` does the rest: it merges the request's `extra` into the body,
//! sends the request to the base URL, and maps error statuses (429 with its retry-after,
//! 401/403, 5xx) to the `provider-error` cases that tell the host whether to retry.
//!
//! It takes text only (lanes:provider 0.2 messages are lists of content parts; this
//! adapter reads their text). To take tools, JSON schemas, images, reasoning or streaming,
//! map them in `build_request` and `parse_response` and declare them in `info()`'s
//! `capabilities`: the host refuses inputs that need what a component does not declare.
//! `plugins/openai` in lanes maps all of them for this API.

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, FinishReason, ProviderError, ProviderInfo, Usage,
};
use lanes_guest::http;
use serde_json::{Value, json};

struct Adapter;

impl HttpAdapter for Adapter {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 4,
            description: "{{name}}: an OpenAI-compatible chat API (Rust)".into(),
            // What it takes beyond text, once mapped: such as
            // `Capabilities::TOOLS | Capabilities::JSON_SCHEMA | Capabilities::IMAGES`
            // (also IMAGE_URLS, REASONING, STREAMING).
            capabilities: Capabilities::empty(),
            // The image types it takes, with IMAGES; empty means png, jpeg, gif and webp.
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "https://api.example.com";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let mut body = json!({
            "model": lanes_guest::model(request)?,
            "messages": lanes_guest::chat_messages(request),
        });
        if let Some(n) = request.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = lanes_guest::f32_json(t);
        }
        if let Some(p) = request.top_p {
            body["top_p"] = lanes_guest::f32_json(p);
        }
        if let Some(seed) = request.seed {
            body["seed"] = json!(seed);
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        lanes_guest::debug!("sending {} messages", request.messages.len());
        Ok(HttpRequest::post("/v1/chat/completions", body).bearer_auth())
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        let value = lanes_guest::adapter::json(response)?;
        let choice = value
            .pointer("/choices/0")
            .ok_or_else(|| ProviderError::Unavailable("the reply has no choices".into()))?;
        let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
            Some("stop") | None => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some("content_filter") => FinishReason::ContentFilter,
            Some("tool_calls") => FinishReason::ToolCalls,
            Some(other) => FinishReason::Other(other.to_string()),
        };
        Ok(ChatResponse {
            // The answer's parts: its text here; also `ContentPart::ToolCall` and
            // `ContentPart::Reasoning` once mapped.
            content: lanes_guest::text_content(lanes_guest::text_at(choice, "/message/content")),
            refusal: None,
            model: lanes_guest::text_at(&value, "/model"),
            usage: Usage {
                input_tokens: lanes_guest::count_at(&value, "/usage/prompt_tokens"),
                output_tokens: lanes_guest::count_at(&value, "/usage/completion_tokens"),
                cache_read_tokens: None,
                cache_write_tokens: None,
                reasoning_tokens: None,
            },
            finish_reason,
        })
    }
}

lanes_guest::export_http_adapter!(Adapter);
