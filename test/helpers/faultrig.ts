/**
 * What the fault-injection tests share: short bounds for the tunnel's timeouts, a rig of
 * target <- server end <- fault relay <- client end, and the check that an end said one clear
 * line about a fault within its bound.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { sleep } from "../../bench/procs.js";
import type { LogLine, RunningEnd } from "../../src/harness.js";
import { type FaultMode, FaultRelay } from "./faultrelay.js";
import type { Fleet } from "./fleet.js";

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** Short bounds, so that every fault is over in seconds (seconds, as the flags take them). */
export const STALL_S = 2;
export const IDLE_S = 4;
export const HELLO_S = 2;
export const TIMEOUT_S = 3;
/** What a loaded machine may add to a bound before the line is in (generous on purpose). */
export const SLACK_MS = 6000;
export const BOUNDS = [
  "--stall-timeout",
  String(STALL_S),
  "--idle-timeout",
  String(IDLE_S),
  "-o",
  String(TIMEOUT_S),
];
/** The server end's deadline for the first handshake message (a -d flag only). */
export const HELLO = ["--hello-timeout", String(HELLO_S)];

export interface Rig {
  server: RunningEnd;
  relay: FaultRelay;
  client: RunningEnd;
}

/** target <- server end (-d) <- fault relay <- client end (-e); the relay is closed by `relays`' owner. */
export async function rig(
  fleet: Fleet,
  relays: FaultRelay[],
  targetPort: number,
  mode: FaultMode,
  extra: { server?: string[]; client?: string[] } = {},
): Promise<Rig> {
  const server = await fleet.end([
    "-d",
    "-l",
    "127.0.0.1:0",
    "-t",
    `127.0.0.1:${targetPort}`,
    "-k",
    fleet.key,
    ...BOUNDS,
    ...(extra.server ?? HELLO),
  ]);
  const relay = await FaultRelay.start(server.port, "127.0.0.1", mode);
  relays.push(relay);
  const client = await fleet.end([
    "-e",
    "-l",
    "127.0.0.1:0",
    "-t",
    relay.address,
    "-k",
    fleet.key,
    ...BOUNDS,
    ...(extra.client ?? []),
  ]);
  return { server, relay, client };
}

export const isEnd = (l: LogLine) => /^connection (closed|ended|failed)/.test(l.msg);
export const warnings = (e: RunningEnd, from = 0) => e.logs.slice(from).filter((l) => l.level >= 40);

/**
 * Waits for the end's line about its connection being over (within `boundMs` of `since`), then
 * checks that it is the one warning the end logged: one clear line per fault.
 */
export async function oneLine(
  e: RunningEnd,
  since: number,
  boundMs: number,
  reason?: RegExp,
): Promise<LogLine> {
  const line = await e.waitForLog((l) => l.level >= 40, boundMs + SLACK_MS);
  const took = Date.now() - since;
  assert.ok(took <= boundMs + SLACK_MS, `logged after ${took} ms (bound ${boundMs} ms): ${line.msg}`);
  if (reason) assert.match(line.msg, reason);
  // Anything else it would say about it comes at once: give it a moment, then count.
  await sleep(300);
  assert.deepEqual(
    warnings(e).map((l) => l.msg),
    [line.msg],
    "one warning line for the fault",
  );
  return line;
}

export const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
