//! The queue's vocabulary: executions, their status, the normalized chat input a user
//! submits and the output a provider produces. No I/O lives here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest limit or attempt count lanes accepts: what the database's 32-bit signed
/// columns hold, on both backends alike.
pub const MAX_COUNT: u32 = 2_147_483_647;

/// An execution's id: a positive integer, increasing in submission order.
pub type ExecutionId = i64;

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a free slot in its provider's lane (or for its `not_before` time).
    Pending,
    /// Claimed by a worker and running now.
    Running,
    /// Finished with an output.
    Completed,
    /// Finished with an error; no retries remain or the error is permanent.
    Failed,
    /// Withdrawn before it finished.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The spelling stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the execution will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// One row of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: ExecutionId,
    pub provider: String,
    pub status: Status,
    /// Higher runs first; FIFO within one priority. Priority aging raises it while the
    /// execution waits (see `aged`).
    pub priority: i32,
    /// How much priority aging added to `priority`.
    #[serde(default)]
    pub aged: i32,
    /// The normalized chat input (see [`ChatInput`]), as submitted.
    pub input: serde_json::Value,
    /// The provider's answer (see [`ChatOutput`]) once completed.
    pub output: Option<serde_json::Value>,
    /// The last error, kept when the execution failed or is waiting to retry; none once it
    /// completed (each attempt's error stays in `history`).
    pub error: Option<String>,
    /// The class of the last error (see [`ErrorKind`]).
    pub error_kind: Option<String>,
    /// Attempts started so far, the current one included. A rate-limited attempt is given
    /// back and counted in `rate_limited` instead.
    pub attempts: i32,
    /// Rate-limited answers so far (see the policy's `max_rate_limited`).
    #[serde(default)]
    pub rate_limited: i32,
    pub max_attempts: i32,
    /// Not claimed before this time (Unix ms): the retry backoff.
    pub not_before: i64,
    /// Set when a previous process was interrupted while running it; such rows are claimed
    /// before any other pending work.
    pub resume: bool,
    /// Unix ms.
    pub created_at: i64,
    /// When the current or last attempt started (Unix ms).
    pub started_at: Option<i64>,
    /// When it completed or failed (Unix ms).
    pub finished_at: Option<i64>,
    /// The worker running it, while it runs.
    pub owner: Option<String>,
    /// Until when (Unix ms) the owner's lease holds; another worker reclaims the row after.
    pub lease_until: Option<i64>,
    /// The worker that ran the last attempt.
    pub worker: Option<String>,
    /// The ended attempts, oldest first (the last 20 are kept).
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    /// The route it was submitted to, if it named one (`provider` is where it runs now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// How one attempt went, as the execution's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt's number (1 for the first).
    pub attempt: i32,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms: when its end was recorded.
    pub finished_at: Option<i64>,
    /// The worker that ran it.
    pub worker: Option<String>,
    /// `completed`, `retried`, `rate_limited` (retried, not counted as an attempt), `failed`,
    /// `returned` (taken back at shutdown, not counted), `interrupted` (its worker stopped
    /// while running it) or `cancelled`.
    pub outcome: String,
    pub error_kind: Option<String>,
    /// The error, cut to 1000 characters.
    pub error: Option<String>,
    /// How long it waited before the next attempt, when retried.
    pub retry_delay_ms: Option<i64>,
    /// The provider it ran on, for an execution submitted to a route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// A new execution, validated and ready to insert.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub provider: String,
    pub input: ChatInput,
    pub priority: i32,
    pub max_attempts: i32,
    /// The route it was submitted to (`[routes.NAME]`), when it named one: `provider` is
    /// then the member the route chose (see `routes::Routes::resolve`).
    pub route: Option<String>,
}

/// The normalized chat input a user submits. Its JSON form is what `lanes submit --input`
/// takes; `{"prompt": "..."}` is accepted as a shorthand for one user message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatInput {
    /// The model; the provider's configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Provider-specific options, passed to the component as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One message of a [`ChatInput`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Who wrote a [`ChatMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// Why an input was refused at submission.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("input does not match the chat input format: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("input has no messages: give `messages` or `prompt`")]
    NoMessages,
    #[error("input field `temperature` must be between 0 and 2, not {0}")]
    Temperature(f32),
}

/// The shorthand form `{"prompt": "...", ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptShorthand {
    prompt: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ChatInput {
    /// Parses and validates user-supplied input JSON.
    pub fn parse(json: &str) -> Result<Self, InputError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(InputError::Json)?;
        Self::from_value(value)
    }

    /// Validates an already-parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, InputError> {
        let input = if value.get("prompt").is_some() {
            let p: PromptShorthand = serde_json::from_value(value).map_err(InputError::Shape)?;
            ChatInput {
                model: p.model,
                system: p.system,
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: p.prompt,
                }],
                max_tokens: p.max_tokens,
                temperature: p.temperature,
                stop: p.stop,
                extra: p.extra,
            }
        } else {
            serde_json::from_value(value).map_err(InputError::Shape)?
        };
        if input.messages.is_empty() {
            return Err(InputError::NoMessages);
        }
        if let Some(t) = input.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(InputError::Temperature(t));
        }
        Ok(input)
    }

    /// A one-message input, handy in tests and the demo.
    pub fn prompt(text: impl Into<String>) -> Self {
        ChatInput {
            model: None,
            system: None,
            messages: vec![ChatMessage {
                role: Role::User,
                content: text.into(),
            }],
            max_tokens: None,
            temperature: None,
            stop: Vec::new(),
            extra: None,
        }
    }

    /// Sets `extra` from a JSON object literal.
    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = extra.as_object().cloned();
        self
    }
}

/// What a completed execution produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatOutput {
    pub text: String,
    pub model: String,
    pub usage: Usage,
    /// `stop`, `length`, `content_filter`, `tool_calls`, or the provider's own word.
    pub finish_reason: String,
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// The class of an execution's error: what the provider said, or what the sandbox did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    RateLimited,
    Unavailable,
    InvalidRequest,
    Unauthorized,
    Other,
    /// The component trapped (a bug, a panic, or a CPU or memory limit).
    Trap,
    /// The execution ran past its wall-clock timeout.
    Timeout,
    /// The input could not be handed to the component.
    BadInput,
    /// The host could not instantiate the component.
    Instantiate,
    /// The answer was larger than the output cap.
    OutputTooLarge,
    /// The process running it stopped and no attempts remained.
    Interrupted,
    /// The component tried to reach a host outside its allow-list.
    Denied,
}

impl ErrorKind {
    /// The spelling stored in the `error_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Other => "other",
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Instantiate => "instantiate",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Denied => "denied",
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp in the queue.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a provider name: 1 to 64 of lowercase ASCII letters, digits, `-` and `_`.
pub fn validate_provider_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "provider name `{name}` is invalid: use 1 to 64 lowercase letters, digits, `-` or `_`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_shorthand_becomes_one_user_message() {
        let input = ChatInput::parse(r#"{"prompt":"hi","max_tokens":5}"#).unwrap();
        assert_eq!(input.messages.len(), 1);
        assert_eq!(input.messages[0].role, Role::User);
        assert_eq!(input.max_tokens, Some(5));
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let err = ChatInput::parse("{not json").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = ChatInput::parse(r#"{"messages":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no messages"), "{err}");
        let err = ChatInput::parse(r#"{"messages":[{"role":"robot","content":"x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("robot"), "{err}");
        let err = ChatInput::parse(r#"{"prompt":"x","temprature":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("temprature"), "{err}");
    }

    #[test]
    fn status_round_trips() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
    }

    #[test]
    fn provider_names() {
        assert!(validate_provider_name("ollama-a_2").is_ok());
        assert!(validate_provider_name("Claude").is_err());
        assert!(validate_provider_name("").is_err());
    }
}
