/**
 * transport/fastread.ts reaches into Node internals for accepted sockets (a handle moved into a new
 * net.Socket made with `onread`). These tests fail on a Node version where that path is not taken or
 * behaves differently, instead of letting the tunnel fall back silently to slower reads.
 */
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { describe, it } from "node:test";
import { adoptUpgraded, isFast, READ_SIZE, setReadSink } from "../../src/transport/fastread.js";
import { acceptedLink, dialSocket, SocketLink } from "../../src/transport/tcp.js";

function listen(onSocket: (s: net.Socket) => void): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onSocket);
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function portOf(server: net.Server): number {
  return (server.address() as net.AddressInfo).port;
}

/** Collects a link's reads (as copies: each chunk is lent), until its end. */
function collect(link: SocketLink): Promise<{ data: Buffer; views: number; sameBuffer: boolean }> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let first: ArrayBufferLike | null = null;
    let sameBuffer = true;
    link.on("data", (chunk: Buffer) => {
      first ??= chunk.buffer;
      if (chunk.buffer !== first) sameBuffer = false;
      parts.push(Buffer.from(chunk));
    });
    link.on("end", () => resolve({ data: Buffer.concat(parts), views: parts.length, sameBuffer }));
    link.on("close", (err?: Error) => reject(err ?? new Error("closed before its end")));
    link.resume();
  });
}

describe("reads into the shared buffer (transport/fastread.ts)", () => {
  it("an accepted socket reads through onread: every byte in order, its end, one shared buffer", async () => {
    let accepted: SocketLink | null = null;
    const got = new Promise<{ data: Buffer; views: number; sameBuffer: boolean }>((resolve, reject) => {
      listen((s) => {
        accepted = acceptedLink(s);
        collect(accepted).then(resolve, reject);
      }).then((server) => {
        const payload = Buffer.alloc(3 * READ_SIZE + 12345);
        for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 11)) & 0xff;
        const c = net.connect(portOf(server), "127.0.0.1", () => c.end(payload));
        c.on("close", () => server.close());
      });
    });
    const r = await got;
    assert.ok(accepted !== null);
    const link = accepted as SocketLink;
    assert.equal(isFast(link.socket), true, "this Node version takes the fast path for accepted sockets");
    assert.equal(link.lendsChunks, true);
    assert.equal(r.data.length, 3 * READ_SIZE + 12345);
    for (let i = 0; i < r.data.length; i += 997)
      assert.equal(r.data[i], (i * 7 + (i >> 11)) & 0xff, `byte ${i}`);
    assert.equal(r.sameBuffer, true, "every read lands in the same buffer");
    link.endWrite();
  });

  it("the server still counts the moved connection: close() completes once it is gone", async () => {
    const server = await listen((s) => {
      const link = acceptedLink(s);
      link.on("end", () => link.endWrite());
      link.resume();
    });
    const c = net.connect(portOf(server), "127.0.0.1");
    await new Promise((r) => c.once("connect", r));
    const counted = await new Promise<number>((resolve) =>
      setTimeout(() => server.getConnections((_e, n) => resolve(n)), 50),
    );
    assert.equal(counted, 1, "one connection while it is open");
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    c.end();
    c.resume();
    await closed; // would never resolve if the moved socket did not release the server's count
  });

  it("a dialled socket reads through onread and pause() stops its reads until resume()", async () => {
    let peer: net.Socket | null = null;
    const server = await listen((s) => {
      peer = s;
      s.resume();
    });
    const socket = await dialSocket(
      { kind: "tcp", host: "127.0.0.1", port: portOf(server), text: "test" },
      { keepAlive: false },
      2000,
    );
    assert.equal(isFast(socket), true);
    const link = new SocketLink(socket, "test");
    assert.equal(link.lendsChunks, true);
    let seen = 0;
    link.on("data", (chunk: Buffer) => {
      seen += chunk.length;
    });
    (peer as unknown as net.Socket).write(Buffer.alloc(1000, 1));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(seen, 0, "nothing is read while paused");
    const ended = collect(link);
    (peer as unknown as net.Socket).end(Buffer.alloc(500, 2));
    const r = await ended;
    assert.equal(seen, 1500);
    assert.equal(r.data.length, 1500);
    link.endWrite();
    server.close();
  });

  it("a socket the HTTP server upgraded moves to onread too (the -w listener's connections)", async () => {
    const server = http.createServer();
    const got = new Promise<{ head: Buffer; rest: Buffer; fast: boolean }>((resolve, reject) => {
      server.on("upgrade", (_req, socket: net.Socket, head: Buffer) => {
        const fresh = adoptUpgraded(socket);
        if (!fresh) return reject(new Error("adoptUpgraded refused the upgraded socket"));
        const parts: Buffer[] = [];
        setReadSink(fresh, { onBytes: (c) => parts.push(Buffer.from(c)) });
        fresh.on("end", () => {
          resolve({ head: Buffer.from(head), rest: Buffer.concat(parts), fast: isFast(fresh) });
          fresh.end();
        });
        fresh.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n");
        fresh.resume();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const c = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    c.write("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nfirst");
    c.once("data", () => c.end("-and-then-the-rest"));
    c.resume();
    const r = await got;
    server.close();
    assert.equal(r.fast, true, "this Node version moves an upgraded socket to the fast path");
    assert.equal(Buffer.concat([r.head, r.rest]).toString(), "first-and-then-the-rest");
  });
});
