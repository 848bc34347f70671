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
