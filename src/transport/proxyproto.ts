/**
 * HAProxy's PROXY protocol, v1 (text) and v2 (binary), as sent by a trusted load balancer in front
 * of a -d server (--proxy-protocol): sans-IO, fed the first bytes of a connection.
 *
 * The tunnel calls parseProxyHeader on the bytes received so far until it returns a result, then
 * treats `consumed` bytes as the header and the rest as the handshake's. Every byte is checked as
 * soon as it arrives, so a connection that does not start with a header is refused at its first
 * wrong byte rather than after a timeout.
 *
 * Spec: HAProxy's doc/proxy-protocol.txt (version 1 = section 2.1, version 2 = section 2.2).
 */
import net from "node:net";

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

/** v1: "PROXY " ... "\r\n", at most 107 bytes in all (spec 2.1). */
const V1_PREFIX = Buffer.from("PROXY ", "latin1");
const V1_MAX = 107;
/** v2: the 12-byte signature, then ver/cmd, family/transport and a 16-bit length (spec 2.2). */
export const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
const V2_FIXED = 16;

/** Throws ProxyHeaderError when `bytes` cannot start a valid header. */
export function parseProxyHeader(bytes: Buffer): ProxyHeader {
  if (bytes.length === 0) return { done: false };
  if (bytes[0] === V1_PREFIX[0]) return parseV1(bytes);
  if (bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  throw new ProxyHeaderError("not a PROXY protocol header");
}

function checkPrefix(bytes: Buffer, prefix: Buffer, what: string): void {
  const n = Math.min(bytes.length, prefix.length);
  if (!bytes.subarray(0, n).equals(prefix.subarray(0, n))) throw new ProxyHeaderError(`bad ${what}`);
}

function parseV1(bytes: Buffer): ProxyHeader {
  checkPrefix(bytes, V1_PREFIX, "PROXY v1 signature");
  const limit = Math.min(bytes.length, V1_MAX);
  let lf = -1;
  for (let i = 0; i < limit; i++) {
    const c = bytes[i];
    if (c === 0x0a) {
      lf = i;
      break;
    }
    // Printable US-ASCII and the CR that must precede the LF; a CR anywhere else is wrong.
    if (c === 0x0d ? i + 1 < bytes.length && bytes[i + 1] !== 0x0a : c < 0x20 || c > 0x7e)
      throw new ProxyHeaderError("PROXY v1 header with a byte that is not printable ASCII");
  }
  if (lf < 0) {
    if (bytes.length >= V1_MAX) throw new ProxyHeaderError(`PROXY v1 header longer than ${V1_MAX} bytes`);
    return { done: false };
  }
  if (lf === 0 || bytes[lf - 1] !== 0x0d) throw new ProxyHeaderError("PROXY v1 header not ended by CRLF");
  const line = bytes.toString("latin1", 0, lf - 1);
  const fields = line.split(" ");
  const consumed = lf + 1;
  // "PROXY UNKNOWN" may be followed by anything up to the CRLF, which the receiver ignores.
  if (fields[1] === "UNKNOWN") return { done: true, consumed };
  if (fields.length !== 6) throw new ProxyHeaderError("PROXY v1 header without its 6 fields");
  const [, family, src, dst, sport, dport] = fields;
  const isIp = family === "TCP4" ? net.isIPv4 : family === "TCP6" ? net.isIPv6 : null;
  if (!isIp) throw new ProxyHeaderError(`PROXY v1 header with an unknown protocol ${JSON.stringify(family)}`);
  if (!isIp(src) || !isIp(dst))
    throw new ProxyHeaderError(
      `PROXY v1 header with an address that is not ${family === "TCP4" ? "IPv4" : "IPv6"}`,
    );
  const sourcePort = v1Port(sport);
  v1Port(dport);
  return { done: true, consumed, source: hostPort(src, sourcePort) };
}

/** A port in v1: decimal 0..65535 without leading zeros. */
function v1Port(text: string): number {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(text) || Number(text) > 65535)
    throw new ProxyHeaderError(`PROXY v1 header with a bad port ${JSON.stringify(text)}`);
  return Number(text);
}

function parseV2(bytes: Buffer): ProxyHeader {
  checkPrefix(bytes, V2_SIGNATURE, "PROXY v2 signature");
  if (bytes.length <= V2_SIGNATURE.length) return { done: false };
  const verCmd = bytes[12];
  if (verCmd >> 4 !== 2) throw new ProxyHeaderError(`PROXY v2 header with version ${verCmd >> 4}`);
  const command = verCmd & 0x0f;
  if (command > 1) throw new ProxyHeaderError(`PROXY v2 header with an unknown command ${command}`);
  if (bytes.length < 14) return { done: false };
  const family = bytes[13] >> 4;
  const transport = bytes[13] & 0x0f;
  if (family > 3) throw new ProxyHeaderError(`PROXY v2 header with an unknown address family ${family}`);
  if (transport > 2) throw new ProxyHeaderError(`PROXY v2 header with an unknown transport ${transport}`);
  if (bytes.length < V2_FIXED) return { done: false };
  const len = bytes.readUInt16BE(14);
  const consumed = V2_FIXED + len;
  if (bytes.length < consumed) return { done: false };
  const body = bytes.subarray(V2_FIXED, consumed);
  // The addresses' size for each family (spec 2.2): INET 12, INET6 36, UNIX 216.
  const addrLen = [0, 12, 36, 216][family];
  if (len < addrLen)
    throw new ProxyHeaderError(`PROXY v2 header of ${len} bytes, too short for its addresses (${addrLen})`);
  checkTlvs(body.subarray(addrLen));
  // LOCAL: the balancer's own connection (health check): the addresses are to be ignored.
  if (command === 0) return { done: true, consumed };
  if (family === 1) {
    const src = `${body[0]}.${body[1]}.${body[2]}.${body[3]}`;
    return { done: true, consumed, source: hostPort(src, body.readUInt16BE(8)) };
  }
  if (family === 2) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    return { done: true, consumed, source: hostPort(compressIPv6(groups), body.readUInt16BE(32)) };
  }
  // UNSPEC or UNIX: no host:port to report; the connection's own address stands.
  return { done: true, consumed };
}

/** TLVs after the addresses (spec 2.2.7): each type (1), length (2, big-endian), value; they must fill the rest exactly. */
function checkTlvs(tlvs: Buffer): void {
  let at = 0;
  while (at < tlvs.length) {
    if (tlvs.length - at < 3) throw new ProxyHeaderError("PROXY v2 header with a truncated TLV");
    const n = tlvs.readUInt16BE(at + 1);
    at += 3 + n;
    if (at > tlvs.length) throw new ProxyHeaderError("PROXY v2 header with a TLV longer than the header");
  }
}

function compressIPv6(groups: string[]): string {
  // The longest run (2 or more) of zero groups becomes "::" (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(":");
  return `${groups.slice(0, best).join(":")}::${groups.slice(best + bestLen).join(":")}`;
}

function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
