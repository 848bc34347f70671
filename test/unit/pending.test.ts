import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PendingSet } from "../../src/pending.js";

describe("PendingSet", () => {
  it("evicts the oldest when full, and reports every change of the count to its listener", () => {
    const sizes: number[] = [];
    const evicted: string[] = [];
    const set = new PendingSet(2, (n) => sizes.push(n));
    const entry = (name: string) => ({ evict: () => evicted.push(name) });
    const a = entry("a");
    const b = entry("b");
    const c = entry("c");
    set.add(a);
    set.add(b);
    set.add(c); // full: a, the oldest, goes
    assert.deepEqual(evicted, ["a"]);
    assert.equal(set.evicted, 1);
    assert.equal(set.delete(a), false, "an evicted entry is no longer counted");
    assert.equal(set.delete(b), true);
    assert.equal(set.size, 1);
    // The -w listener's not-yet-upgraded connections go through the same set, so a metric fed by
    // the listener sees them too, not only the tunnel's handshakes.
    assert.deepEqual(sizes, [1, 2, 2, 1]);
  });
  it("a cap of 0 means no cap", () => {
    const set = new PendingSet(0);
    for (let i = 0; i < 5000; i++) set.add({ evict: () => assert.fail("nothing is evicted") });
    assert.equal(set.size, 5000);
  });
});
