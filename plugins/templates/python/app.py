"""{{name}}: a lanes provider for an OpenAI-compatible chat API, in Python.

Config (`[providers.{{name}}.config]`): `base_url` and `model`. The key, when set, is the
provider's `api-key` secret, sent as a Bearer token.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.lanes_provider_types import (
    ChatRequest,
    ChatResponse,
    FinishReason_ContentFilter,
    FinishReason_Length,
    FinishReason_Other,
    FinishReason_Stop,
    FinishReason_ToolCalls,
    ProviderInfo,
    Role,
    Usage,
)

import lanes_kit as kit

DEFAULT_BASE_URL = "https://api.example.com"


class Adapter(exports.Adapter):
    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name="{{name}}",
            version="0.1.0",
            default_limit=4,
            description="{{name}}: an OpenAI-compatible chat API (Python)",
        )

    def execute(self, request: ChatRequest) -> ChatResponse:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            messages.append({"role": m.role.name.lower(), "content": m.content})
        body = {"model": kit.model(request), "messages": messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = round(request.temperature, 6)
        if request.stop:
            body["stop"] = list(request.stop)
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
        return ChatResponse(
            text=text,
            model=str(reply.get("model", body["model"])),
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            finish_reason=finish_reason(choice.get("finish_reason")),
        )


def finish_reason(value):
    if value in (None, "stop"):
        return FinishReason_Stop()
    if value == "length":
        return FinishReason_Length()
    if value == "content_filter":
        return FinishReason_ContentFilter()
    if value in ("tool_calls", "function_call"):
        return FinishReason_ToolCalls()
    return FinishReason_Other(str(value))
