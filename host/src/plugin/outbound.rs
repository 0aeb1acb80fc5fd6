//! Outbound HTTP for components (`wasi:http/outgoing-handler`): the host decides each request.
//!
//! - A request goes out only to a host the operator allowed for that provider. Anything else
//!   is denied (`HttpRequestDenied`), logged, and remembered, so that the execution's error
//!   names the host.
//! - Each provider has a request timeout, which covers the whole exchange (connect, response
//!   headers and the last byte of the body), and a cap on the response body.
//! - Every execution shares one pooled client, so keep-alive connections are reused.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The largest request body a guest may send.
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// The client every execution shares.
#[derive(Clone)]
pub struct SharedClient(Client<Connector, WasiBody>);

impl SharedClient {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        // A request's head and its body are separate writes: with Nagle's algorithm the
        // body waits for the server's delayed ACK of the head, 40 ms on Linux (measured
        // by `lanes plugins test`: 44 ms per call against a local server, 1.3 ms with it).
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        SharedClient(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        )
    }
}

impl Default for SharedClient {
    fn default() -> Self {
        Self::new()
    }
}

/// What one provider's guests may reach.
#[derive(Debug, Clone)]
pub struct OutboundRules {
    /// `host` or `host:port` entries; a bare host allows any port. An IPv6 address is
    /// written `[::1]:8080` or `[::1]` (or bare, `::1`, for any port).
    pub allowed_hosts: Arc<[String]>,
    pub request_timeout: Duration,
    /// The longest a response body may go without a byte (`[streams] idle_timeout_ms`).
    pub idle_timeout: Duration,
    pub max_response_bytes: usize,
    /// The `user-agent` sent when the component sets none: `lanes/VERSION (PROVIDER/VERSION)`
    /// or the operator's `[providers.NAME] user_agent`.
    pub user_agent: Option<http::HeaderValue>,
    /// A batch call's upload: the request body goes out as the guest writes it (chunked),
    /// up to this many bytes, instead of being read whole first (up to 32 MiB), so that a
    /// batch file of hundreds of megabytes sits whole neither in the guest nor here.
    pub stream_request_up_to: Option<u64>,
}

/// Sends `request` and hands back its response, its body under the provider's cap, the
/// request's deadline and the idle timeout.
async fn respond(
    client: Client<Connector, WasiBody>,
    request: http::Request<WasiBody>,
    rules: OutboundRules,
    deadline: tokio::time::Instant,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
        Err(_) => return Err(Error::HttpResponseTimeout),
        Ok(Err(e)) => {
            return Err(if e.is_connect() {
                Error::ConnectionRefused
            } else {
                Error::InternalError(Some(e.to_string()))
            });
        }
        Ok(Ok(response)) => response,
    };
    let cap = rules.max_response_bytes;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, cap)
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::HttpResponseBodySize(u64::try_from(cap).ok())
            } else {
                Error::InternalError(Some(e.to_string()))
            }
        })
        .boxed_unsync();
    let body = Deadline {
        body,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        idle_timeout: rules.idle_timeout,
        idle: Box::pin(tokio::time::sleep(rules.idle_timeout)),
    }
    .boxed_unsync();
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
    Ok((http::Response::from_parts(parts, body), io))
}

impl OutboundRules {
    /// Whether `host` (with `port`) may be reached.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = unbracket(host);
        self.allowed_hosts.iter().any(|entry| {
            let (h, p) = split_entry(entry);
            h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port)
        })
    }
}

/// An IPv6 address without its URL brackets.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// An allow-list entry as its host and, when it names one, its port.
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        return match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(port)) => (host, Some(port)),
                _ => (entry, None),
            },
            None => (entry, None),
        };
    }
    // A bare IPv6 address has several colons and no port.
    if entry.matches(':').count() > 1 {
        return (entry, None);
    }
    match entry.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
        Some((host, Ok(port))) => (host, Some(port)),
        _ => (entry, None),
    }
}

/// The hooks of one guest: its provider's rules and the shared client. The first denied
/// host is kept for the execution's error.
pub struct Outbound {
    provider: Arc<str>,
    rules: OutboundRules,
    client: SharedClient,
    pub(crate) denied: Arc<Mutex<Option<String>>>,
}

impl Outbound {
    pub fn new(provider: Arc<str>, rules: OutboundRules, client: SharedClient) -> Self {
        Outbound {
            provider,
            rules,
            client,
            denied: Arc::default(),
        }
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.rules.allows(&host, port) {
            let target = format!("{host}:{port}");
            tracing::warn!(
                provider = &*self.provider,
                "outbound request to {target} denied: not in the provider's allowed hosts {:?}",
                self.rules.allowed_hosts
            );
            if let Ok(mut denied) = self.denied.lock() {
                denied.get_or_insert(target);
            }
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let mut request = request;
        if let Some(agent) = &self.rules.user_agent {
            request
                .headers_mut()
                .entry(http::header::USER_AGENT)
                .or_insert_with(|| agent.clone());
        }
        let client = self.client.0.clone();
        let rules = self.rules.clone();
        Box::new(async move {
            let deadline = tokio::time::Instant::now() + rules.request_timeout;
            // The body is read whole before the connection is made. A guest then never
            // sees its body write fail because the connection did (ComponentizeJS's engine
            // traps on that instead of rejecting the fetch), and the request goes out with
            // a content-length even when the guest streamed it.
            let (mut parts, body) = request.into_parts();
            if let Some(max) = rules.stream_request_up_to {
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                let body = http_body_util::Limited::new(body, max)
                    .map_err(move |e| {
                        if e.is::<http_body_util::LengthLimitError>() {
                            Error::HttpRequestBodySize(u64::try_from(max).ok())
                        } else {
                            match e.downcast::<Error>() {
                                Ok(code) => *code,
                                Err(e) => Error::InternalError(Some(e.to_string())),
                            }
                        }
                    })
                    .boxed_unsync();
                let request = http::Request::from_parts(parts, body);
                return respond(client, request, rules, deadline).await;
            }
            let body = match tokio::time::timeout_at(
                deadline,
                http_body_util::Limited::new(body, MAX_REQUEST_BYTES).collect(),
            )
            .await
            {
                Err(_) => return Err(Error::HttpResponseTimeout),
                Ok(Err(_)) => {
                    return Err(Error::HttpRequestBodySize(
                        u64::try_from(MAX_REQUEST_BYTES).ok(),
                    ));
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            };
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            );
            let body = http_body_util::Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync();
            let request = http::Request::from_parts(parts, body);
            respond(client, request, rules, deadline).await
        })
    }
}

/// A response body that fails with `HttpResponseTimeout` once the request's deadline has
/// passed, or once it has gone `idle_timeout` without a byte: a server that sends the
/// headers (or half a stream) and then stalls must not hold the guest until the sandbox's
/// wall clock ends the whole execution.
struct Deadline {
    body: WasiBody,
    deadline: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(_) => {
                let next = tokio::time::Instant::now() + self.idle_timeout;
                self.idle.as_mut().reset(next);
            }
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_host_and_optional_port() {
        let rules = OutboundRules {
            allowed_hosts: Arc::from(vec![
                "api.example.com".to_string(),
                "127.0.0.1:8080".to_string(),
            ]),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_response_bytes: 1,
            user_agent: None,
            stream_request_up_to: None,
        };
        assert!(rules.allows("api.example.com", 443));
        assert!(rules.allows("API.example.com", 80));
        assert!(rules.allows("127.0.0.1", 8080));
        assert!(!rules.allows("127.0.0.1", 8081));
        assert!(!rules.allows("evil.example.com", 443));
        assert!(!rules.allows("api.example.com.evil", 443));
    }

    #[test]
    fn ipv6_hosts_match_with_or_without_brackets_and_ports() {
        let default = crate::config::base_url_authority("http://[::1]:8080/v1").unwrap();
        let rules = OutboundRules {
            allowed_hosts: Arc::from(vec![
                default,
                "[fd00::7]".to_string(),
                "2001:db8::1".to_string(),
            ]),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_response_bytes: 1,
            user_agent: None,
            stream_request_up_to: None,
        };
        // The default entry of a base_url allows that URL's own host and port.
        assert!(rules.allows("[::1]", 8080));
        assert!(rules.allows("::1", 8080));
        assert!(!rules.allows("[::1]", 8081));
        assert!(rules.allows("[fd00::7]", 443));
        assert!(rules.allows("2001:DB8::1", 80));
        assert!(!rules.allows("[::2]", 8080));
        assert!(!rules.allows("1", 8080), "no stray match on the last group");
    }
}
