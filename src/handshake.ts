/**
 * Drives a sans-IO Handshake over a link with deadlines: sends what the protocol says, feeds it
 * what arrives, and gives up the link's events (the link paused) the moment the session is ready,
 * so no byte, end or reset is lost between the handshake and the pump.
 */
import type { HandshakeFailure } from "./observer.js";
import { ProtocolError } from "./protocol/errors.js";
import type { Handshake, Session } from "./protocol/types.js";
import type { OwnedLink } from "./transport/link.js";
import { holdWritesThisTurn, SocketLink } from "./transport/tcp.js";

export interface Established {
  session: Session;
  /** Bytes read past the handshake, for the record opener. */
  rest: Buffer;
}

/** Why a handshake failed: `message` for the log, `kind` for metrics and summaries. */
export class HandshakeError extends Error {
  constructor(
    message: string,
    readonly kind: HandshakeFailure,
  ) {
    super(message);
  }
}

export interface HandshakeOptions {
  role: "client" | "server";
  /** Who is at the other end, for messages ("client 1.2.3.4:5", "server host:port"). */
  peerName: string;
  /** The whole handshake must be done within this many ms from now. */
  timeoutMs: number;
  /** How the whole-handshake timeout is named in the message (the -o value), if not timeoutMs. */
  timeoutLabel?: string;
  /** The peer's first message must be complete within this many ms from now (a server's --hello-timeout). */
  helloTimeoutMs?: number;
  helloLabel?: string;
  /** Bytes already read from the link that belong to the handshake (after a PROXY header). */
  initial?: Buffer;
}

export function runHandshake(link: OwnedLink, hs: Handshake, opts: HandshakeOptions): Promise<Established> {
  const { peerName, role } = opts;
  return new Promise((resolve, reject) => {
    let done = false;
    let onData: (chunk: Buffer) => void = () => {};
    let received = 0;
    /** A whole first message from the peer has been taken by the protocol. */
    let heardHello = false;
    const timers: NodeJS.Timeout[] = [];
    const cleanup = () => {
      done = true;
      for (const t of timers) clearTimeout(t);
      link.own(null);
    };
    const failWith = (message: string, kind: HandshakeFailure) => {
      if (done) return;
      cleanup();
      reject(new HandshakeError(message, kind));
    };
    const closedHint =
      role === "client"
        ? "wrong key, a different protocol or settings, or the server dropped it: out of resources or connections (see its log)"
        : "wrong key, or a different protocol or settings";
    onData = (chunk: Buffer) => {
      if (done) return;
      received += chunk.length;
      try {
        const out = hs.receive(chunk);
        if (link.messageFramed && !hs.session && hs.buffered !== 0) {
          const hint = hs.stallHint?.();
          throw new ProtocolError(
            "bad-framing",
            `a WebSocket message did not hold one whole handshake message${hint ? ` (${hint})` : ""}`,
          );
        }
        if (out.length > 0) {
          // The last message of our side (the client's key confirmation): the first record the
          // pump seals next (bytes the application sent meanwhile) goes out with it, one write.
          if (hs.session && link.link instanceof SocketLink) holdWritesThisTurn(link.link);
          link.send(out);
        }
      } catch (err) {
        let why = err instanceof ProtocolError ? err.message : `internal error: ${String(err)}`;
        let kind: HandshakeFailure =
          err instanceof ProtocolError && err.code === "key-confirmation"
            ? "replay"
            : err instanceof ProtocolError && err.code === "bad-handshake"
              ? "wrong-key"
              : "malformed";
        if (role === "server" && !heardHello && err instanceof ProtocolError && !/wrong key/.test(why)) {
          // The client's very first message did not open under our key.
          why = `first message did not authenticate: wrong key or not a monopiped peer (${why})`;
          kind = "wrong-key";
        }
        failWith(`handshake failed: ${why}`, kind);
        return;
      }
      if (!heardHello && (hs.session || received - hs.buffered > 0)) {
        heardHello = true;
        if (helloTimer) clearTimeout(helloTimer);
      }
      if (hs.session) {
        link.pause();
        const session = hs.session;
        const rest = hs.takeRest();
        cleanup();
        resolve({ session, rest });
      }
    };
    link.own({
      data: (chunk: Buffer) => onData(chunk),
      end() {
        failWith(
          `handshake failed: ${peerName} closed the connection during the handshake (${closedHint})`,
          "malformed",
        );
      },
      close(err?: Error & { code?: string }) {
        failWith(
          err?.code === "ECONNRESET"
            ? `handshake failed: ${peerName} reset the connection during the handshake (${closedHint})`
            : `handshake failed: connection to ${peerName} ${err ? `failed: ${err.message}` : "closed"}`,
          "malformed",
        );
      },
    });
    timers.push(
      setTimeout(
        () => {
          const hint = hs.stallHint?.();
          failWith(
            `handshake timeout after ${opts.timeoutLabel ?? `${opts.timeoutMs / 1000} s`}${hint ? ` (${hint})` : ""}`,
            "timeout",
          );
        },
        Math.max(0, opts.timeoutMs),
      ),
    );
    let helloTimer: NodeJS.Timeout | undefined;
    if (opts.helloTimeoutMs !== undefined && opts.helloTimeoutMs < opts.timeoutMs) {
      helloTimer = setTimeout(
        () => {
          const hint = hs.stallHint?.();
          failWith(
            `handshake timeout: no first handshake message within ${opts.helloLabel ?? `${opts.helloTimeoutMs} ms`} (--hello-timeout)${hint ? ` (${hint})` : ""}`,
            "timeout",
          );
        },
        Math.max(0, opts.helloTimeoutMs),
      );
      timers.push(helloTimer);
    }
    const first = hs.start();
    if (first.length > 0) link.send(first);
    if (opts.initial && opts.initial.length > 0) onData(opts.initial);
    if (!done) link.resume();
  });
}

/**
 * A server's handshake that is built only once the client's whole first message (`firstLen`
 * bytes) is there: building one costs a fresh key pair, which a stranger that connects and sends
 * nothing, or a few bytes, should not get from us (2,000 of them cost about a second of CPU).
 * Only for protocols whose server says nothing before the client's first message.
 */
export function deferredHandshake(make: () => Handshake, firstLen: number): Handshake {
  let hs: Handshake | null = null;
  let held: Buffer[] = [];
  let heldLen = 0;
  const build = (): Handshake => {
    if (hs) return hs;
    const made = make();
    hs = made;
    const bytes = Buffer.concat(held);
    held = [];
    heldLen = 0;
    pendingOut = [...made.start(), ...(bytes.length > 0 ? made.receive(bytes) : [])];
    return made;
  };
  let pendingOut: Buffer[] = [];
  return {
    start: () => [],
    receive(bytes: Buffer): Buffer[] {
      if (hs) return hs.receive(bytes);
      held.push(bytes);
      heldLen += bytes.length;
      if (heldLen < firstLen) return [];
      build();
      const out = pendingOut;
      pendingOut = [];
      return out;
    },
    get session() {
      return hs?.session ?? null;
    },
    takeRest: () => (hs ? hs.takeRest() : Buffer.alloc(0)),
    get buffered() {
      return hs ? hs.buffered : heldLen;
    },
    stallHint(): string | undefined {
      try {
        return build().stallHint?.();
      } catch {
        return undefined;
      }
    },
  };
}
