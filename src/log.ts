/**
 * Logging: pino, to stderr (stdout stays free for `monopiped pipe`). JSON lines with
 * --log-format json; otherwise one human-readable line per event: "time LEVEL message key=value ...".
 */
import { type Logger, pino } from "pino";

export type LogFormat = "text" | "json";
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type { Logger };

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};
const OMIT = new Set(["level", "time", "msg", "pid", "hostname"]);

function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** Turns one pino JSON line into a text line. */
export function textLine(json: string): string {
  const o = JSON.parse(json) as Record<string, unknown>;
  const time = new Date(o.time as number).toISOString();
  const fields = Object.entries(o)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${formatValue(v)}`);
  return `${time} ${LEVEL_NAMES[o.level as number] ?? o.level} ${o.msg ?? ""}${fields.length ? ` ${fields.join(" ")}` : ""}\n`;
}

export function createLogger(level: LogLevel, format: LogFormat): Logger {
  const opts = { level, base: undefined };
  if (format === "json") return pino(opts, pino.destination({ fd: 2, sync: true }));
  return pino(opts, { write: (line: string) => process.stderr.write(textLine(line)) });
}
