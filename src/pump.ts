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
import { ProtocolError } from "./protocol/errors.js";
import type { Session } from "./protocol/types.js";
import { DISCARD, type OwnedLink } from "./transport/link.js";

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
    const { sealer, opener } = session;
    const stats: PumpHandle = opts.handle ?? { sent: 0, received: 0, cut: () => {} };
    stats.sent = 0;
    stats.received = 0;
    let upDone = false; // application -> tunnel finished (end of stream sent)
    let downDone = false; // tunnel -> application finished (end of stream received)
    let settled = false;

    const finish = (reason: string, clean: boolean) => {
      if (settled) return;
      settled = true;
      plain.own(DISCARD);
      enc.own(DISCARD);
      resolve({ sent: stats.sent, received: stats.received, reason, clean });
    };

    /** Tear down after a failure: the application sees a reset, the peer an abort where the protocol can say it. */
    const fail = (reason: string, tellPeer: string | null) => {
      if (settled) return;
      if (tellPeer !== null) {
        try {
          const records = sealer.abort(tellPeer);
          if (records.length > 0) {
            enc.send(records);
            enc.endWrite();
          } else enc.reset();
        } catch {
          enc.reset();
        }
      } else enc.reset();
      plain.reset();
      finish(reason, false);
    };
    stats.cut = fail;

    /** Sealing can throw (a nonce counter at its limit): the connection fails, closed without END. */
    const sealed = (what: () => Buffer[]): Buffer[] | null => {
      try {
        return what();
      } catch (err) {
        fail(`cannot seal a record: ${err instanceof Error ? err.message : String(err)}`, null);
        return null;
      }
    };

    const maybeDone = () => {
      if (!upDone || !downDone) return;
      // Both ends of stream are through: close the encrypted leg (for monopiped2 this is the first
      // FIN; for the compatibility protocols the FIN already went out as their end of stream).
      if (session.authenticatedEnd) enc.endWrite();
      finish("closed", true);
    };

    // application -> tunnel
    // Node reads 65,536 bytes at a time and a record holds at most maxPlaintext (65,535 for
    // monopiped2): the few bytes past whole records are carried into the next read instead of
    // costing a record of their own, and sent on their own one event-loop turn later if no read
    // follows, so interactive traffic is not held back.
    let carry: Buffer | null = null;
    let flushScheduled = false;
    const sealAndSend = (plainBytes: Buffer, carried?: Buffer) => {
      const records = sealed(() => sealer.seal(plainBytes, carried));
      if (records && !enc.send(records)) plain.pause();
    };
    const flushCarry = () => {
      flushScheduled = false;
      if (!carry || settled) return;
      const rest = carry;
      carry = null;
      sealAndSend(rest);
    };
    const onPlainData = (chunk: Buffer) => {
      if (settled) return;
      stats.sent += chunk.length;
      // The carried bytes go in front of this read; the sealer takes both without joining them.
      const carried = carry ?? undefined;
      carry = null;
      const total = (carried?.length ?? 0) + chunk.length;
      const tail = total % sealer.maxPlaintext;
      let bytes = chunk;
      // Only where records are large (monopiped2): for small fixed frames a carried tail saves
      // little. The tail always lies within this read, since a carry is shorter than a record.
      if (sealer.maxPlaintext >= 16384 && total > sealer.maxPlaintext && tail !== 0) {
        carry = chunk.subarray(chunk.length - tail);
        bytes = chunk.subarray(0, chunk.length - tail);
        if (!flushScheduled) {
          flushScheduled = true;
          setImmediate(flushCarry);
        }
      }
      sealAndSend(bytes, carried);
    };
    const onPlainEnd = () => {
      if (settled || upDone) return;
      flushCarry();
      if (settled) return;
      upDone = true;
      const records = sealed(() => sealer.end());
      if (records === null) return;
      if (records.length > 0) enc.send(records);
      if (!session.authenticatedEnd) enc.endWrite();
      maybeDone();
    };

    // tunnel -> application
    const deliver = (chunk: Buffer) => {
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
      // Sends of one turn of the event loop leave in one vectored write (the link corks itself).
      for (const ev of events) {
        if (ev.type === "data") {
          if (ev.data.length === 0) continue;
          stats.received += ev.data.length;
          if (!plain.send([ev.data])) enc.pause();
        } else if (ev.type === "end") {
          downDone = true;
          plain.endWrite();
          maybeDone();
        } else {
          fail(`peer aborted: ${ev.reason}`, null);
          return;
        }
      }
    };
    const onEncData = (chunk: Buffer) => {
      if (settled) return;
      try {
        deliver(chunk);
      } catch (err) {
        const why = err instanceof ProtocolError ? err.message : String(err);
        fail(`protocol error from peer: ${why}`, `protocol error: ${why}`);
      }
    };
    const onEncEnd = () => {
      if (settled || downDone) return;
      if (session.authenticatedEnd) {
        fail("encrypted connection cut: it ended without an end-of-stream record (truncated)", null);
        return;
      }
      // Compatibility protocols: the transport's end is the end of stream (unauthenticated).
      downDone = true;
      if (opener.buffered > 0) {
        fail(`encrypted connection ended inside a record (${opener.buffered} bytes left over)`, null);
        return;
      }
      plain.endWrite();
      maybeDone();
    };

    plain.own({
      data: onPlainData,
      drain: () => {
        if (!downDone) enc.resume();
      },
      end: onPlainEnd,
      close: (err?: Error) => {
        if (settled) return;
        fail(
          `application connection ${err ? `failed: ${err.message}` : "closed abruptly"}`,
          "the application reset its connection",
        );
      },
    });
    enc.own({
      data: onEncData,
      drain: () => {
        if (!upDone) plain.resume();
      },
      end: onEncEnd,
      close: (err?: Error) => {
        if (settled) return;
        fail(
          `encrypted connection ${err ? `failed: ${err.message}` : "closed before the end of stream (truncated)"}`,
          null,
        );
      },
    });

    if (opts.rest && opts.rest.length > 0) onEncData(opts.rest);
    if (settled) return;
    plain.resume();
    enc.resume();
  });
}
