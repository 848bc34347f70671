/**
 * X25519 (RFC 7748) with raw 32-byte keys, on OpenSSL through node:crypto. Raw keys go in and out
 * of OpenSSL as JWK: measured here on Node 20, that is several times cheaper than wrapping them in
 * PKCS#8/SPKI DER (a private key ~50 µs instead of ~650, a public key ~10 µs instead of ~100), and
 * key set-up is most of a handshake's cost.
 *
 * Fresh key pairs are made from randomBytes rather than generateKeyPairSync: exporting a
 * generateKeyPairSync key as JWK can deadlock Node 20 under GC pressure (a mutex held while V8
 * allocates), and the random-bytes route is as fast.
 */
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  type KeyObject,
  randomFillSync,
} from "node:crypto";

export interface KeyPair {
  privateKey: KeyObject;
  /** Raw 32 bytes, as on the wire. */
  publicKey: Buffer;
}

/** PKCS#8 DER header of an X25519 private key; the 32 secret bytes follow it (RFC 8410). */
const PKCS8_X25519_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");

function privateKeyFromJwk(secret: Buffer): KeyObject {
  // Node 20 lets OpenSSL compute the public part itself; JWK import only wants the field present.
  return createPrivateKey({
    key: { kty: "OKP", crv: "X25519", d: secret.toString("base64url"), x: "" },
    format: "jwk",
  });
}

function privateKeyFromDer(secret: Buffer): KeyObject {
  return createPrivateKey({
    key: Buffer.concat([PKCS8_X25519_PREFIX, secret]),
    format: "der",
    type: "pkcs8",
  });
}

/**
 * Node 22+ checks a JWK's public part against its secret, so the JWK shortcut works on Node 20
 * only; there DER costs ~650 µs a key, while on Node 24 DER is as cheap as JWK (~50 µs). Probe
 * once which one this Node takes.
 */
export const privateKeyFromSecret: (secret: Buffer) => KeyObject = (() => {
  try {
    privateKeyFromJwk(Buffer.alloc(32, 1));
    return privateKeyFromJwk;
  } catch {
    return privateKeyFromDer;
  }
})();

export function publicKeyBytes(privateKey: KeyObject): Buffer {
  return Buffer.from(createPublicKey(privateKey).export({ format: "jwk" }).x as string, "base64url");
}

/**
 * The public half of a key pair made here: the private key's own JWK export carries it, one call
 * and no second KeyObject (its `d` is the secret, which the JWK import already had as a string).
 */
function ownPublicKeyBytes(privateKey: KeyObject): Buffer {
  return Buffer.from(privateKey.export({ format: "jwk" }).x as string, "base64url");
}

export function keyPairFromSecret(secret: Buffer): KeyPair {
  const privateKey = privateKeyFromSecret(secret);
  return { privateKey, publicKey: ownPublicKeyBytes(privateKey) };
}

/**
 * Fresh secrets come from one random fill per 64 keys: a `randomBytes(32)` per key pair cost
 * 9-14 µs (an OpenSSL call and a new buffer each). Each secret's bytes are zeroed once imported.
 */
const SECRETS_PER_FILL = 64;
const secretPool = Buffer.alloc(32 * SECRETS_PER_FILL);
let secretOffset = secretPool.length;

export function generateKeyPair(): KeyPair {
  if (secretOffset === secretPool.length) {
    randomFillSync(secretPool);
    secretOffset = 0;
  }
  const secret = secretPool.subarray(secretOffset, secretOffset + 32);
  secretOffset += 32;
  try {
    return keyPairFromSecret(secret);
  } finally {
    secret.fill(0);
  }
}

/**
 * One key pair made ahead of time, so that a handshake does not wait for it: the tunnel asks for
 * it when it has nothing else to do (after a handshake, and at start-up), the next handshake's
 * ephemeral takes it. Used once, like any other fresh key pair.
 */
let spare: KeyPair | null = null;

/** Make the spare key pair now, if there is none. */
export function prepareSpareKeyPair(): void {
  spare ??= generateKeyPair();
}

/** A fresh key pair: the spare made ahead of time if there is one, else a new one. */
export function freshKeyPair(): KeyPair {
  const pair = spare;
  if (!pair) return generateKeyPair();
  spare = null;
  return pair;
}

/** X25519 with the peer's raw public key; null for a small-order peer key (all-zero result). */
export function sharedSecret(privateKey: KeyObject, peerPublic: Buffer): Buffer | null {
  let shared: Buffer;
  try {
    const publicKey = createPublicKey({
      key: { kty: "OKP", crv: "X25519", x: peerPublic.toString("base64url") },
      format: "jwk",
    });
    shared = diffieHellman({ privateKey, publicKey });
  } catch {
    return null; // OpenSSL refuses an all-zero result (and a malformed key) itself
  }
  // Some X25519 implementations return the zeros instead; check in case the linked OpenSSL does.
  // OR of every byte, no early exit: the time taken does not depend on where a non-zero byte is.
  let acc = 0;
  for (let i = 0; i < shared.length; i++) acc |= shared[i];
  return acc !== 0 ? shared : null;
}
