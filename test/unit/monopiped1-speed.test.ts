/**
 * The compatibility protocols' frames go through libsodium (sodium-native's prebuilt binary) where it
 * loads; this checks that it does load here (CI runs the suite under Node 20 and Node 24), and that
 * the data of all whole frames of one read comes out as one event.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { monopiped1Handshake, monopiped1Keys } from "../../src/protocol/monopiped1.js";
import { frameCryptoBackend } from "../../src/protocol/sodium.js";
import type { Session } from "../../src/protocol/types.js";

function sessions(): { client: Session; server: Session } {
  const keys = monopiped1Keys(randomBytes(32));
  const c = monopiped1Handshake("client", keys);
  const s = monopiped1Handshake("server", keys);
  s.receive(Buffer.concat(c.start()));
  c.receive(Buffer.concat(s.start()));
  assert.ok(c.session && s.session);
  return { client: c.session, server: s.session };
}

describe("monopiped1 frames through libsodium", () => {
  it("sodium-native loads under this Node", () => {
    if (process.env.MONOPIPED_NO_SODIUM) return; // the fallback run (monopiped1-fallback.test.ts)
    assert.equal(frameCryptoBackend(), "libsodium");
  });

  it("opens every whole frame of a read into one data event, a split frame's data first", () => {
    const { client, server } = sessions();
    const data = randomBytes(10 * 1040 + 5);
    const wire = Buffer.concat(client.sealer.seal(data, randomBytes(0)));
    assert.equal(wire.length, 11 * 1060);
    const first = server.opener.push(wire.subarray(0, 1500)); // frame 0, and 440 bytes of frame 1
    assert.deepEqual(first, [{ type: "data", data: data.subarray(0, 1040) }]);
    const rest = server.opener.push(wire.subarray(1500));
    assert.equal(rest.length, 2);
    assert.deepEqual(rest[0], { type: "data", data: data.subarray(1040, 2080) });
    assert.deepEqual(rest[1], { type: "data", data: data.subarray(2080) });
    assert.equal(server.opener.buffered, 0);
  });

  it("seals carried bytes in front of a read without joining them first", () => {
    const { client, server } = sessions();
    const carried = randomBytes(1500);
    const input = randomBytes(2000);
    const frames = client.sealer.seal(input, carried);
    assert.equal(frames.length, 4);
    const got = server.opener.push(Buffer.concat(frames));
    assert.deepEqual(
      Buffer.concat(got.map((e) => (e.type === "data" ? e.data : Buffer.alloc(0)))),
      Buffer.concat([carried, input]),
    );
  });

  it("a frame that does not authenticate ends the read there, and the input is left as it was", () => {
    const { client, server } = sessions();
    const wire = Buffer.concat(client.sealer.seal(randomBytes(3 * 1040)));
    wire[2 * 1060 + 7] ^= 1;
    const copy = Buffer.from(wire);
    assert.throws(() => server.opener.push(wire), /did not authenticate/);
    assert.deepEqual(wire, copy);
  });
});
