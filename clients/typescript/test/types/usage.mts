// Type-checked, never run (test/types.test.mjs runs `tsc -p test/types`): the published
// declarations (dist/*.d.ts) type what the API answers, and refuse what it would refuse.
import {
  ApiError,
  LanesClient,
  NotFoundError,
  RestartedError,
  type ChatMessage,
  type Event,
  type Execution,
  type ExecutionStatus,
  type OutputPart,
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

  // Content parts, tools, formats, reasoning and streaming in the input.
  const rich: SubmitRequest = {
    provider: "claude",
    input: {
      messages: [
        { role: "user", content: [{ type: "text", text: "hi" }, { type: "image", url: "https://x/c.png" }] },
        { role: "assistant", content: [{ type: "tool_call", id: "c", name: "f", arguments: "{}" }] },
        { role: "tool", content: [{ type: "tool_result", call_id: "c", content: "18C" }] },
      ],
      tools: [{ name: "f", parameters: { type: "object" } }],
      tool_choice: { name: "f" },
      response_format: { type: "json_schema", name: "e", schema: {} },
      reasoning: { effort: "low" },
      top_p: 0.5,
      seed: 7,
      stream: true,
    },
  };
  void rich;
  // @ts-expect-error not a part type
  const badPart: ChatMessage = { role: "user", content: [{ type: "txt", text: "x" }] };
  void badPart;

  // An answer's stream, typed by `type`.
  const stream = lanes.executionStream(id, { lastEventId: "1:0" });
  for await (const item of stream) {
    switch (item.type) {
      case "attempt": {
        const n: number = item.attempt;
        void n;
        break;
      }
      case "text": {
        const piece: string = item.text;
        void piece;
        break;
      }
      case "tool_call_arguments": {
        const fragment: string = item.fragment;
        void fragment;
        break;
      }
      case "usage": {
        const cached: number | null | undefined = item.usage.cache_read_tokens;
        void cached;
        break;
      }
      case "end": {
        const content: OutputPart[] | null | undefined = item.execution.output?.content;
        const refusal: string | null | undefined = item.execution.output?.refusal;
        // An answer's parts go back as the assistant turn.
        const turn: ChatMessage = { role: "assistant", content: content ?? [] };
        void refusal, turn;
        break;
      }
      default:
        break;
    }
  }
  const resumeAt: string | undefined = stream.lastEventId;
  void resumeAt;
  const textStream = lanes.streamText(id);
  try {
    for await (const piece of textStream) {
      const p: string = piece;
      void p;
    }
  } catch (error) {
    if (error instanceof RestartedError) {
      const discarded: string = error.discarded;
      void discarded;
    }
  }
  const endedText: Execution | undefined = textStream.execution;
  void endedText;

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
