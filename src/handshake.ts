/**
 * Drives a sans-IO Handshake over a Link with a deadline: sends what the protocol says, feeds it
 * what arrives, and stops the link (paused) the moment the session is ready, so no byte is lost
 * between the handshake and the pump.
 */
import { ProtocolError } from "./protocol/errors.js";
import type { Handshake, Session } from "./protocol/types.js";
import type { Link } from "./transport/link.js";

export interface Established {
  session: Session;
  /** Bytes read past the handshake, for the record opener. */
  rest: Buffer;
}

export function runHandshake(
  link: Link,
  hs: Handshake,
  timeoutMs: number,
  peerName: string,
): Promise<Established> {
  return new Promise((resolve, reject) => {
    let done = false;
    const cleanup = () => {
      done = true;
      clearTimeout(timer);
      link.removeListener("data", onData);
      link.removeListener("end", onEnd);
      link.removeListener("close", onClose);
    };
    const failWith = (message: string) => {
      if (done) return;
      cleanup();
      reject(new Error(message));
    };
    const onData = (chunk: Buffer) => {
      if (done) return;
      try {
        const out = hs.receive(chunk);
        if (link.messageFramed && !hs.session && hs.buffered !== 0) {
          const hint = hs.stallHint?.();
          throw new ProtocolError(
            "bad-framing",
            `a WebSocket message did not hold one whole handshake message${hint ? ` (${hint})` : ""}`,
          );
        }
        if (out.length > 0) link.send(out);
      } catch (err) {
        const why = err instanceof ProtocolError ? err.message : `internal error: ${String(err)}`;
        failWith(`handshake failed: ${why}`);
        return;
      }
      if (hs.session) {
        link.pause();
        const session = hs.session;
        const rest = hs.takeRest();
        cleanup();
        resolve({ session, rest });
      }
    };
    const onEnd = () =>
      failWith(
        `handshake failed: ${peerName} closed the connection during the handshake (wrong key, or a different protocol or settings)`,
      );
    const onClose = (err?: Error & { code?: string }) =>
      failWith(
        err?.code === "ECONNRESET"
          ? `handshake failed: ${peerName} reset the connection during the handshake (wrong key, or a different protocol or settings)`
          : `handshake failed: connection to ${peerName} ${err ? `failed: ${err.message}` : "closed"}`,
      );
    const timer = setTimeout(() => {
      const hint = hs.stallHint?.();
      failWith(`handshake timeout after ${timeoutMs / 1000} s${hint ? ` (${hint})` : ""}`);
    }, timeoutMs);

    link.on("data", onData);
    link.on("end", onEnd);
    link.on("close", onClose);
    const first = hs.start();
    if (first.length > 0) link.send(first);
    link.resume();
  });
}
