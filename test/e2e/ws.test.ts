/**
 * WebSocket transport end to end, with real processes: monopiped ends (the CLI), Caddy and nginx as
 * reverse proxies, a test CA for wss://, and an HTTP CONNECT proxy. Everything on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import "../helpers/stop-all.js";
import WebSocket from "ws";
import { echoTransfer } from "../../src/demo.js";
import { CLI_PATH, type LogLine, type RunningEnd, startEnd } from "../../src/harness.js";
import { writeKeyFile } from "../../src/keyfile.js";
import { forwardedFor, noProxyMatches, proxyFor } from "../../src/transport/ws.js";
import { pausingReceive } from "../helpers/net.js";
import {
  type ConnectProxy,
  freePort,
  makeTestCa,
  type Proc,
  startCaddy,
  startConnectProxy,
  startNginx,
} from "./ws/servers.js";

const MiB = 1024 * 1024;
const WARN = 40;

/** The environment for spawned ends: this one without proxy settings (tests add their own). */
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^(https?|no|all)_proxy$/i.test(k)),
);

let dir: string;
let key: string;
let otherKey: string;
let ca: ReturnType<typeof makeTestCa>;
let echo: net.Server;
let echoPort: number;
/** The -d -w server every client reaches, directly or through Caddy / nginx / the CONNECT proxy. */
let server: RunningEnd;
/** A -d -w server with --ping-interval 0, behind nginx at /quiet. */
let quietServer: RunningEnd;
let caddy: Proc;
let nginx: Proc;
let caddyWs: number;
let caddyWss: number;
let nginxPort: number;
const ends: RunningEnd[] = [];
const proxies: ConnectProxy[] = [];
/** Sockets, servers and relays a test opened: closed in after() even when the test failed half-way. */
const cleanups: (() => void)[] = [];

async function end(args: string[], env: NodeJS.ProcessEnv = cleanEnv): Promise<RunningEnd> {
  const e = await startEnd(args, { env });
  ends.push(e);
  return e;
}

function client(
  target: string,
  extra: string[] = [],
  env?: NodeJS.ProcessEnv,
  keyFile = key,
): Promise<RunningEnd> {
  return end(["-e", "-l", "127.0.0.1:0", "-t", target, "-k", keyFile, ...extra], env);
}

async function assertEcho(port: number, bytes: number): Promise<void> {
  const r = await echoTransfer(port, bytes);
  assert.equal(r.bytes, bytes, "bytes echoed back");
  assert.equal(r.receivedHash, r.sentHash, "sha256 of the echo");
}

async function assertConcurrentEcho(port: number, connections: number, bytes: number): Promise<void> {
  const results = await Promise.all(Array.from({ length: connections }, () => echoTransfer(port, bytes)));
  for (const r of results) {
    assert.equal(r.bytes, bytes);
    assert.equal(r.receivedHash, r.sentHash);
  }
}

/** Connect to a client end and wait until it closes the connection (it could not reach its peer). */
function connectUntilClosed(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port }, () => s.write("hello"));
    cleanups.push(() => s.destroy());
    s.on("error", () => {});
    s.on("data", () => {});
    s.on("close", () => resolve());
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Poll `cond` every 50 ms, for at most `ms` (generous: CI machines can be slow). */
async function until(cond: () => boolean, ms = 20_000): Promise<void> {
  for (let waited = 0; !cond() && waited < ms; waited += 50) await sleep(50);
}

/**
 * A TCP relay to 127.0.0.1:port that can be frozen (from then on it drops everything: a dead path)
 * or stalled (it stops reading: a path where nothing moves, so the senders' queues fill up).
 */
async function startRelay(
  port: number,
): Promise<{ port: number; freeze: () => void; stall: () => void; close: () => void }> {
  let frozen = false;
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((a) => {
    const b = net.connect({ host: "127.0.0.1", port });
    for (const [from, to] of [
      [a, b],
      [b, a],
    ]) {
      sockets.add(from);
      from.on("data", (d: Buffer) => {
        if (!frozen) to.write(d);
      });
      from.on("error", () => {});
      from.on("close", () => {
        sockets.delete(from);
        if (!frozen) to.destroy();
      });
    }
  });
  await new Promise<void>((r) => relay.listen(0, "127.0.0.1", r));
  const close = () => {
    for (const s of sockets) s.destroy();
    relay.close();
  };
  cleanups.push(close);
  return {
    port: (relay.address() as net.AddressInfo).port,
    freeze: () => {
      frozen = true;
    },
    stall: () => {
      frozen = true;
      for (const s of sockets) s.pause();
    },
    close,
  };
}

/** The first log line of `e` after its first `before` lines that matches `re` (any level). */
async function lineAfter(e: RunningEnd, before: number, re: RegExp): Promise<LogLine> {
  return e.waitForLog((l) => e.logs.indexOf(l) >= before && re.test(l.msg), 15_000);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "monopiped-ws-test-"));
  key = join(dir, "key.bin");
  otherKey = join(dir, "other-key.bin");
  writeKeyFile(key, false);
  writeKeyFile(otherKey, false);
  ca = makeTestCa(dir);
  echo = net.createServer({ allowHalfOpen: true }, (s) => {
    cleanups.push(() => s.destroy());
    s.on("error", () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
  echoPort = (echo.address() as net.AddressInfo).port;
  server = await end([
    "-d",
    "-w",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${echoPort}`,
    "-k",
    key,
    "--path",
    "/tunnel",
    "--trust-proxy",
    "--ping-interval",
    "2",
  ]);
  [caddyWs, caddyWss, nginxPort] = [await freePort(), await freePort(), await freePort()];
  caddy = await startCaddy(dir, { WS_PORT: caddyWs, WSS_PORT: caddyWss, UPSTREAM_PORT: server.port });
  // A server end that never pings, for the keepalive test's control.
  quietServer = await end([
    "-d",
    "-w",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${echoPort}`,
    "-k",
    key,
    "--ping-interval",
    "0",
  ]);
  nginx = await startNginx(dir, {
    PORT: nginxPort,
    UPSTREAM_PORT: server.port,
    QUIET_UPSTREAM_PORT: quietServer.port,
    READ_TIMEOUT: "5s",
  });
});

after(async () => {
  for (const c of cleanups) c();
  await Promise.all(ends.map((e) => e.stop()));
  await Promise.all(proxies.map((p) => p.close()));
  await Promise.all([caddy?.stop(), nginx?.stop()]);
  echo?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// Two suites at a time (the tests inside each one after the other, as subtests inherit the
// setting): the keepalive tests mostly wait (15 s) while the transfers keep the CPU busy.
describe("WebSocket transport", { concurrency: 2 }, () => {
  describe("keepalive (its tests run at the same time)", { concurrency: true }, () => {
    test("an idle connection through nginx (proxy_read_timeout 5s) stays up 15 s with pings from either end", async () => {
      const pinging = await client(`ws://127.0.0.1:${nginxPort}/tunnel`, ["--ping-interval", "2"]);
      // A client that does not ping, to a server that pings every client (--ping-interval 2).
      const pinged = await client(`ws://127.0.0.1:${nginxPort}/tunnel`, ["--ping-interval", "0"]);
      // Control: without pings from either end nginx cuts the same kind of connection, which shows
      // the timeout is real.
      const silent = await client(`ws://127.0.0.1:${nginxPort}/quiet`, ["--ping-interval", "0"]);
      const open = async (port: number) => {
        const s = net.connect({ host: "127.0.0.1", port });
        cleanups.push(() => s.destroy());
        await once(s, "connect");
        let received = "";
        let closed = false;
        s.setEncoding("utf8");
        s.on("data", (d: string) => {
          received += d;
        });
        s.on("error", () => {});
        s.on("close", () => {
          closed = true;
        });
        const roundTrip = async (text: string) => {
          const start = received.length;
          s.write(text);
          await until(() => received.length >= start + text.length || closed);
          return received.slice(start);
        };
        return { roundTrip, isClosed: () => closed, socket: s };
      };
      const a = await open(pinging.port);
      const p = await open(pinged.port);
      const b = await open(silent.port);
      assert.equal(await a.roundTrip("before idle"), "before idle");
      assert.equal(await p.roundTrip("before idle"), "before idle");
      assert.equal(await b.roundTrip("before idle"), "before idle");
      await sleep(15_000);
      assert.equal(b.isClosed(), true, "without pings nginx closed the idle connection");
      assert.equal(a.isClosed(), false, "with the client's pings the idle connection is still open");
      assert.equal(p.isClosed(), false, "with the server's pings the idle connection is still open");
      assert.equal(await a.roundTrip("after 15 s idle"), "after 15 s idle");
      assert.equal(await p.roundTrip("after 15 s idle"), "after 15 s idle");
      a.socket.end();
      p.socket.end();
      assert.match(nginx.output(), /upstream timed out/);
    });

    test("a peer that stops answering is closed: no pong", async () => {
      const relay = await startRelay(server.port);
      const c = await client(`ws://127.0.0.1:${relay.port}/tunnel`, ["--ping-interval", "2"]);
      const s = net.connect({ host: "127.0.0.1", port: c.port });
      cleanups.push(() => s.destroy());
      s.on("error", () => {});
      let received = "";
      s.setEncoding("utf8");
      s.on("data", (d: string) => {
        received += d;
      });
      await once(s, "connect");
      s.write("hello");
      await until(() => received.length >= 5);
      assert.equal(received, "hello", `client log: ${JSON.stringify(c.logs)}`);
      await sleep(2500); // the client has pinged, so the server pings it too
      const serverConns = server.logs.filter((l) => l.msg === "connection opened").length;
      assert.ok(serverConns > 0);
      relay.freeze();
      const line = await c.waitForLog((l) => l.msg.startsWith("connection ended"), 20_000);
      assert.match(String(line.reason), /no pong within 2 s/);
      await server.waitForLog((l) => /no pong within [24] s/.test(String(l.reason)), 20_000);
      relay.close();
    });

    test("a busy link is checked too: a relay that stops forwarding while data is queued is noticed within two intervals", async () => {
      const relay = await startRelay(server.port);
      const c = await client(`ws://127.0.0.1:${relay.port}/tunnel`, ["--ping-interval", "2"]);
      const s = net.connect({ host: "127.0.0.1", port: c.port });
      cleanups.push(() => s.destroy());
      s.on("error", () => {});
      let received = 0;
      let closed = false;
      s.on("data", (d: Buffer) => {
        received += d.length;
      });
      s.on("close", () => {
        closed = true;
      });
      await once(s, "connect");
      // Keep data flowing at a modest rate (this process also runs the other tests' relays and
      // echo): once the relay stalls, it piles up in the client's queue towards the relay. The
      // echo is read and dropped, so the client is never paused by us.
      const chunk = Buffer.alloc(256 * 1024, 7);
      const started = Date.now();
      const writer = setInterval(() => {
        if (closed || Date.now() - started > 40_000) clearInterval(writer);
        else if (s.writableLength < MiB) s.write(chunk);
      }, 10);
      cleanups.push(() => clearInterval(writer));
      await until(() => received > MiB);
      assert.ok(
        received > MiB,
        `the echo flows before the relay stalls; client log: ${JSON.stringify(c.logs)}`,
      );
      relay.stall();
      // Two intervals for a ping sent while data was queued ahead of it, one for a ping sent when
      // the queue happened to be empty: either way, not never (as when a busy link went unchecked).
      const line = await c.waitForLog((l) => l.msg.startsWith("connection ended"), 20_000);
      assert.match(String(line.reason), /no pong within [24] s/);
      clearInterval(writer);
      s.destroy();
      relay.close();
    });

    test("the server pings every client, except where a Rust client may connect (monopiped1, auto): only clients that ping", async () => {
      const serverWith = (protocol: string) =>
        end([
          "-d",
          "-w",
          "-l",
          "127.0.0.1:0",
          "-t",
          `127.0.0.1:${echoPort}`,
          "-k",
          key,
          "--protocol",
          protocol,
          "--ping-interval",
          "1",
        ]);
      const [auto, v2] = await Promise.all([serverWith("auto"), serverWith("monopiped2")]);
      const watch = (port: number, sendPing: boolean) =>
        new Promise<number>((resolve, reject) => {
          const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
          cleanups.push(() => ws.terminate());
          let pings = 0;
          ws.on("ping", () => pings++);
          ws.on("error", () => {});
          ws.on("open", () => {
            if (sendPing) ws.ping();
          });
          // The server's handshake timeout ends the connections: by then a client it pings has seen
          // pings (every second), the others none.
          ws.on("close", () => resolve(pings));
          setTimeout(() => reject(new Error("server did not close the connection")), 15_000).unref();
        });
      const [silent, pinging, v2silent] = await Promise.all([
        watch(auto.port, false),
        watch(auto.port, true),
        watch(v2.port, false),
      ]);
      assert.equal(silent, 0, "auto: no ping to a client that never pinged");
      assert.ok(pinging >= 1, `auto: pings to a pinging client: ${pinging}`);
      assert.ok(v2silent >= 1, `monopiped2: pings to a client that never pinged: ${v2silent}`);
    });
  });

  describe("ws:// end to end (64 MiB each way, then 20 connections at once)", { concurrency: 1 }, () => {
    test("directly to the -w server", async () => {
      const c = await client(`ws://127.0.0.1:${server.port}/tunnel`);
      await assertEcho(c.port, 64 * MiB);
      await assertConcurrentEcho(c.port, 20, MiB);
    });

    test("through Caddy (reverse_proxy)", async () => {
      const c = await client(`ws://127.0.0.1:${caddyWs}/tunnel`);
      await assertEcho(c.port, 64 * MiB);
      await assertConcurrentEcho(c.port, 20, MiB);
    });

    test("through nginx (proxy_pass with Upgrade / Connection)", async () => {
      const c = await client(`ws://127.0.0.1:${nginxPort}/tunnel`, ["--ping-interval", "2"]);
      await assertEcho(c.port, 64 * MiB);
      await assertConcurrentEcho(c.port, 20, MiB);
      // --trust-proxy: the server logs the client address nginx reports, not nginx's own socket.
      const opened = server.logs.filter((l) => l.msg === "connection opened").map((l) => l.peer);
      assert.ok(opened.includes("127.0.0.1"), `X-Forwarded-For peer in ${JSON.stringify(opened.slice(-3))}`);
    });

    test("--trust-proxy through nginx: a client's own X-Forwarded-For is not taken for its address", async () => {
      // nginx appends the address it saw ($proxy_add_x_forwarded_for): "203.0.113.66, 127.0.0.1".
      const c = await client(`ws://127.0.0.1:${nginxPort}/tunnel`, ["-H", "X-Forwarded-For: 203.0.113.66"]);
      const n = server.logs.length;
      await assertEcho(c.port, 64 * 1024);
      await server.waitForLog((l) => server.logs.indexOf(l) >= n && l.msg === "connection closed");
      const peers = server.logs.filter((l) => l.peer !== undefined).map((l) => String(l.peer));
      assert.ok(!peers.some((p) => p.includes("203.0.113.66")), `peers logged: ${JSON.stringify(peers)}`);
      const opened = server.logs.slice(n).filter((l) => l.msg === "connection opened");
      assert.ok(
        opened.length > 0 && opened.every((l) => l.peer === "127.0.0.1" || /:\d+$/.test(String(l.peer))),
      );
    });

    test("applications that read slowly on both sides: 24 MiB each way arrives intact, monopiped2 and monopiped1", async () => {
      // Both directions at once, each reader pausing now and then: the WebSocket links pause
      // and resume all the time (a pause takes effect at the end of the socket read in progress).
      const BYTES = 24 * MiB;
      let seed = 0;
      const slowRead = (s: net.Socket) =>
        pausingReceive(s, ++seed).then((r) => ({ bytes: r.bytes, sha: r.hash }));
      const push = (s: net.Socket, data: Buffer) => {
        for (let i = 0; i < data.length; i += 100_000) s.write(data.subarray(i, i + 100_000));
        s.end();
      };
      const up = randomBytes(BYTES);
      const down = randomBytes(BYTES);
      const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
      const atTarget: Promise<{ bytes: number; sha: string }>[] = [];
      const target = net.createServer({ allowHalfOpen: true }, (t) => {
        cleanups.push(() => t.destroy());
        atTarget.push(slowRead(t));
        push(t, down);
      });
      cleanups.push(() => target.close());
      await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
      const targetPort = (target.address() as net.AddressInfo).port;
      const slowServer = await end([
        "-d",
        "-w",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${targetPort}`,
        "-k",
        key,
        "--protocol",
        "auto",
      ]);
      for (const protocol of ["monopiped2", "monopiped1"]) {
        const c = await client(`ws://127.0.0.1:${slowServer.port}/`, ["--protocol", protocol]);
        const s = net.connect({ host: "127.0.0.1", port: c.port, allowHalfOpen: true });
        cleanups.push(() => s.destroy());
        const atApp = slowRead(s);
        await once(s, "connect");
        push(s, up);
        const got = await atApp;
        assert.equal(got.bytes, BYTES, `${protocol}: bytes at the application`);
        assert.equal(got.sha, sha(down), `${protocol}: sha256 at the application`);
        const there = await (atTarget.at(-1) as Promise<{ bytes: number; sha: string }>);
        assert.equal(there.bytes, BYTES, `${protocol}: bytes at the target`);
        assert.equal(there.sha, sha(up), `${protocol}: sha256 at the target`);
      }
    });

    test("monopiped1 (the original protocol): an exchange, then a clean close on both ends", async () => {
      // A target that answers at once but takes a while to close after the client's end of stream:
      // the server end must wait for it (the WebSocket close from the client ends one direction only).
      const target = net.createServer({ allowHalfOpen: true }, (t) => {
        cleanups.push(() => t.destroy());
        t.on("error", () => {});
        t.on("data", (d: Buffer) => t.write(d));
        t.on("end", () => setTimeout(() => t.end(), 500));
      });
      cleanups.push(() => target.close());
      await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
      const targetPort = (target.address() as net.AddressInfo).port;
      const v1server = await end([
        "-d",
        "-w",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${targetPort}`,
        "-k",
        key,
        "--protocol",
        "auto",
      ]);
      const c = await client(`ws://127.0.0.1:${v1server.port}/`, ["--protocol", "monopiped1"]);
      const s = net.connect({ host: "127.0.0.1", port: c.port, allowHalfOpen: true });
      cleanups.push(() => s.destroy());
      let received = "";
      let error: Error | undefined;
      s.setEncoding("utf8");
      s.on("data", (d: string) => {
        received += d;
      });
      s.on("error", (err) => {
        error = err;
      });
      await once(s, "connect");
      s.write("request");
      await until(() => received.length >= 7);
      s.end();
      await once(s, "close");
      assert.equal(received, "request");
      assert.equal(error, undefined, "closed cleanly, not reset");
      const isClean = (l: LogLine) => l.msg === "connection closed" && l.protocol === "monopiped1";
      await c.waitForLog(isClean);
      const done = await v1server.waitForLog(
        (l) => l.msg === "connection closed" || l.msg.startsWith("connection ended"),
      );
      assert.ok(isClean(done), `server: ${JSON.stringify(done)}`);
    });
  });

  describe("wss:// through Caddy with a certificate from a test CA", { concurrency: 1 }, () => {
    test("works with --ca", async () => {
      const c = await client(`wss://127.0.0.1:${caddyWss}/tunnel`, ["--ca", ca.caFile]);
      await assertEcho(c.port, 8 * MiB);
      await assertConcurrentEcho(c.port, 5, MiB);
    });

    test("fails with a clear certificate error without --ca", async () => {
      const c = await client(`wss://127.0.0.1:${caddyWss}/tunnel`);
      await connectUntilClosed(c.port);
      const line = await c.waitForLog((l) => l.msg.startsWith("connection failed"));
      assert.match(
        String(line.reason),
        /^TLS certificate of wss:\/\/127\.0\.0\.1:\d+\/tunnel not trusted: .*--ca FILE/,
      );
    });

    test("works with --insecure, which logs a warning", async () => {
      const c = await client(`wss://127.0.0.1:${caddyWss}/tunnel`, ["--insecure"]);
      await assertEcho(c.port, 4 * MiB);
      const w = await c.waitForLog((l) => l.level === WARN && l.msg.includes("--insecure"));
      assert.match(w.msg, /NOT verified/);
    });

    test("--sni picks the certificate's name (a wrong one fails the name check)", async () => {
      const good = await client(`wss://127.0.0.1:${caddyWss}/tunnel`, [
        "--ca",
        ca.caFile,
        "--sni",
        "localhost",
      ]);
      await assertEcho(good.port, MiB);
      const bad = await client(`wss://127.0.0.1:${caddyWss}/tunnel`, [
        "--ca",
        ca.caFile,
        "--sni",
        "other.example",
      ]);
      await connectUntilClosed(bad.port);
      const line = await bad.waitForLog((l) => l.msg.startsWith("connection failed"));
      assert.match(
        String(line.reason),
        /^TLS handshake with wss:\/\/127\.0\.0\.1:\d+\/tunnel failed: .*certificate for other\.example\? see --sni/,
      );
    });
  });

  describe("client errors name the URL and the cause", { concurrency: 1 }, () => {
    test("a non-101 answer names the HTTP status", async () => {
      const c = await client(`ws://127.0.0.1:${server.port}/wrong-path`);
      await connectUntilClosed(c.port);
      const line = await c.waitForLog((l) => l.msg.startsWith("connection failed"));
      assert.match(
        String(line.reason),
        /^ws:\/\/127\.0\.0\.1:\d+\/wrong-path answered HTTP 404 Not Found instead of switching to WebSocket/,
      );
    });

    test("a server that never answers the upgrade: timeout (-o)", async () => {
      const mute = net.createServer((s) => {
        s.on("error", () => {});
        cleanups.push(() => s.destroy());
      });
      await new Promise<void>((r) => mute.listen(0, "127.0.0.1", r));
      const port = (mute.address() as net.AddressInfo).port;
      try {
        const c = await client(`ws://127.0.0.1:${port}/x`, ["-o", "1"]);
        await connectUntilClosed(c.port);
        const line = await c.waitForLog((l) => l.msg.startsWith("connection failed"));
        assert.match(
          String(line.reason),
          /^timeout after 1 s connecting to ws:\/\/127\.0\.0\.1:\d+\/x \(waiting for the answer/,
        );
      } finally {
        mute.close();
      }
    });

    test("nothing listening: connection refused", async () => {
      const port = await freePort();
      const c = await client(`ws://127.0.0.1:${port}/x`);
      await connectUntilClosed(c.port);
      const line = await c.waitForLog((l) => l.msg.startsWith("connection failed"));
      assert.match(String(line.reason), /ws:\/\/127\.0\.0\.1:\d+\/x refused the connection/);
    });
  });

  describe("HTTP CONNECT proxy", { concurrency: 1 }, () => {
    test("--proxy without credentials", async () => {
      const proxy = await startConnectProxy();
      proxies.push(proxy);
      const c = await client(`ws://127.0.0.1:${server.port}/tunnel`, [
        "--proxy",
        `http://127.0.0.1:${proxy.port}`,
      ]);
      await assertEcho(c.port, 8 * MiB);
      assert.ok(proxy.requests.length >= 1);
      assert.equal(proxy.requests[0].target, `127.0.0.1:${server.port}`);
      assert.equal(proxy.requests[0].auth, undefined);
    });

    test("--proxy with user:pass sends Proxy-Authorization (and without it the proxy's 407 is reported)", async () => {
      const expected = `Basic ${Buffer.from("tunnel user:p@ss:word").toString("base64")}`;
      const proxy = await startConnectProxy(expected);
      proxies.push(proxy);
      const c = await client(`ws://127.0.0.1:${server.port}/tunnel`, [
        "--proxy",
        `http://tunnel%20user:p%40ss%3Aword@127.0.0.1:${proxy.port}`,
      ]);
      await assertEcho(c.port, 4 * MiB);
      assert.equal(proxy.requests[0].auth, expected);

      const noCreds = await client(`ws://127.0.0.1:${server.port}/tunnel`, [
        "--proxy",
        `http://127.0.0.1:${proxy.port}`,
      ]);
      await connectUntilClosed(noCreds.port);
      const line = await noCreds.waitForLog((l) => l.msg.startsWith("connection failed"));
      assert.match(String(line.reason), /proxy http:\/\/127\.0\.0\.1:\d+ refused CONNECT .*HTTP 407/);
    });

    test("wss:// through the proxy (TLS inside the CONNECT tunnel)", async () => {
      const proxy = await startConnectProxy();
      proxies.push(proxy);
      const c = await client(`wss://127.0.0.1:${caddyWss}/tunnel`, [
        "--ca",
        ca.caFile,
        "--proxy",
        `http://127.0.0.1:${proxy.port}`,
      ]);
      await assertEcho(c.port, 4 * MiB);
      assert.equal(proxy.requests[0].target, `127.0.0.1:${caddyWss}`);
    });

    test("HTTP_PROXY from the environment, and NO_PROXY", async () => {
      const proxy = await startConnectProxy();
      proxies.push(proxy);
      const viaEnv = await client(`ws://127.0.0.1:${server.port}/tunnel`, [], {
        ...cleanEnv,
        HTTP_PROXY: `127.0.0.1:${proxy.port}`,
      });
      await assertEcho(viaEnv.port, MiB);
      assert.equal(proxy.requests.length, 1);
      const bypass = await client(`ws://127.0.0.1:${server.port}/tunnel`, [], {
        ...cleanEnv,
        http_proxy: `http://127.0.0.1:${proxy.port}`,
        no_proxy: "example.com,127.0.0.0/8",
      });
      await assertEcho(bypass.port, MiB);
      assert.equal(proxy.requests.length, 1, "NO_PROXY bypassed the proxy");
    });

    test("proxy selection rules", () => {
      const ws = new URL("ws://tunnel.example.com/x");
      const wss = new URL("wss://tunnel.example.com/x");
      const env = { HTTP_PROXY: "http://p:3128", HTTPS_PROXY: "http://s:3128" };
      assert.equal(proxyFor(ws, undefined, env)?.host, "p:3128");
      assert.equal(proxyFor(wss, undefined, env)?.host, "s:3128");
      assert.equal(proxyFor(wss, "http://explicit:8080", { ...env, NO_PROXY: "*" })?.host, "explicit:8080");
      assert.equal(proxyFor(wss, undefined, { ...env, NO_PROXY: "*" }), undefined);
      assert.equal(proxyFor(ws, undefined, {}), undefined);
      assert.equal(noProxyMatches("tunnel.example.com", 443, "example.com"), true);
      assert.equal(noProxyMatches("tunnel.example.com", 443, ".example.com"), true);
      assert.equal(noProxyMatches("tunnel.example.com", 443, "*.example.com"), true);
      assert.equal(noProxyMatches("notexample.com", 443, "example.com"), false);
      assert.equal(noProxyMatches("tunnel.example.com", 443, "tunnel.example.com:80"), false);
      assert.equal(noProxyMatches("tunnel.example.com", 80, "tunnel.example.com:80"), true);
      assert.equal(noProxyMatches("10.1.2.3", 80, "localhost, 10.0.0.0/8"), true);
      assert.equal(noProxyMatches("[::1]", 80, "::1"), true);
      assert.equal(noProxyMatches("192.168.1.1", 80, "10.0.0.0/8"), false);
    });
  });

  describe("bad input to the -w listener: each refused and counted (not one warning each), then good clients still work", {
    concurrency: 1,
  }, () => {
    let b: RunningEnd;
    let good: RunningEnd;

    before(async () => {
      b = await end([
        "-d",
        "-w",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${echoPort}`,
        "-k",
        key,
        "--path",
        "/tunnel",
        "--trust-proxy",
        "--log-level",
        "debug",
      ]);
      good = await client(`ws://127.0.0.1:${b.port}/tunnel`);
    });

    const get = (path: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.get({ host: "127.0.0.1", port: b.port, path, headers, agent: false }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => {
            body += d;
          });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on("error", reject);
      });

    /** Write raw bytes, collect the answer until the server closes. */
    const raw = (bytes: string | Buffer) =>
      new Promise<string>((resolve) => {
        const s = net.connect({ host: "127.0.0.1", port: b.port }, () => s.write(bytes));
        cleanups.push(() => s.destroy());
        let out = "";
        s.setEncoding("latin1");
        s.on("data", (d: string) => {
          out += d;
        });
        s.on("error", () => {});
        s.on("close", () => resolve(out));
      });

    /** Open a WebSocket to the listener, send one message, return the close code the server chose. */
    const sendAndGetClose = async (data: string | Buffer) => {
      const ws = new WebSocket(`ws://127.0.0.1:${b.port}/tunnel`, { perMessageDeflate: false });
      cleanups.push(() => ws.terminate());
      ws.on("error", () => {});
      await once(ws, "open");
      ws.send(data);
      const [code] = (await once(ws, "close")) as [number, Buffer];
      return code;
    };

    test("a plain HTTP GET gets 426 (the log names the client our proxy appended to X-Forwarded-For)", async () => {
      const n = b.logs.length;
      const r = await get("/tunnel", { "X-Forwarded-For": "203.0.113.7, 10.0.0.1" });
      assert.equal(r.status, 426);
      assert.match(r.body, /WebSocket/);
      const l = await lineAfter(b, n, /^refused GET \/tunnel/);
      // The right-most entry: the one the proxy in front appended. Those left of it came with the
      // request, and a client can write anything there.
      assert.equal(l.peer, "10.0.0.1");
      assert.match(l.msg, /426/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("GET /healthz answers 200 and logs nothing (health checks of the proxy in front)", async () => {
      const n = b.logs.length;
      for (let i = 0; i < 5; i++) {
        const r = await get("/healthz");
        assert.equal(r.status, 200);
        assert.equal(r.body, "ok\n");
      }
      await sleep(300);
      // The end line of the previous test's served connection may land in this window; a health
      // check is never a served connection, so only such lines may appear.
      const about = b.logs.slice(n).filter((l) => l.msg !== "connection closed");
      assert.deepEqual(about, [], "not a line, not even at debug level");
    });

    test("a wrong path gets 404 (with --path)", async () => {
      const n = b.logs.length;
      const ws = new WebSocket(`ws://127.0.0.1:${b.port}/elsewhere`);
      cleanups.push(() => ws.terminate());
      ws.on("error", () => {});
      const [, res] = (await once(ws, "unexpected-response")) as [http.ClientRequest, http.IncomingMessage];
      assert.equal(res.statusCode, 404);
      ws.terminate();
      const l = await lineAfter(b, n, /\/elsewhere/);
      assert.match(l.msg, /404/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("a text message is closed with 1002 (protocol error)", async () => {
      const n = b.logs.length;
      assert.equal(await sendAndGetClose("hello"), 1002);
      const l = await lineAfter(b, n, /text message/);
      assert.match(l.msg, /127\.0\.0\.1:\d+/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("a 10 MiB message is closed with 1009", async () => {
      const n = b.logs.length;
      assert.equal(await sendAndGetClose(Buffer.alloc(10 * MiB)), 1009);
      await lineAfter(b, n, /limit.*1009/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("garbage instead of HTTP gets 400", async () => {
      const n = b.logs.length;
      const answer = await raw(Buffer.from("\x16\x03\x01\x02\x00garbage\r\n\r\n", "latin1"));
      assert.match(answer, /^HTTP\/1\.1 400 /);
      await lineAfter(b, n, /malformed HTTP/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("an upgrade request with an invalid Sec-WebSocket-Key gets 400", async () => {
      const n = b.logs.length;
      const answer = await raw(
        "GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-a-key\r\n\r\n",
      );
      assert.match(answer, /^HTTP\/1\.1 400 /);
      await lineAfter(b, n, /Sec-WebSocket-Key/);
      await assertEcho(good.port, 256 * 1024);
    });

    test("a client with the wrong key file: the tunnel handshake fails and the server says so", async () => {
      const n = b.logs.length;
      const wrong = await client(`ws://127.0.0.1:${b.port}/tunnel`, [], undefined, otherKey);
      await connectUntilClosed(wrong.port);
      await lineAfter(b, n, /handshake failed/);
      await assertEcho(good.port, MiB);
      await assertConcurrentEcho(good.port, 5, 256 * 1024);
    });
  });

  test("--trust-proxy reads the entry the proxy in front appended: the right-most", () => {
    assert.equal(forwardedFor({ "x-forwarded-for": "203.0.113.66, 192.0.2.1" }), "192.0.2.1");
    assert.equal(forwardedFor({ "x-forwarded-for": "192.0.2.1" }), "192.0.2.1");
    assert.equal(forwardedFor({ "x-forwarded-for": "203.0.113.66,  192.0.2.1 , " }), "192.0.2.1");
    assert.equal(
      forwardedFor({ forwarded: 'for=203.0.113.66, for="[2001:db8::1]:4711";proto=https' }),
      "[2001:db8::1]:4711",
    );
    assert.equal(forwardedFor({ forwarded: "for=203.0.113.66;by=x, proto=http;for=192.0.2.7" }), "192.0.2.7");
    assert.equal(forwardedFor({ "x-forwarded-for": "<script>, 192.0.2.9" }), "192.0.2.9");
    assert.equal(forwardedFor({}), undefined);
  });

  test("-d with a ws:// target is a usage error (exit 2)", async () => {
    const child = spawn(
      process.execPath,
      [CLI_PATH, "-d", "-l", "127.0.0.1:0", "-t", "ws://127.0.0.1:1/x", "-k", key],
      {
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    let stderr = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d: string) => {
      stderr += d;
    });
    const [code] = (await once(child, "exit")) as [number | null];
    assert.equal(code, 2);
    assert.match(stderr, /ws:\/\/ or wss:\/\/ target needs -e/);
  });
});
