/**
 * The protocol-core fixes from the monopiped2 review: ABORT after END (G10/I2), the nonce limit
 * of a record whose nonces straddle 2^48 (G7), msg1 checked before the server's ephemeral is made
 * (L2), a failed msg3 reported as key confirmation, not as a wrong key (L3), and keys derived only
 * for the protocol in use (I4).
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { syncBuiltinESMExports } from "node:module";
import { describe, it } from "node:test";
import { ProtocolError, type ProtocolErrorCode } from "../../src/protocol/errors.js";
import { createHandshake, loadProtocols, prepareKeys } from "../../src/protocol/index.js";
import {
  HEADER_LEN,
  MAX_PAYLOAD,
  Monopiped2Opener,
  Monopiped2Sealer,
  monopiped2Handshake,
  monopiped2Psk,
} from "../../src/protocol/monopiped2.js";
import { CipherState, NONCE_LIMIT } from "../../src/protocol/noise.js";
import type { Handshake, Session } from "../../src/protocol/types.js";
import { keyPairCount } from "../../src/protocol/x25519.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

const KEY_FILE = Buffer.from("review fixes unit test key file\n");
const PSK = monopiped2Psk(KEY_FILE);

function code(fn: () => unknown): ProtocolErrorCode | "none" {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
    return e.code;
  }
  return "none";
}

function sessions(): { client: Session; server: Session } {
  const c = monopiped2Handshake("client", PSK);
  const s = monopiped2Handshake("server", PSK);
  const [msg1] = c.start();
  const [msg2] = s.receive(msg1);
  const [msg3] = c.receive(msg2);
  s.receive(msg3);
  assert.ok(c.session && s.session);
  return { client: c.session, server: s.session };
}

/** A sealer and an opener over one key whose counters both start at `n`. */
function pairAt(n: number): { sealer: Monopiped2Sealer; opener: Monopiped2Opener; cipher: CipherState } {
  const key = Buffer.alloc(32, 7);
  const seal = new CipherState();
  seal.initializeKey(key);
  seal.setCounterForTest(n);
  const open = new CipherState();
  open.initializeKey(key);
  open.setCounterForTest(n);
  return { sealer: new Monopiped2Sealer(seal), opener: new Monopiped2Opener(open), cipher: seal };
}

/** Counts the X25519 key pairs `fn` generates. */
function countKeyGenerations(fn: () => void): number {
  const before = keyPairCount();
  fn();
  return keyPairCount() - before;
}

describe("G10/I2: one ABORT after the peer's END", () => {
  it("is honoured as an abort with its reason, after the end event", () => {
    const { client, server } = sessions();
    assert.deepEqual(server.opener.push(Buffer.concat(client.sealer.end())), [{ type: "end" }]);
    assert.deepEqual(server.opener.push(Buffer.concat(client.sealer.abort("application reset"))), [
      { type: "abort", reason: "application reset" },
    ]);
  });

  it("END and ABORT in one chunk give both events", () => {
    const { client, server } = sessions();
    const wire = Buffer.concat([...client.sealer.end(), ...client.sealer.abort("rst")]);
    assert.deepEqual(server.opener.push(wire), [{ type: "end" }, { type: "abort", reason: "rst" }]);
  });

  it("any other record after END stays a protocol error (DATA, empty DATA, END, a second ABORT)", () => {
    const makers: [string, (s: Monopiped2Sealer) => Buffer[]][] = [
      ["data", (s) => s.seal(Buffer.from("late"))],
      ["empty", (s) => [s.empty()]],
      ["end", (s) => s.end()],
    ];
    for (const [name, make] of makers) {
      const { client, server } = sessions();
      server.opener.push(Buffer.concat(client.sealer.end()));
      assert.equal(
        code(() => server.opener.push(Buffer.concat(make(client.sealer as Monopiped2Sealer)))),
        "after-end",
        name,
      );
    }
    const { client, server } = sessions();
    server.opener.push(Buffer.concat(client.sealer.end()));
    server.opener.push(Buffer.concat(client.sealer.abort("one")));
    assert.equal(
      code(() => server.opener.push(Buffer.concat(client.sealer.abort("two")))),
      "after-end",
    );
  });

  it("nothing may follow an ABORT that did not follow END either", () => {
    const { client, server } = sessions();
    server.opener.push(Buffer.concat(client.sealer.abort("x")));
    assert.equal(
      code(() => server.opener.push(Buffer.concat(client.sealer.end()))),
      "after-end",
    );
  });
});

describe("G7: a record is sealed only if every nonce it needs is below 2^48", () => {
  it("a DATA record (two nonces) at 2^48 - 1 throws nonce-limit and produces nothing", () => {
    const { sealer, cipher } = pairAt(NONCE_LIMIT - 1);
    assert.equal(
      code(() => sealer.seal(Buffer.from("x"))),
      "nonce-limit",
    );
    assert.equal(cipher.counter, NONCE_LIMIT - 1, "no nonce was used");
    // A one-nonce record still fits: the last usable nonce is 2^48 - 1.
    const { sealer: s2, opener } = pairAt(NONCE_LIMIT - 1);
    assert.deepEqual(opener.push(Buffer.concat(s2.end())), [{ type: "end" }]);
    assert.equal(
      code(() => s2.abort("x")),
      "nonce-limit",
    );
    assert.equal(
      code(() => s2.end()),
      "nonce-limit",
    );
  });

  it("at 2^48 - 2 one DATA record fits exactly, then nothing does", () => {
    const { sealer, opener } = pairAt(NONCE_LIMIT - 2);
    const rec = sealer.seal(Buffer.from("last"));
    assert.deepEqual(opener.push(Buffer.concat(rec)), [{ type: "data", data: Buffer.from("last") }]);
    assert.equal(
      code(() => sealer.end()),
      "nonce-limit",
    );
    assert.equal(
      code(() => sealer.empty()),
      "nonce-limit",
    );
  });

  it("a call of several records is sealed whole or not at all", () => {
    const { sealer, cipher } = pairAt(NONCE_LIMIT - 3); // room for one DATA record, not two
    assert.equal(
      code(() => sealer.seal(Buffer.alloc(MAX_PAYLOAD + 1))),
      "nonce-limit",
    );
    assert.equal(cipher.counter, NONCE_LIMIT - 3);
    assert.equal(
      code(() => sealer.seal(Buffer.alloc(10), Buffer.alloc(MAX_PAYLOAD - 5))),
      "nonce-limit",
    );
    assert.equal(sealer.seal(Buffer.alloc(MAX_PAYLOAD)).length, 1);
  });

  it("an ABORT (two nonces with a reason) straddling the limit throws; an empty reason takes one", () => {
    const { sealer } = pairAt(NONCE_LIMIT - 1);
    assert.equal(
      code(() => sealer.abort("reason")),
      "nonce-limit",
    );
    assert.equal(sealer.abort("").length, 1);
  });
});

describe("L2: the server checks msg1 before it generates its ephemeral", () => {
  it("a bogus msg1 costs no key generation; a good one costs exactly one", () => {
    const bogus = crypto.randomBytes(48);
    for (const choice of ["monopiped2", "auto"] as const) {
      const keys = [prepareKeys(KEY_FILE)];
      keys[0].monopiped2; // derive before counting
      keys[0].monopiped1;
      assert.equal(
        countKeyGenerations(() => {
          const s = createHandshake("server", choice, keys);
          s.start();
          assert.equal(
            code(() => s.receive(bogus)),
            "bad-handshake",
          );
        }),
        0,
        choice,
      );
      const [msg1] = createHandshake("client", "monopiped2", keys).start();
      assert.equal(
        countKeyGenerations(() => {
          const s = createHandshake("server", choice, keys);
          s.start();
          assert.equal(s.receive(msg1).length, 1);
        }),
        1,
        choice,
      );
    }
  });
});

describe("L3: a msg3 that fails after msg1 authenticated is key-confirmation, not a wrong key", () => {
  function replay(choice: "monopiped2" | "auto", split: boolean): ProtocolError {
    const keys = [prepareKeys(KEY_FILE)];
    const c = createHandshake("client", "monopiped2", keys);
    const s0 = createHandshake("server", choice, keys);
    const [msg1] = c.start();
    const [msg2] = s0.receive(msg1);
    const [msg3] = c.receive(msg2);
    // A replay of the capture to a fresh server: msg1 authenticates, msg3 cannot.
    const s: Handshake = createHandshake("server", choice, keys);
    try {
      if (split) {
        s.receive(msg1);
        s.receive(msg3);
      } else {
        s.receive(Buffer.concat([msg1, msg3]));
      }
    } catch (e) {
      assert.ok(e instanceof ProtocolError);
      assert.equal(s.session, null);
      return e;
    }
    assert.fail("the replayed handshake was accepted");
  }

  for (const choice of ["monopiped2", "auto"] as const) {
    for (const split of [false, true]) {
      it(`${choice}, msg1 and msg3 ${split ? "in two reads" : "in one read"}`, () => {
        const e = replay(choice, split);
        assert.equal(e.code, "key-confirmation");
        assert.equal(e.message, "key confirmation (msg3) failed: a replayed or tampered handshake");
        assert.doesNotMatch(e.message, /wrong key/);
      });
    }
  }

  it("a msg1 under another key is still the wrong key (bad-handshake)", () => {
    for (const choice of ["monopiped2", "auto"] as const) {
      const other = createHandshake("client", "monopiped2", [prepareKeys(Buffer.from("another key file"))]);
      const s = createHandshake("server", choice, [prepareKeys(KEY_FILE)]);
      let err: unknown;
      try {
        s.receive(Buffer.concat([other.start()[0], Buffer.alloc(HEADER_LEN)]));
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof ProtocolError);
      assert.equal(err.code, "bad-handshake");
      assert.match(err.message, /wrong key/);
    }
  });
});

describe("I4: keys are derived lazily, per protocol", () => {
  it("prepareKeys derives nothing; each protocol's keys are derived on first use, once", () => {
    const calls: string[] = [];
    const original = { createHash: crypto.createHash, createHmac: crypto.createHmac };
    crypto.createHash = ((alg: string, ...rest: unknown[]) => {
      calls.push(`hash ${alg}`);
      return (original.createHash as (...a: unknown[]) => crypto.Hash)(alg, ...rest);
    }) as typeof crypto.createHash;
    crypto.createHmac = ((alg: string, ...rest: unknown[]) => {
      calls.push(`hmac ${alg}`);
      return (original.createHmac as (...a: unknown[]) => crypto.Hmac)(alg, ...rest);
    }) as typeof crypto.createHmac;
    syncBuiltinESMExports();
    try {
      const keys = prepareKeys(KEY_FILE);
      assert.deepEqual(calls, [], "nothing derived at prepareKeys");
      const sp = keys.spiped;
      assert.deepEqual(calls, ["hash sha256"], "spiped: SHA-256 of the key file only");
      assert.equal(keys.spiped, sp, "derived once");
      assert.deepEqual(calls, ["hash sha256"]);
      assert.ok(keys.monopiped2.psk.equals(PSK));
      const n = calls.length;
      keys.monopiped2;
      assert.equal(calls.length, n, "monopiped2 derived once");
    } finally {
      crypto.createHash = original.createHash;
      crypto.createHmac = original.createHmac;
      syncBuiltinESMExports();
    }
  });
});
