/**
 * X25519 (RFC 7748) with raw 32-byte keys. Where libsodium loads (sodium.ts), key pairs and shared
 * secrets are computed on the raw bytes (crypto_scalarmult_base / crypto_scalarmult): no key object,
 * no key import, ~14 µs for a key pair and ~34 µs for a shared secret on this machine against
 * ~37 and ~43 µs through OpenSSL. Otherwise (and for monopiped1's KeyObject API below) through
 * node:crypto: raw keys go in and out of OpenSSL as JWK, which measured on Node 20 is several
 * times cheaper than wrapping them in PKCS#8/SPKI DER (a private key ~50 µs instead of ~650, a
 * public key ~10 µs instead of ~100).
 *
 * Fresh key pairs are made from random bytes rather than generateKeyPairSync: exporting a
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
import { sodium } from "./sodium.js";

export interface KeyPair {
  /**
   * The private key: its raw 32 bytes where libsodium computes X25519 (zeroed by the handshake
   * once used), an OpenSSL key object otherwise.
   */
  privateKey: Buffer | KeyObject;
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

let keyPairsMade = 0;

/** How many key pairs this process has made so far (tests count the ones a handshake makes). */
export function keyPairCount(): number {
  return keyPairsMade;
}

/** The key pair of a 32-byte secret (which the caller may overwrite afterwards). */
export function keyPairFromSecret(secret: Buffer): KeyPair {
  keyPairsMade++;
  const na = sodium();
  if (na) {
    // One allocation for both halves; the scalar is clamped by libsodium itself, as by OpenSSL.
    const both = Buffer.allocUnsafeSlow(64);
    const privateKey = both.subarray(0, 32);
    const publicKey = both.subarray(32, 64);
    secret.copy(privateKey);
    na.crypto_scalarmult_base(publicKey, privateKey);
    return { privateKey, publicKey };
  }
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
export function sharedSecret(privateKey: Buffer | KeyObject, peerPublic: Buffer): Buffer | null {
  if (Buffer.isBuffer(privateKey)) {
    const na = sodium();
    if (na) {
      if (peerPublic.length !== 32) return null;
      const shared = Buffer.allocUnsafe(32);
      try {
        na.crypto_scalarmult(shared, privateKey, peerPublic);
      } catch {
        return null; // libsodium refuses a small-order key and an all-zero result itself
      }
      return nonZero(shared);
    }
    // A raw secret without libsodium (not made here: keyPairFromSecret makes key objects then).
    return sharedSecret(privateKeyFromSecret(privateKey), peerPublic);
  }
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
  return nonZero(shared);
}

/**
 * Some X25519 implementations return the zeros instead of refusing; checked in case the linked
 * library does. OR of every byte, no early exit: the time taken does not depend on where a
 * non-zero byte is.
 */
function nonZero(shared: Buffer): Buffer | null {
  let acc = 0;
  for (let i = 0; i < shared.length; i++) acc |= shared[i];
  return acc !== 0 ? shared : null;
}
