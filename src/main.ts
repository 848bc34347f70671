#!/usr/bin/env node
/**
 * The `monopiped` executable: picks the subcommand. Only the long-running ends' code is loaded up
 * front; `pipe` (which brings the WebSocket client), `demo` and `bench` are loaded when chosen, so
 * an idle -e or -d end does not carry them.
 */
import { keygen, UsageError } from "./cli.js";
import { run } from "./run.js";

async function main(argv: string[]): Promise<number> {
  try {
    switch (argv[0]) {
      case "keygen":
        return keygen(argv.slice(1));
      case "pipe":
        return await (await import("./pipe.js")).pipe(argv.slice(1));
      case "demo":
        return (await import("./demo.js")).demo(argv.slice(1));
      case "bench":
        return (await import("../bench/bench.js")).benchMain(argv.slice(1));
      case "run":
        return await run(argv.slice(1));
      default:
        return await run(argv);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`monopiped: ${err.message}\nTry 'monopiped --help' for more information.\n`);
      return 2;
    }
    throw err;
  }
}

// A long-running end treats SIGHUP as "re-read the key files" (src/run.ts); until run() has its
// handler in place, a SIGHUP must not end the process, as it would by default.
const sub = process.argv[2];
if (sub !== "pipe" && sub !== "keygen" && sub !== "demo" && sub !== "bench") process.on("SIGHUP", () => {});

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`monopiped: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
