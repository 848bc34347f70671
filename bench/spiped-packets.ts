/**
 * Micro-benchmark of the spiped packet layer alone (no sockets): packets per second sealed and
 * opened, in calls of 64 KiB (one socket read). Best of several trials, since the box may be busy.
 *
 *   npm run build && node dist/bench/spiped-packets.js [trials]
 */
import { randomBytes } from "node:crypto";
import { _internal } from "../src/protocol/spiped.js";

const { PacketKeys, makeSession } = _internal;
const trials = Number(process.argv[2] ?? 10);
const calls = 300;
const E = randomBytes(32);
const H = randomBytes(32);
const sealer = makeSession(new PacketKeys(E, H), new PacketKeys(E, H));
const opener = makeSession(new PacketKeys(E, H), new PacketKeys(E, H));
const input = randomBytes(64 * 1024);
const packetsPerCall = input.length / 1024;

let bestSeal = 0;
let bestOpen = 0;
for (let t = 0; t < trials; t++) {
  let start = process.hrtime.bigint();
  const sealed: Buffer[] = [];
  for (let i = 0; i < calls; i++) sealed.push(Buffer.concat(sealer.sealer.seal(input)));
  let seconds = Number(process.hrtime.bigint() - start) / 1e9;
  bestSeal = Math.max(bestSeal, (calls * packetsPerCall) / seconds);
  start = process.hrtime.bigint();
  for (const s of sealed) opener.opener.push(s);
  seconds = Number(process.hrtime.bigint() - start) / 1e9;
  bestOpen = Math.max(bestOpen, (calls * packetsPerCall) / seconds);
}
const line = (what: string, pps: number) =>
  `${what}: ${(pps / 1000).toFixed(0)}k packets/s, ${(1e6 / pps).toFixed(2)} us/packet, ${((pps * 1024 * 8) / 1e9).toFixed(2)} Gbit/s of data`;
console.log(line("seal", bestSeal));
console.log(line("open", bestOpen));
