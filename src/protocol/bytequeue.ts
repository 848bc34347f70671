/**
 * A FIFO of received bytes that hands out exact-length slices without copying when a slice lies
 * inside one received chunk (the common case for large TCP reads), so openers never re-concatenate
 * their whole input per record.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
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
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const copied = chunk.copy(out, filled, this.head, Math.min(chunk.length, this.head + n - filled));
      filled += copied;
      this.head += copied;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }

  /** Removes and returns everything held. */
  takeAll(): Buffer {
    return this.take(this.total);
  }
}
