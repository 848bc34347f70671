/** The pidfile (-p, or --daemon's default): written before anything is bound, removed on exit. */
import { closeSync, openSync, unlinkSync, writeSync } from "node:fs";

/**
 * Write the process id to `path` before anything is bound, so that a pidfile that cannot be
 * written stops the start-up with one line instead of failing after the port is taken.
 * Returns the error text, or undefined when written.
 */
export function writePidfile(path: string, isDefault: boolean): string | undefined {
  try {
    const fd = openSync(path, "w", 0o644);
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    return undefined;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === "ENOENT"
        ? "its directory does not exist"
        : e.code === "EACCES" || e.code === "EPERM"
          ? "permission denied"
          : e.code === "EISDIR"
            ? "it is a directory"
            : e.code === "EROFS"
              ? "read-only file system"
              : e.message;
    return isDefault
      ? `cannot write the pidfile ${path} (--daemon's default: the listen address plus .pid, as spiped; choose another with -p FILE): ${why}`
      : `-p/--pidfile ${path}: cannot write it: ${why}`;
  }
}

export function removePidfile(path: string | undefined): void {
  if (!path) return;
  try {
    unlinkSync(path);
  } catch {
    // already gone, or not ours to remove any more (-u)
  }
}
