/**
 * Reading and checking the shared key file, and writing a new one (keygen).
 * Any content is a valid key for the protocols (they hash it), but fewer than 32 bytes cannot hold
 * 256 bits of entropy, so we refuse it rather than run with a guessable key.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  openSync,
  readSync,
  type Stats,
  writeSync,
} from "node:fs";

export const MIN_KEY_BYTES = 32;
/** Larger key files are refused: a key is 32 bytes, and a file this size is a mistake (or a log). */
export const MAX_KEY_BYTES = 1024 * 1024;

export class KeyFileError extends Error {}

export interface KeyFile {
  bytes: Buffer;
  /** Warnings to log: the file is readable by group or others, or it holds a passphrase. */
  warnings: string[];
  /** The first of `warnings` (kept for callers that log one). */
  warning?: string;
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a named pipe (FIFO)";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/** Reads at most MAX_KEY_BYTES + 1 bytes, so an endless source is not read forever. */
function readCapped(fd: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const buf = Buffer.alloc(Math.min(65536, MAX_KEY_BYTES + 1 - total));
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EAGAIN") {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10); // a non-blocking stdin
        continue;
      }
      throw err;
    }
    if (n === 0) break;
    chunks.push(buf.subarray(0, n));
    total += n;
    if (total > MAX_KEY_BYTES) break;
  }
  return Buffer.concat(chunks);
}

export function readKeyFile(path: string): KeyFile {
  let bytes: Buffer;
  const warnings: string[] = [];
  const name = path === "-" ? "on standard input" : path;
  try {
    if (path === "-") {
      bytes = readCapped(0);
    } else {
      // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
      const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
      try {
        const st = fstatSync(fd);
        if (!st.isFile())
          throw new KeyFileError(
            `key file ${path} is ${kindOf(st)}; a key file must be a regular file (or - for standard input)`,
          );
        if (st.size > MAX_KEY_BYTES)
          throw new KeyFileError(
            `key file ${path} has ${st.size} bytes, more than the ${MAX_KEY_BYTES} (1 MiB) a key file may have`,
          );
        if ((st.mode & 0o077) !== 0) {
          warnings.push(
            `key file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")}); run: chmod 600 ${path}`,
          );
        }
        bytes = readCapped(fd);
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
    throw new KeyFileError(`key file ${name} cannot be read: ${e.message}`);
  }
  if (bytes.length > MAX_KEY_BYTES)
    throw new KeyFileError(
      `key file ${name} has more than the ${MAX_KEY_BYTES} bytes (1 MiB) a key file may have`,
    );
  if (bytes.length === 0) throw new KeyFileError(`key file ${name} is empty`);
  if (bytes.length < MIN_KEY_BYTES) {
    throw new KeyFileError(
      `key file ${name} has only ${bytes.length} bytes; at least ${MIN_KEY_BYTES} are needed (create one with: monopiped keygen FILE)`,
    );
  }
  const passphrase = looksLikePassphrase(bytes);
  if (passphrase)
    warnings.push(
      `key file ${name} looks like a passphrase (${passphrase}), not random bytes: it is used as is, but a guessable key lets anyone in; make one with: monopiped keygen FILE`,
    );
  return { bytes, warnings, warning: warnings[0] };
}

/**
 * Whether key material looks typed rather than random: only printable text, with few distinct
 * characters or with spaces between words. A hex or base64 encoding of a random key (what
 * `openssl rand -hex 32` or `-base64 32` print) is not flagged. Returns why, or undefined.
 */
export function looksLikePassphrase(bytes: Buffer): string | undefined {
  for (const b of bytes)
    if ((b < 0x20 || b > 0x7e) && b !== 0x09 && b !== 0x0a && b !== 0x0d) return undefined;
  const text = bytes.toString("latin1").replace(/[\r\n]+$/, "");
  const packed = text.replace(/\s+/g, ""); // encoders wrap long lines
  const distinct = new Set(packed).size;
  if (/^[0-9a-fA-F]+$/.test(packed) && packed.length >= 64 && distinct >= 10) return undefined;
  if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(packed) && packed.length >= 43 && distinct >= 16) return undefined;
  if (/\s/.test(text)) return "printable text with spaces";
  if (distinct < 24) return `printable text with only ${distinct} different characters`;
  return undefined;
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
