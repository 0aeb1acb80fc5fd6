// Helpers for a lanes provider written in JavaScript: the request and the reply as plain
// objects (lanes:provider 0.2 translated both ways), streaming deltas, config and secrets,
// logging, HTTP through fetch (which the engine runs over wasi:http), and the mapping of
// HTTP errors to the provider-error cases that tell the host whether to retry.
//
// Written by `lanes plugins new`; keep it beside app.js. An app exports
//
//   export const adapter = kit.adapter({
//     name: 'my-llm', version: '0.1.0', defaultLimit: 4, description: 'my LLM API',
//     async chat(request) {
//       const prompt = request.lastUserText();
//       ...
//       return { text, model, usage: { inputTokens, outputTokens }, finishReason: 'stop' };
//     },
//   });
//
// and throws a `ProviderError` (`fromStatus` maps an HTTP error status) for errors.

import { get, secret as hostSecret } from 'lanes:provider/config@{{wit_version}}';
import { log as hostLog } from 'lanes:provider/logging@{{wit_version}}';
import { retryAfter } from 'lanes:provider/hints@{{wit_version}}';
import { emit as hostEmit } from 'lanes:provider/stream@{{wit_version}}';

// ---------------------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------------------

const CAPABILITIES = {
  tools: 'tools',
  json_schema: 'jsonSchema',
  images: 'images',
  image_urls: 'imageUrls',
  reasoning: 'reasoning',
  streaming: 'streaming',
};

/**
 * The `adapter` export for `spec`:
 *
 * - `name`, `version`, `defaultLimit`, `description`: what `info()` says;
 * - `capabilities`: what the component takes beyond text, any of `tools`, `json_schema`,
 *   `images` (base64), `image_urls`, `reasoning`, `streaming`. The host sends none of these
 *   to a component that does not declare it (it refuses such inputs), so declare only what
 *   `chat` maps. `imageMediaTypes`: the image types it takes (empty: png, jpeg, gif, webp);
 * - `async chat(request)`: one call. `request` is a {@link Request}; return a reply (see
 *   {@link toResponse}) or just its text, or throw a {@link ProviderError}.
 */
export function adapter(spec) {
  return {
    info() {
      const capabilities = Object.fromEntries(Object.values(CAPABILITIES).map((k) => [k, false]));
      for (const name of spec.capabilities ?? []) {
        const key = CAPABILITIES[name.replace(/-/g, '_')];
        if (!key) throw new Error(`unknown capability ${name}`);
        capabilities[key] = true;
      }
      return {
        name: spec.name,
        version: spec.version,
        defaultLimit: spec.defaultLimit,
        description: spec.description,
        capabilities,
        imageMediaTypes: [...(spec.imageMediaTypes ?? [])],
      };
    },

    async execute(raw) {
      streaming = raw.stream;
      const request = new Request(raw);
      return toResponse(await spec.chat(request), request);
    },
  };
}

// ---------------------------------------------------------------------------------------
// The request, as plain objects
// ---------------------------------------------------------------------------------------

/**
 * A chat request. Text-only apps need `model`, `system`, `messages` (each `{ role, content,
 * text }`: `text` is its text parts joined by newlines), `maxTokens`, `temperature`, `stop`
 * and `extra` (an object); `lastUserText()` is the prompt.
 *
 * Message `content` is a list of parts: `{ type: 'text', text }`, and, only when the
 * component declares the capability:
 * - `{ type: 'image', url }` (image_urls) or `{ type: 'image', data, mediaType }` (images:
 *   base64, no `data:` prefix);
 * - `{ type: 'tool_call', id, name, arguments }` (arguments: JSON text) in assistant
 *   messages and `{ type: 'tool_result', callId, name, content, isError, text }` in `tool`
 *   messages (tools), with `tools` (`{ name, description, parameters, strict }`, parameters
 *   a JSON Schema object), `toolChoice` (`'auto'`, `'none'`, `'required'` or `{ name }`) and
 *   `parallelToolCalls`;
 * - `{ type: 'reasoning', text, signature, redacted }` in assistant messages (reasoning),
 *   with `reasoning` (`{ effort: 'low'|'medium'|'high'|undefined, budgetTokens }`);
 * - `responseFormat` (json_schema): `{ type: 'text' }`, `{ type: 'json_object' }` or
 *   `{ type: 'json_schema', name, description, schema, strict }` (schema an object);
 * - `stream` (streaming): true when the caller reads the answer as it comes: send deltas
 *   with {@link emit} or a {@link Stream}.
 *
 * `topP` and `seed` may come to any 0.2 component. `raw` is the WIT `chat-request`.
 */
export class Request {
  constructor(raw) {
    this.raw = raw;
    this.model = raw.model;
    this.system = raw.system;
    this.messages = raw.messages.map((m) => message(m.role, m.content.map(partOf)));
    this.maxTokens = raw.maxTokens;
    this.temperature = round(raw.temperature);
    this.topP = round(raw.topP);
    this.seed = raw.seed === undefined ? undefined : Number(raw.seed);
    this.stop = [...raw.stop];
    this.tools = raw.tools.map((t) => ({
      name: t.name,
      description: t.description,
      parameters: parse(t.parameters, `tool \`${t.name}\`'s parameters`),
      strict: t.strict,
    }));
    this.toolChoice = toolChoiceOf(raw.toolChoice);
    this.parallelToolCalls = raw.parallelToolCalls;
    this.responseFormat = responseFormatOf(raw.responseFormat);
    this.reasoning = raw.reasoning && { effort: raw.reasoning.effort, budgetTokens: raw.reasoning.budgetTokens };
    this.stream = raw.stream;
    this.extra = parse(raw.extra, 'extra');
    if (this.extra !== undefined && (this.extra === null || typeof this.extra !== 'object' || Array.isArray(this.extra))) {
      throw new ProviderError('invalid-request', 'extra must be a JSON object');
    }
  }

  /** The text of the last user message ('' when there is none). */
  lastUserText() {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      if (this.messages[i].role === 'user') return this.messages[i].text;
    }
    return '';
  }
}

/** The text parts of `parts`, joined by newlines. */
export function textOf(parts) {
  return parts.filter((p) => p.type === 'text').map((p) => p.text).join('\n');
}

function message(role, content) {
  return { role, content, text: textOf(content) };
}

// An f32 as the caller wrote it: 0.2, not 0.20000000298023224.
function round(value) {
  return value === undefined ? undefined : Number(value.toFixed(6));
}

function parse(text, what) {
  if (text === undefined || text === null) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ProviderError('invalid-request', `${what} is not JSON: ${e.message}`);
  }
}

function imageOf(image) {
  return image.source.tag === 'url'
    ? { type: 'image', url: image.source.val, mediaType: image.mediaType }
    : { type: 'image', data: image.source.val, mediaType: image.mediaType };
}

function partOf(part) {
  const v = part.val;
  switch (part.tag) {
    case 'text':
      return { type: 'text', text: v };
    case 'image':
      return imageOf(v);
    case 'tool-call':
      return { type: 'tool_call', id: v.id, name: v.name, arguments: v.arguments };
    case 'tool-result': {
      const content = v.parts.map((p) => (p.tag === 'text' ? { type: 'text', text: p.val } : imageOf(p.val)));
      return { type: 'tool_result', callId: v.callId, name: v.name, content, isError: v.isError, text: textOf(content) };
    }
    default:
      return { type: 'reasoning', text: v.text, signature: v.signature, redacted: v.redacted };
  }
}

function toolChoiceOf(choice) {
  if (!choice) return undefined;
  return choice.tag === 'named' ? { name: choice.val } : choice.tag;
}

function responseFormatOf(format) {
  if (!format) return undefined;
  if (format.tag === 'json-object') return { type: 'json_object' };
  if (format.tag === 'json-schema') {
    const f = format.val;
    return {
      type: 'json_schema',
      name: f.name,
      description: f.description,
      schema: parse(f.schema, "the response format's schema"),
      strict: f.strict,
    };
  }
  return { type: 'text' };
}

/** A tool call's arguments parsed (`{}` when empty); an `invalid-request` error when they are not JSON. */
export function args(call) {
  if (!call.arguments || !call.arguments.trim()) return {};
  return parse(call.arguments, `the arguments of tool call \`${call.id}\``);
}

/** An image part's URL, or its bytes as a `data:` URL (OpenAI's `image_url` takes both). */
export function dataUrl(image) {
  return image.url ?? `data:${image.mediaType ?? 'image/png'};base64,${image.data}`;
}

// ---------------------------------------------------------------------------------------
// The reply
// ---------------------------------------------------------------------------------------

const FINISH = ['stop', 'length', 'content-filter', 'tool-calls', 'refusal', 'pause', 'context-window'];

function usageOf(usage = {}) {
  const opt = (n) => (n === undefined || n === null ? undefined : n);
  return {
    inputTokens: usage.inputTokens ?? 0,
    outputTokens: usage.outputTokens ?? 0,
    cacheReadTokens: opt(usage.cacheReadTokens),
    cacheWriteTokens: opt(usage.cacheWriteTokens),
    reasoningTokens: opt(usage.reasoningTokens),
  };
}

function imageToWit(image) {
  return {
    source: image.url !== undefined ? { tag: 'url', val: image.url } : { tag: 'base64', val: image.data ?? '' },
    mediaType: image.mediaType,
  };
}

function callOf(call) {
  const text = typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments ?? {});
  return { type: 'tool_call', id: String(call.id), name: String(call.name), arguments: text };
}

function partToWit(part) {
  switch (part.type) {
    case 'text':
      return { tag: 'text', val: part.text };
    case 'image':
      return { tag: 'image', val: imageToWit(part) };
    case 'tool_call': {
      const call = callOf(part);
      return { tag: 'tool-call', val: { id: call.id, name: call.name, arguments: call.arguments } };
    }
    case 'tool_result':
      return {
        tag: 'tool-result',
        val: {
          callId: part.callId,
          name: part.name,
          parts: (part.content ?? []).map((p) => (p.type === 'text' ? { tag: 'text', val: p.text } : { tag: 'image', val: imageToWit(p) })),
          isError: Boolean(part.isError),
        },
      };
    case 'reasoning':
      return { tag: 'reasoning', val: { text: part.text ?? '', signature: part.signature, redacted: part.redacted } };
    default:
      throw new Error(`unknown part type ${part.type}`);
  }
}

/**
 * The WIT `chat-response` for a reply: a string (the text), or
 * `{ text, model, usage, finishReason, toolCalls, reasoning, refusal, content }`:
 *
 * - `usage`: `{ inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens,
 *   reasoningTokens }`; input counts every prompt token, cache reads and writes included,
 *   output every generated one, reasoning included;
 * - `toolCalls`: `[{ id, name, arguments }]`, arguments JSON text or an object;
 * - `reasoning`: a string, `{ text, signature, redacted }` or a list of them;
 * - `finishReason`: `stop`, `length`, `content_filter`, `tool_calls`, `refusal`, `pause`,
 *   `context_window` or the API's own word; absent: `refusal` with a refusal, `tool_calls`
 *   with tool calls, else `stop`;
 * - `content`: the parts in your own order, instead of reasoning, text, tool calls.
 *
 * `model` defaults to the request's.
 */
export function toResponse(reply, request) {
  if (typeof reply === 'string') reply = { text: reply };
  let parts;
  if (reply.content) {
    parts = reply.content;
  } else {
    const reasoning = reply.reasoning == null ? [] : Array.isArray(reply.reasoning) ? reply.reasoning : [reply.reasoning];
    parts = reasoning.map((r) => (typeof r === 'string' ? { type: 'reasoning', text: r } : { type: 'reasoning', ...r }));
    if (reply.text) parts.push({ type: 'text', text: reply.text });
    parts.push(...(reply.toolCalls ?? []).map(callOf));
  }
  let reason = reply.finishReason;
  if (reason == null) {
    reason = reply.refusal ? 'refusal' : parts.some((p) => p.type === 'tool_call') ? 'tool-calls' : 'stop';
  }
  const tag = String(reason).replace(/_/g, '-');
  return {
    content: parts.map(partToWit),
    refusal: reply.refusal ?? undefined,
    model: String(reply.model || request.model || ''),
    usage: usageOf(reply.usage),
    finishReason: FINISH.includes(tag) ? { tag } : { tag: 'other', val: String(reason) },
  };
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

let streaming = false;

/**
 * Sends one delta to the host when the request asked to stream (else it is dropped):
 * `{ type: 'text', text }`, `{ type: 'reasoning', text }`, `{ type: 'tool_call_start',
 * index, id, name }`, `{ type: 'tool_call_arguments', index, fragment }` or `{ type:
 * 'usage', usage }`. Joined in order, the deltas of each kind must make the reply's parts of
 * that kind: a {@link Stream} keeps both in step.
 */
export function emit(delta) {
  if (!streaming) return;
  switch (delta.type) {
    case 'text':
    case 'reasoning':
      hostEmit({ tag: delta.type, val: delta.text });
      break;
    case 'tool_call_start':
      hostEmit({ tag: 'tool-call-start', val: { index: delta.index, id: delta.id, name: delta.name } });
      break;
    case 'tool_call_arguments':
      hostEmit({ tag: 'tool-call-arguments', val: { index: delta.index, fragment: delta.fragment } });
      break;
    case 'usage':
      hostEmit({ tag: 'usage', val: usageOf(delta.usage) });
      break;
    default:
      throw new Error(`unknown delta type ${delta.type}`);
  }
}

/**
 * An answer built piece by piece as it arrives: each piece is emitted (when the request
 * streams) and kept, and `reply(fields)` makes the reply of everything kept, so the deltas
 * and the reply always agree.
 *
 *   const out = new kit.Stream();
 *   for await (...) out.text(piece);
 *   return out.reply({ model, finishReason });
 */
export class Stream {
  constructor() {
    this.texts = [];
    this.reasonings = [];
    this.calls = new Map();
    this.usageSoFar = usageOf();
  }

  text(piece) {
    if (!piece) return;
    this.texts.push(piece);
    emit({ type: 'text', text: piece });
  }

  reasoning(piece) {
    if (!piece) return;
    this.reasonings.push(piece);
    emit({ type: 'reasoning', text: piece });
  }

  toolCallStart(index, id, name) {
    this.calls.set(index, { id, name, arguments: '' });
    emit({ type: 'tool_call_start', index, id, name });
  }

  toolCallArguments(index, fragment) {
    if (!fragment) return;
    this.calls.get(index).arguments += fragment;
    emit({ type: 'tool_call_arguments', index, fragment });
  }

  /** A whole tool call at once (its start, then its arguments: JSON text or an object). */
  toolCall(index, id, name, args) {
    this.toolCallStart(index, id, name);
    this.toolCallArguments(index, typeof args === 'string' ? args : JSON.stringify(args ?? {}));
  }

  usage(usage) {
    this.usageSoFar = usageOf(usage);
    emit({ type: 'usage', usage });
  }

  /** The reply of what was kept; `fields` (model, finishReason, refusal, usage…) are added. */
  reply(fields = {}) {
    const toolCalls = [...this.calls.entries()]
      .sort(([a], [b]) => a - b)
      .map(([, c]) => ({ ...c, arguments: c.arguments || '{}' }));
    const reasoning = this.reasonings.join('');
    return {
      text: this.texts.join(''),
      toolCalls,
      reasoning: reasoning || undefined,
      usage: this.usageSoFar,
      ...fields,
    };
  }
}

// ---------------------------------------------------------------------------------------
// Config, secrets and logs
// ---------------------------------------------------------------------------------------

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
 * A provider-error. Throw it from `chat`: the host reads its `payload`, the case
 * (`rate-limited`, `unavailable`, `invalid-request`, `unauthorized`, `other`) and its value.
 * A `rate-limited` one takes the wait in ms and whether the provider's window is spent.
 */
export class ProviderError extends Error {
  constructor(tag, message, retryAfterMs, windowSpent = false) {
    const clean = scrub(message);
    super(clean);
    this.payload =
      tag === 'rate-limited'
        ? {
            tag,
            val: {
              retryAfterMs: retryAfterMs == null ? undefined : BigInt(retryAfterMs),
              windowSpent: Boolean(windowSpent),
              message: clean,
            },
          }
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
  let extra = request.extra;
  if (typeof extra === 'string') extra = parse(extra, 'extra');
  if (!extra) return body;
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObject(extra)) throw new ProviderError('invalid-request', 'extra must be a JSON object');
  const merge = (into, update) => {
    for (const [key, value] of Object.entries(update)) {
      if (isObject(value) && isObject(into[key])) merge(into[key], value);
      else into[key] = value;
    }
  };
  merge(body, extra);
  return body;
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

async function post(url, headers, body) {
  const data = JSON.stringify(body);
  try {
    return await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': String(new TextEncoder().encode(data).length), ...headers },
      body: data,
    });
  } catch (e) {
    throw transport(url, e);
  }
}

function transport(url, e) {
  const message = `${url}: ${e && e.message ? e.message : e}`;
  if (/denied/i.test(message)) return new ProviderError('other', `request denied: ${message}`);
  return new ProviderError('unavailable', `HTTP error: ${message}`);
}

/**
 * POSTs `body` as JSON and reads the whole answer: `{ status, headers, text }`. A transport
 * failure (refused, timed out, denied) throws the matching provider error.
 */
export async function postJson(url, headers, body) {
  const response = await post(url, headers, body);
  try {
    const text = await response.text();
    return { status: response.status, headers: response.headers, text };
  } catch (e) {
    throw transport(url, e);
  }
}

/**
 * POSTs `body` as JSON and returns once the answer's head arrives: `{ status, headers,
 * lines(), events(), read() }`. `lines()` yields the body's lines as they arrive (NDJSON),
 * `events()` its server-sent events (`{ event, data }`), and `read()` reads it whole into
 * the `{ status, headers, text }` that `postJson` returns (for an error reply:
 * `throw kit.fromStatus(await reply.read())`). Read the body once, one way.
 */
export async function postJsonStreaming(url, headers, body) {
  const response = await post(url, headers, body);
  return {
    status: response.status,
    headers: response.headers,
    lines: () => lines(url, response),
    events: () => events(lines(url, response)),
    read: async () => {
      try {
        return { status: response.status, headers: response.headers, text: await response.text() };
      } catch (e) {
        throw transport(url, e);
      }
    },
  };
}

async function* lines(url, response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw transport(url, e);
    }
    if (chunk.done) break;
    pending += decoder.decode(chunk.value, { stream: true });
    const complete = pending.split('\n');
    pending = complete.pop();
    for (const line of complete) yield line.replace(/\r$/, '');
  }
  pending += decoder.decode();
  if (pending) yield pending.replace(/\r$/, '');
}

async function* events(source) {
  let event;
  let data = [];
  for await (const line of source) {
    if (line === '') {
      if (data.length) yield { event, data: data.join('\n') };
      event = undefined;
      data = [];
    } else if (!line.startsWith(':')) {
      const colon = line.indexOf(':');
      const key = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (key === 'event') event = value;
      else if (key === 'data') data.push(value);
    }
  }
  if (data.length) yield { event, data: data.join('\n') };
}

/** The body as JSON; a body that is not JSON is `unavailable` (a proxy's error page). */
export function json(reply) {
  try {
    return JSON.parse(reply.text);
  } catch {
    throw new ProviderError('unavailable', `HTTP ${reply.status}: the reply is not JSON: ${reply.text.slice(0, 200)}`);
  }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

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

// The headers that say how much of a request or token window is left (OpenAI's,
// Anthropic's, the IETF draft's): on a 429, one at 0 says the window is spent.
const REMAINING = [
  'x-ratelimit-remaining-requests',
  'x-ratelimit-remaining-tokens',
  'anthropic-ratelimit-requests-remaining',
  'anthropic-ratelimit-tokens-remaining',
  'anthropic-ratelimit-input-tokens-remaining',
  'anthropic-ratelimit-output-tokens-remaining',
  'ratelimit-remaining',
  'x-ratelimit-remaining',
];

/** `name: value` of a header that says a request or token window is spent, or undefined. */
export function spentWindow(reply) {
  for (const name of REMAINING) {
    const value = reply.headers.get(name);
    if (value != null && value.trim() !== '' && Number(value.trim()) <= 0) return `${name}: ${value.trim()}`;
  }
  return undefined;
}

/** The API's own message: `error.message`, `error` as text, `message`, or the body. */
export function errorMessage(reply) {
  const text = reply.text;
  try {
    const value = JSON.parse(text);
    if (typeof value?.error?.message === 'string') return value.error.message;
    if (typeof value?.error === 'string') return value.error;
    if (typeof value?.message === 'string') return value.message;
  } catch {
    // not JSON: the body says it
  }
  return text.slice(0, 500);
}

/**
 * The usual mapping of an error status: 429 rate-limited (with its wait, and `window-spent`
 * when a remaining-count header is 0), 401/403 unauthorized, 408/409/5xx unavailable (a 503
 * or 529 that says when to come back tells the host through `hints.retry-after`), any other
 * 4xx an invalid request.
 */
export function fromStatus(reply, message = errorMessage(reply)) {
  let text = `HTTP ${reply.status}: ${message}`;
  const status = reply.status;
  if (status === 429) {
    const spent = spentWindow(reply);
    if (spent) text = `${text} (window spent: ${spent})`;
    return new ProviderError('rate-limited', text, retryAfterMs(reply), spent !== undefined);
  }
  if (status === 401 || status === 403) return new ProviderError('unauthorized', text);
  if (status === 408 || status === 409 || status >= 500) {
    const wait = retryAfterMs(reply);
    if (wait !== undefined) retryAfter(BigInt(wait));
    return new ProviderError('unavailable', text);
  }
  return new ProviderError('invalid-request', text);
}
