/**
 * The two-way copy between the plain application link and the encrypted link, once the handshake
 * is done. It owns backpressure (a side that cannot keep up pauses the other: memory per connection
 * stays bounded by the sockets' own buffers), half-close (each direction ends on its own), byte
 * counters, and the rule for how a connection ends:
 *
 *   - clean: both directions delivered their end of stream; both links are closed normally.
 *   - cut:   the encrypted link ended without an authenticated end of stream (monopiped2), or failed;
 *            the plain side is reset (RST) so the application cannot mistake a truncation for an end.
 *   - abort: either application reset its connection, or the peer said it aborted; the other
 *            application is reset as well.
 */
import { arena } from "./protocol/arena.js";
import { ProtocolError } from "./protocol/errors.js";
import type { Session } from "./protocol/types.js";
import { DISCARD, type LinkHandlers, type OwnedLink } from "./transport/link.js";

export interface PumpResult {
  /** Plain bytes read from the application and sent through the tunnel. */
  sent: number;
  /** Plain bytes received through the tunnel and written to the application. */
  received: number;
  /** Why the connection ended, for the log. */
  reason: string;
  /** False when the connection did not end cleanly. */
  clean: boolean;
}

/** A running pump as the tunnel sees it: live byte counters, and a way to cut it (timeouts). */
export interface PumpHandle {
  sent: number;
  received: number;
  /**
   * End the connection now as a failure with `reason` (for the log). `tellPeer`: the reason sent to
   * the peer in an ABORT record, after which the encrypted link is closed with a FIN; null resets
   * the encrypted link instead (it is the one not moving). The application is reset either way.
   */
  cut(reason: string, tellPeer: string | null): void;
}

export interface PumpOptions {
  /** Bytes that arrived right after the handshake, already read from the encrypted link. */
  rest?: Buffer;
  /** Filled in by the pump: its counters and cut(). */
  handle?: PumpHandle;
}

export function pump(
  plain: OwnedLink,
  enc: OwnedLink,
  session: Session,
  opts: PumpOptions = {},
): Promise<PumpResult> {
  return new Promise((resolve) => {
    new Pump(plain, enc, session, opts, resolve).start(opts.rest);
  });
}

/**
 * One connection's pump. A class rather than closures: an idle connection holds its pump for its
 * whole life, and one object with shared methods costs far less than a dozen closures.
 */
class Pump {
  private readonly sealer: Session["sealer"];
  private readonly opener: Session["opener"];
  private readonly stats: PumpHandle;
  private upDone = false; // application -> tunnel finished (end of stream sent)
  private downDone = false; // tunnel -> application finished (end of stream received)
  private settled = false;
  /** A message-framed link's read is being delivered (see onEncData): an arena operation is open. */
  private batchOpen = false;
  /** Its plaintext so far. */
  private batch: Buffer[] | null = null;
  // application -> tunnel
  // Node reads 65,536 bytes at a time and a record holds at most maxPlaintext (65,535 for
  // monopiped2): the few bytes past whole records are carried into the next read instead of
  // costing a record of their own, and sent on their own one event-loop turn later if no read
  // follows, so interactive traffic is not held back.
  private carry: Buffer | null = null;
  private flushScheduled = false;

  constructor(
    private readonly plain: OwnedLink,
    private readonly enc: OwnedLink,
    private readonly session: Session,
    opts: PumpOptions,
    private readonly resolve: (r: PumpResult) => void,
  ) {
    this.sealer = session.sealer;
    this.opener = session.opener;
    const stats: PumpHandle = opts.handle ?? { sent: 0, received: 0, cut: () => {} };
    stats.sent = 0;
    stats.received = 0;
    stats.cut = (reason, tellPeer) => this.fail(reason, tellPeer);
    this.stats = stats;
  }

  start(rest: Buffer | undefined): void {
    this.plain.own(new PlainSide(this));
    this.enc.own(new EncSide(this));
    if (rest && rest.length > 0) this.onEncData(rest);
    if (this.settled) return;
    this.plain.resume();
    this.enc.resume();
  }

  private finish(reason: string, clean: boolean): void {
    if (this.settled) return;
    this.settled = true;
    this.plain.own(DISCARD);
    this.enc.own(DISCARD);
    this.resolve({ sent: this.stats.sent, received: this.stats.received, reason, clean });
  }

  /** Tear down after a failure: the application sees a reset, the peer an abort where the protocol can say it. */
  fail(reason: string, tellPeer: string | null): void {
    if (this.settled) return;
    const enc = this.enc;
    if (tellPeer !== null) {
      try {
        const records = this.sealer.abort(tellPeer);
        if (records.length > 0) {
          enc.send(records);
          enc.endWrite();
        } else enc.reset();
      } catch {
        enc.reset();
      }
    } else enc.reset();
    this.plain.reset();
    this.finish(reason, false);
  }

  /** Sealing can throw (a nonce counter at its limit): the connection fails, closed without END. */
  private sealFailed(err: unknown): null {
    this.fail(`cannot seal a record: ${err instanceof Error ? err.message : String(err)}`, null);
    return null;
  }

  private maybeDone(): void {
    if (!this.upDone || !this.downDone) return;
    // Both ends of stream are through: close the encrypted leg (for monopiped2 this is the first
    // FIN; for the compatibility protocols the FIN already went out as their end of stream).
    if (this.session.authenticatedEnd) this.enc.endWrite();
    this.finish("closed", true);
  }

  private sealAndSend(plainBytes: Buffer, carried?: Buffer): void {
    // The records are lent from the arena until the socket has written them: when the write
    // completes at once (a socket that keeps up), the next read's records reuse the same memory.
    arena.begin();
    let records: Buffer[];
    try {
      records = this.sealer.seal(plainBytes, carried);
    } catch (err) {
      arena.end(true); // nothing sent
      this.sealFailed(err);
      return;
    }
    const ok = this.enc.send(records);
    arena.end(this.enc.writtenOut());
    if (!ok) this.plain.pause();
  }

  flushCarry(): void {
    this.flushScheduled = false;
    if (!this.carry || this.settled) return;
    const rest = this.carry;
    this.carry = null;
    this.sealAndSend(rest);
  }

  onPlainData(chunk: Buffer): void {
    if (this.settled) return;
    const sealer = this.sealer;
    this.stats.sent += chunk.length;
    // The carried bytes go in front of this read; the sealer takes both without joining them.
    const carried = this.carry ?? undefined;
    this.carry = null;
    const total = (carried?.length ?? 0) + chunk.length;
    const tail = total % sealer.maxPlaintext;
    let bytes = chunk;
    // Only where records are large (monopiped2): for small fixed frames a carried tail saves
    // little. The tail always lies within this read, since a carry is shorter than a record.
    if (sealer.maxPlaintext >= 16384 && total > sealer.maxPlaintext && tail !== 0) {
      // A copy: the chunk may be a view of a buffer the socket reuses for its next read.
      this.carry = Buffer.from(chunk.subarray(chunk.length - tail));
      bytes = chunk.subarray(0, chunk.length - tail);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(flushCarryOf, this);
      }
    }
    this.sealAndSend(bytes, carried);
  }

  onPlainEnd(): void {
    if (this.settled || this.upDone) return;
    this.flushCarry();
    if (this.settled) return;
    this.upDone = true;
    let records: Buffer[];
    try {
      records = this.sealer.end();
    } catch (err) {
      this.sealFailed(err);
      return;
    }
    if (records.length > 0) this.enc.send(records);
    if (!this.session.authenticatedEnd) this.enc.endWrite();
    this.maybeDone();
  }

  onPlainDrain(): void {
    if (!this.downDone) this.enc.resume();
  }

  onPlainClose(err?: Error): void {
    if (this.settled) return;
    this.fail(
      `application connection ${err ? `failed: ${err.message}` : "closed abruptly"}`,
      "the application reset its connection",
    );
  }

  // tunnel -> application
  private deliver(chunk: Buffer): void {
    const { enc, plain, session, opener } = this;
    if (enc.messageFramed && session.fixedRecordSize && chunk.length !== session.fixedRecordSize) {
      throw new ProtocolError(
        "bad-framing",
        `WebSocket message of ${chunk.length} bytes, expected ${session.fixedRecordSize}`,
      );
    }
    const events = opener.push(chunk);
    if (enc.messageFramed && opener.buffered !== 0) {
      throw new ProtocolError("bad-framing", "a WebSocket message did not hold whole records");
    }
    // The plaintext of every record of this read goes to the application in one (vectored) write;
    // from a message-framed link, that of every message of the read (see onEncData).
    let out: Buffer[] | null = this.batch;
    this.batch = null;
    for (const ev of events) {
      if (ev.type === "data") {
        if (ev.data.length === 0) continue;
        this.stats.received += ev.data.length;
        if (out === null) out = [ev.data];
        else out.push(ev.data);
        continue;
      }
      if (out !== null) {
        if (!plain.send(out)) enc.pause();
        out = null;
      }
      if (ev.type === "end") {
        this.downDone = true;
        plain.endWrite();
        this.maybeDone();
      } else {
        this.fail(`peer aborted: ${ev.reason}`, null);
        return;
      }
    }
    if (out === null) return;
    if (this.batchOpen) this.batch = out;
    else if (!plain.send(out)) enc.pause();
  }

  onEncData(chunk: Buffer): void {
    if (this.settled) return;
    // The opened plaintext is lent from the arena until the application's socket has written it.
    // A message-framed link (WebSocket) delivers a read as one event per message: their plaintext
    // is gathered and sent when the read is done (on the next tick, before any other read), as one
    // write whose memory is free again at once, not one corked write per message.
    const framed = this.enc.messageFramed;
    if (!framed) arena.begin();
    else if (!this.batchOpen) {
      this.batchOpen = true;
      arena.begin();
      process.nextTick(sendBatchOf, this);
    }
    try {
      this.deliver(chunk);
    } catch (err) {
      const why = err instanceof ProtocolError ? err.message : String(err);
      this.fail(`protocol error from peer: ${why}`, `protocol error: ${why}`);
    } finally {
      if (!framed) arena.end(this.plain.writtenOut());
    }
  }

  /** The end of a message-framed link's read: its messages' plaintext goes out. */
  sendBatch(): void {
    if (!this.batchOpen) return;
    this.batchOpen = false;
    const out = this.batch;
    this.batch = null;
    if (out !== null && !this.settled && !this.plain.send(out)) this.enc.pause();
    arena.end(this.plain.writtenOut());
  }

  onEncEnd(): void {
    this.sendBatch();
    if (this.settled || this.downDone) return;
    if (this.session.authenticatedEnd) {
      this.fail("encrypted connection cut: it ended without an end-of-stream record (truncated)", null);
      return;
    }
    // Compatibility protocols: the transport's end is the end of stream (unauthenticated).
    this.downDone = true;
    if (this.opener.buffered > 0) {
      this.fail(`encrypted connection ended inside a record (${this.opener.buffered} bytes left over)`, null);
      return;
    }
    this.plain.endWrite();
    this.maybeDone();
  }

  onEncDrain(): void {
    if (!this.upDone) this.plain.resume();
  }

  onEncClose(err?: Error): void {
    if (this.settled) return;
    this.fail(
      `encrypted connection ${err ? `failed: ${err.message}` : "closed before the end of stream (truncated)"}`,
      null,
    );
  }
}

function flushCarryOf(p: Pump): void {
  p.flushCarry();
}

/** The plain link's events, handed to the pump. */
class PlainSide implements LinkHandlers {
  /** Each read is sealed before data() returns; only a carried tail is kept, as a copy. */
  readonly borrows = true;
  constructor(private readonly p: Pump) {}
  data(chunk: Buffer): void {
    this.p.onPlainData(chunk);
  }
  drain(): void {
    this.p.onPlainDrain();
  }
  end(): void {
    this.p.onPlainEnd();
  }
  close(err?: Error): void {
    this.p.onPlainClose(err);
  }
}

/** The encrypted link's events, handed to the pump. */
class EncSide implements LinkHandlers {
  /** Openers copy whatever part of a read they keep (RecordOpener.push). */
  readonly borrows = true;
  constructor(private readonly p: Pump) {}
  data(chunk: Buffer): void {
    this.p.onEncData(chunk);
  }
  drain(): void {
    this.p.onEncDrain();
  }
  end(): void {
    this.p.onEncEnd();
  }
  close(err?: Error): void {
    this.p.onEncClose(err);
  }
}
function sendBatchOf(p: Pump): void {
  p.sendBatch();
}
