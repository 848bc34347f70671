/**
 * Key rotation end to end: several -k on a server, SIGHUP re-reading the key files while a
 * connection under the old key keeps flowing, and a broken key file on SIGHUP leaving the old keys
 * in force. Real processes on loopback.
 */
import assert from "node:assert/strict";
import { copyFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import type { RunningEnd } from "../../src/harness.js";
import { Fleet } from "../helpers/fleet.js";
import { heldConnection } from "../helpers/metrics.js";
import { echoHandler, echoRoundTrip, keyFile } from "../helpers/net.js";

const fleet = new Fleet();
after(() => fleet.cleanup());

const HELLO = Buffer.from("hello through the tunnel\n");

async function target() {
  return (await fleet.server(echoHandler)).port;
}

function server(targetPort: number, keys: string[]) {
  return fleet.end([
    "-d",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${targetPort}`,
    ...keys.flatMap((k) => ["-k", k]),
    "--protocol",
    "monopiped2",
  ]);
}

function client(d: RunningEnd, keys: string[]) {
  return fleet.end(["-e", "-l", "127.0.0.1:0", "-t", d.address, ...keys.flatMap((k) => ["-k", k])]);
}

/** True when a round trip through client end `e` comes back whole. */
async function works(e: RunningEnd): Promise<boolean> {
  const echo = await echoRoundTrip(e.port, HELLO).catch(() => Buffer.alloc(0));
  return echo.equals(HELLO);
}

describe("key rotation", () => {
  it("a server with two -k accepts clients of either key; a client uses its first", async () => {
    const a = keyFile(fleet.dir, "two-a.bin");
    const b = keyFile(fleet.dir, "two-b.bin");
    const c = keyFile(fleet.dir, "two-c.bin");
    const d = await server(await target(), [a, b]);
    assert.ok(await works(await client(d, [a])), "a client of the first key");
    assert.ok(await works(await client(d, [b])), "a client of the second key");
    assert.ok(await works(await client(d, [b, c])), "a client uses its first key");
    assert.equal(await works(await client(d, [c, a])), false, "a client does not try its second key");
    assert.equal(await works(await client(d, [c])), false, "a stranger's key is refused");
  });

  it("SIGHUP with a new key file: new clients get in, a connection under the old key keeps flowing", async () => {
    const live = join(fleet.dir, "live.bin");
    const oldKey = keyFile(fleet.dir, "old.bin");
    const newKey = keyFile(fleet.dir, "new.bin");
    copyFileSync(oldKey, live);
    const d = await server(await target(), [live]);
    const eOld = await client(d, [oldKey]);
    const eNew = await client(d, [newKey]);
    assert.ok(await works(eOld));
    assert.equal(await works(eNew), false, "the new key is not in force yet");

    const held = await heldConnection(eOld.port);
    assert.ok(await held.roundTrip());
    copyFileSync(newKey, live);
    d.child.kill("SIGHUP");
    const line = await d.waitForLog((l) => /^SIGHUP: re-read/.test(l.msg));
    assert.equal(line.keys, 1);
    assert.match(line.msg, /open connections untouched/);

    assert.ok(await works(eNew), "a client with the new key gets in");
    assert.equal(await works(eOld), false, "a new connection with the old key is refused");
    assert.ok(await held.roundTrip(), "the connection opened under the old key keeps flowing");
    assert.ok(await held.roundTrip(1024 * 1024));

    // SIGHUP never ends the process, at either end.
    eOld.child.kill("SIGHUP");
    await eOld.waitForLog((l) => /^SIGHUP: re-read/.test(l.msg));
    assert.ok(await held.roundTrip());
    held.sock.end();
    assert.equal(d.child.exitCode, null);
    assert.equal(eOld.child.exitCode, null);
  });

  it("a broken key file on SIGHUP is refused with one log line and the old keys stay in force", async () => {
    const live = join(fleet.dir, "broken.bin");
    const key = keyFile(fleet.dir, "good.bin");
    copyFileSync(key, live);
    const d = await server(await target(), [live]);
    const e = await client(d, [key]);
    assert.ok(await works(e));

    writeFileSync(live, "short"); // 5 bytes: too short for a key
    d.child.kill("SIGHUP");
    const line = await d.waitForLog((l) => /^SIGHUP:/.test(l.msg));
    assert.equal(line.level, 50, "an error line");
    assert.match(line.msg, /broken\.bin has only 5 bytes/);
    assert.match(line.msg, /keeping the 1 key\(s\) in force/);
    assert.ok(await works(e), "the old key still works");

    // A key file that is gone: the same.
    rmSync(live);
    d.child.kill("SIGHUP");
    const lines = await d.waitForLogs((l) => /^SIGHUP:/.test(l.msg), 2);
    assert.equal(lines.length, 2, "one line per SIGHUP");
    assert.match(lines[1].msg, /broken\.bin does not exist/);
    assert.ok(await works(e), "still the old key");
    assert.equal(d.child.exitCode, null, "SIGHUP did not end the process");
  });
});
