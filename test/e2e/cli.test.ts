/**
 * The command line as a user meets it: usage errors, key files, keygen, help, version, and a
 * graceful stop on SIGTERM. The cases run the built CLI as a real process (the usage errors' many
 * messages are checked in this process, and a sample of them through the command).
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { parseRunArgs, UsageError } from "../../src/cli.js";
import { CLI_PATH, RUNTIME_FLAGS, startEnd } from "../../src/harness.js";
import {
  connect,
  echoHandler,
  keyFile,
  listen,
  receiveAll,
  type TestServer,
  tempDir,
} from "../helpers/net.js";

let dir: string;
let key: string;
before(() => {
  dir = tempDir();
  key = keyFile(dir);
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** A usage error's message as the command prints it, found in this process. */
function usageError(args: string[]): string {
  try {
    if (args[0] === "pipe") parseRunArgs(args.slice(1), "pipe");
    else parseRunArgs(args);
  } catch (err) {
    if (err instanceof UsageError) return err.message;
    throw err;
  }
  return "(no usage error)";
}

function cliAsync(args: string[]): Promise<{ code: number | null; err: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI_PATH, ...args], { timeout: 60_000 }, (_e, _out, err) =>
      resolve({ code: child.exitCode, err: String(err) }),
    );
  });
}

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI_PATH, ...args], { encoding: "utf8", timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe("usage errors exit 2 and name the flag", () => {
  const cases: [string, string[], RegExp][] = [
    ["no -e/-d", ["-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k"], /-e\/--encrypt.*-d\/--decrypt/],
    ["-e and -d", ["-e", "-d", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k"], /contradict/],
    ["missing -l", ["-e", "-t", "127.0.0.1:2", "-k", "k"], /missing -l\/--listen/],
    ["missing -t", ["-e", "-l", "127.0.0.1:1", "-k", "k"], /missing -t\/--target/],
    ["missing -k", ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2"], /missing -k\/--key/],
    ["unknown option", ["-e", "--frobnicate"], /unknown option --frobnicate/],
    [
      "bad port",
      ["-e", "-l", "127.0.0.1:99999", "-t", "127.0.0.1:2", "-k", "k"],
      /-l\/--listen: .*port 99999/,
    ],
    ["no port", ["-e", "-l", "127.0.0.1:1", "-t", "example.com", "-k", "k"], /-t\/--target: .*missing port/],
    ["bare IPv6", ["-e", "-l", "::1:80", "-t", "127.0.0.1:2", "-k", "k"], /brackets/],
    [
      "-n not a number",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-n", "lots"],
      /-n\/--max-conns lots/,
    ],
    [
      "-o negative",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "--timeout=-3"],
      /-o\/--timeout -3: expected/,
    ],
    [
      "-o negative, as a separate argument",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-o", "-5"],
      /-o\/--timeout -5: expected seconds, a number > 0/,
    ],
    [
      "-n negative",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-n", "-1"],
      /-n\/--max-conns -1: expected a whole number >= 0/,
    ],
    [
      "--grace negative",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "--grace", "-2"],
      /--grace -2: expected seconds >= 0/,
    ],
    [
      "--ping-interval negative",
      ["-e", "-l", "127.0.0.1:1", "-t", "ws://127.0.0.1:2/", "-k", "k", "--ping-interval", "-.5"],
      /--ping-interval -\.5: expected seconds >= 0/,
    ],
    [
      "-r negative",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-r", "-1"],
      /-r\/--resolve-interval -1: expected seconds >= 0/,
    ],
    [
      "a value that starts with - but is not a number still needs =",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "-x"],
      /option -k needs a value.*--key=VALUE/,
    ],
    [
      "-b with a name",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-b", "example.com"],
      /-b\/--bind example\.com: expected an IP address/,
    ],
    [
      "-b with a port",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-b", "[127.0.0.1]:4000"],
      /-b\/--bind \[127\.0\.0\.1\]:4000: a fixed local port is not supported/,
    ],
    [
      "unclosed IPv6 bracket",
      ["-e", "-l", "[::1", "-t", "127.0.0.1:2", "-k", "k"],
      /-l\/--listen: \[::1: missing "\]" after the IPv6 address \(write \[ipv6\]:port\)/,
    ],
    [
      "twice",
      ["-e", "-l", "127.0.0.1:1", "-l", "127.0.0.1:3", "-t", "127.0.0.1:2", "-k", "k"],
      /-l given more than once/,
    ],
    [
      "-l and -s",
      ["-e", "-l", "127.0.0.1:1", "-s", "127.0.0.1:3", "-t", "127.0.0.1:2", "-k", "k"],
      /-l\/--listen and -s\/--source/,
    ],
    [
      "--daemon and -F",
      ["-d", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "--daemon", "-F"],
      /--daemon and -F\/--foreground contradict/,
    ],
    [
      "-D for pipe",
      ["pipe", "-t", "127.0.0.1:2", "-k", "k", "-D"],
      /-D\/--wait-dns does not apply to monopiped pipe/,
    ],
    [
      "-R with -r",
      ["-d", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-R", "-r", "5"],
      /-R\/--no-resolve and -r\/--resolve-interval contradict/,
    ],
    [
      "-u malformed",
      ["-d", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-u", "a:b:c"],
      /-u\/--user "a:b:c": expected USER/,
    ],
    [
      "-d with ws target",
      ["-d", "-l", "127.0.0.1:1", "-t", "ws://example.com/x", "-k", "k"],
      /ws:\/\/ or wss:\/\/ target needs -e/,
    ],
    [
      "-e with -w",
      ["-e", "-w", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k"],
      /-w\/--ws applies to -d/,
    ],
    [
      "bad protocol",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "--protocol", "v9"],
      /--protocol v9/,
    ],
    ["value missing", ["-e", "-l"], /-l.*needs a value/],
    [
      "-f and -g",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "--protocol", "spiped", "-f", "-g"],
      /-f\/--no-pfs and -g\/--require-pfs contradict/,
    ],
    [
      "-f without spiped",
      ["-e", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-f"],
      /-f\/--no-pfs applies to --protocol spiped only/,
    ],
    [
      "-g with the auto server",
      ["-d", "-l", "127.0.0.1:1", "-t", "127.0.0.1:2", "-k", "k", "-g"],
      /-g\/--require-pfs applies to --protocol spiped only/,
    ],
  ];
  // Each case's message is checked in this process (a process per case took over a minute on a
  // loaded machine); the command itself is run, all at once, for a sample that covers each path.
  for (const [name, args, pattern] of cases) it(name, () => assert.match(usageError(args), pattern));
  const sample = new Set([
    "no -e/-d",
    "unknown option",
    "-n negative",
    "-o negative, as a separate argument",
    "unclosed IPv6 bracket",
    "value missing",
    "-D for pipe",
    "-u malformed",
  ]);
  it(`the command exits 2 with the message and a pointer to --help (${sample.size} of them, at once)`, async () => {
    const picked = cases.filter(([name]) => sample.has(name));
    const results = await Promise.all(picked.map(([, args]) => cliAsync(args)));
    picked.forEach(([name, , pattern], i) => {
      const r = results[i];
      assert.equal(r.code, 2, `${name}: ${r.err}`);
      assert.match(r.err, pattern, name);
      assert.match(r.err, /Try 'monopiped --help'/, name);
      assert.equal(r.err.trimEnd().split("\n").length, 2, `${name}: one line and the pointer`);
    });
  });
});

describe("key files", () => {
  const run = (k: string) =>
    cli("-e", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", k, "--log-level", "silent");
  it("a missing key file exits 1 with its name", () => {
    const r = run(join(dir, "nope.bin"));
    assert.equal(r.code, 1);
    assert.match(r.err, /key file .*nope\.bin does not exist/);
  });
  it("an empty key file exits 1", () => {
    const p = join(dir, "empty.bin");
    writeFileSync(p, "", { mode: 0o600 });
    const r = run(p);
    assert.equal(r.code, 1);
    assert.match(r.err, /empty\.bin is empty/);
  });
  it("a key file shorter than 32 bytes is refused", () => {
    const p = join(dir, "short.bin");
    writeFileSync(p, "secret", { mode: 0o600 });
    const r = run(p);
    assert.equal(r.code, 1);
    assert.match(r.err, /only 6 bytes; at least 32/);
  });
  it("a key file that cannot be read (a directory) exits 1", () => {
    const r = run(dir);
    assert.equal(r.code, 1);
    assert.match(r.err, /is a directory/);
  });
  it("a key file readable by others gets a warning", async () => {
    const p = join(dir, "open.bin");
    writeFileSync(p, Buffer.alloc(32, 1));
    chmodSync(p, 0o644);
    const e = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", p]);
    try {
      const w = await e.waitForLog((l) => /readable by others/.test(l.msg));
      assert.equal(w.level, 40);
      assert.match(w.msg, /chmod 600/);
    } finally {
      await e.stop();
    }
  });
});

describe("key files that are not regular files, or too large", () => {
  const run = (k: string) =>
    cli("-e", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", k, "--log-level", "silent");
  it("-k /dev/urandom exits 1 at once, naming the file (it used to be read forever)", () => {
    const r = run("/dev/urandom");
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /key file \/dev\/urandom is a character device; a key file must be a regular file/);
  });
  it("-k FIFO exits 1 at once instead of waiting for a writer", () => {
    const fifo = join(dir, "key.fifo");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    const r = run(fifo);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /key\.fifo is a named pipe \(FIFO\)/);
  });
  it("a key file over 1 MiB exits 1", () => {
    const p = join(dir, "huge.bin");
    writeFileSync(p, Buffer.alloc(2 * 1024 * 1024, 7), { mode: 0o600 });
    const r = run(p);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /huge\.bin has 2097152 bytes, more than the 1048576 \(1 MiB\)/);
  });
  it("a passphrase is accepted with a warning", async () => {
    const p = join(dir, "phrase.txt");
    writeFileSync(p, "this is my secret tunnel passphrase\n", { mode: 0o600 });
    const e = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", p]);
    try {
      const w = await e.waitForLog((l) => /looks like a passphrase/.test(l.msg));
      assert.equal(w.level, 40);
      assert.match(w.msg, /phrase\.txt .*monopiped keygen/);
    } finally {
      await e.stop();
    }
  });
});

describe("first use", () => {
  for (const args of [[], ["pipe"]]) {
    it(`monopiped ${args.join(" ")} with no arguments: a short usage on stderr pointing at --help, exit 2`, () => {
      const r = cli(...args);
      assert.equal(r.code, 2);
      assert.equal(r.out, "");
      const lines = r.err.trimEnd().split("\n");
      assert.ok(lines.length >= 2 && lines.length <= 6, r.err);
      assert.match(r.err, /^Usage: monopiped /);
      assert.match(r.err, /-t ADDR/);
      assert.match(r.err, /--help/);
    });
  }
});

describe("pidfile", () => {
  it("an unwritable -p exits 1 with one line naming it, before binding (no stack trace)", async () => {
    // A free port, so that we can tell whether the failed start bound it.
    const probe = await listen(echoHandler);
    const port = probe.port;
    await probe.close();
    const pidfile = join(dir, "no-such-dir", "end.pid");
    const r = cli("-d", "-l", `127.0.0.1:${port}`, "-t", "127.0.0.1:9", "-k", key, "-p", pidfile);
    assert.equal(r.code, 1);
    assert.equal(r.err.trimEnd().split("\n").length, 1, r.err);
    assert.match(
      r.err,
      /^monopiped: -p\/--pidfile .*no-such-dir\/end\.pid: cannot write it: its directory does not exist\n$/,
    );
    assert.doesNotMatch(r.err, /\n\s+at |internal error|listening/);
    await assert.rejects(connect(port), /ECONNREFUSED/, "nothing left listening");
  });
});

describe("listen addresses", () => {
  it("a Unix socket in a directory that does not exist says so (it said 'permission denied')", () => {
    const sock = join(dir, "no-such-dir", "end.sock");
    const r = cli("-e", "-l", sock, "-t", "127.0.0.1:9", "-k", key);
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /cannot listen on .*no-such-dir\/end\.sock: the directory .*no-such-dir does not exist/,
    );
    assert.doesNotMatch(r.err, /permission denied/);
  });
});

describe("keygen", () => {
  it("writes 32 random bytes with mode 0600 and refuses to overwrite without --force", () => {
    const p = join(dir, "new.bin");
    assert.equal(cli("keygen", p).code, 0);
    const first = readFileSync(p);
    assert.equal(first.length, 32);
    assert.equal(statSync(p).mode & 0o777, 0o600);
    const again = cli("keygen", p);
    assert.equal(again.code, 1);
    assert.match(again.err, /already exists.*--force/);
    assert.ok(readFileSync(p).equals(first), "left untouched");
    chmodSync(p, 0o644);
    assert.equal(cli("keygen", p, "--force").code, 0);
    assert.ok(!readFileSync(p).equals(first), "replaced with --force");
    assert.equal(statSync(p).mode & 0o777, 0o600);
  });
  it("needs a file name", () => {
    const r = cli("keygen");
    assert.equal(r.code, 2);
    assert.match(r.err, /keygen needs exactly one FILE/);
  });
});

describe("help and version", () => {
  it("--help teaches the flags and shows the SSH example", () => {
    const r = cli("--help");
    assert.equal(r.code, 0);
    for (const s of [
      "--daemon",
      "-D, --wait-dns",
      "--syslog",
      "-e, --encrypt",
      "-d, --decrypt",
      "-l, --listen",
      "-t, --target",
      "-k, --key",
      "-n, --max-conns",
      "-o, --timeout",
      "keygen",
    ]) {
      assert.ok(r.out.includes(s), `help mentions ${s}`);
    }
    assert.match(r.out, /monopiped -l 127\.0\.0\.1:3000 -t server\.example\.com:2222 -e -k key\.bin/);
    assert.match(r.out, /ssh -p3000 127\.0\.0\.1/);
  });
  it("--version and -v print the version", () => {
    const { version } = JSON.parse(readFileSync(join(CLI_PATH, "../../../package.json"), "utf8"));
    assert.equal(cli("--version").out.trim(), `monopiped ${version}`);
    assert.equal(cli("-v").out.trim(), `monopiped ${version}`);
  });
  it("the installed command (bin/monopiped.js, reached through a symlink as npm links it) runs with RUNTIME_FLAGS", () => {
    const bin = join(CLI_PATH, "../../../bin/monopiped.js");
    for (const flag of RUNTIME_FLAGS)
      assert.ok(readFileSync(bin, "utf8").includes(flag), `bin/monopiped.js has ${flag}`);
    const link = join(dir, "monopiped");
    symlinkSync(bin, link);
    const r = spawnSync(link, ["--version"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^monopiped \d+\.\d+\.\d+/);
    const usage = spawnSync(link, ["pipe", "-l", "x"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(usage.status, 2, "arguments and the exit status pass through the wrapper");
  });
  it("pipe --help teaches spipe-style use", () => {
    const r = cli("pipe", "--help");
    assert.equal(r.code, 0);
    assert.match(r.out, /ProxyCommand='monopiped pipe -t server\.example\.com:2222 -k key\.bin'/);
    assert.match(r.out, /standard input/);
  });
});

describe("spiped's -u (run as another user after binding) and -r/-R", () => {
  it("-u nobody: serves as uid 65534 when started as root, and refuses clearly otherwise", async () => {
    const target = await listen(echoHandler);
    try {
      const args = ["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "-k", key, "-u", "nobody"];
      if (process.getuid?.() !== 0) {
        const r = cli(...args);
        assert.equal(r.code, 1);
        assert.match(r.err, /-u: cannot switch .*permission denied/);
        return;
      }
      const d = await startEnd([...args, "-r", "30"]);
      try {
        const status = readFileSync(`/proc/${d.child.pid}/status`, "utf8");
        assert.match(status, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
        assert.match(status, /^Gid:\s+65534\s/m);
        assert.ok(d.logs.some((l) => l.msg === "dropped privileges (-u)"));
        const e = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", d.address, "-k", key]);
        try {
          const sock = await connect(e.port);
          sock.end("still serving");
          assert.equal((await receiveAll(sock)).bytes, "still serving".length);
        } finally {
          await e.stop();
        }
      } finally {
        await d.stop();
      }
    } finally {
      await target.close();
    }
  });
  it("-b as spiped writes it ([127.0.0.3]:0, or the address alone): outgoing connections leave from it", async () => {
    const target = await listen((s) => {
      s.end(s.remoteAddress ?? "");
    });
    try {
      const d = await startEnd([
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        key,
        "-b",
        "127.0.0.2",
      ]);
      const e = await startEnd([
        "-e",
        "-l",
        "127.0.0.1:0",
        "-t",
        d.address,
        "-k",
        key,
        "-b",
        "[127.0.0.3]:0",
      ]);
      try {
        const sock = await connect(e.port);
        const chunks: Buffer[] = [];
        sock.on("data", (c) => chunks.push(c));
        sock.end();
        await new Promise((r) => sock.once("close", r));
        assert.equal(Buffer.concat(chunks).toString(), "127.0.0.2", "the -d end's -b");
        const opened = await d.waitForLog((l) => l.msg === "connection opened");
        assert.match(String(opened.peer), /^127\.0\.0\.3:/, "the -e end's -b");
      } finally {
        await e.stop();
        await d.stop();
      }
    } finally {
      await target.close();
    }
  });
  it("-u with a user that does not exist: exit 1 naming it", () => {
    const r = cli("-d", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", key, "-u", "no-such-user-here");
    assert.equal(r.code, 1);
    assert.match(r.err, /-u no-such-user-here: no such user/);
  });
});

describe("signals", () => {
  let target: TestServer;
  before(async () => {
    target = await listen(echoHandler);
  });
  after(() => target.close());

  it("SIGTERM stops accepting, lets an open connection finish, and exits 0", async () => {
    const pidfile = join(dir, "end.pid");
    const d = await startEnd(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "-k", key]);
    const e = await startEnd([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      d.address,
      "-k",
      key,
      "--grace",
      "20",
      "-p",
      pidfile,
    ]);
    try {
      assert.equal(readFileSync(pidfile, "utf8").trim(), String(e.child.pid));
      const app = await connect(e.port);
      app.write("before");
      await new Promise((r) => app.once("data", r));
      e.child.kill("SIGTERM");
      await e.waitForLog((l) => /SIGTERM/.test(l.msg));
      await e.waitForLog((l) => /waiting for open connections/.test(l.msg));
      await assert.rejects(connect(e.port), /ECONNREFUSED/, "no longer accepting");
      // The open connection still carries data both ways, then ends cleanly.
      const rest = receiveAll(app);
      app.end("after");
      const r = await rest;
      assert.equal(r.how, "end");
      assert.equal(r.bytes, "after".length);
      assert.equal(await e.exited, 0);
      assert.equal(existsSync(pidfile), false, "pidfile removed");
    } finally {
      await e.stop();
      await d.stop();
    }
  });
});
