"""The Anthropic-compatible endpoint through the real `anthropic` SDK (tests/all/front_door.rs).

Prints one JSON line of what the Rust test checks in the queue afterwards.
"""
import json
import os

import anthropic
from anthropic import Anthropic

url = os.environ["LANES_TEST_URL"] + "/anthropic"
token = os.environ["LANES_TEST_TOKEN"]
client = Anthropic(base_url=url, api_key=token, max_retries=0)
hello = [{"role": "user", "content": "hello there"}]

# A plain call, the key sent as `x-api-key`: the SDK's own types parse the answer.
m = client.messages.create(model="astub", max_tokens=20, messages=hello)
assert m.type == "message" and m.role == "assistant", m
assert m.content[0].type == "text" and m.content[0].text, m
assert m.stop_reason == "end_turn", m
assert m.usage.input_tokens == 2, m.usage

# An alias with the provider's model, a system prompt, the priority carried.
raw = client.messages.with_raw_response.create(
    model="afast",
    max_tokens=7,
    system="be brief",
    messages=hello,
    extra_headers={"x-lanes-priority": "3", "x-lanes-tenant": "team:b"},
)
alias_id = int(raw.headers["x-lanes-execution-id"])
assert raw.parse().model == "stub-model", raw.parse()

# A stream, read the SDK's way: the text as it comes, and the message it accumulates.
with client.messages.stream(model="astream", max_tokens=20, messages=hello) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
assert len(pieces) > 1, pieces
assert "".join(pieces) == "stub reply to: hello there", pieces
assert final.content[0].text == "".join(pieces), final
assert final.stop_reason == "end_turn", final
assert final.usage.input_tokens == 2, final.usage

# A tool call streamed: the SDK assembles its input from the JSON pieces.
weather = {"name": "get_weather", "input_schema": {"type": "object",
           "properties": {"city": {"type": "string"}}}}
with client.messages.stream(
    model="astream",
    max_tokens=20,
    tools=[weather],
    messages=[{"role": "user", "content": 'call:get_weather {"city": "Paris"}'}],
) as stream:
    final = stream.get_final_message()
assert final.stop_reason == "tool_use", final
call = final.content[-1]
assert call.type == "tool_use" and call.name == "get_weather", final
assert call.input == {"city": "Paris"}, call

# The tool's result goes back in a second call, which answers from it.
m = client.messages.create(
    model="astream",
    max_tokens=20,
    tools=[weather],
    messages=[
        {"role": "user", "content": 'call:get_weather {"city": "Paris"}'},
        {"role": "assistant", "content": [c.model_dump() for c in final.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]},
    ],
)
assert m.content[0].text == "tool said: 18C", m

# A JSON schema answer (output_config.format), parsed into the SDK's own model.
from pydantic import BaseModel


class Reply(BaseModel):
    reply: str


parsed = client.messages.parse(model="astream", max_tokens=50, messages=hello, output_format=Reply)
assert parsed.parsed_output == Reply(reply="stub reply to: hello there"), parsed

# Errors in Anthropic's shape, as the SDK's own exceptions.
try:
    client.messages.create(model="nope", max_tokens=5, messages=hello)
    raise AssertionError("an unknown model was taken")
except anthropic.NotFoundError as e:
    assert "nope" in str(e), e
try:
    client.messages.create(
        model="astub", max_tokens=5, messages=hello, extra_body={"top_k": 3}
    )
    raise AssertionError("top_k was taken")
except anthropic.BadRequestError as e:
    assert "top_k" in str(e), e
try:
    client.messages.create(
        model="atext",
        max_tokens=5,
        messages=hello,
        tools=[{"name": "w", "input_schema": {"type": "object"}}],
    )
    raise AssertionError("tools went to a provider without the capability")
except anthropic.BadRequestError as e:
    assert "tools" in str(e) and "capability" in str(e), e
try:
    Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
        model="astub", max_tokens=5, messages=hello
    )
    raise AssertionError("a wrong key was taken")
except anthropic.AuthenticationError:
    pass

# Slower than max_wait: the SDK retries its 504s, and each retry finds the same execution.
retrying = Anthropic(base_url=url, api_key=token, max_retries=6)
slow = retrying.messages.with_raw_response.create(
    model="aslow", max_tokens=5, messages=[{"role": "user", "content": "take your time"}]
)
assert slow.parse().content[0].text, slow.parse()
print(
    json.dumps(
        {
            "alias": alias_id,
            "slow": int(slow.headers["x-lanes-execution-id"]),
            "slow_retries": int(slow.http_request.headers.get("x-stainless-retry-count", "0")),
        }
    )
)
