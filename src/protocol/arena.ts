/**
 * Memory for the records a pump seals and the plaintext it opens, reused from one read to the next
 * instead of a new buffer per record.
 *
 * A 64 KiB buffer per record is what made Node 24 run a full garbage collection every ~20 MB of
 * traffic (V8 counts every new ArrayBuffer's memory and collects when enough accumulates), and
 * costs an allocation and a page-fault-prone fresh block each time. Most writes to a socket that
 * keeps up complete at once, before write() returns; the memory they used is free again right
 * away and the next read's records can go in the same place.
 *
 * One arena per process (JavaScript runs one callback at a time). Its memory is lent only inside
 * an operation the caller brackets: begin(), seal or open, send, end(released). `released` says
 * whether the transport let go of everything the operation sent (SocketLink: nothing left queued):
 * then the operation's bytes are reused by the next one; otherwise they stay untouched (they belong
 * to the socket's queue now) and the next operation continues after them, or in a new block. Outside
 * an operation, or inside a nested one, take() returns fresh memory, so a caller that does not know
 * about the arena (tests, handshakes, ABORT records) is never lent anything.
 */
const BLOCK_SIZE = 1024 * 1024;

export class OutputArena {
  private block: Buffer | null = null;
  private used = 0;
  /** Where the open operation's bytes start in `block`. */
  private mark = 0;
  private depth = 0;

  /** Start an operation: take() lends arena memory until end(). */
  begin(): void {
    if (++this.depth === 1) this.mark = this.used;
  }

  /**
   * End the operation. `released`: nothing it took is referenced any more (written out, or
   * dropped), so its bytes may be lent again.
   */
  end(released: boolean): void {
    if (this.depth === 0) return;
    this.depth--;
    if (this.depth > 0) return;
    if (released) this.used = this.mark;
    this.mark = this.used;
  }

  /**
   * `n` bytes: arena memory inside an operation (not nested), fresh memory otherwise; always at an
   * offset that is a multiple of 8 in its ArrayBuffer (word access through typed arrays).
   */
  take(n: number): Buffer {
    if (this.depth !== 1 || n > BLOCK_SIZE / 2) return Buffer.allocUnsafeSlow(n);
    this.used = (this.used + 7) & ~7;
    if (this.block === null || this.used + n > this.block.length) {
      // A new block; the old one lives on only as long as a socket still holds part of it.
      this.block = Buffer.allocUnsafeSlow(BLOCK_SIZE);
      this.used = 0;
      this.mark = 0;
    }
    const out = this.block.subarray(this.used, this.used + n);
    this.used += n;
    return out;
  }

  /**
   * `b`, the latest take(), turned out to need only its first `n` bytes: the rest is lent again by
   * the next take(), so that consecutive outputs lie back to back (and leave as one write).
   */
  shrink(b: Buffer, n: number): void {
    const block = this.block;
    if (block === null || b.buffer !== block.buffer || n >= b.length) return;
    if (b.byteOffset + b.length !== block.byteOffset + this.used) return;
    this.used -= b.length - n;
  }
}

/** The process's arena (the pump brackets its seal/open-and-send operations with it). */
export const arena = new OutputArena();
