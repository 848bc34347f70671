import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import fc from "fast-check";
import { ProtocolError } from "../../src/protocol/errors.js";
import { _internal, monopiped1Handshake, monopiped1Keys } from "../../src/protocol/monopiped1.js";
import type { Handshake, OpenEvent, Role, Session } from "../../src/protocol/types.js";

const { blake2b256, sessionKeys, x25519PrivateKey, x25519PublicKey, x25519, CounterAead } = _internal;

// Compiled tests run from dist/test/unit, so find the project root instead of counting "..".
function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("package.json not found above the test file");
    dir = parent;
  }
  return dir;
}

type Hex = string;
interface Frame {
  direction: "client_to_server" | "server_to_client";
  frame_index_in_direction: number;
  key: Hex;
  nonce: Hex;
  payload_length: number;
  payload: Hex;
  sealed_block_1044: Hex;
  length_field_le32: Hex;
  frame_1060: Hex;
  frame_ciphertext_1044: Hex;
  frame_tag_16: Hex;
}
interface ReceiverCase {
  description: string;
  expected: string;
  key: Hex;
  nonce: Hex;
  frame_1060: Hex;
  sealed_block_1044?: Hex;
  rust_receiver_output?: Hex;
}
interface Vectors {
  key_file_cases: { key_file: Hex; master_key: Hex; client_key: Hex; server_key: Hex }[];
  connection: Record<string, Hex> & { frames: Frame[]; receiver_cases: ReceiverCase[] };
  handshake_reuse_demo: Record<string, Hex>;
  nonce_increment_examples: { frames_already_sent: number; nonce: Hex }[];
}

const V: Vectors = JSON.parse(readFileSync(join(projectRoot(), "test/fixtures/monopiped-v1.json"), "utf8"));
const C = V.connection;
const hex = (s: Hex): Buffer => Buffer.from(s, "hex");
const keys = monopiped1Keys(hex(C.key_file));

function handshakePair(): { client: Handshake; server: Handshake } {
  return {
    client: monopiped1Handshake("client", keys, hex(C.client_ephemeral_secret)),
    server: monopiped1Handshake("server", keys, hex(C.server_ephemeral_secret)),
  };
}

/** Runs a handshake to completion, the server receiving before it starts (protocol auto-detection). */
function connect(): { client: Session; server: Session } {
  const { client, server } = handshakePair();
  for (const m of client.start()) server.receive(m);
  for (const m of server.start()) client.receive(m);
  assert.ok(client.session && server.session);
  return { client: client.session, server: server.session };
}

function dataOf(events: OpenEvent[]): Buffer {
  return Buffer.concat(
    events.map((e) => {
      assert.equal(e.type, "data");
      return e.type === "data" ? e.data : Buffer.alloc(0);
    }),
  );
}

function isProtocolError(code: string) {
  return (err: unknown): boolean => err instanceof ProtocolError && err.code === code;
}

/** An aead at a given counter value, for vectors of frames other than a session's first. */
function aeadAt(key: Hex, nonce: Hex): InstanceType<typeof CounterAead> {
  const aead = new CounterAead(hex(key));
  aead.nonce.set(hex(nonce));
  return aead;
}

/** One frame sealed at counter `counter` (< 256) with data `text`. */
function aeadFrame(key: Hex, counter: number, text: string): Buffer {
  const block = Buffer.alloc(1044);
  const n = block.write(text);
  block.writeUInt32LE(n, 1040);
  const out = Buffer.alloc(1060);
  const aead = new CounterAead(hex(key));
  aead.nonce[0] = counter;
  aead.sealInto(block, out, 0);
  return out;
}

describe("monopiped1 keys (vectors)", () => {
  for (const [i, kc] of V.key_file_cases.entries()) {
    it(`key file case ${i}`, () => {
      const file = hex(kc.key_file);
      assert.equal(blake2b256(file).toString("hex"), kc.master_key);
      const k = monopiped1Keys(file);
      assert.equal(k.clientKey.toString("hex"), kc.client_key);
      assert.equal(k.serverKey.toString("hex"), kc.server_key);
    });
  }

  it("connection keys", () => {
    assert.equal(blake2b256(hex(C.key_file)).toString("hex"), C.master_key);
    assert.equal(keys.clientKey.toString("hex"), C.client_key);
    assert.equal(keys.serverKey.toString("hex"), C.server_key);
  });
});

describe("monopiped1 handshake (vectors)", () => {
  it("ephemeral public keys, shared secret and session keys", () => {
    const clientPrivate = x25519PrivateKey(hex(C.client_ephemeral_secret));
    const serverPrivate = x25519PrivateKey(hex(C.server_ephemeral_secret));
    assert.equal(x25519PublicKey(clientPrivate).toString("hex"), C.client_ephemeral_public);
    assert.equal(x25519PublicKey(serverPrivate).toString("hex"), C.server_ephemeral_public);
    const shared = x25519(clientPrivate, hex(C.server_ephemeral_public));
    assert.equal(shared?.toString("hex"), C.x25519_shared_secret);
    assert.equal(
      x25519(serverPrivate, hex(C.client_ephemeral_public))?.toString("hex"),
      C.x25519_shared_secret,
    );
    assert.equal(blake2b256(hex(C.x25519_shared_secret)).toString("hex"), C.shared_hash);
    const sk = sessionKeys(hex(C.x25519_shared_secret));
    assert.equal(sk.clientToServer.toString("hex"), C.session_key_client_to_server);
    assert.equal(sk.serverToClient.toString("hex"), C.session_key_server_to_client);
  });

  it("both hello messages", () => {
    const { client, server } = handshakePair();
    const [clientHello] = client.start();
    const [serverHello] = server.start();
    assert.equal(clientHello.toString("hex"), C.client_handshake_message_48);
    assert.equal(serverHello.toString("hex"), C.server_handshake_message_48);
    assert.equal(C.client_handshake_message_48, C.client_handshake_ciphertext_32 + C.client_handshake_tag_16);
    assert.equal(C.server_handshake_message_48, C.server_handshake_ciphertext_32 + C.server_handshake_tag_16);
    assert.equal(C.handshake_nonce, "00".repeat(24));
  });

  it("hello reuse demo: same key and nonce, so ciphertext XOR = public key XOR", () => {
    const d = V.handshake_reuse_demo;
    const second = monopiped1Handshake("client", keys, hex(d.second_client_ephemeral_secret)).start()[0];
    assert.equal(second.toString("hex"), d.second_client_handshake_message_48);
    const pub = x25519PublicKey(x25519PrivateKey(hex(d.second_client_ephemeral_secret)));
    assert.equal(pub.toString("hex"), d.second_client_ephemeral_public);
    const xor = (a: Buffer, b: Buffer) => Buffer.from(a.map((x, i) => x ^ b[i]));
    const first = hex(C.client_handshake_message_48);
    assert.equal(
      xor(first.subarray(0, 32), second.subarray(0, 32)).toString("hex"),
      d.xor_of_the_two_handshake_ciphertexts,
    );
    assert.equal(xor(hex(C.client_ephemeral_public), pub).toString("hex"), d.xor_of_the_two_public_keys);
  });
});

describe("monopiped1 handshake", () => {
  for (const order of ["start first", "receive first"] as const) {
    for (const role of ["client", "server"] as Role[]) {
      it(`${role} completes with ${order}`, () => {
        const { client, server } = handshakePair();
        const [self, peerHello] =
          role === "client" ? [client, server.start()[0]] : [server, client.start()[0]];
        if (order === "start first") assert.equal(self.start()[0].length, 48);
        assert.deepEqual(self.receive(peerHello), []);
        if (order === "receive first") assert.equal(self.start()[0].length, 48);
        const s = self.session;
        assert.ok(s);
        assert.equal(s.protocol, "monopiped1");
        assert.equal(s.authenticatedEnd, false);
        assert.equal(s.fixedRecordSize, 1060);
        assert.equal(s.sealer.maxPlaintext, 1040);
        assert.equal(self.buffered, 0);
      });
    }
  }

  it("accumulates the hello byte by byte and keeps what follows for takeRest()", () => {
    const { client, server } = handshakePair();
    const hello = client.start()[0];
    for (let i = 0; i < 47; i++) {
      server.receive(hello.subarray(i, i + 1));
      assert.equal(server.buffered, i + 1);
      assert.equal(server.session, null);
    }
    server.receive(Buffer.concat([hello.subarray(47), Buffer.from("abc")]));
    assert.ok(server.session);
    server.receive(Buffer.from("de"));
    assert.equal(server.takeRest().toString(), "abcde");
    assert.equal(server.takeRest().length, 0);
  });

  it("hello and first frames in one chunk: the rest opens as data", () => {
    const { client, server } = handshakePair();
    client.receive(server.start()[0]);
    assert.ok(client.session);
    const frames = client.session.sealer.seal(Buffer.from("hi there"));
    server.receive(Buffer.concat([client.start()[0], ...frames]));
    assert.ok(server.session);
    assert.equal(dataOf(server.session.opener.push(server.takeRest())).toString(), "hi there");
  });

  it("rejects a hello under another key file, and a reflected hello", () => {
    const other = monopiped1Handshake("client", monopiped1Keys(Buffer.from("other")));
    const server = monopiped1Handshake("server", keys);
    assert.throws(() => server.receive(other.start()[0]), isProtocolError("bad-handshake"));
    const client = monopiped1Handshake("client", keys);
    assert.throws(() => client.receive(client.start()[0]), isProtocolError("bad-handshake"));
  });

  it("rejects small-order peer public keys even when the hello authenticates", () => {
    const smallOrder = [
      "00".repeat(32),
      `01${"00".repeat(31)}`,
      "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", // order 8
      "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", // order 8
      `ec${"ff".repeat(30)}7f`, // p - 1
      `ed${"ff".repeat(30)}7f`, // p, i.e. 0
      `ee${"ff".repeat(30)}7f`, // p + 1, i.e. 1
    ].map(hex);
    // The top bit is ignored by X25519, so these are the same points again.
    const highBit = smallOrder.map((b) => Buffer.from(b.map((x, i) => (i === 31 ? x | 0x80 : x))));
    for (const point of [...smallOrder, ...highBit]) {
      const hello = Buffer.alloc(48);
      new CounterAead(keys.clientKey).sealInto(point, hello, 0);
      const server = monopiped1Handshake("server", keys);
      assert.throws(() => server.receive(hello), isProtocolError("bad-handshake"), point.toString("hex"));
    }
  });
});

describe("monopiped1 frames (vectors)", () => {
  const frames = C.frames;
  const byIndex = (dir: Frame["direction"], i: number) =>
    frames.find((f) => f.direction === dir && f.frame_index_in_direction === i) as Frame;

  it("frame layout fields are consistent", () => {
    for (const f of frames) {
      const block = hex(f.sealed_block_1044);
      assert.equal(block.length, 1044);
      assert.equal(block.subarray(0, f.payload_length).toString("hex"), f.payload);
      assert.ok(block.subarray(f.payload_length, 1040).every((b) => b === 0));
      assert.equal(block.subarray(1040).toString("hex"), f.length_field_le32);
      assert.equal(f.frame_1060, f.frame_ciphertext_1044 + f.frame_tag_16);
      const key =
        f.direction === "client_to_server" ? C.session_key_client_to_server : C.session_key_server_to_client;
      assert.equal(f.key, key);
    }
  });

  it("every frame seals and opens at its nonce", () => {
    for (const f of frames) {
      const out = Buffer.alloc(1060);
      aeadAt(f.key, f.nonce).sealInto(hex(f.sealed_block_1044), out, 0);
      assert.equal(out.toString("hex"), f.frame_1060);
      assert.equal(aeadAt(f.key, f.nonce).open(hex(f.frame_1060))?.toString("hex"), f.sealed_block_1044);
    }
  });

  it("sessions from the handshake produce and accept the client->server frames, up to counter 256", () => {
    const { client, server } = connect();
    const f0 = byIndex("client_to_server", 0);
    const f1 = byIndex("client_to_server", 1);
    const f256 = byIndex("client_to_server", 256);
    const wire = [...client.sealer.seal(hex(f0.payload)), ...client.sealer.seal(hex(f1.payload))];
    assert.equal(wire[0].toString("hex"), f0.frame_1060);
    assert.equal(wire[1].toString("hex"), f1.frame_1060);
    wire.push(...client.sealer.seal(Buffer.alloc(254 * 1040, 0x55)));
    const [last] = client.sealer.seal(hex(f256.payload));
    assert.equal(last.toString("hex"), f256.frame_1060);
    wire.push(last);
    assert.equal(wire.length, 257);
    const received = dataOf(server.opener.push(Buffer.concat(wire)));
    assert.equal(received.length, 1 + 1040 + 254 * 1040 + 5);
    assert.equal(received.subarray(0, 1041).toString("hex"), f0.payload + f1.payload);
    assert.equal(received.subarray(-5).toString("hex"), f256.payload);
  });

  it("server->client frames, including the accepted zero-length frame", () => {
    const { client, server } = connect();
    const f0 = byIndex("server_to_client", 0);
    const f1 = byIndex("server_to_client", 1);
    assert.equal(f1.payload_length, 0);
    assert.equal(server.sealer.seal(hex(f0.payload))[0].toString("hex"), f0.frame_1060);
    assert.deepEqual(client.opener.push(hex(f0.frame_1060)), [{ type: "data", data: hex(f0.payload) }]);
    assert.deepEqual(client.opener.push(hex(f1.frame_1060)), []);
    assert.equal(client.opener.buffered, 0);
    // The no-op frame advanced the nonce: the next server frame (counter 2) opens.
    assert.equal(dataOf(client.opener.push(aeadFrame(f0.key, 2, "next"))).toString(), "next");
  });

  for (const rc of C.receiver_cases) {
    it(`receiver rejects: ${rc.description.slice(0, 70)}`, () => {
      const { server } = connect();
      assert.equal(rc.key, C.session_key_client_to_server);
      assert.equal(rc.nonce, "00".repeat(24));
      assert.throws(() => server.opener.push(hex(rc.frame_1060)), isProtocolError("bad-record"));
      if (rc.sealed_block_1044 !== undefined) {
        // Authentic frames with n = 1044 / 1045: rejected for the length alone.
        const block = aeadAt(rc.key, rc.nonce).open(hex(rc.frame_1060));
        assert.equal(block?.toString("hex"), rc.sealed_block_1044);
        assert.ok((block?.readUInt32LE(1040) ?? 0) > 1040);
        if (rc.rust_receiver_output !== undefined) {
          assert.equal(block?.subarray(0, 1044).toString("hex"), rc.rust_receiver_output);
        }
      } else {
        assert.equal(rc.expected, "authentication_failure");
      }
    });
  }

  it("nonce encodings", () => {
    const aead = new CounterAead(Buffer.alloc(32));
    let sent = 0;
    for (const ex of V.nonce_increment_examples) {
      for (; sent < ex.frames_already_sent; sent++) aead.advance();
      assert.equal(Buffer.from(aead.nonce).toString("hex"), ex.nonce);
    }
  });
});

describe("monopiped1 sealer and opener", () => {
  it("splits input into 1040-byte frames and has no end or abort records", () => {
    const { client } = connect();
    assert.deepEqual(client.sealer.seal(Buffer.alloc(0)), []);
    const frames = client.sealer.seal(Buffer.alloc(2081, 1));
    assert.deepEqual(
      frames.map((f) => f.length),
      [1060, 1060, 1060],
    );
    assert.deepEqual(client.sealer.end(), []);
    assert.deepEqual(client.sealer.abort("refused"), []);
  });

  it("zeroes the padding after a longer frame", () => {
    const { client } = connect();
    client.sealer.seal(Buffer.alloc(1040, 0xff));
    const [frame] = client.sealer.seal(Buffer.from("x"));
    const block = aeadAt(C.session_key_client_to_server, `01${"00".repeat(23)}`).open(frame);
    assert.ok(block?.subarray(1, 1040).every((b) => b === 0));
    assert.equal(block?.readUInt32LE(1040), 1);
  });

  it("CounterAead equals @noble/ciphers xchacha20poly1305 at any nonce", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ minLength: 24, maxLength: 24 }),
        fc.uint8Array({ maxLength: 2000 }),
        (key, nonce, plain) => {
          const aead = new CounterAead(key);
          aead.nonce.set(nonce);
          const out = Buffer.alloc(plain.length + 16);
          aead.sealInto(plain, out, 0);
          assert.deepEqual(new Uint8Array(out), xchacha20poly1305(key, nonce).encrypt(plain));
        },
      ),
      { numRuns: 50 },
    );
  });
});

describe("monopiped1 properties", () => {
  /** Cuts `wire` at the given fractions into chunks. */
  function chunk(wire: Buffer, cuts: number[]): Buffer[] {
    const points = [...new Set(cuts.map((c) => Math.floor(c * wire.length)))].sort((a, b) => a - b);
    const out: Buffer[] = [];
    let prev = 0;
    for (const p of [...points, wire.length]) {
      out.push(wire.subarray(prev, p));
      prev = p;
    }
    return out;
  }

  const messages = fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 6 });
  const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 });

  it("round trip in both directions under any chunking of the wire", () => {
    fc.assert(
      fc.property(messages, cuts, fc.boolean(), (msgs, cutAt, toServer) => {
        const { client, server } = connect();
        const [from, to] = toServer ? [client, server] : [server, client];
        const wire = Buffer.concat(msgs.flatMap((m) => from.sealer.seal(Buffer.from(m))));
        assert.equal(wire.length % 1060, 0);
        const events = chunk(wire, cutAt).flatMap((c) => to.opener.push(c));
        assert.deepEqual(dataOf(events), Buffer.concat(msgs));
        assert.equal(to.opener.buffered, 0);
      }),
      { numRuns: 100 },
    );
  });

  /** A few frames of random data and the receiving opener. */
  const stream = fc.record({
    frameCount: fc.integer({ min: 1, max: 5 }),
    fill: fc.integer({ min: 0, max: 255 }),
    a: fc.nat(),
    b: fc.nat(),
  });
  function framesFor(frameCount: number, fill: number) {
    const { client, server } = connect();
    const frames = client.sealer.seal(Buffer.alloc(frameCount * 1040 - 7, fill));
    return { frames, opener: server.opener };
  }

  it("any single bit flip is rejected", () => {
    fc.assert(
      fc.property(stream, ({ frameCount, fill, b }) => {
        const { frames, opener } = framesFor(frameCount, fill);
        const wire = Buffer.concat(frames);
        const bit = b % (wire.length * 8);
        wire[bit >> 3] ^= 1 << (bit & 7);
        const frameIndex = Math.floor(bit / 8 / 1060);
        opener.push(wire.subarray(0, frameIndex * 1060)); // frames before the flip are fine
        assert.throws(() => opener.push(wire.subarray(frameIndex * 1060)), isProtocolError("bad-record"));
      }),
    );
  });

  it("a truncated frame yields nothing, and is rejected once anything follows it", () => {
    fc.assert(
      fc.property(stream, ({ frameCount, fill, a, b }) => {
        const { frames, opener } = framesFor(frameCount, fill);
        const i = a % frameCount;
        const cut = 1 + (b % 1059);
        const before = Buffer.concat(frames.slice(0, i));
        const truncated = frames[i].subarray(0, 1060 - cut);
        const after = Buffer.concat(frames.slice(i + 1));
        assert.equal(dataOf(opener.push(before)).length, i * 1040);
        assert.deepEqual(opener.push(truncated), []);
        assert.equal(opener.buffered, 1060 - cut);
        if (after.length > 0) assert.throws(() => opener.push(after), isProtocolError("bad-record"));
      }),
    );
  });

  it("reordered and replayed frames are rejected", () => {
    fc.assert(
      fc.property(stream, fc.boolean(), ({ frameCount, fill, a, b }, replay) => {
        fc.pre(replay || frameCount > 1);
        const { frames, opener } = framesFor(frameCount, fill);
        const i = a % frameCount;
        let wire: Buffer[];
        if (replay) {
          wire = [...frames.slice(0, i + 1), frames[i]];
        } else {
          const j = (i + 1 + (b % (frameCount - 1))) % frameCount; // j != i
          wire = [...frames];
          [wire[i], wire[j]] = [wire[j], wire[i]];
        }
        assert.throws(() => opener.push(Buffer.concat(wire)), isProtocolError("bad-record"));
      }),
    );
  });

  const garbage = fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 5 });
  const onlyProtocolErrors = (f: () => void) => {
    try {
      f();
    } catch (err) {
      assert.ok(err instanceof ProtocolError, String(err));
    }
  };

  it("garbage to the handshake throws only ProtocolError", () => {
    fc.assert(
      fc.property(garbage, fc.constantFrom<Role>("client", "server"), (chunks, role) => {
        const hs = monopiped1Handshake(role, keys);
        onlyProtocolErrors(() => {
          for (const c of chunks) hs.receive(Buffer.from(c));
        });
      }),
      { numRuns: 50 },
    );
  });

  it("garbage to the opener throws only ProtocolError", () => {
    fc.assert(
      fc.property(garbage, (chunks) => {
        const { server } = connect();
        onlyProtocolErrors(() => {
          for (const c of chunks) server.opener.push(Buffer.from(c));
        });
      }),
      { numRuns: 50 },
    );
  });
});
