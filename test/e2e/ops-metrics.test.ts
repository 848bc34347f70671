/**
 * --metrics end to end: a -d server and a -e client as real processes, the server's counters
 * scraped over HTTP as connections open, fail (wrong key, timeout) and close; /healthz 200, then 503
 * while a SIGTERM drains an open connection.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { Fleet } from "../helpers/fleet.js";
import {
  healthz,
  heldConnection,
  metricsAddress,
  sample,
  scrape,
  waitForSample,
} from "../helpers/metrics.js";
import { connect, echoHandler, echoRoundTrip, keyFile } from "../helpers/net.js";

const fleet = new Fleet();
after(() => fleet.cleanup());

async function server(extra: string[] = []) {
  const target = await fleet.server(echoHandler);
  const d = await fleet.end([
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
  return { d, m: await metricsAddress(d) };
}

const S = { role: "server", transport: "tcp" };

describe("--metrics", () => {
  it("counts connections as they open, fail (wrong key, timeout) and close", async () => {
    const { d, m } = await server(["-o", "1", "--grace", "1"]);
    const before = await scrape(m);
    assert.equal(sample(before, "monopiped_connections_opened_total"), 0);
    assert.ok(sample(before, "process_resident_memory_bytes") > 0, "process metrics are there");
    assert.equal(sample(before, "monopiped_keys"), 1);

    // Two clean connections, 100 KiB each way.
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    for (let i = 0; i < 2; i++) {
      const data = randomBytes(100 * 1024);
      assert.ok((await echoRoundTrip(e.port, data)).equals(data));
    }
    let text = await waitForSample(
      m,
      "monopiped_connections_closed_total",
      { ...S, outcome: "clean" },
      (v) => v === 2,
    );
    assert.equal(sample(text, "monopiped_connections_closed_total", { protocol: "monopiped2" }), 2);
    assert.equal(sample(text, "monopiped_bytes_total", { ...S, direction: "sent" }), 2 * 100 * 1024);
    assert.equal(sample(text, "monopiped_bytes_total", { ...S, direction: "received" }), 2 * 100 * 1024);
    assert.equal(sample(text, "monopiped_handshake_duration_seconds_count", S), 2);
    assert.equal(sample(text, "monopiped_connection_duration_seconds_count", S), 2);
    assert.equal(sample(text, "monopiped_connections_open", S), 0);

    // One held open: the open gauge shows it.
    const held = await heldConnection(e.port);
    assert.ok(await held.roundTrip());
    await waitForSample(m, "monopiped_connections_open", S, (v) => v === 1);

    // A client with another key: a wrong-key failure.
    const other = keyFile(fleet.dir, "other.bin");
    const wrong = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", other]);
    await echoRoundTrip(wrong.port, Buffer.from("hello")).catch(() => Buffer.alloc(0));
    text = await waitForSample(
      m,
      "monopiped_handshake_failures_total",
      { ...S, reason: "wrong-key" },
      (v) => v === 1,
    );

    // A stranger that connects and says nothing: a timeout.
    const silent = await connect(d.port);
    silent.on("error", () => {});
    text = await waitForSample(
      m,
      "monopiped_handshake_failures_total",
      { ...S, reason: "timeout" },
      (v) => v === 1,
    );
    silent.destroy();
    text = await waitForSample(
      m,
      "monopiped_connections_closed_total",
      { ...S, outcome: "handshake-failed" },
      (v) => v === 2,
    );
    assert.equal(sample(text, "monopiped_connections_opened_total", S), 5);

    held.sock.end();
    text = await waitForSample(m, "monopiped_connections_open", S, (v) => v === 0);
    assert.equal(sample(text, "monopiped_connections_closed_total", { ...S, outcome: "clean" }), 3);
  });

  it("/healthz answers 200, then 503 while SIGTERM drains an open connection", async () => {
    const { d, m } = await server(["--grace", "30"]);
    assert.equal(await healthz(m), 200);
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    const held = await heldConnection(e.port);
    assert.ok(await held.roundTrip());

    d.child.kill("SIGTERM");
    await d.waitForLog((l) => /no longer accepting/.test(l.msg));
    assert.equal(await healthz(m), 503, "draining: the balancer takes it out");
    const text = await scrape(m);
    assert.equal(sample(text, "monopiped_draining"), 1);
    assert.equal(sample(text, "monopiped_connections_open", S), 1);
    assert.ok(await held.roundTrip(), "the open connection still flows while draining");
    assert.equal(d.child.exitCode, null, "still running while a connection is open");

    held.sock.end();
    assert.equal(await d.exited, 0);
  });
});
