/**
 * The compatibility protocol end to end: our client speaking monopiped1 (the original Rust
 * monopiped's wire format) to our server, which detects it by itself, next to monopiped2 clients.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type net from "node:net";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import WebSocket from "ws";
import type { RunningEnd } from "../../src/harness.js";
import { monopiped1Keys } from "../../src/protocol/monopiped1.js";
import { Fleet } from "../helpers/fleet.js";
import {
  connect,
  echoHandler,
  echoRoundTrip,
  echoWithoutHalfClose,
  pseudoRandom,
  receiveAll,
  receiveExactly,
  sendAll,
  type TestServer,
} from "../helpers/net.js";
import { readExactly, v1Client } from "../helpers/v1peer.js";

const MiB = 1024 * 1024;
const fleet = new Fleet();
const key = fleet.key;
const _dir = fleet.dir;
const end = (args: string[]) => fleet.end(args);
const server = (handler: (s: net.Socket) => void) => fleet.server(handler);

after(() => fleet.cleanup());

describe("monopiped1 over TCP", () => {
  it("our monopiped1 client and our auto-detecting server carry 64 MiB each way, sha256-equal", async () => {
    const size = 64 * MiB;
    let atTarget: Promise<[Awaited<ReturnType<typeof receiveAll>>, string]> | undefined;
    const target = await server((s) => {
      atTarget = Promise.all([receiveAll(s), sendAll(s, pseudoRandom("v1-down", size))]);
    });
    const d = await end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "auto",
    ]);
    const e = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key, "--protocol", "v1"]);
    const app = await connect(e.port);
    const [got, sentHash] = await Promise.all([receiveAll(app), sendAll(app, pseudoRandom("v1-up", size))]);
    assert.ok(atTarget);
    const [targetGot, targetSent] = await atTarget;
    assert.equal(targetGot.bytes, size);
    assert.equal(targetGot.hash, sentHash);
    assert.equal(got.bytes, size);
    assert.equal(got.hash, targetSent);
    assert.equal(got.how, "end");
    const closed = await d.waitForLog((l) => l.msg === "connection closed");
    assert.equal(closed.protocol, "monopiped1");
    assert.ok(
      d.logs.some((l) => /monopiped1.*docs\/SECURITY\.md/.test(l.msg) && l.level === 40),
      "warned about monopiped1",
    );
  });

  it("one server process serves a monopiped2 and a monopiped1 client at the same time", async () => {
    const target = await server(echoHandler);
    const d = await end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "auto",
    ]);
    const e2 = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key]);
    const e1 = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key, "--protocol", "monopiped1"]);
    const payloads = Array.from({ length: 8 }, () => randomBytes(2 * MiB));
    const echoes = await Promise.all(payloads.map((p, i) => echoRoundTrip(i % 2 ? e1.port : e2.port, p)));
    for (const [i, echo] of echoes.entries()) assert.ok(echo.equals(payloads[i]), `connection ${i}`);
    const closed = await d.waitForLogs((l) => l.msg === "connection closed", 8);
    assert.equal(closed.filter((l) => l.protocol === "monopiped1").length, 4);
    assert.equal(closed.filter((l) => l.protocol === "monopiped2").length, 4);
    assert.equal(
      d.logs.filter((l) => /monopiped1.*SECURITY/.test(l.msg)).length,
      1,
      "warned once per process",
    );
  });

  describe("malformed monopiped1 input closes that connection with a clear log line; the server keeps serving", () => {
    let target: TestServer;
    let d: RunningEnd;
    let good: RunningEnd;
    before(async () => {
      target = await server(echoHandler);
      d = await end([
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        key,
        "-o",
        "2",
        "--protocol",
        "auto",
      ]);
      good = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key, "--protocol", "v1"]);
    });
    const keys = () => monopiped1Keys(readFileSync(key));

    async function session(): Promise<{
      sock: net.Socket;
      v1: ReturnType<ReturnType<typeof v1Client>["finish"]>;
    }> {
      const client = v1Client(keys());
      const sock = await connect(d.port);
      sock.write(client.hello);
      const v1 = client.finish(await readExactly(sock, 48));
      return { sock, v1 };
    }
    async function expectRefused(sock: net.Socket, logPattern: RegExp) {
      const before = d.logs.length;
      const r = await receiveAll(sock);
      assert.equal(r.bytes, 0);
      const line = await d.waitForLog(
        (l) => d.logs.indexOf(l) >= before && logPattern.test(String(l.reason)),
      );
      assert.ok(line);
      const data = randomBytes(50_000);
      assert.ok((await echoRoundTrip(good.port, data)).equals(data), "the next good client is served");
    }

    it("a frame with a bad tag", async () => {
      const { sock, v1 } = await session();
      const frame = v1.frame(Buffer.from("hello"));
      frame[100] ^= 1;
      sock.write(frame);
      await expectRefused(sock, /frame did not authenticate/);
    });

    it("a frame whose length field exceeds 1040", async () => {
      const { sock, v1 } = await session();
      sock.write(v1.frame(Buffer.from("x"), 1045));
      await expectRefused(sock, /length 1045 exceeds 1040/);
    });

    it("a truncated handshake", async () => {
      const sock = await connect(d.port);
      sock.end(v1Client(keys()).hello.subarray(0, 30));
      await expectRefused(sock, /closed the connection during the handshake/);
    });
  });
});

describe("monopiped1 over WebSocket", () => {
  it("our monopiped1 ws:// client and our auto-detecting -w server carry 64 MiB each way, sha256-equal", async () => {
    // monopiped1 over WebSocket has no half-close (the original maps end of stream to a WebSocket
    // close), so both ends send and receive everything before the client closes.
    const size = 64 * MiB;
    let atTarget: Promise<[string, string]> | undefined;
    const target = await server((s) => {
      atTarget = Promise.all([receiveExactly(s, size), sendAll(s, pseudoRandom("v1ws-down", size), false)]);
      s.once("end", () => s.end()); // close once the client has closed
    });
    const d = await end([
      "-d",
      "-w",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "auto",
    ]);
    const e = await end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      `ws://${d.address}/tunnel`,
      "-k",
      key,
      "--protocol",
      "v1",
    ]);
    const app = await connect(e.port);
    const [got, sentHash] = await Promise.all([
      receiveExactly(app, size),
      sendAll(app, pseudoRandom("v1ws-up", size), false),
    ]);
    assert.ok(atTarget);
    const [targetGot, targetSent] = await atTarget;
    assert.equal(targetGot, sentHash, "client -> target intact");
    assert.equal(got, targetSent, "target -> client intact");
    app.end();
    const closed = await d.waitForLog((l) => /connection (closed|ended)/.test(l.msg));
    assert.equal(closed.protocol, "monopiped1");
    assert.equal(closed.received, size);
    assert.equal(closed.sent, size);
  });

  describe("malformed input over WebSocket closes that connection with a clear log line", () => {
    let target: TestServer;
    let d: RunningEnd;
    let good: RunningEnd;
    before(async () => {
      target = await server(echoHandler);
      d = await end([
        "-d",
        "-w",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        key,
        "-o",
        "2",
        "--protocol",
        "auto",
      ]);
      good = await end([
        "-e",
        "-l",
        "127.0.0.1:0",
        "-t",
        `ws://${d.address}/`,
        "-k",
        key,
        "--protocol",
        "v1",
      ]);
    });

    /** A raw WebSocket speaking monopiped1 by hand: returns the socket and the session after the hellos. */
    async function wsSession() {
      const client = v1Client(monopiped1Keys(readFileSync(key)));
      const ws = new WebSocket(`ws://${d.address}/`, { perMessageDeflate: false });
      const messages: Buffer[] = [];
      const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)));
      const firstMessage = new Promise<Buffer>((resolve) => ws.once("message", (m) => resolve(m as Buffer)));
      ws.on("message", (m) => messages.push(m as Buffer));
      await new Promise((resolve, reject) => {
        ws.once("open", resolve);
        ws.once("error", reject);
      });
      ws.send(client.hello);
      const v1 = client.finish(await firstMessage);
      return { ws, v1, closed, messages };
    }
    async function expectRefused(closed: Promise<number>, logPattern: RegExp) {
      const from = d.logs.length;
      await closed;
      const line = await d.waitForLog((l) => d.logs.indexOf(l) >= from && logPattern.test(String(l.reason)));
      assert.ok(line);
      assert.ok(await echoWithoutHalfClose(good.port, randomBytes(50_000)), "the next good client is served");
    }

    it("a message one byte short of a frame", async () => {
      const { ws, v1, closed } = await wsSession();
      ws.send(v1.frame(Buffer.from("hello")).subarray(0, 1059));
      await expectRefused(closed, /WebSocket message of 1059 bytes, expected 1060/);
    });

    it("two frames in one message", async () => {
      const { ws, v1, closed } = await wsSession();
      ws.send(Buffer.concat([v1.frame(Buffer.from("a")), v1.frame(Buffer.from("b"))]));
      await expectRefused(closed, /WebSocket message of 2120 bytes, expected 1060/);
    });

    it("a frame with a bad tag", async () => {
      const { ws, v1, closed } = await wsSession();
      const frame = v1.frame(Buffer.from("hello"));
      frame[5] ^= 0x80;
      ws.send(frame);
      await expectRefused(closed, /frame did not authenticate/);
    });

    it("a handshake message of the wrong size", async () => {
      const ws = new WebSocket(`ws://${d.address}/`, { perMessageDeflate: false });
      const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)));
      await new Promise((resolve) => ws.once("open", resolve));
      ws.send(v1Client(monopiped1Keys(readFileSync(key))).hello.subarray(0, 40));
      await expectRefused(closed, /handshake/);
    });
  });
});
