// Type-checked, never run (test/types.test.mjs runs `tsc -p test/types`): the published
// declarations (dist/*.d.ts) type what the API answers, and refuse what it would refuse.
import {
  ApiError,
  LanesClient,
  NotFoundError,
  type Event,
  type Execution,
  type ExecutionStatus,
  type SubmitRequest,
} from "../../dist/index.js";

export async function usage(lanes: LanesClient): Promise<void> {
  const queued: Execution = await lanes.submit({
    provider: "claude",
    input: { prompt: "hi", max_tokens: 10, extra: { sleep_ms: 1 } },
    priority: 5,
    idempotency_key: "k",
  });
  const id: number = queued.id;
  const status: ExecutionStatus = (await lanes.wait(id)).status;
  // @ts-expect-error not a status
  if (status === "done") return;
  const text: string | undefined = (await lanes.get(id, { wait: "30s" })).output?.text;
  void text;

  // @ts-expect-error the input needs a prompt or messages
  await lanes.submit({ provider: "x", input: { max_tokens: 1 } });
  // @ts-expect-error a provider is required
  const noProvider: SubmitRequest = { input: { prompt: "x" } };
  void noProvider;
  await lanes.submitBatch([{ provider: "x", input: { messages: [{ role: "user", content: "y" }] } }]);

  for await (const page of lanes.pages({ provider: "claude", status: "failed", limit: 50 })) {
    const next: string | null | undefined = page.next;
    void next;
  }
  // @ts-expect-error not a status
  lanes.list({ status: "nope" });

  for await (const event of lanes.events({ provider: "claude" })) {
    narrow(event);
  }
  for await (const item of lanes.stream(id)) {
    if (item.type === "ended") {
      const ended: Execution = item.execution;
      void ended;
    } else {
      const attempt: number = item.attempt;
      void attempt;
    }
  }

  const { providers } = await lanes.providers();
  const effective: number | undefined = providers[0]?.limits.effective;
  void effective;
  const set = await lanes.setLimit("claude", 3);
  const runtime: number | null | undefined = set.limits.runtime;
  void runtime;

  try {
    await lanes.cancel(id);
  } catch (error) {
    if (error instanceof NotFoundError) {
      const detail: string = error.problem.detail;
      void detail;
    } else if (error instanceof ApiError) {
      const status: number = error.status;
      void status;
    }
  }
}

function narrow(event: Event): void {
  switch (event.type) {
    case "finished": {
      const outcome: string = event.outcome;
      const duration: number = event.duration_ms;
      void outcome, duration;
      break;
    }
    case "lane_paused": {
      const forMs: number | null | undefined = event.for_ms;
      void forMs;
      break;
    }
    case "lagged": {
      const missed: number = event.missed;
      void missed;
      break;
    }
    default:
      break;
  }
}
