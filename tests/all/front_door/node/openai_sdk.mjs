// The OpenAI-compatible endpoint through the real `openai` npm package
// (tests/all/front_door.rs). Prints one JSON line of what the Rust test checks afterwards.
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = `${process.env.LANES_TEST_URL}/openai/v1`;
const apiKey = process.env.LANES_TEST_TOKEN;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const hello = [{ role: "user", content: "hello there" }];

// A plain call: the SDK's own types, the execution named in a header.
const { data, response } = await client.chat.completions
  .create({ model: "nstub", messages: hello })
  .withResponse();
assert.equal(data.object, "chat.completion");
assert.equal(data.choices[0].message.role, "assistant");
assert.ok(data.choices[0].message.content);
assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
const plain = Number(response.headers.get("x-lanes-execution-id"));

// Errors as the SDK's own classes.
await assert.rejects(client.chat.completions.create({ model: "nope", messages: hello }), (e) => {
  assert.ok(e instanceof OpenAI.NotFoundError, String(e));
  return true;
});
await assert.rejects(
  client.chat.completions.create({ model: "nstub", messages: hello, logprobs: true }),
  (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError && /logprobs/.test(e.message), String(e));
    return true;
  },
);

// A stream, read with the SDK's own iterator, and the usage chunk asked for.
let text = "";
let usage = null;
const stream = await client.chat.completions.create({
  model: "nstream",
  messages: hello,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  usage = chunk.usage ?? usage;
}
assert.equal(text, "stub reply to: hello there");
assert.equal(usage.prompt_tokens, 2);

// A tool call streamed, assembled by the SDK's stream helper; then its result sent back.
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    parameters: { type: "object", properties: { city: { type: "string" } } },
  },
};
const ask = [{ role: "user", content: 'call:get_weather {"city": "Paris"}' }];
const runner = client.chat.completions.stream({ model: "nstream", messages: ask, tools: [weather] });
const done = await runner.finalChatCompletion();
const call = done.choices[0].message.tool_calls[0];
assert.equal(done.choices[0].finish_reason, "tool_calls");
assert.equal(call.function.name, "get_weather");
assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
const answer = await client.chat.completions.create({
  model: "nstream",
  tools: [weather],
  messages: [
    ...ask,
    done.choices[0].message,
    { role: "tool", tool_call_id: call.id, content: "18C" },
  ],
});
assert.equal(answer.choices[0].message.content, "tool said: 18C");

// A JSON schema answer.
const json = await client.chat.completions.create({
  model: "nstream",
  messages: hello,
  response_format: {
    type: "json_schema",
    json_schema: {
      name: "reply",
      strict: true,
      schema: {
        type: "object",
        properties: { reply: { type: "string" } },
        required: ["reply"],
        additionalProperties: false,
      },
    },
  },
});
assert.deepEqual(JSON.parse(json.choices[0].message.content), {
  reply: "stub reply to: hello there",
});

// Slower than max_wait: the SDK retries its 504s, and each retry finds the same execution.
const retrying = new OpenAI({ baseURL, apiKey, maxRetries: 6 });
const slow = await retrying.chat.completions
  .create({ model: "nslow", messages: [{ role: "user", content: "take your time" }] })
  .withResponse();
assert.ok(slow.data.choices[0].message.content);
console.log(
  JSON.stringify({ plain, slow: Number(slow.response.headers.get("x-lanes-execution-id")) }),
);
