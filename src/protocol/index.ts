/**
 * Which handshake runs on a connection. Keys are derived once per process from the key file.
 * A server in "auto" mode serves both monopiped2 and the original monopiped (monopiped1) on one
 * listener: both clients open with a 48-byte message, so the server reads those 48 bytes before it
 * says anything and tries the monopiped1 key first, then monopiped2 (detect.ts). A spiped client
 * sends 32 bytes and then waits for the server's nonce, so it cannot be detected: a server for
 * spiped clients runs with --protocol spiped.
 */
import { serverAutoHandshake } from "./detect.js";
import { type Monopiped1Keys, monopiped1Handshake, monopiped1Keys } from "./monopiped1.js";
import { monopiped2Handshake, monopiped2Psk } from "./monopiped2.js";
import { prepareSpiped, type SpipedOptions, spipedHandshake, spipedKey } from "./spiped.js";
import type { Handshake, ProtocolName, Role } from "./types.js";

export type ProtocolChoice = "auto" | ProtocolName;

export const PROTOCOL_ALIASES: Record<string, ProtocolChoice> = {
  auto: "auto",
  monopiped2: "monopiped2",
  v2: "monopiped2",
  monopiped1: "monopiped1",
  v1: "monopiped1",
  spiped: "spiped",
};

export interface Keys {
  monopiped2: Buffer;
  monopiped1: Monopiped1Keys;
  spiped: Buffer;
}

export function prepareKeys(keyFile: Buffer): Keys {
  return {
    monopiped2: monopiped2Psk(keyFile),
    monopiped1: monopiped1Keys(keyFile),
    spiped: spipedKey(keyFile),
  };
}

/** One-time set-up a protocol needs before its first handshake (spiped's DH group object). */
export function prepareProtocol(choice: ProtocolChoice): void {
  if (choice === "spiped") prepareSpiped();
}

export function createHandshake(
  role: Role,
  choice: ProtocolChoice,
  keySets: readonly Keys[],
  spipedOptions: SpipedOptions = {},
): Handshake {
  // TODO(multi-key): a server accepts any of keySets; for now the first.
  const keys = keySets[0];
  switch (choice) {
    case "spiped":
      return spipedHandshake(role, keys.spiped, spipedOptions);
    case "monopiped1":
      return monopiped1Handshake(role, keys.monopiped1);
    case "monopiped2":
      return monopiped2Handshake(role, keys.monopiped2);
    case "auto":
      return role === "server" ? serverAutoHandshake(keys) : monopiped2Handshake(role, keys.monopiped2);
    default:
      throw new Error(`protocol ${choice} is not available`);
  }
}
