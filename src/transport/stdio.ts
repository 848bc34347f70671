/**
 * Standard input and output as the plain side of one tunneled connection (`monopiped pipe`, as
 * spiped's spipe): what arrives on stdin goes through the tunnel, what comes back goes to stdout.
 * So the tunnel can be an ssh ProxyCommand, or the end of a shell pipeline.
 *
 * End of stdin is the application's end of stream (half-close: the reply still comes back). The
 * link never closes on its own: 'close' only reports a failure (stdin unreadable, stdout broken);
 * the process exits once the connection is over.
 *
 * When the application goes away (hangUp(): SIGHUP, SIGTERM, or stdout closed by its reader, EPIPE)
 * the connection ends the way the session ended. ssh, the usual user, closes both pipes once its
 * session is over and then sends SIGHUP to its ProxyCommand, so the end of stdin is already waiting
 * to be read: the data stream is complete. So stdout stops being written (what the server still
 * sends is read and dropped) and:
 *   - stdin has ended, or ends while it still delivers (no silence of INPUT_END_MS, and within
 *     `closingMs`): our end of stream is sent as usual, and the link waits (up to `closingMs`) for
 *     the server's end of stream, so that both sides see a clean close and nothing unread makes
 *     our kernel reset the connection;
 *   - stdin does not end: the application left in the middle, and 'close' reports it (the tunnel
 *     aborts the connection).
 */
import { EventEmitter } from "node:events";
import type { Readable, Writable } from "node:stream";
import type { Link } from "./link.js";

/** After a hang-up, how long stdin may be silent before its end of stream (already on its way). */
export const INPUT_END_MS = 1000;

export interface StdioOptions {
  /** After a hang-up with stdin ended, how long to wait for the server's end of stream. */
  closingMs?: number;
}

export class StdioLink extends EventEmitter implements Link {
  readonly messageFramed = false;
  readonly peer = "standard input/output";
  closed = false;
  private outputEnded = false;
  private inputEnded = false;
  /** Set by the first resume(): the connection is established and stdin is being read. */
  private started = false;
  /** Why the application went away; once set, stdout is no longer written. */
  private hungUp: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** After a hang-up, stdin's end must come before this time (ms since the epoch). */
  private inputDeadline = 0;
  private readonly closingMs: number;

  constructor(
    private readonly input: Readable = process.stdin,
    private readonly output: Writable = process.stdout,
    opts: StdioOptions = {},
  ) {
    super();
    this.closingMs = opts.closingMs ?? 5000;
    input.pause();
    input.on("data", (chunk: Buffer) => {
      // After a hang-up, bytes still coming mean the end may still come (but not for ever).
      if (this.hungUp !== null && this.timer && Date.now() < this.inputDeadline)
        this.arm(INPUT_END_MS, `${this.hungUp} before the end of standard input`);
      this.emit("data", chunk);
    });
    input.on("end", () => {
      this.inputEnded = true;
      this.emit("end");
      if (this.hungUp !== null && !this.closed) this.awaitPeerEnd();
    });
    input.on("error", (err) => this.finish(new Error(`standard input: ${err.message}`)));
    output.on("drain", () => this.emit("drain"));
    output.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE") this.hangUp("standard output was closed by its reader");
      else this.finish(new Error(`standard output: ${err.message}`));
    });
  }

  /** True once the application went away (hangUp()): stdout is no longer written. */
  get hungUpReason(): string | null {
    return this.hungUp;
  }

  /**
   * The application went away (`why`: e.g. "SIGHUP"): finish as the session ended (see the top of
   * the file). Returns false when the connection has not been established yet (stdin was never
   * read): there is nothing to finish and the caller should simply stop.
   */
  hangUp(why: string): boolean {
    if (this.closed) return true;
    if (this.hungUp !== null) return true;
    if (!this.started) return false;
    this.hungUp = why;
    this.outputEnded = true;
    // A send() that returned false may have paused the encrypted side: nothing waits on stdout now.
    process.nextTick(() => this.emit("drain"));
    if (this.inputEnded) {
      this.awaitPeerEnd();
      return true;
    }
    this.inputDeadline = Date.now() + this.closingMs;
    this.arm(INPUT_END_MS, `${why} before the end of standard input`);
    return true;
  }

  private awaitPeerEnd(): void {
    const seconds = this.closingMs / 1000;
    this.arm(this.closingMs, `${this.hungUp}, and the server's side did not end within ${seconds} s`);
  }

  private arm(ms: number, reason: string): void {
    this.disarm();
    this.timer = setTimeout(() => this.finish(new Error(reason)), ms);
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.disarm();
    this.emit("close", err);
  }

  private accepted = 0;

  get queuedBytes(): number {
    // After a hang-up nothing waits on stdout any more (what it still held is given up).
    return this.hungUp !== null ? 0 : this.output.writableLength;
  }
  get sentBytes(): number {
    return this.accepted - this.queuedBytes;
  }

  send(chunks: Buffer[]): boolean {
    // After a hang-up what the server sends is dropped: read on so its end of stream gets through.
    if (this.hungUp !== null) return !this.closed;
    if (this.outputEnded || this.closed) return false;
    let ok = true;
    for (const c of chunks) {
      this.accepted += c.length;
      ok = this.output.write(c);
    }
    return ok;
  }

  pause(): void {
    this.input.pause();
  }
  resume(): void {
    this.started = true;
    this.input.resume();
  }

  endWrite(): void {
    // The server's end of stream: after a hang-up, this is what the link was waiting for.
    if (this.hungUp !== null) this.disarm();
    if (this.outputEnded) return;
    this.outputEnded = true;
    this.output.end();
  }

  reset(): void {
    this.disarm();
    this.input.pause();
    this.input.destroy();
    this.outputEnded = true;
    // Asynchronously, as a socket reports its close: the caller finishes its own teardown first.
    process.nextTick(() => this.finish());
  }

  /** Resolves once everything written to stdout has been handed to the OS (before the process exits). */
  flushed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.hungUp !== null) return resolve();
      if (this.output.writableFinished || this.output.destroyed) return resolve();
      if (this.output.writableEnded) {
        this.output.once("finish", () => resolve());
        this.output.once("error", () => resolve());
        return;
      }
      this.output.write(Buffer.alloc(0), () => resolve());
    });
  }
}
