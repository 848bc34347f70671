/**
 * The benchmark's targets, run as a separate process (so their sockets and CPU are not the
 * measuring process's): an echo server for the connect-and-echo and idle-connection tests, and a
 * Node source/sink for throughput when iperf3 is not installed. Prints its ports as one JSON line
 * on stdout and exits when its stdin closes (so it never outlives the benchmark).
 *
 * Source/sink protocol (port "load"): the client sends 'U' or 'D' and a u64 BE byte count N.
 *   U (upload):   the client then sends N bytes; after the last one the server answers one byte and ends.
 *   D (download): the server sends N bytes and ends.
 */
import net from "node:net";
import { writeN } from "./write-n.js";

const LOAD_HEADER_LEN = 9;

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ port: 0, host: "127.0.0.1", backlog: 4096 }, () =>
      resolve((server.address() as net.AddressInfo).port),
    );
  });
}

function echoServer(): net.Server {
  return net.createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
    s.on("error", () => s.destroy());
    s.pipe(s);
  });
}

function loadServer(): net.Server {
  return net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => s.destroy());
    let header = Buffer.alloc(0);
    let mode = "";
    let left = 0;
    const onData = (chunk: Buffer) => {
      if (!mode) {
        header = Buffer.concat([header, chunk]);
        if (header.length < LOAD_HEADER_LEN) return;
        mode = String.fromCharCode(header[0]);
        left = Number(header.readBigUInt64BE(1));
        chunk = header.subarray(LOAD_HEADER_LEN);
        if (mode === "D") {
          s.removeListener("data", onData);
          s.resume();
          writeN(s, left, true);
          return;
        }
      }
      left -= chunk.length;
      if (left <= 0) {
        s.removeListener("data", onData);
        s.end(Buffer.of(1));
      }
    };
    s.on("data", onData);
  });
}

async function main(): Promise<void> {
  const echo = await listen(echoServer());
  const load = await listen(loadServer());
  process.stdout.write(`${JSON.stringify({ echo, load })}\n`);
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
  process.on("SIGTERM", () => process.exit(0));
}

void main();
