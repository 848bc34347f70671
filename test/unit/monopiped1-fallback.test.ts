/**
 * The same monopiped1 vectors and properties as monopiped1.test.ts, with frames through node:crypto
 * (the fallback used where sodium-native cannot load): both give the same wire bytes.
 */
import assert from "node:assert/strict";

process.env.MONOPIPED_NO_SODIUM = "1";
const { frameCryptoBackend } = await import("../../src/protocol/sodium.js");
assert.equal(frameCryptoBackend(), "node:crypto");
await import("./monopiped1.test.js");
await import("./monopiped1-speed.test.js");
