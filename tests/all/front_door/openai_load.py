"""The load test through the OpenAI-compatible endpoint (tests/all/front_door.rs): 200
clients of the real `openai` SDK (async) make 20,000 calls; each checks its own answer.
Prints one JSON line: the execution id of every call, and the rate."""
import asyncio
import json
import os
import time

import httpx
from openai import AsyncOpenAI

CLIENTS, EACH = 200, 100


async def main() -> None:
    client = AsyncOpenAI(
        base_url=os.environ["LANES_TEST_URL"] + "/openai/v1",
        api_key=os.environ["LANES_TEST_TOKEN"],
        max_retries=3,
        http_client=httpx.AsyncClient(
            limits=httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS),
            timeout=120,
        ),
    )
    ids: list[int] = []

    async def one_client(c: int) -> None:
        for n in range(EACH):
            word = f"call-{c}-{n}"
            raw = await client.chat.completions.with_raw_response.create(
                model="load", messages=[{"role": "user", "content": word}]
            )
            answer = raw.parse()
            # The stub echoes the prompt: each call gets its own answer.
            assert word in (answer.choices[0].message.content or ""), answer
            ids.append(int(raw.headers["x-lanes-execution-id"]))

    began = time.monotonic()
    await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    elapsed = time.monotonic() - began
    await client.close()
    print(json.dumps({"ids": ids, "rate": len(ids) / elapsed}))


asyncio.run(main())
