import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { frameCryptoBackend } from "../../src/protocol/sodium.js";
import {
  freshKeyPair,
  generateKeyPair,
  type KeyPair,
  keyPairCount,
  keyPairFromSecret,
  prepareSpareKeyPair,
  sharedSecret,
} from "../../src/protocol/x25519.js";

/** How many key pairs `fn` makes. */
function countImports(fn: () => void): number {
  const before = keyPairCount();
  fn();
  return keyPairCount() - before;
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

describe("X25519 on raw keys (libsodium where it loads, node:crypto otherwise)", () => {
  const hex = (s: string) => Buffer.from(s, "hex");
  // RFC 7748, section 6.1.
  const alice = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
  const alicePub = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
  const bob = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
  const bobPub = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
  const shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

  it("gives RFC 7748's public keys and shared secret", () => {
    const secret = hex(alice);
    const a = keyPairFromSecret(secret);
    secret.fill(0); // the key pair keeps its own copy
    const b = keyPairFromSecret(hex(bob));
    assert.equal(a.publicKey.toString("hex"), alicePub);
    assert.equal(b.publicKey.toString("hex"), bobPub);
    assert.equal(sharedSecret(a.privateKey, hex(bobPub))?.toString("hex"), shared);
    assert.equal(sharedSecret(b.privateKey, hex(alicePub))?.toString("hex"), shared);
  });

  it("refuses small-order peer keys (all-zero result)", () => {
    const a = keyPairFromSecret(hex(alice));
    const smallOrder = [
      Buffer.alloc(32), // 0
      Buffer.concat([Buffer.of(1), Buffer.alloc(31)]), // 1
      hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), // order 8
    ];
    for (const p of smallOrder) assert.equal(sharedSecret(a.privateKey, p), null, p.toString("hex"));
  });

  it("uses libsodium unless told not to", () => {
    const a = keyPairFromSecret(hex(alice));
    assert.equal(Buffer.isBuffer(a.privateKey), frameCryptoBackend() === "libsodium");
  });
});
