//! Batches (WIT 0.2.1) for an HTTP provider. [`BatchAdapter`] is what a provider's batch API
//! adds to its [`HttpAdapter`]; `lanes_guest::export_http_batch_adapter!(MyAdapter);` then
//! exports both `adapter` and `batch`. The helpers here are what every batch API needs:
//!
//! - the requests: [`items`] pulls them from the host a page at a time, and [`item_request`]
//!   builds each one's HTTP request exactly as a live call would ([`crate::adapter::build`]:
//!   `build_request` with `extra` merged), without streaming;
//! - the upload: [`upload`] opens a request whose body is written piece by piece
//!   ([`Upload::write`]), so that a file of hundreds of megabytes never sits whole in the
//!   component;
//! - the batch endpoints: [`call`] sends one request and reads its JSON answer, mapping an
//!   error status as a live call would;
//! - the results: [`download`] streams a JSONL file line by line ([`JsonLines`]),
//!   [`http_outcome`] reads a line's answer with the live parser, and [`Outcomes`] hands
//!   the outcomes to the host a few hundred at a time.
//!
//! A provider's batch id goes into URLs through [`segment`].

use std::collections::VecDeque;
use std::marker::PhantomData;

use serde_json::Value;

use crate::adapter::{self, HttpAdapter, HttpRequest};
use crate::bindings::lanes::provider::types::{
    ChatRequest, ChatResponse, ContentPart, ImageSource, ProviderError, ResultPart,
};
use crate::errors;
use crate::http::{self, BodyReader, BodyWriter, HttpError, Method, Response};
use crate::stream::LineReader;

pub use crate::batch_bindings::exports::lanes::provider::batch::{
    BatchLimits, BatchState, BatchStatus,
};
pub use crate::batch_bindings::lanes::provider::batch_io::{BatchItem, BatchOutcome, ItemResult};

/// A provider's batch API, beside its live one: implement it with [`HttpAdapter`], then call
/// [`export_http_batch_adapter!`](crate::export_http_batch_adapter) once. Each function is
/// the `batch` export's of the same name; the macro takes every secret read through
/// [`crate::secret`] out of their errors ([`crate::scrub`]).
pub trait BatchAdapter: HttpAdapter {
    /// This provider's caps on one batch. Called when the component loads: cheap, never
    /// failing.
    fn limits() -> BatchLimits;

    /// The headers of every request to the batch endpoints and their files: the
    /// credentials and version headers a live call sends.
    fn batch_headers() -> Result<Vec<(String, String)>, ProviderError>;

    /// Sends a new batch of the requests [`items`] hands over; returns the provider's id.
    fn submit(tag: &str) -> Result<String, ProviderError>;

    /// The id of a batch sent earlier with `tag`, when the API can look it up.
    fn find(tag: &str) -> Result<Option<String>, ProviderError>;

    /// The state of batch `id`.
    fn status(id: &str) -> Result<BatchState, ProviderError>;

    /// Reads the results of batch `id`, handing them to the host through [`Outcomes`].
    fn results(id: &str) -> Result<(), ProviderError>;

    /// Asks the provider to cancel batch `id`.
    fn cancel(id: &str) -> Result<(), ProviderError>;
}

/// Implements the `adapter` and `batch` exports for a type that implements both
/// [`HttpAdapter`] and [`BatchAdapter`], and exports them: what
/// [`export_http_adapter!`](crate::export_http_adapter) is to a provider that does not
/// batch.
#[macro_export]
macro_rules! export_http_batch_adapter {
    ($adapter:ident) => {
        $crate::export_http_adapter!($adapter);

        impl $crate::batch_bindings::exports::lanes::provider::batch::Guest for $adapter {
            fn limits() -> $crate::batch::BatchLimits {
                <$adapter as $crate::batch::BatchAdapter>::limits()
            }

            fn submit(
                tag: ::std::string::String,
            ) -> ::core::result::Result<
                ::std::string::String,
                $crate::bindings::lanes::provider::types::ProviderError,
            > {
                <$adapter as $crate::batch::BatchAdapter>::submit(&tag).map_err($crate::scrub)
            }

            fn find(
                tag: ::std::string::String,
            ) -> ::core::result::Result<
                ::core::option::Option<::std::string::String>,
                $crate::bindings::lanes::provider::types::ProviderError,
            > {
                <$adapter as $crate::batch::BatchAdapter>::find(&tag).map_err($crate::scrub)
            }

            fn status(
                id: ::std::string::String,
            ) -> ::core::result::Result<
                $crate::batch::BatchState,
                $crate::bindings::lanes::provider::types::ProviderError,
            > {
                <$adapter as $crate::batch::BatchAdapter>::status(&id).map_err($crate::scrub)
            }

            fn results(
                id: ::std::string::String,
            ) -> ::core::result::Result<(), $crate::bindings::lanes::provider::types::ProviderError>
            {
                <$adapter as $crate::batch::BatchAdapter>::results(&id).map_err($crate::scrub)
            }

            fn cancel(
                id: ::std::string::String,
            ) -> ::core::result::Result<(), $crate::bindings::lanes::provider::types::ProviderError>
            {
                <$adapter as $crate::batch::BatchAdapter>::cancel(&id).map_err($crate::scrub)
            }
        }

        $crate::batch_bindings::export_batch!($adapter with_types_in $crate::batch_bindings);
    };
}

/// The next requests of the batch being sent, at most `max` (`batch-io.next-items`); empty
/// once all were handed over.
pub fn next_items(max: u32) -> Vec<BatchItem> {
    // Native builds (unit tests) have no host to ask.
    #[cfg(target_arch = "wasm32")]
    return crate::batch_bindings::lanes::provider::batch_io::next_items(max);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = max;
        Vec::new()
    }
}

/// Hands `outcomes` to the host (`batch-io.put-results`).
pub fn put_results(outcomes: &[BatchOutcome]) {
    #[cfg(target_arch = "wasm32")]
    crate::batch_bindings::lanes::provider::batch_io::put_results(outcomes);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = outcomes;
}

/// About how many bytes of requests one page from the host should hold: pages shrink when
/// requests are large (images), so that one page does not fill the component's memory.
const PAGE_BYTES: usize = 16 << 20;

/// The requests of the batch being sent, in order, pulled from the host a page at a time
/// (see [`items`]).
pub struct Items {
    page: u32,
    max_page: u32,
    queue: VecDeque<BatchItem>,
    done: bool,
}

/// The requests of the batch being sent, pulled from the host in pages of at most
/// `max_page`, fewer when the requests are large (about 16 MiB of them a page).
pub fn items(max_page: u32) -> Items {
    let max_page = max_page.max(1);
    Items {
        page: max_page,
        max_page,
        queue: VecDeque::new(),
        done: false,
    }
}

impl Iterator for Items {
    type Item = BatchItem;

    fn next(&mut self) -> Option<BatchItem> {
        if self.queue.is_empty() && !self.done {
            let page = next_items(self.page);
            if page.is_empty() {
                self.done = true;
            } else {
                let bytes = page.iter().map(|i| request_size(&i.request)).sum();
                self.page = next_page(self.max_page, page.len(), bytes);
                self.queue.extend(page);
            }
        }
        self.queue.pop_front()
    }
}

/// The size of the next page: as many requests as fit [`PAGE_BYTES`] at the last page's
/// average size, from 1 to `max_page`.
fn next_page(max_page: u32, count: usize, bytes: usize) -> u32 {
    let average = (bytes / count.max(1)).max(1);
    u32::try_from(PAGE_BYTES / average)
        .unwrap_or(u32::MAX)
        .clamp(1, max_page)
}

/// Roughly how many bytes `request` takes: its strings, which images and long
/// conversations make large.
fn request_size(request: &ChatRequest) -> usize {
    let image = |source: &ImageSource| match source {
        ImageSource::Url(u) => u.len(),
        ImageSource::Base64(b) => b.len(),
    };
    let part = |p: &ContentPart| match p {
        ContentPart::Text(t) => t.len(),
        ContentPart::Image(i) => image(&i.source),
        ContentPart::ToolCall(c) => c.id.len() + c.name.len() + c.arguments.len(),
        ContentPart::ToolResult(r) => r
            .parts
            .iter()
            .map(|p| match p {
                ResultPart::Text(t) => t.len(),
                ResultPart::Image(i) => image(&i.source),
            })
            .sum(),
        ContentPart::Reasoning(r) => {
            r.text.len()
                + r.signature.as_ref().map_or(0, String::len)
                + r.redacted.as_ref().map_or(0, String::len)
        }
    };
    let messages: usize = request
        .messages
        .iter()
        .flat_map(|m| m.content.iter())
        .map(|p| 32 + part(p))
        .sum();
    let tools: usize = request
        .tools
        .iter()
        .map(|t| {
            t.name.len()
                + t.description.as_ref().map_or(0, String::len)
                + t.parameters.as_ref().map_or(0, String::len)
        })
        .sum();
    256 + messages
        + tools
        + request.system.as_ref().map_or(0, String::len)
        + request.extra.as_ref().map_or(0, String::len)
}

/// The HTTP request for one request of a batch: what a live call of `request` sends
/// ([`adapter::build`]: the adapter's `build_request` with `extra` merged), without
/// streaming, since a batch answers whole: `stream` is unset before the build, and a
/// `stream` or `stream_options` that `extra` put back is removed. An error names the
/// request's custom id.
pub fn item_request<A: HttpAdapter>(
    custom_id: &str,
    mut request: ChatRequest,
) -> Result<HttpRequest, ProviderError> {
    request.stream = false;
    let mut built = adapter::build::<A>(&request)
        .map_err(|e| prefixed(e, &format!("batch request `{custom_id}`: ")))?;
    if let Value::Object(body) = &mut built.body {
        body.remove("stream");
        body.remove("stream_options");
    }
    Ok(built)
}

/// `error` with `prefix` before its message.
fn prefixed(error: ProviderError, prefix: &str) -> ProviderError {
    let add = |m: String| format!("{prefix}{m}");
    match error {
        ProviderError::RateLimited(mut r) => {
            r.message = add(r.message);
            ProviderError::RateLimited(r)
        }
        ProviderError::Unavailable(m) => ProviderError::Unavailable(add(m)),
        ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(add(m)),
        ProviderError::Unauthorized(m) => ProviderError::Unauthorized(add(m)),
        ProviderError::Other(m) => ProviderError::Other(add(m)),
    }
}

/// How one request of a batch ended, from the HTTP answer its result line holds (`status`
/// and the JSON `body`, the same as a live answer): a success is read with the adapter's
/// `parse_response`, an error status mapped with its `classify_error`.
pub fn http_outcome<A: HttpAdapter>(status: u16, body: &Value) -> ItemResult {
    let response = Response {
        status,
        headers: Vec::new(),
        body: serde_json::to_vec(body).unwrap_or_default(),
    };
    let result = if A::is_success(&response) {
        A::parse_response(&response)
    } else {
        Err(A::classify_error(&response))
    };
    match result {
        Ok(answer) => ItemResult::Succeeded(answer),
        Err(error) => ItemResult::Failed(crate::scrub(error)),
    }
}

/// As [`http_outcome`], for an adapter that reads a success from its JSON value (`parse`,
/// what its `parse_response` does after reading the body): a success goes to `parse` as the
/// line held it, without being written out and read again. Of a 50,000-line file, those
/// two steps were two of the three passes over each answer's JSON in the guest, which was
/// the slower side of the results' read and write.
pub fn http_outcome_with<A: HttpAdapter>(
    status: u16,
    body: &Value,
    parse: impl Fn(&Value) -> Result<ChatResponse, ProviderError>,
) -> ItemResult {
    let head = Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    };
    if !A::is_success(&head) {
        return http_outcome::<A>(status, body);
    }
    match parse(body) {
        Ok(answer) => ItemResult::Succeeded(answer),
        Err(error) => ItemResult::Failed(crate::scrub(error)),
    }
}

/// How many outcomes go to the host in one `put-results` call.
pub const OUTCOMES_PER_CALL: usize = 200;

/// The outcomes read so far, handed to the host every [`OUTCOMES_PER_CALL`], at
/// [`Outcomes::flush`] and when dropped: results read before an error still reach the host.
#[derive(Default)]
pub struct Outcomes {
    pending: Vec<BatchOutcome>,
    count: u64,
    /// Result lines that named no request, or could not be read.
    skipped: u64,
}

impl Outcomes {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the outcome of request `custom_id`.
    pub fn push(&mut self, custom_id: String, outcome: ItemResult) {
        self.pending.push(BatchOutcome { custom_id, outcome });
        self.count += 1;
        if self.pending.len() >= OUTCOMES_PER_CALL {
            self.flush();
        }
    }

    /// How many outcomes were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads a results file to its end, each line through the adapter's `outcome`
    /// (`None`: a line it cannot read, counted and skipped).
    pub fn read(
        &mut self,
        lines: &mut JsonLines,
        outcome: impl Fn(&str) -> Option<(String, ItemResult)>,
    ) -> Result<(), ProviderError> {
        while let Some(line) = lines.next_line().map_err(errors::transport)? {
            match outcome(&line) {
                Some((custom_id, result)) => self.push(custom_id, result),
                None => self.skipped += 1,
            }
        }
        Ok(())
    }

    /// Hands over the rest and says in the log what batch `id`'s results came to.
    pub fn finish(mut self, id: &str) {
        self.flush();
        if self.skipped > 0 {
            crate::warn!(
                "batch {id}: skipped {} unreadable result lines",
                self.skipped
            );
        }
        crate::debug!("batch {id}: {} results read", self.count);
    }

    /// Hands the outcomes not handed yet to the host.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            put_results(&self.pending);
            self.pending.clear();
        }
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A body read chunk by chunk: a [`BodyReader`], or recorded chunks in a test.
pub trait Chunks {
    /// The next chunk, `None` once the body ended.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError>;
}

impl Chunks for BodyReader {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        BodyReader::next_chunk(self)
    }
}

/// The non-empty lines of a JSONL body, one at a time, as the body arrives. It holds at
/// most one chunk of the body and the line that chunk cuts, never the whole body.
pub struct JsonLines<R: Chunks = BodyReader> {
    source: R,
    lines: LineReader,
    /// The lines of the last chunk not handed out yet.
    ready: VecDeque<String>,
    ended: bool,
}

impl<R: Chunks> JsonLines<R> {
    /// The lines of `source`.
    pub fn new(source: R) -> Self {
        JsonLines {
            source,
            lines: LineReader::new(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// The next non-empty line, without its end; `None` at the end of the body.
    pub fn next_line(&mut self) -> Result<Option<String>, HttpError> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(Some(line));
            }
            if self.ended {
                return Ok(None);
            }
            match self.source.next_chunk()? {
                Some(chunk) => self.ready.extend(self.lines.push(&chunk)),
                None => {
                    self.ended = true;
                    self.ready.extend(self.lines.finish());
                }
            }
        }
    }
}

/// `path` (such as `/v1/batches`) after the provider's base URL, as a live call's.
pub fn url<A: HttpAdapter>(path: &str) -> String {
    format!("{}{path}", crate::base_url(A::DEFAULT_BASE_URL))
}

/// `id` as one segment of a URL path: anything but `A-Z a-z 0-9 - _ . ~` percent-encoded,
/// so that an id never changes the path it goes in.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn header_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// Sends `method path` (after the base URL) to a batch endpoint with
/// [`BatchAdapter::batch_headers`] and `body` as JSON, and reads the JSON answer. An error
/// status maps as a live call's does ([`HttpAdapter::classify_error`]); a transport failure
/// as [`errors::transport`]. A POST without a body goes with an empty one.
pub fn call<A: BatchAdapter>(
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ProviderError> {
    let headers = A::batch_headers()?;
    let mut refs = header_refs(&headers);
    let bytes = match body {
        Some(value) => {
            refs.push(("content-type", "application/json"));
            Some(value.to_string())
        }
        None if matches!(method, Method::Get | Method::Head) => None,
        None => Some(String::new()),
    };
    let response = http::send(
        method,
        &url::<A>(path),
        &refs,
        bytes.as_deref().map(str::as_bytes),
    )
    .map_err(errors::transport)?;
    answer::<A>(&response)
}

/// A whole answer of a batch endpoint as JSON, or its error.
fn answer<A: HttpAdapter>(response: &Response) -> Result<Value, ProviderError> {
    if !A::is_success(response) {
        return Err(A::classify_error(response));
    }
    adapter::json(response)
}

/// Starts `GET url` (a whole URL: a results file may live elsewhere than the base URL)
/// with [`BatchAdapter::batch_headers`], and hands back its body's lines as they arrive.
/// An error status is read whole and mapped as a live call's.
pub fn download<A: BatchAdapter>(url: &str) -> Result<JsonLines, ProviderError> {
    let headers = A::batch_headers()?;
    let (mut response, reader) =
        http::open(Method::Get, url, &header_refs(&headers), None).map_err(errors::transport)?;
    if !A::is_success(&response) {
        response.body = reader.read_all().map_err(errors::transport)?;
        return Err(A::classify_error(&response));
    }
    Ok(JsonLines::new(reader))
}

/// A request body being uploaded to a batch endpoint, written piece by piece (see
/// [`upload`]).
pub struct Upload<A: BatchAdapter> {
    writer: Option<BodyWriter>,
    max_bytes: u64,
    adapter: PhantomData<A>,
}

/// Starts `method path` (after the base URL) with [`BatchAdapter::batch_headers`] and
/// `content-type`, its body to be written with [`Upload::write`] (chunked: the size is not
/// known ahead).
pub fn upload<A: BatchAdapter>(
    method: Method,
    path: &str,
    content_type: &str,
) -> Result<Upload<A>, ProviderError> {
    let headers = A::batch_headers()?;
    let mut refs = header_refs(&headers);
    refs.push(("content-type", content_type));
    let writer = http::open_writer(method, &url::<A>(path), &refs).map_err(errors::transport)?;
    Ok(Upload {
        writer: Some(writer),
        max_bytes: A::limits().max_bytes,
        adapter: PhantomData,
    })
}

impl<A: BatchAdapter> Upload<A> {
    /// Appends `bytes` to the body. An upload over [`BatchAdapter::limits`]' `max-bytes` is
    /// refused (`invalid-request`) before it is sent, which the API would do only after
    /// reading all of it. When the server stops reading (it answered early, such as 401 or
    /// 413), its answer is the error, mapped as a live call's.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ProviderError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(ProviderError::Unavailable(
                "the upload was abandoned".into(),
            ));
        };
        if writer.written() + bytes.len() as u64 > self.max_bytes {
            return Err(ProviderError::InvalidRequest(format!(
                "the batch's upload is over {} bytes, the most the provider takes",
                self.max_bytes
            )));
        }
        let Err(error) = writer.write(bytes) else {
            return Ok(());
        };
        let Some(writer) = self.writer.take() else {
            return Err(errors::transport(error));
        };
        // After a failed write, `finish` gives the server's early answer, or the most
        // telling of the host's reason and the write's error.
        Err(match writer.finish() {
            Ok((mut response, reader)) => {
                response.body = reader.read_all().unwrap_or_default();
                A::classify_error(&response)
            }
            Err(reason) => errors::transport(reason),
        })
    }

    /// The bytes written so far.
    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, BodyWriter::written)
    }

    /// Ends the body and reads the JSON answer, as [`call`] does.
    pub fn finish(mut self) -> Result<Value, ProviderError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| ProviderError::Unavailable("the upload was abandoned".into()))?;
        let (mut response, reader) = writer.finish().map_err(errors::transport)?;
        response.body = reader.read_all().map_err(errors::transport)?;
        answer::<A>(&response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::lanes::provider::types::{
        ChatResponse, FinishReason, Image, Message, ProviderInfo, Role, Usage,
    };

    struct Chunked(VecDeque<Vec<u8>>);

    impl Chunks for Chunked {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
            Ok(self.0.pop_front())
        }
    }

    fn lines_of(body: &str, size: usize) -> Vec<String> {
        let chunks = body.as_bytes().chunks(size).map(<[u8]>::to_vec).collect();
        let mut lines = JsonLines::new(Chunked(chunks));
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn jsonl_lines_however_the_body_is_cut() {
        let body = "{\"a\":1}\n{\"b\":\"é\"}\r\n\n{\"c\":3}";
        for size in [1, 2, 3, 5, 8, 1000] {
            assert_eq!(
                lines_of(body, size),
                vec!["{\"a\":1}", "{\"b\":\"é\"}", "{\"c\":3}"],
                "chunks of {size}"
            );
        }
        assert!(lines_of("", 4).is_empty());
        assert_eq!(lines_of("x\n", 1), vec!["x"]);
    }

    #[test]
    fn pages_shrink_for_large_requests() {
        assert_eq!(next_page(500, 500, 500 * 2_000), 500);
        assert_eq!(next_page(500, 10, 10 * (4 << 20)), 4);
        assert_eq!(next_page(500, 1, 100 << 20), 1);
        assert_eq!(next_page(500, 0, 0), 500);
        let big = ChatRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentPart::Image(Image {
                    source: ImageSource::Base64("A".repeat(1 << 20)),
                    media_type: Some("image/png".into()),
                })],
            }],
            ..crate::plain_request(Vec::new())
        };
        assert!(request_size(&big) > 1 << 20);
    }

    #[test]
    fn ids_stay_one_segment() {
        assert_eq!(segment("batch_abc-123"), "batch_abc-123");
        assert_eq!(segment("../x y/?"), "..%2Fx%20y%2F%3F");
    }

    struct Test;

    impl HttpAdapter for Test {
        fn info() -> ProviderInfo {
            unimplemented!()
        }
        const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:1";
        fn build_request(request: &ChatRequest) -> Result<HttpRequest, ProviderError> {
            let mut body = serde_json::json!({"model": crate::model(request)?});
            if request.stream {
                body["stream"] = Value::Bool(true);
            }
            Ok(HttpRequest::post("/chat", body))
        }
        fn parse_response(response: &Response) -> Result<ChatResponse, ProviderError> {
            let value = adapter::json(response)?;
            Ok(ChatResponse {
                content: crate::text_content(crate::text_at(&value, "/text")),
                refusal: None,
                model: crate::text_at(&value, "/model"),
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    cache_read_tokens: None,
                    cache_write_tokens: None,
                    reasoning_tokens: None,
                },
                finish_reason: FinishReason::Stop,
            })
        }
    }

    #[test]
    fn an_item_is_built_as_a_live_call_without_a_stream() {
        let request = ChatRequest {
            model: Some("m".into()),
            stream: true,
            extra: Some(r#"{"top_k": 5, "stream": true, "stream_options": {}}"#.into()),
            ..crate::plain_request(Vec::new())
        };
        let built = item_request::<Test>("exec-1", request).unwrap();
        assert_eq!(built.body, serde_json::json!({"model": "m", "top_k": 5}));
        let bad = ChatRequest {
            model: Some("m".into()),
            extra: Some("[1]".into()),
            ..crate::plain_request(Vec::new())
        };
        assert!(matches!(
            item_request::<Test>("exec-2", bad),
            Err(ProviderError::InvalidRequest(m)) if m.starts_with("batch request `exec-2`: ")
        ));
    }

    #[test]
    fn a_line_answer_reads_as_a_live_one() {
        let ok = http_outcome::<Test>(200, &serde_json::json!({"text": "hi", "model": "m"}));
        assert!(
            matches!(&ok, ItemResult::Succeeded(r) if r.content == vec![ContentPart::Text("hi".into())]),
            "{ok:?}"
        );
        let limited =
            http_outcome::<Test>(429, &serde_json::json!({"error": {"message": "slow down"}}));
        assert!(
            matches!(limited, ItemResult::Failed(ProviderError::RateLimited(r)) if r.message == "HTTP 429: slow down")
        );
        let invalid = http_outcome::<Test>(400, &serde_json::json!({"error": {"message": "no"}}));
        assert!(matches!(
            invalid,
            ItemResult::Failed(ProviderError::InvalidRequest(_))
        ));
        let busy = http_outcome::<Test>(500, &Value::Null);
        assert!(matches!(
            busy,
            ItemResult::Failed(ProviderError::Unavailable(_))
        ));
    }
}
