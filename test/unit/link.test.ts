import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { describe, it } from "node:test";
import { type Link, OwnedLink } from "../../src/transport/link.js";

class FakeLink extends EventEmitter implements Link {
  readonly peer = "fake";
  readonly messageFramed = false;
  closed = false;
  queuedBytes = 0;
  sentBytes = 0;
  send(): boolean {
    return true;
  }
  pause(): void {}
  resume(): void {}
  endWrite(): void {}
  reset(): void {}
}

const tick = () => new Promise((r) => process.nextTick(r));

describe("OwnedLink", () => {
  it("holds data, end and close that arrive while nobody owns the link, and hands them on in order", async () => {
    const raw = new FakeLink();
    const owned = new OwnedLink(raw);
    const seen: string[] = [];
    owned.own({ data: (b) => seen.push(`first:${b}`), end: () => seen.push("first:end"), close: () => {} });
    raw.emit("data", Buffer.from("a"));
    owned.own(null);
    raw.emit("data", Buffer.from("b"));
    raw.emit("end");
    raw.emit("close", new Error("reset"));
    assert.deepEqual(seen, ["first:a"]);
    owned.own({
      data: (b) => seen.push(`next:${b}`),
      end: () => seen.push("next:end"),
      close: (err) => seen.push(`next:close:${err?.message}`),
    });
    assert.deepEqual(seen, ["first:a"], "never from inside own()");
    raw.emit("data", Buffer.from("c")); // arrives after the held ones: queued behind them
    await tick();
    assert.deepEqual(seen, ["first:a", "next:b", "next:end", "next:close:reset", "next:c"]);
    assert.equal(owned.ended, true);
    assert.equal(owned.gone, true);
  });

  it("delivers straight to the owner when nothing is held", () => {
    const raw = new FakeLink();
    const owned = new OwnedLink(raw);
    const seen: string[] = [];
    owned.own({ data: () => {}, end: () => seen.push("end"), close: () => {} });
    raw.emit("end");
    assert.deepEqual(seen, ["end"]);
  });
});

describe("OwnedLink with a link that lends its chunks", () => {
  class LendingLink extends FakeLink {
    readonly lendsChunks = true;
  }
  it("copies a lent chunk for an owner that keeps it, and for a held event; hands it as it is to a borrower", async () => {
    const raw = new LendingLink();
    const owned = new OwnedLink(raw);
    const lent = Buffer.from("abc");
    const kept: Buffer[] = [];
    owned.own({ data: (b) => kept.push(b), end: () => {}, close: () => {} });
    raw.emit("data", lent);
    lent.fill(0x78); // the reader reuses its buffer
    assert.equal(kept[0].toString(), "abc", "a keeping owner got a copy");
    const borrowed: Buffer[] = [];
    owned.own({ borrows: true, data: (b) => borrowed.push(b), end: () => {}, close: () => {} });
    raw.emit("data", lent);
    assert.equal(borrowed[0], lent, "a borrower gets the chunk itself");
    owned.own(null);
    const again = Buffer.from("def");
    raw.emit("data", again);
    again.fill(0x79);
    const late: Buffer[] = [];
    owned.own({ borrows: true, data: (b) => late.push(b), end: () => {}, close: () => {} });
    await tick();
    assert.equal(late[0].toString(), "def", "a held chunk was copied when it arrived");
  });
});
