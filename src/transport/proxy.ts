/**
 * HTTP CONNECT proxies for the WebSocket client: --proxy, or HTTPS_PROXY / HTTP_PROXY / NO_PROXY
 * from the environment as other Node tools read them.
 */
import http from "node:http";
import https from "node:https";
import net from "node:net";
import type { Duplex } from "node:stream";
import type { Config } from "../config.js";
import { connectErrorText } from "./tcp.js";

export function stripBrackets(host: string): string {
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

export function proxyName(proxy: URL): string {
  return `${proxy.protocol}//${proxy.host}`;
}

export interface TlsTrust {
  ca?: string[];
  rejectUnauthorized: boolean;
}

/** Open a tunnel to host:port through an HTTP CONNECT proxy; resolves with the raw socket. */
export function connectThroughProxy(
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
