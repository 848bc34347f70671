/**
 * The systems under test. Each one starts, on loopback, a relay pair (client end -> server end ->
 * target) and says which port the load generator connects to and which processes are the two ends.
 * Adding a system is one entry in baseSystems(); each of ours runs under every Node found (nodes.ts).
 */
import { accessSync, constants, writeFileSync } from "node:fs";
import { delimiter, join } from "node:path";
import { CLI_PATH, RUNTIME_FLAGS } from "../src/harness.js";
import { type NodeBinary, nodeBinaries } from "./nodes.js";
import { freePort, lastLine, type Proc, runProc, spawnProc, waitListening } from "./procs.js";

export interface BenchEnv {
  /** Temporary directory for key, certificate and configuration files. */
  dir: string;
  /** A 32-byte key file, mode 0600 (spiped and monopiped both take it). */
  keyFile: string;
  /** Extra node arguments for our ends (e.g. --cpu-prof). */
  nodeArgs: string[];
}

export interface Pair {
  /** Where the load generator connects (the client end's listener; the target itself for "direct"). */
  entryPort: number;
  /** The relay processes, client end first. Empty for "direct". */
  ends: Proc[];
  /** The last warning or error a relay wrote, to explain a failed measurement. */
  lastComplaint(): string;
  stop(): Promise<void>;
}

export type Role = "reference" | "ceiling" | "baseline" | "ours";

export interface SystemDef {
  /** Name for --only and the JSON file. */
  id: string;
  /** Name in the tables. */
  label: string;
  role: Role;
  /** Our systems: which protocol and transport. */
  protocol?: string;
  transport?: "tcp" | "ws";
  /** Our systems: the Node that runs both ends. */
  node?: NodeBinary;
  /** A compatibility protocol (target: at least spiped's throughput). */
  compat?: boolean;
  /** How the idle-memory test measures an end: VmRSS (default), or PSS summed over its process tree. */
  memory?: "rss" | "pss-tree";
  /** At most this many idle connections in the memory test (and why). */
  maxIdle?: number;
  maxIdleWhy?: string;
  /** Why it cannot run on this machine, or null. */
  unavailable(): string | null;
  start(env: BenchEnv, targetPort: number): Promise<Pair>;
}

// ---------------------------------------------------------------------------------------------
export function which(cmd: string): string | null {
  const dirs = cmd.includes("/") ? [""] : (process.env.PATH ?? "/usr/bin:/bin").split(delimiter);
  for (const d of dirs) {
    const p = d ? join(d, cmd) : cmd;
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

const SPIPED = () => (which("/usr/bin/spiped") ? "/usr/bin/spiped" : which("spiped"));
const STUNNEL = () => which("stunnel4") ?? which("stunnel");

/** The reason a relay gave, from its output: a JSON log line's msg, or the last plain line. */
function complaint(procs: Proc[]): string {
  for (const p of procs) {
    const lines = p
      .tail()
      .split("\n")
      .filter((l) => l.trim() !== "");
    for (let i = lines.length - 1; i >= 0; i--) {
      const line = lines[i];
      try {
        const o = JSON.parse(line) as { level?: number; msg?: string };
        if ((o.level ?? 0) >= 40) return `${p.name}: ${o.msg}`;
      } catch {
        if (/\] E /.test(line) || /error|fail|refused|reset|denied|unable/i.test(line))
          return `${p.name}: ${line.trim()}`;
      }
    }
  }
  return "";
}

function pairOf(entryPort: number, ends: Proc[]): Pair {
  return {
    entryPort,
    ends,
    lastComplaint: () => complaint(ends),
    stop: async () => {
      await Promise.all(ends.map((p) => p.stop()));
    },
  };
}

/** Starts the processes one after another; if one fails, stops those already started. */
async function startAll(starts: (() => Promise<Proc>)[]): Promise<Proc[]> {
  const procs: Proc[] = [];
  try {
    for (const s of starts) procs.push(await s());
  } catch (err) {
    await Promise.all(procs.map((p) => p.stop()));
    throw err;
  }
  return procs;
}

async function spawnListening(name: string, cmd: string, args: string[], port: number): Promise<Proc> {
  const p = spawnProc(name, cmd, args);
  try {
    await waitListening(p, port);
  } catch (err) {
    await p.stop();
    throw err;
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
/** One monopiped end, listening on port 0; resolves once its log says where it listens. */
async function startOurEnd(
  name: string,
  env: BenchEnv,
  args: string[],
  node: NodeBinary,
): Promise<{ proc: Proc; address: string }> {
  let onListen: (address: string) => void = () => {};
  const listening = new Promise<string>((resolve) => (onListen = resolve));
  const proc = spawnProc(
    name,
    node.path,
    [...RUNTIME_FLAGS, ...env.nodeArgs, CLI_PATH, ...args, "--log-format", "json"],
    {
      watch: (line, stream) => {
        if (stream !== "stderr" || !line.startsWith("{")) return false;
        try {
          const o = JSON.parse(line) as { msg?: string; listen?: unknown };
          if (typeof o.listen === "string" && o.msg?.startsWith("listening on")) {
            onListen(o.listen);
            return true;
          }
        } catch {
          // not a log line
        }
        return false;
      },
    },
  );
  let timer: NodeJS.Timeout | undefined;
  try {
    const address = await Promise.race([
      listening,
      proc.exited.then((code) => {
        const why = lastLine(proc.tail()).replace(/^monopiped: /, "");
        throw new Error(`${name} exited (${code}): ${why || "no output"}`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${name} did not start listening within 15 s`)), 15_000);
      }),
    ]);
    return { proc, address };
  } catch (err) {
    await proc.stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function ours(protocol: string, transport: "tcp" | "ws", extra: Partial<SystemDef> = {}): SystemDef {
  const node = nodeBinaries()[0];
  return {
    id: `${protocol}-${transport}`,
    label: `${protocol}/${transport === "ws" ? "WebSocket" : "TCP"}`,
    role: "ours",
    protocol,
    transport,
    node,
    unavailable: () => null,
    async start(env, targetPort) {
      const node = this.node ?? nodeBinaries()[0];
      // The server end is told the protocol, as deployed: its default serves monopiped2 only
      // (replay-safe), and spiped clients cannot be detected.
      const common = ["-k", env.keyFile, "-n", "0", "--grace", "2"];
      const serverProtocol = ["--protocol", protocol];
      const server = await startOurEnd(
        `${protocol}/${transport} -d`,
        env,
        [
          "-d",
          "-l",
          "127.0.0.1:0",
          "-t",
          `127.0.0.1:${targetPort}`,
          ...(transport === "ws" ? ["-w"] : []),
          ...serverProtocol,
          ...common,
        ],
        node,
      );
      let client: { proc: Proc; address: string };
      try {
        const target = transport === "ws" ? `ws://${server.address}/` : server.address;
        client = await startOurEnd(
          `${protocol}/${transport} -e`,
          env,
          ["-e", "-l", "127.0.0.1:0", "-t", target, "--protocol", protocol, ...common],
          node,
        );
      } catch (err) {
        await server.proc.stop();
        throw err;
      }
      const port = Number(client.address.slice(client.address.lastIndexOf(":") + 1));
      return pairOf(port, [client.proc, server.proc]);
    },
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------------
let certFiles: Promise<{ cert: string; key: string }> | null = null;

/** A throwaway self-signed ECDSA P-256 certificate for localhost, made once per run. */
function stunnelCert(env: BenchEnv): Promise<{ cert: string; key: string }> {
  certFiles ??= (async () => {
    const cert = join(env.dir, "stunnel-cert.pem");
    const key = join(env.dir, "stunnel-key.pem");
    const r = await runProc(
      "openssl req",
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
      ],
      20_000,
    );
    if (r.code !== 0) throw new Error(`openssl req failed: ${lastLine(r.tail)}`);
    return { cert, key };
  })();
  return certFiles;
}

let stunnelSeq = 0;

function baseSystems(): SystemDef[] {
  return [
    {
      id: "direct",
      label: "direct (no relay)",
      role: "reference",
      unavailable: () => null,
      start: async (_env, targetPort) => pairOf(targetPort, []),
    },
    {
      id: "socat",
      label: "socat pair",
      role: "ceiling",
      memory: "pss-tree",
      maxIdle: 2000,
      maxIdleWhy: "socat forks a process per connection",
      unavailable: () => (which("socat") ? null : "not installed"),
      async start(_env, targetPort) {
        const [server, client] = [await freePort(), await freePort()];
        const relay = (listen: number, to: number) => [
          "-b131072",
          `TCP-LISTEN:${listen},bind=127.0.0.1,reuseaddr,fork,backlog=1024`,
          `TCP:127.0.0.1:${to}`,
        ];
        const ends = await startAll([
          () => spawnListening("socat (server side)", "socat", relay(server, targetPort), server),
          () => spawnListening("socat (client side)", "socat", relay(client, server), client),
        ]);
        return pairOf(client, ends.reverse());
      },
    },
    {
      id: "spiped",
      label: "spiped",
      role: "baseline",
      unavailable: () => (SPIPED() ? null : "not installed"),
      async start(env, targetPort) {
        const bin = SPIPED() as string;
        const [server, client] = [await freePort(), await freePort()];
        const args = (mode: string, listen: number, to: number) => [
          mode,
          "-s",
          `[127.0.0.1]:${listen}`,
          "-t",
          `[127.0.0.1]:${to}`,
          "-k",
          env.keyFile,
          "-F",
          "-n",
          "0",
        ];
        const ends = await startAll([
          () => spawnListening("spiped -d", bin, args("-d", server, targetPort), server),
          () => spawnListening("spiped -e", bin, args("-e", client, server), client),
        ]);
        return pairOf(client, ends.reverse());
      },
    },
    {
      id: "stunnel",
      label: "stunnel (TLS 1.3)",
      role: "baseline",
      unavailable: () => (STUNNEL() ? null : "not installed"),
      async start(env, targetPort) {
        const bin = STUNNEL() as string;
        const { cert, key } = await stunnelCert(env);
        const [server, client] = [await freePort(), await freePort()];
        const n = ++stunnelSeq;
        const serverConf = join(env.dir, `stunnel-server-${n}.conf`);
        const clientConf = join(env.dir, `stunnel-client-${n}.conf`);
        writeFileSync(
          serverConf,
          [
            "foreground = yes",
            "pid =",
            // Log to stderr only (as our ends do): with no syslog daemon (containers), syslog() costs
            // stunnel ~10 ms per connection here.
            "syslog = no",
            "[bench]",
            `accept = 127.0.0.1:${server}`,
            `connect = 127.0.0.1:${targetPort}`,
            `cert = ${cert}`,
            `key = ${key}`,
            "sslVersionMin = TLSv1.3",
            "",
          ].join("\n"),
        );
        writeFileSync(
          clientConf,
          [
            "foreground = yes",
            "pid =",
            "syslog = no",
            "[bench]",
            "client = yes",
            `accept = 127.0.0.1:${client}`,
            `connect = 127.0.0.1:${server}`,
            "sslVersionMin = TLSv1.3",
            "verifyChain = yes",
            `CAfile = ${cert}`,
            "checkHost = localhost",
            "",
          ].join("\n"),
        );
        const ends = await startAll([
          () => spawnListening("stunnel (server)", bin, [serverConf], server),
          () => spawnListening("stunnel (client)", bin, [clientConf], client),
        ]);
        return pairOf(client, ends.reverse());
      },
    },
    ours("monopiped2", "tcp"),
    ours("monopiped1", "tcp", { compat: true }),
    ours("monopiped2", "ws"),
    ours("monopiped1", "ws", { compat: true }),
    ours("spiped", "tcp", { compat: true, id: "spiped-protocol", label: "monopiped (spiped protocol)/TCP" }),
  ];
}

let systems: SystemDef[] | null = null;

/**
 * Every system: ours under this Node (plain ids), then ours again under each other Node found
 * (ids with "@" and its major version, e.g. monopiped2-tcp@24), so one run compares them.
 */
export function allSystems(): SystemDef[] {
  if (systems) return systems;
  const base = baseSystems();
  const [, ...others] = nodeBinaries();
  systems = [
    ...base,
    ...others.flatMap((node) =>
      base.filter((s) => s.role === "ours").map((s) => ({ ...s, id: `${s.id}@${node.label}`, node })),
    ),
  ];
  return systems;
}

/**
 * Pick systems by --only: each name matches an id exactly or as a prefix ("monopiped" = all ours,
 * under every Node); `nodes` (major versions) keeps ours under those Nodes only.
 */
export function selectSystems(only: string[] | undefined, nodes?: string[]): SystemDef[] {
  const SYSTEMS = allSystems().filter((s) => !nodes || !s.node || nodes.includes(s.node.label));
  if (!only || only.length === 0) return SYSTEMS;
  const unknown = only.filter((n) => !SYSTEMS.some((s) => s.id === n || s.id.startsWith(n)));
  if (unknown.length > 0) {
    throw new Error(
      `--only: unknown system ${unknown.join(", ")} (known: ${SYSTEMS.map((s) => s.id).join(", ")})`,
    );
  }
  return SYSTEMS.filter((s) => only.some((n) => s.id === n || s.id.startsWith(n)));
}
