import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OutputArena } from "../../src/protocol/arena.js";

describe("OutputArena", () => {
  it("lends the same memory to the next operation once the previous one's was released", () => {
    const a = new OutputArena();
    a.begin();
    const first = a.take(1000);
    a.end(true);
    a.begin();
    const second = a.take(1000);
    a.end(true);
    assert.equal(second.buffer, first.buffer);
    assert.equal(second.byteOffset, first.byteOffset);
  });

  it("never lends again what an operation left with a socket (not released)", () => {
    const a = new OutputArena();
    a.begin();
    const kept = a.take(1000);
    kept.fill(7);
    a.end(false);
    for (let i = 0; i < 3000; i++) {
      a.begin();
      a.take(700).fill(9);
      a.end(i % 3 === 0);
    }
    assert.ok(
      kept.every((b) => b === 7),
      "the kept bytes were never written again",
    );
  });

  it("gives fresh memory outside an operation and inside a nested one", () => {
    const a = new OutputArena();
    a.begin();
    const lent = a.take(64);
    a.begin();
    const nested = a.take(64);
    a.end(true);
    a.end(true);
    const outside = a.take(64);
    assert.notEqual(nested.buffer, lent.buffer);
    assert.notEqual(outside.buffer, lent.buffer);
    // and the outer operation's release still works after the nested one ended
    a.begin();
    assert.equal(a.take(64).byteOffset, lent.byteOffset);
    a.end(true);
  });

  it("shrink() gives back the unused tail of the latest take only: the next output follows directly", () => {
    const a = new OutputArena();
    a.begin();
    const first = a.take(1028);
    a.shrink(first, 1024);
    const second = a.take(1028);
    assert.equal(second.buffer, first.buffer);
    assert.equal(second.byteOffset, first.byteOffset + 1024);
    // Not the latest take: nothing changes (the later one's bytes are never lent twice).
    a.shrink(first, 10);
    const third = a.take(8);
    assert.equal(third.byteOffset, second.byteOffset + 1032);
    a.end(true);
  });
});
