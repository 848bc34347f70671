/**
 * A TCP relay to put between the two ends (or between an end and its target) that injects faults:
 *
 *   pass   forward both ways, untouched
 *   stall  stop forwarding and stop reading (the sockets stay open: the senders' buffers fill up)
 *   cut    destroy both sides: "rst" resets them, "fin" closes them as a middlebox injecting FINs would
 *   delay  forward each piece `ms` later (order kept)
 *   flip   flip one bit of the byte at stream offset `offset` (counted from the connection's start)
 *
 * A fault may wait until `after` bytes have gone through in its direction ("up": client to target,
 * "down": target to client, "both" for stall and cut: either), so that it strikes mid-stream. The
 * mode in force when a connection is accepted is the one it keeps; setMode() changes it for the
 * connections that follow, stallAll()/cutAll() strike the connections open now.
 */
import net from "node:net";

export type Direction = "up" | "down" | "both";

export type FaultMode =
  | { kind: "pass" }
  | { kind: "stall"; after?: number; direction?: Direction }
  | { kind: "cut"; how?: "rst" | "fin"; after?: number; direction?: Direction }
  | { kind: "delay"; ms: number }
  | { kind: "flip"; offset: number; direction: "up" | "down"; bit?: number };

/** Pause a direction whose delayed pieces hold more than this (memory stays bounded). */
const DELAY_HIGH_WATER = 4 * 1024 * 1024;

interface Relayed {
  client: net.Socket;
  upstream: net.Socket;
  stall(): void;
  cut(how: "rst" | "fin"): void;
}

export class FaultRelay {
  private readonly server: net.Server;
  private readonly open = new Set<Relayed>();
  private mode: FaultMode = { kind: "pass" };
  /** Connections accepted so far. */
  accepted = 0;
  /** Resolves each time a fault strikes (stall, cut or flip), with the connection's number. */
  private strikeWaiters: ((n: number) => void)[] = [];
  /** Faults that struck so far. */
  strikes = 0;
  port = 0;

  private constructor(
    private readonly targetPort: number,
    private readonly targetHost: string,
  ) {
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.relay(c));
  }

  /** A relay on a free loopback port towards targetHost:targetPort. */
  static async start(targetPort: number, targetHost = "127.0.0.1", mode?: FaultMode): Promise<FaultRelay> {
    const r = new FaultRelay(targetPort, targetHost);
    if (mode) r.mode = mode;
    await new Promise<void>((resolve) => r.server.listen(0, "127.0.0.1", () => resolve()));
    r.port = (r.server.address() as net.AddressInfo).port;
    return r;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Relayed connections still open (either side). */
  get openConnections(): number {
    return this.open.size;
  }

  /** The mode for connections accepted from now on. */
  setMode(mode: FaultMode): void {
    this.mode = mode;
  }

  /** Resolves when the next fault strikes. */
  nextStrike(): Promise<number> {
    return new Promise((resolve) => this.strikeWaiters.push(resolve));
  }

  /** Stall every connection open now. */
  stallAll(): void {
    for (const r of this.open) r.stall();
  }

  /** Cut every connection open now. */
  cutAll(how: "rst" | "fin" = "rst"): void {
    for (const r of [...this.open]) r.cut(how);
  }

  private strike(n: number): void {
    this.strikes++;
    for (const w of this.strikeWaiters.splice(0)) w(n);
  }

  private relay(client: net.Socket): void {
    const n = ++this.accepted;
    const mode = this.mode;
    const upstream = net.connect({ host: this.targetHost, port: this.targetPort, allowHalfOpen: true });
    let stalled = false;
    let gone = false;
    const r: Relayed = {
      client,
      upstream,
      stall: () => {
        if (stalled || gone) return;
        stalled = true;
        client.pause();
        upstream.pause();
        this.strike(n);
      },
      cut: (how) => {
        if (gone) return;
        gone = true;
        this.strike(n);
        for (const s of [client, upstream]) {
          if (how === "rst") s.resetAndDestroy();
          else {
            // A FIN, then whatever still arrives is read and dropped (unread bytes would make the
            // kernel answer with a reset instead), until the other side closes or 10 s passed.
            s.end();
            s.resume();
            setTimeout(() => s.destroy(), 10_000).unref();
          }
        }
      },
    };
    this.open.add(r);
    let closed = 0;
    const onClose = () => {
      if (++closed === 2) this.open.delete(r);
    };
    for (const s of [client, upstream]) {
      s.on("error", () => {});
      s.on("close", onClose);
    }
    // A side that is reset or fails takes the other with it (a reset passes through as a reset)
    // unless the relay is stalled: then both stay as they are, as a dead middlebox would leave them.
    const onError = (other: net.Socket) => () => {
      if (stalled || gone) return;
      if (!other.destroyed) other.resetAndDestroy();
    };
    client.on("error", onError(upstream));
    upstream.on("error", onError(client));

    const wire = (from: net.Socket, to: net.Socket, dir: "up" | "down") => {
      let passed = 0;
      let queued = 0;
      let endPending = false;
      let lastDue = 0;
      const pending = new Set<NodeJS.Timeout>();
      const forward = (d: Buffer) => {
        if (gone || to.destroyed) return;
        if (!to.write(d)) {
          from.pause();
          to.once("drain", () => !stalled && from.resume());
        }
      };
      from.on("data", (piece: Buffer) => {
        if (stalled || gone) return;
        let d = piece;
        const start = passed;
        passed += d.length;
        const applies = (m: { direction?: Direction }) =>
          (m.direction ?? "both") === "both" || m.direction === dir;
        if ((mode.kind === "stall" || mode.kind === "cut") && applies(mode)) {
          const after = mode.after ?? 0;
          if (passed > after) {
            const keep = Math.max(0, after - start);
            if (keep > 0) forward(d.subarray(0, keep));
            if (mode.kind === "stall") r.stall();
            else r.cut(mode.how ?? "rst");
            return;
          }
        }
        if (mode.kind === "flip" && mode.direction === dir && mode.offset >= start && mode.offset < passed) {
          d = Buffer.from(d);
          d[mode.offset - start] ^= 1 << (mode.bit ?? 0);
          this.strike(n);
        }
        if (mode.kind === "delay") {
          // Each piece leaves `ms` after it arrived, never before the one in front of it.
          const due = Math.max(Date.now() + mode.ms, lastDue);
          lastDue = due;
          queued += d.length;
          if (queued > DELAY_HIGH_WATER) from.pause();
          const t = setTimeout(
            () => {
              pending.delete(t);
              queued -= d.length;
              forward(d);
              if (queued <= DELAY_HIGH_WATER && !stalled) from.resume();
              if (pending.size === 0 && endPending) to.end();
            },
            Math.max(0, due - Date.now()),
          );
          pending.add(t);
          return;
        }
        forward(d);
      });
      from.on("end", () => {
        if (stalled || gone) return;
        if (pending.size > 0) endPending = true;
        else to.end();
      });
      from.on("close", () => {
        for (const t of pending) clearTimeout(t);
      });
    };
    wire(client, upstream, "up");
    wire(upstream, client, "down");
    upstream.once("connect", () => {
      if (!gone) client.resume();
    });
  }

  /** Stop listening and destroy every relayed connection. */
  close(): Promise<void> {
    for (const r of this.open) {
      r.client.destroy();
      r.upstream.destroy();
    }
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
