/**
 * --daemon: run in the background, as spiped does by default. Node cannot fork(), so the process
 * starts itself again, detached (a new session, standard input/output on /dev/null), and waits on
 * an IPC channel until that copy reports it is listening (or, with -D, waiting for DNS as spiped's
 * daemon does): then it exits 0. If the copy fails to start, it exits 1 with the copy's message.
 *
 * The background copy's log goes to standard error only when that is a file (2>>monopiped.log); a
 * terminal or a pipe would be held open (or written to after the shell is gone), so it then goes
 * nowhere, unless --syslog sends it to syslog.
 */
import { spawn } from "node:child_process";
import { fstatSync } from "node:fs";

/** Set in the background copy's environment (with an IPC channel): it is the daemon itself. */
const DAEMON_ENV = "MONOPIPED_DAEMON_CHILD";
/** How long the parent waits for the background copy to report. */
const START_TIMEOUT_MS = 60_000;

export type DaemonMessage = { type: "ready" } | { type: "waiting" } | { type: "error"; message: string };

/**
 * Whether this process is the background copy, decided once at start-up; the variable is then
 * removed, so that no process this one starts (logger, cluster workers) takes itself for it.
 */
const daemonChild = process.env[DAEMON_ENV] === "1" && typeof process.send === "function";
delete process.env[DAEMON_ENV];

/** True in the background copy that --daemon started. */
export function isDaemonChild(): boolean {
  return daemonChild;
}

/** Background copy: tell the parent how start-up went (no-op otherwise). */
export function tellParent(msg: DaemonMessage): Promise<void> {
  if (!isDaemonChild() || !process.connected) return Promise.resolve();
  return new Promise((resolve) => {
    process.send?.(msg, undefined, {}, () => resolve());
  });
}

/** Background copy: drop the channel to the parent once start-up is reported. */
export function detachFromParent(): void {
  if (process.connected) process.disconnect();
}

function stderrIsFile(): boolean {
  try {
    return fstatSync(2).isFile();
  } catch {
    return false;
  }
}

/**
 * Parent: start the background copy with the same Node flags and arguments, wait until it is
 * ready, and return the exit status. `keyFromStdin`: -k -, so the copy reads standard input.
 */
export function startDaemon(opts: {
  keyFromStdin: boolean;
  pidfile: string;
  syslog: boolean;
}): Promise<number> {
  const logToFile = stderrIsFile();
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true,
    stdio: [opts.keyFromStdin ? "inherit" : "ignore", "ignore", logToFile ? "inherit" : "ignore", "ipc"],
    env: { ...process.env, [DAEMON_ENV]: "1" },
  });
  return new Promise<number>((resolve) => {
    let done = false;
    const finish = (code: number, text?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (text) process.stderr.write(`monopiped: ${text}\n`);
      if (child.connected) child.disconnect();
      child.unref();
      resolve(code);
    };
    const timer = setTimeout(() => {
      child.kill("SIGTERM");
      finish(
        1,
        `the background process (PID ${child.pid}) did not report within ${START_TIMEOUT_MS / 1000} s; stopped it`,
      );
    }, START_TIMEOUT_MS);
    child.on("message", (m: DaemonMessage) => {
      if (m.type === "error") return finish(1, m.message);
      const where = opts.syslog
        ? "its log goes to syslog"
        : logToFile
          ? "its log goes to the same file as standard error"
          : "its log is discarded: use --syslog, or send standard error to a file (2>>FILE)";
      // Quiet when a script runs it, as spiped is; a person at a terminal is told where it went.
      const text =
        m.type === "waiting"
          ? `running in the background as PID ${child.pid} (pidfile ${opts.pidfile}), waiting for DNS (-D); ${where}`
          : `running in the background as PID ${child.pid} (pidfile ${opts.pidfile}); ${where}`;
      finish(0, process.stderr.isTTY ? text : undefined);
    });
    child.on("error", (err) => finish(1, `cannot start the background process: ${err.message}`));
    child.on("exit", (code, signal) =>
      finish(
        1,
        `the background process exited (${signal ?? `exit ${code}`}) before it was ready${logToFile ? "" : "; run it without --daemon to see why"}`,
      ),
    );
  });
}
