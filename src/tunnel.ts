/**
 * The tunnel: accept loop, connection limit, timeouts and each connection's lifecycle.
 *
 *   encrypt (-e): plain app connects -> dial the encrypted peer -> handshake -> pump
 *   decrypt (-d): encrypted peer connects -> handshake (peer authenticated) -> dial target -> pump
 *
 * The decrypt side dials its target only after the handshake has authenticated the peer, so a
 * stranger never makes it open a connection to the target. Every step that waits on the network has
 * the -o deadline; a connection above the -n limit waits unserved (as with spiped) until a slot frees.
 */
import type { Config } from "./config.js";
import { type Established, runHandshake } from "./handshake.js";
import type { Logger } from "./log.js";
import { createHandshake, prepareProtocol } from "./protocol/index.js";
import type { Session } from "./protocol/types.js";
import { type PumpResult, pump } from "./pump.js";
import { dialEncrypted, dialSocketLink, listenLinks } from "./transport/index.js";
import type { Link, Listener } from "./transport/link.js";
import { wsClientWarnings } from "./transport/ws.js";

/** How long a connection that ended cleanly may take to finish its closing handshake. */
const LINGER_MS = 10_000;
/** Connections waiting above the -n limit; beyond this they are refused outright. */
const MAX_WAITING = 1024;

export class Tunnel {
  private listener: Listener | null = null;
  private readonly active = new Set<Link>();
  private readonly waiting: Link[] = [];
  private seq = 0;
  private limitWarned = false;
  private stopping = false;
  private warnedV1 = false;
  private notedSpiped = false;
  private readonly idle: (() => void)[] = [];

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
  ) {}

  get address(): string {
    return this.listener?.address ?? this.cfg.listen.text;
  }

  /** Number of connections being served (not counting those waiting for a slot). */
  get openConnections(): number {
    return this.active.size;
  }

  /** Bind the listener and start serving. */
  async start(): Promise<void> {
    for (const warning of wsClientWarnings(this.cfg)) this.log.warn(warning);
    // Before listening, so that the ready line means ready: for spiped on Node 22+ this takes
    // ~350 ms of CPU, which would otherwise stall the first connection.
    prepareProtocol(this.cfg.protocol);
    this.listener = await listenLinks(this.cfg, this.log, (link) => this.admit(link));
  }

  /** The start-up log line ("listening on ..."); a supervisor may take it as the ready signal. */
  logListening(): void {
    this.log.info(
      {
        mode: this.cfg.mode,
        listen: this.address,
        target: this.cfg.target.text,
        protocol: this.cfg.protocol,
        ws: this.cfg.wsListen || this.cfg.target.kind === "ws" || undefined,
        maxConns: this.cfg.maxConns,
      },
      `listening on ${this.address}, ${this.cfg.mode === "encrypt" ? "encrypting" : "decrypting"} to ${this.cfg.target.text}`,
    );
  }

  /** Stop accepting, give open connections `graceMs` to finish, then cut the rest. */
  async stop(graceMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.listener?.close();
    for (const link of this.waiting.splice(0)) link.reset();
    if (this.active.size > 0) {
      this.log.info(
        { open: this.active.size, graceSeconds: graceMs / 1000 },
        "stopping: waiting for open connections to finish",
      );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        timer.unref();
        this.idle.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (this.active.size > 0) {
        this.log.warn({ open: this.active.size }, "grace period over: cutting the remaining connections");
        for (const link of this.active) link.reset();
      }
    }
  }

  private admit(link: Link): void {
    if (this.stopping) {
      link.reset();
      return;
    }
    const limit = this.cfg.maxConns;
    if (limit > 0 && this.active.size >= limit) {
      if (this.waiting.length >= MAX_WAITING) {
        this.log.warn({ peer: link.peer }, `connection refused: ${MAX_WAITING} connections already waiting`);
        link.reset();
        return;
      }
      if (!this.limitWarned) {
        this.log.warn(
          { limit },
          `connection limit (${limit}) reached: new connections wait until one closes (-n)`,
        );
        this.limitWarned = true;
      }
      this.waiting.push(link);
      link.once("close", () => {
        const i = this.waiting.indexOf(link);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      return;
    }
    this.active.add(link);
    void this.serve(link).finally(() => this.release(link));
  }

  /**
   * Serve one connection whose plain side is already open (`monopiped pipe`: standard input and
   * output), without a listener. Resolves true when it ended cleanly.
   */
  serveOne(plain: Link): Promise<boolean> {
    return this.serve(plain);
  }

  private release(link: Link): void {
    this.active.delete(link);
    const next = this.waiting.shift();
    if (next) this.admit(next);
    else this.limitWarned = false;
    if (this.active.size === 0) for (const cb of this.idle.splice(0)) cb();
  }

  /** One connection from accept to close; resolves true when it ended cleanly. */
  private async serve(accepted: Link): Promise<boolean> {
    const id = ++this.seq;
    const started = Date.now();
    const peer = accepted.peer;
    const log = this.log.child({ conn: id });
    log.info({ peer }, "connection opened");
    let plain: Link | null = null;
    let enc: Link | null = null;
    let session: Session | null = null;
    let rest: Buffer | undefined;
    let result: PumpResult;
    let closing = false; // the accepted link is already closing cleanly
    try {
      if (this.cfg.mode === "encrypt") {
        plain = accepted;
        enc = await dialEncrypted(this.cfg);
        ({ session, rest } = await this.handshake(enc, "client", log));
        result = await pump(plain, enc, session, { rest });
      } else {
        enc = accepted;
        // The CLI refuses this; the check narrows the type before any work is done.
        if (this.cfg.target.kind === "ws") throw new Error("a decrypt-mode target cannot be a WebSocket URL");
        ({ session, rest } = await this.handshake(enc, "server", log));
        try {
          plain = await dialSocketLink(this.cfg.target, this.cfg);
        } catch (err) {
          const why = `target ${(err as Error).message}`;
          // Tell the authenticated client why, where the protocol can carry it.
          const records = session.sealer.abort(why.replace(/^target /, "server's target: "));
          if (records.length > 0) {
            enc.send(records);
            enc.endWrite();
            closing = true; // a reset now could overtake the ABORT record
          } else enc.reset();
          throw new Error(why);
        }
        result = await pump(plain, enc, session, { rest });
      }
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      plain?.reset();
      if (closing) {
        this.linger(accepted);
      } else if (this.cfg.mode === "decrypt" && !session) {
        // A peer that failed the handshake gets a plain close: no reset, no hint, nothing more.
        accepted.endWrite();
        this.linger(accepted);
      } else {
        accepted.reset();
        if (enc && !session) enc.reset();
      }
      log.warn(
        { peer, protocol: session?.protocol, durationMs: Date.now() - started, reason },
        `connection failed: ${reason}`,
      );
      return false;
    }
    this.linger(plain, enc);
    const level = result.clean ? "info" : "warn";
    log[level](
      {
        peer,
        protocol: session.protocol,
        sent: result.sent,
        received: result.received,
        durationMs: Date.now() - started,
        reason: result.reason,
      },
      result.clean ? "connection closed" : `connection ended: ${result.reason}`,
    );
    return result.clean;
  }

  private async handshake(link: Link, role: "client" | "server", log: Logger): Promise<Established> {
    const hs = createHandshake(role, this.cfg.protocol, this.cfg.keys, this.cfg.spiped);
    const peerName = role === "client" ? `server ${this.cfg.target.text}` : `client ${link.peer}`;
    const est = await runHandshake(link, hs, this.cfg.timeoutMs, peerName);
    log.debug({ protocol: est.session.protocol }, "handshake complete");
    if (est.session.protocol === "monopiped1" && !this.warnedV1) {
      this.warnedV1 = true;
      log.warn(
        "serving the original monopiped protocol (monopiped1): its handshake reuses a nonce and its end of stream is not authenticated; see docs/SECURITY.md",
      );
    }
    if (est.session.protocol === "spiped" && !this.notedSpiped) {
      this.notedSpiped = true;
      log.info(
        `speaking the spiped protocol${this.cfg.spiped?.noPfs ? " without forward secrecy (-f)" : ""}: its end of stream is not authenticated; see docs/SECURITY.md`,
      );
    }
    return est;
  }

  /**
   * After a connection ended, make sure sockets still finishing their close (a peer that never
   * sends its FIN) are gone after a while; links already closed are not held.
   */
  private linger(...links: (Link | null)[]): void {
    const open = links.filter((l): l is Link => l !== null && !l.closed);
    if (open.length === 0) return;
    const timer = setTimeout(() => {
      for (const l of open) l.reset();
    }, LINGER_MS);
    timer.unref();
    let left = open.length;
    for (const l of open) l.once("close", () => --left === 0 && clearTimeout(timer));
  }
}
