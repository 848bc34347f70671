/**
 * 10,000 short connections with faults mixed in (resets, immediate closes, a wrong key, half
 * handshakes), in bounded parallel batches through ends with a small -n: afterwards the ends' open
 * file descriptors (/proc/PID/fd) are back at the baseline and their RSS (/proc/PID/status) within
 * 50 MB of it. A file of its own: it is the one long test of the fault suite.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { rssKiB, sleep } from "../../bench/procs.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler, keyFile } from "../helpers/net.js";

const fleet = new Fleet();
after(() => fleet.cleanup());

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/** User plus system CPU time of a process so far (from /proc/PID/stat, in clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

describe("10,000 short connections with faults mixed in", () => {
  it("open descriptors return to the baseline and RSS stays within 50 MB of it", async (t) => {
    const target = await fleet.server(echoHandler);
    const quiet = ["-o", "10"]; // a handshake of a loaded machine may take seconds; half handshakes end by --hello-timeout
    const server = await fleet.end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      fleet.key,
      "-n",
      "4",
      "--hello-timeout",
      "1",
      ...quiet,
    ]);
    const client = await fleet.end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      server.address,
      "-k",
      fleet.key,
      "-n",
      "8",
      ...quiet,
    ]);
    const wrongKey = keyFile(fleet.dir, "wrong.bin");
    const stranger = await fleet.end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      server.address,
      "-k",
      wrongKey,
      ...quiet,
    ]);

    const payload = randomBytes(200);
    const kinds = [
      "echo",
      "echo",
      "echo",
      "echo",
      "reset",
      "close",
      "wrong-key",
      "half",
      "half-hang",
      "echo",
    ];
    const tally = new Map<string, number>();
    const one = async (i: number): Promise<void> => {
      const kind = kinds[i % kinds.length];
      const ok = await shortConnection(kind, client.port, stranger.port, server.port, payload);
      if (!ok) tally.set(kind, (tally.get(kind) ?? 0) + 1);
    };
    const run = async (count: number, parallel: number) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: parallel }, async () => {
          while (next < count) await one(next++);
        }),
      );
    };

    const ends = [server, client];
    const measure = () =>
      ends.map((e) => ({ fds: fdCount(e.child.pid as number), rss: rssKiB(e.child.pid as number) }));
    await run(300, 32); // warm up (JIT, pools), then the baseline
    await sleep(1500);
    const base = measure();
    const t0 = Date.now();
    const cpu0 = ends.map((e) => cpuSeconds(e.child.pid as number));
    await run(10_000, 64);
    const cpu = ends.map((e, i) => (cpuSeconds(e.child.pid as number) - cpu0[i]).toFixed(1));
    t.diagnostic(
      `10,000 connections in ${((Date.now() - t0) / 1000).toFixed(1)} s (CPU seconds: server end ${cpu[0]}, client end ${cpu[1]})`,
    );
    assert.deepEqual(Object.fromEntries(tally), {}, "every echo came back whole; every fault was refused");
    // Descriptors come back once the last connections have closed (half handshakes time out).
    let now = measure();
    const deadline = Date.now() + 20_000;
    while (now.some((m, i) => m.fds > base[i].fds + 4) && Date.now() < deadline) {
      await sleep(250);
      now = measure();
    }
    for (const [i, name] of ["server end", "client end"].entries()) {
      t.diagnostic(`${name}: fds ${base[i].fds} -> ${now[i].fds}, RSS ${base[i].rss} -> ${now[i].rss} KiB`);
      assert.ok(now[i].fds <= base[i].fds + 4, `${name}: ${base[i].fds} fds before, ${now[i].fds} after`);
      assert.ok(
        now[i].rss <= base[i].rss + 50 * 1024,
        `${name}: RSS ${base[i].rss} KiB before, ${now[i].rss} KiB after`,
      );
    }
    for (const e of [server, client, stranger]) assert.equal(e.child.exitCode, null, "still running");
  });
});

/**
 * One short connection of `kind`; resolves true when it went as that kind should (an echo came
 * back whole; a fault was refused). Never takes longer than 15 s.
 */
function shortConnection(
  kind: string,
  clientPort: number,
  strangerPort: number,
  serverPort: number,
  payload: Buffer,
): Promise<boolean> {
  return new Promise((resolve) => {
    const port = kind === "wrong-key" ? strangerPort : kind.startsWith("half") ? serverPort : clientPort;
    const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let settled = false;
    const done = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 15_000);
    s.on("error", () => done(kind !== "echo"));
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("close", () => done(kind !== "echo"));
    s.on("end", () => {
      const got = Buffer.concat(chunks);
      // A refused stranger gets nothing at all back.
      done(kind === "echo" ? got.equals(payload) : got.length === 0);
    });
    s.once("connect", () => {
      switch (kind) {
        case "echo":
        case "wrong-key":
          s.end(payload);
          break;
        case "reset":
          s.resetAndDestroy();
          done(true);
          break;
        case "close":
          done(true);
          break;
        case "half":
          s.end(payload.subarray(0, 20)); // the start of a handshake, then end of stream
          break;
        case "half-hang":
          s.write(payload.subarray(0, 20)); // the start of a handshake, then nothing more for a while
          setTimeout(() => done(true), 200);
          break;
      }
    });
  });
}
