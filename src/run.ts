/**
 * `monopiped -e|-d ...`: one end of a tunnel as a long-running process: start the listener, write
 * the pidfile, drop privileges, log the ready line, and stop on SIGINT/SIGTERM after a grace period.
 */
import { unlinkSync, writeFileSync } from "node:fs";
import { HELP, parse, parseRunArgs, RUN_OPTIONS, VERSION, withKeys } from "./cli.js";
import { reloadKeyFiles } from "./keys.js";
import { createLogger } from "./log.js";
import type { MetricsServer } from "./metrics.js";
import { NO_OBSERVER } from "./observer.js";
import { dropPrivileges } from "./privileges.js";
import type { Keys } from "./protocol/index.js";
import { Tunnel } from "./tunnel.js";
import { isWorkerProcess, joinPrimary, runPrimary, type WorkerChannel } from "./workers.js";

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, RUN_OPTIONS);
  if (values.help || argv.length === 0) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`monopiped ${VERSION}\n`);
    return 0;
  }
  const flags = parseRunArgs(argv);
  let log = createLogger(flags.logLevel, flags.logFormat);

  // Operations: --workers, SIGHUP, --metrics (docs/OPERATIONS.md).
  // Until the handlers below are in place, a SIGHUP (which would otherwise end the process) is noted.
  // The cluster and metrics modules are loaded only when used (node:cluster adds ~2.5 MiB to the
  // process, prom-client ~13 MiB).
  const inWorker = isWorkerProcess();
  let onHup = () => log.info("SIGHUP before start-up finished: nothing to re-read yet");
  if (!inWorker) process.on("SIGHUP", () => onHup());
  if (flags.workers > 1 && !inWorker)
    return runPrimary(flags, log, flags.workers, (fn) => {
      onHup = fn;
    });
  const m = flags.metrics ? await import("./metrics.js") : null;
  let stopRequested: () => void = () => {};
  let worker: WorkerChannel | null = null;
  let setKeys: (keys: Keys[]) => void = () => {};
  if (inWorker) {
    log = log.child({ worker: process.pid });
    worker = joinPrimary(
      log,
      (keys) => setKeys(keys),
      () => stopRequested(),
    );
  }
  const keyFiles: Buffer[] = [];
  const cfg = worker ? { ...flags, keys: await worker.keys } : withKeys(flags, log, keyFiles);
  if (!cfg) return 1;
  setKeys = (keys) => {
    cfg.keys = keys;
  };
  const metrics = m ? new m.Metrics() : null;
  if (metrics && worker) metrics.answerClusterScrapes();
  const proc = m && !worker ? new m.ProcessMetrics() : null;
  proc?.keys.set(cfg.keys.length);
  let draining = false;
  let metricsServer: MetricsServer | null = null;

  const tunnel = new Tunnel(cfg, log, metrics ?? NO_OBSERVER);
  try {
    await tunnel.start();
    if (flags.metrics && m && metrics && proc) {
      metricsServer = await m.serveMetrics(
        flags.metrics,
        m.localScrape(metrics.registry, proc.registry),
        () => draining,
        log,
      );
      log.info(
        { metrics: metricsServer.address },
        `metrics on http://${metricsServer.address}/metrics, health check on /healthz`,
      );
    }
  } catch (err) {
    process.stderr.write(`monopiped: ${(err as Error).message}\n`);
    await tunnel.stop(0);
    return 1;
  }
  if (!worker) {
    onHup = () => {
      const r = reloadKeyFiles(flags.keyPaths, keyFiles);
      if (!r.ok) {
        proc?.keyReloads.inc({ result: "failed" });
        log.error(
          { keys: cfg.keys.length },
          `SIGHUP: ${r.error}; keeping the ${cfg.keys.length} key(s) in force, nothing changed`,
        );
        return;
      }
      cfg.keys = r.keys;
      keyFiles.splice(0, keyFiles.length, ...r.files.bytes);
      proc?.keys.set(r.keys.length);
      proc?.keyReloads.inc({ result: "ok" });
      log.info(
        {
          keys: r.keys.length,
          keyIds: r.ids,
          warnings: r.files.warnings.length ? r.files.warnings : undefined,
        },
        `SIGHUP: re-read ${flags.keyPaths.length} key file(s), ${r.keys.length} key(s) now in force; listener and open connections untouched`,
      );
    };
  }
  if (flags.pidfile && !worker) writeFileSync(flags.pidfile, `${process.pid}\n`);
  if (flags.runAs) {
    try {
      dropPrivileges(flags.runAs);
      log.info({ user: flags.runAs.user, group: flags.runAs.group }, "dropped privileges (-u)");
    } catch (err) {
      process.stderr.write(`monopiped: ${(err as Error).message}\n`);
      await tunnel.stop(0);
      return 1;
    }
  }
  if (worker) {
    log.info({ listen: tunnel.address }, `worker ${process.pid} ready`);
    worker.ready(tunnel.address);
  } else tunnel.logListening();

  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals > 1) {
        log.warn(`${sig} again: exiting now`);
        resolve(1);
        return;
      }
      draining = true;
      proc?.draining.set(1);
      log.info(`${sig}: no longer accepting connections`);
      void tunnel.stop(cfg.graceMs).then(async () => {
        await metricsServer?.close();
        log.info("stopped");
        resolve(0);
      });
    };
    if (worker) stopRequested = () => onSignal("SIGTERM");
    else {
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
    }
  }).finally(() => {
    if (flags.pidfile) {
      try {
        unlinkSync(flags.pidfile);
      } catch {
        // already gone
      }
    }
  });
}
