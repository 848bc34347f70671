/**
 * A FIFO of received bytes that hands out exact-length slices without copying when a slice lies
 * inside one received chunk (the common case for large TCP reads), so openers never re-concatenate
 * their whole input per record. Consumed chunks are dropped by index, not Array.shift, so a peer
 * sending a record as many tiny segments costs linear, not quadratic, time.
 */
const EMPTY = Buffer.alloc(0);

export class ByteQueue {
  private chunks: Buffer[] = [];
  private first = 0; // index of the oldest chunk still holding bytes
  private head = 0; // offset into chunks[first]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.total += bytes.length;
  }

  /** Removes and returns exactly `n` bytes; the caller checks `length >= n` first. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError("ByteQueue.take past the end");
    this.total -= n;
    const chunk = this.chunks[this.first];
    if (chunk && chunk.length - this.head >= n) {
      const out = chunk.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[this.first];
      const copied = c.copy(out, filled, this.head, Math.min(c.length, this.head + n - filled));
      filled += copied;
      this.advance(copied);
    }
    return out;
  }

  /**
   * Removes and returns up to `max` bytes from the oldest chunk, without copying: for callers that
   * can take their input piece by piece. Empty when the queue is.
   */
  takeUpTo(max: number): Buffer {
    const chunk = this.chunks[this.first];
    if (!chunk || max <= 0) return EMPTY;
    const n = Math.min(max, chunk.length - this.head);
    const out = chunk.subarray(this.head, this.head + n);
    this.total -= n;
    this.advance(n);
    return out;
  }

  /** Removes and returns everything held. */
  takeAll(): Buffer {
    return this.take(this.total);
  }

  private advance(n: number): void {
    this.head += n;
    if (this.head < this.chunks[this.first].length) return;
    this.first++;
    this.head = 0;
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first >= 1024) {
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
  }
}
