"""The API's wire types (docs/openapi.json), as pydantic v2 models.

Answers are read tolerantly: a field the server adds later is kept (``extra="allow"``) and
never an error, so an older client keeps working against a newer daemon. Requests are
strict (``extra="forbid"``), as the server is: a misspelt field fails here, before a round
trip, with the same meaning as the server's 422.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

__all__ = [
    "TERMINAL_STATUSES",
    "Message",
    "ChatInput",
    "SubmitRequest",
    "Usage",
    "Output",
    "Attempt",
    "Execution",
    "Submitted",
    "ExecutionPage",
    "BatchEntry",
    "BatchResponse",
    "Limits",
    "LimitResponse",
    "Component",
    "Window",
    "Budget",
    "Provider",
    "Pool",
    "Providers",
    "Plugin",
    "Plugins",
    "Health",
    "Event",
    "StartedEvent",
    "FinishedEvent",
    "LimitChangedEvent",
    "ComponentLoadedEvent",
    "ComponentRejectedEvent",
    "LanePausedEvent",
    "CircuitChangedEvent",
    "LaggedEvent",
    "UnknownEvent",
    "parse_event",
]

#: The statuses an execution never leaves.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class _Wire(BaseModel):
    """A response type: unknown fields are kept, never refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Request(BaseModel):
    """A request type: unknown fields are refused, as the server refuses them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------
# Requests


class Message(_Request):
    role: str
    content: str


class ChatInput(_Request):
    """The normalized chat input. ``prompt`` is the shorthand for one user message."""

    prompt: Optional[str] = None
    model: Optional[str] = None
    system: Optional[str] = None
    messages: Optional[List[Message]] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    stop: Optional[List[str]] = None
    extra: Optional[Dict[str, Any]] = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "ChatInput":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give one of `prompt` or `messages`")
        return self


class SubmitRequest(_Request):
    """One submission (``POST /v1/executions``, or one entry of a batch)."""

    provider: str
    input: Dict[str, Any]
    priority: Optional[int] = None
    max_attempts: Optional[int] = Field(default=None, ge=1, le=2147483647)
    idempotency_key: Optional[str] = Field(default=None, min_length=1, max_length=255)
    allow_unknown: Optional[bool] = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        """A prompt string or a :class:`ChatInput` stands for its JSON form."""
        if isinstance(value, str):
            return {"prompt": value}
        if isinstance(value, ChatInput):
            return value.model_dump(exclude_none=True)
        return value

    def body(self) -> Dict[str, Any]:
        return self.model_dump(exclude_none=True)


# ---------------------------------------------------------------------------------------
# Executions


class Usage(_Wire):
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None


class Output(_Wire):
    text: str = ""
    model: Optional[str] = None
    usage: Optional[Usage] = None
    finish_reason: Optional[str] = None


class Attempt(_Wire):
    """One ended attempt of an execution's history."""

    attempt: int
    outcome: str
    started_at: Optional[int] = None
    finished_at: Optional[int] = None
    worker: Optional[str] = None
    error_kind: Optional[str] = None
    error: Optional[str] = None
    retry_delay_ms: Optional[int] = None
    provider: Optional[str] = None


class Execution(_Wire):
    """An execution. Times are Unix milliseconds."""

    id: int
    provider: str
    status: str
    priority: int = 0
    aged: int = 0
    input: Dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    max_attempts: int = 0
    created_at: int = 0
    not_before: int = 0
    history: List[Attempt] = Field(default_factory=list)
    route: Optional[str] = None
    output: Optional[Output] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None
    started_at: Optional[int] = None
    finished_at: Optional[int] = None
    worker: Optional[str] = None

    @property
    def done(self) -> bool:
        """Whether it has ended: completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def text(self) -> Optional[str]:
        """The output's text once completed, else None."""
        return self.output.text if self.output is not None else None


class Submitted(Execution):
    """A submission's answer: the execution, and whether this request created it (HTTP
    201) or its idempotency key found an earlier one (200). ``created`` comes from the
    status code, not the body."""

    created: bool = True


class ExecutionPage(_Wire):
    """One page of ``GET /v1/executions``, newest first; ``next`` is the next page's cursor."""

    executions: List[Execution]
    next: Optional[str] = None


class BatchEntry(_Wire):
    id: int
    created: bool


class BatchResponse(_Wire):
    executions: List[BatchEntry]


# ---------------------------------------------------------------------------------------
# Providers, limits, plugins, health


class Limits(_Wire):
    effective: int
    source: str
    claimable: int
    default: Optional[int] = None
    configured: Optional[int] = None
    runtime: Optional[int] = None
    adaptive: Optional[int] = None


class LimitResponse(_Wire):
    provider: str
    limits: Limits


class Component(_Wire):
    file: str
    version: str


class Window(_Wire):
    completed: int = 0
    failed: int = 0
    retried: int = 0
    latency_p50_ms: Optional[int] = None
    latency_p95_ms: Optional[int] = None


class Budget(_Wire):
    requests: int = 0
    tokens: int = 0
    rpm: Optional[int] = None
    tpm: Optional[int] = None


class Provider(_Wire):
    name: str
    limits: Limits
    running: int = 0
    pending: int = 0
    last_minute: Window = Field(default_factory=Window)
    throughput_5m: List[int] = Field(default_factory=list)
    errors_5m: List[int] = Field(default_factory=list)
    state: str = "serving"
    component: Optional[Component] = None
    paused_until: Optional[int] = None
    reason: Optional[str] = None
    budget: Optional[Budget] = None
    workers: Optional[int] = None


class Pool(_Wire):
    size: int
    max_instances: int
    in_use: int
    slots: int
    over: bool
    waiting_lanes: int
    held_back: int


class Providers(_Wire):
    providers: List[Provider]
    pool: Optional[Pool] = None

    def get(self, name: str) -> Optional[Provider]:
        """The provider called ``name``, or None."""
        return next((p for p in self.providers if p.name == name), None)


class Plugin(_Wire):
    file: str
    status: str
    serving_previous: bool = False
    name: Optional[str] = None
    version: Optional[str] = None
    default_limit: Optional[int] = None
    description: Optional[str] = None
    reason: Optional[str] = None


class Plugins(_Wire):
    plugins: List[Plugin]


class Health(_Wire):
    status: str


# ---------------------------------------------------------------------------------------
# Events (GET /v1/events). The SSE `event:` field is the data's `type`.


class StartedEvent(_Wire):
    type: Literal["started"] = "started"
    id: int
    provider: str
    attempt: int
    queue_wait_ms: int


class FinishedEvent(_Wire):
    type: Literal["finished"] = "finished"
    id: int
    provider: str
    attempt: int
    outcome: str
    duration_ms: int
    error_kind: Optional[str] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None


class LimitChangedEvent(_Wire):
    type: Literal["limit_changed"] = "limit_changed"
    provider: str
    old: int
    new: int


class ComponentLoadedEvent(_Wire):
    type: Literal["component_loaded"] = "component_loaded"
    provider: str
    file: str
    version: str


class ComponentRejectedEvent(_Wire):
    type: Literal["component_rejected"] = "component_rejected"
    file: str
    reason: str


class LanePausedEvent(_Wire):
    type: Literal["lane_paused"] = "lane_paused"
    provider: str
    reason: str
    for_ms: Optional[int] = None


class CircuitChangedEvent(_Wire):
    type: Literal["circuit_changed"] = "circuit_changed"
    provider: str
    open: bool
    reason: str


class LaggedEvent(_Wire):
    """The stream fell behind and lost ``missed`` events: re-read what you track."""

    type: Literal["lagged"] = "lagged"
    missed: int


class UnknownEvent(_Wire):
    """An event type this client does not know (a newer daemon's); its fields are kept."""

    type: str


_KnownEvent = Union[
    StartedEvent,
    FinishedEvent,
    LimitChangedEvent,
    ComponentLoadedEvent,
    ComponentRejectedEvent,
    LanePausedEvent,
    CircuitChangedEvent,
    LaggedEvent,
]
Event = Union[_KnownEvent, UnknownEvent]

_EVENTS = {
    cls.model_fields["type"].default: cls
    for cls in (
        StartedEvent,
        FinishedEvent,
        LimitChangedEvent,
        ComponentLoadedEvent,
        ComponentRejectedEvent,
        LanePausedEvent,
        CircuitChangedEvent,
        LaggedEvent,
    )
}

_ANY = TypeAdapter(Dict[str, Any])


def parse_event(name: str, data: str) -> Event:
    """One SSE event as a model: by its `event:` name (or the data's `type`)."""
    fields = _ANY.validate_json(data)
    kind = fields.get("type") or name
    fields["type"] = kind
    cls = _EVENTS.get(kind)
    if cls is None:
        return UnknownEvent.model_validate(fields)
    return cls.model_validate(fields)
