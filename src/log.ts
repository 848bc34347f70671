/**
 * Logging: pino, to stderr (stdout stays free for `monopiped pipe`). JSON lines with
 * --log-format json; otherwise one human-readable line per event: "time LEVEL message key=value ...".
 */
import { type Logger, pino } from "pino";
import type { LineOutput } from "./syslog.js";

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

/** Turns one pino JSON line into a text line (without the time when `withTime` is false). */
export function textLine(json: string, withTime = true): string {
  const o = JSON.parse(json) as Record<string, unknown>;
  const time = withTime ? `${new Date(o.time as number).toISOString()} ` : "";
  const fields = Object.entries(o)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${formatValue(v)}`);
  return `${time}${LEVEL_NAMES[o.level as number] ?? o.level} ${o.msg ?? ""}${fields.length ? ` ${fields.join(" ")}` : ""}\n`;
}

/**
 * A logger to standard error, or to `output` (--syslog: one line per message with its pino level;
 * no time in text lines, since syslog stamps them).
 */
export function createLogger(level: LogLevel, format: LogFormat, output?: LineOutput): Logger {
  const opts = { level, base: undefined };
  if (output) {
    return pino(opts, {
      write: (json: string) => {
        const lvl = (JSON.parse(json) as { level: number }).level;
        output.write(lvl, (format === "json" ? json : textLine(json, false)).trimEnd());
      },
    });
  }
  if (format === "json") return pino(opts, { write: (line: string) => stderrLines.write(line) });
  return pino(opts, { write: (line: string) => stderrLines.write(textLine(line)) });
}

/**
 * Standard error, one write per turn of the event loop: the lines logged in one turn (several
 * connections opening or closing at once) leave together at the turn's check phase, not one
 * write each; whatever is still held when the process exits is written then. A line is never
 * held past the turn it was logged in.
 */
class TurnLines {
  private held: string[] = [];
  private scheduled = false;

  write(line: string): void {
    this.held.push(line);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(flushTurnLines);
  }

  flush(): void {
    this.scheduled = false;
    if (this.held.length === 0) return;
    const text = this.held.length === 1 ? this.held[0] : this.held.join("");
    this.held = [];
    process.stderr.write(text);
  }
}

const stderrLines = new TurnLines();
function flushTurnLines(): void {
  stderrLines.flush();
}
process.on("exit", flushTurnLines);
