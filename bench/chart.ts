/**
 * A plain SVG bar chart of a run (no chart library): per system, the CPU both relay ends spent per
 * GiB (left, shorter is better) and the throughput (right, longer is better), each as an upload and
 * a download bar. docs/BENCHMARKS.md shows the one of its full run.
 */
import type { SystemResult } from "./report.js";

const UP = "#4e79a7";
const DOWN = "#f28e2b";
const ROW = 34; // px per system
const LABEL_W = 300;
const PANEL_W = 330;
const GAP = 40;
const TOP = 70;

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A round step for the axis: 1, 2 or 5 times a power of ten, about max / 4. */
function step(max: number): number {
  const raw = max / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) as number;
}

export function chartLabel(r: SystemResult): string {
  return r.node ? `${r.label} (Node ${r.node})` : r.label;
}

interface Panel {
  title: string;
  x: number;
  values: (r: SystemResult) => [number | undefined, number | undefined];
  digits: number;
}

export function chartSvg(results: SystemResult[], title: string, subtitle: string): string {
  const rows = results.filter((r) => r.status === "ok" || r.status === "partial");
  const height = TOP + rows.length * ROW + 50;
  const width = LABEL_W + 2 * PANEL_W + GAP + 20;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12" role="img">`,
    `<title>${esc(title)}: CPU-seconds per GiB and Gbit/s per system</title>`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="10" y="38" fill="#555">${esc(subtitle)}</text>`,
  ];
  const panels: Panel[] = [
    {
      title: "CPU-seconds per GiB, both ends (less is better)",
      x: LABEL_W,
      values: (r) => [r.median.upCpuPerGiB, r.median.downCpuPerGiB],
      digits: 1,
    },
    {
      title: "Gbit/s, one stream (more is better)",
      x: LABEL_W + PANEL_W + GAP,
      values: (r) => [r.median.upGbps, r.median.downGbps],
      digits: 2,
    },
  ];
  for (const p of panels) {
    const all = rows.flatMap((r) => p.values(r)).filter((v): v is number => v !== undefined);
    const max = Math.max(1e-9, ...all);
    const s = step(max);
    const top = Math.ceil(max / s) * s;
    const scale = (PANEL_W - 50) / top;
    out.push(`<text x="${p.x}" y="${TOP - 14}" font-weight="bold">${esc(p.title)}</text>`);
    for (let v = 0; v <= top + 1e-9; v += s) {
      const x = p.x + v * scale;
      out.push(
        `<line x1="${x.toFixed(1)}" y1="${TOP - 6}" x2="${x.toFixed(1)}" y2="${TOP + rows.length * ROW}" stroke="#ddd"/>`,
        `<text x="${x.toFixed(1)}" y="${TOP + rows.length * ROW + 14}" text-anchor="middle" fill="#555">${+v.toFixed(6)}</text>`,
      );
    }
    rows.forEach((r, i) => {
      const y = TOP + i * ROW;
      p.values(r).forEach((v, j) => {
        const by = y + 4 + j * 13;
        if (v === undefined) {
          out.push(`<text x="${p.x + 2}" y="${by + 10}" fill="#999">n/a</text>`);
          return;
        }
        const w = Math.max(1, v * scale);
        out.push(
          `<rect x="${p.x}" y="${by}" width="${w.toFixed(1)}" height="11" fill="${j === 0 ? UP : DOWN}"/>`,
          `<text x="${(p.x + w + 4).toFixed(1)}" y="${by + 10}" fill="#333">${v.toFixed(p.digits)}</text>`,
        );
      });
    });
  }
  rows.forEach((r, i) => {
    const y = TOP + i * ROW;
    const bold = r.role === "ours" ? "" : ` fill="#555"`;
    out.push(`<text x="${LABEL_W - 10}" y="${y + 19}" text-anchor="end"${bold}>${esc(chartLabel(r))}</text>`);
    if (i > 0) out.push(`<line x1="10" y1="${y}" x2="${width - 10}" y2="${y}" stroke="#f0f0f0"/>`);
  });
  const ly = height - 18;
  out.push(
    `<rect x="${LABEL_W}" y="${ly - 10}" width="12" height="11" fill="${UP}"/>`,
    `<text x="${LABEL_W + 16}" y="${ly}">upload (client to target)</text>`,
    `<rect x="${LABEL_W + 190}" y="${ly - 10}" width="12" height="11" fill="${DOWN}"/>`,
    `<text x="${LABEL_W + 206}" y="${ly}">download (target to client)</text>`,
    "</svg>",
  );
  return `${out.join("\n")}\n`;
}
