/**
 * Standard input and output as the plain side of one tunneled connection (`monopiped pipe`, as
 * spiped's spipe): what arrives on stdin goes through the tunnel, what comes back goes to stdout.
 * So the tunnel can be an ssh ProxyCommand, or the end of a shell pipeline.
 *
 * End of stdin is the application's end of stream (half-close: the reply still comes back). The
 * link never closes on its own: 'close' only reports a failure (stdin unreadable, stdout gone, e.g.
 * EPIPE when the reader went away); the process exits once the connection is over.
 */
import { EventEmitter } from "node:events";
import type { Readable, Writable } from "node:stream";
import type { Link } from "./link.js";

export class StdioLink extends EventEmitter implements Link {
  readonly messageFramed = false;
  readonly peer = "standard input/output";
  closed = false;
  private outputEnded = false;

  constructor(
    private readonly input: Readable = process.stdin,
    private readonly output: Writable = process.stdout,
  ) {
    super();
    input.pause();
    input.on("data", (chunk: Buffer) => this.emit("data", chunk));
    input.on("end", () => this.emit("end"));
    input.on("error", (err) => this.finish(new Error(`standard input: ${err.message}`)));
    output.on("drain", () => this.emit("drain"));
    output.on("error", (err: NodeJS.ErrnoException) =>
      this.finish(
        new Error(
          err.code === "EPIPE"
            ? "standard output was closed by its reader"
            : `standard output: ${err.message}`,
        ),
      ),
    );
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", err);
  }

  private accepted = 0;

  get queuedBytes(): number {
    return this.output.writableLength;
  }
  get sentBytes(): number {
    return this.accepted - this.output.writableLength;
  }

  send(chunks: Buffer[]): boolean {
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
    this.input.resume();
  }

  endWrite(): void {
    if (this.outputEnded) return;
    this.outputEnded = true;
    this.output.end();
  }

  reset(): void {
    this.input.pause();
    this.input.destroy();
    this.outputEnded = true;
    // Asynchronously, as a socket reports its close: the caller finishes its own teardown first.
    process.nextTick(() => this.finish());
  }

  /** Resolves once everything written to stdout has been handed to the OS (before the process exits). */
  flushed(): Promise<void> {
    return new Promise((resolve) => {
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
