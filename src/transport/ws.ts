import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import WebSocket, { type ClientOptions, WebSocketServer } from "ws";
import type { SocketAddress, WsAddress } from "../address.js";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import type { PendingEntry, PendingSet } from "../pending.js";
import { FailureSummary } from "../summary.js";
import { adoptUpgraded, fastConnectOptions, markFast, setReadSink } from "./fastread.js";
import type { Link, Listener } from "./link.js";
import { connectThroughProxy, proxyFor, proxyName, stripBrackets, type TlsTrust } from "./proxy.js";
import { bindServer, boundAddress, connectErrorText, describePeer } from "./tcp.js";
import { KEEPALIVE_DELAY_MS, MAX_PAYLOAD, WsLink } from "./ws-link.js";

export { noProxyMatches, proxyFor } from "./proxy.js";

// ---------------------------------------------------------------------------------------------
// Server

const KEY_RE = /^[+/0-9A-Za-z]{22}==$/;
const NO_BYTES = Buffer.alloc(0);

function pathOf(url: string | undefined): string {
  const u = url ?? "/";
  const q = u.indexOf("?");
  return q >= 0 ? u.slice(0, q) : u;
}

/**
 * The client as the proxy in front reports it: the LAST X-Forwarded-For entry (the one our proxy
 * appended; entries to its left came with the request and the client may have written them), else
 * the for= of the last Forwarded element. Only meaningful when that proxy appends or overwrites the
 * header: see --trust-proxy in docs/WEBSOCKET.md.
 */
export function forwardedFor(headers: http.IncomingHttpHeaders): string | undefined {
  const xff = headers["x-forwarded-for"];
  const xffText = Array.isArray(xff) ? xff.join(",") : xff;
  let v: string | undefined = xffText
    ?.split(",")
    .map((e) => e.trim())
    .filter((e) => e !== "")
    .pop();
  const fwd = headers.forwarded;
  if (!v && typeof fwd === "string") {
    const last = fwd
      .split(",")
      .map((e) => e.trim())
      .filter((e) => e !== "")
      .pop();
    const m = last ? /(?:^|[;\s])for=("?)([^";,]+)\1/i.exec(last) : null;
    v = m?.[2];
  }
  const clean = v
    ?.trim()
    .replace(/[^0-9A-Za-z.:[\]_-]/g, "")
    .slice(0, 100);
  return clean ? clean : undefined;
}

/** The answer to GET /healthz: for the health checks of nginx, Caddy, HAProxy, ... (never logged). */
export const HEALTH_PATH = "/healthz";
const HEALTH_BODY = "ok\n";
/** The 101 answer of our -w server carries this header: it honours a client's half-close (see WsLink). */
export const HALF_CLOSE_HEADER = "X-Monopiped-Half-Close";

/** One accepted connection of the -w listener until its upgrade is done (or it is gone). */
interface Unupgraded {
  entry: PendingEntry;
  timer: NodeJS.Timeout;
  /** Counted in the PendingSet (false once upgraded, evicted or closed). */
  counted: boolean;
}

export async function listenWebSocket(
  cfg: Config,
  at: SocketAddress,
  log: Logger,
  onLink: (link: Link) => void,
  pending: PendingSet,
): Promise<Listener> {
  const wantedPath = cfg.wsServer.path;
  const helloTimeoutMs = cfg.helloTimeoutMs;
  const summary = new FailureSummary(log, "WebSocket connections refused before the upgrade");
  const peerOf = (req: http.IncomingMessage) =>
    (cfg.wsServer.trustProxy ? forwardedFor(req.headers) : undefined) ?? describePeer(req.socket);
  /** A stranger's failure: counted (first one logged, the rest summed up), detail at debug. */
  const refusal = (peer: string, status: number, why: string, req?: http.IncomingMessage, kind?: string) =>
    summary.note(
      kind ?? `HTTP ${status}`,
      `refused ${req ? `${req.method} ${pathOf(req.url).slice(0, 200)} ` : ""}from ${peer}: ${why} (HTTP ${status})`,
      { peer, status, path: req ? pathOf(req.url) : undefined, reason: why },
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
    closeAfter(
      socket,
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}`)
        .join("\r\n")}\r\n\r\n${body}`,
    );
  };

  // Every accepted socket is pending until its upgrade: counted in the tunnel's cap of connections
  // that have not authenticated (the oldest is evicted when it is full), and given --hello-timeout
  // to send its request headers. Node's own HTTP timeouts (60 s for headers) are far too lax.
  const unupgraded = new WeakMap<Duplex, Unupgraded>();
  const release = (socket: Duplex) => {
    const u = unupgraded.get(socket);
    if (!u) return;
    clearTimeout(u.timer);
    if (u.counted) pending.delete(u.entry);
    u.counted = false;
    unupgraded.delete(socket);
  };

  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: MAX_PAYLOAD,
    clientTracking: false,
  });
  // Anything the checks below let through and ws still rejects: the same refusal.
  wss.on("wsClientError", (err: Error, socket: Duplex, req: http.IncomingMessage) =>
    refuseUpgrade(socket, req, 400, err.message),
  );
  // Tell our clients that this server honours a half-close (WsLink: a Close is the end of one direction).
  wss.on("headers", (headers: string[]) => headers.push(`${HALF_CLOSE_HEADER}: 1`));

  const server = http.createServer({
    noDelay: true,
    keepAlive: cfg.keepAlive,
    keepAliveInitialDelay: KEEPALIVE_DELAY_MS,
  });

  server.on("connection", (socket: net.Socket) => {
    const peer = describePeer(socket);
    const u: Unupgraded = {
      counted: true,
      entry: {
        evict: () => {
          u.counted = false;
          summary.note(
            "evicted",
            `connection from ${peer} dropped before its WebSocket upgrade: too many connections have not authenticated (--max-pending ${pending.cap})`,
            { peer, reason: "evicted" },
          );
          socket.destroy();
        },
      },
      timer: setTimeout(() => {
        summary.note(
          "timeout",
          `connection from ${peer} closed: no complete WebSocket upgrade request within ${helloTimeoutMs / 1000} s (--hello-timeout)`,
          { peer, reason: "hello timeout" },
        );
        release(socket);
        socket.destroy();
      }, helloTimeoutMs),
    };
    u.timer.unref();
    unupgraded.set(socket, u);
    socket.once("close", () => release(socket));
    pending.add(u.entry);
  });

  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = pathOf(req.url);
    res.shouldKeepAlive = false;
    if (path === HEALTH_PATH && (req.method === "GET" || req.method === "HEAD")) {
      res.writeHead(200, {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": HEALTH_BODY.length,
        "Cache-Control": "no-store",
        Connection: "close",
      });
      res.end(req.method === "HEAD" ? undefined : HEALTH_BODY);
      return;
    }
    const peer = peerOf(req);
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
    // Evicted or timed out while the request was parsed: nothing more to do.
    if (socket.destroyed) return;
    const peer = peerOf(req);
    // From here on the connection reads through the process's shared buffer, as TCP links do
    // (fastread.ts): its handle moves to a new socket, which ws and the link get instead.
    const fast = socket instanceof net.Socket ? adoptUpgraded(socket) : null;
    if (fast) {
      release(socket); // the old socket will never close: it has no handle any more
      fast.on("error", () => fast.destroy());
    }
    const conn: Duplex = fast ?? socket;
    wss.handleUpgrade(req, conn, fast ? NO_BYTES : head, (ws) => {
      // Upgraded: the tunnel counts it again, for its handshake.
      release(socket);
      log.debug({ peer, path }, "WebSocket upgrade accepted");
      onLink(
        new WsLink(
          ws,
          conn,
          peer,
          { pingIntervalMs: cfg.pingIntervalMs, pings: serverPings(cfg), role: "server" },
          fast ? head : undefined,
        ),
      );
    });
  });

  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    const peer = describePeer(socket as net.Socket);
    if (err.code === "ECONNRESET" || !socket.writable) {
      log.debug({ peer, reason: err.message }, `HTTP connection from ${peer} dropped: ${err.message}`);
      socket.destroy();
      return;
    }
    const status =
      err.code === "HPE_HEADER_OVERFLOW" ? 431 : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
    refusal(peer, status, `malformed HTTP request (${err.code ?? err.message})`);
    closeAfter(
      socket,
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
    );
  });

  await bindServer(server, at, cfg.listenFd);
  server.on("error", (err) => log.error({ reason: err.message }, `WebSocket listener error: ${err.message}`));
  return { address: boundAddress(server, at), close: () => server.close() };
}

/**
 * Whether the -w server pings its clients: always, unless it may be serving an original Rust
 * monopiped client (monopiped1, or auto), which treats a ping as fatal: those get pings only once
 * they have pinged (which proves they tolerate them).
 */
export function serverPings(cfg: Config): "always" | "after-peer" {
  return cfg.protocol === "monopiped1" || cfg.protocol === "auto" ? "after-peer" : "always";
}

/** Write a last answer and close; a peer that does not take it within a second is cut. */
function closeAfter(socket: Duplex, answer: string): void {
  if (!socket.writable) return void socket.destroy();
  socket.once("finish", () => socket.destroy());
  socket.end(answer);
  setTimeout(() => socket.destroy(), 1000).unref();
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
        // Read through the process's shared buffer (fastread.ts). Until the link takes the reads
        // over, the HTTP client gets them as 'data' events, in copies.
        const n = net.connect({ host, port, localAddress: cfg.bindHost, ...fastConnectOptions() });
        markFast(n);
        setReadSink(n, { onBytes: (chunk) => n.emit("data", Buffer.from(chunk)) });
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
      // Our own -w server says it honours a half-close; any other (the original Rust one) does not.
      let peerHalfCloses = false;
      w.once("upgrade", (res: http.IncomingMessage) => {
        peerHalfCloses = res.headers[HALF_CLOSE_HEADER.toLowerCase()] === "1";
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
            role: "client",
            peerHalfCloses,
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
