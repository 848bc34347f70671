/**
 * Which handshake runs on a connection. Each protocol's keys are derived from the key file on first
 * use and then kept, so only the protocol in use pays for its derivation. A server in "auto" mode
 * serves both monopiped2 and the original monopiped (monopiped1) on one listener: both clients
 * open with a 48-byte message, so the server reads those 48 bytes before it says anything and tries
 * the monopiped1 key first, then monopiped2 (detect.ts). A spiped client sends 32 bytes and then
 * waits for the server's nonce, so it cannot be detected: a server for spiped clients runs with
 * --protocol spiped.
 *
 * Several key files (-k given more than once): a client uses the first; a server accepts any, at a
 * fixed cost per key for a first message that does not authenticate (see each protocol's
 * handshake, and docs/SECURITY.md).
 */
import type { Monopiped1Keys } from "./monopiped1.js";
import { type Monopiped2Key, monopiped2Handshake, monopiped2Key } from "./monopiped2.js";
import type { SpipedOptions } from "./spiped.js";
import type { Handshake, ProtocolName, Role } from "./types.js";

/**
 * The compatibility protocols' code is loaded only when the configuration needs it
 * (loadProtocols, at start-up): monopiped1 brings @noble and libsodium, spiped its DH group, and
 * an end that speaks monopiped2 only should not carry them (a few MiB of an idle end's memory).
 */
type Monopiped1Module = typeof import("./monopiped1.js");
type SpipedModule = typeof import("./spiped.js");
type DetectModule = typeof import("./detect.js");
let v1Module: Monopiped1Module | null = null;
let spipedModule: SpipedModule | null = null;
let detectModule: DetectModule | null = null;

/** Load the code `choice` needs beyond monopiped2 ("all": every protocol, for tests and tools). */
export async function loadProtocols(choice: ProtocolChoice | "all"): Promise<void> {
  if (choice === "monopiped1" || choice === "auto" || choice === "all")
    v1Module ??= await import("./monopiped1.js");
  if (choice === "auto" || choice === "all") detectModule ??= await import("./detect.js");
  if (choice === "spiped" || choice === "all") spipedModule ??= await import("./spiped.js");
}

function loaded<T>(m: T | null, name: string): T {
  if (!m) throw new Error(`the ${name} code is not loaded (loadProtocols)`);
  return m;
}

export type ProtocolChoice = "auto" | ProtocolName;

/** monopiped2's next ephemeral key pair made ahead of time (the tunnel calls it when idle). */
export { prepareSpareKeyPair } from "./x25519.js";

export const PROTOCOL_ALIASES: Record<string, ProtocolChoice> = {
  auto: "auto",
  monopiped2: "monopiped2",
  v2: "monopiped2",
  monopiped1: "monopiped1",
  v1: "monopiped1",
  spiped: "spiped",
};

/** One key file's keys for each protocol; each is derived on first use. */
export interface Keys {
  readonly monopiped2: Monopiped2Key;
  readonly monopiped1: Monopiped1Keys;
  readonly spiped: Buffer;
}

class LazyKeys implements Keys {
  private v2: Monopiped2Key | null = null;
  private v1: Monopiped1Keys | null = null;
  private sp: Buffer | null = null;
  private readonly keyFile: Buffer;
  constructor(keyFile: Buffer) {
    this.keyFile = Buffer.from(keyFile); // our own copy: the caller may wipe or reuse its buffer
  }
  get monopiped2(): Monopiped2Key {
    this.v2 ??= monopiped2Key(this.keyFile);
    return this.v2;
  }
  get monopiped1(): Monopiped1Keys {
    this.v1 ??= loaded(v1Module, "monopiped1").monopiped1Keys(this.keyFile);
    return this.v1;
  }
  get spiped(): Buffer {
    this.sp ??= loaded(spipedModule, "spiped").spipedKey(this.keyFile);
    return this.sp;
  }
}

export function prepareKeys(keyFile: Buffer): Keys {
  return new LazyKeys(keyFile);
}

/**
 * Load the code a protocol needs and do its one-time set-up (spiped's DH group object), before
 * its first handshake.
 */
export async function prepareProtocol(choice: ProtocolChoice): Promise<void> {
  await loadProtocols(choice);
  if (choice === "spiped") loaded(spipedModule, "spiped").prepareSpiped();
}

export function createHandshake(
  role: Role,
  choice: ProtocolChoice,
  keySets: readonly Keys[],
  spipedOptions: SpipedOptions = {},
): Handshake {
  if (keySets.length === 0) throw new Error("no key");
  // A client speaks under its first key only.
  const keys = role === "client" ? keySets.slice(0, 1) : keySets;
  switch (choice) {
    case "spiped":
      return loaded(spipedModule, "spiped").spipedHandshake(
        role,
        keys.map((k) => k.spiped),
        spipedOptions,
      );
    case "monopiped1":
      return loaded(v1Module, "monopiped1").monopiped1Handshake(
        role,
        keys.map((k) => k.monopiped1),
      );
    case "monopiped2":
      return monopiped2Handshake(
        role,
        keys.map((k) => k.monopiped2),
      );
    case "auto":
      return role === "server"
        ? loaded(detectModule, "protocol detection").serverAutoHandshake(keys)
        : monopiped2Handshake(
            role,
            keys.map((k) => k.monopiped2),
          );
    default:
      throw new Error(`protocol ${choice} is not available`);
  }
}
