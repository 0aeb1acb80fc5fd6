"""An execution's stream (``stream``, ``stream_text``), content parts and tool calls: against
the real `lanes serve` (see conftest.py), and the reconnect and restart logic against
canned answers."""

from __future__ import annotations

import json
from typing import Callable, Iterator, List, Optional

import httpx
import pytest

import lanes_client
from lanes_client import (
    AsyncClient,
    ChatInput,
    Client,
    Message,
    NotFound,
    Restarted,
    RetryPolicy,
    StreamAttempt,
    StreamEnd,
    TextDelta,
    TextPart,
    Tool,
    ToolCallArgumentsDelta,
    ToolCallPart,
    ToolCallStartDelta,
    ToolResultPart,
    UsageDelta,
)

#: Ten text deltas, 50 ms apart: "a", "b", ... "j".
STREAMED = {
    "prompt": "hi",
    "stream": True,
    "extra": {"text": "abcdefghij", "stream_pieces": 10, "stream_gap_ms": 50},
}

WEATHER = Tool(
    name="get_weather",
    description="Current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def cut_after(deltas: int, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of an event stream, broken off once ``deltas`` delta events went by."""
    seen = b""
    for chunk in chunks:
        yield chunk
        seen += chunk
        if seen.count(b"event: delta") >= deltas:
            raise httpx.ReadError("connection reset (injected)")


class CutStream(httpx.HTTPTransport):
    """Breaks the first execution stream after 3 deltas; records each stream request."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: List[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/stream"):
            return response
        self.streams.append(request)
        if len(self.streams) > 1:
            return response

        class Cut(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield from cut_after(3, response.iter_raw())

            def close(self) -> None:
                response.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Cut())


def test_a_stream_yields_its_deltas_then_the_end(client: Client) -> None:
    execution = client.submit("stub", STREAMED)
    with client.stream(execution.id) as stream:
        items = list(stream)
    assert items[0] == StreamAttempt(attempt=1)
    texts = [i for i in items if isinstance(i, TextDelta)]
    assert [t.text for t in texts] == list("abcdefghij")
    assert isinstance(items[-2], UsageDelta) and items[-2].usage.input_tokens == 1
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.execution.status == "completed" and end.execution.id == execution.id
    output = end.execution.output
    assert output is not None and output.text == "abcdefghij"
    assert output.content == [TextPart(text="abcdefghij")]
    assert isinstance(output.content[0], TextPart)
    assert stream.last_event_id == "1:10" and stream.execution == end.execution

    # A stream read after the end replays it; `last_event_id` resumes after that delta.
    rest = list(client.stream(execution.id, last_event_id="1:7"))
    assert [i.text for i in rest if isinstance(i, TextDelta)] == ["i", "j"]
    assert not any(isinstance(i, StreamAttempt) for i in rest)
    assert isinstance(rest[-1], StreamEnd)

    with pytest.raises(NotFound):
        client.stream(2**40).open()
    with pytest.raises(ValueError):
        client.stream(execution.id, last_event_id="7")


def test_a_dropped_stream_resumes_where_it_was(daemon) -> None:
    url, token = daemon
    transport = CutStream()
    with Client(url, token=token or "", transport=transport, retry=RetryPolicy(backoff=0.01)) as c:
        execution = c.submit("stub", STREAMED)
        with c.stream_text(execution.id) as text:
            pieces = list(text)
    # Every piece once, in order, though the first connection broke after three.
    assert pieces == list("abcdefghij")
    assert text.text == "abcdefghij"
    assert text.execution is not None and text.execution.status == "completed"
    assert len(transport.streams) == 2
    assert "last-event-id" not in transport.streams[0].headers
    assert transport.streams[1].headers["last-event-id"].startswith("1:")


def test_a_tool_call_streams_and_goes_back_typed(client: Client) -> None:
    question = Message(role="user", content='call:get_weather {"city":"Paris"}')
    execution = client.submit("stub", ChatInput(messages=[question], tools=[WEATHER], stream=True))
    items = list(client.stream(execution.id))
    starts = [i for i in items if isinstance(i, ToolCallStartDelta)]
    assert [(s.index, s.id, s.name) for s in starts] == [(0, "call_1", "get_weather")]
    arguments = "".join(i.fragment for i in items if isinstance(i, ToolCallArgumentsDelta))
    assert arguments == '{"city":"Paris"}'
    end = items[-1]
    assert isinstance(end, StreamEnd)
    output = end.execution.output
    assert output is not None and output.finish_reason == "tool_calls" and output.text == ""
    assert output.tool_calls == [ToolCallPart(id="call_1", name="get_weather", arguments=arguments)]
    assert output.usage is not None and output.usage.cache_read_tokens is None

    # The answer's content goes back as the assistant turn, then the tool's result.
    conversation = [
        question,
        Message(role="assistant", content=output.content or []),
        Message(role="tool", content=[ToolResultPart(call_id="call_1", content=[TextPart(text="18C")])]),
    ]
    answer = client.wait(client.submit("stub", ChatInput(messages=conversation, tools=[WEATHER])).id, timeout=20)
    assert answer.status == "completed", answer
    assert answer.text == "tool said: 18C"
    assert answer.input["messages"][1]["content"][0]["type"] == "tool_call"

    # A call that does not stream: its stream is its end, its text one piece.
    with client.stream_text(client.submit("stub", "whole").id) as text:
        assert list(text) == ["stub reply to: whole"]


async def test_the_async_stream_and_its_text(daemon) -> None:
    url, token = daemon

    class AsyncCutStream(httpx.AsyncHTTPTransport):
        streams: List[httpx.Request] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if not request.url.path.endswith("/stream"):
                return response
            self.streams.append(request)
            if len(self.streams) > 1:
                return response

            class Cut(httpx.AsyncByteStream):
                async def __aiter__(self):  # type: ignore[override]
                    seen = b""
                    async for chunk in response.aiter_raw():
                        yield chunk
                        seen += chunk
                        if seen.count(b"event: delta") >= 3:
                            raise httpx.ReadError("connection reset (injected)")

                async def aclose(self) -> None:
                    await response.aclose()

            return httpx.Response(response.status_code, headers=response.headers, stream=Cut())

    transport = AsyncCutStream()
    async with AsyncClient(url, token=token or "", transport=transport, retry=RetryPolicy(backoff=0.01)) as c:
        execution = await c.submit("stub", STREAMED)
        async with c.stream(execution.id) as stream:
            items = [item async for item in stream]
        assert [i.text for i in items if isinstance(i, TextDelta)] == list("abcdefghij")
        assert [type(i) for i in items if not isinstance(i, TextDelta)] == [StreamAttempt, UsageDelta, StreamEnd]
        assert len(transport.streams) == 2 and "last-event-id" in transport.streams[1].headers

        async with c.stream_text(execution.id) as text:
            assert "".join([piece async for piece in text]) == "abcdefghij"
        assert text.execution is not None and text.execution.output is not None
        assert text.execution.output.text == "abcdefghij"


# ---------------------------------------------------------------------------------------
# Canned answers: what the stub cannot do (an attempt that streams, then fails).


def sse(*events: str) -> bytes:
    return "".join(events).encode()


def delta(attempt: int, index: int, text: str) -> str:
    return f"event: delta\nid: {attempt}:{index}\ndata: {json.dumps({'type': 'text', 'text': text})}\n\n"


def attempt(n: int) -> str:
    return f'event: attempt\ndata: {{"attempt":{n}}}\n\n'


def end(text: str, attempts: int) -> str:
    execution = {
        "id": 1,
        "provider": "p",
        "status": "completed",
        "attempts": attempts,
        "output": {"text": text, "content": [{"type": "text", "text": text}], "model": "m"},
    }
    return f"event: end\ndata: {json.dumps(execution)}\n\n"


def canned(bodies: List[bytes], seen: List[Optional[str]]) -> Callable[[httpx.Request], httpx.Response]:
    """Answers each stream request with the next body, broken off at its end (as a dropped
    connection) unless it holds the `end` event."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        body = bodies[len(seen) - 1]

        class Body(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield body
                if b"event: end" not in body:
                    raise httpx.ReadError("connection reset (injected)")

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())

    return handler


def test_a_retry_restarts_the_text_and_repeats_are_dropped() -> None:
    bodies = [
        sse(attempt(1)),  # broken before any delta
        sse(attempt(1), delta(1, 0, "Hel"), delta(1, 1, "lo")),  # attempt 1 again: dropped
        sse(delta(1, 1, "lo"), attempt(2), delta(2, 0, "Bye"), end("Bye!", 2)),
    ]
    seen: List[Optional[str]] = []
    policy = RetryPolicy(backoff=0.001)
    with Client("http://x", token="", transport=httpx.MockTransport(canned(bodies, seen)), retry=policy) as c:
        text = c.stream_text(1)
        pieces = []
        with pytest.raises(Restarted) as restart:
            for piece in text:
                pieces.append(piece)
        assert pieces == ["Hel", "lo"]
        assert (restart.value.attempt, restart.value.discarded) == (2, "Hello")
        # Iterating again goes on with the new attempt's text; the rest of the output's
        # text that no delta gave comes last.
        assert list(text) == ["Bye", "!"]
        assert text.text == "Bye!" and text.execution is not None and text.execution.attempts == 2
    assert seen == [None, None, "1:1"]

    # The typed stream: each attempt told once, each delta once.
    seen.clear()
    with Client("http://x", token="", transport=httpx.MockTransport(canned(bodies, seen)), retry=policy) as c:
        items = list(c.stream(1))
    kinds = [(i.type, getattr(i, "attempt", getattr(i, "text", None))) for i in items[:-1]]
    assert kinds == [("attempt", 1), ("text", "Hel"), ("text", "lo"), ("attempt", 2), ("text", "Bye")]
    assert isinstance(items[-1], StreamEnd)

    # Connections that break with nothing on them give up after the retries.
    seen.clear()
    policy = RetryPolicy(max_retries=2, backoff=0.001)
    nothing = [b": keep-alive\n\n"] * 5
    with Client("http://x", token="", transport=httpx.MockTransport(canned(nothing, seen)), retry=policy) as c:
        with pytest.raises(lanes_client.ConnectionError):
            list(c.stream(1))
    assert len(seen) == 3
