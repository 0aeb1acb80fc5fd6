"""The synchronous client."""

from __future__ import annotations

import time
from types import TracebackType
from urllib.parse import quote
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Type, Union

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

__all__ = ["Client", "EventStream", "ExecutionStream", "TextStream"]


class Client:
    """A client of one lanes API.

    >>> with Client("http://127.0.0.1:7465") as lanes:
    ...     execution = lanes.submit("claude", "Write a haiku about queues")
    ...     done = lanes.wait(execution.id, timeout=120)
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
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.base_url, token = _base.settings(base_url, token)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.auto_idempotency_keys = auto_idempotency_keys
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_base.headers(token, headers),
            timeout=_base.timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _request(
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
                response = self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if attempt <= self.retry.max_retries and _base.retryable_exception(exc, idempotent):
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, method, self.base_url + path, attempt) from exc
            if response.status_code >= 400:
                if attempt <= self.retry.max_retries and _base.retryable_status(
                    response.status_code, idempotent, self.retry
                ):
                    time.sleep(self.retry.delay(attempt))
                    continue
                error = errors.error_for(response)
                error.attempts = attempt
                raise error
            return response

    # -- executions -------------------------------------------------------------------------

    def submit(
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
        response = self._request("POST", "/v1/executions", json=body, idempotent=keyed)
        execution = _base.parse(Submitted, response)
        # A key the client made up is this call's alone: a 200 means a retry found what
        # this call's lost first try created.
        auto_key = idempotency_key is None and self.auto_idempotency_keys
        execution.created = response.status_code == 201 or auto_key
        return execution

    def submit_batch(
        self, executions: Iterable[Union[SubmitRequest, Mapping[str, Any]]]
    ) -> BatchResponse:
        """Queues up to 1,000 executions in one transaction: all or none. Each entry is a
        :class:`SubmitRequest` or a dict of its fields (``input`` may be a prompt
        string). The answer lists ``{id, created}`` in order."""
        entries, auto_keys = _base.batch_entries(executions, self.auto_idempotency_keys)
        keyed = all("idempotency_key" in e for e in entries)
        response = self._request(
            "POST", "/v1/executions:batch", json={"executions": entries}, idempotent=keyed
        )
        answer = _base.parse(BatchResponse, response)
        for entry, auto_key in zip(answer.executions, auto_keys):
            entry.created = entry.created or auto_key  # as in submit: the key is this call's
        return answer

    def get(self, id: int, *, wait: Optional[Duration] = None) -> Execution:
        """One execution. With ``wait`` (seconds or a timedelta, at most 300), the server
        answers once it has ended or when the wait is over, whichever is first: check
        ``status`` (or ``done``)."""
        params = None
        timeout = None
        if wait is not None:
            params = {"wait": _base.wait_param(wait)}
            timeout = _base.timeout(self.timeout, read=self.timeout + _base.seconds(wait))
        response = self._request(
            "GET", f"/v1/executions/{int(id)}", params=params, timeout=timeout, idempotent=True
        )
        return _base.parse(Execution, response)

    def wait(self, id: int, *, timeout: Optional[Duration] = None) -> Execution:
        """Long-polls until the execution has ended and returns it; raises
        :class:`WaitTimeout` (holding the execution as it was) after ``timeout`` seconds,
        or never with ``timeout=None``."""
        deadline = None if timeout is None else time.monotonic() + _base.seconds(timeout)
        while True:
            left = _base.MAX_WAIT_SECONDS
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            execution = self.get(id, wait=left)
            if execution.done:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.WaitTimeout(
                    f"execution {id} is still {execution.status} after {_base.seconds(timeout or 0):g} s",
                    execution,
                )

    def list_page(
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
        response = self._request("GET", "/v1/executions", params=params, idempotent=True)
        return _base.parse(ExecutionPage, response)

    def pages(self, **filters: Any) -> Iterator[ExecutionPage]:
        """Every page, following the cursors (``limit`` is the page size); the filters are
        those of :meth:`list_page`."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list_page(cursor=cursor, **filters)
            yield page
            if not page.next:
                return
            cursor = page.next

    def list(self, **filters: Any) -> Iterator[Execution]:
        """Every execution the filters select, newest first, a page at a time."""
        for page in self.pages(**filters):
            yield from page.executions

    def cancel(self, id: int) -> Execution:
        """Cancels a pending or running execution; :class:`AlreadyEnded` when it has ended.

        A cancel is retried after a broken connection. When the first try did reach the
        server, the retry finds the execution ended: if it is ``cancelled``, that is this
        cancel's doing, and it is returned rather than raised."""
        path = f"/v1/executions/{int(id)}/cancel"
        try:
            response = self._request("POST", path, idempotent=True)
        except errors.AlreadyEnded as error:
            if error.attempts > 1:
                execution = self.get(id)
                if execution.status == "cancelled":
                    return execution
            raise
        return _base.parse(Execution, response)

    # -- providers and limits ---------------------------------------------------------------

    def providers(self) -> Providers:
        """Every provider: limits, queue counts, recent numbers and state; and the pool."""
        response = self._request("GET", "/v1/providers", idempotent=True)
        return _base.parse(Providers, response)

    def limits(self) -> Dict[str, Limits]:
        """Each provider's limits, by name."""
        return {p.name: p.limits for p in self.providers().providers}

    def set_limit(self, provider: str, limit: int) -> LimitResponse:
        """Sets ``provider``'s run-time limit (1 to 2147483647); it survives restarts."""
        response = self._request(
            "PUT", f"/v1/providers/{quote(provider, safe='')}/limit", json={"limit": int(limit)}, idempotent=True
        )
        return _base.parse(LimitResponse, response)

    def clear_limit(self, provider: str) -> LimitResponse:
        """Removes ``provider``'s run-time limit: config or the component's default applies."""
        response = self._request("DELETE", f"/v1/providers/{quote(provider, safe='')}/limit", idempotent=True)
        return _base.parse(LimitResponse, response)

    def plugins(self) -> Plugins:
        """The plugins folder's files as the last scan left them."""
        response = self._request("GET", "/v1/plugins", idempotent=True)
        return _base.parse(Plugins, response)

    def tenants(self) -> Tenants:
        """Every tenant's pending, running, completed, failed and cancelled executions."""
        response = self._request("GET", "/v1/tenants", idempotent=True)
        return _base.parse(Tenants, response)

    def usage(
        self,
        by: str = "provider",
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> UsageReport:
        """Tokens and cost of the executions completed in a range, by ``provider``,
        ``model`` or ``tenant``. ``since`` and ``until`` take RFC 3339, a duration back
        from now (``"1h"``) or Unix ms as a string; the default range is the last day."""
        params = {k: v for k, v in (("by", by), ("since", since), ("until", until)) if v is not None}
        response = self._request("GET", "/v1/usage", params=params, idempotent=True)
        return _base.parse(UsageReport, response)

    def clear_cache(self, provider: Optional[str] = None) -> CacheCleared:
        """Drops the response cache's answers (of ``provider``, or every provider's)."""
        params = {"provider": provider} if provider is not None else None
        response = self._request("DELETE", "/v1/cache", params=params, idempotent=True)
        return _base.parse(CacheCleared, response)

    def health(self) -> Health:
        response = self._request("GET", "/healthz", idempotent=True)
        return _base.parse(Health, response)

    def ready(self) -> Health:
        """``/readyz``: raises :class:`ServiceUnavailable` until the daemon has started."""
        response = self._request("GET", "/readyz", idempotent=False)
        return _base.parse(Health, response)

    # -- events ---------------------------------------------------------------------------

    def events(self, provider: Optional[str] = None, *, read_timeout: float = 60.0) -> "EventStream":
        """The daemon's events (``GET /v1/events``), as an iterator of typed events.

        >>> with lanes.events(provider="claude") as events:
        ...     for event in events:
        ...         print(event.type, event)

        The stream is open once ``with`` (or the first ``next``) returns: events from
        then on arrive. A :class:`LaggedEvent` says events were lost. ``read_timeout``
        (seconds) ends a stream that went silent, with :class:`ConnectionError`; the server
        sends a keep-alive every 15 s. The iteration ends when the server closes the stream
        (it shuts down). The events carry no SSE ids, so a new stream cannot resume an old
        one: after a reconnect, as after a lag, re-read what you track."""
        return EventStream(self, provider, read_timeout)

    # -- an execution's stream ---------------------------------------------------------------

    def stream(
        self, id: int, *, last_event_id: Optional[str] = None, read_timeout: float = 60.0
    ) -> "ExecutionStream":
        """An execution's streamed answer (``GET /v1/executions/{id}/stream``), as an
        iterator of typed items: :class:`StreamAttempt` (an attempt's stream begins; from
        the second on, drop what the earlier one gave), the deltas (:class:`TextDelta`,
        :class:`ReasoningDelta`, :class:`ToolCallStartDelta`,
        :class:`ToolCallArgumentsDelta`, :class:`UsageDelta`, or :class:`UnknownDelta`),
        :class:`StreamLag`, and last :class:`StreamEnd`, whose ``execution`` is the ended
        execution. The iteration ends after it.

        >>> with lanes.stream(execution.id) as stream:
        ...     for item in stream:
        ...         if isinstance(item, TextDelta):
        ...             print(item.text, end="", flush=True)

        The execution needs ``"stream": true`` in its input (and a component that streams)
        for deltas; else its stream is its end. A stream opened after the end replays it
        (for ``[streams] keep_secs``). A connection that breaks, or a server that closes
        before the end, is reconnected with ``Last-Event-ID`` (the last delta's id): the
        stream goes on where it was, with nothing repeated or lost. Connecting is retried
        as for :meth:`events`; ``retry.max_retries`` drops in a row without progress raise
        :class:`ConnectionError`. ``last_event_id`` (``ATTEMPT:INDEX``, a delta's id as
        ``ExecutionStream.last_event_id`` gave it) resumes after that delta.
        ``read_timeout`` (seconds) counts a silent connection as broken; the server sends a
        keep-alive every 15 s."""
        return ExecutionStream(self, id, last_event_id, read_timeout)

    def stream_text(self, id: int, *, read_timeout: float = 60.0) -> "TextStream":
        """The text of an execution's answer as it streams: an iterator of ``str`` pieces
        (the text deltas), over :meth:`stream`.

        >>> with lanes.stream_text(execution.id) as text:
        ...     for piece in text:
        ...         print(piece, end="", flush=True)
        >>> text.execution.status
        'completed'

        Joined, the pieces are the output's ``text``: when the answer did not stream (or
        some deltas were dropped), the rest of the text comes as one piece at the end.
        When an attempt fails after its text began and the execution is retried, the new
        attempt starts the text over: iterating raises :class:`Restarted` (once, before
        the new attempt's first piece); drop what you showed, and iterate over the same
        text stream again for the new attempt's text. ``execution`` is the ended
        execution once the iteration is over (check its ``status``: a failed or cancelled
        one ends the text without an error)."""
        return TextStream(self.stream(id, read_timeout=read_timeout))


class EventStream:
    """An open ``GET /v1/events``: iterate over it for typed events; close it when done."""

    def __init__(self, client: Client, provider: Optional[str], read_timeout: float) -> None:
        self._client = client
        self._params = {"provider": provider} if provider else None
        self._timeout = _base.timeout(client.timeout, read=read_timeout)
        self._response: Optional[httpx.Response] = None
        self._events: Optional[Iterator[Event]] = None

    def open(self) -> "EventStream":
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
                response = client._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt <= client.retry.max_retries and _base.retryable_exception(exc, True):
                    time.sleep(client.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, "GET", str(request.url), attempt) from exc
            break
        if response.status_code >= 400:
            response.read()
            response.close()
            raise errors.error_for(response)
        try:
            _base.check_event_stream(response)
        except errors.StreamError:
            response.close()
            raise
        self._response = response
        self._events = self._iterate(response)
        return self

    def _iterate(self, response: httpx.Response) -> Iterator[Event]:
        try:
            for sse in EventSource(response).iter_sse():
                if not sse.data:
                    continue
                yield parse_event(sse.event, sse.data)
        except httpx.TransportError as exc:
            raise _base.connection_error(exc, "GET", str(response.request.url), 1) from exc

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        self.open()
        assert self._events is not None
        return next(self._events)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> "EventStream":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ExecutionStream:
    """An open ``GET /v1/executions/{id}/stream``: iterate over it for typed items
    (see :meth:`Client.stream`); close it when done (``with`` does)."""

    def __init__(
        self, client: Client, id: int, last_event_id: Optional[str], read_timeout: float
    ) -> None:
        self._client = client
        self._state = _stream.StreamState(id, last_event_id)
        self._timeout = _base.timeout(client.timeout, read=read_timeout)
        self._response: Optional[httpx.Response] = None
        self._items: Optional[Iterator[StreamItem]] = None
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

    def open(self) -> "ExecutionStream":
        """Connects (retrying connection failures) and checks the answer."""
        if self._items is None:
            self._connect()
            self._items = self._iterate()
        return self

    def _connect(self) -> None:
        client = self._client
        attempt = 0
        while True:
            attempt += 1
            request = client._http.build_request(
                "GET", self._state.path, headers=self._state.headers(), timeout=self._timeout
            )
            try:
                response = client._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt <= client.retry.max_retries and _base.retryable_exception(exc, True):
                    time.sleep(client.retry.delay(attempt))
                    continue
                raise _base.connection_error(exc, "GET", str(request.url), attempt) from exc
            if response.status_code >= 400:
                response.read()
                response.close()
                if attempt <= client.retry.max_retries and _base.retryable_status(
                    response.status_code, True, client.retry
                ):
                    time.sleep(client.retry.delay(attempt))
                    continue
                error = errors.error_for(response)
                error.attempts = attempt
                raise error
            try:
                _base.check_event_stream(response)
            except errors.StreamError:
                response.close()
                raise
            self._response = response
            return

    def _iterate(self) -> Iterator[StreamItem]:
        drops = _stream.Drops()
        while True:
            response = self._response
            assert response is not None
            cause: BaseException
            try:
                for sse in EventSource(response).iter_sse():
                    item = self._state.item(sse.event, sse.data, sse.id)
                    if item is None:
                        continue
                    drops.progress()
                    yield item
                    if self._state.ended:
                        self.close()
                        return
                cause = errors.StreamError("the server closed the stream before its end")
            except httpx.TransportError as exc:
                cause = exc
            response.close()
            if self._closed:
                return
            # Resume where it was: the next connection sends Last-Event-ID.
            dropped = drops.dropped()
            if dropped > self._client.retry.max_retries:
                raise _base.connection_error(cause, "GET", str(response.request.url), dropped) from cause
            time.sleep(self._client.retry.delay(dropped))
            self._connect()
            drops.connected()

    def __iter__(self) -> Iterator[StreamItem]:
        return self

    def __next__(self) -> StreamItem:
        if self._closed:
            raise StopIteration
        self.open()
        assert self._items is not None
        return next(self._items)

    def close(self) -> None:
        self._closed = True
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> "ExecutionStream":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TextStream:
    """An execution's answer as text pieces (see :meth:`Client.stream_text`): iterate for
    ``str``; :class:`Restarted` when a retry starts the text over (iterate again to go on).
    ``text`` is the text so far (of the attempt that counts), ``execution`` the ended
    execution once the iteration is over."""

    def __init__(self, stream: ExecutionStream) -> None:
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

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            piece = self._state.next()
            if piece is not None:
                return piece
            self._state.feed(next(self.stream))

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "TextStream":
        self.stream.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
