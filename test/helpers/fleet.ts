/**
 * What an end-to-end test file starts: monopiped ends, loopback servers, a temporary directory with
 * a key file; all stopped and removed by one cleanup() (each process by its PID).
 */
import { rmSync } from "node:fs";
import type net from "node:net";
import { type RunningEnd, startEnd } from "../../src/harness.js";
import { keyFile, listen, type TestServer, tempDir } from "./net.js";

export class Fleet {
  readonly dir = tempDir();
  readonly key = keyFile(this.dir);
  private readonly ends: RunningEnd[] = [];
  private readonly servers: TestServer[] = [];

  /** Start `monopiped ARGS` (listening on port 0) and keep it for cleanup. */
  async end(args: string[]): Promise<RunningEnd> {
    const e = await startEnd(args);
    this.ends.push(e);
    return e;
  }

  /** A loopback TCP server kept for cleanup. */
  async server(handler: (s: net.Socket) => void, host?: string): Promise<TestServer> {
    const s = await listen(handler, host);
    this.servers.push(s);
    return s;
  }

  /** Keep a server started elsewhere (e.g. a relay) for cleanup. */
  adopt(s: TestServer): TestServer {
    this.servers.push(s);
    return s;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.ends.map((e) => e.stop()));
    await Promise.all(this.servers.map((s) => s.close()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
