//! Ollama's chat API (`POST {base_url}/api/chat`) as a lanes provider.
//!
//! Config: `base_url` (default http://127.0.0.1:11434) and `model`. There is no auth.
//! `"stream"` is always sent, `false` unless the request streams, since Ollama streams NDJSON
//! when the field is missing; an NDJSON reply to an unstreamed request is still understood.
//!
//! Streaming: the NDJSON lines become text, reasoning (`message.thinking`), tool-call (each
//! call whole: its start and all its arguments) and usage (at `done: true`) deltas; a body
//! that ends before `done: true` is `unavailable`, and so is an `{"error": ...}` line.
//!
//! Mapped: text, base64 images (`images`; URLs are refused, and not declared), tools, tool
//! calls in assistant messages (arguments as objects), tool results as `tool` messages with
//! `tool_name` and `tool_call_id`, reasoning as `thinking` on assistant messages, `format`
//! (`json` or a schema), `think` (an effort as its level, a budget as `true`) and `options`
//! `num_predict`, `temperature`, `top_p`, `seed` and `stop`. Ollama has no `tool_choice` and
//! no parallel-calls switch (see [`offered_tools`]). Replies: `message.thinking` is a
//! reasoning part, tool calls get a made-up id when the server sends none, and their presence
//! makes the finish `tool-calls`.

use lanes_guest::adapter::{HttpAdapter, HttpRequest};
use lanes_guest::bindings::lanes::provider::types::{
    Capabilities, ChatRequest, ChatResponse, ContentPart, Effort, FinishReason, Image, ImageSource,
    Message, ProviderError, ProviderInfo, Reasoning, ResponseFormat, ResultPart, Role, Tool,
    ToolCall, ToolChoice, Usage,
};
use lanes_guest::http;
use lanes_guest::stream::{self, Emit, LineReader, ResponseBuilder, StreamDecoder};
use serde_json::{Map, Value, json};

struct Ollama;

/// The image types Ollama's vision models are known to read.
const IMAGE_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

fn refuse_part(part: &ContentPart, role: &str) -> ProviderError {
    let kind = match part {
        ContentPart::Text(_) => "text",
        ContentPart::Image(_) => "image",
        ContentPart::ToolCall(_) => "tool-call",
        ContentPart::ToolResult(_) => "tool-result",
        ContentPart::Reasoning(_) => "reasoning",
    };
    lanes_guest::refuse(format!("Ollama takes no {kind} part in a {role} message"))
}

/// An image's base64 bytes: the only form `/api/chat` takes.
fn image_data(image: &Image) -> Result<Value, ProviderError> {
    match &image.source {
        ImageSource::Base64(data) => Ok(json!(data)),
        ImageSource::Url(_) => Err(lanes_guest::refuse(
            "Ollama takes images as base64 only, not URLs",
        )),
    }
}

/// The name of the tool that call `id` called, from the conversation's assistant messages.
fn called_tool<'a>(request: &'a ChatRequest, id: &str) -> Option<&'a str> {
    request
        .messages
        .iter()
        .flat_map(|m| m.content.iter())
        .find_map(|p| match p {
            ContentPart::ToolCall(call) if call.id == id => Some(call.name.as_str()),
            _ => None,
        })
}

/// One lanes message as Ollama messages: a tool message becomes one `tool` message per
/// result, named by `tool_name` (the result's name, else the name of the call it answers).
fn message_json(request: &ChatRequest, message: &Message) -> Result<Vec<Value>, ProviderError> {
    let role = lanes_guest::role_name(message.role);
    if message.role == Role::Tool {
        return message
            .content
            .iter()
            .map(|part| {
                let ContentPart::ToolResult(result) = part else {
                    return Err(refuse_part(part, role));
                };
                let mut texts = Vec::new();
                let mut images = Vec::new();
                for p in &result.parts {
                    match p {
                        ResultPart::Text(t) => texts.push(t.as_str()),
                        ResultPart::Image(image) => images.push(image_data(image)?),
                    }
                }
                let mut out = Map::new();
                out.insert("role".into(), json!("tool"));
                out.insert("content".into(), json!(texts.join("\n")));
                if !images.is_empty() {
                    out.insert("images".into(), Value::Array(images));
                }
                let name = result
                    .name
                    .as_deref()
                    .or_else(|| called_tool(request, &result.call_id));
                if let Some(name) = name {
                    out.insert("tool_name".into(), json!(name));
                }
                out.insert("tool_call_id".into(), json!(result.call_id));
                Ok(Value::Object(out))
            })
            .collect();
    }
    let assistant = message.role == Role::Assistant;
    let mut texts = Vec::new();
    let mut images = Vec::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for part in &message.content {
        match part {
            ContentPart::Text(t) => texts.push(t.as_str()),
            ContentPart::Image(image) if !assistant => images.push(image_data(image)?),
            ContentPart::Reasoning(r) if assistant => thinking.push(r.text.as_str()),
            ContentPart::ToolCall(call) if assistant => {
                let arguments = if call.arguments.trim().is_empty() {
                    json!({})
                } else {
                    let what = format!("the arguments of tool call `{}`", call.id);
                    lanes_guest::json_text(&call.arguments, &what)?
                };
                calls.push(json!({
                    "id": call.id,
                    "function": {"name": call.name, "arguments": arguments},
                }));
            }
            other => return Err(refuse_part(other, role)),
        }
    }
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), json!(texts.join("\n")));
    if !images.is_empty() {
        out.insert("images".into(), Value::Array(images));
    }
    let thinking = thinking.join("");
    if !thinking.is_empty() {
        out.insert("thinking".into(), json!(thinking));
    }
    if !calls.is_empty() {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(vec![Value::Object(out)])
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
    Ok(json!({"type": "function", "function": function}))
}

/// The tools to offer. Ollama has no `tool_choice`: `none` offers no tool, a named tool is
/// offered alone (the model may still answer without it), and `required` offers them all
/// without forcing a call.
fn offered_tools(request: &ChatRequest) -> Result<Vec<Value>, ProviderError> {
    let tools: Vec<&Tool> = match &request.tool_choice {
        Some(ToolChoice::None) => Vec::new(),
        Some(ToolChoice::Named(name)) => {
            let tool = request
                .tools
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| {
                    lanes_guest::refuse(format!("tool_choice names `{name}`, not a tool offered"))
                })?;
            vec![tool]
        }
        _ => request.tools.iter().collect(),
    };
    tools.into_iter().map(tool_json).collect()
}

/// The request body Ollama expects.
fn body(request: &ChatRequest, model: &str) -> Result<Map<String, Value>, ProviderError> {
    let mut messages: Vec<Value> = request
        .system
        .iter()
        .map(|s| json!({"role": "system", "content": s}))
        .collect();
    for message in &request.messages {
        messages.extend(message_json(request, message)?);
    }
    let mut options = Map::new();
    if let Some(t) = request.temperature {
        options.insert("temperature".into(), lanes_guest::f32_json(t));
    }
    if let Some(p) = request.top_p {
        options.insert("top_p".into(), lanes_guest::f32_json(p));
    }
    if let Some(seed) = request.seed {
        options.insert("seed".into(), json!(seed));
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
    body.insert("stream".into(), json!(request.stream));
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    if !request.tools.is_empty() {
        let tools = offered_tools(request)?;
        if !tools.is_empty() {
            body.insert("tools".into(), Value::Array(tools));
        }
    }
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("format".into(), json!("json"));
        }
        Some(ResponseFormat::JsonSchema(format)) => {
            let schema = lanes_guest::json_text(&format.schema, "the response format's schema")?;
            body.insert("format".into(), schema);
        }
    }
    // `think` takes an effort as a level, or `true`; a budget of tokens has no equivalent.
    if let Some(reasoning) = &request.reasoning {
        let think = match reasoning.effort {
            Some(Effort::Low) => json!("low"),
            Some(Effort::Medium) => json!("medium"),
            Some(Effort::High) => json!("high"),
            None => json!(true),
        };
        body.insert("think".into(), think);
    }
    Ok(body)
}

/// Reads a reply: one JSON object, or NDJSON lines whose contents are joined.
fn parse(text: &str) -> Result<ChatResponse, ProviderError> {
    let mut content = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
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
        if let Some(piece) = value.pointer("/message/thinking").and_then(Value::as_str) {
            thinking.push_str(piece);
        }
        for call in value
            .pointer("/message/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            calls.push(tool_call(call, calls.len()));
        }
        last = value;
    }
    let mut parts = Vec::new();
    if !thinking.is_empty() {
        parts.push(ContentPart::Reasoning(Reasoning {
            text: thinking,
            signature: None,
            redacted: None,
        }));
    }
    if !content.is_empty() {
        parts.push(ContentPart::Text(content));
    }
    let called = !calls.is_empty();
    parts.extend(calls.into_iter().map(ContentPart::ToolCall));
    Ok(ChatResponse {
        content: parts,
        refusal: None,
        model: lanes_guest::text_at(&last, "/model"),
        usage: usage(&last),
        finish_reason: finish_reason(last.get("done_reason").and_then(Value::as_str), called),
    })
}

/// A tool call of a reply: its arguments (an object) as JSON text, and an id made up
/// (`call_<n>`, n counting the reply's calls from 0) when the server sent none, as older
/// Ollama versions do.
fn tool_call(call: &Value, n: usize) -> ToolCall {
    let id = lanes_guest::text_at(call, "/id");
    ToolCall {
        id: if id.is_empty() {
            format!("call_{n}")
        } else {
            id
        },
        name: lanes_guest::text_at(call, "/function/name"),
        arguments: lanes_guest::json_to_text(
            call.pointer("/function/arguments").unwrap_or(&Value::Null),
        ),
    }
}

/// `done_reason` as lanes says it: a tool call still ends with `stop`, so the calls say it.
fn finish_reason(reason: Option<&str>, called: bool) -> FinishReason {
    match reason {
        _ if called => FinishReason::ToolCalls,
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

/// The final object's counts; Ollama reports no cache or reasoning counts.
fn usage(done: &Value) -> Usage {
    Usage {
        input_tokens: lanes_guest::count_at(done, "/prompt_eval_count"),
        output_tokens: lanes_guest::count_at(done, "/eval_count"),
        cache_read_tokens: None,
        cache_write_tokens: None,
        reasoning_tokens: None,
    }
}

/// A streamed answer: NDJSON, one chunk object a line, the last with `done: true` and the
/// counts; an `{"error": ...}` line on failure (the status stays 200).
#[derive(Default)]
struct OllamaStream {
    lines: LineReader,
    builder: ResponseBuilder,
    /// How many tool calls the answer has so far.
    calls: usize,
    done_reason: Option<String>,
    done: bool,
}

impl OllamaStream {
    fn line(&mut self, line: &str, emit: Emit<'_>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(line)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable stream line: {e}")))?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string);
            return Err(ProviderError::Unavailable(format!(
                "error in stream: {message}"
            )));
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str)
            && !model.is_empty()
        {
            self.builder.model = model.to_string();
        }
        let message = chunk.get("message").unwrap_or(&Value::Null);
        if let Some(thinking) = message.get("thinking").and_then(Value::as_str) {
            self.builder.reasoning(thinking, emit);
        }
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            self.builder.text(text, emit);
        }
        // Tool calls arrive whole: a start and all the arguments at once.
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let call = tool_call(call, self.calls);
            self.calls += 1;
            let at = self.builder.start_call(call.id, call.name, emit);
            self.builder.append(at, &call.arguments, emit);
        }
        if chunk.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            self.done_reason = chunk
                .get("done_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            self.builder.usage(usage(&chunk), emit);
        }
        Ok(())
    }
}

impl StreamDecoder for OllamaStream {
    fn feed(&mut self, chunk: &[u8], emit: Emit<'_>) -> Result<(), ProviderError> {
        for line in self.lines.push(chunk) {
            self.line(&line, emit)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, emit: Emit<'_>) -> Result<ChatResponse, ProviderError> {
        if let Some(line) = self.lines.finish() {
            self.line(&line, emit)?;
        }
        if !self.done {
            return Err(stream::ended_early());
        }
        let reason = finish_reason(self.done_reason.as_deref(), self.builder.has_calls());
        Ok(self.builder.finish(reason, None))
    }
}

impl HttpAdapter for Ollama {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "ollama".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            default_limit: 2,
            description: "Ollama chat API (/api/chat), local or remote".into(),
            capabilities: Capabilities::TOOLS
                | Capabilities::JSON_SCHEMA
                | Capabilities::IMAGES
                | Capabilities::REASONING
                | Capabilities::STREAMING,
            image_media_types: IMAGE_TYPES.iter().map(|t| t.to_string()).collect(),
        }
    }

    const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:11434";

    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
        let model = lanes_guest::model(request)?;
        Ok(HttpRequest::post(
            "/api/chat",
            Value::Object(body(request, &model)?),
        ))
    }

    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError> {
        parse(&response.text())
    }

    fn stream_decoder(_request: &ChatRequest) -> Option<Box<dyn StreamDecoder>> {
        Some(Box::new(OllamaStream::default()))
    }
}

lanes_guest::export_http_adapter!(Ollama);

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::types::{JsonSchema, ReasoningConfig, ToolResult};

    fn request(messages: Vec<Message>) -> ChatRequest {
        lanes_guest::plain_request(messages)
    }

    fn message(role: Role, content: Vec<ContentPart>) -> Message {
        Message { role, content }
    }

    fn text(t: &str) -> ContentPart {
        ContentPart::Text(t.to_string())
    }

    fn body_of(request: &ChatRequest) -> Value {
        Value::Object(body(request, "qwen3").unwrap())
    }

    fn tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            description: None,
            parameters: None,
            strict: None,
        }
    }

    #[test]
    fn a_text_request_is_as_before() {
        let mut r = request(vec![
            message(Role::User, vec![text("Hello"), text("there")]),
            message(Role::Assistant, vec![text("Hi")]),
        ]);
        r.system = Some("Be brief".into());
        r.max_tokens = Some(50);
        r.temperature = Some(0.2);
        r.stop = vec!["END".into()];
        assert_eq!(
            body_of(&r),
            json!({
                "model": "qwen3",
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hello\nthere"},
                    {"role": "assistant", "content": "Hi"},
                ],
                "stream": false,
                "options": {"num_predict": 50, "temperature": 0.2, "stop": ["END"]},
            })
        );
    }

    #[test]
    fn everything_of_0_2_maps() {
        let mut r = request(vec![
            message(
                Role::User,
                vec![
                    text("What is the temperature here?"),
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
                        text: "It is New York".into(),
                        signature: None,
                        redacted: None,
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_k3j9x0aa".into(),
                        name: "get_temperature".into(),
                        arguments: r#"{"city":"New York"}"#.into(),
                    }),
                ],
            ),
            message(
                Role::Tool,
                vec![ContentPart::ToolResult(ToolResult {
                    call_id: "call_k3j9x0aa".into(),
                    name: None,
                    parts: vec![ResultPart::Text("22°C".into())],
                    is_error: false,
                })],
            ),
        ]);
        r.tools = vec![Tool {
            name: "get_temperature".into(),
            description: Some("The temperature".into()),
            parameters: Some(
                r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                    .into(),
            ),
            strict: Some(true),
        }];
        r.tool_choice = Some(ToolChoice::Auto);
        r.parallel_tool_calls = Some(false);
        r.response_format = Some(ResponseFormat::JsonSchema(JsonSchema {
            name: "answer".into(),
            description: None,
            schema: r#"{"type":"object","properties":{"c":{"type":"number"}}}"#.into(),
            strict: None,
        }));
        r.reasoning = Some(ReasoningConfig {
            effort: Some(Effort::Low),
            budget_tokens: None,
        });
        r.top_p = Some(0.9);
        r.seed = Some(42);
        assert_eq!(
            body_of(&r),
            json!({
                "model": "qwen3",
                "messages": [
                    {"role": "user", "content": "What is the temperature here?", "images": ["iVBORw0KGgo="]},
                    {"role": "assistant", "content": "", "thinking": "It is New York", "tool_calls": [
                        {"id": "call_k3j9x0aa", "function": {"name": "get_temperature", "arguments": {"city": "New York"}}},
                    ]},
                    {"role": "tool", "content": "22°C", "tool_name": "get_temperature", "tool_call_id": "call_k3j9x0aa"},
                ],
                "stream": false,
                "options": {"top_p": 0.9, "seed": 42},
                "tools": [{"type": "function", "function": {
                    "name": "get_temperature", "description": "The temperature",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "format": {"type": "object", "properties": {"c": {"type": "number"}}},
                "think": "low",
            })
        );
    }

    #[test]
    fn tool_choice_json_mode_and_think() {
        let mut r = request(vec![message(Role::User, vec![text("x")])]);
        r.tools = vec![tool("a"), tool("b")];
        r.tool_choice = Some(ToolChoice::None);
        assert_eq!(body_of(&r).get("tools"), None);
        r.tool_choice = Some(ToolChoice::Named("b".into()));
        assert_eq!(
            body_of(&r)["tools"],
            json!([{"type": "function", "function": {"name": "b"}}])
        );
        r.tool_choice = Some(ToolChoice::Named("c".into()));
        assert!(matches!(
            body(&r, "m"),
            Err(ProviderError::InvalidRequest(_))
        ));
        r.tool_choice = Some(ToolChoice::Required);
        assert_eq!(body_of(&r)["tools"].as_array().unwrap().len(), 2);
        r.response_format = Some(ResponseFormat::JsonObject);
        r.reasoning = Some(ReasoningConfig {
            effort: None,
            budget_tokens: Some(2000),
        });
        let b = body_of(&r);
        assert_eq!(b["format"], json!("json"));
        assert_eq!(b["think"], json!(true));
    }

    #[test]
    fn image_urls_are_refused() {
        let r = request(vec![message(
            Role::User,
            vec![ContentPart::Image(Image {
                source: ImageSource::Url("https://example.com/a.png".into()),
                media_type: None,
            })],
        )]);
        assert!(
            matches!(body(&r, "m"), Err(ProviderError::InvalidRequest(m)) if m.contains("base64 only"))
        );
    }

    #[test]
    fn a_reply_with_thinking_and_tool_calls() {
        let reply = r#"{"model":"qwen3","created_at":"2026-08-21T00:00:00Z","message":{"role":"assistant","content":"","thinking":"Need the weather.","tool_calls":[{"id":"call_k3j9x0aa","function":{"index":0,"name":"get_temperature","arguments":{"city":"New York"}}},{"function":{"index":1,"name":"get_time","arguments":{}}}]},"done":true,"done_reason":"stop","total_duration":1,"prompt_eval_count":26,"eval_count":282}"#;
        let r = parse(reply).unwrap();
        assert_eq!(
            r.content,
            vec![
                ContentPart::Reasoning(Reasoning {
                    text: "Need the weather.".into(),
                    signature: None,
                    redacted: None
                }),
                ContentPart::ToolCall(ToolCall {
                    id: "call_k3j9x0aa".into(),
                    name: "get_temperature".into(),
                    arguments: r#"{"city":"New York"}"#.into(),
                }),
                ContentPart::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_time".into(),
                    arguments: "{}".into(),
                }),
            ]
        );
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage.input_tokens, 26);
        assert_eq!(r.usage.output_tokens, 282);
        assert_eq!(r.model, "qwen3");
    }

    #[test]
    fn a_text_reply() {
        let reply = r#"{"model":"llama3.2","message":{"role":"assistant","content":"Hi there"},"done":true,"done_reason":"length","prompt_eval_count":3,"eval_count":2}"#;
        let r = parse(reply).unwrap();
        assert_eq!(r.content, vec![text("Hi there")]);
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(r.refusal, None);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use lanes_guest::stream::{decode_in_chunks, join_deltas};

    const STREAM: &str = concat!(
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"Need \"},\"done\":false}\n",
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"weather.\"},\"done\":false}\n",
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"The \"},\"done\":false}\n",
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"sky \u{e9}\"},\"done\":false}\n",
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call_k3j9x0aa\",\"function\":{\"index\":0,\"name\":\"get_weather\",\"arguments\":{\"city\":\"Tokyo\"}}},{\"function\":{\"index\":1,\"name\":\"get_time\",\"arguments\":{}}}]},\"done\":false}\n",
        "{\"model\":\"qwen3\",\"created_at\":\"2026-08-21T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1,\"load_duration\":1,\"prompt_eval_count\":26,\"prompt_eval_duration\":1,\"eval_count\":282,\"eval_duration\":1}\n",
    );

    fn decoder() -> Box<dyn StreamDecoder> {
        Box::new(OllamaStream::default())
    }

    #[test]
    fn a_stream_assembles_however_it_is_cut() {
        for size in [1, 2, 3, 10, 100, 100_000] {
            let (deltas, result) = decode_in_chunks(decoder(), STREAM.as_bytes(), size);
            let response = result.unwrap();
            assert_eq!(response.model, "qwen3");
            assert_eq!(response.finish_reason, FinishReason::ToolCalls);
            assert_eq!(
                response.content,
                vec![
                    ContentPart::Reasoning(Reasoning {
                        text: "Need weather.".into(),
                        signature: None,
                        redacted: None,
                    }),
                    ContentPart::Text("The sky é".into()),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_k3j9x0aa".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Tokyo"}"#.into(),
                    }),
                    ContentPart::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "get_time".into(),
                        arguments: "{}".into(),
                    }),
                ]
            );
            assert_eq!(response.usage.input_tokens, 26);
            assert_eq!(response.usage.output_tokens, 282);
            let (text, reasoning, calls) = join_deltas(&deltas);
            assert_eq!(text, "The sky é");
            assert_eq!(reasoning, "Need weather.");
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0].2, r#"{"city":"Tokyo"}"#);
        }
    }

    #[test]
    fn errors_and_cut_streams() {
        let cut = &STREAM[..STREAM.rfind("{\"model\"").unwrap()];
        let (_, result) = decode_in_chunks(decoder(), cut.as_bytes(), 20);
        assert!(matches!(result, Err(ProviderError::Unavailable(m)) if m == "stream ended early"));
        let failed = "{\"model\":\"m\",\"message\":{\"content\":\"Hi\"},\"done\":false}\n{\"error\":\"an error was encountered while running the model\"}\n";
        let (deltas, result) = decode_in_chunks(decoder(), failed.as_bytes(), 8);
        assert!(
            matches!(result, Err(ProviderError::Unavailable(m)) if m.contains("an error was encountered"))
        );
        assert_eq!(join_deltas(&deltas).0, "Hi");
        // The last line may lack its line end.
        let unended = "{\"model\":\"m\",\"message\":{\"content\":\"Hi\"},\"done\":true,\"done_reason\":\"length\"}";
        let (_, result) = decode_in_chunks(decoder(), unended.as_bytes(), 8);
        assert_eq!(result.unwrap().finish_reason, FinishReason::Length);
    }
}
