/**
 * Results: per-round numbers -> medians, the tables (Markdown, so they paste into
 * docs/BENCHMARKS.md), ratios to spiped / stunnel / the socat ceiling, and the targets.
 */
import type { IdleResult, LatencyResult, Throughput } from "./load.js";
import type { Role, SystemDef } from "./systems.js";

export interface RoundResult {
  round: number;
  up?: Throughput;
  down?: Throughput;
  seq?: LatencyResult;
  par?: LatencyResult;
  idle?: IdleResult;
  /** CPU seconds both relay ends used per GiB relayed, each way. */
  upCpuPerGiB?: number;
  downCpuPerGiB?: number;
  /** CPU milliseconds both relay ends used per connect-and-echo cycle (64 at a time). */
  cpuMsPerConn?: number;
  /** "what: why" for each step that failed this round. */
  errors: string[];
}

export interface Medians {
  upGbps?: number;
  downGbps?: number;
  seqPerSecond?: number;
  seqP50Ms?: number;
  seqP99Ms?: number;
  parPerSecond?: number;
  parP50Ms?: number;
  parP99Ms?: number;
  /** RSS per idle connection, KiB, per end (client end, server end). */
  idleKiBPerConn?: number[];
  idleOpened?: number;
  idleRequested?: number;
  idleErrors?: number;
  idleDropped?: number;
  upCpuPerGiB?: number;
  downCpuPerGiB?: number;
  cpuMsPerConn?: number;
}

export interface SystemResult {
  id: string;
  label: string;
  role: Role;
  protocol?: string;
  transport?: string;
  /** Our systems: the Node major version and full version that ran both ends. */
  node?: string;
  nodeVersion?: string;
  compat?: boolean;
  /** "unavailable" (not installed), "failed" (no measurement succeeded), "partial", "ok". */
  status: "ok" | "partial" | "failed" | "unavailable";
  reason?: string;
  rounds: RoundResult[];
  median: Medians;
}

export function newResult(s: SystemDef): SystemResult {
  const why = s.unavailable();
  return {
    id: s.id,
    label: s.label,
    role: s.role,
    protocol: s.protocol,
    transport: s.transport,
    node: s.node?.label,
    nodeVersion: s.node?.version,
    compat: s.compat,
    status: why ? "unavailable" : "ok",
    reason: why ?? undefined,
    rounds: [],
    median: {},
  };
}

export function median(xs: (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export function finish(r: SystemResult): void {
  if (r.status === "unavailable") return;
  const rs = r.rounds;
  const idle = rs.map((x) => x.idle).filter((x): x is IdleResult => x !== undefined && x.opened > 0);
  const ends = Math.max(0, ...idle.map((x) => x.perConnKiB.length));
  r.median = {
    upGbps: median(rs.map((x) => x.up?.gbps)),
    downGbps: median(rs.map((x) => x.down?.gbps)),
    seqPerSecond: median(rs.map((x) => x.seq?.perSecond)),
    seqP50Ms: median(rs.map((x) => x.seq?.p50Ms)),
    seqP99Ms: median(rs.map((x) => x.seq?.p99Ms)),
    parPerSecond: median(rs.map((x) => x.par?.perSecond)),
    parP50Ms: median(rs.map((x) => x.par?.p50Ms)),
    parP99Ms: median(rs.map((x) => x.par?.p99Ms)),
    idleKiBPerConn: idle.length
      ? Array.from({ length: ends }, (_, i) => median(idle.map((x) => x.perConnKiB[i])) as number)
      : undefined,
    idleOpened: median(idle.map((x) => x.opened)),
    idleRequested: idle[0]?.requested,
    idleErrors: idle.length ? Math.max(...idle.map((x) => x.errors)) : undefined,
    idleDropped: idle.length ? Math.max(...idle.map((x) => x.dropped)) : undefined,
    upCpuPerGiB: median(rs.map((x) => x.upCpuPerGiB)),
    downCpuPerGiB: median(rs.map((x) => x.downCpuPerGiB)),
    cpuMsPerConn: median(rs.map((x) => x.cpuMsPerConn)),
  };
  const measured = Object.values(r.median).some((v) => v !== undefined);
  const errors = rs.flatMap((x) => x.errors);
  if (!measured) {
    r.status = "failed";
    r.reason = errors[0] ?? "no measurement";
  } else if (errors.length > 0) {
    r.status = "partial";
    r.reason = errors[0];
  }
}

// ---------------------------------------------------------------------------------------------
const f2 = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(2));
const f0 = (x: number | undefined) => (x === undefined ? "-" : Math.round(x).toString());
const f1 = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(1));
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || b === 0 ? undefined : a / b;
const fx = (x: number | undefined) => (x === undefined ? "-" : `${x.toFixed(2)}x`);

/** A Markdown table with padded columns (by default the first column left-aligned, the rest right-aligned). */
export function table(headers: string[], rows: string[][], align?: ("l" | "r")[]): string {
  const left = (i: number) => (align ? align[i] === "l" : i === 0);
  const widths = headers.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => (r.length === headers.length ? r[i].length : 0))),
  );
  const line = (cells: string[]) => {
    if (cells.length < headers.length) {
      // A row with one message across the measurement columns (failed / not installed).
      const rest = widths.slice(1).reduce((a, w) => a + w + 3, -3);
      return `| ${cells[0].padEnd(widths[0])} | ${(cells[1] ?? "").padEnd(rest)} |`;
    }
    return `| ${cells.map((c, i) => (left(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
  };
  const sep = `|${widths.map((w, i) => (left(i) ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(headers), sep, ...rows.map(line)].join("\n");
}

function statusRow(r: SystemResult): string[] | null {
  if (r.status === "unavailable") return [r.label, r.reason ?? "not installed"];
  if (r.status === "failed") return [r.label, `failed: ${oneLine(r.reason ?? "")}`];
  return null;
}

/** The Node column: our ends' Node major version ("-" for the other systems). */
const nodeOf = (r: SystemResult) => r.node ?? "-";

function oneLine(s: string, max = 160): string {
  const t = s.replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 3)}...` : t;
}

export function resultsTable(results: SystemResult[]): string {
  const headers = [
    "system",
    "node",
    "up Gbit/s",
    "down Gbit/s",
    "conn/s seq",
    "conn/s x64",
    "echo p50 ms",
    "echo p99 ms",
    "x64 p50 ms",
    "x64 p99 ms",
    "idle KiB/conn (client, server)",
  ];
  const rows = results.map((r) => {
    const s = statusRow(r);
    if (s) return s;
    const m = r.median;
    const idle = m.idleKiBPerConn?.length ? m.idleKiBPerConn.map(f1).join(", ") : "-";
    return [
      r.status === "partial" ? `${r.label} *` : r.label,
      nodeOf(r),
      f2(m.upGbps),
      f2(m.downGbps),
      f0(m.seqPerSecond),
      f0(m.parPerSecond),
      f2(m.seqP50Ms),
      f2(m.seqP99Ms),
      f2(m.parP50Ms),
      f2(m.parP99Ms),
      r.role === "reference" ? "n/a" : idle,
    ];
  });
  return table(headers, rows);
}

export function ratiosTable(results: SystemResult[]): string {
  const by = (id: string) =>
    results.find((r) => r.id === id && (r.status === "ok" || r.status === "partial"))?.median;
  const spiped = by("spiped");
  const socat = by("socat");
  const stunnel = by("stunnel");
  const headers = [
    "system",
    "node",
    "up / spiped",
    "down / spiped",
    "up / stunnel",
    "down / stunnel",
    "up / socat",
    "down / socat",
    "conn/s x64 / spiped",
    "idle RSS / spiped (client, server)",
  ];
  const rows = results
    .filter((r) => r.role !== "reference")
    .map((r) => {
      const s = statusRow(r);
      if (s) return s;
      const m = r.median;
      const rss =
        m.idleKiBPerConn?.map((v, i) => fx(ratio(v, spiped?.idleKiBPerConn?.[i]))).join(", ") ?? "-";
      return [
        r.label,
        nodeOf(r),
        fx(ratio(m.upGbps, spiped?.upGbps)),
        fx(ratio(m.downGbps, spiped?.downGbps)),
        fx(ratio(m.upGbps, stunnel?.upGbps)),
        fx(ratio(m.downGbps, stunnel?.downGbps)),
        fx(ratio(m.upGbps, socat?.upGbps)),
        fx(ratio(m.downGbps, socat?.downGbps)),
        fx(ratio(m.parPerSecond, spiped?.parPerSecond)),
        rss,
      ];
    });
  return table(headers, rows);
}

/** CPU cost per unit of work: less sensitive than rates to other processes on the machine. */
export function cpuTable(results: SystemResult[]): string {
  const rows = results
    .filter((r) => r.role !== "reference")
    .map((r) => {
      const s = statusRow(r);
      if (s) return s;
      const m = r.median;
      return [r.label, nodeOf(r), f2(m.upCpuPerGiB), f2(m.downCpuPerGiB), f2(m.cpuMsPerConn)];
    });
  return table(["system", "node", "up CPU s/GiB", "down CPU s/GiB", "CPU ms/connection (x64)"], rows);
}

// ---------------------------------------------------------------------------------------------
export interface TargetCheck {
  target: string;
  system: string;
  measured: string;
  /** null: could not be measured in this run. */
  met: boolean | null;
}

/** `big`: set when --big asked for 10,000 idle connections (with why fewer were held, if so). */
export function checkTargets(results: SystemResult[], big: { note?: string } | null): TargetCheck[] {
  const ok = (r: SystemResult | undefined) =>
    r !== undefined && (r.status === "ok" || r.status === "partial");
  const get = (id: string) => results.find((r) => r.id === id);
  const checks: TargetCheck[] = [];
  const both = (m: Medians | undefined, ref: Medians | undefined) => [
    ratio(m?.upGbps, ref?.upGbps),
    ratio(m?.downGbps, ref?.downGbps),
  ];
  const judge = (target: string, system: string, values: (number | undefined)[], min: number, what = "") => {
    const known = values.every((v) => v !== undefined);
    checks.push({
      target,
      system,
      measured: known ? `${what}${(values as number[]).map(fx).join(" / ")}` : "not measured",
      met: known ? (values as number[]).every((v) => v >= min) : null,
    });
  };
  const spiped = get("spiped");
  const socat = get("socat");
  const stunnel = get("stunnel");
  const ours = results.filter((r) => r.role === "ours");
  const name = (r: SystemResult) => (r.node ? `${r.label} (Node ${r.node})` : r.label);

  const m2 = get("monopiped2-tcp");
  if (m2) {
    const label = name(m2);
    judge(
      "throughput >= 1.0x stunnel (up / down)",
      label,
      ok(m2) && ok(stunnel) ? both(m2.median, stunnel?.median) : [undefined],
      1.0,
    );
    judge(
      "throughput >= 3x spiped (up / down)",
      label,
      ok(m2) && ok(spiped) ? both(m2.median, spiped?.median) : [undefined],
      3.0,
    );
    judge(
      "throughput >= 0.5x socat pair (up / down)",
      label,
      ok(m2) && ok(socat) ? both(m2.median, socat?.median) : [undefined],
      0.5,
    );
  }
  for (const r of ours.filter((x) => x.compat && x.transport === "tcp")) {
    judge(
      "compatibility protocol: throughput >= 1.0x spiped (up / down)",
      name(r),
      ok(r) && ok(spiped) ? both(r.median, spiped?.median) : [undefined],
      1.0,
    );
  }
  for (const r of ours.filter((x) => x.transport === "ws")) {
    const tcp = ours.find((x) => x.protocol === r.protocol && x.transport === "tcp" && x.node === r.node);
    judge(
      `WebSocket: throughput >= 0.9x ${tcp?.label ?? "TCP mode"} (up / down)`,
      name(r),
      ok(r) && ok(tcp) ? both(r.median, tcp?.median) : [undefined],
      0.9,
    );
  }
  for (const r of ours) {
    judge(
      "connections/s (64 concurrent) >= 3x spiped",
      name(r),
      [ok(r) && ok(spiped) ? ratio(r.median.parPerSecond, spiped?.median.parPerSecond) : undefined],
      3.0,
    );
    const p50 = ok(r) ? r.median.seqP50Ms : undefined;
    checks.push({
      target: "connect-and-echo p50 latency <= 1.0 ms",
      system: name(r),
      measured: p50 === undefined ? "not measured" : `${p50.toFixed(2)} ms`,
      met: p50 === undefined ? null : p50 <= 1.0,
    });
    const rss = ok(r) && ok(spiped) ? r.median.idleKiBPerConn : undefined;
    const ref = spiped?.median.idleKiBPerConn;
    const known = rss !== undefined && ref !== undefined && rss.length === 2 && ref.length === 2;
    checks.push({
      target: "RSS per idle connection per end <= spiped's (client / server)",
      system: name(r),
      measured: known
        ? `${rss.map((v) => v.toFixed(1)).join(" / ")} KiB vs ${ref.map((v) => v.toFixed(1)).join(" / ")} KiB (${rss.map((v, i) => fx(ratio(v, ref[i]))).join(" / ")})`
        : "not measured",
      met: known ? rss.every((v, i) => v <= ref[i]) : null,
    });
    const m = r.median;
    const held = ok(r) && m.idleOpened !== undefined;
    let measured = "not run (needs --big)";
    let met: boolean | null = null;
    if (big && held) {
      measured = `${m.idleOpened} of ${m.idleRequested} held, ${m.idleErrors} failed to open, ${m.idleDropped} dropped`;
      if (m.idleRequested === 10_000) {
        met = m.idleOpened === 10_000 && m.idleErrors === 0 && m.idleDropped === 0;
      } else measured += ` (only ${m.idleRequested} tried: ${big.note ?? "fewer requested"})`;
    } else if (big) measured = "not measured";
    checks.push({
      target: "10,000 concurrent connections held by one pair without errors (--big)",
      system: name(r),
      measured,
      met,
    });
  }
  return checks;
}

export function targetsTable(checks: TargetCheck[]): string {
  return table(
    ["target", "system", "measured", "result"],
    checks.map((c) => [
      c.target,
      c.system,
      c.measured,
      c.met === null ? "not measured" : c.met ? "met" : "NOT met",
    ]),
    ["l", "l", "l", "l"],
  );
}
