import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  keyPairFromSecret,
  NoiseHandshake,
  type NoiseHash,
  type NoisePattern,
} from "../../src/protocol/noise.js";
import { readFixture } from "../helpers/fixtures.js";

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_psks?: string[];
  init_ephemeral: string;
  resp_prologue: string;
  resp_psks?: string[];
  resp_ephemeral: string;
  handshake_hash?: string;
  messages: { payload: string; ciphertext: string }[];
}

const file = readFixture<{ vectors: Vector[]; additional_vectors: Vector[] }>("noise-nnpsk0.json");
const hex = (s: string) => Buffer.from(s, "hex");

describe("Noise test vectors (cacophony, snow)", () => {
  const all = [...file.vectors, ...file.additional_vectors];
  assert.ok(all.some((v) => v.protocol_name === "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b"));
  for (const [i, v] of all.entries()) {
    it(`${v.protocol_name} #${i}`, () => {
      const m = /^Noise_(NN|NNpsk0)_25519_ChaChaPoly_(BLAKE2b|SHA256)$/.exec(v.protocol_name);
      assert.ok(m, `unsupported ${v.protocol_name}`);
      const pattern = m[1] as NoisePattern;
      const hash = m[2] as NoiseHash;
      const init = new NoiseHandshake({
        pattern,
        hash,
        initiator: true,
        prologue: hex(v.init_prologue),
        psk: v.init_psks?.[0] ? hex(v.init_psks[0]) : undefined,
        ephemeral: keyPairFromSecret(hex(v.init_ephemeral)),
      });
      const resp = new NoiseHandshake({
        pattern,
        hash,
        initiator: false,
        prologue: hex(v.resp_prologue),
        psk: v.resp_psks?.[0] ? hex(v.resp_psks[0]) : undefined,
        ephemeral: keyPairFromSecret(hex(v.resp_ephemeral)),
      });
      const [m0, m1, ...transport] = v.messages;
      const c0 = init.writeMessage(hex(m0.payload));
      assert.equal(c0.toString("hex"), m0.ciphertext);
      assert.equal(resp.readMessage(c0).toString("hex"), m0.payload);
      const c1 = resp.writeMessage(hex(m1.payload));
      assert.equal(c1.toString("hex"), m1.ciphertext);
      assert.equal(init.readMessage(c1).toString("hex"), m1.payload);
      const ik = init.split();
      const rk = resp.split();
      if (v.handshake_hash) assert.equal(ik.handshakeHash.toString("hex"), v.handshake_hash);
      assert.deepEqual(ik.handshakeHash, rk.handshakeHash);
      transport.forEach((msg, j) => {
        const [sender, receiver] = j % 2 === 0 ? [ik, rk] : [rk, ik];
        const c = sender.send.encryptWithAd(Buffer.alloc(0), hex(msg.payload));
        assert.equal(c.toString("hex"), msg.ciphertext);
        assert.equal(receiver.receive.decryptWithAd(Buffer.alloc(0), c).toString("hex"), msg.payload);
      });
    });
  }
});
