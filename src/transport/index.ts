/**
 * Picks the transport for each leg from the configuration: the listener (TCP/Unix, or WebSocket
 * with -w) and the outgoing connection (TCP/Unix, or ws:// / wss:// targets).
 */
import type { SocketAddress } from "../address.js";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import type { PendingSet } from "../pending.js";
import type { Link, Listener } from "./link.js";
import {
  acceptedLink,
  boundAddress,
  dialSocket,
  listenSocket,
  logAcceptErrors,
  SocketLink,
  tuneSocket,
} from "./tcp.js";

/** The WebSocket transport (and the `ws` package) is loaded only by an end that uses it, once. */
type WsTransport = typeof import("./ws.js");
let wsLoaded: Promise<WsTransport> | null = null;
const wsTransport = (): Promise<WsTransport> => {
  wsLoaded ??= import("./ws.js");
  return wsLoaded;
};

export async function listenLinks(
  cfg: Config,
  log: Logger,
  onLink: (link: Link) => void,
  pending: PendingSet,
): Promise<Listener> {
  const at = cfg.listen;
  if (at.kind === "stdio") throw new Error("standard input/output is not a listener");
  if (cfg.wsListen) return (await wsTransport()).listenWebSocket(cfg, at, log, onLink, pending);
  const server = await listenSocket(
    at,
    (socket) => {
      // An inherited descriptor may be TCP or Unix whatever -l says: tune what is TCP.
      if (socket.remoteAddress) tuneSocket(socket, { keepAlive: cfg.keepAlive });
      onLink(acceptedLink(socket));
    },
    cfg.listenFd,
  );
  logAcceptErrors(server, log, "listener");
  return {
    address: boundAddress(server, at),
    close: () => server.close(),
  };
}

/** Connect to a plain or encrypted peer given by a socket address. */
export async function dialSocketLink(addr: SocketAddress, cfg: Config): Promise<Link> {
  const socket = await dialSocket(addr, { keepAlive: cfg.keepAlive, bindHost: cfg.bindHost }, cfg.timeoutMs);
  socket.pause();
  return new SocketLink(socket, addr.text);
}

/** The encrypted leg of an encrypt-mode (client) connection. */
export function dialEncrypted(cfg: Config): Promise<Link> {
  const target = cfg.target;
  if (target.kind === "ws") return wsTransport().then((ws) => ws.dialWebSocket(target, cfg));
  return dialSocketLink(target, cfg);
}
