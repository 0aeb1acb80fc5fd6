//! The checks of what a lanes:provider 0.2 component takes beyond text, in `lanes plugins
//! test`: a tool call and the answer to its result, an answer held to a JSON Schema, an
//! image (base64, and by URL) that reaches the request, and a streamed answer. Each runs
//! only when the component declares its capability, and the scripted server answers in
//! the wire format of the API the component spoke in the success check: OpenAI's Chat
//! Completions, Anthropic's Messages or Ollama's chat, as each provider's documentation and
//! SDKs give it.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::conformance::{Call, SUCCESS_TEXT, Verdict, call_with, said};
use super::server::{Reply, Scripted, Seen};
use crate::model::{Capability, ChatInput, ChatOutput, Delta, Part};
use crate::plugin::{ComponentInfo, Provider};

/// An API whose wire format the suite speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST …/chat/completions`: OpenAI and the servers that speak its API.
    OpenAi,
    /// `POST …/v1/messages`: Anthropic.
    Anthropic,
    /// `POST …/api/chat`: Ollama.
    Ollama,
}

impl Api {
    /// The API a request path names.
    pub fn of(path: &str) -> Option<Api> {
        if path.ends_with("/chat/completions") {
            Some(Api::OpenAi)
        } else if path.ends_with("/v1/messages") {
            Some(Api::Anthropic)
        } else if path.ends_with("/api/chat") {
            Some(Api::Ollama)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "OpenAI",
            Api::Anthropic => "Anthropic",
            Api::Ollama => "Ollama",
        }
    }

    /// A whole answer of `text`, 11 input and 7 output tokens, ended by the token limit
    /// (`length`) or naturally.
    pub fn text_reply(self, text: &str, length: bool) -> Value {
        match self {
            Api::OpenAi => json!({
                "id": "chatcmpl-conformance", "object": "chat.completion",
                "model": "conformance-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": if length { "length" } else { "stop" }}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            }),
            Api::Anthropic => json!({
                "id": "msg_conformance", "type": "message", "role": "assistant",
                "model": "conformance-model",
                "content": [{"type": "text", "text": text}],
                "stop_reason": if length { "max_tokens" } else { "end_turn" },
                "usage": {"input_tokens": 11, "output_tokens": 7}
            }),
            Api::Ollama => json!({
                "model": "conformance-model", "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": text},
                "done": true, "done_reason": if length { "length" } else { "stop" },
                "prompt_eval_count": 11, "eval_count": 7
            }),
        }
    }

    /// The id the API gives the tool call of [`Api::tool_call_reply`].
    fn call_id(self) -> &'static str {
        match self {
            Api::Anthropic => "toolu_conformance_1",
            Api::OpenAi | Api::Ollama => "call_conformance_1",
        }
    }

    /// An answer that calls `get_weather` with `{"city": "Paris"}`: arguments as JSON text
    /// (OpenAI) or an object (Anthropic, Ollama), and Ollama's `done_reason` still `stop`.
    fn tool_call_reply(self) -> Value {
        let id = self.call_id();
        match self {
            Api::OpenAi => json!({
                "id": "chatcmpl-conformance-tool", "object": "chat.completion",
                "model": "conformance-model",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": id, "type": "function",
                                    "function": {"name": TOOL, "arguments": tool_args().to_string()}}]}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
            }),
            Api::Anthropic => json!({
                "id": "msg_conformance_tool", "type": "message", "role": "assistant",
                "model": "conformance-model",
                "content": [{"type": "text", "text": "Let me look that up."},
                            {"type": "tool_use", "id": id, "name": TOOL, "input": tool_args()}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 20, "output_tokens": 9}
            }),
            Api::Ollama => json!({
                "model": "conformance-model", "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "",
                            "tool_calls": [{"id": id, "function": {
                                "index": 0, "name": TOOL, "arguments": tool_args()}}]},
                "done": true, "done_reason": "stop", "prompt_eval_count": 20, "eval_count": 9
            }),
        }
    }

    /// The streamed answer to the request `body`, as the content type and the pieces sent:
    /// server-sent events (OpenAI's `data:` lines ending in `[DONE]`, with the usage chunk
    /// only when the request asked for it in `stream_options`; Anthropic's named events) or
    /// NDJSON (Ollama). The text is [`STREAM_PIECES`], 11 and 7 tokens, ended naturally.
    pub fn stream_reply(self, body: &Value) -> (&'static str, Vec<String>) {
        let sse = |event: Option<&str>, data: Value| match event {
            Some(event) => format!("event: {event}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        };
        match self {
            Api::OpenAi => {
                let chunk = |delta: Value, finish: Value| {
                    json!({"id": "chatcmpl-conformance", "object": "chat.completion.chunk",
                           "created": 1_767_225_600, "model": "conformance-model",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                };
                let mut out = vec![sse(
                    None,
                    chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                )];
                for piece in STREAM_PIECES {
                    out.push(sse(None, chunk(json!({"content": piece}), Value::Null)));
                }
                out.push(sse(None, chunk(json!({}), json!("stop"))));
                if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
                    out.push(sse(
                        None,
                        json!({"id": "chatcmpl-conformance", "object": "chat.completion.chunk",
                               "created": 1_767_225_600, "model": "conformance-model", "choices": [],
                               "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
                    ));
                }
                out.push("data: [DONE]\n\n".to_string());
                ("text/event-stream", out)
            }
            Api::Anthropic => {
                let mut out = vec![
                    sse(
                        Some("message_start"),
                        json!({"type": "message_start", "message": {
                            "id": "msg_conformance", "type": "message", "role": "assistant",
                            "model": "conformance-model", "content": [],
                            "stop_reason": null, "stop_sequence": null,
                            "usage": {"input_tokens": 11, "output_tokens": 1}}}),
                    ),
                    sse(
                        Some("content_block_start"),
                        json!({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}}),
                    ),
                    sse(Some("ping"), json!({"type": "ping"})),
                ];
                for piece in STREAM_PIECES {
                    out.push(sse(
                        Some("content_block_delta"),
                        json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": piece}}),
                    ));
                }
                out.push(sse(
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                out.push(sse(
                    Some("message_delta"),
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                           "usage": {"output_tokens": 7}}),
                ));
                out.push(sse(Some("message_stop"), json!({"type": "message_stop"})));
                ("text/event-stream", out)
            }
            Api::Ollama => {
                let mut out: Vec<String> = STREAM_PIECES
                    .iter()
                    .map(|piece| {
                        json!({"model": "conformance-model", "created_at": "2026-01-01T00:00:00Z",
                               "message": {"role": "assistant", "content": piece}, "done": false})
                        .to_string()
                            + "\n"
                    })
                    .collect();
                out.push(
                    json!({"model": "conformance-model", "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": ""},
                           "done": true, "done_reason": "stop",
                           "prompt_eval_count": 11, "eval_count": 7})
                    .to_string()
                        + "\n",
                );
                ("application/x-ndjson", out)
            }
        }
    }

    /// Whether `body` offers `get_weather` with its parameters, where the API takes tools.
    fn offers_tool(self, body: &Value) -> Result<(), String> {
        let found = tools(body).iter().any(|t| match self {
            Api::OpenAi | Api::Ollama => {
                t["function"]["name"] == TOOL && t["function"]["parameters"] == tool_parameters()
            }
            Api::Anthropic => t["name"] == TOOL && t["input_schema"] == tool_parameters(),
        });
        found.then_some(()).ok_or_else(|| {
            let shape = match self {
                Api::OpenAi | Api::Ollama => {
                    "`tools: [{\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}]`"
                }
                Api::Anthropic => "`tools: [{\"name\", \"input_schema\"}]`",
            };
            format!("the body does not offer `{TOOL}` with its parameters as {shape}")
        })
    }

    /// Whether `body` passes back the call `id` (an assistant turn) and its result.
    fn passes_back(self, body: &Value, id: &str) -> Result<(), String> {
        let messages = messages(body);
        let (call, result) = match self {
            Api::OpenAi => (
                messages.iter().any(|m| {
                    m["role"] == "assistant"
                        && list(&m["tool_calls"]).iter().any(|c| {
                            c["id"] == id
                                && c["function"]["name"] == TOOL
                                && c["function"]["arguments"]
                                    .as_str()
                                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
                                    == Some(tool_args())
                        })
                }),
                messages.iter().any(|m| {
                    m["role"] == "tool"
                        && m["tool_call_id"] == id
                        && text_of(&m["content"]).contains(TOOL_RESULT)
                }),
            ),
            Api::Anthropic => (
                messages.iter().any(|m| {
                    m["role"] == "assistant"
                        && list(&m["content"]).iter().any(|b| {
                            b["type"] == "tool_use"
                                && b["id"] == id
                                && b["name"] == TOOL
                                && b["input"] == tool_args()
                        })
                }),
                messages.iter().any(|m| {
                    m["role"] == "user"
                        && list(&m["content"]).iter().any(|b| {
                            b["type"] == "tool_result"
                                && b["tool_use_id"] == id
                                && text_of(&b["content"]).contains(TOOL_RESULT)
                        })
                }),
            ),
            Api::Ollama => (
                messages.iter().any(|m| {
                    m["role"] == "assistant"
                        && list(&m["tool_calls"]).iter().any(|c| {
                            c["function"]["name"] == TOOL
                                && c["function"]["arguments"] == tool_args()
                        })
                }),
                messages
                    .iter()
                    .any(|m| m["role"] == "tool" && text_of(&m["content"]).contains(TOOL_RESULT)),
            ),
        };
        let shapes = match self {
            Api::OpenAi => (
                "an assistant message with `tool_calls: [{\"id\", \"function\": {\"name\", \"arguments\": JSON text}}]`",
                "a `tool` message with `tool_call_id` and the result as its `content`",
            ),
            Api::Anthropic => (
                "an assistant message with a `tool_use` block (`id`, `name`, `input`)",
                "a user message with a `tool_result` block (`tool_use_id`, `content`)",
            ),
            Api::Ollama => (
                "an assistant message with `tool_calls: [{\"function\": {\"name\", \"arguments\": an object}}]`",
                "a `tool` message with the result as its `content`",
            ),
        };
        match (call, result) {
            (true, true) => Ok(()),
            (false, _) => Err(format!(
                "the body does not pass back the call `{id}`: {} expected",
                shapes.0
            )),
            (true, false) => Err(format!(
                "the body does not pass back the result of `{id}` ({TOOL_RESULT:?}): {} \
                 expected",
                shapes.1
            )),
        }
    }

    /// Whether `body` holds the schema where the API takes one.
    fn asks_for_schema(self, body: &Value) -> Result<(), String> {
        let schema = answer_schema();
        let (found, shape) = match self {
            Api::OpenAi => (
                body["response_format"]["type"] == "json_schema"
                    && body["response_format"]["json_schema"]["name"] == SCHEMA_NAME
                    && body["response_format"]["json_schema"]["schema"] == schema,
                "`response_format: {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}`",
            ),
            // `output_config.format`, or the `output_format` of the structured-outputs beta.
            Api::Anthropic => (
                ["/output_config/format", "/output_format"].iter().any(|p| {
                    body.pointer(p)
                        .is_some_and(|f| f["type"] == "json_schema" && f["schema"] == schema)
                }),
                "`output_config: {\"format\": {\"type\": \"json_schema\", \"schema\"}}`",
            ),
            Api::Ollama => (body["format"] == schema, "the schema as `format`"),
        };
        found
            .then_some(())
            .ok_or_else(|| format!("the body does not ask for the schema: {shape} expected"))
    }

    /// Whether `body` carries the base64 image `data` of `media_type` where the API takes it.
    fn carries_image(self, body: &Value, media_type: &str, data: &str) -> Result<(), String> {
        let messages = messages(body);
        let (found, shape) = match self {
            Api::OpenAi => (
                messages.iter().any(|m| {
                    list(&m["content"]).iter().any(|p| {
                        p["type"] == "image_url"
                            && p["image_url"]["url"] == format!("data:{media_type};base64,{data}")
                    })
                }),
                "an `image_url` part with a `data:` URL",
            ),
            Api::Anthropic => (
                messages.iter().any(|m| {
                    list(&m["content"]).iter().any(|b| {
                        b["type"] == "image"
                            && b["source"]
                                == json!({"type": "base64", "media_type": media_type, "data": data})
                    })
                }),
                "an `image` block with a `base64` source and its `media_type`",
            ),
            Api::Ollama => (
                messages
                    .iter()
                    .any(|m| list(&m["images"]).iter().any(|i| i == data)),
                "the base64 data in the message's `images`",
            ),
        };
        found
            .then_some(())
            .ok_or_else(|| format!("the body does not carry the image: {shape} expected"))
    }

    /// Whether `body` carries the image URL where the API takes one.
    fn carries_image_url(self, body: &Value) -> Result<(), String> {
        let messages = messages(body);
        let (found, shape) = match self {
            Api::OpenAi => (
                messages.iter().any(|m| {
                    list(&m["content"])
                        .iter()
                        .any(|p| p["type"] == "image_url" && p["image_url"]["url"] == IMAGE_URL)
                }),
                "an `image_url` part with the URL",
            ),
            Api::Anthropic => (
                messages.iter().any(|m| {
                    list(&m["content"]).iter().any(|b| {
                        b["type"] == "image"
                            && b["source"] == json!({"type": "url", "url": IMAGE_URL})
                    })
                }),
                "an `image` block with a `url` source",
            ),
            // Ollama's API takes no URL: the URL anywhere will do.
            Api::Ollama => (
                body.to_string().contains(IMAGE_URL),
                "the URL (Ollama's API takes base64 images only)",
            ),
        };
        found
            .then_some(())
            .ok_or_else(|| format!("the body does not carry the image URL: {shape} expected"))
    }
}

/// The tool the tool checks offer.
const TOOL: &str = "get_weather";
/// What the tool answers.
const TOOL_RESULT: &str = "Sunny, 18 degrees.";
/// The model's answer once it has the result.
const AFTER_TOOL: &str = "It is sunny and 18 degrees in Paris.";
/// The name of the answer's schema.
const SCHEMA_NAME: &str = "weather";
/// A 1×1 PNG.
const IMAGE_DATA: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
const IMAGE_URL: &str = "https://images.example.com/conformance.png";
/// The pieces of the streamed answer: [`SUCCESS_TEXT`] joined.
pub const STREAM_PIECES: [&str; 4] = ["Hello", " from the", " conformance", " server."];

fn tool_parameters() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"], "additionalProperties": false})
}

fn tool_args() -> Value {
    json!({"city": "Paris"})
}

fn answer_schema() -> Value {
    json!({"type": "object",
           "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}},
           "required": ["city", "temperature_c"], "additionalProperties": false})
}

fn answer() -> Value {
    json!({"city": "Paris", "temperature_c": 18})
}

fn messages(body: &Value) -> &[Value] {
    list(&body["messages"])
}

fn tools(body: &Value) -> &[Value] {
    list(&body["tools"])
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// The text of a message's or result's content: a string, or the `text` of its parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn input(value: Value) -> ChatInput {
    let mut value = value;
    value["model"] = json!("conformance-model");
    value["max_tokens"] = json!(64);
    ChatInput::from_value(value).expect("the suite's inputs are valid")
}

fn ask(question: &str) -> Value {
    json!([{"role": "user", "content": question}])
}

/// The capabilities the suite checks, with the rows each reports.
const CHECKED: [(Capability, &[&str]); 5] = [
    (Capability::Tools, &["tool call", "tool result"]),
    (Capability::JsonSchema, &["JSON schema"]),
    (Capability::Images, &["image"]),
    (Capability::ImageUrls, &["image URL"]),
    (Capability::Streaming, &["stream"]),
];

/// The feature checks of a component whose success check spoke `api` (or why the suite
/// cannot speak its API). `record` takes each row; `note` each call, for the hosts and
/// secrets checks.
pub(super) async fn run(
    provider: &Provider,
    server: &Scripted,
    api: Result<Api, String>,
    info: &ComponentInfo,
    record: &mut dyn FnMut(&str, Verdict, String),
    note: &mut dyn FnMut(&str, &Call, &[Seen]),
) {
    let mut check = Check {
        provider,
        server,
        api: *api.as_ref().unwrap_or(&Api::OpenAi),
        record,
        note,
    };
    for (capability, rows) in CHECKED {
        let why_not = if info.wit == "0.1" {
            Some("not declared: a lanes:provider 0.1 component takes text only".to_string())
        } else if !info.capabilities.has(capability) {
            Some(format!(
                "not declared: info() does not declare `{}`",
                capability.as_str()
            ))
        } else if let Err(why) = &api {
            Some(format!(
                "`{}` declared but not checked: {why}",
                capability.as_str()
            ))
        } else {
            None
        };
        if let Some(why) = why_not {
            for row in rows {
                (check.record)(row, Verdict::Skip, why.clone());
            }
            continue;
        }
        match capability {
            Capability::Tools => check.tools().await,
            Capability::JsonSchema => check.json_schema().await,
            Capability::Images => check.image(&info.image_media_types).await,
            Capability::ImageUrls => check.image_url().await,
            Capability::Streaming => check.stream().await,
            Capability::Reasoning | Capability::Sampling => {}
        }
    }
}

struct Check<'a, 'b> {
    provider: &'a Provider,
    server: &'a Scripted,
    api: Api,
    record: &'b mut dyn FnMut(&str, Verdict, String),
    note: &'b mut dyn FnMut(&str, &Call, &[Seen]),
}

/// One feature call: what the component returned and the one request it sent.
struct Outcome {
    output: Result<ChatOutput, String>,
    body: Result<(Seen, Value), String>,
    deltas: Vec<Delta>,
}

/// That the call answered with the scripted success text.
fn success_text(outcome: &Outcome) -> Result<(), String> {
    let output = outcome.output.as_ref().map_err(String::clone)?;
    if output.text != SUCCESS_TEXT {
        return Err(format!(
            "expected the answer {SUCCESS_TEXT:?}, got {:?}",
            output.text
        ));
    }
    Ok(())
}

impl Check<'_, '_> {
    fn pass(&mut self, name: &str, detail: String) {
        (self.record)(name, Verdict::Pass, detail);
    }

    fn fail(&mut self, name: &str, detail: String) {
        (self.record)(name, Verdict::Fail, detail);
    }

    /// Records check `name` as its verdict says: passed with what it saw, or failed why.
    fn settle(&mut self, name: &str, verdict: Result<String, String>) {
        match verdict {
            Ok(detail) => self.pass(name, detail),
            Err(detail) => self.fail(name, detail),
        }
    }

    /// Runs `input` against `reply`, with a sink for the deltas when `stream`.
    async fn call(&mut self, name: &str, input: &ChatInput, reply: Reply, stream: bool) -> Outcome {
        self.server.set(reply);
        let deltas = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let deltas = deltas.clone();
            stream.then(|| {
                Arc::new(move |d: Delta| deltas.lock().unwrap_or_else(|p| p.into_inner()).push(d))
                    as crate::plugin::DeltaSink
            })
        };
        let call = match call_with(self.provider, input, stream, sink).await {
            Ok(call) => call,
            Err(refused) => {
                return Outcome {
                    output: Err(format!("the host refused the input: {refused}")),
                    body: Err("no request".into()),
                    deltas: Vec::new(),
                };
            }
        };
        let seen = self.server.seen();
        (self.note)(name, &call, &seen);
        let body = match seen.as_slice() {
            [] => Err(format!(
                "no request reached the server ({})",
                said(&call.result)
            )),
            [one] => serde_json::from_slice::<Value>(&one.body)
                .map(|v| (one.clone(), v))
                .map_err(|e| format!("{} {}: the body is not JSON: {e}", one.method, one.path)),
            more => Err(format!(
                "{} requests reached the server; one call must send one",
                more.len()
            )),
        };
        let output = call
            .result
            .as_ref()
            .map_err(|_| said(&call.result))
            .cloned();
        let deltas = std::mem::take(&mut *deltas.lock().unwrap_or_else(|p| p.into_inner()));
        Outcome {
            output,
            body,
            deltas,
        }
    }

    /// Sends a question with `get_weather` offered, checks the call the component makes of
    /// the API's tool-call answer, then sends the call back with its result and checks the
    /// text of the API's answer.
    async fn tools(&mut self) {
        let api = self.api;
        let offer = json!([{"name": TOOL, "description": "The current weather in a city.",
                            "parameters": tool_parameters()}]);
        let question = "What is the weather in Paris?";
        let first = self
            .call(
                "tool call",
                &input(json!({"messages": ask(question), "tools": offer})),
                Reply::Json(api.tool_call_reply()),
                false,
            )
            .await;
        let call = first.output.as_ref().ok().and_then(|o| {
            o.content.iter().flatten().find_map(|p| match p {
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => Some((id.clone(), name.clone(), arguments.clone())),
                _ => None,
            })
        });
        let verdict = (|| {
            let (seen, body) = first.body.as_ref().map_err(String::clone)?;
            api.offers_tool(body)?;
            let output = first.output.as_ref().map_err(String::clone)?;
            let (id, name, arguments) = call.clone().ok_or_else(|| {
                format!(
                    "{}'s tool-call answer became no `tool_call` part: got {:?}",
                    api.name(),
                    output.content
                )
            })?;
            let parsed: Option<Value> = serde_json::from_str(&arguments).ok();
            if id != api.call_id() || name != TOOL || parsed != Some(tool_args()) {
                return Err(format!(
                    "expected the call `{}` of `{TOOL}` with {}, got `{id}` of `{name}` with \
                     {arguments:?}",
                    api.call_id(),
                    tool_args()
                ));
            }
            if output.finish_reason != "tool_calls" {
                return Err(format!(
                    "the finish reason is `{}`, not `tool_calls`",
                    output.finish_reason
                ));
            }
            Ok(format!(
                "{} {}: `{TOOL}` offered; the answer became a `tool_call` part (`{id}`, \
                 {arguments}), finish `tool_calls`",
                seen.method, seen.path
            ))
        })();
        self.settle("tool call", verdict);

        let Some((id, name, arguments)) = call else {
            self.fail(
                "tool result",
                "no tool call to answer (see `tool call`)".into(),
            );
            return;
        };
        let messages = json!([
            {"role": "user", "content": question},
            {"role": "assistant", "content": [
                {"type": "tool_call", "id": id, "name": name, "arguments": arguments}]},
            {"role": "tool", "content": [
                {"type": "tool_result", "call_id": id, "content": TOOL_RESULT}]},
        ]);
        let second = self
            .call(
                "tool result",
                &input(json!({"messages": messages, "tools": offer})),
                Reply::Json(api.text_reply(AFTER_TOOL, false)),
                false,
            )
            .await;
        let verdict = (|| {
            let (seen, body) = second.body.as_ref().map_err(String::clone)?;
            api.passes_back(body, &id)?;
            let output = second.output.as_ref().map_err(String::clone)?;
            if output.text != AFTER_TOOL || output.finish_reason != "stop" {
                return Err(format!(
                    "expected the answer {AFTER_TOOL:?} (finish `stop`), got {:?} (finish `{}`)",
                    output.text, output.finish_reason
                ));
            }
            Ok(format!(
                "{} {}: the call and its result passed back; the answer's text mapped",
                seen.method, seen.path
            ))
        })();
        self.settle("tool result", verdict);
    }

    /// Asks for an answer held to a schema, and checks the JSON text that comes back.
    async fn json_schema(&mut self) {
        let api = self.api;
        let format = json!({"type": "json_schema", "name": SCHEMA_NAME,
                            "schema": answer_schema(), "strict": true});
        let outcome = self
            .call(
                "JSON schema",
                &input(json!({"messages": ask("The weather in Paris, as JSON."),
                              "response_format": format})),
                Reply::Json(api.text_reply(&answer().to_string(), false)),
                false,
            )
            .await;
        let verdict = (|| {
            let (seen, body) = outcome.body.as_ref().map_err(String::clone)?;
            api.asks_for_schema(body)?;
            let output = outcome.output.as_ref().map_err(String::clone)?;
            if serde_json::from_str::<Value>(&output.text).ok() != Some(answer()) {
                return Err(format!(
                    "expected the answer's JSON {}, got the text {:?}",
                    answer(),
                    output.text
                ));
            }
            Ok(format!(
                "{} {}: the schema sent; the JSON answer mapped",
                seen.method, seen.path
            ))
        })();
        self.settle("JSON schema", verdict);
    }

    /// Sends a base64 image (PNG, or the first type the component declares) and checks
    /// that it reaches the request.
    async fn image(&mut self, declared: &[String]) {
        let api = self.api;
        let media_type = if declared.is_empty() || declared.iter().any(|t| t == "image/png") {
            "image/png".to_string()
        } else {
            declared[0].clone()
        };
        let content = json!([{"type": "text", "text": "What is in this image?"},
                             {"type": "image", "data": IMAGE_DATA, "media_type": media_type}]);
        let outcome = self
            .call(
                "image",
                &input(json!({"messages": [{"role": "user", "content": content}]})),
                Reply::Json(api.text_reply(SUCCESS_TEXT, false)),
                false,
            )
            .await;
        let verdict = (|| {
            let (seen, body) = outcome.body.as_ref().map_err(String::clone)?;
            api.carries_image(body, &media_type, IMAGE_DATA)?;
            success_text(&outcome)?;
            Ok(format!(
                "{} {}: a base64 {media_type} image reached the body",
                seen.method, seen.path
            ))
        })();
        self.settle("image", verdict);
    }

    /// Sends an image by URL and checks that the URL reaches the request.
    async fn image_url(&mut self) {
        let api = self.api;
        let content = json!([{"type": "text", "text": "What is in this image?"},
                             {"type": "image", "url": IMAGE_URL}]);
        let outcome = self
            .call(
                "image URL",
                &input(json!({"messages": [{"role": "user", "content": content}]})),
                Reply::Json(api.text_reply(SUCCESS_TEXT, false)),
                false,
            )
            .await;
        let verdict = (|| {
            let (seen, body) = outcome.body.as_ref().map_err(String::clone)?;
            api.carries_image_url(body)?;
            success_text(&outcome)?;
            Ok(format!(
                "{} {}: the image URL reached the body",
                seen.method, seen.path
            ))
        })();
        self.settle("image URL", verdict);
    }

    /// Asks to stream, answers with the API's stream, and checks that text deltas were
    /// emitted and that they join into the response's text.
    async fn stream(&mut self) {
        let api = self.api;
        let outcome = self
            .call(
                "stream",
                &input(json!({"messages": ask("Say hello to the conformance suite.")})),
                Reply::Stream(api),
                true,
            )
            .await;
        let verdict = (|| {
            let (seen, body) = outcome.body.as_ref().map_err(String::clone)?;
            if body["stream"] != json!(true) {
                return Err(format!(
                    "{} {}: the request did not ask to stream (`\"stream\": true`)",
                    seen.method, seen.path
                ));
            }
            let output = outcome.output.as_ref().map_err(String::clone)?;
            let texts: Vec<&str> = outcome
                .deltas
                .iter()
                .filter_map(|d| match d {
                    Delta::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let joined = texts.concat();
            if texts.is_empty() {
                return Err(format!(
                    "no text delta was emitted (stream.emit); the response's text was {:?}",
                    output.text
                ));
            }
            if joined != output.text || output.text != SUCCESS_TEXT {
                return Err(format!(
                    "expected the text {SUCCESS_TEXT:?} in the deltas and the response; the \
                     {} deltas join to {joined:?}, the response has {:?}",
                    texts.len(),
                    output.text
                ));
            }
            if output.finish_reason != "stop" {
                return Err(format!(
                    "the finish reason is `{}`, not `stop`",
                    output.finish_reason
                ));
            }
            // OpenAI sends the usage only when asked (`stream_options.include_usage`).
            let usage_sent = api != Api::OpenAi
                || body.pointer("/stream_options/include_usage") == Some(&json!(true));
            let usage = (output.usage.input_tokens, output.usage.output_tokens);
            let usage_note = match (usage_sent, usage) {
                (true, (11, 7)) => "usage 11/7 mapped".to_string(),
                (true, (i, o)) => {
                    return Err(format!("the stream's usage 11/7 became {i}/{o}"));
                }
                (false, _) => "no usage: the request did not ask for `stream_options: \
                               {\"include_usage\": true}`"
                    .to_string(),
            };
            Ok(format!(
                "{} {}: {} text deltas join into the response's text; {usage_note}",
                seen.method,
                seen.path,
                texts.len()
            ))
        })();
        self.settle("stream", verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_is_known_by_its_path() {
        assert_eq!(Api::of("/v1/chat/completions"), Some(Api::OpenAi));
        assert_eq!(Api::of("/openai/v1/chat/completions"), Some(Api::OpenAi));
        assert_eq!(Api::of("/v1/messages"), Some(Api::Anthropic));
        assert_eq!(Api::of("/api/chat"), Some(Api::Ollama));
        assert_eq!(Api::of("/v2/generate"), None);
    }

    #[test]
    fn the_streams_hold_the_success_text() {
        assert_eq!(STREAM_PIECES.concat(), SUCCESS_TEXT);
        let asked = json!({"stream": true, "stream_options": {"include_usage": true}});
        let (kind, chunks) = Api::OpenAi.stream_reply(&asked);
        assert_eq!(kind, "text/event-stream");
        assert!(chunks.last().unwrap().contains("[DONE]"));
        assert!(chunks.iter().any(|c| c.contains("\"usage\"")));
        let (_, chunks) = Api::OpenAi.stream_reply(&json!({"stream": true}));
        assert!(!chunks.iter().any(|c| c.contains("\"usage\"")));
        let (_, chunks) = Api::Anthropic.stream_reply(&asked);
        assert!(chunks[0].starts_with("event: message_start\ndata: {"));
        let (kind, chunks) = Api::Ollama.stream_reply(&asked);
        assert_eq!(kind, "application/x-ndjson");
        let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
        assert_eq!(last["done"], true);
    }

    /// The body checks take what each API documents, and say what they expected.
    #[test]
    fn the_body_checks_read_each_wire_format() {
        let id = "call_1";
        let openai = json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{IMAGE_DATA}")}},
                {"type": "image_url", "image_url": {"url": IMAGE_URL}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": TOOL, "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": id, "content": TOOL_RESULT}],
            "tools": [{"type": "function", "function": {"name": TOOL, "parameters": tool_parameters()}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": answer_schema(), "strict": true}}});
        assert_eq!(Api::OpenAi.offers_tool(&openai), Ok(()));
        assert_eq!(Api::OpenAi.passes_back(&openai, id), Ok(()));
        assert_eq!(Api::OpenAi.asks_for_schema(&openai), Ok(()));
        assert_eq!(
            Api::OpenAi.carries_image(&openai, "image/png", IMAGE_DATA),
            Ok(())
        );
        assert_eq!(Api::OpenAi.carries_image_url(&openai), Ok(()));
        assert!(
            Api::OpenAi
                .passes_back(&openai, "other")
                .unwrap_err()
                .contains("tool_calls")
        );
        assert!(
            Api::OpenAi
                .carries_image(&json!({}), "image/png", IMAGE_DATA)
                .is_err()
        );

        let anthropic = json!({"messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_DATA}},
                                         {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": TOOL, "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id,
                                          "content": [{"type": "text", "text": TOOL_RESULT}]}]}],
            "tools": [{"name": TOOL, "input_schema": tool_parameters()}],
            "output_config": {"format": {"type": "json_schema", "schema": answer_schema()}}});
        assert_eq!(Api::Anthropic.offers_tool(&anthropic), Ok(()));
        assert_eq!(Api::Anthropic.passes_back(&anthropic, id), Ok(()));
        assert_eq!(Api::Anthropic.asks_for_schema(&anthropic), Ok(()));
        assert_eq!(
            Api::Anthropic.carries_image(&anthropic, "image/png", IMAGE_DATA),
            Ok(())
        );
        assert_eq!(Api::Anthropic.carries_image_url(&anthropic), Ok(()));
        // A tool result in a `tool` role is not Anthropic's form.
        let mut wrong = anthropic.clone();
        wrong["messages"][2]["role"] = json!("tool");
        assert!(
            Api::Anthropic
                .passes_back(&wrong, id)
                .unwrap_err()
                .contains("tool_result")
        );

        let ollama = json!({"messages": [
            {"role": "user", "content": "hi", "images": [IMAGE_DATA]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": TOOL, "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_name": TOOL, "content": TOOL_RESULT}],
            "tools": [{"type": "function", "function": {"name": TOOL, "parameters": tool_parameters()}}],
            "format": answer_schema()});
        assert_eq!(Api::Ollama.offers_tool(&ollama), Ok(()));
        assert_eq!(Api::Ollama.passes_back(&ollama, id), Ok(()));
        assert_eq!(Api::Ollama.asks_for_schema(&ollama), Ok(()));
        assert_eq!(
            Api::Ollama.carries_image(&ollama, "image/png", IMAGE_DATA),
            Ok(())
        );
        assert!(
            Api::Ollama
                .asks_for_schema(&json!({"format": "json"}))
                .is_err()
        );
    }

    #[test]
    fn the_inputs_are_valid() {
        let _ = input(json!({"messages": ask("x"), "response_format":
            {"type": "json_schema", "name": SCHEMA_NAME, "schema": answer_schema(), "strict": true}}));
        let _ = input(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "data": IMAGE_DATA, "media_type": "image/png"},
            {"type": "image", "url": IMAGE_URL}]}]}));
    }
}
