/**
 * Fault injection, end to end: a relay between the ends that stalls, cuts, delays or flips a bit;
 * an end SIGKILLed mid-stream; a target that resets, that never reads, that accepts and hangs; too
 * few file descriptors (EMFILE); and 10,000 short connections with faults mixed in. Each fault must
 * end within its configured bound with one clear log line per end, and nothing may hang or grow.
 * Whether an application saw a reset or a clean end is judged by app.py (not built on libuv).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { rssKiB, sleep } from "../../bench/procs.js";
import type { LogLine, RunningEnd } from "../../src/harness.js";
import { type FaultMode, FaultRelay } from "../helpers/faultrelay.js";
import { Fleet } from "../helpers/fleet.js";
import { connect, echoHandler, keyFile } from "../helpers/net.js";
import { type AppReport, appConnect, appServe, patternBytes } from "../helpers/pyapp.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const fleet = new Fleet();
const relays: FaultRelay[] = [];
after(async () => {
  await Promise.all(relays.map((r) => r.close()));
  await fleet.cleanup();
});

/** Short bounds, so that every fault is over in seconds (seconds, as the flags take them). */
const STALL_S = 2;
const IDLE_S = 4;
const HELLO_S = 2;
const TIMEOUT_S = 3;
/** What a loaded machine may add to a bound before the line is in (generous on purpose). */
const SLACK_MS = 6000;
const BOUNDS = [
  "--stall-timeout",
  String(STALL_S),
  "--idle-timeout",
  String(IDLE_S),
  "-o",
  String(TIMEOUT_S),
];
/** The server end's deadline for the first handshake message (a -d flag only). */
const HELLO = ["--hello-timeout", String(HELLO_S)];

interface Rig {
  server: RunningEnd;
  relay: FaultRelay;
  client: RunningEnd;
}

/** target <- server end (-d) <- fault relay <- client end (-e). */
async function rig(
  targetPort: number,
  mode: FaultMode,
  extra: { server?: string[]; client?: string[] } = {},
): Promise<Rig> {
  const server = await fleet.end([
    "-d",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${targetPort}`,
    "-k",
    fleet.key,
    ...BOUNDS,
    ...(extra.server ?? HELLO),
  ]);
  const relay = await FaultRelay.start(server.port, "127.0.0.1", mode);
  relays.push(relay);
  const client = await fleet.end([
    "-e",
    "-l",
    "127.0.0.1:0",
    "-t",
    relay.address,
    "-k",
    fleet.key,
    ...BOUNDS,
    ...(extra.client ?? []),
  ]);
  return { server, relay, client };
}

const isEnd = (l: LogLine) => /^connection (closed|ended|failed)/.test(l.msg);
const warnings = (e: RunningEnd, from = 0) => e.logs.slice(from).filter((l) => l.level >= 40);

/**
 * Waits for the end's line about its connection being over (within `boundMs` of `since`), then
 * checks that it is the one warning the end logged: one clear line per fault.
 */
async function oneLine(e: RunningEnd, since: number, boundMs: number, reason?: RegExp): Promise<LogLine> {
  const line = await e.waitForLog((l) => l.level >= 40, boundMs + SLACK_MS);
  const took = Date.now() - since;
  assert.ok(took <= boundMs + SLACK_MS, `logged after ${took} ms (bound ${boundMs} ms): ${line.msg}`);
  if (reason) assert.match(line.msg, reason);
  // Anything else it would say about it comes at once: give it a moment, then count.
  await sleep(300);
  assert.deepEqual(
    warnings(e).map((l) => l.msg),
    [line.msg],
    "one warning line for the fault",
  );
  return line;
}

/** A target that accepts and then neither reads nor writes. */
async function deafTarget() {
  return fleet.server((s) => s.pause());
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
/** User plus system CPU time of a process so far (from /proc/PID/stat, in clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

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
    const target = await appServe(["--send", String(100 * KiB), "--then", "rst"]);
    const { client, server } = await rig(target.port, { kind: "pass" });
    const t0 = Date.now();
    const a = await appConnect(client.port, ["--timeout", "30"]);
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

describe("10,000 short connections with faults mixed in", () => {
  it("open descriptors return to the baseline and RSS stays within 50 MB of it", async (t) => {
    const target = await fleet.server(echoHandler);
    const quiet = ["-o", "3"];
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
