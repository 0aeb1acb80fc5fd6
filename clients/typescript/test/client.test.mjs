// The client against a real `lanes serve` whose address is LANES_TEST_URL (and bearer token
// LANES_TEST_TOKEN, when it has one). The server has the stub component configured as provider
// `stub`; the stub's behaviour comes from each input's `extra` (plugins/stub/src/lib.rs).
// tests/all/clients_ts.rs starts that server and runs these; by hand:
// LANES_TEST_URL=http://127.0.0.1:PORT LANES_TEST_TOKEN=... node --test test/
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  AlreadyEndedError,
  ApiError,
  BadRequestError,
  ConflictError,
  ConnectionError,
  IdempotencyConflictError,
  LanesClient,
  MethodNotAllowedError,
  NotFoundError,
  PayloadTooLargeError,
  UnauthorizedError,
  UnavailableError,
  UnsupportedMediaTypeError,
  ValidationError,
  errorFromResponse,
  isEnded,
} from "../dist/index.js";

const baseUrl = process.env.LANES_TEST_URL;
const token = process.env.LANES_TEST_TOKEN || undefined;
const skip = baseUrl ? false : "LANES_TEST_URL is not set: no lanes serve to test against";
const client = new LanesClient({ baseUrl, token, retryDelayMs: 20 });
// No test may hang the run: a missed event fails its test after a minute instead.
const timeout = 60_000;
const run = Math.random().toString(36).slice(2, 8);

// The API listens before the daemon has scanned its plugins: wait until it is ready.
before(async () => {
  if (skip) return;
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

/** A submission to the stub whose behaviour is `extra`. */
function job(extra = {}, more = {}) {
  return { provider: "stub", input: { prompt: "hello there", extra }, ...more };
}

/** Every item of an async iterator (Array.fromAsync is Node 22's). */
async function collect(iterator) {
  const items = [];
  for await (const item of iterator) items.push(item);
  return items;
}

/** A provider no component serves: its executions stay pending. */
function ghost(name) {
  return `ghost-${name}-${run}`;
}

async function rejects(promise, Class, check = () => {}) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Class, `expected ${Class.name}, got ${error?.name}: ${error?.message}`);
    check(error);
    return error;
  }
  assert.fail(`expected ${Class.name}, got an answer`);
}

function problemOf(error, status, kind) {
  assert.ok(error instanceof ApiError);
  assert.equal(error.status, status);
  assert.equal(error.problem.status, status);
  assert.equal(error.kind, kind);
  assert.equal(error.problem.type, `urn:lanes:problem:${kind}`);
  assert.equal(typeof error.problem.title, "string");
  assert.ok(error.problem.detail.length > 0);
}

test("health, readiness, metrics, plugins and the served OpenAPI document", { skip, timeout }, async () => {
  assert.deepEqual(await client.health(), { status: "ok" });
  assert.deepEqual(await client.ready(), { status: "ready" });
  const served = await client.openapi();
  const checkedIn = JSON.parse(readFileSync(new URL("../../../docs/openapi.json", import.meta.url), "utf8"));
  assert.deepEqual(served, checkedIn);
  const metrics = await client.metrics();
  assert.match(metrics, /^lanes_limit\{provider="stub"\} \d+$/m);
  const { plugins } = await client.plugins();
  const stub = plugins.find((p) => p.file === "stub.wasm");
  assert.equal(stub?.status, "loaded");
  assert.equal(stub?.name, "stub");
});

test("submit, then get with wait until it completes", { skip, timeout }, async () => {
  const submitted = await client.submit(job({ text: "the answer", sleep_ms: 200 }));
  assert.equal(typeof submitted.id, "number");
  assert.equal(submitted.provider, "stub");
  assert.ok(["pending", "running"].includes(submitted.status), submitted.status);
  assert.equal(submitted.max_attempts, 3);
  const done = await client.get(submitted.id, { wait: 30 });
  assert.equal(done.status, "completed");
  assert.equal(done.output?.text, "the answer");
  assert.equal(done.output?.usage.output_tokens, 2);
  assert.equal(done.output?.finish_reason, "stop");
  assert.equal(done.attempts, 1);
  assert.equal(done.error, null);
  assert.ok(done.finished_at >= done.created_at);
  assert.deepEqual(await client.wait(submitted.id), done);
  // The default reply and the input's normal form.
  const echo = await client.wait((await client.submit({ provider: "stub", input: { prompt: "ping" } })).id);
  assert.equal(echo.output?.text, "stub reply to: ping");
  assert.deepEqual(echo.input.messages, [{ role: "user", content: "ping" }]);
});

test("a tenant is carried; tenants, usage and the cache are read and cleared", { skip, timeout }, async () => {
  const submitted = await client.submit({ provider: "stub", input: { prompt: "counted" }, tenant: "ts-billing" });
  assert.equal(submitted.tenant, "ts-billing");
  await client.get(submitted.id, { wait: 30 });
  const { tenants } = await client.tenants();
  assert.ok(tenants.find((t) => t.tenant === "ts-billing")?.completed >= 1);
  const usage = await client.usage({ by: "tenant", since: "1h" });
  const row = usage.rows.find((r) => r.key === "ts-billing");
  assert.ok(row && row.executions >= 1 && row.input_tokens >= 1, JSON.stringify(usage));
  assert.ok((await client.clearCache()).dropped >= 0);
});

test("get without wait answers at once; a wait that runs out gives the execution as it is", { skip, timeout }, async () => {
  const slow = await client.submit(job({ sleep_ms: 20000 }));
  const now = await client.get(slow.id);
  assert.ok(!isEnded(now), now.status);
  let t0 = Date.now();
  const waited = await client.get(slow.id, { wait: "300ms" });
  assert.ok(Date.now() - t0 >= 250 && Date.now() - t0 < 5000, `${Date.now() - t0} ms`);
  assert.ok(!isEnded(waited));
  t0 = Date.now();
  const timedOut = await client.wait(slow.id, { timeoutMs: 300 });
  assert.ok(Date.now() - t0 < 5000);
  assert.ok(!isEnded(timedOut));
  assert.equal((await client.cancel(slow.id)).status, "cancelled");
});

test("an idempotency key returns the first execution; another request with it is refused", { skip, timeout }, async () => {
  const key = `order-${run}`;
  const first = await client.submit(job({ text: "once" }, { idempotency_key: key }));
  const again = await client.submit(job({ text: "once" }, { idempotency_key: key }));
  assert.equal(again.id, first.id);
  const error = await rejects(client.submit(job({ text: "other" }, { idempotency_key: key })), IdempotencyConflictError);
  assert.ok(error instanceof ConflictError);
  problemOf(error, 409, "idempotency-conflict");
});

test("a batch is queued in order, all or none, and its repeats are not created again", { skip, timeout }, async () => {
  const entries = [0, 1, 2].map((i) => job({ text: `b${i}` }, { idempotency_key: `batch-${run}-${i}` }));
  const { executions } = await client.submitBatch(entries);
  assert.equal(executions.length, 3);
  assert.ok(executions.every((e) => e.created));
  assert.ok(executions[0].id < executions[1].id && executions[1].id < executions[2].id);
  const repeat = await client.submitBatch(entries);
  assert.deepEqual(repeat.executions, executions.map((e) => ({ id: e.id, created: false })));
  for (const [i, e] of executions.entries()) {
    assert.equal((await client.wait(e.id)).output?.text, `b${i}`);
  }
  // An invalid entry refuses the whole batch, naming its index; nothing is queued.
  const provider = ghost("batch");
  const bad = [
    { provider, input: { prompt: "x" }, allow_unknown: true },
    { provider: `nobody-${run}`, input: { prompt: "x" } },
  ];
  const error = await rejects(client.submitBatch(bad), ValidationError);
  problemOf(error, 422, "invalid");
  assert.match(error.problem.detail, /executions\[1\]/);
  assert.deepEqual((await client.listPage({ provider })).executions, []);
});

test("list pages through every execution with the cursor, newest first", { skip, timeout }, async () => {
  const provider = ghost("pager");
  const entries = Array.from({ length: 7 }, (_, i) => ({ provider, input: { prompt: `p${i}` }, allow_unknown: true }));
  const ids = (await client.submitBatch(entries)).executions.map((e) => e.id);
  const newestFirst = [...ids].reverse();

  const sizes = [];
  const seen = [];
  for await (const page of client.pages({ provider, limit: 3 })) {
    sizes.push(page.executions.length);
    seen.push(...page.executions.map((e) => e.id));
    if (page.executions.length === 3) assert.equal(typeof page.next, "string");
  }
  assert.deepEqual(sizes, [3, 3, 1]);
  assert.deepEqual(seen, newestFirst);

  const all = [];
  for await (const e of client.list({ provider, limit: 2 })) all.push(e);
  assert.deepEqual(all.map((e) => e.id), newestFirst);
  assert.ok(all.every((e) => e.status === "pending" && e.provider === provider));

  // Filters, and a page resumed from its cursor.
  const first = await client.listPage({ provider, limit: 4 });
  const rest = await client.listPage({ provider, limit: 4, cursor: first.next });
  assert.deepEqual([...first.executions, ...rest.executions].map((e) => e.id), newestFirst);
  assert.ok(!rest.next);
  assert.equal((await client.listPage({ provider, status: "completed" })).executions.length, 0);
  assert.equal((await client.listPage({ provider, status: "pending" })).executions.length, 7);
  const created = all[3].created_at;
  const after = await client.listPage({ provider, created_after: all[0].created_at + 1 });
  assert.equal(after.executions.length, 0);
  const before = await client.listPage({ provider, created_before: created + 1 });
  assert.ok(before.executions.length >= 4);
  assert.ok(before.executions.every((e) => e.created_at <= created));
  await rejects(client.listPage({ provider, cursor: "garbage" }), BadRequestError, (e) => problemOf(e, 400, "bad-request"));
  for (const id of ids) await client.cancel(id);
});

test("cancel a running and a pending execution; a second cancel is refused", { skip, timeout }, async () => {
  const running = await client.submit(job({ sleep_ms: 30000 }));
  // Let it start.
  for (let i = 0; i < 100 && (await client.get(running.id)).status !== "running"; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const cancelled = await client.cancel(running.id);
  assert.equal(cancelled.status, "cancelled");
  assert.equal((await client.get(running.id, { wait: 5 })).status, "cancelled");
  const error = await rejects(client.cancel(running.id), AlreadyEndedError);
  assert.ok(error instanceof ConflictError);
  problemOf(error, 409, "already-ended");

  const pending = await client.submit({ provider: ghost("cancel"), input: { prompt: "x" }, allow_unknown: true });
  assert.equal(pending.status, "pending");
  assert.equal((await client.cancel(pending.id)).status, "cancelled");
});

test("each error status is its own class and carries the problem", { skip, timeout }, async () => {
  problemOf(await rejects(client.get(2 ** 40), NotFoundError), 404, "not-found");
  problemOf(await rejects(client.cancel(2 ** 40), NotFoundError), 404, "not-found");
  const unknown = await rejects(client.submit({ provider: `nobody-${run}`, input: { prompt: "x" } }), ValidationError);
  problemOf(unknown, 422, "invalid");
  assert.match(unknown.problem.detail, /unknown provider/);
  problemOf(await rejects(client.submit({ provider: "stub", input: { prompt: "x", nope: 1 } }), ValidationError), 422, "invalid");
  problemOf(await rejects(client.get(1, { wait: "forever" }), BadRequestError), 400, "bad-request");
  const huge = "x".repeat(5 * 1024 * 1024);
  problemOf(await rejects(client.submit({ provider: "stub", input: { prompt: huge } }), PayloadTooLargeError), 413, "too-large");

  // Statuses the client's own requests do not cause, from the real server all the same, by
  // plain fetch: tried twice, since the server closes the connection of the 413 above
  // without reading its body, and fetch may pick that socket before it sees it closed.
  const auth = token ? { authorization: `Bearer ${token}` } : {};
  const raw = (path, init) => fetch(`${baseUrl}${path}`, init).catch(() => fetch(`${baseUrl}${path}`, init));
  const patch = await raw("/v1/providers", { method: "PATCH", headers: auth });
  const notAllowed = await errorFromResponse(patch);
  assert.ok(notAllowed instanceof MethodNotAllowedError);
  problemOf(notAllowed, 405, "method-not-allowed");
  const text = await raw("/v1/executions", { method: "POST", headers: { ...auth, "content-type": "text/plain" }, body: "{}" });
  assert.equal(text.headers.get("content-type"), "application/problem+json");
  const unsupported = await errorFromResponse(text);
  assert.ok(unsupported instanceof UnsupportedMediaTypeError);
  problemOf(unsupported, 415, "unsupported-media-type");
  // 503 needs a database that does not answer: the mapping alone, from a made-up answer.
  const down = new Response(
    JSON.stringify({ type: "urn:lanes:problem:not-ready", title: "Not ready", status: 503, detail: "database: timed out" }),
    { status: 503, headers: { "content-type": "application/problem+json" } },
  );
  problemOf(await errorFromResponse(down), 503, "not-ready");
  assert.ok((await errorFromResponse(new Response("oops", { status: 503 }))) instanceof UnavailableError);
});

test("the bearer token is sent, and a missing or wrong one is refused with 401", { skip: skip || (!token && "the server has no token"), timeout }, async () => {
  assert.equal((await client.providers()).providers.length > 0, true);
  for (const other of [new LanesClient({ baseUrl }), new LanesClient({ baseUrl, token: "wrong" })]) {
    problemOf(await rejects(other.providers(), UnauthorizedError), 401, "unauthorized");
    problemOf(await rejects(other.submit(job()), UnauthorizedError), 401, "unauthorized");
    await rejects(other.subscribe(), UnauthorizedError);
    assert.deepEqual(await other.health(), { status: "ok" }); // needs no token
  }
});

test("providers, and setting and clearing a limit", { skip, timeout }, async () => {
  const { providers, pool } = await client.providers();
  const stub = providers.find((p) => p.name === "stub");
  assert.ok(stub, JSON.stringify(providers.map((p) => p.name)));
  assert.equal(stub.state, "serving");
  assert.equal(stub.component?.file, "stub.wasm");
  assert.equal(stub.limits.configured, 8);
  assert.equal(stub.limits.effective, 8);
  assert.equal(stub.limits.source, "config");
  assert.equal(stub.throughput_5m.length, 30);
  assert.ok(pool && pool.size > 0);

  const events = await client.subscribe({ provider: "stub" });
  const set = await client.setLimit("stub", 3);
  assert.equal(set.provider, "stub");
  assert.equal(set.limits.runtime, 3);
  assert.equal(set.limits.effective, 3);
  assert.equal(set.limits.source, "runtime");
  for await (const event of events) {
    if (event.type === "limit_changed") {
      assert.deepEqual(event, { type: "limit_changed", provider: "stub", old: 8, new: 3 });
      break;
    }
  }
  const after = (await client.providers()).providers.find((p) => p.name === "stub");
  assert.equal(after?.limits.runtime, 3);
  const cleared = await client.clearLimit("stub");
  assert.equal(cleared.limits.runtime ?? null, null);
  assert.equal(cleared.limits.effective, 8);
  assert.equal(cleared.limits.source, "config");

  problemOf(await rejects(client.setLimit(`nobody-${run}`, 2), NotFoundError), 404, "not-found");
  problemOf(await rejects(client.clearLimit(`nobody-${run}`), NotFoundError), 404, "not-found");
  problemOf(await rejects(client.setLimit("stub", 0), ValidationError), 422, "invalid");
});

test("events: a subscription sees an execution start and finish, in order", { skip, timeout }, async () => {
  const events = await client.subscribe({ provider: "stub" });
  const execution = await client.submit(job({ sleep_ms: 300 }));
  const mine = [];
  for await (const event of events) {
    if ("id" in event && event.id === execution.id) mine.push(event);
    if (event.type === "finished" && event.id === execution.id) break;
  }
  assert.deepEqual(mine.map((e) => e.type), ["started", "finished"], JSON.stringify(mine));
  assert.equal(mine[0].provider, "stub");
  assert.equal(mine[0].attempt, 1);
  assert.equal(typeof mine[0].queue_wait_ms, "number");
  assert.equal(mine[1].outcome, "completed");
  assert.ok(mine[1].duration_ms >= 250, `${mine[1].duration_ms} ms`);
  assert.equal(mine[1].input_tokens, 2); // "hello there"
  assert.equal(mine[1].output_tokens, 5); // "stub reply to: hello there"

  // events() connects lazily; a signal ends it.
  const controller = new AbortController();
  const seen = [];
  const reading = (async () => {
    for await (const event of client.events({ signal: controller.signal })) {
      seen.push(event);
      if (event.type === "finished") controller.abort();
    }
  })();
  await new Promise((r) => setTimeout(r, 200)); // connected by now
  await client.submit(job());
  await assert.rejects(reading, (e) => {
    assert.equal(e.name, "AbortError", String(e?.stack));
    return true;
  });
  assert.ok(seen.some((e) => e.type === "finished"));
});

test("an execution's stream: its events, then the ended execution", { skip, timeout }, async () => {
  const ok = await client.submit(job({ sleep_ms: 1000, text: "streamed" }));
  const items = [];
  // No periodic check: the `finished` event alone ends the stream (the signal only keeps a
  // broken client from hanging the run).
  const byEvents = { checkEveryMs: 600_000, signal: AbortSignal.timeout(30_000) };
  for await (const item of client.stream(ok.id, byEvents)) items.push(item);
  const last = items.at(-1);
  assert.equal(last.type, "ended");
  assert.equal(last.execution.status, "completed");
  assert.equal(last.execution.output.text, "streamed");
  const finished = items.filter((i) => i.type === "finished");
  assert.deepEqual(finished.map((f) => f.outcome), ["completed"]);
  assert.ok(items.every((i) => i.type === "ended" || i.id === ok.id));

  // A retry shows as a `retried` attempt, then the failure.
  const failing = await client.submit(job({ error: "unavailable", sleep_ms: 300 }, { max_attempts: 2 }));
  const fails = [];
  for await (const item of client.stream(failing.id, byEvents)) fails.push(item);
  const outcomes = fails.filter((i) => i.type === "finished").map((i) => i.outcome);
  assert.deepEqual(outcomes, ["retried", "failed"]);
  const failed = fails.at(-1).execution;
  assert.equal(failed.status, "failed");
  assert.equal(failed.attempts, 2);
  assert.equal(failed.error_kind, "unavailable");
  assert.equal(failed.history.length, 2);

  // An ended execution's stream is its last item alone.
  assert.deepEqual(
    (await collect(client.stream(ok.id))).map((i) => i.type),
    ["ended"],
  );

  // A pending execution cancelled while streamed: no event says so, the periodic check does.
  const waiting = await client.submit({ provider: ghost("stream"), input: { prompt: "x" }, allow_unknown: true });
  setTimeout(() => client.cancel(waiting.id), 300);
  const t0 = Date.now();
  const cancelled = await collect(client.stream(waiting.id, { checkEveryMs: 200 }));
  assert.equal(cancelled.at(-1).execution.status, "cancelled");
  assert.ok(Date.now() - t0 < 5000);

  // A signal ends a stream early.
  const long = await client.submit(job({ sleep_ms: 20000 }));
  const early = [];
  await assert.rejects(
    (async () => {
      for await (const item of client.stream(long.id, { signal: AbortSignal.timeout(500) })) early.push(item);
    })(),
    (e) => e.name === "TimeoutError" || e.name === "AbortError",
  );
  assert.ok(early.every((i) => i.type === "started"), JSON.stringify(early));
  await client.cancel(long.id);
});

/** A fetch that fails the first `failures` calls as a refused connection would. */
function flaky(failures, { loseAnswer = false } = {}) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url: String(url), init });
    if (calls.length <= failures) {
      if (loseAnswer) {
        // The request reaches the server; its answer is lost on the way back.
        const answer = await globalThis.fetch(url, init);
        calls.at(-1).answer = { status: answer.status, body: await answer.json() };
      }
      throw new TypeError("fetch failed", { cause: new Error("connect ECONNREFUSED") });
    }
    return globalThis.fetch(url, init);
  };
  return { fetch, calls };
}

test("connection errors are retried; answers are not", { skip, timeout }, async () => {
  const down = flaky(2);
  const retrying = new LanesClient({ baseUrl, token, retryDelayMs: 10, fetch: down.fetch });
  assert.equal((await retrying.providers()).providers.some((p) => p.name === "stub"), true);
  assert.equal(down.calls.length, 3);

  // A submission whose answer was lost is not queued twice: the retry carries the same
  // idempotency key and gets the first try's execution.
  const lost = flaky(1, { loseAnswer: true });
  const submitter = new LanesClient({ baseUrl, token, retryDelayMs: 10, fetch: lost.fetch });
  const execution = await submitter.submit(job({ text: "once only" }));
  assert.equal(lost.calls.length, 2);
  assert.equal(lost.calls[0].answer.status, 201);
  assert.equal(execution.id, lost.calls[0].answer.body.id);
  const keys = lost.calls.map((c) => JSON.parse(c.init.body).idempotency_key);
  assert.ok(keys[0] && keys[0] === keys[1], JSON.stringify(keys));
  // The same for a batch.
  const lostBatch = flaky(1, { loseAnswer: true });
  const batcher = new LanesClient({ baseUrl, token, retryDelayMs: 10, fetch: lostBatch.fetch });
  const batch = await batcher.submitBatch([job(), job()]);
  assert.deepEqual(batch.executions.map((e) => e.created), [false, false]);
  assert.deepEqual(batch.executions.map((e) => e.id), lostBatch.calls[0].answer.body.executions.map((e) => e.id));

  // An error answer is not retried.
  const counting = flaky(0);
  const once = new LanesClient({ baseUrl, token, retryDelayMs: 10, fetch: counting.fetch });
  await rejects(once.get(2 ** 40), NotFoundError);
  assert.equal(counting.calls.length, 1);
  // Nor is a body JSON cannot carry: it is the caller's error, and nothing is sent.
  await assert.rejects(once.submit(job({ n: 1n })), TypeError);
  assert.equal(counting.calls.length, 1);

  // Nothing listening: ConnectionError after every try, with the last failure as its cause.
  const nowhere = new LanesClient({ baseUrl: "http://127.0.0.1:9", maxRetries: 2, retryDelayMs: 10 });
  const error = await rejects(nowhere.providers(), ConnectionError);
  assert.match(error.message, /3 tries/);
  assert.ok(error.cause instanceof Error);
  await rejects(nowhere.subscribe(), ConnectionError);
  const none = new LanesClient({ baseUrl: "http://127.0.0.1:9", maxRetries: 0 });
  assert.match((await rejects(none.health(), ConnectionError)).message, /1 try/);
});
