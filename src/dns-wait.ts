/**
 * spiped's -D: wait for DNS. At start-up the listen address's name and the target's name are looked
 * up until both resolve, with a growing pause between tries (a machine booting before its network
 * or resolver is up), and only then does the end listen. Each name's failure is logged once (again
 * only if the reason changes), not once per try, and its eventual success once.
 */
import { promises as dns } from "node:dns";
import net from "node:net";
import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import { proxyFor, stripBrackets } from "./transport/proxy.js";

export interface NameToWaitFor {
  /** What the name is for, for the log: "-t/--target". */
  what: string;
  host: string;
}

/** The names an end needs resolved before it can serve (IP addresses and Unix paths need none). */
export function namesToWaitFor(cfg: Pick<Config, "listen" | "target" | "wsClient">): NameToWaitFor[] {
  const out: NameToWaitFor[] = [];
  const add = (what: string, host: string) => {
    const h = stripBrackets(host);
    if (h !== "" && net.isIP(h) === 0 && !out.some((n) => n.host === h)) out.push({ what, host: h });
  };
  if (cfg.listen.kind === "tcp") add("-l/--listen", cfg.listen.host);
  if (cfg.target.kind === "tcp") add("-t/--target", cfg.target.host);
  else if (cfg.target.kind === "ws") {
    let proxy: URL | undefined;
    try {
      proxy = proxyFor(cfg.target.url, cfg.wsClient.proxy);
    } catch {
      proxy = undefined; // the tunnel reports a bad proxy setting itself
    }
    // Through a proxy, the proxy resolves the target's name: only the proxy's own name matters here.
    if (proxy) add("--proxy", proxy.hostname);
    else add("-t/--target", cfg.target.url.hostname);
  }
  return out;
}

export interface WaitOptions {
  /** The first pause between tries; it doubles after each failed round, up to maxDelayMs. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Ends the wait early (a signal): the promise then resolves false. */
  signal?: AbortSignal;
  /** Called once, at the first failed look-up (the daemon's parent returns then, as spiped's does). */
  onFirstFailure?: () => void;
  lookup?: (host: string) => Promise<unknown>;
}

/** Resolves true once every name resolved, false if the signal ended the wait first. */
export async function waitForNames(
  names: readonly NameToWaitFor[],
  log: Logger,
  opts: WaitOptions = {},
): Promise<boolean> {
  const lookup = opts.lookup ?? ((host: string) => dns.lookup(host));
  const maxDelay = opts.maxDelayMs ?? 10_000;
  let delay = opts.initialDelayMs ?? 500;
  const started = Date.now();
  const lastReason = new Map<string, string>();
  let left = [...names];
  let failedOnce = false;
  while (left.length > 0) {
    if (opts.signal?.aborted) return false;
    const stillFailing: NameToWaitFor[] = [];
    for (const name of left) {
      try {
        await lookup(name.host);
        if (lastReason.has(name.host))
          log.info(
            { host: name.host, waitedSeconds: Math.round((Date.now() - started) / 100) / 10 },
            `-D: ${name.host} (${name.what}) resolves now`,
          );
      } catch (err) {
        const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        if (lastReason.get(name.host) !== reason) {
          lastReason.set(name.host, reason);
          log.warn(
            { host: name.host, reason },
            `-D: cannot resolve ${name.host} (${name.what}): ${reason}; trying again until it resolves`,
          );
        }
        stillFailing.push(name);
      }
    }
    left = stillFailing;
    if (left.length === 0) break;
    if (!failedOnce) {
      failedOnce = true;
      opts.onFirstFailure?.();
    }
    const ok = await sleep(delay, opts.signal);
    if (!ok) return false;
    delay = Math.min(delay * 2, maxDelay);
  }
  return true;
}

function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
