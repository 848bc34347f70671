/**
 * Failures of connections that never authenticated (wrong key, timeouts, scanners, floods) are
 * counted, not logged one by one: the first few (SUMMARY_BURST) of an interval are logged at once,
 * the rest are summed up in one line per interval. Each one's detail is still there at debug level. A flood of
 * strangers therefore cannot drown the operator's log or trip journald's rate limit.
 */
import type { Logger } from "./log.js";

export const SUMMARY_INTERVAL_MS = 10_000;
/** Failures logged in full per interval before the rest are only counted. */
export const SUMMARY_BURST = 5;

export class FailureSummary {
  private counts = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  /** Logged in full in the current interval. */
  private inFull = 0;

  /** `what` names the failures in the summary line, e.g. "connections failed before authenticating". */
  constructor(
    private readonly log: Logger,
    private readonly what: string,
    private readonly intervalMs = SUMMARY_INTERVAL_MS,
    /** Failures logged in full per interval (the first one alone, where they all say the same). */
    private readonly burst = SUMMARY_BURST,
  ) {}

  /** One failure: `reason` is a short class ("wrong key", "timeout"); `message` the full line. */
  note(reason: string, message: string, detail: Record<string, unknown> = {}): void {
    if (this.timer === null) {
      // Quiet until now: count for one interval from here.
      this.inFull = 0;
      this.timer = setTimeout(() => this.flush(), this.intervalMs);
      this.timer.unref();
    }
    if (this.inFull < this.burst) {
      // The first few of an interval are said in full.
      this.inFull++;
      this.log.warn(detail, message);
      return;
    }
    this.log.debug(detail, message);
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
  }

  private flush(): void {
    this.timer = null;
    if (this.counts.size === 0) return;
    this.inFull = SUMMARY_BURST; // still busy: the next interval is summed from its start
    let total = 0;
    const byReason: Record<string, number> = {};
    for (const [reason, n] of this.counts) {
      byReason[reason] = n;
      total += n;
    }
    this.counts = new Map();
    const parts = Object.entries(byReason).map(([r, n]) => `${r} ${n}`);
    this.log.warn(
      { count: total, reasons: byReason, intervalSeconds: this.intervalMs / 1000 },
      `${total} more ${this.what} in the last ${this.intervalMs / 1000} s (${parts.join(", ")}; details at --log-level debug)`,
    );
    // Keep summarising while failures go on; the next quiet interval ends it.
    this.timer = setTimeout(() => this.flush(), this.intervalMs);
    this.timer.unref();
  }
}
