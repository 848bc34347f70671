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
import { arena } from "./arena.js";
import { ProtocolError } from "./errors.js";
import { sodium } from "./sodium.js";
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
 * libsodium's xchacha20poly1305_ietf (bit-identical to Monocypher's construction, §1) through
 * sodium-native when it loads: it seals and opens in the caller's buffers, no object and no
 * allocation per frame. Otherwise node:crypto: ChaCha20-Poly1305 (RFC 8439) under the subkey
 * HChaCha20(key, nonce[0..16]) from @noble, with the 96-bit nonce 00000000 ‖ nonce[16..24]; it costs
 * a new OpenSSL cipher object per frame, since the subkey changes with every nonce. Per 1044-byte
 * block (bench/monopiped1-frames.ts): libsodium ~1.5-2 µs, node:crypto ~6-10 µs.
 */
class CounterAead {
  /** Nonce for the next seal or open; tests may set it directly. */
  readonly nonce = new Uint8Array(24);
  private readonly key = new Uint8Array(32);
  private readonly keyWords = new Uint32Array(this.key.buffer);
  private readonly nonceHeadWords = new Uint32Array(this.nonce.buffer, 0, 4);
  private readonly subkeyWords = new Uint32Array(8);
  private readonly subkey = new Uint8Array(this.subkeyWords.buffer);
  private readonly iv = Buffer.alloc(12);
  private readonly na = sodium();

  constructor(key: Uint8Array) {
    this.key.set(key);
  }

  /** Writes SEAL(plain) = ciphertext ‖ tag into out at offset, then advances the nonce. */
  sealInto(plain: Uint8Array, out: Buffer, offset: number): void {
    this.sealDetached(
      out.subarray(offset, offset + plain.length),
      out.subarray(offset + plain.length, offset + plain.length + TAG_LEN),
      plain,
    );
  }

  /**
   * Seals `plain` into `cipher` (same length; the same memory is fine: in place) and its tag into
   * `tag`, then advances the nonce.
   */
  sealDetached(cipher: Uint8Array, tag: Uint8Array, plain: Uint8Array): void {
    if (this.na) {
      this.na.crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
        cipher,
        tag,
        plain,
        null,
        null,
        this.nonce,
        this.key,
      );
    } else {
      const c = createCipheriv("chacha20-poly1305", this.prepare(), this.iv);
      cipher.set(c.update(plain));
      c.final();
      tag.set(c.getAuthTag());
    }
    this.advance();
  }

  /**
   * Opens `cipher` ‖ `tag` into `plain` (same length as `cipher`; may be the same memory). False,
   * with `plain` untouched and the nonce unchanged, when it does not authenticate.
   */
  openDetached(plain: Uint8Array, cipher: Uint8Array, tag: Uint8Array): boolean {
    if (this.na) {
      try {
        this.na.crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
          plain,
          null,
          cipher,
          tag,
          null,
          this.nonce,
          this.key,
        );
      } catch {
        return false;
      }
    } else {
      const d = createDecipheriv("chacha20-poly1305", this.prepare(), this.iv);
      d.setAuthTag(tag);
      const out = d.update(cipher);
      try {
        d.final(); // checks the tag; nothing of `out` is used before this passes
      } catch {
        return false;
      }
      plain.set(out);
    }
    this.advance();
    return true;
  }

  /** Plaintext of ciphertext ‖ tag, or null when it does not authenticate (the nonce then stays). */
  open(sealed: Buffer): Buffer | null {
    const plain = Buffer.alloc(sealed.length - TAG_LEN);
    const ok = this.openDetached(
      plain,
      sealed.subarray(0, sealed.length - TAG_LEN),
      sealed.subarray(sealed.length - TAG_LEN),
    );
    return ok ? plain : null;
  }

  advance(): void {
    // Byte 0 is least significant. 2^192 frames cannot happen, so the counter never wraps in practice.
    for (let i = 0; i < this.nonce.length; i++) {
      this.nonce[i]++;
      if (this.nonce[i] !== 0) return;
    }
  }

  /** Derives this nonce's subkey and IV into the reused buffers; returns the subkey (node:crypto path). */
  private prepare(): Uint8Array {
    hchacha(SIGMA, this.keyWords, this.nonceHeadWords, this.subkeyWords);
    this.iv.set(this.nonce.subarray(16), 4);
    return this.subkey;
  }
}

class Monopiped1Sealer implements RecordSealer {
  readonly maxPlaintext = MAX_DATA;
  constructor(private readonly aead: CounterAead) {}

  /**
   * One frame per 1040 bytes of input (the carried bytes first). All frames of one call are built and
   * sealed in place in one allocation: data ‖ zeros ‖ n is written where the frame goes, then
   * encrypted there.
   */
  seal(input: Buffer, carried?: Buffer): Buffer[] {
    const head = carried?.length ?? 0;
    const total = head + input.length;
    const count = Math.ceil(total / MAX_DATA);
    // Every byte is overwritten below. From the arena: lent inside a pump's operation (reused once
    // the socket has written it), fresh otherwise.
    const wire = arena.take(count * FRAME_LEN);
    const frames: Buffer[] = new Array(count);
    for (let k = 0, at = 0; k < count; k++, at += FRAME_LEN) {
      const from = k * MAX_DATA;
      const n = Math.min(MAX_DATA, total - from);
      // The frame's data: from the carried bytes, the input, or both.
      if (from < head) {
        const c = (carried as Buffer).copy(wire, at, from, Math.min(head, from + n));
        if (c < n) input.copy(wire, at + c, 0, n - c);
      } else input.copy(wire, at, from - head, from - head + n);
      if (n < MAX_DATA) wire.fill(0, at + n, at + MAX_DATA); // the padding must be zero (§6)
      wire.writeUInt32LE(n, at + MAX_DATA);
      const block = wire.subarray(at, at + BLOCK_LEN);
      this.aead.sealDetached(block, wire.subarray(at + BLOCK_LEN, at + FRAME_LEN), block);
      frames[k] = wire.subarray(at, at + FRAME_LEN);
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

  /**
   * Opens every whole frame of `bytes` straight into one output buffer, each frame's block written
   * where the data so far ends (its padding and length field are overwritten by the next frame's),
   * so the data of one push comes out as one event without a copy per frame.
   */
  push(bytes: Buffer): OpenEvent[] {
    const events: OpenEvent[] = [];
    let offset = 0;
    if (this.held > 0) {
      offset = bytes.copy(this.partial, this.held);
      this.held += offset;
      if (this.held < FRAME_LEN) return events;
      this.held = 0;
      const block = arena.take(BLOCK_LEN);
      const n = this.openFrame(block, 0, this.partial, 0);
      arena.shrink(block, n);
      if (n > 0) events.push({ type: "data", data: block.subarray(0, n) });
    }
    const count = Math.floor((bytes.length - offset) / FRAME_LEN);
    if (count > 0) {
      const out = arena.take(count * MAX_DATA + (BLOCK_LEN - MAX_DATA));
      let total = 0;
      for (let k = 0; k < count; k++, offset += FRAME_LEN) total += this.openFrame(out, total, bytes, offset);
      // The next push's data then follows this one's directly (one write for a WebSocket read's frames).
      arena.shrink(out, total);
      if (total > 0) events.push({ type: "data", data: out.subarray(0, total) });
    }
    this.held = bytes.copy(this.partial, 0, offset);
    return events;
  }

  /** Opens the frame at src[at..] into out[to..to + 1044]; returns its data length n. */
  private openFrame(out: Buffer, to: number, src: Buffer, at: number): number {
    const ok = this.aead.openDetached(
      out.subarray(to, to + BLOCK_LEN),
      src.subarray(at, at + BLOCK_LEN),
      src.subarray(at + BLOCK_LEN, at + FRAME_LEN),
    );
    if (!ok) throw new ProtocolError("bad-record", "monopiped1 frame did not authenticate");
    const n = out.readUInt32LE(to + MAX_DATA);
    // Rust leaks length bytes for 1041..1044 and panics above; either way only a broken key holder sends it.
    if (n > MAX_DATA)
      throw new ProtocolError("bad-record", `monopiped1 frame length ${n} exceeds ${MAX_DATA}`);
    // n = 0 is a valid no-op frame: Rust never sends one but accepts it.
    return n;
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
