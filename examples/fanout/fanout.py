"""Summarize a folder of documents (or 1,000 made-up ones) through lanes, over the route
`summarize`, with the Python client. Writes one JSON line per document to
summaries.jsonl and prints where the work ran.

    python fanout.py                    # 1,000 generated documents
    python fanout.py --docs ./my-docs   # every *.txt file there

Running it again queues nothing twice: each document's idempotency key is its name, so
the second run finds the first run's executions and waits on those.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import Dict, List

from lanes_client import AsyncClient, ChatInput, Execution, SubmitRequest

ROUTE = "summarize"
BATCH = 1000  # the API's most per batch


def made_up_documents(n: int) -> Dict[str, str]:
    rng = random.Random(42)
    words = ("queue lane provider limit retry route budget latency token shard lease "
             "worker circuit backoff batch stream event summary").split()
    return {
        f"doc-{i:04d}": " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
        for i in range(n)
    }


def read_documents(folder: Path) -> Dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(folder.glob("*.txt"))}


def request(name: str, text: str) -> SubmitRequest:
    return SubmitRequest(
        provider=ROUTE,
        input=ChatInput(
            system="Summarize the document in one sentence.",
            prompt=text,
            max_tokens=60,
        ),
        idempotency_key=f"fanout:{name}",
        max_attempts=5,
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, help="a folder of .txt files (default: 1,000 made up)")
    parser.add_argument("--url", default=None, help="the lanes API (default: $LANES_URL or 127.0.0.1:7465)")
    parser.add_argument("--out", type=Path, default=Path("summaries.jsonl"))
    parser.add_argument("--waiters", type=int, default=64, help="long-polls open at once")
    args = parser.parse_args()

    docs = read_documents(args.docs) if args.docs else made_up_documents(1000)
    names = list(docs)
    started = time.monotonic()

    async with AsyncClient(args.url, timeout=30) as lanes:
        # Queue everything: a batch is one transaction, up to 1,000 entries.
        ids: List[int] = []
        created = 0
        for i in range(0, len(names), BATCH):
            chunk = names[i : i + BATCH]
            answer = await lanes.submit_batch(request(n, docs[n]) for n in chunk)
            ids += [e.id for e in answer.executions]
            created += sum(e.created for e in answer.executions)
        print(f"queued {created} new executions ({len(ids) - created} were already queued) "
              f"in {time.monotonic() - started:.1f} s")

        # Wait for each, a bounded number of long-polls at a time, with a progress line.
        gate = asyncio.Semaphore(args.waiters)
        finished = 0

        async def wait(id: int) -> Execution:
            nonlocal finished
            async with gate:
                execution = await lanes.wait(id, timeout=600)
            finished += 1
            if finished % 100 == 0 or finished == len(ids):
                print(f"  {finished}/{len(ids)} done", file=sys.stderr)
            return execution

        results = await asyncio.gather(*(wait(i) for i in ids))

    elapsed = time.monotonic() - started
    with args.out.open("w") as out:
        for name, execution in zip(names, results):
            out.write(json.dumps({
                "document": name,
                "id": execution.id,
                "status": execution.status,
                "provider": execution.provider,
                "summary": execution.text,
                "error": execution.error,
                "attempts": execution.attempts,
            }) + "\n")

    by_status = collections.Counter(e.status for e in results)
    by_member = collections.Counter(e.provider for e in results if e.status == "completed")
    moved = sum(1 for e in results if len({a.provider for a in e.history}) > 1)
    retried = sum(1 for e in results if e.attempts > 1)
    print(f"{len(results)} documents in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s): "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    print("completed on: " + ", ".join(f"{p} {n}" for p, n in by_member.most_common()))
    print(f"retried: {retried} (of which {moved} moved to another member)")
    print(f"results in {args.out}")
    return 0 if by_status.get("completed", 0) == len(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
