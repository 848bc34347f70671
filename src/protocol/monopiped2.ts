/**
 * monopiped2, the default protocol (docs/PROTOCOL.md is the byte-by-byte specification).
 *
 *   client -> server  msg1  48 bytes  Noise_NNpsk0 message 1: e.pub || tag        (psk authenticates)
 *   server -> client  msg2  48 bytes  Noise_NNpsk0 message 2: e.pub || tag        (sent only if msg1 is good)
 *   client -> server  msg3  19 bytes  first transport record: empty DATA           (key confirmation)
 *   then records both ways.
 *
 * The server treats the client as authenticated only after msg3, which is sealed under keys that
 * depend on the server's fresh ephemeral key: a replayed msg1 can never get that far, so nothing
 * short of a live key holder makes the server connect to its target.
 *
 * A server may hold several keys: it checks msg1's tag under each key's precomputed state (one
 * BLAKE2b hash, one HKDF and one 16-byte AEAD open per key) and generates its ephemeral only for
 * the key that verifies.
 *
 * Record = header || body. header = seal(type u8 || length u16 BE) (3 + 16 bytes); body =
 * seal(payload) (length + 16 bytes) and is absent when length is 0. Both are ordinary Noise transport
 * messages with consecutive nonces, so lengths never travel in the clear and any reordering,
 * replay, truncation or bit flip fails authentication.
 */
import { createHmac } from "node:crypto";
import { ByteQueue } from "./bytequeue.js";
import { ProtocolError } from "./errors.js";
import {
  type CipherState,
  type KeyPair,
  NoiseHandshake,
  type PieceDecryptor,
  PreparedPsk,
  TAGLEN,
} from "./noise.js";
import type { Handshake, OpenEvent, RecordOpener, RecordSealer, Role, Session } from "./types.js";

export const PROLOGUE = Buffer.from("monopiped2", "ascii");
const PSK_LABEL = Buffer.from("monopiped2 psk", "ascii");

export const HANDSHAKE_MESSAGE_LEN = 48;
export const HEADER_PLAIN_LEN = 3;
export const HEADER_LEN = HEADER_PLAIN_LEN + TAGLEN; // 19
export const MAX_PAYLOAD = 65535;
export const MAX_ABORT_REASON = 1024;

export const RecordType = { DATA: 0, END: 1, ABORT: 2 } as const;

const EMPTY = Buffer.alloc(0);

/** The Noise psk: HMAC-BLAKE2b(label, key file), first 32 bytes. The label separates it from any other use of the file. */
export function monopiped2Psk(keyFile: Buffer): Buffer {
  return createHmac("blake2b512", PSK_LABEL).update(keyFile).digest().subarray(0, 32);
}

/** One key file's monopiped2 key: the psk and the handshake state after it (computed once). */
export class Monopiped2Key {
  readonly prepared: PreparedPsk;
  constructor(readonly psk: Buffer) {
    this.prepared = new PreparedPsk("BLAKE2b", PROLOGUE, psk);
  }
}

/** The monopiped2 key of a key file. */
export function monopiped2Key(keyFile: Buffer): Monopiped2Key {
  return new Monopiped2Key(monopiped2Psk(keyFile));
}

// ---------------------------------------------------------------------------------------------
export class Monopiped2Sealer implements RecordSealer {
  readonly maxPlaintext = MAX_PAYLOAD;
  private readonly header = Buffer.alloc(HEADER_PLAIN_LEN);
  constructor(private readonly cipher: CipherState) {}

  /**
   * Throws ProtocolError("nonce-limit") unless `nonces` more nonces are all below 2^48. Checked
   * before a call produces any byte, so a record is never half sealed and the caller can close
   * the transport without END (which could not be sealed either).
   */
  private reserve(nonces: number): void {
    if (!this.cipher.hasNonces(nonces)) {
      throw new ProtocolError("nonce-limit", "message counter limit (2^48) reached: the connection must end");
    }
  }

  /** One record whose payload is the concatenation of `payload` (at most MAX_PAYLOAD bytes). */
  private record(type: number, ...payload: Buffer[]): Buffer {
    let length = 0;
    for (const p of payload) length += p.length;
    this.reserve(length > 0 ? 2 : 1);
    this.header[0] = type;
    this.header.writeUInt16BE(length, 1);
    // One allocation per record; the payload is copied once, as ciphertext.
    const out = Buffer.allocUnsafe(HEADER_LEN + (length > 0 ? length + TAGLEN : 0));
    const at = this.cipher.encryptTo([this.header], out, 0);
    if (length > 0) this.cipher.encryptTo(payload, out, at);
    return out;
  }

  seal(plain: Buffer, carried?: Buffer): Buffer[] {
    // The pump carries only what did not fill a record; anything longer is simply joined.
    if (carried && carried.length >= MAX_PAYLOAD) return this.seal(Buffer.concat([carried, plain]));
    // Every record of this call is non-empty and takes two nonces: all or none are sealed.
    this.reserve(2 * Math.ceil((plain.length + (carried?.length ?? 0)) / MAX_PAYLOAD));
    const out: Buffer[] = [];
    let off = 0;
    if (carried && carried.length > 0) {
      // The first record: the carried bytes, then as much of `plain` as fits.
      off = MAX_PAYLOAD - carried.length;
      out.push(this.record(RecordType.DATA, carried, plain.subarray(0, off)));
    }
    for (; off < plain.length; off += MAX_PAYLOAD) {
      out.push(this.record(RecordType.DATA, plain.subarray(off, off + MAX_PAYLOAD)));
    }
    return out;
  }

  /** An empty DATA record: carries nothing, proves the key (msg3) or keeps an idle link warm. */
  empty(): Buffer {
    return this.record(RecordType.DATA, EMPTY);
  }

  end(): Buffer[] {
    return [this.record(RecordType.END, EMPTY)];
  }

  abort(reason: string): Buffer[] {
    let text = Buffer.from(reason, "utf8");
    // Cut to the limit without splitting a UTF-8 character (continuation bytes are 10xxxxxx).
    if (text.length > MAX_ABORT_REASON) {
      let cut = MAX_ABORT_REASON;
      while (cut > 0 && (text[cut] & 0xc0) === 0x80) cut--;
      text = text.subarray(0, cut);
    }
    return [this.record(RecordType.ABORT, text)];
  }
}

// ---------------------------------------------------------------------------------------------
export class Monopiped2Opener implements RecordOpener {
  private readonly queue = new ByteQueue();
  private pendingType = -1; // type of a record whose header is open and whose body is awaited
  private pendingLen = 0;
  /** The body of the pending record, decrypted as its pieces arrive; bodyFed bytes of it are in. */
  private body: PieceDecryptor | null = null;
  private bodyFed = 0;
  /**
   * "end" once END is in (only one ABORT may still follow: the peer's application reset the
   * connection while the other direction was flowing), "abort" once ABORT is in (nothing may follow).
   */
  private finished: "end" | "abort" | null = null;

  constructor(private readonly cipher: CipherState) {}

  get buffered(): number {
    return this.queue.length + (this.pendingType >= 0 ? HEADER_LEN + this.bodyFed : 0);
  }

  push(bytes: Buffer): OpenEvent[] {
    if (this.finished === "abort") {
      if (bytes.length === 0) return [];
      throw new ProtocolError("after-end", "bytes received after the peer's abort record");
    }
    this.queue.push(bytes);
    const events: OpenEvent[] = [];
    for (;;) {
      if (this.pendingType < 0) {
        if (this.queue.length < HEADER_LEN) break;
        const header = this.cipher.decryptWithAd(EMPTY, this.queue.take(HEADER_LEN));
        this.pendingType = header[0];
        this.pendingLen = header.readUInt16BE(1);
        this.checkHeader();
        if (this.finished === "end" && this.pendingType !== RecordType.ABORT) {
          throw new ProtocolError("after-end", "a record other than ABORT after the peer's end record");
        }
        if (this.pendingLen > 0) continue;
        events.push(...this.finishRecord([EMPTY]));
      } else {
        // The body's ciphertext goes to the cipher as it arrives (a 64 KiB record mostly spans two
        // reads), so it is never gathered into one buffer; its plaintext is released only once the
        // tag that follows it has authenticated the whole body.
        this.body ??= this.cipher.decryptPieces();
        while (this.bodyFed < this.pendingLen && this.queue.length > 0) {
          const piece = this.queue.takeUpTo(this.pendingLen - this.bodyFed);
          this.body.update(piece);
          this.bodyFed += piece.length;
        }
        if (this.bodyFed < this.pendingLen || this.queue.length < TAGLEN) break;
        const parts = this.body.finish(this.queue.take(TAGLEN));
        this.body = null;
        this.bodyFed = 0;
        events.push(...this.finishRecord(parts));
      }
      if (this.aborted()) {
        if (this.queue.length > 0) {
          throw new ProtocolError("after-end", "bytes received after the peer's abort record");
        }
        break;
      }
    }
    return events;
  }

  /** Read through a call: push() narrows `finished` at its start, and finishRecord() changes it. */
  private aborted(): boolean {
    return this.finished === "abort";
  }

  private checkHeader(): void {
    const t = this.pendingType;
    if (t === RecordType.DATA) return;
    if (t === RecordType.END && this.pendingLen === 0) return;
    if (t === RecordType.ABORT && this.pendingLen <= MAX_ABORT_REASON) return;
    throw new ProtocolError("bad-record", `authenticated record with unknown type ${t} or bad length`);
  }

  /** The events of the pending record, whose authenticated payload is the concatenation of `parts`. */
  private finishRecord(parts: Buffer[]): OpenEvent[] {
    const type = this.pendingType;
    this.pendingType = -1;
    if (type === RecordType.END) {
      this.finished = "end";
      return [{ type: "end" }];
    }
    if (type === RecordType.ABORT) {
      this.finished = "abort";
      return [{ type: "abort", reason: Buffer.concat(parts).toString("utf8") }];
    }
    const last = parts.length - 1;
    return parts.map(
      (data, i): OpenEvent => (i < last ? { type: "data", data, partial: true } : { type: "data", data }),
    );
  }
}

// ---------------------------------------------------------------------------------------------
class Monopiped2Handshake implements Handshake {
  private noise: NoiseHandshake | null = null;
  private readonly queue = new ByteQueue();
  private state: "msg1" | "msg2" | "msg3" | "done";
  private sealer: Monopiped2Sealer | null = null;
  private opener: Monopiped2Opener | null = null;
  private receiveCipher: CipherState | null = null;
  session: Session | null = null;

  constructor(
    private readonly role: Role,
    private readonly keys: readonly Monopiped2Key[],
    private readonly ephemeral?: KeyPair,
  ) {
    if (keys.length === 0) throw new Error("monopiped2: no key");
    // A client speaks under its first key from the start; a server picks the key msg1 verifies under.
    if (role === "client") this.noise = this.noiseFor(keys[0]);
    this.state = role === "client" ? "msg2" : "msg1";
  }

  private noiseFor(key: Monopiped2Key): NoiseHandshake {
    return new NoiseHandshake({
      pattern: "NNpsk0",
      hash: "BLAKE2b",
      initiator: this.role === "client",
      prologue: PROLOGUE,
      prepared: key.prepared,
      ephemeral: this.ephemeral,
    });
  }

  get buffered(): number {
    return this.state === "done" ? 0 : this.queue.length;
  }

  start(): Buffer[] {
    if (this.role === "server") return [];
    return [(this.noise as NoiseHandshake).writeMessage(EMPTY)];
  }

  receive(bytes: Buffer): Buffer[] {
    this.queue.push(bytes);
    const out: Buffer[] = [];
    if (this.state === "msg1" && this.queue.length >= HANDSHAKE_MESSAGE_LEN) {
      const noise = this.readMsg1(this.queue.take(HANDSHAKE_MESSAGE_LEN));
      this.noise = noise;
      // Only now, with msg1 authenticated, is the server's ephemeral generated.
      out.push(noise.writeMessage(EMPTY));
      this.makeCiphers();
      this.state = "msg3";
    }
    if (this.state === "msg2" && this.queue.length >= HANDSHAKE_MESSAGE_LEN) {
      (this.noise as NoiseHandshake).readMessage(this.queue.take(HANDSHAKE_MESSAGE_LEN));
      this.makeCiphers();
      out.push((this.sealer as Monopiped2Sealer).empty());
      this.finish();
    }
    if (this.state === "msg3" && this.queue.length >= HEADER_LEN) {
      let header: Buffer;
      try {
        header = (this.receiveCipher as CipherState).decryptWithAd(EMPTY, this.queue.take(HEADER_LEN));
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
        throw new ProtocolError(
          "key-confirmation",
          "key confirmation (msg3) failed: a replayed or tampered handshake",
        );
      }
      if (header[0] !== RecordType.DATA || header.readUInt16BE(1) !== 0) {
        throw new ProtocolError("bad-handshake", "first client record is not the empty key confirmation");
      }
      this.finish();
    }
    return out;
  }

  /** msg1 under each key in turn (one tag check each); the handshake of the first that verifies. */
  private readMsg1(msg1: Buffer): NoiseHandshake {
    for (const key of this.keys) {
      const noise = this.noiseFor(key);
      try {
        noise.readMessage(msg1);
        return noise;
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
      }
    }
    throw new ProtocolError(
      "bad-handshake",
      "first message did not authenticate: wrong key or not a monopiped peer",
    );
  }

  private makeCiphers(): void {
    const { send, receive } = (this.noise as NoiseHandshake).split();
    this.sealer = new Monopiped2Sealer(send);
    this.opener = new Monopiped2Opener(receive);
    this.receiveCipher = receive;
  }

  private finish(): void {
    this.state = "done";
    this.session = {
      protocol: "monopiped2",
      sealer: this.sealer as Monopiped2Sealer,
      opener: this.opener as Monopiped2Opener,
      authenticatedEnd: true,
    };
  }

  takeRest(): Buffer {
    return this.queue.takeAll();
  }
}

/**
 * The monopiped2 handshake. `keys`: a psk or prepared key, or several (a client uses the first, a
 * server accepts any). `ephemeral` is for test vectors only; otherwise a fresh one is generated.
 */
export function monopiped2Handshake(
  role: Role,
  keys: Buffer | Monopiped2Key | readonly Monopiped2Key[],
  ephemeral?: KeyPair,
): Handshake {
  const list = Buffer.isBuffer(keys)
    ? [new Monopiped2Key(keys)]
    : keys instanceof Monopiped2Key
      ? [keys]
      : keys;
  return new Monopiped2Handshake(role, list, ephemeral);
}
