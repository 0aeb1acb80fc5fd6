"""The asynchronous client: the same operations as :class:`Client`, awaited."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from urllib.parse import quote
from typing import Any, AsyncIterator, Dict, Iterable, Mapping, Optional, Type, Union

import httpx
from httpx_sse import EventSource

from . import _base, _stream, errors
from ._base import Duration, InputLike, RetryPolicy
from .models import (
    BatchResponse,
    Event,
    Execution,
    ExecutionPage,
    Health,
    Limits,
    LimitResponse,
    Plugins,
    Tenants,
    UsageReport,
    CacheCleared,
    Providers,
    StreamItem,
    SubmitRequest,
    Submitted,
    parse_event,
)

__all__ = ["AsyncClient", "AsyncEventStream", "AsyncExecutionStream", "AsyncTextStream"]


class AsyncClient:
    """An asyncio client of one lanes API.

    >>> async with AsyncClient("http://127.0.0.1:7465") as lanes:
    ...     execution = await lanes.submit("claude", "Write a haiku about queues")
    ...     done = await lanes.wait(execution.id, timeout=120)
    ...     print(done.status, done.text)

    ``base_url`` defaults to ``$LANES_URL``, else ``http://127.0.0.1:7465``; ``token`` to
    ``$LANES_API_TOKEN`` (pass ``token=""`` for none). ``timeout`` is each request's, in
    seconds; a long-poll gets its wait on top. ``retry`` says how connection failures are
    retried (see :class:`RetryPolicy`). With ``auto_idempotency_keys`` (the default), each
    submission without an ``idempotency_key`` gets a random one, so that a submission
    retried after a broken connection is queued once.
    ``max_connections`` caps the connections open at once; requests beyond it wait for
    one (long-polls hold theirs until they answer), however long that takes.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        *,
        token: Optional[str] = None,
        timeout: float = 30.0,
        retry: Optional[RetryPolicy] = None,
        auto_idempotency_keys: bool = True,
        headers: Optional[Mapping[str, str]] = None,
        max_connections: int = 100,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.base_url, token = _base.settings(base_url, token)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.auto_idempotency_keys = auto_idempotency_keys
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_base.headers(token, headers),
            timeout=_base.timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )

    # -- plumbing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Optional[Dict[str, Any]] = None,
        json: Any = None,
        timeout: Optional[httpx.Timeout] = None,
    ) -> httpx.Response:
        """Sends a request, retrying as the policy says; raises the problem of an error
        answer, and ConnectionError once the retries are spent."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if attempt <= self.retry.max_retries and _base.retryable_exception(exc, idempotent):
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, method, self.base_url + path, attempt) from exc
            if response.status_code >= 400:
                if attempt <= self.retry.max_retries and _base.retryable_status(
                    response.status_code, idempotent, self.retry
                ):
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                error = errors.error_for(response)
                error.attempts = attempt
                raise error
            return response

    # -- executions -------------------------------------------------------------------------

    async def submit(
        self,
        provider: str,
        input: InputLike,
        *,
        priority: Optional[int] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        allow_unknown: Optional[bool] = None,
        tenant: Optional[str] = None,
        cache: Optional[bool] = None,
        deferrable: Optional[bool] = None,
        deadline: Optional[int] = None,
    ) -> Submitted:
        """Queues one execution on ``provider`` (a provider or a route) and returns it.

        ``input`` is a prompt string, a :class:`ChatInput` or the normalized input as a
        dict. With an ``idempotency_key`` already used for the same request, the original
        execution comes back (``created`` is False); with another request,
        :class:`IdempotencyConflict`. ``tenant`` names who the work is for (tenants share
        each lane fairly); ``cache`` says whether the provider's response cache may answer
        it (absent: only a ``temperature`` of 0 is cached). ``deferrable`` lets it wait for
        a provider batch (``batched``), unless its ``deadline`` (Unix ms) comes too soon.
        """
        body = _base.submission(
            provider,
            input,
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            allow_unknown=allow_unknown,
            tenant=tenant,
            cache=cache,
            deferrable=deferrable,
            deadline=deadline,
            auto_key=self.auto_idempotency_keys,
        )
        keyed = "idempotency_key" in body
        response = await self._request("POST", "/v1/executions", json=body, idempotent=keyed)
        execution = _base.parse(Submitted, response)
        # A key the client made up is this call's alone: a 200 means a retry found what
        # this call's lost first try created.
        auto_key = idempotency_key is None and self.auto_idempotency_keys
        execution.created = response.status_code == 201 or auto_key
        return execution

    async def submit_batch(
        self, executions: Iterable[Union[SubmitRequest, Mapping[str, Any]]]
    ) -> BatchResponse:
        """Queues up to 1,000 executions in one transaction: all or none. Each entry is a
        :class:`SubmitRequest` or a dict of its fields (``input`` may be a prompt
        string). The answer lists ``{id, created}`` in order."""
        entries, auto_keys = _base.batch_entries(executions, self.auto_idempotency_keys)
        keyed = all("idempotency_key" in e for e in entries)
        response = await self._request(
            "POST", "/v1/executions:batch", json={"executions": entries}, idempotent=keyed
        )
        answer = _base.parse(BatchResponse, response)
        for entry, auto_key in zip(answer.executions, auto_keys):
            entry.created = entry.created or auto_key  # as in submit: the key is this call's
        return answer

    async def get(self, id: int, *, wait: Optional[Duration] = None) -> Execution:
        """One execution. With ``wait`` (seconds or a timedelta, at most 300), the server
        answers once it has ended or when the wait is over, whichever is first: check
        ``status`` (or ``done``)."""
        params = None
        timeout = None
        if wait is not None:
            params = {"wait": _base.wait_param(wait)}
            timeout = _base.timeout(self.timeout, read=self.timeout + _base.seconds(wait))
        response = await self._request(
            "GET", f"/v1/executions/{int(id)}", params=params, timeout=timeout, idempotent=True
        )
        return _base.parse(Execution, response)

    async def wait(self, id: int, *, timeout: Optional[Duration] = None) -> Execution:
        """Long-polls until the execution has ended and returns it; raises
        :class:`WaitTimeout` (holding the execution as it was) after ``timeout`` seconds,
        or never with ``timeout=None``."""
        deadline = None if timeout is None else time.monotonic() + _base.seconds(timeout)
        while True:
            left = _base.MAX_WAIT_SECONDS
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            execution = await self.get(id, wait=left)
            if execution.done:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.WaitTimeout(
                    f"execution {id} is still {execution.status} after {_base.seconds(timeout or 0):g} s",
                    execution,
                )

    async def list_page(
        self,
        *,
        provider: Optional[str] = None,
        status: Optional[str] = None,
        created_after: Any = None,
        created_before: Any = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> ExecutionPage:
        """One page of executions, newest first; pass its ``next`` as ``cursor`` for the
        next one. ``created_after``/``created_before`` are Unix ms or aware datetimes."""
        params = _base.list_params(provider, status, created_after, created_before, limit, cursor)
        response = await self._request("GET", "/v1/executions", params=params, idempotent=True)
        return _base.parse(ExecutionPage, response)

    async def pages(self, **filters: Any) -> AsyncIterator[ExecutionPage]:
        """Every page, following the cursors (``limit`` is the page size); the filters are
        those of :meth:`list_page`."""
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_page(cursor=cursor, **filters)
            yield page
            if not page.next:
                return
            cursor = page.next

    async def list(self, **filters: Any) -> AsyncIterator[Execution]:
        """Every execution the filters select, newest first, a page at a time."""
        async for page in self.pages(**filters):
            for execution in page.executions:
                yield execution

    async def cancel(self, id: int) -> Execution:
        """Cancels a pending or running execution; :class:`AlreadyEnded` when it has ended.

        A cancel is retried after a broken connection. When the first try did reach the
        server, the retry finds the execution ended: if it is ``cancelled``, that is this
        cancel's doing, and it is returned rather than raised."""
        path = f"/v1/executions/{int(id)}/cancel"
        try:
            response = await self._request("POST", path, idempotent=True)
        except errors.AlreadyEnded as error:
            if error.attempts > 1:
                execution = await self.get(id)
                if execution.status == "cancelled":
                    return execution
            raise
        return _base.parse(Execution, response)

    # -- providers and limits ---------------------------------------------------------------

    async def providers(self) -> Providers:
        """Every provider: limits, queue counts, recent numbers and state; and the pool."""
        response = await self._request("GET", "/v1/providers", idempotent=True)
        return _base.parse(Providers, response)

    async def limits(self) -> Dict[str, Limits]:
        """Each provider's limits, by name."""
        return {p.name: p.limits for p in (await self.providers()).providers}

    async def set_limit(self, provider: str, limit: int) -> LimitResponse:
        """Sets ``provider``'s run-time limit (1 to 2147483647); it survives restarts."""
        response = await self._request(
            "PUT", f"/v1/providers/{quote(provider, safe='')}/limit", json={"limit": int(limit)}, idempotent=True
        )
        return _base.parse(LimitResponse, response)

    async def clear_limit(self, provider: str) -> LimitResponse:
        """Removes ``provider``'s run-time limit: config or the component's default applies."""
        response = await self._request("DELETE", f"/v1/providers/{quote(provider, safe='')}/limit", idempotent=True)
        return _base.parse(LimitResponse, response)

    async def plugins(self) -> Plugins:
        """The plugins folder's files as the last scan left them."""
        response = await self._request("GET", "/v1/plugins", idempotent=True)
        return _base.parse(Plugins, response)

    async def tenants(self) -> Tenants:
        """Every tenant's pending, running, completed, failed and cancelled executions."""
        response = await self._request("GET", "/v1/tenants", idempotent=True)
        return _base.parse(Tenants, response)

    async def usage(
        self,
        by: str = "provider",
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> UsageReport:
        """Tokens and cost of the executions completed in a range, by ``provider``,
        ``model`` or ``tenant``. ``since`` and ``until`` take RFC 3339, a duration back
        from now (``"1h"``) or Unix ms as a string; the default range is the last day."""
        params = {k: v for k, v in (("by", by), ("since", since), ("until", until)) if v is not None}
        response = await self._request("GET", "/v1/usage", params=params, idempotent=True)
        return _base.parse(UsageReport, response)

    async def clear_cache(self, provider: Optional[str] = None) -> CacheCleared:
        """Drops the response cache's answers (of ``provider``, or every provider's)."""
        params = {"provider": provider} if provider is not None else None
        response = await self._request("DELETE", "/v1/cache", params=params, idempotent=True)
        return _base.parse(CacheCleared, response)

    async def health(self) -> Health:
        response = await self._request("GET", "/healthz", idempotent=True)
        return _base.parse(Health, response)

    async def ready(self) -> Health:
        """``/readyz``: raises :class:`ServiceUnavailable` until the daemon has started."""
        response = await self._request("GET", "/readyz", idempotent=False)
        return _base.parse(Health, response)

    # -- events ---------------------------------------------------------------------------

    def events(self, provider: Optional[str] = None, *, read_timeout: float = 60.0) -> "AsyncEventStream":
        """The daemon's events (``GET /v1/events``), as an iterator of typed events.

        >>> async with lanes.events(provider="claude") as events:
        ...     async for event in events:
        ...         print(event.type, event)

        The stream is open once ``async with`` (or the first ``anext``) returns: events from
        then on arrive. A :class:`LaggedEvent` says events were lost. ``read_timeout``
        (seconds) ends a stream that went silent, with :class:`ConnectionError`; the server
        sends a keep-alive every 15 s. The iteration ends when the server closes the stream
        (it shuts down). The events carry no SSE ids, so a new stream cannot resume an old
        one: after a reconnect, as after a lag, re-read what you track."""
        return AsyncEventStream(self, provider, read_timeout)

    # -- an execution's stream ---------------------------------------------------------------

    def stream(
        self, id: int, *, last_event_id: Optional[str] = None, read_timeout: float = 60.0
    ) -> "AsyncExecutionStream":
        """An execution's streamed answer as an async iterator of typed items, as
        :meth:`Client.stream` describes.

        >>> async with lanes.stream(execution.id) as stream:
        ...     async for item in stream:
        ...         if isinstance(item, TextDelta):
        ...             print(item.text, end="", flush=True)
        """
        return AsyncExecutionStream(self, id, last_event_id, read_timeout)

    def stream_text(self, id: int, *, read_timeout: float = 60.0) -> "AsyncTextStream":
        """The text of an execution's answer as it streams, as :meth:`Client.stream_text`
        describes: ``str`` pieces, :class:`Restarted` when a retry starts it over (iterate
        again to go on).

        >>> async with lanes.stream_text(execution.id) as text:
        ...     async for piece in text:
        ...         print(piece, end="", flush=True)
        """
        return AsyncTextStream(self.stream(id, read_timeout=read_timeout))


class AsyncEventStream:
    """An open ``GET /v1/events``: iterate over it (``async for``) for typed events; close it when done."""

    def __init__(self, client: AsyncClient, provider: Optional[str], read_timeout: float) -> None:
        self._client = client
        self._params = {"provider": provider} if provider else None
        self._timeout = _base.timeout(client.timeout, read=read_timeout)
        self._response: Optional[httpx.Response] = None
        self._events: Optional[AsyncIterator[Event]] = None

    async def open(self) -> "AsyncEventStream":
        """Connects (retrying connection failures) and checks the answer."""
        if self._response is not None:
            return self
        client = self._client
        attempt = 0
        while True:
            attempt += 1
            request = client._http.build_request(
                "GET",
                "/v1/events",
                params=self._params,
                headers={"accept": "text/event-stream", "cache-control": "no-store"},
                timeout=self._timeout,
            )
            try:
                response = await client._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt <= client.retry.max_retries and _base.retryable_exception(exc, True):
                    await asyncio.sleep(client.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, "GET", str(request.url), attempt) from exc
            break
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise errors.error_for(response)
        try:
            _base.check_event_stream(response)
        except errors.StreamError:
            await response.aclose()
            raise
        self._response = response
        self._events = self._iterate(response)
        return self

    async def _iterate(self, response: httpx.Response) -> AsyncIterator[Event]:
        try:
            async for sse in EventSource(response).aiter_sse():
                if not sse.data:
                    continue
                yield parse_event(sse.event, sse.data)
        except httpx.TransportError as exc:
            raise _base.connection_error(exc, "GET", str(response.request.url), 1) from exc

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        await self.open()
        assert self._events is not None
        return await self._events.__anext__()

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> "AsyncEventStream":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncExecutionStream:
    """An open ``GET /v1/executions/{id}/stream``: iterate over it (``async for``) for typed
    items (see :meth:`Client.stream`); close it when done (``async with`` does)."""

    def __init__(
        self, client: AsyncClient, id: int, last_event_id: Optional[str], read_timeout: float
    ) -> None:
        self._client = client
        self._state = _stream.StreamState(id, last_event_id)
        self._timeout = _base.timeout(client.timeout, read=read_timeout)
        self._response: Optional[httpx.Response] = None
        self._items: Optional[AsyncIterator[StreamItem]] = None
        self._closed = False

    @property
    def last_event_id(self) -> Optional[str]:
        """The id (``ATTEMPT:INDEX``) of the last delta read, which a reconnect resumes
        after."""
        return self._state.last_event_id

    @property
    def attempt(self) -> int:
        """The attempt whose deltas come now (0 before the first)."""
        return self._state.attempt

    @property
    def execution(self) -> Optional[Execution]:
        """The ended execution, once the end was read."""
        return self._state.execution

    async def open(self) -> "AsyncExecutionStream":
        """Connects (retrying connection failures) and checks the answer."""
        if self._items is None:
            await self._connect()
            self._items = self._iterate()
        return self

    async def _connect(self) -> None:
        client = self._client
        attempt = 0
        while True:
            attempt += 1
            request = client._http.build_request(
                "GET", self._state.path, headers=self._state.headers(), timeout=self._timeout
            )
            try:
                response = await client._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt <= client.retry.max_retries and _base.retryable_exception(exc, True):
                    await asyncio.sleep(client.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, "GET", str(request.url), attempt) from exc
            if response.status_code >= 400:
                await response.aread()
                await response.aclose()
                if attempt <= client.retry.max_retries and _base.retryable_status(
                    response.status_code, True, client.retry
                ):
                    await asyncio.sleep(client.retry.delay(attempt))
                    continue
                error = errors.error_for(response)
                error.attempts = attempt
                raise error
            try:
                _base.check_event_stream(response)
            except errors.StreamError:
                await response.aclose()
                raise
            self._response = response
            return

    async def _iterate(self) -> AsyncIterator[StreamItem]:
        drops = _stream.Drops()
        while True:
            response = self._response
            assert response is not None
            cause: BaseException
            try:
                async for sse in EventSource(response).aiter_sse():
                    item = self._state.item(sse.event, sse.data, sse.id)
                    if item is None:
                        continue
                    drops.progress()
                    yield item
                    if self._state.ended:
                        await self.aclose()
                        return
                cause = errors.StreamError("the server closed the stream before its end")
            except httpx.TransportError as exc:
                cause = exc
            await response.aclose()
            if self._closed:
                return
            # Resume where it was: the next connection sends Last-Event-ID.
            dropped = drops.dropped()
            if dropped > self._client.retry.max_retries:
                raise _base.connection_error(cause, "GET", str(response.request.url), dropped) from cause
            await asyncio.sleep(self._client.retry.delay(dropped))
            await self._connect()
            drops.connected()

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self

    async def __anext__(self) -> StreamItem:
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        assert self._items is not None
        return await self._items.__anext__()

    async def aclose(self) -> None:
        self._closed = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> "AsyncExecutionStream":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncTextStream:
    """An execution's answer as text pieces (see :meth:`AsyncClient.stream_text`): iterate
    (``async for``) for ``str``; :class:`Restarted` when a retry starts the text over
    (iterate again to go on). ``text`` is the text so far (of the attempt that counts),
    ``execution`` the ended execution once the iteration is over."""

    def __init__(self, stream: AsyncExecutionStream) -> None:
        self.stream = stream
        self._state = _stream.TextState()

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def attempt(self) -> int:
        return self._state.attempt

    @property
    def execution(self) -> Optional[Execution]:
        return self._state.execution

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while True:
            piece = self._state.next()
            if piece is not None:
                return piece
            self._state.feed(await self.stream.__anext__())

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> "AsyncTextStream":
        await self.stream.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
