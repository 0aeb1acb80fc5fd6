// {{name}}: a lanes provider for an OpenAI-compatible chat API
// (`POST {base_url}/v1/chat/completions`), in JavaScript.
//
// Config (`[providers.{{name}}]`): `base_url` and `model`. The key, when the operator sets
// `api_key_env` or `api_key_file`, is the `api-key` secret, sent as a Bearer token.
//
// `lanes_kit.js` hands `chat` the request as plain objects (`kit.Request`) and turns the
// reply it returns into lanes' response. This template takes text only; to take more,
// declare it in `capabilities` and map it in `chat` (see the comments there, and
// plugins/examples/claude-js/app.js in lanes for an adapter that maps everything).

import * as kit from './lanes_kit.js';

const DEFAULT_BASE_URL = 'https://api.example.com';

export const adapter = kit.adapter({
  name: '{{name}}',
  version: '0.1.0',
  defaultLimit: 4,
  description: '{{name}}: an OpenAI-compatible chat API (JavaScript)',
  // What the component takes beyond text, once `chat` maps it: any of 'tools',
  // 'json_schema', 'images', 'image_urls', 'reasoning', 'streaming'. The host refuses
  // inputs that need one that is not declared.
  capabilities: [],
  // The image types it takes, with 'images': empty means png, jpeg, gif and webp.
  imageMediaTypes: [],

  async chat(request) {
    const messages = [];
    if (request.system) messages.push({ role: 'system', content: request.system });
    // m.text: the message's text parts. With capabilities, m.content also holds image
    // (images), tool_call and tool_result (tools) and reasoning (reasoning) parts.
    for (const m of request.messages) messages.push({ role: m.role, content: m.text });
    const body = { model: kit.model(request), messages };
    if (request.maxTokens !== undefined) body.max_tokens = request.maxTokens;
    if (request.temperature !== undefined) body.temperature = request.temperature;
    if (request.topP !== undefined) body.top_p = request.topP;
    if (request.seed !== undefined) body.seed = request.seed;
    if (request.stop.length > 0) body.stop = request.stop;
    // With capabilities: request.tools, request.toolChoice, request.responseFormat,
    // request.reasoning and request.stream (see kit.Request).
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
    // A reply may also carry toolCalls: [{ id, name, arguments }], reasoning, refusal and
    // the usage breakdown (cacheReadTokens, cacheWriteTokens, reasoningTokens).
    return {
      text: choice.message.content ?? '',
      model: String(value.model ?? body.model),
      usage: {
        inputTokens: value.usage?.prompt_tokens ?? 0,
        outputTokens: value.usage?.completion_tokens ?? 0,
      },
      finishReason: choice.finish_reason ?? 'stop',
    };
  },
});
