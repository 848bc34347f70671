/**
 * A hand-driven monopiped1 client for malformed-input tests: it does the handshake from the
 * protocol's building blocks and then lets the test seal frames with any length field.
 */
import { randomBytes } from "node:crypto";
import type net from "node:net";
import { _internal, type Monopiped1Keys } from "../../src/protocol/monopiped1.js";

const { CounterAead, x25519PrivateKey, x25519PublicKey, x25519, sessionKeys } = _internal;

export interface V1Session {
  /** Seal one 1060-byte frame whose length field says `n` (the data is zero-padded to 1040). */
  frame(data: Buffer, n?: number): Buffer;
}

/** Hello to send first, and a function that turns the server's hello into a client session. */
export function v1Client(keys: Monopiped1Keys): { hello: Buffer; finish(serverHello: Buffer): V1Session } {
  const priv = x25519PrivateKey(randomBytes(32));
  const hello = Buffer.alloc(48);
  new CounterAead(keys.clientKey).sealInto(x25519PublicKey(priv), hello, 0);
  return {
    hello,
    finish(serverHello: Buffer): V1Session {
      const serverPublic = new CounterAead(keys.serverKey).open(serverHello);
      if (!serverPublic) throw new Error("server hello did not authenticate");
      const shared = x25519(priv, serverPublic);
      if (!shared) throw new Error("small-order server key");
      const aead = new CounterAead(sessionKeys(shared).clientToServer);
      return {
        frame(data: Buffer, n = data.length): Buffer {
          const block = Buffer.alloc(1044);
          data.copy(block);
          block.writeUInt32LE(n, 1040);
          const out = Buffer.alloc(1060);
          aead.sealInto(block, out, 0);
          return out;
        },
      };
    },
  };
}

/** Reads exactly n bytes from a socket. */
export function readExactly(sock: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= n) {
        sock.removeListener("data", onData);
        sock.pause();
        const all = Buffer.concat(chunks);
        if (all.length > n) sock.unshift(all.subarray(n));
        resolve(all.subarray(0, n));
      }
    };
    sock.on("data", onData);
    sock.once("end", () => reject(new Error(`connection ended after ${got} of ${n} bytes`)));
    sock.resume();
  });
}
