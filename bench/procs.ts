/**
 * Child processes for the benchmark: spawn, wait until a port listens, measure memory, and stop
 * every one of them by PID at the end (or on SIGINT). Each child is started in its own process
 * group, so a relay that forks per connection (socat) is stopped together with its children.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import net from "node:net";

export interface Proc {
  /** Short name for progress lines and error messages, e.g. "spiped -e". */
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit code (or the signal name) once the process is gone. */
  readonly exited: Promise<number | string | null>;
  /** True once the process has exited. */
  readonly done: boolean;
  /** The last few KiB of what it wrote to stdout and stderr. */
  tail(): string;
  /** SIGTERM to its process group, SIGKILL after `graceMs`; resolves once it is gone. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Called with each complete line of output until it returns true (then no longer called). */
  watch?: (line: string, stream: "stdout" | "stderr") => boolean | undefined;
  /** Keep the whole stdout (for iperf3 -J); otherwise only a tail is kept. */
  keepStdout?: boolean;
  /** Give it a stdin pipe (kept open while we run) instead of /dev/null. */
  stdinPipe?: boolean;
}

const TAIL_CHARS = 4096;
const running = new Set<ProcImpl>();

class ProcImpl implements Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<number | string | null>;
  done = false;
  stdout = "";
  private tailText = "";
  private watching: SpawnOptions["watch"];
  private partial = { stdout: "", stderr: "" };

  constructor(
    readonly name: string,
    cmd: string,
    args: string[],
    private readonly opts: SpawnOptions,
  ) {
    this.watching = opts.watch;
    this.child = spawn(cmd, args, {
      stdio: [opts.stdinPipe ? "pipe" : "ignore", "pipe", "pipe"],
      env: opts.env ?? process.env,
      detached: true,
    });
    this.exited = new Promise((resolve) => {
      // 'close', not 'exit': 'exit' may come before the last of its output has been read, and a
      // report line printed just before exiting would then be missed.
      this.child.once("close", (code, signal) => {
        this.done = true;
        running.delete(this);
        resolve(code ?? signal);
      });
      this.child.once("error", (err) => {
        this.done = true;
        running.delete(this);
        this.tailText += `\n${err.message}`;
        resolve(null);
      });
    });
    this.pid = this.child.pid ?? -1;
    if (this.pid > 0) running.add(this);
    this.child.stdout?.setEncoding("utf8");
    this.child.stderr?.setEncoding("utf8");
    this.child.stdout?.on("data", (s: string) => this.onData(s, "stdout"));
    this.child.stderr?.on("data", (s: string) => this.onData(s, "stderr"));
  }

  private onData(s: string, stream: "stdout" | "stderr"): void {
    if (stream === "stdout" && this.opts.keepStdout) this.stdout += s;
    this.tailText = (this.tailText + s).slice(-TAIL_CHARS);
    if (!this.watching) return;
    const lines = (this.partial[stream] + s).split("\n");
    this.partial[stream] = lines.pop() ?? "";
    for (const line of lines) {
      if (this.watching?.(line, stream)) {
        this.watching = undefined;
        this.partial = { stdout: "", stderr: "" };
        return;
      }
    }
  }

  tail(): string {
    return this.tailText.trim();
  }

  async stop(graceMs = 5000): Promise<void> {
    if (this.pid <= 0) return;
    signalGroup(this.pid, "SIGTERM");
    if (!this.done) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.exited, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    // Whatever is left in its group (the leader after the grace period, or forked children).
    signalGroup(this.pid, "SIGKILL");
    await this.exited;
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // the group is already gone
  }
}

export function spawnProc(name: string, cmd: string, args: string[], opts: SpawnOptions = {}): Proc {
  return new ProcImpl(name, cmd, args, opts);
}

/** Runs a command to completion; resolves with its stdout (whole) and output tail. */
export async function runProc(
  name: string,
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | string | null; stdout: string; tail: string }> {
  const p = new ProcImpl(name, cmd, args, { keepStdout: true });
  const timer = setTimeout(() => void p.stop(1000), timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, stdout: p.stdout, tail: p.tail() };
}

/** Stops every process still running (in parallel). */
export async function stopAll(graceMs = 3000): Promise<void> {
  await Promise.all([...running].map((p) => p.stop(graceMs)));
}

/** PIDs of the processes still running, for the final check. */
export function runningPids(): number[] {
  return [...running].map((p) => p.pid);
}

// ---------------------------------------------------------------------------------------------
/** True when something listens on 127.0.0.1:port (read from /proc/net/tcp; makes no connection). */
export function isListening(port: number): boolean {
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  let table: string;
  try {
    table = readFileSync("/proc/net/tcp", "utf8");
  } catch {
    return false;
  }
  for (const line of table.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[1] === want && f[3] === "0A") return true;
  }
  return false;
}

/** Waits until `proc` listens on 127.0.0.1:port; rejects (with its output) if it exits first. */
export async function waitListening(proc: Proc, port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.done) throw new Error(`${proc.name} exited: ${lastLine(proc.tail()) || "no output"}`);
    if (isListening(port)) return;
    if (Date.now() > deadline)
      throw new Error(`${proc.name} did not listen on port ${port} within ${timeoutMs / 1000} s`);
    await sleep(20);
  }
}

export function lastLine(text: string): string {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  return (lines[lines.length - 1] ?? "").trim();
}

const handedOut = new Set<number>();

/** A free loopback port (the kernel picks it; never the same one twice in a run). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const p = (srv.address() as net.AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
/** VmRSS of one process in KiB (0 if it is gone). */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** PIDs of all descendants of `pid`. */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue;
    }
    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(name));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    const p = stack.pop() as number;
    for (const c of children.get(p) ?? []) {
      out.push(c);
      stack.push(c);
    }
  }
  return out;
}

/** Proportional set size of one process in KiB (its share of pages shared with others). */
export function pssKiB(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * PSS of a process plus all its descendants: for a relay that forks a process per connection
 * (socat), where adding up VmRSS would count the shared pages once per process.
 */
export function pssTreeKiB(pid: number): number {
  return [pid, ...descendants(pid)].reduce((sum, p) => sum + pssKiB(p), 0);
}

/** The open-files limit (soft, hard) of this process; children inherit it. */
export function fileLimit(): { soft: number; hard: number } {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    if (m) {
      const n = (s: string) => (s === "unlimited" ? Number.POSITIVE_INFINITY : Number(s));
      return { soft: n(m[1]), hard: n(m[2]) };
    }
  } catch {
    // not Linux
  }
  return { soft: Number.POSITIVE_INFINITY, hard: Number.POSITIVE_INFINITY };
}

// ---------------------------------------------------------------------------------------------
/** CPU time in seconds: all CPUs' busy time, and ours (this process, reaped children, live children). */
export interface CpuSample {
  machineBusy: number;
  own: number;
}

const CLOCK_TICKS = 100; // USER_HZ on Linux

function procTimes(pid: number | "self"): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime stime cutime cstime are fields 14-17 of the whole line, 12-15 after "pid (comm) ".
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}

export function cpuSample(): CpuSample {
  let machineBusy = 0;
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal ...: busy = user + nice + system + irq + softirq
    machineBusy = (f[0] + f[1] + f[2] + f[5] + f[6]) / CLOCK_TICKS;
  } catch {
    // not Linux
  }
  let own = procTimes("self");
  for (const p of running) own += procTimes(p.pid);
  return { machineBusy, own };
}

/** CPU seconds used so far by a process and its descendants (live ones, and reaped ones through cutime). */
export function cpuTreeSeconds(pid: number): number {
  return [pid, ...descendants(pid)].reduce((sum, p) => sum + procTimes(p), 0);
}
