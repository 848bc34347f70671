#!/usr/bin/env node
/** The `monopiped` executable. */
import { main } from "./cli.js";

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`monopiped: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
