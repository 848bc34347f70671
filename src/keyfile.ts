/**
 * Reading and checking the shared key file, and writing a new one (keygen).
 * Any content is a valid key for the protocols (they hash it), but fewer than 32 bytes cannot hold
 * 256 bits of entropy, so we refuse it rather than run with a guessable key.
 */
import { randomBytes } from "node:crypto";
import { closeSync, fchmodSync, fstatSync, openSync, readFileSync, writeSync } from "node:fs";

export const MIN_KEY_BYTES = 32;

export class KeyFileError extends Error {}

export interface KeyFile {
  bytes: Buffer;
  /** Set when the file is readable by group or others. */
  warning?: string;
}

export function readKeyFile(path: string): KeyFile {
  let bytes: Buffer;
  let warning: string | undefined;
  try {
    if (path === "-") {
      bytes = readFileSync(0);
    } else {
      const fd = openSync(path, "r");
      try {
        const st = fstatSync(fd);
        if (st.isDirectory()) throw new KeyFileError(`key file ${path} is a directory`);
        if ((st.mode & 0o077) !== 0) {
          warning = `key file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}); run: chmod 600 ${path}`;
        }
        bytes = readFileSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOENT")
      throw new KeyFileError(`key file ${path} does not exist (create one with: monopiped keygen ${path})`);
    if (e.code === "EACCES") throw new KeyFileError(`key file ${path} cannot be read: permission denied`);
    if (e.code === "EISDIR") throw new KeyFileError(`key file ${path} is a directory`);
    throw new KeyFileError(`key file ${path} cannot be read: ${e.message}`);
  }
  if (bytes.length === 0) throw new KeyFileError(`key file ${path} is empty`);
  if (bytes.length < MIN_KEY_BYTES) {
    throw new KeyFileError(
      `key file ${path} has only ${bytes.length} bytes; at least ${MIN_KEY_BYTES} are needed (create one with: monopiped keygen FILE)`,
    );
  }
  return { bytes, warning };
}

/** Write 32 fresh random bytes with mode 0600. Refuses to replace an existing file unless `force`. */
export function writeKeyFile(path: string, force: boolean): void {
  let fd: number;
  try {
    fd = openSync(path, force ? "w" : "wx", 0o600);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "EEXIST")
      throw new KeyFileError(`${path} already exists; not overwriting it (use --force to replace it)`);
    throw new KeyFileError(`cannot create ${path}: ${e.message}`);
  }
  try {
    fchmodSync(fd, 0o600); // an existing file replaced with --force keeps its old mode otherwise
    writeSync(fd, randomBytes(MIN_KEY_BYTES));
  } finally {
    closeSync(fd);
  }
}
