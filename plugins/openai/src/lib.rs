//! OpenAI's Chat Completions API (`POST {base_url}/v1/chat/completions`) as a lanes
//! provider. With `base_url` it serves any OpenAI-compatible server (vLLM, the llama.cpp
//! server, LM Studio).
//!
//! Config: `base_url` (default https://api.openai.com), `model` and `max_tokens_field`
//! (`max_completion_tokens`, the default, or `max_tokens` for older compatible servers). The
//! key, when set, is the provider's `api-key` secret, sent as a Bearer token.
//!
//! Mapped: text, images (URLs, and base64 as `data:` URLs) in user messages, tools,
//! `tool_choice`, `parallel_tool_calls` (both only with tools), tool calls in assistant
//! messages, tool results as `tool` messages (text only: the API takes no image there),
//! `response_format` (`json_object`, `json_schema`), `reasoning_effort`, `top_p`, `seed` and
//! `stop`. The API takes no reasoning back: an assistant message's reasoning parts are left
//! out. A reply's `message.refusal` is the response's refusal (finish `refusal`);
//! compatible servers' `reasoning_content` (or `reasoning`) becomes a reasoning part.
//!
//! Streaming: `stream: true` with `stream_options.include_usage`; the SSE chunks become
//! text, reasoning, tool-call and usage deltas, and the answer ends at `data: [DONE]` (a body
//! that ends before it is `unavailable`); an `error` chunk maps by its code or type.
//!
//! Batches (WIT 0.2.1): the component also exports `batch`, over OpenAI's Batch API (see
//! [`batch`]).

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, ContentPart, Effort, FinishReason, Image, ImageSource,
    Message, ProviderError, ProviderInfo, RateLimit, Reasoning, ReasoningConfig, ResponseFormat,
    ResultPart, Role, Tool, ToolCall, ToolChoice, Usage,
};
use lanes_guest::stream::{self, Emit, ResponseBuilder, SseEvent, SseParser, StreamDecoder};
use lanes_guest::{errors, http};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

mod batch;

struct OpenAi;

/// What the request body depends on besides the request: the provider's config.
struct Settings {
    /// `max_completion_tokens` (the default) or `max_tokens` (older compatible servers).
    max_tokens_field: String,
}

impl Settings {
    fn from_config() -> Self {
        Settings {
            max_tokens_field: lanes_guest::config_or("max_tokens_field", "max_completion_tokens"),
        }
    }
}

/// The request body Chat Completions expects.
fn body(
    request: &ChatRequest,
    model: &str,
    settings: &Settings,
) -> Result<Map<String, Value>, ProviderError> {
    let mut messages: Vec<Value> = request
        .system
        .iter()
        .map(|s| json!({"role": "system", "content": s}))
        .collect();
    for message in &request.messages {
        messages.extend(message_json(message)?);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = request.max_tokens {
        body.insert(settings.max_tokens_field.clone(), json!(n));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), lanes_guest::f32_json(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), lanes_guest::f32_json(p));
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    // The API refuses `tool_choice` and `parallel_tool_calls` without `tools`.
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(tool_json)
            .collect::<Result<Vec<_>, _>>()?;
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = &request.tool_choice {
            body.insert("tool_choice".into(), tool_choice_json(choice));
        }
        if let Some(parallel) = request.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(parallel));
        }
    }
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema(format)) => {
            let mut schema = Map::new();
            schema.insert("name".into(), json!(format.name));
            if let Some(d) = &format.description {
                schema.insert("description".into(), json!(d));
            }
            schema.insert(
                "schema".into(),
                lanes_guest::json_text(&format.schema, "the response format's schema")?,
            );
            if let Some(strict) = format.strict {
                schema.insert("strict".into(), json!(strict));
            }
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
    }
    if let Some(reasoning) = &request.reasoning {
        body.insert(
            "reasoning_effort".into(),
            json!(reasoning_effort(reasoning)),
        );
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
        // Without it the stream carries no usage.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(body)
}

/// `reasoning_effort`: the effort, or for a budget of tokens the effort that spends about
/// as much (under 4096 tokens `low`, under 16384 `medium`, else `high`): Chat Completions
/// takes no budget.
fn reasoning_effort(reasoning: &ReasoningConfig) -> &'static str {
    match (reasoning.effort, reasoning.budget_tokens) {
        (Some(Effort::Low), _) => "low",
        (Some(Effort::Medium), _) => "medium",
        (Some(Effort::High), _) => "high",
        (None, Some(n)) if n < 4096 => "low",
        (None, Some(n)) if n < 16384 => "medium",
        (None, Some(_)) => "high",
        (None, None) => "medium",
    }
}

fn tool_json(tool: &Tool) -> Result<Value, ProviderError> {
    let mut function = Map::new();
    function.insert("name".into(), json!(tool.name));
    if let Some(d) = &tool.description {
        function.insert("description".into(), json!(d));
    }
    if let Some(p) = &tool.parameters {
        let what = format!("the parameters of tool `{}`", tool.name);
        function.insert("parameters".into(), lanes_guest::json_text(p, &what)?);
    }
    if let Some(strict) = tool.strict {
        function.insert("strict".into(), json!(strict));
    }
    Ok(json!({"type": "function", "function": function}))
}

fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// An image as an `image_url` part: its URL, or its bytes as a `data:` URL.
fn image_json(image: &Image) -> Value {
    let url = match &image.source {
        ImageSource::Url(url) => url.clone(),
        ImageSource::Base64(data) => format!(
            "data:{};base64,{data}",
            image.media_type.as_deref().unwrap_or("image/png")
        ),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

fn part_kind(part: &ContentPart) -> &'static str {
    match part {
        ContentPart::Text(_) => "text",
        ContentPart::Image(_) => "image",
        ContentPart::ToolCall(_) => "tool-call",
        ContentPart::ToolResult(_) => "tool-result",
        ContentPart::Reasoning(_) => "reasoning",
    }
}

/// One lanes message as Chat Completions messages: a tool message becomes one `tool`
/// message per result. Parts a role cannot hold in this API are refused, except the
/// reasoning of an assistant turn, which the API does not take back and is left out.
fn message_json(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let role = lanes_guest::role_name(message.role);
    let misplaced = |part: &ContentPart| {
        lanes_guest::refuse(format!(
            "OpenAI takes no {} part in a {role} message",
            part_kind(part)
        ))
    };
    match message.role {
        Role::Tool => message
            .content
            .iter()
            .map(|part| match part {
                ContentPart::ToolResult(result) => {
                    let mut texts = Vec::new();
                    for p in &result.parts {
                        match p {
                            ResultPart::Text(t) => texts.push(t.as_str()),
                            ResultPart::Image(_) => {
                                return Err(lanes_guest::refuse(
                                    "OpenAI tool results take text only, not images",
                                ));
                            }
                        }
                    }
                    Ok(json!({
                        "role": "tool",
                        "tool_call_id": result.call_id,
                        "content": texts.join("\n"),
                    }))
                }
                other => Err(misplaced(other)),
            })
            .collect(),
        Role::Assistant => {
            let mut texts = Vec::new();
            let mut calls = Vec::new();
            for part in &message.content {
                match part {
                    ContentPart::Text(t) => texts.push(t.as_str()),
                    ContentPart::ToolCall(call) => calls.push(json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })),
                    ContentPart::Reasoning(_) => {}
                    other => return Err(misplaced(other)),
                }
            }
            let mut out = Map::new();
            out.insert("role".into(), json!("assistant"));
            if calls.is_empty() {
                out.insert("content".into(), json!(texts.join("\n")));
            } else {
                let content = if texts.is_empty() {
                    Value::Null
                } else {
                    json!(texts.join("\n"))
                };
                out.insert("content".into(), content);
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Ok(vec![Value::Object(out)])
        }
        Role::System | Role::User => {
            let has_image = message
                .content
                .iter()
                .any(|p| matches!(p, ContentPart::Image(_)));
            let fits = |p: &ContentPart| match p {
                ContentPart::Text(_) => true,
                ContentPart::Image(_) => message.role == Role::User,
                _ => false,
            };
            if let Some(other) = message.content.iter().find(|p| !fits(p)) {
                return Err(misplaced(other));
            }
            // Text alone stays a string, the form every compatible server takes.
            let content = if has_image {
                Value::Array(
                    message
                        .content
                        .iter()
                        .map(|p| match p {
                            ContentPart::Image(image) => image_json(image),
                            ContentPart::Text(t) => json!({"type": "text", "text": t}),
                            _ => Value::Null,
                        })
                        .collect(),
                )
            } else {
                json!(lanes_guest::message_text(message))
            };
            Ok(vec![json!({"role": role, "content": content})])
        }
    }
}

fn parse(response: &http::Response) -> Result<ChatResponse, ProviderError> {
    parse_value(&lanes_guest::adapter::json(response)?)
}

/// `finish_reason` as lanes says it.
fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls") | Some("function_call") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

/// `usage` as lanes counts it: `prompt_tokens` already holds the cached tokens, and
/// `completion_tokens` the reasoning ones.
fn usage(usage: &Value) -> Usage {
    Usage {
        input_tokens: lanes_guest::count_at(usage, "/prompt_tokens"),
        output_tokens: lanes_guest::count_at(usage, "/completion_tokens"),
        cache_read_tokens: lanes_guest::opt_count_at(usage, "/prompt_tokens_details/cached_tokens"),
        cache_write_tokens: lanes_guest::opt_count_at(
            usage,
            "/prompt_tokens_details/cache_write_tokens",
        ),
        reasoning_tokens: lanes_guest::opt_count_at(
            usage,
            "/completion_tokens_details/reasoning_tokens",
        ),
    }
}

/// A reply's reasoning: compatible servers (vLLM, DeepSeek, llama.cpp) send it as
/// `reasoning_content` or `reasoning`; OpenAI itself sends none.
fn reasoning_of(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| message.get(*k).and_then(Value::as_str))
        .filter(|r| !r.is_empty())
}

fn parse_value(value: &Value) -> Result<ChatResponse, ProviderError> {
    let choice = value
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::Unavailable("reply has no choices".into()))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(reasoning) = reasoning_of(message) {
        content.push(ContentPart::Reasoning(Reasoning {
            text: reasoning.to_string(),
            signature: None,
            redacted: None,
        }));
    }
    if let Some(text) = message.get("content").and_then(Value::as_str)
        && !text.is_empty()
    {
        content.push(ContentPart::Text(text.to_string()));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(ContentPart::ToolCall(ToolCall {
            id: lanes_guest::text_at(call, "/id"),
            name: lanes_guest::text_at(call, "/function/name"),
            arguments: lanes_guest::json_to_text(
                call.pointer("/function/arguments").unwrap_or(&Value::Null),
            ),
        }));
    }
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let finish_reason = match &refusal {
        Some(_) => FinishReason::Refusal,
        None => finish_reason(choice.get("finish_reason").and_then(Value::as_str)),
    };
    Ok(ChatResponse {
        content,
        refusal,
        model: lanes_guest::text_at(value, "/model"),
        usage: usage(value.get("usage").unwrap_or(&Value::Null)),
        finish_reason,
    })
}

/// A streamed answer: SSE `data:` events, each a `chat.completion.chunk`, then
/// `data: [DONE]`. With `include_usage`, the last chunk before it has no choices and the
/// usage.
#[derive(Default)]
struct OpenAiStream {
    sse: SseParser,
    builder: ResponseBuilder,
    /// The position in the response of each tool call, by the API's `index`.
    calls: HashMap<u64, usize>,
    finish_reason: Option<String>,
    refusal: String,
    done: bool,
}

impl OpenAiStream {
    fn event(&mut self, event: SseEvent, emit: Emit<'_>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if self.done || data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable stream event: {e}")))?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let field = |key: &str| lanes_guest::text_at(error, &format!("/{key}"));
            let kind = Some(field("code"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| field("type"));
            return Err(errors::from_stream_error(&kind, &field("message")));
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str)
            && !model.is_empty()
        {
            self.builder.model = model.to_string();
        }
        if let Some(choice) = chunk.pointer("/choices/0") {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(reasoning) = reasoning_of(delta) {
                self.builder.reasoning(reasoning, emit);
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                self.builder.text(text, emit);
            }
            if let Some(refusal) = delta.get("refusal").and_then(Value::as_str) {
                self.refusal.push_str(refusal);
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array);
            for (n, call) in calls.into_iter().flatten().enumerate() {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(n as u64);
                let at = match self.calls.get(&index) {
                    Some(at) => *at,
                    None => {
                        let id = lanes_guest::text_at(call, "/id");
                        let name = lanes_guest::text_at(call, "/function/name");
                        let at = self.builder.start_call(id, name, emit);
                        self.calls.insert(index, at);
                        at
                    }
                };
                let fragment = call.pointer("/function/arguments").and_then(Value::as_str);
                self.builder.append(at, fragment.unwrap_or_default(), emit);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_string());
            }
        }
        if let Some(counts) = chunk.get("usage").filter(|u| u.is_object()) {
            self.builder.usage(usage(counts), emit);
        }
        Ok(())
    }
}

impl StreamDecoder for OpenAiStream {
    fn feed(&mut self, chunk: &[u8], emit: Emit<'_>) -> Result<(), ProviderError> {
        for event in self.sse.push(chunk) {
            self.event(event, emit)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, emit: Emit<'_>) -> Result<ChatResponse, ProviderError> {
        if let Some(event) = self.sse.finish() {
            self.event(event, emit)?;
        }
        if !self.done {
            return Err(stream::ended_early());
        }
        let refusal = Some(std::mem::take(&mut self.refusal)).filter(|r| !r.is_empty());
        let finish_reason = match &refusal {
            Some(_) => FinishReason::Refusal,
            None => finish_reason(self.finish_reason.as_deref()),
        };
        Ok(self.builder.finish(finish_reason, refusal))
    }
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
            capabilities: Capabilities::TOOLS
                | Capabilities::JSON_SCHEMA
                | Capabilities::IMAGES
                | Capabilities::IMAGE_URLS
                | Capabilities::REASONING
                | Capabilities::STREAMING,
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "https://api.openai.com";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        let body = Value::Object(body(request, &model, &Settings::from_config())?);
        Ok(HttpRequest::post("/v1/chat/completions", body).bearer_auth())
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(response)
    }

    fn classify_error(response: &http::Response) -> ProviderError {
        error(response)
    }

    fn stream_decoder(_request: &ChatRequest) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(OpenAiStream::default()))
    }
}

lanes_guest::export_http_batch_adapter!(OpenAi);

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::types::{JsonSchema, ToolResult};

    fn request(messages: Vec<Message>) -> ChatRequest {
        lanes_guest::plain_request(messages)
    }

    fn message(role: Role, content: Vec<ContentPart>) -> Message {
        Message { role, content }
    }

    fn text(t: &str) -> ContentPart {
        ContentPart::Text(t.to_string())
    }

    fn settings() -> Settings {
        Settings {
            max_tokens_field: "max_completion_tokens".into(),
        }
    }

    fn body_of(request: &ChatRequest) -> Value {
        Value::Object(body(request, "gpt-test", &settings()).unwrap())
    }

    #[test]
    fn a_text_request_is_as_before() {
        let mut r = request(vec![
            message(Role::User, vec![text("Hello"), text("there")]),
            message(Role::Assistant, vec![text("Hi")]),
            message(Role::User, vec![text("Bye")]),
        ]);
        r.system = Some("Be brief".into());
        r.max_tokens = Some(50);
        r.temperature = Some(0.2);
        r.stop = vec!["END".into()];
        assert_eq!(
            body_of(&r),
            json!({
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hello\nthere"},
                    {"role": "assistant", "content": "Hi"},
                    {"role": "user", "content": "Bye"},
                ],
                "max_completion_tokens": 50,
                "temperature": 0.2,
                "stop": ["END"],
            })
        );
        let older = Settings {
            max_tokens_field: "max_tokens".into(),
        };
        let b = body(&r, "m", &older).unwrap();
        assert_eq!(b.get("max_tokens"), Some(&json!(50)));
        assert!(!b.contains_key("max_completion_tokens"));
    }

    #[test]
    fn everything_of_0_2_maps() {
        let mut r = request(vec![
            message(
                Role::User,
                vec![
                    text("What is in these?"),
                    ContentPart::Image(Image {
                        source: ImageSource::Url("https://example.com/a.png".into()),
                        media_type: None,
                    }),
                    ContentPart::Image(Image {
                        source: ImageSource::Base64("iVBORw0KGgo=".into()),
                        media_type: Some("image/png".into()),
                    }),
                ],
            ),
            message(
                Role::Assistant,
                vec![
                    ContentPart::Reasoning(Reasoning {
                        text: "thinking".into(),
                        signature: None,
                        redacted: None,
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_abc".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_def".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    }),
                ],
            ),
            message(
                Role::Tool,
                vec![
                    ContentPart::ToolResult(ToolResult {
                        call_id: "call_abc".into(),
                        name: Some("get_weather".into()),
                        parts: vec![ResultPart::Text("18°C".into())],
                        is_error: false,
                    }),
                    ContentPart::ToolResult(ToolResult {
                        call_id: "call_def".into(),
                        name: None,
                        parts: vec![ResultPart::Text("noon".into())],
                        is_error: false,
                    }),
                ],
            ),
        ]);
        r.tools = vec![
            Tool {
                name: "get_weather".into(),
                description: Some("The weather".into()),
                parameters: Some(
                    r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
                ),
                strict: Some(true),
            },
            Tool {
                name: "get_time".into(),
                description: None,
                parameters: None,
                strict: None,
            },
        ];
        r.tool_choice = Some(ToolChoice::Named("get_weather".into()));
        r.parallel_tool_calls = Some(false);
        r.response_format = Some(ResponseFormat::JsonSchema(JsonSchema {
            name: "event".into(),
            description: Some("An event".into()),
            schema: r#"{"type":"object"}"#.into(),
            strict: Some(true),
        }));
        r.reasoning = Some(ReasoningConfig {
            effort: Some(Effort::High),
            budget_tokens: None,
        });
        r.top_p = Some(0.9);
        r.seed = Some(42);
        assert_eq!(
            body_of(&r),
            json!({
                "model": "gpt-test",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in these?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_abc", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_def", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_abc", "content": "18°C"},
                    {"role": "tool", "tool_call_id": "call_def", "content": "noon"},
                ],
                "tools": [
                    {"type": "function", "function": {
                        "name": "get_weather", "description": "The weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                        "strict": true}},
                    {"type": "function", "function": {"name": "get_time"}},
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false,
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "event", "description": "An event",
                    "schema": {"type": "object"}, "strict": true}},
                "reasoning_effort": "high",
                "top_p": 0.9,
                "seed": 42,
            })
        );
    }

    #[test]
    fn small_choices() {
        let mut r = request(vec![message(Role::User, vec![text("x")])]);
        r.tool_choice = Some(ToolChoice::Required);
        r.parallel_tool_calls = Some(true);
        r.response_format = Some(ResponseFormat::JsonObject);
        r.reasoning = Some(ReasoningConfig {
            effort: None,
            budget_tokens: Some(8000),
        });
        let b = body_of(&r);
        assert_eq!(b.get("tool_choice"), None, "no tools, no tool_choice");
        assert_eq!(b.get("parallel_tool_calls"), None);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        assert_eq!(b["reasoning_effort"], json!("medium"));
        r.tools = vec![Tool {
            name: "t".into(),
            description: None,
            parameters: None,
            strict: None,
        }];
        let b = body_of(&r);
        assert_eq!(b["tool_choice"], json!("required"));
        assert_eq!(b["parallel_tool_calls"], json!(true));
        r.tool_choice = Some(ToolChoice::None);
        assert_eq!(body_of(&r)["tool_choice"], json!("none"));
        r.tool_choice = Some(ToolChoice::Auto);
        r.response_format = Some(ResponseFormat::Text);
        let b = body_of(&r);
        assert_eq!(b["tool_choice"], json!("auto"));
        assert_eq!(b.get("response_format"), None);
    }

    #[test]
    fn what_the_api_cannot_take_is_refused() {
        let refused = |m: Message| {
            let r = request(vec![m]);
            match body(&r, "m", &settings()) {
                Err(ProviderError::InvalidRequest(m)) => m,
                other => panic!("{other:?}"),
            }
        };
        let image = || Image {
            source: ImageSource::Base64("AA==".into()),
            media_type: Some("image/png".into()),
        };
        assert!(
            refused(message(
                Role::Tool,
                vec![ContentPart::ToolResult(ToolResult {
                    call_id: "c".into(),
                    name: None,
                    parts: vec![ResultPart::Image(image())],
                    is_error: false,
                })]
            ))
            .contains("text only")
        );
        assert!(
            refused(message(Role::Assistant, vec![ContentPart::Image(image())])).contains("image")
        );
        assert!(refused(message(Role::Tool, vec![text("loose")])).contains("text part in a tool"));
        let mut r = request(vec![]);
        r.tools = vec![Tool {
            name: "t".into(),
            description: None,
            parameters: Some("{not json".into()),
            strict: None,
        }];
        assert!(matches!(
            body(&r, "m", &settings()),
            Err(ProviderError::InvalidRequest(m)) if m.contains("parameters of tool `t`")
        ));
    }

    #[test]
    fn a_reply_with_text_and_usage() {
        let reply = json!({
            "id": "chatcmpl-123", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": null},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                      "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 64}}
        });
        let r = parse_value(&reply).unwrap();
        assert_eq!(r.content, vec![text("Hello!")]);
        assert_eq!(r.refusal, None);
        assert_eq!(r.model, "gpt-4o-2024");
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 2006,
                output_tokens: 300,
                cache_read_tokens: Some(1920),
                cache_write_tokens: Some(0),
                reasoning_tokens: Some(64),
            }
        );
        let plain = json!({"model": "m", "choices": [{"message": {"content": ""}, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        let r = parse_value(&plain).unwrap();
        assert!(r.content.is_empty());
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(r.usage.cache_read_tokens, None);
        assert_eq!(r.usage.reasoning_tokens, None);
    }

    #[test]
    fn a_reply_with_tool_calls() {
        let reply = json!({
            "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_abc", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_def", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}
                ]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
        });
        let r = parse_value(&reply).unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            r.content,
            vec![
                ContentPart::ToolCall(ToolCall {
                    id: "call_abc".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }),
                ContentPart::ToolCall(ToolCall {
                    id: "call_def".into(),
                    name: "get_time".into(),
                    arguments: "{}".into(),
                }),
            ]
        );
    }

    #[test]
    fn a_refusal_and_a_compatible_servers_reasoning() {
        let refused = json!({"model": "gpt-4o", "choices": [{"finish_reason": "stop", "message": {
            "role": "assistant", "content": null, "refusal": "I can't help with that."}}]});
        let r = parse_value(&refused).unwrap();
        assert_eq!(r.refusal.as_deref(), Some("I can't help with that."));
        assert_eq!(r.finish_reason, FinishReason::Refusal);
        assert!(r.content.is_empty());
        let reasoned = json!({"model": "deepseek-r1", "choices": [{"finish_reason": "stop", "message": {
            "role": "assistant", "content": "4", "reasoning_content": "2+2 is 4"}}]});
        let r = parse_value(&reasoned).unwrap();
        assert_eq!(
            r.content,
            vec![
                ContentPart::Reasoning(Reasoning {
                    text: "2+2 is 4".into(),
                    signature: None,
                    redacted: None
                }),
                text("4")
            ]
        );
        let filtered =
            json!({"model": "m", "choices": [{"finish_reason": "content_filter", "message": {}}]});
        assert_eq!(
            parse_value(&filtered).unwrap().finish_reason,
            FinishReason::ContentFilter
        );
        assert!(matches!(
            parse_value(&json!({"choices": []})),
            Err(ProviderError::Unavailable(_))
        ));
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::stream::Delta;
    use lanes_guest::stream::{decode_in_chunks, join_deltas};

    const TOOL_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \"},\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"x1\"}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check, \u{e9}\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_def\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":30,\"total_tokens\":50,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn decoder() -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStream::default())
    }

    #[test]
    fn the_request_asks_for_a_stream_with_usage() {
        let mut r = tests_request();
        r.stream = true;
        let b = body(
            &r,
            "m",
            &Settings {
                max_tokens_field: "max_completion_tokens".into(),
            },
        )
        .unwrap();
        assert_eq!(b["stream"], json!(true));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
    }

    fn tests_request() -> ChatRequest {
        lanes_guest::plain_request(Vec::new())
    }

    #[test]
    fn a_tool_call_stream_assembles_however_it_is_cut() {
        for size in [1, 2, 3, 7, 64, 100_000] {
            let (deltas, result) = decode_in_chunks(decoder(), TOOL_STREAM.as_bytes(), size);
            let response = result.unwrap();
            assert_eq!(response.model, "gpt-4o");
            assert_eq!(response.finish_reason, FinishReason::ToolCalls);
            assert_eq!(
                response.content,
                vec![
                    ContentPart::Text("Let me check, é".into()),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_abc".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_def".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    }),
                ]
            );
            assert_eq!(
                response.usage,
                Usage {
                    input_tokens: 20,
                    output_tokens: 30,
                    cache_read_tokens: Some(4),
                    cache_write_tokens: None,
                    reasoning_tokens: Some(0),
                }
            );
            let (text, reasoning, calls) = join_deltas(&deltas);
            assert_eq!(text, "Let me check, é");
            assert_eq!(reasoning, "");
            assert_eq!(
                calls,
                vec![
                    (
                        "call_abc".into(),
                        "get_weather".into(),
                        r#"{"city":"Paris"}"#.into()
                    ),
                    ("call_def".into(), "get_time".into(), "{}".into()),
                ]
            );
            assert!(matches!(deltas.last(), Some(Delta::Usage(u)) if u.input_tokens == 20));
        }
    }

    #[test]
    fn a_refusal_and_reasoning_stream() {
        let body = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"I can't\"}}]}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\" help.\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]",
        );
        let (deltas, result) = decode_in_chunks(decoder(), body.as_bytes(), 5);
        let response = result.unwrap();
        assert_eq!(response.refusal.as_deref(), Some("I can't help."));
        assert_eq!(response.finish_reason, FinishReason::Refusal);
        assert_eq!(join_deltas(&deltas).1, "hmm");
    }

    #[test]
    fn a_cut_stream_and_an_error_event() {
        let cut = &TOOL_STREAM[..TOOL_STREAM.find("data: [DONE]").unwrap()];
        let (_, result) = decode_in_chunks(decoder(), cut.as_bytes(), 10);
        assert!(matches!(result, Err(ProviderError::Unavailable(m)) if m == "stream ended early"));
        let error = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        );
        let (deltas, result) = decode_in_chunks(decoder(), error.as_bytes(), 4);
        assert!(
            matches!(result, Err(ProviderError::Unavailable(m)) if m.contains("server_error: The server had an error"))
        );
        assert_eq!(join_deltas(&deltas).0, "Hi");
        let limited = "data: {\"error\":{\"message\":\"slow down\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n";
        let (_, result) = decode_in_chunks(decoder(), limited.as_bytes(), 4);
        assert!(matches!(result, Err(ProviderError::RateLimited(_))));
    }
}
