/**
 * spiped's -u: after binding (a port below 1024 needs root), run as an unprivileged user and/or
 * group. Forms: "user", "user:group", ":group". With a user and no group, the user's own primary
 * group and supplementary groups are taken, as spiped does with getpwnam/initgroups.
 */
import { execFileSync } from "node:child_process";

export interface RunAs {
  user?: string;
  group?: string;
}

export class PrivilegeError extends Error {}

/** Parse the -u value; throws a message for the usage error. */
export function parseRunAs(text: string): RunAs {
  const m = /^([^:]*)(?::([^:]*))?$/.exec(text);
  const user = m?.[1] || undefined;
  const group = m?.[2] || undefined;
  if (!m || (!user && !group) || (m[2] !== undefined && !group)) {
    throw new Error(`${JSON.stringify(text)}: expected USER, USER:GROUP or :GROUP`);
  }
  return { user, group };
}

/** The user's primary group id, through the system's user database (files, LDAP, ...). */
function primaryGroupOf(user: string): number {
  try {
    return Number(
      execFileSync("id", ["-g", "--", user], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      }).trim(),
    );
  } catch {
    throw new PrivilegeError(`-u ${user}: no such user`);
  }
}

/** Switch group first (it needs the privileges the user switch gives up), then user. */
export function dropPrivileges(runAs: RunAs): void {
  if (typeof process.setuid !== "function" || typeof process.setgid !== "function") {
    throw new PrivilegeError("-u: this platform cannot change the user of a running process");
  }
  const step = (what: string, fn: () => void) => {
    try {
      fn();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === "EPERM" ? "permission denied (start as root to use -u)" : e.message;
      throw new PrivilegeError(`-u: cannot switch to ${what}: ${why}`);
    }
  };
  const { user, group } = runAs;
  if (user) {
    const gid = group ?? primaryGroupOf(user);
    // initgroups is POSIX-only and missing from @types/node's Process.
    const { initgroups } = process as { initgroups?: (user: string, extraGroup: string | number) => void };
    step(`the groups of user ${user}`, () => initgroups?.call(process, user, gid));
    step(`group ${gid}`, () => process.setgid?.(gid));
  } else if (group) {
    step(`group ${group}`, () => {
      process.setgroups?.([group]);
      process.setgid?.(group);
    });
  }
  if (user) step(`user ${user}`, () => process.setuid?.(user));
}
