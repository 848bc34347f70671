/**
 * `monopiped -e|-d ...`: one end of a tunnel as a long-running process: start the listener, write
 * the pidfile, drop privileges, log the ready line, and stop on SIGINT/SIGTERM after a grace period.
 */
import { unlinkSync, writeFileSync } from "node:fs";
import { HELP, parse, parseRunArgs, RUN_OPTIONS, VERSION, withKeys } from "./cli.js";
import { createLogger } from "./log.js";
import { dropPrivileges } from "./privileges.js";
import { takeListenFd } from "./transport/listenfds.js";
import { Tunnel } from "./tunnel.js";

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(argv, RUN_OPTIONS);
  if (values.help || argv.length === 0) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`monopiped ${VERSION}\n`);
    return 0;
  }
  const flags = parseRunArgs(argv);
  const log = createLogger(flags.logLevel, flags.logFormat);
  const cfg = withKeys(flags, log);
  if (!cfg) return 1;
  // Socket activation (systemd): serve on the passed listening socket instead of binding -l.
  try {
    cfg.listenFd = takeListenFd();
  } catch (err) {
    process.stderr.write(`monopiped: socket activation: ${(err as Error).message}\n`);
    return 1;
  }
  if (cfg.listenFd !== undefined)
    log.info(
      { fd: cfg.listenFd },
      `socket activation: serving on descriptor ${cfg.listenFd}, not binding ${cfg.listen.text}`,
    );

  const tunnel = new Tunnel(cfg, log);
  try {
    await tunnel.start();
  } catch (err) {
    process.stderr.write(`monopiped: ${(err as Error).message}\n`);
    return 1;
  }
  if (flags.pidfile) writeFileSync(flags.pidfile, `${process.pid}\n`);
  if (flags.runAs) {
    try {
      dropPrivileges(flags.runAs);
      log.info({ user: flags.runAs.user, group: flags.runAs.group }, "dropped privileges (-u)");
    } catch (err) {
      process.stderr.write(`monopiped: ${(err as Error).message}\n`);
      await tunnel.stop(0);
      return 1;
    }
  }
  tunnel.logListening();

  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      if (signals > 1) {
        log.warn(`${sig} again: exiting now`);
        resolve(1);
        return;
      }
      log.info(`${sig}: no longer accepting connections`);
      void tunnel.stop(cfg.graceMs).then(() => {
        log.info("stopped");
        resolve(0);
      });
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }).finally(() => {
    if (flags.pidfile) {
      try {
        unlinkSync(flags.pidfile);
      } catch {
        // already gone
      }
    }
  });
}
