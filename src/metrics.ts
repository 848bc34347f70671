/**
 * --metrics ADDR: Prometheus counters for the tunnel's connections (a TunnelObserver), served as
 * text at http://ADDR/metrics, and GET /healthz (200 while accepting, 503 while draining) for a load
 * balancer's health checks. Off by default; the listener binds only where --metrics says.
 *
 * With --workers N, each worker counts in its own registry and the primary serves one view of all
 * of them (prom-client's AggregatorRegistry over node:cluster: counters and gauges summed).
 * Metric names: see docs/OPERATIONS.md.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { AggregatorRegistry, Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { formatHostPort, type SocketAddress } from "./address.js";
import type { Logger } from "./log.js";
import type { ConnectionLabels, HandshakeFailure, Outcome, TunnelObserver } from "./observer.js";
import type { ProtocolName } from "./protocol/types.js";

const HANDSHAKE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const CONNECTION_BUCKETS = [0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600];

/** The tunnel's counters, in their own registry (plus Node's process metrics). */
export class Metrics implements TunnelObserver {
  readonly registry = new Registry();
  private readonly open: Gauge<"role" | "transport">;
  private readonly opened: Counter<"role" | "transport">;
  private readonly closed: Counter<"role" | "transport" | "protocol" | "outcome">;
  private readonly failed: Counter<"role" | "transport" | "reason">;
  private readonly bytes: Counter<"role" | "transport" | "direction">;
  private readonly handshakeSeconds: Histogram<"role" | "transport" | "protocol">;
  private readonly connectionSeconds: Histogram<"role" | "transport" | "outcome">;
  private readonly waitingGauge: Gauge;
  private readonly pendingGauge: Gauge;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.open = new Gauge({
      name: "monopiped_connections_open",
      help: "Connections accepted and not yet closed (including those in the handshake or waiting for a slot)",
      labelNames: ["role", "transport"],
      registers,
    });
    this.opened = new Counter({
      name: "monopiped_connections_opened_total",
      help: "Connections accepted",
      labelNames: ["role", "transport"],
      registers,
    });
    this.closed = new Counter({
      name: "monopiped_connections_closed_total",
      help: "Connections closed, by how they ended (clean, cut, aborted, refused-by-target, handshake-failed, idle-timeout)",
      labelNames: ["role", "transport", "protocol", "outcome"],
      registers,
    });
    this.failed = new Counter({
      name: "monopiped_handshake_failures_total",
      help: "Handshakes that failed, by reason (wrong-key, timeout, malformed, replay, limit)",
      labelNames: ["role", "transport", "reason"],
      registers,
    });
    this.bytes = new Counter({
      name: "monopiped_bytes_total",
      help: "Plain bytes of closed connections: sent = application to tunnel, received = tunnel to application",
      labelNames: ["role", "transport", "direction"],
      registers,
    });
    this.handshakeSeconds = new Histogram({
      name: "monopiped_handshake_duration_seconds",
      help: "Time from accepting a connection to a completed handshake",
      labelNames: ["role", "transport", "protocol"],
      buckets: HANDSHAKE_BUCKETS,
      registers,
    });
    this.connectionSeconds = new Histogram({
      name: "monopiped_connection_duration_seconds",
      help: "Lifetime of closed connections",
      labelNames: ["role", "transport", "outcome"],
      buckets: CONNECTION_BUCKETS,
      registers,
    });
    this.waitingGauge = new Gauge({
      name: "monopiped_connections_waiting",
      help: "Authenticated connections waiting for a slot (-n)",
      registers,
    });
    this.pendingGauge = new Gauge({
      name: "monopiped_connections_pending",
      help: "Connections not yet authenticated (capped by --max-pending)",
      registers,
    });
  }

  connectionOpened(l: ConnectionLabels): void {
    this.open.inc(l);
    this.opened.inc(l);
  }

  handshakeDone(l: ConnectionLabels, protocol: ProtocolName, seconds: number): void {
    this.handshakeSeconds.observe({ ...l, protocol }, seconds);
  }

  handshakeFailed(l: ConnectionLabels, reason: HandshakeFailure): void {
    this.failed.inc({ ...l, reason });
  }

  connectionClosed(
    l: ConnectionLabels,
    protocol: ProtocolName | undefined,
    outcome: Outcome,
    seconds: number,
    sent: number,
    received: number,
  ): void {
    this.open.dec(l);
    this.closed.inc({ ...l, protocol: protocol ?? "none", outcome });
    this.connectionSeconds.observe({ ...l, outcome }, seconds);
    if (sent > 0) this.bytes.inc({ ...l, direction: "sent" }, sent);
    if (received > 0) this.bytes.inc({ ...l, direction: "received" }, received);
  }

  waiting(count: number): void {
    this.waitingGauge.set(count);
  }

  pending(count: number): void {
    this.pendingGauge.set(count);
  }

  /** In a cluster worker: answer the primary's requests for this registry's values. */
  answerClusterScrapes(): void {
    AggregatorRegistry.setRegistries([this.registry]);
    new AggregatorRegistry(); // adds the worker's message listener (idempotent)
  }
}

/** Counters of the process itself, not of connections: key reloads, draining, workers. */
export class ProcessMetrics {
  readonly registry = new Registry();
  readonly keys: Gauge;
  readonly keyReloads: Counter<"result">;
  readonly draining: Gauge;
  readonly workers?: Gauge;

  constructor(withWorkers = false) {
    const registers = [this.registry];
    this.keys = new Gauge({ name: "monopiped_keys", help: "Keys in force (one per -k)", registers });
    this.keyReloads = new Counter({
      name: "monopiped_key_reloads_total",
      help: "Key file re-reads on SIGHUP, by result (ok, failed: the old keys stay in force)",
      labelNames: ["result"],
      registers,
    });
    this.draining = new Gauge({
      name: "monopiped_draining",
      help: "1 once a stop began (SIGTERM/SIGINT): no new connections, /healthz answers 503",
      registers,
    });
    if (withWorkers)
      this.workers = new Gauge({ name: "monopiped_workers", help: "Worker processes running", registers });
  }
}

export interface MetricsServer {
  address: string;
  close(): Promise<void>;
}

/**
 * Serve GET /metrics (what `scrape` returns) and GET /healthz (200 "ok", or 503 "draining" once
 * `draining()` is true) on `at`. Everything else: 404 (405 for other methods).
 */
export async function serveMetrics(
  at: SocketAddress,
  scrape: () => Promise<string>,
  draining: () => boolean,
  log: Logger,
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const send = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (req.method !== "GET" && req.method !== "HEAD") return send(405, "method not allowed\n");
    if (path === "/healthz") return draining() ? send(503, "draining\n") : send(200, "ok\n");
    if (path !== "/metrics") return send(404, "not found: try /metrics or /healthz\n");
    scrape().then(
      (text) => send(200, text, Registry.PROMETHEUS_CONTENT_TYPE),
      (err) => {
        log.warn({ err: (err as Error).message }, "metrics: could not collect");
        send(500, `could not collect metrics: ${(err as Error).message}\n`);
      },
    );
  });
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        new Error(`--metrics ${at.text}: ${err.code === "EADDRINUSE" ? "address in use" : err.message}`),
      ),
    );
    if (at.kind === "unix") server.listen(at.path, () => resolve());
    else server.listen(at.port, at.host, () => resolve());
  });
  server.on("error", (err) => log.warn({ err: err.message }, "metrics listener error"));
  const a = server.address();
  const address =
    typeof a === "string" || a === null ? at.text : formatHostPort((a as AddressInfo).address, a.port);
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The primary's scrape with --workers: every worker's registry aggregated, then its own. */
export function clusterScrape(own: Registry): () => Promise<string> {
  const aggregator = new AggregatorRegistry();
  return async () => `${await aggregator.clusterMetrics()}\n${await own.metrics()}`;
}

/** A single process's scrape. */
export function localScrape(...registries: Registry[]): () => Promise<string> {
  const merged = Registry.merge(registries);
  return () => merged.metrics();
}
