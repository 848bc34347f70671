/**
 * Imported first by every end-to-end test file. Its after() hook stops, by PID, every monopiped
 * end and every other process (spiped, Caddy, nginx) the file started that is still running: a
 * test that fails half-way, before its own clean-up, leaves nothing behind, and the file's process
 * can exit instead of waiting on its children.
 */
import { after } from "node:test";
import { stopAll } from "../../bench/procs.js";
import { stopAllEnds } from "../../src/harness.js";

after(async () => {
  await Promise.all([stopAllEnds(), stopAll()]);
});
