//! [`HttpAdapter`]: the skeleton every HTTP provider shares, so that an adapter only says
//! what is particular to its API: how a chat request becomes an HTTP request, and how an
//! answer becomes a chat response or an error.
//!
//! ```ignore
//! use lanes_guest::adapter::{HttpAdapter, HttpRequest};
//! use lanes_guest::bindings::lanes::provider::types::*;
//! use lanes_guest::http::Response;
//!
//! struct Echo;
//!
//! impl HttpAdapter for Echo {
//!     fn info() -> ProviderInfo {
//!         ProviderInfo {
//!             name: "echo".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             default_limit: 2,
//!             description: "An echo server".into(),
//!             capabilities: Capabilities::empty(),
//!             image_media_types: Vec::new(),
//!         }
//!     }
//!     const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:8080";
//!     fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
//!         Ok(HttpRequest::post("/echo", serde_json::json!({
//!             "model": lanes_guest::model(request)?,
//!             "messages": lanes_guest::chat_messages(request),
//!         })))
//!     }
//!     fn parse_response(response: &Response) -> Result<ChatResponse, ProviderError> {
//!         let value = lanes_guest::adapter::json(response)?;
//!         Ok(ChatResponse {
//!             content: lanes_guest::text_content(lanes_guest::text_at(&value, "/text")),
//!             refusal: None,
//!             model: lanes_guest::text_at(&value, "/model"),
//!             usage: Usage {
//!                 input_tokens: 0,
//!                 output_tokens: 0,
//!                 cache_read_tokens: None,
//!                 cache_write_tokens: None,
//!                 reasoning_tokens: None,
//!             },
//!             finish_reason: FinishReason::Stop,
//!         })
//!     }
//! }
//!
//! lanes_guest::export_http_adapter!(Echo);
//! ```

use crate::bindings::lanes::provider::types::{
    ChatRequest, ChatResponse, ProviderError, ProviderInfo,
};
use crate::stream::{self, StreamDecoder};
use crate::{errors, http};

/// The HTTP request an adapter builds for one chat request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The path (and query) after the provider's base URL, such as `/v1/chat/completions`.
    pub path: String,
    /// Headers besides `content-type: application/json` and `content-length`, which are
    /// added.
    pub headers: Vec<(String, String)>,
    /// The JSON body. The request's `extra` object is deep-merged into it.
    pub body: serde_json::Value,
}

impl HttpRequest {
    /// A POST of `body` to `path`, with no headers yet.
    pub fn post(path: impl Into<String>, body: serde_json::Value) -> Self {
        HttpRequest {
            path: path.into(),
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `authorization: Bearer <the provider's api-key>` when the operator set a key.
    pub fn bearer_auth(self) -> Self {
        match crate::secret("api-key") {
            Some(key) => self.header("authorization", format!("Bearer {key}")),
            None => self,
        }
    }
}

/// An LLM API over HTTP: implement the hooks, then call [`export_http_adapter!`] once.
pub trait HttpAdapter {
    /// The component's name, version, default limit and description.
    fn info() -> ProviderInfo;

    /// The API's base URL when the provider's config gives no `base_url`.
    const DEFAULT_BASE_URL: &'static str;

    /// The HTTP request for `request`. Refuse what the API cannot take with
    /// `ProviderError::InvalidRequest`.
    fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError>;

    /// A successful answer (see [`HttpAdapter::is_success`]) as a chat response.
    fn parse_response(response: &http::Response) -> Result<ChatResponse, ProviderError>;

    /// An unsuccessful answer as an error. The default reads the body's
    /// `error.message` (or the whole body), maps the status (429 rate-limited with its
    /// retry-after, 5xx and 408/409 unavailable, 401/403 unauthorized, other 4xx invalid),
    /// and then obeys `x-should-retry`.
    fn classify_error(response: &http::Response) -> ProviderError {
        errors::obey_should_retry(
            response,
            errors::from_status(response, error_message(response)),
        )
    }

    /// Whether `response` is a success (default: any 2xx).
    fn is_success(response: &http::Response) -> bool {
        (200..300).contains(&response.status)
    }

    /// The decoder of the streamed answer to `request`, whose `stream` is set (then
    /// `build_request` asks the API to stream). `None`, the default: the answer is read
    /// whole, and nothing is emitted.
    fn stream_decoder(request: &ChatRequest) -> Option<Box<dyn StreamDecoder>> {
        let _ = request;
        None
    }
}

/// One attempt of `A`: builds the request, merges `extra` into its body, sends it to the
/// provider's base URL, and reads the answer; no secret read through [`crate::secret`]
/// stays in an error ([`crate::scrub`]). [`export_http_adapter!`] calls it.
pub fn execute<A: HttpAdapter>(request: ChatRequest) -> Result<ChatResponse, ProviderError> {
    attempt::<A>(request).map_err(crate::scrub)
}

/// The HTTP request `A` sends for `request`: its [`HttpAdapter::build_request`], with the
/// request's `extra` object deep-merged into the body. A live call and a batch's line are
/// both built here, so that a batch carries whatever a live call can.
pub fn build<A: HttpAdapter>(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
    let mut built = A::build_request(request)?;
    if let serde_json::Value::Object(body) = &mut built.body {
        crate::merge_extra(body, request.extra.as_deref())
            .map_err(ProviderError::InvalidRequest)?;
    }
    Ok(built)
}

fn attempt<A: HttpAdapter>(request: ChatRequest) -> Result<ChatResponse, ProviderError> {
    let built = build::<A>(&request)?;
    let url = format!("{}{}", crate::base_url(A::DEFAULT_BASE_URL), built.path);
    let headers: Vec<(&str, &str)> = built
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = built.body.to_string();
    let decoder = if request.stream {
        A::stream_decoder(&request)
    } else {
        None
    };
    let Some(decoder) = decoder else {
        let response =
            http::post_json(&url, &headers, body.as_bytes()).map_err(errors::transport)?;
        return if A::is_success(&response) {
            A::parse_response(&response)
        } else {
            Err(A::classify_error(&response))
        };
    };
    let (mut response, reader) =
        http::post_json_streaming(&url, &headers, body.as_bytes()).map_err(errors::transport)?;
    read_stream::<A>(&mut response, reader, decoder, &mut stream::emit_to_host)
}

/// Reads a streamed answer: an error status or a whole JSON answer (a server that does not
/// stream) is read whole, else the body goes through `decoder` chunk by chunk as it arrives.
fn read_stream<A: HttpAdapter>(
    response: &mut http::Response,
    mut reader: http::BodyReader,
    mut decoder: Box<dyn StreamDecoder>,
    emit: stream::Emit<'_>,
) -> Result<ChatResponse, ProviderError> {
    let whole_json = response.header("content-type").is_some_and(|t| {
        t.trim()
            .to_ascii_lowercase()
            .starts_with("application/json")
    });
    if !A::is_success(response) || whole_json {
        response.body = reader.read_all().map_err(errors::transport)?;
        if !A::is_success(response) {
            return Err(A::classify_error(response));
        }
        let parsed = A::parse_response(response)?;
        stream::emit_response(&parsed, emit);
        return Ok(parsed);
    }
    while let Some(chunk) = reader.next_chunk().map_err(errors::transport)? {
        decoder.feed(&chunk, emit)?;
    }
    decoder.finish(emit)
}

/// The body as JSON; an unreadable one is `unavailable` (a proxy's error page, a cut reply).
pub fn json(response: &http::Response) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_slice(&response.body)
        .map_err(|e| ProviderError::Unavailable(format!("unreadable reply: {e}")))
}

/// The API's own words for an error: `error.message` (with `error.code` or `error.type`
/// when there is one), else the body's text.
pub fn error_message(response: &http::Response) -> String {
    let text = response.text();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return text;
    };
    let field = |pointer: &str| value.pointer(pointer).and_then(|v| v.as_str());
    let message = field("/error/message")
        .or_else(|| field("/error"))
        .or_else(|| field("/message"));
    let code = field("/error/code").or_else(|| field("/error/type"));
    match (message, code) {
        (Some(m), Some(c)) if !c.is_empty() => format!("{c}: {m}"),
        (Some(m), _) => m.to_string(),
        (None, _) => text,
    }
}

/// Implements the `adapter` export for an [`HttpAdapter`] and exports it: the one line a
/// component needs besides its hooks.
#[macro_export]
macro_rules! export_http_adapter {
    ($adapter:ident) => {
        impl $crate::bindings::exports::lanes::provider::adapter::Guest for $adapter {
            fn info() -> $crate::bindings::lanes::provider::types::ProviderInfo {
                <$adapter as $crate::adapter::HttpAdapter>::info()
            }

            fn execute(
                request: $crate::bindings::lanes::provider::types::ChatRequest,
            ) -> ::core::result::Result<
                $crate::bindings::lanes::provider::types::ChatResponse,
                $crate::bindings::lanes::provider::types::ProviderError,
            > {
                $crate::adapter::execute::<$adapter>(request)
            }
        }
        $crate::bindings::export!($adapter with_types_in $crate::bindings);
    };
}
