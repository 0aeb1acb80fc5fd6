"""The asyncio client against a real `lanes serve` (see conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import List

import httpx
import pytest

import lanes_client
from lanes_client import (
    AlreadyEnded,
    AsyncClient,
    BadRequest,
    FinishedEvent,
    IdempotencyConflict,
    LimitChangedEvent,
    NotFound,
    RetryPolicy,
    StartedEvent,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)


async def test_submit_and_wait(aclient: AsyncClient) -> None:
    assert (await aclient.health()).status == "ok"
    execution = await aclient.submit("stub", {"prompt": "async hello", "extra": {"sleep_ms": 200}})
    assert execution.status in ("pending", "running")
    done = await aclient.get(execution.id, wait=20)
    assert done.status == "completed"
    assert done.text == "stub reply to: async hello"
    assert done.output is not None and done.output.usage is not None
    assert done.output.usage.output_tokens == 5

    slow = await aclient.submit("stub", {"prompt": "x", "extra": {"sleep_ms": 20000}})
    with pytest.raises(WaitTimeout) as info:
        await aclient.wait(slow.id, timeout=0.3)
    assert info.value.execution.status in ("pending", "running")
    assert (await aclient.cancel(slow.id)).status == "cancelled"
    assert (await aclient.wait(slow.id, timeout=5)).status == "cancelled"


async def test_many_at_once(aclient: AsyncClient) -> None:
    """Submissions and long-polls side by side on one client."""
    submitted = await asyncio.gather(
        *(aclient.submit("stub", {"prompt": f"n{i}", "extra": {"sleep_ms": 100}}) for i in range(12))
    )
    done = await asyncio.gather(*(aclient.wait(e.id, timeout=30) for e in submitted))
    assert [d.text for d in done] == [f"stub reply to: n{i}" for i in range(12)]
    assert len({d.id for d in done}) == 12


async def test_more_waits_than_connections(daemon) -> None:
    """Requests beyond max_connections wait for a connection as long as the long-polls ahead
    of them hold theirs, longer than the client's timeout, and none fails for want of one."""
    url, token = daemon
    retry = RetryPolicy(max_retries=0)  # waiting for a connection must not need a retry
    async with AsyncClient(url, token=token or "", max_connections=2, timeout=1, retry=retry) as c:
        slow = await c.submit_batch(
            [{"provider": "stub", "input": {"prompt": f"s{i}", "extra": {"sleep_ms": 2000}}} for i in range(2)]
        )
        quick = await c.submit_batch([{"provider": "stub", "input": f"q{i}"} for i in range(6)])
        started = time.monotonic()
        # The two slow long-polls take both connections for 2 s; the reads queue behind them.
        done = await asyncio.gather(
            *(c.wait(e.id, timeout=30) for e in slow.executions),
            *(c.get(e.id) for e in quick.executions),
        )
        assert time.monotonic() - started >= 1.5
    assert [d.text for d in done[:2]] == ["stub reply to: s0", "stub reply to: s1"]
    assert [d.id for d in done[2:]] == [e.id for e in quick.executions]


async def test_batch_idempotency_and_errors(aclient: AsyncClient) -> None:
    stamp = time.time_ns()
    batch = [{"provider": "stub", "input": f"a{i}", "idempotency_key": f"ab-{stamp}-{i}"} for i in range(4)]
    first = await aclient.submit_batch(batch)
    assert all(e.created for e in first.executions)
    again = await aclient.submit_batch(batch)
    assert [e.id for e in again.executions] == [e.id for e in first.executions]
    assert not any(e.created for e in again.executions)

    with pytest.raises(IdempotencyConflict) as conflict:
        await aclient.submit("stub", "something else", idempotency_key=f"ab-{stamp}-0")
    assert conflict.value.status == 409

    with pytest.raises(NotFound):
        await aclient.get(987654321)
    with pytest.raises(ValidationError) as invalid:
        await aclient.submit_batch([{"provider": "stub", "input": {"prompt": "x", "temperature": "hot"}}])
    assert "executions[0]" in invalid.value.detail
    with pytest.raises(BadRequest):
        await aclient.list_page(limit=100000)

    ended = await aclient.wait(first.executions[0].id, timeout=20)
    assert ended.status == "completed"
    with pytest.raises(AlreadyEnded):
        await aclient.cancel(ended.id)


async def test_list_pages(aclient: AsyncClient, nobody: str) -> None:
    answer = await aclient.submit_batch(
        [{"provider": nobody, "input": f"p{i}", "allow_unknown": True} for i in range(5)]
    )
    ids = [e.id for e in answer.executions]
    sizes = [len(page.executions) async for page in aclient.pages(provider=nobody, limit=2)]
    assert sizes == [2, 2, 1]
    listed = [e.id async for e in aclient.list(provider=nobody, limit=2)]
    assert listed == ids[::-1]
    cancelled = await asyncio.gather(*(aclient.cancel(i) for i in ids))
    assert {e.status for e in cancelled} == {"cancelled"}
    assert [e.id async for e in aclient.list(provider=nobody, status="pending")] == []


async def test_providers_limits_and_events(aclient: AsyncClient) -> None:
    providers = await aclient.providers()
    stub = providers.get("stub")
    assert stub is not None and stub.limits.effective >= 1

    async with aclient.events(provider="stub", read_timeout=20) as events:
        changed = await aclient.set_limit("stub", 5)
        assert changed.limits.runtime == 5
        execution = await aclient.submit("stub", {"prompt": "evented", "extra": {"sleep_ms": 100}})
        seen: List[object] = []
        async for event in events:
            if isinstance(event, LimitChangedEvent) or getattr(event, "id", None) == execution.id:
                seen.append(event)
            if isinstance(event, FinishedEvent) and event.id == execution.id:
                break
    kinds = [type(e) for e in seen]
    assert kinds == [LimitChangedEvent, StartedEvent, FinishedEvent], seen
    assert seen[0].new == 5  # type: ignore[attr-defined]
    assert seen[2].outcome == "completed"  # type: ignore[attr-defined]
    assert (await aclient.limits())["stub"].runtime == 5
    cleared = await aclient.clear_limit("stub")
    assert cleared.limits.runtime is None


async def test_auth_and_retries(daemon) -> None:
    url, token = daemon
    if token:
        async with AsyncClient(url, token="wrong") as wrong:
            with pytest.raises(Unauthorized):
                await wrong.providers()
            with pytest.raises(Unauthorized):
                await wrong.events().open()

    class DropFirstAnswer(httpx.AsyncHTTPTransport):
        posts = 0
        lost: List[bytes] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if request.method == "POST":
                self.posts += 1
                if self.posts == 1:
                    await response.aread()
                    self.lost.append(response.content)
                    await response.aclose()
                    raise httpx.ReadError("connection reset (injected)", request=request)
            return response

    transport = DropFirstAnswer()
    async with AsyncClient(
        url, token=token or "", transport=transport, retry=RetryPolicy(backoff=0.01)
    ) as c:
        batch = await c.submit_batch([{"provider": "stub", "input": "r0"}, {"provider": "stub", "input": "r1"}])
        assert transport.posts == 2
        lost = lanes_client.BatchResponse.model_validate_json(transport.lost[0])
        assert [e.id for e in batch.executions] == [e.id for e in lost.executions]
        # The retry found the batch the lost answer had queued: nothing was queued twice,
        # and both are this call's (their keys were made up for it).
        assert [e.created for e in batch.executions] == [True, True]
        assert len({e.id for e in batch.executions}) == 2

    async with AsyncClient("http://127.0.0.1:9", retry=RetryPolicy(max_retries=1, backoff=0.01)) as c:
        with pytest.raises(lanes_client.ConnectionError) as refused:
            await c.get(1)
        assert refused.value.attempts == 2
