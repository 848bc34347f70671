/**
 * A WebSocket as a Link: one binary message per record, backpressure through the underlying
 * socket, a clean close (1000/1005) as the end of stream, and keepalive pings.
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import WebSocket from "ws";
import type { Link } from "./link.js";

/** Largest message accepted: above any record (65535 + 35 bytes) and monopiped1's 1060-byte frames. */
export const MAX_PAYLOAD = 128 * 1024;
/** send() returns false above this many queued bytes; 'drain' follows when the queue is empty. */
const HIGH_WATER = 256 * 1024;
/** After we close for a protocol violation, how long the peer gets to answer the close. */
const VIOLATION_CLOSE_MS = 3000;
export const KEEPALIVE_DELAY_MS = 60_000;
const SEND_OPTIONS = { binary: true, compress: false, fin: true } as const;

const CLOSE_CODE_NAMES: Record<number, string> = {
  1001: "going away",
  1002: "protocol error",
  1003: "unsupported data",
  1006: "connection dropped without a WebSocket closing handshake",
  1007: "invalid data",
  1008: "policy violation",
  1009: "message too big",
  1010: "missing extension",
  1011: "internal error",
  1012: "service restart",
  1013: "try again later",
  1014: "bad gateway",
  1015: "TLS handshake failure",
};

interface WsLinkOptions {
  pingIntervalMs: number;
  /**
   * When to ping: "always" (a client), "after-peer" (a server: only once the client has pinged,
   * which proves it tolerates pings), "never" (a monopiped1 client: its Rust server would drop us).
   */
  pings: "always" | "after-peer" | "never";
}

/** A WebSocket as a Link. Created paused; messages that arrive while paused wait in order. */
export class WsLink extends EventEmitter implements Link {
  readonly messageFramed = true;
  private paused = true;
  private readonly queue: Buffer[] = [];
  private flushScheduled = false;
  /** The peer closed cleanly (1000 / 1005): 'end' once the queue is delivered. */
  private cleanClose = false;
  private closeCode = 0;
  private endEmitted = false;
  /**
   * endWrite() or reset() was called. After a clean close from the peer, 'close' waits for this, as
   * a TCP link's 'close' waits for both directions: the pump may still be finishing the other way
   * (monopiped1, whose end of stream is the WebSocket close). Data sent after that fails the link.
   */
  private localDone = false;
  private failure: Error | undefined;
  /** True once the link has emitted 'close'. */
  closed = false;
  private needDrain = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private violationTimer: NodeJS.Timeout | undefined;
  private awaitingPong = false;
  private heardSincePing = false;
  private pausedSincePing = false;
  private bufferedAtPing = false;

  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex,
    readonly peer: string,
    private readonly opts: WsLinkOptions,
  ) {
    super();
    ws.pause();
    ws.on("message", (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on("ping", () => {
      this.heardSincePing = true;
      if (opts.pings === "after-peer") this.startPings();
    });
    ws.on("pong", () => {
      this.heardSincePing = true;
      this.awaitingPong = false;
    });
    ws.on("error", (err: Error & { code?: string }) => {
      this.failure ??= new Error(describeWsError(err));
    });
    ws.on("close", (code: number, reason: Buffer) => this.onClose(code, reason.toString("utf8")));
    socket.on("error", (err: NodeJS.ErrnoException) => {
      this.failure ??= new Error(describeSocketError(err));
    });
    socket.on("drain", () => {
      if (this.needDrain && ws.bufferedAmount < HIGH_WATER) {
        this.needDrain = false;
        this.emit("drain");
      }
    });
    if (opts.pings === "always") this.startPings();
  }

  /** Payload bytes handed to the WebSocket so far; sentBytes never goes back. */
  private accepted = 0;
  private sentHigh = 0;

  get queuedBytes(): number {
    return this.ws.bufferedAmount;
  }
  get sentBytes(): number {
    this.sentHigh = Math.max(this.sentHigh, this.accepted - this.ws.bufferedAmount);
    return this.sentHigh;
  }

  send(chunks: Buffer[]): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) {
      if (this.endEmitted && !this.closed && chunks.some((c) => c.length > 0)) {
        const err = new Error(
          `the peer closed the WebSocket (code ${this.closeCode}): data sent after that is lost`,
        );
        process.nextTick(() => this.finish(err));
      }
      return false;
    }
    // One vectored write for all the messages of a batch, not one per message.
    this.socket.cork();
    for (const c of chunks) {
      this.accepted += c.length;
      this.ws.send(c, SEND_OPTIONS);
    }
    this.socket.uncork();
    if (this.ws.bufferedAmount < HIGH_WATER) return true;
    this.needDrain = true;
    return false;
  }

  pause(): void {
    this.paused = true;
    this.pausedSincePing = true;
    this.ws.pause();
  }

  resume(): void {
    this.paused = false;
    if (this.queue.length > 0 || (this.cleanClose && !this.endEmitted)) {
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
      return;
    }
    this.ws.resume();
  }

  endWrite(): void {
    this.localDone = true;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    // Never from inside the call (as with a socket): the caller finishes its own bookkeeping first.
    if (this.endEmitted) process.nextTick(() => this.finish());
  }

  reset(): void {
    this.localDone = true;
    this.ws.terminate();
    if (this.endEmitted) process.nextTick(() => this.finish());
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closed || this.failure) return;
    if (!isBinary) {
      // 1002 (protocol error): the tunnel's protocol has no text messages. (1003, unsupported data,
      // would fit a peer that could still go on; ours cannot.)
      this.violation(
        1002,
        "binary messages only",
        "sent a text message (a tunnel carries binary messages only)",
      );
      return;
    }
    this.heardSincePing = true;
    if (this.paused || this.queue.length > 0) this.queue.push(data);
    else this.emit("data", data);
  }

  private flush(): void {
    this.flushScheduled = false;
    while (!this.paused && !this.closed && this.queue.length > 0)
      this.emit("data", this.queue.shift() as Buffer);
    if (this.paused || this.closed) return;
    this.ws.resume();
    this.finishClean();
  }

  /** Close because the peer broke the rules; the Link reports `why` when the close completes. */
  private violation(code: number, reason: string, why: string): void {
    this.failure = new Error(`${why}; closed with ${code}`);
    this.queue.length = 0;
    this.ws.close(code, reason);
    this.ws.resume(); // read the peer's answer to the close (its messages are ignored from now on)
    this.violationTimer = setTimeout(() => this.ws.terminate(), VIOLATION_CLOSE_MS);
    this.violationTimer.unref();
  }

  private onClose(code: number, reason: string): void {
    this.stopTimers();
    if (this.failure) {
      this.finish(this.failure);
      return;
    }
    if (code === 1000 || code === 1005) {
      this.cleanClose = true;
      this.closeCode = code;
      if (!this.paused && this.queue.length === 0) this.finishClean();
      return;
    }
    const name = CLOSE_CODE_NAMES[code];
    this.finish(
      new Error(
        `WebSocket closed with code ${code}${name ? ` (${name})` : ""}${reason ? `: ${reason.slice(0, 123)}` : ""}`,
      ),
    );
  }

  private finishClean(): void {
    if (!this.cleanClose || this.closed || this.endEmitted) return;
    this.endEmitted = true;
    this.emit("end");
    if (this.localDone) this.finish();
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.stopTimers();
    this.emit("close", err);
  }

  private stopTimers(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.violationTimer);
    this.pingTimer = undefined;
  }

  private startPings(): void {
    if (this.pingTimer || this.opts.pingIntervalMs <= 0 || this.closed) return;
    this.pingTimer = setInterval(() => this.pingTick(), this.opts.pingIntervalMs);
    this.pingTimer.unref();
  }

  /**
   * Every interval: the previous ping must have been answered, unless something else arrived
   * meanwhile, or we could not expect an answer (we were paused, so we did not read; or our own
   * queue was not empty, so the ping may still be waiting behind data the peer is slow to take).
   */
  private pingTick(): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const silent =
      !this.heardSincePing && !this.pausedSincePing && !this.bufferedAtPing && this.ws.bufferedAmount === 0;
    if (this.awaitingPong && silent) {
      this.failure ??= new Error(
        `no pong within ${this.opts.pingIntervalMs / 1000} s: the peer or a proxy on the way is gone`,
      );
      this.ws.terminate();
      return;
    }
    this.heardSincePing = false;
    this.pausedSincePing = this.paused;
    this.bufferedAtPing = this.ws.bufferedAmount > 0;
    this.awaitingPong = true;
    this.ws.ping();
  }
}

function describeWsError(err: Error & { code?: string }): string {
  if (err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
    return `sent a WebSocket message over the ${MAX_PAYLOAD}-byte limit; closed with 1009 (message too big)`;
  }
  if (err.code?.startsWith("WS_ERR_"))
    return `${err.message.replace(/^Invalid WebSocket frame: /, "invalid WebSocket frame: ")}`;
  return err.message;
}

function describeSocketError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "ECONNRESET":
      return "connection reset by the peer";
    case "EPIPE":
      return "connection closed by the peer while sending (broken pipe)";
    case "ETIMEDOUT":
      return "connection timed out (the peer is unreachable)";
    default:
      return err.message;
  }
}
