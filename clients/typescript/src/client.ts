import { ApiError, ConnectionError, LanesError, errorFromResponse } from "./errors.js";
import { readSse } from "./sse.js";
import { ExecutionStream, StreamState, TextStream } from "./stream.js";
import {
  isEnded,
  type BatchResponse,
  type Event,
  type Execution,
  type ExecutionPage,
  type ExecutionStreamEvent,
  type ExecutionStreamItem,
  type Health,
  type LimitResponse,
  type ListFilters,
  type Plugins,
  type Tenants,
  type UsageReport,
  type CacheCleared,
  type Providers,
  type SubmitRequest,
} from "./types.js";

export interface ClientOptions {
  /** The API's address. Default: `http://127.0.0.1:7465`. */
  baseUrl?: string;
  /** The bearer token, when the server has one (`[api] token_env` or `token_file`). */
  token?: string;
  /**
   * How many times a request is tried again after a connection error (the server could not
   * be reached, the connection broke, or `timeoutMs` passed). Answers with an error status
   * are never retried. Default 3; 0 turns retries off.
   */
  maxRetries?: number;
  /** The first retry's delay; each next one doubles, with jitter. Default 250 ms. */
  retryDelayMs?: number;
  /** The longest wait between two tries. Default 5000 ms. */
  maxRetryDelayMs?: number;
  /**
   * How long one request may take, on top of its long-poll `wait`. Not applied to event
   * streams. Default 60000 ms; 0 for none.
   */
  timeoutMs?: number;
  /**
   * Give each submission without an `idempotency_key` one of its own, so a retry after a
   * connection error that hid the server's answer returns the execution the first try
   * queued instead of queueing it again. Default true (when retries are on).
   */
  autoIdempotencyKey?: boolean;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** The `fetch` to use. Default: the global one. */
  fetch?: typeof globalThis.fetch;
}

export interface RequestOptions {
  /** Aborts the request (and, for streams, the stream). */
  signal?: AbortSignal;
}

export interface GetOptions extends RequestOptions {
  /**
   * Long-poll: answer as soon as the execution has ended, or after this long. Seconds as a
   * number, or the API's form (`500ms`, `30s`, `2m`); at most 5 minutes.
   */
  wait?: number | string;
}

export interface WaitOptions extends RequestOptions {
  /** Give up after this long and return the execution as it is then. Default: no limit. */
  timeoutMs?: number;
}

export interface ListOptions extends ListFilters, RequestOptions {
  /** Start after this page (a page's `next`). */
  cursor?: string;
}

export interface EventsOptions extends RequestOptions {
  /** Only this provider's events. */
  provider?: string;
}

export interface StreamOptions extends RequestOptions {
  /**
   * How often the execution is read again while no event says it ended: a pending execution
   * that is cancelled, or one that another worker of a fleet runs, sends this worker no
   * `finished`. Default 5000 ms.
   */
  checkEveryMs?: number;
}

export interface ExecutionStreamOptions extends RequestOptions {
  /** Resume after this delta: its id, `ATTEMPT:INDEX`, as an `ExecutionStream`'s `lastEventId` gave it. */
  lastEventId?: string;
  /**
   * A connection silent this long is taken as broken, and the stream reconnects (the server
   * sends a keep-alive every 15 s). Default 60000 ms.
   */
  idleTimeoutMs?: number;
}

export interface TextStreamOptions extends RequestOptions {
  /** As for `executionStream`. Default 60000 ms. */
  idleTimeoutMs?: number;
}

interface CallOptions extends RequestOptions {
  query?: Record<string, string | number | boolean | undefined | null> | undefined;
  /** Headers for this request. */
  headers?: Record<string, string>;
  body?: unknown;
  /** Extra time for this request (a long-poll's wait). */
  extraTimeoutMs?: number;
}

const DEFAULT_BASE_URL = "http://127.0.0.1:7465";
/** Each step of `wait()`: a long-poll well under fetch's own 300 s headers timeout. */
const WAIT_STEP_MS = 60_000;

/** A client of one lanes API. */
export class LanesClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly maxRetries: number;
  private readonly retryDelayMs: number;
  private readonly maxRetryDelayMs: number;
  private readonly timeoutMs: number;
  private readonly autoIdempotencyKey: boolean;
  private readonly headers: Record<string, string>;
  private readonly fetch: typeof globalThis.fetch;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.token = options.token;
    this.maxRetries = options.maxRetries ?? 3;
    this.retryDelayMs = options.retryDelayMs ?? 250;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 5000;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.autoIdempotencyKey = options.autoIdempotencyKey ?? true;
    this.headers = options.headers ?? {};
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // --- executions ---

  /**
   * Queues an execution (`POST /v1/executions`). With an `idempotency_key` already used for
   * the same request, returns the original execution; with a different request, throws
   * `IdempotencyConflictError`. An unknown provider is refused (`ValidationError`) unless
   * `allow_unknown`.
   */
  async submit(request: SubmitRequest, options: RequestOptions = {}): Promise<Execution> {
    const body = this.withKey(request);
    return (await this.call<Execution>("POST", "/v1/executions", { ...options, body })).body;
  }

  /**
   * Queues up to 1,000 executions in one transaction, all or none
   * (`POST /v1/executions:batch`). The answer lists `{id, created}` in order; `created` is
   * false for an idempotency key's earlier execution.
   */
  async submitBatch(requests: SubmitRequest[], options: RequestOptions = {}): Promise<BatchResponse> {
    const body = { executions: requests.map((r) => this.withKey(r)) };
    return (await this.call<BatchResponse>("POST", "/v1/executions:batch", { ...options, body })).body;
  }

  /** Reads an execution (`GET /v1/executions/{id}`), or long-polls it with `wait`. */
  async get(id: number, options: GetOptions = {}): Promise<Execution> {
    const { wait, ...rest } = options;
    const query: Record<string, string> = {};
    let extraTimeoutMs = 0;
    if (wait !== undefined) {
      query.wait = typeof wait === "number" ? `${Math.max(0, Math.round(wait * 1000))}ms` : wait;
      extraTimeoutMs = typeof wait === "number" ? wait * 1000 : parseWait(wait);
    }
    return (
      await this.call<Execution>("GET", `/v1/executions/${encodeId(id)}`, { ...rest, query, extraTimeoutMs })
    ).body;
  }

  /**
   * Waits until the execution has ended (completed, failed or cancelled) and returns it,
   * long-polling one minute at a time. After `timeoutMs`, returns it as it is then: check
   * `status`.
   */
  async wait(id: number, options: WaitOptions = {}): Promise<Execution> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const step = Math.max(0, Math.min(WAIT_STEP_MS, left));
      const execution = await this.get(id, { wait: `${Math.round(step)}ms`, signal: options.signal });
      if (isEnded(execution) || Date.now() >= deadline) return execution;
    }
  }

  /** One page of executions, newest first (`GET /v1/executions`). */
  async listPage(options: ListOptions = {}): Promise<ExecutionPage> {
    const { signal, ...query } = options;
    return (await this.call<ExecutionPage>("GET", "/v1/executions", { signal, query })).body;
  }

  /**
   * Every page of executions matching the filters, newest first, following each page's
   * `next` cursor. Pages stay stable while new executions arrive.
   */
  async *pages(options: ListOptions = {}): AsyncGenerator<ExecutionPage> {
    let cursor = options.cursor;
    for (;;) {
      const page = await this.listPage({ ...options, cursor });
      yield page;
      if (!page.next) return;
      cursor = page.next;
    }
  }

  /** Every execution matching the filters, newest first, a page at a time. */
  async *list(options: ListOptions = {}): AsyncGenerator<Execution> {
    for await (const page of this.pages(options)) yield* page.executions;
  }

  /**
   * Cancels a pending or running execution (`POST /v1/executions/{id}/cancel`) and returns
   * it. One that has ended throws `AlreadyEndedError`.
   */
  async cancel(id: number, options: RequestOptions = {}): Promise<Execution> {
    return (await this.call<Execution>("POST", `/v1/executions/${encodeId(id)}/cancel`, options)).body;
  }

  // --- providers, limits, plugins ---

  /** Every provider with its limits, queue, state and recent numbers, and the instance pool. */
  async providers(options: RequestOptions = {}): Promise<Providers> {
    return (await this.call<Providers>("GET", "/v1/providers", options)).body;
  }

  /** Sets a provider's run-time limit (`PUT /v1/providers/{name}/limit`); the limits after it. */
  async setLimit(provider: string, limit: number, options: RequestOptions = {}): Promise<LimitResponse> {
    const path = `/v1/providers/${encodeURIComponent(provider)}/limit`;
    return (await this.call<LimitResponse>("PUT", path, { ...options, body: { limit } })).body;
  }

  /** Clears a provider's run-time limit (`DELETE /v1/providers/{name}/limit`); the limits after it. */
  async clearLimit(provider: string, options: RequestOptions = {}): Promise<LimitResponse> {
    const path = `/v1/providers/${encodeURIComponent(provider)}/limit`;
    return (await this.call<LimitResponse>("DELETE", path, options)).body;
  }

  /** The plugins folder as the last scan left it. */
  async plugins(options: RequestOptions = {}): Promise<Plugins> {
    return (await this.call<Plugins>("GET", "/v1/plugins", options)).body;
  }

  /** Every tenant's pending, running, completed, failed and cancelled executions (`GET /v1/tenants`). */
  async tenants(options: RequestOptions = {}): Promise<Tenants> {
    return (await this.call<Tenants>("GET", "/v1/tenants", options)).body;
  }

  /**
   * Tokens and cost of the executions completed in a range, by provider, model or tenant
   * (`GET /v1/usage`); `since` and `until` take RFC 3339, a duration back from now (`1h`) or
   * Unix ms. The default range is the last day.
   */
  async usage(
    query: { by?: "provider" | "model" | "tenant"; since?: string; until?: string } = {},
    options: RequestOptions = {},
  ): Promise<UsageReport> {
    return (await this.call<UsageReport>("GET", "/v1/usage", { ...options, query })).body;
  }

  /** Drops the response cache's answers, of one provider or all (`DELETE /v1/cache`). */
  async clearCache(provider?: string, options: RequestOptions = {}): Promise<CacheCleared> {
    return (await this.call<CacheCleared>("DELETE", "/v1/cache", { ...options, query: { provider } })).body;
  }

  // --- health, metrics, the document ---

  /** `GET /healthz`: the process answers. */
  async health(options: RequestOptions = {}): Promise<Health> {
    return (await this.call<Health>("GET", "/healthz", options)).body;
  }

  /** `GET /readyz`: the daemon has started and its database answers (else `UnavailableError`). */
  async ready(options: RequestOptions = {}): Promise<Health> {
    return (await this.call<Health>("GET", "/readyz", options)).body;
  }

  /** `GET /metrics`: the Prometheus text format. */
  async metrics(options: RequestOptions = {}): Promise<string> {
    return (await this.call<string>("GET", "/metrics", { ...options }, "text")).body;
  }

  /** `GET /v1/openapi.json`: the API's OpenAPI document. */
  async openapi(options: RequestOptions = {}): Promise<Record<string, unknown>> {
    return (await this.call<Record<string, unknown>>("GET", "/v1/openapi.json", options)).body;
  }

  // --- server-sent events ---

  /**
   * The daemon's events (`GET /v1/events`) as they come: `started`, `finished`,
   * `limit_changed`, `component_loaded`, `component_rejected`, `lane_paused`,
   * `circuit_changed`, `spend_cap`, and `lagged` when the stream fell behind. Runs until the server ends
   * the stream or the consumer stops (`break`, or `signal`). It connects at the first
   * `next()`: see `subscribe()` to connect before. Connecting is retried like any request; a stream that breaks afterwards throws `ConnectionError` (events are not
   * replayed: re-read what you track).
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<Event> {
    yield* await this.subscribe(options);
  }

  /**
   * Like `events()`, but connects at once: once the promise resolves, the subscription
   * exists, and every event from then on is in the returned iterator. Use it to watch
   * what a request you are about to send does.
   */
  async subscribe(options: EventsOptions = {}): Promise<AsyncGenerator<Event>> {
    const response = await this.send("GET", "/v1/events", {
      signal: options.signal,
      query: { provider: options.provider },
      accept: "text/event-stream",
      timeout: false,
    });
    if (!response.body) throw new ConnectionError("the event stream has no body");
    return parseEvents(response.body, options.signal);
  }

  /**
   * The events of one execution: its `started` and `finished` events as they come, then
   * `{type: "ended", execution}` once it has ended, and no more. An execution that has
   * already ended yields only that last item.
   */
  async *stream(id: number, options: StreamOptions = {}): AsyncGenerator<ExecutionStreamItem> {
    const checkEveryMs = options.checkEveryMs ?? 5000;
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    let pending: Promise<IteratorResult<Event>> | undefined;
    let events: AsyncGenerator<Event> | undefined;
    try {
      // Subscribe first, then read: whatever happens after the read comes as an event.
      events = await this.subscribe({ signal });
      let execution = await this.get(id, { signal });
      if (isEnded(execution)) {
        yield { type: "ended", execution };
        return;
      }
      for (;;) {
        pending ??= events.next();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const tick = new Promise<"tick">((resolve) => {
          timer = setTimeout(() => resolve("tick"), checkEveryMs);
        });
        const next = await Promise.race([pending, tick]).finally(() => clearTimeout(timer));
        let check = next === "tick";
        if (next !== "tick") {
          pending = undefined;
          if (next.done) {
            throw new ConnectionError(`the event stream ended before execution ${id} did`);
          }
          const event = next.value;
          if (event.type === "lagged") {
            check = true;
          } else if ((event.type === "started" || event.type === "finished") && event.id === id) {
            yield event;
            check = event.type === "finished";
          }
        }
        if (check) {
          execution = await this.get(id, { signal });
          if (isEnded(execution)) {
            yield { type: "ended", execution };
            return;
          }
        }
      }
    } finally {
      controller.abort();
      pending?.catch(() => {});
      events?.return(undefined).catch(() => {});
    }
  }

  // --- an execution's streamed answer ---

  /**
   * An execution's streamed answer (`GET /v1/executions/{id}/stream`), as it comes:
   * `{type: "attempt", attempt}` (an attempt's stream begins; from the second on, drop what
   * the earlier attempt gave), the deltas (`{type: "text", text}`, `{type: "reasoning", text}`,
   * `{type: "tool_call_start", index, id, name}`, `{type: "tool_call_arguments", index,
   * fragment}`, `{type: "usage", usage}`), `{type: "lag", behind}`, and last
   * `{type: "end", execution}`, the ended execution; then it returns.
   *
   * The execution needs `stream: true` in its input (and a component that streams) for
   * deltas; else its stream is its end. A stream read after the end replays it. A
   * connection that breaks, goes silent for `idleTimeoutMs`, or that the server closes
   * before the end, is reconnected with `Last-Event-ID` (the last delta's id): the stream
   * goes on where it was, with nothing repeated or lost. Connecting is retried like any
   * request; after `maxRetries` drops in a row with nothing read, it throws
   * `ConnectionError`. Stop it with `break` or `signal`. It connects at the first `next()`;
   * its `lastEventId`, `attempt` and `execution` say where it is.
   */
  executionStream(id: number, options: ExecutionStreamOptions = {}): ExecutionStream {
    const state = new StreamState(options.lastEventId);
    return new ExecutionStream(state, this.followStream(id, state, options));
  }

  /**
   * The text of an execution's answer as it streams: string pieces (its text deltas), over
   * `executionStream`. Joined, they are the output's `text`: when the answer did not stream
   * (or some deltas were dropped), the rest comes as one piece at the end. When an attempt
   * fails after its text began and the execution is retried, the text starts over: the
   * iteration throws `RestartedError` (with `attempt` and `discarded`, the text to take
   * back) before the new attempt's first piece; iterate over the same `TextStream` again to
   * go on with the new attempt's text. Its `execution` is the ended execution once the
   * iteration is over: a failed or cancelled one ends the text without an error, so check
   * its `status`.
   */
  streamText(id: number, options: TextStreamOptions = {}): TextStream {
    return new TextStream(this.executionStream(id, options));
  }

  private async *followStream(
    id: number,
    state: StreamState,
    options: ExecutionStreamOptions,
  ): AsyncGenerator<ExecutionStreamEvent> {
    const path = `/v1/executions/${encodeId(id)}/stream`;
    const idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    let drops = 0;
    for (;;) {
      // Each connection has its own controller: silence aborts it, not the caller's signal.
      const connection = new AbortController();
      const signal = options.signal ? AbortSignal.any([options.signal, connection.signal]) : connection.signal;
      // The silence timer runs while the stream waits on the server, not on its reader.
      let timer: ReturnType<typeof setTimeout> | undefined;
      let paused = false;
      const arm = () => {
        clearTimeout(timer);
        if (paused || connection.signal.aborted) return;
        timer = setTimeout(() => connection.abort(new Error(`no byte in ${idleTimeoutMs} ms`)), idleTimeoutMs);
      };
      const headers: Record<string, string> = {};
      if (state.lastEventId !== undefined) headers["last-event-id"] = state.lastEventId;
      const response = await this.send("GET", path, { signal, headers, accept: "text/event-stream", timeout: false });
      if (!response.body) throw new ConnectionError("the stream has no body");
      const since = Date.now();
      let cause: unknown;
      try {
        arm();
        const body = response.body.pipeThrough(
          new TransformStream<Uint8Array, Uint8Array>({
            transform(chunk, controller) {
              arm();
              controller.enqueue(chunk);
            },
          }),
        );
        for await (const message of readSse(body)) {
          const item = state.item(message);
          if (!item) continue;
          drops = 0;
          paused = true;
          clearTimeout(timer);
          yield item;
          if (item.type === "end") return;
          paused = false;
          arm();
        }
        cause = new Error("the server closed the stream before its end");
      } catch (error) {
        if (options.signal?.aborted) throw error;
        cause = connection.signal.aborted ? connection.signal.reason : error;
      } finally {
        connection.abort();
        clearTimeout(timer);
      }
      // Resume where it was: the next connection sends Last-Event-ID.
      if (Date.now() - since >= 10_000) drops = 0;
      drops += 1;
      if (drops > this.maxRetries) {
        throw new ConnectionError(`${this.baseUrl}${path}: ${describe(cause)} (${drops} drops in a row)`, { cause });
      }
      await sleep(this.backoff(drops - 1), options.signal);
    }
  }

  // --- the transport ---

  private withKey(request: SubmitRequest): SubmitRequest {
    if (request.idempotency_key != null || !this.autoIdempotencyKey || this.maxRetries === 0) return request;
    return { ...request, idempotency_key: `lanes-client-${crypto.randomUUID()}` };
  }

  /** A request whose answer is read whole; connection errors (reading included) are retried. */
  private async call<T>(
    method: string,
    path: string,
    options: CallOptions,
    as: "json" | "text" = "json",
  ): Promise<{ status: number; headers: Headers; body: T }> {
    // Serialized once, outside the retries: a body that cannot be (a BigInt) is the caller's
    // error, not a connection's.
    const json = options.body === undefined ? undefined : JSON.stringify(options.body);
    return this.retrying(options.signal, async (signal) => {
      const response = await this.fetchOnce(method, path, options.query, json, signal, as === "json" ? "application/json" : "*/*");
      if (!response.ok) throw await errorFromResponse(response);
      const text = await response.text();
      let body: T;
      if (as === "text") {
        body = text as T;
      } else {
        try {
          body = JSON.parse(text) as T;
        } catch (e) {
          throw new ApiError(response.status, {
            type: "about:blank",
            title: "Not JSON",
            status: response.status,
            detail: `the answer to ${method} ${path} is not JSON: ${text.slice(0, 200)}`,
          });
        }
      }
      return { status: response.status, headers: response.headers, body };
    }, options.extraTimeoutMs ?? 0);
  }

  /** A request whose answer's body the caller reads (a stream); only connecting is retried. */
  private async send(
    method: string,
    path: string,
    options: CallOptions & { accept: string; timeout: boolean },
  ): Promise<Response> {
    return this.retrying(
      options.signal,
      async (signal) => {
        const response = await this.fetchOnce(method, path, options.query, undefined, signal, options.accept, options.headers);
        if (!response.ok) throw await errorFromResponse(response);
        return response;
      },
      options.timeout ? 0 : null,
    );
  }

  /**
   * Runs `attempt` until it succeeds, retrying connection errors (and timeouts) with backoff.
   * `extraTimeoutMs` null: no timeout.
   */
  private async retrying<T>(
    userSignal: AbortSignal | undefined,
    attempt: (signal: AbortSignal | undefined) => Promise<T>,
    extraTimeoutMs: number | null,
  ): Promise<T> {
    for (let tries = 0; ; tries++) {
      const signals: AbortSignal[] = [];
      if (userSignal) signals.push(userSignal);
      if (extraTimeoutMs !== null && this.timeoutMs > 0) {
        signals.push(AbortSignal.timeout(this.timeoutMs + extraTimeoutMs));
      }
      const signal = signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);
      try {
        return await attempt(signal);
      } catch (error) {
        if (error instanceof LanesError) throw error; // an answer: never retried
        if (userSignal?.aborted) throw error; // the caller gave up
        if (tries >= this.maxRetries) {
          throw new ConnectionError(
            `${this.baseUrl}: ${describe(error)} (${tries + 1} ${tries === 0 ? "try" : "tries"})`,
            { cause: error },
          );
        }
        await sleep(this.backoff(tries), userSignal);
      }
    }
  }

  /** The wait before retry `tries + 1`: doubling from `retryDelayMs`, the upper half of its window. */
  private backoff(tries: number): number {
    const delay = Math.min(this.maxRetryDelayMs, this.retryDelayMs * 2 ** tries);
    return delay / 2 + Math.random() * (delay / 2);
  }

  private fetchOnce(
    method: string,
    path: string,
    query: CallOptions["query"],
    body: string | undefined,
    signal: AbortSignal | undefined,
    accept: string,
    extraHeaders?: Record<string, string>,
  ): Promise<Response> {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const headers: Record<string, string> = { accept, ...this.headers, ...extraHeaders };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = body;
    if (signal !== undefined) init.signal = signal;
    return this.fetch(url, init);
  }
}

async function* parseEvents(body: ReadableStream<Uint8Array>, signal: AbortSignal | undefined): AsyncGenerator<Event> {
  try {
    for await (const message of readSse(body)) {
      let event: Event;
      try {
        event = JSON.parse(message.data) as Event;
      } catch {
        continue; // not an event of the API's (a comment-like line in data): skipped
      }
      yield event;
    }
  } catch (error) {
    if (signal?.aborted) throw error;
    throw new ConnectionError(`the event stream broke: ${describe(error)}`, { cause: error });
  }
}

function encodeId(id: number): string {
  if (!Number.isSafeInteger(id)) throw new TypeError(`an execution id is an integer, not ${id}`);
  return String(id);
}

/** The API's `wait` in ms (`500ms`, `30s`, `2m`, or seconds), for the request's timeout. */
function parseWait(wait: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(wait);
  if (!m) return 0; // the server answers 400
  const n = Number(m[1]);
  return m[2] === "ms" ? n : m[2] === "m" ? n * 60_000 : n * 1000;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    const more = cause instanceof Error ? `: ${cause.message}` : "";
    return `${error.message}${more}`;
  }
  return String(error);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
