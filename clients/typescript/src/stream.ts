/**
 * An execution's stream (`GET /v1/executions/{id}/stream`): its events as typed items, the
 * place a reconnect resumes from, and the text stream over it.
 */
import { RestartedError } from "./errors.js";
import type { SseMessage } from "./sse.js";
import type { Delta, Execution, ExecutionStreamEvent } from "./types.js";

/** `ATTEMPT:INDEX` as numbers, or undefined. */
export function parseEventId(value: string | undefined): [number, number] | undefined {
  const m = /^(\d+):(-?\d+)$/.exec(value ?? "");
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

function after(a: [number, number], b: [number, number]): boolean {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
}

/**
 * Where a reader of one execution's stream is, across connections: the last delta's id
 * (sent as `Last-Event-ID` on a reconnect) and the attempt it follows. Events a reconnect
 * sends again (an `attempt` already told, a delta already had) are dropped.
 */
export class StreamState {
  lastEventId: string | undefined;
  /** The attempt whose deltas come now (0 before the first). */
  attempt = 0;
  /** The ended execution, once the `end` event came. */
  execution: Execution | undefined;
  private position: [number, number] | undefined;

  constructor(lastEventId?: string) {
    if (lastEventId !== undefined) {
      const position = parseEventId(lastEventId);
      if (!position) throw new TypeError(`lastEventId must be ATTEMPT:INDEX, not ${JSON.stringify(lastEventId)}`);
      this.lastEventId = lastEventId;
      this.position = position;
      this.attempt = position[0];
    }
  }

  /** The item for one event, or undefined for one to skip (a repeat, an unknown event). */
  item(message: SseMessage): ExecutionStreamEvent | undefined {
    let data: unknown;
    try {
      data = JSON.parse(message.data);
    } catch {
      return undefined;
    }
    const fields = data as Record<string, unknown>;
    switch (message.event) {
      case "delta": {
        const position = parseEventId(message.id);
        if (position) {
          if (this.position && !after(position, this.position)) return undefined; // had already
          this.position = position;
          this.lastEventId = message.id;
        }
        return data as Delta;
      }
      case "attempt": {
        const attempt = Number(fields.attempt);
        if (!(attempt > this.attempt)) return undefined; // told already
        this.attempt = attempt;
        return { type: "attempt", attempt };
      }
      case "lag":
        return { type: "lag", behind: Number(fields.behind) };
      case "end":
        this.execution = data as Execution;
        return { type: "end", execution: this.execution };
      default:
        return undefined;
    }
  }
}

/**
 * An execution's streamed answer (see `LanesClient.executionStream`): iterate with
 * `for await` for its items. `lastEventId` is the id of the last delta read (`ATTEMPT:INDEX`),
 * which a reconnect resumes after, and which `executionStream(id, {lastEventId})` takes to
 * resume in a new stream; `attempt` is the attempt whose deltas come now; `execution` the
 * ended execution once the end was read. `break` (or `return()`) closes the stream.
 */
export class ExecutionStream implements AsyncIterableIterator<ExecutionStreamEvent> {
  constructor(
    private readonly state: StreamState,
    private readonly events: AsyncGenerator<ExecutionStreamEvent>,
  ) {}

  get lastEventId(): string | undefined {
    return this.state.lastEventId;
  }

  get attempt(): number {
    return this.state.attempt;
  }

  get execution(): Execution | undefined {
    return this.state.execution;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<ExecutionStreamEvent, undefined>> {
    return this.events.next();
  }

  async return(): Promise<IteratorResult<ExecutionStreamEvent, undefined>> {
    await this.events.return(undefined);
    return { done: true, value: undefined };
  }
}

/**
 * An execution's answer as text pieces (see `LanesClient.streamText`): iterate with
 * `for await` for strings. `RestartedError` is thrown when a retry starts the text over:
 * iterate over the same text stream again to go on with the new attempt's text. `text` is
 * the text so far (of the attempt that counts), `execution` the ended execution once the
 * iteration is over. `break` (or `return()`) closes the stream.
 */
export class TextStream implements AsyncIterableIterator<string> {
  /** The text given so far, of the attempt that counts. */
  text = "";
  /** The attempt whose text comes now (0 before the first). */
  attempt = 0;
  /** The ended execution, once the stream's end came. */
  execution: Execution | undefined;
  private readonly out: (string | RestartedError)[] = [];

  constructor(private readonly events: ExecutionStream) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<string, undefined>> {
    for (;;) {
      const piece = this.out.shift();
      if (piece instanceof RestartedError) throw piece;
      if (piece !== undefined) return { done: false, value: piece };
      const next = await this.events.next();
      if (next.done) return { done: true, value: undefined };
      this.feed(next.value);
    }
  }

  async return(): Promise<IteratorResult<string, undefined>> {
    await this.events.return();
    return { done: true, value: undefined };
  }

  private feed(item: ExecutionStreamEvent): void {
    switch (item.type) {
      case "attempt":
        this.attempt = item.attempt;
        this.restart();
        break;
      case "text":
        if (item.text) {
          this.text += item.text;
          this.out.push(item.text);
        }
        break;
      case "end": {
        this.execution = item.execution;
        const output = item.execution.output;
        if (item.execution.status !== "completed" || !output) break;
        if (!output.text.startsWith(this.text)) {
          // Its text came from an attempt that did not stream here.
          this.attempt = Math.max(this.attempt, item.execution.attempts);
          this.restart();
        }
        const rest = output.text.slice(this.text.length);
        if (rest) {
          this.text += rest;
          this.out.push(rest);
        }
        break;
      }
      default:
        break;
    }
  }

  private restart(): void {
    if (this.text) {
      this.out.push(new RestartedError(this.attempt, this.text));
      this.text = "";
    }
  }
}
