/**
 * The API's types. Everything here comes from `schema.ts`, which `npm run generate` writes
 * from `docs/openapi.json`; the few types the document leaves open (the chat input, the
 * output, the status words) are narrowed by hand, as `docs/api.md` describes them.
 */
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

export type { components, operations, paths } from "./schema.js";
export type { Problem } from "./errors.js";

/**
 * `pending`, `running`, `completed`, `failed`, `cancelled`, or `batched` (held for a
 * provider batch, or inside one: see `deferrable`).
 */
export type ExecutionStatus = "pending" | "running" | "completed" | "failed" | "cancelled" | "batched";

/** The statuses of an execution that has ended. */
export const ENDED: readonly ExecutionStatus[] = ["completed", "failed", "cancelled"];

/** Whether an execution has ended (completed, failed or cancelled). */
export function isEnded(execution: { status: string }): boolean {
  return (ENDED as readonly string[]).includes(execution.status);
}

/** A content part of a message, by `type`: text, image, tool_call, tool_result or reasoning. */
export type Part = Schemas["Part"];
export type TextPart = Extract<Part, { type: "text" }>;
export type ImagePart = Extract<Part, { type: "image" }>;
export type ToolCallPart = Extract<Part, { type: "tool_call" }>;
export type ToolResultPart = Extract<Part, { type: "tool_result" }>;
export type ReasoningPart = Extract<Part, { type: "reasoning" }>;
/** A part of an answer (`output.content`): text, tool_call or reasoning. */
export type OutputPart = Schemas["OutputPart"];
export type Tool = Schemas["Tool"];
/** `"auto"`, `"none"`, `"required"`, or `{name}`. */
export type ToolChoice = Schemas["ToolChoice"];
export type ResponseFormat = Schemas["ResponseFormat"];
export type Reasoning = Schemas["Reasoning"];
/** Token counts, with the cache and reasoning breakdown when the provider says. */
export type Usage = Schemas["Usage"];

/**
 * One message of the normalized chat input. `content` is a string or a list of parts; an
 * answer's `output.content` goes back as an assistant message's content as it is.
 */
export interface ChatMessage {
  role: Schemas["Role"] | (string & {});
  content: string | Part[];
}

/**
 * The normalized chat input (see the README's "input" section); `{prompt}` is shorthand for
 * one user message. The server refuses unknown fields (422).
 */
export type ChatInput =
  | ({ prompt: string } & ChatOptions)
  | ({ messages: ChatMessage[] } & ChatOptions);

/**
 * The chat input's fields beside `prompt` and `messages`: `model`, `system`, `max_tokens`,
 * `temperature`, `stop`, `top_p`, `seed`, `tools`, `tool_choice`, `parallel_tool_calls`,
 * `response_format`, `reasoning`, `stream` (stream the answer: see `executionStream`) and
 * `extra` (provider-specific options; the stub provider reads its behaviour there).
 */
export type ChatOptions = Omit<Schemas["PromptInput"], "prompt">;

/**
 * A completed execution's answer: `text`, `content` (its parts in order), `refusal`,
 * `model`, `usage` and `finish_reason` (`stop`, `length`, `content_filter`, `tool_calls`,
 * `refusal`, `pause`, `context_window`, or the provider's own word).
 */
export type ChatOutput = Schemas["ChatOutput"] & { [key: string]: unknown };

/** A submission (`POST /v1/executions`), with its input typed. */
export type SubmitRequest = Omit<Schemas["SubmitRequest"], "input"> & { input: ChatInput };

/** An execution, with its status and output typed. */
export type Execution = Omit<Schemas["ExecutionOut"], "status" | "output"> & {
  status: ExecutionStatus;
  output?: ChatOutput | null;
};

export type Attempt = Schemas["AttemptOut"];
export type ExecutionPage = Omit<Schemas["ExecutionPage"], "executions"> & { executions: Execution[] };
export type BatchEntry = Schemas["BatchEntry"];
export type BatchResponse = Schemas["BatchResponse"];
export type Provider = Schemas["ProviderOut"];
export type Providers = Schemas["ProvidersOut"];
export type Limits = Schemas["LimitsOut"];
export type LimitResponse = Schemas["LimitResponse"];
export type Plugin = Schemas["PluginOut"];
export type Plugins = Schemas["PluginsOut"];
export type Tenants = Schemas["TenantsOut"];
export type UsageReport = Schemas["UsageOut"];
export type CacheCleared = Schemas["CacheCleared"];
export type Pool = Schemas["PoolOut"];
export type Health = Schemas["HealthOut"];

/** One event of `GET /v1/events`; `type` is the SSE event's name. */
export type Event = Schemas["EventOut"];
export type EventType = Event["type"];
export type StartedEvent = Extract<Event, { type: "started" }>;
export type FinishedEvent = Extract<Event, { type: "finished" }>;
export type LaggedEvent = Extract<Event, { type: "lagged" }>;

/** The filters of `GET /v1/executions` (without the cursor). */
export type ListFilters = Omit<NonNullable<operations["list"]["parameters"]["query"]>, "cursor" | "status"> & {
  status?: ExecutionStatus;
};

/**
 * What an execution's stream yields: its `started` and `finished` events as they come, and
 * last the execution once it has ended.
 */
export type ExecutionStreamItem = StartedEvent | FinishedEvent | { type: "ended"; execution: Execution };

/** One piece of a streamed answer, by `type`. */
export type Delta = Schemas["Delta"];
export type TextDelta = Extract<Delta, { type: "text" }>;
export type ReasoningDelta = Extract<Delta, { type: "reasoning" }>;
export type ToolCallStartDelta = Extract<Delta, { type: "tool_call_start" }>;
export type ToolCallArgumentsDelta = Extract<Delta, { type: "tool_call_arguments" }>;
export type UsageDelta = Extract<Delta, { type: "usage" }>;

/** An attempt's stream begins; from the second on, drop what the earlier attempt gave. */
export interface StreamAttempt {
  type: "attempt";
  attempt: number;
}

/** The reader is `behind` deltas behind the attempt. */
export interface StreamLag {
  type: "lag";
  behind: number;
}

/** The execution ended (`execution`, as `get` gives it); nothing follows. */
export interface StreamEnd {
  type: "end";
  execution: Execution;
}

/**
 * What `executionStream` yields: `attempt`, the deltas (`text`, `reasoning`,
 * `tool_call_start`, `tool_call_arguments`, `usage`, or a newer server's type, passed on as
 * it came), `lag`, and last `end`.
 */
export type ExecutionStreamEvent = StreamAttempt | Delta | StreamLag | StreamEnd;
