/** The PROXY protocol parser (v1 and v2) against the examples and rules of HAProxy's proxy-protocol.txt. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  MAX_PROXY_HEADER,
  ProxyHeaderError,
  parseProxyHeader,
  V2_SIGNATURE,
} from "../../src/transport/proxyproto.js";

const HANDSHAKE = Buffer.from([0x00, 0x01, 0x02, 0xff, 0x0d, 0x0a, 0x50]);

/**
 * Feeds every prefix of `header` (each split point a reader could see), then the whole header
 * followed by the first handshake bytes: every prefix asks for more, the whole one is consumed exactly.
 */
function parseEverySplit(header: Buffer) {
  for (let n = 0; n < header.length; n++) {
    assert.deepEqual(parseProxyHeader(header.subarray(0, n)), { done: false }, `prefix of ${n} bytes`);
  }
  const alone = parseProxyHeader(header);
  const withRest = parseProxyHeader(Buffer.concat([header, HANDSHAKE]));
  assert.deepEqual(withRest, alone);
  assert.ok(alone.done);
  assert.equal(alone.consumed, header.length);
  return alone;
}

function refused(bytes: Buffer, message?: RegExp) {
  assert.throws(
    () => parseProxyHeader(bytes),
    (err: Error) => {
      assert.ok(err instanceof ProxyHeaderError, `a ProxyHeaderError, got ${err}`);
      if (message) assert.match(err.message, message);
      return true;
    },
  );
}

const v1 = (s: string) => Buffer.from(s, "latin1");

/** A v2 header: command (0 LOCAL, 1 PROXY), family/transport byte, addresses and TLVs. */
function v2(command: number, famTransport: number, body: Buffer, version = 2): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = (version << 4) | command;
  fixed[1] = famTransport;
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, fixed, body]);
}

function inet4(src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  b.set(src, 0);
  b.set(dst, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

function inet6(src: string, dst: string, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(36);
  const put = (text: string, at: number) => {
    const [head, tail = ""] = text.split("::");
    const h = head ? head.split(":") : [];
    const t = tail ? tail.split(":") : [];
    const groups = text.includes("::") ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t] : h;
    groups.forEach((g, i) => {
      b.writeUInt16BE(Number.parseInt(g, 16), at + 2 * i);
    });
  };
  put(src, 0);
  put(dst, 16);
  b.writeUInt16BE(sport, 32);
  b.writeUInt16BE(dport, 34);
  return b;
}

function tlv(type: number, value: Buffer): Buffer {
  const b = Buffer.alloc(3);
  b[0] = type;
  b.writeUInt16BE(value.length, 1);
  return Buffer.concat([b, value]);
}

describe("PROXY protocol v1", () => {
  it("TCP4: the spec's example, the longest TCP4 line and port 0", () => {
    assert.deepEqual(parseEverySplit(v1("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")), {
      done: true,
      consumed: 47,
      source: "192.168.0.1:56324",
    });
    const longest = v1("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
    assert.equal(longest.length, 56); // the spec's worst case for TCP4
    assert.equal(parseEverySplit(longest).source, "255.255.255.255:65535");
    assert.equal(parseEverySplit(v1("PROXY TCP4 10.0.0.1 10.0.0.2 0 1\r\n")).source, "10.0.0.1:0");
  });

  it("TCP6: the longest line (104 bytes) and a compressed address", () => {
    const f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const longest = v1(`PROXY TCP6 ${f} ${f} 65535 65535\r\n`);
    assert.equal(longest.length, 104);
    assert.equal(parseEverySplit(longest).source, `[${f}]:65535`);
    assert.equal(
      parseEverySplit(v1("PROXY TCP6 2001:db8::1 ::1 40000 443\r\n")).source,
      "[2001:db8::1]:40000",
    );
  });

  it("UNKNOWN: no source, anything up to the CRLF ignored, the 107-byte worst case", () => {
    assert.deepEqual(parseEverySplit(v1("PROXY UNKNOWN\r\n")), { done: true, consumed: 15 });
    const f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const worst = v1(`PROXY UNKNOWN ${f} ${f} 65535 65535\r\n`);
    assert.equal(worst.length, 107);
    assert.deepEqual(parseEverySplit(worst), { done: true, consumed: 107 });
  });

  it("refuses wrong signatures at the first wrong byte", () => {
    refused(v1("G"));
    refused(v1("PROXX"), /signature/);
    refused(v1("proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n"));
    refused(v1("PROXYTCP4"), /signature/);
    refused(v1("SSH-2.0-OpenSSH\r\n"));
    refused(HANDSHAKE); // a handshake's first bytes are not a header
  });

  it("refuses malformed lines", () => {
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), /CRLF/);
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"));
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), /6 fields/);
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), /6 fields/);
    refused(v1("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"));
    refused(v1("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), /unknown protocol/);
    refused(v1("PROXY TCP4 ::1 ::1 1 2\r\n"), /IPv4/);
    refused(v1("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), /IPv6/);
    refused(v1("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"));
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), /port/);
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), /port/);
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), /port/);
    refused(v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 x\r\n"), /port/);
    refused(v1("PROXY \r\n"));
    refused(v1("PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n"), /printable/);
  });

  it("refuses a line with no CRLF within 107 bytes, and waits below that", () => {
    const long = v1(`PROXY UNKNOWN ${"a".repeat(200)}`);
    assert.deepEqual(parseProxyHeader(long.subarray(0, 106)), { done: false });
    refused(long.subarray(0, 107), /longer than 107/);
    refused(long, /longer than 107/);
  });
});

describe("PROXY protocol v2", () => {
  it("PROXY over TCP/IPv4 (what HAProxy's send-proxy-v2 sends)", () => {
    const h = v2(1, 0x11, inet4([127, 0, 0, 2], [127, 0, 0, 1], 40123, 3000));
    assert.equal(h.length, 28);
    assert.deepEqual(parseEverySplit(h), { done: true, consumed: 28, source: "127.0.0.2:40123" });
  });

  it("PROXY over TCP/IPv6, written in its shortest form", () => {
    const h = v2(1, 0x21, inet6("2001:db8::7", "2001:db8::1", 51000, 443));
    assert.equal(h.length, 52);
    assert.equal(parseEverySplit(h).source, "[2001:db8::7]:51000");
    assert.equal(parseEverySplit(v2(1, 0x21, inet6("::1", "::1", 1, 2))).source, "[::1]:1");
    assert.equal(
      parseEverySplit(v2(1, 0x21, inet6("1:0:2:0:0:3:0:4", "::", 1, 2))).source,
      "[1:0:2::3:0:4]:1",
    );
    assert.equal(
      parseEverySplit(v2(1, 0x21, inet6("1:2:3:4:5:6:7:8", "::", 1, 2))).source,
      "[1:2:3:4:5:6:7:8]:1",
    );
  });

  it("LOCAL (a health check) has no source, whatever its family", () => {
    assert.deepEqual(parseEverySplit(v2(0, 0x00, Buffer.alloc(0))), { done: true, consumed: 16 });
    const local4 = v2(0, 0x11, inet4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
    assert.deepEqual(parseEverySplit(local4), { done: true, consumed: 28 });
  });

  it("PROXY with UNSPEC or UNIX families: no host:port source", () => {
    assert.deepEqual(parseEverySplit(v2(1, 0x00, Buffer.alloc(0))), { done: true, consumed: 16 });
    assert.deepEqual(parseEverySplit(v2(1, 0x31, Buffer.alloc(216))), { done: true, consumed: 232 });
  });

  it("skips TLVs (ALPN, authority, CRC32C, unique id, SSL, NOOP padding) after the addresses", () => {
    const tlvs = Buffer.concat([
      tlv(0x01, Buffer.from("h2")),
      tlv(0x02, Buffer.from("example.com")),
      tlv(0x03, Buffer.alloc(4)),
      tlv(0x05, Buffer.from("unique-id-123")),
      tlv(0x20, Buffer.concat([Buffer.from([0x07, 0, 0, 0, 0]), tlv(0x21, Buffer.from("TLSv1.3"))])),
      tlv(0x04, Buffer.alloc(0)),
    ]);
    const h = v2(1, 0x11, Buffer.concat([inet4([192, 0, 2, 1], [192, 0, 2, 2], 1234, 80), tlvs]));
    assert.deepEqual(parseEverySplit(h), { done: true, consumed: h.length, source: "192.0.2.1:1234" });
  });

  it("the longest header (16 + 65535 bytes) is accepted", () => {
    const pad = 65535 - 12 - 3;
    const h = v2(
      1,
      0x11,
      Buffer.concat([inet4([10, 1, 2, 3], [10, 0, 0, 1], 9, 9), tlv(0x04, Buffer.alloc(pad))]),
    );
    assert.equal(h.length, MAX_PROXY_HEADER);
    assert.deepEqual(parseProxyHeader(h.subarray(0, h.length - 1)), { done: false });
    assert.equal((parseProxyHeader(h) as { source: string }).source, "10.1.2.3:9");
  });

  it("refuses a bad signature at its first wrong byte", () => {
    for (let i = 1; i < V2_SIGNATURE.length; i++) {
      const bad = Buffer.from(V2_SIGNATURE.subarray(0, i + 1));
      bad[i] ^= 0x40;
      refused(bad, /signature/);
    }
    // Blank lines share the signature's first 4 bytes: more is needed, then the next byte refuses.
    assert.deepEqual(parseProxyHeader(Buffer.from("\r\n\r\n")), { done: false });
    refused(Buffer.from("\r\n\r\nGET"), /signature/);
  });

  it("refuses other versions, commands, families and transports", () => {
    const addrs = inet4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    refused(v2(1, 0x11, addrs, 1), /version 1/);
    refused(v2(1, 0x11, addrs, 3), /version 3/);
    refused(v2(1, 0x11, addrs).subarray(0, 13).fill(0x2f, 12), /command/);
    refused(v2(2, 0x11, addrs), /command/);
    refused(v2(1, 0x41, addrs), /family/);
    refused(v2(1, 0x13, addrs), /transport/);
  });

  it("refuses a length too short for the addresses, and malformed TLVs", () => {
    refused(v2(1, 0x11, Buffer.alloc(11)), /too short/);
    refused(v2(1, 0x21, Buffer.alloc(35)), /too short/);
    refused(v2(1, 0x31, Buffer.alloc(215)), /too short/);
    const addrs = inet4([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    refused(v2(1, 0x11, Buffer.concat([addrs, Buffer.from([0x01, 0x00])])), /truncated TLV/);
    refused(v2(1, 0x11, Buffer.concat([addrs, Buffer.from([0x01, 0x00, 0x05, 0x61])])), /TLV longer/);
  });
});
