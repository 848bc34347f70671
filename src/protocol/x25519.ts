/**
 * X25519 (RFC 7748) with raw 32-byte keys, on OpenSSL through node:crypto. OpenSSL takes only
 * DER or JWK key objects, so raw bytes are wrapped in the fixed PKCS#8 / SPKI prefixes for the
 * X25519 OID (1.3.101.110).
 */
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";

const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");
const SPKI_X25519 = Buffer.from("302a300506032b656e032100", "hex");

export interface KeyPair {
  privateKey: KeyObject;
  /** Raw 32 bytes, as on the wire. */
  publicKey: Buffer;
}

export function privateKeyFromSecret(secret: Buffer): KeyObject {
  const der = Buffer.concat([PKCS8_X25519, secret]);
  try {
    return createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  } finally {
    der.fill(0);
  }
}

export function publicKeyBytes(privateKey: KeyObject): Buffer {
  return createPublicKey(privateKey).export({ format: "der", type: "spki" }).subarray(SPKI_X25519.length);
}

export function keyPairFromSecret(secret: Buffer): KeyPair {
  const privateKey = privateKeyFromSecret(secret);
  return { privateKey, publicKey: publicKeyBytes(privateKey) };
}

export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  return {
    privateKey,
    publicKey: publicKey.export({ format: "der", type: "spki" }).subarray(SPKI_X25519.length),
  };
}

/** X25519 with the peer's raw public key; null for a small-order peer key (all-zero result). */
export function sharedSecret(privateKey: KeyObject, peerPublic: Buffer): Buffer | null {
  let shared: Buffer;
  try {
    const publicKey = createPublicKey({
      key: Buffer.concat([SPKI_X25519, peerPublic]),
      format: "der",
      type: "spki",
    });
    shared = diffieHellman({ privateKey, publicKey });
  } catch {
    return null; // OpenSSL refuses an all-zero result itself
  }
  // Some X25519 implementations return the zeros instead; check in case the linked OpenSSL does.
  return shared.some((b) => b !== 0) ? shared : null;
}
