//! Translation between the queue's JSON and a component's WIT types (0.1.x or 0.2.x), and
//! the class of an attempt's error.

use std::time::Duration;

use crate::model::{
    Capabilities, ChatInput, ChatOutput, Content, Effort, ErrorKind, Part, ResponseFormat, Role,
    ToolChoice, Usage,
};
use crate::plugin::bindings::{Generation, v01, v02};
use crate::plugin::{ExecError, ProviderError};

/// What a component of either generation is asked: the input in its WIT types.
#[derive(Debug, Clone)]
pub enum Request {
    V01(v01::ChatRequest),
    V02(v02::ChatRequest),
}

/// What a component of `generation` that declares `capabilities` (and takes images of
/// `media_types`; empty for the usual four) is asked for a validated input, or why it
/// cannot take it (see [`ChatInput::needs`]). `stream` asks a 0.2 component to stream.
pub fn to_request(
    input: &ChatInput,
    generation: Generation,
    capabilities: Capabilities,
    media_types: &[String],
    stream: bool,
) -> Result<Request, String> {
    let missing: Vec<String> = input
        .needs()
        .iter()
        .filter(|n| !capabilities.has(n.capability))
        .map(|n| format!("`{}` needs the `{}` capability", n.field, n.capability))
        .collect();
    if !missing.is_empty() {
        let why = match generation {
            Generation::V01 => "; components built against lanes:provider 0.1.x take text only",
            Generation::V02 => "",
        };
        return Err(format!(
            "the input needs what the component cannot take: {}{why}",
            missing.join(", ")
        ));
    }
    if let Some(refused) = input.media_type_refused(media_types) {
        return Err(refused);
    }
    match generation {
        Generation::V01 => Ok(Request::V01(request_v01(input)?)),
        Generation::V02 => Ok(Request::V02(request_v02(input, stream)?)),
    }
}

/// A 0.1 request: a message's text parts joined by newlines.
fn request_v01(input: &ChatInput) -> Result<v01::ChatRequest, String> {
    let mut messages = Vec::with_capacity(input.messages.len());
    for m in &input.messages {
        let role = match m.role {
            Role::System => v01::Role::System,
            Role::User => v01::Role::User,
            Role::Assistant => v01::Role::Assistant,
            // The capability check refuses the tool role before this.
            Role::Tool => return Err("a `tool` message needs the `tools` capability".into()),
        };
        let (content, _) = m.content.joined_text();
        messages.push(v01::Message { role, content });
    }
    Ok(v01::ChatRequest {
        model: input.model.clone(),
        system: input.system.clone(),
        messages,
        max_tokens: input.max_tokens,
        temperature: input.temperature,
        stop: input.stop.clone(),
        extra: extra_text(input),
    })
}

fn extra_text(input: &ChatInput) -> Option<String> {
    input
        .extra
        .as_ref()
        .map(|e| serde_json::Value::Object(e.clone()).to_string())
}

/// A 0.2 request. A tool result gets the name of the tool call it answers, from the
/// earlier assistant message that made it (Ollama's API wants it).
fn request_v02(input: &ChatInput, stream: bool) -> Result<v02::ChatRequest, String> {
    use v02::lanes::provider::types as t;
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut messages = Vec::with_capacity(input.messages.len());
    for (i, m) in input.messages.iter().enumerate() {
        let role = match m.role {
            Role::System => t::Role::System,
            Role::User => t::Role::User,
            Role::Assistant => t::Role::Assistant,
            Role::Tool => t::Role::Tool,
        };
        let content = match &m.content {
            Content::Text(text) => vec![t::ContentPart::Text(text.clone())],
            Content::Parts(parts) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, part) in parts.iter().enumerate() {
                    let field = || format!("messages[{i}].content[{j}]");
                    out.push(match part {
                        Part::Text { text } => t::ContentPart::Text(text.clone()),
                        Part::Image {
                            url,
                            data,
                            media_type,
                        } => t::ContentPart::Image(image_v02(url, data, media_type, &field())?),
                        Part::ToolCall {
                            id,
                            name,
                            arguments,
                        } => {
                            names.insert(id, name);
                            t::ContentPart::ToolCall(t::ToolCall {
                                id: id.clone(),
                                name: name.clone(),
                                arguments: arguments.clone(),
                            })
                        }
                        Part::ToolResult {
                            call_id,
                            content,
                            is_error,
                        } => {
                            let parts = match content {
                                Content::Text(text) => vec![t::ResultPart::Text(text.clone())],
                                Content::Parts(inner) => {
                                    let mut parts = Vec::with_capacity(inner.len());
                                    for (k, part) in inner.iter().enumerate() {
                                        match part {
                                            Part::Text { text } => {
                                                parts.push(t::ResultPart::Text(text.clone()))
                                            }
                                            Part::Image {
                                                url,
                                                data,
                                                media_type,
                                            } => parts.push(t::ResultPart::Image(image_v02(
                                                url,
                                                data,
                                                media_type,
                                                &format!("{}.content[{k}]", field()),
                                            )?)),
                                            // Validation allows only text and images here.
                                            other => {
                                                return Err(format!(
                                                    "`{}.content[{k}]`: a `{}` part cannot be \
                                                     in a tool result",
                                                    field(),
                                                    other.kind()
                                                ));
                                            }
                                        }
                                    }
                                    parts
                                }
                            };
                            t::ContentPart::ToolResult(t::ToolResult {
                                call_id: call_id.clone(),
                                name: names.get(call_id.as_str()).map(|n| n.to_string()),
                                parts,
                                is_error: is_error.unwrap_or(false),
                            })
                        }
                        Part::Reasoning {
                            text,
                            signature,
                            redacted,
                        } => t::ContentPart::Reasoning(t::Reasoning {
                            text: text.clone(),
                            signature: signature.clone(),
                            redacted: redacted.clone(),
                        }),
                    });
                }
                out
            }
        };
        messages.push(t::Message { role, content });
    }
    let tools = input
        .tools
        .iter()
        .map(|tool| t::Tool {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: tool.parameters.as_ref().map(|p| p.to_string()),
            strict: tool.strict,
        })
        .collect();
    let tool_choice = input.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => t::ToolChoice::Auto,
        ToolChoice::None => t::ToolChoice::None,
        ToolChoice::Required => t::ToolChoice::Required,
        ToolChoice::Named(name) => t::ToolChoice::Named(name.clone()),
    });
    let response_format = input.response_format.as_ref().map(|f| match f {
        ResponseFormat::Text {} => t::ResponseFormat::Text,
        ResponseFormat::JsonObject {} => t::ResponseFormat::JsonObject,
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => t::ResponseFormat::JsonSchema(t::JsonSchema {
            name: name.clone(),
            description: description.clone(),
            schema: schema.to_string(),
            strict: *strict,
        }),
    });
    let reasoning = input.reasoning.as_ref().map(|r| t::ReasoningConfig {
        effort: r.effort.map(|e| match e {
            Effort::Low => t::Effort::Low,
            Effort::Medium => t::Effort::Medium,
            Effort::High => t::Effort::High,
        }),
        budget_tokens: r.budget_tokens,
    });
    Ok(v02::ChatRequest {
        model: input.model.clone(),
        system: input.system.clone(),
        messages,
        max_tokens: input.max_tokens,
        temperature: input.temperature,
        top_p: input.top_p,
        seed: input.seed,
        stop: input.stop.clone(),
        tools,
        tool_choice,
        parallel_tool_calls: input.parallel_tool_calls,
        response_format,
        reasoning,
        stream,
        extra: extra_text(input),
    })
}

/// An image part (its media type was checked with the whole input).
fn image_v02(
    url: &Option<String>,
    data: &Option<String>,
    media_type: &Option<String>,
    field: &str,
) -> Result<v02::Image, String> {
    use v02::lanes::provider::types as t;
    let source = match (url, data) {
        (Some(url), _) => t::ImageSource::Url(url.clone()),
        (None, Some(data)) => t::ImageSource::Base64(data.clone()),
        // Validation requires one of the two.
        (None, None) => return Err(format!("`{field}`: an image needs `url` or `data`")),
    };
    Ok(t::Image {
        source,
        media_type: media_type.clone(),
    })
}

/// The stored output of a 0.1 response: its text, as one text part (none for an empty
/// text).
pub fn output_v01(response: v01::ChatResponse) -> ChatOutput {
    ChatOutput {
        cost: None,
        cached: false,
        content: Some(ChatOutput::text_parts(&response.text)),
        text: response.text,
        refusal: None,
        model: response.model,
        usage: Usage {
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            ..Usage::default()
        },
        finish_reason: match response.finish_reason {
            v01::FinishReason::Stop => "stop".to_string(),
            v01::FinishReason::Length => "length".to_string(),
            v01::FinishReason::ContentFilter => "content_filter".to_string(),
            v01::FinishReason::ToolCalls => "tool_calls".to_string(),
            v01::FinishReason::Other(other) => other,
        },
    }
}

/// The stored output of a 0.2 response: `text` is its text parts joined.
pub fn output_v02(response: v02::ChatResponse) -> ChatOutput {
    use v02::lanes::provider::types as t;
    let image = |image: t::Image| {
        let (url, data) = match image.source {
            t::ImageSource::Url(url) => (Some(url), None),
            t::ImageSource::Base64(data) => (None, Some(data)),
        };
        Part::Image {
            url,
            data,
            media_type: image.media_type,
        }
    };
    let mut text = String::new();
    let content: Vec<Part> = response
        .content
        .into_iter()
        .map(|part| match part {
            t::ContentPart::Text(t) => {
                text.push_str(&t);
                Part::Text { text: t }
            }
            t::ContentPart::Image(i) => image(i),
            t::ContentPart::ToolCall(c) => Part::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            },
            t::ContentPart::ToolResult(r) => Part::ToolResult {
                call_id: r.call_id,
                content: Content::Parts(
                    r.parts
                        .into_iter()
                        .map(|p| match p {
                            t::ResultPart::Text(text) => Part::Text { text },
                            t::ResultPart::Image(i) => image(i),
                        })
                        .collect(),
                ),
                is_error: r.is_error.then_some(true),
            },
            t::ContentPart::Reasoning(r) => Part::Reasoning {
                text: r.text,
                signature: r.signature,
                redacted: r.redacted,
            },
        })
        .collect();
    ChatOutput {
        cost: None,
        cached: false,
        text,
        content: Some(content),
        refusal: response.refusal,
        model: response.model,
        usage: response.usage.into(),
        finish_reason: match response.finish_reason {
            t::FinishReason::Stop => "stop".to_string(),
            t::FinishReason::Length => "length".to_string(),
            t::FinishReason::ContentFilter => "content_filter".to_string(),
            t::FinishReason::ToolCalls => "tool_calls".to_string(),
            t::FinishReason::Refusal => "refusal".to_string(),
            t::FinishReason::Pause => "pause".to_string(),
            t::FinishReason::ContextWindow => "context_window".to_string(),
            t::FinishReason::Other(other) => other,
        },
    }
}

impl From<v02::Usage> for Usage {
    fn from(u: v02::Usage) -> Self {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

/// The bytes of an output a component made, as the sandbox's `max_output_bytes` counts
/// them: its text, refusal, tool calls, reasoning and images.
pub fn output_bytes(output: &ChatOutput) -> usize {
    fn part(p: &Part) -> usize {
        match p {
            Part::Text { text } => text.len(),
            Part::Image {
                url,
                data,
                media_type,
            } => [url, data, media_type]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum(),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => id.len() + name.len() + arguments.len(),
            Part::ToolResult {
                call_id, content, ..
            } => {
                call_id.len()
                    + match content {
                        Content::Text(t) => t.len(),
                        Content::Parts(parts) => parts.iter().map(part).sum(),
                    }
            }
            Part::Reasoning {
                text,
                signature,
                redacted,
            } => {
                text.len()
                    + signature.as_ref().map_or(0, String::len)
                    + redacted.as_ref().map_or(0, String::len)
            }
        }
    }
    let content = output
        .content
        .as_ref()
        .map_or(output.text.len(), |c| c.iter().map(part).sum::<usize>());
    content + output.refusal.as_ref().map_or(0, String::len)
}

/// Whether a rate-limited answer says the provider's request or token window is spent
/// (`x-ratelimit-remaining-requests: 0` and the like): `rate-limit.window-spent` in 0.2; in
/// 0.1, which has no field for it, a message that carries `(window spent` (the Rust SDK's
/// `errors::mark_spent` writes it).
pub fn window_spent(error: &ExecError) -> bool {
    match error {
        ExecError::Provider(e) => match &e.0 {
            ProviderError::RateLimited { window_spent, .. } => *window_spent,
            _ => false,
        },
        _ => false,
    }
}

/// The class of an attempt's error, and the delay the provider asked for.
pub fn classify(error: &ExecError) -> (ErrorKind, Option<Duration>) {
    match error {
        ExecError::Provider(e) => match &e.0 {
            ProviderError::RateLimited { retry_after_ms, .. } => (
                ErrorKind::RateLimited,
                retry_after_ms.map(Duration::from_millis),
            ),
            ProviderError::Unavailable(_) => {
                (ErrorKind::Unavailable, e.1.map(Duration::from_millis))
            }
            ProviderError::InvalidRequest(_) => (ErrorKind::InvalidRequest, None),
            ProviderError::Unauthorized(_) => (ErrorKind::Unauthorized, None),
            ProviderError::Other(_) => (ErrorKind::Other, None),
        },
        ExecError::Instantiate(_) => (ErrorKind::Instantiate, None),
        // Every pool slot is busy: another attempt soon will find one.
        ExecError::PoolExhausted(_) => (ErrorKind::Unavailable, None),
        ExecError::Trap(_) => (ErrorKind::Trap, None),
        ExecError::Timeout(_) => (ErrorKind::Timeout, None),
        ExecError::OutputTooLarge { .. } => (ErrorKind::OutputTooLarge, None),
        ExecError::Denied { .. } => (ErrorKind::Denied, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v02::lanes::provider::types as t;

    fn rich() -> ChatInput {
        ChatInput::from_value(serde_json::json!({
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "data": "iVBORw0KGgo=", "media_type": "image/png"}]},
                {"role": "assistant", "content": [
                    {"type": "reasoning", "text": "", "redacted": "enc=="},
                    {"type": "tool_call", "id": "call_1", "name": "get_weather",
                     "arguments": "{\"city\":\"Paris\"}"}]},
                {"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "call_1", "content": "18C"}]}],
            "tools": [{"name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
            "reasoning": {"budget_tokens": 1024},
            "seed": 7
        }))
        .unwrap()
    }

    #[test]
    fn a_0_2_request_carries_every_part_and_names_tool_results() {
        let Request::V02(r) =
            to_request(&rich(), Generation::V02, Capabilities::ALL, &[], true).unwrap()
        else {
            panic!("a 0.2 request");
        };
        assert!(r.stream);
        assert_eq!(r.seed, Some(7));
        assert_eq!(
            r.tools[0].parameters.as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        assert!(matches!(r.tool_choice, Some(t::ToolChoice::Required)));
        assert!(matches!(
            r.response_format,
            Some(t::ResponseFormat::JsonObject)
        ));
        let t::ContentPart::Image(image) = &r.messages[0].content[1] else {
            panic!("an image");
        };
        assert!(matches!(&image.source, t::ImageSource::Base64(d) if d == "iVBORw0KGgo="));
        let t::ContentPart::Reasoning(reasoning) = &r.messages[1].content[0] else {
            panic!("reasoning");
        };
        assert_eq!(reasoning.redacted.as_deref(), Some("enc=="));
        let t::ContentPart::ToolResult(result) = &r.messages[2].content[0] else {
            panic!("a tool result");
        };
        assert_eq!(result.name.as_deref(), Some("get_weather"));
        assert!(matches!(&result.parts[..], [t::ResultPart::Text(s)] if s == "18C"));
    }

    #[test]
    fn what_a_component_lacks_is_named_and_media_types_are_its_own() {
        let lacks =
            Capabilities::ALL
                .list()
                .into_iter()
                .fold(Capabilities::NONE, |c, capability| match capability {
                    crate::model::Capability::Tools => c,
                    other => c.with(other),
                });
        let err = to_request(&rich(), Generation::V02, lacks, &[], false).unwrap_err();
        assert!(
            err.contains("`tools` needs the `tools` capability"),
            "{err}"
        );
        assert!(!err.contains("0.1.x"), "{err}");
        let err = to_request(&rich(), Generation::V01, Capabilities::NONE, &[], false).unwrap_err();
        assert!(err.contains("take text only"), "{err}");
        let err = to_request(
            &rich(),
            Generation::V02,
            Capabilities::ALL,
            &["image/jpeg".to_string()],
            false,
        )
        .unwrap_err();
        assert!(
            err.contains("`messages[0].content[1].media_type`") && err.contains("image/jpeg"),
            "{err}"
        );
    }

    #[test]
    fn a_0_2_answer_joins_its_text_and_keeps_its_parts() {
        let output = output_v02(v02::ChatResponse {
            content: vec![
                t::ContentPart::Reasoning(t::Reasoning {
                    text: "hm".into(),
                    signature: Some("sig".into()),
                    redacted: None,
                }),
                t::ContentPart::Text("It is ".into()),
                t::ContentPart::Text("18C.".into()),
                t::ContentPart::ToolCall(t::ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }),
            ],
            refusal: None,
            model: "m".into(),
            usage: t::Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_tokens: Some(4),
                cache_write_tokens: None,
                reasoning_tokens: Some(2),
            },
            finish_reason: t::FinishReason::ContextWindow,
        });
        assert_eq!(output.text, "It is 18C.");
        assert_eq!(output.finish_reason, "context_window");
        assert_eq!(output.usage.cache_read_tokens, Some(4));
        assert_eq!(output.content.as_ref().map(Vec::len), Some(4));
        assert_eq!(output_bytes(&output), 2 + 3 + 6 + 4 + 1 + 1 + 2);
    }
}
