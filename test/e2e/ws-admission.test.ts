/**
 * Admission at the -w listener under a crowd of strangers: connections that have not upgraded yet
 * (idle, or dribbling their request) and upgraded ones that stay silent or send half a handshake.
 * With the default limits a good client must still be served at once, and a slowloris client must
 * be closed after --hello-timeout, not after Node's own minute-long HTTP timeouts.
 */
import "../helpers/stop-all.js";
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type RunningEnd, startEnd } from "../../src/harness.js";
import { writeKeyFile } from "../../src/keyfile.js";

const HELLO_TIMEOUT_S = 3; // the default of --hello-timeout
const UPGRADE =
  "GET /tunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
/** A masked binary frame that announces 100 bytes, of which only 10 follow: half a handshake. */
const HALF_FRAME = Buffer.concat([Buffer.from([0x82, 0x80 | 100, 1, 2, 3, 4]), Buffer.alloc(10, 9)]);

let dir: string;
let key: string;
let echo: net.Server;
let echoPort: number;
const cleanups: (() => void)[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Kind = "idle" | "partial" | "upgraded" | "half-handshake";

/** Strangers of one kind, `count` of them held open: each one that is closed is replaced 2-3 s later. */
class Crowd {
  private readonly sockets = new Set<net.Socket>();
  private stopped = false;
  /** Connections the server closed (evicted, timed out) so far. */
  closedByServer = 0;

  constructor(
    private readonly port: number,
    private readonly kind: Kind,
    private readonly count: number,
  ) {
    cleanups.push(() => this.stop());
  }

  get open(): number {
    return this.sockets.size;
  }

  async start(): Promise<void> {
    // In batches, so the listen backlog does not overflow into SYN retries.
    for (let i = 0; i < this.count; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, this.count - i) }, () => this.one()));
    }
  }

  private one(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped) return resolve();
      const s = net.connect({ host: "127.0.0.1", port: this.port });
      this.sockets.add(s);
      s.on("error", () => {});
      s.on("data", () => {});
      s.once("connect", () => {
        if (this.kind === "partial") s.write("GET /tunnel HTTP/1.1\r\nHost: x\r\n");
        if (this.kind === "upgraded") s.write(UPGRADE);
        if (this.kind === "half-handshake") s.write(Buffer.concat([Buffer.from(UPGRADE), HALF_FRAME]));
        resolve();
      });
      s.once("close", () => {
        this.sockets.delete(s);
        resolve();
        if (this.stopped) return;
        this.closedByServer++;
        // Back 2-3 s later (spread out, as many independent strangers would be): a crowd that is
        // held, not a flood of new connections (whose cost is CPU, not admission).
        setTimeout(() => void this.one(), 2000 + Math.random() * 1000).unref();
      });
    });
  }

  stop(): void {
    this.stopped = true;
    for (const s of this.sockets) s.destroy();
  }
}

/** One exchange through the client end: connect, send, get the echo. Resolves with the time it took. */
async function served(port: number, text: string): Promise<number> {
  const started = Date.now();
  const s = net.connect({ host: "127.0.0.1", port });
  cleanups.push(() => s.destroy());
  s.on("error", () => {});
  let got = "";
  s.setEncoding("utf8");
  await once(s, "connect");
  s.write(text);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 10_000);
    s.on("data", (d: string) => {
      got += d;
      if (got.length >= text.length) {
        clearTimeout(timer);
        resolve();
      }
    });
    s.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  s.destroy();
  assert.equal(got, text, "echoed");
  return Date.now() - started;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "monopiped-ws-admission-"));
  key = join(dir, "key.bin");
  writeKeyFile(key, false);
  echo = net.createServer((s) => {
    cleanups.push(() => s.destroy());
    s.on("error", () => {});
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
  echoPort = (echo.address() as net.AddressInfo).port;
});

after(() => {
  for (const c of cleanups) c();
  echo?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function serverAndClient(): Promise<{ d: RunningEnd; c: RunningEnd }> {
  const d = await startEnd([
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
  ]);
  const c = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", `ws://127.0.0.1:${d.port}/tunnel`, "-k", key]);
  return { d, c };
}

describe("the -w listener under a crowd of strangers (default -n, --max-pending, --hello-timeout)", () => {
  test("a slowloris client (request headers byte by byte) is closed within the hello timeout", async () => {
    const { d, c } = await serverAndClient();
    const s = net.connect({ host: "127.0.0.1", port: d.port });
    cleanups.push(() => s.destroy());
    s.on("error", () => {});
    await once(s, "connect");
    const started = Date.now();
    const request = UPGRADE;
    let closed = false;
    s.once("close", () => {
      closed = true;
    });
    // One byte every 100 ms: the whole request would take ~17 s.
    for (let i = 0; i < request.length && !closed && Date.now() - started < 20_000; i++) {
      s.write(request[i]);
      await sleep(100);
    }
    const ms = Date.now() - started;
    assert.ok(closed, "the server closed it");
    assert.ok(
      ms < (HELLO_TIMEOUT_S + 1.5) * 1000,
      `closed after ${ms} ms (hello timeout ${HELLO_TIMEOUT_S} s)`,
    );
    const line = await d.waitForLog((l) => /no complete WebSocket upgrade request/.test(l.msg));
    assert.ok(line.level <= 40);
    assert.ok((await served(c.port, "still served")) < 1000);
  });

  test("2,000 strangers that never upgrade (idle, or half a request): a good client is served within 1 s, every time", async () => {
    const { d, c } = await serverAndClient();
    // Served before the crowd comes (and the ends' one-time set-up is done).
    assert.ok((await served(c.port, "before the crowd")) < 5000);
    const crowds = [new Crowd(d.port, "idle", 1500), new Crowd(d.port, "partial", 500)];
    await Promise.all(crowds.map((k) => k.start()));
    await sleep(2000); // past the first wave of evictions: the crowd keeps the listener at its cap
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      times.push(await served(c.port, `good client ${i}`));
      await sleep(300);
    }
    const open = crowds.reduce((n, k) => n + k.open, 0);
    for (const k of crowds) k.stop();
    assert.ok(
      times.every((t) => t < 1000),
      `each exchange within 1 s: ${times.join(", ")} ms`,
    );
    // Above the cap of 1,024 not yet authenticated: the server evicts the oldest, the crowd reconnects.
    assert.ok(open >= 1000, `the crowd was there: ${open} connections open at the end`);
    assert.ok(crowds[0].closedByServer > 0, "the server closed strangers (evicted or timed out)");
    // Not one log line per stranger: the refusals are summed up.
    const warns = d.logs.filter((l) => l.level >= 40);
    assert.ok(warns.length < 10, `${warns.length} warnings: ${JSON.stringify(warns.slice(0, 3))}`);
  });

  test("2,000 strangers, some upgraded and silent or with half a handshake: a good client is served within 1 s, every time", async () => {
    const { d, c } = await serverAndClient();
    // Served before the crowd comes (and the ends' one-time set-up is done).
    assert.ok((await served(c.port, "before the crowd")) < 5000);
    const crowds = [
      new Crowd(d.port, "idle", 800),
      new Crowd(d.port, "partial", 200),
      new Crowd(d.port, "upgraded", 500),
      new Crowd(d.port, "half-handshake", 500),
    ];
    await Promise.all(crowds.map((k) => k.start()));
    await sleep(2000); // past the first wave of evictions: the crowd keeps the listener at its cap
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      times.push(await served(c.port, `good client ${i}`));
      await sleep(300);
    }
    const open = crowds.reduce((n, k) => n + k.open, 0);
    for (const k of crowds) k.stop();
    assert.ok(
      times.every((t) => t < 1000),
      `each exchange within 1 s: ${times.join(", ")} ms`,
    );
    assert.ok(open >= 1000, `the crowd was there: ${open} connections open at the end`);
  });

  test("twenty refused strangers in a row: a few warnings, the rest summed up in one line", async () => {
    const d = await startEnd([
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
      "--log-level",
      "debug",
    ]);
    const get = (path: string) =>
      new Promise<number>((resolve, reject) => {
        http
          .get({ host: "127.0.0.1", port: d.port, path, agent: false }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          })
          .on("error", reject);
      });
    for (let i = 0; i < 10; i++) assert.equal(await get("/tunnel"), 426);
    for (let i = 0; i < 10; i++) assert.equal(await get("/nothing-here"), 404);
    // Each one in full at some level (the first few of an interval as warnings, the rest at debug).
    const refused = await d.waitForLogs((l) => /^refused/.test(l.msg), 20);
    const inFull = d.logs.filter((l) => l.level >= 40 && /^refused/.test(l.msg)).length;
    assert.ok(inFull >= 1 && inFull <= 5, `${inFull} of twenty refusals logged as warnings`);
    assert.ok(refused.every((l) => l.level === 40 || l.level === 20));
    const summary = await d.waitForLog((l) => / more WebSocket connections refused/.test(l.msg), 15_000);
    assert.equal(summary.level, 40);
    assert.equal(Number(summary.msg.split(" ")[0]) + inFull, 20, summary.msg);
    assert.match(summary.msg, /HTTP 404 10/);
  });
});
