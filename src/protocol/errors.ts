/**
 * The one error type the protocol cores throw. Anything a peer (or an attacker on the path) can send
 * ends in a ProtocolError, never in a TypeError or an OpenSSL exception, so the tunnel can log a
 * precise reason and drop that one connection.
 */
export type ProtocolErrorCode =
  | "bad-handshake" // handshake message did not authenticate: wrong key or not a peer of ours
  | "key-confirmation" // the first message authenticated but the key confirmation did not (a replayed or tampered handshake)
  | "bad-record" // a record failed authentication or is malformed
  | "bad-framing" // a WebSocket message did not hold exactly whole records
  | "after-end" // data after an authenticated end of stream
  | "nonce-limit" // the per-direction message counter reached its limit
  | "peer-abort"; // the peer aborted the stream and said why

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
}
