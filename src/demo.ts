/**
 * `monopiped demo`: a whole tunnel on loopback, from real processes. It writes a temporary key,
 * starts an echo target, a server end (-d) and a client end (-e), pushes N MiB of random data
 * through the client end, reads the echo back through both ends, and checks the SHA-256 of what
 * came back against what went in.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type RunningEnd, startEnd } from "./harness.js";
import { writeKeyFile } from "./keyfile.js";

function echoServer(): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on("error", () => {});
      s.pipe(s);
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

/** Send `total` random bytes to host:port, read everything back; returns both digests and the time. */
export function echoTransfer(
  port: number,
  total: number,
): Promise<{ sentHash: string; receivedHash: string; bytes: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const sent = createHash("sha256");
    const received = createHash("sha256");
    let receivedBytes = 0;
    const start = process.hrtime.bigint();
    const sock = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true }, () => {
      const block = randomBytes(1 << 20);
      let left = total;
      const write = () => {
        while (left > 0) {
          const n = Math.min(left, block.length);
          const chunk = block.subarray(0, n);
          block[0] = (block[0] + 1) & 0xff; // vary the data a little per block
          sent.update(chunk);
          left -= n;
          if (!sock.write(Buffer.from(chunk))) {
            sock.once("drain", write);
            return;
          }
        }
        sock.end();
      };
      write();
    });
    sock.on("data", (d: Buffer) => {
      received.update(d);
      receivedBytes += d.length;
    });
    sock.on("end", () => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      resolve({
        sentHash: sent.digest("hex"),
        receivedHash: received.digest("hex"),
        bytes: receivedBytes,
        seconds,
      });
      sock.destroy();
    });
    sock.on("error", reject);
  });
}

export async function demo(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { mib: { type: "string" }, protocol: { type: "string" } },
  });
  const mib = Number(values.mib ?? 256);
  if (!Number.isFinite(mib) || mib <= 0) {
    process.stderr.write(`monopiped demo: --mib ${values.mib}: expected a positive number\n`);
    return 2;
  }
  const dir = mkdtempSync(join(tmpdir(), "monopiped-demo-"));
  const key = join(dir, "key.bin");
  writeKeyFile(key, false);
  const target = await echoServer();
  const ends: RunningEnd[] = [];
  try {
    const targetPort = (target.address() as net.AddressInfo).port;
    // Both ends speak the protocol asked for (the server's default is monopiped2 only).
    const serverArgs = ["-d", "-l", "127.0.0.1:0", "-t", `127.0.0.1:${targetPort}`, "-k", key];
    if (values.protocol) serverArgs.push("--protocol", values.protocol);
    const server = await startEnd(serverArgs);
    ends.push(server);
    const clientArgs = ["-e", "-l", "127.0.0.1:0", "-t", server.address, "-k", key];
    if (values.protocol) clientArgs.push("--protocol", values.protocol);
    const client = await startEnd(clientArgs);
    ends.push(client);
    console.log(`target (echo)  127.0.0.1:${targetPort}`);
    console.log(`server end     monopiped -d -l ${server.address} -t 127.0.0.1:${targetPort} -k key.bin`);
    console.log(`client end     monopiped ${clientArgs.join(" ").replace(key, "key.bin")}`);
    console.log(`sending ${mib} MiB through the client end and reading the echo back ...`);
    const r = await echoTransfer(client.port, Math.round(mib * 1024 * 1024));
    const ok = r.sentHash === r.receivedHash && r.bytes === Math.round(mib * 1024 * 1024);
    const mbit = ((r.bytes * 8) / r.seconds / 1e6).toFixed(0);
    console.log(`sha256 sent     ${r.sentHash}`);
    console.log(`sha256 received ${r.receivedHash}`);
    console.log(
      `${ok ? "OK: verified" : "FAILED: mismatch"}, ${r.bytes} bytes each way in ${r.seconds.toFixed(2)} s (${mbit} Mbit/s each way)`,
    );
    return ok ? 0 : 1;
  } finally {
    await Promise.all(ends.map((e) => e.stop()));
    target.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
