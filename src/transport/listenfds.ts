/**
 * Socket activation (systemd's sd_listen_fds(3) protocol): the service manager binds the listening
 * socket and keeps it across restarts, and passes it to the process as file descriptor 3 with
 * LISTEN_PID (the pid it is meant for) and LISTEN_FDS (how many, from 3 on) in the environment.
 * A process that serves on it instead of binding refuses no connection while it restarts: they
 * wait in the socket's backlog. systemd .socket units and systemd-socket-activate both do this.
 */
import { fstatSync } from "node:fs";

/** The first passed descriptor (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

export class ListenFdsError extends Error {}

/**
 * The listening socket passed to this process, or undefined when none was. As sd_listen_fds(1),
 * it unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES in every case, so that no child process
 * (or a process this one might exec) takes them for its own. Variables meant for another pid
 * (inherited from a parent that did not unset them) are ignored. Throws ListenFdsError when they
 * are malformed, when more than one socket was passed (monopiped serves one listener), or when
 * descriptor 3 is not a socket.
 */
export function takeListenFd(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  const pidText = env.LISTEN_PID;
  const fdsText = env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (pidText === undefined || fdsText === undefined) return undefined;
  if (!/^\d+$/.test(pidText)) throw new ListenFdsError(`LISTEN_PID=${pidText}: not a process id`);
  if (Number(pidText) !== pid) return undefined;
  if (!/^\d+$/.test(fdsText)) throw new ListenFdsError(`LISTEN_FDS=${fdsText}: not a number`);
  const count = Number(fdsText);
  if (count === 0) return undefined;
  if (count > 1) {
    throw new ListenFdsError(
      `LISTEN_FDS=${count}: ${count} sockets were passed, monopiped serves one (give the .socket unit one ListenStream=)`,
    );
  }
  let isSocket: boolean;
  try {
    isSocket = fstatSync(LISTEN_FDS_START).isSocket();
  } catch (err) {
    throw new ListenFdsError(`LISTEN_FDS=1 but descriptor 3 is not open (${(err as Error).message})`);
  }
  if (!isSocket) throw new ListenFdsError("LISTEN_FDS=1 but descriptor 3 is not a socket");
  return LISTEN_FDS_START;
}
