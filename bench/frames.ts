/**
 * Micro-benchmark of the compatibility protocols' record layers alone (no sockets): CPU time per
 * 1 KiB frame to seal and to open, in calls of 64 KiB (one socket read), for monopiped1 and the
 * spiped protocol, with libsodium (sodium-native) and with the node:crypto fallback
 * (MONOPIPED_NO_SODIUM=1), under every Node found (this one, and Node 24 where .ci/run installs it).
 * Each combination runs in its own process, interleaved round by round; medians of the rounds.
 *
 *   npm run build && node dist/bench/frames.js [--rounds N] [--only monopiped1|spiped]
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { monopiped1Handshake, monopiped1Keys } from "../src/protocol/monopiped1.js";
import { frameCryptoBackend } from "../src/protocol/sodium.js";
import { _internal as spiped } from "../src/protocol/spiped.js";
import type { Session } from "../src/protocol/types.js";
import { nodeBinaries } from "./nodes.js";

type Proto = "monopiped1" | "spiped";

function monopiped1Sessions(): { from: Session; to: Session } {
  const keys = monopiped1Keys(randomBytes(32));
  const c = monopiped1Handshake("client", keys);
  const s = monopiped1Handshake("server", keys);
  s.receive(Buffer.concat(c.start()));
  c.receive(Buffer.concat(s.start()));
  if (!c.session || !s.session) throw new Error("monopiped1 handshake did not complete");
  return { from: c.session, to: s.session };
}

function spipedSessions(): { from: Session; to: Session } {
  const E = randomBytes(32);
  const H = randomBytes(32);
  const { PacketKeys, makeSession } = spiped;
  return {
    from: makeSession(new PacketKeys(E, H), new PacketKeys(E, H)),
    to: makeSession(new PacketKeys(E, H), new PacketKeys(E, H)),
  };
}

/** CPU µs per frame for sealing and for opening 64 KiB calls: the median of `trials`. */
function measure(proto: Proto, trials: number): { seal: number; open: number; frames: number } {
  const { from, to } = proto === "monopiped1" ? monopiped1Sessions() : spipedSessions();
  const input = randomBytes(64 * 1024);
  const framesPerCall = Math.ceil(input.length / from.sealer.maxPlaintext);
  const calls = 200;
  const seal: number[] = [];
  const open: number[] = [];
  const cpu = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  for (let t = 0; t < trials + 3; t++) {
    let start = cpu();
    const sealed: Buffer[][] = [];
    for (let i = 0; i < calls; i++) sealed.push(from.sealer.seal(input));
    const sealUs = (cpu() - start) / (calls * framesPerCall);
    const reads = sealed.map((frames) => Buffer.concat(frames)); // as a socket read delivers them
    start = cpu();
    for (const read of reads) to.opener.push(read);
    const openUs = (cpu() - start) / (calls * framesPerCall);
    if (t >= 3) {
      // the first three warm up the JIT
      seal.push(sealUs);
      open.push(openUs);
    }
  }
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];
  return { seal: med(seal), open: med(open), frames: framesPerCall };
}

function child(proto: Proto): void {
  const r = measure(proto, 5);
  console.log(JSON.stringify({ node: process.version, backend: frameCryptoBackend(), proto, ...r }));
}

function main(): void {
  const { values } = parseArgs({
    options: {
      child: { type: "string" },
      rounds: { type: "string", default: "3" },
      only: { type: "string" },
    },
  });
  if (values.child) {
    child(values.child as Proto);
    return;
  }
  const protos: Proto[] = values.only ? [values.only as Proto] : ["monopiped1", "spiped"];
  const rounds = Number(values.rounds);
  const self = fileURLToPath(import.meta.url);
  const rows = new Map<string, { seal: number[]; open: number[] }>();
  for (let r = 0; r < rounds; r++) {
    for (const node of nodeBinaries()) {
      for (const backend of ["libsodium", "node:crypto"]) {
        for (const proto of protos) {
          const env = { ...process.env };
          if (backend === "node:crypto") env.MONOPIPED_NO_SODIUM = "1";
          else delete env.MONOPIPED_NO_SODIUM;
          const out = spawnSync(node.path, [self, "--child", proto], { env, encoding: "utf8" });
          if (out.status !== 0) throw new Error(`${node.label} ${backend} ${proto}: ${out.stderr}`);
          const res = JSON.parse(out.stdout.trim().split("\n").pop() as string);
          const key = `${proto}\t${node.label} (${res.node})\t${res.backend}`;
          const row = rows.get(key) ?? { seal: [], open: [] };
          row.seal.push(res.seal);
          row.open.push(res.open);
          rows.set(key, row);
          process.stderr.write(".");
        }
      }
    }
  }
  process.stderr.write("\n");
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  console.log(
    "protocol    node              frames by     seal µs/frame  open µs/frame  (CPU, median of rounds)",
  );
  for (const [key, row] of [...rows].sort()) {
    const [proto, node, backend] = key.split("\t");
    console.log(
      `${proto.padEnd(11)} ${node.padEnd(17)} ${backend.padEnd(13)} ${med(row.seal).toFixed(2).padStart(13)}  ${med(row.open).toFixed(2).padStart(13)}`,
    );
  }
}

main();
