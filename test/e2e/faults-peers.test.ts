/**
 * Fault injection at the ends: an end SIGKILLed mid-stream; a target that resets, that never reads
 * (1 GiB pushed at it: RSS stays bounded), that accepts and hangs; a server end out of file
 * descriptors (EMFILE, prlimit). Each fault must end within its configured bound with one clear log
 * line per end. Whether an application saw a reset or a clean end is judged by app.py (not built on
 * libuv).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { rssKiB, sleep } from "../../bench/procs.js";
import type { FaultRelay } from "../helpers/faultrelay.js";
import {
  fdCount,
  HELLO,
  IDLE_S,
  KiB,
  MiB,
  oneLine,
  rig as rigIn,
  SLACK_MS,
  STALL_S,
  TIMEOUT_S,
  warnings,
} from "../helpers/faultrig.js";
import { Fleet } from "../helpers/fleet.js";
import { connect, echoHandler } from "../helpers/net.js";
import { type AppReport, appConnect, appServe } from "../helpers/pyapp.js";

const fleet = new Fleet();
const relays: FaultRelay[] = [];
after(async () => {
  await Promise.all(relays.map((r) => r.close()));
  await fleet.cleanup();
});
const rig = (...args: Parameters<typeof rigIn> extends [unknown, unknown, ...infer R] ? R : never) =>
  rigIn(fleet, relays, ...args);

/** A target that accepts and then neither reads nor writes. */
async function deafTarget() {
  return fleet.server((s) => s.pause());
}

describe("a peer killed, a target that misbehaves", () => {
  it("the server end SIGKILLed mid-stream: the client end logs one line at once, the application sees a reset", async () => {
    const target = await fleet.server((s) => s.resume());
    const { client, server } = await rig(target.port, { kind: "pass" });
    const app = appConnect(client.port, ["--push", String(1024 * MiB), "--timeout", "30"]);
    await server.waitForLog((l) => l.msg === "connection opened");
    await sleep(300);
    const t0 = Date.now();
    server.child.kill("SIGKILL");
    const c = await oneLine(client, t0, 0);
    assert.match(c.msg, /^connection ended/);
    assert.equal((await app).end, "reset");
  });

  it("the client end SIGKILLed mid-stream: the server end logs one line at once, the target sees a reset", async () => {
    const target = await appServe(["--timeout", "30"]);
    const { client, server } = await rig(target.port, { kind: "pass" });
    // A Node client here: its own connection is cut by the kill, whatever it would say about it.
    const sock = await connect(client.port);
    sock.on("error", () => {});
    sock.write(randomBytes(512 * KiB));
    await server.waitForLog((l) => l.msg === "connection opened");
    await sleep(300);
    const t0 = Date.now();
    client.child.kill("SIGKILL");
    const s = await oneLine(server, t0, 0, /truncated|failed|reset/);
    assert.match(s.msg, /^connection ended/);
    const t = await target.result;
    assert.equal(t.end, "reset", `a killed peer is never a clean end: ${JSON.stringify(t)}`);
    sock.destroy();
  });

  it("a target that resets mid-stream: the reset is passed on (ABORT): one line per end, the application sees a reset", async () => {
    // Once the application's first bytes are in: 100 KiB, then a reset right behind them.
    const target = await fleet.server((s) =>
      s.once("data", () => {
        s.write(randomBytes(100 * KiB));
        s.resetAndDestroy();
      }),
    );
    const { client, server } = await rig(target.port, { kind: "pass" });
    const t0 = Date.now();
    const a = await appConnect(client.port, ["--send", "10", "--timeout", "30"]);
    assert.equal(a.end, "reset", JSON.stringify(a));
    const s = await oneLine(server, t0, 0);
    assert.match(s.msg, /^connection ended/);
    const c = await oneLine(client, t0, 0, /abort/i);
    assert.match(c.msg, /^connection ended/);
  });

  it(`a target that never reads, 1 GiB pushed at it: both ends' RSS stays under 200 MB and the stall timeout (${STALL_S} s) cuts it`, async (t) => {
    const target = await deafTarget();
    const { client, server } = await rig(target.port, { kind: "pass" });
    let maxRss = 0;
    let done = false;
    const sampler = (async () => {
      while (!done) {
        maxRss = Math.max(maxRss, rssKiB(client.child.pid as number), rssKiB(server.child.pid as number));
        await sleep(50);
      }
    })();
    const t0 = Date.now();
    const app = appConnect(client.port, ["--push", String(1024 * MiB), "--timeout", "60"]);
    const s = await oneLine(server, t0, STALL_S * 1000 + 10_000, /stall|no progress/i);
    assert.match(s.msg, /^connection ended/);
    const a = (await app) as AppReport & { pushed: number };
    done = true;
    await sampler;
    t.diagnostic(
      `pushed ${(a.pushed / MiB).toFixed(1)} MiB before the cut; max RSS ${(maxRss / 1024).toFixed(0)} MB`,
    );
    assert.equal(a.end, "reset", JSON.stringify(a));
    assert.ok(maxRss < 200 * 1024, `RSS ${maxRss} KiB`);
    // The client end says one thing about it too (its own stall, or the server end's abort).
    await oneLine(client, t0, STALL_S * 1000 + 10_000);
  });

  it(`a target that accepts and hangs: the idle timeout (${IDLE_S} s) cuts it; one line per end, the application sees a reset`, async () => {
    const target = await deafTarget();
    const { client, server } = await rig(target.port, { kind: "pass" });
    const t0 = Date.now();
    const a = await appConnect(client.port, ["--send", "10", "--timeout", "30"]);
    assert.equal(a.end, "reset", JSON.stringify(a));
    assert.ok(Date.now() - t0 >= IDLE_S * 1000 - 500, "not before the idle timeout");
    await oneLine(server, t0, IDLE_S * 1000, /idle/i);
    await oneLine(client, t0, IDLE_S * 1000);
  });
});

describe("EMFILE: a server end out of file descriptors", () => {
  it("keeps running, says so in a line or two (not one per connection), ends every connection, and serves again once descriptors are free", async () => {
    const target = await fleet.server(echoHandler);
    const { client, server } = await rig(target.port, { kind: "pass" }, { server: ["-n", "0", ...HELLO] });
    const pid = server.child.pid as number;
    const limit = fdCount(pid) + 12;
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${limit}:${limit}`]);
    // Far more connections at once than it has descriptors for (each needs two: the client's and
    // the target's); each sends a little and waits for its echo.
    const socks = await Promise.all(Array.from({ length: 60 }, () => connect(client.port)));
    const t0 = Date.now();
    const ended = socks.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.on("error", () => resolve());
          s.on("close", () => resolve());
          s.on("end", () => resolve());
          s.resume();
          s.write("ping");
          s.end();
        }),
    );
    await Promise.all(ended);
    const took = Date.now() - t0;
    assert.ok(took <= TIMEOUT_S * 1000 + SLACK_MS, `every connection ended, after ${took} ms`);
    await sleep(1000);
    assert.equal(server.child.exitCode, null, "the server end is still running");
    assert.equal(server.child.signalCode, null);
    const lines = warnings(server).map((l) => l.msg);
    const said = lines.filter((m) => /EMFILE|file descriptors/i.test(m));
    assert.ok(said.length >= 1, `it says it is out of file descriptors:\n${lines.join("\n")}`);
    assert.ok(said.length <= 3, `in a line or two, not one per connection:\n${said.join("\n")}`);
    for (const s of socks) s.destroy();
    // Descriptors free again: it serves.
    const deadline = Date.now() + 15_000;
    let ok = false;
    while (!ok && Date.now() < deadline) {
      const r = await appConnect(client.port, ["--send", "1000", "--then", "shut", "--timeout", "5"]);
      ok = r.end === "eof" && r.received === 1000;
      if (!ok) await sleep(500);
    }
    assert.ok(ok, "serves again once descriptors are free");
  });
});
