/**
 * A Link is a two-way byte channel as the tunnel sees it: the plain application socket on one side,
 * the encrypted leg (TCP or WebSocket) on the other. Transports adapt their sockets to it so the
 * tunnel and the pump never care which one they hold.
 *
 * Events:
 *   'data'  (chunk: Buffer)  bytes from the peer; for message-framed links one chunk = one message
 *   'drain' ()               the send buffer emptied after send() returned false
 *   'end'   ()               the peer finished sending cleanly (TCP FIN, WebSocket close 1000)
 *   'close' (error?: Error)  the link is gone; an error says why when it did not end cleanly
 */
import type { EventEmitter } from "node:events";

export interface Link extends EventEmitter {
  /** Who is on the other end, for logs. */
  readonly peer: string;
  /** True when every 'data' chunk is one whole transport message (WebSocket). */
  readonly messageFramed: boolean;
  /** Send buffers (each one message on a message-framed link). False: wait for 'drain'. */
  send(chunks: Buffer[]): boolean;
  /**
   * Stop / restart 'data' events (backpressure towards the peer). A pause takes effect at the end
   * of the read being delivered: the rest of that read still arrives.
   */
  pause(): void;
  resume(): void;
  /** Finish our sending direction cleanly once everything queued is out (TCP FIN, WebSocket close). */
  endWrite(): void;
  /** Abort now: TCP sends RST, WebSocket drops the connection without a closing handshake. */
  reset(): void;
  /** True once the link has emitted 'close'. */
  readonly closed: boolean;
  /** Bytes accepted by send() but not yet written out (to the kernel, or to the WebSocket's socket). */
  readonly queuedBytes: number;
  /** Bytes written out so far (monotonic): with queuedBytes, tells a stalled link from a slow one. */
  readonly sentBytes: number;
  /**
   * True when each 'data' chunk is lent: valid only while its event runs (the socket reads into a
   * buffer it reuses, transport/fastread.ts). OwnedLink copies lent chunks for owners that keep them.
   */
  readonly lendsChunks?: boolean;
  /**
   * True when no buffer given to send() is referenced any more: everything was written out (a
   * write that completed before send() returned). Lets a caller reuse that memory at once. Links
   * that cannot tell leave it out (taken as false).
   */
  writtenOut?(): boolean;
}

/** What the current owner of a link (handshake, pump, ...) does with its events. */
export interface LinkHandlers {
  /**
   * True when data() consumes each chunk before it returns (copying whatever it keeps), so a lent
   * chunk can be handed to it as it is. Otherwise it gets a copy of a lent chunk.
   */
  readonly borrows?: boolean;
  data(chunk: Buffer): void;
  drain?(): void;
  end(): void;
  close(err?: Error): void;
}

/** An owner that drops whatever still arrives (a connection whose outcome is already decided). */
export const DISCARD: LinkHandlers = { data() {}, end() {}, close() {} };

type HeldEvent = { type: "data"; chunk: Buffer } | { type: "end" } | { type: "close"; err?: Error };

/** The OwnedLink of each link, for the shared listeners below (`this` is the emitting link). */
const OWNERS = new WeakMap<Link, OwnedLink>();
function onLinkData(this: Link, chunk: Buffer): void {
  OWNERS.get(this)?.onData(chunk);
}
function onLinkDrain(this: Link): void {
  OWNERS.get(this)?.onDrain();
}
function onLinkEnd(this: Link): void {
  OWNERS.get(this)?.onEnd();
}
function onLinkClose(this: Link, err?: Error): void {
  OWNERS.get(this)?.onClose(err);
}

/**
 * A link whose events have exactly one owner at every moment. It subscribes to the link once, when
 * the connection is accepted or dialled, and forwards each event to whichever stage owns the link
 * now (handshake, then the pump). Events that arrive while ownership passes from one stage to the
 * next (no owner, e.g. while the server dials its target) are held, in order, and handed to the
 * next owner: a FIN, a reset or bytes can never arrive while nobody listens.
 */
export class OwnedLink {
  private owner: LinkHandlers | null = null;
  /** Events waiting for an owner (allocated only when one has to wait). */
  private held: HeldEvent[] | null = null;
  private flushScheduled = false;
  /** The peer's end of stream was seen (delivered or held). */
  ended = false;
  /** 'close' was seen (delivered or held). */
  gone = false;
  /** Bytes received so far (for the idle timeout). */
  bytesIn = 0;

  constructor(readonly link: Link) {
    // Shared listeners (no closures per link): an idle connection should cost little memory.
    OWNERS.set(link, this);
    link.on("data", onLinkData);
    link.on("drain", onLinkDrain);
    link.on("end", onLinkEnd);
    link.on("close", onLinkClose);
  }

  /** @internal */
  onData(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    const owner = this.owner;
    if (owner !== null && (this.held === null || this.held.length === 0)) {
      owner.data(this.link.lendsChunks && !owner.borrows ? Buffer.from(chunk) : chunk);
      return;
    }
    // Held for the next owner: a lent chunk is gone once this event returns.
    this.hold({ type: "data", chunk: this.link.lendsChunks ? Buffer.from(chunk) : chunk });
  }
  /** @internal */
  onDrain(): void {
    this.owner?.drain?.();
  }
  /** @internal */
  onEnd(): void {
    this.ended = true;
    this.dispatch({ type: "end" });
  }
  /** @internal */
  onClose(err?: Error): void {
    this.gone = true;
    this.dispatch({ type: "close", err });
  }

  get peer(): string {
    return this.link.peer;
  }
  get messageFramed(): boolean {
    return this.link.messageFramed;
  }
  get closed(): boolean {
    return this.link.closed;
  }
  send(chunks: Buffer[]): boolean {
    return this.link.send(chunks);
  }
  writtenOut(): boolean {
    return this.link.writtenOut?.() ?? false;
  }
  pause(): void {
    this.link.pause();
  }
  resume(): void {
    this.link.resume();
  }
  endWrite(): void {
    this.link.endWrite();
  }
  reset(): void {
    this.link.reset();
  }

  /**
   * Hand the link's events to `handlers` from now on (null: hold them for the next owner). Events
   * held so far are delivered to the new owner first, in order, on the next tick (never from inside
   * this call, so the caller finishes wiring up before its first event).
   */
  own(handlers: LinkHandlers | null): void {
    this.owner = handlers;
    if (handlers && this.held !== null && this.held.length > 0 && !this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(() => this.flush());
    }
  }

  private dispatch(ev: HeldEvent): void {
    if (this.owner && (this.held === null || this.held.length === 0)) this.deliver(this.owner, ev);
    else this.hold(ev);
  }

  private hold(ev: HeldEvent): void {
    if (this.held === null) this.held = [ev];
    else this.held.push(ev);
  }

  private flush(): void {
    this.flushScheduled = false;
    while (this.owner && this.held !== null && this.held.length > 0)
      this.deliver(this.owner, this.held.shift() as HeldEvent);
    if (this.held !== null && this.held.length === 0) this.held = null;
  }

  private deliver(to: LinkHandlers, ev: HeldEvent): void {
    if (ev.type === "data") to.data(ev.chunk);
    else if (ev.type === "end") to.end();
    else to.close(ev.err);
  }
}

/** A bound listener that hands each new connection over as a Link (paused until the tunnel serves it). */
export interface Listener {
  /** The bound address, e.g. 127.0.0.1:41234 (useful with port 0). */
  readonly address: string;
  /** Stop accepting; open links are not touched. */
  close(): void;
}
