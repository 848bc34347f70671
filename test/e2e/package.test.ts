/**
 * The package as a user gets it: a copy of the checkout without dist/ (as a fresh clone is) is
 * packed with `npm pack` (its prepack script builds), the tarball is installed with
 * `npm install -g --prefix --offline` (dependencies from npm's cache, where `npm ci` left them), and
 * the installed `monopiped` command runs: --version, keygen, bench --help, and a tunnel end to end.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { cpSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync } from "node:fs";
import { delimiter, dirname, join, relative, sep } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import "../helpers/stop-all.js";
import { type Proc, spawnProc } from "../../bench/procs.js";
import { connect, echoHandler, listen, receiveAll, tempDir } from "../helpers/net.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
/** Commands run with the Node that runs the tests first on PATH (the installed bin's `env node`). */
const env = { ...process.env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ""}` };
/** What a fresh clone does not have. */
const NOT_IN_A_CLONE = new Set(["node_modules", "dist", ".git", "bench-profiles"]);

let dir: string;
let clone: string;
let bin: string;
let packed: { filename: string; size: number; unpackedSize: number; files: { path: string }[] };
let beforeBuild: ReturnType<typeof spawnSync>;

function run(cmd: string, args: string[], cwd = dir) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: "utf8", timeout: 240_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

before(
  () => {
    dir = tempDir("monopiped-package-");
    clone = join(dir, "clone");
    cpSync(ROOT, clone, {
      recursive: true,
      filter: (src) => {
        const rel = relative(ROOT, src);
        const top = rel.split(sep)[0];
        return !NOT_IN_A_CLONE.has(top) && !/^bench-results.*\.json$|\.tgz$|\.cpuprofile$/.test(top);
      },
    });
    symlinkSync(realpathSync(join(ROOT, "node_modules")), join(clone, "node_modules"));
    beforeBuild = spawnSync(process.execPath, [join(clone, "bin/monopiped.js"), "--version"], {
      encoding: "utf8",
      timeout: 20_000,
    });

    const pack = run("npm", ["pack", "--json", "--pack-destination", dir], clone);
    assert.equal(pack.code, 0, `npm pack failed:\n${pack.err}`);
    const jsonStart = pack.out.indexOf("[\n");
    packed = (JSON.parse(pack.out.slice(jsonStart)) as (typeof packed)[])[0];
    const install = run("npm", [
      "install",
      "--global",
      "--prefix",
      join(dir, "prefix"),
      "--offline",
      "--no-audit",
      "--no-fund",
      join(dir, packed.filename),
    ]);
    assert.equal(install.code, 0, `npm install -g of the tarball failed:\n${install.err}`);
    bin = join(dir, "prefix", "bin", "monopiped");
  },
  { timeout: 300_000 },
);
after(() => rmSync(dir, { recursive: true, force: true }));

/** Start the installed command (its listen address uses port 0) and wait for its ready line. */
async function startInstalled(args: string[]): Promise<{ proc: Proc; address: string }> {
  let address = "";
  let ready: () => void = () => {};
  const seen = new Promise<void>((resolve) => {
    ready = resolve;
  });
  const proc = spawnProc(`monopiped ${args[0]}`, bin, [...args, "--log-format", "json"], {
    env,
    watch: (line) => {
      const m = /"listen":"([^"]+)"/.exec(line);
      if (!m) return false;
      address = m[1];
      ready();
      return true;
    },
  });
  await Promise.race([
    seen,
    proc.exited.then((code) => {
      throw new Error(`${proc.name} exited with ${code} before listening: ${proc.tail()}`);
    }),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${proc.name}: no ready line`)), 20_000)),
  ]);
  return { proc, address };
}

describe("npm pack and npm install -g of the package", () => {
  it("a checkout that is not built says so in one line, without a stack trace", () => {
    assert.equal(beforeBuild.status, 1);
    const err = String(beforeBuild.stderr);
    assert.match(err, /^monopiped: not built yet: run `npm run build` in .+ first\n$/);
  });

  it("the tarball holds the built command, the bench, the docs and the licence, and no sources or tests", () => {
    const files = packed.files.map((f) => f.path);
    for (const f of [
      "bin/monopiped.js",
      "dist/src/main.js",
      "dist/src/tunnel.js",
      "dist/bench/bench.js",
      "LICENSE",
      "README.md",
      "package.json",
    ])
      assert.ok(files.includes(f), `${f} in the tarball: ${files.join(" ")}`);
    assert.deepEqual(
      files.filter(
        (f) => f.startsWith("src/") || f.includes("test/") || f.endsWith(".ts") || f.endsWith(".map"),
      ),
      [],
    );
    assert.match(
      readFileSync(join(ROOT, "LICENSE"), "utf8"),
      /BSD 2-Clause[\s\S]*Copyright \(c\) 2026 the monopiped authors/,
    );
  });

  it("the installed monopiped prints its version, help, and the bench's help", () => {
    const v = run(bin, ["--version"]);
    assert.equal(v.code, 0, v.err);
    assert.equal(v.out.trim(), `monopiped ${version}`);
    const help = run(bin, ["--help"]);
    assert.equal(help.code, 0, help.err);
    assert.match(help.out, /monopiped bench/);
    const bench = run(bin, ["bench", "--help"]);
    assert.equal(bench.code, 0, bench.err);
    assert.match(bench.out, /^Usage: monopiped bench/);
  });

  it("the installed monopiped makes a key and runs a tunnel (-e and -d) that carries bytes both ways", async () => {
    const key = join(dir, "key.bin");
    const kg = run(bin, ["keygen", key]);
    assert.equal(kg.code, 0, kg.err);
    assert.equal(statSync(key).size, 32);
    assert.equal(statSync(key).mode & 0o777, 0o600);

    const target = await listen(echoHandler);
    try {
      const d = await startInstalled([
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        key,
      ]);
      const e = await startInstalled(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key]);
      // The V8 flags on the command's first line reach the installed command's Node.
      const cmdline = readFileSync(`/proc/${d.proc.pid}/cmdline`, "utf8").split("\0");
      assert.ok(cmdline.includes("--max-semi-space-size=1"), cmdline.join(" "));
      assert.ok(cmdline.includes("--optimize-for-size"), cmdline.join(" "));

      const data = randomBytes(256 * 1024);
      const sock = await connect(Number(e.address.slice(e.address.lastIndexOf(":") + 1)));
      const got = receiveAll(sock);
      sock.end(data);
      const r = await got;
      assert.equal(r.bytes, data.length);
      assert.equal(r.how, "end");
      assert.equal(r.hash, createHash("sha256").update(data).digest("hex"));
      await Promise.all([e.proc.stop(), d.proc.stop()]);
    } finally {
      await target.close();
    }
  });
});
