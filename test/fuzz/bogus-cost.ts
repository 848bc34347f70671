/**
 * What a bogus first message costs a server, in CPU per message: `node dist/test/fuzz/bogus-cost.js`.
 * For monopiped2 (and auto) with 1, 2, 4 and 8 keys, and a valid msg1 for comparison. Not a test:
 * it prints CPU time (user + system, median of 5 runs; the machine may be loaded), for docs/SECURITY.md.
 */
import { randomBytes } from "node:crypto";
import {
  createHandshake,
  type Keys,
  loadProtocols,
  type ProtocolChoice,
  prepareKeys,
} from "../../src/protocol/index.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

const N = Number(process.env.BOGUS_COST_N ?? 5000);

function perMessageMicros(choice: ProtocolChoice, keys: readonly Keys[], msg: () => Buffer): number {
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const inputs = Array.from({ length: N }, msg);
    const t0 = process.cpuUsage();
    for (const m of inputs) {
      const hs = createHandshake("server", choice, keys);
      hs.start();
      try {
        hs.receive(m);
      } catch {
        // expected for a bogus message
      }
    }
    const used = process.cpuUsage(t0);
    runs.push((used.user + used.system) / N);
  }
  runs.sort((a, b) => a - b);
  return runs[2];
}

const allKeys = Array.from({ length: 8 }, (_, i) => prepareKeys(Buffer.from(`bogus-cost key ${i}\n`)));
for (const k of allKeys) {
  k.monopiped2;
  k.monopiped1;
}
for (const choice of ["monopiped2", "auto"] as const) {
  for (const n of [1, 2, 4, 8]) {
    const keys = allKeys.slice(0, n);
    const bogus = perMessageMicros(choice, keys, () => randomBytes(48));
    console.log(`${choice} server, ${n} key(s): bogus 48-byte msg1 ${bogus.toFixed(1)} µs`);
  }
  const client = () => createHandshake("client", "monopiped2", [allKeys[0]]).start()[0];
  const valid = perMessageMicros(choice, [allKeys[0]], client);
  console.log(
    `${choice} server, 1 key: valid msg1 (answered with msg2) ${valid.toFixed(1)} µs (includes making the msg1)`,
  );
}
