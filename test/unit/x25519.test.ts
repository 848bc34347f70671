import assert from "node:assert/strict";
import crypto from "node:crypto";
import { syncBuiltinESMExports } from "node:module";
import { describe, it } from "node:test";
import {
  freshKeyPair,
  generateKeyPair,
  type KeyPair,
  prepareSpareKeyPair,
  sharedSecret,
} from "../../src/protocol/x25519.js";

/** How many private keys `fn` imports into OpenSSL (one per key pair made). */
function countImports(fn: () => void): number {
  let count = 0;
  const original = crypto.createPrivateKey;
  crypto.createPrivateKey = ((...args: unknown[]) => {
    count++;
    return (original as (...a: unknown[]) => unknown)(...args);
  }) as typeof crypto.createPrivateKey;
  syncBuiltinESMExports();
  try {
    fn();
  } finally {
    crypto.createPrivateKey = original;
    syncBuiltinESMExports();
  }
  return count;
}

describe("X25519 key pairs", () => {
  it("a spare made ahead of time is handed out once, then fresh ones are made again", () => {
    const made = countImports(() => {
      prepareSpareKeyPair();
      prepareSpareKeyPair(); // still one spare
    });
    assert.equal(made, 1);
    let first: KeyPair | undefined;
    assert.equal(
      countImports(() => {
        first = freshKeyPair();
      }),
      0,
      "the spare is taken: no key made",
    );
    let second: KeyPair | undefined;
    assert.equal(
      countImports(() => {
        second = freshKeyPair();
      }),
      1,
      "no spare left: a new key",
    );
    assert.notDeepEqual(first?.publicKey, second?.publicKey);
  });

  it("key pairs from the pooled secrets agree on a shared secret, and each is new", () => {
    const seen = new Set<string>();
    // More than two random fills' worth (64 secrets per fill).
    for (let i = 0; i < 150; i++) {
      const a = generateKeyPair();
      const b = freshKeyPair();
      seen.add(a.publicKey.toString("hex"));
      seen.add(b.publicKey.toString("hex"));
      const ab = sharedSecret(a.privateKey, b.publicKey);
      const ba = sharedSecret(b.privateKey, a.publicKey);
      assert.ok(ab?.equals(ba as Buffer));
    }
    assert.equal(seen.size, 300, "no key pair repeats");
  });
});
