"""Typed exceptions. Every error answer of the API is an RFC 9457 problem
(``application/problem+json``: ``type``, ``title``, ``status``, ``detail``); the exception
raised for it carries the problem, and its class says which kind it is.

    LanesError
    ├── ConnectionError        the server could not be reached (after the retries)
    ├── WaitTimeout            ``Client.wait`` gave up before the execution ended
    ├── StreamError            an event stream was not an event stream
    ├── Restarted              ``stream_text``: a retry starts the text over
    └── APIError               an error answer (``.problem``, ``.status``, ``.kind``, ...)
        ├── BadRequest               400 bad-request
        ├── Unauthorized             401 unauthorized
        ├── NotFound                 404 not-found
        ├── MethodNotAllowed         405 method-not-allowed
        ├── Conflict                 409
        │   ├── IdempotencyConflict  409 idempotency-conflict
        │   └── AlreadyEnded         409 already-ended
        ├── PayloadTooLarge          413 too-large
        ├── UnsupportedMediaType     415 unsupported-media-type
        ├── ValidationError          422 invalid
        └── ServiceUnavailable       503 internal, not-ready
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import httpx

PROBLEM_PREFIX = "urn:lanes:problem:"

__all__ = [
    "LanesError",
    "ConnectionError",
    "WaitTimeout",
    "StreamError",
    "Restarted",
    "APIError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "IdempotencyConflict",
    "AlreadyEnded",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ValidationError",
    "ServiceUnavailable",
    "error_for",
]


class LanesError(Exception):
    """Every error this client raises."""


class ConnectionError(LanesError):  # noqa: A001 - deliberately shadows the builtin here
    """The server could not be reached, or the connection broke, after the retries."""

    def __init__(self, message: str, *, attempts: int, cause: BaseException) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.__cause__ = cause


class WaitTimeout(LanesError):
    """The execution had not ended when the wait was over; ``execution`` is how it was."""

    def __init__(self, message: str, execution: Any) -> None:
        super().__init__(message)
        self.execution = execution


class StreamError(LanesError):
    """An event stream answered something that is not ``text/event-stream``."""


class Restarted(LanesError):
    """Raised by a text stream (``Client.stream_text``) when the execution's attempt
    ``attempt`` starts its answer over after the text stream gave pieces of an earlier
    one (the earlier attempt failed and was retried). Drop what you showed of the text
    (``discarded``), then iterate over the same text stream again: the new attempt's text
    follows, from its start."""

    def __init__(self, attempt: int, discarded: str) -> None:
        super().__init__(f"attempt {attempt} starts the answer over: drop the text so far")
        self.attempt = attempt
        self.discarded = discarded


class APIError(LanesError):
    """An error answer. ``problem`` is the problem document as the server sent it (or a
    stand-in when the body was not one, e.g. from a proxy)."""

    def __init__(self, problem: Dict[str, Any], response: Optional[httpx.Response] = None):
        self.problem = problem
        self.response = response
        self.status: int = int(problem.get("status") or (response.status_code if response else 0))
        self.type: str = str(problem.get("type") or "about:blank")
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or "")
        #: How many times the request was sent (more than 1 after retries).
        self.attempts: int = 1
        super().__init__(self._message())

    @property
    def kind(self) -> str:
        """The problem's kind: its ``type`` after ``urn:lanes:problem:``."""
        if self.type.startswith(PROBLEM_PREFIX):
            return self.type[len(PROBLEM_PREFIX) :]
        return self.type

    def _message(self) -> str:
        head = f"{self.status} {self.title}".strip()
        return f"{head}: {self.detail}" if self.detail else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, type={self.type!r}, detail={self.detail!r})"


class BadRequest(APIError):
    """400: malformed JSON, a bad path or query parameter, a bad cursor or wait."""


class Unauthorized(APIError):
    """401: no bearer token, or a wrong one."""


class NotFound(APIError):
    """404: no such execution, provider or route."""


class MethodNotAllowed(APIError):
    """405: the path does not take the method."""


class Conflict(APIError):
    """409: the request conflicts with what is stored."""


class IdempotencyConflict(Conflict):
    """409: the idempotency key was used with another request."""


class AlreadyEnded(Conflict):
    """409: cancelling an execution that has ended."""


class PayloadTooLarge(APIError):
    """413: the body is over the server's ``max_body_bytes``."""


class UnsupportedMediaType(APIError):
    """415: the body is not ``application/json``."""


class ValidationError(APIError):
    """422: well-formed JSON with unknown fields, wrong types or values out of range."""


class ServiceUnavailable(APIError):
    """503: the database did not answer, or the daemon is not ready."""


_BY_KIND = {
    "idempotency-conflict": IdempotencyConflict,
    "already-ended": AlreadyEnded,
}

_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> APIError:
    """The exception for an error answer (the body must have been read)."""
    problem: Dict[str, Any]
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and ("type" in body or "title" in body or "detail" in body):
        problem = body
    else:
        # Not a problem document (a proxy's page, an empty body): keep what there is.
        text = response.text.strip()
        problem = {
            "type": "about:blank",
            "title": response.reason_phrase or "HTTP error",
            "status": response.status_code,
            "detail": text[:500],
        }
    problem.setdefault("status", response.status_code)
    kind = str(problem.get("type", ""))
    if kind.startswith(PROBLEM_PREFIX):
        cls = _BY_KIND.get(kind[len(PROBLEM_PREFIX) :])
        if cls is not None:
            return cls(problem, response)
    return _BY_STATUS.get(response.status_code, APIError)(problem, response)
