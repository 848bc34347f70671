/**
 * spiped: the wire format of Colin Percival's spiped 1.6, so either end of a tunnel can be the real
 * spiped. Section numbers (§) refer to shared/protocols/spiped.md.
 *
 *   both ways, unprompted        32 bytes    nonce
 *   client, once it has nonce_S  288 bytes   y_C ‖ HMAC(dhmac_C, y_C)         (DH group 14, y 256 bytes BE)
 *   server, once y_C checks out  288 bytes   y_S ‖ HMAC(dhmac_S, y_S)
 *   then packets both ways       1060 bytes  AES-256-CTR(E, data ‖ zeros ‖ be32 len) ‖ HMAC(H, enc ‖ be64 pnum)
 *
 * K = SHA256(key file); dhmac_C ‖ dhmac_S = PBKDF2-SHA256(K, nonce_C ‖ nonce_S, 1, 64);
 * E_C ‖ H_C ‖ E_S ‖ H_S = PBKDF2-SHA256(K, nonce_C ‖ nonce_S ‖ y_SC, 1, 128) (§2).
 *
 * Stricter than spiped where only a broken or hostile key holder notices: a peer's y of 0 or p − 1
 * is refused (spiped accepts them, and they make the DH result predictable). End of stream is the
 * transport's own and is not authenticated (§4), as in spiped.
 */
import {
  type Cipher,
  createCipheriv,
  createDiffieHellman,
  createHash,
  createHmac,
  createSecretKey,
  type DiffieHellman,
  getDiffieHellman,
  type KeyObject,
  pbkdf2Sync,
  randomBytes,
  randomFillSync,
  timingSafeEqual,
} from "node:crypto";
import { arena } from "./arena.js";
import { ByteQueue } from "./bytequeue.js";
import { ProtocolError } from "./errors.js";
import type { Handshake, OpenEvent, RecordOpener, RecordSealer, Role, Session } from "./types.js";

export const NONCE_LEN = 32;
export const Y_LEN = 256;
const MAC_LEN = 32;
export const DH_MESSAGE_LEN = Y_LEN + MAC_LEN; // 288
export const MAX_DATA = 1024;
const PADDED_LEN = MAX_DATA + 4; // data ‖ zero padding ‖ be32(len)
export const PACKET_LEN = PADDED_LEN + MAC_LEN; // 1060
/** Keystream per packet: whole AES blocks covering the 1028 padded bytes (65 blocks). */
const KS_STRIDE = Math.ceil(PADDED_LEN / 16) * 16; // 1040
const KS_BLOCKS = KS_STRIDE / 16;
const U32 = 0x1_0000_0000;

/** The RFC 3526 2048-bit MODP prime (group 14), as OpenSSL has it; generator 2. */
export const GROUP14_PRIME: Buffer = getDiffieHellman("modp14").getPrime();
const Y_ONE = Buffer.alloc(Y_LEN);
Y_ONE[Y_LEN - 1] = 1;
const Y_P_MINUS_1 = Buffer.from(GROUP14_PRIME);
Y_P_MINUS_1[Y_LEN - 1] -= 1; // p ends in 0xff: no borrow

/** -f: send y = 1 and use y_SC = 1 (no forward secrecy). -g: refuse a peer that sends y = 1. */
export interface SpipedOptions {
  noPfs?: boolean;
  requirePfs?: boolean;
}

/** The long-term secret K (§1): SHA-256 of the whole key file. */
export function spipedKey(keyFile: Buffer): Buffer {
  return createHash("sha256").update(keyFile).digest();
}

function pad256(value: Buffer): Buffer {
  if (value.length === Y_LEN) return value;
  if (value.length > Y_LEN) throw new Error("DH value longer than 256 bytes");
  const out = Buffer.alloc(Y_LEN);
  value.copy(out, Y_LEN - value.length);
  return out;
}

function hmac(key: Buffer, ...parts: Buffer[]): Buffer {
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** dk_1 (§2): the keys that authenticate the two DH messages. */
function dhMacKeys(secret: Buffer, nonceC: Buffer, nonceS: Buffer): { client: Buffer; server: Buffer } {
  const dk1 = pbkdf2Sync(secret, Buffer.concat([nonceC, nonceS]), 1, 64, "sha256");
  return { client: dk1.subarray(0, 32), server: dk1.subarray(32, 64) };
}

/** dk_2 (§2): the four session keys. */
function sessionKeys(secret: Buffer, nonceC: Buffer, nonceS: Buffer, ySC: Buffer) {
  const dk2 = pbkdf2Sync(secret, Buffer.concat([nonceC, nonceS, ySC]), 1, 128, "sha256");
  return {
    encC: dk2.subarray(0, 32),
    macC: dk2.subarray(32, 64),
    encS: dk2.subarray(64, 96),
    macS: dk2.subarray(96, 128),
  };
}

// ---------------------------------------------------------------------------------------------
/**
 * One direction's packet keys and counter. The CTR keystream of many packets comes from one
 * AES-256-ECB encryption of their counter blocks be64(pnum) ‖ be64(block), so no cipher object is
 * created per packet; HMAC is one createHmac per packet (Node 20 has no reusable HMAC context).
 */
class PacketKeys {
  /** Next packet number, as two 32-bit halves (a JS number cannot hold every uint64). */
  hi = 0;
  lo = 0;
  /** Set once packet number 2^64 − 1 has been used: no further packet may be sealed or opened. */
  exhausted = false;
  private readonly ecb: Cipher;
  private counters: Buffer = Buffer.alloc(0);
  private counterWords: Uint32Array = new Uint32Array(0);
  private readonly pnumBytes = Buffer.alloc(8);
  // A KeyObject, made once: createHmac with a raw Buffer key costs ~50% more per packet.
  private readonly macKey: KeyObject;

  constructor(encKey: Buffer, macKey: Buffer) {
    this.macKey = createSecretKey(macKey);
    this.ecb = createCipheriv("aes-256-ecb", encKey, null);
    this.ecb.setAutoPadding(false);
  }

  /** Throws unless `count` more packet numbers are left before the counter would wrap. */
  reserve(count: number): void {
    const left = this.exhausted ? 0 : (U32 - 1 - this.hi) * U32 + (U32 - this.lo);
    if (count > left)
      throw new ProtocolError(
        "nonce-limit",
        "spiped packet counter reached 2^64 - 1; the connection must end",
      );
  }

  /** Keystream for the next `count` packets, KS_STRIDE bytes each (the counter does not move). */
  keystream(count: number): Buffer {
    const size = count * KS_STRIDE;
    if (this.counters.length < size) this.growCounters(size);
    const counters = this.counters.length >= size ? this.counters : counterBlocks(size);
    const words = counters === this.counters ? this.counterWords : new Uint32Array(counters.buffer);
    let hi = this.hi;
    let lo = this.lo;
    for (let k = 0; k < count; k++) {
      // The pnum half of each of the packet's 65 counter blocks, as host-order words of big-endian bytes.
      const h = toBigEndianWord(hi);
      const l = toBigEndianWord(lo);
      for (let w = (k * KS_STRIDE) >>> 2, end = w + KS_BLOCKS * 4; w < end; w += 4) {
        words[w] = h;
        words[w + 1] = l;
      }
      if (++lo === U32) {
        lo = 0;
        hi++;
      }
    }
    return this.ecb.update(counters.subarray(0, size));
  }

  /**
   * Writes HMAC(H, enc ‖ be64(pnum)) for packet `k` past the current counter into `out` at `at`.
   * The digest comes out as a latin1 ("binary") string (one byte per character, exact) and is written into
   * place: a string is an ordinary young object, where a digest Buffer is a new external
   * ArrayBuffer per 1 KiB packet for the garbage collector (~1 µs a packet less, measured).
   */
  macInto(enc: Buffer, k: number, out: Buffer, at: number): void {
    let lo = this.lo + k;
    let hi = this.hi;
    if (lo >= U32) {
      hi += Math.floor(lo / U32);
      lo %= U32;
    }
    this.pnumBytes.writeUInt32BE(hi, 0);
    this.pnumBytes.writeUInt32BE(lo, 4);
    const digest = createHmac("sha256", this.macKey).update(enc).update(this.pnumBytes).digest("binary");
    out.write(digest, at, "latin1");
  }

  advance(count: number): void {
    const lo = this.lo + count;
    this.hi += Math.floor(lo / U32);
    this.lo = lo % U32;
    if (this.hi === U32) {
      this.hi = U32 - 1;
      this.lo = U32 - 1;
      this.exhausted = true;
    }
  }

  /** Keeps counter blocks for up to 64 packets (one 64 KiB read); larger calls get their own. */
  private growCounters(size: number): void {
    const keep = Math.min(Math.max(size, 2 * this.counters.length), MAX_KEPT_PACKETS * KS_STRIDE);
    if (keep <= this.counters.length) return;
    this.counters = counterBlocks(keep);
    this.counterWords = new Uint32Array(this.counters.buffer);
  }
}

const MAX_KEPT_PACKETS = 64;

/** Room for counter blocks of size / KS_STRIDE packets, with the block-index half written (it never changes). */
function counterBlocks(size: number): Buffer {
  const blocks = Buffer.from(new ArrayBuffer(size));
  const view = new DataView(blocks.buffer);
  for (let base = 0; base + KS_STRIDE <= size; base += KS_STRIDE) {
    for (let j = 0; j < KS_BLOCKS; j++) view.setUint32(base + j * 16 + 12, j);
  }
  return blocks;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The host-order word whose bytes in memory are `v` big-endian. */
function toBigEndianWord(v: number): number {
  if (!LITTLE_ENDIAN) return v;
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

/** A view of a buffer's bytes as 32-bit words; the buffer must start 4-byte aligned. */
function wordsOf(b: Buffer): Int32Array {
  return new Int32Array(b.buffer, b.byteOffset, b.length >>> 2);
}

/** XOR of one packet's 1028 padded bytes (257 words) with its keystream, in place in `dst`. */
function xorPacket(dst: Int32Array, dstWord: number, ks: Int32Array, ksWord: number): void {
  for (let i = 0; i < PADDED_LEN >>> 2; i++) dst[dstWord + i] ^= ks[ksWord + i];
}

/** An aligned copy of `b` when it does not start on a 4-byte boundary (cipher output always does here). */
function aligned(b: Buffer): Buffer {
  if ((b.byteOffset & 3) === 0) return b;
  const copy = Buffer.from(new ArrayBuffer(b.length));
  b.copy(copy);
  return copy;
}

class SpipedSealer implements RecordSealer {
  readonly maxPlaintext = MAX_DATA;
  constructor(private readonly keys: PacketKeys) {}

  /** One packet per 1024 bytes of input; all packets of one call share one allocation and one keystream call. */
  seal(input: Buffer, carried?: Buffer): Buffer[] {
    const plain = carried ? Buffer.concat([carried, input]) : input;
    if (plain.length === 0) return []; // a packet must carry 1..1024 bytes
    const count = Math.ceil(plain.length / MAX_DATA);
    this.keys.reserve(count);
    const ks = wordsOf(aligned(this.keys.keystream(count)));
    const wire = arena.take(count * PACKET_LEN); // 8-byte aligned; lent inside a pump's operation
    const wireWords = wordsOf(wire);
    const packets: Buffer[] = new Array(count);
    for (let k = 0; k < count; k++) {
      const at = k * PACKET_LEN;
      const n = plain.copy(wire, at, k * MAX_DATA, Math.min(plain.length, (k + 1) * MAX_DATA));
      if (n < MAX_DATA) wire.fill(0, at + n, at + MAX_DATA);
      wire.writeUInt32BE(n, at + MAX_DATA);
      xorPacket(wireWords, at >>> 2, ks, (k * KS_STRIDE) >>> 2);
      const enc = wire.subarray(at, at + PADDED_LEN);
      this.keys.macInto(enc, k, wire, at + PADDED_LEN);
      packets[k] = wire.subarray(at, at + PACKET_LEN);
    }
    this.keys.advance(count);
    return packets;
  }

  // spiped has no end or abort packets: the transport's FIN or close is all the peer sees (§4).
  end(): Buffer[] {
    return [];
  }

  abort(): Buffer[] {
    return [];
  }
}

class SpipedOpener implements RecordOpener {
  // Only a packet split across pushes is copied here; whole packets are read where they arrived.
  private readonly partial = Buffer.alloc(PACKET_LEN);
  private held = 0;
  /** Each packet's expected MAC, computed into the same 32 bytes. */
  private readonly expected = Buffer.alloc(32);
  constructor(private readonly keys: PacketKeys) {}

  get buffered(): number {
    return this.held;
  }

  push(bytes: Buffer): OpenEvent[] {
    const packets: Buffer[] = [];
    let offset = 0;
    if (this.held > 0) {
      offset = bytes.copy(this.partial, this.held);
      this.held += offset;
      if (this.held < PACKET_LEN) return [];
      this.held = 0;
      packets.push(this.partial);
    }
    for (; bytes.length - offset >= PACKET_LEN; offset += PACKET_LEN) {
      packets.push(bytes.subarray(offset, offset + PACKET_LEN));
    }
    const events = packets.length > 0 ? this.open(packets) : [];
    // After open(): the first packet may be `partial` itself.
    this.held = bytes.copy(this.partial, 0, offset);
    return events;
  }

  /** MAC of every packet first (§3), then one keystream for all, then the lengths. */
  private open(packets: Buffer[]): OpenEvent[] {
    const count = packets.length;
    this.keys.reserve(count);
    for (let k = 0; k < count; k++) {
      const p = packets[k];
      const expected = this.expected;
      this.keys.macInto(p.subarray(0, PADDED_LEN), k, expected, 0);
      if (!timingSafeEqual(expected, p.subarray(PADDED_LEN))) {
        throw new ProtocolError("bad-record", "spiped packet did not authenticate");
      }
    }
    const plain = aligned(this.keys.keystream(count)); // decrypted in place below
    this.keys.advance(count);
    // XOR by words, straight from where the ciphertext arrived when it is word-aligned (the usual
    // case: reads are multiples of 4 bytes, and so are packets); otherwise from an aligned copy.
    const plainWords = wordsOf(plain);
    let source: ArrayBufferLike | null = null;
    let sourceWords: Int32Array | null = null;
    let scratch: Buffer | null = null;
    for (let k = 0; k < count; k++) {
      const p = packets[k];
      if ((p.byteOffset & 3) === 0) {
        if (p.buffer !== source) {
          source = p.buffer;
          sourceWords = new Int32Array(source, 0, source.byteLength >>> 2);
        }
        xorPacket(plainWords, (k * KS_STRIDE) >>> 2, sourceWords as Int32Array, p.byteOffset >>> 2);
      } else {
        scratch ??= Buffer.allocUnsafeSlow(PADDED_LEN);
        p.copy(scratch, 0, 0, PADDED_LEN);
        xorPacket(plainWords, (k * KS_STRIDE) >>> 2, wordsOf(scratch), 0);
      }
    }
    // Lengths, and the data packed to the front of the buffer (never overlapping forwards).
    let total = 0;
    for (let k = 0; k < count; k++) {
      const at = k * KS_STRIDE;
      const n = plain.readUInt32BE(at + MAX_DATA);
      if (n === 0 || n > MAX_DATA)
        throw new ProtocolError("bad-record", `spiped packet length ${n} is not within 1..${MAX_DATA}`);
      if (at !== total) plain.copyWithin(total, at, at + n);
      total += n;
    }
    return [{ type: "data", data: plain.subarray(0, total) }];
  }
}

function makeSession(sealKeys: PacketKeys, openKeys: PacketKeys): Session {
  return {
    protocol: "spiped",
    sealer: new SpipedSealer(sealKeys),
    opener: new SpipedOpener(openKeys),
    authenticatedEnd: false,
    fixedRecordSize: PACKET_LEN,
  };
}

// ---------------------------------------------------------------------------------------------
let sharedGroup14: DiffieHellman | null = null;

/**
 * One DH object over group 14 for the whole process, each handshake setting its own exponent right
 * before each use (the calls are synchronous, so handshakes cannot interleave inside one). Node 22+
 * tests the prime when such an object is made (~350 ms of CPU); getDiffieHellman("modp14") skips
 * that but cannot take spiped's exponent form (§2).
 */
function group14(): DiffieHellman {
  sharedGroup14 ??= createDiffieHellman(GROUP14_PRIME, 2);
  return sharedGroup14;
}

/** Make the shared DH object now, so that the first connection does not wait for it. */
export function prepareSpiped(): void {
  group14();
}

class SpipedHandshake implements Handshake {
  private readonly nonce = randomBytes(NONCE_LEN);
  private readonly queue = new ByteQueue();
  private peerNonce: Buffer | null = null;
  private macKeys: { client: Buffer; server: Buffer } | null = null;
  private started = false;
  /** Messages produced before start() was called; start() sends them after the nonce. */
  private pending: Buffer[] = [];
  /** Our DH exponent (null with -f, and once the session keys are made). */
  private exponent: Buffer | null = null;
  private rest = Buffer.alloc(0);
  private done: Session | null = null;
  /** The key in use: a client's first; a server's, the one the client's DH message verifies under. */
  private secret: Buffer | null;

  constructor(
    private readonly role: Role,
    private readonly secrets: readonly Buffer[],
    private readonly opts: SpipedOptions,
  ) {
    if (opts.noPfs && opts.requirePfs) throw new Error("spiped: noPfs and requirePfs contradict each other");
    if (secrets.length === 0) throw new Error("spiped: no key");
    this.secret = role === "client" || secrets.length === 1 ? secrets[0] : null;
  }

  get session(): Session | null {
    return this.done;
  }

  get buffered(): number {
    return this.done ? 0 : this.queue.length;
  }

  // Both sides send their nonce at once (§2, step 1).
  start(): Buffer[] {
    if (this.started) return [];
    this.started = true;
    const out = [this.nonce, ...this.pending];
    this.pending = [];
    return out;
  }

  receive(bytes: Buffer): Buffer[] {
    if (this.done) {
      this.rest = this.rest.length ? Buffer.concat([this.rest, bytes]) : Buffer.from(bytes);
      return [];
    }
    this.queue.push(bytes);
    const out: Buffer[] = [];
    if (!this.peerNonce && this.queue.length >= NONCE_LEN) {
      this.peerNonce = Buffer.from(this.queue.take(NONCE_LEN));
      // The client sends its DH value once it has the server's nonce; the server waits for the
      // client's (and, holding several keys, derives its MAC keys only then, per key).
      if (this.role === "client") {
        this.macKeys = this.macKeysFor(this.secret as Buffer);
        out.push(this.dhMessage());
      }
    }
    if (this.peerNonce && this.queue.length >= DH_MESSAGE_LEN) {
      const peerY = this.checkPeer(this.queue.take(DH_MESSAGE_LEN));
      if (this.role === "server") out.push(this.dhMessage());
      this.done = this.finish(peerY);
      this.rest = this.queue.length ? Buffer.from(this.queue.takeAll()) : Buffer.alloc(0);
    }
    if (!this.started) {
      this.pending.push(...out);
      return [];
    }
    return out;
  }

  takeRest(): Buffer {
    const rest = this.rest;
    this.rest = Buffer.alloc(0);
    return rest;
  }

  private nonces(): [Buffer, Buffer] {
    const peer = this.peerNonce as Buffer;
    return this.role === "client" ? [this.nonce, peer] : [peer, this.nonce];
  }

  private macKeysFor(secret: Buffer): { client: Buffer; server: Buffer } {
    const [nonceC, nonceS] = this.nonces();
    return dhMacKeys(secret, nonceC, nonceS);
  }

  /**
   * Whether the peer's DH message verifies: a client under its key, a server under each of its
   * keys in turn (one PBKDF2-SHA256 of 64 bytes and one HMAC of 256 bytes per key); the key that
   * verifies becomes the connection's.
   */
  private macVerifies(message: Buffer, y: Buffer): boolean {
    const mac = message.subarray(Y_LEN, DH_MESSAGE_LEN);
    const candidates = this.role === "client" ? [this.secret as Buffer] : this.secrets;
    for (const secret of candidates) {
      const keys =
        this.role === "client"
          ? (this.macKeys as { client: Buffer; server: Buffer })
          : this.macKeysFor(secret);
      const macKey = this.role === "client" ? keys.server : keys.client;
      if (timingSafeEqual(hmac(macKey, y), mac)) {
        this.secret = secret;
        this.macKeys = keys;
        return true;
      }
    }
    return false;
  }

  /** Our y ‖ HMAC(dhmac_own, y): y = 1 with -f, else 2^(2^258 + x) mod p as spiped does (§2). */
  private dhMessage(): Buffer {
    let y: Buffer;
    if (this.opts.noPfs) {
      y = Y_ONE;
    } else {
      const exponent = Buffer.alloc(33);
      exponent[0] = 0x04; // 2^258
      randomFillSync(exponent, 1, 32);
      const dh = group14();
      dh.setPrivateKey(exponent);
      y = pad256(dh.generateKeys());
      this.exponent = exponent;
    }
    const keys = this.macKeys as { client: Buffer; server: Buffer };
    const macKey = this.role === "client" ? keys.client : keys.server;
    return Buffer.concat([y, hmac(macKey, y)]);
  }

  /** Checks the peer's y ‖ h (§2): MAC first, in constant time, then the range, then -g. Returns y. */
  private checkPeer(message: Buffer): Buffer {
    const y = Buffer.from(message.subarray(0, Y_LEN));
    if (!this.macVerifies(message, y)) {
      throw new ProtocolError(
        "bad-handshake",
        "spiped DH message did not authenticate (wrong key file, or not a spiped peer)",
      );
    }
    if (Buffer.compare(y, GROUP14_PRIME) >= 0)
      throw new ProtocolError("bad-handshake", "spiped peer's DH value is not below the group prime");
    if (y.equals(Y_ONE) && this.opts.requirePfs) {
      throw new ProtocolError(
        "bad-handshake",
        "spiped peer does not use forward secrecy (it runs with -f) and -g requires it",
      );
    }
    if (y.every((b) => b === 0) || y.equals(Y_P_MINUS_1))
      throw new ProtocolError("bad-handshake", "spiped peer's DH value is degenerate (0 or p - 1)");
    return y;
  }

  private finish(peerY: Buffer): Session {
    let ySC: Buffer;
    if (this.opts.noPfs || peerY.equals(Y_ONE)) {
      ySC = Y_ONE; // -f on either side: 1^e = 1 (§2)
    } else {
      const dh = group14();
      try {
        dh.setPrivateKey(this.exponent as Buffer);
        ySC = pad256(dh.computeSecret(peerY));
      } catch (err) {
        throw new ProtocolError("bad-handshake", `spiped peer's DH value refused: ${(err as Error).message}`);
      } finally {
        dh.setPrivateKey(Y_ONE); // leave no exponent in the shared object
      }
    }
    this.exponent?.fill(0);
    this.exponent = null;
    const [nonceC, nonceS] = this.nonces();
    const k = sessionKeys(this.secret as Buffer, nonceC, nonceS, ySC);
    if (ySC !== Y_ONE) ySC.fill(0);
    const toServer = () => new PacketKeys(k.encC, k.macC);
    const toClient = () => new PacketKeys(k.encS, k.macS);
    return this.role === "client" ? makeSession(toServer(), toClient()) : makeSession(toClient(), toServer());
  }
}

/**
 * The spiped handshake for one connection; `secrets` is spipedKey(key file), or several of them (a
 * client uses the first, a server accepts any).
 */
export function spipedHandshake(
  role: Role,
  secrets: Buffer | readonly Buffer[],
  opts: SpipedOptions = {},
): Handshake {
  return new SpipedHandshake(role, Buffer.isBuffer(secrets) ? [secrets] : secrets, opts);
}

/** Building blocks exposed for the tests and the micro-benchmark; not part of the API. */
export const _internal = { PacketKeys, makeSession, Y_ONE, KS_STRIDE };
