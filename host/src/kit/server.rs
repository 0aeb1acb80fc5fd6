//! The scripted HTTP server of `lanes plugins test`: it answers every request with the
//! reply of the case being run and records what it received.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode};

/// What the server answers, until the next case sets another.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The success reply for the API the request's path names (see
    /// [`super::conformance::known_reply`]), or the author's own.
    Success(Option<Arc<super::conformance::SuccessReply>>),
    /// An error status with a JSON error body and extra headers.
    Error {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// 200 with this JSON body.
    Json(serde_json::Value),
    /// 200 with the API's streamed answer to the request (see
    /// [`super::features::Api::stream_reply`]), sent a piece at a time.
    Stream(super::features::Api),
    /// 200 and the start of a JSON body, then nothing more.
    Stall,
    /// 200 with an HTML page.
    NotJson,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body came with `transfer-encoding: chunked` rather than a length.
    pub chunked: bool,
}

#[derive(Debug)]
struct Script {
    reply: Reply,
    seen: Vec<Seen>,
    /// The API key the suite gave the component: an error body's `{sent_key}` echoes it
    /// when the request carried it, as OpenAI's "Incorrect API key provided" does.
    canary: String,
}

/// What stands in an error body for the key the request carried.
pub const SENT_KEY: &str = "{sent_key}";

/// A running scripted server on 127.0.0.1.
#[derive(Clone)]
pub struct Scripted {
    script: Arc<Mutex<Script>>,
    pub addr: std::net::SocketAddr,
}

impl Scripted {
    /// Binds an ephemeral port and serves until the runtime ends.
    pub async fn start(canary: String) -> std::io::Result<Scripted> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script {
            reply: Reply::Success(None),
            seen: Vec::new(),
            canary,
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Scripted { script, addr })
    }

    /// The base URL the component is pointed at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the reply for the requests that follow and forgets what was seen.
    pub fn set(&self, reply: Reply) {
        let mut script = self.script.lock().unwrap_or_else(|p| p.into_inner());
        script.reply = reply;
        script.seen.clear();
    }

    /// The requests received since the last [`Scripted::set`].
    pub fn seen(&self) -> Vec<Seen> {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone()
    }
}

async fn answer(State(script): State<Arc<Mutex<Script>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let chunked = parts
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let request_body = body.clone();
    let seen = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        host: parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body,
        chunked,
    };
    let (reply, sent_key) = {
        let mut script = script.lock().unwrap_or_else(|p| p.into_inner());
        let carried = seen.headers.iter().any(|(_, v)| v.contains(&script.canary));
        let sent_key = if carried {
            script.canary.clone()
        } else {
            "(none)".to_string()
        };
        script.seen.push(seen);
        (script.reply.clone(), sent_key)
    };
    let json = |status: u16, body: String| {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    match reply {
        Reply::Success(own) => {
            let reply = own.or_else(|| super::conformance::known_reply(&path).map(Arc::new));
            match reply {
                Some(reply) => json(reply.status, reply.body.to_string()),
                None => json(
                    404,
                    format!(
                        r#"{{"error":{{"message":"lanes plugins test knows no reply for {path}: pass --reply FILE"}}}}"#
                    ),
                ),
            }
        }
        Reply::Error {
            status,
            headers,
            body,
        } => {
            let mut response = json(status, body.replace(SENT_KEY, &sent_key));
            for (name, value) in headers {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Reply::Json(body) => json(200, body.to_string()),
        Reply::Stream(api) => {
            let request = serde_json::from_slice(&request_body).unwrap_or_default();
            let (content_type, pieces) = api.stream_reply(&request);
            let pieces = futures_util::stream::iter(
                pieces
                    .into_iter()
                    .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))),
            );
            let mut response = Response::new(Body::from_stream(pieces));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            response
        }
        Reply::Stall => {
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"model\": \"conf"))
            });
            let never = futures_util::stream::pending();
            let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
                first, never,
            )));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Reply::NotJson => {
            let mut response = Response::new(Body::from(
                "<html><body><h1>Welcome to nginx!</h1></body></html>",
            ));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/html"),
            );
            response
        }
    }
}
