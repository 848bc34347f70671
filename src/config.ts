/** The one validated configuration the CLI builds from flags; everything else reads only this. */
import type { SocketAddress, StdioAddress, WsAddress } from "./address.js";
import type { LogFormat, LogLevel } from "./log.js";
import type { Keys, ProtocolChoice } from "./protocol/index.js";
import type { SpipedOptions } from "./protocol/spiped.js";

export type Mode = "encrypt" | "decrypt";

export interface WsServerOptions {
  /** Only this request path is served (others get 404); undefined = any path. */
  path?: string;
  /** Take the client address from X-Forwarded-For / Forwarded for logs. */
  trustProxy: boolean;
}

export interface WsClientOptions {
  caFile?: string;
  insecure: boolean;
  sni?: string;
  hostHeader?: string;
  headers: Record<string, string>;
  proxy?: string;
}

export interface Config {
  mode: Mode;
  /** Where plain (-e) or encrypted (-d) connections are accepted; stdio for `monopiped pipe`. */
  listen: SocketAddress | StdioAddress;
  target: SocketAddress | WsAddress;
  /** -d -w: the listener accepts WebSocket upgrades. */
  wsListen: boolean;
  protocol: ProtocolChoice;
  /**
   * Derived keys, one entry per -k key file: a client uses the first, a server accepts any of them.
   * Replaced as a whole when the key files are re-read (SIGHUP); each handshake reads it afresh.
   */
  keys: readonly Keys[];
  /** -d --proxy-protocol: each connection starts with a PROXY v1/v2 header from a trusted balancer. */
  proxyProtocol: boolean;
  /** Socket activation: serve on this inherited listening file descriptor instead of binding. */
  listenFd?: number;
  /** --protocol spiped: -f (no forward secrecy) and -g (require it from the peer). */
  spiped?: SpipedOptions;
  /** -n: authenticated connections served at once (0 = no limit); more wait for a slot. */
  maxConns: number;
  /** -o: the whole handshake (and each outgoing connect) must finish within it. */
  timeoutMs: number;
  /** --max-pending: connections not yet authenticated held at once; the oldest is dropped for a new one. */
  maxPending: number;
  /** --hello-timeout: the first handshake message (or the PROXY header) must arrive within it. */
  helloTimeoutMs: number;
  /** --queue-timeout: how long a connection may wait for a -n slot. */
  queueTimeoutMs: number;
  /** --idle-timeout: no byte either way for this long cuts the connection (0 = off). */
  idleTimeoutMs: number;
  /** --stall-timeout: data queued towards a link that makes no progress for this long cuts it (0 = off). */
  stallTimeoutMs: number;
  graceMs: number;
  keepAlive: boolean;
  bindHost?: string;
  pingIntervalMs: number;
  wsServer: WsServerOptions;
  wsClient: WsClientOptions;
  logLevel: LogLevel;
  logFormat: LogFormat;
}
