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

// Slower than max_wait: the SDK retries its 504s, and each retry finds the same execution.
const retrying = new OpenAI({ baseURL, apiKey, maxRetries: 6 });
const slow = await retrying.chat.completions
  .create({ model: "nslow", messages: [{ role: "user", content: "take your time" }] })
  .withResponse();
assert.ok(slow.data.choices[0].message.content);
console.log(
  JSON.stringify({ plain, slow: Number(slow.response.headers.get("x-lanes-execution-id")) }),
);
