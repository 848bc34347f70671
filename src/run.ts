/**
 * `monopiped -e|-d ...`: one end of a tunnel as a long-running process: write the pidfile (checked
 * before anything is bound), wait for DNS (-D), start the listener, drop privileges, log the ready
 * line, and stop on SIGINT/SIGTERM after a grace period, removing the pidfile. With --daemon the
 * process first starts a background copy of itself and returns once that copy is ready.
 */
import { closeSync, openSync, unlinkSync, writeSync } from "node:fs";
import { HELP, parse, parseRunArgs, RUN_OPTIONS, USAGE, VERSION, withKeys } from "./cli.js";
import { detachFromParent, isDaemonChild, startDaemon, tellParent } from "./daemon.js";
import { namesToWaitFor, waitForNames } from "./dns-wait.js";
import { createLogger } from "./log.js";
import { dropPrivileges } from "./privileges.js";
import { openSyslog } from "./syslog.js";
import { Tunnel } from "./tunnel.js";

/**
 * Write the process id to `path` before anything is bound, so that a pidfile that cannot be
 * written stops the start-up with one line instead of failing after the port is taken.
 * Returns the error text, or undefined when written.
 */
function writePidfile(path: string, isDefault: boolean): string | undefined {
  try {
    const fd = openSync(path, "w", 0o644);
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    return undefined;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === "ENOENT"
        ? "its directory does not exist"
        : e.code === "EACCES" || e.code === "EPERM"
          ? "permission denied"
          : e.code === "EISDIR"
            ? "it is a directory"
            : e.code === "EROFS"
              ? "read-only file system"
              : e.message;
    return isDefault
      ? `cannot write the pidfile ${path} (--daemon's default: the listen address plus .pid, as spiped; choose another with -p FILE): ${why}`
      : `-p/--pidfile ${path}: cannot write it: ${why}`;
  }
}

function removePidfile(path: string | undefined): void {
  if (!path) return;
  try {
    unlinkSync(path);
  } catch {
    // already gone, or not ours to remove any more (-u)
  }
}

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
  const daemonChild = isDaemonChild();
  if (flags.daemon && !daemonChild)
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

  const log = createLogger(flags.logLevel, flags.logFormat, flags.syslog ? openSyslog() : undefined);
  let keyError = "";
  const cfg = withKeys(flags, log, (m) => {
    keyError = m;
  });
  if (!cfg) return fail(keyError);

  const pidfile = flags.pidfile;
  if (pidfile) {
    const err = writePidfile(pidfile, values.pidfile === undefined);
    if (err) return fail(err);
  }

  const tunnel = new Tunnel(cfg, log);
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
    log.info(`${sig}: no longer accepting connections`);
    void tunnel.stop(cfg.graceMs).then(() => {
      log.info("stopped");
      resolveDone(0);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    const code = await Promise.race([done, serve()]);
    return code;
  } finally {
    removePidfile(pidfile);
  }

  async function serve(): Promise<number> {
    if (flags.waitForDns) {
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
    } catch (err) {
      return fail((err as Error).message);
    }
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
    tunnel.logListening();
    if (daemonChild) {
      await tellParent({ type: "ready" });
      detachFromParent();
    }
    return done;
  }
}
