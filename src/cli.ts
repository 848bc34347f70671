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
 * -e -d -n -o -b -F -j -p -f -g -u -r -R -v), so either tool's command line works unchanged (-D and
 * --syslog are refused with a message saying what to do instead). A usage error exits 2
 * with a message that names the flag; a start-up failure (key file, address in use) exits 1.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { AddressError, parseAddress, type SocketAddress } from "./address.js";
import type { Config, Mode } from "./config.js";
import { KeyFileError, readKeyFile, writeKeyFile } from "./keyfile.js";
import { LOG_LEVELS, type LogFormat, type Logger, type LogLevel } from "./log.js";
import { parseRunAs, type RunAs } from "./privileges.js";
import { PROTOCOL_ALIASES, prepareKeys } from "./protocol/index.js";

export class UsageError extends Error {}

export const VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version;
  } catch {
    return "unknown";
  }
})();

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
  -k, --key FILE             shared key file, at least 32 bytes ("-" = standard input)

Options:
  -w, --ws                   -d: accept WebSocket connections (behind Caddy, nginx, ...)
      --protocol NAME        monopiped2 (default), monopiped1 (alias v1: the original Rust
                             monopiped's wire format), spiped (spiped 1.6's wire format, to
                             work with a real spiped at the other end), auto (-d only, opt-in:
                             serves monopiped2 and monopiped1 clients, but a replayed
                             monopiped1 handshake then reaches the target; it cannot detect
                             spiped clients: serve those with --protocol spiped)
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
  -b, --bind HOST            local address for outgoing connections
  -j, --no-keepalive         do not enable TCP keepalive
  -p, --pidfile FILE         write the process id to FILE
  -F, --foreground           accepted for spiped compatibility (monopiped never daemonizes)
  -u, --user USER[:GROUP]    after binding, run as USER (and GROUP; or :GROUP alone), as spiped
  -r, --resolve-interval S,  accepted for spiped compatibility: monopiped resolves the target's
  -R, --no-resolve           name at every connection, never from a cache
      --log-level LEVEL      trace, debug, info (default), warn, error, silent
      --log-format FORMAT    text (default) or json; logs go to standard error
  -h, --help                 show this help
  -v, --version              print the version

WebSocket options:
      --path /PATH           -d -w: serve only this path (others get 404)
      --trust-proxy          -d -w: log the client address from X-Forwarded-For / Forwarded
      --ping-interval SECS   -e: ping the WebSocket server every SECS (never with --protocol
                             monopiped1); -d -w: ping clients that ping; a ping unanswered
                             until the next one closes the link (default 30, 0 = off)
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

Exit status: 0 after a clean stop, 1 when it cannot start (key file, address), 2 on a usage error.
`;

export const RUN_OPTIONS = {
  encrypt: { type: "boolean", short: "e" },
  decrypt: { type: "boolean", short: "d" },
  listen: { type: "string", short: "l" },
  listener: { type: "string" },
  source: { type: "string", short: "s" },
  target: { type: "string", short: "t" },
  key: { type: "string", short: "k" },
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
  daemon: { type: "boolean", short: "D" },
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
} as const;

/** The spelling of a flag for messages: "-n/--max-conns". */
function flagName(name: string): string {
  const short = (RUN_OPTIONS as Record<string, { short?: string }>)[name]?.short;
  return short ? `-${short}/--${name}` : `--${name}`;
}

/** parseArgs, with its errors reworded and every option allowed once (as spiped does). */
export function parse<
  T extends Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>,
>(argv: string[], options: T, positionals = false) {
  const parseStrict = () =>
    parseArgs({ args: argv, options, allowPositionals: positionals, strict: true, tokens: true });
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
] as const;

/**
 * Flags -> Config (the key file is read separately, after every flag checked out). `pipe`: the
 * flags of `monopiped pipe`, always the client end, its plain side standard input/output.
 */
export function parseRunArgs(
  argv: string[],
  flavour: "run" | "pipe" = "run",
): Omit<Config, "keys" | "proxyProtocol" | "listenFd"> & {
  keyPath: string;
  pidfile?: string;
  runAs?: RunAs;
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
  if (v.daemon)
    throw new UsageError(
      "-D: monopiped does not daemonize; run it in the foreground under systemd, runit or a container supervisor (what spiped -F does)",
    );
  if (v.syslog)
    throw new UsageError(
      "--syslog: monopiped logs to standard error; let journald or the supervisor collect it (--log-format json for structured lines)",
    );
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
    keyPath: v.key,
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
    bindHost: v.bind,
    pidfile: v.pidfile,
    runAs,
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

/** The Config with the key file read and checked; null (after saying why) when it cannot be used. */
export function withKeys(flags: ReturnType<typeof parseRunArgs>, log: Logger): Config | null {
  let keyFile: ReturnType<typeof readKeyFile>;
  try {
    keyFile = readKeyFile(flags.keyPath);
  } catch (err) {
    if (err instanceof KeyFileError) {
      process.stderr.write(`monopiped: ${err.message}\n`);
      return null;
    }
    throw err;
  }
  if (keyFile.warning) log.warn(keyFile.warning);
  return { ...flags, proxyProtocol: false, keys: [prepareKeys(keyFile.bytes)] };
}
