/**
 * Every connection ends, whatever moment its peer picks to close or reset: FIN and RST before,
 * within and right after the handshake and during the pump, for every protocol, over TCP and
 * WebSocket, on both ends. Afterwards each end has logged an end for every connection it took, and
 * with -n 2 a normal connection still works (no slot was leaked).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import "../helpers/stop-all.js";
import WebSocket from "ws";
import type { LogLine, RunningEnd } from "../../src/harness.js";
import { createHandshake, loadProtocols, prepareKeys } from "../../src/protocol/index.js";
import type { ProtocolName, Session } from "../../src/protocol/types.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler, echoWithoutHalfClose } from "../helpers/net.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

const APP = fileURLToPath(new URL("../../../test/helpers/app.py", import.meta.url));
const fleet = new Fleet();
after(() => fleet.cleanup());
const keys = prepareKeys(readFileSync(fleet.key));
const sockets: { destroy(): void }[] = [];
after(() => {
  for (const s of sockets) s.destroy();
});

type Action = "fin" | "rst";
type Stage = "before" | "within" | "after" | "pump";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A plain application at the client end that closes or resets at once, or right after some data. */
function appProbe(port: number, action: Action, data: boolean): void {
  const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  sockets.push(s);
  s.on("error", () => {});
  s.on("connect", () => {
    if (data) s.write(randomBytes(1000));
    if (action === "fin") {
      s.end();
      s.resume();
    } else s.resetAndDestroy();
  });
}

/**
 * A client speaking the protocol itself (the protocol core over a raw socket or WebSocket) that
 * closes or resets at `stage` of its connection to the server end.
 */
function peerProbe(port: number, protocol: ProtocolName, ws: boolean, action: Action, stage: Stage): void {
  const hs = createHandshake("client", protocol, [keys], {});
  let sendMsg: (b: Buffer) => void;
  let act: () => void;
  const onBytes = (b: Buffer) => {
    if (hs.session) return;
    let out: Buffer[];
    try {
      out = hs.receive(b);
    } catch {
      act();
      return;
    }
    for (const m of out) sendMsg(m);
    if (!hs.session) return;
    const session = hs.session as Session | null;
    if (stage === "pump" && session) for (const r of session.sealer.seal(Buffer.from("ping"))) sendMsg(r);
    act();
  };
  const begin = () => {
    if (stage === "before") return act();
    const first = hs.start();
    for (const m of first) sendMsg(m);
    // monopiped2 and monopiped1 clients speak first; a spiped client's nonce too.
    if (stage === "within") act();
  };
  if (ws) {
    const c = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    sockets.push({ destroy: () => c.terminate() });
    c.on("error", () => {});
    sendMsg = (b) => c.send(b, { binary: true });
    act = () => (action === "fin" ? c.close(1000) : c.terminate());
    c.on("message", (d: Buffer) => onBytes(d));
    c.on("open", begin);
  } else {
    const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    sockets.push(s);
    s.on("error", () => {});
    sendMsg = (b) => s.write(b);
    act = () => (action === "fin" ? s.end() : s.resetAndDestroy());
    s.on("data", onBytes);
    s.on("connect", begin);
  }
}

const START = new Set(["connection accepted", "connection opened"]);
const isEnd = (l: LogLine) => /^connection (closed|ended|failed|refused)/.test(l.msg);

/** Waits until every connection the end took has an end line; returns how many it took. */
async function allEnded(e: RunningEnd, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const started = new Set(e.logs.filter((l) => START.has(l.msg)).map((l) => l.conn));
    const ended = new Set(e.logs.filter(isEnd).map((l) => l.conn));
    const open = [...started].filter((c) => !ended.has(c));
    if (open.length === 0) return started.size;
    if (Date.now() > deadline) {
      assert.fail(
        `connections ${open.join(", ")} never ended; last lines:\n${e.logs
          .slice(-15)
          .map((l) => JSON.stringify(l))
          .join("\n")}`,
      );
    }
    await sleep(200);
  }
}

describe("every connection ends, whenever its peer closes or resets", { concurrency: 1 }, () => {
  for (const transport of ["tcp", "ws"] as const) {
    for (const protocol of ["monopiped2", "monopiped1", "spiped"] as const) {
      it(`${protocol} over ${transport}: FIN and RST at each step, on both ends`, async () => {
        const target = await fleet.server(echoHandler);
        const d = await fleet.end([
          "-d",
          ...(transport === "ws" ? ["-w"] : []),
          "-l",
          "127.0.0.1:0",
          "-t",
          `127.0.0.1:${target.port}`,
          "-k",
          fleet.key,
          "--protocol",
          protocol,
          "-n",
          "2",
          "-o",
          "3",
          "--log-level",
          "debug",
        ]);
        const to = transport === "ws" ? `ws://${d.address}/` : d.address;
        const e = await fleet.end([
          "-e",
          "-l",
          "127.0.0.1:0",
          "-t",
          to,
          "-k",
          fleet.key,
          "--protocol",
          protocol,
          "-n",
          "2",
          "-o",
          "3",
        ]);
        let probes = 0;
        for (const action of ["fin", "rst"] as const) {
          for (let i = 0; i < 8; i++) {
            appProbe(e.port, action, i >= 5);
            probes++;
            if (i % 4 === 3) await sleep(50);
          }
          for (const stage of ["before", "within", "after", "pump"] as const) {
            for (let i = 0; i < 2; i++) peerProbe(d.port, protocol, transport === "ws", action, stage);
          }
        }
        const clientConns = await allEnded(e, 30_000);
        assert.equal(clientConns, probes, "the client end took every probe");
        const serverConns = await allEnded(d, 30_000);
        assert.ok(serverConns >= 16, `the server end took the raw probes (${serverConns})`);
        // With -n 2 on both ends, a normal connection is still served: no slot was leaked.
        const data = randomBytes(20_000);
        assert.ok(await echoWithoutHalfClose(e.port, data), "echo through the tunnel");
      });
    }
  }
});

/** Runs test/helpers/app.py; resolves with its JSON lines. `onLine` sees each as it comes. */
function app(
  args: string[],
  onLine?: (o: Record<string, unknown>) => void,
): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const child = spawn("python3", [APP, ...args], { stdio: ["ignore", "pipe", "inherit"] });
    const lines: Record<string, unknown>[] = [];
    let buf = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (s: string) => {
      buf += s;
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        const o = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
        buf = buf.slice(i + 1);
        lines.push(o);
        onLine?.(o);
      }
    });
    child.on("error", reject);
    child.on("exit", () => resolve(lines));
  });
}

/** app.py serve on `port` (0: any); resolves once it listens, with its port and its final report. */
async function appServe(
  port: number,
  args: string[],
): Promise<{ port: number; report: Promise<Record<string, unknown>> }> {
  let gotPort: (p: number) => void = () => {};
  const listening = new Promise<number>((r) => {
    gotPort = r;
  });
  const done = app(["serve", "127.0.0.1", String(port), ...args], (o) => {
    if (typeof o.port === "number") gotPort(o.port);
  });
  const p = await Promise.race([listening, done.then(() => -1)]);
  assert.ok(p > 0, "app.py serve listens");
  return { port: p, report: done.then((lines) => lines[lines.length - 1]) };
}

describe("an application's reset right behind its data reaches the far side as a reset", {
  concurrency: 1,
}, () => {
  const N = 200_000;
  it("client application -> target, and target -> client application (10 times each)", async () => {
    // A first serve picks a free port; every later one listens on the same port.
    const first = await appServe(0, ["--timeout", "10"]);
    const port = first.port;
    const d = await fleet.end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${port}`, "-k", fleet.key]);
    const e = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", fleet.key]);
    const verdicts: string[] = [];
    for (let i = 0; i < 10; i++) {
      const target = i === 0 ? first : await appServe(port, ["--timeout", "10"]);
      const client = await app([
        "connect",
        "127.0.0.1",
        String(e.port),
        "--send",
        String(N),
        "--then",
        "rst",
      ]);
      assert.equal(client[0]?.end, "none");
      const t = await target.report;
      verdicts.push(`up ${t.received}: ${t.end}`);
    }
    for (let i = 0; i < 10; i++) {
      const target = await appServe(port, ["--send", String(N), "--then", "rst"]);
      const [c] = await app(["connect", "127.0.0.1", String(e.port), "--timeout", "10"]);
      await target.report;
      verdicts.push(`down ${c.received}: ${c.end}`);
    }
    const wrong = verdicts.filter((v) => !v.endsWith(": reset"));
    assert.deepEqual(wrong, [], `clean ends instead of resets: ${verdicts.join(", ")}`);
  });
});

describe("timeouts of a served connection", { concurrency: 1 }, () => {
  it("--stall-timeout: a path that stops moving is cut on both ends, with one clear line", async () => {
    const target = await fleet.server((s) => {
      // Sends without end; the relay will stop taking it.
      const chunk = Buffer.alloc(1 << 20);
      const pushMore = () => {
        while (s.writable && s.write(chunk));
      };
      s.on("drain", pushMore);
      s.on("data", () => {});
      pushMore();
    });
    const d = await fleet.end([
      ..."-d -l 127.0.0.1:0 -k".split(" "),
      fleet.key,
      "-t",
      `127.0.0.1:${target.port}`,
      "--stall-timeout",
      "2",
    ]);
    // A relay that stops forwarding but keeps both sockets open.
    const frozen: net.Socket[] = [];
    let freeze = false;
    const relay = await fleet.server((client) => {
      const up = net.connect({ host: "127.0.0.1", port: d.port, allowHalfOpen: true });
      up.on("error", () => {});
      frozen.push(client, up);
      client.on("data", (b: Buffer) => {
        if (!freeze && !up.write(b)) client.pause();
      });
      up.on("drain", () => !freeze && client.resume());
      up.on("data", (b: Buffer) => {
        if (!freeze && !client.write(b)) up.pause();
      });
      client.on("drain", () => !freeze && up.resume());
    });
    const e = await fleet.end([
      ..."-e -l 127.0.0.1:0 -k".split(" "),
      fleet.key,
      "-t",
      `127.0.0.1:${relay.port}`,
      "--stall-timeout",
      "2",
    ]);
    const s = net.connect({ host: "127.0.0.1", port: e.port, allowHalfOpen: true });
    sockets.push(s);
    s.on("error", () => {});
    let got = 0;
    await new Promise<void>((resolve) =>
      s.on("data", (b: Buffer) => {
        got += b.length;
        if (got > 4 << 20) resolve();
      }),
    );
    freeze = true;
    for (const x of frozen) x.pause();
    // The application keeps sending too, so the client end's queue towards the relay fills.
    const big = Buffer.alloc(1 << 20);
    const timer = setInterval(() => s.write(big), 50);
    try {
      const isStall = (l: LogLine) =>
        /^connection ended: stalled: \d+ bytes queued towards .* made no progress for 2 s \(--stall-timeout\)/.test(
          l.msg,
        );
      const [dl, el] = await Promise.all([d.waitForLog(isStall, 20_000), e.waitForLog(isStall, 20_000)]);
      assert.match(dl.msg, /towards client/);
      assert.match(el.msg, /towards server/);
    } finally {
      clearInterval(timer);
      for (const x of frozen) x.destroy();
    }
  });

  it("--idle-timeout: no byte either way for that long cuts the connection", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "-k", fleet.key]);
    const e = await fleet.end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      d.address,
      "-k",
      fleet.key,
      "--idle-timeout",
      "1",
    ]);
    const s = net.connect({ host: "127.0.0.1", port: e.port, allowHalfOpen: true });
    sockets.push(s);
    const ended = new Promise<string>((resolve) => {
      s.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
      s.on("end", () => resolve("end"));
    });
    s.write("hello");
    await new Promise((r) => s.once("data", r));
    const t0 = Date.now();
    assert.equal(await ended, "ECONNRESET", "the application sees a reset");
    assert.ok(Date.now() - t0 < 10_000);
    const line = await e.waitForLog((l) => /^connection ended: idle timeout/.test(l.msg));
    assert.match(line.msg, /no data either way for 1 s \(--idle-timeout\)/);
    await d.waitForLog((l) => /peer aborted: idle timeout/.test(String(l.reason)));
  });
});
