//! The guest SDK for lanes provider components written in Rust.
//!
//! - [`bindings`]: the `lanes:provider` world (types, imports, and the `Guest` trait with its
//!   `export!` macro), generated once here so that every adapter shares it.
//! - [`http`]: blocking HTTP requests over the standard `wasi:http` interface. The host
//!   decides each request: only the provider's allowed hosts are reachable.
//! - [`errors`]: turning HTTP statuses and transport failures into the `provider-error` cases
//!   that tell the host whether to retry.
//! - [`stream`]: streamed answers: SSE and NDJSON parsing across chunks, and building the
//!   response while emitting `stream.emit` deltas.
//!
//! - [`adapter`]: [`adapter::HttpAdapter`], the skeleton of an HTTP provider: implement
//!   `build_request` and `parse_response` (and `classify_error` when the API's errors need
//!   more than the status), then `lanes_guest::export_http_adapter!(MyAdapter);`.
//! - [`batch`] and [`batch_bindings`] (WIT 0.2.1): a provider that also sends batches
//!   implements [`batch::BatchAdapter`] too and calls
//!   `lanes_guest::export_http_batch_adapter!(MyAdapter);` instead. Components that do not
//!   batch are untouched by it.
//! - Config and secrets: [`config_or`], [`config_parse`], [`secret`], [`base_url`],
//!   [`model`]; logging: [`info!`], [`warn!`], [`error!`], [`debug!`].
//!
//! A component that does not speak HTTP implements
//! `bindings::exports::lanes::provider::adapter::Guest` itself and calls
//! `lanes_guest::bindings::export!(MyAdapter with_types_in lanes_guest::bindings);`.

#![deny(missing_docs)]

#[allow(missing_docs)]
pub mod bindings {
    //! The `lanes:provider` world, generated from `wit/`.
    wit_bindgen::generate!({
        world: "provider",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "lanes_guest::bindings",
        additional_derives: [PartialEq],
    });
}

#[allow(missing_docs)]
pub mod batch_bindings {
    //! What a component that sends batches adds to [`crate::bindings`] (WIT 0.2.1): the
    //! `batch-io` import and the `batch` export, with its `export_batch!` macro.
    //!
    //! The world generated here is not `batch-provider` but the part of it that `provider`
    //! lacks: `batch-provider` includes `provider`, whose `adapter` export this crate already
    //! generates in [`crate::bindings`], and a second generation of it would define its
    //! exported `#[macro_export]` macro twice. A component calls both `bindings::export!`
    //! and `batch_bindings::export_batch!`; the two worlds' union, which the component
    //! linker makes, is `batch-provider`. The shared types are [`crate::bindings`]' own, so
    //! a `ChatRequest` or a `ProviderError` is the same Rust type in both.
    //!
    //! A component that does not batch never calls `export_batch!`: this module then adds
    //! no export, and its import is unused and left out of the component.
    wit_bindgen::generate!({
        inline: "
            package lanes:guest-batch;

            world batch {
                import lanes:provider/batch-io@0.2.1;
                export lanes:provider/batch@0.2.1;
            }
        ",
        world: "batch",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_batch",
        default_bindings_module: "lanes_guest::batch_bindings",
        additional_derives: [PartialEq],
        with: {
            "lanes:provider/types@0.2.1": crate::bindings::lanes::provider::types,
            "lanes:provider/batch-io@0.2.1": generate,
        },
    });
}

pub mod adapter;
pub mod batch;
pub mod errors;
pub mod http;
pub mod stream;

use bindings::lanes::provider::config;
use bindings::lanes::provider::types::{
    ChatRequest, ChatResponse, ContentPart, Message, ProviderError, Role,
};

/// A secret of this provider, such as `api-key` (from the operator's `api_key_env` or
/// `api-key_file`). Never put it in an error or a log line: the host scrubs them, but an
/// adapter should not rely on that.
pub fn secret(name: &str) -> Option<String> {
    let value = config::secret(name)?;
    if let Ok(mut read) = SECRETS_READ.lock()
        && !read.contains(&value)
    {
        read.push(value.clone());
    }
    Some(value)
}

/// Every secret value read through [`secret`] in this instance, for [`scrub`].
static SECRETS_READ: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// What stands for a secret in an error.
pub const REDACTED: &str = "[secret redacted]";

/// `error` with every secret read through [`secret`] replaced by [`REDACTED`]: an API that
/// echoes the key ("Incorrect API key provided: sk-…") must not put it in the error. The
/// host scrubs errors too; this keeps the component itself from leaking it.
/// [`adapter::execute`] applies it to every error.
pub fn scrub(error: ProviderError) -> ProviderError {
    let read = match SECRETS_READ.lock() {
        Ok(read) => read.clone(),
        Err(_) => return error,
    };
    let clean = |mut text: String| {
        for value in read.iter().filter(|v| v.trim().len() >= 4) {
            text = text.replace(value.trim(), REDACTED);
        }
        text
    };
    match error {
        ProviderError::RateLimited(mut r) => {
            r.message = clean(r.message);
            ProviderError::RateLimited(r)
        }
        ProviderError::Unavailable(m) => ProviderError::Unavailable(clean(m)),
        ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(clean(m)),
        ProviderError::Unauthorized(m) => ProviderError::Unauthorized(clean(m)),
        ProviderError::Other(m) => ProviderError::Other(clean(m)),
    }
}

/// A config value of this provider parsed as `T`: `Ok(None)` when it is not set, an
/// `invalid-request` error naming the key when it does not parse.
pub fn config_parse<T: std::str::FromStr>(key: &str) -> Result<Option<T>, ProviderError>
where
    T::Err: std::fmt::Display,
{
    match config::get(key) {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|e| {
            ProviderError::InvalidRequest(format!("config value `{key}` = `{text}`: {e}"))
        }),
    }
}

/// Logs through the host's `tracing`, tagged with the provider: `lanes_guest::log!(Warn,
/// "retrying {n}")`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::bindings::lanes::provider::logging::log(
            $crate::bindings::lanes::provider::logging::Level::$level,
            &::std::format!($($arg)*),
        )
    };
}

/// Logs at debug level (see [`log!`]).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log!(Debug, $($arg)*) };
}

/// Logs at info level (see [`log!`]).
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log!(Info, $($arg)*) };
}

/// Logs at warn level (see [`log!`]).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log!(Warn, $($arg)*) };
}

/// Logs at error level (see [`log!`]).
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log!(Error, $($arg)*) };
}

/// A config value of this provider, or `default`.
pub fn config_or(key: &str, default: &str) -> String {
    config::get(key).unwrap_or_else(|| default.to_string())
}

/// The provider's base URL (config `base_url`, else `default`), without a trailing slash.
pub fn base_url(default: &str) -> String {
    config_or("base_url", default)
        .trim_end_matches('/')
        .to_string()
}

/// Merges the request's `extra` JSON object into `body`, deeply: where both hold an object
/// under the same key, their keys merge (so `{"options": {"num_ctx": 8192}}` adds to the
/// body's `options` instead of replacing it); anywhere else the value from `extra` wins.
pub fn merge_extra(
    body: &mut serde_json::Map<String, serde_json::Value>,
    extra: Option<&str>,
) -> Result<(), String> {
    let Some(extra) = extra else {
        return Ok(());
    };
    match serde_json::from_str::<serde_json::Value>(extra) {
        Ok(serde_json::Value::Object(map)) => {
            deep_merge(body, map);
            Ok(())
        }
        Ok(_) => Err("extra must be a JSON object".to_string()),
        Err(e) => Err(format!("extra is not valid JSON: {e}")),
    }
}

/// Merges `from` into `into`, object by object.
pub fn deep_merge(
    into: &mut serde_json::Map<String, serde_json::Value>,
    from: serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(value)) => {
                deep_merge(inner, value)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A temperature (or any `f32`) as JSON, written as the user wrote it: `0.2`, not
/// `0.20000000298023224`.
pub fn f32_json(value: f32) -> serde_json::Value {
    serde_json::from_str(&value.to_string()).unwrap_or(serde_json::Value::Null)
}

/// The model to use: the request's, else the provider's configured `model`.
pub fn model(request: &ChatRequest) -> Result<String, ProviderError> {
    request
        .model
        .clone()
        .or_else(|| config::get("model"))
        .ok_or_else(|| {
            ProviderError::InvalidRequest(
                "no model: set one in the request or the provider's `model`".into(),
            )
        })
}

/// The role as the chat APIs spell it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// A message's text: its `text` parts joined by `\n` (other parts left out).
pub fn message_text(message: &Message) -> String {
    parts_text(&message.content, "\n")
}

/// The `text` parts of `parts` joined by `separator`.
pub fn parts_text(parts: &[ContentPart], separator: &str) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// A request of `messages` that asks for nothing else: every option unset, no tools, no
/// stream. What an adapter's unit tests build on (`ChatRequest { stream: true,
/// ..lanes_guest::plain_request(vec![]) }`).
pub fn plain_request(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: None,
        system: None,
        messages,
        max_tokens: None,
        temperature: None,
        top_p: None,
        seed: None,
        stop: Vec::new(),
        tools: Vec::new(),
        tool_choice: None,
        parallel_tool_calls: None,
        response_format: None,
        reasoning: None,
        stream: false,
        extra: None,
    }
}

/// The text of an answer as content: one `text` part, none when `text` is empty.
pub fn text_content(text: String) -> Vec<ContentPart> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![ContentPart::Text(text)]
    }
}

/// A response's text: its `text` parts joined, as the host joins them.
pub fn response_text(response: &ChatResponse) -> String {
    parts_text(&response.content, "")
}

/// `[{role, content}]` with the system prompt, if any, as the first message, each content the
/// message's text ([`message_text`]): the text-only shape of OpenAI's and Ollama's chat APIs.
pub fn chat_messages(request: &ChatRequest) -> Vec<serde_json::Value> {
    let system = request
        .system
        .iter()
        .map(|s| serde_json::json!({"role": "system", "content": s}));
    let turns = request
        .messages
        .iter()
        .map(|m| serde_json::json!({"role": role_name(m.role), "content": message_text(m)}));
    system.chain(turns).collect()
}

/// The string at JSON `pointer` (such as `/message/content`), or `""`.
pub fn text_at(value: &serde_json::Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The count at JSON `pointer`, or `None` when there is none.
pub fn opt_count_at(value: &serde_json::Value, pointer: &str) -> Option<u32> {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// JSON text of the request (a tool's parameters, a schema, a tool call's arguments) as a
/// JSON value; `what` names it in the `invalid-request` error when it does not parse.
pub fn json_text(text: &str, what: &str) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(text)
        .map_err(|e| ProviderError::InvalidRequest(format!("{what} is not valid JSON: {e}")))
}

/// A JSON value as the text a `tool-call.arguments` holds: a string as it is (the API
/// already sent JSON text), anything else serialized.
pub fn json_to_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "{}".to_string(),
        other => other.to_string(),
    }
}

/// An `invalid-request` error: what the provider's API cannot take.
pub fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::InvalidRequest(message.into())
}

/// The count at JSON `pointer` (such as `/usage/input_tokens`), or 0.
pub fn count_at(value: &serde_json::Value, pointer: &str) -> u32 {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_lose_the_secrets_that_were_read() {
        SECRETS_READ.lock().unwrap().push("sk-abcdef123".into());
        let error = scrub(ProviderError::Unauthorized(
            "HTTP 401: Incorrect API key provided: sk-abcdef123".into(),
        ));
        assert!(
            matches!(&error, ProviderError::Unauthorized(m) if m == "HTTP 401: Incorrect API key provided: [secret redacted]"),
            "{error:?}"
        );
    }

    #[test]
    fn extra_merges_deeply() {
        let mut body = serde_json::json!({
            "model": "m",
            "options": {"num_predict": 50, "temperature": 0.2, "stop": ["END"]}
        })
        .as_object()
        .cloned()
        .unwrap();
        merge_extra(
            &mut body,
            Some(r#"{"options": {"num_ctx": 8192, "temperature": 0.5}, "keep_alive": "5m"}"#),
        )
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(body),
            serde_json::json!({
                "model": "m",
                "keep_alive": "5m",
                "options": {"num_predict": 50, "temperature": 0.5, "stop": ["END"], "num_ctx": 8192}
            })
        );
    }
}
