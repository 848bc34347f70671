/**
 * monopiped1: the wire format of the original Rust monopiped 0.1, kept so we interoperate with it.
 * Section numbers (§) refer to shared/protocols/monopiped-v1.md.
 *
 *   both ways, unprompted  48 bytes    XChaCha20-Poly1305(own_key, nonce 0^24, ephemeral X25519 public key)
 *   then frames            1060 bytes  XChaCha20-Poly1305(session key, counter nonce, data ‖ zeros ‖ u32 LE n)
 *
 * This reproduces the format, weaknesses included (§11: the handshake reuses one nonce per key file,
 * session keys ignore the key file, EOF is unauthenticated). We add only the hardening that honest Rust
 * peers never notice (§10): a small-order peer key and a length field above 1040 are rejected.
 */
import { createCipheriv, createDecipheriv, type KeyObject, randomBytes } from "node:crypto";
import { hchacha } from "@noble/ciphers/chacha.js";
import { blake2b } from "@noble/hashes/blake2.js";
import { ProtocolError } from "./errors.js";
import type { Handshake, OpenEvent, RecordOpener, RecordSealer, Role, Session } from "./types.js";
import { privateKeyFromSecret, publicKeyBytes, sharedSecret } from "./x25519.js";

const HELLO_LEN = 48; // sealed 32-byte public key
const TAG_LEN = 16;
const MAX_DATA = 1040;
const BLOCK_LEN = MAX_DATA + 4; // data ‖ zero padding ‖ n as u32 LE
const FRAME_LEN = BLOCK_LEN + TAG_LEN; // 1060

export interface Monopiped1Keys {
  clientKey: Buffer;
  serverKey: Buffer;
}

function blake2b256(message: Uint8Array, key?: Uint8Array): Buffer {
  const digest = blake2b(message, { dkLen: 32, key });
  return Buffer.from(digest.buffer, digest.byteOffset, digest.length);
}

const CLIENT_LABEL = Buffer.from("client", "ascii");
const SERVER_LABEL = Buffer.from("server", "ascii");

/** Long-term keys from the key file (§2): any length, hashed whole. */
export function monopiped1Keys(keyFile: Buffer): Monopiped1Keys {
  const master = blake2b256(keyFile);
  const keys = { clientKey: blake2b256(CLIENT_LABEL, master), serverKey: blake2b256(SERVER_LABEL, master) };
  master.fill(0); // the Rust tool keeps only the two derived keys too
  return keys;
}

/** Session keys (§4.5): they depend on the X25519 result only. */
function sessionKeys(shared: Buffer): { clientToServer: Buffer; serverToClient: Buffer } {
  const sharedHash = blake2b256(shared);
  return {
    clientToServer: blake2b256(CLIENT_LABEL, sharedHash),
    serverToClient: blake2b256(SERVER_LABEL, sharedHash),
  };
}

// HChaCha20 takes its inputs as 32-bit words over the raw bytes (it byte-swaps on big-endian hosts).
const SIGMA = new Uint32Array(new TextEncoder().encode("expand 32-byte k").buffer);

/**
 * XChaCha20-Poly1305 under one key with empty associated data, at the protocol's nonce: a 24-byte
 * little-endian counter (§5) that advances after each successful seal or open.
 *
 * XChaCha20-Poly1305 is ChaCha20-Poly1305 (RFC 8439) under the subkey HChaCha20(key, nonce[0..16]) with
 * the 96-bit nonce 00000000 ‖ nonce[16..24] (libsodium's construction, bit-identical to Monocypher's, §1).
 * Node has no XChaCha, so @noble's HChaCha20 feeds OpenSSL's ChaCha20-Poly1305. Measured on the 2-core
 * dev box (Node 20), one 1044-byte block: this ~8-10 µs (100-125 MB/s of data), @noble/ciphers'
 * xchacha20poly1305 ~23 µs (~44 MB/s). Most of the cost is creating the OpenSSL cipher, which cannot be
 * rekeyed, and the subkey changes with every frame's nonce.
 */
class CounterAead {
  /** Nonce for the next seal or open; tests may set it directly. */
  readonly nonce = new Uint8Array(24);
  private readonly keyWords = new Uint32Array(8);
  private readonly nonceHeadWords = new Uint32Array(this.nonce.buffer, 0, 4);
  private readonly subkeyWords = new Uint32Array(8);
  private readonly subkey = new Uint8Array(this.subkeyWords.buffer);
  private readonly iv = Buffer.alloc(12);

  constructor(key: Uint8Array) {
    new Uint8Array(this.keyWords.buffer).set(key);
  }

  /** Writes SEAL(plain) = ciphertext ‖ tag into out at offset, then advances the nonce. */
  sealInto(plain: Uint8Array, out: Buffer, offset: number): void {
    const cipher = createCipheriv("chacha20-poly1305", this.prepare(), this.iv);
    cipher.update(plain).copy(out, offset);
    cipher.final();
    cipher.getAuthTag().copy(out, offset + plain.length);
    this.advance();
  }

  /** Plaintext of ciphertext ‖ tag, or null when it does not authenticate (the nonce then stays). */
  open(sealed: Buffer): Buffer | null {
    const decipher = createDecipheriv("chacha20-poly1305", this.prepare(), this.iv);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_LEN));
    const plain = decipher.update(sealed.subarray(0, sealed.length - TAG_LEN));
    try {
      decipher.final(); // checks the tag; nothing of `plain` is used before this passes
    } catch {
      return null;
    }
    this.advance();
    return plain;
  }

  advance(): void {
    // Byte 0 is least significant. 2^192 frames cannot happen, so the counter never wraps in practice.
    for (let i = 0; i < this.nonce.length; i++) {
      this.nonce[i]++;
      if (this.nonce[i] !== 0) return;
    }
  }

  /** Derives this nonce's subkey and IV into the reused buffers; returns the subkey. */
  private prepare(): Uint8Array {
    hchacha(SIGMA, this.keyWords, this.nonceHeadWords, this.subkeyWords);
    this.iv.set(this.nonce.subarray(16), 4);
    return this.subkey;
  }
}

class Monopiped1Sealer implements RecordSealer {
  readonly maxPlaintext = MAX_DATA;
  private readonly block = Buffer.alloc(BLOCK_LEN);
  constructor(private readonly aead: CounterAead) {}

  /** One frame per 1040 bytes of input; all frames of one call share a single allocation. */
  seal(input: Buffer, carried?: Buffer): Buffer[] {
    const plain = carried ? Buffer.concat([carried, input]) : input;
    const count = Math.ceil(plain.length / MAX_DATA);
    const wire = Buffer.allocUnsafe(count * FRAME_LEN); // every byte is overwritten below
    const frames: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const n = plain.copy(this.block, 0, i * MAX_DATA, Math.min(plain.length, (i + 1) * MAX_DATA));
      if (n < MAX_DATA) this.block.fill(0, n, MAX_DATA); // the padding must be zero (§6)
      this.block.writeUInt32LE(n, MAX_DATA);
      this.aead.sealInto(this.block, wire, i * FRAME_LEN);
      frames.push(wire.subarray(i * FRAME_LEN, (i + 1) * FRAME_LEN));
    }
    return frames;
  }

  // The protocol has no end or abort records: the transport's FIN or close is all the peer sees (§7).
  end(): Buffer[] {
    return [];
  }

  abort(): Buffer[] {
    return [];
  }
}

class Monopiped1Opener implements RecordOpener {
  // Only a frame split across pushes is copied here; whole frames are opened where they arrived.
  private readonly partial = Buffer.alloc(FRAME_LEN);
  private held = 0;
  constructor(private readonly aead: CounterAead) {}

  get buffered(): number {
    return this.held;
  }

  push(bytes: Buffer): OpenEvent[] {
    const events: OpenEvent[] = [];
    let offset = 0;
    if (this.held > 0) {
      offset = bytes.copy(this.partial, this.held);
      this.held += offset;
      if (this.held < FRAME_LEN) return events;
      this.held = 0;
      this.openFrame(this.partial, events);
    }
    for (; bytes.length - offset >= FRAME_LEN; offset += FRAME_LEN) {
      this.openFrame(bytes.subarray(offset, offset + FRAME_LEN), events);
    }
    this.held = bytes.copy(this.partial, 0, offset);
    return events;
  }

  private openFrame(frame: Buffer, events: OpenEvent[]): void {
    const block = this.aead.open(frame);
    if (block === null) throw new ProtocolError("bad-record", "monopiped1 frame did not authenticate");
    const n = block.readUInt32LE(MAX_DATA);
    // Rust leaks length bytes for 1041..1044 and panics above; either way only a broken key holder sends it.
    if (n > MAX_DATA)
      throw new ProtocolError("bad-record", `monopiped1 frame length ${n} exceeds ${MAX_DATA}`);
    // n = 0 is a valid no-op frame: Rust never sends one but accepts it.
    if (n > 0) events.push({ type: "data", data: block.subarray(0, n) });
  }
}

class Monopiped1Handshake implements Handshake {
  private privateKeyObject: KeyObject | null = null;
  /** Our hello, once we know the key it is sealed under (a server with several keys: once the client's opened). */
  private hello: Buffer | null = null;
  private started = false;
  private helloSent = false;
  private readonly peerHello = Buffer.alloc(HELLO_LEN);
  private held = 0;
  private rest = Buffer.alloc(0);
  private done: Session | null = null;

  constructor(
    private readonly role: Role,
    private readonly keys: readonly Monopiped1Keys[],
    private readonly ephemeralSecret?: Buffer,
  ) {
    if (keys.length === 0) throw new Error("monopiped1: no key");
    // A client, or a server with one key, knows its hello's key at once. A server with several
    // sends its hello once the client's hello has told which key (the original client sends its
    // hello without waiting for the server's, §4.3).
    if (role === "client" || keys.length === 1) this.sealHello(keys[0]);
  }

  private get privateKey(): KeyObject {
    if (!this.privateKeyObject) {
      const secret = this.ephemeralSecret ?? randomBytes(32);
      this.privateKeyObject = privateKeyFromSecret(secret);
      if (!this.ephemeralSecret) secret.fill(0);
    }
    return this.privateKeyObject;
  }

  private sealHello(keys: Monopiped1Keys): void {
    const ownKey = this.role === "client" ? keys.clientKey : keys.serverKey;
    // Both hellos use nonce 0 and do not advance the data nonces (§4, §5).
    this.hello = Buffer.alloc(HELLO_LEN);
    new CounterAead(ownKey).sealInto(publicKeyBytes(this.privateKey), this.hello, 0);
  }

  get session(): Session | null {
    return this.done;
  }

  get buffered(): number {
    return this.done ? 0 : this.held;
  }

  // Neither side waits for the other (§4.3), and a server that detects the protocol from the client's
  // hello calls receive() first, so start() and receive() may come in either order.
  start(): Buffer[] {
    this.started = true;
    return this.takeHello();
  }

  private takeHello(): Buffer[] {
    if (!this.started || !this.hello || this.helloSent) return [];
    this.helloSent = true;
    return [this.hello];
  }

  receive(bytes: Buffer): Buffer[] {
    if (this.done) {
      this.rest = Buffer.concat([this.rest, bytes]);
      return [];
    }
    const taken = bytes.copy(this.peerHello, this.held);
    this.held += taken;
    if (this.held === HELLO_LEN) {
      this.done = this.finish();
      this.rest = Buffer.from(bytes.subarray(taken));
      return this.takeHello();
    }
    return [];
  }

  takeRest(): Buffer {
    const rest = this.rest;
    this.rest = Buffer.alloc(0);
    return rest;
  }

  /** The peer's public key from its hello: a client under its key, a server under each of its keys in turn. */
  private openPeerHello(): Buffer {
    const candidates = this.role === "client" ? [this.keys[0]] : this.keys;
    for (const keys of candidates) {
      const peerKey = this.role === "client" ? keys.serverKey : keys.clientKey;
      const peerPublic = new CounterAead(peerKey).open(this.peerHello);
      if (peerPublic === null) continue;
      if (!this.hello) this.sealHello(keys);
      return peerPublic;
    }
    throw new ProtocolError("bad-handshake", "monopiped1 hello did not authenticate (wrong key file?)");
  }

  private finish(): Session {
    const peerPublic = this.openPeerHello();
    const shared = sharedSecret(this.privateKey, peerPublic);
    if (shared === null)
      throw new ProtocolError("bad-handshake", "monopiped1 peer public key has small order");
    const { clientToServer, serverToClient } = sessionKeys(shared);
    shared.fill(0);
    const [sealKey, openKey] =
      this.role === "client" ? [clientToServer, serverToClient] : [serverToClient, clientToServer];
    return {
      protocol: "monopiped1",
      sealer: new Monopiped1Sealer(new CounterAead(sealKey)),
      opener: new Monopiped1Opener(new CounterAead(openKey)),
      authenticatedEnd: false,
      fixedRecordSize: FRAME_LEN,
    };
  }
}

/** Whether 48 bytes are a client hello sealed under this key file: a cheap test before a handshake is built. */
export function isMonopiped1ClientHello(keys: Monopiped1Keys, hello: Buffer): boolean {
  return hello.length === HELLO_LEN && new CounterAead(keys.clientKey).open(hello) !== null;
}

/**
 * The monopiped1 handshake. `keys`: one key file's keys, or several (a client uses the first, a
 * server accepts a hello under any: one XChaCha20-Poly1305 open of 48 bytes per key).
 * `ephemeralSecret` (32 bytes) is for test vectors only, otherwise random.
 */
export function monopiped1Handshake(
  role: Role,
  keys: Monopiped1Keys | readonly Monopiped1Keys[],
  ephemeralSecret?: Buffer,
): Handshake {
  return new Monopiped1Handshake(
    role,
    Array.isArray(keys) ? keys : [keys as Monopiped1Keys],
    ephemeralSecret,
  );
}

/** Building blocks exposed for the test vectors; not part of the API. */
export const _internal = {
  blake2b256,
  sessionKeys,
  x25519PrivateKey: privateKeyFromSecret,
  x25519PublicKey: publicKeyBytes,
  x25519: sharedSecret,
  CounterAead,
};
