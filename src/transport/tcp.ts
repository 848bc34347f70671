/**
 * TCP and Unix-domain sockets as Links, plus the dial/listen helpers the tunnel uses for them.
 * Every socket gets TCP_NODELAY (records are sent whole, Nagle only adds latency) and TCP keepalive
 * (a dead peer on an idle tunnel is noticed), and allowHalfOpen so a FIN in one direction never
 * tears down the other.
 */
import { EventEmitter } from "node:events";
import { statSync } from "node:fs";
import net from "node:net";
import { dirname } from "node:path";
import { formatHostPort, type SocketAddress } from "../address.js";
import type { Logger } from "../log.js";
import {
  adoptAccepted,
  fastConnectOptions,
  isFast,
  markFast,
  type ReadSink,
  setReadSink,
} from "./fastread.js";
import type { Link } from "./link.js";

export interface SocketOptions {
  keepAlive: boolean;
  /** Local address to bind outgoing connections to (spiped's -b). */
  bindHost?: string;
}

const KEEPALIVE_DELAY_MS = 60_000;
/** A send of at least this many bytes is written at once, even after another in the same turn. */
const WRITE_AT_ONCE = 16 * 1024;

export class SocketLink extends EventEmitter implements Link, ReadSink {
  readonly messageFramed = false;
  readonly peer: string;
  /** True once the link has emitted 'close'. */
  closed = false;
  /**
   * True when the socket reads into the shared buffer (transport/fastread.ts): each 'data' chunk
   * is valid only while its event runs.
   */
  readonly lendsChunks: boolean;

  constructor(
    readonly socket: net.Socket,
    peer?: string,
  ) {
    super();
    this.peer = peer ?? describePeer(socket);
    this.lendsChunks = isFast(socket);
    if (this.lendsChunks) setReadSink(socket, this);
    else socket.on("data", (chunk: Buffer) => this.emit("data", chunk));
    socket.on("drain", () => this.emit("drain"));
    socket.on("end", () => this.onEnd());
    socket.on("error", (err) => this.finish(err));
    socket.on("close", () => this.finish());
  }

  /** @internal A read into the shared buffer. */
  onBytes(chunk: Buffer): void {
    this.emit("data", chunk);
  }

  /** Bytes handed to the socket so far. */
  private accepted = 0;

  get queuedBytes(): number {
    return this.socket.writableLength;
  }
  get sentBytes(): number {
    return this.accepted - this.socket.writableLength;
  }

  /**
   * The peer's FIN, or what libuv takes for one. libuv before 1.47 (Node 20) reports a reset that
   * arrives right behind data as an end of file: it treats a short read together with POLLHUP as
   * EOF and never reads the pending ECONNRESET. The error is still on the socket, so a zero-length
   * write tells the two apart (send() returns the socket's pending error; after a real FIN it
   * succeeds and sends nothing). Where we already sent our own FIN the probe is impossible and the
   * end is taken as it comes.
   */
  private onEnd(): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded || !s.writable) {
      this.emit("end");
      return;
    }
    s.write(Buffer.alloc(0), (err) => {
      if (err) this.finish(err);
      else if (!this.closed) this.emit("end");
    });
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", err);
  }

  send(chunks: Buffer[]): boolean {
    const socket = this.socket;
    if (socket.destroyed || socket.writableEnded) return false;
    // The first send of a turn of the event loop goes out at once, as one write (or one vectored
    // write for several buffers). Further small sends in the same turn (e.g. one per monopiped1
    // frame of a WebSocket read) are corked and leave together in one vectored write at the end of
    // the turn; a large one goes at once, with whatever is corked before it. Written at once, its
    // memory is free again when send() returns (the arena reuses it: see writtenOut), where a
    // corked one would hold it until the end of the turn.
    let uncorkNow = false;
    let large = false;
    if (this.sentThisTurn) {
      let bytes = 0;
      for (const c of chunks) bytes += c.length;
      large = bytes >= WRITE_AT_ONCE;
    }
    if (!this.sentThisTurn || large) {
      if (!this.sentThisTurn) {
        this.sentThisTurn = true;
        process.nextTick(endTurnOf, this);
      }
      if (this.corked) {
        this.corked = false;
        uncorkNow = true;
      } else if (chunks.length > 1) {
        socket.cork();
        uncorkNow = true;
      }
    } else if (!this.corked) {
      this.corked = true;
      socket.cork();
    }
    let ok = true;
    for (let i = 0; i < chunks.length; ) {
      const first = chunks[i++];
      // Records a sealer wrote back to back into one allocation (spiped's and monopiped1's small
      // fixed-size packets) go to the stream as one buffer instead of one per record.
      let end = first.byteOffset + first.length;
      const from = i;
      while (i < chunks.length && chunks[i].buffer === first.buffer && chunks[i].byteOffset === end) {
        end += chunks[i++].length;
      }
      this.accepted += end - first.byteOffset;
      ok = socket.write(
        i === from ? first : Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset),
      );
    }
    if (uncorkNow) socket.uncork();
    return ok;
  }

  writtenOut(): boolean {
    // A socket's queue (writableLength) holds every byte write() has not yet handed to the kernel;
    // a destroyed socket may still have writes being cancelled.
    return !this.socket.destroyed && this.socket.writableLength === 0;
  }

  private sentThisTurn = false;
  private corked = false;
  /** @internal */
  endTurn(): void {
    this.sentThisTurn = false;
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  pause(): void {
    this.socket.pause();
  }
  resume(): void {
    this.socket.resume();
  }
  endWrite(): void {
    if (!this.socket.destroyed) this.socket.end();
  }
  reset(): void {
    if (this.socket.destroyed) return;
    // resetAndDestroy needs a connected TCP handle; anything else (Unix socket, connecting) is destroyed.
    if (this.socket.remoteAddress && typeof this.socket.resetAndDestroy === "function")
      this.socket.resetAndDestroy();
    else this.socket.destroy();
  }
}

function endTurnOf(link: SocketLink): void {
  link.endTurn();
}

/**
 * Set-up: hold this socket's writes until the check phase of this turn of the event loop
 * (setImmediate), so that a handshake's last message and the first record sent right after it
 * (the application's bytes the pump seals once the session is ready) leave in one write.
 */
export function holdWritesThisTurn(link: SocketLink): void {
  const socket = link.socket;
  if (socket.destroyed || socket.writableEnded) return;
  socket.cork();
  setImmediate(uncorkSocket, socket);
}

function uncorkSocket(socket: net.Socket): void {
  socket.uncork();
}

/**
 * The link of a socket a listener accepted (paused): reading through the shared buffer where this
 * Node version allows it (transport/fastread.ts), else as it is.
 */
export function acceptedLink(socket: net.Socket): SocketLink {
  return new SocketLink(adoptAccepted(socket) ?? socket);
}

/** The remote end of a socket for logs: 1.2.3.4:5678, [::1]:5678, or "local socket" (Unix). */
export function describePeer(socket: { remoteAddress?: string; remotePort?: number }): string {
  return socket.remoteAddress ? formatHostPort(socket.remoteAddress, socket.remotePort ?? 0) : "local socket";
}

export function tuneSocket(socket: net.Socket, opts: SocketOptions): void {
  socket.setNoDelay(true);
  if (opts.keepAlive) socket.setKeepAlive(true, KEEPALIVE_DELAY_MS);
}

/** Connect to a TCP or Unix address. Resolves once connected; rejects with a message naming the address. */
export function dialSocket(addr: SocketAddress, opts: SocketOptions, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      addr.kind === "unix"
        ? net.connect({ path: addr.path, allowHalfOpen: true, ...fastConnectOptions() })
        : net.connect({
            ...fastConnectOptions(),
            host: addr.host,
            port: addr.port,
            allowHalfOpen: true,
            localAddress: opts.bindHost,
            noDelay: true,
            keepAlive: opts.keepAlive,
            keepAliveInitialDelay: KEEPALIVE_DELAY_MS,
          });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`timeout after ${timeoutMs / 1000} s connecting to ${addr.text}`));
    }, timeoutMs);
    markFast(socket);
    socket.once("connect", () => {
      clearTimeout(timer);
      // Not a byte is read until the link's owner resumes it.
      socket.pause();
      socket.removeAllListeners("error");
      if (addr.kind !== "unix") tuneSocket(socket, opts);
      resolve(socket);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(connectErrorText(addr.text, err)));
    });
  });
}

export function connectErrorText(what: string, err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "ECONNREFUSED":
      return `${what} refused the connection`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `cannot resolve ${what} (${err.code})`;
    case "ENOENT":
      return `${what}: no such socket`;
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return `${what} is unreachable (${err.code})`;
    case "ETIMEDOUT":
      return `timeout connecting to ${what}`;
    case "EMFILE":
    case "ENFILE":
      return `cannot connect to ${what}: out of file descriptors (${err.code}): raise the limit (ulimit -n, LimitNOFILE=) or lower -n`;
    default:
      return `cannot connect to ${what}: ${err.message}`;
  }
}

/**
 * Listen on a TCP or Unix address (or on an inherited listening descriptor, `fd`); resolves with
 * the server once bound.
 */
export function listenSocket(
  addr: SocketAddress,
  onConnection: (socket: net.Socket) => void,
  fd?: number,
): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
  return bindServer(server, addr, fd).then(() => server);
}

/**
 * Errors of accept() after the server is bound (EMFILE/ENFILE when out of file descriptors,
 * ENOBUFS...) are logged, at most one line per interval with the count, and never end the process:
 * libuv keeps the listener going and retries.
 */
export function logAcceptErrors(server: net.Server, log: Logger, what: string): void {
  let timer: NodeJS.Timeout | null = null;
  let count = 0;
  server.on("error", (err: NodeJS.ErrnoException) => {
    count++;
    if (timer) return;
    const why =
      err.code === "EMFILE" || err.code === "ENFILE"
        ? `out of file descriptors (${err.code}): new connections are dropped until some close; raise the limit (ulimit -n, LimitNOFILE=) or lower --max-pending / -n`
        : err.message;
    log.error({ code: err.code, reason: why }, `${what}: cannot accept connections: ${why}`);
    count = 0;
    timer = setTimeout(function again() {
      if (count > 0) {
        log.error(
          { code: err.code, count },
          `${what}: ${count} more accept errors in the last 10 s (${err.code ?? err.message})`,
        );
        count = 0;
        timer = setTimeout(again, 10_000);
        timer.unref();
      } else timer = null;
    }, 10_000);
    timer.unref();
  });
}

/**
 * Bind any net.Server (a plain one, or the WebSocket listener's http.Server) to a TCP or Unix
 * address; the rejection names the address and the cause.
 */
export function bindServer(server: net.Server, addr: SocketAddress, fd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const why =
        fd !== undefined
          ? `inherited file descriptor ${fd}: ${err.message}`
          : err.code === "EADDRINUSE"
            ? "address already in use"
            : addr.kind === "unix" &&
                (err.code === "EACCES" || err.code === "ENOENT") &&
                !dirExists(addr.path)
              ? `the directory ${dirname(addr.path)} does not exist`
              : err.code === "EACCES"
                ? "permission denied"
                : err.code === "EADDRNOTAVAIL"
                  ? "address not available on this machine"
                  : err.message;
      reject(new Error(`cannot listen on ${addr.text}: ${why}`));
    });
    const onListening = () => {
      server.removeAllListeners("error");
      resolve();
    };
    if (fd !== undefined) server.listen({ fd }, onListening);
    else if (addr.kind === "unix") server.listen(addr.path, onListening);
    else server.listen({ host: addr.host, port: addr.port, backlog: 511 }, onListening);
  });
}

/** The bound address of a listening server, for logs (e.g. 127.0.0.1:41234 when port 0 was asked). */
export function boundAddress(server: net.Server, addr: SocketAddress): string {
  const a = server.address();
  return typeof a === "string" || a === null ? addr.text : formatHostPort(a.address, a.port);
}

function dirExists(path: string): boolean {
  try {
    return statSync(dirname(path)).isDirectory();
  } catch {
    return false;
  }
}
