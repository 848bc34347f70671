/**
 * Logging, to stderr (stdout stays free for `monopiped pipe`). JSON lines with --log-format json
 * (pino's format: {"level":30,"time":ms,...bindings,...fields,"msg":"..."}); otherwise one
 * human-readable line per event: "time LEVEL message key=value ...".
 *
 * Our own small logger rather than pino: an end writes a line or two per connection, and pino's
 * module graph alone was ~6 MiB of an idle end's memory; a child logger here is one small object
 * (the tunnel makes one per connection), and a line is built straight into its format, text lines
 * without a JSON round trip. Lines written in one turn of the event loop go out in one write at
 * its end (and synchronously before the process exits), so a burst of connections costs one
 * system call per turn, not one per line.
 */
import { writeSync } from "node:fs";
import type { LineOutput } from "./syslog.js";

export type LogFormat = "text" | "json";
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

type Fields = Record<string, unknown>;

/** One logging method: `log.info({ key: value }, "message")` or `log.info("message")`. */
export interface LogFn {
  (fields: object, msg?: string): void;
  (msg: string): void;
}

export interface Logger {
  readonly level: LogLevel;
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  /** A logger whose lines all carry `bindings` (before their own fields). */
  child(bindings: Fields): Logger;
}

const LEVEL_VALUES: Record<LogLevel, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Number.POSITIVE_INFINITY,
};
const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};
/** Keys a text line does not repeat as key=value (they are the line's time, level and message). */
const OMIT = new Set(["level", "time", "msg", "pid", "hostname"]);

function formatValue(v: unknown): string {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** `fields` as JSON members, each preceded by a comma (undefined values left out, as JSON does). */
function jsonMembers(fields: Fields): string {
  let out = "";
  for (const k in fields) {
    const j = JSON.stringify(fields[k]);
    if (j !== undefined) out += `,${JSON.stringify(k)}:${j}`;
  }
  return out;
}

/** `fields` as " key=value" pairs (undefined values left out). */
function textPairs(fields: Fields): string {
  let out = "";
  for (const k in fields) {
    const v = fields[k];
    if (v === undefined || OMIT.has(k) || JSON.stringify(v) === undefined) continue;
    out += ` ${k}=${formatValue(v)}`;
  }
  return out;
}

/** Turns one JSON log line into a text line (without the time when `withTime` is false). */
export function textLine(json: string, withTime = true): string {
  const o = JSON.parse(json) as Fields;
  const time = withTime ? `${new Date(o.time as number).toISOString()} ` : "";
  return `${time}${LEVEL_NAMES[o.level as number] ?? o.level} ${o.msg ?? ""}${textPairs(o)}\n`;
}

// ---------------------------------------------------------------------------------------------
// Standard error, one write per turn of the event loop.

let pending = "";
let flushScheduled = false;

/** Write out the lines not yet written (also done at the end of each turn and at exit). */
export function flushLog(): void {
  flushScheduled = false;
  if (pending === "") return;
  const out = pending;
  pending = "";
  try {
    process.stderr.write(out);
  } catch {
    // standard error is gone: nothing to tell it
  }
}

function flushAtExit(): void {
  if (pending === "") return;
  const out = pending;
  pending = "";
  try {
    writeSync(2, out);
  } catch {
    // as above
  }
}

let exitHooked = false;
function toStderr(line: string): void {
  if (!exitHooked) {
    exitHooked = true;
    process.on("exit", flushAtExit);
  }
  pending += line;
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flushLog);
  }
}

// ---------------------------------------------------------------------------------------------

interface Sink {
  readonly json: boolean;
  /** Text lines carry their time (not for syslog, which stamps them itself). */
  readonly withTime: boolean;
  write(level: number, line: string): void;
}

class LineLogger implements Logger {
  /** The bindings of this logger and its parents, as JSON members and as text pairs (built on first use). */
  private jsonPrefix: string | null = null;
  private textPrefix: string | null = null;
  private readonly min: number;
  constructor(
    readonly level: LogLevel,
    private readonly sink: Sink,
    private readonly parent: LineLogger | null,
    private readonly bindings: Fields | null,
  ) {
    this.min = LEVEL_VALUES[level];
  }

  child(bindings: Fields): Logger {
    return new LineLogger(this.level, this.sink, this, bindings);
  }

  private prefix(): string {
    if (this.sink.json) {
      this.jsonPrefix ??= (this.parent?.prefix() ?? "") + (this.bindings ? jsonMembers(this.bindings) : "");
      return this.jsonPrefix;
    }
    this.textPrefix ??= (this.parent?.prefix() ?? "") + (this.bindings ? textPairs(this.bindings) : "");
    return this.textPrefix;
  }

  private emit(level: number, a: object | string, b?: string): void {
    if (level < this.min) return;
    let fields: Fields | null = null;
    let msg: string | undefined;
    if (typeof a === "string") msg = a;
    else {
      fields = a as Fields;
      msg = b;
    }
    const time = Date.now();
    const sink = this.sink;
    let line: string;
    if (sink.json) {
      line = `{"level":${level},"time":${time}${this.prefix()}${fields ? jsonMembers(fields) : ""}${msg === undefined ? "" : `,"msg":${JSON.stringify(msg)}`}}\n`;
    } else {
      line = `${sink.withTime ? `${new Date(time).toISOString()} ` : ""}${LEVEL_NAMES[level]} ${msg ?? ""}${this.prefix()}${fields ? textPairs(fields) : ""}\n`;
    }
    sink.write(level, line);
  }

  trace(a: object | string, b?: string): void {
    this.emit(10, a, b);
  }
  debug(a: object | string, b?: string): void {
    this.emit(20, a, b);
  }
  info(a: object | string, b?: string): void {
    this.emit(30, a, b);
  }
  warn(a: object | string, b?: string): void {
    this.emit(40, a, b);
  }
  error(a: object | string, b?: string): void {
    this.emit(50, a, b);
  }
  fatal(a: object | string, b?: string): void {
    this.emit(60, a, b);
  }
}

/**
 * A logger to standard error, or to `output` (--syslog: one line per message with its level; no
 * time in text lines, since syslog stamps them).
 */
export function createLogger(level: LogLevel, format: LogFormat, output?: LineOutput): Logger {
  const json = format === "json";
  const sink: Sink = output
    ? { json, withTime: false, write: (lvl, line) => output.write(lvl, line.trimEnd()) }
    : { json, withTime: true, write: (_lvl, line) => toStderr(line) };
  return new LineLogger(level, sink, null, null);
}
