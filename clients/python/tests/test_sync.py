"""The sync client against a real `lanes serve` (see conftest.py)."""

from __future__ import annotations

import time
from typing import List

import httpx
import pytest

import lanes_client
from lanes_client import (
    AlreadyEnded,
    BadRequest,
    ChatInput,
    Client,
    FinishedEvent,
    IdempotencyConflict,
    LimitChangedEvent,
    Message,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    StartedEvent,
    SubmitRequest,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)

from conftest import MAX_BODY_BYTES


def test_health_and_plugins(client: Client) -> None:
    assert client.health().status == "ok"
    assert client.ready().status == "ready"
    plugins = client.plugins().plugins
    stub = next(p for p in plugins if p.file == "stub.wasm")
    assert stub.status == "loaded"
    assert stub.name == "stub"
    assert stub.default_limit == 4


def test_submit_then_get_with_wait(client: Client) -> None:
    execution = client.submit(
        "stub",
        ChatInput(
            system="be brief",
            messages=[Message(role="user", content="hello there")],
            extra={"sleep_ms": 300},
        ),
        priority=3,
        max_attempts=2,
    )
    assert execution.provider == "stub"
    assert execution.status in ("pending", "running")
    assert not execution.done
    assert execution.priority == 3
    assert execution.max_attempts == 2
    assert execution.input["messages"] == [{"role": "user", "content": "hello there"}]

    now = client.get(execution.id)
    assert now.id == execution.id

    started = time.monotonic()
    done = client.get(execution.id, wait=20)
    assert time.monotonic() - started < 15, "the long-poll should answer when it ends"
    assert done.status == "completed", done
    assert done.done
    assert done.text == "stub reply to: hello there"
    assert done.output is not None and done.output.model == "stub-1"
    assert done.output.usage is not None and done.output.usage.input_tokens == 2
    assert done.output.finish_reason == "stop"
    assert done.attempts == 1
    assert done.error is None and done.error_kind is None
    assert [a.outcome for a in done.history] == ["completed"]
    assert done.finished_at is not None and done.finished_at >= done.created_at


def test_wait_returns_failures_and_times_out(client: Client) -> None:
    failing = client.submit("stub", {"prompt": "x", "extra": {"error": "invalid-request"}})
    failed = client.wait(failing.id, timeout=20)
    assert failed.status == "failed"
    assert failed.error_kind == "invalid_request"
    assert "invalid-request" in (failed.error or "")

    slow = client.submit("stub", {"prompt": "x", "extra": {"sleep_ms": 20000}})
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.wait(slow.id, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    assert info.value.execution.id == slow.id
    assert not info.value.execution.done
    assert client.cancel(slow.id).status == "cancelled"


def test_idempotency_keys(client: Client) -> None:
    key = f"sync-key-{time.time_ns()}"
    first = client.submit("stub", "same request", idempotency_key=key)
    assert first.created
    # The same request in another form (the messages form of the prompt) is the same.
    again = client.submit(
        "stub", {"messages": [{"role": "user", "content": "same request"}]}, idempotency_key=key
    )
    assert again.id == first.id
    assert not again.created
    with pytest.raises(IdempotencyConflict) as info:
        client.submit("stub", "another request", idempotency_key=key)
    error = info.value
    assert error.status == 409
    assert error.kind == "idempotency-conflict"
    assert error.type == "urn:lanes:problem:idempotency-conflict"
    assert error.title
    assert key in error.detail
    assert isinstance(error, lanes_client.Conflict) and isinstance(error, lanes_client.APIError)


def test_a_tenant_is_carried_and_a_bad_one_refused_here(client: Client) -> None:
    execution = client.submit("stub", "hi", tenant="acme")
    assert execution.tenant == "acme"
    assert client.get(execution.id, wait=20).tenant == "acme"
    with pytest.raises(ValueError):  # refused by the client's own model, before sending
        client.submit("stub", "hi", tenant="no spaces")
    # The server is asked too: a provider without a response cache ignores `cache`.
    cached = client.submit("stub", "hi", cache=True)
    assert client.get(cached.id, wait=20).status == "completed"


def test_tenants_usage_and_the_cache(client: Client) -> None:
    done = client.submit("stub", "counted", tenant="billing")
    assert client.get(done.id, wait=20).status == "completed"
    tenants = {t.tenant: t for t in client.tenants().tenants}
    assert tenants["billing"].completed >= 1
    # A tenant with a daily spend cap far from reached (the stub's answers have no price).
    billing = tenants["billing"]
    assert billing.state == "serving" and billing.reason is None
    assert billing.spend is not None and billing.spend.daily_usd == 1000
    assert not billing.spend.capped and len(billing.spend.day) == 10
    assert tenants["billing"].weight == 1.0
    usage = client.usage(by="tenant", since="1h")
    row = next(r for r in usage.rows if r.key == "billing")
    assert row.executions >= 1 and row.input_tokens >= 1
    assert usage.total.executions >= row.executions
    with pytest.raises(BadRequest):
        client.usage(by="colour")
    assert client.clear_cache().dropped >= 0


def test_batch_submit(client: Client) -> None:
    stamp = time.time_ns()
    entries: List[SubmitRequest] = [
        SubmitRequest(provider="stub", input={"prompt": f"doc {i}"}, idempotency_key=f"b-{stamp}-{i}")
        for i in range(3)
    ]
    answer = client.submit_batch(entries)
    assert [e.created for e in answer.executions] == [True, True, True]
    ids = [e.id for e in answer.executions]
    assert ids == sorted(ids) and len(set(ids)) == 3
    # Dicts work too, with a prompt string as input; a repeat creates nothing.
    repeat = client.submit_batch(
        [{"provider": "stub", "input": f"doc {i}", "idempotency_key": f"b-{stamp}-{i}"} for i in range(3)]
    )
    assert [e.id for e in repeat.executions] == ids
    assert [e.created for e in repeat.executions] == [False, False, False]
    texts = [client.wait(i, timeout=20).text for i in ids]
    assert texts == [f"stub reply to: doc {i}" for i in range(3)]

    # All or none: a bad entry names its index, and nothing is queued.
    with pytest.raises(ValidationError) as info:
        client.submit_batch(
            [{"provider": "stub", "input": "fine"}, {"provider": "nobody-at-all", "input": "x"}]
        )
    assert info.value.status == 422
    assert "executions[1]" in info.value.detail
    with pytest.raises(ValidationError) as empty:
        client.submit_batch([])
    assert "1 to 1000" in empty.value.detail


def test_list_pages_and_filters(client: Client, nobody: str) -> None:
    answer = client.submit_batch(
        [{"provider": nobody, "input": f"p{i}", "allow_unknown": True} for i in range(7)]
    )
    ids = [e.id for e in answer.executions]
    first = client.list_page(provider=nobody, limit=3)
    assert [e.id for e in first.executions] == ids[::-1][:3]
    assert first.next
    pages = list(client.pages(provider=nobody, limit=3))
    assert [len(p.executions) for p in pages] == [3, 3, 1]
    assert pages[-1].next is None
    listed = [e.id for e in client.list(provider=nobody, limit=3)]
    assert listed == ids[::-1]
    assert all(e.status == "pending" for e in client.list(provider=nobody))

    # Filters: status, and creation times (Unix ms).
    for i in ids[:2]:
        assert client.cancel(i).status == "cancelled"
    assert sorted(e.id for e in client.list(provider=nobody, status="cancelled")) == ids[:2]
    assert len(list(client.list(provider=nobody, status="pending"))) == 5
    created = client.get(ids[3]).created_at
    later = [e for e in client.list(provider=nobody, created_after=created + 1)]
    assert all(e.created_at > created for e in later)
    for i in ids[2:]:
        client.cancel(i)

    with pytest.raises(BadRequest) as info:
        client.list_page(cursor="garbage")
    assert info.value.kind == "bad-request"
    assert "cursor" in info.value.detail


def test_cancel(client: Client, nobody: str) -> None:
    pending = client.submit(nobody, "never runs", allow_unknown=True)
    assert pending.status == "pending"
    cancelled = client.cancel(pending.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None

    running = client.submit("stub", {"prompt": "slow", "extra": {"sleep_ms": 30000}})
    deadline = time.monotonic() + 20
    while client.get(running.id).status != "running":
        assert time.monotonic() < deadline, "never started"
        time.sleep(0.05)
    started = time.monotonic()
    assert client.cancel(running.id).status == "cancelled"
    # A waiter sees the cancel at once, not when the sleep would end.
    assert client.get(running.id, wait=10).status == "cancelled"
    assert time.monotonic() - started < 5

    with pytest.raises(AlreadyEnded) as info:
        client.cancel(pending.id)
    assert info.value.status == 409 and info.value.kind == "already-ended"


def test_not_found_and_validation(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.get(987654321)
    assert info.value.status == 404 and info.value.kind == "not-found"
    with pytest.raises(NotFound):
        client.cancel(987654321)
    with pytest.raises(ValidationError) as invalid:
        client.submit("nobody-configured", "x")
    assert "unknown provider" in invalid.value.detail
    with pytest.raises(ValidationError):
        client.submit("stub", {"prompt": "x", "no_such_field": 1})
    # The client refuses what the server would, before sending it.
    with pytest.raises(Exception):
        client.submit("stub", "x", max_attempts=0)


def test_payload_too_large(client: Client) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        client.submit("stub", "x" * (MAX_BODY_BYTES + 1000))
    assert info.value.status == 413 and info.value.kind == "too-large"


def test_providers_and_limits(client: Client) -> None:
    providers = client.providers()
    stub = providers.get("stub")
    assert stub is not None
    assert stub.state == "serving"
    assert stub.component is not None and stub.component.file == "stub.wasm"
    assert stub.limits.configured == 4 and stub.limits.default == 4
    assert len(stub.throughput_5m) == 30
    assert providers.pool is not None and providers.pool.size >= 1

    with client.events(provider="stub", read_timeout=20) as events:
        changed = client.set_limit("stub", 7)
        assert changed.provider == "stub"
        assert changed.limits.runtime == 7
        assert changed.limits.effective == 7
        assert changed.limits.source == "runtime"
        assert client.limits()["stub"].runtime == 7
        event = next(e for e in events if isinstance(e, LimitChangedEvent))
        assert (event.provider, event.new) == ("stub", 7)

    cleared = client.clear_limit("stub")
    assert cleared.limits.runtime is None
    assert cleared.limits.effective == 4 and cleared.limits.source == "config"

    with pytest.raises(NotFound):
        client.set_limit("nobody-configured", 3)
    with pytest.raises(ValidationError):
        client.set_limit("stub", 0)


def test_events_follow_an_execution(client: Client) -> None:
    with client.events(provider="stub", read_timeout=20) as events:
        execution = client.submit("stub", {"prompt": "watch me", "extra": {"sleep_ms": 200}})
        seen = []
        for event in events:
            if getattr(event, "id", None) != execution.id:
                continue
            seen.append(event)
            if isinstance(event, FinishedEvent):
                break
    assert isinstance(seen[0], StartedEvent)
    assert seen[0].provider == "stub" and seen[0].attempt == 1
    finished = seen[-1]
    assert isinstance(finished, FinishedEvent)
    assert finished.outcome == "completed"
    assert finished.duration_ms >= 200
    assert finished.output_tokens == 5  # "stub reply to: watch me"
    with pytest.raises(BadRequest):
        with client.events(provider="Not A Name"):
            pass


def test_bearer_token(daemon) -> None:
    url, token = daemon
    if not token:
        pytest.skip("the daemon under test has no token (set LANES_TEST_TOKEN)")
    with Client(url, token="") as anonymous:
        assert anonymous.health().status == "ok"  # needs no token
        with pytest.raises(Unauthorized) as info:
            anonymous.providers()
        assert info.value.status == 401 and info.value.kind == "unauthorized"
    with Client(url, token="wrong") as wrong:
        with pytest.raises(Unauthorized):
            wrong.submit("stub", "x")
        with pytest.raises(Unauthorized):
            wrong.events().open()


class DropFirstAnswer(httpx.HTTPTransport):
    """Sends each request, but loses the answer of the first POST whose path ends with
    ``suffix``: the server did the work, the client sees a broken connection."""

    def __init__(self, suffix: str = "") -> None:
        super().__init__()
        self.suffix = suffix
        self.posts = 0
        self.lost: List[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith(self.suffix):
            self.posts += 1
            if self.posts == 1:
                response.read()
                self.lost.append(response.content)
                response.close()
                raise httpx.ReadError("connection reset (injected)", request=request)
        return response


def test_retries_are_safe(daemon) -> None:
    url, token = daemon
    # A submission whose answer was lost is retried with its key: one execution.
    transport = DropFirstAnswer()
    with Client(url, token=token or "", transport=transport, retry=RetryPolicy(backoff=0.01)) as c:
        execution = c.submit("stub", "retried once")
        assert transport.posts == 2
        assert execution.created  # the lost try created it, and the key was this call's
        lost = lanes_client.Execution.model_validate_json(transport.lost[0])
        assert execution.id == lost.id
        assert c.wait(execution.id, timeout=20).text == "stub reply to: retried once"

    # Without a key, a submission that may have been queued is not sent again.
    transport = DropFirstAnswer()
    with Client(
        url, token=token or "", transport=transport, auto_idempotency_keys=False,
        retry=RetryPolicy(backoff=0.01),
    ) as c:
        with pytest.raises(lanes_client.ConnectionError) as info:
            c.submit("stub", "not retried")
        assert transport.posts == 1 and info.value.attempts == 1

    # A cancel whose answer was lost: the retry finds it cancelled, and says so.
    transport = DropFirstAnswer("/cancel")
    with Client(url, token=token or "", transport=transport, retry=RetryPolicy(backoff=0.01)) as c:
        pending = c.submit("nobody-retry", "x", allow_unknown=True)
        assert c.cancel(pending.id).status == "cancelled"
        assert transport.posts == 2  # the lost cancel and its retry, which got 409

    # Nothing listens: refused connections are retried, then reported.
    with Client("http://127.0.0.1:9", retry=RetryPolicy(max_retries=2, backoff=0.01)) as c:
        with pytest.raises(lanes_client.ConnectionError) as refused:
            c.providers()
        assert refused.value.attempts == 3
        assert "ConnectError" in str(refused.value)
