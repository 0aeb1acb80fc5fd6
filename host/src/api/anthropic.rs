//! The Anthropic-compatible front door: `POST /anthropic/v1/messages` takes a Messages API
//! request, queues it as an execution and holds the HTTP request until it ends (see
//! `front.rs`). Its JSON is Anthropic's wire format, mapped to and from the chat input and
//! output, and its errors come in Anthropic's `{"type": "error", "error": {...}}` shape. See
//! docs/api.md, "Anthropic-compatible endpoint".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::front::{self, Refused};
use crate::model::{ChatOutput, Delta, Execution, ExecutionId, Part};
use axum::response::sse::Event as SseEvent;

/// An Anthropic-shaped error answer.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn invalid(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// Request fields that lanes takes (the rest of Anthropic's are refused by name).
const CARRIED: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "metadata",
    "stream",
];

/// The lanes chat input of a Messages request body, or why not (the field named).
fn to_input(body: &serde_json::Map<String, Value>, model: Option<String>) -> Result<Value, String> {
    if !body.get("max_tokens").is_some_and(Value::is_u64) {
        return Err("`max_tokens` is required: a positive integer".into());
    }
    if let Some(field) = body.keys().find(|k| !CARRIED.contains(&k.as_str())) {
        return Err(format!("`{field}` is not supported by lanes"));
    }
    let mut input = serde_json::Map::new();
    match body.get("stream") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            input.insert("stream".into(), Value::Bool(true));
        }
        Some(_) => return Err("`stream` must be true or false".into()),
    }
    if let Some(model) = model {
        input.insert("model".into(), Value::String(model));
    }
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            input.insert("system".into(), Value::String(s.clone()));
        }
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => return Err(format!("`system[{i}]` must be a text block")),
                }
            }
            input.insert("system".into(), Value::String(text));
        }
        Some(_) => return Err("`system` must be a string or text blocks".into()),
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be a list")?;
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        push_message(m, &mut out).map_err(|e| format!("`messages[{i}]`{e}"))?;
    }
    input.insert("messages".into(), Value::Array(out));
    for field in ["max_tokens", "temperature", "top_p"] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            input.insert(field.into(), v.clone());
        }
    }
    if let Some(stop) = body.get("stop_sequences").filter(|v| !v.is_null()) {
        input.insert("stop".into(), stop.clone());
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let mut mapped = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            if tool
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "custom")
            {
                return Err(format!(
                    "`tools[{i}]`: only custom (client) tools are supported"
                ));
            }
            let mut t = serde_json::Map::new();
            for (from, to) in [
                ("name", "name"),
                ("description", "description"),
                ("input_schema", "parameters"),
                ("strict", "strict"),
            ] {
                if let Some(v) = tool.get(from).filter(|v| !v.is_null()) {
                    t.insert(to.into(), v.clone());
                }
            }
            mapped.push(Value::Object(t));
        }
        input.insert("tools".into(), Value::Array(mapped));
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = choice
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("`tool_choice.name` is missing")?;
                json!({ "name": name })
            }
            _ => return Err("`tool_choice.type` must be auto, any, tool or none".into()),
        };
        input.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            input.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    match body.get("thinking").filter(|v| !v.is_null()) {
        None => {}
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("disabled") => {}
            Some("enabled") => {
                let budget = t
                    .get("budget_tokens")
                    .filter(|b| b.is_u64())
                    .ok_or("`thinking.budget_tokens` must be a positive integer")?;
                input.insert("reasoning".into(), json!({ "budget_tokens": budget }));
            }
            _ => return Err("`thinking.type` must be enabled or disabled".into()),
        },
    }
    if let Some(config) = body.get("output_config").filter(|v| !v.is_null()) {
        let config = config
            .as_object()
            .ok_or("`output_config` must be an object")?;
        if let Some(field) = config
            .keys()
            .find(|k| !["format", "effort"].contains(&k.as_str()))
        {
            return Err(format!("`output_config.{field}` is not supported by lanes"));
        }
        match config.get("format").filter(|v| !v.is_null()) {
            None => {}
            Some(format) => {
                if format.get("type").and_then(Value::as_str) != Some("json_schema") {
                    return Err("`output_config.format.type` must be json_schema".into());
                }
                let schema = format
                    .get("schema")
                    .filter(|s| s.is_object())
                    .ok_or("`output_config.format.schema` must be a JSON Schema object")?;
                input.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "name": "output", "schema": schema}),
                );
            }
        }
        match config.get("effort").and_then(Value::as_str) {
            None => {}
            Some("low") => {
                input.insert("reasoning".into(), json!({"effort": "low"}));
            }
            Some("medium") => {
                input.insert("reasoning".into(), json!({"effort": "medium"}));
            }
            // lanes' highest.
            Some("high" | "xhigh" | "max") => {
                input.insert("reasoning".into(), json!({"effort": "high"}));
            }
            Some(other) => {
                return Err(format!(
                    "`output_config.effort` `{other}` is not one lanes takes"
                ));
            }
        }
    }
    Ok(Value::Object(input))
}

/// One Anthropic message as lanes messages: a user turn's `tool_result` blocks become a
/// `tool` message of their own, ahead of the rest of the turn.
fn push_message(m: &Value, out: &mut Vec<Value>) -> Result<(), String> {
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or(".role is missing")?;
    if role != "user" && role != "assistant" {
        return Err(format!(".role `{role}` is not user or assistant"));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(".content must be a string or a list of blocks".into()),
    };
    let mut results = Vec::new();
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
        let text = |field: &str| {
            b.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!(".content[{j}].{field} is missing"))
        };
        match (role, kind) {
            (_, "text") => parts.push(json!({"type": "text", "text": text("text")?})),
            ("user", "image") => {
                let source = b
                    .get("source")
                    .ok_or_else(|| format!(".content[{j}].source is missing"))?;
                let image = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => json!({"type": "image",
                        "data": source.get("data").cloned().unwrap_or(Value::Null),
                        "media_type": source.get("media_type").cloned().unwrap_or(Value::Null)}),
                    Some("url") => json!({"type": "image",
                        "url": source.get("url").cloned().unwrap_or(Value::Null)}),
                    _ => return Err(format!(".content[{j}].source.type must be base64 or url")),
                };
                parts.push(image);
            }
            ("user", "tool_result") => {
                let content = match b.get("content") {
                    None | Some(Value::Null) => Value::String(String::new()),
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(inner)) => {
                        let mut texts = Vec::new();
                        for (k, p) in inner.iter().enumerate() {
                            match (p.get("type").and_then(Value::as_str), p.get("text")) {
                                (Some("text"), Some(Value::String(t))) => {
                                    texts.push(json!({"type": "text", "text": t}));
                                }
                                _ => {
                                    return Err(format!(
                                        ".content[{j}].content[{k}] must be a text block"
                                    ));
                                }
                            }
                        }
                        Value::Array(texts)
                    }
                    Some(_) => return Err(format!(".content[{j}].content must be text")),
                };
                let mut result = json!({"type": "tool_result",
                    "call_id": text("tool_use_id")?, "content": content});
                if let Some(is_error) = b.get("is_error").filter(|v| v.is_boolean()) {
                    result["is_error"] = is_error.clone();
                }
                results.push(result);
            }
            ("assistant", "tool_use") => {
                let arguments = b
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_string());
                parts.push(json!({"type": "tool_call", "id": text("id")?,
                                  "name": text("name")?, "arguments": arguments}));
            }
            ("assistant", "thinking") => {
                let mut part = json!({"type": "reasoning", "text": text("thinking")?});
                if let Some(signature) = b.get("signature").filter(|s| s.is_string()) {
                    part["signature"] = signature.clone();
                }
                parts.push(part);
            }
            ("assistant", "redacted_thinking") => {
                parts.push(json!({"type": "reasoning", "text": "", "redacted": text("data")?}));
            }
            _ => {
                return Err(format!(
                    ".content[{j}].type `{kind}` is not one lanes takes in a {role} turn"
                ));
            }
        }
    }
    if !results.is_empty() {
        out.push(json!({"role": "tool", "content": results}));
    }
    if !parts.is_empty() || results.is_empty() {
        out.push(json!({"role": role, "content": parts}));
    }
    Ok(())
}

/// Create a message, as Anthropic's API does, through the queue.
pub async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    front::handle(&DOOR, state, headers, body).await
}

/// The vendor's side of [`front::Door`].
const DOOR: front::Door = front::Door {
    invalid,
    to_input,
    refusal,
    ended,
    relay,
};

/// Anthropic's stream of a call: `message_start`, then for each content block its
/// `content_block_start`, deltas (`text_delta`, `thinking_delta`, `input_json_delta`) and
/// `content_block_stop`, then `message_delta` with the stop reason and usage, and
/// `message_stop`. An error ends it as an `error` event, which the SDKs raise.
fn relay(
    _body: &serde_json::Map<String, Value>,
    model: &str,
    id: ExecutionId,
) -> Box<dyn front::Relay> {
    Box::new(AnthropicRelay {
        id: format!("msg_lanes_{id}"),
        model: model.to_string(),
        began: false,
        open: None,
        blocks: 0,
    })
}

/// The kind of the content block a stream has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// The answer's tool call of this index.
    Tool(u32),
}

struct AnthropicRelay {
    id: String,
    model: String,
    /// `message_start` went out.
    began: bool,
    /// The open block and its index.
    open: Option<(Block, usize)>,
    /// Blocks opened so far.
    blocks: usize,
}

fn event(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

impl AnthropicRelay {
    fn begin(&mut self, out: &mut Vec<SseEvent>) {
        if !self.began {
            self.began = true;
            out.push(event(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((_, index)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Makes `kind` the open block (opening it with `start` when it is not), and gives its
    /// index.
    fn block(&mut self, kind: Block, start: Value, out: &mut Vec<SseEvent>) -> usize {
        self.begin(out);
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((kind, index));
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start",
            "index": index, "content_block": start}),
        ));
        index
    }

    fn piece(index: usize, delta: Value) -> SseEvent {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
            "delta": delta}),
        )
    }
}

impl front::Relay for AnthropicRelay {
    fn delta(&mut self, delta: Delta) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match delta {
            Delta::Text { text } => {
                let index = self.block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                out.push(Self::piece(
                    index,
                    json!({"type": "text_delta", "text": text}),
                ));
            }
            Delta::Reasoning { text } => {
                let start = json!({"type": "thinking", "thinking": "", "signature": ""});
                let index = self.block(Block::Thinking, start, &mut out);
                out.push(Self::piece(
                    index,
                    json!({"type": "thinking_delta", "thinking": text}),
                ));
            }
            Delta::ToolCallStart { index, id, name } => {
                // A new call is a new block, even right after another call.
                self.close(&mut out);
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                self.block(Block::Tool(index), start, &mut out);
            }
            Delta::ToolCallArguments { index, fragment } => {
                if let Some((Block::Tool(open), block)) = self.open
                    && open == index
                {
                    out.push(Self::piece(
                        block,
                        json!({"type": "input_json_delta", "partial_json": fragment}),
                    ));
                }
            }
            Delta::Usage { .. } => {}
        }
        out
    }

    fn end(&mut self, execution: &Execution) -> Vec<SseEvent> {
        let output = match front::ended(execution).output() {
            Ok(output) => output,
            Err(message) => return self.fail(&message),
        };
        let mut out = Vec::new();
        if !self.began {
            // The component did not stream: each block whole.
            let whole = message(execution.id, &output, &self.model);
            self.begin(&mut out);
            for block in whole["content"].as_array().into_iter().flatten() {
                let index = self.blocks;
                self.blocks += 1;
                let (start, delta) = match block["type"].as_str() {
                    Some("text") => (
                        json!({"type": "text", "text": ""}),
                        Some(json!({"type": "text_delta", "text": block["text"]})),
                    ),
                    Some("tool_use") => (
                        json!({"type": "tool_use", "id": block["id"], "name": block["name"],
                               "input": {}}),
                        Some(json!({"type": "input_json_delta",
                                    "partial_json": block["input"].to_string()})),
                    ),
                    Some("thinking") => (
                        json!({"type": "thinking", "thinking": "",
                        "signature": block["signature"]}),
                        Some(json!({"type": "thinking_delta", "thinking": block["thinking"]})),
                    ),
                    _ => (block.clone(), None),
                };
                out.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start",
                    "index": index, "content_block": start}),
                ));
                if let Some(delta) = delta {
                    out.push(Self::piece(index, delta));
                }
                out.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
            }
        }
        self.close(&mut out);
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(&output), "stop_sequence": null},
            "usage": usage(&output)}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn fail(&mut self, message: &str) -> Vec<SseEvent> {
        vec![event(
            "error",
            json!({"type": "error",
            "error": {"type": "api_error", "message": message}}),
        )]
    }
}

/// A call that was not queued, or a wait that ended first, in Anthropic's error shape.
fn refusal(refused: Refused, model: &str) -> Response {
    match refused {
        Refused::Invalid(message) => invalid(message),
        Refused::UnknownModel(message) => error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model `{model}`: {message}"),
        ),
        Refused::Conflict(id) => front::final_answer(error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!("the idempotency key was used for execution {id} with another request"),
        )),
        Refused::Unavailable(message) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "api_error", message)
        }
        Refused::Paused {
            provider,
            circuit_open,
            retry_after_secs,
            reason,
        } => {
            let (status, kind) = if circuit_open {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error")
            } else {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
            };
            let message = Refused::paused_message(
                &provider,
                circuit_open,
                retry_after_secs,
                reason.as_deref(),
            );
            front::with_retry_after(error(status, kind, message), retry_after_secs)
        }
        Refused::MaxWait { id, status, secs } => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            front::max_wait_message(id, &status, secs),
        ),
    }
}

/// The answer for an ended execution.
fn ended(execution: &Execution, model: &str) -> Response {
    match front::ended(execution) {
        front::Ended::Output(output) => (
            StatusCode::OK,
            axum::Json(message(execution.id, &output, model)),
        )
            .into_response(),
        front::Ended::Cancelled(message) => front::final_answer(error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            message,
        )),
        front::Ended::Failed {
            status, message, ..
        } => {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
                StatusCode::UNAUTHORIZED => "authentication_error",
                StatusCode::BAD_REQUEST => "invalid_request_error",
                StatusCode::GATEWAY_TIMEOUT => "timeout_error",
                StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
                _ => "api_error",
            };
            front::final_answer(error(status, kind, message))
        }
        front::Ended::Unreadable(message) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", message)
        }
    }
}

/// An Anthropic `message` object for `output`.
fn message(id: ExecutionId, output: &ChatOutput, model: &str) -> Value {
    let parts = output
        .content
        .clone()
        .unwrap_or_else(|| ChatOutput::text_parts(&output.text));
    let content: Vec<Value> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } => Some(json!({"type": "text", "text": text})),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                // Anthropic's `input` is an object; the model's text may not parse.
                let input = serde_json::from_str::<Value>(arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                Some(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
            }
            Part::Reasoning {
                redacted: Some(data),
                ..
            } => Some(json!({"type": "redacted_thinking", "data": data})),
            Part::Reasoning {
                text, signature, ..
            } => Some(json!({"type": "thinking",
                "thinking": text, "signature": signature.clone().unwrap_or_default()})),
            _ => None,
        })
        .collect();
    json!({
        "id": format!("msg_lanes_{id}"),
        "type": "message",
        "role": "assistant",
        "model": if output.model.is_empty() { model } else { output.model.as_str() },
        "content": content,
        "stop_reason": stop_reason(output),
        "stop_sequence": null,
        "usage": usage(output),
    })
}

/// Anthropic's stop reason for `output`'s finish reason.
fn stop_reason(output: &ChatOutput) -> &'static str {
    match output.finish_reason.as_str() {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" | "refusal" => "refusal",
        "pause" => "pause_turn",
        "context_window" => "model_context_window_exceeded",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` for `output`'s: its `input_tokens` leaves out the cache's, which
/// lanes' counts.
fn usage(output: &ChatOutput) -> Value {
    let usage = &output.usage;
    let cache_read = usage.cache_read_tokens.unwrap_or(0);
    let cache_write = usage.cache_write_tokens.unwrap_or(0);
    let uncached = usage
        .input_tokens
        .saturating_sub(cache_read)
        .saturating_sub(cache_write);
    json!({"input_tokens": uncached, "output_tokens": usage.output_tokens,
           "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_maps_to_the_chat_input() {
        let body = json!({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "18C"},
                    {"type": "text", "text": "and so?"}]}],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}, "stop_sequences": ["x"],
            "thinking": {"type": "enabled", "budget_tokens": 1024}});
        let input = to_input(body.as_object().unwrap(), None).unwrap();
        assert_eq!(
            input,
            json!({"system": "be brief", "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "reasoning", "text": "hm", "signature": "sig"},
                    {"type": "tool_call", "id": "t1", "name": "w", "arguments": "{\"city\":\"Paris\"}"}]},
                {"role": "tool", "content": [{"type": "tool_result", "call_id": "t1", "content": "18C"}]},
                {"role": "user", "content": [{"type": "text", "text": "and so?"}]}],
                "max_tokens": 50, "stop": ["x"], "tools": [{"name": "w", "parameters": {"type": "object"}}],
                "tool_choice": "required", "reasoning": {"budget_tokens": 1024}})
        );
        for (body, named) in [
            (
                json!({"model": "m", "max_tokens": 5, "messages": [], "top_k": 3}),
                "`top_k`",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"}),
                "`stream`",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "`messages[0]`.role",
            ),
            (
                json!({"model": "m", "messages": []}),
                "`max_tokens` is required",
            ),
        ] {
            let err = to_input(body.as_object().unwrap(), None).unwrap_err();
            assert!(err.contains(named), "{err}");
        }
    }
}
