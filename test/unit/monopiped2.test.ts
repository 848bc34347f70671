import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ProtocolError, type ProtocolErrorCode } from "../../src/protocol/errors.js";
import {
  HANDSHAKE_MESSAGE_LEN,
  HEADER_LEN,
  MAX_ABORT_REASON,
  MAX_PAYLOAD,
  Monopiped2Sealer,
  monopiped2Handshake,
  monopiped2Psk,
  PROLOGUE,
} from "../../src/protocol/monopiped2.js";
import { keyPairFromSecret, NoiseHandshake, TAGLEN } from "../../src/protocol/noise.js";
import type { Handshake, OpenEvent, RecordOpener, Session } from "../../src/protocol/types.js";

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers

const KEY_FILE = Buffer.from("monopiped2 unit test key file A\n");
const OTHER_KEY_FILE = Buffer.from("monopiped2 unit test key file B\n");
const PSK = monopiped2Psk(KEY_FILE);
const OTHER_PSK = monopiped2Psk(OTHER_KEY_FILE);

/** Fixed ephemerals (test only) make a handshake, and so every record after it, reproducible. */
const CLIENT_E = keyPairFromSecret(Buffer.alloc(32, 0x11));
const SERVER_E = keyPairFromSecret(Buffer.alloc(32, 0x22));

const MSG3_LEN = HEADER_LEN; // an empty DATA record is a lone sealed header: 3 + 16 bytes
const RUNS = { numRuns: 40 };

interface Transcript {
  msg1: Buffer;
  msg2: Buffer;
  msg3: Buffer;
  client: Session;
  server: Session;
}

/** Reads `session` through a call, so an earlier `assert.equal(hs.session, null)` does not narrow it. */
function sessionOf(hs: Handshake): Session | null {
  return hs.session;
}

function one(messages: Buffer[], what: string): Buffer {
  assert.equal(messages.length, 1, `${what}: expected exactly one message, got ${messages.length}`);
  return messages[0];
}

/** A full handshake driven message by message, checking the shape of every step. */
function handshake(opts: { psk?: Buffer; fixed?: boolean } = {}): Transcript {
  const psk = opts.psk ?? PSK;
  const client = monopiped2Handshake("client", psk, opts.fixed ? CLIENT_E : undefined);
  const server = monopiped2Handshake("server", psk, opts.fixed ? SERVER_E : undefined);
  assert.deepEqual(server.start(), []);
  const msg1 = one(client.start(), "client.start()");
  const msg2 = one(server.receive(msg1), "server.receive(msg1)");
  assert.equal(server.session, null);
  const msg3 = one(client.receive(msg2), "client.receive(msg2)");
  assert.deepEqual(server.receive(msg3), []);
  assert.ok(client.session && server.session);
  return { msg1, msg2, msg3, client: client.session, server: server.session };
}

/** Calls fn and returns the ProtocolError it throws; fails on no throw or on any other error type. */
function protocolError(fn: () => unknown, code?: ProtocolErrorCode): ProtocolError {
  let caught: unknown;
  let threw = false;
  try {
    fn();
  } catch (e) {
    caught = e;
    threw = true;
  }
  assert.ok(threw, "expected a ProtocolError, but nothing was thrown");
  assert.ok(caught instanceof ProtocolError, `expected a ProtocolError, got ${String(caught)}`);
  if (code !== undefined) assert.equal(caught.code, code, `wrong code (message: ${caught.message})`);
  return caught;
}

/** Runs fn; it may succeed or throw a ProtocolError, never anything else. Returns the error if any. */
function onlyProtocolError<T>(fn: () => T): { value?: T; error?: ProtocolError } {
  try {
    return { value: fn() };
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `expected only ProtocolError, got ${String(e)}`);
    return { error: e };
  }
}

/** Splits `wire` at the given cut points (taken modulo length+1, duplicates give empty chunks). */
function rechunk(wire: Buffer, cuts: number[]): Buffer[] {
  const points = cuts.map((c) => c % (wire.length + 1)).sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    chunks.push(wire.subarray(prev, p));
    prev = p;
  }
  chunks.push(wire.subarray(prev));
  return chunks;
}

function bytewise(wire: Buffer): Buffer[] {
  return Array.from({ length: wire.length }, (_, i) => wire.subarray(i, i + 1));
}

/**
 * One event per record: joins the pieces of a record whose ciphertext arrived in several chunks
 * (data events marked partial, then the record's last piece). Checks that pieces come only in runs
 * that end with an unmarked data event, within one push().
 */
function joinPieces(events: OpenEvent[]): OpenEvent[] {
  const out: OpenEvent[] = [];
  let pieces: Buffer[] = [];
  for (const e of events) {
    if (e.type === "data" && e.partial) {
      pieces.push(e.data);
      continue;
    }
    if (pieces.length > 0) {
      assert.equal(e.type, "data", "a record's pieces end with a data event");
      out.push({ type: "data", data: Buffer.concat([...pieces, (e as { data: Buffer }).data]) });
      pieces = [];
    } else out.push(e);
  }
  assert.equal(pieces.length, 0, "no record left in pieces at the end of a push()");
  return out;
}

function openAll(opener: RecordOpener, chunks: readonly Buffer[]): OpenEvent[] {
  const events: OpenEvent[] = [];
  for (const c of chunks) events.push(...joinPieces(opener.push(c)));
  return events;
}

function receiveAll(hs: Handshake, chunks: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) out.push(...hs.receive(c));
  return out;
}

/** Deterministic pseudo-random bytes (shrinks well: the arbitrary is just a size and a seed). */
function bytesFromSeed(size: number, seed: number): Buffer {
  return createHash("shake256", { outputLength: size }).update(`seed ${seed}`).digest();
}

function dataOf(events: OpenEvent[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of events) {
    assert.equal(e.type, "data");
    if (e.type === "data") parts.push(e.data);
  }
  return Buffer.concat(parts);
}

function flipBit(wire: Buffer, bit: number): Buffer {
  const copy = Buffer.from(wire);
  copy[bit >> 3] ^= 1 << (bit & 7);
  return copy;
}

/** A stream description: payloads (empty ones become empty DATA records) and how it ends. */
interface StreamSpec {
  payloads: Uint8Array[];
  ending: "none" | "end" | "abort";
  reason: string;
}

const streamSpec: fc.Arbitrary<StreamSpec> = fc.record({
  payloads: fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 1, maxLength: 6 }),
  ending: fc.constantFrom("none", "end", "abort"),
  reason: fc.string({ unit: "binary", maxLength: 40 }),
});

interface Stream {
  records: Buffer[];
  /** The event each record yields when opened, index for index. */
  events: OpenEvent[];
  wire: Buffer;
  /** Offsets in `wire` where a record ends (and the next one starts). */
  boundaries: number[];
}

function sealStream(session: Session, spec: StreamSpec): Stream {
  const sealer = session.sealer;
  assert.ok(sealer instanceof Monopiped2Sealer);
  const records: Buffer[] = [];
  const events: OpenEvent[] = [];
  for (const p of spec.payloads) {
    const payload = Buffer.from(p);
    const recs: Buffer[] = payload.length === 0 ? [sealer.empty()] : sealer.seal(payload);
    assert.equal(recs.length, 1);
    records.push(...recs);
    events.push({ type: "data", data: payload });
  }
  if (spec.ending === "end") {
    records.push(...sealer.end());
    events.push({ type: "end" });
  } else if (spec.ending === "abort") {
    records.push(...sealer.abort(spec.reason));
    events.push({ type: "abort", reason: spec.reason });
  }
  const boundaries: number[] = [];
  let off = 0;
  for (const r of records) {
    off += r.length;
    boundaries.push(off);
  }
  return { records, events, wire: Buffer.concat(records), boundaries };
}

// ---------------------------------------------------------------------------------------------
describe("monopiped2 handshake", () => {
  it("has the documented message sizes, and the server is authenticated-open only after msg3", () => {
    const client = monopiped2Handshake("client", PSK);
    const server = monopiped2Handshake("server", PSK);
    assert.deepEqual(server.start(), [], "the server speaks second");
    assert.equal(server.session, null);
    assert.equal(client.session, null);

    const msg1 = one(client.start(), "client.start()");
    assert.equal(msg1.length, HANDSHAKE_MESSAGE_LEN);
    assert.equal(msg1.length, 48);

    const msg2 = one(server.receive(msg1), "server.receive(msg1)");
    assert.equal(msg2.length, 48);
    assert.equal(server.session, null, "msg1 alone (replayable) must not open the server");
    assert.equal(server.buffered, 0);

    const msg3 = one(client.receive(msg2), "client.receive(msg2)");
    assert.equal(msg3.length, 19);
    assert.equal(msg3.length, MSG3_LEN);
    assert.ok(client.session);

    // msg3 one byte short: still not open.
    assert.deepEqual(server.receive(msg3.subarray(0, 18)), []);
    assert.equal(server.session, null);
    assert.equal(server.buffered, 18);
    assert.deepEqual(server.receive(msg3.subarray(18)), []);
    const serverSession = sessionOf(server);
    const clientSession = sessionOf(client);
    assert.ok(serverSession && clientSession);
    assert.equal(server.buffered, 0);

    for (const s of [clientSession, serverSession]) {
      assert.equal(s.protocol, "monopiped2");
      assert.equal(s.authenticatedEnd, true);
      assert.equal(s.fixedRecordSize, undefined);
      assert.equal(s.sealer.maxPlaintext, MAX_PAYLOAD);
    }
    assert.equal(client.takeRest().length, 0);
    assert.equal(server.takeRest().length, 0);

    // And the keys match both ways.
    const a = clientSession.sealer.seal(Buffer.from("ping"));
    assert.deepEqual(serverSession.opener.push(Buffer.concat(a)), [
      { type: "data", data: Buffer.from("ping") },
    ]);
    const b = serverSession.sealer.seal(Buffer.from("pong"));
    assert.deepEqual(clientSession.opener.push(Buffer.concat(b)), [
      { type: "data", data: Buffer.from("pong") },
    ]);
  });

  it("fresh ephemerals: two handshakes with the same psk never share messages", () => {
    const t1 = handshake();
    const t2 = handshake();
    assert.notDeepEqual(t1.msg1, t2.msg1);
    assert.notDeepEqual(t1.msg2, t2.msg2);
    assert.notDeepEqual(t1.msg3, t2.msg3);
  });

  it("server: msg1, msg3 and pipelined records in one chunk, or one byte at a time", () => {
    // Fixed ephemerals make msg3 and the records reproducible, so they can be sent ahead of msg2.
    const ref = handshake({ fixed: true });
    const records = [
      ...ref.client.sealer.seal(Buffer.from("pipelined")),
      ...ref.client.sealer.seal(bytesFromSeed(70_000, 1)),
      ...ref.client.sealer.end(),
    ];
    const expected: OpenEvent[] = [
      { type: "data", data: Buffer.from("pipelined") },
      { type: "data", data: bytesFromSeed(MAX_PAYLOAD, 1) },
      { type: "data", data: bytesFromSeed(70_000, 1).subarray(MAX_PAYLOAD) },
      { type: "end" },
    ];
    const all = Buffer.concat([ref.msg1, ref.msg3, ...records]);
    // Byte by byte through the handshake and the first record; the big records follow in one chunk.
    const head = 48 + 19 + records[0].length;

    for (const [label, chunks] of [
      ["one chunk", [all]],
      ["byte by byte", [...bytewise(all.subarray(0, head)), all.subarray(head)]],
    ] as const) {
      const server = monopiped2Handshake("server", PSK, SERVER_E);
      const out: Buffer[] = [];
      let openedAt = -1;
      let fed = 0;
      for (const c of chunks) {
        out.push(...server.receive(c));
        fed += c.length;
        if (openedAt < 0 && server.session) openedAt = fed;
      }
      assert.equal(out.length, 1, label);
      assert.deepEqual(out[0], ref.msg2, label);
      assert.ok(server.session, label);
      if (chunks.length > 1) assert.equal(openedAt, 48 + 19, `${label}: opened exactly at the end of msg3`);
      const rest = server.takeRest();
      assert.deepEqual(rest, Buffer.concat(records), label);
      assert.equal(server.takeRest().length, 0, `${label}: takeRest drains`);
      assert.deepEqual(server.session.opener.push(rest), expected, label);
      assert.equal(server.session.opener.buffered, 0);
    }
  });

  it("client: msg2 followed by server records in one chunk, or one byte at a time", () => {
    const ref = handshake({ fixed: true });
    const records = ref.server.sealer.seal(Buffer.from("early server data"));
    const all = Buffer.concat([ref.msg2, ...records]);
    for (const [label, chunks] of [
      ["one chunk", [all]],
      ["byte by byte", bytewise(all)],
    ] as const) {
      const client = monopiped2Handshake("client", PSK, CLIENT_E);
      assert.deepEqual(one(client.start(), label), ref.msg1);
      const out = receiveAll(client, chunks);
      assert.equal(out.length, 1, label);
      assert.deepEqual(out[0], ref.msg3, label);
      assert.ok(client.session, label);
      const rest = client.takeRest();
      assert.deepEqual(rest, Buffer.concat(records), label);
      assert.deepEqual(client.session.opener.push(rest), [
        { type: "data", data: Buffer.from("early server data") },
      ]);
    }
  });

  it("handshake bytes in arbitrary chunks always complete to the same session (property)", () => {
    const ref = handshake({ fixed: true });
    const tail = Buffer.concat(ref.client.sealer.seal(Buffer.from("after msg3")));
    const serverIn = Buffer.concat([ref.msg1, ref.msg3, tail]);
    fc.assert(
      fc.property(fc.array(fc.nat(), { maxLength: 12 }), (cuts) => {
        const server = monopiped2Handshake("server", PSK, SERVER_E);
        const out = receiveAll(server, rechunk(serverIn, cuts));
        assert.deepEqual(out, [ref.msg2]);
        assert.ok(server.session);
        assert.deepEqual(server.session.opener.push(server.takeRest()), [
          { type: "data", data: Buffer.from("after msg3") },
        ]);
      }),
      RUNS,
    );
  });

  it("a wrong psk is refused at msg1 with bad-handshake, and the server sends nothing", () => {
    const client = monopiped2Handshake("client", OTHER_PSK);
    const server = monopiped2Handshake("server", PSK);
    const msg1 = one(client.start(), "client.start()");
    // Short of a whole msg1 nothing happens yet.
    assert.deepEqual(server.receive(msg1.subarray(0, 47)), []);
    assert.equal(server.buffered, 47);
    protocolError(() => server.receive(msg1.subarray(47)), "bad-handshake");
    assert.equal(server.session, null);

    // In one chunk too, and for arbitrary pairs of distinct key files.
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 64 }), (a, b) => {
        fc.pre(!Buffer.from(a).equals(Buffer.from(b)));
        const c = monopiped2Handshake("client", monopiped2Psk(Buffer.from(a)));
        const s = monopiped2Handshake("server", monopiped2Psk(Buffer.from(b)));
        let out: Buffer[] | undefined;
        protocolError(() => {
          out = s.receive(one(c.start(), "start"));
        }, "bad-handshake");
        assert.equal(out, undefined);
        assert.equal(s.session, null);
      }),
      { numRuns: 20 },
    );
  });

  it("a replayed msg1 gets a msg2, but the recorded msg3 (and records) cannot open the server", () => {
    const old = handshake();
    const oldRecords = old.client.sealer.seal(Buffer.from("GET /secret"));

    const server = monopiped2Handshake("server", PSK);
    const msg2 = one(server.receive(old.msg1), "server.receive(replayed msg1)");
    assert.equal(msg2.length, 48);
    assert.notDeepEqual(msg2, old.msg2, "a fresh server ephemeral");
    assert.equal(server.session, null);
    protocolError(() => server.receive(Buffer.concat([old.msg3, ...oldRecords])), "key-confirmation");
    assert.equal(server.session, null);

    // msg3 alone, byte by byte: the error comes exactly with the 19th byte.
    const server2 = monopiped2Handshake("server", PSK);
    one(server2.receive(old.msg1), "server2.receive(replayed msg1)");
    for (let i = 0; i < 18; i++) assert.deepEqual(server2.receive(old.msg3.subarray(i, i + 1)), []);
    protocolError(() => server2.receive(old.msg3.subarray(18)), "key-confirmation");
    assert.equal(server2.session, null);
  });

  it("msg1 reflected back to the client is refused", () => {
    const client = monopiped2Handshake("client", PSK);
    const msg1 = one(client.start(), "client.start()");
    protocolError(() => client.receive(msg1), "bad-handshake");
    assert.equal(client.session, null);
  });

  it("a degenerate (low-order) server ephemeral is refused", () => {
    const lowOrder = [
      "0000000000000000000000000000000000000000000000000000000000000000",
      "0100000000000000000000000000000000000000000000000000000000000000",
      "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
      "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for (const hex of lowOrder) {
      const client = monopiped2Handshake("client", PSK);
      client.start();
      protocolError(
        () => client.receive(Buffer.concat([Buffer.from(hex, "hex"), Buffer.alloc(16)])),
        "bad-handshake",
      );
      assert.equal(client.session, null);
    }
  });

  it("every single bit flip in msg1, msg2 (bad-handshake) or msg3 (key-confirmation) is refused (exhaustive)", () => {
    const ref = handshake({ fixed: true });
    for (let bit = 0; bit < 48 * 8; bit++) {
      const server = monopiped2Handshake("server", PSK, SERVER_E);
      protocolError(() => server.receive(flipBit(ref.msg1, bit)), "bad-handshake");
    }
    for (let bit = 0; bit < 48 * 8; bit++) {
      const client = monopiped2Handshake("client", PSK, CLIENT_E);
      client.start();
      protocolError(() => client.receive(flipBit(ref.msg2, bit)), "bad-handshake");
      assert.equal(client.session, null);
    }
    for (let bit = 0; bit < MSG3_LEN * 8; bit++) {
      const server = monopiped2Handshake("server", PSK, SERVER_E);
      assert.deepEqual(server.receive(ref.msg1), [ref.msg2]);
      protocolError(() => server.receive(flipBit(ref.msg3, bit)), "key-confirmation");
      assert.equal(server.session, null);
    }
  });

  it("a non-empty or non-DATA first client record is not a valid msg3", () => {
    // A client built from the Noise layer directly, so its first record (nonce 0) can be anything.
    const makers: [string, (s: Monopiped2Sealer) => Buffer[]][] = [
      ["data", (s) => s.seal(Buffer.from("x"))],
      ["end", (s) => s.end()],
      ["abort", (s) => s.abort("no")],
      ["empty", (s) => [s.empty()]], // control: the genuine msg3
    ];
    for (const [name, make] of makers) {
      const fake = new NoiseHandshake({
        pattern: "NNpsk0",
        hash: "BLAKE2b",
        initiator: true,
        prologue: PROLOGUE,
        psk: PSK,
      });
      const server = monopiped2Handshake("server", PSK);
      const msg2 = one(server.receive(fake.writeMessage(Buffer.alloc(0))), name);
      fake.readMessage(msg2);
      const first = Buffer.concat(make(new Monopiped2Sealer(fake.split().send)));
      if (name === "empty") {
        assert.deepEqual(server.receive(first), []);
        assert.ok(server.session);
      } else {
        protocolError(() => server.receive(first), "bad-handshake");
        assert.equal(server.session, null, name);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe("monopiped2 records", () => {
  const payloadSize = fc.oneof(
    fc.constantFrom(0, 1, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD, 200 * 1024),
    fc.integer({ min: 0, max: 200 * 1024 }),
  );

  it("round trip of 0..200 KiB, split into <= 65535-byte records, under arbitrary re-chunking (property)", () => {
    fc.assert(
      fc.property(
        payloadSize,
        fc.integer(),
        fc.array(fc.nat(), { maxLength: 24 }),
        fc.boolean(),
        (size, seed, cuts, fromServer) => {
          const t = handshake();
          const [tx, rx] = fromServer ? [t.server, t.client] : [t.client, t.server];
          const payload = bytesFromSeed(size, seed);
          const records = tx.sealer.seal(payload);
          const n = Math.ceil(size / MAX_PAYLOAD);
          assert.equal(records.length, n);
          records.forEach((r, i) => {
            const len = i < n - 1 ? MAX_PAYLOAD : size - MAX_PAYLOAD * (n - 1);
            assert.equal(r.length, HEADER_LEN + len + TAGLEN, `record ${i}`);
          });
          const events = openAll(rx.opener, rechunk(Buffer.concat(records), cuts));
          assert.equal(events.length, n);
          for (const e of events)
            assert.ok(e.type === "data" && e.data.length <= MAX_PAYLOAD && e.data.length > 0);
          assert.deepEqual(dataOf(events), payload);
          assert.equal(rx.opener.buffered, 0);
        },
      ),
      { numRuns: 30 },
    );
  });

  it("seal(plain, carried) makes the records of carried ‖ plain without joining them (property)", () => {
    fc.assert(
      fc.property(fc.nat({ max: MAX_PAYLOAD - 1 }), payloadSize, fc.integer(), (carriedLen, size, seed) => {
        const t = handshake();
        const carried = bytesFromSeed(carriedLen, seed);
        const plain = bytesFromSeed(size, seed + 1);
        const whole = Buffer.concat([carried, plain]);
        const records = t.client.sealer.seal(plain, carried);
        const n = Math.ceil(whole.length / MAX_PAYLOAD);
        assert.equal(records.length, n);
        records.forEach((r, i) => {
          const len = i < n - 1 ? MAX_PAYLOAD : whole.length - MAX_PAYLOAD * (n - 1);
          assert.equal(r.length, HEADER_LEN + len + TAGLEN, `record ${i}`);
        });
        assert.deepEqual(dataOf(openAll(t.server.opener, records)), whole);
      }),
      { numRuns: 30 },
    );
  });

  it("many seal() calls interleaved both ways stay in step", () => {
    const t = handshake();
    for (let i = 0; i < 50; i++) {
      const up = bytesFromSeed(i * 37, i);
      const down = bytesFromSeed(i * 53, -i);
      assert.deepEqual(dataOf(t.server.opener.push(Buffer.concat(t.client.sealer.seal(up)))), up);
      assert.deepEqual(dataOf(t.client.opener.push(Buffer.concat(t.server.sealer.seal(down)))), down);
    }
  });

  it("end() is one 19-byte record that yields an end event; anything after it is after-end", () => {
    const t = handshake();
    const end = t.client.sealer.end();
    assert.equal(end.length, 1);
    assert.equal(end[0].length, HEADER_LEN);
    assert.deepEqual(t.server.opener.push(end[0]), [{ type: "end" }]);
    assert.equal(t.server.opener.buffered, 0);
    assert.deepEqual(t.server.opener.push(Buffer.alloc(0)), [], "an empty push after end is harmless");
    protocolError(
      () => t.server.opener.push(Buffer.concat(t.client.sealer.seal(Buffer.from("late")))),
      "after-end",
    );
    // Bytes after END may be the start of one ABORT: held until a whole header is in, then refused.
    const t2 = handshake();
    t2.server.opener.push(Buffer.concat(t2.client.sealer.end()));
    assert.deepEqual(t2.server.opener.push(Buffer.of(0)), []);
    protocolError(() => t2.server.opener.push(Buffer.alloc(HEADER_LEN - 1)), "bad-record");
  });

  it("bytes in the same chunk right after the end record are after-end", () => {
    const t = handshake();
    const s = t.client.sealer;
    const wire = Buffer.concat([...s.seal(Buffer.from("a")), ...s.end(), ...s.seal(Buffer.from("b"))]);
    protocolError(() => t.server.opener.push(wire), "after-end");
    // Garbage after END in the same chunk: refused once a whole header is in.
    const t2 = handshake();
    protocolError(
      () => t2.server.opener.push(Buffer.concat([...t2.client.sealer.end(), Buffer.alloc(HEADER_LEN)])),
      "bad-record",
    );
  });

  it("the other direction keeps working after one direction ended", () => {
    const t = handshake();
    assert.deepEqual(t.server.opener.push(Buffer.concat(t.client.sealer.end())), [{ type: "end" }]);
    const reply = Buffer.from("still here");
    assert.deepEqual(t.client.opener.push(Buffer.concat(t.server.sealer.seal(reply))), [
      { type: "data", data: reply },
    ]);
  });

  it('abort("reason") yields {type:"abort", reason}; nothing may follow', () => {
    const t = handshake();
    const rec = t.server.sealer.abort("target refused the connection");
    assert.equal(rec.length, 1);
    assert.deepEqual(t.client.opener.push(rec[0]), [
      { type: "abort", reason: "target refused the connection" },
    ]);
    assert.equal(t.client.opener.buffered, 0);
    protocolError(
      () => t.client.opener.push(Buffer.concat(t.server.sealer.seal(Buffer.from("x")))),
      "after-end",
    );

    const t2 = handshake();
    assert.deepEqual(t2.client.opener.push(Buffer.concat(t2.server.sealer.abort(""))), [
      { type: "abort", reason: "" },
    ]);
  });

  it("abort reasons round trip (unicode, property) and are capped at 1024 bytes", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), (reason) => {
        fc.pre(Buffer.byteLength(reason) <= MAX_ABORT_REASON);
        const t = handshake();
        assert.deepEqual(t.server.opener.push(Buffer.concat(t.client.sealer.abort(reason))), [
          { type: "abort", reason },
        ]);
      }),
      { numRuns: 20 },
    );
    const t = handshake();
    const events = t.server.opener.push(Buffer.concat(t.client.sealer.abort("x".repeat(5000))));
    assert.deepEqual(events, [{ type: "abort", reason: "x".repeat(MAX_ABORT_REASON) }]);
  });

  it("buffered is 0 exactly at record boundaries and counts the bytes of a partial record", () => {
    const t = handshake();
    const s = t.client.sealer as Monopiped2Sealer;
    const records = [
      ...s.seal(Buffer.from("hello")),
      s.empty(),
      ...s.seal(bytesFromSeed(300, 7)),
      ...s.abort("bye"),
    ];
    const boundaries = new Set<number>();
    let off = 0;
    for (const r of records) {
      off += r.length;
      boundaries.add(off);
    }
    const wire = Buffer.concat(records);
    const events: OpenEvent[] = [];
    let lastBoundary = 0;
    for (let i = 0; i < wire.length; i++) {
      const got = joinPieces(t.server.opener.push(wire.subarray(i, i + 1)));
      events.push(...got);
      const fed = i + 1;
      if (boundaries.has(fed)) {
        lastBoundary = fed;
        assert.equal(t.server.opener.buffered, 0, `at boundary ${fed}`);
        assert.equal(got.length, 1, `one event completes at boundary ${fed}`);
      } else {
        assert.equal(got.length, 0, `no event mid-record at ${fed}`);
        assert.equal(t.server.opener.buffered, fed - lastBoundary, `at ${fed}`);
        assert.ok(t.server.opener.buffered > 0);
      }
    }
    assert.deepEqual(events, [
      { type: "data", data: Buffer.from("hello") },
      { type: "data", data: Buffer.alloc(0) },
      { type: "data", data: bytesFromSeed(300, 7) },
      { type: "abort", reason: "bye" },
    ]);
  });

  it("a record whose ciphertext arrives in pieces releases nothing before its tag, then its plaintext in one piece", () => {
    const t = handshake();
    const payload = bytesFromSeed(50_000, 3);
    const [record] = t.client.sealer.seal(payload);
    const cuts = [HEADER_LEN + 10_000, HEADER_LEN + 30_000, record.length - 1];
    let at = 0;
    for (const cut of cuts) {
      assert.deepEqual(t.server.opener.push(record.subarray(at, cut)), [], `nothing released at ${cut}`);
      at = cut;
    }
    const events = t.server.opener.push(record.subarray(at));
    assert.equal(events.length, 1, "one event for the record");
    assert.deepEqual(dataOf(events), payload);
    // The same record with its tag damaged releases none of it.
    const t2 = handshake();
    const [bad] = t2.client.sealer.seal(payload);
    bad[bad.length - 1] ^= 1;
    assert.deepEqual(t2.server.opener.push(bad.subarray(0, HEADER_LEN + 20_000)), []);
    protocolError(() => t2.server.opener.push(bad.subarray(HEADER_LEN + 20_000)), "bad-record");
  });

  it("push() keeps no reference to its input: a reader may reuse the buffer between pushes", () => {
    const t = handshake();
    const payload = bytesFromSeed(70_000, 5);
    const wire = Buffer.concat(t.client.sealer.seal(payload));
    const reused = Buffer.alloc(4096);
    const out: Buffer[] = [];
    for (let at = 0; at < wire.length; at += reused.length) {
      const n = wire.copy(reused, 0, at);
      for (const ev of t.server.opener.push(reused.subarray(0, n))) if (ev.type === "data") out.push(ev.data);
      reused.fill(0xa5); // what the next read would do to bytes an opener kept a view of
    }
    assert.deepEqual(Buffer.concat(out), payload);
    assert.equal(t.server.opener.buffered, 0);
  });

  it("seal(empty) makes no record; empty() makes a 19-byte record that opens to empty data", () => {
    const t = handshake();
    assert.deepEqual(t.client.sealer.seal(Buffer.alloc(0)), []);
    const s = t.client.sealer as Monopiped2Sealer;
    const e = s.empty();
    assert.equal(e.length, HEADER_LEN);
    assert.deepEqual(t.server.opener.push(e), [{ type: "data", data: Buffer.alloc(0) }]);
  });
});

// ---------------------------------------------------------------------------------------------
describe("monopiped2 tampering (properties)", () => {
  it("any single bit flip in a stream of records is a bad-record ProtocolError, never silent", () => {
    fc.assert(
      fc.property(streamSpec, fc.nat(), fc.array(fc.nat(), { maxLength: 8 }), (spec, bitSeed, cuts) => {
        const t = handshake();
        const stream = sealStream(t.client, spec);
        const bit = bitSeed % (stream.wire.length * 8);
        const flipped = flipBit(stream.wire, bit);
        const seen: OpenEvent[] = [];
        protocolError(() => {
          for (const c of rechunk(flipped, cuts)) seen.push(...joinPieces(t.server.opener.push(c)));
        }, "bad-record");
        // Whatever came out before the error is a prefix of the untampered events, and stops before
        // the record holding the flipped bit.
        const damaged = stream.boundaries.findIndex((b) => b > bit >> 3);
        assert.ok(seen.length <= damaged);
        assert.deepEqual(seen, stream.events.slice(0, seen.length));
      }),
      { numRuns: 150 },
    );
  });

  it("truncation inside a record yields only the whole records' events and buffered > 0", () => {
    fc.assert(
      fc.property(streamSpec, fc.nat(), fc.array(fc.nat(), { maxLength: 8 }), (spec, cutSeed, cuts) => {
        const t = handshake();
        const stream = sealStream(t.client, spec);
        const k = cutSeed % (stream.wire.length + 1);
        const events = openAll(t.server.opener, rechunk(stream.wire.subarray(0, k), cuts));
        const whole = stream.boundaries.filter((b) => b <= k).length;
        assert.deepEqual(events, stream.events.slice(0, whole));
        const atBoundary = k === 0 || stream.boundaries.includes(k);
        if (atBoundary) assert.equal(t.server.opener.buffered, 0);
        else assert.equal(t.server.opener.buffered, k - (whole === 0 ? 0 : stream.boundaries[whole - 1]));
        assert.equal(atBoundary, t.server.opener.buffered === 0);
      }),
      RUNS,
    );
  });

  const multi = fc.record({
    payloads: fc.array(fc.uint8Array({ maxLength: 100 }), { minLength: 2, maxLength: 6 }),
    ending: fc.constantFrom<StreamSpec["ending"]>("none", "end", "abort"),
    reason: fc.constant("r"),
  });

  it("swapping two records is a bad-record ProtocolError", () => {
    fc.assert(
      fc.property(multi, fc.nat(), fc.nat(), (spec, a, b) => {
        const t = handshake();
        const stream = sealStream(t.client, spec);
        const n = stream.records.length;
        const i = a % n;
        let j = b % n;
        if (j === i) j = (i + 1) % n;
        const recs = [...stream.records];
        [recs[i], recs[j]] = [recs[j], recs[i]];
        const seen: OpenEvent[] = [];
        protocolError(() => {
          for (const r of recs) seen.push(...t.server.opener.push(r));
        }, "bad-record");
        assert.deepEqual(seen, stream.events.slice(0, Math.min(i, j)));
      }),
      RUNS,
    );
  });

  it("replaying (duplicating) or dropping a record is a bad-record ProtocolError", () => {
    fc.assert(
      fc.property(multi, fc.nat(), fc.nat(), fc.boolean(), (spec, a, b, drop) => {
        const t = handshake();
        const stream = sealStream(t.client, spec);
        const n = stream.records.length;
        const recs = [...stream.records];
        if (drop) {
          // Dropping the last record is a truncation (no error yet); drop any other.
          const i = a % (n - 1);
          recs.splice(i, 1);
        } else {
          const i = a % n;
          const at = i + 1 + (b % (n - i)); // re-insert the copy anywhere after the original
          recs.splice(at, 0, stream.records[i]);
        }
        protocolError(() => openAll(t.server.opener, [Buffer.concat(recs)]));
      }),
      RUNS,
    );
  });

  it("a replayed record is refused even when it is the very next thing on the wire", () => {
    const t = handshake();
    const [r] = t.client.sealer.seal(Buffer.from("pay 100"));
    assert.deepEqual(t.server.opener.push(r), [{ type: "data", data: Buffer.from("pay 100") }]);
    protocolError(() => t.server.opener.push(r), "bad-record");
  });

  it("records reflected back to their sender, or spliced from another session, are refused", () => {
    fc.assert(
      fc.property(streamSpec, fc.boolean(), (spec, fromServer) => {
        const t = handshake();
        const [tx] = fromServer ? [t.server, t.client] : [t.client, t.server];
        const stream = sealStream(tx, spec);
        protocolError(() => tx.opener.push(stream.wire), "bad-record");
        // Same psk, other session (different ephemerals) in the same direction.
        const other = handshake();
        const rx = fromServer ? other.client : other.server;
        protocolError(() => rx.opener.push(stream.wire), "bad-record");
      }),
      { numRuns: 20 },
    );
  });

  const garbage = fc.oneof(
    fc.uint8Array({ maxLength: 200 }),
    fc.constantFrom(Buffer.alloc(48), Buffer.alloc(48, 0xff), Buffer.alloc(200), Buffer.alloc(19, 0xff)),
  );

  it("garbage to a fresh server handshake: bad-handshake once a whole msg1 is in, nothing before", () => {
    fc.assert(
      fc.property(garbage, fc.array(fc.nat(), { maxLength: 6 }), (g, cuts) => {
        const bytes = Buffer.from(g);
        const server = monopiped2Handshake("server", PSK);
        const r = onlyProtocolError(() => receiveAll(server, rechunk(bytes, cuts)));
        assert.equal(server.session, null);
        if (bytes.length >= HANDSHAKE_MESSAGE_LEN) {
          assert.equal(r.error?.code, "bad-handshake");
        } else {
          assert.deepEqual(r.value, []);
          assert.equal(server.buffered, bytes.length);
        }
      }),
      { numRuns: 100 },
    );
  });

  it("garbage to a client handshake after start(): bad-handshake once a whole msg2 is in", () => {
    fc.assert(
      fc.property(garbage, fc.array(fc.nat(), { maxLength: 6 }), (g, cuts) => {
        const bytes = Buffer.from(g);
        const client = monopiped2Handshake("client", PSK);
        client.start();
        const r = onlyProtocolError(() => receiveAll(client, rechunk(bytes, cuts)));
        assert.equal(client.session, null);
        if (bytes.length >= HANDSHAKE_MESSAGE_LEN) {
          assert.equal(r.error?.code, "bad-handshake");
        } else {
          assert.deepEqual(r.value, []);
          assert.equal(client.buffered, bytes.length);
        }
      }),
      { numRuns: 100 },
    );
  });

  it("garbage after a valid msg1 (in place of msg3) is key-confirmation, and never opens the server", () => {
    fc.assert(
      fc.property(garbage, (g) => {
        const bytes = Buffer.from(g);
        const client = monopiped2Handshake("client", PSK);
        const server = monopiped2Handshake("server", PSK);
        server.receive(one(client.start(), "start"));
        const r = onlyProtocolError(() => server.receive(bytes));
        assert.equal(server.session, null);
        if (bytes.length >= MSG3_LEN) assert.equal(r.error?.code, "key-confirmation");
        else assert.deepEqual(r.value, []);
      }),
      { numRuns: 60 },
    );
  });

  it("garbage to an opener: bad-record once a whole header is in, nothing before", () => {
    fc.assert(
      fc.property(garbage, fc.array(fc.nat(), { maxLength: 6 }), (g, cuts) => {
        const bytes = Buffer.from(g);
        const t = handshake();
        const r = onlyProtocolError(() => openAll(t.server.opener, rechunk(bytes, cuts)));
        if (bytes.length >= HEADER_LEN) {
          assert.equal(r.error?.code, "bad-record");
        } else {
          assert.deepEqual(r.value, []);
          assert.equal(t.server.opener.buffered, bytes.length);
        }
      }),
      { numRuns: 60 },
    );
  });

  it("garbage appended after valid records: the good records open, then bad-record", () => {
    fc.assert(
      fc.property(streamSpec, fc.uint8Array({ minLength: HEADER_LEN, maxLength: 100 }), (spec, g) => {
        fc.pre(spec.ending === "none");
        const t = handshake();
        const stream = sealStream(t.client, spec);
        assert.deepEqual(t.server.opener.push(stream.wire), stream.events);
        protocolError(() => t.server.opener.push(Buffer.from(g)), "bad-record");
      }),
      { numRuns: 30 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
describe("monopiped2 nonces", () => {
  it("identical payloads never give repeated header or body ciphertexts", () => {
    const t = handshake();
    const s = t.client.sealer as Monopiped2Sealer;
    const payload = Buffer.from("the same payload every time");
    const headers = new Set<string>();
    const bodies = new Set<string>();
    const N = 300;
    const wire: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const recs = i % 3 === 2 ? [s.empty()] : s.seal(payload);
      assert.equal(recs.length, 1);
      const r = recs[0];
      wire.push(r);
      headers.add(r.subarray(0, HEADER_LEN).toString("hex"));
      if (r.length > HEADER_LEN) {
        assert.equal(r.length, HEADER_LEN + payload.length + TAGLEN);
        bodies.add(r.subarray(HEADER_LEN).toString("hex"));
      }
    }
    assert.equal(headers.size, N, "every header ciphertext is distinct");
    assert.equal(bodies.size, N - Math.floor(N / 3), "every body ciphertext is distinct");
    // And the receiver accepts them all, in order.
    const events = t.server.opener.push(Buffer.concat(wire));
    assert.equal(events.length, N);

    // The other direction, same plaintext: different key, different ciphertexts.
    const down = t.server.sealer.seal(payload)[0];
    assert.ok(!headers.has(down.subarray(0, HEADER_LEN).toString("hex")));
    assert.ok(!bodies.has(down.subarray(HEADER_LEN).toString("hex")));
  });

  it("equal plaintexts never give equal body ciphertexts (no keystream reuse), pairwise", () => {
    const t = handshake();
    const s = t.client.sealer;
    const plain = Buffer.alloc(64, 0x41);
    const bodies = Array.from({ length: 20 }, () => s.seal(plain)[0].subarray(HEADER_LEN, HEADER_LEN + 64));
    for (let i = 0; i < bodies.length; i++) {
      for (let j = i + 1; j < bodies.length; j++) assert.notDeepEqual(bodies[i], bodies[j]);
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe("monopiped2Psk", () => {
  it("is 32 bytes and deterministic", () => {
    assert.equal(PSK.length, 32);
    assert.deepEqual(monopiped2Psk(Buffer.from(KEY_FILE)), PSK);
    assert.equal(monopiped2Psk(Buffer.alloc(0)).length, 32);
    assert.equal(monopiped2Psk(Buffer.alloc(1 << 20, 7)).length, 32);
    // Domain-separated: neither the key file itself nor its plain hash.
    const plainHash = createHash("blake2b512").update(KEY_FILE).digest().subarray(0, 32);
    assert.notDeepEqual(PSK, plainHash);
    // HMAC-BLAKE2b keyed by the label, as documented in the source.
    assert.deepEqual(
      PSK,
      createHmac("blake2b512", Buffer.from("monopiped2 psk")).update(KEY_FILE).digest().subarray(0, 32),
    );
  });

  it("differs for different key files and is stable for equal ones (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 128 }), fc.uint8Array({ maxLength: 128 }), (a, b) => {
        const pa = monopiped2Psk(Buffer.from(a));
        const pb = monopiped2Psk(Buffer.from(b));
        assert.equal(pa.length, 32);
        assert.deepEqual(monopiped2Psk(Buffer.from(a)), pa);
        assert.equal(pa.equals(pb), Buffer.from(a).equals(Buffer.from(b)));
      }),
      { numRuns: 200 },
    );
    assert.notDeepEqual(PSK, OTHER_PSK);
    // One trailing byte (e.g. a newline) makes another key.
    assert.notDeepEqual(monopiped2Psk(Buffer.from("key")), monopiped2Psk(Buffer.from("key\n")));
  });

  it("equal key files (distinct buffers) complete a handshake; the psk buffer is not consumed", () => {
    const c = monopiped2Psk(Buffer.from(KEY_FILE));
    const copy = Buffer.from(c);
    const t = handshake({ psk: c });
    assert.deepEqual(c, copy);
    assert.ok(t.client && t.server);
  });
});
