/**
 * Fault injection between the ends: a relay that stalls, cuts (reset or FIN), delays or flips a
 * bit. Each fault must end within its configured bound with one clear log line per end, and never
 * pass as a clean end. Whether an application saw a reset or a clean end is judged by app.py (not
 * built on libuv). Peers and targets that fail: faults-peers.test.ts; 10,000 short connections:
 * faults-churn.test.ts.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import type { FaultRelay } from "../helpers/faultrelay.js";
import {
  IDLE_S,
  isEnd,
  KiB,
  MiB,
  oneLine,
  rig as rigIn,
  STALL_S,
  TIMEOUT_S,
  warnings,
} from "../helpers/faultrig.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler } from "../helpers/net.js";
import { type AppReport, appConnect, appServe, patternBytes } from "../helpers/pyapp.js";

const fleet = new Fleet();
const relays: FaultRelay[] = [];
after(async () => {
  await Promise.all(relays.map((r) => r.close()));
  await fleet.cleanup();
});
const rig = (...args: Parameters<typeof rigIn> extends [unknown, unknown, ...infer R] ? R : never) =>
  rigIn(fleet, relays, ...args);

/** A target that accepts and then neither reads nor writes. */
async function _deafTarget() {
  return fleet.server((s) => s.pause());
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("faults between the ends (fault relay)", () => {
  it(`stall mid-stream: the client end's stall timeout (${STALL_S} s) and the server end's idle timeout (${IDLE_S} s) cut it; both applications see a reset`, async () => {
    const target = await appServe(["--timeout", "30"]);
    const { client, server, relay } = await rig(target.port, { kind: "stall", after: MiB, direction: "up" });
    const struck = relay.nextStrike().then(() => Date.now());
    const app = appConnect(client.port, ["--push", String(64 * MiB), "--then", "shut", "--timeout", "30"]);
    const t0 = await struck;
    const c = await oneLine(client, t0, STALL_S * 1000, /stall|no progress/i);
    assert.match(c.msg, /^connection ended/);
    await oneLine(server, t0, IDLE_S * 1000, /idle/i);
    const a = await app;
    assert.equal(a.end, "reset", JSON.stringify(a));
    assert.ok((a as AppReport & { pushed: number }).pushed < 64 * MiB);
    const t = await target.result;
    assert.equal(t.end, "reset", JSON.stringify(t));
  });

  for (const how of ["rst", "fin"] as const) {
    it(`cut mid-stream (${how === "rst" ? "both sides reset" : "a FIN injected on both sides"}): each end logs one line at once; both applications see a reset`, async () => {
      const target = await appServe(["--timeout", "30"]);
      const { client, server, relay } = await rig(target.port, {
        kind: "cut",
        how,
        after: 256 * KiB,
        direction: "up",
      });
      const struck = relay.nextStrike().then(() => Date.now());
      const app = appConnect(client.port, ["--push", String(4 * MiB), "--then", "shut", "--timeout", "30"]);
      const t0 = await struck;
      const c = await oneLine(client, t0, 0);
      assert.match(c.msg, /^connection ended/);
      const s = await oneLine(server, t0, 0);
      assert.match(s.msg, /^connection ended/);
      assert.match(s.msg, how === "fin" ? /truncated/ : /failed|reset|truncated/);
      const a = await app;
      assert.equal(a.end, "reset", JSON.stringify(a));
      const t = await target.result;
      assert.equal(t.end, "reset", `a cut is never passed on as a clean end: ${JSON.stringify(t)}`);
      assert.ok(t.received < 4 * MiB);
    });
  }

  it("delay of 150 ms each way: the data arrives intact and both ends close cleanly", async () => {
    const target = await fleet.server(echoHandler);
    const { client, server } = await rig(target.port, { kind: "delay", ms: 150 });
    const size = 256 * KiB;
    const a = await appConnect(client.port, ["--send", String(size), "--then", "shut", "--timeout", "30"]);
    assert.equal(a.end, "eof", JSON.stringify(a));
    assert.equal(a.received, size);
    assert.equal(a.sha256, sha256(patternBytes(size)));
    for (const e of [client, server]) {
      const l = await e.waitForLog(isEnd, 10_000);
      assert.equal(l.msg, "connection closed");
      assert.deepEqual(warnings(e), []);
    }
  });

  it("a bit flipped in a data record: the server end refuses it (one line), both applications see a reset", async () => {
    const target = await appServe(["--timeout", "30"]);
    const { client, server, relay } = await rig(target.port, { kind: "flip", offset: 5000, direction: "up" });
    const struck = relay.nextStrike().then(() => Date.now());
    const app = appConnect(client.port, ["--send", String(64 * KiB), "--timeout", "30"]);
    const t0 = await struck;
    const s = await oneLine(server, t0, 0, /protocol error|authenticat|tag|record/i);
    assert.match(s.msg, /^connection ended/);
    const c = await oneLine(client, t0, 0);
    assert.match(c.msg, /^connection ended/);
    assert.equal((await app).end, "reset");
    const t = await target.result;
    assert.equal(t.end, "reset", JSON.stringify(t));
  });

  it("a bit flipped in the handshake: refused before the target is dialled; one line per end; the application sees a reset", async () => {
    const target = await fleet.server(echoHandler);
    const { client, server, relay } = await rig(target.port, { kind: "flip", offset: 40, direction: "up" });
    const struck = relay.nextStrike().then(() => Date.now());
    const app = appConnect(client.port, ["--send", "100", "--timeout", "30"]);
    const t0 = await struck;
    const s = await oneLine(server, t0, 0);
    assert.match(s.msg, /handshake|key|authenticat/i);
    const c = await oneLine(client, t0, TIMEOUT_S * 1000, /handshake/i);
    assert.match(c.msg, /^connection failed/);
    assert.equal((await app).end, "reset");
    assert.equal(target.accepted, 0, "the target was never dialled");
  });
});
