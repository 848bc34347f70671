/** Scraping a --metrics listener in the operations tests: Prometheus text, /healthz, waiting for a value. */
import { createHash, randomBytes } from "node:crypto";
import type net from "node:net";
import type { RunningEnd } from "../../src/harness.js";
import { connect, receiveExactly } from "./net.js";

/** The --metrics address an end logged ("metrics on http://ADDR/metrics"). */
export async function metricsAddress(end: RunningEnd): Promise<string> {
  const line = await end.waitForLog((l) => typeof l.metrics === "string", 15_000);
  return line.metrics as string;
}

export async function scrape(addr: string): Promise<string> {
  const res = await fetch(`http://${addr}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status}`);
  return res.text();
}

export async function healthz(addr: string): Promise<number> {
  const res = await fetch(`http://${addr}/healthz`, { signal: AbortSignal.timeout(10_000) });
  await res.text();
  return res.status;
}

/**
 * The sum of every series of `name` whose labels include `labels` (0 when there is none), from
 * Prometheus text exposition.
 */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[l[1]] = l[2];
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** Scrape until `pred` holds for the value (every 100 ms, up to `timeoutMs`); returns the last text. */
export async function waitForSample(
  addr: string,
  name: string,
  labels: Record<string, string>,
  pred: (v: number) => boolean,
  timeoutMs = 10_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let text = "";
  for (;;) {
    text = await scrape(addr);
    if (pred(sample(text, name, labels))) return text;
    if (Date.now() > deadline)
      throw new Error(
        `${name}${JSON.stringify(labels)} = ${sample(text, name, labels)}, not as expected within ${timeoutMs} ms:\n${text
          .split("\n")
          .filter((l) => l.startsWith("monopiped_"))
          .join("\n")}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A connection through `port` that stays open; each round trip sends `n` bytes and checks the echo. */
export async function heldConnection(port: number) {
  const sock: net.Socket = await connect(port);
  sock.on("error", () => {}); // a reset at clean-up
  return {
    sock,
    async roundTrip(n = 64 * 1024): Promise<boolean> {
      const data = randomBytes(n);
      const echo = receiveExactly(sock, n);
      sock.write(data);
      return (await echo) === createHash("sha256").update(data).digest("hex");
    },
  };
}
