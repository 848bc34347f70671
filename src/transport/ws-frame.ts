/**
 * WebSocket framing of outgoing binary messages (RFC 6455, section 5.2), for a batch at a time.
 *
 * ws frames each message on its own: a header buffer (and, for a client, a masked copy of the
 * payload), two writes and an options object per message, so the records of one read leave as a
 * vectored write of up to twice as many pieces as records. Here a whole batch is framed into as few
 * buffers as possible, with the bytes ws would send: each message one unfragmented binary frame
 * (FIN, opcode 2, no RSV bits), the shortest length encoding, and from a client a fresh random
 * masking key per frame.
 */
import { randomFillSync } from "node:crypto";
import { createRequire } from "node:module";
import { arena } from "../protocol/arena.js";

type MaskFn = (source: Buffer, mask: Buffer, output: Buffer, offset: number, length: number) => void;
type UnmaskFn = (buffer: Buffer, mask: Buffer) => void;

/** XOR `length` bytes of `source` with `mask` into `output` at `offset` (the payload masking). */
function maskJs(source: Buffer, mask: Buffer, output: Buffer, offset: number, length: number): void {
  for (let i = 0; i < length; i++) output[offset + i] = source[i] ^ mask[i & 3];
}

/** XOR `buffer` in place with `mask` (a received frame's payload). */
function unmaskJs(buffer: Buffer, mask: Buffer): void {
  for (let i = 0; i < buffer.length; i++) buffer[i] ^= mask[i & 3];
}

/** bufferutil's native masking where it is installed (an optional dependency, as for ws), else JS. */
function loadMask(): { mask: MaskFn; unmask: UnmaskFn; native: boolean } {
  if (!process.env.WS_NO_BUFFER_UTIL) {
    try {
      const bu = createRequire(import.meta.url)("bufferutil") as { mask?: MaskFn; unmask?: UnmaskFn };
      // bufferutil falls back to JS itself when its binary does not load; that one is no faster.
      if (
        typeof bu.mask === "function" &&
        typeof bu.unmask === "function" &&
        bu.mask.toString().includes("[native code]")
      )
        return { mask: bu.mask, unmask: bu.unmask, native: true };
    } catch {
      // not installed
    }
  }
  return { mask: maskJs, unmask: unmaskJs, native: false };
}

const loaded = loadMask();
/** True when payloads are masked by bufferutil's native code. */
export const nativeMasking = loaded.native;
const maskInto = loaded.mask;
const unmaskNative = loaded.unmask;
/** Below this, a JS loop beats the call into native code (ws uses 48 too). */
const NATIVE_MASK_MIN = 48;

/** Unmask a received payload in place with its frame's 4-byte masking key. */
export function unmask(payload: Buffer, key: Buffer): void {
  if (payload.length >= NATIVE_MASK_MIN) unmaskNative(payload, key);
  else unmaskJs(payload, key);
}

/** Masking keys come from a pool of random bytes, refilled when used up (as ws does). */
const POOL_SIZE = 8192;
const pool = Buffer.alloc(POOL_SIZE);
let poolUsed = POOL_SIZE;

/** Header length of an unmasked frame carrying `n` payload bytes (a masked one has 4 more). */
export function headerLength(n: number): number {
  return n < 126 ? 2 : n < 65536 ? 4 : 10;
}

/** Write a binary frame's header for `n` payload bytes at `off`; returns the offset after it. */
function writeHeader(out: Buffer, off: number, n: number, masked: boolean): number {
  out[off] = 0x82; // FIN + binary
  const m = masked ? 0x80 : 0;
  if (n < 126) {
    out[off + 1] = m | n;
    return off + 2;
  }
  if (n < 65536) {
    out[off + 1] = m | 126;
    out[off + 2] = n >>> 8;
    out[off + 3] = n & 0xff;
    return off + 4;
  }
  out[off + 1] = m | 127;
  out.writeUInt32BE(0, off + 2);
  out.writeUInt32BE(n, off + 6);
  return off + 10;
}

/**
 * Frame `chunks` (one message each) for a client: masked, into one buffer of header + masked
 * payload per message (a client has to copy the payload anyway to mask it). Inside a pump's
 * operation the buffer is lent from the arena, like the records it copies (see arena.ts: the
 * operation's end says whether the socket took it whole); fresh memory otherwise.
 */
export function frameMasked(chunks: readonly Buffer[]): Buffer {
  let total = 0;
  for (const c of chunks) total += headerLength(c.length) + 4 + c.length;
  const out = arena.take(total);
  let off = 0;
  for (const c of chunks) {
    const n = c.length;
    off = writeHeader(out, off, n, true);
    if (poolUsed + 4 > POOL_SIZE) {
      randomFillSync(pool);
      poolUsed = 0;
    }
    const key = pool.subarray(poolUsed, poolUsed + 4);
    poolUsed += 4;
    out[off] = key[0];
    out[off + 1] = key[1];
    out[off + 2] = key[2];
    out[off + 3] = key[3];
    off += 4;
    if (n >= NATIVE_MASK_MIN) maskInto(c, key, out, off, n);
    else maskJs(c, key, out, off, n);
    off += n;
  }
  return out;
}

/** Payloads at least this long are not copied by a server: their header goes out beside them. */
const COPY_MAX = 16 * 1024;

/**
 * Frame `chunks` (one message each) for a server: unmasked. Small messages are copied behind their
 * headers into one buffer; a large one is not copied, its header is a piece of its own. Returns the
 * pieces to write, in order. Inside a pump's operation that buffer is lent from the arena, like the
 * records (see frameMasked).
 */
export function frameUnmasked(chunks: readonly Buffer[]): Buffer[] {
  let small = 0;
  for (const c of chunks) small += headerLength(c.length) + (c.length < COPY_MAX ? c.length : 0);
  const out = arena.take(small);
  const pieces: Buffer[] = [];
  let start = 0;
  let off = 0;
  for (const c of chunks) {
    const n = c.length;
    off = writeHeader(out, off, n, false);
    if (n < COPY_MAX) {
      out.set(c, off);
      off += n;
    } else {
      pieces.push(out.subarray(start, off), c);
      start = off;
    }
  }
  if (off > start) pieces.push(out.subarray(start, off));
  return pieces;
}
