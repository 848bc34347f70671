/**
 * Command line: flags -> one validated Config, and the subcommands.
 *
 *   monopiped -e|-d -l ADDR -t ADDR|URL -k FILE [options]     run one end of a tunnel
 *   monopiped pipe -t ADDR|URL -k FILE [options]              one connection over stdin/stdout (as spipe)
 *   monopiped keygen FILE [--force]                           write a new key file
 *   monopiped demo [--mib N]                                  run a whole tunnel on loopback and verify a transfer
 *   monopiped bench [options]                                 benchmark (see docs/BENCHMARKS.md)
 *
 * The flags are those of the original monopiped (-l/--listener -t -e -d -k -w) and of spiped (-s -t -k
 * -e -d -n -o -b -F -D -j -p -f -g -u -r -R -v --syslog), so either tool's command line works (what
 * differs from spiped: README, "Working with spiped"). A usage error exits 2
 * with a message that names the flag; a start-up failure (key file, address in use) exits 1.
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import { availableParallelism } from "node:os";
import { parseArgs } from "node:util";
import { AddressError, parseAddress, type SocketAddress } from "./address.js";
import type { Config, Mode } from "./config.js";
import { KeyFileError, writeKeyFile } from "./keyfile.js";
import { deriveKeys, readKeyFiles } from "./keys.js";
import { LOG_LEVELS, type LogFormat, type Logger, type LogLevel } from "./log.js";
import { parseRunAs, type RunAs } from "./privileges.js";
import { PROTOCOL_ALIASES } from "./protocol/index.js";

export class UsageError extends Error {}

export const VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version;
  } catch {
    return "unknown";
  }
})();

/** What `monopiped` alone prints (to standard error, exit 2): the commands, and where to learn more. */
export const USAGE = `Usage: monopiped -e|-d -l ADDR -t ADDR|URL -k KEYFILE [options]   one end of a tunnel
       monopiped pipe -t ADDR|URL -k KEYFILE [options]          one connection on stdin/stdout
       monopiped keygen KEYFILE                                  make a new key file
Try 'monopiped --help' for the options and examples.
`;

export const HELP = `monopiped ${VERSION} - encrypted tunnel for TCP applications, over TCP or WebSockets

Usage:
  monopiped -e -l ADDR -t ADDR|URL -k KEYFILE [options]   client end: encrypt and send on
  monopiped -d -l ADDR -t ADDR     -k KEYFILE [options]   server end: decrypt and deliver
  monopiped pipe -t ADDR|URL -k KEYFILE [options]         client end for one connection on
                                                          standard input/output (as spipe)
  monopiped keygen KEYFILE [--force]                      write a new 32-byte key (mode 0600)
  monopiped demo [--mib N]                                tunnel N MiB on loopback and verify it
  monopiped bench [--help]                                measure throughput, latency, memory

Both ends share the key file. The client end (-e) accepts plain connections on -l and sends
them encrypted to -t; the server end (-d) accepts encrypted connections on -l and forwards
them in the clear to -t (e.g. sshd). The server end connects to its target only after the
client has proved it holds the key.

Required:
  -e, --encrypt              client end: plain in, encrypted out
  -d, --decrypt              server end: encrypted in, plain out
  -l, --listen ADDR          where to accept connections (also -s ADDR as spiped, --listener as
                             the original monopiped)
  -t, --target ADDR|URL      where to connect: host:port, [ipv6]:port, /unix/socket, or for -e
                             a ws:// or wss:// URL to reach a -w server through HTTP proxies
  -k, --key FILE             shared key file, at least 32 bytes ("-" = standard input); may be
                             given more than once: a server accepts any of the keys, a client
                             uses the first; SIGHUP re-reads every key file

Options:
  -w, --ws                   -d: accept WebSocket connections (behind Caddy, nginx, ...)
      --protocol NAME        monopiped2 (the default on both ends: replay-safe, forward secret),
                             monopiped1 (alias v1: the original Rust monopiped's wire format),
                             spiped (spiped 1.6's wire format, to work with a real spiped),
                             auto (-d only: also serves original monopiped1 clients, whose
                             replayed handshake reaches the target; it warns at start-up)
  -f, --no-pfs               --protocol spiped: no forward secrecy (as spiped -f)
  -g, --require-pfs          --protocol spiped: refuse a peer without forward secrecy (spiped -g)
  -n, --max-conns N          at most N connections served at once; more wait (default 100,
                             0 = no limit). A -d server counts authenticated connections only
  -o, --timeout SECONDS      handshake and connect timeout (default 5)
      --max-pending N        -d: at most N connections not yet authenticated; for a new one the
                             oldest is dropped (default 1024, 0 = no limit)
      --hello-timeout SECS   -d: the first handshake message must arrive within SECS (default 3)
      --queue-timeout SECS   how long a connection waits for a -n slot before it is refused
                             (default 30)
      --idle-timeout SECS    cut a connection with no byte either way for SECS (default 0 = off)
      --stall-timeout SECS   cut a connection whose queued data makes no progress towards the
                             application or the peer for SECS (default 60, 0 = off)
      --grace SECONDS        on SIGINT/SIGTERM, time open connections get to finish (default 10)
  -b, --bind IP              local address for outgoing connections (also as spiped: [IP]:0)
  -j, --no-keepalive         do not enable TCP keepalive
  -p, --pidfile FILE         write the process id to FILE (removed on exit); checked before
                             binding. With --daemon the default is ADDR.pid (-l ADDR), as spiped
      --daemon               run in the background once listening (spiped's default); the
                             command returns 0 when the background process serves, 1 if it
                             cannot start. Its log goes to a file given as standard error
                             (2>>FILE) or to --syslog, else nowhere
  -F, --foreground           stay in the foreground (the default; accepted as spiped's -F)
  -D, --wait-dns             as spiped -D: look up the -l and -t names until they resolve
                             (retrying with a growing pause, each failure logged once), then serve
      --syslog               log to the local syslog (/dev/log, through util-linux's logger)
                             instead of standard error
  -u, --user USER[:GROUP]    after binding, run as USER (and GROUP; or :GROUP alone), as spiped
  -r, --resolve-interval S,  accepted for spiped compatibility: monopiped resolves the target's
  -R, --no-resolve           name at every connection, never from a cache
      --log-level LEVEL      trace, debug, info (default), warn, error, silent
      --log-format FORMAT    text (default) or json; logs go to standard error (or --syslog)
  -h, --help                 show this help
  -v, --version              print the version

Operations options (docs/OPERATIONS.md):
      --metrics ADDR         serve Prometheus metrics at http://ADDR/metrics and a health check
                             at /healthz (200, or 503 while stopping); off by default
      --workers N|auto       run N processes sharing the listener (auto = one per core; default 1)
      --proxy-protocol       -d: each connection starts with a PROXY protocol v1/v2 header from a
                             trusted balancer (HAProxy send-proxy-v2); logs show the real client

WebSocket options:
      --path /PATH           -d -w: serve only this path (others get 404)
      --trust-proxy          -d -w: log the client address from the last X-Forwarded-For
                             entry (the proxy in front must append or set it; docs/WEBSOCKET.md)
      --ping-interval SECS   ping the WebSocket peer every SECS: -e (never with --protocol
                             monopiped1), -d -w (with monopiped1 or auto: clients that ping);
                             a ping unanswered within the interval (two while data is queued)
                             closes the link (default 30, 0 = off)
      --ca FILE              wss: trust this CA certificate (PEM) besides the system's
      --insecure             wss: do not verify the server certificate (testing only!)
      --sni NAME             wss: TLS server name to send
      --host NAME            WebSocket Host header to send
  -H, --header 'Name: value' extra HTTP header on the upgrade request (repeatable)
      --proxy URL            HTTP CONNECT proxy, http://[user:pass@]host:port (default: the
                             HTTPS_PROXY / HTTP_PROXY / NO_PROXY environment variables)

Examples:
  monopiped keygen key.bin                     # or: dd if=/dev/urandom bs=32 count=1 of=key.bin
  # SSH through the tunnel:
  client:  monopiped -l 127.0.0.1:3000 -t server.example.com:2222 -e -k key.bin
  server:  monopiped -l 0.0.0.0:2222  -t 127.0.0.1:22            -d -k key.bin
  then:    ssh -p3000 127.0.0.1
  # The encrypted leg inside WebSockets, behind a web server that proxies /ssh to port 3000:
  client:  monopiped -l 127.0.0.1:3000 -t wss://server.example.com/ssh -e -k key.bin
  server:  monopiped -l 127.0.0.1:3000 -t 127.0.0.1:22 -d -k key.bin -w
  # No local port at all: ssh runs the client end itself, one per session (as spipe):
  ssh -o ProxyCommand='monopiped pipe -t server.example.com:2222 -k key.bin' server.example.com
  # A spiped command line, in the background as spiped runs (pidfile [0.0.0.0]:2222.pid):
  monopiped -d -s '[0.0.0.0]:2222' -t '[127.0.0.1]:22' -k key.bin --protocol spiped --daemon
  # Also serve clients still running the original monopiped while they migrate:
  server:  monopiped -l 0.0.0.0:2222 -t 127.0.0.1:22 -d -k key.bin --protocol auto

Exit status: 0 after a clean stop (--daemon: once the background process serves), 1 when it
cannot start (key file, pidfile, address), 2 on a usage error.
`;

export const RUN_OPTIONS = {
  encrypt: { type: "boolean", short: "e" },
  decrypt: { type: "boolean", short: "d" },
  listen: { type: "string", short: "l" },
  listener: { type: "string" },
  source: { type: "string", short: "s" },
  target: { type: "string", short: "t" },
  key: { type: "string", short: "k", multiple: true },
  ws: { type: "boolean", short: "w" },
  protocol: { type: "string" },
  "no-pfs": { type: "boolean", short: "f" },
  "require-pfs": { type: "boolean", short: "g" },
  "max-conns": { type: "string", short: "n" },
  timeout: { type: "string", short: "o" },
  "max-pending": { type: "string" },
  "hello-timeout": { type: "string" },
  "queue-timeout": { type: "string" },
  "idle-timeout": { type: "string" },
  "stall-timeout": { type: "string" },
  grace: { type: "string" },
  bind: { type: "string", short: "b" },
  "no-keepalive": { type: "boolean", short: "j" },
  pidfile: { type: "string", short: "p" },
  foreground: { type: "boolean", short: "F" },
  user: { type: "string", short: "u" },
  "resolve-interval": { type: "string", short: "r" },
  "no-resolve": { type: "boolean", short: "R" },
  "wait-dns": { type: "boolean", short: "D" },
  daemon: { type: "boolean" },
  syslog: { type: "boolean" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
  path: { type: "string" },
  "trust-proxy": { type: "boolean" },
  "ping-interval": { type: "string" },
  ca: { type: "string" },
  insecure: { type: "boolean" },
  sni: { type: "string" },
  host: { type: "string" },
  header: { type: "string", short: "H", multiple: true },
  proxy: { type: "string" },
  metrics: { type: "string" },
  workers: { type: "string" },
  "proxy-protocol": { type: "boolean" },
} as const;

/** The spelling of a flag for messages: "-n/--max-conns". */
function flagName(name: string): string {
  const short = (RUN_OPTIONS as Record<string, { short?: string }>)[name]?.short;
  return short ? `-${short}/--${name}` : `--${name}`;
}

/**
 * `-n -1`, `-o -5`: a value that is a negative number belongs to the flag before it (as with
 * spiped's getopt), so that the flag's own check can say what is wrong with it; parseArgs alone
 * would take it for an option and say the flag "needs a value".
 */
function joinNegativeValues(
  argv: string[],
  options: Record<string, { type: "string" | "boolean"; short?: string }>,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const name = a.startsWith("--")
      ? a.slice(2)
      : /^-[^-]$/.test(a)
        ? Object.keys(options).find((k) => options[k].short === a[1])
        : undefined;
    const next = argv[i + 1];
    if (name && options[name]?.type === "string" && next !== undefined && /^-\.?\d/.test(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** parseArgs, with its errors reworded and every option allowed once (as spiped does). */
export function parse<
  T extends Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>,
>(argv: string[], options: T, positionals = false) {
  const args = joinNegativeValues(argv, options);
  const parseStrict = () =>
    parseArgs({ args, options, allowPositionals: positionals, strict: true, tokens: true });
  let parsed: ReturnType<typeof parseStrict>;
  try {
    parsed = parseStrict();
  } catch (err) {
    const e = err as Error & { code?: string };
    const opt = /'([^']+)'/.exec(e.message)?.[1];
    if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION")
      throw new UsageError(`unknown option ${opt ?? e.message}`);
    if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && /ambiguous/.test(e.message)) {
      const long = /--([a-z-]+)/.exec(e.message)?.[1];
      throw new UsageError(
        `option ${opt?.replace(/ <value>$/, "") ?? ""} needs a value; for a value starting with "-" write --${long}=VALUE`,
      );
    }
    if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      throw new UsageError(
        `option ${opt?.replace(/ <value>$/, "") ?? ""} ${/argument missing/.test(e.message) ? "needs a value" : "takes no value"}`,
      );
    }
    if (e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL")
      throw new UsageError(`unexpected argument ${opt ?? ""}`);
    throw new UsageError(e.message);
  }
  const seen = new Set<string>();
  for (const tok of parsed.tokens ?? []) {
    if (tok.kind !== "option") continue;
    if (options[tok.name]?.multiple) continue;
    if (seen.has(tok.name)) throw new UsageError(`${tok.rawName} given more than once`);
    seen.add(tok.name);
  }
  return parsed;
}

function number(
  value: string | undefined,
  flag: string,
  def: number,
  check: (n: number) => boolean,
  what: string,
): number {
  if (value === undefined) return def;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || !check(n))
    throw new UsageError(`${flag} ${value}: expected ${what}`);
  return n;
}

/** A duration flag in seconds -> milliseconds; `offAllowed`: 0 turns the feature off. */
function seconds(value: string | undefined, flag: string, def: number, offAllowed: boolean): number {
  const n = number(
    value,
    flag,
    def,
    (x) => (offAllowed ? x >= 0 : x > 0) && x <= 86400 * 365,
    offAllowed ? "seconds >= 0 (0 = off)" : "seconds > 0",
  );
  return Math.round(n * 1000);
}

function address(value: string, flag: string, allowUrl: boolean, allowPortZero: boolean) {
  try {
    return parseAddress(value, { allowUrl, allowPortZero });
  } catch (err) {
    if (err instanceof AddressError) throw new UsageError(`${flag}: ${err.message}`);
    throw err;
  }
}

/**
 * -b: the local address of outgoing connections, as spiped takes it: an IP address, bare or in
 * brackets, with an optional port that can only be 0 (any) here.
 */
function bindAddress(text: string): string {
  const m = /^\[([^\]]*)\](?::(\d+))?$/.exec(text) ?? /^([^:[\]]*)(?::(\d+))?$/.exec(text);
  const host = m ? m[1] : text;
  if (net.isIP(host) === 0)
    throw new UsageError(
      `-b/--bind ${text}: expected an IP address of this machine, e.g. -b 192.0.2.10 or -b [2001:db8::10]`,
    );
  if (m?.[2] !== undefined && Number(m[2]) !== 0)
    throw new UsageError(`-b/--bind ${text}: a fixed local port is not supported; give the address alone`);
  return host;
}

/** Flags that make no sense for `monopiped pipe` (one connection on standard input/output). */
const NOT_FOR_PIPE = [
  "decrypt",
  "listen",
  "listener",
  "source",
  "ws",
  "max-conns",
  "max-pending",
  "hello-timeout",
  "queue-timeout",
  "grace",
  "pidfile",
  "path",
  "trust-proxy",
  "user",
  "daemon",
  "wait-dns",
  "syslog",
  "metrics",
  "workers",
  "proxy-protocol",
] as const;

/**
 * Flags -> Config (the key file is read separately, after every flag checked out). `pipe`: the
 * flags of `monopiped pipe`, always the client end, its plain side standard input/output.
 */
export function parseRunArgs(
  argv: string[],
  flavour: "run" | "pipe" = "run",
): Omit<Config, "keys" | "listenFd"> & {
  keyPath: string;
  keyPaths: string[];
  metrics?: SocketAddress;
  workers: number;
  pidfile?: string;
  runAs?: RunAs;
  /** --daemon: run in the background once listening (spiped's default; see src/daemon.ts). */
  daemon: boolean;
  /** -D: wait until the listen and target names resolve before listening (spiped's -D). */
  waitForDns: boolean;
  /** --syslog: the log goes to syslog instead of standard error. */
  syslog: boolean;
} {
  const { values: v } = parse(argv, RUN_OPTIONS);
  if (flavour === "pipe") {
    const wrong = NOT_FOR_PIPE.find((k) => v[k] !== undefined);
    if (wrong)
      throw new UsageError(
        `${flagName(wrong)} does not apply to monopiped pipe: it is the client end (-e) of one connection on standard input/output`,
      );
    v.encrypt = true;
    v.listen = "-";
  }
  if (v.daemon && v.foreground)
    throw new UsageError("--daemon and -F/--foreground contradict each other: give one");
  // spiped's re-resolution flags: checked as spiped checks them, then nothing to do (see --help).
  number(v["resolve-interval"], "-r/--resolve-interval", 60, (n) => n >= 0, "seconds >= 0");
  if (v["no-resolve"] && v["resolve-interval"] !== undefined && Number(v["resolve-interval"]) !== 60)
    throw new UsageError("-R/--no-resolve and -r/--resolve-interval contradict each other: give one");
  let runAs: RunAs | undefined;
  if (v.user !== undefined) {
    try {
      runAs = parseRunAs(v.user);
    } catch (err) {
      throw new UsageError(`-u/--user ${(err as Error).message}`);
    }
  }
  if (v.encrypt && v.decrypt)
    throw new UsageError("-e/--encrypt and -d/--decrypt contradict each other: give one");
  if (!v.encrypt && !v.decrypt) {
    throw new UsageError("missing -e/--encrypt (client end) or -d/--decrypt (server end)");
  }
  const mode: Mode = v.encrypt ? "encrypt" : "decrypt";

  const listens = (["listen", "listener", "source"] as const).filter((k) => v[k] !== undefined);
  if (listens.length > 1)
    throw new UsageError(`${listens.map(flagName).join(" and ")} both give the listen address: give one`);
  const listenText = listens.length ? (v[listens[0]] as string) : undefined;
  if (listenText === undefined)
    throw new UsageError("missing -l/--listen ADDR: where to accept connections, e.g. -l 127.0.0.1:3000");
  if (v.target === undefined)
    throw new UsageError("missing -t/--target ADDR: where to connect, e.g. -t 127.0.0.1:22");
  if (v.key === undefined)
    throw new UsageError(
      "missing -k/--key FILE: the shared key file (create one with: monopiped keygen key.bin)",
    );

  const listen: Config["listen"] =
    flavour === "pipe"
      ? { kind: "stdio", text: "standard input/output" }
      : (address(listenText, flagName(listens[0]), false, true) as SocketAddress);
  const target = address(v.target, "-t/--target", true, false);
  if (mode === "decrypt" && target.kind === "ws") {
    throw new UsageError(
      "-t/--target: a ws:// or wss:// target needs -e; a -d server takes a plain target (host:port) and -w to accept WebSockets",
    );
  }
  if (mode === "encrypt" && v.ws) {
    throw new UsageError(
      "-w/--ws applies to -d (it makes the listener accept WebSockets); for a WebSocket client give -t ws://... or wss://...",
    );
  }

  const protocolText = v.protocol ?? "monopiped2";
  const protocol = PROTOCOL_ALIASES[protocolText.toLowerCase()];
  if (!protocol)
    throw new UsageError(`--protocol ${protocolText}: expected monopiped2, monopiped1 (v1), spiped or auto`);
  if (protocol === "auto" && mode === "encrypt")
    throw new UsageError("--protocol auto: only a -d server can detect the protocol; a client picks one");
  if (v["no-pfs"] && v["require-pfs"])
    throw new UsageError("-f/--no-pfs and -g/--require-pfs contradict each other: give one");
  for (const flag of ["no-pfs", "require-pfs"] as const) {
    if (v[flag] && protocol !== "spiped")
      throw new UsageError(`${flagName(flag)} applies to --protocol spiped only`);
  }

  for (const flag of ["max-pending", "hello-timeout"] as const) {
    if (v[flag] !== undefined && mode !== "decrypt")
      throw new UsageError(
        `${flagName(flag)} applies to a -d server only (it limits connections that have not proved the key)`,
      );
  }

  const wsClientFlags = (["ca", "insecure", "sni", "host", "header", "proxy"] as const).filter(
    (k) => v[k] !== undefined,
  );
  if (wsClientFlags.length && target.kind !== "ws") {
    throw new UsageError(`${flagName(wsClientFlags[0])} applies to a ws:// or wss:// target only`);
  }
  const wsServerFlags = (["path", "trust-proxy"] as const).filter((k) => v[k] !== undefined);
  if (wsServerFlags.length && !v.ws)
    throw new UsageError(`${flagName(wsServerFlags[0])} applies to a -d -w WebSocket server only`);
  if (v.path !== undefined && !v.path.startsWith("/"))
    throw new UsageError(`--path ${v.path}: must start with /`);
  const headers: Record<string, string> = {};
  for (const h of v.header ?? []) {
    const m = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+):\s*(.*)$/.exec(h);
    if (!m) throw new UsageError(`-H/--header ${JSON.stringify(h)}: expected 'Name: value'`);
    headers[m[1]] = m[2];
  }
  if (v.proxy !== undefined && !/^https?:\/\//i.test(v.proxy))
    throw new UsageError(`--proxy ${v.proxy}: expected http://[user:pass@]host:port`);

  // pipe: stdout is the data, and a session's log lines would only clutter the terminal.
  const logLevel = (v["log-level"] ?? (flavour === "pipe" ? "warn" : "info")) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel))
    throw new UsageError(`--log-level ${logLevel}: expected one of ${LOG_LEVELS.join(", ")}`);
  const logFormat = (v["log-format"] ?? "text") as LogFormat;
  if (logFormat !== "text" && logFormat !== "json")
    throw new UsageError(`--log-format ${logFormat}: expected text or json`);

  // spiped: -o 0 means "use the default".
  const timeout =
    number(v.timeout, "-o/--timeout", 5, (n) => n >= 0 && n <= 86400, "seconds, a number > 0") || 5;

  return {
    mode,
    listen,
    target,
    wsListen: Boolean(v.ws),
    protocol,
    spiped: { noPfs: Boolean(v["no-pfs"]), requirePfs: Boolean(v["require-pfs"]) },
    keyPath: v.key[0],
    ...operationsFlags(v, mode),
    maxConns: number(
      v["max-conns"],
      "-n/--max-conns",
      100,
      (n) => Number.isInteger(n) && n >= 0,
      "a whole number >= 0 (0 = no limit)",
    ),
    timeoutMs: timeout * 1000,
    maxPending: number(
      v["max-pending"],
      "--max-pending",
      1024,
      (n) => Number.isInteger(n) && n >= 0,
      "a whole number >= 0 (0 = no limit)",
    ),
    helloTimeoutMs: seconds(v["hello-timeout"], "--hello-timeout", 3, false),
    queueTimeoutMs: seconds(v["queue-timeout"], "--queue-timeout", 30, false),
    idleTimeoutMs: seconds(v["idle-timeout"], "--idle-timeout", 0, true),
    stallTimeoutMs: seconds(v["stall-timeout"], "--stall-timeout", 60, true),
    graceMs: number(v.grace, "--grace", 10, (n) => n >= 0, "seconds >= 0") * 1000,
    keepAlive: !v["no-keepalive"],
    bindHost: v.bind === undefined ? undefined : bindAddress(v.bind),
    // spiped's rule: a daemon's pidfile is the listen address as given, plus ".pid" (unless -p).
    pidfile: v.pidfile ?? (v.daemon ? `${listenText}.pid` : undefined),
    runAs,
    daemon: Boolean(v.daemon),
    waitForDns: Boolean(v["wait-dns"]),
    syslog: Boolean(v.syslog),
    pingIntervalMs:
      number(v["ping-interval"], "--ping-interval", 30, (n) => n >= 0, "seconds >= 0 (0 = no pings)") * 1000,
    wsServer: { path: v.path, trustProxy: Boolean(v["trust-proxy"]) },
    wsClient: {
      caFile: v.ca,
      insecure: Boolean(v.insecure),
      sni: v.sni,
      hostHeader: v.host,
      headers,
      proxy: v.proxy,
    },
    logLevel,
    logFormat,
  };
}

/** -k (repeatable), --metrics, --workers, --proxy-protocol. */
function operationsFlags(
  v: ReturnType<typeof parse<typeof RUN_OPTIONS>>["values"],
  mode: Mode,
): { keyPaths: string[]; metrics?: SocketAddress; workers: number; proxyProtocol: boolean } {
  const keyPaths = v.key ?? [];
  if (keyPaths.filter((k) => k === "-").length > 1)
    throw new UsageError("-k/--key -: standard input can give one key only");
  const metrics =
    v.metrics === undefined ? undefined : (address(v.metrics, "--metrics", false, true) as SocketAddress);
  let workers = 1;
  if (v.workers !== undefined) {
    workers =
      v.workers === "auto"
        ? availableParallelism()
        : number(
            v.workers,
            "--workers",
            1,
            (n) => Number.isInteger(n) && n >= 1 && n <= 256,
            "a whole number 1-256 or auto",
          );
  }
  if (v["proxy-protocol"] && mode !== "decrypt")
    throw new UsageError("--proxy-protocol applies to a -d server (behind HAProxy or another balancer)");
  if (v["proxy-protocol"] && v.ws)
    throw new UsageError(
      "--proxy-protocol applies to a plain TCP -d listener; behind a web server use -w --trust-proxy",
    );
  return { keyPaths, metrics, workers, proxyProtocol: Boolean(v["proxy-protocol"]) };
}

export function keygen(argv: string[]): number {
  const { values, positionals } = parse(
    argv,
    { force: { type: "boolean", short: "f" }, help: { type: "boolean", short: "h" } },
    true,
  );
  if (values.help) {
    process.stdout.write(
      "Usage: monopiped keygen FILE [--force]\nWrites 32 random bytes to FILE with mode 0600. --force replaces an existing file.\n",
    );
    return 0;
  }
  if (positionals.length !== 1)
    throw new UsageError("keygen needs exactly one FILE, e.g. monopiped keygen key.bin");
  try {
    writeKeyFile(positionals[0], Boolean(values.force));
  } catch (err) {
    if (err instanceof KeyFileError) {
      process.stderr.write(`monopiped: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  process.stderr.write(
    `wrote a new 32-byte key to ${positionals[0]} (mode 0600); copy it to the other end over a secure channel\n`,
  );
  return 0;
}

/**
 * The Config with the key files read and checked (one key per -k); null (after `report` said why)
 * when one cannot be used. `files` receives the files' contents (to re-read standard input's on
 * SIGHUP); `report` defaults to a line on standard error.
 */
export function withKeys(
  flags: ReturnType<typeof parseRunArgs>,
  log: Logger,
  files: Buffer[] = [],
  report: (message: string) => void = (m) => process.stderr.write(`monopiped: ${m}\n`),
): Config | null {
  let read: ReturnType<typeof readKeyFiles>;
  try {
    read = readKeyFiles(flags.keyPaths);
  } catch (err) {
    if (err instanceof KeyFileError) {
      report(err.message);
      return null;
    }
    throw err;
  }
  for (const warning of read.warnings) log.warn(warning);
  files.push(...read.bytes);
  return { ...flags, keys: deriveKeys(read.bytes) };
}
