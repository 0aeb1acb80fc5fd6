// Builds {{name}}.wasm from app.js with ComponentizeJS: `npm install && npm run build`.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const out = process.argv[2] ?? '{{name}}.wasm';
const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: 'wit',
  worldName: 'provider',
  // fetch runs over wasi:http; the rest of WASI stays out of the component.
  disableFeatures: ['fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
