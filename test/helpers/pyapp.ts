/**
 * Runs test/helpers/app.py, the application that is not built on libuv, whose verdict says whether
 * a connection ended with a clean end of stream ("eof") or a reset. Each run is a child process
 * stopped by its PID (bench/procs.ts) if a test leaves it behind.
 */
import { fileURLToPath } from "node:url";
import { spawnProc } from "../../bench/procs.js";

/** The script in the source tree (the compiled test lives in dist/test/helpers). */
export const APP_PY = fileURLToPath(new URL("../../../test/helpers/app.py", import.meta.url));

export interface AppReport {
  received: number;
  sha256: string;
  /** "eof" | "reset" | "timeout" | "none" | "error: ..." | "crashed: ..." (no report line). */
  end: string;
}

/** Hands out each JSON line the process prints to stdout, in order. */
function jsonLines(name: string, args: string[]) {
  const queue: Record<string, unknown>[] = [];
  const waiters: ((v: Record<string, unknown> | null) => void)[] = [];
  let done = false;
  const proc = spawnProc(name, "python3", [APP_PY, ...args], {
    watch: (line, stream) => {
      if (stream !== "stdout") return false;
      let v: Record<string, unknown>;
      try {
        v = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return false;
      }
      const w = waiters.shift();
      if (w) w(v);
      else queue.push(v);
      return false;
    },
  });
  void proc.exited.then(() => {
    done = true;
    for (const w of waiters.splice(0)) w(null);
  });
  const next = (): Promise<Record<string, unknown> | null> => {
    const v = queue.shift();
    if (v) return Promise.resolve(v);
    if (done) return Promise.resolve(null);
    return new Promise((resolve) => waiters.push(resolve));
  };
  const report = async (): Promise<AppReport> => {
    const v = await next();
    if (v === null) return { received: 0, sha256: "", end: `crashed: ${proc.tail().slice(-300)}` };
    return v as unknown as AppReport;
  };
  return { proc, next, report };
}

export interface AppServer {
  port: number;
  pid: number;
  /** The report once its one connection is over. */
  result: Promise<AppReport>;
  stop(): Promise<void>;
}

/** `app.py serve 127.0.0.1 0 OPTIONS`: accepts one connection on a port it picks. */
export async function appServe(options: string[] = [], host = "127.0.0.1"): Promise<AppServer> {
  const j = jsonLines("app.py serve", ["serve", host, "0", ...options]);
  const first = await j.next();
  if (first === null || typeof first.port !== "number")
    throw new Error(`app.py serve did not start: ${j.proc.tail()}`);
  const result = j.report();
  return { port: first.port, pid: j.proc.pid, result, stop: () => j.proc.stop(1000) };
}

/** `app.py connect HOST PORT OPTIONS`: resolves with its report. */
export function appConnect(port: number, options: string[] = [], host = "127.0.0.1"): Promise<AppReport> {
  return jsonLines("app.py connect", ["connect", host, String(port), ...options]).report();
}

/** SHA-256 of app.py's pattern of `n` bytes (what --send N sends). */
export function patternBytes(n: number): Buffer {
  const block = Buffer.alloc(256 * 256);
  for (let i = 0; i < block.length; i++) block[i] = i % 256;
  const out = Buffer.alloc(n);
  for (let off = 0; off < n; off += block.length) block.copy(out, off, 0, Math.min(block.length, n - off));
  return out;
}
