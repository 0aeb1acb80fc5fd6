/**
 * A small server-sent events parser, as the WHATWG HTML standard describes it
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
 * lines end with CRLF, LF or CR; a line starting with `:` is a comment; `field: value` lines
 * fill an event that a blank line dispatches; `data` lines are joined with `\n`; an event
 * with no data is not dispatched. Chunks may split lines (and CRLF pairs) anywhere.
 */

/** One dispatched event. `event` is `message` when the stream named none. */
export interface SseMessage {
  event: string;
  data: string;
  id?: string;
  retry?: number;
}

/** Feeds text chunks in, calls `onMessage` for each complete event. */
export class SseParser {
  private buffer = "";
  private lastWasCr = false;
  private data: string[] = [];
  private eventType = "";
  private lastId: string | undefined;
  private retry: number | undefined;
  private first = true;

  constructor(private readonly onMessage: (message: SseMessage) => void) {}

  /** Parses a chunk of the stream's text. */
  feed(chunk: string): void {
    if (this.first && chunk.length > 0) {
      this.first = false;
      // A leading byte order mark is ignored.
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (c === 10 /* \n */) {
        if (this.lastWasCr) {
          // The LF of a CRLF whose CR ended the previous line.
          this.lastWasCr = false;
          start = i + 1;
          continue;
        }
        this.line(this.buffer + chunk.slice(start, i));
        this.buffer = "";
        start = i + 1;
      } else if (c === 13 /* \r */) {
        this.line(this.buffer + chunk.slice(start, i));
        this.buffer = "";
        start = i + 1;
        this.lastWasCr = true;
        continue;
      }
      this.lastWasCr = false;
    }
    this.buffer += chunk.slice(start);
  }

  /** The stream ended: an event without its blank line is discarded, as the standard says. */
  end(): void {
    this.buffer = "";
    this.data = [];
    this.eventType = "";
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment (keep-alive)
    const colon = line.indexOf(":");
    let field: string;
    let value: string;
    if (colon === -1) {
      field = line;
      value = "";
    } else {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this.eventType = value;
        break;
      case "data":
        this.data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  private dispatch(): void {
    if (this.data.length === 0) {
      this.eventType = "";
      return;
    }
    const message: SseMessage = {
      event: this.eventType || "message",
      data: this.data.join("\n"),
    };
    if (this.lastId !== undefined) message.id = this.lastId;
    if (this.retry !== undefined) message.retry = this.retry;
    this.data = [];
    this.eventType = "";
    this.onMessage(message);
  }
}

/**
 * The events of a response body, as they arrive. Ends when the body ends; throws what
 * reading the body throws (an abort, a dropped connection).
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const queue: SseMessage[] = [];
  const parser = new SseParser((m) => queue.push(m));
  const decoder = new TextDecoder("utf-8");
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        parser.feed(decoder.decode());
        parser.end();
        break;
      }
      parser.feed(decoder.decode(value, { stream: true }));
      while (queue.length > 0) yield queue.shift()!;
    }
    while (queue.length > 0) yield queue.shift()!;
  } finally {
    // Stops the download when the consumer leaves early (break, return or throw).
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
