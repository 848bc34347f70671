/** `monopiped pipe`: the client end of one connection on standard input/output (as spiped's spipe). */
import { parse, parseRunArgs, RUN_OPTIONS, UsageError, withKeys } from "./cli.js";
import { createLogger } from "./log.js";
import { StdioLink } from "./transport/stdio.js";
import { wsClientWarnings } from "./transport/ws.js";
import { Tunnel } from "./tunnel.js";

const PIPE_HELP = `Usage: monopiped pipe -t ADDR|URL -k KEYFILE [options]

The client end (-e) for one connection whose plain side is standard input and output, as spiped's
spipe: stdin goes encrypted to the server end at -t, and what the server end's target answers comes
out on stdout. End of stdin is passed on as end of stream; the reply still comes back. On SIGHUP or
SIGTERM (ssh sends SIGHUP to its ProxyCommand when it exits), or when stdout's reader goes away, the
connection ends as the session did: if stdin has ended (within 1 s), what the server still sends is
dropped and the connection closes cleanly (within -o); otherwise it is aborted. Exits 0 when the
connection ended cleanly, 1 when it could not be made or broke (stderr says why), 2 on a usage
error. Takes the options of the client end (-t, -k, --protocol, -o, -b, -j, --log-level,
--log-format and the WebSocket client options; see monopiped --help), logging warnings only by
default.

Example, ssh without a local port (the server end runs monopiped -d in front of sshd):
  ssh -o ProxyCommand='monopiped pipe -t server.example.com:2222 -k key.bin' server.example.com
`;

/** `monopiped pipe`: one tunneled connection on standard input/output. */
export async function pipe(argv: string[]): Promise<number> {
  if (argv.length === 0) {
    process.stderr.write(
      "Usage: monopiped pipe -t ADDR|URL -k KEYFILE [options]   one connection on stdin/stdout\nTry 'monopiped pipe --help' for the options and an example.\n",
    );
    return 2;
  }
  const { values } = parse(argv, RUN_OPTIONS);
  if (values.help) {
    process.stdout.write(PIPE_HELP);
    return 0;
  }
  const flags = parseRunArgs(argv, "pipe");
  if (flags.keyPath === "-")
    throw new UsageError("-k/--key -: standard input carries the data in monopiped pipe; give a key file");
  const log = createLogger(flags.logLevel, flags.logFormat);
  const cfg = withKeys(flags, log);
  if (!cfg) return 1;
  for (const warning of wsClientWarnings(cfg)) log.warn(warning);
  // A closed stderr (the terminal gone) must not turn a clean end into a crash.
  process.stderr.on("error", () => {});
  const stdio = new StdioLink(process.stdin, process.stdout, { closingMs: cfg.timeoutMs });
  // The application went away: ssh sends SIGHUP to its ProxyCommand when it exits (having closed
  // the pipes first); a supervisor sends SIGTERM. End the connection as the session ended (see
  // StdioLink.hangUp); a second signal stops at once.
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled || !stdio.hangUp(signal)) {
      log.warn(`${signal}${signalled ? " again" : " before the connection was made"}: stopping`);
      process.exit(1);
    }
    signalled = true;
  };
  for (const signal of ["SIGHUP", "SIGTERM", "SIGINT"] as const) process.on(signal, onSignal);
  const clean = await new Tunnel(cfg, log).serveOne(stdio);
  await stdio.flushed();
  return clean ? 0 : 1;
}
