/** Runs `monopiped pipe` (the client end on standard input/output) as a real process. */
import { spawn } from "node:child_process";
import { CLI_PATH, RUNTIME_FLAGS } from "../../src/harness.js";

export interface PipeRun {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Run `monopiped pipe ARGS`, feed it `input` then end stdin, collect stdout; killed by PID after 30 s. */
export function runPipe(args: string[], input: Buffer): Promise<PipeRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...RUNTIME_FLAGS, CLI_PATH, "pipe", ...args], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdin.on("error", () => {}); // the process may exit before reading everything (failure cases)
    child.stdin.end(input);
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`monopiped pipe did not exit within 30 s; stderr: ${stderr}`));
    }, 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}
