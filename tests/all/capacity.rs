//! A local OpenAI-style API with a true capacity: at most `capacity` calls at once and
//! `per_minute` a minute, answering 429 with `retry-after` beyond that. It can go down
//! (503) and come back, and refuse keys (401). Every call is logged with its time and answer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One call as the API answered it.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub at: Instant,
    pub status: u16,
}

/// What the API allows now; change it mid-run.
pub struct Capacity {
    pub capacity: AtomicUsize,
    /// Calls per window (a minute unless `window_ms` says otherwise); 0: no such limit.
    pub per_minute: AtomicUsize,
    /// The length of the rate window, in ms.
    pub window_ms: AtomicU64,
    /// Count refused calls against the rate window too, as some APIs do: a client that
    /// keeps knocking then keeps itself out.
    pub count_refused: AtomicBool,
    pub latency_ms: AtomicU64,
    /// The wait a 429 (or a 503 while down) asks for, in ms, as `retry-after-ms` and
    /// `retry-after` (whole seconds, rounded up); 0: none.
    pub retry_after_ms: AtomicU64,
    /// Say on each 429 that the request window is spent (`x-ratelimit-remaining-requests:
    /// 0`, as OpenAI does), rather than nothing of why.
    pub window_spent: AtomicBool,
    /// Answer 503 to everything.
    pub down: AtomicBool,
    /// When set, a call without `Authorization: Bearer <key>` gets 401.
    pub key: Mutex<Option<String>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    accepted: Mutex<VecDeque<Instant>>,
    log: Mutex<Vec<Hit>>,
}

pub struct CapacityMock {
    pub addr: SocketAddr,
    pub state: Arc<Capacity>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CapacityMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CapacityMock {
    pub async fn start(capacity: usize, latency_ms: u64) -> CapacityMock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Capacity {
            capacity: AtomicUsize::new(capacity),
            per_minute: AtomicUsize::new(0),
            window_ms: AtomicU64::new(60_000),
            count_refused: AtomicBool::new(false),
            latency_ms: AtomicU64::new(latency_ms),
            retry_after_ms: AtomicU64::new(1000),
            window_spent: AtomicBool::new(false),
            down: AtomicBool::new(false),
            key: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            accepted: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CapacityMock { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.log.lock().unwrap().clone()
    }

    /// Calls answered with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.hits().iter().filter(|h| h.status == status).count()
    }
}

fn reply(status: u16, retry_after: u64, window_spent: bool) -> hyper::Response<Full<Bytes>> {
    let body = if status == 200 {
        serde_json::json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    } else {
        serde_json::json!({"error": {"message": format!("status {status}"), "type": "t",
                                      "param": null, "code": null}})
    };
    let mut response = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if retry_after > 0 && (status == 429 || status == 503) {
        response = response
            .header("retry-after-ms", retry_after.to_string())
            .header("retry-after", retry_after.div_ceil(1000).to_string());
    }
    if window_spent && status == 429 {
        response = response.header("x-ratelimit-remaining-requests", "0");
    }
    response
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn answer(
    state: Arc<Capacity>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let log = |status: u16| state.log.lock().unwrap().push(Hit { at, status });
    let retry_after = state.retry_after_ms.load(Ordering::SeqCst);
    let key = state.key.lock().unwrap().clone();
    if let Some(key) = key {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if given != format!("Bearer {key}") {
            log(401);
            return Ok(reply(401, 0, false));
        }
    }
    if state.down.load(Ordering::SeqCst) {
        log(503);
        return Ok(reply(503, retry_after, false));
    }
    let window = Duration::from_millis(state.window_ms.load(Ordering::SeqCst));
    // Over the rate: how long until the window has room again.
    let over_rate = {
        let per_minute = state.per_minute.load(Ordering::SeqCst);
        let mut accepted = state.accepted.lock().unwrap();
        while accepted
            .front()
            .is_some_and(|t| at.duration_since(*t) > window)
        {
            accepted.pop_front();
        }
        (per_minute > 0 && accepted.len() >= per_minute).then(|| {
            let oldest = accepted.front().copied().unwrap_or(at);
            u64::try_from(window.saturating_sub(at.duration_since(oldest)).as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(1)
        })
    };
    let running = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    if over_rate.is_some() || running > state.capacity.load(Ordering::SeqCst) {
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if state.count_refused.load(Ordering::SeqCst) {
            state.accepted.lock().unwrap().push_back(at);
        }
        log(429);
        let wait = match over_rate {
            Some(until_room) if retry_after > 0 => until_room.max(1),
            _ => retry_after,
        };
        return Ok(reply(429, wait, state.window_spent.load(Ordering::SeqCst)));
    }
    state.accepted.lock().unwrap().push_back(at);
    state.max_in_flight.fetch_max(running, Ordering::SeqCst);
    log(200);
    tokio::time::sleep(Duration::from_millis(
        state.latency_ms.load(Ordering::SeqCst),
    ))
    .await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(reply(200, 0, false))
}
