//! The OpenAI-compatible front door: `POST /openai/v1/chat/completions` takes a Chat
//! Completions request, queues it as an execution and holds the HTTP request until the
//! execution ends; `GET /openai/v1/models` lists what `model` may name. Its JSON is the
//! OpenAI wire format (these structs and `serde_json` values), never lanes' own, and its
//! errors come in OpenAI's `{"error": {...}}` shape. See docs/api.md, "OpenAI-compatible
//! endpoint".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::front::{self, Refused};
use crate::model::{ChatOutput, Delta, Execution, ExecutionId, Part};
use axum::response::sse::Event as SseEvent;

/// An OpenAI-shaped error answer.
fn error(status: StatusCode, kind: &str, code: Option<&str>, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn invalid(message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

/// Request fields that lanes takes (the rest of OpenAI's are refused by name).
const CARRIED: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "stream",
    "stream_options",
    "n",
    "user",
    "metadata",
    "store",
];

/// The lanes chat input of an OpenAI request body, or why not (the field named).
fn to_input(body: &serde_json::Map<String, Value>, model: Option<String>) -> Result<Value, String> {
    if let Some(field) = body.keys().find(|k| !CARRIED.contains(&k.as_str())) {
        return Err(format!("`{field}` is not supported by lanes"));
    }
    // The SDKs send `null` for a parameter given as `None`: it means absent.
    let given = |field: &str| body.get(field).filter(|v| !v.is_null());
    let mut input = serde_json::Map::new();
    match given("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            input.insert("stream".into(), Value::Bool(true));
        }
        Some(_) => return Err("`stream` must be true or false".into()),
    }
    match given("stream_options").map(|o| o.get("include_usage")) {
        None | Some(None | Some(Value::Bool(_))) => {}
        Some(Some(_)) => return Err("`stream_options.include_usage` must be a boolean".into()),
    }
    if given("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err("`n`: lanes answers with one choice; send n: 1 or leave it out".into());
    }
    if let Some(model) = model {
        input.insert("model".into(), Value::String(model));
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be a list")?;
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        out.push(message(m).map_err(|e| format!("`messages[{i}]`{e}"))?);
    }
    input.insert("messages".into(), Value::Array(out));
    if let Some(max) = given("max_completion_tokens").or_else(|| given("max_tokens")) {
        input.insert("max_tokens".into(), max.clone());
    }
    for field in ["temperature", "top_p", "seed", "parallel_tool_calls"] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            input.insert(field.into(), v.clone());
        }
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            input.insert("stop".into(), json!([s]));
        }
        Some(list) => {
            input.insert("stop".into(), list.clone());
        }
    }
    if let Some(tools) = given("tools") {
        let tools = tools.as_array().ok_or("`tools` must be a list")?;
        let mut mapped = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let function = tool
                .get("function")
                .filter(|_| tool.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| format!("`tools[{i}]`: only function tools are supported"))?;
            let mut t = serde_json::Map::new();
            for field in ["name", "description", "parameters", "strict"] {
                if let Some(v) = function.get(field).filter(|v| !v.is_null()) {
                    t.insert(field.into(), v.clone());
                }
            }
            mapped.push(Value::Object(t));
        }
        input.insert("tools".into(), Value::Array(mapped));
    }
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            input.insert("tool_choice".into(), Value::String(s.clone()));
        }
        Some(choice) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or("`tool_choice`: give auto, none, required or a function by name")?;
            input.insert("tool_choice".into(), json!({ "name": name }));
        }
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) => {
            let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
            let mapped = match kind {
                "text" | "json_object" => json!({ "type": kind }),
                "json_schema" => {
                    let schema = format
                        .get("json_schema")
                        .ok_or("`response_format.json_schema` is missing")?;
                    let mut f = serde_json::Map::new();
                    f.insert("type".into(), json!("json_schema"));
                    for field in ["name", "description", "schema", "strict"] {
                        if let Some(v) = schema.get(field).filter(|v| !v.is_null()) {
                            f.insert(field.into(), v.clone());
                        }
                    }
                    Value::Object(f)
                }
                other => return Err(format!("`response_format.type` `{other}` is not supported")),
            };
            input.insert("response_format".into(), mapped);
        }
    }
    match given("reasoning_effort") {
        None => {}
        Some(Value::String(effort)) => match effort.as_str() {
            // No reasoning asked for: nothing to carry.
            "none" => {}
            "low" | "medium" | "high" => {
                input.insert("reasoning".into(), json!({ "effort": effort }));
            }
            other => {
                return Err(format!(
                    "`reasoning_effort` `{other}`: lanes carries none, low, medium or high"
                ));
            }
        },
        Some(_) => return Err("`reasoning_effort` must be a string".into()),
    }
    Ok(Value::Object(input))
}

/// One OpenAI message as a lanes message; the error follows the message's path.
fn message(m: &Value) -> Result<Value, String> {
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or(".role is missing")?;
    let content = m.get("content").filter(|c| !c.is_null());
    match role {
        "system" | "developer" => Ok(json!({"role": "system", "content": text_of(content)?})),
        "user" => Ok(json!({"role": "user", "content": user_content(content)?})),
        "assistant" => {
            let mut parts = Vec::new();
            match content {
                None => {}
                Some(Value::String(s)) => parts.push(json!({"type": "text", "text": s})),
                Some(_) => {
                    let text = text_of(content)?;
                    parts.push(json!({"type": "text", "text": text}));
                }
            }
            for (j, call) in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let field = |name: &str| {
                    call.pointer(name)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!(".tool_calls[{j}]{}", name.replace('/', ".")))
                };
                parts.push(json!({"type": "tool_call", "id": field("/id")?,
                                  "name": field("/function/name")?,
                                  "arguments": field("/function/arguments")?}));
            }
            Ok(json!({"role": "assistant", "content": parts}))
        }
        "tool" => {
            let call_id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or(".tool_call_id is missing")?;
            Ok(json!({"role": "tool", "content": [
                {"type": "tool_result", "call_id": call_id, "content": text_of(content)?}]}))
        }
        other => Err(format!(".role `{other}` is not one lanes takes")),
    }
}

/// Text content: a string, or text parts joined.
fn text_of(content: Option<&Value>) -> Result<String, String> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => return Err(format!(".content[{j}] must be a text part here")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(".content must be a string or a list of parts".into()),
    }
}

/// A user message's content: a string, or text and image parts.
fn user_content(content: Option<&Value>) -> Result<Value, String> {
    let Some(Value::Array(parts)) = content else {
        return text_of(content).map(Value::String);
    };
    let mut out = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => out.push(json!({"type": "text",
                "text": p.get("text").and_then(Value::as_str).unwrap_or_default()})),
            Some("image_url") => {
                let url = p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!(".content[{j}].image_url.url is missing"))?;
                // `data:image/png;base64,...` carries the image itself.
                let image = match url
                    .strip_prefix("data:")
                    .and_then(|rest| rest.split_once(";base64,"))
                {
                    Some((media_type, data)) => {
                        json!({"type": "image", "data": data, "media_type": media_type})
                    }
                    None => json!({"type": "image", "url": url}),
                };
                out.push(image);
            }
            other => {
                return Err(format!(
                    ".content[{j}].type {} is not supported",
                    other.unwrap_or("(missing)")
                ));
            }
        }
    }
    Ok(Value::Array(out))
}

/// Create a chat completion, as OpenAI's API does, through the queue.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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

/// OpenAI's stream of a call: `chat.completion.chunk` objects as `data:` events, the first
/// with the role, then the content and tool-call pieces, a last one with the finish reason
/// (and, when `stream_options.include_usage`, one more with the usage and no choices), then
/// `data: [DONE]`. An error ends it as `{"error": ...}`, which the SDKs raise.
fn relay(
    body: &serde_json::Map<String, Value>,
    model: &str,
    id: ExecutionId,
) -> Box<dyn front::Relay> {
    Box::new(OpenAiRelay {
        id: format!("chatcmpl-lanes-{id}"),
        model: model.to_string(),
        created: crate::model::now_ms() / 1000,
        include_usage: body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true)),
        began: false,
    })
}

struct OpenAiRelay {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// The first chunk (with the role) went out.
    began: bool,
}

impl OpenAiRelay {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk",
            "created": self.created, "model": self.model, "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        SseEvent::default().data(chunk.to_string())
    }

    fn piece(&mut self, delta: Value) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.began {
            self.began = true;
            out.push(self.chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                        "logprobs": null, "finish_reason": null}]),
                None,
            ));
        }
        out.push(self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
            None,
        ));
        out
    }
}

impl front::Relay for OpenAiRelay {
    fn delta(&mut self, delta: Delta) -> Vec<SseEvent> {
        match delta {
            Delta::Text { text } => self.piece(json!({"content": text})),
            Delta::ToolCallStart { index, id, name } => self.piece(json!({"tool_calls": [
                {"index": index, "id": id, "type": "function",
                 "function": {"name": name, "arguments": ""}}]})),
            Delta::ToolCallArguments { index, fragment } => self.piece(json!({"tool_calls": [
                {"index": index, "function": {"arguments": fragment}}]})),
            // Chat Completions has no reasoning in its answers; the usage comes at the end.
            Delta::Reasoning { .. } | Delta::Usage { .. } => Vec::new(),
        }
    }

    fn end(&mut self, execution: &Execution) -> Vec<SseEvent> {
        let output = match front::ended(execution).output() {
            Ok(output) => output,
            Err(message) => return self.fail(&message),
        };
        let mut out = Vec::new();
        if !self.began {
            // The component did not stream: the whole answer in one piece.
            if !output.text.is_empty() {
                out.extend(self.piece(json!({"content": output.text})));
            }
            let parts = output.content.clone().unwrap_or_default();
            let calls = parts.iter().filter_map(|p| match p {
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => Some((id, name, arguments)),
                _ => None,
            });
            for (index, (id, name, arguments)) in calls.enumerate() {
                out.extend(self.piece(json!({"tool_calls": [{"index": index, "id": id,
                    "type": "function", "function": {"name": name, "arguments": arguments}}]})));
            }
            if out.is_empty() {
                out.extend(self.piece(json!({})));
            }
        }
        if let Some(refusal) = &output.refusal {
            out.extend(self.piece(json!({ "refusal": refusal })));
        }
        out.push(self.chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null,
                    "finish_reason": finish_reason(&output)}]),
            None,
        ));
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(usage(&output))));
        }
        out.push(SseEvent::default().data("[DONE]"));
        out
    }

    fn fail(&mut self, message: &str) -> Vec<SseEvent> {
        let error = json!({"error": {"message": message, "type": "server_error",
            "param": null, "code": null}});
        vec![SseEvent::default().data(error.to_string())]
    }
}

/// A call that was not queued, or a wait that ended first, in OpenAI's error shape.
fn refusal(refused: Refused, model: &str) -> Response {
    match refused {
        Refused::Invalid(message) => invalid(message),
        Refused::UnknownModel(message) => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("model `{model}`: {message}"),
        ),
        Refused::Conflict(id) => front::final_answer(error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("idempotency_conflict"),
            format!("the idempotency key was used for execution {id} with another request"),
        )),
        Refused::Unavailable(message) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            message,
        ),
        Refused::Paused {
            provider,
            circuit_open,
            retry_after_secs,
            reason,
        } => {
            let (status, kind, code) = if circuit_open {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "circuit_open",
                )
            } else {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "paused")
            };
            let message = Refused::paused_message(
                &provider,
                circuit_open,
                retry_after_secs,
                reason.as_deref(),
            );
            front::with_retry_after(error(status, kind, Some(code), message), retry_after_secs)
        }
        Refused::MaxWait { id, status, secs } => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            Some("lanes_max_wait"),
            front::max_wait_message(id, &status, secs),
        ),
    }
}

/// The answer for an ended execution.
fn ended(execution: &Execution, model: &str) -> Response {
    match front::ended(execution) {
        front::Ended::Output(output) => (
            StatusCode::OK,
            axum::Json(completion(
                execution.id,
                execution.created_at,
                &output,
                model,
            )),
        )
            .into_response(),
        front::Ended::Cancelled(message) => front::final_answer(error(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("cancelled"),
            message,
        )),
        front::Ended::Failed {
            status,
            kind,
            message,
        } => {
            let kind_name = if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            };
            front::final_answer(error(status, kind_name, Some(&kind), message))
        }
        front::Ended::Unreadable(message) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message,
        ),
    }
}

/// An OpenAI `chat.completion` object for `output`.
fn completion(id: ExecutionId, created_ms: i64, output: &ChatOutput, model: &str) -> Value {
    let parts = output
        .content
        .clone()
        .unwrap_or_else(|| ChatOutput::text_parts(&output.text));
    let calls: Vec<Value> = parts
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({"id": id, "type": "function",
                             "function": {"name": name, "arguments": arguments}})),
            _ => None,
        })
        .collect();
    let finish = finish_reason(output);
    let mut message = json!({"role": "assistant",
        "content": if output.text.is_empty() && !calls.is_empty() { Value::Null } else { json!(output.text) },
        "refusal": output.refusal});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let usage_json = usage(output);
    json!({
        "id": format!("chatcmpl-lanes-{id}"),
        "object": "chat.completion",
        "created": created_ms / 1000,
        "model": if output.model.is_empty() { model } else { output.model.as_str() },
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": usage_json,
    })
}

/// OpenAI's finish reason for `output`'s.
fn finish_reason(output: &ChatOutput) -> &str {
    match output.finish_reason.as_str() {
        "stop" | "length" | "tool_calls" | "content_filter" => output.finish_reason.as_str(),
        "refusal" => "content_filter",
        "context_window" => "length",
        _ => "stop",
    }
}

/// OpenAI's `usage` object for `output`'s.
fn usage(output: &ChatOutput) -> Value {
    let usage = &output.usage;
    let mut usage_json = json!({"prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": u64::from(usage.input_tokens) + u64::from(usage.output_tokens)});
    if let Some(cached) = usage.cache_read_tokens {
        usage_json["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    if let Some(reasoning) = usage.reasoning_tokens {
        usage_json["completion_tokens_details"] = json!({ "reasoning_tokens": reasoning });
    }
    usage_json
}

/// List what `model` may name: each provider, each route, each alias.
pub async fn models(State(state): State<AppState>) -> Response {
    let config = state.control.config();
    let mut names: Vec<String> = match state.control.queue().providers().await {
        Ok(providers) => providers.into_iter().map(|p| p.name).collect(),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                format!("reading the providers: {e}"),
            );
        }
    };
    names.extend(config.providers.keys().cloned());
    names.extend(config.routes.keys().cloned());
    names.extend(config.front_door.models.keys().cloned());
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "lanes"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_maps_to_the_chat_input() {
        let body = json!({"model": "m", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}],
            "max_completion_tokens": 9, "stop": "x", "tool_choice": {"type": "function", "function": {"name": "f"}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}});
        let input = to_input(body.as_object().unwrap(), Some("gpt".into())).unwrap();
        assert_eq!(
            input,
            json!({"model": "gpt", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is "},
                    {"type": "image", "data": "AAAA", "media_type": "image/png"}]},
                {"role": "assistant", "content": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}]},
                {"role": "tool", "content": [{"type": "tool_result", "call_id": "c1", "content": "42"}]}],
                "max_tokens": 9, "stop": ["x"], "tools": [{"name": "f", "parameters": {"type": "object"}}],
                "tool_choice": {"name": "f"},
                "response_format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}})
        );
        for (body, named) in [
            (
                json!({"model": "m", "messages": [], "logprobs": true}),
                "`logprobs`",
            ),
            (
                json!({"model": "m", "messages": [], "stream": "yes"}),
                "`stream`",
            ),
            (json!({"model": "m", "messages": [], "n": 2}), "`n`"),
            (
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
                "`messages[0]`.role",
            ),
        ] {
            let err = to_input(body.as_object().unwrap(), None).unwrap_err();
            assert!(err.contains(named), "{err}");
        }
    }
}
