//! Translation between the queue's JSON and the component's WIT types, and the class of an
//! attempt's error.

use std::time::Duration;

use crate::model::{ChatInput, ChatOutput, ErrorKind, Role, Usage};
use crate::plugin::ExecError;
use crate::plugin::bindings::{self, ChatRequest, ChatResponse, FinishReason, ProviderError};

/// The WIT request for a validated input, or, for an input that needs a capability
/// lanes:provider 0.1.x cannot carry, why not (see [`ChatInput::needs`]). A message's text
/// parts are joined by newlines.
pub fn to_request(input: &ChatInput) -> Result<ChatRequest, String> {
    let needs = input.needs();
    if !needs.is_empty() {
        let list = needs
            .iter()
            .map(|n| format!("`{}` needs the `{}` capability", n.field, n.capability))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "the input needs what the component cannot take: {list}; components built \
             against lanes:provider 0.1.x take text only"
        ));
    }
    let mut messages = Vec::with_capacity(input.messages.len());
    for m in &input.messages {
        let role = match m.role {
            Role::System => bindings::Role::System,
            Role::User => bindings::Role::User,
            Role::Assistant => bindings::Role::Assistant,
            // `needs` refuses the tool role above.
            Role::Tool => return Err("a `tool` message needs the `tools` capability".into()),
        };
        let (content, _) = m.content.joined_text();
        messages.push(bindings::Message { role, content });
    }
    Ok(ChatRequest {
        model: input.model.clone(),
        system: input.system.clone(),
        messages,
        max_tokens: input.max_tokens,
        temperature: input.temperature,
        stop: input.stop.clone(),
        extra: input
            .extra
            .as_ref()
            .map(|e| serde_json::Value::Object(e.clone()).to_string()),
    })
}

/// The stored output of a response. A 0.1.x component answers text only: `content` holds
/// it as one text part (none for an empty text).
pub fn to_output(response: ChatResponse) -> ChatOutput {
    ChatOutput {
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
            FinishReason::Stop => "stop".to_string(),
            FinishReason::Length => "length".to_string(),
            FinishReason::ContentFilter => "content_filter".to_string(),
            FinishReason::ToolCalls => "tool_calls".to_string(),
            FinishReason::Other(other) => other,
        },
    }
}

/// Whether a rate-limited answer says the provider's request or token window is spent: its
/// message carries `(window spent` (the Rust SDK's `errors::mark_spent` writes it, for
/// `x-ratelimit-remaining-requests: 0` and the like). WIT 0.1.x has no field for it, so the
/// message carries it; `docs/policies.md` and `docs/plugin-authors.md` say so.
pub fn window_spent(error: &ExecError) -> bool {
    match error {
        ExecError::Provider(e) => match &e.0 {
            ProviderError::RateLimited(r) => r.message.contains("(window spent"),
            _ => false,
        },
        _ => false,
    }
}

/// The class of an attempt's error, and the delay the provider asked for.
pub fn classify(error: &ExecError) -> (ErrorKind, Option<Duration>) {
    match error {
        ExecError::Provider(e) => match &e.0 {
            ProviderError::RateLimited(r) => (
                ErrorKind::RateLimited,
                r.retry_after_ms.map(Duration::from_millis),
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
