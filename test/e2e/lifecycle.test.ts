/**
 * Every connection ends, whatever moment its peer picks to close or reset: FIN and RST before,
 * within and right after the handshake and during the pump, for every protocol, over TCP and
 * WebSocket, on both ends. Afterwards each end has logged an end for every connection it took, and
 * with -n 2 a normal connection still works (no slot was leaked).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import WebSocket from "ws";
import type { LogLine, RunningEnd } from "../../src/harness.js";
import { createHandshake, prepareKeys } from "../../src/protocol/index.js";
import type { ProtocolName, Session } from "../../src/protocol/types.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler, echoWithoutHalfClose } from "../helpers/net.js";

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
