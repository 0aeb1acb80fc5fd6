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
    /// Held for a provider batch (`deferrable: true`): waiting to be sent, or inside a batch
    /// that the provider runs (see `batch_id`). Outside the lane's limit; the batch owns it.
    Batched,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Batched,
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
            Status::Batched => "batched",
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
    /// The tenant it runs for, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its key in the response cache, when it may be answered from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// The submission said it may wait for a provider batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferrable: bool,
    /// When it must have ended, Unix ms, if the submission said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// The provider batch that holds it (while `batched`) or ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
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
    /// The provider batch that ran it (`worker` is then `batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
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
    /// The tenant it is run for (see [`check_tenant`]); `None` puts it with the other rows
    /// without one, which share a lane as one tenant.
    pub tenant: Option<String>,
    /// Its key in the response cache, when it may be answered from it (see `responses`).
    pub cache: Option<CacheRequest>,
    /// Whether it may wait for a provider batch, and what the daemon decided.
    pub defer: Defer,
}

/// A submission's word on provider batches (`deferrable`, `deadline`), and the daemon's
/// decision: `hold` puts the row in `batched` for the provider's batch lane instead of
/// `pending` for its live lane (see `batches::holds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defer {
    /// The submission said the work can wait for a batch.
    pub deferrable: bool,
    /// When it must have ended, Unix ms.
    pub deadline: Option<i64>,
    /// Held for a batch: set by the daemon when the provider's batch lane takes it.
    pub hold: bool,
}

impl Defer {
    /// The status a submission starts in: `batched` when held for a batch.
    pub fn status(&self) -> Status {
        if self.hold {
            Status::Batched
        } else {
            Status::Pending
        }
    }
}

/// How a submission uses the response cache: its key, and how old an answer may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRequest {
    /// The hash of the normalized input, the provider, the resolved model and the tenant.
    pub key: String,
    /// Answers older than this many ms are not served.
    pub ttl_ms: i64,
}

/// Whether `tenant` is a tenant's name: 1 to 64 of `a-z A-Z 0-9 _ - . : @`, so that it is
/// safe in a URL, a metric's label and a log line. The error names the problem.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > 64 {
        return Err(format!(
            "tenant must be 1 to 64 characters, not {}",
            tenant.chars().count()
        ));
    }
    match tenant
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')))
    {
        Some(c) => Err(format!(
            "tenant `{}` has {c:?}: use a-z, A-Z, 0-9 and `_ - . : @`",
            tenant.escape_debug()
        )),
        None => Ok(()),
    }
}

/// The normalized chat input a user submits. Its JSON form is what `lanes submit --input`
/// takes and what the queue stores; `{"prompt": "...", ...}` is accepted as a shorthand for
/// one user message. Every field added after lanes:provider 0.1 is left out of the JSON
/// when unset, so an input of the 0.1 shape is stored as it always was (and keeps its
/// idempotency fingerprint).
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
    /// Nucleus sampling, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// A seed for providers that sample reproducibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// The tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// Stream the answer (`GET /v1/executions/{id}/stream`) when the provider's component
    /// can; the output is stored whole either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Provider-specific options, passed to the component as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One message of a [`ChatInput`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Content,
}

/// Who wrote a [`ChatMessage`]. A `tool` message carries `tool_result` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A message's content: a string (one text part, the 0.1 form), or a list of parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Content {
    /// The text parts, joined by newlines (a string is its own text), and whether there
    /// was anything else. What a text-only (0.1) component gets.
    pub fn joined_text(&self) -> (String, bool) {
        match self {
            Content::Text(text) => (text.clone(), false),
            Content::Parts(parts) => {
                let mut texts = Vec::new();
                let mut other = false;
                for part in parts {
                    match part {
                        Part::Text { text } => texts.push(text.as_str()),
                        _ => other = true,
                    }
                }
                (texts.join("\n"), other)
            }
        }
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_string())
    }
}

impl Serialize for Content {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(text) => s.serialize_str(text),
            Content::Parts(parts) => parts.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Part>()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One part of a message's content (and of an output's `content`), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Part {
    Text {
        text: String,
    },
    /// An image: `url` (http or https), or `data` (base64, no `data:` prefix) with its
    /// `media_type`.
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_type: Option<String>,
    },
    /// A call the model made: `arguments` is JSON text, as the model wrote it.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The answer to the tool call `call_id`: a string, or text and image parts.
    ToolResult {
        call_id: String,
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
    /// The model's reasoning; `signature` is opaque and must be passed back unchanged, as
    /// must `redacted`: reasoning the provider returned encrypted (its `text` is empty).
    Reasoning {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redacted: Option<String>,
    },
}

impl Part {
    pub fn kind(&self) -> &'static str {
        match self {
            Part::Text { .. } => "text",
            Part::Image { .. } => "image",
            Part::ToolCall { .. } => "tool_call",
            Part::ToolResult { .. } => "tool_result",
            Part::Reasoning { .. } => "reasoning",
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// 1 to 64 of `a-z A-Z 0-9 _ -`, unique among the tools.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object for the arguments; absent means no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// Ask the provider to hold the arguments to the schema exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call: `"auto"`, `"none"`, `"required"` or
/// `{"name": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Named(name) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("name", name)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ToolChoice;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto", "none", "required" or {"name": "..."}"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ToolChoice, E> {
                match v {
                    "auto" => Ok(ToolChoice::Auto),
                    "none" => Ok(ToolChoice::None),
                    "required" => Ok(ToolChoice::Required),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ToolChoice, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "name" {
                        return Err(serde::de::Error::unknown_field(&key, &["name"]));
                    }
                    if name.is_some() {
                        return Err(serde::de::Error::duplicate_field("name"));
                    }
                    name = Some(map.next_value::<String>()?);
                }
                name.map(ToolChoice::Named)
                    .ok_or_else(|| serde::de::Error::missing_field("name"))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The form of the answer, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    // Empty struct variants, not unit ones: serde lets a unit variant of a tagged enum
    // take any other field and drops it, so `{"type":"json_object","schema":…}` went
    // through with its schema lost.
    /// Free text, the default.
    Text {},
    /// Any JSON object.
    JsonObject {},
    /// JSON that matches `schema`.
    JsonSchema {
        /// 1 to 64 of `a-z A-Z 0-9 _ -`.
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A JSON Schema object.
        schema: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// How much the model reasons: an `effort`, or a `budget_tokens` (one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reasoning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u32>,
}

/// A reasoning effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    Low,
    Medium,
    High,
}

/// What an input may need of its provider beyond text (a component on lanes:provider
/// 0.1.x has none of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `tools`, `tool_choice` (but `"none"`), `tool_call` and `tool_result` parts, the
    /// `tool` role.
    Tools,
    /// `response_format` `json_object` or `json_schema`.
    JsonSchema,
    /// `image` parts.
    Images,
    /// `image` parts given by `url` (the provider fetches them).
    ImageUrls,
    /// `reasoning`, and `reasoning` parts.
    Reasoning,
    /// `top_p` and `seed`, which lanes:provider 0.1 cannot carry.
    Sampling,
    /// Deltas while the call runs (every 0.2 component may declare it).
    Streaming,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 7] = [
        Capability::Tools,
        Capability::JsonSchema,
        Capability::Images,
        Capability::ImageUrls,
        Capability::Reasoning,
        Capability::Sampling,
        Capability::Streaming,
    ];

    /// Its name, in messages and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Tools => "tools",
            Capability::JsonSchema => "json_schema",
            Capability::Images => "images",
            Capability::ImageUrls => "image_urls",
            Capability::Reasoning => "reasoning",
            Capability::Sampling => "sampling",
            Capability::Streaming => "streaming",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Capability`]: what a provider's component declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Text only.
    pub const NONE: Capabilities = Capabilities(0);

    /// This set with `capability` added.
    pub const fn with(self, capability: Capability) -> Self {
        Capabilities(self.0 | (1 << capability as u8))
    }

    /// Every capability.
    pub const ALL: Capabilities = {
        let mut all = Capabilities::NONE;
        let mut i = 0;
        while i < Capability::ALL.len() {
            all = all.with(Capability::ALL[i]);
            i += 1;
        }
        all
    };

    pub fn has(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// Its capabilities, in [`Capability::ALL`]'s order.
    pub fn list(self) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .collect()
    }
}

impl Serialize for Capabilities {
    /// A list of names, such as `["tools", "images"]`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.list().into_iter().map(Capability::as_str))
    }
}

/// A capability an input needs, and the first field that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub capability: Capability,
    pub field: String,
}

/// An input refused at submission because no provider it may run on has a capability it
/// needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{target}: {}{}",
    missing_list(.missing),
    if *.text_only { "; components built against lanes:provider 0.1.x take text only" } else { "" }
)]
pub struct Unsupported {
    /// `provider `NAME` cannot take this input`, or for a route that no member can.
    pub target: String,
    /// Whether every provider it may run on takes text only (a 0.1.x component).
    pub text_only: bool,
    pub missing: Vec<Need>,
}

fn missing_list(missing: &[Need]) -> String {
    missing
        .iter()
        .map(|n| format!("`{}` needs the `{}` capability", n.field, n.capability))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses `input` when no provider it may run on declares every capability it needs:
/// `provider` itself, or, for a route, one of `members` that has them all (a route runs an
/// execution on one member, so two members with one capability each do not make one that
/// can run it). `declared` says what a provider's component declares. The API and the CLI
/// call it at submission, so such work is never queued.
pub fn check_capabilities(
    input: &ChatInput,
    provider: &str,
    members: Option<&[String]>,
    declared: impl Fn(&str) -> Capabilities,
) -> Result<(), Unsupported> {
    let needs = input.needs();
    if needs.is_empty() {
        return Ok(());
    }
    let candidates: Vec<&str> = match members {
        Some(members) => members.iter().map(String::as_str).collect(),
        None => vec![provider],
    };
    let has: Vec<Capabilities> = candidates.iter().map(|name| declared(name)).collect();
    if has
        .iter()
        .any(|c| needs.iter().all(|need| c.has(need.capability)))
    {
        return Ok(());
    }
    // What the best-equipped candidate still lacks: for one provider, all it lacks.
    let lacks = |c: &Capabilities| {
        needs
            .iter()
            .filter(|need| !c.has(need.capability))
            .cloned()
            .collect::<Vec<Need>>()
    };
    let missing = has
        .iter()
        .map(lacks)
        .min_by_key(Vec::len)
        .unwrap_or_else(|| needs.clone());
    let text_only = has.iter().all(|c| *c == Capabilities::NONE);
    let target = match members {
        Some(_) => format!(
            "no member of route `{provider}` ({}) can take this input (the closest lacks what \
             follows)",
            candidates.join(", ")
        ),
        None => format!("provider `{provider}` cannot take this input"),
    };
    Err(Unsupported {
        target,
        text_only,
        missing,
    })
}

/// The default of `[api] max_image_bytes`: the largest image a submission may carry,
/// decoded.
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;

/// The media types an `image` part may have.
pub const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Why an input was refused at submission.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("input does not match the chat input format: {0}")]
    Shape(String),
    #[error("input has no messages: give `messages` or `prompt`")]
    NoMessages,
    #[error("input field `temperature` must be between 0 and 2, not {0}")]
    Temperature(f32),
    /// A field with a bad value: the field's path, and what is wrong.
    #[error("input field `{0}` {1}")]
    Field(String, String),
}

fn field(path: impl Into<String>, problem: impl Into<String>) -> InputError {
    InputError::Field(path.into(), problem.into())
}

/// Whether `name` is 1 to 64 of `a-z A-Z 0-9 _ -`: a tool's or a schema's name, as the
/// providers take them.
fn good_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(path: &str, name: &str) -> Result<(), InputError> {
    if good_name(name) {
        Ok(())
    } else {
        Err(field(
            path,
            format!("`{name}` is not a valid name: use 1 to 64 of a-z, A-Z, 0-9, `_` and `-`"),
        ))
    }
}

/// A JSON Schema given as a tool's parameters or a response format's schema: an object
/// that is a valid schema (draft 2020-12 unless its `$schema` says otherwise).
fn check_schema(path: &str, schema: &serde_json::Value) -> Result<(), InputError> {
    if !schema.is_object() {
        return Err(field(path, "must be a JSON Schema object"));
    }
    jsonschema::meta::options()
        .validate(schema)
        .map_err(|e| field(path, format!("is not a valid JSON Schema: {e}")))
}

impl ChatInput {
    /// Parses and validates user-supplied input JSON, with the default image cap.
    pub fn parse(json: &str) -> Result<Self, InputError> {
        Self::parse_capped(json, DEFAULT_MAX_IMAGE_BYTES)
    }

    /// Parses and validates user-supplied input JSON; an image's data may decode to at most
    /// `max_image_bytes`.
    pub fn parse_capped(json: &str, max_image_bytes: usize) -> Result<Self, InputError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(InputError::Json)?;
        Self::from_value_capped(value, max_image_bytes)
    }

    /// Validates an already-parsed JSON value, with the default image cap.
    pub fn from_value(value: serde_json::Value) -> Result<Self, InputError> {
        Self::from_value_capped(value, DEFAULT_MAX_IMAGE_BYTES)
    }

    /// Validates an already-parsed JSON value; an image's data may decode to at most
    /// `max_image_bytes`.
    pub fn from_value_capped(
        value: serde_json::Value,
        max_image_bytes: usize,
    ) -> Result<Self, InputError> {
        let value = match value {
            serde_json::Value::Object(mut map) if map.contains_key("prompt") => {
                if map.contains_key("messages") {
                    return Err(InputError::Shape(
                        "give `prompt` or `messages`, not both".into(),
                    ));
                }
                let prompt = map.remove("prompt").unwrap_or_default();
                if !prompt.is_string() {
                    return Err(field("prompt", "must be a string"));
                }
                map.insert(
                    "messages".into(),
                    serde_json::json!([{"role": "user", "content": prompt}]),
                );
                serde_json::Value::Object(map)
            }
            other => other,
        };
        let input: ChatInput = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                InputError::Shape(inner.to_string())
            } else {
                InputError::Shape(format!("`{path}`: {inner}"))
            }
        })?;
        input.check(max_image_bytes)?;
        Ok(input)
    }

    /// What `serde` cannot say: ranges, names, schemas, references and images.
    fn check(&self, max_image_bytes: usize) -> Result<(), InputError> {
        if self.messages.is_empty() {
            return Err(InputError::NoMessages);
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(InputError::Temperature(t));
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(field("top_p", format!("must be between 0 and 1, not {p}")));
        }
        let mut names = std::collections::HashSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            check_name(&format!("tools[{i}].name"), &tool.name)?;
            if !names.insert(tool.name.as_str()) {
                return Err(field(
                    format!("tools[{i}].name"),
                    format!("`{}` names a tool twice", tool.name),
                ));
            }
            if let Some(schema) = &tool.parameters {
                check_schema(&format!("tools[{i}].parameters"), schema)?;
            }
        }
        match &self.tool_choice {
            Some(ToolChoice::Named(name)) if !names.contains(name.as_str()) => {
                return Err(field(
                    "tool_choice",
                    format!("names `{name}`, which is not in `tools`"),
                ));
            }
            Some(ToolChoice::Required) if self.tools.is_empty() => {
                return Err(field("tool_choice", "is `required`, but `tools` is empty"));
            }
            _ => {}
        }
        if let Some(ResponseFormat::JsonSchema { name, schema, .. }) = &self.response_format {
            check_name("response_format.name", name)?;
            check_schema("response_format.schema", schema)?;
        }
        if let Some(r) = &self.reasoning {
            match (r.effort, r.budget_tokens) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(field(
                        "reasoning",
                        "must give `effort` or `budget_tokens` (one of the two)",
                    ));
                }
                (None, Some(0)) => {
                    return Err(field("reasoning.budget_tokens", "must be at least 1"));
                }
                _ => {}
            }
        }
        let mut calls = std::collections::HashSet::new();
        for (i, message) in self.messages.iter().enumerate() {
            let parts = match &message.content {
                Content::Text(_) if message.role == Role::Tool => {
                    return Err(field(
                        format!("messages[{i}].content"),
                        "of a `tool` message must be a list of `tool_result` parts",
                    ));
                }
                Content::Text(_) => continue,
                Content::Parts(parts) => parts,
            };
            // An assistant turn may be empty: an answer with no text comes back as
            // `content: []`, and goes back as the next request's assistant message.
            if parts.is_empty() && message.role != Role::Assistant {
                return Err(field(format!("messages[{i}].content"), "has no parts"));
            }
            for (j, part) in parts.iter().enumerate() {
                let path = format!("messages[{i}].content[{j}]");
                let allowed = match (message.role, part) {
                    (Role::Tool, Part::ToolResult { .. }) => true,
                    (Role::Tool, _) => false,
                    (_, Part::Text { .. }) => true,
                    (Role::User, Part::Image { .. }) => true,
                    (Role::Assistant, Part::ToolCall { .. } | Part::Reasoning { .. }) => true,
                    _ => false,
                };
                if !allowed {
                    return Err(field(
                        path,
                        format!(
                            "is a `{}` part, which a `{}` message cannot hold",
                            part.kind(),
                            message.role.as_str()
                        ),
                    ));
                }
                match part {
                    Part::Image {
                        url,
                        data,
                        media_type,
                    } => check_image(&path, url, data, media_type, max_image_bytes)?,
                    Part::ToolCall { id, name, .. } => {
                        if id.is_empty() {
                            return Err(field(format!("{path}.id"), "must not be empty"));
                        }
                        check_name(&format!("{path}.name"), name)?;
                        calls.insert(id.as_str());
                    }
                    Part::ToolResult {
                        call_id, content, ..
                    } => {
                        if !calls.contains(call_id.as_str()) {
                            return Err(field(
                                format!("{path}.call_id"),
                                format!("`{call_id}` matches no earlier `tool_call` part"),
                            ));
                        }
                        if let Content::Parts(inner) = content {
                            for (k, part) in inner.iter().enumerate() {
                                let path = format!("{path}.content[{k}]");
                                match part {
                                    Part::Text { .. } => {}
                                    Part::Image {
                                        url,
                                        data,
                                        media_type,
                                    } => {
                                        check_image(&path, url, data, media_type, max_image_bytes)?
                                    }
                                    other => {
                                        return Err(field(
                                            path,
                                            format!(
                                                "is a `{}` part; a tool result holds text and image parts",
                                                other.kind()
                                            ),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    Part::Text { .. } | Part::Reasoning { .. } => {}
                }
            }
        }
        Ok(())
    }

    /// The capabilities this input needs beyond text, each with the first field that
    /// needs it, in [`Capability::ALL`]'s order. The one place that says it: the API and
    /// the CLI refuse at submission what no provider can take, and the executor refuses
    /// again what a component cannot take.
    pub fn needs(&self) -> Vec<Need> {
        let mut found: Vec<Need> = Vec::new();
        let mut need = |capability: Capability, path: &dyn Fn() -> String| {
            if !found.iter().any(|n| n.capability == capability) {
                found.push(Need {
                    capability,
                    field: path(),
                });
            }
        };
        if !self.tools.is_empty() {
            need(Capability::Tools, &|| "tools".into());
        }
        if matches!(
            self.tool_choice,
            Some(ToolChoice::Auto | ToolChoice::Required | ToolChoice::Named(_))
        ) {
            need(Capability::Tools, &|| "tool_choice".into());
        }
        if matches!(
            self.response_format,
            Some(ResponseFormat::JsonObject {} | ResponseFormat::JsonSchema { .. })
        ) {
            need(Capability::JsonSchema, &|| "response_format".into());
        }
        if self.reasoning.is_some() {
            need(Capability::Reasoning, &|| "reasoning".into());
        }
        if self.top_p.is_some() {
            need(Capability::Sampling, &|| "top_p".into());
        }
        if self.seed.is_some() {
            need(Capability::Sampling, &|| "seed".into());
        }
        for (i, message) in self.messages.iter().enumerate() {
            if message.role == Role::Tool {
                need(Capability::Tools, &|| format!("messages[{i}].role"));
            }
            let Content::Parts(parts) = &message.content else {
                continue;
            };
            for (j, part) in parts.iter().enumerate() {
                let path = || format!("messages[{i}].content[{j}]");
                match part {
                    Part::Text { .. } => {}
                    Part::Image { url, .. } => {
                        need(Capability::Images, &path);
                        if url.is_some() {
                            need(Capability::ImageUrls, &path);
                        }
                    }
                    Part::ToolCall { .. } => need(Capability::Tools, &path),
                    Part::Reasoning { .. } => need(Capability::Reasoning, &path),
                    Part::ToolResult { content, .. } => {
                        need(Capability::Tools, &path);
                        if let Content::Parts(inner) = content {
                            for (k, part) in inner.iter().enumerate() {
                                if let Part::Image { url, .. } = part {
                                    let path =
                                        || format!("messages[{i}].content[{j}].content[{k}]");
                                    need(Capability::Images, &path);
                                    if url.is_some() {
                                        need(Capability::ImageUrls, &path);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        found.sort_by_key(|n| n.capability);
        found
    }

    /// The first image whose media type is not one of `takes` (a component's
    /// `image-media-types`; empty means the usual four, [`IMAGE_MEDIA_TYPES`]), said with
    /// its field; `None` when every image's is.
    pub fn media_type_refused(&self, takes: &[String]) -> Option<String> {
        let ok = |m: &str| {
            if takes.is_empty() {
                IMAGE_MEDIA_TYPES.contains(&m)
            } else {
                takes.iter().any(|t| t == m)
            }
        };
        let check = |part: &Part, field: String| match part {
            Part::Image {
                media_type: Some(m),
                ..
            } if !ok(m) => {
                let list = if takes.is_empty() {
                    IMAGE_MEDIA_TYPES.join(", ")
                } else {
                    takes.join(", ")
                };
                Some(format!(
                    "`{field}.media_type`: the component does not take `{m}` images (it \
                     takes {list})"
                ))
            }
            _ => None,
        };
        for (i, message) in self.messages.iter().enumerate() {
            let Content::Parts(parts) = &message.content else {
                continue;
            };
            for (j, part) in parts.iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                if let Part::ToolResult {
                    content: Content::Parts(inner),
                    ..
                } = part
                {
                    for (k, part) in inner.iter().enumerate() {
                        if let Some(e) = check(part, format!("{field}.content[{k}]")) {
                            return Some(e);
                        }
                    }
                } else if let Some(e) = check(part, field) {
                    return Some(e);
                }
            }
        }
        None
    }

    /// A one-message input, handy in tests and the demo.
    pub fn prompt(text: impl Into<String>) -> Self {
        ChatInput {
            model: None,
            system: None,
            messages: vec![ChatMessage {
                role: Role::User,
                content: Content::Text(text.into()),
            }],
            max_tokens: None,
            temperature: None,
            stop: Vec::new(),
            top_p: None,
            seed: None,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            response_format: None,
            reasoning: None,
            stream: None,
            extra: None,
        }
    }

    /// Sets `extra` from a JSON object literal.
    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = extra.as_object().cloned();
        self
    }
}

/// An `image` part: a URL, or base64 data of an allowed media type within the cap.
fn check_image(
    path: &str,
    url: &Option<String>,
    data: &Option<String>,
    media_type: &Option<String>,
    max_image_bytes: usize,
) -> Result<(), InputError> {
    if let Some(media_type) = media_type
        && !IMAGE_MEDIA_TYPES.contains(&media_type.as_str())
    {
        return Err(field(
            format!("{path}.media_type"),
            format!(
                "`{media_type}` is not taken: give one of {}",
                IMAGE_MEDIA_TYPES.join(", ")
            ),
        ));
    }
    match (url, data) {
        (Some(_), Some(_)) => Err(field(path, "gives both `url` and `data`: give one")),
        (None, None) => Err(field(path, "gives neither `url` nor `data`")),
        (Some(url), None) => {
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(())
            } else {
                Err(field(
                    format!("{path}.url"),
                    "must be an http or https URL (give inline images as `data` and `media_type`)",
                ))
            }
        }
        (None, Some(data)) => {
            if media_type.is_none() {
                return Err(field(
                    format!("{path}.media_type"),
                    "is missing: `data` needs its media type",
                ));
            }
            if data.starts_with("data:") {
                return Err(field(
                    format!("{path}.data"),
                    "must be bare base64, without a `data:` URL prefix",
                ));
            }
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| field(format!("{path}.data"), format!("is not valid base64: {e}")))?;
            if bytes.len() > max_image_bytes {
                return Err(field(
                    format!("{path}.data"),
                    format!(
                        "decodes to {} bytes, over the cap of {max_image_bytes} (`[api] max_image_bytes`)",
                        bytes.len()
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// What a completed execution produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatOutput {
    /// The text parts of `content`, joined with nothing between them.
    pub text: String,
    /// The answer's parts: `text`, `tool_call` and `reasoning`. Absent in outputs stored
    /// before lanes carried parts: read it as one text part holding `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<Part>>,
    /// The model's refusal, when it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub model: String,
    pub usage: Usage,
    /// `stop`, `length`, `content_filter`, `tool_calls`, `refusal`, `pause`,
    /// `context_window`, or the provider's own word.
    pub finish_reason: String,
    /// What it cost, priced by lanes when the attempt ended (see `costs`). Absent in
    /// outputs stored before lanes priced them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Served from the response cache: no provider call was made for it (its cost is 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// What an answer cost, from its usage and the price table (`costs::PriceTable`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// In USD. Absent when the model has no price (see `unpriced`): never a made-up 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The price table's entry it was priced by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priced_as: Option<String>,
    /// The version of the price table.
    pub prices: String,
    /// Why it has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpriced: Option<String>,
    /// An answer from a provider batch: what the same answer would have cost live, less
    /// `usd` (the batch discount), in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_usd: Option<f64>,
}

impl ChatOutput {
    /// The parts of a text-only answer: one text part, none for an empty text.
    pub fn text_parts(text: &str) -> Vec<Part> {
        if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Text {
                text: text.to_string(),
            }]
        }
    }
}

/// One piece of an answer as it streams, tagged by `type`. Joined in order, the pieces of
/// each kind make the output's parts of that kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    Text {
        text: String,
    },
    Reasoning {
        text: String,
    },
    /// The start of the answer's tool call number `index` (from 0).
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A piece of the arguments of tool call `index`.
    ToolCallArguments {
        index: u32,
        fragment: String,
    },
    /// Tokens so far.
    Usage {
        usage: Usage,
    },
}

/// Token counts of one call, the same way for every provider: `input_tokens` counts every
/// prompt token, cache reads and writes included; the optional fields break it down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u32>,
    /// Of `input_tokens`, those written to the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u32>,
    /// Of `output_tokens`, those spent reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u32>,
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

    /// The 0.1 shapes are stored as they always were: the same JSON text, so the same
    /// idempotency fingerprints.
    #[test]
    fn old_shapes_serialize_as_before() {
        for (given, stored) in [
            (
                r#"{"prompt":"hi","max_tokens":5}"#,
                r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            ),
            (
                r#"{"model":"m","system":"s","messages":[{"role":"system","content":"a"},{"role":"assistant","content":"b"}],"temperature":0.5,"stop":["x"],"extra":{"k":1}}"#,
                r#"{"model":"m","system":"s","messages":[{"role":"system","content":"a"},{"role":"assistant","content":"b"}],"temperature":0.5,"stop":["x"],"extra":{"k":1}}"#,
            ),
        ] {
            let input = ChatInput::parse(given).unwrap();
            assert_eq!(serde_json::to_string(&input).unwrap(), stored);
            assert!(input.needs().is_empty());
        }
    }

    #[test]
    fn rich_shapes_round_trip() {
        let png = "iVBORw0KGgo=";
        let given = serde_json::json!({
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "data": png, "media_type": "image/png"},
                    {"type": "image", "url": "https://example.com/a.jpg"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "reasoning", "text": "Look it up.", "signature": "sig=="},
                    {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                ]},
                {"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "call_1", "content": "18C", "is_error": false}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}],
            "tool_choice": {"name": "get_weather"},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true},
            "reasoning": {"effort": "low"},
            "top_p": 0.5,
            "seed": 7
        });
        let input = ChatInput::from_value(given.clone()).unwrap();
        assert_eq!(serde_json::to_value(&input).unwrap(), given);
        let needs: Vec<_> = input
            .needs()
            .into_iter()
            .map(|n| (n.capability.as_str(), n.field))
            .collect();
        assert_eq!(
            needs,
            [
                ("tools", "tools".to_string()),
                ("json_schema", "response_format".to_string()),
                ("images", "messages[0].content[1]".to_string()),
                ("image_urls", "messages[0].content[2]".to_string()),
                ("reasoning", "reasoning".to_string()),
                ("sampling", "top_p".to_string()),
            ]
        );
        for choice in [r#""auto""#, r#""none""#, r#""required""#] {
            let c: ToolChoice = serde_json::from_str(choice).unwrap();
            assert_eq!(serde_json::to_string(&c).unwrap(), choice);
        }
    }

    /// Each refusal names its field.
    #[test]
    fn rich_inputs_name_the_bad_field() {
        let user = |parts: serde_json::Value| serde_json::json!({"messages": [{"role": "user", "content": parts}]});
        let tool = |t: serde_json::Value| serde_json::json!({"prompt": "x", "tools": [t]});
        let call = serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}]});
        let cases = [
            (
                tool(serde_json::json!({"name": "get weather"})),
                "tools[0].name",
            ),
            (
                serde_json::json!({"prompt": "x", "tools": [{"name": "f"}, {"name": "f"}]}),
                "tools[1].name",
            ),
            (
                tool(serde_json::json!({"name": "f", "parameters": "{}"})),
                "tools[0].parameters",
            ),
            (
                tool(serde_json::json!({"name": "f", "parameters": {"type": "thing"}})),
                "tools[0].parameters",
            ),
            (
                serde_json::json!({"prompt": "x", "tools": [{"name": "f"}], "tool_choice": {"name": "g"}}),
                "tool_choice",
            ),
            (
                serde_json::json!({"prompt": "x", "tool_choice": "required"}),
                "tool_choice",
            ),
            (
                serde_json::json!({"prompt": "x", "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                serde_json::json!({"prompt": "x", "response_format": {"type": "json_schema", "name": "a b", "schema": {}}}),
                "response_format.name",
            ),
            (
                serde_json::json!({"prompt": "x", "response_format": {"type": "json_schema", "name": "a", "schema": []}}),
                "response_format.schema",
            ),
            (
                serde_json::json!({"prompt": "x", "response_format": {"type": "json_object", "schema": {}}}),
                "response_format",
            ),
            (
                serde_json::json!({"prompt": "x", "response_format": {"type": "text", "strict": true}}),
                "response_format",
            ),
            (
                serde_json::json!({"prompt": "x", "reasoning": {}}),
                "reasoning",
            ),
            (serde_json::json!({"prompt": "x", "top_p": 2}), "top_p"),
            (
                user(
                    serde_json::json!([{"type": "image", "data": "not base64!", "media_type": "image/png"}]),
                ),
                "messages[0].content[0].data",
            ),
            (
                user(
                    serde_json::json!([{"type": "image", "data": "AAAA", "media_type": "image/tiff"}]),
                ),
                "messages[0].content[0].media_type",
            ),
            (
                user(serde_json::json!([{"type": "image", "data": "AAAA"}])),
                "messages[0].content[0].media_type",
            ),
            (
                user(serde_json::json!([{"type": "image", "url": "file:///etc/passwd"}])),
                "messages[0].content[0].url",
            ),
            (
                user(serde_json::json!([{"type": "video", "url": "x"}])),
                "messages[0].content[0].type",
            ),
            (
                user(serde_json::json!([{"type": "text", "txt": "x"}])),
                "messages[0].content[0]",
            ),
            (user(serde_json::json!([])), "messages[0].content"),
            (
                user(
                    serde_json::json!([{"type": "tool_call", "id": "c", "name": "f", "arguments": "{}"}]),
                ),
                "messages[0].content[0]",
            ),
            (
                serde_json::json!({"messages": [{"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "c9", "content": "x"}]}]}),
                "messages[0].content[0].call_id",
            ),
            (
                serde_json::json!({"messages": [call.clone(), {"role": "tool", "content": "x"}]}),
                "messages[1].content",
            ),
            (
                serde_json::json!({"messages": [call, {"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "c1", "content": [{"type": "reasoning", "text": "x"}]}]}]}),
                "messages[1].content[0].content[0]",
            ),
        ];
        for (value, field) in cases {
            let err = ChatInput::from_value(value.clone())
                .expect_err(&value.to_string())
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // The image cap counts decoded bytes.
        let image = user(
            serde_json::json!([{"type": "image", "data": "AAAAAAAA", "media_type": "image/gif"}]),
        );
        assert!(ChatInput::from_value_capped(image.clone(), 6).is_ok());
        let err = ChatInput::from_value_capped(image, 5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`messages[0].content[0].data`") && err.contains("6 bytes"),
            "{err}"
        );
    }

    #[test]
    fn capabilities_are_checked_against_the_provider_or_any_member() {
        let input = ChatInput::from_value(serde_json::json!({
            "prompt": "x", "tools": [{"name": "f"}], "reasoning": {"budget_tokens": 1024}
        }))
        .unwrap();
        let err = check_capabilities(&input, "stub", None, |_| Capabilities::NONE)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("provider `stub`")
                && err.contains("`tools` needs the `tools` capability")
                && err.contains("`reasoning` needs the `reasoning` capability"),
            "{err}"
        );
        let members = ["a".to_string(), "b".to_string()];
        let declared = |name: &str| match name {
            "b" => Capabilities::NONE.with(Capability::Tools),
            _ => Capabilities::NONE.with(Capability::Reasoning),
        };
        // One member with tools, another with reasoning: none can run it.
        let err = check_capabilities(&input, "r", Some(&members), declared)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no member of route `r` (a, b) can take this input")
                && !err.contains("take text only"),
            "{err}"
        );
        let both = |name: &str| match name {
            "b" => Capabilities::NONE
                .with(Capability::Tools)
                .with(Capability::Reasoning),
            _ => Capabilities::NONE,
        };
        assert!(check_capabilities(&input, "r", Some(&members), both).is_ok());
        let err = check_capabilities(&input, "r", Some(&members[..1]), declared)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no member of route `r` (a)") && err.contains("`tools`"),
            "{err}"
        );
        assert!(
            check_capabilities(&ChatInput::prompt("x"), "stub", None, |_| {
                Capabilities::NONE
            })
            .is_ok()
        );
    }

    /// An output stored before `content` existed still reads.
    #[test]
    fn old_outputs_read() {
        let old = r#"{"text":"hi","model":"m","usage":{"input_tokens":1,"output_tokens":2},"finish_reason":"stop"}"#;
        let output: ChatOutput = serde_json::from_str(old).unwrap();
        assert_eq!(output.content, None);
        assert_eq!(serde_json::to_string(&output).unwrap(), old);
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
