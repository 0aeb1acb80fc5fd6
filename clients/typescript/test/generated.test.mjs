// src/schema.ts is generated from docs/openapi.json (`npm run generate`); this fails when the
// checked-in file is stale, so a change to the API's document must come with the client's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("src/schema.ts is what openapi-typescript makes of docs/openapi.json", () => {
  const run = spawnSync("npm", ["run", "--silent", "check-generated"], { cwd: root, encoding: "utf8" });
  assert.equal(
    run.status,
    0,
    `src/schema.ts is stale: run \`npm run generate\` in clients/typescript and commit it\n${run.stdout}${run.stderr}`,
  );
});
