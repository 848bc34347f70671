/**
 * The Noise and monopiped2 vectors and the X25519 tests with the handshake's primitives through
 * node:crypto (the fallback used where sodium-native cannot load): both give the same bytes.
 */
import assert from "node:assert/strict";

process.env.MONOPIPED_NO_SODIUM = "1";
const { frameCryptoBackend } = await import("../../src/protocol/sodium.js");
assert.equal(frameCryptoBackend(), "node:crypto");
await import("./noise.test.js");
await import("./monopiped2.test.js");
await import("./x25519.test.js");
