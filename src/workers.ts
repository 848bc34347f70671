/**
 * --workers N: N processes (node:cluster) serve one listener. The primary binds nothing itself but
 * the --metrics listener: it reads the key files, starts the workers, hands each the keys over IPC,
 * and logs the one ready line once every worker listens. The connections are spread by the primary,
 * round robin (cluster.SCHED_RR; docs/OPERATIONS.md says why not SO_REUSEPORT).
 *
 * Signals go to the primary only, which acts for all: SIGHUP re-reads the key files and sends the
 * new keys to every worker (a broken file: nothing changes); SIGTERM/SIGINT tell every worker to
 * stop, each giving its open connections --grace to finish; a second one stops them at once. A worker
 * ignores signals sent to it directly (a supervisor signalling the whole process group would else
 * make it stop twice, i.e. at once): it acts on the primary's messages. A worker that dies is
 * replaced; one that dies before it listened stops the whole process (exit 1).
 */
import type { Worker } from "node:cluster";
import type { parseRunArgs } from "./cli.js";
import { deriveKeys, type KeyFiles, keyId, readKeyFiles, reloadKeyFiles } from "./keys.js";
import type { Logger } from "./log.js";
import type { MetricsServer, ProcessMetrics } from "./metrics.js";
import { removePidfile, writePidfile } from "./pidfile.js";
import { dropPrivileges } from "./privileges.js";
import type { Keys } from "./protocol/index.js";

type Flags = ReturnType<typeof parseRunArgs>;

/** Messages between the primary and its workers (over the cluster's IPC channel). */
type Message =
  | { monopiped: "keys?" }
  | { monopiped: "keys"; keys: string[]; update: boolean }
  | { monopiped: "ready"; address: string }
  | { monopiped: "stop" };

function isMessage(m: unknown): m is Message {
  return typeof m === "object" && m !== null && typeof (m as { monopiped?: unknown }).monopiped === "string";
}

const RESTART_DELAY_MS = 1000;
/** Set in a worker's environment by runPrimary. */
const WORKER_ENV = "MONOPIPED_WORKER";

/**
 * True in a worker started by runPrimary (without loading node:cluster, ~2.5 MiB, in every process:
 * cluster itself removes its own NODE_UNIQUE_ID from a worker's environment at start-up).
 */
export function isWorkerProcess(): boolean {
  return process.env[WORKER_ENV] === "1" && typeof process.send === "function";
}

/** A worker's side of the channel to its primary. */
export interface WorkerChannel {
  /** The keys, as the primary read them. */
  keys: Promise<Keys[]>;
  /** Tell the primary this worker listens. */
  ready(address: string): void;
}

/**
 * In a worker: ask for the keys, apply later updates (SIGHUP at the primary) with `onUpdate`, and
 * call `onStop` each time the primary says stop. Signals sent to the worker itself are ignored.
 */
export function joinPrimary(
  log: Logger,
  onUpdate: (keys: Keys[]) => void,
  onStop: () => void,
): WorkerChannel {
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () =>
      log.debug(`${sig} ignored: this is a worker, the primary (pid ${process.ppid}) acts on signals`),
    );
  }
  let first: ((keys: Keys[]) => void) | null = null;
  const keys = new Promise<Keys[]>((resolve) => {
    first = resolve;
  });
  process.on("message", (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.monopiped === "keys") {
      const next = deriveKeys(m.keys.map((k) => Buffer.from(k, "base64")));
      if (first) {
        first(next);
        first = null;
      } else {
        onUpdate(next);
        log.info({ keys: next.length }, `keys updated by the primary: ${next.length} in force`);
      }
    } else if (m.monopiped === "stop") onStop();
  });
  process.send?.({ monopiped: "keys?" } satisfies Message);
  return {
    keys,
    ready: (address) => process.send?.({ monopiped: "ready", address } satisfies Message),
  };
}

/** The primary: start `n` workers running the same command line, and act for them. Resolves with the exit code. */
export async function runPrimary(
  flags: Flags,
  log: Logger,
  n: number,
  handleSighup: (onHup: () => void) => void,
): Promise<number> {
  let files: KeyFiles;
  try {
    files = readKeyFiles(flags.keyPaths);
  } catch (err) {
    process.stderr.write(`monopiped: ${(err as Error).message}\n`);
    return 1;
  }
  for (const warning of files.warnings) log.warn(warning);
  let keyFiles = files.bytes;
  const { default: cluster } = await import("node:cluster");
  const m = flags.metrics ? await import("./metrics.js") : null;
  const proc: ProcessMetrics | null = m ? new m.ProcessMetrics(true) : null;
  proc?.keys.set(keyFiles.length);

  let stopping = false;
  let metrics: MetricsServer | null = null;
  const workers = new Set<Worker>();
  const ready = new Set<Worker>();
  if (flags.metrics && m && proc) {
    try {
      metrics = await m.serveMetrics(
        flags.metrics,
        m.clusterScrape(proc.registry),
        () => stopping || ready.size === 0,
        log,
      );
      log.info(
        { metrics: metrics.address },
        `metrics on http://${metrics.address}/metrics (all workers), health check on /healthz`,
      );
    } catch (err) {
      process.stderr.write(`monopiped: ${(err as Error).message}\n`);
      return 1;
    }
  }

  cluster.schedulingPolicy = cluster.SCHED_RR;
  let started = false;
  let finish: (code: number) => void = () => {};
  const done = new Promise<number>((resolve) => {
    finish = resolve;
  });

  const keysMessage = (update: boolean): Message => ({
    monopiped: "keys",
    keys: keyFiles.map((b) => b.toString("base64")),
    update,
  });

  const onAllReady = (address: string) => {
    started = true;
    if (flags.runAs) {
      try {
        dropPrivileges(flags.runAs);
        log.info({ user: flags.runAs.user, group: flags.runAs.group }, "dropped privileges (-u)");
      } catch (err) {
        process.stderr.write(`monopiped: ${(err as Error).message}\n`);
        stopAll();
        void exitWhenGone(1);
        return;
      }
    }
    log.info(
      {
        mode: flags.mode,
        listen: address,
        target: flags.target.text,
        protocol: flags.protocol,
        workers: n,
        pids: [...workers].map((w) => w.process.pid),
        metrics: metrics?.address,
      },
      `listening on ${address}, ${flags.mode === "encrypt" ? "encrypting" : "decrypting"} to ${flags.target.text} (${n} workers)`,
    );
  };

  const fork = () => {
    const w = cluster.fork({ [WORKER_ENV]: "1" });
    workers.add(w);
    proc?.workers?.set(workers.size);
    w.on("message", (m: unknown) => {
      if (!isMessage(m)) return;
      if (m.monopiped === "keys?") w.send(keysMessage(false));
      else if (m.monopiped === "ready") {
        ready.add(w);
        if (stopping) w.send({ monopiped: "stop" } satisfies Message);
        else if (!started && ready.size === n) onAllReady(m.address);
      }
    });
    w.on("exit", (code, signal) => {
      workers.delete(w);
      ready.delete(w);
      proc?.workers?.set(workers.size);
      const how = signal ? `signal ${signal}` : `code ${code}`;
      if (stopping) {
        if (workers.size === 0) void exitWhenGone(0);
        return;
      }
      if (!started) {
        log.error(`worker ${w.process.pid} exited (${how}) before it listened: stopping`);
        stopping = true;
        stopAll();
        void exitWhenGone(1);
        return;
      }
      log.error(`worker ${w.process.pid} exited (${how}): starting another`);
      setTimeout(() => !stopping && fork(), RESTART_DELAY_MS).unref();
    });
  };

  const stopAll = () => {
    for (const w of workers) if (w.isConnected()) w.send({ monopiped: "stop" } satisfies Message);
  };

  let exiting = false;
  const exitWhenGone = async (code: number) => {
    if (exiting) return;
    exiting = true;
    if (workers.size > 0) {
      await new Promise<void>((resolve) => {
        const check = () => (workers.size === 0 ? resolve() : setTimeout(check, 50));
        check();
      });
    }
    await metrics?.close();
    if (code === 0) log.info("stopped");
    finish(code);
  };

  let signals = 0;
  const onStop = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn(`${sig} again: stopping the workers now`);
      stopAll(); // a worker told twice cuts its connections and exits
      return;
    }
    stopping = true;
    proc?.draining.set(1);
    log.info(
      { workers: workers.size, graceSeconds: flags.graceMs / 1000 },
      `${sig}: stopping ${workers.size} workers; each gives its open connections ${flags.graceMs / 1000} s to finish`,
    );
    stopAll();
    if (workers.size === 0) void exitWhenGone(0);
  };
  handleSighup(() => {
    const r = reloadKeyFiles(flags.keyPaths, keyFiles);
    if (!r.ok) {
      proc?.keyReloads.inc({ result: "failed" });
      log.error(
        { keys: keyFiles.length },
        `SIGHUP: ${r.error}; keeping the ${keyFiles.length} key(s) in force, nothing changed`,
      );
      return;
    }
    keyFiles = r.files.bytes;
    proc?.keys.set(keyFiles.length);
    proc?.keyReloads.inc({ result: "ok" });
    for (const w of workers) if (w.isConnected()) w.send(keysMessage(true));
    log.info(
      {
        keys: keyFiles.length,
        keyIds: keyFiles.map(keyId),
        warnings: r.files.warnings.length ? r.files.warnings : undefined,
        workers: workers.size,
      },
      `SIGHUP: re-read ${flags.keyPaths.length} key file(s), ${keyFiles.length} key(s) now in force, sent to ${workers.size} workers; listener and open connections untouched`,
    );
  });
  process.on("SIGINT", onStop);
  process.on("SIGTERM", onStop);

  // As for one process: the pidfile is checked before any worker binds the listener.
  if (flags.pidfile) {
    const err = writePidfile(flags.pidfile, false);
    if (err) {
      process.stderr.write(`monopiped: ${err}\n`);
      await metrics?.close();
      return 1;
    }
  }
  for (let i = 0; i < n; i++) fork();
  return done.finally(() => removePidfile(flags.pidfile));
}
