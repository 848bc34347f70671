/**
 * End to end over TCP: the built CLI as two real processes (client end -e, server end -d) and
 * real loopback target servers run by the test.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import type net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { Fleet } from "../helpers/fleet.js";
import {
  connect,
  cuttingRelay,
  echoHandler,
  echoRoundTrip,
  keyFile,
  pausingReceive,
  pseudoRandom,
  type Received,
  receiveAll,
  sendAll,
} from "../helpers/net.js";

const MiB = 1024 * 1024;
const fleet = new Fleet();
const key = fleet.key;
const dir = fleet.dir;
const end = (args: string[]) => fleet.end(args);
const server = (handler: (s: net.Socket) => void, host?: string) => fleet.server(handler, host);
/** A server end in front of `targetPort` and a client end in front of it. */
async function pair(targetPort: number, extra: { client?: string[]; server?: string[] } = {}) {
  const d = await end([
    "-d",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${targetPort}`,
    "-k",
    key,
    ...(extra.server ?? []),
  ]);
  const e = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key, ...(extra.client ?? [])]);
  return { d, e };
}

after(() => fleet.cleanup());

describe("TCP tunnel, end to end", () => {
  it("carries 256 MiB each way at the same time through one connection, sha256-equal", async () => {
    const size = 256 * MiB;
    let targetGot: Promise<{ received: Awaited<ReturnType<typeof receiveAll>>; sent: string }> | undefined;
    const target = await server((s) => {
      targetGot = (async () => {
        const [received, sent] = await Promise.all([receiveAll(s), sendAll(s, pseudoRandom("down", size))]);
        return { received, sent };
      })();
    });
    const { e } = await pair(target.port);
    const app = await connect(e.port);
    const [appReceived, appSent] = await Promise.all([
      receiveAll(app),
      sendAll(app, pseudoRandom("up", size)),
    ]);
    assert.ok(targetGot, "target saw the connection");
    const t = await targetGot;
    assert.equal(t.received.bytes, size);
    assert.equal(t.received.hash, appSent, "client -> target data intact");
    assert.equal(t.received.how, "end");
    assert.equal(appReceived.bytes, size);
    assert.equal(appReceived.hash, t.sent, "target -> client data intact");
    assert.equal(appReceived.how, "end");
    const closed = await e.waitForLog((l) => l.msg === "connection closed");
    assert.equal(closed.sent, size);
    assert.equal(closed.received, size);
    assert.equal(closed.protocol, "monopiped2");
  });

  it("keeps every byte intact when readers stall at random on both sides of several busy connections", async () => {
    // The ends reuse the memory of records whose writes completed at once and must never reuse
    // what a socket still holds queued: readers that stop and start make both happen, on
    // several connections sharing one process.
    const size = 24 * MiB;
    const conns = 4;
    const targetSide: Promise<{ received: Received; sent: string }>[] = [];
    let n = 0;
    const target = await server((s) => {
      const i = n++;
      targetSide.push(
        Promise.all([pausingReceive(s, i * 7 + 1), sendAll(s, pseudoRandom(`down${i}`, size, 200_000))]).then(
          ([received, sent]) => ({ received, sent }),
        ),
      );
    });
    const { e } = await pair(target.port);
    const apps = await Promise.all(Array.from({ length: conns }, () => connect(e.port)));
    const appSide = await Promise.all(
      apps.map((app, i) =>
        Promise.all([pausingReceive(app, i * 13 + 5), sendAll(app, pseudoRandom(`up${i}`, size, 300_000))]),
      ),
    );
    assert.equal(targetSide.length, conns);
    const targets = await Promise.all(targetSide);
    // Pair each target connection with its application by the upload's hash (accept order may differ).
    for (const [received, sent] of appSide) {
      const t = targets.find((x) => x.received.hash === sent);
      assert.ok(t, "an upload arrived intact at the target");
      assert.equal(t.received.bytes, size);
      assert.equal(received.bytes, size);
      assert.equal(received.hash, t.sent, "the download arrived intact at the application");
      assert.equal(received.how, "end");
    }
  });

  it("serves 50 concurrent connections each echoing 1 MiB", async () => {
    const target = await server(echoHandler);
    const { e } = await pair(target.port);
    const payloads = Array.from({ length: 50 }, () => randomBytes(MiB));
    const echoes = await Promise.all(payloads.map((p) => echoRoundTrip(e.port, p)));
    echoes.forEach((echo, i) => {
      assert.equal(echo.length, MiB, `connection ${i} length`);
      assert.ok(echo.equals(payloads[i]), `connection ${i} content`);
    });
    assert.equal(target.accepted, 50);
  });

  it("carries a half-close: the client shuts its write side and still gets the full reply", async () => {
    const reply = randomBytes(3 * MiB);
    const target = await server((s) => {
      const got: Buffer[] = [];
      s.on("data", (d: Buffer) => got.push(d));
      // The target answers only once it has seen the client's FIN.
      s.on("end", () => s.end(Buffer.concat([Buffer.from(`${Buffer.concat(got).length}\n`), reply])));
    });
    const { e } = await pair(target.port);
    const app = await connect(e.port);
    const result = receiveAll(app);
    app.end(Buffer.alloc(12345, 7));
    const r = await result;
    assert.equal(r.how, "end");
    const expected = Buffer.concat([Buffer.from("12345\n"), reply]);
    assert.equal(r.bytes, expected.length);
    assert.equal(r.hash, createHash("sha256").update(expected).digest("hex"));
  });

  it("drops a client with the wrong key during the handshake, never dials the target, and keeps serving", async () => {
    const target = await server(echoHandler);
    const { d, e } = await pair(target.port);
    const wrongKey = keyFile(dir, "wrong.bin");
    const bad = await end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", wrongKey]);

    for (let round = 0; round < 2; round++) {
      const app = await connect(bad.port);
      app.write("hello");
      const r = await receiveAll(app);
      assert.equal(r.bytes, 0, "nothing comes back through a wrong key");
      assert.notEqual(r.how, "end", "the application sees a reset, not a clean end");
    }
    const serverLog = await d.waitForLog((l) => /handshake failed/.test(l.msg));
    assert.match(String(serverLog.reason), /wrong key or not a monopiped peer/);
    const clientLog = await bad.waitForLog((l) => /handshake failed/.test(l.msg));
    assert.match(String(clientLog.reason), /closed the connection during the handshake \(wrong key/);
    assert.equal(target.accepted, 0, "the server never connected to its target for a wrong key");

    // Both processes still serve: the good client through the same server, and the wrong-key
    // client end still answers (and fails cleanly) on its listener.
    const data = randomBytes(100_000);
    assert.ok((await echoRoundTrip(e.port, data)).equals(data));
    assert.equal(target.accepted, 1);
    const again = await connect(bad.port);
    assert.notEqual((await receiveAll(again)).how, "end");
    assert.equal(bad.child.exitCode, null);
    assert.equal(d.child.exitCode, null);
  });

  it("closes the client's connection when the target is down, and the log names the refused target", async () => {
    const down = await server(() => {});
    const downPort = down.port;
    await down.close();
    const { d, e } = await pair(downPort);
    const app = await connect(e.port);
    const r = await receiveAll(app);
    assert.equal(r.bytes, 0);
    assert.notEqual(r.how, "end", "the application sees a reset");
    const serverLog = await d.waitForLog((l) => /connection failed/.test(l.msg));
    assert.match(
      String(serverLog.reason),
      new RegExp(`target 127\\.0\\.0\\.1:${downPort} refused the connection`),
    );
    const clientLog = await e.waitForLog((l) => /peer aborted/.test(String(l.reason)));
    assert.match(String(clientLog.reason), new RegExp(`127\\.0\\.0\\.1:${downPort} refused the connection`));
  });

  it("drops a client that connects and sends nothing after -o seconds", async () => {
    const target = await server(echoHandler);
    const { d } = await pair(target.port, { server: ["-o", "1"] });
    const silent = await connect(d.port);
    const r = await receiveAll(silent);
    assert.equal(r.bytes, 0, "the server says nothing to an unauthenticated client");
    const log = await d.waitForLog((l) => /handshake timeout after 1 s/.test(String(l.reason)));
    assert.ok(log);
    assert.equal(target.accepted, 0);
  });

  it("-n: with n connections open the next one waits, and is served when one closes", async () => {
    const target = await server(echoHandler);
    const { e } = await pair(target.port, { client: ["-n", "2"] });
    const first = await connect(e.port);
    const second = await connect(e.port);
    for (const s of [first, second]) {
      s.write("x");
      await new Promise((r) => s.once("data", r));
    }
    assert.equal(target.accepted, 2);
    const third = await connect(e.port);
    const thirdEcho = new Promise<Buffer>((resolve) => third.once("data", resolve));
    third.write("third");
    await e.waitForLog((l) => /connection limit \(2\) reached/.test(l.msg));
    assert.equal(target.accepted, 2, "the third connection is not served while two are open");
    first.end();
    const echo = await thirdEcho;
    assert.equal(echo.toString(), "third");
    assert.equal(target.accepted, 3);
    second.destroy();
    third.destroy();
  });

  it("reports truncation and resets the plain side when the encrypted leg is cut mid-stream", async () => {
    // The target sends 1 MiB and then stays silent with the connection open; once the application
    // has all of it, the relay cuts the encrypted leg with a FIN (no end-of-stream record).
    const target = await server((s) => {
      sendAll(s, pseudoRandom("cut", MiB), false).catch(() => {});
    });
    const d = await end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "-k", key]);
    const relay = await cuttingRelay(d.port);
    fleet.adopt(relay);
    const e = await end(["-e", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${relay.port}`, "-k", key]);
    const app = await connect(e.port);
    let got = 0;
    const allThere = new Promise<void>((resolve) =>
      app.on("data", (chunk: Buffer) => {
        got += chunk.length;
        if (got === MiB) resolve();
      }),
    );
    const result = receiveAll(app);
    await allThere;
    relay.cut();
    const r = await result;
    assert.equal(r.bytes, MiB);
    assert.equal(r.how, "ECONNRESET", "the application sees a reset, not a clean end");
    const log = await e.waitForLog((l) => /connection ended/.test(l.msg));
    assert.match(String(log.reason), /truncated/);
  });

  it("reports truncation when the encrypted leg is cut inside a record", async () => {
    const target = await server((s) => {
      sendAll(s, pseudoRandom("cut2", 8 * MiB)).catch(() => {});
    });
    const d = await end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "-k", key]);
    const relay = await cuttingRelay(d.port, 2 * MiB + 7);
    fleet.adopt(relay);
    const e = await end(["-e", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${relay.port}`, "-k", key]);
    const app = await connect(e.port);
    const r = await receiveAll(app);
    assert.ok(r.bytes < 2 * MiB, "no more than what passed the relay, and no partial record");
    const log = await e.waitForLog((l) => /connection ended/.test(l.msg));
    assert.match(String(log.reason), /truncated/);
  });

  it("works over IPv6 loopback and Unix sockets", async () => {
    const target = await server(echoHandler, "::1");
    const sock = `${dir}/server.sock`;
    const d = await end(["-d", "-l", sock, "-t", `[::1]:${target.port}`, "-k", key]);
    assert.equal(d.address, sock);
    const e = await end(["-e", "-l", "[::1]:0", "-t", sock, "-k", key]);
    const data = randomBytes(200_000);
    assert.ok((await echoRoundTrip(e.port, data, "::1")).equals(data));
  });
});
