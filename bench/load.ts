/**
 * The measurements: bulk throughput (iperf3, or a Node source/sink), connect-and-echo latency and
 * rate, and the memory a relay spends per idle tunneled connection.
 */
import net from "node:net";
import { lastLine, type Proc, runProc, sleep } from "./procs.js";
import { writeN } from "./write-n.js";

export interface Throughput {
  gbps: number;
  /** Bytes the receiver counted. */
  bytes: number;
  seconds: number;
}

/** One bulk transfer through `entryPort`: upload (client -> target) or, reverse, download. */
export interface ThroughputTool {
  name: "iperf3" | "node";
  transfer(entryPort: number, bytes: number, reverse: boolean): Promise<Throughput>;
}

// ---------------------------------------------------------------------------------------------
/** iperf3 client against an iperf3 -s behind the relay pair; the receiver's rate is reported. */
export function iperf3Tool(): ThroughputTool {
  return {
    name: "iperf3",
    async transfer(entryPort, bytes, reverse) {
      const args = [
        "-c",
        "127.0.0.1",
        "-p",
        String(entryPort),
        "-n",
        String(bytes),
        "-J",
        "--connect-timeout",
        "5000",
      ];
      if (reverse) args.push("-R");
      // Generous: even 100 Mbit/s finishes well within this.
      const timeoutMs = 30_000 + ((bytes * 8) / 1e8) * 1000;
      const r = await runProc(`iperf3 -c${reverse ? " -R" : ""}`, "iperf3", args, timeoutMs);
      let j: {
        error?: string;
        end?: { sum_received?: { bytes: number; seconds: number; bits_per_second: number } };
      };
      try {
        j = JSON.parse(r.stdout);
      } catch {
        throw new Error(`iperf3 exited (${r.code}): ${lastLine(r.tail) || "no output"}`);
      }
      if (j.error) throw new Error(`iperf3: ${j.error}`);
      const rcv = j.end?.sum_received;
      if (!rcv || !(rcv.bits_per_second > 0)) throw new Error("iperf3: no result in its JSON output");
      return { gbps: rcv.bits_per_second / 1e9, bytes: rcv.bytes, seconds: rcv.seconds };
    },
  };
}

/** The Node source/sink of bench/target.ts ("load" port) behind the relay pair. */
export function nodeTool(): ThroughputTool {
  return {
    name: "node",
    transfer: (entryPort, bytes, reverse) =>
      new Promise((resolve, reject) => {
        let start = 0n;
        let received = 0;
        const timer = setTimeout(
          () => {
            s.destroy();
            reject(new Error("transfer timed out"));
          },
          30_000 + ((bytes * 8) / 1e8) * 1000,
        );
        const done = () => {
          clearTimeout(timer);
          const seconds = Number(process.hrtime.bigint() - start) / 1e9;
          s.destroy();
          resolve({ gbps: (bytes * 8) / seconds / 1e9, bytes: reverse ? received : bytes, seconds });
        };
        const s = net.connect({ host: "127.0.0.1", port: entryPort, allowHalfOpen: true }, () => {
          start = process.hrtime.bigint();
          const header = Buffer.alloc(9);
          header[0] = (reverse ? "D" : "U").charCodeAt(0);
          header.writeBigUInt64BE(BigInt(bytes), 1);
          s.write(header);
          if (reverse) return;
          writeN(s, bytes, false);
        });
        s.on("data", (d: Buffer) => {
          received += d.length;
          if (!reverse) done();
        });
        s.on("end", () => {
          if (!reverse) return;
          if (received < bytes) {
            clearTimeout(timer);
            s.destroy();
            reject(new Error(`download ended after ${received} of ${bytes} bytes`));
          } else done();
        });
        s.on("error", (err) => {
          clearTimeout(timer);
          reject(err);
        });
      }),
  };
}

// ---------------------------------------------------------------------------------------------
const ONE = Buffer.of(0x2a);

/**
 * One connect-and-echo: connect through the pair, send 1 byte, time until it comes back; then close
 * cleanly and wait until the connection is gone, so the next one starts on a quiet pair.
 */
export function connectEcho(port: number, timeoutMs = 10_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    let latency = -1;
    let failure: Error | null = null;
    const s = net.connect({ host: "127.0.0.1", port, noDelay: true });
    const timer = setTimeout(() => {
      failure ??= new Error(latency < 0 ? `no echo within ${timeoutMs / 1000} s` : "not closed in time");
      s.destroy();
    }, timeoutMs);
    s.once("connect", () => s.write(ONE));
    s.once("data", () => {
      latency = Number(process.hrtime.bigint() - t0) / 1e6;
      s.end();
    });
    s.on("error", (err) => {
      failure ??= err;
    });
    s.once("close", () => {
      clearTimeout(timer);
      // A connection that echoed counts, however it was closed afterwards.
      if (latency >= 0) resolve(latency);
      else reject(failure ?? new Error("closed before the echo"));
    });
  });
}

export interface LatencyResult {
  connections: number;
  errors: number;
  firstError?: string;
  seconds: number;
  /** Completed connect-echo-close cycles per second. */
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

/**
 * `total` connect-and-echo cycles by `concurrency` workers (1 = sequential), or fewer if starting
 * them has taken `maxSeconds` already (cycles under way then finish, and count).
 */
export async function connectRate(
  port: number,
  total: number,
  concurrency: number,
  maxSeconds = Number.POSITIVE_INFINITY,
): Promise<LatencyResult> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let next = 0;
  const t0 = process.hrtime.bigint();
  const deadline = Date.now() + maxSeconds * 1000;
  // Never stop on time before a minimum sample (20, and one per worker).
  const minimum = Math.min(total, Math.max(20, concurrency));
  const worker = async () => {
    while (next < total && (next < minimum || Date.now() < deadline)) {
      next++;
      try {
        latencies.push(await connectEcho(port));
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
        // A pair that fails most connections is broken: stop early rather than time out N times.
        if (errors >= 10 && errors > latencies.length) {
          next = total;
          throw new Error(`${errors} of ${errors + latencies.length} connections failed: ${firstError}`);
        }
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(concurrency, total) }, worker));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  latencies.sort((a, b) => a - b);
  return {
    connections: latencies.length,
    errors,
    firstError,
    seconds,
    perSecond: latencies.length / seconds,
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
  };
}

// ---------------------------------------------------------------------------------------------
export interface IdleResult {
  requested: number;
  /** Connections that echoed their byte (fully established through the pair). */
  opened: number;
  errors: number;
  firstError?: string;
  /** Opened connections that were closed or failed while held. */
  dropped: number;
  /** Per end (client end first): VmRSS before and after, KiB, and the difference per connection. */
  rssBeforeKiB: number[];
  rssAfterKiB: number[];
  perConnKiB: number[];
  secondsToOpen: number;
}

/** Connect, send 1 byte, wait for its echo; resolves with the (open, idle) socket. */
function openIdle(port: number, onDrop: () => void): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let echoed = false;
    const s = net.connect({ host: "127.0.0.1", port, noDelay: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error("no echo within 30 s"));
    }, 30_000);
    s.once("connect", () => s.write(ONE));
    s.once("data", () => {
      echoed = true;
      clearTimeout(timer);
      resolve(s);
    });
    s.on("error", (err) => {
      if (!echoed) {
        clearTimeout(timer);
        reject(err);
      }
    });
    s.once("close", () => {
      if (echoed) onDrop();
      else {
        clearTimeout(timer);
        reject(new Error("closed before the echo"));
      }
    });
  });
}

/**
 * Opens `count` tunneled connections (each proven end to end by one echoed byte), holds them idle,
 * and reads each relay process's memory (`memKiB`: VmRSS) before and after.
 */
export async function holdIdle(
  port: number,
  count: number,
  ends: Proc[],
  memKiB: (pid: number) => number,
  progress: (opened: number) => void,
  settleMs = 1000,
): Promise<IdleResult> {
  const rssBeforeKiB = ends.map((p) => memKiB(p.pid));
  const sockets: net.Socket[] = [];
  let errors = 0;
  let dropped = 0;
  let firstError: string | undefined;
  let next = 0;
  let closing = false;
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (next < count) {
      next++;
      try {
        sockets.push(
          await openIdle(port, () => {
            if (!closing) dropped++;
          }),
        );
        if (sockets.length % 1000 === 0) progress(sockets.length);
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
        if (errors >= 10 && errors > sockets.length) next = count;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(64, count) }, worker));
    const secondsToOpen = Number(process.hrtime.bigint() - t0) / 1e9;
    await sleep(settleMs);
    const rssAfterKiB = ends.map((p) => memKiB(p.pid));
    const opened = sockets.length;
    return {
      requested: count,
      opened,
      errors,
      firstError,
      dropped,
      rssBeforeKiB,
      rssAfterKiB,
      perConnKiB: rssAfterKiB.map((a, i) => (opened > 0 ? (a - rssBeforeKiB[i]) / opened : Number.NaN)),
      secondsToOpen,
    };
  } finally {
    closing = true;
    await closeAll(sockets);
    await sleep(500); // let the relays finish tearing the connections down before what comes next
  }
}

/** Closes sockets cleanly (FIN) and waits until they are gone (at most 10 s, then destroys the rest). */
async function closeAll(sockets: net.Socket[]): Promise<void> {
  const closed = sockets.map(
    (s) =>
      new Promise<void>((resolve) => {
        if (s.destroyed) return resolve();
        s.once("close", () => resolve());
        s.end();
      }),
  );
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(closed), new Promise((r) => (timer = setTimeout(r, 10_000)))]);
  clearTimeout(timer);
  for (const s of sockets) s.destroy();
}
