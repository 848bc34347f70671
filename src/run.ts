/**
 * `monopiped -e|-d ...`: one end of a tunnel as a long-running process: write the pidfile (checked
 * before anything is bound), wait for DNS (-D), start the listener, drop privileges, log the ready
 * line, and stop on SIGINT/SIGTERM after a grace period, removing the pidfile. With --daemon the
 * process first starts a background copy of itself and returns once that copy is ready. Operations
 * (docs/OPERATIONS.md): --workers runs the primary (src/workers.ts), SIGHUP re-reads the key files,
 * --metrics serves Prometheus text and /healthz. The cluster and metrics modules are loaded only
 * when used (node:cluster adds ~2.5 MiB to the process, prom-client ~13 MiB), as is -D's DNS wait
 * (it loads node:http, https and tls).
 */
import { HELP, parse, parseRunArgs, RUN_OPTIONS, USAGE, UsageError, VERSION, withKeys } from "./cli.js";
import { detachFromParent, isDaemonChild, startDaemon, tellParent } from "./daemon.js";
import { reloadKeyFiles } from "./keys.js";
import { createLogger } from "./log.js";
import type { MetricsServer } from "./metrics.js";
import { NO_OBSERVER } from "./observer.js";
import { removePidfile, writePidfile } from "./pidfile.js";
import { dropPrivileges } from "./privileges.js";
import type { Keys } from "./protocol/index.js";
import { openSyslog } from "./syslog.js";
import { takeListenFd } from "./transport/listenfds.js";
import { Tunnel } from "./tunnel.js";
import { isWorkerProcess, joinPrimary, runPrimary, type WorkerChannel } from "./workers.js";

export async function run(argv: string[]): Promise<number> {
  if (argv.length === 0) {
    process.stderr.write(USAGE);
    return 2;
  }
  const { values } = parse(argv, RUN_OPTIONS);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`monopiped ${VERSION}\n`);
    return 0;
  }
  const flags = parseRunArgs(argv);
  const inWorker = isWorkerProcess();
  const daemonChild = isDaemonChild();
  if (flags.daemon && flags.workers > 1)
    throw new UsageError(
      "--daemon and --workers cannot be combined yet: run the workers in the foreground under a supervisor (docs/systemd/)",
    );
  if (flags.daemon && !daemonChild && !inWorker)
    return startDaemon({
      keyFromStdin: flags.keyPath === "-",
      pidfile: flags.pidfile as string,
      syslog: flags.syslog,
    });

  /** A start-up failure: one line on standard error (and to the waiting parent with --daemon). */
  const fail = async (message: string): Promise<number> => {
    process.stderr.write(`monopiped: ${message}\n`);
    await tellParent({ type: "error", message });
    detachFromParent();
    return 1;
  };

  let log = createLogger(flags.logLevel, flags.logFormat, flags.syslog ? openSyslog() : undefined);
  // Until the handlers below are in place, a SIGHUP (which would otherwise end the process) is noted.
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
  let keyError = "";
  const cfg = worker
    ? { ...flags, keys: await worker.keys }
    : withKeys(flags, log, keyFiles, (msg) => {
        keyError = msg;
      });
  if (!cfg) return fail(keyError);
  // Socket activation (systemd): serve on the passed listening socket instead of binding -l.
  if (!worker) {
    try {
      cfg.listenFd = takeListenFd();
    } catch (err) {
      return fail(`socket activation: ${(err as Error).message}`);
    }
    if (cfg.listenFd !== undefined)
      log.info(
        { fd: cfg.listenFd },
        `socket activation: serving on descriptor ${cfg.listenFd}, not binding ${cfg.listen.text}`,
      );
  }
  setKeys = (keys) => {
    cfg.keys = keys;
  };
  const metrics = m ? new m.Metrics() : null;
  if (metrics && worker) metrics.answerClusterScrapes();
  const proc = m && !worker ? new m.ProcessMetrics() : null;
  proc?.keys.set(cfg.keys.length);
  let draining = false;
  let metricsServer: MetricsServer | null = null;

  const pidfile = worker ? undefined : flags.pidfile;
  if (pidfile) {
    const err = writePidfile(pidfile, values.pidfile === undefined);
    if (err) return fail(err);
  }

  const tunnel = new Tunnel(cfg, log, metrics ?? NO_OBSERVER);
  let started = false;
  const stopWaiting = new AbortController();
  let resolveDone: (code: number) => void = () => {};
  const done = new Promise<number>((resolve) => {
    resolveDone = resolve;
  });
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn(`${sig} again: exiting now`);
      resolveDone(1);
      return;
    }
    if (!started) {
      log.info(`${sig}: stopping before serving`);
      stopWaiting.abort();
      resolveDone(0);
      return;
    }
    draining = true;
    proc?.draining.set(1);
    log.info(`${sig}: no longer accepting connections`);
    void tunnel.stop(cfg.graceMs).then(async () => {
      await metricsServer?.close();
      log.info("stopped");
      resolveDone(0);
    });
  };
  if (worker) stopRequested = () => onSignal("SIGTERM");
  else {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }

  try {
    const code = await Promise.race([done, serve()]);
    return code;
  } finally {
    removePidfile(pidfile);
  }

  async function serve(): Promise<number> {
    if (flags.waitForDns) {
      // Loaded only for -D: it brings node:http/https/tls (the proxy settings name hosts too).
      const { namesToWaitFor, waitForNames } = await import("./dns-wait.js");
      const names = namesToWaitFor(cfg as NonNullable<typeof cfg>);
      const resolved = await waitForNames(names, log, {
        signal: stopWaiting.signal,
        // As spiped's -D: the daemon's parent returns as soon as the wait begins.
        onFirstFailure: () => void tellParent({ type: "waiting" }).then(detachFromParent),
      });
      if (!resolved) return done;
    }
    if (stopWaiting.signal.aborted) return done;
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
      await tunnel.stop(0);
      return fail((err as Error).message);
    }
    if (!worker) onHup = reloadKeys;
    if (flags.runAs) {
      try {
        dropPrivileges(flags.runAs);
        log.info({ user: flags.runAs.user, group: flags.runAs.group }, "dropped privileges (-u)");
      } catch (err) {
        await tunnel.stop(0);
        return fail((err as Error).message);
      }
    }
    started = true;
    if (worker) {
      log.info({ listen: tunnel.address }, `worker ${process.pid} ready`);
      worker.ready(tunnel.address);
    } else tunnel.logListening();
    if (daemonChild) {
      await tellParent({ type: "ready" });
      detachFromParent();
    }
    return done;
  }

  /** SIGHUP: re-read every key file; all or nothing, the listener and open connections untouched. */
  function reloadKeys(): void {
    if (!cfg) return;
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
  }
}
