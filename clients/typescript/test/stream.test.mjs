// An execution's streamed answer (`executionStream`, `streamText`), content parts and tool
// calls: against the real `lanes serve` at LANES_TEST_URL (see client.test.mjs), and the
// reconnect and restart logic against canned answers.
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { ConnectionError, LanesClient, NotFoundError, RestartedError } from "../dist/index.js";

const baseUrl = process.env.LANES_TEST_URL;
const token = process.env.LANES_TEST_TOKEN || undefined;
const skip = baseUrl ? false : "LANES_TEST_URL is not set: no lanes serve to test against";
const timeout = 60_000;

/** Ten text deltas, 50 ms apart: "a", "b", ... "j". */
const STREAMED = {
  provider: "stub",
  input: { prompt: "hi", stream: true, extra: { text: "abcdefghij", stream_pieces: 10, stream_gap_ms: 50 } },
};

const WEATHER = {
  name: "get_weather",
  description: "Current weather of a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

before(async () => {
  if (skip) return;
  const client = new LanesClient({ baseUrl, token });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await client.ready();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});

async function collect(iterator) {
  const items = [];
  for await (const item of iterator) items.push(item);
  return items;
}

/** A fetch that breaks the first execution stream's body after `after` deltas, and records each stream request's headers. */
function cutFirstStream(after) {
  const streams = [];
  const fetch = async (url, init) => {
    const response = await globalThis.fetch(url, init);
    if (!new URL(url).pathname.endsWith("/stream")) return response;
    streams.push(init.headers);
    if (streams.length > 1) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let seen = "";
    let cut = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (cut) {
          reader.cancel().catch(() => {});
          controller.error(new TypeError("terminated (injected)"));
          return;
        }
        const { done, value } = await reader.read();
        if (done) return controller.close();
        controller.enqueue(value);
        seen += decoder.decode(value, { stream: true });
        cut = (seen.match(/event: delta/g) ?? []).length >= after;
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { fetch, streams };
}

test("an execution's answer streams its deltas, then the end, and resumes after a dropped connection", { skip, timeout }, async () => {
  const cut = cutFirstStream(3);
  const client = new LanesClient({ baseUrl, token, retryDelayMs: 10, fetch: cut.fetch });
  const execution = await client.submit(STREAMED);
  const stream = client.executionStream(execution.id);
  const items = await collect(stream);
  assert.deepEqual(items[0], { type: "attempt", attempt: 1 });
  // Every delta once, in order, though the first connection broke after three.
  assert.deepEqual(items.filter((i) => i.type === "text").map((i) => i.text), [..."abcdefghij"]);
  assert.deepEqual(items.slice(-2).map((i) => i.type), ["usage", "end"]);
  const end = items.at(-1);
  assert.equal(end.execution.status, "completed");
  assert.equal(end.execution.output.text, "abcdefghij");
  assert.deepEqual(end.execution.output.content, [{ type: "text", text: "abcdefghij" }]);
  assert.equal(stream.lastEventId, "1:10");
  assert.equal(stream.execution.id, execution.id);
  assert.equal(cut.streams.length, 2);
  assert.equal(cut.streams[0]["last-event-id"], undefined);
  assert.match(cut.streams[1]["last-event-id"], /^1:\d+$/);

  // A stream read after the end replays it; `lastEventId` resumes after that delta.
  const rest = await collect(client.executionStream(execution.id, { lastEventId: "1:7" }));
  assert.deepEqual(rest.map((i) => i.text ?? i.type), ["i", "j", "usage", "end"]);
  const text = client.streamText(execution.id);
  assert.equal((await collect(text)).join(""), "abcdefghij");
  assert.equal(text.execution.status, "completed");

  await assert.rejects(collect(client.executionStream(2 ** 40)), NotFoundError);
  assert.throws(() => client.executionStream(execution.id, { lastEventId: "7" }), TypeError);
});

test("a tool call streams, and the answer's content goes back as the assistant turn", { skip, timeout }, async () => {
  const client = new LanesClient({ baseUrl, token });
  const question = { role: "user", content: 'call:get_weather {"city":"Paris"}' };
  const execution = await client.submit({
    provider: "stub",
    input: { messages: [question], tools: [WEATHER], stream: true },
  });
  const items = await collect(client.executionStream(execution.id));
  assert.deepEqual(
    items.filter((i) => i.type === "tool_call_start"),
    [{ type: "tool_call_start", index: 0, id: "call_1", name: "get_weather" }],
  );
  const args = items.filter((i) => i.type === "tool_call_arguments").map((i) => i.fragment).join("");
  assert.equal(args, '{"city":"Paris"}');
  const output = items.at(-1).execution.output;
  assert.equal(output.finish_reason, "tool_calls");
  assert.deepEqual(output.content, [{ type: "tool_call", id: "call_1", name: "get_weather", arguments: args }]);

  const answer = await client.wait(
    (
      await client.submit({
        provider: "stub",
        input: {
          tools: [WEATHER],
          messages: [
            question,
            { role: "assistant", content: output.content },
            { role: "tool", content: [{ type: "tool_result", call_id: "call_1", content: [{ type: "text", text: "18C" }] }] },
          ],
        },
      })
    ).id,
  );
  assert.equal(answer.status, "completed", JSON.stringify(answer));
  assert.equal(answer.output.text, "tool said: 18C");

  // A call that does not stream: its stream is its end, its text one piece.
  const whole = await client.submit({ provider: "stub", input: { prompt: "whole" } });
  assert.deepEqual(await collect(client.streamText(whole.id)), ["stub reply to: whole"]);
});

// Canned answers: what the stub cannot do (an attempt that streams, then fails).

const delta = (attempt, index, text) =>
  `event: delta\nid: ${attempt}:${index}\ndata: ${JSON.stringify({ type: "text", text })}\n\n`;
const attempt = (n) => `event: attempt\ndata: {"attempt":${n}}\n\n`;
const end = (text, attempts) =>
  `event: end\ndata: ${JSON.stringify({
    id: 1,
    provider: "p",
    status: "completed",
    attempts,
    output: { text, content: [{ type: "text", text }], model: "m", usage: { input_tokens: 1, output_tokens: 1 }, finish_reason: "stop" },
  })}\n\n`;

/** Answers each request with the next body, broken off at its end unless it holds `end`. */
function canned(bodies) {
  const seen = [];
  const fetch = async (url, init) => {
    seen.push(init.headers["last-event-id"]);
    const text = bodies[seen.length - 1];
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(text));
        if (text.includes("event: end")) controller.close();
      },
      pull(controller) {
        controller.error(new TypeError("terminated (injected)"));
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  return { fetch, seen };
}

test("a retry restarts the text, and what a reconnect repeats is dropped", { timeout }, async () => {
  const bodies = [
    attempt(1), // broken before any delta
    attempt(1) + delta(1, 0, "Hel") + delta(1, 1, "lo"), // attempt 1 again: dropped
    delta(1, 1, "lo") + attempt(2) + delta(2, 0, "Bye") + end("Bye!", 2),
  ];
  const first = canned(bodies);
  const client = new LanesClient({ baseUrl: "http://x", retryDelayMs: 1, fetch: first.fetch });
  const text = client.streamText(1);
  const pieces = [];
  await assert.rejects(async () => {
    for await (const piece of text) pieces.push(piece);
  }, RestartedError);
  assert.deepEqual(pieces, ["Hel", "lo"]);
  // Iterating again goes on with the new attempt's text; the rest of the output's text
  // that no delta gave comes last.
  assert.deepEqual(await collect(text), ["Bye", "!"]);
  assert.equal(text.text, "Bye!");
  assert.equal(text.execution.attempts, 2);
  assert.deepEqual(first.seen, [undefined, undefined, "1:1"]);

  // The typed stream: each attempt told once, each delta once.
  const second = canned(bodies);
  const typed = new LanesClient({ baseUrl: "http://x", retryDelayMs: 1, fetch: second.fetch });
  const items = await collect(typed.executionStream(1));
  assert.deepEqual(
    items.map((i) => i.text ?? i.attempt ?? i.type),
    [1, "Hel", "lo", 2, "Bye", "end"],
  );

  // What RestartedError carries.
  const third = canned(bodies);
  const again = new LanesClient({ baseUrl: "http://x", retryDelayMs: 1, fetch: third.fetch }).streamText(1);
  try {
    await collect(again);
    assert.fail("no RestartedError");
  } catch (error) {
    assert.ok(error instanceof RestartedError, String(error));
    assert.equal(error.attempt, 2);
    assert.equal(error.discarded, "Hello");
  }
  await again.return();

  // Connections that break with nothing on them give up after the retries.
  const nothing = canned(Array(5).fill(": keep-alive\n\n"));
  const giving = new LanesClient({ baseUrl: "http://x", maxRetries: 2, retryDelayMs: 1, fetch: nothing.fetch });
  await assert.rejects(collect(giving.executionStream(1)), ConnectionError);
  assert.equal(nothing.seen.length, 3);

  // A connection gone silent counts as broken.
  let silent = 0;
  const hush = async (url, init) => {
    silent += 1;
    const body = new ReadableStream({
      start: (controller) => init.signal.addEventListener("abort", () => controller.error(init.signal.reason)),
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  const quiet = new LanesClient({ baseUrl: "http://x", maxRetries: 1, retryDelayMs: 1, fetch: hush });
  await assert.rejects(collect(quiet.executionStream(1, { idleTimeoutMs: 30 })), /no byte in 30 ms/);
  assert.equal(silent, 2);
});
