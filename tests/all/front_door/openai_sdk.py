"""The OpenAI-compatible endpoint through the real `openai` SDK (tests/all/front_door.rs).

Prints one JSON line of what the Rust test checks in the queue afterwards.
"""
import json
import os

import openai
from openai import OpenAI

url = os.environ["LANES_TEST_URL"] + "/openai/v1"
token = os.environ["LANES_TEST_TOKEN"]
client = OpenAI(base_url=url, api_key=token, max_retries=0)
hello = [{"role": "user", "content": "hello there"}]

# A plain call: the SDK's own types parse the answer.
r = client.chat.completions.create(model="stub", messages=hello)
assert r.object == "chat.completion", r
assert r.choices[0].message.role == "assistant", r
assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content, r
assert r.choices[0].finish_reason == "stop", r
assert r.usage is not None and r.usage.prompt_tokens == 2, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

# A stream: chunks as they come, the usage in a last chunk when asked.
chunks = list(
    client.chat.completions.create(
        model="ostream", messages=hello, stream=True, stream_options={"include_usage": True}
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "stub reply to: hello there", chunks
assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, chunks
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop", chunks
assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2, chunks[-1]

# A tool call streamed: its id and name first, then its arguments in pieces.
weather = {"type": "function", "function": {"name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
ask = [{"role": "user", "content": 'call:get_weather {"city": "Paris"}'}]
calls = {}
finish = None
for c in client.chat.completions.create(
    model="ostream", messages=ask, tools=[weather], stream=True
):
    for d in c.choices[0].delta.tool_calls or []:
        call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        call["id"] = d.id or call["id"]
        call["name"] += (d.function.name or "") if d.function else ""
        call["arguments"] += (d.function.arguments or "") if d.function else ""
    finish = c.choices[0].finish_reason or finish
assert finish == "tool_calls", finish
assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}, calls

# The result goes back as a tool message; the answer comes from it.
r = client.chat.completions.create(
    model="ostream",
    messages=ask
    + [
        {"role": "assistant", "tool_calls": [{"id": calls[0]["id"], "type": "function",
            "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"},
    ],
    tools=[weather],
)
assert r.choices[0].message.content == "tool said: 18C", r

# A JSON schema answer, parsed into the SDK's own model.
from pydantic import BaseModel


class Reply(BaseModel):
    reply: str


parsed = client.chat.completions.parse(model="ostream", messages=hello, response_format=Reply)
assert parsed.choices[0].message.parsed == Reply(reply="stub reply to: hello there"), parsed

# An alias, the model given to the provider, the priority and tenant carried, the
# execution named.
raw = client.chat.completions.with_raw_response.create(
    model="fast",
    messages=[{"role": "system", "content": "be brief"}] + hello,
    max_tokens=7,
    extra_headers={"x-lanes-priority": "5", "x-lanes-tenant": "acme"},
)
alias_id = int(raw.headers["x-lanes-execution-id"])
assert raw.parse().model == "stub-model", raw.parse()

# An idempotency key: the same call twice is one execution.
keyed = [
    client.chat.completions.with_raw_response.create(
        model="stub", messages=hello, extra_headers={"idempotency-key": "k-1"}
    ).headers["x-lanes-execution-id"]
    for _ in range(2)
]
assert keyed[0] == keyed[1], keyed

# What `model` may name.
ids = [m.id for m in client.models.list().data]
for name in ("stub", "slow", "fast"):
    assert name in ids, ids

# Errors in OpenAI's shape, as the SDK's own exceptions.
try:
    client.chat.completions.create(model="nope", messages=hello)
    raise AssertionError("an unknown model was taken")
except openai.NotFoundError as e:
    assert "nope" in str(e) and e.code == "model_not_found", e
try:
    client.chat.completions.create(model="stub", messages=hello, logprobs=True)
    raise AssertionError("logprobs was taken")
except openai.BadRequestError as e:
    assert "logprobs" in str(e), e
try:
    client.chat.completions.create(
        model="stub", messages=hello, extra_headers={"x-lanes-tenant": "a b"}
    )
    raise AssertionError("a bad tenant was taken")
except openai.BadRequestError as e:
    assert "x-lanes-tenant" in str(e), e
try:
    OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(
        model="stub", messages=hello
    )
    raise AssertionError("a wrong key was taken")
except openai.AuthenticationError:
    pass

# A provider paused, or with its circuit open, for longer than max_wait: refused at once
# with when to come back, and nothing queued.
for model, error, word in (
    ("held", openai.RateLimitError, "paused"),
    ("broken", openai.InternalServerError, "circuit is open"),
):
    try:
        client.chat.completions.create(model=model, messages=hello)
        raise AssertionError(f"{model} was queued")
    except error as e:
        assert word in str(e), e
        assert int(e.response.headers["retry-after"]) > 500, e.response.headers

# The slow provider outlasts max_wait (1 s): the SDK gets a 504 and retries on its own,
# and each retry waits on the same execution until it ends.
retrying = OpenAI(base_url=url, api_key=token, max_retries=6)
slow = retrying.chat.completions.with_raw_response.create(
    model="slow", messages=[{"role": "user", "content": "take your time"}]
)
assert slow.parse().choices[0].message.content, slow.parse()
print(
    json.dumps(
        {
            "alias": alias_id,
            "keyed": int(keyed[0]),
            "slow": int(slow.headers["x-lanes-execution-id"]),
            "slow_retries": int(slow.http_request.headers.get("x-stainless-retry-count", "0")),
        }
    )
)

# A client that gives up before lanes answers (a 0.5 s timeout; the call takes 3 s) retries
# its own timeouts: each retry waits on the first one's execution, not a new one.
impatient = OpenAI(base_url=url, api_key=token, max_retries=8, timeout=0.5)
late = impatient.chat.completions.with_raw_response.create(
    model="patient", messages=[{"role": "user", "content": "no hurry"}]
)
assert late.parse().choices[0].message.content, late.parse()
