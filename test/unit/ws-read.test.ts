import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { FrameReader } from "../../src/transport/ws-read.js";
import { Sender } from "../helpers/ws-lib.js";

function frame(data: Buffer, opcode: number, mask: boolean, fin = true, rsv1 = false): Buffer {
  return Buffer.concat(Sender.frame(data, { fin, opcode, mask, readOnly: true, rsv1 }));
}

function payload(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

const MAX = 128 * 1024;
const SIZES = [0, 1, 47, 48, 125, 126, 1060, 65535, 65536, 65570, 100_000];

interface Seen {
  messages: Buffer[];
  controls: { frame: Buffer; opcode: number }[];
  violations: { code: number; why: string }[];
}

/**
 * Feed `wire` to a reader in pieces cut at `cuts`. Each piece is a view of one reused buffer that
 * is overwritten after every push, as the process's shared read buffer is: a message must be taken
 * (copied) during the call.
 */
function read(wire: Buffer, masked: boolean, cuts: number[], lends: boolean): Seen {
  const seen: Seen = { messages: [], controls: [], violations: [] };
  const reader = new FrameReader(
    masked,
    MAX,
    {
      message: (d) => seen.messages.push(Buffer.from(d)),
      control: (f, opcode) => seen.controls.push({ frame: Buffer.from(f), opcode }),
      violation: (code, _reason, why) => seen.violations.push({ code, why }),
    },
    lends,
  );
  const shared = Buffer.alloc(wire.length + 1);
  let from = 0;
  for (const at of [...cuts.filter((c) => c > 0 && c < wire.length).sort((a, b) => a - b), wire.length]) {
    if (at <= from) continue;
    const piece = shared.subarray(0, at - from);
    wire.copy(piece, 0, from, at);
    reader.push(piece);
    shared.fill(0xee); // the next read overwrites it
    from = at;
  }
  return seen;
}

describe("FrameReader (WebSocket frames, parsed where they lie)", () => {
  for (const masked of [true, false]) {
    const who = masked ? "a server (masked frames)" : "a client (unmasked frames)";
    it(`${who}: ws's frames of every size, split anywhere, with control frames between them`, () => {
      const messages = SIZES.map((n, i) => payload(n, i));
      const ping = frame(Buffer.from("are you there"), 9, masked);
      const pong = frame(Buffer.alloc(0), 10, masked);
      const parts: Buffer[] = [];
      messages.forEach((m, i) => {
        parts.push(frame(m, 2, masked));
        if (i === 3) parts.push(ping);
        if (i === 7) parts.push(pong);
      });
      const wire = Buffer.concat(parts);
      fc.assert(
        fc.property(
          fc.array(fc.integer({ min: 1, max: wire.length - 1 }), { maxLength: 40 }),
          fc.boolean(),
          (cuts, lends) => {
            const seen = read(wire, masked, cuts, lends);
            assert.deepEqual(seen.violations, []);
            assert.deepEqual(seen.messages, messages);
            assert.deepEqual(
              seen.controls.map((c) => c.opcode),
              [9, 10],
            );
            assert.ok(seen.controls[0].frame.equals(ping));
            assert.ok(seen.controls[1].frame.equals(pong));
          },
        ),
        { numRuns: 60 },
      );
    });
  }

  it("a message sent in fragments, with a ping between them, is delivered whole", () => {
    const a = payload(3000, 1);
    const b = payload(70_000, 2);
    const c = payload(10, 3);
    const wire = Buffer.concat([
      frame(a, 2, true, false),
      frame(Buffer.from("x"), 9, true),
      frame(b, 0, true, false),
      frame(c, 0, true, true),
      frame(payload(5, 4), 2, true),
    ]);
    for (const cuts of [[], [1], [2999, 3010], [5000, 70_000, 73_020]]) {
      const seen = read(wire, true, cuts, true);
      assert.deepEqual(seen.violations, []);
      assert.deepEqual(seen.messages, [Buffer.concat([a, b, c]), payload(5, 4)]);
      assert.equal(seen.controls.length, 1);
    }
  });

  const violations: [string, Buffer, boolean, number, RegExp][] = [
    ["a text message", frame(Buffer.from("hello"), 1, true), true, 1002, /text message/],
    ["reserved bits", frame(payload(10, 1), 2, true, true, true), true, 1002, /reserved bits/],
    ["an unmasked frame to a server", frame(payload(10, 1), 2, false), true, 1002, /unmasked/],
    ["a masked frame to a client", frame(payload(10, 1), 2, true), false, 1002, /masked/],
    ["a message over the limit", frame(payload(MAX + 1, 1), 2, true), true, 1009, /limit/],
    ["a continuation of nothing", frame(payload(10, 1), 0, true), true, 1002, /continu/],
    ["a reserved opcode", frame(payload(10, 1), 3, true), true, 1002, /opcode 3/],
    ["a fragmented ping", frame(payload(10, 1), 9, true, false), true, 1002, /fragmented/],
    [
      "fragments over the limit together",
      Buffer.concat([frame(payload(MAX - 10, 1), 2, true, false), frame(payload(11, 2), 0, true)]),
      true,
      1009,
      /limit/,
    ],
  ];
  for (const [what, bad, masked, code, why] of violations) {
    it(`${what}: closed with ${code}, and nothing after it is read`, () => {
      const after = frame(payload(20, 9), 2, masked);
      for (const cuts of [[], [1], [bad.length]]) {
        const seen = read(Buffer.concat([bad, after]), masked, cuts, false);
        assert.equal(seen.violations.length, 1);
        assert.equal(seen.violations[0].code, code);
        assert.match(seen.violations[0].why, why);
        assert.deepEqual(seen.messages, []);
      }
    });
  }

  it("stop() drops the rest of the input (what follows a Close)", () => {
    const close = frame(Buffer.from([0x03, 0xe8]), 8, true);
    const wire = Buffer.concat([frame(payload(10, 1), 2, true), close, frame(payload(10, 2), 2, true)]);
    const messages: Buffer[] = [];
    const reader = new FrameReader(true, MAX, {
      message: (d) => messages.push(Buffer.from(d)),
      control: (_f, opcode) => {
        if (opcode === 8) reader.stop();
      },
      violation: () => assert.fail("no violation expected"),
    });
    reader.push(Buffer.from(wire));
    assert.deepEqual(messages, [payload(10, 1)]);
  });
});
