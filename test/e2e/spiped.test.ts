/**
 * --protocol spiped against the real spiped binary (the independent check of the wire format), in
 * both directions, and between our own ends over TCP and WebSocket.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import type net from "node:net";
import { after, describe, it } from "node:test";
import "../helpers/stop-all.js";
import { freePort, type Proc, spawnProc, waitListening } from "../../bench/procs.js";
import { which } from "../../bench/systems.js";
import { Fleet } from "../helpers/fleet.js";
import {
  connect,
  echoHandler,
  echoRoundTrip,
  keyFile,
  pseudoRandom,
  type Received,
  receiveAll,
  receiveExactly,
  sendAll,
  type TestServer,
} from "../helpers/net.js";
import { runPipe } from "../helpers/pipe.js";

const MiB = 1024 * 1024;
const SPIPED = which("/usr/bin/spiped") ?? which("spiped");
const fleet = new Fleet();
const key = fleet.key;
const otherKey = keyFile(fleet.dir, "other.bin");
const procs: Proc[] = [];

after(async () => {
  await Promise.all(procs.map((p) => p.stop(3000)));
  await fleet.cleanup();
});

const bracketed = (address: string) => {
  const i = address.lastIndexOf(":");
  return `[${address.slice(0, i)}]:${address.slice(i + 1)}`;
};

/** Starts the real spiped in the foreground on a free loopback port; stopped by PID in after(). */
async function spiped(mode: "-e" | "-d", target: string, extra: string[] = [], keyPath = key) {
  assert.ok(SPIPED, "the spiped binary is installed");
  const port = await freePort();
  const args = [mode, "-s", `[127.0.0.1]:${port}`, "-t", bracketed(target), "-k", keyPath, "-F", "-n", "0"];
  const proc = spawnProc(`spiped ${mode}`, SPIPED, [...args, ...extra]);
  procs.push(proc);
  await waitListening(proc, port);
  return { port, address: `127.0.0.1:${port}`, proc };
}

const ours = (mode: "-e" | "-d", target: string, extra: string[] = []) =>
  fleet.end([mode, "-l", "127.0.0.1:0", "-t", target, "-k", key, "--protocol", "spiped", ...extra]);

/** A target that reads everything each connection sends while sending `size` bytes of its own, then ends. */
async function transferTarget(size: number, seed: string) {
  const sessions: Promise<[Received, string]>[] = [];
  const target = await fleet.server((s) => {
    sessions.push(Promise.all([receiveAll(s), sendAll(s, pseudoRandom(`${seed}-down`, size))]));
  });
  return { target, sessions };
}

/** One connection to `entryPort` carrying `size` bytes each way; checks both sha256s. */
async function bothWays(
  entryPort: number,
  size: number,
  seed: string,
  sessions: Promise<[Received, string]>[],
) {
  const app = await connect(entryPort);
  const [got, sentHash] = await Promise.all([
    receiveAll(app),
    sendAll(app, pseudoRandom(`${seed}-up`, size)),
  ]);
  assert.equal(sessions.length, 1);
  const [atTarget, targetSent] = await sessions[0];
  assert.equal(atTarget.bytes, size, "client -> target: every byte");
  assert.equal(atTarget.hash, sentHash, "client -> target intact");
  assert.equal(got.bytes, size, "target -> client: every byte");
  assert.equal(got.hash, targetSent, "target -> client intact");
  assert.equal(got.how, "end");
  app.destroy();
}

/** A target that reads until the client's end of stream, then answers with `reply` and ends. */
function replyAfterEnd(reply: Buffer) {
  return (s: net.Socket) => {
    const got: Buffer[] = [];
    s.on("data", (d: Buffer) => got.push(d));
    s.on("end", () => s.end(Buffer.concat([Buffer.from(`${Buffer.concat(got).length}:`), reply])));
  };
}

/** The client half-closes after its request and still reads the whole reply. */
async function halfClose(entryPort: number, reply: Buffer) {
  const app = await connect(entryPort);
  const request = randomBytes(300_000);
  const answer = receiveAll(app);
  app.end(request);
  const r = await answer;
  assert.equal(r.how, "end");
  assert.equal(r.bytes, `${request.length}:`.length + reply.length);
  app.destroy();
}

/** The app's connection is dropped without data (a refused handshake). */
async function refused(entryPort: number) {
  const app = await connect(entryPort);
  app.write("never delivered");
  const r = await receiveAll(app);
  assert.equal(r.bytes, 0);
  app.destroy();
}

describe("--protocol spiped with the real spiped", () => {
  it("real spiped -e -> our -d: 64 MiB each way, sha256-equal", async () => {
    const { target, sessions } = await transferTarget(64 * MiB, "a");
    const d = await ours("-d", `127.0.0.1:${target.port}`);
    const e = await spiped("-e", d.address);
    await bothWays(e.port, 64 * MiB, "a", sessions);
    const closed = await d.waitForLog((l) => l.msg === "connection closed");
    assert.equal(closed.protocol, "spiped");
    assert.equal(closed.sent, 64 * MiB);
    assert.equal(closed.received, 64 * MiB);
  });

  it("our -e -> real spiped -d: 64 MiB each way, sha256-equal", async () => {
    const { target, sessions } = await transferTarget(64 * MiB, "b");
    const d = await spiped("-d", `127.0.0.1:${target.port}`);
    const e = await ours("-e", d.address);
    await bothWays(e.port, 64 * MiB, "b", sessions);
    const closed = await e.waitForLog((l) => l.msg === "connection closed");
    assert.equal(closed.protocol, "spiped");
  });

  it("half-close is carried through in both directions", async () => {
    const reply = randomBytes(500_000);
    const target = await fleet.server(replyAfterEnd(reply));
    const [d, spipedD] = await Promise.all([
      ours("-d", `127.0.0.1:${target.port}`),
      spiped("-d", `127.0.0.1:${target.port}`),
    ]);
    const [spipedE, e] = await Promise.all([spiped("-e", d.address), ours("-e", spipedD.address)]);
    await halfClose(spipedE.port, reply);
    await halfClose(e.port, reply);
  });

  it("a wrong key is dropped at the handshake, logged, never reaches our target; the next client is served", async () => {
    const target = await fleet.server(echoHandler);
    const [d, spipedD] = await Promise.all([
      ours("-d", `127.0.0.1:${target.port}`),
      spiped("-d", `127.0.0.1:${target.port}`),
    ]);
    const [wrong, good] = await Promise.all([spiped("-e", d.address, [], otherKey), spiped("-e", d.address)]);
    await refused(wrong.port);
    const line = await d.waitForLog((l) => l.msg.startsWith("connection failed"));
    assert.match(String(line.reason), /spiped DH message did not authenticate \(wrong key file/);
    assert.equal(target.accepted, 0, "our server never connected to its target for it");
    const data = randomBytes(100_000);
    assert.ok((await echoRoundTrip(good.port, data)).equals(data), "the next good client is served");
    assert.equal(target.accepted, 1);

    // And our client with the wrong key against the real spiped -d.
    const e = await fleet.end([
      "-e",
      "-l",
      "127.0.0.1:0",
      "-t",
      spipedD.address,
      "-k",
      otherKey,
      "--protocol",
      "spiped",
    ]);
    await refused(e.port);
    const failed = await e.waitForLog((l) => l.msg.startsWith("connection failed"));
    assert.match(
      String(failed.reason),
      /handshake failed: server .* (closed|reset) the connection during the handshake/,
    );
  });

  it("-f against -g is refused; -f against a PFS peer works", async () => {
    const target = await fleet.server(echoHandler);
    const data = randomBytes(200_000);
    const to = `127.0.0.1:${target.port}`;
    const [strict, loose, dStrict, dLoose] = await Promise.all([
      spiped("-d", to, ["-g"]),
      spiped("-d", to, ["-f"]),
      ours("-d", to, ["-g"]),
      ours("-d", to, ["-f"]),
    ]);
    const [noPfs, pfs, eNoPfs, ePfs] = await Promise.all([
      ours("-e", strict.address, ["-f"]),
      ours("-e", loose.address),
      spiped("-e", dStrict.address, ["-f"]),
      spiped("-e", dLoose.address),
    ]);
    // our -e -f -> spiped -d -g: refused.
    await refused(noPfs.port);
    assert.match(
      String((await noPfs.waitForLog((l) => l.msg.startsWith("connection failed"))).reason),
      /during the handshake/,
    );
    // our -e (PFS) -> spiped -d -f: works.
    assert.ok((await echoRoundTrip(pfs.port, data)).equals(data));
    // spiped -e -f -> our -d -g: refused, and said why, without a connection to the target.
    const accepted = target.accepted;
    await refused(eNoPfs.port);
    const line = await dStrict.waitForLog((l) => l.msg.startsWith("connection failed"));
    assert.match(String(line.reason), /does not use forward secrecy/);
    assert.equal(target.accepted, accepted, "never connected to the target");
    // spiped -e (PFS) -> our -d -f: works.
    assert.ok((await echoRoundTrip(ePfs.port, data)).equals(data));
  });

  it("monopiped pipe --protocol spiped replaces spipe in front of a real spiped -d", async () => {
    // The target answers with the digest of everything it got, once its input has ended.
    const digestTarget = await fleet.server((s) => {
      const h = createHash("sha256");
      s.on("data", (d) => h.update(d));
      s.on("end", () => s.end(`${h.digest("hex")}\n`));
    });
    const d = await spiped("-d", `127.0.0.1:${digestTarget.port}`);
    const data = randomBytes(2 * MiB + 3);
    const r = await runPipe(["-t", d.address, "-k", key, "--protocol", "spiped"], data);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), `${createHash("sha256").update(data).digest("hex")}\n`);
    const wrong = await runPipe(["-t", d.address, "-k", otherKey, "--protocol", "spiped"], data);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /handshake/);
  });
});

describe("--protocol spiped between our own ends", () => {
  it("over TCP: 16 MiB each way", async () => {
    const { target, sessions } = await transferTarget(16 * MiB, "c");
    const d = await ours("-d", `127.0.0.1:${target.port}`);
    const e = await ours("-e", d.address);
    await bothWays(e.port, 16 * MiB, "c", sessions);
  });

  it("over ws:// to a -w server: 16 MiB each way", async () => {
    // As for monopiped1, end of stream over WebSocket is the WebSocket close (no half-close), so
    // both sides send and receive everything before the client closes.
    const size = 16 * MiB;
    let atTarget: Promise<[string, string]> | undefined;
    const target: TestServer = await fleet.server((s) => {
      atTarget = Promise.all([receiveExactly(s, size), sendAll(s, pseudoRandom("ws-down", size), false)]);
      s.once("end", () => s.end());
    });
    const d = await ours("-d", `127.0.0.1:${target.port}`, ["-w"]);
    const e = await ours("-e", `ws://${d.address}/`);
    const app = await connect(e.port);
    const [got, sentHash] = await Promise.all([
      receiveExactly(app, size),
      sendAll(app, pseudoRandom("ws-up", size), false),
    ]);
    assert.ok(atTarget);
    const [targetGot, targetSent] = await atTarget;
    assert.equal(targetGot, sentHash, "client -> target intact");
    assert.equal(got, targetSent, "target -> client intact");
    app.end();
    const closed = await d.waitForLog((l) => /connection (closed|ended)/.test(l.msg));
    assert.equal(closed.protocol, "spiped");
    assert.equal(closed.received, size);
    assert.equal(closed.sent, size);
    app.destroy();
  });

  it("an auto-detecting server cannot serve a spiped client, and its log says what to do", async () => {
    const target = await fleet.server(echoHandler);
    const d = await fleet.end([
      "-d",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "-o",
      "1",
      "--protocol",
      "auto",
    ]);
    const e = await ours("-e", d.address);
    await refused(e.port);
    const line = await d.waitForLog((l) => l.msg.startsWith("connection failed"));
    assert.match(String(line.reason), /a spiped client\? serve it with --protocol spiped/);
    // Over WebSocket the 32-byte message is refused at once, with the same hint.
    const dWs = await fleet.end([
      "-d",
      "-w",
      "-l",
      "127.0.0.1:0",
      "-t",
      `127.0.0.1:${target.port}`,
      "-k",
      key,
      "--protocol",
      "auto",
    ]);
    const eWs = await ours("-e", `ws://${dWs.address}/`);
    await refused(eWs.port);
    const wsLine = await dWs.waitForLog((l) => l.msg.startsWith("connection failed"));
    assert.match(String(wsLine.reason), /a spiped client\? serve it with --protocol spiped/);
    assert.equal(target.accepted, 0);
  });
});
