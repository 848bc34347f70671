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
import { arena } from "./arena.js";
import { ByteQueue } from "./bytequeue.js";
import { ProtocolError } from "./errors.js";
import { type CipherState, type KeyPair, NoiseHandshake, PreparedPsk, TAGLEN } from "./noise.js";
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

  /**
   * One record whose payload is the concatenation of `payload` (at most MAX_PAYLOAD bytes), in one
   * buffer: a single piece is encrypted straight into it, several are copied in and encrypted there. DATA records of seal() come
   * from the arena (lent inside a pump's operation, fresh otherwise); END, ABORT and the key
   * confirmation always get memory of their own.
   */
  private record(type: number, payload: readonly Buffer[], lend = false): Buffer {
    let length = 0;
    for (const p of payload) length += p.length;
    this.reserve(length > 0 ? 2 : 1);
    const size = HEADER_LEN + (length > 0 ? length + TAGLEN : 0);
    const out = lend ? arena.take(size) : Buffer.allocUnsafe(size);
    out[0] = type;
    out.writeUInt16BE(length, 1);
    const at = this.cipher.sealTo(out, 0, out.subarray(0, HEADER_PLAIN_LEN));
    if (length === 0) {
      // a header alone
    } else if (payload.length === 1) {
      // Straight from where the payload lies (e.g. the socket's read buffer) into the record.
      this.cipher.sealTo(out, at, payload[0]);
    } else {
      let end = at;
      for (const p of payload) end += p.copy(out, end);
      this.cipher.sealTo(out, at, out.subarray(at, end));
    }
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
      out.push(this.record(RecordType.DATA, [carried, plain.subarray(0, off)], true));
    }
    for (; off < plain.length; off += MAX_PAYLOAD) {
      out.push(this.record(RecordType.DATA, [plain.subarray(off, off + MAX_PAYLOAD)], true));
    }
    return out;
  }

  /** An empty DATA record: carries nothing, proves the key (msg3) or keeps an idle link warm. */
  empty(): Buffer {
    return this.record(RecordType.DATA, []);
  }

  end(): Buffer[] {
    return [this.record(RecordType.END, [])];
  }

  abort(reason: string): Buffer[] {
    let text = Buffer.from(reason, "utf8");
    // Cut to the limit without splitting a UTF-8 character (continuation bytes are 10xxxxxx).
    if (text.length > MAX_ABORT_REASON) {
      let cut = MAX_ABORT_REASON;
      while (cut > 0 && (text[cut] & 0xc0) === 0x80) cut--;
      text = text.subarray(0, cut);
    }
    return [this.record(RecordType.ABORT, [text])];
  }
}

// ---------------------------------------------------------------------------------------------
export class Monopiped2Opener implements RecordOpener {
  private pendingType = -1; // type of a record whose header is open and whose body is awaited
  private pendingLen = 0;
  /**
   * The start of a unit (a header, or a body with its tag) that did not arrive whole, copied here
   * so that push() never keeps a reference to its input (a socket may reuse that buffer). Sized to
   * the largest unit seen, so a connection that only ever carries small records holds little.
   */
  private partial: Buffer | null = null;
  private held = 0;
  private readonly header = Buffer.alloc(HEADER_PLAIN_LEN);
  /**
   * "end" once END is in (only one ABORT may still follow: the peer's application reset the
   * connection while the other direction was flowing), "abort" once ABORT is in (nothing may follow).
   */
  private finished: "end" | "abort" | null = null;

  constructor(private readonly cipher: CipherState) {}

  get buffered(): number {
    return this.held + (this.pendingType >= 0 ? HEADER_LEN : 0);
  }

  /** Bytes of the unit now awaited: a header, or the pending record's body and tag. */
  private need(): number {
    return this.pendingType < 0 ? HEADER_LEN : this.pendingLen + TAGLEN;
  }

  /**
   * Opens every whole record in `bytes` where it lies (one decryption per header and per body, the
   * plaintext of each record in one piece); only a unit cut by the end of `bytes` is copied.
   */
  push(bytes: Buffer): OpenEvent[] {
    if (this.finished === "abort") {
      if (bytes.length === 0) return [];
      throw new ProtocolError("after-end", "bytes received after the peer's abort record");
    }
    const events: OpenEvent[] = [];
    let off = 0;
    for (;;) {
      const need = this.need();
      let unit: Buffer;
      if (this.held > 0) {
        const n = Math.min(need - this.held, bytes.length - off);
        bytes.copy(this.partial as Buffer, this.held, off, off + n);
        this.held += n;
        off += n;
        if (this.held < need) break;
        unit = (this.partial as Buffer).subarray(0, need);
        this.held = 0;
      } else if (bytes.length - off >= need) {
        unit = bytes.subarray(off, off + need);
        off += need;
      } else {
        const rest = bytes.length - off;
        if (rest > 0) {
          if (this.partial === null || this.partial.length < need)
            this.partial = Buffer.allocUnsafeSlow(need);
          this.held = bytes.copy(this.partial, 0, off);
          off = bytes.length;
        }
        break;
      }
      if (this.pendingType < 0) {
        const header = this.header;
        this.cipher.openInto(unit, header);
        this.pendingType = header[0];
        this.pendingLen = header.readUInt16BE(1);
        this.checkHeader();
        if (this.finished === "end" && this.pendingType !== RecordType.ABORT) {
          throw new ProtocolError("after-end", "a record other than ABORT after the peer's end record");
        }
        if (this.pendingLen > 0) continue;
        events.push(this.finishRecord(EMPTY));
      } else {
        // The plaintext goes to the arena (lent inside a pump's operation, fresh otherwise).
        const plain = arena.take(this.pendingLen);
        this.cipher.openInto(unit, plain);
        events.push(this.finishRecord(plain));
      }
      if (this.aborted()) {
        if (off < bytes.length) {
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

  /** The event of the pending record, whose authenticated payload is `payload`. */
  private finishRecord(payload: Buffer): OpenEvent {
    const type = this.pendingType;
    this.pendingType = -1;
    if (type === RecordType.END) {
      this.finished = "end";
      return { type: "end" };
    }
    if (type === RecordType.ABORT) {
      this.finished = "abort";
      return { type: "abort", reason: payload.toString("utf8") };
    }
    return { type: "data", data: payload };
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
