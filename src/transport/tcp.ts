/**
 * TCP and Unix-domain sockets as Links, plus the dial/listen helpers the tunnel uses for them.
 * Every socket gets TCP_NODELAY (records are sent whole, Nagle only adds latency) and TCP keepalive
 * (a dead peer on an idle tunnel is noticed), and allowHalfOpen so a FIN in one direction never
 * tears down the other.
 */
import { EventEmitter } from "node:events";
import net from "node:net";
import { formatHostPort, type SocketAddress } from "../address.js";
import type { Link } from "./link.js";

export interface SocketOptions {
  keepAlive: boolean;
  /** Local address to bind outgoing connections to (spiped's -b). */
  bindHost?: string;
}

const KEEPALIVE_DELAY_MS = 60_000;

export class SocketLink extends EventEmitter implements Link {
  readonly messageFramed = false;
  readonly peer: string;
  /** True once the link has emitted 'close'. */
  closed = false;

  constructor(
    readonly socket: net.Socket,
    peer?: string,
  ) {
    super();
    this.peer = peer ?? describePeer(socket);
    socket.on("data", (chunk: Buffer) => this.emit("data", chunk));
    socket.on("drain", () => this.emit("drain"));
    socket.on("end", () => this.emit("end"));
    socket.on("error", (err) => this.finish(err));
    socket.on("close", () => this.finish());
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", err);
  }

  send(chunks: Buffer[]): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) return false;
    // Writes made in the same turn of the event loop (e.g. one per WebSocket message of a read)
    // leave in one vectored write at the end of the turn.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    let ok = true;
    for (let i = 0; i < chunks.length; ) {
      const first = chunks[i++];
      // Records a sealer wrote back to back into one allocation (spiped's and monopiped1's small
      // fixed-size packets) go to the stream as one write instead of one per record.
      let end = first.byteOffset + first.length;
      const from = i;
      while (i < chunks.length && chunks[i].buffer === first.buffer && chunks[i].byteOffset === end) {
        end += chunks[i++].length;
      }
      ok = this.socket.write(
        i === from ? first : Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset),
      );
    }
    return ok;
  }

  private corked = false;
  private readonly uncork = () => {
    this.corked = false;
    this.socket.uncork();
  };

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
        ? net.connect({ path: addr.path, allowHalfOpen: true })
        : net.connect({
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
    socket.once("connect", () => {
      clearTimeout(timer);
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
    default:
      return `cannot connect to ${what}: ${err.message}`;
  }
}

/** Listen on a TCP or Unix address; resolves with the server once bound. */
export function listenSocket(
  addr: SocketAddress,
  onConnection: (socket: net.Socket) => void,
  fd?: number,
): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
  return bindServer(server, addr, fd).then(() => server);
}

/**
 * Bind any net.Server (a plain one, or the WebSocket listener's http.Server) to a TCP or Unix
 * address; the rejection names the address and the cause.
 */
export function bindServer(server: net.Server, addr: SocketAddress, fd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "EADDRINUSE"
          ? "address already in use"
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
