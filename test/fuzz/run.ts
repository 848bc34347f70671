/**
 * `npm run fuzz`: every parser, FUZZ_CASES cases each (default 100,000), then every split of each
 * valid record stream into two chunks. Prints cases and failures per parser and exits 1 on any
 * failure. FUZZ_SEED repeats a run; FUZZ_ONLY=text runs the parsers whose name contains it.
 */
import { allTargets, runTarget } from "./targets.js";

const cases = Number(process.env.FUZZ_CASES ?? 100_000);
const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;
const only = process.env.FUZZ_ONLY;
let failed = 0;
let total = 0;
const t0 = Date.now();
for (const target of allTargets()) {
  if (only && !target.name.includes(only)) continue;
  const t = Date.now();
  const r = runTarget(target, cases, seed);
  total += r.cases;
  failed += r.failures;
  console.log(
    `${target.name}: ${r.cases} cases, ${r.failures} failures (seed ${r.seed}, ${((Date.now() - t) / 1000).toFixed(1)} s)`,
  );
  if (r.first) console.log(`  first failure: ${r.first}`);
}
console.log(`total: ${total} cases, ${failed} failures, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
process.exitCode = failed > 0 ? 1 : 0;
