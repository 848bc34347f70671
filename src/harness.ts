/**
 * Starts monopiped ends as real child processes and learns their bound address from their log,
 * for the demo, the benchmark and the end-to-end tests. Ends listen on port 0 so runs never collide.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const CLI_PATH = fileURLToPath(new URL("./main.js", import.meta.url));
/**
 * The Node flags the `monopiped` command (bin/monopiped.js) runs with, for the ends that tests, the demo
 * and the benchmark start with `node CLI_PATH`. Both trade nothing measurable in speed for memory
 * (docs/BENCHMARKS.md, item 6): --max-semi-space-size=1 caps V8's young generation at 1 MiB per
 * semi-space (without it V8 grows it to 16-32 MiB while connections are set up, memory an idle
 * tunnel never needs), and --optimize-for-size makes V8 favour a small heap over growing it early.
 */
export const RUNTIME_FLAGS = ["--max-semi-space-size=1", "--optimize-for-size"];

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export interface RunningEnd {
  child: ChildProcess;
  /** The address it listens on, e.g. 127.0.0.1:41234. */
  address: string;
  port: number;
  /** Every log line so far (JSON-parsed). */
  logs: LogLine[];
  /** Resolves with the first log line matching, waiting up to timeoutMs. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /**
   * Resolves with every matching line once there are at least `count` of them. A process logs a
   * connection's end a moment after the application saw it end, so count lines this way.
   */
  waitForLogs(pred: (l: LogLine) => boolean, count: number, timeoutMs?: number): Promise<LogLine[]>;
  /** SIGTERM (then SIGKILL after a while); resolves with the exit code. */
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

/** Ends started by startEnd that have not exited yet. */
const liveEnds = new Set<RunningEnd>();

/**
 * Stop every end this process started that is still running (each by its PID): a test file's
 * last after() hook, so that a test that failed half-way leaves no process behind (and its own
 * process can exit).
 */
export async function stopAllEnds(): Promise<void> {
  await Promise.all([...liveEnds].map((e) => e.stop()));
}

/** Spawn `monopiped ARGS` (the listen address should use port 0) and wait until it listens. */
export function startEnd(
  args: string[],
  opts: { nodePath?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunningEnd> {
  const child = spawn(
    opts.nodePath ?? process.execPath,
    [...RUNTIME_FLAGS, CLI_PATH, ...args, "--log-format", "json"],
    {
      stdio: ["ignore", "inherit", "pipe"],
      env: opts.env ?? process.env,
    },
  );
  const logs: LogLine[] = [];
  const waiters: { pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let stderrText = "";
  let partial = "";
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (s: string) => {
    partial += s;
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line) as LogLine;
      } catch {
        stderrText += `${line}\n`;
        continue;
      }
      logs.push(parsed);
      for (const w of [...waiters]) {
        if (w.pred(parsed)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  });
  const waitForLog = (pred: (l: LogLine) => boolean, timeoutMs = 10_000) =>
    new Promise<LogLine>((resolve, reject) => {
      const found = logs.find(pred);
      if (found) return resolve(found);
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(entry), 1);
        reject(
          new Error(
            `log line not seen within ${timeoutMs} ms; logs:\n${logs.map((l) => JSON.stringify(l)).join("\n")}${stderrText}`,
          ),
        );
      }, timeoutMs);
      const entry = {
        pred,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      waiters.push(entry);
    });
  const waitForLogs = async (pred: (l: LogLine) => boolean, count: number, timeoutMs = 10_000) => {
    await waitForLog(() => logs.filter(pred).length >= count, timeoutMs);
    return logs.filter(pred);
  };
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  const running: RunningEnd = {
    child,
    address: "",
    port: 0,
    logs,
    waitForLog,
    waitForLogs,
    stop,
    exited,
  };
  liveEnds.add(running);
  void exited.then(() => liveEnds.delete(running));
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) =>
      reject(
        new Error(
          `monopiped ${args.join(" ")} exited with ${code} before listening:\n${stderrText}${logs.map((l) => l.msg).join("\n")}`,
        ),
      );
    child.once("exit", onExit);
    waitForLog((l) => typeof l.listen === "string" && l.msg.startsWith("listening on"), 15_000).then(
      (l) => {
        child.removeListener("exit", onExit);
        running.address = l.listen as string;
        running.port = Number(running.address.slice(running.address.lastIndexOf(":") + 1));
        resolve(running);
      },
      (err) => {
        child.kill("SIGKILL");
        reject(err);
      },
    );
  });
}
