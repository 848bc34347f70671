/**
 * Server-side protocol detection. monopiped2's msg1 and monopiped1's client hello are both 48
 * bytes and both authenticated under the key file, so the first 48 bytes tell them apart with
 * certainty: whichever key opens them is the protocol. Nothing is sent before that, which the
 * original client allows (it sends its hello without waiting for the server's).
 */
import { ByteQueue } from "./bytequeue.js";
import type { Keys } from "./index.js";
import { isMonopiped1ClientHello, monopiped1Handshake } from "./monopiped1.js";
import { monopiped2Handshake } from "./monopiped2.js";
import type { Handshake, Session } from "./types.js";

const FIRST_MESSAGE_LEN = 48;
const SPIPED_NONCE_LEN = 32;

class AutoServerHandshake implements Handshake {
  private readonly queue = new ByteQueue();
  private chosen: Handshake | null = null;
  constructor(private readonly keySets: readonly Keys[]) {}

  get session(): Session | null {
    return this.chosen?.session ?? null;
  }
  get buffered(): number {
    return this.chosen ? this.chosen.buffered : this.queue.length;
  }

  start(): Buffer[] {
    return [];
  }

  receive(bytes: Buffer): Buffer[] {
    if (this.chosen) return this.chosen.receive(bytes);
    this.queue.push(bytes);
    if (this.queue.length < FIRST_MESSAGE_LEN) return [];
    const all = this.queue.takeAll();
    const first = all.subarray(0, FIRST_MESSAGE_LEN);
    // Tags first, under every key (one AEAD open each), before anything costs a key pair.
    const v1Keys = this.keySets.find((k) => isMonopiped1ClientHello(k.monopiped1, first));
    if (v1Keys) {
      const v1 = monopiped1Handshake("server", v1Keys.monopiped1);
      v1.receive(all);
      this.chosen = v1;
      return v1.start();
    }
    // monopiped2 checks msg1 under each key before it generates its ephemeral. Its own error for a
    // bad msg1 ("bad-handshake") says "wrong key"; a msg3 that fails after msg1 authenticated (when
    // both came in one read, as with a replayed capture) keeps its "key-confirmation" error.
    const v2 = monopiped2Handshake(
      "server",
      this.keySets.map((k) => k.monopiped2),
    );
    this.chosen = v2;
    return v2.receive(all);
  }

  takeRest(): Buffer {
    return this.chosen ? this.chosen.takeRest() : Buffer.alloc(0);
  }

  // A spiped client sends its 32-byte nonce and waits for ours: auto-detection cannot serve it.
  stallHint(): string | undefined {
    if (this.chosen || this.queue.length !== SPIPED_NONCE_LEN) return undefined;
    return "the client sent 32 bytes and waited: a spiped client? serve it with --protocol spiped";
  }
}

export function serverAutoHandshake(keySets: readonly Keys[]): Handshake {
  return new AutoServerHandshake(keySets);
}
