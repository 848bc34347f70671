/** WebSocket transport (placeholder until the WebSocket issue lands). */
import type { WsAddress } from "../address.js";
import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import type { Link, Listener } from "./link.js";

export async function listenWebSocket(_cfg: Config, _log: Logger, _onLink: (link: Link) => void): Promise<Listener> {
  throw new Error("WebSocket listener not implemented yet");
}

export async function dialWebSocket(addr: WsAddress, _cfg: Config): Promise<Link> {
  throw new Error(`cannot connect to ${addr.text}: WebSocket transport not implemented yet`);
}
