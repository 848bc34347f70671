/**
 * Helpers for the WebSocket end-to-end tests: a test CA (openssl), real Caddy and nginx started on
 * loopback from the templates beside this file, and a small HTTP CONNECT proxy.
 * Every process is started with its own temporary directory and stopped by PID.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { fileURLToPath } from "node:url";

/** test/e2e/ws in the source tree (this file runs from dist/test/e2e/ws). */
export const TEMPLATE_DIR = fileURLToPath(new URL("../../../../test/e2e/ws/", import.meta.url));

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Poll a TCP connect to 127.0.0.1:port, at most `tries` times 100 ms apart. */
export async function waitForPort(
  port: number,
  what: string,
  child?: ChildProcess,
  tries = 100,
): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (child && child.exitCode !== null)
      throw new Error(`${what} exited with ${child.exitCode} before listening on ${port}`);
    if (await canConnect(port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not listening on 127.0.0.1:${port} after ${tries * 100} ms`);
}

/** Fill {{NAME}} placeholders; every placeholder must be given. */
export function fillTemplate(name: string, vars: Record<string, string | number>): string {
  const text = readFileSync(join(TEMPLATE_DIR, name), "utf8");
  return text.replace(/\{\{([A-Z_]+)\}\}/g, (_, k: string) => {
    if (!(k in vars)) throw new Error(`template ${name}: no value for {{${k}}}`);
    return String(vars[k]);
  });
}

/** A CA and a server certificate for localhost / 127.0.0.1 signed by it: ca.pem, server.pem, server.key. */
export function makeTestCa(dir: string): { caFile: string; certFile: string; keyFile: string } {
  const f = (n: string) => join(dir, n);
  const run = (args: string[]) =>
    execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  run([
    "req",
    "-x509",
    ...ec,
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.pem"),
    "-days",
    "2",
    "-subj",
    "/CN=monopiped test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  run(["req", ...ec, "-keyout", f("server.key"), "-out", f("server.csr"), "-subj", "/CN=localhost"]);
  writeFileSync(
    f("server.ext"),
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
  );
  run([
    "x509",
    "-req",
    "-in",
    f("server.csr"),
    "-CA",
    f("ca.pem"),
    "-CAkey",
    f("ca.key"),
    "-CAcreateserial",
    "-out",
    f("server.pem"),
    "-days",
    "2",
    "-extfile",
    f("server.ext"),
  ]);
  return { caFile: f("ca.pem"), certFile: f("server.pem"), keyFile: f("server.key") };
}

export interface Proc {
  child: ChildProcess;
  output: () => string;
  stop: () => Promise<void>;
}

function track(child: ChildProcess): Proc {
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
  return {
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Caddy from test/e2e/ws/Caddyfile; HOME and XDG dirs point into `dir` so nothing outside is touched. */
export async function startCaddy(
  dir: string,
  vars: { WS_PORT: number; WSS_PORT: number; UPSTREAM_PORT: number },
): Promise<Proc> {
  const conf = join(dir, "Caddyfile");
  writeFileSync(conf, fillTemplate("Caddyfile", { ...vars, DIR: dir }));
  const home = join(dir, "caddy-home");
  mkdirSync(home, { recursive: true });
  const child = spawn("caddy", ["run", "--config", conf, "--adapter", "caddyfile"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      PATH: process.env.PATH,
      HOME: home,
      XDG_DATA_HOME: join(home, "data"),
      XDG_CONFIG_HOME: join(home, "config"),
    },
  });
  const proc = track(child);
  try {
    await waitForPort(vars.WS_PORT, "caddy", child);
    await waitForPort(vars.WSS_PORT, "caddy", child);
  } catch (err) {
    await proc.stop();
    throw new Error(`${(err as Error).message}\n${proc.output()}`);
  }
  return proc;
}

/** nginx from test/e2e/ws/nginx.conf, prefix, pid and logs in `dir`, in the foreground. */
export async function startNginx(
  dir: string,
  vars: { PORT: number; UPSTREAM_PORT: number; QUIET_UPSTREAM_PORT: number; READ_TIMEOUT: string },
): Promise<Proc> {
  mkdirSync(join(dir, "nginx-tmp"), { recursive: true });
  const conf = join(dir, "nginx.conf");
  writeFileSync(conf, fillTemplate("nginx.conf", { ...vars, DIR: dir }));
  const bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => existsSync(p));
  const child = spawn(
    bin ?? "nginx",
    ["-p", dir, "-c", conf, "-e", join(dir, "nginx-error.log"), "-g", "daemon off;"],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const proc = track(child);
  const errorLog = () => {
    try {
      return readFileSync(join(dir, "nginx-error.log"), "utf8");
    } catch {
      return "";
    }
  };
  try {
    await waitForPort(vars.PORT, "nginx", child);
  } catch (err) {
    await proc.stop();
    throw new Error(`${(err as Error).message}\n${proc.output()}\n${errorLog()}`);
  }
  return { ...proc, output: () => `${proc.output()}${errorLog()}` };
}

export interface ConnectProxy {
  port: number;
  /** One entry per CONNECT request: the target asked for and the Proxy-Authorization sent, if any. */
  requests: { target: string; auth?: string }[];
  close: () => Promise<void>;
}

/** A minimal HTTP CONNECT proxy. With `requireAuth`, requests without that exact Proxy-Authorization get 407. */
export function startConnectProxy(requireAuth?: string): Promise<ConnectProxy> {
  const requests: ConnectProxy["requests"] = [];
  const sockets = new Set<Duplex>();
  const server = http.createServer((_req, res) => {
    res.writeHead(405, { Connection: "close" });
    res.end();
  });
  server.on("connect", (req: http.IncomingMessage, client: Duplex, head: Buffer) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    const target = req.url ?? "";
    const auth = req.headers["proxy-authorization"];
    requests.push({ target, auth });
    if (requireAuth !== undefined && auth !== requireAuth) {
      client.end(
        'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n',
      );
      return;
    }
    const colon = target.lastIndexOf(":");
    const up = net.connect({
      host: target.slice(0, colon).replace(/^\[|\]$/g, ""),
      port: Number(target.slice(colon + 1)),
    });
    sockets.add(up);
    up.on("close", () => sockets.delete(up));
    up.once("connect", () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length > 0) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.on("error", () => client.destroy());
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        requests,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}
