/**
 * The spiped protocol core. There are no published spiped test vectors, so the independent checks
 * are (a) the formulas of shared/protocols/spiped.md recomputed here with node:crypto directly
 * (PBKDF2, HMAC, AES-256-CTR with the IV be64(pnum) ‖ 0), never with the module's own helpers, and
 * (b) the real spiped binary in test/e2e/spiped.test.ts.
 */
import assert from "node:assert/strict";
import { createCipheriv, createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ProtocolError } from "../../src/protocol/errors.js";
import { createHandshake, loadProtocols, prepareKeys } from "../../src/protocol/index.js";
import {
  _internal,
  DH_MESSAGE_LEN,
  GROUP14_PRIME,
  PACKET_LEN,
  type SpipedOptions,
  spipedHandshake,
  spipedKey,
} from "../../src/protocol/spiped.js";
import type { Handshake, OpenEvent, Session } from "../../src/protocol/types.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

const KEY_FILE = randomBytes(48);
const K = createHash("sha256").update(KEY_FILE).digest(); // §1, computed here, not by the module
/** RFC 3526 group 14, typed from the RFC (not taken from OpenSSL, which the module uses). */
const RFC3526_P = Buffer.from(
  "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD" +
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED" +
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F" +
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B" +
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510" +
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
  "hex",
);
const Y_ONE = Buffer.alloc(256);
Y_ONE[255] = 1;

interface Wire {
  nonceC: Buffer;
  nonceS: Buffer;
  dhC: Buffer;
  dhS: Buffer;
}

/** Runs a handshake to completion in the order of §2, recording every message. */
function connect(
  clientOpts: SpipedOptions = {},
  serverOpts: SpipedOptions = {},
): { client: Session; server: Session; wire: Wire } {
  const c = spipedHandshake("client", K, clientOpts);
  const s = spipedHandshake("server", K, serverOpts);
  const [nonceC] = c.start();
  const [nonceS] = s.start();
  assert.equal(nonceC.length, 32);
  assert.equal(nonceS.length, 32);
  assert.deepEqual(s.receive(nonceC), [], "the server waits for the client's DH message");
  const [dhC] = c.receive(nonceS);
  assert.equal(dhC.length, DH_MESSAGE_LEN);
  const [dhS] = s.receive(dhC);
  assert.equal(dhS.length, DH_MESSAGE_LEN);
  assert.ok(s.session, "the server has a session once it sent its DH message");
  assert.deepEqual(c.receive(dhS), []);
  assert.ok(c.session);
  return { client: c.session, server: s.session, wire: { nonceC, nonceS, dhC, dhS } };
}

function dk1(nonceC: Buffer, nonceS: Buffer) {
  const dk = pbkdf2Sync(K, Buffer.concat([nonceC, nonceS]), 1, 64, "sha256");
  return { client: dk.subarray(0, 32), server: dk.subarray(32) };
}

function dk2(wire: Wire, ySC: Buffer) {
  const dk = pbkdf2Sync(K, Buffer.concat([wire.nonceC, wire.nonceS, ySC]), 1, 128, "sha256");
  return {
    toServer: { E: dk.subarray(0, 32), H: dk.subarray(32, 64) },
    toClient: { E: dk.subarray(64, 96), H: dk.subarray(96, 128) },
  };
}

const be64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
};

/** A packet built straight from §3 with node:crypto's AES-256-CTR. `len` defaults to data.length. */
function specPacket(keys: { E: Buffer; H: Buffer }, pnum: bigint, data: Buffer, len = data.length): Buffer {
  const padded = Buffer.alloc(1028);
  data.copy(padded);
  padded.writeUInt32BE(len, 1024);
  const iv = Buffer.concat([be64(pnum), Buffer.alloc(8)]);
  const enc = createCipheriv("aes-256-ctr", keys.E, iv).update(padded);
  const mac = createHmac("sha256", keys.H).update(enc).update(be64(pnum)).digest();
  return Buffer.concat([enc, mac]);
}

/** Opens a packet straight from §3; returns the data. */
function specOpen(keys: { E: Buffer; H: Buffer }, pnum: bigint, packet: Buffer): Buffer {
  assert.equal(packet.length, 1060);
  const enc = packet.subarray(0, 1028);
  const mac = createHmac("sha256", keys.H).update(enc).update(be64(pnum)).digest();
  assert.ok(mac.equals(packet.subarray(1028)), `MAC of packet ${pnum}`);
  const iv = Buffer.concat([be64(pnum), Buffer.alloc(8)]);
  const padded = createCipheriv("aes-256-ctr", keys.E, iv).update(enc);
  const len = padded.readUInt32BE(1024);
  assert.ok(len >= 1 && len <= 1024);
  assert.ok(
    padded.subarray(len, 1024).every((b) => b === 0),
    "padding is zero",
  );
  return padded.subarray(0, len);
}

function dataOf(events: OpenEvent[]): Buffer {
  return Buffer.concat(
    events.map((e) => {
      assert.equal(e.type, "data");
      return e.type === "data" ? e.data : Buffer.alloc(0);
    }),
  );
}

const isProtocolError = (err: unknown) => err instanceof ProtocolError;

describe("spiped keys and handshake", () => {
  it("K is SHA-256 of the key file; the group is RFC 3526's 2048-bit MODP prime", () => {
    assert.ok(spipedKey(KEY_FILE).equals(K));
    assert.ok(prepareKeys(KEY_FILE).spiped.equals(K));
    assert.ok(GROUP14_PRIME.equals(RFC3526_P));
  });

  it("completes between our client and server; the DH messages follow §2", () => {
    const { client, server, wire } = connect();
    assert.notDeepEqual(wire.nonceC, wire.nonceS);
    const macKeys = dk1(wire.nonceC, wire.nonceS);
    for (const [msg, key] of [
      [wire.dhC, macKeys.client],
      [wire.dhS, macKeys.server],
    ] as const) {
      const y = msg.subarray(0, 256);
      assert.ok(createHmac("sha256", key).update(y).digest().equals(msg.subarray(256)), "h = HMAC(dhmac, y)");
      assert.ok(Buffer.compare(y, RFC3526_P) < 0 && !y.equals(Y_ONE));
    }
    for (const s of [client, server]) {
      assert.equal(s.protocol, "spiped");
      assert.equal(s.authenticatedEnd, false);
      assert.equal(s.fixedRecordSize, 1060);
      assert.equal(s.sealer.maxPlaintext, 1024);
      assert.deepEqual(s.sealer.end(), []);
      assert.deepEqual(s.sealer.abort("x"), []);
    }
    const data = randomBytes(3000);
    assert.ok(dataOf(server.opener.push(Buffer.concat(client.sealer.seal(data)))).equals(data));
    assert.ok(dataOf(client.opener.push(Buffer.concat(server.sealer.seal(data)))).equals(data));
  });

  it("session keys and packets match §2/§3 recomputed independently (client -f: y_SC = 1)", () => {
    const { client, server, wire } = connect({ noPfs: true });
    assert.ok(wire.dhC.subarray(0, 256).equals(Y_ONE), "-f sends y = 1");
    const keys = dk2(wire, Y_ONE);
    const up = randomBytes(2500);
    const packets = client.sealer.seal(up);
    assert.deepEqual(
      packets.map((p) => p.length),
      [1060, 1060, 1060],
    );
    assert.ok(Buffer.concat(packets.map((p, i) => specOpen(keys.toServer, BigInt(i), p))).equals(up));
    assert.ok(dataOf(server.opener.push(Buffer.concat(packets))).equals(up));
    const down = [Buffer.from("hello"), randomBytes(1024), Buffer.from("!")];
    const wireDown = Buffer.concat(down.map((d, i) => specPacket(keys.toClient, BigInt(i), d)));
    assert.ok(dataOf(client.opener.push(wireDown)).equals(Buffer.concat(down)));
    assert.ok(
      dataOf(server.opener.push(Buffer.concat(client.sealer.seal(Buffer.from("x"))))).equals(
        Buffer.from("x"),
      ),
    );
  });

  for (const [name, c, s] of [
    ["-f on the client", { noPfs: true }, {}],
    ["-f on the server", {}, { noPfs: true }],
    ["-f on both", { noPfs: true }, { noPfs: true }],
    ["-g on both", { requirePfs: true }, { requirePfs: true }],
  ] as [string, SpipedOptions, SpipedOptions][]) {
    it(`${name} completes and carries data`, () => {
      const { client, server } = connect(c, s);
      const data = randomBytes(5000);
      assert.ok(dataOf(server.opener.push(Buffer.concat(client.sealer.seal(data)))).equals(data));
      assert.ok(dataOf(client.opener.push(Buffer.concat(server.sealer.seal(data)))).equals(data));
    });
  }

  it("-g on the server refuses a -f client; -g on the client refuses a -f server", () => {
    const c = spipedHandshake("client", K, { noPfs: true });
    const s = spipedHandshake("server", K, { requirePfs: true });
    s.receive(c.start()[0]);
    const [dhC] = c.receive(s.start()[0]);
    assert.throws(() => s.receive(dhC), /does not use forward secrecy/);
    assert.equal(s.session, null);

    const c2 = spipedHandshake("client", K, { requirePfs: true });
    const s2 = spipedHandshake("server", K, { noPfs: true });
    s2.receive(c2.start()[0]);
    const [dhS] = s2.receive(c2.receive(s2.start()[0])[0]);
    assert.throws(
      () => c2.receive(dhS),
      (e) => isProtocolError(e) && /forward secrecy/.test(String(e)),
    );
    assert.equal(c2.session, null);
  });

  it("refuses -f and -g together", () => {
    assert.throws(() => spipedHandshake("client", K, { noPfs: true, requirePfs: true }));
  });

  /** A server handshake after the client nonce, and a function that MACs a y as the client would. */
  function serverAwaitingDh(opts: SpipedOptions = {}) {
    const s = spipedHandshake("server", K, opts);
    const [nonceS] = s.start();
    const nonceC = randomBytes(32);
    s.receive(nonceC);
    const macKey = dk1(nonceC, nonceS).client;
    const message = (y: Buffer) => Buffer.concat([y, createHmac("sha256", macKey).update(y).digest()]);
    return { s, message };
  }

  it("checks a received y: MAC first, then y < p; y = 0 and y = p - 1 are refused too", () => {
    const pMinus1 = Buffer.from(RFC3526_P);
    pMinus1[255] -= 1;
    const cases: [string, Buffer, RegExp][] = [
      ["y = p", RFC3526_P, /not below the group prime/],
      ["y = 2^2048 - 1", Buffer.alloc(256, 0xff), /not below the group prime/],
      ["y = 0", Buffer.alloc(256), /degenerate/],
      ["y = p - 1", pMinus1, /degenerate/],
    ];
    for (const [name, y, pattern] of cases) {
      const { s, message } = serverAwaitingDh();
      assert.throws(
        () => s.receive(message(y)),
        (e) => isProtocolError(e) && pattern.test(String(e)),
        name,
      );
      assert.equal(s.session, null);
    }
    // A bad MAC is reported as such even for a y that would also fail the range check.
    const { s, message } = serverAwaitingDh();
    const bad = message(RFC3526_P);
    bad[287] ^= 1;
    assert.throws(() => s.receive(bad), /did not authenticate/);
    // y = 1 from a key holder is accepted without -g (a spiped -f client), as spiped does.
    const ok = serverAwaitingDh();
    assert.equal(ok.s.receive(ok.message(Y_ONE)).length, 1);
    assert.ok(ok.s.session);
  });

  it("a wrong key fails at the peer's DH message", () => {
    const c = spipedHandshake("client", spipedKey(randomBytes(32)));
    const s = spipedHandshake("server", K);
    s.receive(c.start()[0]);
    const [dhC] = c.receive(s.start()[0]);
    assert.throws(() => s.receive(dhC), /did not authenticate \(wrong key file/);
  });

  it("takes its input byte by byte, keeps bytes past the handshake, and works with receive before start", () => {
    const c = spipedHandshake("client", K);
    const s = spipedHandshake("server", K);
    const nonceS = s.start()[0];
    // The client receives the server's nonce before start(): its DH message waits for its nonce.
    for (let i = 0; i < 32; i++) {
      assert.deepEqual(c.receive(nonceS.subarray(i, i + 1)), []);
      assert.equal(c.buffered, i < 31 ? i + 1 : 0);
    }
    const [nonceC, dhC] = c.start();
    assert.equal(nonceC.length, 32);
    assert.equal(dhC.length, 288);
    assert.deepEqual(c.start(), []);
    const both = Buffer.concat([nonceC, dhC]);
    let out: Buffer[] = [];
    for (let i = 0; i < both.length; i++) out = out.concat(s.receive(both.subarray(i, i + 1)));
    assert.equal(out.length, 1);
    assert.ok(s.session);
    const early = Buffer.concat(s.session.sealer.seal(Buffer.from("early data")));
    c.receive(Buffer.concat([out[0], early.subarray(0, 100)]));
    assert.ok(c.session);
    c.receive(early.subarray(100));
    const rest = c.takeRest();
    assert.equal(rest.length, 1060);
    assert.equal(dataOf(c.session.opener.push(rest)).toString(), "early data");
  });

  it("is reached through createHandshake with the CLI's options", () => {
    const keys = prepareKeys(KEY_FILE);
    const hs = createHandshake("client", "spiped", [keys], { noPfs: true });
    const s = spipedHandshake("server", K);
    s.receive(hs.start()[0]);
    const [dhC] = hs.receive(s.start()[0]);
    assert.ok(dhC.subarray(0, 256).equals(Y_ONE));
    hs.receive(s.receive(dhC)[0]);
    assert.ok(hs.session);
  });

  it("garbage to a handshake throws nothing but ProtocolError", () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 400 }), { maxLength: 4 }),
        fc.boolean(),
        (chunks, asClient) => {
          const hs: Handshake = spipedHandshake(asClient ? "client" : "server", K);
          hs.start();
          try {
            for (const c of chunks) hs.receive(Buffer.from(c));
          } catch (err) {
            assert.ok(isProtocolError(err), String(err));
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("spiped packets", () => {
  it("round-trip every length 0..5000 (incl. 1023/1024/1025/4096), whole and in pieces", () => {
    const { client, server } = connect();
    const all = randomBytes(5000);
    for (let n = 0; n <= 5000; n++) {
      const data = all.subarray(0, n);
      const packets = client.sealer.seal(data);
      assert.equal(packets.length, Math.ceil(n / 1024), `packets for ${n} bytes`);
      for (const p of packets) assert.equal(p.length, PACKET_LEN);
      const wire = Buffer.concat(packets);
      let got: Buffer;
      if (n % 7 === 0) {
        // In uneven pieces.
        const parts: OpenEvent[] = [];
        for (let at = 0; at < wire.length; at += 333)
          parts.push(...server.opener.push(wire.subarray(at, at + 333)));
        got = dataOf(parts);
      } else got = dataOf(server.opener.push(wire));
      assert.equal(server.opener.buffered, 0);
      assert.ok(got.equals(data), `length ${n}`);
    }
    // Boundaries, and calls of more packets than the keystream's kept counter blocks (64).
    for (const n of [1023, 1024, 1025, 4096, 65536, 70_000, 300_000, 1]) {
      const data = randomBytes(n);
      assert.ok(dataOf(client.opener.push(Buffer.concat(server.sealer.seal(data)))).equals(data), `${n}`);
    }
  });

  it("keeps a partial packet and reports it as buffered", () => {
    const { client, server } = connect();
    const wire = Buffer.concat(client.sealer.seal(Buffer.from("abc")));
    assert.deepEqual(server.opener.push(wire.subarray(0, 1000)), []);
    assert.equal(server.opener.buffered, 1000);
    assert.equal(dataOf(server.opener.push(wire.subarray(1000))).toString(), "abc");
    assert.equal(server.opener.buffered, 0);
  });

  it("refuses len = 0 and len > 1024 under a correct MAC", () => {
    for (const len of [0, 1025, 0xffffffff]) {
      const { client, wire } = connect({ noPfs: true });
      const keys = dk2(wire, Y_ONE);
      const good = specPacket(keys.toClient, 0n, Buffer.from("fine"));
      const bad = specPacket(keys.toClient, 1n, Buffer.from("x"), len);
      assert.equal(dataOf(client.opener.push(good)).toString(), "fine");
      assert.throws(
        () => client.opener.push(bad),
        (e) => isProtocolError(e) && /length \d+ is not within 1\.\.1024/.test(String(e)),
        `len ${len}`,
      );
    }
  });

  // Property tests: a stream of 1..5 packets, tampered with.
  const stream = fc.record({
    sizes: fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 3 }),
    a: fc.nat(),
    b: fc.nat(),
    bit: fc.integer({ min: 0, max: 7 }),
  });
  function packetsOf(sizes: number[]): { server: Session; packets: Buffer[] } {
    const { client, server } = connect({ noPfs: true }); // DH costs ~1 ms: cheaper runs with -f
    return { server, packets: sizes.flatMap((n) => client.sealer.seal(randomBytes(n))) };
  }
  /** True when the opener threw ProtocolError or never produced the whole stream. */
  function rejected(server: Session, wire: Buffer): boolean {
    try {
      server.opener.push(wire);
    } catch (err) {
      assert.ok(isProtocolError(err), String(err));
      return true;
    }
    return false;
  }

  it("any bit flip is rejected", () => {
    fc.assert(
      fc.property(stream, ({ sizes, a, bit }) => {
        const { server, packets } = packetsOf(sizes);
        const wire = Buffer.concat(packets);
        wire[a % wire.length] ^= 1 << bit;
        assert.ok(rejected(server, wire));
      }),
      { numRuns: 100 },
    );
  });

  it("a cut inside the stream (bytes dropped) is rejected, or left incomplete at the end", () => {
    fc.assert(
      fc.property(stream, ({ sizes, a, b }) => {
        const { server, packets } = packetsOf(sizes);
        const wire = Buffer.concat(packets);
        const from = a % wire.length;
        const count = 1 + (b % (wire.length - from));
        const cut = Buffer.concat([wire.subarray(0, from), wire.subarray(from + count)]);
        const threw = rejected(server, cut);
        // Dropping whole packets at the end is a truncation at a packet boundary, which spiped cannot see.
        if (!threw && from + count === wire.length) assert.equal(server.opener.buffered, from % PACKET_LEN);
        else assert.ok(threw || server.opener.buffered !== 0);
      }),
      { numRuns: 100 },
    );
  });

  it("reordering or replaying a packet is rejected", () => {
    fc.assert(
      fc.property(stream, fc.boolean(), ({ sizes, a, b }, replay) => {
        const { server, packets } = packetsOf([...sizes, 2048]); // at least 2 packets
        const i = a % packets.length;
        const j = b % packets.length;
        const tampered = [...packets];
        if (replay) tampered.splice(j + 1, 0, packets[i]);
        else if (i !== j) [tampered[i], tampered[j]] = [tampered[j], tampered[i]];
        else tampered.splice(i, 1); // a packet dropped from the middle or the start
        if (!replay && i === j && i === packets.length - 1) return; // dropping the last one: a cut at a boundary
        assert.ok(rejected(server, Buffer.concat(tampered)));
      }),
      { numRuns: 100 },
    );
  });

  it("garbage to an opener throws nothing but ProtocolError", () => {
    const { server } = connect({ noPfs: true });
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 4 }), (chunks) => {
        const { server: fresh } = connect({ noPfs: true });
        for (const s of [server, fresh]) {
          try {
            for (const c of chunks) s.opener.push(Buffer.from(c));
          } catch (err) {
            assert.ok(isProtocolError(err), String(err));
          }
        }
      }),
      { numRuns: 100 },
    );
  });

  it("uses the full 64-bit packet number and refuses to go past 2^64 - 1", () => {
    const E = randomBytes(32);
    const H = randomBytes(32);
    const { PacketKeys, makeSession } = _internal;
    const sealKeys = new PacketKeys(E, H);
    const openKeys = new PacketKeys(E, H);
    const s = makeSession(sealKeys, openKeys);
    // Just below a carry of the low 32 bits, then at the very end.
    for (const [hi, lo] of [
      [0x12345678, 0xfffffffe],
      [0xffffffff, 0xfffffffd],
    ]) {
      sealKeys.hi = openKeys.hi = hi;
      sealKeys.lo = openKeys.lo = lo;
      const data = randomBytes(3000); // 3 packets: pnum lo, lo + 1, lo + 2 (with a carry for the first pair)
      const packets = s.sealer.seal(data);
      const base = (BigInt(hi) << 32n) + BigInt(lo);
      const opened = packets.map((p, i) => specOpen({ E, H }, base + BigInt(i), p));
      assert.ok(Buffer.concat(opened).equals(data));
      assert.ok(dataOf(s.opener.push(Buffer.concat(packets))).equals(data));
    }
    // Packet number 2^64 - 1 has been used by both: nothing more.
    assert.throws(
      () => s.sealer.seal(Buffer.from("x")),
      (e) => e instanceof ProtocolError && e.code === "nonce-limit",
    );
    const last = specPacket({ E, H }, 0n, Buffer.from("x")); // what a wrapped counter would be
    assert.throws(
      () => s.opener.push(last),
      (e) => e instanceof ProtocolError && e.code === "nonce-limit",
    );
    // Two left: a three-packet seal is refused before anything is sealed.
    const k = new PacketKeys(E, H);
    k.hi = 0xffffffff;
    k.lo = 0xfffffffe;
    assert.throws(() => makeSession(k, k).sealer.seal(randomBytes(3000)), /2\^64/);
    assert.equal(makeSession(k, k).sealer.seal(randomBytes(2048)).length, 2);
  });
});
