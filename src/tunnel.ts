/**
 * The tunnel: accept loop, admission, limits, timeouts and each connection's lifecycle.
 *
 *   encrypt (-e): plain app connects -> wait for a -n slot -> dial the encrypted peer -> handshake -> pump
 *   decrypt (-d): encrypted peer connects (pending) -> [PROXY header] -> handshake (the peer has
 *                 proved the key) -> wait for a -n slot -> dial target -> pump
 *
 * The decrypt side dials its target only after the handshake has authenticated the peer, so a
 * stranger never makes it open a connection to the target. Connections that have not authenticated
 * do not hold -n slots: they sit in a PendingSet with its own cap (--max-pending, the oldest dropped
 * for a new one), must send their first handshake message within --hello-timeout and finish the
 * handshake within -o. Above -n, served connections wait at most --queue-timeout for a slot.
 *
 * Each link is wrapped in an OwnedLink the moment it exists, so its events always have an owner
 * (handshake, then pump) or are held for the next one: an end or a reset is never lost between steps.
 * One timer per tunnel checks every served connection for --idle-timeout and --stall-timeout.
 */
import type { Config } from "./config.js";
import { deferredHandshake, type Established, HandshakeError, runHandshake } from "./handshake.js";
import type { Logger } from "./log.js";
import { type ConnectionLabels, NO_OBSERVER, type Outcome, type TunnelObserver } from "./observer.js";
import { type PendingEntry, PendingSet } from "./pending.js";
import { createHandshake, prepareProtocol, prepareSpareKeyPair } from "./protocol/index.js";
import type { Session } from "./protocol/types.js";
import { type PumpHandle, type PumpResult, pump } from "./pump.js";
import { FailureSummary, SUMMARY_INTERVAL_MS } from "./summary.js";
import { dialEncrypted, dialSocketLink, listenLinks } from "./transport/index.js";
import { DISCARD, type Link, type Listener, OwnedLink } from "./transport/link.js";
import { MAX_PROXY_HEADER, parseProxyHeader } from "./transport/proxyproto.js";
import { SocketLink } from "./transport/tcp.js";

/** How long a connection that ended cleanly may take to finish its closing handshake. */
const LINGER_MS = 10_000;
/** Connections waiting for a -n slot; beyond this, new ones are refused at once. */
const MAX_WAITING = 1024;
/** How often the idle and stall timeouts are checked. */
const SWEEP_MS = 1000;

/** Where a link's queue stood when it was last seen moving (for --stall-timeout). */
interface StallMark {
  sent: number;
  since: number;
}

/**
 * A connection being pumped, as the idle/stall sweeper sees it; it is also the pump's handle (its
 * counters and cut()) and all the tunnel keeps of it until it ends (no suspended serve function):
 * kept small, since an idle connection holds one of these for its whole life.
 */
interface Served extends PumpHandle {
  plain: OwnedLink;
  enc: OwnedLink;
  /** The tunnel's role, and the peer: the names in a stall message are made from them when needed. */
  client: boolean;
  peer: string;
  lastBytes: number;
  lastActive: number;
  /** Stall marks of the plain and the encrypted link, while each has bytes queued. */
  plainStall: StallMark | null;
  encStall: StallMark | null;
  /** What its end is logged with (`id`: the connection's number in the log). */
  session: Session;
  id: number;
  started: number;
  /** It holds a -n slot, given back when it ends. */
  slot: boolean;
}

interface Waiter {
  grant(): void;
  fail(why: string): void;
}

class RefusedError extends Error {}

export class Tunnel {
  private listener: Listener | null = null;
  /** -n slots taken (a server: authenticated connections being served). */
  private active = 0;
  private readonly waiting: Waiter[] = [];
  /** Links of served connections (cut when the grace period is over) and of pending ones. */
  private readonly servedLinks = new Set<OwnedLink>();
  private readonly pendingLinks = new Set<OwnedLink>();
  readonly pending: PendingSet;
  private readonly served = new Set<Served>();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly strangers: FailureSummary;
  private readonly refusals: FailureSummary;
  /** Connections that failed for want of file descriptors: a burst of them is one line, not one each. */
  private readonly outOfFds: FailureSummary;
  private seq = 0;
  private limitWarned = false;
  private evictWarned = false;
  private warnedV1 = false;
  private notedSpiped = false;
  /** A spare key pair is to be made once this turn of the event loop is over. */
  private spareScheduled = false;
  private readonly usesSpareKeys: boolean;
  private readonly idle: (() => void)[] = [];
  private readonly labels: ConnectionLabels;
  /** True once stop() began: no new connection is taken. */
  draining = false;

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    private readonly observer: TunnelObserver = NO_OBSERVER,
  ) {
    this.pending = new PendingSet(cfg.mode === "decrypt" ? cfg.maxPending : 0, (n) =>
      this.observer.pending(n),
    );
    this.strangers = new FailureSummary(log, "connections failed before authenticating");
    this.refusals = new FailureSummary(log, "connections refused (no free slot)");
    this.outOfFds = new FailureSummary(
      log,
      "connections failed: out of file descriptors",
      SUMMARY_INTERVAL_MS,
      1,
    );
    const encTransport =
      cfg.mode === "decrypt"
        ? cfg.wsListen
          ? "ws"
          : cfg.listen.kind === "unix"
            ? "unix"
            : "tcp"
        : cfg.target.kind === "ws"
          ? "ws"
          : cfg.target.kind === "unix"
            ? "unix"
            : "tcp";
    this.labels = { role: cfg.mode === "encrypt" ? "client" : "server", transport: encTransport };
    this.usesSpareKeys = cfg.protocol === "monopiped2" || cfg.protocol === "auto";
  }

  get address(): string {
    return this.listener?.address ?? this.cfg.listen.text;
  }

  /** Number of connections being served (not counting pending ones or those waiting for a slot). */
  get openConnections(): number {
    return this.active;
  }

  /** Bind the listener and start serving. */
  async start(): Promise<void> {
    if (this.cfg.target.kind === "ws") {
      // The WebSocket code is loaded only by an end that uses it.
      const { wsClientWarnings } = await import("./transport/ws.js");
      for (const warning of wsClientWarnings(this.cfg)) this.log.warn(warning);
    }
    if (this.cfg.mode === "decrypt" && this.cfg.protocol === "auto") {
      this.log.warn(
        "--protocol auto also serves monopiped1 clients: a replayed monopiped1 handshake reaches the target (monopiped1 has no key confirmation); use --protocol monopiped2 once no monopiped1 clients remain",
      );
    }
    // Before listening, so that the ready line means ready: for spiped on Node 22+ this takes
    // ~350 ms of CPU, which would otherwise stall the first connection. A client in "auto" mode
    // speaks monopiped2 and needs no other protocol's code.
    await prepareProtocol(
      this.cfg.mode === "encrypt" && this.cfg.protocol === "auto" ? "monopiped2" : this.cfg.protocol,
    );
    if (this.usesSpareKeys) prepareSpareKeyPair();
    this.listener = await listenLinks(this.cfg, this.log, (link) => this.admit(link), this.pending);
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
    if (this.draining) return;
    this.draining = true;
    this.listener?.close();
    for (const w of this.waiting.splice(0)) w.fail("the server is stopping");
    this.observer.waiting(0);
    for (const l of this.pendingLinks) l.reset();
    if (this.active > 0) {
      this.log.info(
        { open: this.active, graceSeconds: graceMs / 1000 },
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
      if (this.active > 0) {
        this.log.warn({ open: this.active }, "grace period over: cutting the remaining connections");
        for (const l of this.servedLinks) l.reset();
      }
    }
    this.stopSweeper();
  }

  private admit(link: Link): void {
    if (this.draining) {
      link.reset();
      return;
    }
    const conn = new OwnedLink(link);
    const run = this.cfg.mode === "encrypt" ? this.serveClient(conn) : this.serveServer(conn);
    void run.catch((err) => this.log.error({ reason: String(err) }, `internal error: ${String(err)}`));
  }

  /**
   * Serve one connection whose plain side is already open (`monopiped pipe`: standard input and
   * output), without a listener or a slot. Resolves true when it ended cleanly.
   */
  async serveOne(plain: Link): Promise<boolean> {
    await prepareProtocol(this.cfg.protocol === "auto" ? "monopiped2" : this.cfg.protocol);
    return this.serveClient(new OwnedLink(plain), false);
  }

  // -------------------------------------------------------------------------------------------
  // Slots (-n) and the queue above it

  /** Take a -n slot, waiting in the queue (at most --queue-timeout) when none is free. */
  private acquireSlot(conn: OwnedLink): Promise<void> {
    const limit = this.cfg.maxConns;
    if (this.draining) return Promise.reject(new RefusedError("the server is stopping"));
    if (limit <= 0 || (this.active < limit && this.waiting.length === 0)) {
      this.active++;
      return Promise.resolve();
    }
    if (this.waiting.length >= MAX_WAITING) {
      return Promise.reject(
        new RefusedError(
          `all ${limit} connection slots in use (-n) and ${MAX_WAITING} connections already waiting`,
        ),
      );
    }
    if (!this.limitWarned) {
      this.log.warn(
        { limit },
        `connection limit (${limit}) reached: new connections wait until one closes (-n), at most ${this.cfg.queueTimeoutMs / 1000} s (--queue-timeout)`,
      );
      this.limitWarned = true;
    }
    return new Promise<void>((resolve, reject) => {
      const onClose = () => w.fail("it closed while waiting for a connection slot");
      const done = () => {
        clearTimeout(timer);
        conn.link.removeListener("close", onClose);
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        this.observer.waiting(this.waiting.length);
      };
      const w: Waiter = {
        grant: () => {
          done();
          this.active++;
          resolve();
        },
        fail: (why: string) => {
          done();
          reject(new RefusedError(why));
        },
      };
      const timer = setTimeout(
        () =>
          w.fail(
            `no connection slot free within ${this.cfg.queueTimeoutMs / 1000} s (all ${limit} in use: -n, --queue-timeout)`,
          ),
        this.cfg.queueTimeoutMs,
      );
      timer.unref();
      conn.link.on("close", onClose);
      this.waiting.push(w);
      this.observer.waiting(this.waiting.length);
    });
  }

  private releaseSlot(): void {
    this.active--;
    const next = this.waiting[0];
    if (next) next.grant();
    else this.limitWarned = false;
    if (this.active === 0) for (const cb of this.idle.splice(0)) cb();
  }

  // -------------------------------------------------------------------------------------------
  // The two kinds of connection

  /** A server end's connection: from accept (a stranger) through the handshake to the target. */
  private async serveServer(conn: OwnedLink): Promise<boolean> {
    const id = ++this.seq;
    const started = Date.now();
    const seconds = () => (Date.now() - started) / 1000;
    let peer = conn.peer;
    // A child logger only for connections that authenticate: a stranger should cost little.
    this.log.debug({ conn: id, peer }, "connection accepted");
    this.observer.connectionOpened(this.labels);
    let evicted = false;
    const entry: PendingEntry = {
      evict: () => {
        evicted = true;
        conn.reset();
      },
    };
    this.pending.add(entry);
    this.pendingLinks.add(conn);
    if (this.pending.evicted > 0 && !this.evictWarned) {
      this.evictWarned = true;
      this.log.warn(
        { maxPending: this.pending.cap },
        `${this.pending.cap} connections have not authenticated yet (--max-pending): the oldest are dropped to make room`,
      );
    }
    const leavePending = () => {
      this.pending.delete(entry);
      this.pendingLinks.delete(conn);
    };

    let est: Established;
    try {
      let initial: Buffer | undefined;
      if (this.cfg.proxyProtocol) {
        const header = await readProxyHeader(conn, this.cfg.helloTimeoutMs);
        if (header.source) peer = header.source;
        initial = header.rest;
      }
      est = await this.handshake(conn, "server", `client ${peer}`, started, initial);
    } catch (err) {
      leavePending();
      const kind = evicted ? "limit" : err instanceof HandshakeError ? err.kind : "malformed";
      const reason = evicted
        ? `dropped before authenticating: ${this.pending.cap} connections were pending (--max-pending) and this was the oldest`
        : (err as Error).message;
      this.observer.handshakeFailed(this.labels, kind);
      this.observer.connectionClosed(this.labels, undefined, "handshake-failed", seconds(), 0, 0);
      this.strangers.note(kind, `connection failed: ${reason}`, {
        conn: id,
        peer,
        durationMs: Date.now() - started,
        reason,
      });
      // A stranger gets a plain close: no reset, no hint, nothing more.
      if (!evicted) {
        conn.own(DISCARD);
        conn.endWrite();
        this.linger(conn);
      }
      return false;
    }
    leavePending();
    this.noteProtocol(est.session, id);
    const { session, rest } = est;
    this.observer.handshakeDone(this.labels, session.protocol, seconds());

    try {
      await this.acquireSlot(conn);
    } catch (err) {
      const why = (err as Error).message;
      this.refuseAuthenticated(conn, session, `server busy: ${why}`);
      this.refusals.note("busy", `connection refused: ${why}`, { conn: id, peer, reason: why });
      this.observer.connectionClosed(this.labels, session.protocol, "refused-by-target", seconds(), 0, 0);
      return false;
    }
    this.servedLinks.add(conn);
    this.log.info({ conn: id, peer, protocol: session.protocol }, "connection opened");
    let plain: OwnedLink | null = null;
    // Once the pump runs, pumpAndLog gives the links and the slot back when it ends; this
    // function returns then and does not stay suspended for the connection's whole life.
    let handedOff = false;
    try {
      // The CLI refuses this; the check narrows the type before any work is done.
      if (this.cfg.target.kind === "ws") throw new Error("a decrypt-mode target cannot be a WebSocket URL");
      try {
        plain = new OwnedLink(await dialSocketLink(this.cfg.target, this.cfg));
      } catch (err) {
        const why = `target ${(err as Error).message}`;
        // Tell the authenticated client why, where the protocol can carry it.
        this.refuseAuthenticated(conn, session, why.replace(/^target /, "server's target: "));
        this.logFailure(id, why, { peer, protocol: session.protocol, durationMs: Date.now() - started });
        this.observer.connectionClosed(this.labels, session.protocol, "refused-by-target", seconds(), 0, 0);
        return false;
      }
      this.servedLinks.add(plain);
      const running = this.pumpAndLog(plain, conn, session, rest, id, peer, started, false, true);
      handedOff = true;
      return running;
    } finally {
      if (!handedOff) {
        this.servedLinks.delete(conn);
        if (plain) this.servedLinks.delete(plain);
        this.releaseSlot();
      }
    }
  }

  /** A connection that could not be set up; running out of descriptors is summed up, not repeated. */
  private logFailure(id: number, reason: string, fields: Record<string, unknown>): void {
    if (/\b(EMFILE|ENFILE)\b/.test(reason))
      this.outOfFds.note("EMFILE", `connection failed: ${reason}`, { ...fields, reason });
    else this.log.warn({ conn: id, ...fields, reason }, `connection failed: ${reason}`);
  }

  /** An authenticated connection that will not be served: ABORT with the reason, then a FIN. */
  private refuseAuthenticated(conn: OwnedLink, session: Session, why: string): void {
    conn.own(DISCARD);
    let records: Buffer[] = [];
    try {
      records = session.sealer.abort(why);
    } catch {
      // cannot seal: close without it
    }
    if (records.length > 0) {
      conn.send(records);
      conn.endWrite();
      this.linger(conn); // a reset now could overtake the ABORT record
    } else conn.reset();
  }

  /** A client end's connection: a plain application (or stdio) to the server end. */
  private async serveClient(plain: OwnedLink, useSlot = true): Promise<boolean> {
    const id = ++this.seq;
    const started = Date.now();
    const peer = plain.peer;
    this.observer.connectionOpened(this.labels);
    if (useSlot) {
      try {
        await this.acquireSlot(plain);
      } catch (err) {
        const why = (err as Error).message;
        plain.own(DISCARD);
        plain.reset();
        this.refusals.note("busy", `connection refused: ${why}`, { conn: id, peer, reason: why });
        this.observer.connectionClosed(
          this.labels,
          undefined,
          "refused-by-target",
          (Date.now() - started) / 1000,
          0,
          0,
        );
        return false;
      }
    }
    this.servedLinks.add(plain);
    this.log.info({ conn: id, peer }, "connection opened");
    // The application's first bytes are read while the encrypted leg is set up (held by the link
    // for the pump, one read at most: it pauses again after it), so that they leave with the
    // handshake's last message in one write instead of a read and a write after it.
    if (plain.link instanceof SocketLink) {
      plain.link.once("data", pauseAfterFirstRead);
      plain.resume();
    }
    let enc: OwnedLink | null = null;
    let handedOff = false; // as in serveServer
    try {
      let est: Established;
      try {
        enc = new OwnedLink(await dialEncrypted(this.cfg));
        this.servedLinks.add(enc);
        est = await this.handshake(enc, "client", `server ${this.cfg.target.text}`, Date.now());
        this.noteProtocol(est.session, id);
      } catch (err) {
        const reason = (err as Error).message;
        plain.own(DISCARD);
        plain.reset();
        if (enc) {
          enc.own(DISCARD);
          enc.reset();
        }
        if (err instanceof HandshakeError) this.observer.handshakeFailed(this.labels, err.kind);
        this.observer.connectionClosed(
          this.labels,
          undefined,
          err instanceof HandshakeError ? "handshake-failed" : "refused-by-target",
          (Date.now() - started) / 1000,
          0,
          0,
        );
        this.logFailure(id, reason, { peer, durationMs: Date.now() - started });
        return false;
      }
      this.observer.handshakeDone(this.labels, est.session.protocol, (Date.now() - started) / 1000);
      plain.link.removeListener("data", pauseAfterFirstRead);
      const running = this.pumpAndLog(plain, enc, est.session, est.rest, id, peer, started, true, useSlot);
      handedOff = true;
      return running;
    } finally {
      if (!handedOff) {
        this.servedLinks.delete(plain);
        if (enc) this.servedLinks.delete(enc);
        if (useSlot) this.releaseSlot();
      }
    }
  }

  /**
   * Pump a connection, then log and count how it ended, and give back its links and its slot
   * (`slot`). Not an async function: an idle connection waits here for its whole life, and a
   * suspended async frame costs more than the record alone.
   */
  private pumpAndLog(
    plain: OwnedLink,
    enc: OwnedLink,
    session: Session,
    rest: Buffer,
    id: number,
    peer: string,
    started: number,
    client: boolean,
    slot: boolean,
  ): Promise<boolean> {
    const s: Served = {
      sent: 0,
      received: 0,
      cut: noCut,
      plain,
      enc,
      client,
      peer,
      lastBytes: 0,
      lastActive: Date.now(),
      plainStall: null,
      encStall: null,
      session,
      id,
      started,
      slot,
    };
    const running = pump(plain, enc, session, { rest, handle: s });
    this.served.add(s);
    this.startSweeper();
    return running.then(
      (result) => {
        this.served.delete(s);
        try {
          return this.logEnded(s, result);
        } finally {
          this.giveBack(s);
        }
      },
      (err: unknown) => {
        this.served.delete(s);
        this.giveBack(s);
        throw err;
      },
    );
  }

  /** A served connection is over: its links are no longer the tunnel's to cut, its slot is free. */
  private giveBack(s: Served): void {
    this.servedLinks.delete(s.plain);
    this.servedLinks.delete(s.enc);
    if (s.slot) this.releaseSlot();
  }

  /** A pumped connection ended: let its sockets finish closing, log and count how it ended. */
  private logEnded(s: Served, result: PumpResult): boolean {
    const { plain, enc, peer, session, id, started } = s;
    this.linger(plain, enc);
    const level = result.clean ? "info" : "warn";
    this.log[level](
      {
        conn: id,
        peer,
        protocol: session.protocol,
        sent: result.sent,
        received: result.received,
        durationMs: Date.now() - started,
        reason: result.reason,
      },
      result.clean ? "connection closed" : `connection ended: ${result.reason}`,
    );
    this.observer.connectionClosed(
      this.labels,
      session.protocol,
      outcomeOf(result),
      (Date.now() - started) / 1000,
      result.sent,
      result.received,
    );
    return result.clean;
  }

  private async handshake(
    link: OwnedLink,
    role: "client" | "server",
    peerName: string,
    started: number,
    initial?: Buffer,
  ): Promise<Established> {
    const make = () => createHandshake(role, this.cfg.protocol, this.cfg.keys, this.cfg.spiped);
    // monopiped2's msg1 and monopiped1's hello are both 48 bytes, and the server speaks second.
    const hs =
      role === "server" && (this.cfg.protocol === "monopiped2" || this.cfg.protocol === "auto")
        ? deferredHandshake(make, 48)
        : make();
    const elapsed = Date.now() - started;
    const est = await runHandshake(link, hs, {
      role,
      peerName,
      timeoutMs: this.cfg.timeoutMs - elapsed,
      timeoutLabel: `${this.cfg.timeoutMs / 1000} s`,
      helloTimeoutMs: role === "server" ? this.cfg.helloTimeoutMs - elapsed : undefined,
      helloLabel: `${this.cfg.helloTimeoutMs / 1000} s`,
      initial,
    });
    this.scheduleSpareKeyPair();
    return est;
  }

  /**
   * monopiped2's ephemeral key pair is the costliest step of a handshake; making the next one
   * once this turn of the event loop is over takes it off the next connection's way (a stranger's
   * failed handshake uses none, so it does not make one either).
   */
  private scheduleSpareKeyPair(): void {
    if (!this.usesSpareKeys || this.spareScheduled) return;
    this.spareScheduled = true;
    setImmediate(() => {
      this.spareScheduled = false;
      prepareSpareKeyPair();
    });
  }

  /** Once per process: what the compatibility protocols do not protect. */
  private noteProtocol(session: Session, id: number): void {
    this.log.debug({ conn: id, protocol: session.protocol }, "handshake complete");
    if (session.protocol === "monopiped1" && !this.warnedV1) {
      this.warnedV1 = true;
      this.log.warn(
        { conn: id },
        "serving the original monopiped protocol (monopiped1): its handshake reuses a nonce and its end of stream is not authenticated; see docs/SECURITY.md",
      );
    }
    if (session.protocol === "spiped" && !this.notedSpiped) {
      this.notedSpiped = true;
      this.log.info(
        { conn: id },
        `speaking the spiped protocol${this.cfg.spiped?.noPfs ? " without forward secrecy (-f)" : ""}: its end of stream is not authenticated; see docs/SECURITY.md`,
      );
    }
  }

  // -------------------------------------------------------------------------------------------
  // Idle and stall timeouts: one timer for all connections

  private startSweeper(): void {
    if (this.sweeper || (this.cfg.idleTimeoutMs <= 0 && this.cfg.stallTimeoutMs <= 0)) return;
    this.sweeper = setInterval(() => this.sweep(), Math.min(SWEEP_MS, this.cfg.idleTimeoutMs || SWEEP_MS));
    this.sweeper.unref();
  }

  private stopSweeper(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  private sweep(): void {
    if (this.served.size === 0) {
      this.stopSweeper();
      return;
    }
    const now = Date.now();
    const { idleTimeoutMs: idle, stallTimeoutMs: stall } = this.cfg;
    for (const s of [...this.served]) {
      const bytes = s.sent + s.received;
      if (bytes !== s.lastBytes) {
        s.lastBytes = bytes;
        s.lastActive = now;
      } else if (idle > 0 && now - s.lastActive >= idle) {
        const why = `idle timeout: no data either way for ${idle / 1000} s (--idle-timeout)`;
        s.cut(why, why);
        continue;
      }
      if (stall <= 0) continue;
      for (const toPeer of [false, true]) {
        const link = toPeer ? s.enc : s.plain;
        const queued = link.link.queuedBytes;
        const sent = link.link.sentBytes;
        const st = toPeer ? s.encStall : s.plainStall;
        let mark: StallMark | null = st;
        if (queued === 0) {
          mark = null;
        } else if (!st || st.sent !== sent) {
          mark = { sent, since: now };
        } else if (now - st.since >= stall) {
          const name = toPeer
            ? s.client
              ? `server ${this.cfg.target.text}`
              : `client ${s.peer}`
            : s.client
              ? `the application ${s.peer}`
              : "the application";
          const why = `stalled: ${queued} bytes queued towards ${name} made no progress for ${stall / 1000} s (--stall-timeout)`;
          // Towards the peer: it cannot take an ABORT either, so it is reset.
          s.cut(why, toPeer ? null : why);
          break;
        }
        if (toPeer) s.encStall = mark;
        else s.plainStall = mark;
      }
    }
  }

  /**
   * After a connection ended, make sure sockets still finishing their close (a peer that never
   * sends its FIN) are gone after a while; links already closed are not held.
   */
  private linger(...links: (OwnedLink | null)[]): void {
    const open = links.filter((l): l is OwnedLink => l !== null && !l.closed);
    if (open.length === 0) return;
    const timer = setTimeout(() => {
      for (const l of open) l.reset();
    }, LINGER_MS);
    timer.unref();
    let left = open.length;
    for (const l of open) l.link.once("close", () => --left === 0 && clearTimeout(timer));
  }
}

/** A link's 'data' listener (`this` is the link) that pauses it after one read. */
function pauseAfterFirstRead(this: Link): void {
  this.pause();
}

/** A pump handle's cut() until the pump fills it in. */
function noCut(): void {}

function outcomeOf(r: PumpResult): Outcome {
  if (r.clean) return "clean";
  if (r.reason.startsWith("idle timeout")) return "idle-timeout";
  if (r.reason.startsWith("peer aborted") || r.reason.startsWith("application connection")) return "aborted";
  return "cut";
}

/**
 * --proxy-protocol: read the PROXY header a trusted balancer sends first (within the hello
 * timeout). Resolves with the client's address it names and the bytes after it.
 */
function readProxyHeader(conn: OwnedLink, timeoutMs: number): Promise<{ source?: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let done = false;
    const finish = (err: Error | null, value?: { source?: string; rest: Buffer }) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      conn.pause();
      conn.own(null);
      if (err) reject(new HandshakeError(err.message, "malformed"));
      else resolve(value as { source?: string; rest: Buffer });
    };
    const timer = setTimeout(
      () => finish(new Error(`no PROXY header within ${timeoutMs / 1000} s (--hello-timeout)`)),
      timeoutMs,
    );
    conn.own({
      data(chunk) {
        if (done) return;
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        try {
          const h = parseProxyHeader(buf);
          if (h.done) finish(null, { source: h.source, rest: buf.subarray(h.consumed) });
          else if (buf.length > MAX_PROXY_HEADER) throw new Error("PROXY header too long");
        } catch (err) {
          finish(new Error(`bad PROXY header: ${(err as Error).message}`));
        }
      },
      end() {
        finish(new Error("the connection closed before its PROXY header was complete"));
      },
      close(err) {
        finish(
          new Error(`the connection ${err ? `failed (${err.message})` : "closed"} before its PROXY header`),
        );
      },
    });
    conn.resume();
  });
}
