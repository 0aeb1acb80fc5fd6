"""ollama-py: Ollama's chat API (`POST {base_url}/api/chat`) as a lanes provider, in Python.

An example for plugin authors: `lanes plugins new ollama-py --lang python` wrote the
project, and this file replaced its app.py. Config: `base_url` (default
http://127.0.0.1:11434) and `model`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.lanes_provider_types import (
    ChatRequest,
    ChatResponse,
    FinishReason_Length,
    FinishReason_Other,
    FinishReason_Stop,
    ProviderError_Unavailable,
    ProviderInfo,
    Usage,
)

import lanes_kit as kit


class Adapter(exports.Adapter):
    def info(self) -> ProviderInfo:
        return ProviderInfo(
            name="ollama-py",
            version="0.1.0",
            default_limit=2,
            description="Ollama chat API (/api/chat), written in Python",
        )

    def execute(self, request: ChatRequest) -> ChatResponse:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            messages.append({"role": m.role.name.lower(), "content": m.content})
        options = {}
        if request.temperature is not None:
            options["temperature"] = round(request.temperature, 6)
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        body = {"model": kit.model(request), "messages": messages, "stream": False}
        if options:
            body["options"] = options
        # Deep: {"options": {"num_ctx": 8192}} keeps num_predict and the rest.
        kit.merge_extra(body, request)

        base = kit.setting("base_url", "http://127.0.0.1:11434").rstrip("/")
        kit.log("debug", f"POST {base}/api/chat with {len(messages)} messages")
        response = kit.post_json(f"{base}/api/chat", [], body)
        if response.status != 200:
            raise Err(kit.from_status(response, kit.error_message(response)))

        # A streamed reply is one JSON object per line; a whole one is a single line.
        text, last = [], {}
        for line in response.text().splitlines():
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                raise Err(ProviderError_Unavailable(
                    f"the reply is not JSON: {line[:200]!r}"))
            if isinstance(value.get("error"), str):
                raise Err(ProviderError_Unavailable(f"error in stream: {value['error']}"))
            text.append((value.get("message") or {}).get("content", ""))
            last = value
        reason = last.get("done_reason")
        if reason in (None, "stop"):
            finish = FinishReason_Stop()
        elif reason == "length":
            finish = FinishReason_Length()
        else:
            finish = FinishReason_Other(str(reason))
        return ChatResponse(
            text="".join(text),
            model=str(last.get("model", body["model"])),
            usage=Usage(int(last.get("prompt_eval_count", 0)), int(last.get("eval_count", 0))),
            finish_reason=finish,
        )
