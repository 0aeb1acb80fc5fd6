"""The wire types and error mapping, without a server."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

import lanes_client
from lanes_client import _base, errors
from lanes_client.models import Execution, FinishedEvent, UnknownEvent, parse_event


def test_answers_tolerate_added_fields() -> None:
    body = {
        "id": 1,
        "provider": "stub",
        "status": "completed",
        "priority": 0,
        "aged": 0,
        "input": {"messages": []},
        "attempts": 1,
        "max_attempts": 3,
        "created_at": 1,
        "not_before": 1,
        "history": [{"attempt": 1, "outcome": "completed", "cost_usd": 0.1}],
        "output": {"text": "hi", "usage": {"input_tokens": 1, "output_tokens": 1, "cached": 3}},
        "region": "eu",
    }
    execution = Execution.model_validate_json(json.dumps(body))
    assert execution.done and execution.text == "hi"
    assert execution.model_extra == {"region": "eu"}
    assert execution.history[0].model_extra == {"cost_usd": 0.1}


def test_requests_refuse_unknown_fields() -> None:
    with pytest.raises(Exception):
        lanes_client.SubmitRequest(provider="p", input={}, priorty=1)  # type: ignore[call-arg]
    with pytest.raises(Exception):
        lanes_client.ChatInput(promt="x")  # type: ignore[call-arg]
    assert _base.as_input("hi") == {"prompt": "hi"}
    assert _base.as_input(lanes_client.ChatInput(prompt="hi", max_tokens=5)) == {"prompt": "hi", "max_tokens": 5}


def test_events_parse_by_type_and_keep_unknown_ones() -> None:
    finished = parse_event(
        "finished",
        '{"type":"finished","id":3,"provider":"p","attempt":1,"outcome":"completed","duration_ms":4}',
    )
    assert isinstance(finished, FinishedEvent) and finished.id == 3
    new = parse_event("budget_spent", '{"type":"budget_spent","provider":"p"}')
    assert isinstance(new, UnknownEvent) and new.type == "budget_spent"
    assert new.model_extra == {"provider": "p"}


def answer(status: int, body: object, content_type: str = "application/problem+json") -> httpx.Response:
    request = httpx.Request("GET", "http://x/v1/executions/1")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"content-type": content_type}, request=request)


@pytest.mark.parametrize(
    "status,kind,cls",
    [
        (400, "bad-request", lanes_client.BadRequest),
        (401, "unauthorized", lanes_client.Unauthorized),
        (404, "not-found", lanes_client.NotFound),
        (405, "method-not-allowed", lanes_client.MethodNotAllowed),
        (409, "idempotency-conflict", lanes_client.IdempotencyConflict),
        (409, "already-ended", lanes_client.AlreadyEnded),
        (413, "too-large", lanes_client.PayloadTooLarge),
        (415, "unsupported-media-type", lanes_client.UnsupportedMediaType),
        (422, "invalid", lanes_client.ValidationError),
        (503, "not-ready", lanes_client.ServiceUnavailable),
        (500, "internal", lanes_client.APIError),
    ],
)
def test_each_problem_has_its_class(status: int, kind: str, cls: type) -> None:
    problem = {"type": f"urn:lanes:problem:{kind}", "title": "T", "status": status, "detail": "why"}
    error = errors.error_for(answer(status, problem))
    assert type(error) is cls
    assert (error.status, error.kind, error.title, error.detail) == (status, kind, "T", "why")
    assert error.problem == problem
    assert str(error) == f"{status} T: why"


def test_an_answer_that_is_not_a_problem_still_raises_with_what_it_said() -> None:
    error = errors.error_for(answer(502, b"<html>Bad gateway</html>", "text/html"))
    assert type(error) is lanes_client.APIError
    assert error.status == 502 and "Bad gateway" in error.detail


def test_waits_and_times() -> None:
    assert _base.wait_param(1.5) == "1500ms"
    assert _base.wait_param(dt.timedelta(minutes=2)) == "120000ms"
    with pytest.raises(ValueError):
        _base.wait_param(301)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert _base.millis(when) == 1767225600000
    with pytest.raises(ValueError):
        _base.millis(dt.datetime(2026, 1, 1))


def test_retry_decisions() -> None:
    request = httpx.Request("POST", "http://x")
    refused = httpx.ConnectError("refused", request=request)
    broken = httpx.ReadError("reset", request=request)
    assert _base.retryable_exception(refused, idempotent=False)
    assert not _base.retryable_exception(broken, idempotent=False)
    assert _base.retryable_exception(broken, idempotent=True)
    policy = _base.RetryPolicy(backoff=1.0, max_backoff=4.0)
    for retry, window in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        assert window / 2 <= policy.delay(retry) <= window


def test_a_success_that_is_not_the_api_s_answer_says_so() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>Welcome to the captive portal</html>")

    with lanes_client.Client("http://x", token="", transport=httpx.MockTransport(proxy)) as c:
        with pytest.raises(lanes_client.LanesError) as info:
            c.get(1)
    message = str(info.value)
    assert "GET http://x/v1/executions/1" in message and "not the API's Execution" in message
    assert "captive portal" in message


def test_content_parts_go_out_typed_and_answers_come_back_tolerantly() -> None:
    from lanes_client import ImagePart, JsonSchemaFormat, Message, Output, Reasoning, TextPart, ToolCallPart, UnknownPart

    chat = lanes_client.ChatInput(
        messages=[Message(role="user", content=[TextPart(text="hi"), ImagePart(url="https://x/c.png")])],
        response_format=JsonSchemaFormat(name="e", schema={"type": "object"}),
        tool_choice="auto",
        reasoning=Reasoning(effort="low"),
        top_p=0.5,
        seed=7,
        stream=True,
    )
    body = _base.as_input(chat)
    assert body["messages"][0]["content"][1] == {"type": "image", "url": "https://x/c.png"}
    assert body["response_format"] == {"type": "json_schema", "name": "e", "schema": {"type": "object"}}
    assert (body["tool_choice"], body["reasoning"], body["stream"]) == ("auto", {"effort": "low"}, True)
    with pytest.raises(Exception):
        Message(role="user", content=[{"type": "txt", "text": "x"}])

    output = Output.model_validate(
        {
            "text": "",
            "content": [
                {"type": "reasoning", "text": "hm", "signature": "s", "new": 1},
                {"type": "tool_call", "id": "c", "name": "f", "arguments": "{}"},
                {"type": "citation", "url": "u"},
            ],
            "refusal": None,
            "usage": {"input_tokens": 9, "output_tokens": 4, "cache_read_tokens": 8, "reasoning_tokens": 2},
        }
    )
    assert output.content is not None and output.content[0].model_extra == {"new": 1}
    assert output.tool_calls == [ToolCallPart(id="c", name="f", arguments="{}")]
    assert isinstance(output.content[2], UnknownPart) and output.content[2].model_extra == {"url": "u"}
    assert output.usage is not None and (output.usage.cache_read_tokens, output.usage.reasoning_tokens) == (8, 2)
    # An output stored before parts existed reads as one text part.
    assert Output.model_validate({"text": "old"}).parts == [TextPart(text="old")]
