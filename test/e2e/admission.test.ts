/**
 * Admission at the server end: strangers (connections that have not proved the key) never hold -n
 * slots; they are capped apart (--max-pending, the oldest dropped), must speak within
 * --hello-timeout, and their failures are summed up in the log rather than logged one by one.
 * Served connections above -n wait at most --queue-timeout. And the default server does not serve
 * a replayed monopiped1 hello.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { monopiped1Keys } from "../../src/protocol/monopiped1.js";
import { Fleet } from "../helpers/fleet.js";
import { connect, echoHandler, echoRoundTrip, receiveAll } from "../helpers/net.js";
import { v1Client } from "../helpers/v1peer.js";

const fleet = new Fleet();
after(() => fleet.cleanup());
const held: net.Socket[] = [];
after(() => {
  for (const s of held) s.destroy();
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Open `n` connections to `port`; each sends `hello` bytes (maybe none) and then stays silent. */
async function strangers(port: number, n: number, hello: Buffer): Promise<net.Socket[]> {
  const out: net.Socket[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, () =>
        connect(port).then(
          (s) => {
            s.on("error", () => {});
            if (hello.length > 0) s.write(hello);
            return s;
          },
          () => null,
        ),
      ),
    );
    for (const s of batch) if (s) out.push(s);
  }
  held.push(...out);
  return out;
}

const dArgs = (targetPort: number, extra: string[] = []) => [
  "-d",
  "-l",
  "127.0.0.1:0",
  "-t",
  `127.0.0.1:${targetPort}`,
  "-k",
  fleet.key,
  ...extra,
];

describe("admission at the server end", { concurrency: 1 }, () => {
  it("with the defaults, 2,000 idle or half-handshake connections do not keep a good client from being served within 1 s", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(dArgs(target.port));
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    for (let round = 0; round < 3; round++) {
      // Half of them silent, half with the first 20 bytes of a 48-byte first message.
      const silent = await strangers(d.port, 1000, Buffer.alloc(0));
      const half = await strangers(d.port, 1000, randomBytes(20));
      const data = randomBytes(10_000);
      const t0 = Date.now();
      const echo = await echoRoundTrip(e.port, data);
      const took = Date.now() - t0;
      assert.ok(echo.equals(data), `round ${round}: echo`);
      assert.ok(took < 1000, `round ${round}: served in ${took} ms`);
      for (const s of [...silent, ...half]) s.destroy();
    }
    assert.equal(target.accepted, 3, "only the good client reached the target");
    // The strangers' failures are summed up, not logged one by one.
    await sleep(500);
    const perStranger = d.logs.filter((l) => l.level >= 30 && /^connection failed/.test(l.msg)).length;
    assert.ok(perStranger < 30, `${perStranger} lines about single strangers (of 6,000)`);
    assert.equal(d.child.exitCode, null);
  });

  it("--max-pending: when the cap is full, the oldest pending connection is dropped for the new one", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(
      dArgs(target.port, ["--max-pending", "2", "--hello-timeout", "30", "-o", "30"]),
    );
    const [first] = await strangers(d.port, 1, Buffer.alloc(0));
    const firstEnd = receiveAll(first);
    await sleep(200);
    await strangers(d.port, 2, Buffer.alloc(0));
    const r = await firstEnd;
    assert.equal(r.bytes, 0);
    await d.waitForLog((l) => /--max-pending/.test(l.msg));
    // A good client is still served.
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    const data = randomBytes(1000);
    assert.ok((await echoRoundTrip(e.port, data)).equals(data));
  });

  it("--hello-timeout: a connection that sends nothing is closed after it, not after -o", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(dArgs(target.port, ["--hello-timeout", "1", "-o", "20"]));
    const [s] = await strangers(d.port, 1, Buffer.alloc(0));
    const t0 = Date.now();
    const r = await receiveAll(s);
    assert.equal(r.bytes, 0);
    assert.equal(r.how, "end", "a plain close (FIN) for a stranger");
    assert.ok(Date.now() - t0 < 10_000, "closed long before -o");
    const line = await d.waitForLog((l) => /^connection failed/.test(l.msg));
    assert.match(String(line.reason), /no first handshake message within 1 s \(--hello-timeout\)/);
  });

  it("--queue-timeout: an authenticated connection above -n waits, then is refused with the reason", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(dArgs(target.port, ["-n", "1", "--queue-timeout", "1"]));
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    const first = await connect(e.port);
    held.push(first);
    first.write("x");
    await new Promise((r) => first.once("data", r));
    const second = await connect(e.port);
    held.push(second);
    second.write("y");
    const r = await receiveAll(second);
    assert.equal(r.bytes, 0);
    assert.notEqual(r.how, "end", "the application sees a reset");
    const line = await e.waitForLog((l) => /peer aborted/.test(String(l.reason)));
    assert.match(String(line.reason), /server busy: no connection slot free within 1 s/);
    assert.equal(target.accepted, 1, "the second never reached the target");
    // Once the first closes, the slot is free again.
    first.destroy();
    await sleep(300);
    const data = randomBytes(1000);
    assert.ok((await echoRoundTrip(e.port, data)).equals(data));
  });
});

describe("a replayed monopiped1 hello", { concurrency: 1 }, () => {
  const replay = async (port: number): Promise<void> => {
    const hello = v1Client(monopiped1Keys(readFileSync(fleet.key))).hello;
    for (let i = 0; i < 3; i++) {
      const s = await connect(port);
      held.push(s);
      s.on("error", () => {});
      s.write(hello);
      await sleep(300);
      s.destroy();
    }
  };

  it("never reaches the target of a default -d server", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(dArgs(target.port));
    await replay(d.port);
    await sleep(500);
    assert.equal(target.accepted, 0);
    assert.ok(!d.logs.some((l) => /replayed monopiped1 handshake reaches the target/.test(l.msg)));
  });

  it("with --protocol auto it is served, and the start-up warning said so", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(dArgs(target.port, ["--protocol", "auto"]));
    assert.ok(
      d.logs.some((l) => l.level === 40 && /replayed monopiped1 handshake reaches the target/.test(l.msg)),
      "start-up warning",
    );
    await replay(d.port);
    await sleep(500);
    assert.ok(target.accepted >= 1, `target accepts: ${target.accepted}`);
  });
});
