#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size
// The monopiped command: runs dist/src/main.js in Node with the V8 flags the tunnel runs with
// (RUNTIME_FLAGS in src/harness.ts: a 1 MiB young generation and --optimize-for-size keep an idle
// tunnel's heap small). They are on the first line, which `env -S` splits on Linux, macOS and the
// BSDs and npm's Windows shims read; V8 takes them best on the command line, before the heap
// exists. Started without them (`node bin/monopiped.js`), it sets them itself, which is late for
// part of their effect.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";

for (const flag of ["--max-semi-space-size=1", "--optimize-for-size"]) {
  const name = flag.split("=")[0];
  if (!process.execArgv.some((a) => a === name || a.startsWith(`${name}=`))) setFlagsFromString(flag);
}

const main = new URL("../dist/src/main.js", import.meta.url);
if (!existsSync(main)) {
  const root = fileURLToPath(new URL("..", import.meta.url));
  process.stderr.write(`monopiped: not built yet: run \`npm run build\` in ${root} first\n`);
  process.exit(1);
}
await import(main.href);
