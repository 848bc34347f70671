/**
 * monopiped1 over WebSocket: how connections end. The original Rust monopiped maps an end of stream
 * to a WebSocket Close: its client sends an empty Close and keeps reading; its server never answers
 * a Close. Our client must end promptly and cleanly against such a server, and our server must give
 * a client that closed (half-closed) the target's whole reply before it answers the Close.
 */
import "../helpers/stop-all.js";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { runProc } from "../../bench/procs.js";
import { type LogLine, type RunningEnd, startEnd } from "../../src/harness.js";
import { writeKeyFile } from "../../src/keyfile.js";
import { monopiped1Keys } from "../../src/protocol/monopiped1.js";
import { projectRoot } from "../helpers/fixtures.js";
import { HELLO_LEN, type MuteCloser, startMuteCloser, v1Peer } from "./ws/v1ws.js";

const APP = join(projectRoot(), "test", "helpers", "app.py");
const WARN = 40;
/** The one start-up notice every monopiped1 end logs; anything else at WARN is a failure here. */
const V1_NOTICE = /original monopiped protocol/;

let dir: string;
let key: string;
const cleanups: (() => void)[] = [];

interface AppResult {
  received: number;
  sha256: string;
  end: string;
}

async function app(port: number, args: string[]): Promise<AppResult> {
  const r = await runProc("app.py", "python3", [APP, "connect", "127.0.0.1", String(port), ...args], 60_000);
  const line = r.stdout.trim().split("\n").pop() ?? "";
  assert.ok(line.startsWith("{"), `app.py printed: ${r.stdout} ${r.tail}`);
  return JSON.parse(line) as AppResult;
}

/** app.py's pattern: bytes 0..255 repeated. */
function pattern(n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = i & 0xff;
  return out;
}
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The line that says how a connection ended. */
const isEnd = (l: LogLine) => /^connection (closed|ended|failed)/.test(l.msg);
const warnings = (e: RunningEnd): LogLine[] =>
  e.logs.filter((l) => l.level >= WARN && !V1_NOTICE.test(l.msg));

/** A target that reads the whole request (until its end of stream), then sends `reply` and ends. */
async function replyAfterEnd(reply: Buffer, delayMs = 0): Promise<{ port: number; requests: number[] }> {
  const requests: number[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    cleanups.push(() => s.destroy());
    s.on("error", () => {});
    let n = 0;
    s.on("data", (d: Buffer) => {
      n += d.length;
    });
    s.on("end", () => {
      requests.push(n);
      setTimeout(() => s.end(reply), delayMs);
    });
  });
  cleanups.push(() => server.close());
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as net.AddressInfo).port, requests };
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), "monopiped-ws-close-"));
  key = join(dir, "key.bin");
  writeKeyFile(key, false);
});

after(() => {
  for (const c of cleanups) c();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("monopiped1 over WebSocket: the end of a connection", { concurrency: true }, () => {
  test("our client against a server that never answers a Close: a clean end within 2 s, no warning", async () => {
    const mute: MuteCloser = await startMuteCloser(monopiped1Keys(readFileSync(key)));
    cleanups.push(() => mute.close());
    const c = await startEnd([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      `ws://127.0.0.1:${mute.port}/`,
      "-k",
      key,
      "--protocol",
      "monopiped1",
    ]);
    // The application sends, half-closes and reads the echo until the end.
    const r = await app(c.port, ["--send", "20000", "--then", "shut", "--timeout", "10"]);
    assert.equal(r.end, "eof", `the application saw a clean end: ${JSON.stringify(r)}`);
    assert.equal(r.received, 20000);
    assert.equal(r.sha256, sha(pattern(20000)));
    const ended = Date.now();
    assert.equal(mute.closes.length, 1, "our client sent its Close");
    assert.equal(mute.closes[0].payload.length, 2, "a Close with a status code");
    const ms = ended - mute.closes[0].at;
    assert.ok(ms < 2000, `the application saw its end ${ms} ms after our Close (bound 2 s)`);
    const line = await c.waitForLog(isEnd);
    assert.equal(line.msg, "connection closed", JSON.stringify(line));
    assert.equal(line.level, 30);
    assert.deepEqual(warnings(c), [], "no warning");
  });

  test("a client that half-closes (sends Close, keeps reading) gets the target's whole reply from our server", async () => {
    const reply = pattern(300_000);
    const target = await replyAfterEnd(reply, 300);
    const d = await startEnd([
      "-d",
      "-w",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "monopiped1",
    ]);
    // The original client: one WebSocket, the 48-byte hello, frames, then an empty Close (1005).
    const ws = new WebSocket(`ws://127.0.0.1:${d.port}/`, { perMessageDeflate: false });
    cleanups.push(() => ws.terminate());
    const peer = v1Peer("client", monopiped1Keys(readFileSync(key)));
    let stream: ReturnType<typeof peer.finish> | undefined;
    const got: Buffer[] = [];
    ws.on("message", (m: Buffer) => {
      if (!stream) {
        assert.equal(m.length, HELLO_LEN);
        stream = peer.finish(m);
        for (const f of stream.seal(Buffer.from("request: the whole file, please\n".repeat(100)))) ws.send(f);
        ws.close(); // empty Close: this client's end of stream
        return;
      }
      got.push(stream.open(m));
    });
    ws.on("error", () => {});
    await once(ws, "open");
    ws.send(peer.hello);
    const [code] = (await once(ws, "close")) as [number];
    const body = Buffer.concat(got);
    assert.deepEqual(
      target.requests,
      [3200],
      `the target got the request and its end; server log: ${JSON.stringify(d.logs)}`,
    );
    assert.equal(body.length, reply.length, "the whole reply arrived after the client's Close");
    assert.equal(sha(body), sha(reply));
    assert.equal(code, 1000, "the server answered the Close once the target had finished");
    const line = await d.waitForLog(isEnd);
    assert.equal(line.msg, "connection closed", JSON.stringify(line));
    assert.deepEqual(warnings(d), []);
  });

  test("our client and our server: the reply to a half-closed request arrives, both ends close cleanly", async () => {
    const reply = pattern(200_000);
    // The target answers 1.5 s after the request's end: longer than a client waits for a server that
    // does not honour half-closes, so this shows the client knows ours does.
    const target = await replyAfterEnd(reply, 1500);
    const d = await startEnd([
      "-d",
      "-w",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "monopiped1",
    ]);
    const c = await startEnd([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      `ws://127.0.0.1:${d.port}/`,
      "-k",
      key,
      "--protocol",
      "monopiped1",
    ]);
    const r = await app(c.port, ["--send", "5000", "--then", "shut", "--timeout", "15"]);
    assert.equal(r.end, "eof", JSON.stringify(r));
    assert.equal(r.received, reply.length);
    assert.equal(r.sha256, sha(reply));
    assert.deepEqual(target.requests, [5000]);
    for (const e of [c, d]) {
      const line = await e.waitForLog(isEnd);
      assert.equal(line.msg, "connection closed", JSON.stringify(line));
      assert.deepEqual(warnings(e), []);
    }
  });

  test("after a client's Close, a server end whose target neither answers nor ends answers the Close after 10 s", async () => {
    const hold = net.createServer((t) => {
      cleanups.push(() => t.destroy());
      t.on("error", () => {});
    });
    cleanups.push(() => hold.close());
    await new Promise<void>((r) => hold.listen(0, "127.0.0.1", r));
    const d = await startEnd([
      "-d",
      "-w",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${(hold.address() as net.AddressInfo).port}`,
      "-k",
      key,
      "--protocol",
      "monopiped1",
    ]);
    const ws = new WebSocket(`ws://127.0.0.1:${d.port}/`, { perMessageDeflate: false });
    cleanups.push(() => ws.terminate());
    const peer = v1Peer("client", monopiped1Keys(readFileSync(key)));
    let closedAt = 0;
    ws.on("message", (m: Buffer) => {
      if (closedAt) return;
      for (const f of peer.finish(m).seal(Buffer.from("request\n"))) ws.send(f);
      ws.close();
      closedAt = Date.now();
    });
    ws.on("error", () => {});
    await once(ws, "open");
    ws.send(peer.hello);
    const [code] = (await once(ws, "close")) as [number];
    const waited = Date.now() - closedAt;
    assert.ok(closedAt > 0);
    assert.equal(code, 1000);
    assert.ok(waited >= 9000 && waited < 20_000, `answered after ${waited} ms (10 s expected)`);
    const line = await d.waitForLog(isEnd);
    assert.match(String(line.reason), /sent nothing for 10 s/);
  });
});
