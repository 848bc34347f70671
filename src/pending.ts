/**
 * Connections that have not proved the key yet (accepted, WebSocket not yet upgraded, or still in
 * the handshake). They have their own cap, apart from -n: when it is full the oldest is evicted to
 * make room, so a crowd of strangers costs everyone at most the cap's memory and never holds the
 * slots of clients that authenticated.
 */
export interface PendingEntry {
  /** Drop this connection now (the cap is full and it is the oldest). */
  evict(): void;
}

export class PendingSet {
  // A Set iterates in insertion order, so its first entry is the oldest.
  private readonly entries = new Set<PendingEntry>();
  /** Connections evicted since start (for logs and metrics). */
  evicted = 0;

  /**
   * `cap` <= 0 means no cap. `onChange` hears the count after every change, whoever made it (the
   * tunnel's handshakes and the -w listener's not-yet-upgraded connections alike), for metrics.
   */
  constructor(
    readonly cap: number,
    private readonly onChange: (size: number) => void = () => {},
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Count `entry` as pending, evicting the oldest first when the cap is reached. */
  add(entry: PendingEntry): void {
    while (this.cap > 0 && this.entries.size >= this.cap) {
      const oldest = this.entries.values().next().value as PendingEntry;
      this.entries.delete(oldest);
      this.evicted++;
      oldest.evict();
    }
    this.entries.add(entry);
    this.onChange(this.entries.size);
  }

  /** It authenticated, or it is gone: stop counting it. True if it was counted. */
  delete(entry: PendingEntry): boolean {
    if (!this.entries.delete(entry)) return false;
    this.onChange(this.entries.size);
    return true;
  }
}
