/**
 * --workers 2 end to end: connections served by both workers (their pids in the logs), one metrics
 * view over both, SIGHUP reaching both, SIGTERM draining both (an open connection finishes).
 */
import assert from "node:assert/strict";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import type { RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";
import {
  healthz,
  heldConnection,
  metricsAddress,
  sample,
  scrape,
  waitForSample,
} from "../helpers/metrics.js";
import { echoHandler, echoRoundTrip, keyFile } from "../helpers/net.js";

const fleet = new Fleet();
after(() => fleet.cleanup());

const HELLO = Buffer.from("hello through one of the workers\n");

async function works(e: RunningEnd): Promise<boolean> {
  const echo = await echoRoundTrip(e.port, HELLO).catch(() => Buffer.alloc(0));
  return echo.equals(HELLO);
}

describe("--workers 2", () => {
  it("serves from both workers, one metrics view, SIGHUP reaches all, SIGTERM drains all", async () => {
    const live = join(fleet.dir, "live.bin");
    const oldKey = keyFile(fleet.dir, "old.bin");
    const newKey = keyFile(fleet.dir, "new.bin");
    copyFileSync(oldKey, live);
    const target = await fleet.server(echoHandler);
    const d = await fleet.end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      live,
      "--protocol",
      "monopiped2",
      "--workers",
      "2",
      "--metrics",
      "127.0.0.1:0",
      "--grace",
      "30",
    ]);
    const ready = await d.waitForLog((l) => l.msg.startsWith("listening on"));
    const pids = ready.pids as number[];
    assert.equal(pids.length, 2);
    assert.equal(ready.workers, 2);
    const m = await metricsAddress(d);

    const eOld = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", oldKey]);
    const eNew = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", newKey]);
    for (let batch = 0; batch < 4; batch++) {
      const ok = await Promise.all(Array.from({ length: 5 }, () => works(eOld)));
      assert.deepEqual(ok, Array(5).fill(true));
    }
    const opened = await d.waitForLogs((l) => l.msg === "connection opened", 20);
    const servedBy = new Set(opened.map((l) => l.worker));
    assert.deepEqual([...servedBy].sort(), [...pids].sort(), "both workers served connections");
    for (const pid of pids) {
      const n = opened.filter((l) => l.worker === pid).length;
      assert.ok(n >= 5, `worker ${pid} served ${n} of 20 (round robin: about half)`);
    }

    // One view of both workers' counters.
    const text = await waitForSample(
      m,
      "monopiped_connections_closed_total",
      { role: "server", outcome: "clean" },
      (v) => v === 20,
    );
    assert.equal(sample(text, "monopiped_connections_opened_total"), 20);
    assert.equal(sample(text, "monopiped_workers"), 2);

    // SIGHUP to the primary: both workers take the new key.
    const held = await heldConnection(eOld.port);
    assert.ok(await held.roundTrip());
    copyFileSync(newKey, live);
    d.child.kill("SIGHUP");
    await d.waitForLog((l) => /^SIGHUP: re-read/.test(l.msg));
    const updated = await d.waitForLogs((l) => /^keys updated/.test(l.msg), 2);
    assert.deepEqual(updated.map((l) => l.worker).sort(), [...pids].sort(), "every worker took the new keys");
    const okNew = await Promise.all(Array.from({ length: 6 }, () => works(eNew)));
    assert.deepEqual(okNew, Array(6).fill(true), "the new key works on every worker");
    assert.equal(await works(eOld), false, "the old key is gone on every worker");
    assert.ok(await held.roundTrip(), "the old-key connection keeps flowing");

    // SIGTERM to the primary: every worker stops accepting; the open connection finishes.
    d.child.kill("SIGTERM");
    const stopping = await d.waitForLogs((l) => /no longer accepting/.test(l.msg), 2);
    assert.deepEqual(stopping.map((l) => l.worker).sort(), [...pids].sort());
    assert.equal(await healthz(m), 503);
    assert.ok(await held.roundTrip(), "still flowing during the drain");
    assert.equal(d.child.exitCode, null);
    held.sock.end();
    assert.equal(await d.exited, 0);
    const stopped = d.logs.filter((l) => l.msg === "stopped");
    assert.equal(stopped.length, 3, "both workers and the primary stopped cleanly");
    await assert.rejects(scrape(m), "the metrics listener is closed");
  });
});
