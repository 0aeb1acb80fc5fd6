//! Streamed answers: reading Server-Sent Events ([`SseParser`]) and NDJSON lines
//! ([`LineReader`]) from a body that arrives in chunks cut anywhere, and building the
//! response while handing each piece to the host as a `stream.emit` delta
//! ([`ResponseBuilder`]). An adapter implements [`StreamDecoder`] for its API's stream and
//! returns it from [`crate::adapter::HttpAdapter::stream_decoder`].
//!
//! Everything here is pure (deltas go to a callback), so adapters test their decoders
//! natively on recorded chunk sequences.

use crate::bindings::lanes::provider::stream::{Delta, ToolCallArguments, ToolCallStart};
use crate::bindings::lanes::provider::types::{
    ChatResponse, ContentPart, FinishReason, ProviderError, Reasoning, ToolCall, Usage,
};

/// Where deltas go: `stream.emit` in a component, a `Vec` in a test.
pub type Emit<'a> = &'a mut dyn FnMut(Delta);

/// Hands `delta` to the host (`stream.emit`). Native builds (unit tests) have no host.
pub fn emit_to_host(delta: Delta) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::lanes::provider::stream::emit(&delta);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = delta;
}

/// An API's stream, decoded: fed the body's chunks in order, it emits deltas and, at the
/// end, assembles the whole response.
pub trait StreamDecoder {
    /// One chunk of the body, cut anywhere. An error event in the stream is an `Err`.
    fn feed(&mut self, chunk: &[u8], emit: Emit<'_>) -> Result<(), ProviderError>;

    /// The body has ended: the whole response, or `unavailable` ("stream ended early") when
    /// the API's last event never came.
    fn finish(self: Box<Self>, emit: Emit<'_>) -> Result<ChatResponse, ProviderError>;
}

/// The error for a body that ended before the API's terminal event.
pub fn ended_early() -> ProviderError {
    ProviderError::Unavailable("stream ended early".to_string())
}

/// Splits bytes into lines ending in `\n`, `\r\n` or `\r`, across chunks.
#[derive(Debug, Default)]
struct Lines {
    buffer: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` that starts the next one belongs to it.
    after_cr: bool,
}

impl Lines {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut bytes = chunk;
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' | b'\r' => {
                    self.buffer.extend_from_slice(&bytes[..i]);
                    lines.push(String::from_utf8_lossy(&self.buffer).into_owned());
                    self.buffer.clear();
                    let crlf = bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n');
                    if bytes[i] == b'\r' && i + 1 == bytes.len() {
                        self.after_cr = true;
                    }
                    bytes = &bytes[i + if crlf { 2 } else { 1 }..];
                    i = 0;
                }
                _ => i += 1,
            }
        }
        self.buffer.extend_from_slice(bytes);
        lines
    }

    /// What is left after the last line end.
    fn rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}

/// The non-empty lines of an NDJSON body (one JSON value a line), across chunks.
#[derive(Debug, Default)]
pub struct LineReader {
    lines: Lines,
}

impl LineReader {
    /// A reader at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines `chunk` completes, without their ends; blank lines are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.lines
            .push(chunk)
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The last line, when the body did not end with a line end.
    pub fn finish(&mut self) -> Option<String> {
        self.lines.rest().filter(|l| !l.trim().is_empty())
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when there was none.
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Server-Sent Events (the WHATWG `text/event-stream` format) from chunks cut anywhere:
/// `field: value` lines, an event dispatched at each blank line, `:` comments ignored, and
/// `id` and `retry` ignored too. Events without data are dropped, as the format says.
#[derive(Debug, Default)]
pub struct SseParser {
    lines: Lines,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for line in self.lines.push(chunk) {
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    /// The end of the stream: an event whose closing blank line never came (the format
    /// drops it; this keeps it, since some servers end without one).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if let Some(line) = self.lines.rest() {
            self.line(&line);
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let data = self.data.take()?;
        Some(SseEvent {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".to_string()),
            data,
        })
    }
}

/// A response built from a stream's pieces, each piece emitted as its delta on the way.
/// Parts are addressed by their position in the response's content.
#[derive(Debug, Default)]
pub struct ResponseBuilder {
    content: Vec<ContentPart>,
    /// For each part that is a tool call, its index among the answer's tool calls.
    call_index: Vec<Option<u32>>,
    calls: u32,
    usage: Option<Usage>,
    /// The model that answered, once the stream said.
    pub model: String,
}

impl ResponseBuilder {
    /// An empty response.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, part: ContentPart, call: Option<u32>) -> usize {
        self.content.push(part);
        self.call_index.push(call);
        self.content.len() - 1
    }

    /// Adds a text part (emitting `text` if it is not empty); returns its position.
    pub fn start_text(&mut self, text: &str, emit: Emit<'_>) -> usize {
        let at = self.push(ContentPart::Text(String::new()), None);
        self.append(at, text, emit);
        at
    }

    /// Adds a reasoning part (emitting `text` if it is not empty); returns its position.
    pub fn start_reasoning(&mut self, text: &str, emit: Emit<'_>) -> usize {
        let at = self.push(
            ContentPart::Reasoning(Reasoning {
                text: String::new(),
                signature: None,
                redacted: None,
            }),
            None,
        );
        self.append(at, text, emit);
        at
    }

    /// Adds redacted reasoning (no delta: there is nothing to read).
    pub fn redacted_reasoning(&mut self, data: String) -> usize {
        self.push(
            ContentPart::Reasoning(Reasoning {
                text: String::new(),
                signature: None,
                redacted: Some(data),
            }),
            None,
        )
    }

    /// Adds a tool call and emits its start; returns its position.
    pub fn start_call(&mut self, id: String, name: String, emit: Emit<'_>) -> usize {
        let index = self.calls;
        self.calls += 1;
        emit(Delta::ToolCallStart(ToolCallStart {
            index,
            id: id.clone(),
            name: name.clone(),
        }));
        self.push(
            ContentPart::ToolCall(ToolCall {
                id,
                name,
                arguments: String::new(),
            }),
            Some(index),
        )
    }

    /// Appends `piece` to the part at `at` (text, reasoning text or tool-call arguments) and
    /// emits it. Empty pieces and other parts are left alone.
    pub fn append(&mut self, at: usize, piece: &str, emit: Emit<'_>) {
        if piece.is_empty() {
            return;
        }
        match self.content.get_mut(at) {
            Some(ContentPart::Text(text)) => {
                text.push_str(piece);
                emit(Delta::Text(piece.to_string()));
            }
            Some(ContentPart::Reasoning(r)) => {
                r.text.push_str(piece);
                emit(Delta::Reasoning(piece.to_string()));
            }
            Some(ContentPart::ToolCall(call)) => {
                call.arguments.push_str(piece);
                emit(Delta::ToolCallArguments(ToolCallArguments {
                    index: self.call_index[at].unwrap_or_default(),
                    fragment: piece.to_string(),
                }));
            }
            _ => {}
        }
    }

    /// Appends text to the last part when it is text, else starts a text part.
    pub fn text(&mut self, piece: &str, emit: Emit<'_>) {
        match self.content.last() {
            Some(ContentPart::Text(_)) => self.append(self.content.len() - 1, piece, emit),
            _ if piece.is_empty() => {}
            _ => {
                self.start_text(piece, emit);
            }
        }
    }

    /// Appends reasoning to the last part when it is (unredacted) reasoning, else starts a
    /// reasoning part.
    pub fn reasoning(&mut self, piece: &str, emit: Emit<'_>) {
        match self.content.last() {
            Some(ContentPart::Reasoning(r)) if r.redacted.is_none() => {
                self.append(self.content.len() - 1, piece, emit)
            }
            _ if piece.is_empty() => {}
            _ => {
                self.start_reasoning(piece, emit);
            }
        }
    }

    /// Appends to the signature of the reasoning part at `at` (an empty piece sets none).
    pub fn sign(&mut self, at: usize, signature: &str) {
        if signature.is_empty() {
            return;
        }
        if let Some(ContentPart::Reasoning(r)) = self.content.get_mut(at) {
            r.signature
                .get_or_insert_with(String::new)
                .push_str(signature);
        }
    }

    /// The arguments received so far of the tool call at `at`.
    pub fn arguments(&self, at: usize) -> Option<&str> {
        match self.content.get(at) {
            Some(ContentPart::ToolCall(call)) => Some(&call.arguments),
            _ => None,
        }
    }

    /// Records the usage so far and emits it.
    pub fn usage(&mut self, usage: Usage, emit: Emit<'_>) {
        self.usage = Some(usage);
        emit(Delta::Usage(usage));
    }

    /// The usage recorded last.
    pub fn last_usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the answer has tool calls.
    pub fn has_calls(&self) -> bool {
        self.calls > 0
    }

    /// The text so far.
    pub fn text_so_far(&self) -> String {
        crate::parts_text(&self.content, "")
    }

    /// The whole response. Empty text parts are dropped.
    pub fn finish(self, finish_reason: FinishReason, refusal: Option<String>) -> ChatResponse {
        ChatResponse {
            content: self
                .content
                .into_iter()
                .filter(|p| !matches!(p, ContentPart::Text(t) if t.is_empty()))
                .collect(),
            refusal,
            model: self.model,
            usage: self.usage.unwrap_or(Usage {
                input_tokens: 0,
                output_tokens: 0,
                cache_read_tokens: None,
                cache_write_tokens: None,
                reasoning_tokens: None,
            }),
            finish_reason,
        }
    }
}

/// Emits a whole response as deltas, in order: for an API that answered a streamed request
/// in one piece.
pub fn emit_response(response: &ChatResponse, emit: Emit<'_>) {
    let mut index = 0;
    for part in &response.content {
        match part {
            ContentPart::Text(t) if !t.is_empty() => emit(Delta::Text(t.clone())),
            ContentPart::Reasoning(r) if !r.text.is_empty() => {
                emit(Delta::Reasoning(r.text.clone()))
            }
            ContentPart::ToolCall(call) => {
                emit(Delta::ToolCallStart(ToolCallStart {
                    index,
                    id: call.id.clone(),
                    name: call.name.clone(),
                }));
                if !call.arguments.is_empty() {
                    emit(Delta::ToolCallArguments(ToolCallArguments {
                        index,
                        fragment: call.arguments.clone(),
                    }));
                }
                index += 1;
            }
            _ => {}
        }
    }
    emit(Delta::Usage(response.usage));
}

/// Feeds `body` to `decoder` in chunks of `size` bytes, and returns the deltas and the
/// result. For tests: a stream must decode the same however its chunks fall.
pub fn decode_in_chunks(
    mut decoder: Box<dyn StreamDecoder>,
    body: &[u8],
    size: usize,
) -> (Vec<Delta>, Result<ChatResponse, ProviderError>) {
    let mut deltas = Vec::new();
    let mut emit = |d: Delta| deltas.push(d);
    for chunk in body.chunks(size.max(1)) {
        if let Err(e) = decoder.feed(chunk, &mut emit) {
            return (deltas, Err(e));
        }
    }
    let result = decoder.finish(&mut emit);
    (deltas, result)
}

/// The response the deltas make when joined, kind by kind: what a reader of the stream
/// sees. For tests: it must match the returned response's text, reasoning and tool calls.
pub fn join_deltas(deltas: &[Delta]) -> (String, String, Vec<(String, String, String)>) {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for delta in deltas {
        match delta {
            Delta::Text(t) => text.push_str(t),
            Delta::Reasoning(r) => reasoning.push_str(r),
            Delta::ToolCallStart(s) => {
                assert_eq!(s.index as usize, calls.len(), "tool calls start in order");
                calls.push((s.id.clone(), s.name.clone(), String::new()));
            }
            Delta::ToolCallArguments(a) => calls[a.index as usize].2.push_str(&a.fragment),
            Delta::Usage(_) => {}
        }
    }
    (text, reasoning, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_all(body: &str, size: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in body.as_bytes().chunks(size) {
            events.extend(parser.push(chunk));
        }
        events.extend(parser.finish());
        events
    }

    fn event(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn sse_events_survive_any_cut() {
        let body = ": comment\r\nevent: message_start\r\ndata: {\"a\":\"é\"}\r\n\r\n\
                    data: one\ndata:two\n\n\
                    event: ping\rdata: {}\r\r\
                    id: 7\nretry: 10\n\n\
                    data: [DONE]\n\n";
        let want = vec![
            event("message_start", "{\"a\":\"é\"}"),
            event("message", "one\ntwo"),
            event("ping", "{}"),
            event("message", "[DONE]"),
        ];
        for size in 1..=body.len() {
            assert_eq!(sse_all(body, size), want, "chunks of {size}");
        }
    }

    #[test]
    fn an_unfinished_sse_event_is_kept_at_the_end() {
        assert_eq!(sse_all("data: [DONE]", 3), vec![event("message", "[DONE]")]);
        assert_eq!(sse_all("data: x\n", 3), vec![event("message", "x")]);
        assert_eq!(sse_all("event: only\n\n", 3), vec![]);
    }

    #[test]
    fn ndjson_lines_survive_any_cut() {
        let body = "{\"a\":\"ü\"}\n\n{\"b\":2}\r\n{\"c\":3}";
        for size in 1..=body.len() {
            let mut reader = LineReader::new();
            let mut lines = Vec::new();
            for chunk in body.as_bytes().chunks(size) {
                lines.extend(reader.push(chunk));
            }
            lines.extend(reader.finish());
            assert_eq!(
                lines,
                vec!["{\"a\":\"ü\"}", "{\"b\":2}", "{\"c\":3}"],
                "{size}"
            );
        }
    }

    #[test]
    fn the_builder_emits_what_it_builds() {
        let mut deltas = Vec::new();
        let mut emit = |d: Delta| deltas.push(d);
        let mut b = ResponseBuilder::new();
        b.reasoning("Let me ", &mut emit);
        b.reasoning("think.", &mut emit);
        b.text("Hello", &mut emit);
        b.text(" world", &mut emit);
        let call = b.start_call("c1".into(), "f".into(), &mut emit);
        b.append(call, "{\"x\":", &mut emit);
        b.append(call, "1}", &mut emit);
        b.text("", &mut emit);
        let response = b.finish(FinishReason::ToolCalls, None);
        assert_eq!(
            response.content,
            vec![
                ContentPart::Reasoning(Reasoning {
                    text: "Let me think.".into(),
                    signature: None,
                    redacted: None
                }),
                ContentPart::Text("Hello world".into()),
                ContentPart::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{\"x\":1}".into()
                }),
            ]
        );
        let (text, reasoning, calls) = join_deltas(&deltas);
        assert_eq!(text, "Hello world");
        assert_eq!(reasoning, "Let me think.");
        assert_eq!(calls, vec![("c1".into(), "f".into(), "{\"x\":1}".into())]);
    }
}
