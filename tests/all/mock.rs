//! A local HTTP server on 127.0.0.1 that plays an LLM API: it records every request exactly
//! (method, path, headers, JSON body) and answers from a script of canned replies, whole or
//! (streams) piece by piece with pauses between the pieces.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Accept the request and never answer.
    pub hang: bool,
    /// Send the headers and the body up to this many bytes, then stall.
    pub stall_after: Option<usize>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            hang: false,
            stall_after: None,
        }
    }

    /// Sends the status, the headers and the first `bytes` of the body, then stalls.
    pub fn stall_after(mut self, bytes: usize) -> Reply {
        self.stall_after = Some(bytes);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn hang() -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
            hang: true,
            stall_after: None,
        }
    }
}

/// A scripted reply sent in pieces as a streaming server sends them: the status and the
/// headers, the first piece, then each next piece after a pause (chunked transfer encoding).
#[derive(Debug, Clone)]
pub struct Chunked {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub pieces: Vec<Bytes>,
    pub gap: Duration,
}

impl Chunked {
    /// `body` (with content type `content_type`) cut into `pieces` pieces of about equal
    /// size, wherever they fall: inside events, lines and UTF-8 characters.
    pub fn cut(content_type: &str, body: &str, pieces: usize, gap: Duration) -> Chunked {
        let bytes = Bytes::from(body.to_string());
        let n = pieces.clamp(1, bytes.len().max(1));
        let at = |i: usize| i * bytes.len() / n;
        Chunked {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            pieces: (0..n).map(|i| bytes.slice(at(i)..at(i + 1))).collect(),
            gap,
        }
    }
}

/// One entry of the script.
enum Scripted {
    Whole(Reply),
    Chunked(Chunked),
}

/// What decides a reply when the script is empty, from the request.
pub type Fallback = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Scripted>>,
    fallback: Mutex<Option<Fallback>>,
    connections: AtomicUsize,
}

/// The server; it stops when dropped.
pub struct MockApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockApi {
    pub async fn start() -> MockApi {
        Self::start_on("127.0.0.1:0").await
    }

    /// A mock listening on `addr`, such as `[::1]:0`.
    pub async fn start_on(addr: &str) -> MockApi {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            requests: Mutex::default(),
            script: Mutex::default(),
            fallback: Mutex::default(),
            connections: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockApi { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (or `http://[::1]:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues replies, answered in order.
    pub fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        let mut script = self.state.script.lock().unwrap();
        script.extend(replies.into_iter().map(Scripted::Whole));
    }

    /// Queues replies sent piece by piece, answered in order (after, and before, those of
    /// [`MockApi::reply`], in the order queued).
    pub fn reply_chunked(&self, replies: impl IntoIterator<Item = Chunked>) {
        let mut script = self.state.script.lock().unwrap();
        script.extend(replies.into_iter().map(Scripted::Chunked));
    }

    /// Answers with `f` once the script is empty.
    pub fn fallback(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.state.fallback.lock().unwrap() = Some(Arc::new(f));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn handle(
    state: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    let recorded = Recorded {
        method,
        path,
        headers,
        body,
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let scripted = state.script.lock().unwrap().pop_front();
    let reply = match scripted {
        Some(Scripted::Whole(reply)) => reply,
        Some(Scripted::Chunked(chunked)) => {
            let mut response = hyper::Response::builder().status(chunked.status);
            for (name, value) in &chunked.headers {
                response = response.header(name, value);
            }
            let body = Paced {
                pieces: chunked.pieces.into(),
                gap: chunked.gap,
                pause: None,
            };
            return Ok(response.body(body.boxed()).unwrap());
        }
        None => match state.fallback.lock().unwrap().clone() {
            Some(f) => f(&recorded),
            None => Reply::json(500, serde_json::json!({"error": "mock: no reply scripted"})),
        },
    };
    if reply.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut response = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = match reply.stall_after {
        Some(n) => {
            let head = Bytes::from(reply.body).slice(..n);
            Stalling(Some(head)).boxed()
        }
        None => Full::new(Bytes::from(reply.body)).boxed(),
    };
    Ok(response.body(body).unwrap())
}

/// A body that yields one chunk and then never another.
struct Stalling(Option<Bytes>);

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Pending,
        }
    }
}

/// A body that yields its pieces one by one, pausing `gap` before each after the first.
struct Paced {
    pieces: VecDeque<Bytes>,
    gap: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let Some(piece) = self.pieces.pop_front() else {
            return Poll::Ready(None);
        };
        if !self.pieces.is_empty() {
            self.pause = Some(Box::pin(tokio::time::sleep(self.gap)));
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }
}
