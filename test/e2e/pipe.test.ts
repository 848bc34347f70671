/**
 * `monopiped pipe` (spiped's spipe): the client end of one connection on standard input/output,
 * spawned as a real process against a real server end and a loopback target.
 */
import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { CLI_PATH, type LogLine, RUNTIME_FLAGS, type RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler, type TestServer } from "../helpers/net.js";
import { runPipe } from "../helpers/pipe.js";
import { appServe, patternBytes } from "../helpers/pyapp.js";

const MiB = 1024 * 1024;
const fleet = new Fleet();
const children = new Set<ChildProcessWithoutNullStreams>();
after(async () => {
  for (const c of children) c.kill("SIGKILL");
  await fleet.cleanup();
});

/** `monopiped pipe ARGS` with its stdin, stdout and stderr in the test's hands. */
function spawnPipe(args: string[]) {
  const child = spawn(process.execPath, [...RUNTIME_FLAGS, CLI_PATH, "pipe", ...args], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  children.add(child);
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdin.on("error", () => {});
  child.stdout.on("error", () => {});
  const exited = new Promise<{ code: number | null; signal: string | null; stderr: string }>((resolve) =>
    child.once("exit", (code, signal) => {
      children.delete(child);
      // stderr may still hold a line or two after the exit event
      setImmediate(() => resolve({ code, signal, stderr }));
    }),
  );
  return { child, exited };
}

/** The first bytes on a child's stdout (the connection is established and flowing). */
function firstOutput(child: ChildProcessWithoutNullStreams): Promise<Buffer> {
  return new Promise((resolve) => child.stdout.once("data", (d: Buffer) => resolve(d)));
}

const warnings = (logs: LogLine[]) => logs.filter((l) => l.level >= 40).map((l) => l.msg);

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("monopiped pipe", () => {
  let server: RunningEnd;
  let echoTarget: TestServer;
  before(async () => {
    echoTarget = await fleet.server(echoHandler);
    server = await fleet.end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${echoTarget.port}`,
      "-k",
      fleet.key,
      "--protocol",
      "auto",
    ]);
  });

  it("carries stdin through the tunnel and the reply to stdout, then exits 0", async () => {
    const data = randomBytes(8 * MiB);
    const r = await runPipe(["-t", server.address, "-k", fleet.key], data);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.length, data.length);
    assert.equal(sha(r.stdout), sha(data));
    assert.equal(r.stderr, "", "quiet by default");
  });

  it("end of stdin is a half-close: a target that answers only after its input ended still gets through", async () => {
    // The target reads to end of stream, then answers with the digest of what it got and closes.
    const digestTarget = await fleet.server((s) => {
      const h = createHash("sha256");
      s.on("data", (d) => h.update(d));
      s.on("end", () => s.end(`${h.digest("hex")}\n`));
    });
    const d = await fleet.end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${digestTarget.port}`,
      "-k",
      fleet.key,
    ]);
    const data = randomBytes(3 * MiB + 17);
    const r = await runPipe(["-t", d.address, "-k", fleet.key, "--protocol", "monopiped2"], data);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), `${sha(data)}\n`);
  });

  it("also speaks monopiped1 (the original protocol) to an auto-detecting server", async () => {
    const data = randomBytes(MiB + 5);
    const r = await runPipe(["-t", server.address, "-k", fleet.key, "--protocol", "v1"], data);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha(r.stdout), sha(data));
  });

  it("a server end that is not there: exit 1, and stderr names the refused address", async () => {
    const gone = await fleet.server(() => {});
    const port = gone.port;
    await gone.close();
    const r = await runPipe(["-t", `127.0.0.1:${port}`, "-k", fleet.key], Buffer.from("hello"));
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port} refused the connection`));
    assert.equal(r.stdout.length, 0);
  });

  it("a wrong key: exit 1, stderr says the handshake failed, nothing reaches stdout", async () => {
    const wrong = join(fleet.dir, "wrong.bin");
    writeFileSync(wrong, randomBytes(32), { mode: 0o600 });
    const r = await runPipe(["-t", server.address, "-k", wrong, "-o", "2"], Buffer.from("secret"));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /handshake failed/);
    assert.equal(r.stdout.length, 0);
  });

  it("flags of a listening end are usage errors (exit 2) that name the flag", async () => {
    for (const [flag, value] of [
      ["-l", "127.0.0.1:1"],
      ["-d", undefined],
      ["-n", "5"],
      ["-w", undefined],
    ] as const) {
      const args = ["-t", "127.0.0.1:1", "-k", fleet.key, flag];
      if (value !== undefined) args.push(value);
      const r = await runPipe(args, Buffer.alloc(0));
      assert.equal(r.code, 2, `${flag}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`${flag}/--[a-z-]+ does not apply to monopiped pipe`));
    }
    const r = await runPipe(["-t", "127.0.0.1:1", "-k", "-"], Buffer.alloc(0));
    assert.equal(r.code, 2);
    assert.match(r.stderr, /standard input carries the data/);
  });

  describe("when the application goes away (ssh's SIGHUP, SIGTERM, stdout closed)", () => {
    /** A server end in front of app.py serving one connection (the verdict on how it ended). */
    const serveApp = async (appOptions: string[]) => {
      const app = await appServe(appOptions);
      const d = await fleet.end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${app.port}`, "-k", fleet.key]);
      const closed = () => d.waitForLog((l) => /^connection (closed|ended|failed)/.test(l.msg), 15_000);
      return { app, d, closed };
    };

    it("SIGHUP after stdin ended and stdout closed (as ssh exits): everything is delivered, the server logs a clean close, exit 0", async () => {
      const { app, d, closed } = await serveApp(["--send", "1000"]);
      const p = spawnPipe(["-t", d.address, "-k", fleet.key]);
      await firstOutput(p.child);
      const data = randomBytes(200_000);
      // ssh's order: it closes both pipes, then sends SIGHUP to its ProxyCommand.
      p.child.stdin.end(data);
      p.child.stdout.destroy();
      p.child.kill("SIGHUP");
      const r = await p.exited;
      assert.equal(r.code, 0, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.equal(r.stderr, "");
      const verdict = await app.result;
      assert.equal(verdict.end, "eof", JSON.stringify(verdict));
      assert.equal(verdict.received, data.length);
      assert.equal(verdict.sha256, sha(data));
      const line = await closed();
      assert.equal(line.msg, "connection closed");
      assert.equal(line.level, 30);
      assert.deepEqual(warnings(d.logs), []);
    });

    it("stdout closed by its reader after stdin ended: no abort follows the end of stream; clean close, exit 0", async () => {
      // The target answers with 4 MiB: far more than the pipe to a reader that has gone holds.
      const { app, d, closed } = await serveApp(["--send", String(4 * MiB)]);
      const p = spawnPipe(["-t", d.address, "-k", fleet.key]);
      p.child.stdout.destroy();
      p.child.stdin.end("bye");
      const r = await p.exited;
      assert.equal(r.code, 0, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      const verdict = await app.result;
      assert.equal(verdict.end, "eof", JSON.stringify(verdict));
      assert.equal(verdict.received, 3);
      const line = await closed();
      assert.equal(line.msg, "connection closed");
      assert.deepEqual(warnings(d.logs), []);
    });

    it("SIGTERM while stdin is still open: the connection is aborted (the target sees a reset), exit 1 with the reason", async () => {
      const { app, d, closed } = await serveApp(["--send", "10"]);
      const p = spawnPipe(["-t", d.address, "-k", fleet.key]);
      const first = await firstOutput(p.child);
      assert.deepEqual(first, patternBytes(10));
      p.child.stdin.write("partial");
      const t0 = Date.now();
      p.child.kill("SIGTERM");
      const r = await p.exited;
      assert.equal(r.code, 1, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.match(r.stderr, /SIGTERM before the end of standard input/);
      assert.ok(Date.now() - t0 < 10_000, "ends within its bound");
      const verdict = await app.result;
      assert.equal(verdict.end, "reset", JSON.stringify(verdict));
      const line = await closed();
      assert.match(line.msg, /peer aborted/);
      p.child.stdin.destroy();
    });

    it("SIGHUP before the connection is made: exit 1 at once", async () => {
      let connected = () => {};
      const dialled = new Promise<void>((r) => (connected = r));
      const silent = await fleet.server(() => connected()); // accepts, never answers the handshake
      const p = spawnPipe(["-t", `127.0.0.1:${silent.port}`, "-k", fleet.key, "-o", "30"]);
      await dialled;
      p.child.kill("SIGHUP");
      const r = await p.exited;
      assert.equal(r.code, 1, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.match(r.stderr, /SIGHUP before the connection was made/);
    });
  });
});
