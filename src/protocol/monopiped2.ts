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
 * Record = header || body. header = seal(type u8 || length u16 BE) (3 + 16 bytes); body =
 * seal(payload) (length + 16 bytes) and is absent when length is 0. Both are ordinary Noise transport
 * messages with consecutive nonces, so lengths never travel in the clear and any reordering,
 * replay, truncation or bit flip fails authentication.
 */
import { createHmac } from "node:crypto";
import { ByteQueue } from "./bytequeue.js";
import { ProtocolError } from "./errors.js";
import { type CipherState, type KeyPair, NoiseHandshake, type PieceDecryptor, TAGLEN } from "./noise.js";
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

// ---------------------------------------------------------------------------------------------
export class Monopiped2Sealer implements RecordSealer {
  readonly maxPlaintext = MAX_PAYLOAD;
  private readonly header = Buffer.alloc(HEADER_PLAIN_LEN);
  constructor(private readonly cipher: CipherState) {}

  /** One record whose payload is the concatenation of `payload` (at most MAX_PAYLOAD bytes). */
  private record(type: number, ...payload: Buffer[]): Buffer {
    let length = 0;
    for (const p of payload) length += p.length;
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
  private finished: "end" | "abort" | null = null;

  constructor(private readonly cipher: CipherState) {}

  get buffered(): number {
    return this.queue.length + (this.pendingType >= 0 ? HEADER_LEN + this.bodyFed : 0);
  }

  push(bytes: Buffer): OpenEvent[] {
    if (this.finished) {
      if (bytes.length === 0) return [];
      throw new ProtocolError("after-end", `bytes received after the peer's ${this.finished} record`);
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
      if (this.finished) {
        if (this.queue.length > 0) {
          throw new ProtocolError("after-end", `bytes received after the peer's ${this.finished} record`);
        }
        break;
      }
    }
    return events;
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
  private readonly noise: NoiseHandshake;
  private readonly queue = new ByteQueue();
  private state: "msg1" | "msg2" | "msg3" | "done";
  private sealer: Monopiped2Sealer | null = null;
  private opener: Monopiped2Opener | null = null;
  private receiveCipher: CipherState | null = null;
  session: Session | null = null;

  constructor(
    private readonly role: Role,
    psk: Buffer,
    ephemeral?: KeyPair,
  ) {
    this.noise = new NoiseHandshake({
      pattern: "NNpsk0",
      hash: "BLAKE2b",
      initiator: role === "client",
      prologue: PROLOGUE,
      psk,
      ephemeral,
    });
    this.state = role === "client" ? "msg2" : "msg1";
  }

  get buffered(): number {
    return this.state === "done" ? 0 : this.queue.length;
  }

  start(): Buffer[] {
    if (this.role === "server") return [];
    return [this.noise.writeMessage(EMPTY)];
  }

  receive(bytes: Buffer): Buffer[] {
    this.queue.push(bytes);
    const out: Buffer[] = [];
    if (this.state === "msg1" && this.queue.length >= HANDSHAKE_MESSAGE_LEN) {
      this.noise.readMessage(this.queue.take(HANDSHAKE_MESSAGE_LEN));
      out.push(this.noise.writeMessage(EMPTY));
      this.keys();
      this.state = "msg3";
    }
    if (this.state === "msg2" && this.queue.length >= HANDSHAKE_MESSAGE_LEN) {
      this.noise.readMessage(this.queue.take(HANDSHAKE_MESSAGE_LEN));
      this.keys();
      out.push((this.sealer as Monopiped2Sealer).empty());
      this.finish();
    }
    if (this.state === "msg3" && this.queue.length >= HEADER_LEN) {
      const header = (this.receiveCipher as CipherState).decryptWithAd(
        EMPTY,
        this.queue.take(HEADER_LEN),
        "bad-handshake",
      );
      if (header[0] !== RecordType.DATA || header.readUInt16BE(1) !== 0) {
        throw new ProtocolError("bad-handshake", "first client record is not the empty key confirmation");
      }
      this.finish();
    }
    return out;
  }

  private keys(): void {
    const { send, receive } = this.noise.split();
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

export function monopiped2Handshake(role: Role, psk: Buffer, ephemeral?: KeyPair): Handshake {
  return new Monopiped2Handshake(role, psk, ephemeral);
}
