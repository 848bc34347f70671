/**
 * A WebSocket as a Link: one binary message per record, backpressure through the underlying
 * socket, a clean close (1000/1005) as the end of stream, and keepalive pings.
 *
 * Half-close: the peer's Close frame ends the peer's direction only. It is answered when this side
 * ends its own direction (endWrite), so a client that closes after its request still gets the whole
 * reply, as the original monopiped client expects (it sends an empty Close and keeps reading).
 * If this side then sends nothing for HALF_CLOSE_MS, the Close is answered and the link fails.
 * The other way round, a server that does not say it honours a half-close (the original Rust
 * server, which never answers a Close) is taken to be done once it stays silent for
 * UNANSWERED_CLOSE_MS after our Close, and the connection is closed then.
 */
import { EventEmitter } from "node:events";
import net from "node:net";
import type { Duplex } from "node:stream";
import WebSocket from "ws";
import { isFast, setReadSink } from "./fastread.js";
import type { Link } from "./link.js";
import { frameMasked, frameUnmasked } from "./ws-frame.js";
import { FrameReader } from "./ws-read.js";

/** Largest message accepted: above any record (65535 + 35 bytes) and monopiped1's 1060-byte frames. */
export const MAX_PAYLOAD = 128 * 1024;
/**
 * send() returns false above this many queued bytes (or the socket's own high-water mark, if
 * higher: 'drain' comes from the socket, which only emits it after a write() that returned false).
 */
const HIGH_WATER = 256 * 1024;
/** After we close for a protocol violation, how long the peer gets to answer the close. */
const VIOLATION_CLOSE_MS = 3000;
export const KEEPALIVE_DELAY_MS = 60_000;
/** After the peer's Close, how long this side may stay silent before the Close is answered anyway. */
export const HALF_CLOSE_MS = 10_000;
/** After our Close to a server that does not honour half-closes: silence for this long ends the link. */
export const UNANSWERED_CLOSE_MS = 1000;
/** After our Close to any other peer: silence for this long (it answers within HALF_CLOSE_MS) fails it. */
const ANSWER_WAIT_MS = HALF_CLOSE_MS + 5000;
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
  role: "client" | "server";
  /** Client: the server said it honours a half-close (our own -w server does, the Rust one does not). */
  peerHalfCloses?: boolean;
}

/** The parts of a ws WebSocket (8.x) that the half-close needs; absent ones mean "answer at once". */
interface WsInternals {
  _receiver?: EventEmitter;
  _closeFrameReceived?: boolean;
  _closeCode?: number;
  _closeMessage?: Buffer;
}

/** The link reading a socket, for the listeners below (shared: no closures per link). */
const LINK_OF = Symbol("WsLink");
type LinkedSocket = Duplex & { [LINK_OF]?: WsLink };
/** Before ws parses a read: whether this read began while the link was reading. */
function onReadStart(this: LinkedSocket): void {
  const link = this[LINK_OF];
  if (link) link.inRead = !link.isPaused;
}
/** After ws parsed it. */
function onReadEnd(this: LinkedSocket): void {
  const link = this[LINK_OF];
  if (link) link.inRead = false;
}
/** A read of a socket that reads through streams, for the link's own FrameReader. */
function onSocketData(this: LinkedSocket, chunk: Buffer): void {
  this[LINK_OF]?.onBytes(chunk);
}
/** Bytes the socket still buffers when it closes go to the reader first (ws reads them too, after us). */
function onSocketClose(this: LinkedSocket): void {
  if (this[LINK_OF]?.readsItself) while (this.read() !== null); // each read() emits 'data'
}

/**
 * A WebSocket as a Link. Created paused; messages that arrive while paused wait in order.
 *
 * pause() takes effect at the end of the socket read in progress, as with a TCP link (whose read in
 * progress is one chunk, delivered whole): ws parses a read to its end, and the messages of a read
 * that began while the link was reading are delivered, the socket is not read again until
 * resume(). Anything else that arrives while paused waits in the queue.
 */
export class WsLink extends EventEmitter implements Link {
  readonly messageFramed = true;
  /**
   * Messages are views of the process's shared read buffer (see fastread.ts), valid during 'data'
   * (set once, by readFramesItself, before the first message).
   */
  lendsChunks = false;
  /**
   * Our own frame reader (ws-read.ts) parses what the socket reads; ws only gets the control frames
   * (it answers pings and runs the closing handshake). Undefined where ws's internals are not the
   * ones expected: then ws reads everything itself.
   */
  private reader: FrameReader | undefined;
  private readonly highWater: number;
  private paused = true;
  /** @internal A socket read that began while reading is being parsed (see onReadStart). */
  inRead = false;
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
  /** After the peer's Close (answer deferred), or after our Close to a non-half-closing server. */
  private closeTimer: NodeJS.Timeout | undefined;
  /** The ping not answered yet: when it was sent, and whether data of ours was queued ahead of it. */
  private outstanding: { sentAt: number; behind: boolean } | undefined;
  private heardSincePing = false;
  private pausedSincePing = false;
  /** The peer's Close arrived and its answer waits for our endWrite(). */
  private answerDeferred = false;
  /** We sent our Close first and wait for the peer's (see awaitCloseAnswer). */
  private awaitingAnswer = false;

  /**
   * @param head  bytes that came with the upgrade, after the HTTP headers (a server's; a client's
   *   ws puts back into the socket)
   */
  constructor(
    private readonly ws: WebSocket,
    private readonly socket: Duplex,
    readonly peer: string,
    private readonly opts: WsLinkOptions,
    head?: Buffer,
  ) {
    super();
    // Frame our messages ourselves, straight onto the socket ws writes to (see ws-frame.ts), where
    // that socket is the one we were given; anything else goes through ws.send.
    this.direct = (ws as unknown as { _socket?: Duplex })._socket === socket;
    this.highWater = Math.max(HIGH_WATER, socket.writableHighWaterMark);
    ws.pause();
    (socket as LinkedSocket)[LINK_OF] = this;
    const socketOnData = socket.listeners("data").find((f) => f.name === "socketOnData");
    if (this.direct)
      this.readFramesItself(socketOnData as ((...args: unknown[]) => unknown) | undefined, head);
    if (!this.reader) {
      socket.prependListener("data", onReadStart);
      socket.on("data", onReadEnd);
      if (head && head.length > 0) socket.unshift(head);
      // ws reads 'data' events: a socket reading through the shared buffer emits them, in copies.
      if (socket instanceof net.Socket && isFast(socket))
        setReadSink(socket, { onBytes: (c) => socket.emit("data", Buffer.from(c)) });
    }
    ws.on("message", (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on("ping", () => {
      this.heardSincePing = true;
      if (opts.pings === "after-peer") this.startPings();
    });
    ws.on("pong", () => {
      this.heardSincePing = true;
    });
    ws.on("error", (err: Error & { code?: string }) => {
      this.failure ??= new Error(describeWsError(err));
    });
    ws.on("close", (code: number, reason: Buffer) => this.onClose(code, reason.toString("utf8")));
    socket.on("error", (err: NodeJS.ErrnoException) => {
      this.failure ??= new Error(describeSocketError(err));
    });
    socket.on("drain", () => {
      if (this.needDrain && ws.bufferedAmount < this.highWater) {
        this.needDrain = false;
        this.emit("drain");
      }
    });
    this.deferCloseAnswers(socketOnData as ((...args: unknown[]) => unknown) | undefined);
    if (opts.pings === "always") this.startPings();
  }

  /**
   * Take the socket's reads away from ws (its 'data' listener) and parse them with our own
   * FrameReader; ws gets only the control frames. Nothing changes (ws keeps reading) where ws's
   * internals are not the expected ones.
   */
  private readFramesItself(
    socketOnData: ((...args: unknown[]) => unknown) | undefined,
    head: Buffer | undefined,
  ): void {
    const socket = this.socket;
    const receiver = (this.ws as unknown as WsInternals)._receiver as unknown as
      | { write?: (frame: Buffer) => boolean }
      | undefined;
    const toWs = receiver?.write?.bind(receiver);
    if (!toWs || !socketOnData) return;
    socket.removeListener("data", socketOnData as (chunk: Buffer) => void);
    const fast = socket instanceof net.Socket && isFast(socket);
    this.lendsChunks = fast; // before any message: a paused link must copy what it queues
    const reader = new FrameReader(
      this.opts.role === "server",
      MAX_PAYLOAD,
      {
        message: (data) => this.onMessage(data, true),
        control: (frame, opcode) => {
          if (opcode === 8) reader.stop(); // after a Close, the rest of the input is dropped (as ws does)
          toWs(frame);
        },
        violation: (code, reason, why) => this.violation(code, reason, why),
      },
      fast,
    );
    this.reader = reader;
    if (head && head.length > 0) this.onBytes(head);
    if (fast) {
      // A client's ws put the bytes after the 101 answer back into the socket: read them first.
      // (read() may start the socket reading; pause() below stops it again before any read.)
      while (socket.readableLength > 0) {
        const c = socket.read() as Buffer | null;
        if (c === null) break;
        this.onBytes(c);
      }
      socket.pause();
      setReadSink(socket, this);
    } else {
      socket.on("data", onSocketData);
      socket.prependListener("close", onSocketClose);
    }
  }

  /**
   * ws answers a Close at once and refuses to send after it. Replace its handler so that a Close
   * only ends the peer's direction; the answer follows our own endWrite(). Relies on ws 8.x
   * internals; without them a Close is answered at once, as before.
   */
  private deferCloseAnswers(socketOnData: ((...args: unknown[]) => unknown) | undefined): void {
    const w = this.ws as unknown as WsInternals;
    const receiver = w._receiver;
    const original = receiver?.listeners("conclude");
    if (!receiver || original?.length !== 1 || !socketOnData || typeof w._closeFrameReceived !== "boolean")
      return;
    const answerNow = original[0] as (this: EventEmitter, code: number, reason: Buffer) => void;
    receiver.removeAllListeners("conclude");
    const self = this;
    receiver.on("conclude", function (this: EventEmitter, code: number, reason: Buffer) {
      if (self.localDone || self.failure || self.closed || self.ws.readyState !== WebSocket.OPEN) {
        answerNow.call(this, code, reason);
        return;
      }
      // As ws does, except the answer: the Close is recorded, the rest of the input is discarded.
      w._closeFrameReceived = true;
      w._closeCode = code;
      w._closeMessage = Buffer.from(reason);
      self.socket.removeListener("data", socketOnData as (chunk: Buffer) => void);
      process.nextTick(() => self.socket.resume());
      self.answerDeferred = true;
      self.stopTimers(); // no pings to a peer that has closed: it may not answer them
      self.armHalfCloseTimer();
      self.peerEnded(code);
    });
  }

  private armHalfCloseTimer(): void {
    clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(() => {
      this.failure ??= new Error(
        `the peer closed the WebSocket (its end of stream) and this side sent nothing for ${HALF_CLOSE_MS / 1000} s since: closed`,
      );
      this.answerDeferred = false;
      this.ws.close(1000);
      this.violationTimer = setTimeout(() => this.ws.terminate(), VIOLATION_CLOSE_MS);
      this.violationTimer.unref();
    }, HALF_CLOSE_MS);
    this.closeTimer.unref();
  }

  /**
   * After our Close, while the peer's direction goes on: wait for its Close as long as it keeps
   * sending (ws would give up 30 s after our Close, however busy the peer). `ms` of silence (while
   * we read) end the wait: as the peer's clean end for a server that never answers a Close (the
   * original Rust server, which cannot send after one either), as a failure for any other peer.
   */
  private awaitCloseAnswer(ms: number, silenceIsEnd: boolean): void {
    clearTimeout((this.ws as unknown as { _closeTimer?: NodeJS.Timeout })._closeTimer);
    this.awaitingAnswer = true;
    clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(() => {
      if (this.closed) return;
      if (this.paused || this.queue.length > 0) {
        // Not reading: what it sent may still wait unread. Look again later.
        this.closeTimer?.refresh();
        return;
      }
      if (silenceIsEnd) this.peerEnded(1005);
      else
        this.failure ??= new Error(
          `the peer sent nothing for ${ms / 1000} s after our WebSocket Close and did not answer it`,
        );
      this.ws.terminate();
    }, ms);
    this.closeTimer.unref();
  }

  /** The peer's direction ended cleanly: 'end' once everything before it is delivered. */
  private peerEnded(code: number): void {
    if (this.cleanClose) return;
    this.cleanClose = true;
    this.closeCode = code;
    if (!this.paused && this.queue.length === 0) this.finishClean();
  }

  /** Our messages are framed here and written to the socket directly (else through ws.send). */
  private readonly direct: boolean;
  /** Bytes handed to the WebSocket so far (with their frame headers); sentBytes never goes back. */
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
    if (this.direct) this.sendDirect(chunks);
    else {
      // One vectored write for all the messages of a batch, not one per message.
      this.socket.cork();
      for (const c of chunks) {
        this.accepted += c.length;
        this.ws.send(c, SEND_OPTIONS);
      }
      this.socket.uncork();
    }
    if (this.answerDeferred) this.closeTimer?.refresh();
    if (this.ws.bufferedAmount < this.highWater) return true;
    this.needDrain = true;
    return false;
  }

  /**
   * The batch as binary frames, as ws would send them: a client's (masked) in one buffer and one
   * write; a server's small ones in one buffer, a large one beside its header. Frames that ws
   * queues (pings, a Close) go straight to the socket too, so the order of calls is the order on
   * the wire.
   */
  private sendDirect(chunks: Buffer[]): void {
    if (chunks.length === 0) return;
    const socket = this.socket;
    if (this.opts.role === "client") {
      const frame = frameMasked(chunks);
      this.accepted += frame.length;
      socket.write(frame);
      return;
    }
    const pieces = frameUnmasked(chunks);
    if (pieces.length === 1) {
      this.accepted += pieces[0].length;
      socket.write(pieces[0]);
    } else {
      socket.cork();
      for (const p of pieces) {
        this.accepted += p.length;
        socket.write(p);
      }
      socket.uncork();
    }
  }

  writtenOut(): boolean {
    // Sent through ws (not direct), a record may stay referenced by ws's queue.
    return this.direct && !this.holdsWrites() && !this.socket.destroyed;
  }

  /** Whether the socket may still hold a buffer written to it (anything but a plain or TLS socket may). */
  private holdsWrites(): boolean {
    return !(this.socket instanceof net.Socket) || this.socket.writableLength > 0;
  }

  /** @internal Whether this link parses the socket's reads itself (not ws). */
  get readsItself(): boolean {
    return this.reader !== undefined;
  }

  /** @internal One read of the socket (a view of the shared read buffer for a fast socket). */
  onBytes(chunk: Buffer): void {
    const reader = this.reader;
    if (!reader || reader.isStopped) return;
    // The messages of a read that began while reading are delivered even if one of them pauses us.
    this.inRead = !this.paused;
    reader.push(chunk);
    this.inRead = false;
  }

  /** @internal */
  get isPaused(): boolean {
    return this.paused;
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
    if (this.answerDeferred) {
      // Our direction is done too: answer the peer's Close (ws then closes the connection).
      this.answerDeferred = false;
      clearTimeout(this.closeTimer);
      if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    } else if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000);
      // Only the original Rust server is known to leave a Close unanswered: a client whose server
      // did not say that it honours half-closes.
      const silent = this.opts.role === "client" && !this.opts.peerHalfCloses;
      if (!this.cleanClose) this.awaitCloseAnswer(silent ? UNANSWERED_CLOSE_MS : ANSWER_WAIT_MS, silent);
    }
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
    if (this.awaitingAnswer) this.closeTimer?.refresh();
    if (this.queue.length > 0 || (this.paused && !this.inRead))
      this.queue.push(this.lendsChunks ? Buffer.from(data) : data);
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
    clearTimeout(this.closeTimer);
    if (this.closed) return;
    if (this.failure) {
      this.finish(this.failure);
      return;
    }
    // A server that never answers a Close may as well drop the connection after ours: its
    // direction is over then (its protocol's end of stream is the Close, which it did not send).
    const unanswered =
      code === 1006 && this.localDone && this.opts.role === "client" && !this.opts.peerHalfCloses;
    if (code === 1000 || code === 1005 || unanswered || this.cleanClose) {
      this.cleanClose = true;
      this.closeCode ||= code;
      if (!this.paused && this.queue.length === 0) this.finishClean();
      else if (this.localDone && this.endEmitted) this.finish();
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
    clearTimeout(this.closeTimer);
    clearTimeout(this.violationTimer);
    this.emit("close", err);
  }

  private stopTimers(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    this.outstanding = undefined;
  }

  private startPings(): void {
    if (this.pingTimer || this.opts.pingIntervalMs <= 0 || this.closed) return;
    this.pingTimer = setInterval(() => this.pingTick(), this.opts.pingIntervalMs);
    this.pingTimer.unref();
  }

  /**
   * Every interval, a ping, and the previous one must have been answered (or anything else heard
   * from the peer meanwhile). A ping sent while data of ours was queued waits behind that data in
   * the socket, so it gets two intervals instead of one, never more: a peer or relay that stops
   * forwarding is noticed busy or idle. Only while we are paused (a slow application: we are not
   * reading, so an answer may wait unread) is the wait counted afresh; what is queued towards that
   * application is the stall timeout's business.
   */
  private pingTick(): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    const interval = this.opts.pingIntervalMs;
    const last = this.outstanding;
    if (last && !this.heardSincePing) {
      if (this.paused || this.pausedSincePing) {
        last.sentAt = now;
        this.pausedSincePing = this.paused;
        return;
      }
      const allowed = last.behind ? 2 * interval : interval;
      // Half an interval of slack for timers that fire late on a loaded machine.
      if (now - last.sentAt >= allowed - interval / 2) {
        this.failure ??= new Error(
          `no pong within ${allowed / 1000} s: the peer or a proxy on the way is gone`,
        );
        this.ws.terminate();
      }
      return;
    }
    this.heardSincePing = false;
    this.pausedSincePing = this.paused;
    this.outstanding = { sentAt: now, behind: this.ws.bufferedAmount > 0 };
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
