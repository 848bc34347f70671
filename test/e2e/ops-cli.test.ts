/**
 * The operations flags on the command line: usage errors (exit 2, naming the flag), and start-up
 * failures (exit 1, saying why) for --metrics and --workers. Every case runs the built CLI.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { CLI_PATH, RUNTIME_FLAGS } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";

const fleet = new Fleet();
after(() => fleet.cleanup());

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [...RUNTIME_FLAGS, CLI_PATH, ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  return { code: r.status, err: r.stderr };
}

const BASE = ["-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k"];

describe("operations flags", () => {
  const cases: [string, string[], RegExp][] = [
    [
      "--workers 0",
      ["-d", ...BASE, "k", "--workers", "0"],
      /--workers 0: expected a whole number 1-256 or auto/,
    ],
    ["--workers two", ["-d", ...BASE, "k", "--workers", "two"], /--workers two: expected/],
    ["--workers 1.5", ["-d", ...BASE, "k", "--workers", "1.5"], /--workers 1\.5: expected/],
    ["--metrics no port", ["-d", ...BASE, "k", "--metrics", "127.0.0.1"], /--metrics: .*missing port/],
    [
      "--proxy-protocol on -e",
      ["-e", ...BASE, "k", "--proxy-protocol"],
      /--proxy-protocol applies to a -d server/,
    ],
    ["--proxy-protocol with -w", ["-d", "-w", ...BASE, "k", "--proxy-protocol"], /-w --trust-proxy/],
    ["-k - twice", ["-d", ...BASE, "-", "-k", "-", "--workers", "1"], /standard input can give one key only/],
    [
      "--workers for pipe",
      ["pipe", "-t", "127.0.0.1:9", "-k", "k", "--workers", "2"],
      /--workers does not apply/,
    ],
  ];
  for (const [name, args, message] of cases) {
    it(`${name}: exit 2 with a message`, () => {
      const r = cli(...args);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, message);
    });
  }

  it("--metrics on an address in use: exit 1, saying so", async () => {
    const busy = await fleet.server(() => {});
    const r = cli("-d", ...BASE, fleet.key, "--metrics", `127.0.0.1:${busy.port}`);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, new RegExp(`--metrics 127\\.0\\.0\\.1:${busy.port}: address in use`));
  });

  it("--workers 2 on a listen address in use: the workers fail, the whole process exits 1", async () => {
    const busy = await fleet.server(() => {});
    const r = cli(
      "-d",
      "-l",
      `127.0.0.1:${busy.port}`,
      "-t",
      "127.0.0.1:9",
      "-k",
      fleet.key,
      "--workers",
      "2",
    );
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /cannot listen on .*address already in use/);
    assert.match(r.err, /before it listened/);
  });
});
