"""The API's wire types (docs/openapi.json), as pydantic v2 models.

Answers are read tolerantly: a field the server adds later is kept (``extra="allow"``) and
never an error, so an older client keeps working against a newer daemon. Requests are
strict (``extra="forbid"``), as the server is: a misspelt field fails here, before a round
trip, with the same meaning as the server's 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

__all__ = [
    "TERMINAL_STATUSES",
    "TextPart",
    "ImagePart",
    "ToolCallPart",
    "ToolResultPart",
    "ReasoningPart",
    "UnknownPart",
    "Part",
    "ResultPart",
    "OutputPart",
    "Tool",
    "NamedTool",
    "ToolChoice",
    "TextFormat",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "ResponseFormat",
    "Reasoning",
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
    "Spend",
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
    "SpendCapEvent",
    "LaggedEvent",
    "UnknownEvent",
    "parse_event",
    "TextDelta",
    "ReasoningDelta",
    "ToolCallStartDelta",
    "ToolCallArgumentsDelta",
    "UsageDelta",
    "UnknownDelta",
    "Delta",
    "StreamAttempt",
    "StreamLag",
    "StreamEnd",
    "StreamItem",
    "parse_delta",
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


# Content parts: a message's ``content`` is a string or a list of these, tagged by ``type``.


class TextPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Request):
    """``url`` (http or https), or ``data`` (base64, no ``data:`` prefix) with
    ``media_type`` (``image/png``, ``image/jpeg``, ``image/gif`` or ``image/webp``).
    Needs the ``images`` capability."""

    type: Literal["image"] = "image"
    url: Optional[str] = None
    data: Optional[str] = None
    media_type: Optional[str] = None


class ToolCallPart(_Request):
    """A call the model made (in an ``assistant`` message); ``arguments`` is JSON text, as
    the model wrote it."""

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: str


#: A part of a tool result's content.
ResultPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ToolResultPart(_Request):
    """The answer to the earlier ``tool_call`` whose ``id`` is ``call_id`` (in a ``tool``
    message)."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    content: Union[str, List[ResultPart]]
    is_error: Optional[bool] = None


class ReasoningPart(_Request):
    """The model's reasoning (in an ``assistant`` message): pass ``signature`` and
    ``redacted`` back unchanged."""

    type: Literal["reasoning"] = "reasoning"
    text: str
    signature: Optional[str] = None
    redacted: Optional[str] = None


#: A part of a message's content.
Part = Annotated[
    Union[TextPart, ImagePart, ToolCallPart, ToolResultPart, ReasoningPart],
    Field(discriminator="type"),
]


class Message(_Request):
    """One message. ``role`` is ``system``, ``user``, ``assistant`` or ``tool``;
    ``content`` a string or a list of parts (an answer's ``output.content`` goes back as
    an ``assistant`` message's content as it is)."""

    role: str
    content: Union[str, List[Part]]


class Tool(_Request):
    """A tool the model may call; ``parameters`` is a JSON Schema object (absent: none)."""

    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class NamedTool(_Request):
    """The one tool the model must call (a ``tool_choice``)."""

    name: str


#: ``"auto"``, ``"none"``, ``"required"``, or one tool by name.
ToolChoice = Union[Literal["auto", "none", "required"], NamedTool]


class TextFormat(_Request):
    type: Literal["text"] = "text"


class JsonObjectFormat(_Request):
    type: Literal["json_object"] = "json_object"


class JsonSchemaFormat(_Request):
    """An answer that is JSON matching ``schema`` (``schema_`` in Python, ``schema`` on
    the wire)."""

    type: Literal["json_schema"] = "json_schema"
    name: str
    schema_: Dict[str, Any] = Field(alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None


#: The form of the answer (a ``response_format``).
ResponseFormat = Annotated[
    Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")
]


class Reasoning(_Request):
    """How much the model reasons: ``effort`` or ``budget_tokens``, one of the two."""

    effort: Optional[Literal["low", "medium", "high"]] = None
    budget_tokens: Optional[int] = None


class ChatInput(_Request):
    """The normalized chat input. ``prompt`` is the shorthand for one user message.
    ``stream=True`` streams the answer (see ``Client.stream``) when the provider's
    component can."""

    prompt: Optional[str] = None
    model: Optional[str] = None
    system: Optional[str] = None
    messages: Optional[List[Message]] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    stop: Optional[List[str]] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    reasoning: Optional[Reasoning] = None
    stream: Optional[bool] = None
    extra: Optional[Dict[str, Any]] = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "ChatInput":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give one of `prompt` or `messages`")
        return self

    def body(self) -> Dict[str, Any]:
        """The input as the API's JSON."""
        return self.model_dump(exclude_none=True, by_alias=True)


class SubmitRequest(_Request):
    """One submission (``POST /v1/executions``, or one entry of a batch)."""

    provider: str
    input: Dict[str, Any]
    priority: Optional[int] = None
    max_attempts: Optional[int] = Field(default=None, ge=1, le=2147483647)
    idempotency_key: Optional[str] = Field(default=None, min_length=1, max_length=255)
    allow_unknown: Optional[bool] = None
    #: Who the work is for: 1 to 64 of ``a-z A-Z 0-9 _ - . : @``.
    tenant: Optional[str] = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$"
    )
    #: Whether the provider's response cache may answer it.
    cache: Optional[bool] = None
    #: It can wait for a provider batch (about half the price; see the server's
    #: ``docs/batches.md``): a provider with a batch lane holds it as ``batched``.
    deferrable: Optional[bool] = None
    #: When it must have ended, Unix ms: a deferrable one that a batch could not end in
    #: time runs live.
    deadline: Optional[int] = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        """A prompt string or a :class:`ChatInput` stands for its JSON form."""
        if isinstance(value, str):
            return {"prompt": value}
        if isinstance(value, ChatInput):
            return value.body()
        return value

    def body(self) -> Dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


# ---------------------------------------------------------------------------------------
# Executions


class Usage(_Wire):
    """Token counts. ``input_tokens`` counts every prompt token, cache reads and writes
    included (``cache_read_tokens``, ``cache_write_tokens``); ``output_tokens`` every
    output token, reasoning included (``reasoning_tokens``). The breakdown is present when
    the provider says."""

    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cache_read_tokens: Optional[int] = None
    cache_write_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None


# The parts of an answer are the request's part classes, read tolerantly: an answer's
# parts are instances of TextPart, ToolCallPart and ReasoningPart (so they go back in an
# assistant message as they are, and compare equal to the same part made by hand), and
# keep fields a newer server adds.


class _AnswerPart:
    """Shows and compares as the request's part class it extends (its last base)."""

    def __repr_name__(self) -> str:
        return type(self).__bases__[-1].__name__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, type(self).__bases__[-1]) and isinstance(other, BaseModel):
            return self.model_dump() == other.model_dump()  # type: ignore[attr-defined]
        return NotImplemented


class _AnswerTextPart(_AnswerPart, TextPart):
    model_config = ConfigDict(extra="allow")


class _AnswerToolCallPart(_AnswerPart, ToolCallPart):
    model_config = ConfigDict(extra="allow")


class _AnswerReasoningPart(_AnswerPart, ReasoningPart):
    model_config = ConfigDict(extra="allow")


class UnknownPart(_Wire):
    """A part of a type this client does not know (a newer daemon's); its fields are kept."""

    type: str


_ANSWER_PARTS = {"text": _AnswerTextPart, "tool_call": _AnswerToolCallPart, "reasoning": _AnswerReasoningPart}


def _answer_part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _ANSWER_PARTS else "unknown"


#: A part of an answer: a :class:`TextPart`, :class:`ToolCallPart` or
#: :class:`ReasoningPart` (check with ``isinstance``), or an :class:`UnknownPart`.
OutputPart = Annotated[
    Union[
        Annotated[_AnswerTextPart, Tag("text")],
        Annotated[_AnswerToolCallPart, Tag("tool_call")],
        Annotated[_AnswerReasoningPart, Tag("reasoning")],
        Annotated[UnknownPart, Tag("unknown")],
    ],
    Discriminator(_answer_part_tag),
]


class Output(_Wire):
    """What a completed execution produced. ``content`` lists the answer's parts in order
    (``text`` is its text parts joined); ``refusal`` is the model's refusal, when it
    refused."""

    text: str = ""
    content: Optional[List[OutputPart]] = None
    refusal: Optional[str] = None
    model: Optional[str] = None
    usage: Optional[Usage] = None
    finish_reason: Optional[str] = None

    @property
    def parts(self) -> List[Any]:
        """``content``, or for an output stored before parts existed, one text part of
        ``text`` (none when it is empty)."""
        if self.content is not None:
            return list(self.content)
        return [_AnswerTextPart(text=self.text)] if self.text else []

    @property
    def tool_calls(self) -> List[ToolCallPart]:
        """The tool calls the model made, in order."""
        return [p for p in self.parts if isinstance(p, ToolCallPart)]


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
    #: The provider batch that ran it (``worker`` is then ``"batch"``).
    batch: Optional[int] = None


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
    tenant: Optional[str] = None
    output: Optional[Output] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None
    started_at: Optional[int] = None
    finished_at: Optional[int] = None
    worker: Optional[str] = None
    #: Submitted as able to wait for a provider batch.
    deferrable: bool = False
    #: When it must have ended (Unix ms), if the submission said.
    deadline: Optional[int] = None
    #: The provider batch that holds it (status ``batched``) or ran it.
    batch_id: Optional[int] = None

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


class Spend(_Wire):
    """A daily spend cap (``daily_usd``) and the day's (UTC) use of it, fleet-wide."""

    daily_usd: float
    day: str
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    capped: bool = False


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
    spend: Optional[Spend] = None
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


class Tenant(_Wire):
    """One tenant's executions; ``tenant`` is None for those submitted without one."""

    tenant: Optional[str] = None
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    weight: float = 1.0
    state: str = "serving"
    """``serving``, or ``capped`` (its ``daily_usd`` is spent or reserved; see ``reason``)."""
    reason: Optional[str] = None
    spend: Optional[Spend] = None


class Tenants(_Wire):
    tenants: List[Tenant]


class UsageTotals(_Wire):
    """One group's usage and cost; ``unpriced`` completed executions are not in
    ``cost_usd``."""

    key: Optional[str] = None
    executions: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0


class UsageReport(_Wire):
    """``GET /v1/usage``: the groups, and their total (``key`` None)."""

    by: str
    since: int
    until: int
    rows: List[UsageTotals]
    total: UsageTotals


class CacheCleared(_Wire):
    dropped: int


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
    cost_usd: Optional[float] = None


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


class SpendCapEvent(_Wire):
    """80% of a daily spend cap was spent (``level`` ``warning``), or all of it (``reached``)."""

    type: Literal["spend_cap"] = "spend_cap"
    scope: str
    name: str
    level: str
    spent_usd: float
    cap_usd: float


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
    SpendCapEvent,
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
        SpendCapEvent,
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


# ---------------------------------------------------------------------------------------
# Streams (GET /v1/executions/{id}/stream). A `delta` event's data is a Delta, tagged by
# `type`; `attempt`, `lag` and `end` are the other events.


class TextDelta(_Wire):
    """A piece of the answer's text."""

    type: Literal["text"] = "text"
    text: str


class ReasoningDelta(_Wire):
    """A piece of the model's reasoning."""

    type: Literal["reasoning"] = "reasoning"
    text: str


class ToolCallStartDelta(_Wire):
    """The start of the answer's tool call number ``index`` (from 0)."""

    type: Literal["tool_call_start"] = "tool_call_start"
    index: int
    id: str
    name: str


class ToolCallArgumentsDelta(_Wire):
    """A piece of the arguments (JSON text) of tool call ``index``."""

    type: Literal["tool_call_arguments"] = "tool_call_arguments"
    index: int
    fragment: str


class UsageDelta(_Wire):
    """Tokens so far; the last one is the closest to the output's ``usage``."""

    type: Literal["usage"] = "usage"
    usage: Usage


class UnknownDelta(_Wire):
    """A delta of a type this client does not know (a newer daemon's); its fields are kept."""

    type: str


Delta = Union[
    TextDelta, ReasoningDelta, ToolCallStartDelta, ToolCallArgumentsDelta, UsageDelta, UnknownDelta
]

_DELTAS = {
    cls.model_fields["type"].default: cls
    for cls in (TextDelta, ReasoningDelta, ToolCallStartDelta, ToolCallArgumentsDelta, UsageDelta)
}


def parse_delta(data: str) -> Delta:
    """A ``delta`` event's data as a model, by its ``type``."""
    fields = _ANY.validate_json(data)
    cls = _DELTAS.get(fields.get("type"))
    if cls is None:
        return UnknownDelta.model_validate(fields)
    return cls.model_validate(fields)


class StreamAttempt(_Wire):
    """An attempt's stream begins. After a retry (``attempt`` 2 and on), drop what the
    earlier attempt's deltas made: the new attempt starts over."""

    type: Literal["attempt"] = "attempt"
    attempt: int


class StreamLag(_Wire):
    """The reader is ``behind`` deltas behind the attempt (it reads at its own pace)."""

    type: Literal["lag"] = "lag"
    behind: int


class StreamEnd(_Wire):
    """The execution ended: ``execution`` is it, as :meth:`Client.get` gives it. Nothing
    follows."""

    type: Literal["end"] = "end"
    execution: Execution


#: What an execution's stream yields.
StreamItem = Union[StreamAttempt, Delta, StreamLag, StreamEnd]
