//! Anthropic's Messages API (`POST {base_url}/v1/messages`) as a lanes provider.
//!
//! Config: `base_url` (default https://api.anthropic.com), `model`, `anthropic_version`
//! (default `2026-10-21`, what the current official SDK sends), `default_max_tokens` (the API
//! requires `max_tokens`; default 1024) and `auth` (`bearer`, the SDK's form and the default,
//! or `x-api-key`). The key is the provider's `api-key` secret.
//!
//! Sampling fields are sent only when the request sets them: the 2026-10-21 API version
//! rejects `temperature` even at its default value.
//!
//! Mapped: text, images (base64 and URL sources), tools (`input_schema`, `strict`),
//! `tool_choice` (`required` is `any`) with `disable_parallel_tool_use`, tool calls as
//! `tool_use` blocks, tool messages folded into a user turn of `tool_result` blocks (results
//! first), signed reasoning round-tripped as `thinking`/`redacted_thinking` blocks, reasoning
//! as `thinking` (config `thinking`: `budget`, the default, sends `enabled` with a budget,
//! an effort becoming low 1024, medium 2048 or high 4096 tokens; `adaptive` sends an effort
//! as `adaptive` thinking with `output_config.effort`), a JSON schema as
//! `output_config.format`, `top_p` and `stop_sequences`. There is no seed: it is ignored.
//! The API has no schema-less JSON mode: `json-object` adds an instruction to the system
//! prompt.
//!
//! Streaming: `stream: true`; the named SSE events become text, reasoning, tool-call and
//! usage deltas (usage at `message_start` and at each `message_delta`, whose counts are
//! totals), and the answer ends at `message_stop` (a body that ends before it is
//! `unavailable`); an `error` event maps by its type (`overloaded_error` is `unavailable`).
//!
//! Batches (WIT 0.2.1): the component also exports `batch`, over the Message Batches API
//! (see [`batch`]).

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::config;
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, ContentPart, Effort, FinishReason, Image, ImageSource,
    Message, ProviderError, ProviderInfo, Reasoning, ResponseFormat, ResultPart, Role, Tool,
    ToolCall, ToolChoice, ToolResult, Usage,
};
use lanes_guest::stream::{self, Emit, ResponseBuilder, SseEvent, SseParser, StreamDecoder};
use lanes_guest::{errors, http};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

mod batch;

struct Claude;

/// How a reasoning effort is asked for (config `thinking`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ThinkingMode {
    /// `thinking: {type: "enabled", budget_tokens}`, the effort turned into a budget: the
    /// default, which every thinking model takes.
    Budget,
    /// `thinking: {type: "adaptive"}` with `output_config.effort`, which the newest models
    /// want (the SDK warns that `enabled` is deprecated on them). A budget of tokens still
    /// goes as `enabled`.
    Adaptive,
}

/// What the request body depends on besides the request: the provider's config.
struct Settings {
    /// `max_tokens` when the request sets none (the API requires one).
    default_max_tokens: u32,
    thinking: ThinkingMode,
}

impl Settings {
    fn from_config() -> Result<Self, ProviderError> {
        let thinking = match config::get("thinking").as_deref() {
            None | Some("budget") => ThinkingMode::Budget,
            Some("adaptive") => ThinkingMode::Adaptive,
            Some(other) => {
                return Err(lanes_guest::refuse(format!(
                    "config value `thinking` = `{other}`: expected `budget` or `adaptive`"
                )));
            }
        };
        Ok(Settings {
            default_max_tokens: config::get("default_max_tokens")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024),
            thinking,
        })
    }
}

/// The thinking budget for an effort: LiteLLM's defaults (low 1024, the API's minimum,
/// medium 2048, high 4096), so that callers coming from it get the same.
fn effort_budget(effort: Effort) -> u32 {
    match effort {
        Effort::Low => 1024,
        Effort::Medium => 2048,
        Effort::High => 4096,
    }
}

fn effort_name(effort: Effort) -> &'static str {
    match effort {
        Effort::Low => "low",
        Effort::Medium => "medium",
        Effort::High => "high",
    }
}

/// What a model is told when the request asks for any JSON object: the Messages API holds
/// answers to a schema (`output_config.format`) but has no schema-less JSON mode.
const JSON_OBJECT_INSTRUCTION: &str =
    "Answer with a single JSON object only, with no text before or after it.";

/// One turn of `messages` being built.
struct Turn {
    role: &'static str,
    /// A string for a message of text alone (the form the 0.1 adapter sent), else blocks.
    content: Value,
    /// Holds tool results: the next user-side message joins it.
    tool_results: bool,
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

fn image_block(image: &Image) -> Result<Value, ProviderError> {
    let source = match &image.source {
        ImageSource::Url(url) => json!({"type": "url", "url": url}),
        ImageSource::Base64(data) => {
            let media_type = image
                .media_type
                .as_deref()
                .ok_or_else(|| lanes_guest::refuse("a base64 image needs its media type"))?;
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
    };
    Ok(json!({"type": "image", "source": source}))
}

fn tool_result_block(result: &ToolResult) -> Result<Value, ProviderError> {
    let all_text = result
        .parts
        .iter()
        .all(|p| matches!(p, ResultPart::Text(_)));
    let content = if all_text {
        let texts: Vec<&str> = result
            .parts
            .iter()
            .filter_map(|p| match p {
                ResultPart::Text(t) => Some(t.as_str()),
                ResultPart::Image(_) => None,
            })
            .collect();
        json!(texts.join("\n"))
    } else {
        Value::Array(
            result
                .parts
                .iter()
                .filter(|p| !matches!(p, ResultPart::Text(t) if t.is_empty()))
                .map(|p| match p {
                    ResultPart::Text(t) => Ok(text_block(t)),
                    ResultPart::Image(image) => image_block(image),
                })
                .collect::<Result<_, _>>()?,
        )
    };
    let mut block =
        json!({"type": "tool_result", "tool_use_id": result.call_id, "content": content});
    if result.is_error {
        block["is_error"] = json!(true);
    }
    Ok(block)
}

/// A message's parts as content blocks, in order. Empty text is left out (the API refuses
/// empty text blocks), and so is reasoning without a signature (the API takes back only
/// thinking it signed, such as another provider's reasoning).
fn blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let role = lanes_guest::role_name(message.role);
    let assistant = message.role == Role::Assistant;
    let mut out = Vec::new();
    for part in &message.content {
        match part {
            ContentPart::Text(t) if t.is_empty() => {}
            ContentPart::Text(t) => out.push(text_block(t)),
            ContentPart::Image(image) if !assistant => out.push(image_block(image)?),
            ContentPart::ToolResult(result) if !assistant => out.push(tool_result_block(result)?),
            ContentPart::ToolCall(call) if assistant => {
                let input = if call.arguments.trim().is_empty() {
                    json!({})
                } else {
                    let what = format!("the arguments of tool call `{}`", call.id);
                    lanes_guest::json_text(&call.arguments, &what)?
                };
                out.push(
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
                );
            }
            ContentPart::Reasoning(r) if assistant => {
                if let Some(data) = &r.redacted {
                    out.push(json!({"type": "redacted_thinking", "data": data}));
                } else if let Some(signature) = &r.signature {
                    out.push(
                        json!({"type": "thinking", "thinking": r.text, "signature": signature}),
                    );
                }
            }
            other => {
                let kind = match other {
                    ContentPart::Image(_) => "image",
                    ContentPart::ToolCall(_) => "tool-call",
                    ContentPart::ToolResult(_) => "tool-result",
                    _ => "reasoning",
                };
                return Err(lanes_guest::refuse(format!(
                    "Anthropic takes no {kind} part in a {role} message"
                )));
            }
        }
    }
    Ok(out)
}

/// The request's messages as the Messages API's turns. System messages join the top-level
/// system prompt; a tool message becomes a user turn of `tool_result` blocks, which the
/// next user message (or tool message) joins, after the results, as the API requires.
fn turns(request: &ChatRequest, system: &mut Vec<String>) -> Result<Vec<Value>, ProviderError> {
    let mut turns: Vec<Turn> = Vec::new();
    for message in &request.messages {
        let text_only = message
            .content
            .iter()
            .all(|p| matches!(p, ContentPart::Text(_)));
        match message.role {
            Role::System => {
                if !text_only {
                    return Err(lanes_guest::refuse(
                        "Anthropic takes only text in a system message",
                    ));
                }
                system.push(lanes_guest::message_text(message));
                continue;
            }
            Role::Assistant if text_only => turns.push(Turn {
                role: "assistant",
                content: json!(lanes_guest::message_text(message)),
                tool_results: false,
            }),
            Role::Assistant => turns.push(Turn {
                role: "assistant",
                content: Value::Array(blocks(message)?),
                tool_results: false,
            }),
            Role::User | Role::Tool => {
                let has_results = message
                    .content
                    .iter()
                    .any(|p| matches!(p, ContentPart::ToolResult(_)));
                match turns.last_mut() {
                    Some(last) if last.tool_results => {
                        let mut joined = as_blocks(std::mem::take(&mut last.content));
                        joined.extend(blocks(message)?);
                        // Results first, in the order given.
                        joined.sort_by_key(|b| b["type"] != "tool_result");
                        last.content = Value::Array(joined);
                    }
                    _ if text_only => turns.push(Turn {
                        role: "user",
                        content: json!(lanes_guest::message_text(message)),
                        tool_results: false,
                    }),
                    _ => {
                        let mut own = blocks(message)?;
                        own.sort_by_key(|b| b["type"] != "tool_result");
                        turns.push(Turn {
                            role: "user",
                            content: Value::Array(own),
                            tool_results: has_results,
                        })
                    }
                }
            }
        }
    }
    Ok(turns
        .into_iter()
        .map(|t| json!({"role": t.role, "content": t.content}))
        .collect())
}

/// Content as blocks: a string becomes one text block (none when empty).
fn as_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks,
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![text_block(&s)],
        _ => Vec::new(),
    }
}

fn tool_json(tool: &Tool) -> Result<Value, ProviderError> {
    let mut out = Map::new();
    out.insert("name".into(), json!(tool.name));
    if let Some(d) = &tool.description {
        out.insert("description".into(), json!(d));
    }
    let schema = match &tool.parameters {
        Some(p) => lanes_guest::json_text(p, &format!("the parameters of tool `{}`", tool.name))?,
        // The API requires a schema: no arguments is an object without properties.
        None => json!({"type": "object", "properties": {}}),
    };
    out.insert("input_schema".into(), schema);
    if let Some(strict) = tool.strict {
        out.insert("strict".into(), json!(strict));
    }
    Ok(Value::Object(out))
}

/// `tool_choice`, with `disable_parallel_tool_use` when the request forbids parallel calls
/// (the API takes it on every choice but `none`).
fn tool_choice_json(choice: Option<&ToolChoice>, parallel: Option<bool>) -> Option<Value> {
    let mut choice = match choice {
        None if parallel == Some(false) => json!({"type": "auto"}),
        None => return None,
        Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Named(name)) => json!({"type": "tool", "name": name}),
    };
    if parallel == Some(false) {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Some(choice)
}

/// The request body the Messages API expects.
fn body(
    request: &ChatRequest,
    model: &str,
    settings: &Settings,
) -> Result<Map<String, Value>, ProviderError> {
    // System turns have no place in `messages`: they join the top-level system prompt.
    let mut system: Vec<String> = request.system.iter().cloned().collect();
    let messages = turns(request, &mut system)?;
    let mut output_config = Map::new();
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => system.push(JSON_OBJECT_INSTRUCTION.to_string()),
        Some(ResponseFormat::JsonSchema(format)) => {
            let schema = lanes_guest::json_text(&format.schema, "the response format's schema")?;
            output_config.insert(
                "format".into(),
                json!({"type": "json_schema", "schema": schema}),
            );
        }
    }
    let mut thinking = None;
    let mut budget = None;
    if let Some(reasoning) = &request.reasoning {
        match (reasoning.budget_tokens, reasoning.effort, settings.thinking) {
            (None, Some(effort), ThinkingMode::Adaptive) => {
                thinking = Some(json!({"type": "adaptive"}));
                output_config.insert("effort".into(), json!(effort_name(effort)));
            }
            (budget_tokens, effort, _) => {
                let n = budget_tokens
                    .or(effort.map(effort_budget))
                    .unwrap_or(effort_budget(Effort::Medium));
                thinking = Some(json!({"type": "enabled", "budget_tokens": n}));
                budget = Some(n);
            }
        }
    }
    // The budget counts within `max_tokens`, which must exceed it: without a `max-tokens`
    // the answer gets the default on top of the budget.
    let max_tokens = match (request.max_tokens, budget) {
        (Some(n), Some(b)) if n <= b => {
            return Err(lanes_guest::refuse(format!(
                "max-tokens ({n}) must exceed the reasoning budget ({b} tokens)"
            )));
        }
        (Some(n), _) => n,
        (None, Some(b)) => settings.default_max_tokens.saturating_add(b),
        (None, None) => settings.default_max_tokens,
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
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), lanes_guest::f32_json(p));
    }
    // No seed: the Messages API samples without one.
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(tool_json)
            .collect::<Result<Vec<_>, _>>()?;
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) =
            tool_choice_json(request.tool_choice.as_ref(), request.parallel_tool_calls)
        {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(thinking) = thinking {
        body.insert("thinking".into(), thinking);
    }
    if !output_config.is_empty() {
        body.insert("output_config".into(), Value::Object(output_config));
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(body)
}

fn parse(response: &http::Response) -> Result<ChatResponse, ProviderError> {
    parse_value(&lanes_guest::adapter::json(response)?)
}

/// One content block of a reply as a part; `None` for blocks lanes has no part for
/// (server tool uses and their results, for one).
fn block_part(block: &Value) -> Option<ContentPart> {
    let field = |key: &str| lanes_guest::text_at(block, &format!("/{key}"));
    match block.get("type").and_then(Value::as_str)? {
        "text" => {
            let text = field("text");
            (!text.is_empty()).then_some(ContentPart::Text(text))
        }
        "tool_use" => Some(ContentPart::ToolCall(ToolCall {
            id: field("id"),
            name: field("name"),
            arguments: lanes_guest::json_to_text(block.get("input").unwrap_or(&Value::Null)),
        })),
        "thinking" => Some(ContentPart::Reasoning(Reasoning {
            text: field("thinking"),
            signature: block
                .get("signature")
                .and_then(Value::as_str)
                .map(str::to_string),
            redacted: None,
        })),
        "redacted_thinking" => Some(ContentPart::Reasoning(Reasoning {
            text: String::new(),
            signature: None,
            redacted: Some(field("data")),
        })),
        _ => None,
    }
}

/// `stop_reason` as lanes says it.
fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("end_turn") | Some("stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("model_context_window_exceeded") => FinishReason::ContextWindow,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::Refusal,
        Some("pause_turn") => FinishReason::Pause,
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

/// `usage` as lanes counts it: Anthropic's `input_tokens` is only the part that was neither
/// read from nor written to the prompt cache.
fn usage(usage: &Value) -> Usage {
    let read = lanes_guest::opt_count_at(usage, "/cache_read_input_tokens");
    let write = lanes_guest::opt_count_at(usage, "/cache_creation_input_tokens");
    Usage {
        input_tokens: lanes_guest::count_at(usage, "/input_tokens")
            .saturating_add(read.unwrap_or(0))
            .saturating_add(write.unwrap_or(0)),
        output_tokens: lanes_guest::count_at(usage, "/output_tokens"),
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: lanes_guest::opt_count_at(
            usage,
            "/output_tokens_details/thinking_tokens",
        ),
    }
}

/// The refusal of a reply that stopped with `refusal`: the API's explanation, else the
/// text it wrote, else its category.
fn refusal(stop_details: Option<&Value>, content: &[ContentPart]) -> String {
    let details = stop_details.unwrap_or(&Value::Null);
    let explanation = lanes_guest::text_at(details, "/explanation");
    if !explanation.is_empty() {
        return explanation;
    }
    let text = lanes_guest::parts_text(content, "");
    if !text.is_empty() {
        return text;
    }
    match details.get("category").and_then(Value::as_str) {
        Some(category) => format!("refused ({category})"),
        None => "refused".to_string(),
    }
}

fn parse_value(value: &Value) -> Result<ChatResponse, ProviderError> {
    let content: Vec<ContentPart> = value
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(block_part)
        .collect();
    let finish_reason = finish_reason(value.get("stop_reason").and_then(Value::as_str));
    let refusal = (finish_reason == FinishReason::Refusal)
        .then(|| refusal(value.get("stop_details"), &content));
    Ok(ChatResponse {
        content,
        refusal,
        model: lanes_guest::text_at(value, "/model"),
        usage: usage(value.get("usage").unwrap_or(&Value::Null)),
        finish_reason,
    })
}

/// A content block of a streamed answer.
struct Block {
    /// Its position in the response.
    at: usize,
    /// A tool call's `input` at its start: its arguments when no `input_json_delta` comes.
    input: Option<Value>,
}

/// A streamed answer: SSE events `message_start`, then per content block
/// `content_block_start`, `content_block_delta`s and `content_block_stop`, then
/// `message_delta` (stop reason and cumulative usage) and `message_stop`; `ping`s anywhere,
/// and an `error` event on failure.
#[derive(Default)]
struct ClaudeStream {
    sse: SseParser,
    builder: ResponseBuilder,
    blocks: HashMap<u64, Block>,
    /// The usage so far, as the API counts it: `message_start`'s, updated by each
    /// `message_delta` (whose counts are totals, not increments).
    usage: Map<String, Value>,
    stop_reason: Option<String>,
    stop_details: Option<Value>,
    done: bool,
}

impl ClaudeStream {
    fn event(&mut self, event: SseEvent, emit: Emit<'_>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable stream event: {e}")))?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event);
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                self.builder.model = lanes_guest::text_at(message, "/model");
                self.update_usage(message.get("usage"), emit);
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let field = |key: &str| lanes_guest::text_at(block, &format!("/{key}"));
                let b = &mut self.builder;
                let (at, input) = match block.get("type").and_then(Value::as_str) {
                    Some("text") => (b.start_text(&field("text"), emit), None),
                    Some("thinking") => {
                        let at = b.start_reasoning(&field("thinking"), emit);
                        b.sign(at, &field("signature"));
                        (at, None)
                    }
                    Some("redacted_thinking") => (b.redacted_reasoning(field("data")), None),
                    Some("tool_use") => (
                        b.start_call(field("id"), field("name"), emit),
                        block.get("input").cloned(),
                    ),
                    // Blocks lanes has no part for (server tools and their results).
                    _ => return Ok(()),
                };
                self.blocks.insert(index, Block { at, input });
            }
            "content_block_delta" => {
                let Some(block) = self.blocks.get(&index) else {
                    return Ok(());
                };
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let field = |key: &str| lanes_guest::text_at(delta, &format!("/{key}"));
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => self.builder.append(block.at, &field("text"), emit),
                    Some("thinking_delta") => {
                        self.builder.append(block.at, &field("thinking"), emit)
                    }
                    Some("signature_delta") => self.builder.sign(block.at, &field("signature")),
                    Some("input_json_delta") => {
                        self.builder.append(block.at, &field("partial_json"), emit)
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(block) = self.blocks.get(&index)
                    && let Some(input) = &block.input
                    && self.builder.arguments(block.at) == Some("")
                {
                    let whole = lanes_guest::json_to_text(input);
                    self.builder.append(block.at, &whole, emit);
                }
            }
            "message_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(reason) = delta.get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_string());
                }
                if let Some(details) = delta.get("stop_details").filter(|d| !d.is_null()) {
                    self.stop_details = Some(details.clone());
                }
                self.update_usage(data.get("usage"), emit);
            }
            "message_stop" => self.done = true,
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                return Err(errors::from_stream_error(
                    &lanes_guest::text_at(error, "/type"),
                    &lanes_guest::text_at(error, "/message"),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn update_usage(&mut self, counts: Option<&Value>, emit: Emit<'_>) {
        let Some(Value::Object(counts)) = counts else {
            return;
        };
        for (key, value) in counts {
            if !value.is_null() {
                self.usage.insert(key.clone(), value.clone());
            }
        }
        self.builder
            .usage(usage(&Value::Object(self.usage.clone())), emit);
    }
}

impl StreamDecoder for ClaudeStream {
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
        let reason = finish_reason(self.stop_reason.as_deref());
        let refused = reason == FinishReason::Refusal;
        let mut response = self.builder.finish(reason, None);
        if refused {
            response.refusal = Some(refusal(self.stop_details.as_ref(), &response.content));
        }
        Ok(response)
    }
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

/// The headers of every request to the API, live or batch: `anthropic-version` and the key
/// (config `auth`: a Bearer token, the default, or `x-api-key`).
fn headers() -> Result<Vec<(String, String)>, ProviderError> {
    let key = lanes_guest::secret("api-key").ok_or_else(|| {
        ProviderError::Unauthorized("no API key: set api_key_env or api_key_file".into())
    })?;
    let auth = if config::get("auth").as_deref() == Some("x-api-key") {
        ("x-api-key".to_string(), key)
    } else {
        ("authorization".to_string(), format!("Bearer {key}"))
    };
    Ok(vec![
        (
            "anthropic-version".to_string(),
            lanes_guest::config_or("anthropic_version", "2026-10-21"),
        ),
        auth,
    ])
}

impl HttpAdapter for Claude {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "claude".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 3,
            description: "Anthropic Messages API (/v1/messages)".into(),
            capabilities: Capabilities::TOOLS
                | Capabilities::JSON_SCHEMA
                | Capabilities::IMAGES
                | Capabilities::IMAGE_URLS
                | Capabilities::REASONING
                | Capabilities::STREAMING,
            image_media_types: Vec::new(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        let headers = headers()?;
        let body = body(request, &model, &Settings::from_config()?)?;
        Ok(headers.into_iter().fold(
            HttpRequest::post("/v1/messages", Value::Object(body)),
            |built, (name, value)| built.header(name, value),
        ))
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(response)
    }

    fn classify_error(response: &http::Response) -> ProviderError {
        error(response)
    }

    fn stream_decoder(_request: &ChatRequest) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(ClaudeStream::default()))
    }
}

lanes_guest::export_http_batch_adapter!(Claude);

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::types::{JsonSchema, ReasoningConfig};

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
            default_max_tokens: 1024,
            thinking: ThinkingMode::Budget,
        }
    }

    fn body_of(request: &ChatRequest) -> Value {
        Value::Object(body(request, "claude-test", &settings()).unwrap())
    }

    fn refused(request: &ChatRequest) -> String {
        match body(request, "m", &settings()) {
            Err(ProviderError::InvalidRequest(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn weather_call() -> ToolCall {
        ToolCall {
            id: "toolu_01".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }
    }

    #[test]
    fn a_text_request_is_as_before() {
        let mut r = request(vec![
            message(Role::System, vec![text("Rule two")]),
            message(Role::User, vec![text("Hello"), text("there")]),
            message(Role::Assistant, vec![text("Hi")]),
            message(Role::User, vec![text("Bye")]),
        ]);
        r.system = Some("Rule one".into());
        r.temperature = Some(0.2);
        r.seed = Some(7);
        r.stop = vec!["END".into()];
        assert_eq!(
            body_of(&r),
            json!({
                "model": "claude-test",
                "max_tokens": 1024,
                "system": "Rule one\n\nRule two",
                "messages": [
                    {"role": "user", "content": "Hello\nthere"},
                    {"role": "assistant", "content": "Hi"},
                    {"role": "user", "content": "Bye"},
                ],
                "stop_sequences": ["END"],
                "temperature": 0.2,
            })
        );
    }

    #[test]
    fn a_tool_loop_with_thinking_maps() {
        let mut r = request(vec![
            message(
                Role::User,
                vec![
                    ContentPart::Image(Image {
                        source: ImageSource::Base64("iVBORw0KGgo=".into()),
                        media_type: Some("image/png".into()),
                    }),
                    ContentPart::Image(Image {
                        source: ImageSource::Url("https://example.com/a.jpg".into()),
                        media_type: None,
                    }),
                    text("Weather where this is?"),
                ],
            ),
            message(
                Role::Assistant,
                vec![
                    ContentPart::Reasoning(Reasoning {
                        text: "Looks like Paris".into(),
                        signature: Some("sig==".into()),
                        redacted: None,
                    }),
                    ContentPart::Reasoning(Reasoning {
                        text: String::new(),
                        signature: None,
                        redacted: Some("ENCRYPTED".into()),
                    }),
                    ContentPart::Reasoning(Reasoning {
                        text: "unsigned, from elsewhere".into(),
                        signature: None,
                        redacted: None,
                    }),
                    text("Let me check."),
                    ContentPart::ToolCall(weather_call()),
                ],
            ),
            message(
                Role::Tool,
                vec![ContentPart::ToolResult(ToolResult {
                    call_id: "toolu_01".into(),
                    name: Some("get_weather".into()),
                    parts: vec![ResultPart::Text("18°C".into())],
                    is_error: false,
                })],
            ),
            message(
                Role::Tool,
                vec![ContentPart::ToolResult(ToolResult {
                    call_id: "toolu_02".into(),
                    name: None,
                    parts: vec![
                        ResultPart::Text("failed, see".into()),
                        ResultPart::Image(Image {
                            source: ImageSource::Base64("R0lG".into()),
                            media_type: Some("image/gif".into()),
                        }),
                    ],
                    is_error: true,
                })],
            ),
            message(Role::User, vec![text("And tomorrow?")]),
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
        r.tool_choice = Some(ToolChoice::Required);
        r.parallel_tool_calls = Some(false);
        r.reasoning = Some(ReasoningConfig {
            effort: Some(Effort::High),
            budget_tokens: None,
        });
        r.top_p = Some(0.95);
        assert_eq!(
            body_of(&r),
            json!({
                "model": "claude-test",
                "max_tokens": 1024 + 4096,
                "messages": [
                    {"role": "user", "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                        {"type": "text", "text": "Weather where this is?"},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "Looks like Paris", "signature": "sig=="},
                        {"type": "redacted_thinking", "data": "ENCRYPTED"},
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C"},
                        {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": true, "content": [
                            {"type": "text", "text": "failed, see"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}},
                        ]},
                        {"type": "text", "text": "And tomorrow?"},
                    ]},
                ],
                "tools": [
                    {"name": "get_weather", "description": "The weather", "strict": true,
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
                ],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "thinking": {"type": "enabled", "budget_tokens": 4096},
                "top_p": 0.95,
            })
        );
    }

    #[test]
    fn tool_choices() {
        let choice = |c: Option<ToolChoice>, p: Option<bool>| tool_choice_json(c.as_ref(), p);
        assert_eq!(choice(None, None), None);
        assert_eq!(
            choice(None, Some(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            choice(Some(ToolChoice::Auto), Some(true)),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            choice(Some(ToolChoice::None), Some(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            choice(Some(ToolChoice::Named("f".into())), None),
            Some(json!({"type": "tool", "name": "f"}))
        );
        let mut r = request(vec![message(Role::User, vec![text("x")])]);
        r.tool_choice = Some(ToolChoice::Required);
        assert_eq!(
            body_of(&r).get("tool_choice"),
            None,
            "no tools, no tool_choice"
        );
    }

    #[test]
    fn structured_output_and_reasoning_settings() {
        let mut r = request(vec![message(Role::User, vec![text("x")])]);
        r.response_format = Some(ResponseFormat::JsonSchema(JsonSchema {
            name: "event".into(),
            description: None,
            schema: r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}"#.into(),
            strict: Some(true),
        }));
        r.reasoning = Some(ReasoningConfig {
            effort: Some(Effort::Low),
            budget_tokens: None,
        });
        r.max_tokens = Some(4000);
        let adaptive = Settings {
            default_max_tokens: 1024,
            thinking: ThinkingMode::Adaptive,
        };
        let b = Value::Object(body(&r, "m", &adaptive).unwrap());
        assert_eq!(b["thinking"], json!({"type": "adaptive"}));
        assert_eq!(
            b["output_config"],
            json!({"effort": "low", "format": {"type": "json_schema", "schema": {
                "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
                "additionalProperties": false}}})
        );
        assert_eq!(b["max_tokens"], json!(4000));
        let b = body_of(&r);
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );
        assert_eq!(b["output_config"].get("effort"), None);
        // A budget goes as a budget even in adaptive mode.
        r.reasoning = Some(ReasoningConfig {
            effort: None,
            budget_tokens: Some(3000),
        });
        let b = Value::Object(body(&r, "m", &adaptive).unwrap());
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 3000})
        );
        r.max_tokens = Some(3000);
        assert!(refused(&r).contains("must exceed the reasoning budget"));
        r.reasoning = None;
        r.response_format = Some(ResponseFormat::JsonObject);
        r.system = Some("Be brief".into());
        let b = body_of(&r);
        assert_eq!(
            b["system"],
            json!(format!("Be brief\n\n{JSON_OBJECT_INSTRUCTION}"))
        );
        assert_eq!(b.get("output_config"), None);
    }

    #[test]
    fn what_the_api_cannot_take_is_refused() {
        let image = Image {
            source: ImageSource::Base64("AA==".into()),
            media_type: None,
        };
        assert!(
            refused(&request(vec![message(
                Role::User,
                vec![ContentPart::Image(image)]
            )]))
            .contains("media type")
        );
        assert!(
            refused(&request(vec![message(
                Role::User,
                vec![ContentPart::ToolCall(weather_call())]
            )]))
            .contains("no tool-call part in a user message")
        );
        let mut bad = weather_call();
        bad.arguments = "{oops".into();
        assert!(
            refused(&request(vec![message(
                Role::Assistant,
                vec![ContentPart::ToolCall(bad)]
            )]))
            .contains("arguments of tool call `toolu_01`")
        );
    }

    #[test]
    fn a_reply_with_thinking_and_a_tool_call() {
        let reply = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking", "thinking": "Paris, then.", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "EmwK"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188086,
                      "cache_read_input_tokens": 5, "output_tokens": 393,
                      "output_tokens_details": {"thinking_tokens": 120}}
        });
        let r = parse_value(&reply).unwrap();
        assert_eq!(
            r.content,
            vec![
                ContentPart::Reasoning(Reasoning {
                    text: "Paris, then.".into(),
                    signature: Some("EqQB".into()),
                    redacted: None
                }),
                ContentPart::Reasoning(Reasoning {
                    text: String::new(),
                    signature: None,
                    redacted: Some("EmwK".into())
                }),
                text("Let me check."),
                ContentPart::ToolCall(weather_call()),
            ]
        );
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.refusal, None);
        assert_eq!(r.model, "claude-sonnet-4-5");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 21 + 188086 + 5,
                output_tokens: 393,
                cache_read_tokens: Some(5),
                cache_write_tokens: Some(188086),
                reasoning_tokens: Some(120),
            }
        );
    }

    #[test]
    fn stop_reasons_and_refusals() {
        let stop = |reason: &str| {
            parse_value(&json!({"model": "m", "content": [], "stop_reason": reason,
                                "usage": {"input_tokens": 1, "output_tokens": 2}}))
            .unwrap()
        };
        assert_eq!(stop("end_turn").finish_reason, FinishReason::Stop);
        assert_eq!(stop("stop_sequence").finish_reason, FinishReason::Stop);
        assert_eq!(stop("max_tokens").finish_reason, FinishReason::Length);
        assert_eq!(stop("pause_turn").finish_reason, FinishReason::Pause);
        assert_eq!(
            stop("model_context_window_exceeded").finish_reason,
            FinishReason::ContextWindow
        );
        assert_eq!(stop("refusal").refusal.as_deref(), Some("refused"));
        assert_eq!(stop("end_turn").usage.cache_read_tokens, None);
        let refused = parse_value(&json!({
            "model": "m", "content": [{"type": "text", "text": "I can't"}], "stop_reason": "refusal",
            "stop_details": {"type": "refusal", "category": "cyber", "explanation": "Malware."},
            "usage": {"input_tokens": 1, "output_tokens": 2}}))
        .unwrap();
        assert_eq!(refused.finish_reason, FinishReason::Refusal);
        assert_eq!(refused.refusal.as_deref(), Some("Malware."));
        assert_eq!(refused.content, vec![text("I can't")]);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::stream::Delta;
    use lanes_guest::stream::{decode_in_chunks, join_deltas};

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Paris, \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"then.\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \u{fc}\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Par\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn decoder() -> Box<dyn StreamDecoder> {
        Box::new(ClaudeStream::default())
    }

    #[test]
    fn a_thinking_tool_stream_assembles_however_it_is_cut() {
        for size in [1, 2, 5, 13, 200, 100_000] {
            let (deltas, result) = decode_in_chunks(decoder(), STREAM.as_bytes(), size);
            let response = result.unwrap();
            assert_eq!(response.model, "claude-sonnet-4-5");
            assert_eq!(response.finish_reason, FinishReason::ToolCalls);
            assert_eq!(
                response.content,
                vec![
                    ContentPart::Reasoning(Reasoning {
                        text: "Paris, then.".into(),
                        signature: Some("EqQBCgIYAhIM".into()),
                        redacted: None,
                    }),
                    ContentPart::Text("Let me ücheck.".into()),
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_01".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city": "Paris"}"#.into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_02".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    }),
                ]
            );
            assert_eq!(
                response.usage,
                Usage {
                    input_tokens: 125,
                    output_tokens: 89,
                    cache_read_tokens: Some(100),
                    cache_write_tokens: Some(0),
                    reasoning_tokens: None,
                }
            );
            let (text, reasoning, calls) = join_deltas(&deltas);
            assert_eq!(text, "Let me ücheck.");
            assert_eq!(reasoning, "Paris, then.");
            assert_eq!(
                calls,
                vec![
                    (
                        "toolu_01".into(),
                        "get_weather".into(),
                        r#"{"city": "Paris"}"#.into()
                    ),
                    ("toolu_02".into(), "get_time".into(), "{}".into()),
                ]
            );
            let usages: Vec<u32> = deltas
                .iter()
                .filter_map(|d| match d {
                    Delta::Usage(u) => Some(u.output_tokens),
                    _ => None,
                })
                .collect();
            assert_eq!(usages, vec![1, 89]);
        }
    }

    #[test]
    fn the_request_asks_for_a_stream() {
        let mut r = ChatRequest {
            stream: true,
            ..lanes_guest::plain_request(Vec::new())
        };
        let settings = Settings {
            default_max_tokens: 1024,
            thinking: ThinkingMode::Budget,
        };
        assert_eq!(body(&r, "m", &settings).unwrap()["stream"], json!(true));
        r.stream = false;
        assert_eq!(body(&r, "m", &settings).unwrap().get("stream"), None);
    }

    #[test]
    fn errors_and_cut_streams() {
        let overloaded = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let (_, result) = decode_in_chunks(decoder(), overloaded.as_bytes(), 7);
        assert!(
            matches!(result, Err(ProviderError::Unavailable(m)) if m.contains("overloaded_error: Overloaded"))
        );
        let cut = &STREAM[..STREAM.find("event: message_stop").unwrap()];
        let (_, result) = decode_in_chunks(decoder(), cut.as_bytes(), 50);
        assert!(matches!(result, Err(ProviderError::Unavailable(m)) if m == "stream ended early"));
        let refused = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"refusal\",\"stop_details\":{\"type\":\"refusal\",\"category\":\"cyber\",\"explanation\":null}},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (_, result) = decode_in_chunks(decoder(), refused.as_bytes(), 9);
        let response = result.unwrap();
        assert_eq!(response.finish_reason, FinishReason::Refusal);
        assert_eq!(response.refusal.as_deref(), Some("refused (cyber)"));
        assert!(response.content.is_empty());
    }
}
