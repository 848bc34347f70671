/**
 * Independent monopiped1 peers over WebSocket for the close tests: the protocol from its building
 * blocks (either role), and a raw WebSocket server (no library) that behaves as the original Rust
 * server does towards a Close: it never answers one and keeps the connection open.
 */
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { _internal, type Monopiped1Keys } from "../../../src/protocol/monopiped1.js";

const { CounterAead, x25519PrivateKey, x25519PublicKey, x25519, sessionKeys } = _internal;

export const HELLO_LEN = 48;
export const FRAME_LEN = 1060;
const MAX_DATA = 1040;

export interface V1Stream {
  /** Seal data as 1060-byte frames (1040 bytes of data each). */
  seal(data: Buffer): Buffer[];
  /** Open one 1060-byte frame: its data. Throws when it does not authenticate. */
  open(frame: Buffer): Buffer;
}

/** One end of monopiped1: its hello, and the session once the peer's hello is in. */
export function v1Peer(
  role: "client" | "server",
  keys: Monopiped1Keys,
): { hello: Buffer; finish(peerHello: Buffer): V1Stream } {
  const priv = x25519PrivateKey(randomBytes(32));
  const hello = Buffer.alloc(HELLO_LEN);
  const own = role === "client" ? keys.clientKey : keys.serverKey;
  const peer = role === "client" ? keys.serverKey : keys.clientKey;
  new CounterAead(own).sealInto(x25519PublicKey(priv), hello, 0);
  return {
    hello,
    finish(peerHello: Buffer): V1Stream {
      const peerPublic = new CounterAead(peer).open(peerHello);
      if (!peerPublic) throw new Error("peer hello did not authenticate");
      const shared = x25519(priv, peerPublic);
      if (!shared) throw new Error("small-order peer key");
      const k = sessionKeys(shared);
      const sealer = new CounterAead(role === "client" ? k.clientToServer : k.serverToClient);
      const opener = new CounterAead(role === "client" ? k.serverToClient : k.clientToServer);
      return {
        seal(data: Buffer): Buffer[] {
          const out: Buffer[] = [];
          for (let off = 0; off < data.length; off += MAX_DATA) {
            const piece = data.subarray(off, off + MAX_DATA);
            const block = Buffer.alloc(MAX_DATA + 4);
            piece.copy(block);
            block.writeUInt32LE(piece.length, MAX_DATA);
            const frame = Buffer.alloc(FRAME_LEN);
            sealer.sealInto(block, frame, 0);
            out.push(frame);
          }
          return out;
        },
        open(frame: Buffer): Buffer {
          const block = opener.open(frame);
          if (!block) throw new Error("frame did not authenticate");
          return Buffer.from(block.subarray(0, block.readUInt32LE(MAX_DATA)));
        },
      };
    },
  };
}

/** A server-side WebSocket frame (unmasked). */
function wsFrame(opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const head =
    len < 126 ? Buffer.from([0x80 | opcode, len]) : Buffer.from([0x80 | opcode, 126, len >> 8, len & 0xff]);
  return Buffer.concat([head, payload]);
}

export interface MuteCloser {
  port: number;
  /** Close frames received (when, and their payloads), over all connections. */
  closes: { at: number; payload: Buffer }[];
  /** Plain bytes received from clients, over all connections. */
  received: () => number;
  close(): void;
}

/**
 * A monopiped1 WebSocket server that echoes what it receives and, like the original, never answers
 * a Close: after one it stays silent and keeps the TCP connection open until the client goes.
 */
export function startMuteCloser(keys: Monopiped1Keys): Promise<MuteCloser> {
  const sockets = new Set<net.Socket>();
  const closes: MuteCloser["closes"] = [];
  let received = 0;
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let closed = false;
    const peer = v1Peer("server", keys);
    let stream: V1Stream | undefined;
    const onMessage = (opcode: number, payload: Buffer) => {
      if (opcode === 8) {
        closes.push({ at: Date.now(), payload });
        closed = true; // stop reading, answer nothing, keep the connection open
        return;
      }
      if (opcode !== 2) throw new Error(`unexpected opcode ${opcode}`);
      if (!stream) {
        stream = peer.finish(payload);
        return;
      }
      const data = stream.open(payload);
      received += data.length;
      for (const f of stream.seal(data)) sock.write(wsFrame(2, f));
    };
    sock.on("data", (chunk: Buffer) => {
      if (closed) return;
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1");
        buf = buf.subarray(end + 4);
        const key = /^sec-websocket-key:\s*(\S+)/im.exec(head)?.[1] ?? "";
        const accept = createHash("sha1")
          .update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
          .digest("base64");
        sock.write(
          `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
        );
        sock.write(wsFrame(2, peer.hello));
        upgraded = true;
      }
      // Client frames: FIN + opcode, MASK + length (7 / 16 / 64 bits), 4-byte mask, payload.
      for (;;) {
        if (closed || buf.length < 2) return;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          off = 10;
        }
        if (buf.length < off + 4 + len) return;
        const mask = buf.subarray(off, off + 4);
        const payload = Buffer.from(buf.subarray(off + 4, off + 4 + len));
        for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
        const opcode = buf[0] & 0x0f;
        buf = buf.subarray(off + 4 + len);
        onMessage(opcode, payload);
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: (server.address() as net.AddressInfo).port,
        closes,
        received: () => received,
        close: () => {
          for (const s of sockets) s.destroy();
          server.close();
        },
      }),
    );
  });
}
