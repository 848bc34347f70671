/**
 * WebSocket transport: the encrypted leg inside WebSockets, so a tunnel can pass HTTP reverse proxies
 * (Caddy, nginx) and HTTP CONNECT proxies. One protocol record = one binary WebSocket message, as
 * the original monopiped does (docs/WEBSOCKET.md); permessage-deflate is off (records are encrypted,
 * nothing to compress).
 *
 * Server (-d -w): an http.Server with a `ws` server in noServer mode. Everything that is not a good
 * upgrade gets an HTTP refusal and one warning: wrong --path 404, plain HTTP 426, malformed 400.
 * Client (-e -t ws://|wss://): direct or through an HTTP CONNECT proxy (--proxy, or the
 * HTTPS_PROXY / HTTP_PROXY / NO_PROXY environment), TLS with the default CAs plus --ca.
 *
 * Keepalive: a client pings every --ping-interval (monopiped2 only: the original Rust monopiped
 * drops a connection on any ping). A server pings a client only after that client has pinged it, so
 * the same listener serves Rust clients (which never ping) and keeps pinging clients' links alive.
 * A link whose peer stays silent for a whole interval after a ping is closed ("no pong").
 */
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import WebSocket, { type ClientOptions, WebSocketServer } from "ws";
import { formatHostPort, type WsAddress } from "../address.js";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import type { Link, Listener } from "./link.js";
import { bindServer, boundAddress, connectErrorText } from "./tcp.js";

/** Largest message accepted: above any record (65535 + 35 bytes) and monopiped1's 1060-byte frames. */
export const MAX_PAYLOAD = 128 * 1024;
/** send() returns false above this many queued bytes; 'drain' follows when the queue is empty. */
const HIGH_WATER = 256 * 1024;
/** After we close for a protocol violation, how long the peer gets to answer the close. */
const VIOLATION_CLOSE_MS = 3000;
const KEEPALIVE_DELAY_MS = 60_000;
const SEND_OPTIONS = { binary: true, compress: false, fin: true } as const;

const CLOSE_CODE_NAMES: Record<number, string> = {
  1001: "going away",
  1002: "protocol error",
  1003: "unsupported data",
  1006: "connection dropped without a WebSocket closing handshake",
  1007: "invalid data",
  1008: "policy violation",
  1009: "message too big",
  1010: "missing extension",
  1011: "internal error",
  1012: "service restart",
  1013: "try again later",
  1014: "bad gateway",
  1015: "TLS handshake failure",
};

interface WsLinkOptions {
  pingIntervalMs: number;
  /**
   * When to ping: "always" (a client), "after-peer" (a server: only once the client has pinged,
   * which proves it tolerates pings), "never" (a monopiped1 client: its Rust server would drop us).
   */
  pings: "always" | "after-peer" | "never";
}

/** A WebSocket as a Link. Created paused; messages that arrive while paused wait in order. */
class WsLink extends EventEmitter implements Link {
  readonly messageFramed = true;
  private paused = true;
  private readonly queue: Buffer[] = [];
  private flushScheduled = false;
  /** The peer closed cleanly (1000 / 1005): 'end' once the queue is delivered. */
  private cleanClose = false;
  private closeCode = 0;
  private endEmitted = false;
  /**
   * endWrite() or reset() was called. After a clean close from the peer, 'close' waits for this, as
   * a TCP link's 'close' waits for both directions: the pump may still be finishing the other way
   * (monopiped1, whose end of stream is the WebSocket close). Data sent after that fails the link.
   */
  private localDone = false;
  private failure: Error | undefined;
  private closed = false;
  private needDrain = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private violationTimer: NodeJS.Timeout | undefined;
  private awaitingPong = false;
  private heardSincePing = false;
  private pausedSincePing = false;
  private bufferedAtPing = false;

  constructor(
    private readonly ws: WebSocket,
    socket: Duplex,
    readonly peer: string,
    private readonly opts: WsLinkOptions,
  ) {
    super();
    ws.pause();
    ws.on("message", (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on("ping", () => {
      this.heardSincePing = true;
      if (opts.pings === "after-peer") this.startPings();
    });
    ws.on("pong", () => {
      this.heardSincePing = true;
      this.awaitingPong = false;
    });
    ws.on("error", (err: Error & { code?: string }) => {
      this.failure ??= new Error(describeWsError(err));
    });
    ws.on("close", (code: number, reason: Buffer) => this.onClose(code, reason.toString("utf8")));
    socket.on("error", (err: NodeJS.ErrnoException) => {
      this.failure ??= new Error(describeSocketError(err));
    });
    socket.on("drain", () => {
      if (this.needDrain && ws.bufferedAmount < HIGH_WATER) {
        this.needDrain = false;
        this.emit("drain");
      }
    });
    if (opts.pings === "always") this.startPings();
  }

  get pendingBytes(): number {
    return this.ws.bufferedAmount;
  }

  send(chunks: Buffer[]): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) {
      if (this.endEmitted && !this.closed && chunks.some((c) => c.length > 0)) {
        const err = new Error(
          `the peer closed the WebSocket (code ${this.closeCode}): data sent after that is lost`,
        );
        process.nextTick(() => this.finish(err));
      }
      return false;
    }
    for (const c of chunks) this.ws.send(c, SEND_OPTIONS);
    if (this.ws.bufferedAmount < HIGH_WATER) return true;
    this.needDrain = true;
    return false;
  }

  pause(): void {
    this.paused = true;
    this.pausedSincePing = true;
    this.ws.pause();
  }

  resume(): void {
    this.paused = false;
    if (this.queue.length > 0 || (this.cleanClose && !this.endEmitted)) {
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
      return;
    }
    this.ws.resume();
  }

  endWrite(): void {
    this.localDone = true;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    // Never from inside the call (as with a socket): the caller finishes its own bookkeeping first.
    if (this.endEmitted) process.nextTick(() => this.finish());
  }

  reset(): void {
    this.localDone = true;
    this.ws.terminate();
    if (this.endEmitted) process.nextTick(() => this.finish());
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closed || this.failure) return;
    if (!isBinary) {
      this.violation(
        1003,
        "binary messages only",
        "sent a text message (a tunnel carries binary messages only)",
      );
      return;
    }
    this.heardSincePing = true;
    if (this.paused || this.queue.length > 0) this.queue.push(data);
    else this.emit("data", data);
  }

  private flush(): void {
    this.flushScheduled = false;
    while (!this.paused && !this.closed && this.queue.length > 0)
      this.emit("data", this.queue.shift() as Buffer);
    if (this.paused || this.closed) return;
    this.ws.resume();
    this.finishClean();
  }

  /** Close because the peer broke the rules; the Link reports `why` when the close completes. */
  private violation(code: number, reason: string, why: string): void {
    this.failure = new Error(`${why}; closed with ${code}`);
    this.queue.length = 0;
    this.ws.close(code, reason);
    this.ws.resume(); // read the peer's answer to the close (its messages are ignored from now on)
    this.violationTimer = setTimeout(() => this.ws.terminate(), VIOLATION_CLOSE_MS);
    this.violationTimer.unref();
  }

  private onClose(code: number, reason: string): void {
    this.stopTimers();
    if (this.failure) {
      this.finish(this.failure);
      return;
    }
    if (code === 1000 || code === 1005) {
      this.cleanClose = true;
      this.closeCode = code;
      if (!this.paused && this.queue.length === 0) this.finishClean();
      return;
    }
    const name = CLOSE_CODE_NAMES[code];
    this.finish(
      new Error(
        `WebSocket closed with code ${code}${name ? ` (${name})` : ""}${reason ? `: ${reason.slice(0, 123)}` : ""}`,
      ),
    );
  }

  private finishClean(): void {
    if (!this.cleanClose || this.closed || this.endEmitted) return;
    this.endEmitted = true;
    this.emit("end");
    if (this.localDone) this.finish();
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.stopTimers();
    this.emit("close", err);
  }

  private stopTimers(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.violationTimer);
    this.pingTimer = undefined;
  }

  private startPings(): void {
    if (this.pingTimer || this.opts.pingIntervalMs <= 0 || this.closed) return;
    this.pingTimer = setInterval(() => this.pingTick(), this.opts.pingIntervalMs);
    this.pingTimer.unref();
  }

  /**
   * Every interval: the previous ping must have been answered, unless something else arrived
   * meanwhile, or we could not expect an answer (we were paused, so we did not read; or our own
   * queue was not empty, so the ping may still be waiting behind data the peer is slow to take).
   */
  private pingTick(): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const silent =
      !this.heardSincePing && !this.pausedSincePing && !this.bufferedAtPing && this.ws.bufferedAmount === 0;
    if (this.awaitingPong && silent) {
      this.failure ??= new Error(
        `no pong within ${this.opts.pingIntervalMs / 1000} s: the peer or a proxy on the way is gone`,
      );
      this.ws.terminate();
      return;
    }
    this.heardSincePing = false;
    this.pausedSincePing = this.paused;
    this.bufferedAtPing = this.ws.bufferedAmount > 0;
    this.awaitingPong = true;
    this.ws.ping();
  }
}

function describeWsError(err: Error & { code?: string }): string {
  if (err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
    return `sent a WebSocket message over the ${MAX_PAYLOAD}-byte limit; closed with 1009 (message too big)`;
  }
  if (err.code?.startsWith("WS_ERR_"))
    return `${err.message.replace(/^Invalid WebSocket frame: /, "invalid WebSocket frame: ")}`;
  return err.message;
}

function describeSocketError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "ECONNRESET":
      return "connection reset by the peer";
    case "EPIPE":
      return "connection closed by the peer while sending (broken pipe)";
    case "ETIMEDOUT":
      return "connection timed out (the peer is unreachable)";
    default:
      return err.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Server

const KEY_RE = /^[+/0-9A-Za-z]{22}==$/;

function pathOf(url: string | undefined): string {
  const u = url ?? "/";
  const q = u.indexOf("?");
  return q >= 0 ? u.slice(0, q) : u;
}

function socketPeer(socket: Duplex): string {
  const s = socket as net.Socket;
  return s.remoteAddress ? formatHostPort(s.remoteAddress, s.remotePort ?? 0) : "local socket";
}

/** The client as a proxy in front reports it: first X-Forwarded-For entry, else Forwarded for=. */
export function forwardedFor(headers: http.IncomingHttpHeaders): string | undefined {
  const xff = headers["x-forwarded-for"];
  let v: string | undefined = (Array.isArray(xff) ? xff[0] : xff)?.split(",")[0];
  if (!v?.trim() && typeof headers.forwarded === "string") {
    const m = /(?:^|[;,\s])for=("?)([^";,]+)\1/i.exec(headers.forwarded);
    v = m?.[2];
  }
  const clean = v
    ?.trim()
    .replace(/[^0-9A-Za-z.:[\]_-]/g, "")
    .slice(0, 100);
  return clean ? clean : undefined;
}

export async function listenWebSocket(
  cfg: Config,
  log: Logger,
  onLink: (link: Link) => void,
): Promise<Listener> {
  const wantedPath = cfg.wsServer.path;
  const peerOf = (req: http.IncomingMessage) =>
    (cfg.wsServer.trustProxy ? forwardedFor(req.headers) : undefined) ?? socketPeer(req.socket);
  const refusal = (peer: string, status: number, why: string, req?: http.IncomingMessage) =>
    log.warn(
      { peer, status, path: req ? pathOf(req.url) : undefined, reason: why },
      `refused ${req ? `${req.method} ${pathOf(req.url).slice(0, 200)} ` : ""}from ${peer}: ${why} (HTTP ${status})`,
    );
  /** Answer an upgrade request with a plain HTTP error and close. */
  const refuseUpgrade = (
    socket: Duplex,
    req: http.IncomingMessage,
    status: number,
    why: string,
    extra: Record<string, string> = {},
  ) => {
    refusal(peerOf(req), status, why, req);
    const body = `${status} ${http.STATUS_CODES[status]}: ${why}\n`;
    const headers = {
      Connection: "close",
      "Content-Type": "text/plain; charset=utf-8",
      "Content-Length": Buffer.byteLength(body),
      ...extra,
    };
    if (!socket.writable) return void socket.destroy();
    socket.once("finish", () => socket.destroy());
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}`)
        .join("\r\n")}\r\n\r\n${body}`,
    );
  };

  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: MAX_PAYLOAD,
    clientTracking: false,
  });
  // Anything the checks below let through and ws still rejects: same refusal, same single log line.
  wss.on("wsClientError", (err: Error, socket: Duplex, req: http.IncomingMessage) =>
    refuseUpgrade(socket, req, 400, err.message),
  );

  const server = http.createServer({
    noDelay: true,
    keepAlive: cfg.keepAlive,
    keepAliveInitialDelay: KEEPALIVE_DELAY_MS,
  });

  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = pathOf(req.url);
    const peer = peerOf(req);
    res.shouldKeepAlive = false;
    if (wantedPath !== undefined && path !== wantedPath) {
      refusal(peer, 404, `no WebSocket endpoint at ${path.slice(0, 200)}`, req);
      res.writeHead(404, {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": 14,
        Connection: "close",
      });
      res.end("404 Not Found\n");
      return;
    }
    refusal(peer, 426, "plain HTTP request without a WebSocket upgrade", req);
    const body =
      "426 Upgrade Required: this is a monopiped WebSocket endpoint; connect with: monopiped -e -t ws://HOST/PATH (or wss://)\n";
    res.writeHead(426, {
      "Content-Type": "text/plain; charset=utf-8",
      "Content-Length": Buffer.byteLength(body),
      Upgrade: "websocket",
      Connection: "close, Upgrade",
    });
    res.end(body);
  });

  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => socket.destroy());
    const path = pathOf(req.url);
    if (wantedPath !== undefined && path !== wantedPath) {
      return refuseUpgrade(
        socket,
        req,
        404,
        `no WebSocket endpoint at ${path.slice(0, 200)} (serving ${wantedPath})`,
      );
    }
    if (req.method !== "GET")
      return refuseUpgrade(socket, req, 405, `WebSocket upgrade with method ${req.method}`);
    const upgrade = req.headers.upgrade ?? "";
    if (upgrade.toLowerCase() !== "websocket") {
      return refuseUpgrade(socket, req, 400, `"Upgrade: ${upgrade.slice(0, 50)}" is not a WebSocket upgrade`);
    }
    const key = req.headers["sec-websocket-key"];
    if (key === undefined || !KEY_RE.test(key))
      return refuseUpgrade(socket, req, 400, "missing or invalid Sec-WebSocket-Key header");
    const version = req.headers["sec-websocket-version"];
    if (version !== "13") {
      return refuseUpgrade(
        socket,
        req,
        400,
        `unsupported Sec-WebSocket-Version ${String(version).slice(0, 20)} (13 expected)`,
        {
          "Sec-WebSocket-Version": "13",
        },
      );
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const peer = peerOf(req);
      log.debug({ peer, path }, "WebSocket upgrade accepted");
      onLink(new WsLink(ws, socket, peer, { pingIntervalMs: cfg.pingIntervalMs, pings: "after-peer" }));
    });
  });

  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    const peer = socketPeer(socket);
    if (err.code === "ECONNRESET" || !socket.writable) {
      log.debug({ peer, reason: err.message }, `HTTP connection from ${peer} dropped: ${err.message}`);
      socket.destroy();
      return;
    }
    const status =
      err.code === "HPE_HEADER_OVERFLOW" ? 431 : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
    refusal(peer, status, `malformed HTTP request (${err.code ?? err.message})`);
    socket.once("finish", () => socket.destroy());
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
    );
  });

  await bindServer(server, cfg.listen);
  server.on("error", (err) => log.error({ reason: err.message }, `WebSocket listener error: ${err.message}`));
  return { address: boundAddress(server, cfg.listen), close: () => server.close() };
}

// ---------------------------------------------------------------------------------------------
// Client

/** Warnings about the WebSocket client options; the tunnel logs them once at start-up. */
export function wsClientWarnings(cfg: Config): string[] {
  if (cfg.target.kind !== "ws") return [];
  const c = cfg.wsClient;
  const out: string[] = [];
  if (c.insecure) {
    out.push(
      cfg.target.secure
        ? `--insecure: the TLS certificate of ${cfg.target.text} is NOT verified (testing only!): anyone on the way can pose as the server at the TLS level and read the HTTP upgrade (its headers); the tunnel's own handshake still authenticates the peer with the key file`
        : `--insecure has no effect on ${cfg.target.text}: ws:// has no TLS`,
    );
  }
  if (!cfg.target.secure && c.caFile !== undefined)
    out.push(`--ca has no effect on ${cfg.target.text}: ws:// has no TLS`);
  if (!cfg.target.secure && c.sni !== undefined)
    out.push(`--sni has no effect on ${cfg.target.text}: ws:// has no TLS`);
  return out;
}

let caCache: { file: string; ca: string[] } | undefined;

/** The default trust (bundled roots, NODE_EXTRA_CA_CERTS, --use-system-ca where Node has it) plus --ca FILE. */
function trustWith(caFile: string): string[] {
  if (caCache?.file === caFile) return caCache.ca;
  let pem: string;
  try {
    pem = readFileSync(caFile, "utf8");
  } catch (err) {
    throw new Error(
      `cannot read --ca ${caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----"))
    throw new Error(`--ca ${caFile}: no PEM certificate in it`);
  const getCA = (tls as { getCACertificates?: (type: string) => string[] }).getCACertificates;
  let base: string[];
  if (getCA) base = getCA("default");
  else {
    base = [...tls.rootCertificates];
    const extra = process.env.NODE_EXTRA_CA_CERTS;
    if (extra) {
      try {
        base.push(readFileSync(extra, "utf8"));
      } catch {
        // Node itself warned about it at start-up.
      }
    }
  }
  caCache = { file: caFile, ca: [...base, pem] };
  return caCache.ca;
}

function stripBrackets(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/** NO_PROXY: comma/space separated hosts, .suffixes, *.suffixes, host:port, IP/CIDR; '*' = everything. */
export function noProxyMatches(host: string, port: number, noProxy: string | undefined): boolean {
  if (!noProxy) return false;
  const h = stripBrackets(host.toLowerCase()).replace(/\.$/, "");
  for (let entry of noProxy.toLowerCase().split(/[\s,]+/)) {
    if (entry === "") continue;
    if (entry === "*") return true;
    let entryPort: number | undefined;
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(entry);
    if (m) {
      entry = m[1];
      entryPort = Number(m[2]);
    }
    if (entryPort !== undefined && entryPort !== port) continue;
    entry = stripBrackets(entry).replace(/^\*\./, ".").replace(/\.$/, "");
    const slash = entry.indexOf("/");
    if (slash > 0 && net.isIP(h)) {
      const base = entry.slice(0, slash);
      const bits = Number(entry.slice(slash + 1));
      const family = net.isIP(base);
      if (family === 0 || family !== net.isIP(h) || !Number.isInteger(bits)) continue;
      const list = new net.BlockList();
      try {
        list.addSubnet(base, bits, family === 6 ? "ipv6" : "ipv4");
      } catch {
        continue;
      }
      if (list.check(h, family === 6 ? "ipv6" : "ipv4")) return true;
      continue;
    }
    if (entry.startsWith(".")) {
      if (h.endsWith(entry) || h === entry.slice(1)) return true;
    } else if (h === entry || (net.isIP(h) === 0 && h.endsWith(`.${entry}`))) return true;
  }
  return false;
}

/** The HTTP CONNECT proxy for a URL: --proxy, else HTTPS_PROXY (wss) / HTTP_PROXY (ws) unless NO_PROXY says no. */
export function proxyFor(
  url: URL,
  explicit: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): URL | undefined {
  let raw = explicit;
  let source = "--proxy";
  if (raw === undefined) {
    const secure = url.protocol === "wss:";
    const names = secure ? ["https_proxy", "HTTPS_PROXY"] : ["http_proxy", "HTTP_PROXY"];
    const name = names.find((n) => env[n]);
    if (!name) return undefined;
    raw = env[name] as string;
    source = name;
    const port = Number(url.port) || (secure ? 443 : 80);
    if (noProxyMatches(url.hostname, port, env.no_proxy || env.NO_PROXY)) return undefined;
  }
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let proxy: URL;
  try {
    proxy = new URL(withScheme);
  } catch {
    throw new Error(`${source} ${redact(raw)}: not a URL (expected http://[user:pass@]host:port)`);
  }
  if (proxy.protocol !== "http:" && proxy.protocol !== "https:") {
    throw new Error(
      `${source} ${redact(raw)}: only http:// and https:// (HTTP CONNECT) proxies are supported`,
    );
  }
  return proxy;
}

function redact(text: string): string {
  return text.replace(/\/\/[^@/]*@/, "//***@");
}

function proxyName(proxy: URL): string {
  return `${proxy.protocol}//${proxy.host}`;
}

interface TlsTrust {
  ca?: string[];
  rejectUnauthorized: boolean;
}

/** Open a tunnel to host:port through an HTTP CONNECT proxy; resolves with the raw socket. */
function connectThroughProxy(
  proxy: URL,
  host: string,
  port: number,
  cfg: Config,
  trust: TlsTrust,
  track: (req: http.ClientRequest) => void,
): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const target = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
    const name = proxyName(proxy);
    const headers: Record<string, string> = { Host: target };
    if (proxy.username || proxy.password) {
      const cred = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
      headers["Proxy-Authorization"] = `Basic ${Buffer.from(cred).toString("base64")}`;
    }
    const proxyHost = stripBrackets(proxy.hostname);
    const options: https.RequestOptions = {
      host: proxyHost,
      port: Number(proxy.port) || (proxy.protocol === "https:" ? 443 : 80),
      method: "CONNECT",
      path: target,
      headers,
      agent: false,
      localAddress: cfg.bindHost,
    };
    if (proxy.protocol === "https:") {
      Object.assign(options, {
        ...trust,
        servername: net.isIP(proxyHost) ? undefined : proxyHost,
      });
    }
    const req = (proxy.protocol === "https:" ? https : http).request(options);
    track(req);
    const refused = (status: number | undefined, text: string | undefined) => {
      const hint =
        status === 407
          ? headers["Proxy-Authorization"]
            ? " (wrong proxy credentials?)"
            : " (the proxy wants credentials: --proxy http://user:pass@host:port)"
          : "";
      reject(
        new Error(
          `proxy ${name} refused CONNECT to ${target}: HTTP ${status}${text ? ` ${text}` : ""}${hint}`,
        ),
      );
    };
    req.once("connect", (res: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      if (res.statusCode === undefined || res.statusCode < 200 || res.statusCode > 299) {
        socket.destroy();
        refused(res.statusCode, res.statusMessage);
        return;
      }
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    req.once("response", (res: http.IncomingMessage) => {
      res.resume();
      req.destroy();
      refused(res.statusCode, res.statusMessage);
    });
    req.once("error", (err: NodeJS.ErrnoException) =>
      reject(new Error(connectErrorText(`proxy ${name}`, err))),
    );
    req.end();
  });
}

const CERT_ERROR = /CERT|SIGNATURE|ISSUER|INVALID_CA|INVALID_PURPOSE|UNTRUSTED|REJECTED/;

function describeDialError(
  text: string,
  err: NodeJS.ErrnoException,
  stage: string,
  via: string,
  servername: string,
): string {
  const code = err.code ?? "";
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return `TLS certificate of ${text} not valid for this name: ${err.message}; use --sni NAME if the server's certificate is for another name, or (testing only) --insecure`;
  }
  if (CERT_ERROR.test(code)) {
    return `TLS certificate of ${text} not trusted: ${err.message} (${code}); use --ca FILE or (testing only) --insecure`;
  }
  if (/wrong version number|packet length too long|unknown protocol|http request/i.test(err.message)) {
    return `TLS handshake with ${text} failed: ${err.message.trim()} (is it really a wss:// endpoint? for plain HTTP use ws://)`;
  }
  const alert = /(?:tlsv1|tlsv13|sslv3) (?:alert )?([a-z ]+?)(?::|$)/i.exec(err.message)?.[1];
  if (alert) {
    return `TLS handshake with ${text} failed: the server answered "${alert}" (has it a certificate for ${servername}? see --sni)`;
  }
  if (code === "EPROTO" || code.startsWith("ERR_SSL"))
    return `TLS handshake with ${text} failed: ${err.message.trim()}`;
  if (/^Invalid Sec-WebSocket-Accept|^Invalid Upgrade header|^Server sent/.test(err.message)) {
    return `${text} is not a proper WebSocket server: ${err.message}`;
  }
  if (code === "ECONNRESET" || err.message === "socket hang up") {
    return `${text}${via} closed the connection while ${stage}`;
  }
  if (code) return connectErrorText(`${text}${via}`, err);
  return `cannot connect to ${text}${via}: ${err.message}`;
}

function describeAnswer(text: string, res: http.IncomingMessage, via: string): string {
  const status = res.statusCode ?? 0;
  let hint = "";
  if (status === 404) hint = " (wrong path? check the URL, the server's --path and the proxy's location)";
  else if (status === 400) hint = " (the server or a proxy did not accept the upgrade request)";
  else if (status === 401 || status === 403)
    hint = " (the server wants credentials, e.g. -H 'Authorization: ...')";
  else if (status === 426) hint = " (a proxy on the way dropped the Upgrade headers)";
  else if (status >= 300 && status < 400 && res.headers.location)
    hint = ` (redirect to ${res.headers.location}: use that URL)`;
  else if (status === 502 || status === 503 || status === 504)
    hint = " (the proxy could not reach the monopiped -w server)";
  const statusText = res.statusMessage ? ` ${res.statusMessage}` : "";
  return `${text}${via} answered HTTP ${status}${statusText} instead of switching to WebSocket${hint}`;
}

/** Connect a WebSocket link to a ws:// or wss:// URL. Resolves once the upgrade is done (paused). */
export function dialWebSocket(addr: WsAddress, cfg: Config): Promise<Link> {
  return new Promise((resolve, reject) => {
    const url = addr.url;
    const host = stripBrackets(url.hostname);
    const port = Number(url.port) || (addr.secure ? 443 : 80);
    const c = cfg.wsClient;
    let settled = false;
    let stage = "connecting";
    let via = "";
    let ws: WebSocket | undefined;
    let socket: Duplex | undefined;
    let proxyReq: http.ClientRequest | undefined;

    const fail = (message: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      proxyReq?.destroy();
      ws?.terminate();
      socket?.destroy();
      reject(new Error(message));
    };
    const timer = setTimeout(
      () => fail(`timeout after ${cfg.timeoutMs / 1000} s connecting to ${addr.text}${via} (${stage})`),
      cfg.timeoutMs,
    );

    let trust: TlsTrust;
    let proxy: URL | undefined;
    try {
      trust = {
        ca: addr.secure && c.caFile !== undefined ? trustWith(c.caFile) : undefined,
        rejectUnauthorized: !c.insecure,
      };
      proxy = proxyFor(url, c.proxy);
    } catch (err) {
      fail((err as Error).message);
      return;
    }
    const servername = c.sni ?? (net.isIP(host) ? undefined : host);

    const makeSocket = (tunnel: Duplex | undefined): Duplex => {
      let s: Duplex;
      if (addr.secure) {
        stage = "in the TLS handshake";
        const t = tls.connect({
          ...(tunnel ? { socket: tunnel } : { port, localAddress: cfg.bindHost }),
          host,
          servername: servername && net.isIP(servername) === 0 ? servername : undefined,
          ca: trust.ca,
          rejectUnauthorized: trust.rejectUnauthorized,
          ALPNProtocols: ["http/1.1"],
        });
        t.once("secureConnect", () => {
          stage = "waiting for the answer to the WebSocket upgrade";
        });
        s = t;
      } else if (tunnel) {
        stage = "waiting for the answer to the WebSocket upgrade";
        s = tunnel;
      } else {
        const n = net.connect({ host, port, localAddress: cfg.bindHost });
        n.once("connect", () => {
          stage = "waiting for the answer to the WebSocket upgrade";
        });
        s = n;
      }
      const tcp = tunnel ?? s;
      if (cfg.keepAlive && tcp instanceof net.Socket) tcp.setKeepAlive(true, KEEPALIVE_DELAY_MS);
      socket = s;
      return s;
    };

    const start = (tunnel: Duplex | undefined) => {
      if (settled) {
        tunnel?.destroy();
        return;
      }
      const headers: Record<string, string> = { ...c.headers };
      if (c.hostHeader !== undefined) {
        for (const k of Object.keys(headers)) if (k.toLowerCase() === "host") delete headers[k];
        headers.Host = c.hostHeader;
      }
      const options: ClientOptions = {
        perMessageDeflate: false,
        maxPayload: MAX_PAYLOAD,
        followRedirects: false,
        headers,
        createConnection: (() => makeSocket(tunnel)) as unknown as ClientOptions["createConnection"],
      };
      try {
        ws = new WebSocket(url, options);
      } catch (err) {
        fail(`cannot connect to ${addr.text}: ${(err as Error).message}`);
        return;
      }
      const w = ws;
      w.on("error", (err: NodeJS.ErrnoException) =>
        fail(describeDialError(addr.text, err, stage, via, servername ?? host)),
      );
      w.on("unexpected-response", (req: http.ClientRequest, res: http.IncomingMessage) => {
        res.resume();
        fail(describeAnswer(addr.text, res, via));
        req.destroy();
      });
      w.once("open", () => {
        if (settled || !socket) {
          w.terminate();
          return;
        }
        settled = true;
        clearTimeout(timer);
        w.removeAllListeners("error");
        w.removeAllListeners("unexpected-response");
        resolve(
          new WsLink(w, socket, addr.text, {
            pingIntervalMs: cfg.pingIntervalMs,
            // The original Rust monopiped treats a ping as fatal: never ping a monopiped1 server.
            pings: cfg.protocol === "monopiped1" ? "never" : "always",
          }),
        );
      });
    };

    if (proxy) {
      via = ` via proxy ${proxyName(proxy)}`;
      stage = "connecting through the proxy";
      connectThroughProxy(proxy, host, port, cfg, trust, (req) => {
        proxyReq = req;
      }).then(
        (tunnel) => {
          proxyReq = undefined;
          start(tunnel);
        },
        (err: Error) => fail(err.message),
      );
    } else start(undefined);
  });
}
