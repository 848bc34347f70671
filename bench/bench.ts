/**
 * `monopiped bench` (npm run bench): starts, on loopback, a relay pair for each system under test
 * (direct, a socat pair, spiped, stunnel, and our ends in each protocol and transport) in front of
 * a source/sink and an echo target, and measures single-stream throughput both ways, connections
 * per second and connect-and-echo latency, and the memory each end spends per idle tunneled
 * connection. Systems are interleaved in rounds and medians reported, with ratios to spiped,
 * stunnel and the socat ceiling, the project's targets, and a JSON file. docs/BENCHMARKS.md has a
 * full run.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chartSvg } from "./chart.js";
import { connectRate, holdIdle, iperf3Tool, nodeTool, type Throughput, type ThroughputTool } from "./load.js";
import { nodeBinaries } from "./nodes.js";
import {
  cpuSample,
  cpuTreeSeconds,
  fileLimit,
  freePort,
  lastLine,
  type Proc,
  pssTreeKiB,
  rssKiB,
  runningPids,
  runProc,
  spawnProc,
  stopAll,
  waitListening,
} from "./procs.js";
import { formatProfile, summarizeProfile } from "./profile.js";
import {
  checkTargets,
  cpuTable,
  finish,
  newResult,
  type RoundResult,
  ratiosTable,
  resultsTable,
  type SystemResult,
  targetsTable,
} from "./report.js";
import { allSystems, type BenchEnv, type Pair, type SystemDef, selectSystems, which } from "./systems.js";

const HELP = `Usage: monopiped bench [options]      (or: npm run bench -- [options])

Starts each system under test as a relay pair on loopback (client end -> server end -> target) and
measures it; systems are interleaved in rounds and the medians reported, with ratios to spiped,
stunnel and the socat ceiling, and the project's targets.
Systems: ${allSystems()
  .map((s) => s.id)
  .join(", ")}.

Measurements, per system and round:
  throughput    one stream each way (iperf3 -c -n BYTES [-R] -J, or a Node source/sink without iperf3)
  connections   connect through the pair, send 1 byte, time the echo, close: sequentially and with 64
                connections at a time (conn/s, p50/p99 ms)
  idle memory   hold N idle tunneled connections; each end's VmRSS growth divided by N

Options:
  --rounds N             rounds (default 2)
  --bytes SIZE           bytes per transfer at most, e.g. 1G, 256M (default 1G)
  --seconds S            ... and at most about S seconds' worth at the rate the system showed so far
                         (default 2; 0 = always --bytes). The throughput pair of each system is
                         started once, warmed up with ~0.7 s of traffic each way, and kept for all rounds
  --nodes LIST           run our ends under these Node major versions (default: every one found:
                         this Node, and Node 24 where .ci/run installs it, or MONOPIPED_NODE24)
  --connects N           sequential connect-and-echo cycles (default 200)
  --parallel-connects N  cycles with 64 at a time (default 1280)
  --connect-seconds S    ... each of the two at most about S seconds (default 1; 0 = no limit)
  --conns N              idle connections held (default 1000; 10000 with --big)
  --idle-rounds N        hold the idle connections in the first N rounds only (default 1: at
                         ~100 handshakes/s that test alone takes ~10 s per system)
  --big                  hold 10,000 idle connections (needs ulimit -n >= 2 x 10,000 + 64 per relay end)
  --only NAME,NAME       only these systems (an id or an id prefix: monopiped = all of ours)
  --json FILE            write the results to FILE (default bench-results.json)
  --svg FILE             write a bar chart of CPU-s/GiB and Gbit/s per system to FILE
                         (default bench-results.svg)
  --no-iperf3            use the Node source/sink even when iperf3 is installed
  --quick                smoke run: 1 round, 64 MiB transfers, few connections
  --profile              instead: run our pairs (default monopiped2-tcp) under node --cpu-prof, during a
                         throughput run (--bytes each way) and during 5 s of connect-and-echo (x64),
                         and print the hottest functions of each end
  --profile-dir DIR      where the .cpuprofile files go (default bench-profiles)
  -h, --help             this help
`;

interface Options {
  rounds: number;
  bytes: number;
  seconds: number;
  connects: number;
  parallelConnects: number;
  connectSeconds: number;
  conns: number;
  idleRounds: number;
  big: boolean;
  only?: string[];
  nodes?: string[];
  json: string;
  svg: string;
  iperf3: boolean;
  quick: boolean;
  profile: boolean;
  profileDir: string;
}

class BenchUsageError extends Error {}

function parseSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new BenchUsageError(`${flag} ${text}: expected a size like 1G, 256M or 1048576`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()] as number;
  const n = Math.round(Number(m[1]) * mult);
  if (n < 1024) throw new BenchUsageError(`${flag} ${text}: at least 1K`);
  return n;
}

function parseOptions(argv: string[]): Options | "help" {
  let parsed: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      args: argv,
      options: {
        rounds: { type: "string" },
        bytes: { type: "string" },
        seconds: { type: "string" },
        connects: { type: "string" },
        "parallel-connects": { type: "string" },
        "connect-seconds": { type: "string" },
        conns: { type: "string" },
        "idle-rounds": { type: "string" },
        big: { type: "boolean" },
        only: { type: "string" },
        nodes: { type: "string" },
        json: { type: "string" },
        svg: { type: "string" },
        "no-iperf3": { type: "boolean" },
        quick: { type: "boolean" },
        profile: { type: "boolean" },
        "profile-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
  }
  try {
    parsed = parse();
  } catch (err) {
    throw new BenchUsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return "help";
  const int = (text: string | undefined, flag: string, def: number, min: number) => {
    if (text === undefined) return def;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min)
      throw new BenchUsageError(`${flag} ${text}: expected a whole number >= ${min}`);
    return n;
  };
  const quick = Boolean(v.quick);
  const big = Boolean(v.big);
  const real = (text: string | undefined, flag: string, def: number) => {
    if (text === undefined) return def;
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n) || n < 0)
      throw new BenchUsageError(`${flag} ${text}: expected a number >= 0`);
    return n;
  };
  const seconds = real(v.seconds, "--seconds", quick ? 1 : 2);
  return {
    rounds: int(v.rounds, "--rounds", quick ? 1 : 2, 1),
    bytes: v.bytes === undefined ? (quick ? 64 * 1024 ** 2 : 1024 ** 3) : parseSize(v.bytes, "--bytes"),
    seconds,
    connects: int(v.connects, "--connects", quick ? 30 : 200, 1),
    parallelConnects: int(v["parallel-connects"], "--parallel-connects", quick ? 128 : 1280, 1),
    connectSeconds: real(v["connect-seconds"], "--connect-seconds", quick ? 0.5 : 1),
    conns: int(v.conns, "--conns", big ? 10_000 : quick ? 200 : 1000, 0),
    idleRounds: int(v["idle-rounds"], "--idle-rounds", 1, 0),
    big,
    only: v.only
      ?.split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    nodes: v.nodes
      ?.split(",")
      .map((s) => s.trim().replace(/^v/, ""))
      .filter(Boolean),
    json: v.json ?? "bench-results.json",
    svg: v.svg ?? "bench-results.svg",
    iperf3: !v["no-iperf3"],
    quick,
    profile: Boolean(v.profile),
    profileDir: v["profile-dir"] ?? "bench-profiles",
  };
}

// ---------------------------------------------------------------------------------------------
const T0 = Date.now();
function progress(text: string): void {
  process.stderr.write(`[${((Date.now() - T0) / 1000).toFixed(1).padStart(6)} s] ${text}\n`);
}
const errText = (err: unknown) =>
  (err instanceof Error ? err.message : String(err)).replace(/\s+/g, " ").trim();
const mib = (n: number) => `${(n / 1024 ** 2).toFixed(0)} MiB`;

async function toolVersion(cmd: string, args: string[], pattern: RegExp): Promise<string | null> {
  if (!which(cmd)) return null;
  const r = await runProc(`${cmd} version`, cmd, args, 5000);
  const line = r.tail.split("\n").find((l) => pattern.test(l));
  return line?.trim() ?? lastLine(r.tail);
}

async function machineInfo() {
  const cpuinfo = (() => {
    try {
      return readFileSync("/proc/cpuinfo", "utf8");
    } catch {
      return "";
    }
  })();
  return {
    nproc: os.availableParallelism(),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round(os.totalmem() / 1024 ** 3),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    spiped: await toolVersion(which("/usr/bin/spiped") ? "/usr/bin/spiped" : "spiped", ["-v"], /spiped/),
    socat: await toolVersion("socat", ["-V"], /socat version/),
    stunnel: await toolVersion(which("stunnel4") ? "stunnel4" : "stunnel", ["-version"], /^stunnel \d/),
    iperf3: await toolVersion("iperf3", ["--version"], /^iperf/),
    openssl: await toolVersion("openssl", ["version"], /OpenSSL/),
  };
}

/** The targets' process (echo server and Node source/sink). */
async function startTargets(): Promise<{ proc: Proc; echo: number; load: number }> {
  const script = fileURLToPath(new URL("./target.js", import.meta.url));
  let ports: { echo: number; load: number } | null = null;
  const proc = spawnProc("bench target", process.execPath, [script], {
    stdinPipe: true,
    watch: (line, stream) => {
      if (stream !== "stdout") return false;
      try {
        ports = JSON.parse(line);
        return true;
      } catch {
        return false;
      }
    },
  });
  const deadline = Date.now() + 10_000;
  while (!ports) {
    if (proc.done || Date.now() > deadline) throw new Error(`bench target did not start: ${proc.tail()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const p = ports as { echo: number; load: number };
  return { proc, echo: p.echo, load: p.load };
}

/** iperf3 -s on loopback; restartable on the same port after a failed test. */
class Iperf3Server {
  proc: Proc | null = null;
  constructor(readonly port: number) {}
  async start(): Promise<void> {
    this.proc = spawnProc("iperf3 -s", "iperf3", ["-s", "-B", "127.0.0.1", "-p", String(this.port)]);
    await waitListening(this.proc, this.port);
  }
  /** After a failed test (the server may be stuck in it); a failure to restart is only reported. */
  async restart(): Promise<void> {
    try {
      await this.proc?.stop(1000);
      await this.start();
    } catch (err) {
      progress(`iperf3 -s could not be restarted: ${errText(err)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
interface Ctx {
  opts: Options;
  env: BenchEnv;
  tool: ThroughputTool;
  iperf3: Iperf3Server | null;
  throughputPort: number;
  echoPort: number;
  idleConns: number;
  /** Last measured rate per system and direction (Gbit/s), to size the next transfer. */
  estimate: Map<string, { up: number; down: number }>;
  /** Each system's warmed throughput pair, kept across rounds. */
  bulk: Map<string, Pair>;
}

/** Bytes for the next transfer: --bytes, or less so it takes about --seconds at the estimated rate. */
function transferBytes(ctx: Ctx, gbps: number): number {
  const { bytes, seconds } = ctx.opts;
  if (seconds === 0) return bytes;
  const wanted = ((gbps * 1e9) / 8) * seconds;
  const floor = Math.min(bytes, 16 * 1024 ** 2);
  return Math.max(floor, Math.min(bytes, Math.round(wanted / 1024 ** 2) * 1024 ** 2));
}

async function startPair(
  ctx: Ctx,
  sys: SystemDef,
  targetPort: number,
  rr: RoundResult,
  what: string,
  tag: string,
) {
  try {
    return await sys.start(ctx.env, targetPort);
  } catch (err) {
    rr.errors.push(`start (${what}): ${errText(err)}`);
    progress(`${tag} failed to start: ${errText(err)}`);
    return null;
  }
}

/** CPU seconds both ends of a pair have used so far. */
function endsCpu(pair: Pair): number {
  return pair.ends.reduce((sum, p) => sum + cpuTreeSeconds(p.pid), 0);
}

function failure(err: unknown, pair: Pair): string {
  const c = pair.lastComplaint();
  return c ? `${errText(err)} (${c})` : errText(err);
}

/**
 * Before a throughput pair is measured for the first time: a short transfer tells how long a full one
 * would take at this system's rate, then ~0.7 s of traffic each way warms both ends up (JIT, buffer
 * sizes, the garbage collector's heap), so the rounds measure the steady state rather than a fresh
 * process (which costs our ends ~25% more CPU per GiB in their first second).
 */
async function warmUp(ctx: Ctx, sys: SystemDef, pair: Pair, tag: string): Promise<void> {
  const probe = await ctx.tool.transfer(pair.entryPort, Math.min(ctx.opts.bytes, 64 * 1024 ** 2), false);
  const est = { up: probe.gbps, down: probe.gbps };
  const seconds = ctx.opts.quick ? 0.3 : 0.7;
  for (const dir of ["up", "down"] as const) {
    const bytes = Math.max(16 * 1024 ** 2, Math.min(ctx.opts.bytes, ((est[dir] * 1e9) / 8) * seconds));
    const t = await ctx.tool.transfer(pair.entryPort, Math.round(bytes), dir === "down");
    est[dir] = t.gbps;
  }
  ctx.estimate.set(sys.id, est);
  progress(`${tag} warmed up: ${est.up.toFixed(2)} / ${est.down.toFixed(2)} Gbit/s`);
}

/** The system's throughput pair: kept from an earlier round, or started and warmed up now. */
async function bulkPair(ctx: Ctx, sys: SystemDef, rr: RoundResult, tag: string): Promise<Pair | null> {
  const kept = ctx.bulk.get(sys.id);
  if (kept) return kept;
  const pair = await startPair(ctx, sys, ctx.throughputPort, rr, "throughput", tag);
  if (!pair) return null;
  try {
    await warmUp(ctx, sys, pair, tag);
  } catch (err) {
    rr.errors.push(`throughput warm-up: ${failure(err, pair)}`);
    progress(`${tag} warm-up failed: ${failure(err, pair)}`);
    await pair.stop();
    await ctx.iperf3?.restart();
    return null;
  }
  ctx.bulk.set(sys.id, pair);
  return pair;
}

/** One transfer each way through the warmed pair; a pair that failed is stopped (the next round starts a new one). */
async function throughputStep(
  ctx: Ctx,
  sys: SystemDef,
  pair: Pair,
  rr: RoundResult,
  tag: string,
): Promise<void> {
  const est = ctx.estimate.get(sys.id) ?? { up: 1, down: 1 };
  for (const dir of ["up", "down"] as const) {
    const bytes = transferBytes(ctx, est[dir]);
    try {
      const cpu0 = endsCpu(pair);
      const t: Throughput = await ctx.tool.transfer(pair.entryPort, bytes, dir === "down");
      rr[dir] = t;
      if (pair.ends.length > 0)
        rr[dir === "up" ? "upCpuPerGiB" : "downCpuPerGiB"] = (endsCpu(pair) - cpu0) / (bytes / 1024 ** 3);
      est[dir] = t.gbps;
      progress(
        `${tag} ${dir === "up" ? "upload  " : "download"} ${t.gbps.toFixed(2)} Gbit/s (${mib(bytes)})`,
      );
    } catch (err) {
      rr.errors.push(`${dir === "up" ? "upload" : "download"}: ${failure(err, pair)}`);
      progress(`${tag} ${dir === "up" ? "upload" : "download"} failed: ${failure(err, pair)}`);
      ctx.bulk.delete(sys.id);
      await pair.stop();
      await ctx.iperf3?.restart();
      return;
    }
  }
}

async function connectionsStep(
  ctx: Ctx,
  sys: SystemDef,
  pair: Pair,
  rr: RoundResult,
  tag: string,
): Promise<void> {
  const { opts } = ctx;
  try {
    await connectRate(pair.entryPort, 5, 1); // warm-up
    if (pair.ends.length > 0 && ctx.idleConns > 0 && rr.round <= opts.idleRounds) {
      const limit = sys.maxIdle ?? Number.POSITIVE_INFINITY;
      if (ctx.idleConns > limit) {
        rr.errors.push(`idle: skipped, more than ${limit} connections (${sys.maxIdleWhy ?? ""})`);
      } else {
        try {
          const idle = await holdIdle(
            pair.entryPort,
            ctx.idleConns,
            pair.ends,
            sys.memory === "pss-tree" ? pssTreeKiB : rssKiB,
            (n) => progress(`${tag} ${n} idle connections open`),
          );
          rr.idle = idle;
          if (idle.errors > 0 || idle.dropped > 0) {
            rr.errors.push(
              `idle: ${idle.errors} of ${idle.requested} failed to open, ${idle.dropped} dropped: ${idle.firstError ?? ""}`,
            );
          }
          progress(
            `${tag} idle ${idle.opened}/${idle.requested} held: ${idle.perConnKiB.map((k) => k.toFixed(1)).join(" + ")} KiB per connection (client + server end)${idle.errors ? `, ${idle.errors} errors: ${idle.firstError}` : ""}`,
          );
        } catch (err) {
          rr.errors.push(`idle: ${failure(err, pair)}`);
          progress(`${tag} idle failed: ${failure(err, pair)}`);
        }
      }
    }
    for (const [key, total, conc] of [
      ["seq", opts.connects, 1],
      ["par", opts.parallelConnects, 64],
    ] as const) {
      try {
        const cpu0 = endsCpu(pair);
        const r = await connectRate(
          pair.entryPort,
          total,
          conc,
          opts.connectSeconds || Number.POSITIVE_INFINITY,
        );
        rr[key] = r;
        if (key === "par" && pair.ends.length > 0 && r.connections > 0) {
          rr.cpuMsPerConn = ((endsCpu(pair) - cpu0) * 1000) / (r.connections + r.errors);
        }
        if (r.errors > 0)
          rr.errors.push(
            `connections x${conc}: ${r.errors} of ${r.errors + r.connections} failed: ${r.firstError}`,
          );
        progress(
          `${tag} connections x${conc}: ${r.connections} at ${r.perSecond.toFixed(0)}/s, echo p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms${r.errors ? `, ${r.errors} errors` : ""}`,
        );
      } catch (err) {
        rr.errors.push(`connections x${conc}: ${failure(err, pair)}`);
        progress(`${tag} connections x${conc} failed: ${failure(err, pair)}`);
      }
    }
  } catch (err) {
    rr.errors.push(`connections: ${failure(err, pair)}`);
    progress(`${tag} connections failed: ${failure(err, pair)}`);
  }
}

/**
 * One system's turn in a round: a transfer each way through its warmed throughput pair (kept for
 * the whole run), then the connection tests through a new pair in front of the echo target.
 */
async function measureSystem(ctx: Ctx, sys: SystemDef, rr: RoundResult, tag: string): Promise<void> {
  const bulk = await bulkPair(ctx, sys, rr, tag);
  if (bulk) await throughputStep(ctx, sys, bulk, rr, tag);
  const echo = await startPair(ctx, sys, ctx.echoPort, rr, "connections", tag);
  try {
    if (echo) await connectionsStep(ctx, sys, echo, rr, tag);
  } finally {
    await echo?.stop();
  }
}

// ---------------------------------------------------------------------------------------------
/** Shared set-up (temp dir, key, targets, source/sink), the body, then everything stopped. */
async function withBench(opts: Options, body: (ctx: Ctx) => Promise<number>): Promise<number> {
  if (process.platform !== "linux") {
    process.stderr.write("monopiped bench: needs Linux (/proc for listening sockets and memory)\n");
    return 1;
  }
  const dir = mkdtempSync(join(os.tmpdir(), "monopiped-bench-"));
  const keyFile = join(dir, "key.bin");
  writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    progress(`${sig}: stopping every process this run started ...`);
    void stopAll(2000).finally(() => {
      rmSync(dir, { recursive: true, force: true });
      process.exit(130);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const targets = await startTargets();
    let iperf3: Iperf3Server | null = null;
    let tool: ThroughputTool;
    if (opts.iperf3 && which("iperf3")) {
      iperf3 = new Iperf3Server(await freePort());
      await iperf3.start();
      tool = iperf3Tool();
    } else tool = nodeTool();
    const ctx: Ctx = {
      opts,
      env: { dir, keyFile, nodeArgs: [] },
      tool,
      iperf3,
      throughputPort: iperf3 ? iperf3.port : targets.load,
      echoPort: targets.echo,
      idleConns: opts.conns,
      estimate: new Map(),
      bulk: new Map(),
    };
    try {
      return await body(ctx);
    } finally {
      await Promise.all([...ctx.bulk.values()].map((p) => p.stop()));
    }
  } finally {
    const pids = runningPids();
    await stopAll();
    const left = runningPids();
    progress(
      `stopped ${pids.length} remaining processes${left.length ? `; STILL RUNNING: ${left.join(" ")}` : ""}`,
    );
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function runBench(opts: Options): Promise<number> {
  const systems = selectSystems(opts.only, opts.nodes);
  const machine = await machineInfo();
  const nodes = [...new Set(systems.flatMap((s) => (s.node ? [s.node.version] : [])))];
  progress(
    `machine: ${machine.nproc} CPUs (${machine.cpu}), our ends under node ${nodes.join(" and ") || machine.node}; ${opts.rounds} round(s), transfers up to ${mib(opts.bytes)}${opts.seconds ? ` or ~${opts.seconds} s` : ""}, ${opts.connects} + ${opts.parallelConnects} connects, ${opts.conns} idle connections`,
  );

  // Each relay end holds two descriptors per tunneled connection (plus a few of its own).
  const files = fileLimit();
  let idleNote: string | undefined;
  let idleConns = opts.conns;
  const need = 2 * opts.conns + 64;
  if (files.soft < need) {
    idleConns = Math.max(0, Math.floor((files.soft - 64) / 2 / 100) * 100);
    idleNote = `ulimit -n is ${files.soft} (hard ${files.hard}): too low for ${opts.conns} idle connections, which need ${need} descriptors per relay end; holding ${idleConns} instead (raise the limit, e.g. ulimit -n 65536 / LimitNOFILE, to test ${opts.conns})`;
    progress(`WARNING: ${idleNote}`);
  }

  const loadStart = os.loadavg()[0];
  if (loadStart > 0.5) {
    progress(
      `WARNING: load average ${loadStart.toFixed(2)} before the start: other work may be using the CPUs`,
    );
  }
  const loadByRound: number[] = [];
  const cpu0 = cpuSample();
  const t0 = Date.now();
  const results = new Map<string, SystemResult>(systems.map((s) => [s.id, newResult(s)]));
  for (const r of results.values()) if (r.status === "unavailable") progress(`${r.label}: ${r.reason}`);
  const runnable = systems.filter((s) => results.get(s.id)?.status !== "unavailable");

  return withBench(opts, async (ctx) => {
    ctx.idleConns = idleConns;
    progress(
      `load: ${ctx.tool.name === "iperf3" ? `iperf3 -s on 127.0.0.1:${ctx.throughputPort}` : "Node source/sink"}, echo target 127.0.0.1:${ctx.echoPort}`,
    );
    for (let round = 1; round <= opts.rounds; round++) {
      // Rotate the order each round, so no system always runs first (or right after another).
      const order = runnable.map((_, i) => runnable[(i + round - 1) % runnable.length]);
      for (const sys of order) {
        const rr: RoundResult = { round, errors: [] };
        const tag = `round ${round}/${opts.rounds} ${sys.label.padEnd(20)}`;
        await measureSystem(ctx, sys, rr, tag);
        results.get(sys.id)?.rounds.push(rr);
      }
      loadByRound.push(os.loadavg()[0]);
      progress(
        `round ${round}/${opts.rounds} done; load average ${loadByRound[loadByRound.length - 1].toFixed(2)}`,
      );
    }
    // How much CPU went to processes that are not this run's (other users of the machine).
    const cpu1 = cpuSample();
    const others = Math.max(0, cpu1.machineBusy - cpu0.machineBusy - (cpu1.own - cpu0.own));
    const capacity = (os.availableParallelism() * (Date.now() - t0)) / 1000;
    const otherCpu = {
      cpuSeconds: Math.round(others * 10) / 10,
      shareOfMachine: Math.round((1000 * others) / capacity) / 1000,
    };
    progress(
      `other processes used ${otherCpu.cpuSeconds} CPU-seconds during the run (${(100 * otherCpu.shareOfMachine).toFixed(1)}% of the machine)${otherCpu.shareOfMachine > 0.05 ? ": the numbers are disturbed" : ""}`,
    );
    const list = systems.map((s) => results.get(s.id) as SystemResult);
    for (const r of list) finish(r);
    const targets = checkTargets(
      list,
      opts.conns >= 10_000 ? { note: idleNote ? `ulimit -n ${files.soft}` : undefined } : null,
    );

    const out: string[] = [];
    out.push(
      `## Results (medians of ${opts.rounds} round${opts.rounds > 1 ? "s" : ""})`,
      "",
      resultsTable(list),
      "",
    );
    const partial = list.filter((r) => r.status === "partial");
    for (const r of partial)
      out.push(`\\* ${r.label}: ${[...new Set(r.rounds.flatMap((x) => x.errors))].slice(0, 3).join("; ")}`);
    if (idleNote) out.push(`Note: ${idleNote}`);
    out.push("", "## Ratios", "", ratiosTable(list), "");
    out.push("## CPU cost (both ends together)", "", cpuTable(list), "");
    out.push("## Targets", "", targetsTable(targets), "");
    process.stdout.write(`\n${out.join("\n")}\n`);
    writeFileSync(
      opts.svg,
      chartSvg(
        list,
        `monopiped bench, ${new Date().toISOString().slice(0, 10)}: medians of ${opts.rounds} round${opts.rounds > 1 ? "s" : ""}`,
        `${machine.nproc} CPUs (${machine.cpu}); our ends under Node ${nodes.join(", ")}; other processes used ${(100 * otherCpu.shareOfMachine).toFixed(0)}% of the machine`,
      ),
    );

    const json = {
      benchmark: "monopiped bench",
      date: new Date().toISOString(),
      command: `monopiped bench ${process.argv.slice(3).join(" ")}`.trim(),
      options: opts,
      machine: { ...machine, ourNodes: nodes },
      loadAverage: { start: loadStart, afterEachRound: loadByRound },
      otherProcessesCpu: otherCpu,
      loadGenerator: ctx.tool.name,
      idleConnections: { requested: opts.conns, held: idleConns, note: idleNote },
      elapsedSeconds: (Date.now() - T0) / 1000,
      systems: list,
      targets,
    };
    writeFileSync(opts.json, `${JSON.stringify(json, null, 2)}\n`);
    progress(
      `wrote ${resolve(opts.json)} and ${resolve(opts.svg)} (${json.elapsedSeconds.toFixed(0)} s in all)`,
    );
    return 0;
  });
}

// ---------------------------------------------------------------------------------------------
async function runProfile(opts: Options): Promise<number> {
  const systems = selectSystems(
    opts.only ?? ["monopiped2-tcp"],
    opts.nodes ?? [nodeBinaries()[0].label],
  ).filter((s) => s.role === "ours");
  if (systems.length === 0) throw new BenchUsageError("--profile: --only names none of our systems");
  const dir = resolve(opts.profileDir);
  rmSync(dir, { recursive: true, force: true });
  return withBench(opts, async (ctx) => {
    ctx.env.nodeArgs = ["--cpu-prof", "--cpu-prof-dir", dir];
    const report = (title: string, pids: number[]) => {
      const files = readdirSync(dir);
      ["client end (-e)", "server end (-d)"].forEach((label, i) => {
        const f = files.find((name) => name.includes(`.${pids[i]}.`) && name.endsWith(".cpuprofile"));
        const text = f
          ? formatProfile(`${title}, ${label}`, summarizeProfile(join(dir, f)))
          : `${title}, ${label}: no profile written`;
        process.stdout.write(`\n${text}\n`);
      });
    };
    for (const sys of systems) {
      // 1. Bulk transfer, both ways.
      const bulk = await sys.start(ctx.env, ctx.throughputPort);
      try {
        for (const reverse of [false, true]) {
          const t = await ctx.tool.transfer(bulk.entryPort, opts.bytes, reverse);
          progress(
            `${sys.label} under the profiler: ${reverse ? "download" : "upload"} ${t.gbps.toFixed(2)} Gbit/s (${mib(opts.bytes)})`,
          );
        }
      } finally {
        await bulk.stop();
      }
      report(
        `${sys.label} throughput`,
        bulk.ends.map((p) => p.pid),
      );
      // 2. Connection set-up: connect-and-echo, 64 at a time, for a few seconds.
      const echo = await sys.start(ctx.env, ctx.echoPort);
      try {
        const r = await connectRate(echo.entryPort, 1_000_000, 64, opts.quick ? 1 : 5);
        progress(
          `${sys.label} under the profiler: ${r.perSecond.toFixed(0)} connections/s (x64), echo p50 ${r.p50Ms.toFixed(2)} ms`,
        );
      } finally {
        await echo.stop();
      }
      report(
        `${sys.label} connections`,
        echo.ends.map((p) => p.pid),
      );
    }
    return 0;
  });
}

export async function benchMain(argv: string[]): Promise<number> {
  let opts: Options | "help";
  try {
    opts = parseOptions(argv);
    if (opts === "help") {
      process.stdout.write(HELP);
      return 0;
    }
    return await (opts.profile ? runProfile(opts) : runBench(opts));
  } catch (err) {
    if (err instanceof BenchUsageError || (err instanceof Error && err.message.startsWith("--only"))) {
      process.stderr.write(`monopiped bench: ${err.message}\nTry 'monopiped bench --help'.\n`);
      return 2;
    }
    throw err;
  }
}
