/**
 * ssh through the tunnel, against OpenSSH's own sshd started on a loopback port with its own host
 * key, client key and configuration: as ssh's ProxyCommand (`monopiped pipe`), and through a client
 * end (-e -l). A normal logout must look like one on the server end: a clean close at INFO, no WARN
 * (ssh sends SIGHUP to its ProxyCommand when it exits).
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { freePort, type Proc, spawnProc, waitListening } from "../../bench/procs.js";
import { CLI_PATH, type LogLine, RUNTIME_FLAGS, type RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";

const fleet = new Fleet();
const user = userInfo().username;
let sshd: Proc | undefined;

after(async () => {
  await sshd?.stop(2000);
  await fleet.cleanup();
});

const SSHD = existsSync("/usr/sbin/sshd") ? "/usr/sbin/sshd" : "sshd";
const hostKey = join(fleet.dir, "ssh_host_ed25519_key");
const clientKey = join(fleet.dir, "id_ed25519");

/** Start sshd -D -e on a free loopback port with a configuration of its own. */
async function startSshd(): Promise<number> {
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", hostKey]);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", clientKey]);
  const authorized = join(fleet.dir, "authorized_keys");
  writeFileSync(authorized, readFileSync(`${clientKey}.pub`), { mode: 0o600 });
  // sshd's privilege separation directory (as root it refuses to start without it).
  if (process.getuid?.() === 0) mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const port = await freePort();
  const config = join(fleet.dir, "sshd_config");
  writeFileSync(
    config,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${authorized}`,
      `PidFile ${join(fleet.dir, "sshd.pid")}`,
      "UsePAM no",
      "StrictModes no",
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "",
    ].join("\n"),
  );
  sshd = spawnProc("sshd", SSHD, ["-D", "-e", "-f", config]);
  await waitListening(sshd, port);
  return port;
}

interface SshRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run ssh with `args` (options, destination, command); killed by PID after 60 s. */
function ssh(args: string[], input = ""): Promise<SshRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      "ssh",
      [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-i",
        clientKey,
        ...args,
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdin.on("error", () => {});
    child.stdin.end(input);
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`ssh did not finish within 60 s; stderr: ${stderr}`));
    }, 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** ProxyCommand running this build's `monopiped pipe` under this test's Node. */
function proxyCommand(server: RunningEnd): string {
  return [process.execPath, ...RUNTIME_FLAGS, CLI_PATH, "pipe", "-t", server.address, "-k", fleet.key].join(
    " ",
  );
}

/** The line an end logs when connection `conn` is over, and every WARN (or worse) it logged. */
async function outcome(end: RunningEnd, nth: number): Promise<{ line: LogLine; warnings: string[] }> {
  const ends = await end.waitForLogs((l) => /^connection (closed|ended|failed)/.test(l.msg), nth, 15_000);
  return { line: ends[nth - 1], warnings: end.logs.filter((l) => l.level >= 40).map((l) => l.msg) };
}

describe("ssh through monopiped, against a real sshd", () => {
  let server: RunningEnd;
  let served = 0;
  before(async () => {
    const port = await startSshd();
    server = await fleet.end(["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${port}`, "-k", fleet.key]);
  });

  it("ProxyCommand 'monopiped pipe': the command runs, ssh exits 0, the server end logs a clean close and no warning", async () => {
    const r = await ssh(["-o", `ProxyCommand=${proxyCommand(server)}`, `${user}@x`, "echo hello"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello\n");
    const { line, warnings } = await outcome(server, ++served);
    assert.equal(line.msg, "connection closed");
    assert.equal(line.level, 30);
    assert.deepEqual(warnings, []);
  });

  it("ProxyCommand with 1 MiB on ssh's stdin: all of it arrives, clean close", async () => {
    const input = "x".repeat(1024 * 1024);
    const r = await ssh(["-o", `ProxyCommand=${proxyCommand(server)}`, `${user}@x`, "wc -c"], input);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), String(input.length));
    const { line, warnings } = await outcome(server, ++served);
    assert.equal(line.msg, "connection closed");
    assert.deepEqual(warnings, []);
  });

  it("through a client end (-e -l): ssh -p LOCALPORT; both ends log a clean close and no warning", async () => {
    const client = await fleet.end(["-e", "-l", "127.0.0.1:0", "-t", server.address, "-k", fleet.key]);
    const r = await ssh(["-p", String(client.port), `${user}@127.0.0.1`, "echo hello"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello\n");
    const s = await outcome(server, ++served);
    assert.equal(s.line.msg, "connection closed");
    assert.deepEqual(s.warnings, []);
    const c = await outcome(client, 1);
    assert.equal(c.line.msg, "connection closed");
    assert.deepEqual(c.warnings, []);
  });
});
