/**
 * The sans-IO contract every wire protocol implements. A protocol core sees bytes and returns bytes:
 * it never touches a socket or a timer, so it runs the same over TCP, a Unix socket, a WebSocket or
 * stdio, and can be fed test vectors and fuzzers directly.
 *
 * "Record" below means one unit the protocol puts on the wire after the handshake. Over a byte
 * stream records are simply concatenated; over WebSocket each record (and each handshake message)
 * travels as one binary message.
 */

export type ProtocolName = "monopiped2" | "monopiped1" | "spiped";
export type Role = "client" | "server";

/** What an opener produces from received bytes, in order. */
export type OpenEvent =
  /**
   * Authenticated application bytes. A record's plaintext may come as several events in a row
   * (where its ciphertext arrived in pieces); all but the last of them are marked partial.
   */
  | { type: "data"; data: Buffer; partial?: true }
  /** The peer's authenticated end of stream for this direction. */
  | { type: "end" }
  /** The peer aborted the connection and said why (e.g. its target refused the connection). */
  | { type: "abort"; reason: string };

export interface RecordSealer {
  /** Largest plaintext one record carries. */
  readonly maxPlaintext: number;
  /**
   * Seal plaintext of any length into records; each returned buffer is one record. `carried`, if
   * given, goes in front of `plain` (bytes held back from an earlier read), without the caller
   * joining the two first.
   */
  seal(plain: Buffer, carried?: Buffer): Buffer[];
  /** Records that end this direction. [] where the protocol has none (the transport's FIN/close is the end). */
  end(): Buffer[];
  /** Records that tell the peer this connection is being aborted. [] where the protocol cannot say it. */
  abort(reason: string): Buffer[];
}

export interface RecordOpener {
  /**
   * Feed bytes received from the peer. Throws ProtocolError on anything that does not authenticate.
   * `bytes` is only valid during the call (a socket may read into the same buffer next): an opener
   * copies whatever it keeps, and no event refers to it.
   */
  push(bytes: Buffer): OpenEvent[];
  /** Bytes held of a record not yet complete (0 exactly at a record boundary). */
  readonly buffered: number;
}

export interface Session {
  readonly protocol: ProtocolName;
  readonly sealer: RecordSealer;
  readonly opener: RecordOpener;
  /**
   * True when end of stream travels as an authenticated record, so a transport close before it is a
   * truncation. False for the compatibility protocols, whose end of stream is the transport's own
   * (TCP FIN, WebSocket close) and cannot be told apart from a cut.
   */
  readonly authenticatedEnd: boolean;
  /**
   * Length every record has on the wire, for protocols with fixed-size records (checked against
   * WebSocket message sizes); undefined when records vary.
   */
  readonly fixedRecordSize?: number;
}

export interface Handshake {
  /** Messages to send as soon as the link is up, before anything is received. */
  start(): Buffer[];
  /**
   * Feed bytes received from the peer. Returns the messages to send now. Throws ProtocolError when
   * the peer does not authenticate. Once `session` is set, bytes past the handshake are kept for
   * `takeRest()`.
   */
  receive(bytes: Buffer): Buffer[];
  /** Set once the handshake is complete and the peer has authenticated. */
  readonly session: Session | null;
  /** Bytes received after the handshake's last message: feed them to `session.opener`. */
  takeRest(): Buffer;
  /** Bytes held of a handshake message not yet complete. */
  readonly buffered: number;
  /** A hint for the log when the handshake times out, where the protocol can guess why. */
  stallHint?(): string | undefined;
}
