/**
 * The API's types. Everything here comes from `schema.ts`, which `npm run generate` writes
 * from `docs/openapi.json`; the few types the document leaves open (the chat input, the
 * output, the status words) are narrowed by hand, as `docs/api.md` describes them.
 */
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

export type { components, operations, paths } from "./schema.js";
export type { Problem } from "./errors.js";

/** `pending`, `running`, `completed`, `failed` or `cancelled`. */
export type ExecutionStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

/** The statuses of an execution that has ended. */
export const ENDED: readonly ExecutionStatus[] = ["completed", "failed", "cancelled"];

/** Whether an execution has ended (completed, failed or cancelled). */
export function isEnded(execution: { status: string }): boolean {
  return (ENDED as readonly string[]).includes(execution.status);
}

/** One message of the normalized chat input. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | (string & {});
  content: string;
}

/**
 * The normalized chat input (see the README's "input" section); `{prompt}` is shorthand for
 * one user message. The server refuses unknown fields (422).
 */
export type ChatInput =
  | ({ prompt: string } & ChatOptions)
  | ({ messages: ChatMessage[] } & ChatOptions);

export interface ChatOptions {
  /** Else the provider's default. */
  model?: string;
  system?: string;
  max_tokens?: number;
  temperature?: number;
  stop?: string[];
  /** Provider-specific options (the stub provider reads its behaviour here). */
  extra?: Record<string, unknown>;
}

/** A completed execution's answer. */
export interface ChatOutput {
  text: string;
  model: string;
  usage: { input_tokens: number; output_tokens: number };
  /** `stop`, `length`, `content_filter`, `tool_calls`, or the provider's own word. */
  finish_reason: string;
  [key: string]: unknown;
}

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
