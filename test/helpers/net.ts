/** Loopback servers, clients and a cuttable relay for the end-to-end tests. */
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function tempDir(prefix = "monopiped-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A fresh 32-byte key file (mode 0600) in `dir`. */
export function keyFile(dir: string, name = "key.bin"): string {
  const path = join(dir, name);
  writeFileSync(path, randomBytes(32));
  chmodSync(path, 0o600);
  return path;
}

export interface TestServer {
  server: net.Server;
  port: number;
  /** Connections accepted so far. */
  accepted: number;
  close(): Promise<void>;
}

/** A loopback TCP server; every accepted socket is handed to `handler`. */
export function listen(handler: (s: net.Socket) => void, host = "127.0.0.1"): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  return new Promise((resolve) => {
    const ts: TestServer = {
      server: net.createServer({ allowHalfOpen: true }, (s) => {
        ts.accepted++;
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => {});
        handler(s);
      }),
      port: 0,
      accepted: 0,
      close: () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          ts.server.close(() => r());
        }),
    };
    ts.server.listen(0, host, () => {
      ts.port = (ts.server.address() as net.AddressInfo).port;
      resolve(ts);
    });
  });
}

export const echoHandler = (s: net.Socket) => s.pipe(s);

/** Deterministic pseudo-random bytes (AES-CTR keystream), fast enough for hundreds of MiB. */
export function* pseudoRandom(seed: string, total: number, chunk = 1 << 20): Generator<Buffer> {
  const key = createHash("sha256").update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv("aes-128-ctr", key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunk);
  for (let left = total; left > 0; left -= chunk)
    yield cipher.update(zeros.subarray(0, Math.min(chunk, left)));
}

/** Writes a generator's buffers to a socket with backpressure, then half-closes. Returns the sha256. */
export async function sendAll(sock: net.Socket, data: Iterable<Buffer>, end = true): Promise<string> {
  const h = createHash("sha256");
  for (const buf of data) {
    h.update(buf);
    if (!sock.write(buf)) {
      await new Promise<void>((resolve, reject) => {
        const onErr = (e: Error) => reject(e);
        sock.once("error", onErr);
        sock.once("drain", () => {
          sock.removeListener("error", onErr);
          resolve();
        });
      });
    }
  }
  if (end) sock.end();
  return h.digest("hex");
}

export interface Received {
  hash: string;
  bytes: number;
  /** "end" for a clean FIN, otherwise the error code (e.g. ECONNRESET). */
  how: string;
}

/** Reads a socket to its end; resolves with the sha256 of everything and how it ended. */
export function receiveAll(sock: net.Socket): Promise<Received> {
  return new Promise((resolve) => {
    const h = createHash("sha256");
    let bytes = 0;
    let done = false;
    const finish = (how: string) => {
      if (done) return;
      done = true;
      resolve({ hash: h.digest("hex"), bytes, how });
    };
    sock.on("data", (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    sock.on("end", () => finish("end"));
    sock.on("error", (e: NodeJS.ErrnoException) => finish(e.code ?? e.message));
    sock.on("close", () => finish("close"));
  });
}

/** receiveAll, but the reader pauses for 1-8 ms after some reads (a deterministic pattern per seed). */
export function pausingReceive(sock: net.Socket, seed: number): Promise<Received> {
  let x = seed;
  sock.on("data", () => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    if (x % 5 === 0) {
      sock.pause();
      setTimeout(() => sock.resume(), 1 + (x % 8));
    }
  });
  return receiveAll(sock);
}

export function connect(port: number, host = "127.0.0.1"): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true }, () => {
      s.removeListener("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

/** Send `data` and read the whole echo back (the socket is half-closed after sending). */
export async function echoRoundTrip(port: number, data: Buffer, host = "127.0.0.1"): Promise<Buffer> {
  const s = await connect(port, host);
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => resolve());
    s.on("error", reject);
  });
  s.end(data);
  await done;
  s.destroy();
  return Buffer.concat(chunks);
}

export interface CuttingRelay extends TestServer {
  /** End the client side of every relayed connection now with a plain FIN. */
  cut(): void;
}

/** Reads exactly `n` bytes (then stops listening); resolves with their sha256. */
export function receiveExactly(sock: net.Socket, n: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    let got = 0;
    const onData = (d: Buffer) => {
      const take = d.subarray(0, n - got);
      h.update(take);
      got += take.length;
      if (got === n) {
        sock.removeListener("data", onData);
        resolve(h.digest("hex"));
      }
    };
    sock.on("data", onData);
    sock.once("close", () => got < n && reject(new Error(`connection closed after ${got} of ${n} bytes`)));
  });
}

/**
 * Send `data` and read the echo back without half-closing first (for protocols such as monopiped1
 * over WebSocket, whose end of stream closes both directions), then close.
 */
export async function echoWithoutHalfClose(port: number, data: Buffer): Promise<boolean> {
  const s = await connect(port);
  const echo = receiveExactly(s, data.length);
  s.write(data);
  const ok = (await echo) === createHash("sha256").update(data).digest("hex");
  s.end();
  return ok;
}

/**
 * A TCP relay between a client and `targetPort` that can cut the connection towards the client
 * with a plain FIN, as a middlebox (or an attacker) injecting a FIN would: after `cutAfter` bytes
 * have gone towards the client, or when cut() is called.
 */
export async function cuttingRelay(
  targetPort: number,
  cutAfter = Number.POSITIVE_INFINITY,
): Promise<CuttingRelay> {
  const cutters: (() => void)[] = [];
  const ts = await listen((client) => {
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort, allowHalfOpen: true });
    upstream.on("error", () => client.destroy());
    client.pipe(upstream);
    let passed = 0;
    const cut = (last: Buffer = Buffer.alloc(0)) => {
      client.end(last);
      upstream.destroy();
    };
    cutters.push(() => cut());
    upstream.on("data", (d: Buffer) => {
      if (passed >= cutAfter) return;
      const room = cutAfter - passed;
      passed += d.length;
      if (d.length >= room) cut(d.subarray(0, room));
      else client.write(d);
    });
  });
  return Object.assign(ts, {
    cut: () => {
      for (const c of cutters) c();
    },
  });
}
