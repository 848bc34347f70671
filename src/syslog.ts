/**
 * --syslog: the log goes to the local syslog socket (/dev/log) instead of standard error. Node has
 * no Unix datagram sockets, so the lines go through util-linux's `logger`, one long-lived child
 * reading them on its standard input (`--prio-prefix`: each line carries its own priority). When
 * there is no syslog socket or no `logger`, or logger dies, one line on standard error says so and
 * the log goes on to standard error.
 */
import { spawn } from "node:child_process";
import { statSync } from "node:fs";

export const SYSLOG_SOCKET = "/dev/log";
/** LOG_DAEMON, as spiped's --syslog uses. */
const FACILITY = 3;

/** pino level -> syslog severity (debug 7, info 6, warning 4, err 3, crit 2). */
export function severity(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

export interface LineOutput {
  write(level: number, line: string): void;
}

/** Where --syslog sends log lines; falls back to standard error (saying why once) if it cannot. */
export function openSyslog(ident = "monopiped"): LineOutput {
  const toStderr: LineOutput = { write: (_level, line) => process.stderr.write(`${line}\n`) };
  const note = (why: string) =>
    process.stderr.write(`monopiped: --syslog: ${why}; logging to standard error instead\n`);
  try {
    if (!statSync(SYSLOG_SOCKET).isSocket()) {
      note(`${SYSLOG_SOCKET} is not a socket`);
      return toStderr;
    }
  } catch {
    note(`no syslog socket at ${SYSLOG_SOCKET} (is a syslog daemon or journald running?)`);
    return toStderr;
  }
  const child = spawn(
    "logger",
    ["--prio-prefix", "-t", ident, `--id=${process.pid}`, "--socket-errors=on", "-u", SYSLOG_SOCKET],
    { stdio: ["pipe", "ignore", "pipe"] },
  );
  let failed = false;
  let loggerSaid = "";
  const fail = (why: string) => {
    if (failed) return;
    failed = true;
    note(why);
  };
  child.on("error", (err: NodeJS.ErrnoException) =>
    fail(
      err.code === "ENOENT"
        ? "the logger command (util-linux) is not installed"
        : `cannot run logger: ${err.message}`,
    ),
  );
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (s: string) => {
    loggerSaid += s;
  });
  child.on("exit", (code, signal) =>
    fail(
      `logger stopped (${signal ?? `exit ${code}`})${loggerSaid ? `: ${loggerSaid.trim().split("\n")[0]}` : ""}`,
    ),
  );
  child.stdin?.on("error", () => fail("logger stopped reading"));
  // The log child must not keep the process alive on its own.
  child.unref();
  for (const s of [child.stdin, child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
  return {
    write(level, line) {
      if (failed || !child.stdin?.writable) {
        process.stderr.write(`${line}\n`);
        return;
      }
      // One line per message: logger would cut a multi-line message into several.
      child.stdin.write(`<${FACILITY * 8 + severity(level)}>${line.replace(/\n/g, " ")}\n`);
    },
  };
}
