// The published declarations (dist/*.d.ts), from the generated schema, type a user's code:
// test/types/usage.mts must compile, its `@ts-expect-error` lines included.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the declarations type the README's kind of code, and refuse bad input", () => {
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  const run = spawnSync(process.execPath, [tsc, "-p", "test/types"], { cwd: root, encoding: "utf8" });
  assert.equal(run.status, 0, `${run.stdout}${run.stderr}`);
});
