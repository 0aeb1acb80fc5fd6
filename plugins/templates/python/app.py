"""{{name}}: a lanes provider for an OpenAI-compatible chat API, in Python.

Config (`[providers.{{name}}.config]`): `base_url` and `model`. The key, when set, is the
provider's `api-key` secret, sent as a Bearer token.

`lanes_kit` hands `chat` the request in plain Python (`kit.Request`) and turns the
`kit.Reply` it returns into lanes' response. This template takes text only; to take more,
declare it in `capabilities` and map it in `chat` (see the comments there, and
plugins/examples/ollama-py/app.py in lanes for an adapter that maps everything).
"""

from componentize_py_types import Err

import lanes_kit as kit

DEFAULT_BASE_URL = "https://api.example.com"


class Adapter(kit.Adapter):
    name = "{{name}}"
    version = "0.1.0"
    default_limit = 4
    description = "{{name}}: an OpenAI-compatible chat API (Python)"
    # What the component takes beyond text, once `chat` maps it: any of "tools",
    # "json_schema", "images", "image_urls", "reasoning", "streaming". The host refuses
    # inputs that need one that is not declared.
    capabilities = []
    # The image types it takes, with "images": empty means png, jpeg, gif and webp.
    image_media_types = []

    def chat(self, request: kit.Request) -> kit.Reply:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            # m.text: the message's text parts. With capabilities, m.content also holds
            # kit.Image (images), kit.ToolCall and kit.ToolResult (tools) and
            # kit.Reasoning (reasoning) parts.
            messages.append({"role": m.role, "content": m.text})
        body = {"model": kit.model(request), "messages": messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        # With capabilities: request.tools, request.tool_choice, request.response_format,
        # request.reasoning and request.stream (see kit.Request).
        kit.merge_extra(body, request)

        headers = []
        key = kit.secret("api-key")
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        base = kit.setting("base_url", DEFAULT_BASE_URL).rstrip("/")
        response = kit.post_json(f"{base}/v1/chat/completions", headers, body)
        if response.status != 200:
            raise Err(kit.from_status(response, kit.error_message(response)))

        reply = response.json()
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Err(kit.ProviderError_Unavailable("the reply has no choices[0].message"))
        usage = reply.get("usage") or {}
        # A reply may also carry tool_calls=[kit.ToolCall(…)], reasoning=…, refusal=… and
        # the usage breakdown (cache_read_tokens, cache_write_tokens, reasoning_tokens).
        return kit.Reply(
            text=text,
            model=str(reply.get("model", body["model"])),
            usage=kit.Usage(int(usage.get("prompt_tokens", 0)),
                            int(usage.get("completion_tokens", 0))),
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )
