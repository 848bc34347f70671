import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { arena } from "../../src/protocol/arena.js";
import { frameMasked, frameUnmasked } from "../../src/transport/ws-frame.js";
import { Receiver, Sender } from "../helpers/ws-lib.js";

const SIZES = [0, 1, 47, 48, 125, 126, 1060, 16383, 16384, 65535, 65536, 65570, 200_000];

function payload(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** Feed `bytes` to a ws Receiver (a server's for masked frames) in pieces; the messages it parsed. */
function parse(frames: Buffer, isServer: boolean, piece = 7919): Buffer[] {
  const bytes = Buffer.from(frames); // ws unmasks in place
  const r = new Receiver({ isServer, maxPayload: 0 });
  const got: Buffer[] = [];
  r.on("message", (data, isBinary) => {
    assert.equal(isBinary, true);
    got.push(Buffer.from(data));
  });
  r.on("error", (err) => assert.fail(err));
  for (let i = 0; i < bytes.length; i += piece) r.write(bytes.subarray(i, i + piece));
  return got;
}

describe("WebSocket framing of a batch (ws-frame)", () => {
  it("a server's frames are byte for byte what ws sends, in as few pieces as the sizes allow", () => {
    const chunks = SIZES.map((n, i) => payload(n, i));
    const pieces = frameUnmasked(chunks);
    const ours = Buffer.concat(pieces);
    const theirs = Buffer.concat(
      chunks.flatMap((c) =>
        Sender.frame(c, { fin: true, opcode: 2, mask: false, readOnly: true, rsv1: false }),
      ),
    );
    assert.ok(ours.equals(theirs));
    // Payloads under 16 KiB ride in the header buffer; each larger one is a piece of its own,
    // written as it is (not copied).
    const large = chunks.filter((c) => c.length >= 16384);
    assert.equal(pieces.length, 2 * large.length); // the last one is large: no header piece after it
    for (const c of large) assert.ok(pieces.includes(c));
    assert.deepEqual(parse(ours, false), chunks);
  });

  it("a client's frames are ws's with a fresh masking key each, and a ws server reads them", () => {
    const chunks = SIZES.map((n, i) => payload(n, i + 100));
    const ours = Buffer.from(frameMasked(chunks));
    assert.deepEqual(parse(ours, true), chunks);
    const keys = new Set<string>();
    let off = 0;
    for (const c of chunks) {
      const [hdr] = Sender.frame(c, { fin: true, opcode: 2, mask: false, readOnly: true, rsv1: false });
      // Same header as ws's unmasked one but for the MASK bit, then the key, then the masked payload.
      assert.equal(ours[off], hdr[0]);
      assert.equal(ours[off + 1], hdr[1] | 0x80);
      assert.ok(ours.subarray(off + 2, off + hdr.length).equals(hdr.subarray(2)));
      off += hdr.length;
      const key = ours.subarray(off, off + 4);
      keys.add(key.toString("hex"));
      off += 4;
      for (let i = 0; i < c.length; i++) assert.equal(ours[off + i] ^ key[i & 3], c[i]);
      off += c.length;
    }
    assert.equal(off, ours.length);
    assert.equal(keys.size, chunks.length);
  });

  it("a client's frames are lent from the arena inside a pump's operation, reused only once written whole", () => {
    arena.begin();
    const a = frameMasked([payload(1000, 1)]);
    arena.end(true); // written whole: free again
    arena.begin();
    const b = frameMasked([payload(1000, 2)]);
    arena.end(false); // still queued in the socket: must not be overwritten
    assert.equal(b.buffer, a.buffer);
    assert.equal(b.byteOffset, a.byteOffset);
    const keep = Buffer.from(b);
    arena.begin();
    const c = frameMasked([payload(1000, 3)]);
    arena.end(true);
    assert.ok(c.buffer !== b.buffer || c.byteOffset >= b.byteOffset + b.length);
    assert.ok(b.equals(keep));
    // Outside an operation: fresh memory, never the arena's.
    const d = frameMasked([payload(1000, 4)]);
    assert.notEqual(d.buffer, c.buffer);
    assert.deepEqual(parse(d, true), [payload(1000, 4)]);
  });

  it("a server's frames are lent from the arena inside a pump's operation, fresh memory outside", () => {
    arena.begin();
    const [a] = frameUnmasked([payload(1000, 1)]);
    arena.end(true);
    arena.begin();
    const [b] = frameUnmasked([payload(1000, 2)]);
    arena.end(false);
    assert.equal(b.buffer, a.buffer);
    const keep = Buffer.from(b);
    arena.begin();
    const [c] = frameUnmasked([payload(1000, 3)]);
    arena.end(true);
    assert.ok(c.buffer !== b.buffer || c.byteOffset >= b.byteOffset + b.length);
    assert.ok(b.equals(keep));
    const [d] = frameUnmasked([payload(1000, 4)]);
    assert.notEqual(d.buffer, c.buffer);
  });
});
