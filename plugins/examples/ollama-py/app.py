"""ollama-py: Ollama's chat API (`POST {base_url}/api/chat`) as a lanes provider, in Python.

An example for plugin authors: `lanes plugins new ollama-py --lang python` wrote the
project, and this file replaced its app.py. Config: `base_url` (default
http://127.0.0.1:11434) and `model`.

It maps all of lanes:provider 0.2 that Ollama takes, and declares it: tools (Ollama has no
`tool_choice`: `none` offers no tool, a named one is offered alone), JSON (`format`),
base64 images (`images`; Ollama takes no URLs), reasoning (`think`, and `thinking` on
messages) and streaming (NDJSON, read as it arrives, each piece emitted).
"""

import json

from componentize_py_types import Err

import lanes_kit as kit


def images(parts) -> list:
    return [p.data for p in parts if isinstance(p, kit.Image)]


def message_json(request: kit.Request, m: kit.Message) -> list:
    """One lanes message as Ollama messages: one `tool` message per tool result."""
    if m.role == "tool":
        out = []
        for result in m.parts(kit.ToolResult):
            name = result.name or next(
                (c.name for other in request.messages for c in other.parts(kit.ToolCall)
                 if c.id == result.call_id), None)
            message = {"role": "tool", "content": result.text, "tool_call_id": result.call_id}
            if name:
                message["tool_name"] = name
            if images(result.content):
                message["images"] = images(result.content)
            out.append(message)
        return out
    message = {"role": m.role, "content": m.text}
    if images(m.content):
        message["images"] = images(m.content)
    thinking = "".join(r.text for r in m.parts(kit.Reasoning))
    if thinking:
        message["thinking"] = thinking
    calls = [{"id": c.id, "function": {"name": c.name, "arguments": c.args()}}
             for c in m.parts(kit.ToolCall)]
    if calls:
        message["tool_calls"] = calls
    return [message]


def body_of(request: kit.Request) -> dict:
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for m in request.messages:
        messages.extend(message_json(request, m))
    options = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.seed is not None:
        options["seed"] = request.seed
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = request.stop
    body = {"model": kit.model(request), "messages": messages, "stream": request.stream}
    if options:
        body["options"] = options
    tools = request.tools
    if request.tool_choice == "none":
        tools = []
    elif isinstance(request.tool_choice, dict):
        tools = [t for t in tools if t.name == request.tool_choice["name"]]
        if not tools:
            raise Err(kit.ProviderError_InvalidRequest(
                f"tool_choice names `{request.tool_choice['name']}`, not a tool offered"))
    if tools:
        body["tools"] = []
        for t in tools:
            function = {"name": t.name}
            if t.description:
                function["description"] = t.description
            if t.parameters is not None:
                function["parameters"] = t.parameters
            body["tools"].append({"type": "function", "function": function})
    format = request.response_format
    if format and format["type"] == "json_object":
        body["format"] = "json"
    elif format and format["type"] == "json_schema":
        body["format"] = format["schema"]
    if request.reasoning is not None:
        body["think"] = request.reasoning["effort"] or True
    # Deep: {"options": {"num_ctx": 8192}} keeps num_predict and the rest.
    kit.merge_extra(body, request)
    return body


class Adapter(kit.Adapter):
    name = "ollama-py"
    version = "0.2.0"
    default_limit = 2
    description = "Ollama chat API (/api/chat), written in Python"
    capabilities = ["tools", "json_schema", "images", "reasoning", "streaming"]
    image_media_types = ["image/png", "image/jpeg"]

    def chat(self, request: kit.Request) -> kit.Reply:
        body = body_of(request)
        base = kit.setting("base_url", "http://127.0.0.1:11434").rstrip("/")
        kit.log("debug", f"POST {base}/api/chat with {len(body['messages'])} messages")
        response = kit.post_json_streaming(f"{base}/api/chat", [], body)
        if response.status != 200:
            raise Err(kit.from_status(response, kit.error_message(response)))

        # A streamed reply is one JSON object per line, read as it arrives; a whole one is
        # a single line. `out` emits each piece when the request streams.
        out, last, calls = kit.Stream(), {}, 0
        for line in response.lines():
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                raise Err(kit.ProviderError_Unavailable(
                    f"the reply is not JSON: {line[:200]!r}"))
            if isinstance(value.get("error"), str):
                raise Err(kit.ProviderError_Unavailable(f"error in stream: {value['error']}"))
            message = value.get("message") or {}
            out.reasoning(message.get("thinking") or "")
            out.text(message.get("content") or "")
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                # Older servers send no id: make one up.
                out.tool_call(calls, call.get("id") or f"call_{calls}",
                              str(function.get("name", "")),
                              json.dumps(function.get("arguments", {})))
                calls += 1
            last = value
        out.usage(kit.Usage(int(last.get("prompt_eval_count", 0)),
                            int(last.get("eval_count", 0))))
        reason = last.get("done_reason")
        # A tool call still ends with `stop`: the calls say it.
        finish = "tool_calls" if calls else "stop" if reason in (None, "stop") else str(reason)
        return out.reply(model=str(last.get("model", body["model"])), finish_reason=finish)
