/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and lists where the time went: self time per function
 * and total (inclusive) time per function, each as a share of all samples and of busy samples
 * (everything but "(idle)").
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface HotFunction {
  name: string;
  /** file:line (relative to the project where possible). */
  where: string;
  selfPct: number;
  totalPct: number;
}

export interface ProfileSummary {
  file: string;
  seconds: number;
  /** Share of samples not "(idle)". */
  busyPct: number;
  /** Sorted by self time, shares of busy time. */
  bySelf: HotFunction[];
  /** Sorted by total time, shares of busy time; only functions in our code or node:internal streams/net. */
  byTotal: HotFunction[];
}

function where(url: string, line: number): string {
  if (!url) return "";
  const short = url
    .replace(/^file:\/\/.*?\/dist\//, "dist/")
    .replace(/^file:\/\/.*?\/node_modules\//, "node_modules/")
    .replace(/^node:/, "node:");
  return `${short}:${line + 1}`;
}

export function summarizeProfile(file: string, top = 15): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of prof.nodes) byId.set(n.id, n);
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n: ProfileNode) => {
    const cf = n.callFrame;
    return `${cf.functionName || "(anonymous)"}\t${where(cf.url, cf.lineNumber)}`;
  };

  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let all = 0;
  let idle = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i + 1] ?? prof.timeDeltas[i] ?? 0;
    const node = byId.get(prof.samples[i]);
    if (!node) continue;
    all += dt;
    if (node.callFrame.functionName === "(idle)") {
      idle += dt;
      continue;
    }
    const k = keyOf(node);
    self.set(k, (self.get(k) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const n = byId.get(id) as ProfileNode;
      const kk = keyOf(n);
      if (seen.has(kk)) continue;
      seen.add(kk);
      total.set(kk, (total.get(kk) ?? 0) + dt);
    }
  }
  const busy = all - idle || 1;
  const entries = (m: Map<string, number>) =>
    [...m.keys()].map((k) => {
      const [name, w] = k.split("\t");
      return {
        name,
        where: w,
        selfPct: (100 * (self.get(k) ?? 0)) / busy,
        totalPct: (100 * (total.get(k) ?? 0)) / busy,
      };
    });
  const bySelf = entries(self)
    .sort((a, b) => b.selfPct - a.selfPct)
    .slice(0, top);
  const byTotal = entries(total)
    .filter((e) => e.where.startsWith("dist/") || /^node:internal\/(streams|net|stream_base)/.test(e.where))
    .filter((e) => e.totalPct < 99.5)
    .sort((a, b) => b.totalPct - a.totalPct)
    .slice(0, top);
  return {
    file,
    seconds: (prof.endTime - prof.startTime) / 1e6,
    busyPct: all > 0 ? (100 * (all - idle)) / all : 0,
    bySelf,
    byTotal,
  };
}

export function formatProfile(label: string, s: ProfileSummary): string {
  const lines = [
    `${label}: ${s.file}`,
    `  ${s.seconds.toFixed(1)} s profiled, busy ${s.busyPct.toFixed(0)}% of the time; shares below are of busy time`,
    "  self%  total%  function (location)",
  ];
  for (const f of s.bySelf) {
    lines.push(
      `  ${f.selfPct.toFixed(1).padStart(5)}  ${f.totalPct.toFixed(1).padStart(6)}  ${f.name} ${f.where ? `(${f.where})` : ""}`,
    );
  }
  lines.push("  inclusive time in our code and node's stream/net layers:");
  for (const f of s.byTotal) {
    lines.push(
      `  ${f.selfPct.toFixed(1).padStart(5)}  ${f.totalPct.toFixed(1).padStart(6)}  ${f.name} ${f.where ? `(${f.where})` : ""}`,
    );
  }
  return lines.join("\n");
}
