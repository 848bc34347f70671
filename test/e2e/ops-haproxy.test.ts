/**
 * HAProxy in front of two -d replicas, end to end: Debian's haproxy in TCP mode with send-proxy-v2
 * and health checks on each replica's --metrics /healthz (the config in test/e2e/haproxy/, the one
 * docs/OPERATIONS.md shows), the replicas with --proxy-protocol. Connections carry 1 MiB each, the
 * replicas log the real client address, and after one replica is killed every connection still
 * gets through. Everything on loopback; every process stopped by its PID.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import "../helpers/stop-all.js";
import { freePort, type Proc, spawnProc, waitListening } from "../../bench/procs.js";
import type { RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";
import { metricsAddress, waitForSample } from "../helpers/metrics.js";
import { echoHandler, echoRoundTrip } from "../helpers/net.js";

const CONFIG = fileURLToPath(new URL("../../../test/e2e/haproxy/haproxy.cfg", import.meta.url));
const MiB = 1024 * 1024;
const fleet = new Fleet();
let haproxy: Proc | undefined;
after(async () => {
  await haproxy?.stop();
  await fleet.cleanup();
});

/** One 1 MiB echo through the client end; rejects if it takes longer than `ms` (no hang). */
async function carry(e: RunningEnd, ms = 30_000): Promise<boolean> {
  const data = randomBytes(MiB);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`a connection did not finish within ${ms} ms`)), ms);
  });
  try {
    const echo = await Promise.race([echoRoundTrip(e.port, data), timeout]);
    return echo.equals(data);
  } finally {
    clearTimeout(timer);
  }
}

function opened(r: RunningEnd) {
  return r.logs.filter((l) => l.msg === "connection opened");
}

describe("HAProxy (send-proxy-v2, health checks on /healthz) in front of two -d --proxy-protocol replicas", () => {
  it("carries 20 x 1 MiB with the real client address in the logs, and 20 more after a replica is killed", async () => {
    const target = await fleet.server(echoHandler);
    const replica = () =>
      fleet.end([
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        fleet.key,
        "--protocol",
        "monopiped2",
        "--proxy-protocol",
        "--metrics",
        "127.0.0.1:0",
      ]);
    const [r1, r2] = await Promise.all([replica(), replica()]);
    const [m1, m2] = await Promise.all([metricsAddress(r1), metricsAddress(r2)]);
    const port = (addr: string) => addr.slice(addr.lastIndexOf(":") + 1);

    const front = await freePort();
    haproxy = spawnProc("haproxy", "haproxy", ["-db", "-f", CONFIG], {
      env: {
        ...process.env,
        FRONT_ADDR: `127.0.0.1:${front}`,
        R1_ADDR: r1.address,
        R2_ADDR: r2.address,
        R1_METRICS: port(m1),
        R2_METRICS: port(m2),
      },
    });
    await waitListening(haproxy, front);

    // The client end binds its outgoing connections to 127.0.0.2; HAProxy reaches the replicas
    // from 127.0.0.1. A replica that logs 127.0.0.2 took the address from the PROXY header.
    const e = await fleet.end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${front}`,
      "-k",
      fleet.key,
      "-b",
      "127.0.0.2",
    ]);
    const first = await Promise.all(Array.from({ length: 20 }, () => carry(e)));
    assert.deepEqual(first, Array(20).fill(true), "20 connections of 1 MiB each, intact");
    await Promise.all([r1, r2].map((r) => r.waitForLogs((l) => l.msg === "connection closed", 1)));
    const lines = [...opened(r1), ...opened(r2)];
    assert.equal(lines.length, 20);
    for (const l of lines) assert.match(String(l.peer), /^127\.0\.0\.2:\d+$/, "the real client address");
    assert.ok(opened(r1).length > 0 && opened(r2).length > 0, "both replicas served");

    // One replica dies: the next 20 connections all get through (redispatch; then the checks).
    r1.child.kill("SIGKILL");
    await r1.exited;
    const before = opened(r2).length;
    for (let batch = 0; batch < 4; batch++) {
      const ok = await Promise.all(Array.from({ length: 5 }, () => carry(e)));
      assert.deepEqual(ok, Array(5).fill(true), `batch ${batch + 1} of 5 after the kill`);
    }
    assert.equal(opened(r2).length - before, 20, "the surviving replica served them all");
    assert.equal(haproxy.done, false);
  });
});

/** A relay to `port` that writes `header` upstream first, as a balancer does. */
function headerRelay(port: number, header: Buffer) {
  return fleet.server((client) => {
    const up = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    up.on("error", () => client.destroy());
    client.on("error", () => up.destroy());
    up.write(header);
    client.pipe(up);
    up.pipe(client);
  });
}

describe("--proxy-protocol without HAProxy", () => {
  it("a v1 header's address is logged; no header is refused; without the flag a header is a wrong key", async () => {
    const target = await fleet.server(echoHandler);
    const server = (extra: string[]) =>
      fleet.end([
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        fleet.key,
        "--protocol",
        "monopiped2",
        "--metrics",
        "127.0.0.1:0",
        ...extra,
      ]);
    const withFlag = await server(["--proxy-protocol"]);
    const without = await server([]);
    const header = Buffer.from("PROXY TCP4 203.0.113.7 127.0.0.1 4242 2222\r\n");
    const client = async (port: number) =>
      fleet.end(["-e", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${port}`, "-k", fleet.key]);

    // Through a relay that writes a v1 header: served, and logged with the header's address.
    const viaRelay = await client((await headerRelay(withFlag.port, header)).port);
    assert.ok(await carry(viaRelay));
    const line = await withFlag.waitForLog((l) => l.msg === "connection opened");
    assert.equal(line.peer, "203.0.113.7:4242");

    // Straight to it, no header: refused (a malformed handshake).
    const direct = await client(withFlag.port);
    await assert.rejects(carry(direct, 15_000).then((ok) => assert.ok(ok)));
    await waitForSample(
      await metricsAddress(withFlag),
      "monopiped_handshake_failures_total",
      { reason: "malformed" },
      (v) => v === 1,
    );

    // A server without the flag: the header is not a handshake; it fails as a wrong key.
    const toPlain = await client((await headerRelay(without.port, header)).port);
    await assert.rejects(carry(toPlain, 15_000).then((ok) => assert.ok(ok)));
    await waitForSample(
      await metricsAddress(without),
      "monopiped_handshake_failures_total",
      { reason: "wrong-key" },
      (v) => v === 1,
    );
    assert.equal(opened(without).length, 0);
  });
});
