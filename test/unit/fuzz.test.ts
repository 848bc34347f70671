/**
 * A bounded run of the fuzzer (test/fuzz/targets.ts): 300 cases of every parser. `npm run fuzz`
 * runs 100,000 of each, plus every two-chunk split of each valid record stream.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { allTargets, runTarget } from "../fuzz/targets.js";

describe("fuzz (bounded)", () => {
  for (const target of allTargets()) {
    it(`${target.name}: 300 cases, no failure`, () => {
      const r = runTarget(target, 300, undefined, false);
      assert.equal(r.cases, 300);
      assert.equal(r.failures, 0, `seed ${r.seed}: ${r.first}`);
    });
  }
});
