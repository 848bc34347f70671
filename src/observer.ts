/**
 * What the tunnel reports about its connections, for metrics. The tunnel calls these at each step
 * of a connection's life; src/metrics.ts implements them with Prometheus counters. The default
 * observer does nothing, so an end without --metrics pays nothing for it.
 */
import type { ProtocolName } from "./protocol/types.js";

export type Role = "client" | "server";
export type TransportName = "tcp" | "unix" | "ws" | "stdio";

/** How a connection ended. */
export type Outcome =
  | "clean" // both ends of stream delivered
  | "cut" // the encrypted leg ended without an authenticated end of stream, or failed, or stalled
  | "aborted" // an application reset, or the peer said it aborted
  | "refused-by-target" // the target (or, for a client, the server) could not be reached
  | "handshake-failed" // the peer never proved the key (see HandshakeFailure)
  | "idle-timeout"; // --idle-timeout expired

/** Why a handshake failed. */
export type HandshakeFailure =
  | "wrong-key" // the first message did not authenticate
  | "timeout" // no (complete) handshake within the deadline
  | "malformed" // bytes that are not a handshake of the protocol, or the peer closed mid-way
  | "replay" // the key confirmation (monopiped2 msg3) failed after msg1 authenticated
  | "limit"; // evicted from the pending cap, or refused because a queue was full

export interface ConnectionLabels {
  role: Role;
  transport: TransportName;
}

export interface TunnelObserver {
  /** A connection was accepted (before any handshake). */
  connectionOpened(l: ConnectionLabels): void;
  /** Its handshake completed after `seconds`. */
  handshakeDone(l: ConnectionLabels, protocol: ProtocolName, seconds: number): void;
  /** Its handshake failed. Followed by connectionClosed(…, "handshake-failed", …). */
  handshakeFailed(l: ConnectionLabels, reason: HandshakeFailure): void;
  /** It is over. `sent`: plain bytes application -> tunnel; `received`: tunnel -> application. */
  connectionClosed(
    l: ConnectionLabels,
    protocol: ProtocolName | undefined,
    outcome: Outcome,
    seconds: number,
    sent: number,
    received: number,
  ): void;
  /** Connections waiting for a -n slot, after each change. */
  waiting(count: number): void;
  /** Connections not yet authenticated (the pending cap), after each change. */
  pending(count: number): void;
}

export const NO_OBSERVER: TunnelObserver = {
  connectionOpened() {},
  handshakeDone() {},
  handshakeFailed() {},
  connectionClosed() {},
  waiting() {},
  pending() {},
};
