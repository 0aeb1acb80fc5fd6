// claude-js: Anthropic's Messages API (`POST {base_url}/v1/messages`) as a lanes provider,
// in JavaScript.
//
// An example for plugin authors: `lanes plugins new claude-js --lang js` wrote the project,
// and this file replaced its app.js. Config: `base_url` (default https://api.anthropic.com)
// and `model`; the key is the `api-key` secret, sent as `x-api-key`.

import * as kit from './lanes_kit.js';

const STOP = {
  end_turn: { tag: 'stop' },
  stop_sequence: { tag: 'stop' },
  max_tokens: { tag: 'length' },
  refusal: { tag: 'content-filter' },
  tool_use: { tag: 'tool-calls' },
};

export const adapter = {
  info() {
    return {
      name: 'claude-js',
      version: '0.1.0',
      defaultLimit: 4,
      description: 'Anthropic Messages API, written in JavaScript',
    };
  },

  async execute(request) {
    const body = {
      model: kit.model(request),
      // The Messages API requires max_tokens.
      max_tokens: request.maxTokens ?? Number(kit.setting('max_tokens', '1024')),
      messages: request.messages
        .filter((m) => m.role !== 'system')
        .map((m) => ({ role: m.role, content: m.content })),
    };
    const system = [request.system, ...request.messages.filter((m) => m.role === 'system').map((m) => m.content)]
      .filter(Boolean)
      .join('\n\n');
    if (system) body.system = system;
    if (request.temperature !== undefined) body.temperature = Number(request.temperature.toFixed(6));
    if (request.stop.length > 0) body.stop_sequences = request.stop;
    kit.mergeExtra(body, request);

    const headers = { 'anthropic-version': '2023-06-01' };
    const key = kit.secret('api-key');
    if (key) headers['x-api-key'] = key;
    const base = kit.setting('base_url', 'https://api.anthropic.com').replace(/\/+$/, '');
    const reply = await kit.postJson(`${base}/v1/messages`, headers, body);
    if (reply.status !== 200) {
      const error = kit.fromStatus(reply);
      // A spend limit is not lifted by waiting.
      if (/enforced_spend_limit_reached|spend limit/i.test(reply.text)) {
        throw new kit.ProviderError('other', error.message);
      }
      throw error;
    }
    const value = kit.json(reply);
    const text = (value.content ?? [])
      .filter((block) => block.type === 'text')
      .map((block) => block.text)
      .join('');
    const reason = value.stop_reason ?? 'end_turn';
    return {
      text,
      model: String(value.model ?? body.model),
      usage: {
        inputTokens: value.usage?.input_tokens ?? 0,
        outputTokens: value.usage?.output_tokens ?? 0,
      },
      finishReason: STOP[reason] ?? { tag: 'other', val: String(reason) },
    };
  },
};
