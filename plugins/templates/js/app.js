// {{name}}: a lanes provider for an OpenAI-compatible chat API
// (`POST {base_url}/v1/chat/completions`), in JavaScript.
//
// Config (`[providers.{{name}}]`): `base_url` and `model`. The key, when the operator sets
// `api_key_env` or `api_key_file`, is the `api-key` secret, sent as a Bearer token.

import * as kit from './lanes_kit.js';

const DEFAULT_BASE_URL = 'https://api.example.com';

const FINISH = {
  stop: { tag: 'stop' },
  length: { tag: 'length' },
  content_filter: { tag: 'content-filter' },
  tool_calls: { tag: 'tool-calls' },
};

export const adapter = {
  info() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      defaultLimit: 4,
      description: '{{name}}: an OpenAI-compatible chat API (JavaScript)',
    };
  },

  async execute(request) {
    const messages = [];
    if (request.system) messages.push({ role: 'system', content: request.system });
    for (const m of request.messages) messages.push({ role: m.role, content: m.content });
    const body = { model: kit.model(request), messages };
    if (request.maxTokens !== undefined) body.max_tokens = request.maxTokens;
    if (request.temperature !== undefined) body.temperature = Number(request.temperature.toFixed(6));
    if (request.stop.length > 0) body.stop = request.stop;
    kit.mergeExtra(body, request);

    const headers = {};
    const key = kit.secret('api-key');
    if (key) headers.authorization = `Bearer ${key}`;
    const base = kit.setting('base_url', DEFAULT_BASE_URL).replace(/\/+$/, '');
    const reply = await kit.postJson(`${base}/v1/chat/completions`, headers, body);
    if (reply.status !== 200) throw kit.fromStatus(reply);

    const value = kit.json(reply);
    const choice = value?.choices?.[0];
    if (!choice?.message) throw new kit.ProviderError('unavailable', 'the reply has no choices[0].message');
    const reason = choice.finish_reason ?? 'stop';
    return {
      text: choice.message.content ?? '',
      model: String(value.model ?? body.model),
      usage: {
        inputTokens: value.usage?.prompt_tokens ?? 0,
        outputTokens: value.usage?.completion_tokens ?? 0,
      },
      finishReason: FINISH[reason] ?? { tag: 'other', val: String(reason) },
    };
  },
};
