/**
 * `monopiped pipe` (spiped's spipe): the client end of one connection on standard input/output,
 * spawned as a real process against a real server end and a loopback target.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import type { RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";
import { echoHandler, type TestServer } from "../helpers/net.js";
import { runPipe } from "../helpers/pipe.js";

const MiB = 1024 * 1024;
const fleet = new Fleet();
after(() => fleet.cleanup());

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
});
