/**
 * Reading WebSocket frames (RFC 6455, section 5) for a WsLink: binary messages out, control frames
 * (Close, Ping, Pong) handed on whole, anything a tunnel peer never sends reported with the close
 * code RFC 6455 gives it.
 *
 * ws's own receiver reads through Node streams (a new 64 KiB buffer per read) and copies each
 * message that two reads share into a buffer of its own: on Node 24 those buffers brought back the
 * full garbage collections the TCP path had got rid of, and the WebSocket leg ran at a third of TCP's
 * speed. Here each read is parsed where it lies: a message wholly inside the read is unmasked in
 * place and delivered as a view of it, only a message cut by the read's end is copied. Control
 * frames are rare and small; the link passes them to ws, which answers pings and runs the closing
 * handshake as before.
 */
import { unmask } from "./ws-frame.js";

/** Where a FrameReader's output goes. */
export interface FrameSink {
  /** A complete binary message: a view of the pushed chunk (valid during the call only) or a copy. */
  message(data: Buffer): void;
  /** A complete control frame as it came on the wire (header, masking key, payload), in a copy. */
  control(frame: Buffer, opcode: number): void;
  /** The peer broke the framing rules: close with `code`. Nothing more is read after this. */
  violation(code: number, reason: string, why: string): void;
}

const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
/** Opcodes 8 and above are control frames (Close 8, Ping 9, Pong 10; 11-15 reserved). */
const OP_FIRST_CONTROL = 8;
const OP_LAST_KNOWN_CONTROL = 10;
/** FIN, RSV1-3, opcode; MASK, 7-bit length; 16- or 64-bit length; masking key. */
const MAX_HEADER = 2 + 8 + 4;
const MAX_CONTROL_PAYLOAD = 125;

export class FrameReader {
  /** The header of a frame cut by a read's end, while it is completed (MAX_HEADER bytes). */
  private headBuf: Buffer | null = null;
  private headLen = 0;
  /** The frame being read: its opcode, FIN bit and (for a masked one) key. */
  private opcode = 0;
  private fin = false;
  private readonly key = Buffer.alloc(4);
  private keyed = false;
  /** The rest of a frame cut by a read's end goes here: a data frame's payload, or a whole control frame. */
  private partial: Buffer | null = null;
  private partialLen = 0;
  /** Where the payload starts in `partial` (after a control frame's header). */
  private partialPayloadAt = 0;
  /** The fragments of a message sent in several frames (copies), and their total length. */
  private fragments: Buffer[] | null = null;
  private fragmentBytes = 0;
  private stopped = false;

  /**
   * @param masked  frames must be masked (we are the server) or must not be (the client)
   * @param maxPayload  largest message accepted; a larger one is closed with 1009
   * @param lends  the sink only reads a message during the call (it copies what it keeps): the
   *   buffer a cut message was gathered in is used again for the next one
   */
  constructor(
    private readonly masked: boolean,
    private readonly maxPayload: number,
    private readonly sink: FrameSink,
    private readonly lends = false,
  ) {}

  /** Read nothing more (after a Close, or a violation): later input is dropped. */
  stop(): void {
    this.stopped = true;
    this.partial = null;
    this.fragments = null;
    this.headBuf = null;
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** Parse `chunk` to its end. Its bytes may be changed (payloads are unmasked in place). */
  push(chunk: Buffer): void {
    let off = 0;
    const end = chunk.length;
    while (off < end && !this.stopped) {
      if (this.partial !== null) {
        off = this.continuePartial(chunk, off);
        continue;
      }
      // A frame header: straight from the chunk when it is all there, else gathered in headBuf.
      let hdr = chunk;
      let at = off;
      let avail = end - off;
      if (this.headLen > 0) {
        const want = Math.min(MAX_HEADER - this.headLen, avail);
        chunk.copy(this.headBufOf(), this.headLen, off, off + want);
        hdr = this.headBufOf();
        at = 0;
        avail = this.headLen + want;
      }
      const need = avail >= 2 ? headerLength(hdr[at + 1]) : MAX_HEADER;
      if (avail < need) {
        // Cut by the read's end: keep what there is.
        if (this.headLen === 0) chunk.copy(this.headBufOf(), 0, off, end);
        this.headLen = avail;
        return;
      }
      // The header is complete: `need` bytes at hdr[at]. Bytes of this chunk it used:
      const fromChunk = need - this.headLen;
      this.headLen = 0;
      const payloadLength = this.readHeader(hdr, at, need);
      if (payloadLength < 0) return; // a violation: stopped
      const headerStart = off - (need - fromChunk);
      off += fromChunk;
      off = this.startPayload(chunk, off, payloadLength, hdr, at, need, headerStart);
    }
  }

  private headBufOf(): Buffer {
    this.headBuf ??= Buffer.alloc(MAX_HEADER);
    return this.headBuf;
  }

  /** Check a complete header; returns the payload length, or -1 after a violation. */
  private readHeader(hdr: Buffer, at: number, length: number): number {
    const b0 = hdr[at];
    const b1 = hdr[at + 1];
    const opcode = b0 & 0x0f;
    const fin = (b0 & 0x80) !== 0;
    if ((b0 & 0x70) !== 0)
      return this.fail(
        1002,
        "RSV bits set",
        "sent a WebSocket frame with reserved bits set (no extension was agreed)",
      );
    const isMasked = (b1 & 0x80) !== 0;
    if (isMasked !== this.masked)
      return this.fail(
        1002,
        this.masked ? "MASK must be set" : "MASK must be clear",
        this.masked
          ? "sent an unmasked WebSocket frame (a client must mask its frames)"
          : "sent a masked WebSocket frame (a server must not mask its frames)",
      );
    let n = b1 & 0x7f;
    if (n === 126) n = hdr.readUInt16BE(at + 2);
    else if (n === 127) {
      // Anything that needs the upper 32 bits is far over any limit we accept.
      n = hdr.readUInt32BE(at + 2) !== 0 ? Number.MAX_SAFE_INTEGER : hdr.readUInt32BE(at + 6);
    }
    if (opcode >= OP_FIRST_CONTROL) {
      if (opcode > OP_LAST_KNOWN_CONTROL)
        return this.fail(1002, "invalid opcode", `sent a WebSocket frame with the reserved opcode ${opcode}`);
      if (!fin)
        return this.fail(1002, "fragmented control frame", "sent a fragmented WebSocket control frame");
      if (n > MAX_CONTROL_PAYLOAD)
        return this.fail(
          1002,
          "control frame too long",
          `sent a WebSocket control frame of ${n} bytes (125 at most)`,
        );
    } else {
      if (opcode === OP_TEXT)
        return this.fail(
          1002,
          "binary messages only",
          "sent a text message (a tunnel carries binary messages only)",
        );
      if (opcode !== OP_BINARY && opcode !== OP_CONTINUATION)
        return this.fail(1002, "invalid opcode", `sent a WebSocket frame with the reserved opcode ${opcode}`);
      if (opcode === OP_CONTINUATION && this.fragments === null)
        return this.fail(
          1002,
          "unexpected continuation frame",
          "sent a continuation frame that continues no message",
        );
      if (opcode === OP_BINARY && this.fragments !== null)
        return this.fail(
          1002,
          "continuation frame expected",
          "started a new message inside a fragmented one",
        );
      if (n > this.maxPayload - this.fragmentBytes)
        return this.fail(
          1009,
          "message too big",
          `sent a WebSocket message over the ${this.maxPayload}-byte limit`,
        );
    }
    this.opcode = opcode;
    this.fin = fin;
    this.keyed = isMasked;
    if (isMasked) {
      const k = at + length - 4;
      const key = this.key;
      key[0] = hdr[k];
      key[1] = hdr[k + 1];
      key[2] = hdr[k + 2];
      key[3] = hdr[k + 3];
    }
    return n;
  }

  private fail(code: number, reason: string, why: string): -1 {
    this.stop();
    this.sink.violation(code, reason, why);
    return -1;
  }

  /**
   * The payload of the frame whose header was just read starts at `off`. Returns the offset after
   * what this chunk holds of it. `hdr`/`at`/`hlen` locate the header (for a control frame, which is
   * passed on whole); `headerStart` is where it began in `chunk` (negative when an earlier read held
   * part of it).
   */
  private startPayload(
    chunk: Buffer,
    off: number,
    n: number,
    hdr: Buffer,
    at: number,
    hlen: number,
    headerStart: number,
  ): number {
    const avail = chunk.length - off;
    if (this.opcode >= OP_FIRST_CONTROL) {
      if (avail >= n && headerStart >= 0) {
        this.control(Buffer.from(chunk.subarray(headerStart, off + n)));
        return off + n;
      }
      this.partial = Buffer.allocUnsafe(hlen + n);
      hdr.copy(this.partial, 0, at, at + hlen);
      this.partialLen = hlen;
      this.partialPayloadAt = hlen;
      return off;
    }
    if (avail >= n) {
      const payload = chunk.subarray(off, off + n);
      if (this.keyed) unmask(payload, this.key);
      this.data(payload, false);
      return off + n;
    }
    this.partial = this.lends ? takeSpare(n) : Buffer.allocUnsafe(n);
    this.partialLen = 0;
    this.partialPayloadAt = 0;
    return off;
  }

  /** More of a frame cut by a read's end. */
  private continuePartial(chunk: Buffer, off: number): number {
    const partial = this.partial as Buffer;
    const n = Math.min(partial.length - this.partialLen, chunk.length - off);
    chunk.copy(partial, this.partialLen, off, off + n);
    this.partialLen += n;
    if (this.partialLen < partial.length) return off + n;
    this.partial = null;
    if (this.opcode >= OP_FIRST_CONTROL) this.control(partial);
    else {
      if (this.keyed) unmask(partial.subarray(this.partialPayloadAt), this.key);
      this.data(partial, true);
      if (this.lends) giveBack(partial);
    }
    return off + n;
  }

  /** A data frame's unmasked payload; `owned`: a copy of ours (else a view of the caller's chunk). */
  private data(payload: Buffer, owned: boolean): void {
    if (this.fin && this.fragments === null) {
      this.sink.message(payload);
      return;
    }
    this.fragments ??= [];
    this.fragments.push(owned && !this.lends ? payload : Buffer.from(payload));
    this.fragmentBytes += payload.length;
    if (!this.fin) return;
    const whole = Buffer.concat(this.fragments, this.fragmentBytes);
    this.fragments = null;
    this.fragmentBytes = 0;
    this.sink.message(whole);
  }

  private control(frame: Buffer): void {
    this.sink.control(frame, this.opcode);
  }
}

/**
 * Buffers for messages cut by a read's end, shared by the process's readers (a new 64 KiB buffer
 * per cut message is what brings Node 24's full collections back). A reader takes one for the
 * message it gathers and gives it back once delivered; at most SPARES_KEPT wait for reuse.
 */
const SPARE_SIZE = 128 * 1024;
const SPARES_KEPT = 8;
const spares: ArrayBuffer[] = [];

function takeSpare(n: number): Buffer {
  if (n > SPARE_SIZE) return Buffer.allocUnsafe(n);
  const ab = spares.pop() ?? new ArrayBuffer(SPARE_SIZE);
  return Buffer.from(ab, 0, n);
}

function giveBack(b: Buffer): void {
  if (b.buffer.byteLength === SPARE_SIZE && b.byteOffset === 0 && spares.length < SPARES_KEPT)
    spares.push(b.buffer as ArrayBuffer);
}

/** Length of a frame header whose second byte is `b1` (MASK bit and 7-bit length). */
function headerLength(b1: number): number {
  const len7 = b1 & 0x7f;
  return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + ((b1 & 0x80) !== 0 ? 4 : 0);
}
