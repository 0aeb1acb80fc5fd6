// claude-js: Anthropic's Messages API (`POST {base_url}/v1/messages`) as a lanes provider,
// in JavaScript.
//
// An example for plugin authors: `lanes plugins new claude-js --lang js` wrote the project,
// and this file replaced its app.js. Config: `base_url` (default https://api.anthropic.com)
// and `model`; the key is the `api-key` secret, sent as `x-api-key`.
//
// It maps all of lanes:provider 0.2 and declares it: tools (`tool_use` and `tool_result`
// blocks, tool messages folded into a user turn), JSON schemas (`output_config.format`; a
// schema-less JSON object is asked for in the system prompt), images (base64 and URLs),
// reasoning (`thinking`, passed back with its signature) and streaming (server-sent
// events, read as they arrive, each piece emitted).

import * as kit from './lanes_kit.js';

const STOP = {
  end_turn: 'stop',
  stop_sequence: 'stop',
  max_tokens: 'length',
  tool_use: 'tool_calls',
  refusal: 'refusal',
  pause_turn: 'pause',
  model_context_window_exceeded: 'context_window',
};

const EFFORT_BUDGET = { low: 1024, medium: 2048, high: 4096 };

function imageBlock(image) {
  if (image.url !== undefined) return { type: 'image', source: { type: 'url', url: image.url } };
  if (!image.mediaType) throw new kit.ProviderError('invalid-request', 'a base64 image needs its media type');
  return { type: 'image', source: { type: 'base64', media_type: image.mediaType, data: image.data } };
}

// A message's parts as content blocks (empty text left out: the API refuses it).
function blocks(m) {
  const out = [];
  for (const p of m.content) {
    if (p.type === 'text' && p.text) out.push({ type: 'text', text: p.text });
    else if (p.type === 'image') out.push(imageBlock(p));
    else if (p.type === 'tool_call') out.push({ type: 'tool_use', id: p.id, name: p.name, input: kit.args(p) });
    else if (p.type === 'tool_result') {
      const textOnly = p.content.every((c) => c.type === 'text');
      const content = textOnly ? p.text : p.content.map((c) => (c.type === 'text' ? { type: 'text', text: c.text } : imageBlock(c)));
      out.push({ type: 'tool_result', tool_use_id: p.callId, content, ...(p.isError ? { is_error: true } : {}) });
    } else if (p.type === 'reasoning' && p.redacted) out.push({ type: 'redacted_thinking', data: p.redacted });
    // The API takes back only the thinking it signed.
    else if (p.type === 'reasoning' && p.signature) out.push({ type: 'thinking', thinking: p.text, signature: p.signature });
  }
  return out;
}

// The conversation as the API's turns: system messages join the system prompt, a tool
// message becomes a user turn of `tool_result` blocks that the next user-side message
// joins, results first.
function turns(request, system) {
  const out = [];
  let results = false;
  for (const m of request.messages) {
    const textOnly = m.content.every((p) => p.type === 'text');
    if (m.role === 'system') {
      system.push(m.text);
    } else if (m.role === 'assistant') {
      out.push({ role: 'assistant', content: textOnly ? m.text : blocks(m) });
      results = false;
    } else if (results) {
      const last = out[out.length - 1];
      last.content.push(...blocks(m));
      last.content.sort((a, b) => (b.type === 'tool_result') - (a.type === 'tool_result'));
    } else {
      out.push({ role: 'user', content: textOnly ? m.text : blocks(m) });
      results = m.content.some((p) => p.type === 'tool_result');
    }
  }
  return out;
}

function bodyOf(request) {
  const system = request.system ? [request.system] : [];
  const body = { model: kit.model(request), messages: turns(request, system) };
  const format = request.responseFormat;
  if (format?.type === 'json_schema') body.output_config = { format: { type: 'json_schema', schema: format.schema } };
  if (format?.type === 'json_object') system.push('Answer with a single JSON object only, with no text before or after it.');
  // The Messages API requires max_tokens, and a thinking budget counts within it.
  let maxTokens = request.maxTokens ?? Number(kit.setting('max_tokens', '1024'));
  if (request.reasoning) {
    const budget = request.reasoning.budgetTokens ?? EFFORT_BUDGET[request.reasoning.effort ?? 'medium'];
    body.thinking = { type: 'enabled', budget_tokens: budget };
    if (request.maxTokens === undefined) maxTokens += budget;
  }
  body.max_tokens = maxTokens;
  if (system.length) body.system = system.join('\n\n');
  if (request.temperature !== undefined) body.temperature = request.temperature;
  if (request.topP !== undefined) body.top_p = request.topP;
  if (request.stop.length > 0) body.stop_sequences = request.stop;
  if (request.tools.length > 0) {
    body.tools = request.tools.map((t) => ({
      name: t.name,
      ...(t.description ? { description: t.description } : {}),
      input_schema: t.parameters ?? { type: 'object', properties: {} },
      ...(t.strict !== undefined ? { strict: t.strict } : {}),
    }));
    const choice = request.toolChoice;
    let toolChoice =
      choice === 'none' ? { type: 'none' }
      : choice === 'required' ? { type: 'any' }
      : choice?.name ? { type: 'tool', name: choice.name }
      : choice === 'auto' || request.parallelToolCalls === false ? { type: 'auto' }
      : undefined;
    if (toolChoice && toolChoice.type !== 'none' && request.parallelToolCalls === false) {
      toolChoice = { ...toolChoice, disable_parallel_tool_use: true };
    }
    if (toolChoice) body.tool_choice = toolChoice;
  }
  if (request.stream) body.stream = true;
  kit.mergeExtra(body, request);
  return body;
}

// Anthropic's input_tokens leaves out the cache's: lanes counts every prompt token.
function usageOf(u = {}) {
  const read = u.cache_read_input_tokens;
  const write = u.cache_creation_input_tokens;
  return {
    inputTokens: (u.input_tokens ?? 0) + (read ?? 0) + (write ?? 0),
    outputTokens: u.output_tokens ?? 0,
    cacheReadTokens: read ?? undefined,
    cacheWriteTokens: write ?? undefined,
  };
}

// A content block of the answer as a lanes part.
function partOf(block) {
  switch (block.type) {
    case 'text':
      return { type: 'text', text: block.text };
    case 'thinking':
      return { type: 'reasoning', text: block.thinking, signature: block.signature };
    case 'redacted_thinking':
      return { type: 'reasoning', text: '', redacted: block.data };
    case 'tool_use':
      return { type: 'tool_call', id: block.id, name: block.name, arguments: typeof block.input === 'string' ? block.input : JSON.stringify(block.input ?? {}) };
    default:
      return undefined;
  }
}

function replyOf(message, request) {
  const content = (message.content ?? []).map(partOf).filter(Boolean);
  const reason = message.stop_reason ?? 'end_turn';
  const refusal = reason === 'refusal' ? content.filter((p) => p.type === 'text').map((p) => p.text).join('') || 'refused' : undefined;
  return {
    content,
    refusal,
    model: String(message.model ?? request.model ?? ''),
    usage: usageOf(message.usage),
    finishReason: STOP[reason] ?? String(reason),
  };
}

// Reads a streamed answer, emitting each piece as it arrives, into the message it makes.
async function readStream(reply) {
  let message = { content: [] };
  let calls = 0;
  const callIndex = new Map();
  for await (const { event, data } of reply.events()) {
    let value;
    try {
      value = JSON.parse(data);
    } catch {
      throw new kit.ProviderError('unavailable', `the stream is not JSON: ${data.slice(0, 200)}`);
    }
    const type = value.type ?? event;
    if (type === 'error') {
      const error = value.error ?? {};
      const transient = ['overloaded_error', 'api_error', 'rate_limit_error'].includes(error.type);
      throw new kit.ProviderError(transient ? 'unavailable' : 'other', `error in stream: ${error.type}: ${error.message}`);
    } else if (type === 'message_start') {
      message = { ...value.message, content: [] };
      kit.emit({ type: 'usage', usage: usageOf(message.usage) });
    } else if (type === 'content_block_start') {
      const block = { ...value.content_block };
      message.content[value.index] = block;
      if (block.type === 'tool_use') {
        block.input = '';
        callIndex.set(value.index, calls);
        kit.emit({ type: 'tool_call_start', index: calls++, id: block.id, name: block.name });
      } else if (block.type === 'text' && block.text) {
        kit.emit({ type: 'text', text: block.text });
      } else if (block.type === 'thinking' && block.thinking) {
        kit.emit({ type: 'reasoning', text: block.thinking });
      }
    } else if (type === 'content_block_delta') {
      const block = message.content[value.index];
      const delta = value.delta ?? {};
      if (delta.type === 'text_delta') {
        block.text += delta.text;
        kit.emit({ type: 'text', text: delta.text });
      } else if (delta.type === 'thinking_delta') {
        block.thinking += delta.thinking;
        kit.emit({ type: 'reasoning', text: delta.thinking });
      } else if (delta.type === 'signature_delta') {
        block.signature = (block.signature ?? '') + delta.signature;
      } else if (delta.type === 'input_json_delta' && delta.partial_json) {
        block.input += delta.partial_json;
        kit.emit({ type: 'tool_call_arguments', index: callIndex.get(value.index), fragment: delta.partial_json });
      }
    } else if (type === 'message_delta') {
      Object.assign(message, value.delta ?? {});
      // The counts are cumulative: the last one wins.
      message.usage = { ...message.usage, ...(value.usage ?? {}) };
      kit.emit({ type: 'usage', usage: usageOf(message.usage) });
    }
  }
  message.content = message.content.filter(Boolean).map((b) => (b.type === 'tool_use' && b.input === '' ? { ...b, input: '{}' } : b));
  return message;
}

export const adapter = kit.adapter({
  name: 'claude-js',
  version: '0.2.0',
  defaultLimit: 4,
  description: 'Anthropic Messages API, written in JavaScript',
  capabilities: ['tools', 'json_schema', 'images', 'image_urls', 'reasoning', 'streaming'],

  async chat(request) {
    const body = bodyOf(request);
    const headers = { 'anthropic-version': '2023-06-01' };
    const key = kit.secret('api-key');
    if (key) headers['x-api-key'] = key;
    const base = kit.setting('base_url', 'https://api.anthropic.com').replace(/\/+$/, '');
    const url = `${base}/v1/messages`;
    const reply = request.stream ? await kit.postJsonStreaming(url, headers, body) : await kit.postJson(url, headers, body);
    if (reply.status !== 200) {
      const whole = request.stream ? await reply.read() : reply;
      const error = kit.fromStatus(whole);
      // A spend limit is not lifted by waiting.
      if (/enforced_spend_limit_reached|spend limit/i.test(whole.text)) {
        throw new kit.ProviderError('other', error.message);
      }
      throw error;
    }
    const message = request.stream ? await readStream(reply) : kit.json(reply);
    return replyOf(message, request);
  },
});
