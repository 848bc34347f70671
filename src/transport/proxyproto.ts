/**
 * HAProxy's PROXY protocol, v1 (text) and v2 (binary), as sent by a trusted load balancer in front
 * of a -d server (--proxy-protocol): sans-IO, fed the first bytes of a connection.
 *
 * TODO(ops): implement; the tunnel calls parseProxyHeader on the bytes received so far until it
 * returns a result, then treats `consumed` bytes as the header and the rest as the handshake's.
 */
export class ProxyHeaderError extends Error {}

export type ProxyHeader =
  /** More bytes are needed. */
  | { done: false }
  /**
   * A whole header of `consumed` bytes. `source` is the client address as host:port ([v6]:port),
   * or undefined for a LOCAL / UNKNOWN header (the balancer's own health check).
   */
  | { done: true; consumed: number; source?: string };

/** Longest header accepted (v2 allows 16 + 65535; v1 at most 107). */
export const MAX_PROXY_HEADER = 16 + 65535;

/** Throws ProxyHeaderError when `bytes` cannot start a valid header. */
export function parseProxyHeader(bytes: Buffer): ProxyHeader {
  void bytes;
  throw new ProxyHeaderError("the PROXY protocol is not implemented yet");
}
