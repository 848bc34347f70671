/**
 * The parts of the Noise Protocol Framework (revision 34) that monopiped2 needs: CipherState,
 * SymmetricState and a HandshakeState for the NN and NNpsk0 patterns, with DH 25519, cipher
 * ChaChaPoly and hash BLAKE2b or SHA256. The primitives come from libsodium where sodium-native
 * loads (sodium.ts), from node:crypto (OpenSSL) otherwise, with the same bytes either way.
 *
 * Sans-IO: the handshake state turns payloads into messages and back; it never sees a socket.
 */
import * as nodeCrypto from "node:crypto";
import { createCipheriv, createDecipheriv, createHash, createHmac } from "node:crypto";
import { ProtocolError } from "./errors.js";
import { type Sodium, sodium } from "./sodium.js";
import { freshKeyPair, type KeyPair, sharedSecret } from "./x25519.js";

export { type KeyPair, keyPairFromSecret, prepareSpareKeyPair } from "./x25519.js";

export const DHLEN = 32;
export const TAGLEN = 16;
const EMPTY = Buffer.alloc(0);
export type NoiseHash = "BLAKE2b" | "SHA256";

/** X25519; a low-order peer key (all-zero shared secret) is refused, as Noise allows. */
function dh(own: KeyPair, peerPublic: Buffer): Buffer {
  const shared = sharedSecret(own.privateKey, peerPublic);
  if (!shared) throw new ProtocolError("bad-handshake", "peer sent a degenerate X25519 key");
  return shared;
}

// ---------------------------------------------------------------------------------------------
// Hash, HMAC and HKDF as Noise defines them (section 4.3).
type OneShotHash = (alg: string, data: Buffer, encoding: "buffer") => Buffer;
const oneShotHash = (nodeCrypto as unknown as { hash?: OneShotHash }).hash;

/**
 * Where libsodium is loaded, HASH is its one-shot BLAKE2b or SHA-256 over one buffer (the parts
 * copied into a scratch buffer first): no object per call. Otherwise node:crypto: the one-shot
 * crypto.hash (Node 20.12+) or createHash. HMAC is OpenSSL's (createHmac), 9-12 per handshake side.
 */
class HashFn {
  readonly hashLen: number;
  private readonly alg: string;
  private readonly blockLen: number;
  private readonly sha256: boolean;
  /** Scratch for a hash's input: a block of padded key and a message (mixHash, HKDF) behind it. */
  private readonly scratch: Buffer;
  constructor(name: NoiseHash) {
    this.sha256 = name === "SHA256";
    this.alg = this.sha256 ? "sha256" : "blake2b512";
    this.hashLen = this.sha256 ? 32 : 64;
    this.blockLen = this.sha256 ? 64 : 128;
    this.scratch = Buffer.alloc(this.blockLen + 256);
  }

  /** HASH of `len` bytes of the scratch buffer into a new buffer (libsodium). */
  private hashScratch(na: Sodium, len: number): Buffer {
    const out = Buffer.allocUnsafe(this.hashLen);
    const input = len === this.scratch.length ? this.scratch : this.scratch.subarray(0, len);
    if (this.sha256) na.crypto_hash_sha256(out, input);
    else na.crypto_generichash(out, input);
    return out;
  }

  hash(...parts: Buffer[]): Buffer {
    const na = sodium();
    if (na) {
      let len = 0;
      for (const p of parts) len += p.length;
      if (len <= this.scratch.length) {
        let at = 0;
        for (const p of parts) at += p.copy(this.scratch, at);
        return this.hashScratch(na, len);
      }
      const out = Buffer.allocUnsafe(this.hashLen);
      const input = Buffer.concat(parts);
      if (this.sha256) na.crypto_hash_sha256(out, input);
      else na.crypto_generichash(out, input);
      return out;
    }
    // The one-shot crypto.hash (Node 20.12+) makes no Hash object: ~40% cheaper for these short inputs.
    if (oneShotHash)
      return oneShotHash(this.alg, parts.length === 1 ? parts[0] : Buffer.concat(parts), "buffer");
    const h = createHash(this.alg);
    for (const p of parts) h.update(p);
    return h.digest();
  }

  hmac(key: Buffer, ...parts: Buffer[]): Buffer {
    // OpenSSL's HMAC (a primitive is not rebuilt here from its hash, however cheap that would be).
    const h = createHmac(this.alg, key);
    for (const p of parts) h.update(p);
    return h.digest();
  }

  /** Noise HKDF: returns `n` outputs of hashLen bytes each. */
  hkdf(chainingKey: Buffer, ikm: Buffer, n: 2 | 3): Buffer[] {
    const tempKey = this.hmac(chainingKey, ikm);
    const out: Buffer[] = [];
    let prev: Buffer = EMPTY;
    for (let i = 1; i <= n; i++) {
      prev = this.hmac(tempKey, prev, COUNTER_BYTES[i]);
      out.push(prev);
    }
    tempKey.fill(0);
    return out;
  }
}

/** HKDF's one-byte counters. */
const COUNTER_BYTES = [Buffer.of(0), Buffer.of(1), Buffer.of(2), Buffer.of(3)];

// ---------------------------------------------------------------------------------------------
/**
 * A Noise CipherState: ChaCha20-Poly1305 with a 64-bit little-endian counter nonce. The counter is
 * refused long before it could wrap (Noise reserves 2^64-1; we stop at 2^48 messages, far beyond
 * any real connection), so a nonce is never reused under one key.
 */
export const NONCE_LIMIT = 2 ** 48;

export class CipherState {
  private key: Buffer | null = null;
  private n = 0;
  private readonly nonce = Buffer.alloc(12);

  /** A copy at the same key and counter (the key buffer is shared: it is never written to). */
  clone(): CipherState {
    const copy = new CipherState();
    copy.key = this.key;
    copy.n = this.n;
    return copy;
  }

  /**
   * Whether `count` more messages may be sealed or opened: every nonce they need is below
   * NONCE_LIMIT. A sealer asks before it produces any byte of a record.
   */
  hasNonces(count: number): boolean {
    return this.n + count <= NONCE_LIMIT;
  }

  /** Moves the counter to `n` (tests only: reaching the limit for real takes 2^48 messages). */
  setCounterForTest(n: number): void {
    this.n = n;
  }

  initializeKey(key: Buffer | null): void {
    this.key = key;
    this.n = 0;
  }
  hasKey(): boolean {
    return this.key !== null;
  }
  get counter(): number {
    return this.n;
  }

  /** The nonce for the current counter. The counter advances only after a message succeeds. */
  private currentNonce(): Buffer {
    if (this.n >= NONCE_LIMIT) throw new ProtocolError("nonce-limit", "message counter limit reached");
    this.nonce.writeUInt32LE(this.n >>> 0, 4);
    this.nonce.writeUInt32LE(Math.floor(this.n / 2 ** 32), 8);
    return this.nonce;
  }

  /** Encrypt `plain` with associated data `ad`; returns ciphertext || tag. Without a key, returns plain. */
  encryptWithAd(ad: Buffer, plain: Buffer): Buffer {
    if (!this.key) return plain;
    const out = Buffer.allocUnsafe(plain.length + TAGLEN);
    this.sealTo(out, 0, plain, ad);
    return out;
  }

  /**
   * Encrypt `plain` with associated data `ad` into `out` at `at` as ciphertext || tag; returns the
   * end offset. `plain` may be `out[at, at + plain.length)` itself (encryption in place).
   * libsodium where it is loaded: no object, no allocation; otherwise node:crypto, copied.
   */
  sealTo(out: Buffer, at: number, plain: Buffer, ad: Buffer = EMPTY): number {
    if (!this.key) throw new Error("CipherState has no key");
    const nonce = this.currentNonce();
    const len = plain.length;
    const na = sodium();
    if (na) {
      na.crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        out.subarray(at, at + len),
        out.subarray(at + len, at + len + TAGLEN),
        plain,
        ad.length > 0 ? ad : null,
        null,
        nonce,
        this.key,
      );
    } else {
      const cipher = createCipheriv("chacha20-poly1305", this.key, nonce, { authTagLength: TAGLEN });
      if (ad.length > 0) cipher.setAAD(ad, { plaintextLength: len });
      if (len > 0) cipher.update(plain).copy(out, at);
      cipher.final();
      cipher.getAuthTag().copy(out, at + len);
    }
    this.n++;
    return at + len + TAGLEN;
  }

  /**
   * Decrypt `sealed` (ciphertext || tag, associated data `ad`) into `out`, which holds exactly the
   * plaintext's length; throws ProtocolError(`code`) when it does not authenticate (`out` may then
   * hold garbage, never released by the caller).
   */
  openInto(
    sealed: Buffer,
    out: Buffer,
    ad: Buffer = EMPTY,
    code: "bad-handshake" | "bad-record" = "bad-record",
  ): void {
    if (!this.key) throw new Error("CipherState has no key");
    const bodyLen = sealed.length - TAGLEN;
    if (bodyLen < 0 || out.length !== bodyLen) throw new RangeError("openInto: output length mismatch");
    const nonce = this.currentNonce();
    const na = sodium();
    try {
      if (na) {
        na.crypto_aead_chacha20poly1305_ietf_decrypt_detached(
          out,
          null,
          sealed.subarray(0, bodyLen),
          sealed.subarray(bodyLen),
          ad.length > 0 ? ad : null,
          nonce,
          this.key,
        );
      } else {
        const decipher = createDecipheriv("chacha20-poly1305", this.key, nonce, { authTagLength: TAGLEN });
        decipher.setAuthTag(sealed.subarray(bodyLen));
        if (ad.length > 0) decipher.setAAD(ad, { plaintextLength: bodyLen });
        const plain = decipher.update(sealed.subarray(0, bodyLen));
        decipher.final();
        plain.copy(out);
      }
    } catch {
      throw new ProtocolError(code, "message failed authentication");
    }
    this.n++;
  }

  /** Decrypt ciphertext || tag; throws ProtocolError when it does not authenticate. */
  decryptWithAd(ad: Buffer, sealed: Buffer, code: "bad-handshake" | "bad-record" = "bad-record"): Buffer {
    if (!this.key) return sealed;
    if (sealed.length < TAGLEN) throw new ProtocolError(code, "message shorter than its tag");
    const out = Buffer.allocUnsafe(sealed.length - TAGLEN);
    this.openInto(sealed, out, ad, code);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
class SymmetricState {
  readonly cipher = new CipherState();
  private ck: Buffer;
  h: Buffer;
  constructor(
    private readonly fn: HashFn,
    protocolName: string,
  ) {
    const name = Buffer.from(protocolName, "ascii");
    this.h = name.length <= fn.hashLen ? Buffer.concat([name], fn.hashLen) : fn.hash(name);
    this.ck = this.h;
  }
  /** An independent copy (h, ck and the cipher key; every mix replaces buffers, never writes into them). */
  clone(): SymmetricState {
    const copy = Object.create(SymmetricState.prototype) as SymmetricState;
    Object.assign(copy, { fn: this.fn, ck: this.ck, h: this.h, cipher: this.cipher.clone() });
    return copy;
  }
  private truncKey(k: Buffer): Buffer {
    return k.subarray(0, 32);
  }
  mixKey(ikm: Buffer): void {
    const [ck, k] = this.fn.hkdf(this.ck, ikm, 2);
    this.ck = ck;
    this.cipher.initializeKey(this.truncKey(k));
  }
  mixHash(data: Buffer): void {
    this.h = this.fn.hash(this.h, data);
  }
  mixKeyAndHash(ikm: Buffer): void {
    const [ck, th, k] = this.fn.hkdf(this.ck, ikm, 3);
    this.ck = ck;
    this.mixHash(th);
    this.cipher.initializeKey(this.truncKey(k));
  }
  encryptAndHash(plain: Buffer): Buffer {
    const c = this.cipher.encryptWithAd(this.h, plain);
    this.mixHash(c);
    return c;
  }
  decryptAndHash(sealed: Buffer): Buffer {
    const p = this.cipher.decryptWithAd(this.h, sealed, "bad-handshake");
    this.mixHash(sealed);
    return p;
  }
  split(): [CipherState, CipherState] {
    const [k1, k2] = this.fn.hkdf(this.ck, EMPTY, 2);
    // The two keys live as long as the connection: memory of their own (HKDF's outputs may be
    // slices of Node's shared 8 KiB pool, which a kept slice would keep whole).
    const keys = Buffer.allocUnsafeSlow(64);
    k1.copy(keys, 0, 0, 32);
    k2.copy(keys, 32, 0, 32);
    k1.fill(0);
    k2.fill(0);
    const c1 = new CipherState();
    const c2 = new CipherState();
    c1.initializeKey(keys.subarray(0, 32));
    c2.initializeKey(keys.subarray(32, 64));
    return [c1, c2];
  }
}

// ---------------------------------------------------------------------------------------------
export type NoisePattern = "NN" | "NNpsk0";

/**
 * The SymmetricState of an NNpsk0 handshake after `MixHash(prologue); MixKeyAndHash(psk)`: it
 * depends on the psk and the prologue only, so it is computed once per key and copied for each
 * handshake. A server checks msg1's tag against it before it spends anything on its own ephemeral.
 */
export class PreparedPsk {
  /** @internal */
  readonly state: SymmetricState;
  constructor(
    readonly hash: NoiseHash,
    readonly prologue: Buffer,
    psk: Buffer,
  ) {
    if (psk.length !== 32) throw new Error("NNpsk0 needs a 32-byte psk");
    this.state = new SymmetricState(new HashFn(hash), `Noise_NNpsk0_25519_ChaChaPoly_${hash}`);
    this.state.mixHash(prologue);
    this.state.mixKeyAndHash(psk);
  }
}

export interface HandshakeOptions {
  pattern: NoisePattern;
  hash: NoiseHash;
  initiator: boolean;
  prologue: Buffer;
  psk?: Buffer;
  /** NNpsk0 only, in place of `psk`, `hash` and `prologue` (which must match it): the precomputed start. */
  prepared?: PreparedPsk;
  /** Fixed ephemeral key, for test vectors only; otherwise a fresh one is generated. */
  ephemeral?: KeyPair;
}

export interface TransportKeys {
  /** CipherState this side encrypts with. */
  send: CipherState;
  /** CipherState this side decrypts with. */
  receive: CipherState;
  handshakeHash: Buffer;
}

/**
 * HandshakeState for the two-message patterns NN (-> e; <- e, ee) and NNpsk0 (-> psk, e; <- e, ee).
 * writeMessage/readMessage must be called in pattern order; after the second message `split()`
 * yields the transport cipher states.
 */
export class NoiseHandshake {
  private readonly ss: SymmetricState;
  private ephemeral: KeyPair | null;
  private re: Buffer | null = null;
  private step = 0;
  private readonly psk: boolean;
  /** Whether the psk token's MixKeyAndHash(psk) is already in `ss` (a PreparedPsk). */
  private pskMixed = false;

  constructor(private readonly opts: HandshakeOptions) {
    this.psk = opts.pattern === "NNpsk0";
    if (opts.prepared) {
      if (!this.psk || opts.prepared.hash !== opts.hash) throw new Error("prepared psk of another handshake");
      this.ss = opts.prepared.state.clone();
      this.pskMixed = true;
    } else {
      const fn = new HashFn(opts.hash);
      this.ss = new SymmetricState(fn, `Noise_${opts.pattern}_25519_ChaChaPoly_${opts.hash}`);
      this.ss.mixHash(opts.prologue);
      if (this.psk && opts.psk?.length !== 32) throw new Error("NNpsk0 needs a 32-byte psk");
    }
    // Our ephemeral is generated when our first message is written, not before: a responder
    // spends nothing on it for a first message that does not authenticate.
    this.ephemeral = opts.ephemeral ?? null;
  }

  private get e(): KeyPair {
    this.ephemeral ??= freshKeyPair();
    return this.ephemeral;
  }

  /**
   * The `ee` token's DH: the last use of our ephemeral, whose raw secret (libsodium) is zeroed
   * then, unless it was given to us (test vectors). The shared secret is zeroed once mixed in.
   */
  private mixEe(peerPublic: Buffer): void {
    const e = this.e;
    const shared = dh(e, peerPublic);
    if (!this.opts.ephemeral && Buffer.isBuffer(e.privateKey)) e.privateKey.fill(0);
    this.ss.mixKey(shared);
    shared.fill(0);
  }

  private mixPsk(): void {
    if (this.pskMixed) return;
    this.ss.mixKeyAndHash(this.opts.psk as Buffer);
    this.pskMixed = true;
  }

  get finished(): boolean {
    return this.step === 2;
  }

  /** Length of handshake message `index` (0 or 1) carrying `payloadLen` bytes of payload. */
  messageLength(index: 0 | 1, payloadLen: number): number {
    const encrypted = index === 1 || this.psk;
    return DHLEN + payloadLen + (encrypted ? TAGLEN : 0);
  }

  private expectTurn(writing: boolean): void {
    if (this.step >= 2) throw new ProtocolError("bad-handshake", "handshake already finished");
    const initiatorTurn = this.step === 0;
    if (writing !== (initiatorTurn === this.opts.initiator)) {
      // Reachable from peer input only if the caller skipped start(); report it as the peer's fault.
      throw new ProtocolError("bad-handshake", "handshake message out of turn");
    }
  }

  /** The `e` token: send our ephemeral key; in psk mode it also feeds the cipher key. */
  private mixEphemeral(pub: Buffer): void {
    this.ss.mixHash(pub);
    if (this.psk) this.ss.mixKey(pub);
  }

  writeMessage(payload: Buffer): Buffer {
    this.expectTurn(true);
    const parts: Buffer[] = [];
    if (this.step === 0) {
      if (this.psk) this.mixPsk();
      parts.push(this.e.publicKey);
      this.mixEphemeral(this.e.publicKey);
    } else {
      parts.push(this.e.publicKey);
      this.mixEphemeral(this.e.publicKey);
      this.mixEe(this.re as Buffer);
    }
    parts.push(this.ss.encryptAndHash(payload));
    this.step++;
    return Buffer.concat(parts);
  }

  readMessage(message: Buffer): Buffer {
    this.expectTurn(false);
    const minLen = this.messageLength(this.step as 0 | 1, 0);
    if (message.length < minLen) throw new ProtocolError("bad-handshake", "handshake message too short");
    const re = Buffer.from(message.subarray(0, DHLEN));
    if (this.step === 0 && this.psk) this.mixPsk();
    this.re = re;
    this.mixEphemeral(re);
    if (this.step === 1) this.mixEe(re);
    const payload = this.ss.decryptAndHash(message.subarray(DHLEN));
    this.step++;
    return payload;
  }

  split(): TransportKeys {
    if (!this.finished) throw new Error("handshake not finished");
    const [c1, c2] = this.ss.split();
    return this.opts.initiator
      ? { send: c1, receive: c2, handshakeHash: this.ss.h }
      : { send: c2, receive: c1, handshakeHash: this.ss.h };
  }
}
