//! A local HTTP server on 127.0.0.1 that plays both providers' batch APIs, as their wire
//! formats say (`shared/notes/wire-formats-0.2.md`, section 5):
//!
//! - OpenAI: `POST /v1/files` (multipart upload of a JSONL file), `GET|DELETE /v1/files/{id}`,
//!   `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches[?limit&after]`,
//!   `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.
//! - Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches[?limit&after_id&before_id]`,
//!   `GET|DELETE /v1/messages/batches/{id}`, `POST /v1/messages/batches/{id}/cancel`,
//!   `GET /v1/messages/batches/{id}/results`.
//!
//! Uploads are read as streams (they may be chunked and hundreds of MB) and only a compact
//! state is kept per request: its custom id, model, the last user message's text (its first
//! [`ECHO_CAP`] bytes), `max_tokens` and token counts. Result files are generated line by line
//! while they are sent, in chunks of about [`PAGE`] bytes.
//!
//! Every request succeeds with the text `"echo: <last user text>"` (cut to `max_tokens` words,
//! then with finish reason `length` / stop reason `max_tokens`); tokens are words: the prompt's
//! are the (ASCII-)whitespace-separated words of every message (and Anthropic's `system`), the
//! completion's those of the answer. A request errors (400 in OpenAI's error file, `errored`
//! for Anthropic) when [`BatchApi::fail_when`] says so of its last user text, or when its
//! body lacks what the API needs (`model`, `messages`, `max_tokens` for Anthropic).
//!
//! Time: a batch runs for [`BatchApi::set_duration`] from its creation, read at each look (a
//! poll, a list, [`BatchApi::batches`]). OpenAI: `validating` for the first tenth of it,
//! `in_progress` until nine tenths (its requests finishing one after another, in file order),
//! `finalizing`, then `completed`. Anthropic: `in_progress`, requests finishing in order, then
//! `ended`. A duration of zero ends a batch at the first look after its creation (the create
//! answer itself always says `validating` / `in_progress`, as the real APIs do).
//!
//! This file stands alone: `host/benches/throughput.rs` includes it by path too.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The bytes of the last user message kept per request, to echo.
pub const ECHO_CAP: usize = 1024;
/// About this many bytes of result lines go in one chunk of a download.
pub const PAGE: usize = 64 * 1024;
/// The real limits: requests and bytes per OpenAI input file, per Anthropic batch.
pub const OPENAI_LIMITS: (usize, u64) = (50_000, 200 * 1024 * 1024);
pub const ANTHROPIC_LIMITS: (usize, u64) = (100_000, 256 * 1024 * 1024);
/// The endpoints an OpenAI batch may name (only chat completions are answered as such).
const OPENAI_ENDPOINTS: &[&str] = &[
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];
/// At most this many entries in an OpenAI batch's `errors.data`.
const MAX_ERRORS: usize = 1000;
const DAY: f64 = 86_400.0;

/// Which API a batch or an upload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

/// A batch as the server sees it now.
#[derive(Debug, Clone)]
pub struct BatchSummary {
    pub id: String,
    pub provider: Provider,
    /// The provider's word: `validating`, `in_progress`, `finalizing`, `completed`, `failed`,
    /// `expired`, `cancelling`, `cancelled` (OpenAI); `in_progress`, `canceling`, `ended`.
    pub status: String,
    /// Requests in the batch.
    pub items: usize,
    /// Requests processed so far (with a result, success or error).
    pub done: usize,
    /// OpenAI's `metadata` (`null` for Anthropic).
    pub metadata: Value,
    pub cancel_requested: bool,
    /// OpenAI's input file.
    pub input_file_id: Option<String>,
}

/// One request as the server answered it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// The path with its query, if any.
    pub path: String,
    pub status: u16,
}

/// One upload (an OpenAI file, or an Anthropic batch's body) as the server read it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub provider: Provider,
    /// The file or batch it made; `None` when it was refused.
    pub id: Option<String>,
    /// Bytes of the request body.
    pub bytes: u64,
    /// It came with `transfer-encoding: chunked`.
    pub chunked: bool,
    /// Requests (non-blank lines, or elements of `requests`) read from it.
    pub items: usize,
}

type FailWhen = Arc<dyn Fn(&str) -> bool + Send + Sync>;
type Resp = Response<BoxBody<Bytes, Infallible>>;

#[derive(Clone)]
struct Settings {
    key: Option<String>,
    duration: Duration,
    cancel_duration: Duration,
    fail_when: Option<FailWhen>,
    limits: Option<(usize, u64)>,
    rate_limited: Option<Duration>,
    /// Only the batch endpoints answer 429 (the live calls go through).
    batch_only: bool,
}

struct State {
    base: String,
    salt: u32,
    next: AtomicU64,
    settings: Mutex<Settings>,
    down: AtomicBool,
    dropping: AtomicBool,
    files: Mutex<HashMap<String, Arc<InputFile>>>,
    deleted_files: Mutex<HashSet<String>>,
    batches: Mutex<Vec<Batch>>,
    seen: Mutex<HashMap<String, usize>>,
    created: AtomicUsize,
    log: Mutex<Vec<Logged>>,
    uploads: Mutex<Vec<Upload>>,
}

/// The server; it stops (with every connection) when dropped.
pub struct BatchApi {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BatchApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BatchApi {
    /// A server on a free port of 127.0.0.1: no key, batches that end at the first look,
    /// no failures, the real limits.
    pub async fn start() -> BatchApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            salt: rand::random(),
            next: AtomicU64::new(1),
            settings: Mutex::new(Settings {
                key: None,
                duration: Duration::ZERO,
                cancel_duration: Duration::ZERO,
                fail_when: None,
                limits: None,
                rate_limited: None,
                batch_only: false,
            }),
            down: AtomicBool::new(false),
            dropping: AtomicBool::new(false),
            files: Mutex::default(),
            deleted_files: Mutex::default(),
            batches: Mutex::default(),
            seen: Mutex::default(),
            created: AtomicUsize::new(0),
            log: Mutex::default(),
            uploads: Mutex::default(),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task when the server is: every connection ends with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                if shared.dropping.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let state = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        BatchApi { state, task }
    }

    /// `http://127.0.0.1:PORT`, the base of both APIs (paths start with `/v1`).
    pub fn url(&self) -> String {
        self.state.base.clone()
    }

    /// Requires the key (`authorization: Bearer` for OpenAI, `x-api-key` for Anthropic) on
    /// every request; 401 without it. `None`: any key or none.
    pub fn set_key(&self, key: Option<&str>) {
        self.settings().key = key.map(str::to_string);
    }

    /// How long a batch runs from its creation until it ends (read at each look, for every
    /// batch not ended yet). Zero (the default): it ends at the first look.
    pub fn set_duration(&self, duration: Duration) {
        self.settings().duration = duration;
    }

    /// How long a cancelled batch stays `cancelling`/`canceling` before it ends. Zero (the
    /// default): the cancel answer says `cancelling`, the next look ended.
    pub fn set_cancel_duration(&self, duration: Duration) {
        self.settings().cancel_duration = duration;
    }

    /// Requests whose last user text `f` accepts error (in batches created from now on).
    pub fn fail_when(&self, f: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.settings().fail_when = Some(Arc::new(f));
    }

    /// Limits both APIs to `max_items` requests and `max_bytes` bytes per OpenAI input file
    /// (its JSONL) and per Anthropic batch body, instead of [`OPENAI_LIMITS`] and
    /// [`ANTHROPIC_LIMITS`].
    pub fn set_limits(&self, max_items: usize, max_bytes: u64) {
        self.settings().limits = Some((max_items, max_bytes));
    }

    /// While `true`, every request gets 503 (with the provider's error body).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// While `true`, every connection is closed without an answer: new ones at once, open
    /// ones at their next request.
    pub fn set_dropping(&self, dropping: bool) {
        self.state.dropping.store(dropping, Ordering::SeqCst);
    }

    /// `Some(wait)`: every request gets 429 with `retry-after` (whole seconds, rounded up)
    /// and `retry-after-ms`; `None`: no more.
    pub fn set_rate_limited(&self, retry_after: Option<Duration>) {
        let mut settings = self.settings();
        settings.rate_limited = retry_after;
        settings.batch_only = false;
    }

    /// As [`BatchApi::set_rate_limited`], for the batch endpoints only: the live calls
    /// (`/v1/chat/completions`, `/v1/messages`) are answered as usual.
    pub fn set_batch_rate_limited(&self, retry_after: Option<Duration>) {
        let mut settings = self.settings();
        settings.rate_limited = retry_after;
        settings.batch_only = true;
    }

    /// Marks the first `done` requests of a running batch processed (results kept through a
    /// cancel or an expiry); never undoes any. False if there is no such running batch.
    pub fn set_done(&self, id: &str, done: usize) -> bool {
        let settings = self.settings().clone();
        let mut batches = self.state.batches.lock().unwrap();
        let Some(batch) = batches.iter_mut().find(|b| b.id == id) else {
            return false;
        };
        batch.advance(&settings);
        if batch.work.end.is_some() {
            return false;
        }
        batch.work.done = batch.work.done.max(done.min(batch.work.items.len()));
        true
    }

    /// Expires a running batch now, the last `unfinished` fraction (0 to 1) of its requests
    /// unprocessed (`batch_expired` in OpenAI's error file, `expired` for Anthropic), the
    /// others with results. False if there is no such running batch.
    pub fn expire_batch(&self, id: &str, unfinished: f64) -> bool {
        let settings = self.settings().clone();
        let mut batches = self.state.batches.lock().unwrap();
        batches
            .iter_mut()
            .find(|b| b.id == id)
            .is_some_and(|b| b.expire(&settings, unfinished))
    }

    /// [`BatchApi::expire_batch`] for every running batch; returns how many expired.
    pub fn expire_unfinished(&self, unfinished: f64) -> usize {
        let settings = self.settings().clone();
        let mut batches = self.state.batches.lock().unwrap();
        let mut expired = 0;
        for batch in batches.iter_mut() {
            if batch.expire(&settings, unfinished) {
                expired += 1;
            }
        }
        expired
    }

    /// Every batch created, oldest first, as of now.
    pub fn batches(&self) -> Vec<BatchSummary> {
        let settings = self.settings().clone();
        let mut batches = self.state.batches.lock().unwrap();
        batches
            .iter_mut()
            .map(|b| {
                b.advance(&settings);
                BatchSummary {
                    id: b.id.clone(),
                    provider: b.provider,
                    status: b.status().to_string(),
                    items: b.work.items.len(),
                    done: b.work.done,
                    metadata: b.metadata.clone(),
                    cancel_requested: b.cancel.is_some(),
                    input_file_id: b.input_file_id.clone(),
                }
            })
            .collect()
    }

    /// Batches created (both APIs; OpenAI's that then failed validation too).
    pub fn created(&self) -> usize {
        self.state.created.load(Ordering::SeqCst)
    }

    /// In how many created batches `custom_id` was a request (both APIs; not counting
    /// OpenAI batches that failed validation, whose requests never run).
    pub fn item_count_seen(&self, custom_id: &str) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.get(custom_id).copied().unwrap_or(0)
    }

    /// The sends of a custom id after its first (in later batches, counted as in
    /// [`BatchApi::item_count_seen`]), summed over all custom ids: 0 when nothing was sent
    /// twice.
    pub fn items_sent_twice(&self) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// Every request so far, in the order answered.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Every upload so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.uploads.lock().unwrap().clone()
    }

    /// The largest upload body so far, in bytes.
    pub fn peak_upload_bytes(&self) -> u64 {
        self.uploads().iter().map(|u| u.bytes).max().unwrap_or(0)
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.state.settings.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Per-request state and results.

/// What is kept of one request.
struct Item {
    custom_id: Box<str>,
    model: Box<str>,
    /// The last user message's text, its first [`ECHO_CAP`] bytes.
    text: Box<str>,
    max_tokens: Option<u32>,
    prompt_tokens: u32,
    completion_tokens: u32,
    /// Its line in the OpenAI file (1-based), or its index in Anthropic's `requests`.
    line: u32,
    /// OpenAI: its `url`, an index into the file's urls (`u8::MAX`: one of too many).
    url: u8,
    /// The request itself is invalid: it errors with this message.
    error: Option<Box<str>>,
}

impl Item {
    #[allow(clippy::too_many_arguments)]
    fn new(
        custom_id: &str,
        model: Option<&str>,
        text: &str,
        max_tokens: Option<u32>,
        prompt_tokens: u32,
        line: u32,
        url: u8,
        error: Option<String>,
    ) -> Item {
        let mut item = Item {
            custom_id: custom_id.into(),
            model: model.unwrap_or("").into(),
            text: text[..text.floor_char_boundary(ECHO_CAP)].into(),
            max_tokens,
            prompt_tokens,
            completion_tokens: 0,
            line,
            url,
            error: error.map(String::into_boxed_str),
        };
        // "echo:" and the text's words, as `reply` cuts them.
        let words = count_words(&item.text).saturating_add(1);
        item.completion_tokens = max_tokens.map_or(words, |max| words.min(max));
        item
    }

    /// The answer: its text, its tokens, and whether `max_tokens` cut it.
    fn reply(&self) -> (String, u32, bool) {
        let full = format!("echo: {}", self.text);
        let words = count_words(&full);
        match self.max_tokens {
            Some(max) if words > max => {
                let cut: Vec<&str> = full.split_whitespace().take(max as usize).collect();
                (cut.join(" "), max, true)
            }
            _ => (full, words, false),
        }
    }
}

/// Words separated by ASCII whitespace. (The hot loops of this file index bytes directly:
/// unoptimized, iterator adapters cost a function call or more per byte.)
fn count_words(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut words = 0u32;
    let mut in_word = false;
    let mut i = 0;
    while i < bytes.len() {
        let space = matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
        if !space && !in_word {
            words = words.saturating_add(1);
        }
        in_word = !space;
        i += 1;
    }
    words
}

/// A string written as a JSON string.
struct JsonStr<'a>(&'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        f.write_char('"')?;
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escaped = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => {
                    f.write_str(&s[start..i])?;
                    write!(f, "\\u{b:04x}")?;
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            f.write_str(&s[start..i])?;
            f.write_str(escaped)?;
            start = i + 1;
        }
        f.write_str(&s[start..])?;
        f.write_char('"')
    }
}

// ---------------------------------------------------------------------------------------
// Reading requests. Everything in this file is built without optimizations (in the tests
// and in the benchmark), where serde_json's generic code builds `Value`s at some 20 MB/s:
// requests are instead checked and read by a small strict JSON reader that keeps only the
// fields the emulation needs, several times faster.

type Skimmed<T> = Result<T, String>;

/// A strict reader of one JSON text, asked field by field what to keep.
struct Skim<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

/// An integer field such as `max_tokens`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Int {
    #[default]
    Absent,
    Null,
    Value(u64),
    /// Not a non-negative integer.
    Bad,
}

/// What is read of a Chat Completions `body` or a Messages `params`.
#[derive(Default)]
struct Params {
    model: Option<String>,
    max_tokens: Int,
    max_completion_tokens: Int,
    /// `None`: absent, or not a list.
    messages: Option<Messages>,
    system_words: u32,
    stream: bool,
}

#[derive(Default)]
struct Messages {
    count: usize,
    words: u32,
    last_user: String,
}

impl<'a> Skim<'a> {
    fn new(s: &'a [u8]) -> Skim<'a> {
        Skim { s, i: 0, depth: 0 }
    }

    fn err<T>(&self, what: &str) -> Skimmed<T> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn peek(&mut self) -> Option<u8> {
        let s = self.s;
        let mut i = self.i;
        while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        self.i = i;
        if i < s.len() { Some(s[i]) } else { None }
    }

    fn eat(&mut self, c: u8) -> Skimmed<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }

    /// Nothing but whitespace is left.
    fn end(&mut self) -> Skimmed<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.err("trailing characters"),
        }
    }

    fn enter(&mut self) -> Skimmed<()> {
        self.depth += 1;
        if self.depth > 128 {
            return self.err("nested too deeply");
        }
        Ok(())
    }

    /// An object: `field` reads (or skips) the value of each key.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Skimmed<()>,
    ) -> Skimmed<()> {
        self.enter()?;
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                field(self, key)?;
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return self.err("expected ',' or '}'"),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// An array: `element` reads (or skips) each element.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Skimmed<()>) -> Skimmed<()> {
        self.enter()?;
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                element(self)?;
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b']') => {
                        self.i += 1;
                        break;
                    }
                    _ => return self.err("expected ',' or ']'"),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Any value, checked and dropped.
    fn skip(&mut self) -> Skimmed<()> {
        match self.peek() {
            Some(b'"') => self.string_end().map(|_| ()),
            Some(b'{') => self.object(|sk, _| sk.skip()),
            Some(b'[') => self.array(|sk| sk.skip()),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            _ => self.err("expected a value"),
        }
    }

    fn literal(&mut self, word: &str) -> Skimmed<()> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> bool {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        self.i > start
    }

    fn number(&mut self) -> Skimmed<&'a str> {
        self.peek();
        let start = self.i;
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.digits() {
                return self.err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if !self.digits() {
                return self.err("invalid number");
            }
        }
        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())
    }

    fn hex4(&mut self) -> Skimmed<u32> {
        match self.s.get(self.i..self.i + 4) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => {
                self.i += 4;
                let h = std::str::from_utf8(h).map_err(|e| e.to_string())?;
                u32::from_str_radix(h, 16).map_err(|e| e.to_string())
            }
            _ => self.err("invalid \\u escape"),
        }
    }

    /// Checks a string and moves past it: its raw contents, and whether it has escapes.
    fn string_end(&mut self) -> Skimmed<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let s = self.s;
        let start = self.i;
        let mut escapes = false;
        loop {
            let mut i = self.i;
            while i < s.len() && s[i] != b'"' && s[i] != b'\\' && s[i] >= 0x20 {
                i += 1;
            }
            self.i = i;
            if i >= s.len() {
                return self.err("unterminated string");
            }
            self.i += 1;
            match s[i] {
                b'"' => return Ok((&s[start..i], escapes)),
                b'\\' => {
                    escapes = true;
                    match s.get(self.i) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            self.hex4()?;
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                _ => return self.err("control character in a string"),
            }
        }
    }

    fn string(&mut self) -> Skimmed<Cow<'a, str>> {
        let (raw, escapes) = self.string_end()?;
        let text = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
        if !escapes {
            return Ok(Cow::Borrowed(text));
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = Skim::new(raw);
        while let Some(&b) = rest.s.get(rest.i) {
            if b != b'\\' {
                let next = raw[rest.i..]
                    .iter()
                    .position(|b| *b == b'\\')
                    .map_or(raw.len(), |p| rest.i + p);
                out.push_str(&text[rest.i..next]);
                rest.i = next;
                continue;
            }
            let escape = raw[rest.i + 1];
            rest.i += 2;
            let c = match escape {
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let c = rest.hex4()?;
                    let pair = if (0xD800..0xDC00).contains(&c) && raw[rest.i..].starts_with(b"\\u")
                    {
                        rest.i += 2;
                        let low = rest.hex4()?;
                        (0xDC00..0xE000)
                            .contains(&low)
                            .then(|| 0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00))
                    } else {
                        Some(c)
                    };
                    pair.and_then(char::from_u32).unwrap_or('\u{FFFD}')
                }
                other => other as char,
            };
            out.push(c);
        }
        Ok(Cow::Owned(out))
    }

    /// A string value, or `None` (after skipping it) for any other value.
    fn opt_string(&mut self) -> Skimmed<Option<Cow<'a, str>>> {
        if self.peek() == Some(b'"') {
            self.string().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    fn int(&mut self) -> Skimmed<Int> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => Ok(self.number()?.parse().map_or(Int::Bad, Int::Value)),
            Some(b'n') => self.skip().map(|()| Int::Null),
            _ => self.skip().map(|()| Int::Bad),
        }
    }

    /// A message's `content` (or a `system`) as text: a string, or its parts' `text`.
    fn content(&mut self) -> Skimmed<String> {
        match self.peek() {
            Some(b'"') => Ok(self.string()?.into_owned()),
            Some(b'[') => {
                let mut parts = Vec::new();
                self.array(|sk| {
                    if sk.peek() != Some(b'{') {
                        return sk.skip();
                    }
                    sk.object(|sk, key| match &*key {
                        "text" => {
                            if let Some(text) = sk.opt_string()? {
                                parts.push(text);
                            }
                            Ok(())
                        }
                        _ => sk.skip(),
                    })
                })?;
                Ok(parts.join(" "))
            }
            _ => self.skip().map(|()| String::new()),
        }
    }

    fn messages(&mut self) -> Skimmed<Option<Messages>> {
        if self.peek() != Some(b'[') {
            return self.skip().map(|()| None);
        }
        let mut messages = Messages::default();
        self.array(|sk| {
            messages.count += 1;
            if sk.peek() != Some(b'{') {
                return sk.skip();
            }
            let mut user = false;
            let mut text = String::new();
            sk.object(|sk, key| {
                match &*key {
                    "role" => user = sk.opt_string()?.as_deref() == Some("user"),
                    "content" => text = sk.content()?,
                    _ => sk.skip()?,
                }
                Ok(())
            })?;
            messages.words = messages.words.saturating_add(count_words(&text));
            if user {
                messages.last_user = text;
            }
            Ok(())
        })?;
        Ok(Some(messages))
    }

    /// A Chat Completions `body` or a Messages `params`; `None` (skipped) if not an object.
    fn params(&mut self) -> Skimmed<Option<Params>> {
        if self.peek() != Some(b'{') {
            return self.skip().map(|()| None);
        }
        let mut params = Params::default();
        self.object(|sk, key| {
            match &*key {
                "model" => params.model = sk.opt_string()?.map(Cow::into_owned),
                "max_tokens" => params.max_tokens = sk.int()?,
                "max_completion_tokens" => params.max_completion_tokens = sk.int()?,
                "messages" => params.messages = sk.messages()?,
                "system" => params.system_words = count_words(&sk.content()?),
                "stream" => {
                    params.stream = sk.peek() == Some(b't');
                    sk.skip()?;
                }
                _ => sk.skip()?,
            }
            Ok(())
        })?;
        Ok(Some(params))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Failed,
    Expired,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Errored,
    Canceled,
    Expired,
    Pending,
}

/// A batch's requests and how far they got: what result files are generated from.
#[derive(Clone)]
struct Work {
    seq: u64,
    created: u64,
    items: Arc<Vec<Item>>,
    /// `fail_when` said so, per request.
    fail: Arc<Vec<bool>>,
    /// The first `done` requests are processed.
    done: usize,
    end: Option<End>,
}

#[derive(Default)]
struct Counts {
    succeeded: usize,
    errored: usize,
    canceled: usize,
    expired: usize,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Work {
    fn outcome(&self, i: usize) -> Outcome {
        if i < self.done {
            if self.items[i].error.is_some() || self.fail[i] {
                Outcome::Errored
            } else {
                Outcome::Succeeded
            }
        } else {
            match self.end {
                Some(End::Cancelled) => Outcome::Canceled,
                Some(End::Expired) => Outcome::Expired,
                _ => Outcome::Pending,
            }
        }
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (i, item) in self.items.iter().enumerate() {
            match self.outcome(i) {
                Outcome::Succeeded => {
                    counts.succeeded += 1;
                    counts.prompt_tokens += u64::from(item.prompt_tokens);
                    counts.completion_tokens += u64::from(item.completion_tokens);
                }
                Outcome::Errored => counts.errored += 1,
                Outcome::Canceled => counts.canceled += 1,
                Outcome::Expired => counts.expired += 1,
                Outcome::Pending => {}
            }
        }
        counts
    }

    /// Appends request `i`'s line of OpenAI's output file (`errors`: of its error file), if
    /// it has one there.
    fn openai_line(&self, i: usize, errors: bool, out: &mut String) {
        let item = &self.items[i];
        let (seq, cid) = (self.seq, JsonStr(&item.custom_id));
        let _ = match (self.outcome(i), errors) {
            (Outcome::Succeeded, false) => {
                let (content, completion, cut) = item.reply();
                writeln!(
                    out,
                    "{{\"id\":\"batch_req_{seq:08x}{i:08x}\",\"custom_id\":{cid},\"response\":{{\
                     \"status_code\":200,\"request_id\":\"req_{seq:08x}{i:08x}\",\"body\":{{\
                     \"id\":\"chatcmpl-{seq:08x}{i:08x}\",\"object\":\"chat.completion\",\
                     \"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\
                     \"role\":\"assistant\",\"content\":{},\"refusal\":null}},\"logprobs\":null,\
                     \"finish_reason\":\"{}\"}}],\"usage\":{{\"prompt_tokens\":{},\
                     \"completion_tokens\":{completion},\"total_tokens\":{}}}}}}},\"error\":null}}",
                    self.created,
                    JsonStr(&item.model),
                    JsonStr(&content),
                    if cut { "length" } else { "stop" },
                    item.prompt_tokens,
                    u64::from(item.prompt_tokens) + u64::from(completion),
                )
            }
            (Outcome::Errored, true) => writeln!(
                out,
                "{{\"id\":\"batch_req_{seq:08x}{i:08x}\",\"custom_id\":{cid},\"response\":{{\
                 \"status_code\":400,\"request_id\":\"req_{seq:08x}{i:08x}\",\"body\":{{\
                 \"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"param\":null,\
                 \"code\":null}}}}}},\"error\":null}}",
                JsonStr(item.error.as_deref().unwrap_or(FAILED)),
            ),
            (Outcome::Expired, true) => writeln!(
                out,
                "{{\"id\":\"batch_req_{seq:08x}{i:08x}\",\"custom_id\":{cid},\"response\":null,\
                 \"error\":{{\"code\":\"batch_expired\",\"message\":\"This request could not be \
                 executed before the completion window expired.\"}}}}",
            ),
            (Outcome::Canceled, true) => writeln!(
                out,
                "{{\"id\":\"batch_req_{seq:08x}{i:08x}\",\"custom_id\":{cid},\"response\":null,\
                 \"error\":{{\"code\":\"batch_cancelled\",\"message\":\"This request was not \
                 executed because the batch was cancelled.\"}}}}",
            ),
            _ => Ok(()),
        };
    }

    /// Appends request `i`'s line of Anthropic's results, if it has one.
    fn anthropic_line(&self, i: usize, out: &mut String) {
        let item = &self.items[i];
        let cid = JsonStr(&item.custom_id);
        let _ = match self.outcome(i) {
            Outcome::Succeeded => {
                let (text, completion, cut) = item.reply();
                writeln!(
                    out,
                    "{{\"custom_id\":{cid},\"result\":{{\"type\":\"succeeded\",\"message\":{{\
                     \"id\":\"msg_{:08x}{i:08x}\",\"type\":\"message\",\"role\":\"assistant\",\
                     \"model\":{},\"content\":[{{\"type\":\"text\",\"text\":{}}}],\
                     \"stop_reason\":\"{}\",\"stop_sequence\":null,\"usage\":{{\
                     \"input_tokens\":{},\"output_tokens\":{completion},\
                     \"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\
                     \"service_tier\":\"batch\"}}}}}}}}",
                    self.seq,
                    JsonStr(&item.model),
                    JsonStr(&text),
                    if cut { "max_tokens" } else { "end_turn" },
                    item.prompt_tokens,
                )
            }
            Outcome::Errored => writeln!(
                out,
                "{{\"custom_id\":{cid},\"result\":{{\"type\":\"errored\",\"error\":{{\
                 \"type\":\"error\",\"error\":{{\"type\":\"invalid_request_error\",\
                 \"message\":{}}}}}}}}}",
                JsonStr(item.error.as_deref().unwrap_or(FAILED)),
            ),
            Outcome::Canceled => writeln!(
                out,
                "{{\"custom_id\":{cid},\"result\":{{\"type\":\"canceled\"}}}}"
            ),
            Outcome::Expired => writeln!(
                out,
                "{{\"custom_id\":{cid},\"result\":{{\"type\":\"expired\"}}}}"
            ),
            Outcome::Pending => Ok(()),
        };
    }
}

/// The error of a request that [`BatchApi::fail_when`] fails.
const FAILED: &str = "This request failed (the emulator was told to fail it).";

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineKind {
    OpenAiOutput,
    OpenAiErrors,
    Anthropic,
}

/// A result file, generated as it is sent: a chunk of about [`PAGE`] bytes per frame.
struct Lines {
    work: Work,
    kind: LineKind,
    next: usize,
}

impl Lines {
    fn line(&self, i: usize, out: &mut String) {
        match self.kind {
            LineKind::OpenAiOutput => self.work.openai_line(i, false, out),
            LineKind::OpenAiErrors => self.work.openai_line(i, true, out),
            LineKind::Anthropic => self.work.anthropic_line(i, out),
        }
    }

    fn total_bytes(&self) -> u64 {
        let mut line = String::new();
        let mut total = 0;
        for i in 0..self.work.items.len() {
            line.clear();
            self.line(i, &mut line);
            total += line.len() as u64;
        }
        total
    }
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let mut chunk = String::with_capacity(PAGE + 4096);
        while this.next < this.work.items.len() && chunk.len() < PAGE {
            this.line(this.next, &mut chunk);
            this.next += 1;
        }
        if chunk.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Batches.

struct Batch {
    id: String,
    provider: Provider,
    work: Work,
    input_file_id: Option<String>,
    endpoint: String,
    metadata: Value,
    /// OpenAI's validation errors: the batch fails at its first look.
    invalid: Vec<Value>,
    created: Instant,
    created_unix: f64,
    in_progress_at: Option<f64>,
    finalizing_at: Option<f64>,
    cancel: Option<(Instant, f64)>,
    ended_at: Option<f64>,
    /// The ids its output and error files get when it ends (OpenAI).
    file_ids: (String, String),
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    deleted: bool,
}

impl Batch {
    /// Moves the batch on to where the time since its creation puts it.
    fn advance(&mut self, settings: &Settings) {
        if self.work.end.is_some() {
            return;
        }
        let now = Instant::now();
        if !self.invalid.is_empty() {
            self.finish(End::Failed, unix_now());
            return;
        }
        if let Some((at, at_unix)) = self.cancel {
            if now.duration_since(at) >= settings.cancel_duration {
                self.finish(
                    End::Cancelled,
                    at_unix + settings.cancel_duration.as_secs_f64(),
                );
            }
            return;
        }
        let elapsed = now.duration_since(self.created).as_secs_f64();
        let d = settings.duration.as_secs_f64();
        let created = self.created_unix;
        let stamp = |fraction: f64| created + (fraction * d).min(elapsed);
        let n = self.work.items.len();
        let (start, span) = match self.provider {
            Provider::OpenAi => (0.1, 0.8),
            Provider::Anthropic => (0.0, 1.0),
        };
        if self.provider == Provider::OpenAi && elapsed >= start * d {
            self.in_progress_at.get_or_insert(stamp(start));
        }
        let progress = if d <= 0.0 {
            1.0
        } else {
            ((elapsed - start * d) / (span * d)).clamp(0.0, 1.0)
        };
        let done = ((progress * n as f64).floor() as usize).min(n);
        self.work.done = self.work.done.max(done);
        if self.provider == Provider::OpenAi && elapsed >= 0.9 * d {
            self.finalizing_at.get_or_insert(stamp(0.9));
        }
        if elapsed >= d {
            self.work.done = n;
            self.finish(End::Completed, stamp(1.0));
        }
    }

    fn finish(&mut self, end: End, at: f64) {
        self.work.end = Some(end);
        self.ended_at = Some(at);
        if self.provider == Provider::OpenAi && end != End::Failed {
            let counts = self.work.counts();
            if counts.succeeded > 0 {
                self.output_file_id = Some(self.file_ids.0.clone());
            }
            if counts.errored + counts.canceled + counts.expired > 0 {
                self.error_file_id = Some(self.file_ids.1.clone());
            }
        }
    }

    fn expire(&mut self, settings: &Settings, unfinished: f64) -> bool {
        self.advance(settings);
        if self.work.end.is_some() {
            return false;
        }
        let n = self.work.items.len();
        let left = ((unfinished.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
        self.work.done = n - left;
        self.finish(End::Expired, unix_now());
        true
    }

    fn status(&self) -> &'static str {
        match (self.provider, self.work.end) {
            (Provider::OpenAi, Some(End::Completed)) => "completed",
            (Provider::OpenAi, Some(End::Failed)) => "failed",
            (Provider::OpenAi, Some(End::Expired)) => "expired",
            (Provider::OpenAi, Some(End::Cancelled)) => "cancelled",
            (Provider::OpenAi, None) if self.cancel.is_some() => "cancelling",
            (Provider::OpenAi, None) if self.finalizing_at.is_some() => "finalizing",
            (Provider::OpenAi, None) if self.in_progress_at.is_some() => "in_progress",
            (Provider::OpenAi, None) => "validating",
            (Provider::Anthropic, Some(_)) => "ended",
            (Provider::Anthropic, None) if self.cancel.is_some() => "canceling",
            (Provider::Anthropic, None) => "in_progress",
        }
    }

    fn to_json(&self, base: &str) -> Value {
        match self.provider {
            Provider::OpenAi => self.openai_json(),
            Provider::Anthropic => self.anthropic_json(base),
        }
    }

    fn openai_json(&self) -> Value {
        let counts = self.work.counts();
        let secs = |t: f64| t.max(0.0) as u64;
        let at = |end: End| {
            (self.work.end == Some(end))
                .then(|| self.ended_at.map(secs))
                .flatten()
        };
        let unvalidated = self.work.end == Some(End::Failed)
            || (self.work.end.is_none() && self.in_progress_at.is_none());
        let (total, completed, failed) = if unvalidated {
            (0, 0, 0)
        } else {
            (self.work.items.len(), counts.succeeded, counts.errored)
        };
        let errors = if self.work.end == Some(End::Failed) {
            json!({"object": "list", "data": &self.invalid})
        } else {
            Value::Null
        };
        json!({
            "id": &self.id,
            "object": "batch",
            "endpoint": &self.endpoint,
            "errors": errors,
            "input_file_id": &self.input_file_id,
            "completion_window": "24h",
            "status": self.status(),
            "output_file_id": &self.output_file_id,
            "error_file_id": &self.error_file_id,
            "created_at": secs(self.created_unix),
            "in_progress_at": self.in_progress_at.map(secs),
            "expires_at": secs(self.created_unix + DAY),
            "finalizing_at": self.finalizing_at.map(secs),
            "completed_at": at(End::Completed),
            "failed_at": at(End::Failed),
            "expired_at": at(End::Expired),
            "cancelling_at": self.cancel.map(|(_, t)| secs(t)),
            "cancelled_at": at(End::Cancelled),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {
                "input_tokens": counts.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": counts.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": counts.prompt_tokens + counts.completion_tokens,
            },
            "metadata": &self.metadata,
        })
    }

    fn anthropic_json(&self, base: &str) -> Value {
        let ended = self.work.end.is_some();
        let request_counts = if ended {
            let c = self.work.counts();
            json!({"processing": 0, "succeeded": c.succeeded, "errored": c.errored,
                "canceled": c.canceled, "expired": c.expired})
        } else {
            json!({"processing": self.work.items.len(), "succeeded": 0, "errored": 0,
                "canceled": 0, "expired": 0})
        };
        json!({
            "id": &self.id,
            "type": "message_batch",
            "processing_status": self.status(),
            "request_counts": request_counts,
            "ended_at": self.ended_at.map(rfc3339),
            "created_at": rfc3339(self.created_unix),
            "expires_at": rfc3339(self.created_unix + DAY),
            "cancel_initiated_at": self.cancel.map(|(_, t)| rfc3339(t)),
            "archived_at": null,
            "results_url": ended.then(|| format!("{base}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `2024-08-20T18:37:24.100435Z`.
fn rfc3339(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let micros = ((unix - secs as f64) * 1e6) as u32;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// Serving.

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Resp, Box<dyn std::error::Error + Send + Sync>> {
    if state.dropping.load(Ordering::SeqCst) {
        // An error from the service closes the connection without an answer.
        return Err("dropping connections".into());
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let response = answer(&state, req).await;
    state.log.lock().unwrap().push(Logged {
        method,
        path,
        status: response.status().as_u16(),
    });
    Ok(response)
}

async fn answer(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let provider = if path == "/v1/messages/batches"
        || path.starts_with("/v1/messages/batches/")
        || path == "/v1/messages"
    {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    };
    let settings = state.settings.lock().unwrap().clone();
    if state.down.load(Ordering::SeqCst) {
        return match provider {
            Provider::OpenAi => openai_error(
                503,
                "The server is temporarily unavailable.",
                "server_error",
                None,
            ),
            Provider::Anthropic => anthropic_error(503, "api_error", "Service unavailable."),
        };
    }
    if let Some(refused) = check_headers(provider, &settings, req.headers()) {
        return refused;
    }
    let live_call = path == "/v1/chat/completions" || path == "/v1/messages";
    if let Some(wait) = settings
        .rate_limited
        .filter(|_| !(settings.batch_only && live_call))
    {
        let mut response = match provider {
            Provider::OpenAi => openai_error(
                429,
                "Rate limit reached for batch requests.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            Provider::Anthropic => anthropic_error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit.",
            ),
        };
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let headers = response.headers_mut();
        headers.insert("retry-after", ms.div_ceil(1000).into());
        headers.insert("retry-after-ms", ms.into());
        return response;
    }
    let owned: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
    let method = req.method().as_str().to_string();
    use Provider::{Anthropic, OpenAi};
    match (provider, method.as_str(), segments.as_slice()) {
        (OpenAi, "POST", ["v1", "chat", "completions"]) => live(OpenAi, req).await,
        (Anthropic, "POST", ["v1", "messages"]) => live(Anthropic, req).await,
        (OpenAi, "POST", ["v1", "files"]) => upload_file(state, &settings, req).await,
        (OpenAi, "GET", ["v1", "files", id]) => file_object(state, id),
        (OpenAi, "DELETE", ["v1", "files", id]) => delete_file(state, id),
        (OpenAi, "GET", ["v1", "files", id, "content"]) => file_content(state, id),
        (OpenAi, "POST", ["v1", "batches"]) => create_openai(state, &settings, req).await,
        (OpenAi, "GET", ["v1", "batches"]) => list(state, &settings, OpenAi, &query),
        (OpenAi, "GET", ["v1", "batches", id]) => get_batch(state, &settings, OpenAi, id),
        (OpenAi, "POST", ["v1", "batches", id, "cancel"]) => cancel(state, &settings, OpenAi, id),
        (Anthropic, "POST", ["v1", "messages", "batches"]) => {
            create_anthropic(state, &settings, req).await
        }
        (Anthropic, "GET", ["v1", "messages", "batches"]) => {
            list(state, &settings, Anthropic, &query)
        }
        (Anthropic, "GET", ["v1", "messages", "batches", id]) => {
            get_batch(state, &settings, Anthropic, id)
        }
        (Anthropic, "DELETE", ["v1", "messages", "batches", id]) => {
            delete_batch(state, &settings, id)
        }
        (Anthropic, "POST", ["v1", "messages", "batches", id, "cancel"]) => {
            cancel(state, &settings, Anthropic, id)
        }
        (Anthropic, "GET", ["v1", "messages", "batches", id, "results"]) => {
            results(state, &settings, id)
        }
        (OpenAi, _, _) => openai_error(
            404,
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
        ),
        (Anthropic, _, _) => anthropic_error(404, "not_found_error", "Not found"),
    }
}

/// A live call (`POST /v1/chat/completions`, `POST /v1/messages`), answered at once with
/// the same echo as a batch's request, so that one server serves a provider's batch lane
/// and its live lane.
async fn live(provider: Provider, req: Request<Incoming>) -> Resp {
    let Ok(body) = Limited::new(req.into_body(), 16 << 20).collect().await else {
        return bad_request(provider, "the body could not be read");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return bad_request(provider, "the body is not JSON");
    };
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("").to_string();
    let text = format!("echo: {last_user}");
    let (input, output) = (count_words(&last_user), count_words(&text));
    match provider {
        Provider::OpenAi => json_response(
            200,
            &json!({
                "id": "chatcmpl-live", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output},
            }),
        ),
        Provider::Anthropic => json_response(
            200,
            &json!({
                "id": "msg_live", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output},
            }),
        ),
    }
}

/// The answer refusing a request for its headers, if they are wrong.
fn check_headers(provider: Provider, settings: &Settings, headers: &HeaderMap) -> Option<Resp> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match provider {
        Provider::OpenAi => {
            if let Some(key) = &settings.key {
                let given = header("authorization").unwrap_or("");
                if given.strip_prefix("Bearer ") != Some(key.as_str()) {
                    return Some(openai_error(
                        401,
                        "Incorrect API key provided.",
                        "invalid_request_error",
                        Some("invalid_api_key"),
                    ));
                }
            }
        }
        Provider::Anthropic => {
            // `x-api-key`, or `Authorization: Bearer` (which the API takes too, and lanes'
            // claude adapter sends by default).
            let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
            if let Some(key) = &settings.key
                && header("x-api-key") != Some(key.as_str())
                && bearer != Some(key.as_str())
            {
                return Some(anthropic_error(
                    401,
                    "authentication_error",
                    "invalid x-api-key",
                ));
            }
            if header("anthropic-version").is_none_or(str::is_empty) {
                return Some(anthropic_error(
                    400,
                    "invalid_request_error",
                    "anthropic-version: header is required",
                ));
            }
        }
    }
    None
}

fn json_response(status: u16, body: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn openai_error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Resp {
    openai_error_param(status, message, kind, None, code)
}

fn openai_error_param(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Resp {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Resp {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn bad_request(provider: Provider, message: &str) -> Resp {
    match provider {
        Provider::OpenAi => openai_error(400, message, "invalid_request_error", None),
        Provider::Anthropic => anthropic_error(400, "invalid_request_error", message),
    }
}

fn not_found(provider: Provider, id: &str) -> Resp {
    match provider {
        Provider::OpenAi => openai_error(
            404,
            &format!("No batch found with id '{id}'."),
            "invalid_request_error",
            None,
        ),
        Provider::Anthropic => anthropic_error(
            404,
            "not_found_error",
            &format!("No batch found with id '{id}'."),
        ),
    }
}

fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all("transfer-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl State {
    fn new_id(&self, prefix: &str) -> (u64, String) {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        (seq, format!("{prefix}{:08x}{seq:08x}", self.salt))
    }

    fn record_upload(&self, upload: Upload) {
        self.uploads.lock().unwrap().push(upload);
    }

    /// Registers a new batch and counts its requests.
    fn add_batch(&self, batch: Batch, count_items: bool) -> Value {
        self.created.fetch_add(1, Ordering::SeqCst);
        if count_items {
            let mut seen = self.seen.lock().unwrap();
            for item in batch.work.items.iter() {
                *seen.entry(item.custom_id.to_string()).or_insert(0) += 1;
            }
        }
        let body = batch.to_json(&self.base);
        self.batches.lock().unwrap().push(batch);
        body
    }

    #[allow(clippy::too_many_arguments)]
    fn new_batch(
        &self,
        settings: &Settings,
        provider: Provider,
        items: Arc<Vec<Item>>,
        input_file_id: Option<String>,
        endpoint: String,
        metadata: Value,
        invalid: Vec<Value>,
    ) -> Batch {
        let (seq, id) = match provider {
            Provider::OpenAi => self.new_id("batch_"),
            Provider::Anthropic => self.new_id("msgbatch_"),
        };
        let fail: Vec<bool> = match &settings.fail_when {
            Some(f) => items.iter().map(|item| f(&item.text)).collect(),
            None => vec![false; items.len()],
        };
        let created_unix = unix_now();
        Batch {
            file_ids: (
                format!("file-out{:08x}{seq:08x}", self.salt),
                format!("file-err{:08x}{seq:08x}", self.salt),
            ),
            id,
            provider,
            work: Work {
                seq,
                created: created_unix as u64,
                items,
                fail: Arc::new(fail),
                done: 0,
                end: None,
            },
            input_file_id,
            endpoint,
            metadata,
            invalid,
            created: Instant::now(),
            created_unix,
            in_progress_at: None,
            finalizing_at: None,
            cancel: None,
            ended_at: None,
            output_file_id: None,
            error_file_id: None,
            deleted: false,
        }
    }
}

fn get_batch(state: &State, settings: &Settings, provider: Provider, id: &str) -> Resp {
    let mut batches = state.batches.lock().unwrap();
    match batches
        .iter_mut()
        .find(|b| b.id == id && b.provider == provider && !b.deleted)
    {
        Some(batch) => {
            batch.advance(settings);
            json_response(200, &batch.to_json(&state.base))
        }
        None => not_found(provider, id),
    }
}

fn cancel(state: &State, settings: &Settings, provider: Provider, id: &str) -> Resp {
    let mut batches = state.batches.lock().unwrap();
    let Some(batch) = batches
        .iter_mut()
        .find(|b| b.id == id && b.provider == provider && !b.deleted)
    else {
        return not_found(provider, id);
    };
    batch.advance(settings);
    if batch.work.end.is_none() && batch.cancel.is_none() {
        batch.cancel = Some((Instant::now(), unix_now()));
    } else if provider == Provider::OpenAi && batch.cancel.is_none() {
        return openai_error(
            409,
            &format!("Cannot cancel a batch with status '{}'.", batch.status()),
            "invalid_request_error",
            None,
        );
    }
    json_response(200, &batch.to_json(&state.base))
}

fn list(state: &State, settings: &Settings, provider: Provider, query: &str) -> Resp {
    let (default, max) = match provider {
        Provider::OpenAi => (20, 100),
        Provider::Anthropic => (20, 1000),
    };
    let limit = match query_param(query, "limit") {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => return bad_request(provider, &format!("limit: must be from 1 to {max}")),
        },
    };
    let (after, before) = match provider {
        Provider::OpenAi => (query_param(query, "after"), None),
        Provider::Anthropic => (
            query_param(query, "after_id"),
            query_param(query, "before_id"),
        ),
    };
    let mut batches = state.batches.lock().unwrap();
    for batch in batches.iter_mut().filter(|b| b.provider == provider) {
        batch.advance(settings);
    }
    let all: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.provider == provider && !b.deleted)
        .rev()
        .collect();
    let position = |id: &str| all.iter().position(|b| b.id == id);
    let (page, has_more): (&[&Batch], bool) = if let Some(before) = before {
        match position(before) {
            Some(p) => {
                let start = p.saturating_sub(limit);
                (&all[start..p], start > 0)
            }
            None => (&[], false),
        }
    } else {
        let rest: &[&Batch] = match after.map(position) {
            None => &all,
            Some(Some(p)) => &all[p + 1..],
            Some(None) => &[],
        };
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    };
    let data: Vec<Value> = page.iter().map(|b| b.to_json(&state.base)).collect();
    let first_id = page.first().map(|b| b.id.clone());
    let last_id = page.last().map(|b| b.id.clone());
    let body = match provider {
        Provider::OpenAi => json!({"object": "list", "data": data, "first_id": first_id,
            "last_id": last_id, "has_more": has_more}),
        Provider::Anthropic => json!({"data": data, "has_more": has_more,
            "first_id": first_id, "last_id": last_id}),
    };
    json_response(200, &body)
}

// ---------------------------------------------------------------------------------------
// OpenAI: files.

/// An uploaded JSONL file: what is kept of its lines.
struct InputFile {
    id: String,
    bytes: u64,
    filename: String,
    created_at: u64,
    items: Arc<Vec<Item>>,
    /// The distinct `url`s of its lines.
    urls: Vec<String>,
    /// Its non-blank lines.
    requests: usize,
    max_items: usize,
    /// Errors found in its lines, as `errors.data` entries.
    errors: Vec<Value>,
}

impl InputFile {
    fn to_json(&self) -> Value {
        json!({"id": &self.id, "object": "file", "bytes": self.bytes,
            "created_at": self.created_at, "filename": &self.filename, "purpose": "batch",
            "status": "processed", "status_details": null, "expires_at": null})
    }

    /// The validation errors of a batch of this file at `endpoint`.
    fn validate(&self, endpoint: &str) -> Vec<Value> {
        let mut errors = self.errors.clone();
        if self.requests == 0 {
            errors.push(line_error(
                "empty_file",
                None,
                "The batch input file is empty.",
                None,
            ));
        }
        if self.requests > self.max_items {
            errors.push(line_error(
                "request_limit_exceeded",
                None,
                &format!(
                    "The batch input file has {} requests; a batch may have at most {}.",
                    self.requests, self.max_items
                ),
                None,
            ));
        }
        for item in self.items.iter() {
            if errors.len() >= MAX_ERRORS {
                break;
            }
            let url = self.urls.get(usize::from(item.url)).map(String::as_str);
            if url != Some(endpoint) {
                errors.push(line_error(
                    "invalid_url",
                    Some(item.line),
                    &format!(
                        "The URL of this request ({}) does not match the batch endpoint ({endpoint}).",
                        url.unwrap_or("?")
                    ),
                    Some("url"),
                ));
            }
        }
        errors
    }
}

fn line_error(code: &str, line: Option<u32>, message: &str, param: Option<&str>) -> Value {
    json!({"code": code, "line": line, "message": message, "param": param})
}

/// Reads a JSONL stream line by line, keeping an [`Item`] per request.
struct Jsonl {
    partial: Vec<u8>,
    line: u32,
    bytes: u64,
    requests: usize,
    max_items: usize,
    items: Vec<Item>,
    urls: Vec<String>,
    ids: HashSet<Box<str>>,
    errors: Vec<Value>,
}

impl Jsonl {
    fn new(max_items: usize) -> Jsonl {
        Jsonl {
            partial: Vec::new(),
            line: 0,
            bytes: 0,
            requests: 0,
            max_items,
            items: Vec::new(),
            urls: Vec::new(),
            ids: HashSet::new(),
            errors: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let mut start = 0;
        let mut i = 0;
        while i < data.len() {
            if data[i] != b'\n' {
                i += 1;
                continue;
            }
            if self.partial.is_empty() {
                self.take_line(&data[start..i]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&data[start..i]);
                self.take_line(&line);
                line.clear();
                self.partial = line;
            }
            i += 1;
            start = i;
        }
        self.partial.extend_from_slice(&data[start..]);
    }

    fn finish(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if !line.is_empty() {
            self.take_line(&line);
        }
    }

    fn error(&mut self, code: &str, message: &str, param: Option<&str>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors
                .push(line_error(code, Some(self.line), message, param));
        }
    }

    fn take_line(&mut self, raw: &[u8]) {
        self.line += 1;
        let raw = raw.trim_ascii();
        if raw.is_empty() {
            return;
        }
        self.requests += 1;
        if self.items.len() >= self.max_items {
            return;
        }
        let Ok(line) = skim_line(raw) else {
            self.error(
                "invalid_json_line",
                "This line is not parseable as valid JSON.",
                None,
            );
            return;
        };
        let Some(custom_id) = line.custom_id else {
            self.error(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id' (a string).",
                Some("custom_id"),
            );
            return;
        };
        if line.method.as_deref() != Some("POST") {
            self.error(
                "invalid_value",
                "The method of each request must be POST.",
                Some("method"),
            );
            return;
        }
        let Some(url) = line.url else {
            self.error(
                "missing_required_parameter",
                "Missing required parameter: 'url' (a string).",
                Some("url"),
            );
            return;
        };
        let Some(body) = line.body else {
            self.error(
                "missing_required_parameter",
                "Missing required parameter: 'body' (an object).",
                Some("body"),
            );
            return;
        };
        if !self.ids.insert(custom_id.as_ref().into()) {
            self.error(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. \
                 The custom_id parameter must be unique for each request in a batch.",
                Some("custom_id"),
            );
            return;
        }
        let url = match self.urls.iter().position(|u| *u == url) {
            Some(i) => u8::try_from(i).unwrap_or(u8::MAX),
            None if self.urls.len() < usize::from(u8::MAX) => {
                self.urls.push(url.into_owned());
                u8::try_from(self.urls.len() - 1).unwrap_or(u8::MAX)
            }
            None => u8::MAX,
        };
        let item = openai_item(&custom_id, &body, self.line, url);
        self.items.push(item);
    }
}

/// What is read of one line of an OpenAI batch file.
#[derive(Default)]
struct LineIn<'a> {
    custom_id: Option<Cow<'a, str>>,
    method: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    body: Option<Params>,
}

fn skim_line(raw: &[u8]) -> Skimmed<LineIn<'_>> {
    std::str::from_utf8(raw).map_err(|e| e.to_string())?;
    let mut sk = Skim::new(raw);
    let mut line = LineIn::default();
    sk.object(|sk, key| {
        match &*key {
            "custom_id" => line.custom_id = sk.opt_string()?,
            "method" => line.method = sk.opt_string()?,
            "url" => line.url = sk.opt_string()?,
            "body" => line.body = sk.params()?,
            _ => sk.skip()?,
        }
        Ok(())
    })?;
    sk.end()?;
    Ok(line)
}

fn openai_item(custom_id: &str, body: &Params, line: u32, url: u8) -> Item {
    let mut error = None;
    if body.model.is_none() {
        error = Some("you must provide a model parameter".to_string());
    }
    if body.messages.as_ref().is_none_or(|m| m.count == 0) {
        error.get_or_insert_with(|| "Missing required parameter: 'messages'.".to_string());
    }
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Int::Absent | Int::Null, Int::Absent | Int::Null) => None,
        (Int::Value(n), _) | (Int::Absent | Int::Null, Int::Value(n)) if n >= 1 => {
            Some(u32::try_from(n).unwrap_or(u32::MAX))
        }
        _ => {
            error.get_or_insert_with(|| {
                "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1."
                    .to_string()
            });
            None
        }
    };
    let (text, words) = body
        .messages
        .as_ref()
        .map_or(("", 0), |m| (m.last_user.as_str(), m.words));
    Item::new(
        custom_id,
        body.model.as_deref(),
        text,
        max_tokens,
        words.saturating_add(body.system_words),
        line,
        url,
        error,
    )
}

/// Finds `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0;
    while at + needle.len() <= hay.len() {
        if hay[at] == first && &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Preamble,
    /// Just past a delimiter: `--` (the end) or the rest of its line.
    Boundary,
    Headers,
    Purpose,
    File,
    Other,
    Done,
}

/// A `multipart/form-data` body read as it comes: `purpose` kept, `file` fed to [`Jsonl`].
struct Multipart {
    /// `\r\n--BOUNDARY`.
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    part: Part,
    purpose: Vec<u8>,
    filename: Option<String>,
    file_parts: usize,
    jsonl: Jsonl,
}

impl Multipart {
    fn new(boundary: &str, max_items: usize) -> Multipart {
        Multipart {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // So that a first delimiter at the very start is found like the others.
            buf: b"\r\n".to_vec(),
            part: Part::Preamble,
            purpose: Vec::new(),
            filename: None,
            file_parts: 0,
            jsonl: Jsonl::new(max_items),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        if self.part == Part::Done {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(data);
        let mut start = 0;
        let result = loop {
            let rest = &buf[start..];
            match self.part {
                Part::Done => {
                    start = buf.len();
                    break Ok(());
                }
                Part::Boundary => {
                    if rest.len() < 2 {
                        break Ok(());
                    }
                    if rest.starts_with(b"--") {
                        self.part = Part::Done;
                        continue;
                    }
                    match find(rest, b"\r\n") {
                        Some(p) if rest[..p].iter().all(|b| *b == b' ' || *b == b'\t') => {
                            start += p + 2;
                            self.part = Part::Headers;
                        }
                        Some(_) => break Err("malformed multipart boundary line".to_string()),
                        None if rest.len() > 256 => {
                            break Err("malformed multipart boundary line".to_string());
                        }
                        None => break Ok(()),
                    }
                }
                Part::Headers => {
                    let end = if rest.starts_with(b"\r\n") {
                        Some((0, 2))
                    } else {
                        find(rest, b"\r\n\r\n").map(|p| (p, p + 4))
                    };
                    match end {
                        Some((p, skip)) => match self.part_kind(&rest[..p]) {
                            Ok(kind) => {
                                start += skip;
                                self.part = kind;
                            }
                            Err(e) => break Err(e),
                        },
                        None if rest.len() > 16 * 1024 => {
                            break Err("multipart part headers too long".to_string());
                        }
                        None => break Ok(()),
                    }
                }
                Part::Preamble | Part::Purpose | Part::File | Part::Other => {
                    match find(rest, &self.delimiter) {
                        Some(p) => {
                            if let Err(e) = self.consume(&rest[..p]) {
                                break Err(e);
                            }
                            if self.part == Part::File {
                                self.jsonl.finish();
                            }
                            start += p + self.delimiter.len();
                            self.part = Part::Boundary;
                        }
                        None => {
                            let keep = (self.delimiter.len() - 1).min(rest.len());
                            let cut = rest.len() - keep;
                            if let Err(e) = self.consume(&rest[..cut]) {
                                break Err(e);
                            }
                            start += cut;
                            break Ok(());
                        }
                    }
                }
            }
        };
        buf.drain(..start);
        self.buf = buf;
        result
    }

    fn consume(&mut self, data: &[u8]) -> Result<(), String> {
        match self.part {
            Part::Purpose => {
                if self.purpose.len() + data.len() > 1024 {
                    return Err("'purpose' is too long".to_string());
                }
                self.purpose.extend_from_slice(data);
            }
            Part::File => self.jsonl.feed(data),
            _ => {}
        }
        Ok(())
    }

    /// Which field a part is, from its headers.
    fn part_kind(&mut self, headers: &[u8]) -> Result<Part, String> {
        let headers = std::str::from_utf8(headers)
            .map_err(|_| "multipart part headers are not UTF-8".to_string())?;
        let disposition = headers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, value)| value.trim())
            .ok_or("a multipart part has no Content-Disposition")?;
        let mut name = None;
        let mut filename = None;
        for param in disposition.split(';').skip(1) {
            if let Some((k, v)) = param.split_once('=') {
                let v = v.trim().trim_matches('"').to_string();
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        }
        Ok(match name.as_deref() {
            Some("purpose") => Part::Purpose,
            Some("file") => {
                self.file_parts += 1;
                if self.file_parts > 1 {
                    return Err("more than one 'file' in the upload".to_string());
                }
                self.filename = Some(filename.unwrap_or_else(|| "upload".to_string()));
                Part::File
            }
            _ => Part::Other,
        })
    }
}

/// The boundary of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

async fn upload_file(state: &State, settings: &Settings, req: Request<Incoming>) -> Resp {
    let (max_items, max_bytes) = settings.limits.unwrap_or(OPENAI_LIMITS);
    let chunked = is_chunked(req.headers());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = boundary(content_type) else {
        return openai_error(
            400,
            "Invalid Content-Type header: expected multipart/form-data with a boundary.",
            "invalid_request_error",
            None,
        );
    };
    let mut multipart = Multipart::new(&boundary, max_items);
    let mut body = req.into_body();
    let mut bytes = 0u64;
    let mut refused: Option<String> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            refused = Some("the upload ended early".to_string());
            break;
        };
        if let Ok(data) = frame.into_data() {
            bytes += data.len() as u64;
            if refused.is_none()
                && let Err(e) = multipart.feed(&data)
            {
                refused = Some(e);
            }
        }
    }
    let mut upload = Upload {
        provider: Provider::OpenAi,
        id: None,
        bytes,
        chunked,
        items: multipart.jsonl.requests,
    };
    if refused.is_none() && multipart.part != Part::Done {
        refused = Some("the multipart body has no closing boundary".to_string());
    }
    if refused.is_none() && multipart.filename.is_none() {
        refused = Some("Missing required parameter: 'file'.".to_string());
    }
    if refused.is_none() && multipart.purpose.trim_ascii() != b"batch" {
        refused = Some(format!(
            "Invalid value for 'purpose': '{}'; this server takes 'batch' only.",
            String::from_utf8_lossy(&multipart.purpose)
        ));
    }
    if refused.is_none() && multipart.jsonl.bytes > max_bytes {
        refused = Some(format!(
            "File is too large: {} bytes; files for purpose 'batch' may have at most {max_bytes}.",
            multipart.jsonl.bytes
        ));
    }
    if let Some(message) = refused {
        state.record_upload(upload);
        return openai_error(400, &message, "invalid_request_error", None);
    }
    let (_, id) = state.new_id("file-");
    let jsonl = multipart.jsonl;
    let file = InputFile {
        id: id.clone(),
        bytes: jsonl.bytes,
        filename: multipart.filename.unwrap_or_default(),
        created_at: unix_now() as u64,
        items: Arc::new(jsonl.items),
        urls: jsonl.urls,
        requests: jsonl.requests,
        max_items,
        errors: jsonl.errors,
    };
    let body = file.to_json();
    state
        .files
        .lock()
        .unwrap()
        .insert(id.clone(), Arc::new(file));
    upload.id = Some(id);
    state.record_upload(upload);
    json_response(200, &body)
}

/// The batch whose output (`false`) or error (`true`) file `id` is.
fn result_file(state: &State, id: &str) -> Option<(Work, bool)> {
    if state.deleted_files.lock().unwrap().contains(id) {
        return None;
    }
    let batches = state.batches.lock().unwrap();
    batches.iter().find_map(|b| {
        if b.output_file_id.as_deref() == Some(id) {
            Some((b.work.clone(), false))
        } else if b.error_file_id.as_deref() == Some(id) {
            Some((b.work.clone(), true))
        } else {
            None
        }
    })
}

fn no_such_file(id: &str) -> Resp {
    openai_error_param(
        404,
        &format!("No such File object: {id}"),
        "invalid_request_error",
        Some("id"),
        None,
    )
}

fn file_object(state: &State, id: &str) -> Resp {
    if let Some(file) = state.files.lock().unwrap().get(id) {
        return json_response(200, &file.to_json());
    }
    let Some((work, errors)) = result_file(state, id) else {
        return no_such_file(id);
    };
    let created_at = work.created;
    let kind = if errors {
        LineKind::OpenAiErrors
    } else {
        LineKind::OpenAiOutput
    };
    let bytes = Lines {
        work,
        kind,
        next: 0,
    }
    .total_bytes();
    let filename = if errors {
        "batch_errors.jsonl"
    } else {
        "batch_output.jsonl"
    };
    json_response(
        200,
        &json!({"id": id, "object": "file", "bytes": bytes, "created_at": created_at,
            "filename": filename, "purpose": "batch_output", "status": "processed",
            "status_details": null, "expires_at": null}),
    )
}

fn delete_file(state: &State, id: &str) -> Resp {
    let removed = state.files.lock().unwrap().remove(id).is_some();
    if !removed {
        if result_file(state, id).is_none() {
            return no_such_file(id);
        }
        state.deleted_files.lock().unwrap().insert(id.to_string());
    }
    json_response(200, &json!({"id": id, "object": "file", "deleted": true}))
}

fn file_content(state: &State, id: &str) -> Resp {
    if state.files.lock().unwrap().contains_key(id) {
        return openai_error(
            400,
            "This server does not keep input files: their content cannot be downloaded.",
            "invalid_request_error",
            None,
        );
    }
    let Some((work, errors)) = result_file(state, id) else {
        return no_such_file(id);
    };
    let kind = if errors {
        LineKind::OpenAiErrors
    } else {
        LineKind::OpenAiOutput
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .body(
            Lines {
                work,
                kind,
                next: 0,
            }
            .boxed(),
        )
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// OpenAI: batches.

async fn create_openai(state: &State, settings: &Settings, req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return bad_request(Provider::OpenAi, "The request body is too large."),
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request(
            Provider::OpenAi,
            "We could not parse the JSON body of your request.",
        );
    };
    let param_error = |param: &str, message: &str| {
        openai_error_param(400, message, "invalid_request_error", Some(param), None)
    };
    let Some(input_file_id) = body.get("input_file_id").and_then(Value::as_str) else {
        return param_error(
            "input_file_id",
            "Missing required parameter: 'input_file_id'.",
        );
    };
    let Some(endpoint) = body.get("endpoint").and_then(Value::as_str) else {
        return param_error("endpoint", "Missing required parameter: 'endpoint'.");
    };
    if !OPENAI_ENDPOINTS.contains(&endpoint) {
        return param_error(
            "endpoint",
            &format!("Invalid value for 'endpoint': '{endpoint}'."),
        );
    }
    if body.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return param_error(
            "completion_window",
            "Invalid value for 'completion_window': only '24h' is supported.",
        );
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(m)) if m.len() <= 16 && m.values().all(Value::is_string) => {
            Value::Object(m.clone())
        }
        Some(_) => {
            return param_error(
                "metadata",
                "Invalid 'metadata': an object of at most 16 string values.",
            );
        }
    };
    let file = state.files.lock().unwrap().get(input_file_id).cloned();
    let Some(file) = file else {
        return openai_error_param(
            404,
            &format!("No such File object: {input_file_id}"),
            "invalid_request_error",
            Some("input_file_id"),
            None,
        );
    };
    let invalid = file.validate(endpoint);
    let valid = invalid.is_empty();
    let batch = state.new_batch(
        settings,
        Provider::OpenAi,
        file.items.clone(),
        Some(input_file_id.to_string()),
        endpoint.to_string(),
        metadata,
        invalid,
    );
    json_response(200, &state.add_batch(batch, valid))
}

// ---------------------------------------------------------------------------------------
// Anthropic.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the `{`.
    Open,
    /// Before the (only) key.
    Key,
    Colon,
    Bracket,
    /// Before an element (`first`: or the `]` of an empty list).
    BeforeElement {
        first: bool,
    },
    /// Inside an element, scanning for its end.
    InElement,
    AfterElement,
    /// Before the closing `}`.
    Close,
    Done,
}

/// `{"requests": [...]}` read as it comes: each request is read as soon as it is whole, and
/// only its [`Item`] is kept.
struct RequestStream {
    buf: Vec<u8>,
    /// Bytes dropped from the front of `buf` so far.
    dropped: u64,
    pos: usize,
    stage: Stage,
    element_start: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    items: Vec<Item>,
    ids: HashSet<Box<str>>,
    max_items: usize,
}

impl RequestStream {
    fn new(max_items: usize) -> RequestStream {
        RequestStream {
            buf: Vec::new(),
            dropped: 0,
            pos: 0,
            stage: Stage::Open,
            element_start: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            items: Vec::new(),
            ids: HashSet::new(),
            max_items,
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let result = self.scan();
        // Keep only what is still needed: the element being read, or the unread rest.
        let keep = if self.stage == Stage::InElement {
            self.element_start
        } else {
            self.pos
        };
        self.buf.drain(..keep);
        self.dropped += keep as u64;
        self.pos -= keep;
        self.element_start = self.element_start.saturating_sub(keep);
        result
    }

    fn finish(self) -> Result<Vec<Item>, String> {
        if self.stage != Stage::Done {
            return Err("EOF while parsing the body: it is not a whole JSON object".to_string());
        }
        if self.items.is_empty() {
            return Err("requests: List should have at least 1 item".to_string());
        }
        Ok(self.items)
    }

    fn scan(&mut self) -> Result<(), String> {
        loop {
            if self.stage == Stage::InElement {
                if !self.scan_element() {
                    return Ok(());
                }
                let element = self.buf[self.element_start..self.pos].to_vec();
                self.take_element(&element)?;
                self.stage = Stage::AfterElement;
                continue;
            }
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
                self.pos += 1;
            }
            let Some(&b) = self.buf.get(self.pos) else {
                return Ok(());
            };
            let at = self.dropped + self.pos as u64;
            let next = match (self.stage, b) {
                (Stage::Open, b'{') => Stage::Key,
                (Stage::Key, b'"') => {
                    let Some(end) = self.buf[self.pos + 1..].iter().position(|b| *b == b'"') else {
                        if self.buf.len() - self.pos > 1024 {
                            return Err("a key of the body is too long".to_string());
                        }
                        return Ok(());
                    };
                    let end = self.pos + 1 + end + 1;
                    let key = Skim::new(&self.buf[self.pos..end]).string()?;
                    if key != "requests" {
                        return Err(format!("{key}: Extra inputs are not permitted"));
                    }
                    self.pos = end;
                    self.stage = Stage::Colon;
                    continue;
                }
                (Stage::Key, b'}') => return Err("requests: Field required".to_string()),
                (Stage::Colon, b':') => Stage::Bracket,
                (Stage::Bracket, b'[') => Stage::BeforeElement { first: true },
                (Stage::Bracket, _) => {
                    return Err("requests: Input should be a valid list".to_string());
                }
                (Stage::BeforeElement { first: true }, b']') => Stage::Close,
                (Stage::BeforeElement { .. }, b'{') => {
                    self.element_start = self.pos;
                    self.depth = 0;
                    self.in_string = false;
                    self.escaped = false;
                    self.stage = Stage::InElement;
                    continue;
                }
                (Stage::BeforeElement { .. }, _) => {
                    return Err(format!(
                        "requests.{}: Input should be a valid dictionary",
                        self.items.len()
                    ));
                }
                (Stage::AfterElement, b',') => Stage::BeforeElement { first: false },
                (Stage::AfterElement, b']') => Stage::Close,
                (Stage::Close, b'}') => Stage::Done,
                (Stage::Close, b',') => {
                    return Err(
                        "only `requests` is allowed in the body: Extra inputs are not permitted"
                            .to_string(),
                    );
                }
                (Stage::Done, _) => {
                    return Err(format!("trailing characters at byte {at} of the body"));
                }
                _ => return Err(format!("invalid JSON at byte {at} of the body")),
            };
            self.pos += 1;
            self.stage = next;
        }
    }

    /// Scans on to the end of the element; false if the buffer ends first.
    fn scan_element(&mut self) -> bool {
        let buf = &self.buf[..];
        let (mut pos, mut depth) = (self.pos, self.depth);
        let (mut in_string, mut escaped) = (self.in_string, self.escaped);
        let mut done = false;
        while pos < buf.len() {
            if in_string {
                // The common case: on to the next quote or backslash.
                while pos < buf.len() && !escaped && buf[pos] != b'"' && buf[pos] != b'\\' {
                    pos += 1;
                }
                if pos == buf.len() {
                    break;
                }
                if escaped {
                    escaped = false;
                } else if buf[pos] == b'\\' {
                    escaped = true;
                } else {
                    in_string = false;
                }
                pos += 1;
                continue;
            }
            let b = buf[pos];
            pos += 1;
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    // Mismatched brackets are caught when the element is read.
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        done = true;
                        break;
                    }
                }
                _ => {}
            }
        }
        (self.pos, self.depth, self.in_string, self.escaped) = (pos, depth, in_string, escaped);
        done
    }

    fn take_element(&mut self, raw: &[u8]) -> Result<(), String> {
        let i = self.items.len();
        let mut custom_id: Option<Option<Cow<str>>> = None;
        let mut params: Option<Option<Params>> = None;
        let mut extra: Option<String> = None;
        let mut sk = Skim::new(raw);
        std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                sk.object(|sk, key| {
                    match &*key {
                        "custom_id" => custom_id = Some(sk.opt_string()?),
                        "params" => params = Some(sk.params()?),
                        _ => {
                            extra.get_or_insert_with(|| key.into_owned());
                            sk.skip()?;
                        }
                    }
                    Ok(())
                })
            })
            .and_then(|()| sk.end())
            .map_err(|e| format!("requests.{i}: invalid JSON: {e}"))?;
        if let Some(key) = extra {
            return Err(format!(
                "requests.{i}.{key}: Extra inputs are not permitted"
            ));
        }
        let custom_id = match custom_id {
            None => return Err(format!("requests.{i}.custom_id: Field required")),
            Some(None) => {
                return Err(format!(
                    "requests.{i}.custom_id: Input should be a valid string"
                ));
            }
            Some(Some(id)) => id,
        };
        if !valid_custom_id(&custom_id) {
            return Err(format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        let params = match params {
            None => return Err(format!("requests.{i}.params: Field required")),
            Some(None) => {
                return Err(format!(
                    "requests.{i}.params: Input should be a valid dictionary"
                ));
            }
            Some(Some(params)) => params,
        };
        if !self.ids.insert(custom_id.as_ref().into()) {
            return Err(format!(
                "requests.{i}.custom_id: '{custom_id}' is not unique: each custom_id must be \
                 unique within a batch"
            ));
        }
        if i >= self.max_items {
            return Err(format!(
                "requests: a batch may have at most {} requests",
                self.max_items
            ));
        }
        self.items.push(anthropic_item(&custom_id, &params, i));
        Ok(())
    }
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request; what is wrong with its `params` makes it errored, as the API checks them only
/// when it processes the request.
fn anthropic_item(custom_id: &str, params: &Params, i: usize) -> Item {
    let mut error = None;
    if params.model.is_none() {
        error = Some("model: Field required".to_string());
    }
    let max_tokens = match params.max_tokens {
        Int::Value(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Int::Absent => {
            error.get_or_insert_with(|| "max_tokens: Field required".to_string());
            None
        }
        _ => {
            error.get_or_insert_with(|| {
                "max_tokens: Input should be an integer greater than or equal to 1".to_string()
            });
            None
        }
    };
    if params.messages.as_ref().is_none_or(|m| m.count == 0) {
        error.get_or_insert_with(|| "messages: Field required (at least one message)".to_string());
    }
    if params.stream {
        error.get_or_insert_with(|| "stream: streaming is not supported in batches".to_string());
    }
    let (text, words) = params
        .messages
        .as_ref()
        .map_or(("", 0), |m| (m.last_user.as_str(), m.words));
    Item::new(
        custom_id,
        params.model.as_deref(),
        text,
        max_tokens,
        words.saturating_add(params.system_words),
        u32::try_from(i).unwrap_or(u32::MAX),
        0,
        error,
    )
}

async fn create_anthropic(state: &State, settings: &Settings, req: Request<Incoming>) -> Resp {
    let (max_items, max_bytes) = settings.limits.unwrap_or(ANTHROPIC_LIMITS);
    let chunked = is_chunked(req.headers());
    let mut stream = RequestStream::new(max_items);
    let mut refused: Option<Resp> = None;
    let mut bytes = 0u64;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            refused = Some(anthropic_error(
                400,
                "invalid_request_error",
                "The request body ended early.",
            ));
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        bytes += data.len() as u64;
        if refused.is_some() {
            // The rest is read and dropped.
            continue;
        }
        if bytes > max_bytes {
            refused = Some(anthropic_error(
                413,
                "request_too_large",
                &format!("Request exceeds the maximum size of {max_bytes} bytes."),
            ));
        } else if let Err(message) = stream.feed(&data) {
            refused = Some(anthropic_error(400, "invalid_request_error", &message));
        }
    }
    let mut upload = Upload {
        provider: Provider::Anthropic,
        id: None,
        bytes,
        chunked,
        items: stream.items.len(),
    };
    let items = match refused {
        Some(refused) => Err(refused),
        None => stream
            .finish()
            .map_err(|message| anthropic_error(400, "invalid_request_error", &message)),
    };
    let items = match items {
        Ok(items) => items,
        Err(refused) => {
            state.record_upload(upload);
            return refused;
        }
    };
    let batch = state.new_batch(
        settings,
        Provider::Anthropic,
        Arc::new(items),
        None,
        "/v1/messages".to_string(),
        Value::Null,
        Vec::new(),
    );
    upload.id = Some(batch.id.clone());
    state.record_upload(upload);
    json_response(200, &state.add_batch(batch, true))
}

fn delete_batch(state: &State, settings: &Settings, id: &str) -> Resp {
    let mut batches = state.batches.lock().unwrap();
    let Some(batch) = batches
        .iter_mut()
        .find(|b| b.id == id && b.provider == Provider::Anthropic && !b.deleted)
    else {
        return not_found(Provider::Anthropic, id);
    };
    batch.advance(settings);
    if batch.work.end.is_none() {
        return anthropic_error(
            400,
            "invalid_request_error",
            &format!("Batch {id} cannot be deleted while it is still processing; cancel it first."),
        );
    }
    batch.deleted = true;
    json_response(200, &json!({"id": id, "type": "message_batch_deleted"}))
}

fn results(state: &State, settings: &Settings, id: &str) -> Resp {
    let work = {
        let mut batches = state.batches.lock().unwrap();
        let Some(batch) = batches
            .iter_mut()
            .find(|b| b.id == id && b.provider == Provider::Anthropic && !b.deleted)
        else {
            return not_found(Provider::Anthropic, id);
        };
        batch.advance(settings);
        if batch.work.end.is_none() {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("Batch {id} has not ended yet: its results are not available."),
            );
        }
        batch.work.clone()
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/binary")
        .body(
            Lines {
                work,
                kind: LineKind::Anthropic,
                next: 0,
            }
            .boxed(),
        )
        .unwrap()
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    type Req = BoxBody<Bytes, Infallible>;

    struct Http {
        base: String,
        client: Client<HttpConnector, Req>,
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: String,
        frames: usize,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }

        fn lines(&self) -> Vec<Value> {
            self.body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn full(body: impl Into<Bytes>) -> Req {
        Full::new(body.into()).boxed()
    }

    /// `body` sent in pieces of `size` bytes, with chunked transfer encoding.
    fn pieces(body: &[u8], size: usize) -> Req {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
            .chunks(size)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    impl Http {
        fn new(base: String) -> Http {
            Http {
                base,
                client: Client::builder(TokioExecutor::new()).build_http(),
            }
        }

        async fn send(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Req,
        ) -> Answer {
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.base));
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let response = self.client.request(req.body(body).unwrap()).await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            let mut frames = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    frames += 1;
                    bytes.extend_from_slice(&data);
                }
            }
            Answer {
                status,
                headers,
                body: String::from_utf8(bytes).unwrap(),
                frames,
            }
        }

        async fn json(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut headers = headers.to_vec();
            let body = match body {
                Some(body) => {
                    headers.push(("content-type", "application/json"));
                    full(body.to_string())
                }
                None => full(Bytes::new()),
            };
            let answer = self.send(method, path, &headers, body).await;
            (answer.status, answer.json())
        }
    }

    fn openai_line(custom_id: &str, url: &str, text: &str) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": url, "body": {
            "model": "gpt-test", "max_tokens": 50,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": text}]}]}})
        .to_string()
    }

    fn multipart(jsonl: &str) -> (String, Vec<u8>) {
        let b = "------lanesFormBoundary7MA4YWxkTrZu0gW";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{jsonl}\r\n--{b}--\r\n"
        );
        (
            format!("multipart/form-data; boundary={b}"),
            body.into_bytes(),
        )
    }

    #[tokio::test]
    async fn openai_flow_upload_create_poll_download() {
        let api = BatchApi::start().await;
        api.set_key(Some("sk-test"));
        api.set_duration(Duration::from_millis(400));
        api.fail_when(|text| text.contains("fail"));
        let http = Http::new(api.url());
        let auth = ("authorization", "Bearer sk-test");

        let (status, body) = http.json("GET", "/v1/batches", &[], None).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_api_key");

        let jsonl = [
            openai_line("a", "/v1/chat/completions", "hello world"),
            openai_line("b", "/v1/chat/completions", "please fail"),
            openai_line("c", "/v1/chat/completions", "third one"),
        ]
        .join("\n")
            + "\n";
        let (content_type, body) = multipart(&jsonl);
        // Small pieces, so that delimiters and lines fall across them.
        let answer = http
            .send(
                "POST",
                "/v1/files",
                &[auth, ("content-type", content_type.as_str())],
                pieces(&body, 7),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let file = answer.json();
        assert_eq!(file["object"], "file");
        assert_eq!(file["purpose"], "batch");
        assert_eq!(file["filename"], "batch.jsonl");
        assert_eq!(file["bytes"], jsonl.len());
        let file_id = file["id"].as_str().unwrap().to_string();
        assert!(file_id.starts_with("file-"));
        let uploads = api.uploads();
        assert_eq!(uploads.len(), 1);
        assert!(uploads[0].chunked);
        assert_eq!(uploads[0].items, 3);
        assert_eq!(api.peak_upload_bytes(), body.len() as u64);

        let (status, batch) = http
            .json(
                "POST",
                "/v1/batches",
                &[auth],
                Some(
                    json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"lanes": "run-1"}}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["object"], "batch");
        assert_eq!(batch["status"], "validating");
        assert_eq!(batch["request_counts"]["total"], 0);
        assert_eq!(batch["metadata"]["lanes"], "run-1");
        let id = batch["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("batch_"));

        let mut statuses = Vec::new();
        let started = Instant::now();
        let batch = loop {
            let (status, batch) = http
                .json("GET", &format!("/v1/batches/{id}"), &[auth], None)
                .await;
            assert_eq!(status, 200);
            let s = batch["status"].as_str().unwrap().to_string();
            if statuses.last() != Some(&s) {
                statuses.push(s.clone());
            }
            if s == "completed" {
                break batch;
            }
            assert!(started.elapsed() < Duration::from_secs(3), "{statuses:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            statuses.contains(&"in_progress".to_string()),
            "{statuses:?}"
        );
        assert_eq!(
            batch["request_counts"],
            json!({"total": 3, "completed": 2, "failed": 1})
        );
        assert!(batch["completed_at"].as_u64() >= batch["created_at"].as_u64());

        let output = http
            .send(
                "GET",
                &format!(
                    "/v1/files/{}/content",
                    batch["output_file_id"].as_str().unwrap()
                ),
                &[auth],
                full(Bytes::new()),
            )
            .await;
        assert_eq!(output.status, 200);
        assert!(output.headers.get("content-length").is_none());
        let lines = output.lines();
        assert_eq!(lines.len(), 2);
        let answers: HashMap<&str, &Value> = lines
            .iter()
            .map(|l| (l["custom_id"].as_str().unwrap(), l))
            .collect();
        let a = answers["a"];
        assert_eq!(a["error"], Value::Null);
        assert_eq!(a["response"]["status_code"], 200);
        let completion = &a["response"]["body"];
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "gpt-test");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "echo: hello world"
        );
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        // "be brief" + "hello world"; "echo: hello world".
        assert_eq!(
            completion["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
        );
        assert_eq!(
            answers["c"]["response"]["body"]["choices"][0]["message"]["content"],
            "echo: third one"
        );

        let errors = http
            .send(
                "GET",
                &format!(
                    "/v1/files/{}/content",
                    batch["error_file_id"].as_str().unwrap()
                ),
                &[auth],
                full(Bytes::new()),
            )
            .await;
        let lines = errors.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["custom_id"], "b");
        assert_eq!(lines[0]["response"]["status_code"], 400);
        assert_eq!(
            lines[0]["response"]["body"]["error"]["type"],
            "invalid_request_error"
        );

        let (_, list) = http.json("GET", "/v1/batches?limit=1", &[auth], None).await;
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"][0]["id"], id.as_str());
        assert_eq!(list["first_id"], id.as_str());
        assert_eq!(list["has_more"], false);

        // A file with a line for another endpoint and a line that is not JSON fails.
        let jsonl = [
            openai_line("d", "/v1/chat/completions", "fine"),
            openai_line("e", "/v1/embeddings", "wrong url"),
            "{not json".to_string(),
        ]
        .join("\n");
        let (content_type, body) = multipart(&jsonl);
        let answer = http
            .send(
                "POST",
                "/v1/files",
                &[auth, ("content-type", content_type.as_str())],
                full(body),
            )
            .await;
        assert!(!api.uploads()[1].chunked);
        let bad_file = answer.json()["id"].as_str().unwrap().to_string();
        let (_, batch) = http
            .json(
                "POST",
                "/v1/batches",
                &[auth],
                Some(
                    json!({"input_file_id": bad_file, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}),
                ),
            )
            .await;
        let bad_id = batch["id"].as_str().unwrap().to_string();
        let (_, batch) = http
            .json("GET", &format!("/v1/batches/{bad_id}"), &[auth], None)
            .await;
        assert_eq!(batch["status"], "failed");
        assert!(batch["failed_at"].is_u64());
        let data = batch["errors"]["data"].as_array().unwrap();
        let mut lines: Vec<(u64, &str)> = data
            .iter()
            .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
            .collect();
        lines.sort();
        assert_eq!(lines, [(2, "invalid_url"), (3, "invalid_json_line")]);

        assert_eq!(api.created(), 2);
        assert_eq!(api.item_count_seen("a"), 1);
        assert_eq!(api.item_count_seen("d"), 0);
        assert_eq!(api.items_sent_twice(), 0);
        let summaries = api.batches();
        assert_eq!(summaries[0].status, "completed");
        assert_eq!(summaries[0].items, 3);
        assert_eq!(summaries[0].metadata["lanes"], "run-1");
        assert!(
            api.requests()
                .iter()
                .any(|r| r.method == "POST" && r.path == "/v1/files" && r.status == 200)
        );

        // Cancelling an ended batch is refused; down and rate-limited answers.
        let (status, _) = http
            .json("POST", &format!("/v1/batches/{id}/cancel"), &[auth], None)
            .await;
        assert_eq!(status, 409);
        api.set_rate_limited(Some(Duration::from_millis(1500)));
        let answer = http
            .send("GET", "/v1/batches", &[auth], full(Bytes::new()))
            .await;
        assert_eq!(answer.status, 429);
        assert_eq!(answer.headers["retry-after"], "2");
        assert_eq!(answer.headers["retry-after-ms"], "1500");
        api.set_rate_limited(None);
        api.set_down(true);
        let (status, _) = http.json("GET", "/v1/batches", &[auth], None).await;
        assert_eq!(status, 503);
        api.set_down(false);
        api.set_dropping(true);
        let dropped = http.client.request(
            Request::get(format!("{}/v1/batches", api.url()))
                .header(auth.0, auth.1)
                .body(full(Bytes::new()))
                .unwrap(),
        );
        assert!(dropped.await.is_err());
        api.set_dropping(false);
        let (status, _) = http.json("GET", "/v1/batches", &[auth], None).await;
        assert_eq!(status, 200);
    }

    fn anthropic_body(requests: &[(&str, &str)]) -> String {
        let requests: Vec<Value> = requests
            .iter()
            .map(|(id, text)| {
                json!({"custom_id": id, "params": {"model": "claude-test", "max_tokens": 64,
                    "messages": [{"role": "user", "content": text}]}})
            })
            .collect();
        json!({ "requests": requests }).to_string()
    }

    #[tokio::test]
    async fn anthropic_flow_with_cancel() {
        let api = BatchApi::start().await;
        api.set_key(Some("ak-test"));
        api.set_duration(Duration::from_secs(3600));
        api.fail_when(|text| text.contains("boom"));
        let http = Http::new(api.url());
        let headers = [
            ("x-api-key", "ak-test"),
            ("anthropic-version", "2023-06-01"),
        ];
        let post = |body: String| {
            let http = &http;
            async move {
                let answer = http
                    .send("POST", "/v1/messages/batches", &headers, full(body))
                    .await;
                (answer.status, answer.json())
            }
        };

        let (status, body) = http
            .json(
                "GET",
                "/v1/messages/batches",
                &[("x-api-key", "ak-test")],
                None,
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, body) = http
            .json(
                "GET",
                "/v1/messages/batches",
                &[("anthropic-version", "2023-06-01")],
                None,
            )
            .await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["type"], "authentication_error");

        let (status, body) = post(anthropic_body(&[("ok", "x"), ("bad id!", "y")])).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["type"], "error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("requests.1.custom_id")
        );
        let (status, _) = post(anthropic_body(&[("same", "x"), ("same", "y")])).await;
        assert_eq!(status, 400);
        let (status, _) = post("{\"requests\": [".to_string()).await;
        assert_eq!(status, 400);
        assert_eq!(api.created(), 0);

        let (status, batch) = post(anthropic_body(&[
            ("r1", "first"),
            ("r2", "boom here"),
            ("r3", "third"),
            ("r4", "fourth"),
        ]))
        .await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["type"], "message_batch");
        assert_eq!(batch["processing_status"], "in_progress");
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 4, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
        );
        assert_eq!(batch["results_url"], Value::Null);
        assert!(batch["created_at"].as_str().unwrap().ends_with('Z'));
        let id = batch["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("msgbatch_"));

        assert!(api.set_done(&id, 2));
        let (_, batch) = http
            .json("GET", &format!("/v1/messages/batches/{id}"), &headers, None)
            .await;
        // Counts stay 0 until the batch ends.
        assert_eq!(batch["request_counts"]["succeeded"], 0);
        let (status, _) = http
            .json(
                "GET",
                &format!("/v1/messages/batches/{id}/results"),
                &headers,
                None,
            )
            .await;
        assert_eq!(status, 400);

        let (status, batch) = http
            .json(
                "POST",
                &format!("/v1/messages/batches/{id}/cancel"),
                &headers,
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(batch["processing_status"], "canceling");
        assert!(batch["cancel_initiated_at"].is_string());
        let (_, batch) = http
            .json("GET", &format!("/v1/messages/batches/{id}"), &headers, None)
            .await;
        assert_eq!(batch["processing_status"], "ended");
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 0, "succeeded": 1, "errored": 1, "canceled": 2, "expired": 0})
        );
        let results_url = format!("{}/v1/messages/batches/{id}/results", api.url());
        assert_eq!(batch["results_url"], results_url.as_str());

        let results = http
            .send(
                "GET",
                &format!("/v1/messages/batches/{id}/results"),
                &headers,
                full(Bytes::new()),
            )
            .await;
        assert_eq!(results.status, 200);
        let lines = results.lines();
        let by_id: HashMap<&str, &Value> = lines
            .iter()
            .map(|l| (l["custom_id"].as_str().unwrap(), &l["result"]))
            .collect();
        assert_eq!(by_id.len(), 4);
        assert_eq!(by_id["r1"]["type"], "succeeded");
        let message = &by_id["r1"]["message"];
        assert_eq!(message["content"][0]["text"], "echo: first");
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(message["model"], "claude-test");
        assert_eq!(message["usage"]["input_tokens"], 1);
        assert_eq!(message["usage"]["output_tokens"], 2);
        assert_eq!(by_id["r2"]["type"], "errored");
        assert_eq!(
            by_id["r2"]["error"]["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(by_id["r3"]["type"], "canceled");
        assert_eq!(by_id["r4"]["type"], "canceled");

        let summary = &api.batches()[0];
        assert_eq!(summary.provider, Provider::Anthropic);
        assert!(summary.cancel_requested);
        assert_eq!(summary.status, "ended");
        assert_eq!(api.item_count_seen("r1"), 1);
        assert_eq!(api.created(), 1);

        let (status, _) = http
            .json(
                "DELETE",
                &format!("/v1/messages/batches/{id}"),
                &headers,
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = http
            .json("GET", &format!("/v1/messages/batches/{id}"), &headers, None)
            .await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn fifty_thousand_results_stream_in_pages_after_expiry() {
        let api = BatchApi::start().await;
        api.set_duration(Duration::from_secs(3600));
        let http = Http::new(api.url());
        let headers = [("anthropic-version", "2023-06-01")];
        let mut body = String::from("{\"requests\":[");
        for i in 0..50_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "{{\"custom_id\":\"r{i}\",\"params\":{{\"model\":\"m\",\"max_tokens\":8,\
                 \"messages\":[{{\"role\":\"user\",\"content\":\"item {i}\"}}]}}}}"
            ));
        }
        body.push_str("]}");
        let answer = http
            .send(
                "POST",
                "/v1/messages/batches",
                &headers,
                pieces(body.as_bytes(), 100_000),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let id = answer.json()["id"].as_str().unwrap().to_string();
        assert!(api.uploads()[0].chunked);
        assert!(api.expire_batch(&id, 0.25));
        let (_, batch) = http
            .json("GET", &format!("/v1/messages/batches/{id}"), &headers, None)
            .await;
        assert_eq!(
            batch["request_counts"],
            json!({"processing": 0, "succeeded": 37_500, "errored": 0, "canceled": 0,
                "expired": 12_500})
        );
        let results = http
            .send(
                "GET",
                &format!("/v1/messages/batches/{id}/results"),
                &headers,
                full(Bytes::new()),
            )
            .await;
        assert!(results.frames > 1);
        let lines = results.lines();
        assert_eq!(lines.len(), 50_000);
        assert_eq!(
            lines[0]["result"]["message"]["content"][0]["text"],
            "echo: item 0"
        );
        assert_eq!(lines[49_999]["result"]["type"], "expired");
        assert_eq!(api.items_sent_twice(), 0);
    }

    #[tokio::test]
    async fn limits_cancel_window_and_expiry() {
        let api = BatchApi::start().await;
        api.set_duration(Duration::from_secs(3600));
        api.set_limits(2, 10_000);
        let http = Http::new(api.url());
        let version = [("anthropic-version", "2023-06-01")];
        let upload = |lines: &[&str]| {
            let jsonl: Vec<String> = lines
                .iter()
                .map(|id| openai_line(id, "/v1/chat/completions", "some text"))
                .collect();
            let (content_type, body) = multipart(&jsonl.join("\n"));
            let http = &http;
            async move {
                let answer = http
                    .send(
                        "POST",
                        "/v1/files",
                        &[("content-type", content_type.as_str())],
                        full(body),
                    )
                    .await;
                answer.json()["id"].as_str().unwrap().to_string()
            }
        };
        let create = |file: String| {
            let http = &http;
            async move {
                let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"});
                let (status, batch) = http.json("POST", "/v1/batches", &[], Some(body)).await;
                assert_eq!(status, 200, "{batch}");
                batch["id"].as_str().unwrap().to_string()
            }
        };
        let get = |id: String| {
            let http = &http;
            async move {
                http.json("GET", &format!("/v1/batches/{id}"), &[], None)
                    .await
                    .1
            }
        };
        let download = |file: &Value| {
            let path = format!("/v1/files/{}/content", file.as_str().unwrap());
            let http = &http;
            async move {
                http.send("GET", &path, &[], full(Bytes::new()))
                    .await
                    .lines()
            }
        };

        // Over the limits: an OpenAI file of 3 requests fails validation, an Anthropic body
        // of 3 requests or of more than 10,000 bytes is refused.
        let over = create(upload(&["x1", "x2", "x3"]).await).await;
        let batch = get(over).await;
        assert_eq!(batch["status"], "failed");
        assert_eq!(batch["errors"]["data"][0]["code"], "request_limit_exceeded");
        let three = anthropic_body(&[("a", "x"), ("b", "y"), ("c", "z")]);
        let answer = http
            .send("POST", "/v1/messages/batches", &version, full(three))
            .await;
        assert_eq!(answer.status, 400);
        let big = anthropic_body(&[("a", &"word ".repeat(3000))]);
        let answer = http
            .send(
                "POST",
                "/v1/messages/batches",
                &version,
                pieces(big.as_bytes(), 1000),
            )
            .await;
        assert_eq!(answer.status, 413);
        assert_eq!(answer.json()["error"]["type"], "request_too_large");
        let uploads = api.uploads();
        assert_eq!(uploads.last().unwrap().provider, Provider::Anthropic);
        assert!(uploads.last().unwrap().id.is_none());
        assert_eq!(api.peak_upload_bytes(), big.len() as u64);

        // A cancel takes 150 ms; the first request was done before it.
        api.set_cancel_duration(Duration::from_millis(150));
        let file = upload(&["c1", "c2"]).await;
        let cancelled = create(file.clone()).await;
        assert!(api.set_done(&cancelled, 1));
        let (status, batch) = http
            .json(
                "POST",
                &format!("/v1/batches/{cancelled}/cancel"),
                &[],
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(batch["status"], "cancelling");
        assert_eq!(get(cancelled.clone()).await["status"], "cancelling");
        let summary = api
            .batches()
            .into_iter()
            .find(|b| b.id == cancelled)
            .unwrap();
        assert_eq!(summary.input_file_id.as_deref(), Some(file.as_str()));
        assert_eq!((summary.done, summary.items), (1, 2));
        assert!(summary.cancel_requested);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let batch = get(cancelled.clone()).await;
        assert_eq!(batch["status"], "cancelled");
        assert!(batch["cancelled_at"].is_u64());
        assert_eq!(
            batch["request_counts"],
            json!({"total": 2, "completed": 1, "failed": 0})
        );
        let output = download(&batch["output_file_id"]).await;
        assert_eq!(output.len(), 1);
        assert_eq!(output[0]["custom_id"], "c1");
        let errors = download(&batch["error_file_id"]).await;
        assert_eq!(errors[0]["custom_id"], "c2");
        assert_eq!(errors[0]["response"], Value::Null);
        assert_eq!(errors[0]["error"]["code"], "batch_cancelled");

        // Expiry with every request unfinished: no output file.
        let expired = create(upload(&["e1", "e2"]).await).await;
        assert_eq!(api.expire_unfinished(1.0), 1);
        let batch = get(expired).await;
        assert_eq!(batch["status"], "expired");
        assert_eq!(batch["output_file_id"], Value::Null);
        let errors = download(&batch["error_file_id"]).await;
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[1]["error"]["code"], "batch_expired");
        let (_, file) = http
            .json(
                "GET",
                &format!("/v1/files/{}", batch["error_file_id"].as_str().unwrap()),
                &[],
                None,
            )
            .await;
        assert_eq!(file["purpose"], "batch_output");

        let (_, list) = http.json("GET", "/v1/batches?limit=2", &[], None).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 2);
        assert_eq!(list["has_more"], true);
        let last = list["last_id"].as_str().unwrap();
        let (_, rest) = http
            .json(
                "GET",
                &format!("/v1/batches?limit=2&after={last}"),
                &[],
                None,
            )
            .await;
        assert_eq!(rest["data"].as_array().unwrap().len(), 1);
        assert_eq!(rest["has_more"], false);
        assert_eq!(api.items_sent_twice(), 0);
    }

    #[test]
    fn readers_take_any_chunking_and_refuse_invalid_json() {
        let body = r#" { "requests" : [
            {"custom_id": "a-1", "params": {"model": "claude-test", "max_tokens": 2,
              "system": [{"type": "text", "text": "sys tem"}],
              "stop_sequences": ["]", "}", "\"{["], "temperature": 0.5e-1,
              "metadata": {"x": [1, -2, {"y": null, "z": [true, false]}]},
              "messages": [{"role": "user", "content": "first"},
                           {"role": "assistant", "content": "ok"},
                           {"role": "user", "content": [
                               {"type": "image", "source": {"data": "xx"}},
                               {"type": "text", "text": "caf\u00e9 \"quoted\" \ud83d\ude00 \\ end"}]}]}},
            {"custom_id": "b_2", "params": {"model": "m", "messages": []}} ] } "#;
        for size in [1, 2, 7, 64, body.len()] {
            let mut stream = RequestStream::new(10);
            for chunk in body.as_bytes().chunks(size) {
                stream.feed(chunk).unwrap();
            }
            let items = stream.finish().unwrap();
            assert_eq!(items.len(), 2, "chunks of {size}");
            let a = &items[0];
            assert_eq!(&*a.custom_id, "a-1");
            assert_eq!(&*a.model, "claude-test");
            assert_eq!(&*a.text, "café \"quoted\" 😀 \\ end");
            // "sys tem", "first", "ok", and the last message's 5 words.
            assert_eq!(a.prompt_tokens, 2 + 1 + 1 + 5);
            assert_eq!(a.reply(), ("echo: café".to_string(), 2, true));
            assert_eq!(a.completion_tokens, 2);
            assert!(a.error.is_none());
            let b = &items[1];
            assert_eq!(
                b.error.as_deref(),
                Some("max_tokens: Field required"),
                "chunks of {size}"
            );
        }
        let refused = |body: &str| {
            let mut stream = RequestStream::new(10);
            stream
                .feed(body.as_bytes())
                .and_then(|()| stream.finish().map(|_| ()))
                .unwrap_err()
        };
        let one = r#"{"custom_id": "x", "params": {}}"#;
        assert!(refused(&format!(r#"{{"requests": [{one}]}} x"#)).contains("trailing"));
        assert!(refused(&format!(r#"{{"other": 1, "requests": [{one}]}}"#)).contains("other"));
        assert!(refused(&format!(r#"{{"requests": [{one}]"#)).contains("EOF"));
        assert!(refused(r#"{"requests": []}"#).contains("at least 1"));
        assert!(
            refused(r#"{"requests": [{"custom_id": "x", "params": {"a": 01}}]}"#)
                .contains("requests.0")
        );
        assert!(
            refused(r#"{"requests": [{"custom_id": "x"}]}"#).contains("params: Field required")
        );
        assert!(
            refused(r#"{"requests": [{"custom_id": "x", "params": {}, "more": 1}]}"#)
                .contains("Extra inputs")
        );
        assert!(refused(&format!(r#"{{"requests": [{one}, {one}]}}"#)).contains("not unique"));
        let long = "x".repeat(65);
        assert!(
            refused(&format!(
                r#"{{"requests": [{{"custom_id": "{long}", "params": {{}}}}]}}"#
            ))
            .contains("pattern")
        );

        for bad in [
            r#"{"a": 1,}"#,
            r#"{"a": 01}"#,
            r#"{"a": "\x"}"#,
            r#"{"a": tru}"#,
            r#"{"a": "unterminated}"#,
            r#"{"a": 1} {"#,
            r#"[1]"#,
            "{\"a\": \"tab\tinside\"}",
        ] {
            assert!(skim_line(bad.as_bytes()).is_err(), "{bad}");
        }
        let line = skim_line(br#"{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m","max_completion_tokens":null,"max_tokens":3,"messages":[{"role":"developer","content":"be kind"},{"role":"user","content":"hi there"}]}}"#).unwrap();
        assert_eq!(line.custom_id.as_deref(), Some("c"));
        let body = line.body.unwrap();
        let item = openai_item("c", &body, 1, 0);
        assert_eq!(
            (&*item.text, item.prompt_tokens, item.max_tokens),
            ("hi there", 4, Some(3))
        );
    }
}
