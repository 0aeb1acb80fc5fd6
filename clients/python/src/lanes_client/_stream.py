"""What the sync and async execution streams share: reading the events of
``GET /v1/executions/{id}/stream`` into typed items, the place a reconnect resumes from,
and the text stream's bookkeeping. No I/O happens here."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Deque, Dict, Optional, Tuple, Union

from . import errors
from .models import (
    Execution,
    StreamAttempt,
    StreamEnd,
    StreamItem,
    StreamLag,
    TextDelta,
    parse_delta,
)

#: A connection that stayed open this long (seconds) before it broke counts as progress:
#: the drops in a row that give up are those of connections that brought nothing.
PROGRESS_SECONDS = 10.0


def event_id(value: str) -> Optional[Tuple[int, int]]:
    """``ATTEMPT:INDEX`` as numbers, or None."""
    attempt, sep, index = value.partition(":")
    if not sep:
        return None
    try:
        return int(attempt), int(index)
    except ValueError:
        return None


class StreamState:
    """Where a reader of one execution's stream is, across connections: the last delta's
    id (sent as ``Last-Event-ID`` on a reconnect) and the attempt it follows. Events a
    reconnect sends again (an ``attempt`` already told, a delta already had) are dropped."""

    def __init__(self, id: int, last_event_id: Optional[str]) -> None:
        self.path = f"/v1/executions/{int(id)}/stream"
        self.last_event_id: Optional[str] = None
        self.position: Optional[Tuple[int, int]] = None
        #: The attempt whose deltas come now (0 before the first).
        self.attempt = 0
        #: The ended execution, once the ``end`` event came.
        self.execution: Optional[Execution] = None
        if last_event_id is not None:
            position = event_id(last_event_id)
            if position is None:
                raise ValueError(f"last_event_id must be ATTEMPT:INDEX, not {last_event_id!r}")
            self.last_event_id, self.position, self.attempt = last_event_id, position, position[0]

    @property
    def ended(self) -> bool:
        return self.execution is not None

    def headers(self) -> Dict[str, str]:
        headers = {"accept": "text/event-stream", "cache-control": "no-store"}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        return headers

    def item(self, event: str, data: str, id: Optional[str]) -> Optional[StreamItem]:
        """The item for one SSE event, or None for one to skip (a repeat, an event name
        this client does not know)."""
        if event == "delta":
            position = event_id(id or "")
            if position is not None:
                if self.position is not None and position <= self.position:
                    return None  # had already, before a reconnect
                self.position, self.last_event_id = position, id
            return parse_delta(data)
        if event == "attempt":
            attempt = int(json.loads(data)["attempt"])
            if attempt <= self.attempt:
                return None  # told already, before a reconnect
            self.attempt = attempt
            return StreamAttempt(attempt=attempt)
        if event == "lag":
            return StreamLag.model_validate_json(data)
        if event == "end":
            self.execution = Execution.model_validate_json(data)
            return StreamEnd(execution=self.execution)
        return None


class Drops:
    """Counts the connections in a row that broke without progress (no event, and open
    less than PROGRESS_SECONDS)."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.since = time.monotonic()

    def connected(self) -> None:
        self.since = time.monotonic()

    def progress(self) -> None:
        self.in_a_row = 0

    def dropped(self) -> int:
        if time.monotonic() - self.since >= PROGRESS_SECONDS:
            self.in_a_row = 0
        self.in_a_row += 1
        return self.in_a_row


class TextState:
    """Turns a stream's items into text pieces: the text deltas of the attempt that
    counts. A new attempt after text was given raises :class:`Restarted` (once), then its
    text follows. At the end of a completed execution, whatever of its output's text the
    deltas did not give (none came: the call did not stream; or some were dropped) is given
    too, so the pieces joined are the output's text."""

    def __init__(self) -> None:
        #: The text given for the current attempt.
        self.text = ""
        self.attempt = 0
        self.execution: Optional[Execution] = None
        self._out: Deque[Union[str, errors.Restarted]] = deque()

    def feed(self, item: StreamItem) -> None:
        if isinstance(item, StreamAttempt):
            self.attempt = item.attempt
            self._restart()
        elif isinstance(item, TextDelta):
            if item.text:
                self.text += item.text
                self._out.append(item.text)
        elif isinstance(item, StreamEnd):
            self.execution = item.execution
            output = item.execution.output
            if item.execution.status == "completed" and output is not None:
                if not output.text.startswith(self.text):
                    # Its text came from an attempt that did not stream here.
                    self.attempt = max(self.attempt, item.execution.attempts)
                    self._restart()
                rest = output.text[len(self.text) :]
                if rest:
                    self.text += rest
                    self._out.append(rest)

    def _restart(self) -> None:
        if self.text:
            self._out.append(errors.Restarted(self.attempt, self.text))
            self.text = ""

    def next(self) -> Optional[str]:
        """The next piece; raises a pending Restarted; None when nothing is ready."""
        if not self._out:
            return None
        piece = self._out.popleft()
        if isinstance(piece, errors.Restarted):
            raise piece
        return piece
