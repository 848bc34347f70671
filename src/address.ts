/**
 * Addresses as users write them: host:port, [ipv6]:port, name:port (resolved at connect time, so a
 * DNS change is picked up without a restart), /absolute/unix/path, and ws:// or wss:// URLs.
 */
import net from "node:net";

export type SocketAddress =
  | { kind: "tcp"; host: string; port: number; text: string }
  | { kind: "unix"; path: string; text: string };

/** `monopiped pipe`: the plain side is standard input and output, not a listener. */
export type StdioAddress = { kind: "stdio"; text: string };

export type WsAddress = { kind: "ws"; url: URL; secure: boolean; text: string };
export type Address = SocketAddress | WsAddress;

export class AddressError extends Error {}

export interface ParseOptions {
  /** Port 0 (pick any free port) is allowed for listeners. */
  allowPortZero?: boolean;
  /** ws:// and wss:// URLs are allowed (client targets). */
  allowUrl?: boolean;
}

export function parseAddress(text: string, opts: ParseOptions = {}): Address {
  const t = text.trim();
  if (t === "") throw new AddressError("empty address");
  if (/^wss?:\/\//i.test(t)) {
    if (!opts.allowUrl) throw new AddressError(`${t}: a WebSocket URL is not allowed here`);
    let url: URL;
    try {
      url = new URL(t);
    } catch {
      throw new AddressError(`${t}: not a valid URL`);
    }
    return { kind: "ws", url, secure: url.protocol === "wss:", text: t };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(t)) {
    throw new AddressError(`${t}: unsupported URL scheme (use ws:// or wss://, or host:port)`);
  }
  if (t.startsWith("/")) return { kind: "unix", path: t, text: t };

  let host: string;
  let portText: string;
  const bracketed = t.startsWith("[");
  if (bracketed) {
    const close = t.indexOf("]");
    if (close < 0) throw new AddressError(`${t}: missing "]" after the IPv6 address (write [ipv6]:port)`);
    host = t.slice(1, close);
    const after = t.slice(close + 1);
    if (host === "") throw new AddressError(`${t}: nothing between "[" and "]" (write [ipv6]:port)`);
    if (after === "" || after === ":")
      throw new AddressError(`${t}: missing port after "]" (write [${host}]:port)`);
    if (!after.startsWith(":"))
      throw new AddressError(`${t}: unexpected "${after}" after "]" (write [${host}]:port)`);
    portText = after.slice(1);
  } else {
    const colon = t.lastIndexOf(":");
    if (colon < 0) throw new AddressError(`${t}: missing port (write host:port, [ipv6]:port or /unix/path)`);
    host = t.slice(0, colon);
    portText = t.slice(colon + 1);
    if (host.includes("]")) throw new AddressError(`${t}: "]" without a "[" before it (write [ipv6]:port)`);
    if (host.includes(":"))
      throw new AddressError(`${t}: write an IPv6 address in brackets, e.g. [${host}]:${portText}`);
  }
  if (host === "")
    throw new AddressError(`${t}: missing host (write host:port, e.g. 127.0.0.1:${portText || "8080"})`);
  if (!/^\d+$/.test(portText)) throw new AddressError(`${t}: port "${portText}" is not a number`);
  const port = Number(portText);
  if (port > 65535 || (port === 0 && !opts.allowPortZero))
    throw new AddressError(`${t}: port ${port} out of range 1-65535`);
  if (bracketed && net.isIP(host) === 0) throw new AddressError(`${t}: [${host}] is not an IP address`);
  return { kind: "tcp", host, port, text: t };
}

/** host:port text for an IP and port, with brackets for IPv6. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
