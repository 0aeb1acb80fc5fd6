// The SSE parser on its own: line endings, comments, multi-line data, and chunks split anywhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser, readSse } from "../dist/index.js";

function parse(chunks) {
  const out = [];
  const parser = new SseParser((m) => out.push(m));
  for (const c of chunks) parser.feed(c);
  parser.end();
  return out;
}

const STREAM =
  "\uFEFF: keep-alive comment\r\n" +
  "event: started\r\ndata: {\"id\":1}\r\n\r\n" +
  "event:finished\ndata: line one\ndata:line two\nid: 7\nretry: 1500\n\n" +
  "data: no event name\r\r" +
  "event: empty\n\n" + // no data: not dispatched
  "unknown: field\ndata\n\n" + // `data` alone is an empty data line
  "data: unterminated";

const EXPECTED = [
  { event: "started", data: '{"id":1}' },
  { event: "finished", data: "line one\nline two", id: "7", retry: 1500 },
  { event: "message", data: "no event name", id: "7", retry: 1500 },
  { event: "message", data: "", id: "7", retry: 1500 },
];

test("parses events, comments, multi-line data and every line ending", () => {
  assert.deepEqual(parse([STREAM]), EXPECTED);
});

test("gives the same events however the stream is split into chunks", () => {
  for (let i = 0; i <= STREAM.length; i++) {
    for (const j of [i, Math.min(STREAM.length, i + 1), Math.min(STREAM.length, i + 3)]) {
      const chunks = [STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)];
      assert.deepEqual(parse(chunks), EXPECTED, `split at ${i} and ${j}`);
    }
  }
  assert.deepEqual(parse([...STREAM]), EXPECTED, "one character at a time");
});

test("reads a byte stream, with UTF-8 split across chunks", async () => {
  const bytes = new TextEncoder().encode("event: x\ndata: h\u00e9llo \u2603\n\n");
  const body = new ReadableStream({
    start(controller) {
      for (const b of bytes) controller.enqueue(new Uint8Array([b]));
      controller.close();
    },
  });
  const got = [];
  for await (const m of readSse(body)) got.push(m);
  assert.deepEqual(got, [{ event: "x", data: "h\u00e9llo \u2603" }]);
});
