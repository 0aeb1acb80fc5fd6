// Helpers for a lanes provider written in JavaScript: config and secrets, logging, HTTP
// through fetch (which the engine runs over wasi:http), and the mapping of HTTP errors to
// the provider-error cases that tell the host whether to retry.
//
// Written by `lanes plugins new`; keep it beside app.js.

import { get, secret as hostSecret } from 'lanes:provider/config@{{wit_version}}';
import { log as hostLog } from 'lanes:provider/logging@{{wit_version}}';
import { retryAfter } from 'lanes:provider/hints@{{wit_version}}';

const secretsRead = new Set();

/** A value of `[providers.NAME.config]`, or `fallback` when it is not set. */
export function setting(key, fallback) {
  return get(key) ?? fallback;
}

/** A secret of this provider (`api_key_env` / `api_key_file` give `api-key`). */
export function secret(name = 'api-key') {
  const value = hostSecret(name);
  if (value) secretsRead.add(value);
  return value;
}

/** One record in the host's log: trace | debug | info | warn | error. */
export function log(level, message) {
  hostLog(level, message);
}

/**
 * A provider-error. Throw it from `execute`: the host reads its `payload`, the case
 * (`rate-limited`, `unavailable`, `invalid-request`, `unauthorized`, `other`) and its value.
 */
export class ProviderError extends Error {
  constructor(tag, message, retryAfterMs) {
    const clean = scrub(message);
    super(clean);
    this.payload =
      tag === 'rate-limited'
        ? { tag, val: { retryAfterMs: retryAfterMs == null ? undefined : BigInt(retryAfterMs), message: clean } }
        : { tag, val: clean };
  }
}

/** `text` with every secret read through `secret` replaced. */
export function scrub(text) {
  let out = String(text);
  for (const value of secretsRead) {
    if (value.trim().length >= 4) out = out.split(value.trim()).join('[secret redacted]');
  }
  return out;
}

/** The request's model, else the `model` setting. */
export function model(request) {
  const chosen = request.model ?? setting('model');
  if (!chosen) {
    throw new ProviderError('invalid-request', 'no model: set `model` in the request or in [providers.NAME.config]');
  }
  return chosen;
}

/** `request.extra` (a JSON object) merged deeply into `body`. */
export function mergeExtra(body, request) {
  if (!request.extra) return body;
  let extra;
  try {
    extra = JSON.parse(request.extra);
  } catch (e) {
    throw new ProviderError('invalid-request', `extra is not JSON: ${e.message}`);
  }
  if (extra === null || typeof extra !== 'object' || Array.isArray(extra)) {
    throw new ProviderError('invalid-request', 'extra must be a JSON object');
  }
  const merge = (into, update) => {
    for (const [key, value] of Object.entries(update)) {
      const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
      if (isObject(value) && isObject(into[key])) merge(into[key], value);
      else into[key] = value;
    }
  };
  merge(body, extra);
  return body;
}

/**
 * POSTs `body` as JSON and reads the whole answer: `{ status, headers, text }`. A transport
 * failure (refused, timed out, denied) throws the matching provider error.
 */
export async function postJson(url, headers, body) {
  const data = JSON.stringify(body);
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': String(new TextEncoder().encode(data).length), ...headers },
      body: data,
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, text };
  } catch (e) {
    const message = `${url}: ${e && e.message ? e.message : e}`;
    if (/denied/i.test(message)) throw new ProviderError('other', `request denied: ${message}`);
    throw new ProviderError('unavailable', `HTTP error: ${message}`);
  }
}

/** The body as JSON; a body that is not JSON is `unavailable` (a proxy's error page). */
export function json(reply) {
  try {
    return JSON.parse(reply.text);
  } catch {
    throw new ProviderError('unavailable', `HTTP ${reply.status}: the reply is not JSON: ${reply.text.slice(0, 200)}`);
  }
}

/** `retry-after-ms`, or `retry-after` in seconds or as an HTTP date, in ms. */
export function retryAfterMs(reply) {
  const ms = reply.headers.get('retry-after-ms');
  if (ms != null && !Number.isNaN(Number(ms))) return Math.max(0, Math.round(Number(ms)));
  const value = reply.headers.get('retry-after');
  if (value == null) return undefined;
  if (!Number.isNaN(Number(value))) return Math.max(0, Math.round(Number(value) * 1000));
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** The API's own message: `error.message`, `error` as text, `message`, or the body. */
export function errorMessage(reply) {
  try {
    const value = JSON.parse(reply.text);
    if (typeof value?.error?.message === 'string') return value.error.message;
    if (typeof value?.error === 'string') return value.error;
    if (typeof value?.message === 'string') return value.message;
  } catch {
    // not JSON: the body says it
  }
  return reply.text.slice(0, 500);
}

/**
 * The usual mapping of an error status: 429 rate-limited (with its wait), 401/403
 * unauthorized, 408/409/5xx unavailable (a 503 or 529 that says when to come back tells
 * the host through `hints.retry-after`), any other 4xx an invalid request.
 */
export function fromStatus(reply, message = errorMessage(reply)) {
  const text = `HTTP ${reply.status}: ${message}`;
  const status = reply.status;
  if (status === 429) return new ProviderError('rate-limited', text, retryAfterMs(reply));
  if (status === 401 || status === 403) return new ProviderError('unauthorized', text);
  if (status === 408 || status === 409 || status >= 500) {
    const wait = retryAfterMs(reply);
    if (wait !== undefined) retryAfter(BigInt(wait));
    return new ProviderError('unavailable', text);
  }
  return new ProviderError('invalid-request', text);
}
