/**
 * systemd: the example units in docs/systemd pass `systemd-analyze verify` without a warning, and
 * socket activation works: an end started by `systemd-socket-activate` (which binds the port,
 * then runs the end with LISTEN_FDS=1 and the socket as descriptor 3) serves on that socket, where
 * binding its -l itself would fail (the port is taken), and carries bytes through a tunnel.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import "../helpers/stop-all.js";
import { freePort, spawnProc } from "../../bench/procs.js";
import { CLI_PATH, RUNTIME_FLAGS, startEnd } from "../../src/harness.js";
import { ListenFdsError, takeListenFd } from "../../src/transport/listenfds.js";
import { connect, echoHandler, keyFile, listen, receiveAll, tempDir } from "../helpers/net.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const UNITS = join(ROOT, "docs", "systemd");

let dir: string;
let key: string;
before(() => {
  dir = tempDir("monopiped-systemd-");
  key = keyFile(dir);
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("the example units in docs/systemd", () => {
  it("pass systemd-analyze verify with no warning", () => {
    const units = readdirSync(UNITS).filter((f) => /\.(service|socket)$/.test(f));
    assert.deepEqual(units.sort(), [
      "monopiped-client.service",
      "monopiped-server.service",
      "monopiped-server.socket",
    ]);
    // verify checks that ExecStart's program exists: point it at this checkout's command.
    const bin = join(ROOT, "bin", "monopiped.js");
    for (const unit of units) {
      const text = readFileSync(join(UNITS, unit), "utf8");
      writeFileSync(join(dir, unit), text.replaceAll("/usr/local/bin/monopiped ", `${bin} `));
    }
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", ...units.map((u) => join(dir, u))], {
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "", "no warning (an unknown or misspelt setting is only a warning)");
  });

  it("are sandboxed: a transient user, no capabilities, a read-only system, the key as a credential", () => {
    for (const unit of ["monopiped-server.service", "monopiped-client.service"]) {
      const text = readFileSync(join(UNITS, unit), "utf8");
      for (const line of [
        /^DynamicUser=yes$/m,
        /^NoNewPrivileges=yes$/m,
        /^ProtectSystem=strict$/m,
        /^PrivateTmp=yes$/m,
        /^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$/m,
        /^CapabilityBoundingSet=$/m,
        /^LoadCredential=key:\/etc\/monopiped\/key\.bin$/m,
        /^ExecStart=.* -k \$\{CREDENTIALS_DIRECTORY\}\/key$/m,
      ])
        assert.match(text, line, unit);
    }
    assert.match(
      readFileSync(join(UNITS, "monopiped-server.socket"), "utf8"),
      /^ListenStream=0\.0\.0\.0:2222$/m,
    );
  });
});

describe("socket activation (LISTEN_FDS)", () => {
  it("an end run by systemd-socket-activate serves on the passed socket and carries bytes", async () => {
    const target = await listen(echoHandler);
    try {
      const port = await freePort();
      let activated = false;
      let readyLine = "";
      const d = spawnProc(
        "systemd-socket-activate",
        "systemd-socket-activate",
        [
          "-l",
          `127.0.0.1:${port}`,
          process.execPath,
          ...RUNTIME_FLAGS,
          CLI_PATH,
          "-d",
          "-l",
          `127.0.0.1:${port}`,
          "-t",
          `127.0.0.1:${target.port}`,
          "-k",
          key,
          "--log-format",
          "json",
        ],
        {
          watch: (line) => {
            if (line.includes('"socket activation: serving on descriptor 3')) activated = true;
            if (line.includes('"listening on ')) readyLine = line;
            return activated && readyLine !== "";
          },
        },
      );
      // systemd-socket-activate binds at once and starts the end at the first connection.
      const e = await startEnd(["-e", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${port}`, "-k", key]);
      try {
        for (let round = 0; round < 2; round++) {
          const data = randomBytes(100_000 + round);
          const sock = await connect(e.port);
          const got = receiveAll(sock);
          sock.end(data);
          const r = await got;
          assert.equal(r.how, "end", `round ${round}: ${d.tail()}`);
          assert.equal(r.bytes, data.length, `round ${round}: ${d.tail()}`);
          assert.equal(r.hash, createHash("sha256").update(data).digest("hex"));
        }
        assert.ok(activated, `the end says it serves on descriptor 3:\n${d.tail()}`);
        assert.match(readyLine, new RegExp(`"listen":"127\\.0\\.0\\.1:${port}"`));
      } finally {
        await e.stop();
        await d.stop();
      }
    } finally {
      await target.close();
    }
  });

  it("takeListenFd: variables for another process are ignored, and all of them are unset", () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: "1", LISTEN_FDS: "1", LISTEN_FDNAMES: "x", OTHER: "y" };
    assert.equal(takeListenFd(env, 4242), undefined);
    assert.deepEqual(env, { OTHER: "y" });
    assert.equal(takeListenFd({}, 4242), undefined);
    assert.equal(takeListenFd({ LISTEN_PID: "4242", LISTEN_FDS: "0" }, 4242), undefined);
  });

  it("takeListenFd: malformed values, several sockets, or a descriptor 3 that is no socket are refused", () => {
    assert.throws(() => takeListenFd({ LISTEN_PID: "x", LISTEN_FDS: "1" }, 4242), ListenFdsError);
    assert.throws(() => takeListenFd({ LISTEN_PID: "4242", LISTEN_FDS: "one" }, 4242), /not a number/);
    assert.throws(() => takeListenFd({ LISTEN_PID: "4242", LISTEN_FDS: "2" }, 4242), /monopiped serves one/);
    // The end itself, given LISTEN_FDS=1 for its pid with /dev/null as descriptor 3: exit 1, one line.
    const r = spawnSync(
      "/bin/sh",
      [
        "-c",
        'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@" 3</dev/null',
        process.execPath,
        CLI_PATH,
        "-d",
        "-l",
        "127.0.0.1:0",
        "-t",
        "127.0.0.1:1",
        "-k",
        key,
      ],
      { encoding: "utf8", timeout: 20_000 },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^monopiped: socket activation: LISTEN_FDS=1 but descriptor 3 is not a socket$/m);
  });
});
