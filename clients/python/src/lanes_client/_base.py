"""What the sync and async clients share: settings, request bodies, retry decisions,
answer parsing. No I/O happens here."""

from __future__ import annotations

import datetime as _dt
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar, Union

import httpx
import pydantic

from . import errors
from .models import ChatInput, SubmitRequest

__all__ = ["DEFAULT_URL", "RetryPolicy", "InputLike", "Duration"]

DEFAULT_URL = "http://127.0.0.1:7465"
#: The longest `?wait=` the server takes.
MAX_WAIT_SECONDS = 300.0

InputLike = Union[str, ChatInput, Mapping[str, Any]]
Duration = Union[float, int, _dt.timedelta]

try:  # the package's version, for the user agent
    from importlib.metadata import version as _version

    _VERSION = _version("lanes-client")
except Exception:  # pragma: no cover - running from a source tree
    _VERSION = "0"

USER_AGENT = f"lanes-client-python/{_VERSION}"


@dataclass(frozen=True)
class RetryPolicy:
    """How connection failures (and 503 answers) are retried.

    A request that never reached the server (the connection was refused, or timed out
    before it was open) is always retried. One that may have reached it (the connection
    broke while the answer was awaited, or it answered 503) is retried only when repeating
    it is safe: reads, limit changes, cancels, and submissions with an idempotency key
    (the client gives each submission one unless told not to).
    """

    max_retries: int = 3
    backoff: float = 0.25  # seconds before the first retry; doubles each time
    max_backoff: float = 4.0
    retry_503: bool = True

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based): the upper half of the window."""
        window = min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        return window / 2 + random.random() * window / 2


# Nothing was sent: any request may be repeated.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Something may have been sent: only a request safe to repeat may be.
_MAYBE_SENT = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
)


def retryable_exception(exc: BaseException, idempotent: bool) -> bool:
    if isinstance(exc, _NOT_SENT):
        return True
    return idempotent and isinstance(exc, _MAYBE_SENT)


def retryable_status(status: int, idempotent: bool, policy: RetryPolicy) -> bool:
    return policy.retry_503 and idempotent and status == 503


def connection_error(exc: BaseException, method: str, url: str, attempts: int) -> errors.ConnectionError:
    return errors.ConnectionError(
        f"{method} {url}: {type(exc).__name__}: {str(exc) or 'no detail'} "
        f"(after {attempts} attempt{'s' if attempts != 1 else ''})",
        attempts=attempts,
        cause=exc,
    )


def settings(base_url: Optional[str], token: Optional[str]) -> "tuple[str, Optional[str]]":
    """The base URL and token, from the arguments or else ``LANES_URL`` and
    ``LANES_API_TOKEN``. An empty token means none."""
    url = base_url or os.environ.get("LANES_URL") or DEFAULT_URL
    if token is None:
        token = os.environ.get("LANES_API_TOKEN")
    return url.rstrip("/"), (token or None)


def headers(token: Optional[str], extra: Optional[Mapping[str, str]]) -> Dict[str, str]:
    out = {"user-agent": USER_AGENT, "accept": "application/json"}
    if token:
        out["authorization"] = f"Bearer {token}"
    if extra:
        out.update(extra)
    return out


def as_input(value: InputLike) -> Dict[str, Any]:
    """A chat input as the API's JSON: a string is the ``prompt`` shorthand."""
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, ChatInput):
        return value.body()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"input must be a str, a ChatInput or a mapping, not {type(value).__name__}")


def new_key() -> str:
    return f"lanes-py-{uuid.uuid4().hex}"


def submission(
    provider: str,
    input: InputLike,
    *,
    priority: Optional[int],
    max_attempts: Optional[int],
    idempotency_key: Optional[str],
    allow_unknown: Optional[bool],
    auto_key: bool,
    tenant: Optional[str] = None,
    cache: Optional[bool] = None,
    deferrable: Optional[bool] = None,
    deadline: Optional[int] = None,
) -> Dict[str, Any]:
    """One submission's body, validated here as the server would."""
    request = SubmitRequest(
        provider=provider,
        input=as_input(input),
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key or (new_key() if auto_key else None),
        allow_unknown=allow_unknown,
        tenant=tenant,
        cache=cache,
        deferrable=deferrable,
        deadline=deadline,
    )
    return request.body()


def batch_entries(
    entries: Iterable[Union[SubmitRequest, Mapping[str, Any]]], auto_key: bool
) -> "tuple[list[Dict[str, Any]], list[bool]]":
    """The entries' bodies, and for each whether the client gave it its key."""
    out = []
    auto = []
    for entry in entries:
        if isinstance(entry, SubmitRequest):
            body = entry.body()
        else:
            body = SubmitRequest.model_validate(dict(entry)).body()
        given = auto_key and not body.get("idempotency_key")
        if given:
            body["idempotency_key"] = new_key()
        out.append(body)
        auto.append(given)
    return out, auto


def timeout(seconds: float, read: Optional[float] = None) -> httpx.Timeout:
    """A request's timeout. A request waits for a free connection as long as it takes: the
    client's own long-polls and event streams hold connections for minutes, and the
    requests beyond ``max_connections`` should queue behind them, not fail."""
    return httpx.Timeout(seconds, read=seconds if read is None else read, pool=None)


def seconds(value: Duration) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def wait_param(wait: Duration) -> str:
    """A wait as the API's `wait` parameter, in whole milliseconds, at most 5 minutes."""
    secs = seconds(wait)
    if secs < 0:
        raise ValueError(f"wait must not be negative, not {secs}")
    if secs > MAX_WAIT_SECONDS:
        raise ValueError(f"wait is at most {MAX_WAIT_SECONDS:.0f} s (the API's most), not {secs}")
    return f"{int(round(secs * 1000))}ms"


def millis(value: Union[int, float, _dt.datetime, None]) -> Optional[int]:
    """A time as Unix milliseconds: an int is taken as milliseconds already."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous: give it a tzinfo")
        return int(value.timestamp() * 1000)
    return int(value)


def list_params(
    provider: Optional[str],
    status: Optional[str],
    created_after: Union[int, _dt.datetime, None],
    created_before: Union[int, _dt.datetime, None],
    limit: Optional[int],
    cursor: Optional[str],
) -> Dict[str, Any]:
    params: Dict[str, Any] = {
        "provider": provider,
        "status": status,
        "created_after": millis(created_after),
        "created_before": millis(created_before),
        "limit": limit,
        "cursor": cursor,
    }
    return {k: v for k, v in params.items() if v is not None}


M = TypeVar("M", bound=pydantic.BaseModel)


def parse(model: Type[M], response: httpx.Response) -> M:
    """A success answer as ``model``; an answer that is not one (a proxy's page, another
    server) is a :class:`LanesError` that says what came instead."""
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        raise errors.LanesError(
            f"{response.request.method} {response.request.url}: answered {response.status_code} "
            f"with a body that is not the API's {model.__name__}: {exc.errors()[0].get('msg', exc)} "
            f"({response.text[:200]!r})"
        ) from exc


def check_event_stream(response: httpx.Response) -> None:
    """Raises the problem of an error answer, or StreamError for a non-SSE answer (the
    body must have been read for an error answer)."""
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise errors.StreamError(
            f"GET {response.request.url}: expected text/event-stream, got {content_type or 'no content type'}"
        )
