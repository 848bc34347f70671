/**
 * A Link is a two-way byte channel as the tunnel sees it: the plain application socket on one side,
 * the encrypted leg (TCP or WebSocket) on the other. Transports adapt their sockets to it so the
 * tunnel and the pump never care which one they hold.
 *
 * Events:
 *   'data'  (chunk: Buffer)  bytes from the peer; for message-framed links one chunk = one message
 *   'drain' ()               the send buffer emptied after send() returned false
 *   'end'   ()               the peer finished sending cleanly (TCP FIN, WebSocket close 1000)
 *   'close' (error?: Error)  the link is gone; an error says why when it did not end cleanly
 */
import type { EventEmitter } from "node:events";

export interface Link extends EventEmitter {
  /** Who is on the other end, for logs. */
  readonly peer: string;
  /** True when every 'data' chunk is one whole transport message (WebSocket). */
  readonly messageFramed: boolean;
  /** Send buffers (each one message on a message-framed link). False: wait for 'drain'. */
  send(chunks: Buffer[]): boolean;
  /** Stop / restart 'data' events (backpressure towards the peer). */
  pause(): void;
  resume(): void;
  /** Finish our sending direction cleanly once everything queued is out (TCP FIN, WebSocket close). */
  endWrite(): void;
  /** Abort now: TCP sends RST, WebSocket drops the connection without a closing handshake. */
  reset(): void;
  /** True once the link has emitted 'close'. */
  readonly closed: boolean;
}

/** A bound listener that hands each new connection over as a Link (paused until the tunnel serves it). */
export interface Listener {
  /** The bound address, e.g. 127.0.0.1:41234 (useful with port 0). */
  readonly address: string;
  /** Stop accepting; open links are not touched. */
  close(): void;
}
