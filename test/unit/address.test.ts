import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AddressError, formatHostPort, parseAddress } from "../../src/address.js";

describe("addresses", () => {
  it("parses host:port, [ipv6]:port, name:port and /unix/paths", () => {
    assert.deepEqual(parseAddress("127.0.0.1:22"), {
      kind: "tcp",
      host: "127.0.0.1",
      port: 22,
      text: "127.0.0.1:22",
    });
    assert.deepEqual(parseAddress("[::1]:2222"), {
      kind: "tcp",
      host: "::1",
      port: 2222,
      text: "[::1]:2222",
    });
    assert.deepEqual(parseAddress("[127.0.0.1]:80"), {
      kind: "tcp",
      host: "127.0.0.1",
      port: 80,
      text: "[127.0.0.1]:80",
    });
    assert.deepEqual(parseAddress("server.example.com:443"), {
      kind: "tcp",
      host: "server.example.com",
      port: 443,
      text: "server.example.com:443",
    });
    assert.deepEqual(parseAddress("/run/sshd.sock"), {
      kind: "unix",
      path: "/run/sshd.sock",
      text: "/run/sshd.sock",
    });
  });

  it("takes ws:// and wss:// URLs only where allowed", () => {
    const a = parseAddress("wss://tunnel.example.com/ssh", { allowUrl: true });
    assert.equal(a.kind, "ws");
    assert.ok(a.kind === "ws" && a.secure && a.url.pathname === "/ssh");
    const b = parseAddress("WS://127.0.0.1:8080/", { allowUrl: true });
    assert.ok(b.kind === "ws" && !b.secure);
    assert.throws(() => parseAddress("ws://x/y"), /not allowed here/);
    assert.throws(() => parseAddress("http://x/y", { allowUrl: true }), /unsupported URL scheme/);
  });

  it("refuses what it cannot connect to, saying why", () => {
    const cases: [string, RegExp][] = [
      ["", /empty/],
      ["localhost", /missing port/],
      [":22", /missing host/],
      ["::1:22", /brackets/],
      ["host:http", /not a number/],
      ["host:70000", /out of range/],
      ["host:0", /out of range/],
      ["[not-an-ip]:22", /not an IP address/],
      // an unclosed bracket says so (it used to suggest "[[:]:1")
      ["[::1", /missing "\]"/],
      ["[::1]", /missing port after "\]"/],
      ["[::1]:", /missing port after "\]"/],
      ["[::1]80", /unexpected "80" after "\]"/],
      ["[]:80", /nothing between/],
      ["::1]:80", /"\]" without a "\["/],
    ];
    for (const [text, why] of cases) {
      assert.throws(
        () => parseAddress(text),
        (e: unknown) => e instanceof AddressError && why.test(e.message) && !e.message.includes("[["),
        text,
      );
    }
    assert.equal(parseAddress("127.0.0.1:0", { allowPortZero: true }).kind, "tcp");
  });

  it("formats IPv6 hosts in brackets", () => {
    assert.equal(formatHostPort("::1", 80), "[::1]:80");
    assert.equal(formatHostPort("10.1.2.3", 80), "10.1.2.3:80");
  });
});
