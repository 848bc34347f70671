/**
 * spiped's process flags as monopiped runs them: --daemon (run in the background once listening,
 * with a pidfile), -D (wait for DNS before serving) and --syslog. Every process is stopped by its
 * PID; the DNS test changes /etc/hosts only inside a private mount namespace of its own end.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { CLI_PATH, type LogLine, RUNTIME_FLAGS, startEnd } from "../../src/harness.js";
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
let target: TestServer;
/** Background processes the tests started (by PID), stopped at the end if still running. */
const daemons = new Set<number>();

before(async () => {
  dir = tempDir();
  key = keyFile(dir);
  target = await listen(echoHandler);
});
after(async () => {
  for (const pid of daemons) if (alive(pid)) process.kill(pid, "SIGKILL");
  await target.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A private mount namespace: as root directly, otherwise inside a user namespace of our own. */
const UNSHARE = process.getuid?.() === 0 ? "unshare --mount" : "unshare --user --map-root-user --mount";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  for (const end = Date.now() + timeoutMs; !check(); ) {
    if (Date.now() > end) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A loopback port nobody listens on (just released). */
async function freePort(): Promise<number> {
  const probe = await listen(echoHandler);
  await probe.close();
  return probe.port;
}

function monopiped(args: string[], cwd = dir) {
  const r = spawnSync(process.execPath, [...RUNTIME_FLAGS, CLI_PATH, ...args], {
    encoding: "utf8",
    timeout: 60_000,
    cwd,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Data through a client end to `server` (a monopiped -d) comes back from the echo target. */
async function serves(server: string): Promise<void> {
  const e = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", server, "-k", key]);
  try {
    const sock = await connect(e.port);
    sock.end("through the tunnel");
    const r = await receiveAll(sock);
    assert.equal(r.how, "end");
    assert.equal(r.bytes, "through the tunnel".length);
  } finally {
    await e.stop();
  }
}

describe("--daemon", () => {
  it("returns once the background process listens; the pidfile names it; SIGTERM stops it and removes the pidfile", async () => {
    const port = await freePort();
    const pidfile = join(dir, "server.pid");
    const r = monopiped([
      "-d",
      "-l",
      `127.0.0.1:${port}`,
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--daemon",
      "-p",
      pidfile,
    ]);
    assert.equal(r.code, 0, r.err);
    // Ready means ready: the pidfile is there and the port accepts as soon as the command returned.
    const pid = Number(readFileSync(pidfile, "utf8").trim());
    daemons.add(pid);
    assert.ok(pid > 0 && alive(pid), `pidfile names a running process (${pid})`);
    assert.match(readFileSync(`/proc/${pid}/cmdline`, "utf8"), /main\.js/);
    (await connect(port)).destroy();
    await serves(`127.0.0.1:${port}`);
    process.kill(pid, "SIGTERM");
    await until("the daemon exits", () => !alive(pid));
    assert.equal(existsSync(pidfile), false, "pidfile removed");
    await assert.rejects(connect(port), /ECONNREFUSED/);
  });

  it("without -p the pidfile is the listen address plus .pid, as spiped's", async () => {
    const port = await freePort();
    const listenText = `[127.0.0.1]:${port}`;
    const r = monopiped(["-d", "-s", listenText, "-t", `127.0.0.1:${target.port}`, "-k", key, "--daemon"]);
    assert.equal(r.code, 0, r.err);
    const pidfile = join(dir, `${listenText}.pid`);
    const pid = Number(readFileSync(pidfile, "utf8").trim());
    daemons.add(pid);
    assert.ok(alive(pid));
    process.kill(pid, "SIGTERM");
    await until("the daemon exits", () => !alive(pid));
    assert.equal(existsSync(pidfile), false, "pidfile removed");
  });

  it("a background process that cannot start: exit 1 with its error, nothing left running", async () => {
    const busy = await listen(echoHandler);
    try {
      const pidfile = join(dir, "busy.pid");
      const r = monopiped([
        "-d",
        "-l",
        `127.0.0.1:${busy.port}`,
        "-t",
        `127.0.0.1:${target.port}`,
        "-k",
        key,
        "--daemon",
        "-p",
        pidfile,
      ]);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        new RegExp(`^monopiped: cannot listen on 127\\.0\\.0\\.1:${busy.port}: address already in use\\n$`),
      );
      assert.equal(existsSync(pidfile), false, "no pidfile left");
    } finally {
      await busy.close();
    }
  });

  it("an unwritable default pidfile is one line naming it and -p, exit 1", () => {
    const r = monopiped(["-d", "-l", "127.0.0.1:0", "-t", "127.0.0.1:9", "-k", key, "--daemon"], "/proc");
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /^monopiped: cannot write the pidfile 127\.0\.0\.1:0\.pid \(--daemon's default: .*-p FILE\): /,
    );
    assert.equal(r.err.trimEnd().split("\n").length, 1, r.err);
  });
});

describe("-D: wait for DNS", () => {
  it("serves once the target's name starts to resolve, having logged the failure once", async () => {
    // The end runs in its own mount namespace with a private /etc/hosts that we rewrite.
    const hosts = join(dir, "hosts");
    writeFileSync(hosts, "127.0.0.1 localhost\n");
    const wrapper = join(dir, "node-with-own-hosts");
    writeFileSync(
      wrapper,
      `#!/bin/sh\nexec ${UNSHARE} sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' '${hosts}' '${process.execPath}' "$@"\n`,
    );
    chmodSync(wrapper, 0o755);
    const name = "late-target.monopiped.test";
    const args = [
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `${name}:${target.port}`,
      "-k",
      key,
      "-D",
      "--log-format",
      "json",
    ];
    const child = spawn(wrapper, [...RUNTIME_FLAGS, CLI_PATH, ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    daemons.add(child.pid as number);
    const exited = new Promise((r) => child.once("exit", r));
    const logs: LogLine[] = [];
    let partial = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (t: string) => {
      const lines = (partial + t).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        try {
          logs.push(JSON.parse(line) as LogLine);
        } catch {
          logs.push({ level: 0, msg: line });
        }
      }
    });
    const failures = () => logs.filter((l) => l.msg.startsWith(`-D: cannot resolve ${name}`));
    const listening = () => logs.find((l) => l.msg.startsWith("listening on"));
    try {
      await until("the failed look-up is logged", () => failures().length > 0, 30_000);
      // Several more tries (after 0.5 s and 1 s) while the name still does not resolve.
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(listening(), undefined, "not listening while the target's name does not resolve");
      const resolvableFrom = Date.now();
      writeFileSync(hosts, `127.0.0.1 localhost\n127.0.0.1 ${name}\n`);
      await until("it listens", () => listening() !== undefined, 30_000);
      const ready = listening() as LogLine;
      assert.ok((ready.time as number) >= resolvableFrom - 50, "listens only once the name resolves");
      assert.equal(failures().length, 1, "the failure is logged once, not once per try");
      assert.equal(failures()[0].level, 40);
      assert.match(failures()[0].msg, /-t\/--target.*trying again until it resolves/);
      assert.ok(logs.some((l) => l.msg === `-D: ${name} (-t/--target) resolves now`));
      assert.equal(
        readFileSync("/etc/hosts", "utf8").includes(name),
        false,
        "the machine's /etc/hosts untouched",
      );
      await serves(ready.listen as string);
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  });
});

/**
 * A wrapper that runs its arguments in a private mount namespace whose /dev is a fresh tmpfs with
 * null, zero, random and urandom, and /dev/log a link to `socket` when one is given (none: there
 * is no syslog socket at all). The machine's /dev is untouched.
 */
function withOwnDev(name: string, socket?: string): string {
  const oldDev = join(dir, `${name}-dev`);
  mkdirSync(oldDev);
  const wrapper = join(dir, name);
  const script = [
    "set -e",
    `mount --bind /dev '${oldDev}'`,
    "mount -t tmpfs none /dev",
    `for n in null zero random urandom; do touch /dev/$n; mount --bind '${oldDev}'/$n /dev/$n; done`,
    socket ? `ln -s '${socket}' /dev/log` : "true",
    'exec "$@"',
  ].join("; ");
  writeFileSync(
    wrapper,
    `#!/bin/sh\nexec ${UNSHARE} sh -c '${script.replace(/'/g, "'\\''")}' sh '${process.execPath}' "$@"\n`,
  );
  chmodSync(wrapper, 0o755);
  return wrapper;
}

describe("--syslog", () => {
  it("sends the log to /dev/log, one datagram per line with its priority (daemon facility)", async () => {
    const socket = join(dir, "log.sock");
    const receiver = spawn(
      "python3",
      [
        "-c",
        "import socket,sys,json\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('bound',flush=True)\nwhile True: print(json.dumps(s.recv(65536).decode('utf-8','replace')),flush=True)",
        socket,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let received = "";
    receiver.stdout.setEncoding("utf8");
    receiver.stdout.on("data", (t: string) => {
      received += t;
    });
    const lines = () =>
      received
        .split("\n")
        .slice(1)
        .filter(Boolean)
        .map((l) => JSON.parse(l) as string);
    try {
      await until("the syslog receiver is bound", () => received.startsWith("bound\n"));
      const port = await freePort();
      const pidfile = join(dir, "syslog.pid");
      const wrapper = withOwnDev("node-with-syslog", socket);
      const args = ["-d", "-l", `127.0.0.1:${port}`, "-t", `127.0.0.1:${target.port}`, "-k", key];
      const r = spawnSync(
        wrapper,
        [...RUNTIME_FLAGS, CLI_PATH, ...args, "--syslog", "--daemon", "-p", pidfile],
        {
          encoding: "utf8",
          timeout: 60_000,
        },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, "", "nothing on standard error");
      const pid = Number(readFileSync(pidfile, "utf8").trim());
      daemons.add(pid);
      await until("the listening line reaches syslog", () => lines().some((l) => l.includes("listening on")));
      const listening = lines().find((l) => l.includes("listening on")) as string;
      // <30> = daemon.info; logger stamps the time, our tag and the daemon's PID.
      assert.match(
        listening,
        new RegExp(`^<30>.* monopiped\\[${pid}\\]: INFO listening on 127\\.0\\.0\\.1:${port}, decrypting`),
      );
      await serves(`127.0.0.1:${port}`);
      process.kill(pid, "SIGTERM");
      await until("the daemon exits", () => !alive(pid));
      await until("its last line reaches syslog", () => lines().some((l) => /INFO stopped$/.test(l)));
    } finally {
      receiver.kill("SIGKILL");
    }
  });

  it("with no syslog socket: one line says so, and the log stays on standard error", async () => {
    const wrapper = withOwnDev("node-without-syslog");
    const args = ["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${target.port}`, "--syslog"];
    const r = spawnSync(wrapper, [...RUNTIME_FLAGS, CLI_PATH, ...args, "-k", join(dir, "missing.key")], {
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /^monopiped: --syslog: no syslog socket at \/dev\/log .*; logging to standard error instead\n.*missing\.key does not exist/,
    );
    const d = await startEnd([...args, "-k", key], { nodePath: wrapper });
    try {
      assert.ok(
        d.logs.some((l) => l.msg.startsWith("listening on")),
        "the log is on standard error",
      );
    } finally {
      await d.stop();
    }
  });
});
