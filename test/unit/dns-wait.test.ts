import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseAddress, type SocketAddress } from "../../src/address.js";
import { namesToWaitFor, waitForNames } from "../../src/dns-wait.js";
import type { Logger } from "../../src/log.js";

/** A logger that records (level, message) pairs. */
function recorder() {
  const lines: [string, string][] = [];
  const at = (level: string) => (a: unknown, b?: unknown) =>
    lines.push([level, typeof a === "string" ? a : String(b)]);
  const log = { info: at("info"), warn: at("warn"), debug: at("debug") } as unknown as Logger;
  return { log, lines };
}

const ws = { insecure: false, headers: {} };

describe("-D: names to wait for", () => {
  it("takes the listen and target names, not IP addresses or Unix paths", () => {
    const names = namesToWaitFor({
      listen: parseAddress("gateway.example:3000") as SocketAddress,
      target: parseAddress("db.example:5432") as SocketAddress,
      wsClient: ws,
    });
    assert.deepEqual(names, [
      { what: "-l/--listen", host: "gateway.example" },
      { what: "-t/--target", host: "db.example" },
    ]);
    assert.deepEqual(
      namesToWaitFor({
        listen: parseAddress("[::1]:3000") as SocketAddress,
        target: parseAddress("/run/app.sock") as SocketAddress,
        wsClient: ws,
      }),
      [],
    );
  });
  it("for a WebSocket target through a proxy, waits for the proxy's name instead", () => {
    const names = namesToWaitFor({
      listen: parseAddress("127.0.0.1:3000") as SocketAddress,
      target: parseAddress("wss://tunnel.example/ssh", { allowUrl: true }) as never,
      wsClient: { ...ws, proxy: "http://proxy.example:3128" },
    });
    assert.deepEqual(names, [{ what: "--proxy", host: "proxy.example" }]);
  });
});

describe("-D: waiting", () => {
  it("retries with a growing pause, logs each failure once and the success once", async () => {
    const { log, lines } = recorder();
    const tries: number[] = [];
    const started = Date.now();
    let firstFailure = 0;
    const ok = await waitForNames([{ what: "-t/--target", host: "late.example" }], log, {
      initialDelayMs: 10,
      maxDelayMs: 40,
      onFirstFailure: () => firstFailure++,
      lookup: async () => {
        tries.push(Date.now() - started);
        if (tries.length < 6) throw Object.assign(new Error("not found"), { code: "ENOTFOUND" });
      },
    });
    assert.equal(ok, true);
    assert.equal(tries.length, 6);
    assert.equal(firstFailure, 1);
    const warns = lines.filter(([l]) => l === "warn");
    assert.equal(warns.length, 1, "one line for five failed tries");
    assert.match(warns[0][1], /-D: cannot resolve late\.example \(-t\/--target\): ENOTFOUND; trying again/);
    assert.deepEqual(
      lines.filter(([l]) => l === "info").map(([, m]) => m),
      ["-D: late.example (-t/--target) resolves now"],
    );
    // pauses 10, 20, 40, 40, 40 ms: at least 150 ms in all
    assert.ok(tries[5] >= 140, `waited ${tries[5]} ms`);
  });
  it("logs again only when the reason changes", async () => {
    const { log, lines } = recorder();
    const codes = ["EAI_AGAIN", "EAI_AGAIN", "ENOTFOUND", "ENOTFOUND"];
    await waitForNames([{ what: "-l/--listen", host: "x.example" }], log, {
      initialDelayMs: 1,
      lookup: async () => {
        const code = codes.shift();
        if (code) throw Object.assign(new Error(code), { code });
      },
    });
    assert.deepEqual(
      lines.filter(([l]) => l === "warn").map(([, m]) => /: (E[A-Z_]+);/.exec(m)?.[1]),
      ["EAI_AGAIN", "ENOTFOUND"],
    );
  });
  it("a signal ends the wait (false)", async () => {
    const { log } = recorder();
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const ok = await waitForNames([{ what: "-t/--target", host: "never.example" }], log, {
      initialDelayMs: 10_000,
      signal: stop.signal,
      lookup: async () => {
        throw Object.assign(new Error("no"), { code: "ENOTFOUND" });
      },
    });
    assert.equal(ok, false);
  });
});
