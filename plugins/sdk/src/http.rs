//! Blocking HTTP over `wasi:http`. [`send`] makes one request and reads the response whole;
//! [`open`] hands back the status and headers with a [`BodyReader`] that reads the body
//! chunk by chunk, as it arrives (for streamed answers); [`open_writer`] starts a request
//! whose body is written piece by piece ([`BodyWriter`], for uploads too large to hold). The
//! host applies the provider's allow-list, timeout and response-size cap.

use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, OutgoingBody,
    OutgoingRequest, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The headers, names lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// The host refused the destination (not in the provider's allowed hosts).
    Denied(String),
    /// No response in time.
    Timeout(String),
    /// The server could not be reached.
    Unreachable(String),
    /// The URL is malformed.
    BadUrl(String),
    /// The response is larger than the host allows the provider to read.
    TooLarge(String),
    /// The request body is larger than the host lets the provider send.
    RequestTooLarge(String),
    /// Anything else on the wire, such as a response larger than the host's cap.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "request denied: {m}"),
            HttpError::Timeout(m) => write!(f, "timed out: {m}"),
            HttpError::Unreachable(m) => write!(f, "unreachable: {m}"),
            HttpError::BadUrl(m) => write!(f, "bad URL: {m}"),
            HttpError::TooLarge(m) => write!(f, "response too large: {m}"),
            HttpError::RequestTooLarge(m) => write!(f, "request too large: {m}"),
            HttpError::Protocol(m) => write!(f, "HTTP error: {m}"),
        }
    }
}

fn from_code(url: &str, code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!("{url} is not allowed")),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Timeout(format!("{url}: {code:?}")),
        ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DnsTimeout
        | ErrorCode::DnsError(_) => HttpError::Unreachable(format!("{url}: {code:?}")),
        ErrorCode::HttpResponseBodySize(limit) => HttpError::TooLarge(format!(
            "{url}: more than the {} bytes the host allows (max_response_bytes)",
            limit.unwrap_or_default()
        )),
        ErrorCode::HttpRequestBodySize(limit) => HttpError::RequestTooLarge(match limit {
            Some(limit) => format!("{url}: more than the {limit} bytes the host lets it send"),
            None => format!("{url}: more than the host lets it send"),
        }),
        other => HttpError::Protocol(format!("{url}: {other:?}")),
    }
}

struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    path_and_query: &'a str,
}

fn parse(url: &str) -> Result<Url<'_>, HttpError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(HttpError::BadUrl(format!(
            "`{url}` is not http:// or https://"
        )));
    };
    let split = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(HttpError::BadUrl(format!("`{url}` has no host")));
    }
    Ok(Url {
        scheme,
        authority,
        path_and_query: if path.is_empty() { "/" } else { path },
    })
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), HttpError> {
    // `blocking-write-and-flush` takes at most 4096 bytes a call.
    for chunk in bytes.chunks(WRITE_MAX) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| HttpError::Protocol(format!("writing the request body: {e:?}")))?;
    }
    Ok(())
}

/// `POST url` with a JSON body and `headers` (`content-type: application/json` is added).
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(Method::Post, url, &all, Some(body))
}

/// Sends one request and reads the whole response.
pub fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let (mut response, reader) = open(method, url, headers, body)?;
    response.body = reader.read_all()?;
    Ok(response)
}

/// `POST url` with a JSON body and `headers` (`content-type: application/json` is added),
/// without reading the body: see [`open`].
pub fn post_json_streaming(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(Response, BodyReader), HttpError> {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    open(Method::Post, url, &all, Some(body))
}

/// Sends one request and waits for the response's status and headers. The returned
/// [`Response`] has an empty `body`: read it from the [`BodyReader`].
pub fn open(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(Response, BodyReader), HttpError> {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    // A body of known size goes with its length, not chunked: some servers and proxies
    // refuse chunked requests.
    let length = body.map(|b| b.len().to_string());
    if let Some(length) = &length
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        all.push(("content-length", length.as_str()));
    }
    let (outgoing, pending) = start(method, url, &all)?;
    if let Some(bytes) = body {
        let stream = outgoing
            .write()
            .map_err(|()| HttpError::Protocol("request body stream unavailable".into()))?;
        write_all(&stream, bytes)?;
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| from_code(url, e))?;
    wait(url, pending)
}

/// Builds the request and hands it to the host, which sends it as its body is written.
fn start(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(OutgoingBody, FutureIncomingResponse), HttpError> {
    let parsed = parse(url)?;
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&entries)
        .map_err(|e| HttpError::Protocol(format!("invalid header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let bad = |what: &str| HttpError::BadUrl(format!("`{url}`: invalid {what}"));
    request.set_method(&method).map_err(|()| bad("method"))?;
    request
        .set_scheme(Some(&parsed.scheme))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(parsed.authority))
        .map_err(|()| bad("host"))?;
    request
        .set_path_with_query(Some(parsed.path_and_query))
        .map_err(|()| bad("path"))?;
    let outgoing = request
        .body()
        .map_err(|()| HttpError::Protocol("request body already taken".into()))?;
    // Hand the request over first: the host buffers little of the body until it sends.
    let pending = outgoing_handler::handle(request, None).map_err(|e| from_code(url, e))?;
    Ok((outgoing, pending))
}

/// Waits for the response's status and headers.
fn wait(url: &str, pending: FutureIncomingResponse) -> Result<(Response, BodyReader), HttpError> {
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(from_code(url, code)),
        Some(Err(())) | None => {
            return Err(HttpError::Protocol(format!("{url}: no response")));
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Protocol("response body already taken".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| HttpError::Protocol("response body stream unavailable".into()))?;
    Ok((
        Response {
            status,
            headers,
            body: Vec::new(),
        },
        BodyReader {
            url: url.to_string(),
            stream: Some(stream),
            body: Some(incoming),
            response: Some(response),
        },
    ))
}

/// Starts a request whose body is written piece by piece with [`BodyWriter::write`], for a
/// body too large to hold whole (a batch upload). It goes without a `content-length`, so
/// HTTP/1.1 sends it chunked; a `content-length` in `headers` is dropped, since the size is
/// not known until [`BodyWriter::finish`].
pub fn open_writer(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<BodyWriter, HttpError> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
        .copied()
        .collect();
    let (outgoing, pending) = start(method, url, &headers)?;
    let stream = outgoing
        .write()
        .map_err(|()| HttpError::Protocol("request body stream unavailable".into()))?;
    Ok(BodyWriter {
        url: url.to_string(),
        buffer: Vec::with_capacity(WRITE_MAX),
        stream: Some(stream),
        body: Some(outgoing),
        pending: Some(pending),
        written: 0,
        failed: None,
    })
}

/// The most `blocking-write-and-flush` takes in one call.
const WRITE_MAX: usize = 4096;

/// A request body being written, piece by piece, while the host sends it.
pub struct BodyWriter {
    url: String,
    /// Small writes wait here until [`WRITE_MAX`] bytes fill it, so that many short pieces
    /// (a comma, one short line) do not each cost a call into the host.
    buffer: Vec<u8>,
    // Dropped in this order (see `Drop`): the stream, then the body, then the response.
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    pending: Option<FutureIncomingResponse>,
    written: u64,
    /// Why a write failed: the request was abandoned, and `finish` says so.
    failed: Option<HttpError>,
}

impl BodyWriter {
    /// Appends `bytes` to the body. A failure abandons the request (the host sees a body cut
    /// short); [`BodyWriter::finish`] then returns the server's answer if it sent one before
    /// it stopped reading (such as a 401 or a 413), which says more than the broken stream.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = WRITE_MAX - self.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buffer.extend_from_slice(now);
            rest = later;
            if self.buffer.len() == WRITE_MAX {
                self.send_buffer()?;
            }
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn send_buffer(&mut self) -> Result<(), HttpError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = match &self.stream {
            Some(stream) => stream.blocking_write_and_flush(&self.buffer).map_err(|e| {
                HttpError::Protocol(format!("{}: writing the request body: {e:?}", self.url))
            }),
            None => Err(HttpError::Protocol(format!(
                "{}: the request body is closed",
                self.url
            ))),
        };
        self.buffer.clear();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            // Dropping the body without `finish` tells the host that it is incomplete.
            drop(self.stream.take());
            drop(self.body.take());
        }
        result
    }

    /// Ends the body and waits for the response's status and headers, as [`open`] does.
    /// After a failed write: the server's answer when it sent an error status before the
    /// body ended, else the write's error.
    pub fn finish(mut self) -> Result<(Response, BodyReader), HttpError> {
        if self.failed.is_none() {
            // An error here is kept in `failed`, as a failed `write` keeps it.
            let _ = self.send_buffer();
        }
        let pending = self
            .pending
            .take()
            .ok_or_else(|| HttpError::Protocol(format!("{}: no response", self.url)))?;
        if let Some(error) = self.failed.take() {
            return match wait(&self.url, pending) {
                Ok((response, reader)) if !(200..300).contains(&response.status) => {
                    Ok((response, reader))
                }
                // The host's reason for dropping the body (its size cap, a timeout, a
                // denied host) says more than the broken stream.
                Err(HttpError::Protocol(_)) | Ok(_) => Err(error),
                Err(reason) => Err(reason),
            };
        }
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            OutgoingBody::finish(body, None).map_err(|e| from_code(&self.url, e))?;
        }
        wait(&self.url, pending)
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // Unfinished: the body is dropped without `finish`, so the host abandons the request.
        drop(self.stream.take());
        drop(self.body.take());
        drop(self.pending.take());
    }
}

/// A response body being read, chunk by chunk as the server sends it.
pub struct BodyReader {
    url: String,
    // Dropped in this order (see `Drop`): the stream, then the body, then the response.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    response: Option<IncomingResponse>,
}

impl BodyReader {
    /// The next chunk of the body (at most 64 KiB; as much as has arrived), waiting for one;
    /// `None` once the body has ended.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Ok(Some(chunk)),
                Err(StreamError::Closed) => {
                    self.close();
                    return Ok(None);
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    let url = &self.url;
                    let detail = e.to_debug_string();
                    return Err(match wasip2::http::types::http_error_code(&e) {
                        Some(code) => from_code(url, code),
                        // The host's body-size cap arrives as a plain stream error.
                        None if detail.contains("body size exceeds limit") => {
                            HttpError::TooLarge(format!("{url}: {detail} (max_response_bytes)"))
                        }
                        // So does the request timeout, when it ends a body that stalled.
                        None if detail.contains("HTTP response timeout") => {
                            HttpError::Timeout(format!("{url}: reading the body: {detail}"))
                        }
                        None => HttpError::Protocol(format!("{url}: reading the body: {detail}")),
                    });
                }
            }
        }
    }

    /// The rest of the body, whole.
    pub fn read_all(mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn close(&mut self) {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            drop(IncomingBody::finish(body));
        }
        drop(self.response.take());
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        self.close();
    }
}
