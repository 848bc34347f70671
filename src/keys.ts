/**
 * The keys in force: one per -k key file, read at start and again on SIGHUP. A server accepts any
 * of them (key rotation: add the new key with a second -k, SIGHUP, move the clients, drop the old
 * one, SIGHUP); a client uses the first. A re-read is all or nothing: if any file is missing, short
 * or unreadable the old keys stay in force, and listener and open connections are never touched.
 */
import { createHash } from "node:crypto";
import { KeyFileError, readKeyFile } from "./keyfile.js";
import { type Keys, prepareKeys } from "./protocol/index.js";

export interface KeyFiles {
  /** The key files' contents, in -k order. */
  bytes: Buffer[];
  /** Warnings about the files (readable by others). */
  warnings: string[];
}

/**
 * Read every key file (throws KeyFileError naming the first one that cannot be used). `previous`:
 * the contents read last time, reused for "-" (standard input cannot be read a second time).
 */
export function readKeyFiles(paths: readonly string[], previous?: readonly Buffer[]): KeyFiles {
  const bytes: Buffer[] = [];
  const warnings: string[] = [];
  paths.forEach((path, i) => {
    if (path === "-" && previous?.[i]) {
      bytes.push(previous[i]);
      return;
    }
    const file = readKeyFile(path);
    warnings.push(...file.warnings);
    bytes.push(file.bytes);
  });
  return { bytes, warnings };
}

export function deriveKeys(bytes: readonly Buffer[]): Keys[] {
  return bytes.map((b) => prepareKeys(b));
}

/**
 * A short public name for a key, for logs: which keys are in force after a reload can be told apart
 * without showing anything of the key (the first 8 hex digits of a domain-separated SHA-256).
 */
export function keyId(bytes: Buffer): string {
  return createHash("sha256").update("monopiped key id\0").update(bytes).digest("hex").slice(0, 8);
}

export type ReloadResult =
  | { ok: true; files: KeyFiles; keys: Keys[]; ids: string[] }
  | { ok: false; error: string };

/** Re-read the key files for SIGHUP; never throws for a bad file. */
export function reloadKeyFiles(paths: readonly string[], previous: readonly Buffer[]): ReloadResult {
  try {
    const files = readKeyFiles(paths, previous);
    return { ok: true, files, keys: deriveKeys(files.bytes), ids: files.bytes.map(keyId) };
  } catch (err) {
    if (err instanceof KeyFileError) return { ok: false, error: err.message };
    return { ok: false, error: `cannot read the key files: ${(err as Error).message}` };
  }
}
