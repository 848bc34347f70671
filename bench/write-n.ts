/** Writing a given number of bench bytes to a socket, with backpressure; shared by the load generator and the target. */
import { randomFillSync } from "node:crypto";
import type net from "node:net";

const BLOCK = randomFillSync(Buffer.alloc(1 << 20));

/** Write `total` bytes of a fixed random block to `s`, waiting for 'drain'; then end it if `end`. */
export function writeN(s: net.Socket, total: number, end: boolean): void {
  let left = total;
  const write = () => {
    while (left > 0) {
      const n = Math.min(left, BLOCK.length);
      left -= n;
      if (!s.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
        s.once("drain", write);
        return;
      }
    }
    if (end) s.end();
  };
  write();
}
