/**
 * libsodium through the `sodium-native` package (prebuilt binaries inside the npm package), for the
 * record layers and monopiped2's handshake (X25519 on raw keys, BLAKE2b and SHA-256 one-shot): it encrypts and authenticates into a caller's buffer, so a record costs no object
 * and no allocation, where node:crypto makes a cipher object and a new output buffer per call
 * (~4-6 µs of a 1 KiB frame's ~6-8 µs; for monopiped2, a new 64 KiB buffer per record, which on
 * Node 24 drives full garbage collections; docs/BENCHMARKS.md).
 *
 * Loaded on first use. When it cannot be loaded (a platform without a prebuilt binary) the callers
 * fall back to node:crypto with the same wire bytes; MONOPIPED_NO_SODIUM=1 forces that fallback (for
 * the tests of the fallback and for A/B measurements).
 */
import { createRequire } from "node:module";

/** The part of sodium-native's API used here (its own names and argument order). */
export interface Sodium {
  /** ChaCha20-Poly1305 (IETF, 96-bit nonce), as Noise's ChaChaPoly: `c` and `m` may be the same memory. */
  crypto_aead_chacha20poly1305_ietf_encrypt_detached(
    c: Uint8Array,
    mac: Uint8Array,
    m: Uint8Array,
    ad: Uint8Array | null,
    nsec: null,
    npub: Uint8Array,
    k: Uint8Array,
  ): number;
  /** Throws when the tag does not authenticate. */
  crypto_aead_chacha20poly1305_ietf_decrypt_detached(
    m: Uint8Array,
    nsec: null,
    c: Uint8Array,
    mac: Uint8Array,
    ad: Uint8Array | null,
    npub: Uint8Array,
    k: Uint8Array,
  ): void;
  crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
    c: Uint8Array,
    mac: Uint8Array,
    m: Uint8Array,
    ad: Uint8Array | null,
    nsec: null,
    npub: Uint8Array,
    k: Uint8Array,
  ): number;
  /** Throws when the tag does not authenticate; `m` is then left untouched. */
  crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
    m: Uint8Array,
    nsec: null,
    c: Uint8Array,
    mac: Uint8Array,
    ad: Uint8Array | null,
    npub: Uint8Array,
    k: Uint8Array,
  ): void;
  /** X25519 public key of secret `n` into `q` (32 bytes each). */
  crypto_scalarmult_base(q: Uint8Array, n: Uint8Array): void;
  /** X25519 of secret `n` and public key `p` into `q`; throws for a small-order `p` or an all-zero result. */
  crypto_scalarmult(q: Uint8Array, n: Uint8Array, p: Uint8Array): void;
  /** Unkeyed BLAKE2b of `input` with `output.length` bytes of output (64: BLAKE2b-512). */
  crypto_generichash(output: Uint8Array, input: Uint8Array, key?: Uint8Array): void;
  /** SHA-256 of `input` into `out` (32 bytes). */
  crypto_hash_sha256(out: Uint8Array, input: Uint8Array): void;
}

let loaded: Sodium | null | undefined;

/** sodium-native, or null when it cannot be loaded here (or MONOPIPED_NO_SODIUM is set). */
export function sodium(): Sodium | null {
  if (loaded === undefined) {
    loaded = null;
    if (!process.env.MONOPIPED_NO_SODIUM) {
      try {
        loaded = createRequire(import.meta.url)("sodium-native") as Sodium;
      } catch {
        loaded = null;
      }
    }
  }
  return loaded;
}

/** Which implementation the compatibility protocols' frames use in this process (for logs and the bench). */
export function frameCryptoBackend(): "libsodium" | "node:crypto" {
  return sodium() ? "libsodium" : "node:crypto";
}
