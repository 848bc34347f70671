import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { describe, it } from "node:test";
import { ProtocolError } from "../../src/protocol/errors.js";
import type { Session } from "../../src/protocol/types.js";
import { pump } from "../../src/pump.js";
import { type Link, OwnedLink } from "../../src/transport/link.js";

/** A link that records what the pump does to it. */
class FakeLink extends EventEmitter implements Link {
  readonly messageFramed = false;
  closed = false;
  queuedBytes = 0;
  sentBytes = 0;
  readonly did: string[] = [];
  constructor(readonly peer: string) {
    super();
  }
  send(chunks: Buffer[]): boolean {
    this.did.push(`send:${chunks.length}`);
    return true;
  }
  pause(): void {}
  resume(): void {}
  endWrite(): void {
    this.did.push("endWrite");
  }
  reset(): void {
    this.did.push("reset");
  }
}

/** A session whose sealer has run out of nonces (G7): seal and end throw, as at the 2^48 limit. */
function exhaustedSession(): Session {
  const limit = () => {
    throw new ProtocolError("nonce-limit", "the record counter reached its limit (2^48 nonces)");
  };
  return {
    protocol: "monopiped2",
    authenticatedEnd: true,
    sealer: { maxPlaintext: 65535, seal: limit, end: limit, abort: limit },
    opener: { push: () => [], buffered: 0 },
  };
}

describe("pump", () => {
  it("a sealer that cannot seal (nonce limit) fails that connection, without END, instead of throwing out of the data handler", async () => {
    const plainRaw = new FakeLink("app");
    const encRaw = new FakeLink("peer");
    const done = pump(new OwnedLink(plainRaw), new OwnedLink(encRaw), exhaustedSession());
    // Before the fix this emit threw the ProtocolError up to the socket's emitter: in a real
    // process an uncaught exception that ends every connection.
    assert.doesNotThrow(() => plainRaw.emit("data", Buffer.from("hello")));
    const result = await done;
    assert.equal(result.clean, false);
    assert.match(result.reason, /limit/);
    assert.ok(plainRaw.did.includes("reset"), "the application is reset");
    assert.ok(encRaw.did.includes("reset"), "the encrypted link is reset (no END could be sealed)");
    assert.ok(!encRaw.did.some((d) => d.startsWith("send")), "nothing was sent after the failure");
  });
});
