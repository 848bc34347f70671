/**
 * Several key files (-k given more than once): a server accepts a client of any of its keys, a
 * client speaks under its first, and a client of none of them is refused, for every protocol.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ProtocolError } from "../../src/protocol/errors.js";
import {
  createHandshake,
  type Keys,
  loadProtocols,
  type ProtocolChoice,
  prepareKeys,
} from "../../src/protocol/index.js";
import type { Handshake } from "../../src/protocol/types.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

const A = prepareKeys(Buffer.from("multi-key test key file A\n"));
const B = prepareKeys(Buffer.from("multi-key test key file B\n"));
const C = prepareKeys(Buffer.from("multi-key test key file C\n"));

type Outcome = "ok" | ProtocolError;

/** Runs a client and a server against each other in memory until both are done or one fails. */
function connect(
  choice: ProtocolChoice,
  clientKeys: readonly Keys[],
  serverKeys: readonly Keys[],
  clientChoice: ProtocolChoice = choice === "auto" ? "monopiped2" : choice,
): Outcome {
  const client = createHandshake("client", clientChoice, clientKeys);
  const server = createHandshake("server", choice, serverKeys);
  let toServer = client.start();
  let toClient = server.start();
  try {
    for (let round = 0; round < 10 && !(client.session && server.session); round++) {
      const s = toServer.flatMap((m) => server.receive(m));
      const c = toClient.flatMap((m) => client.receive(m));
      toClient = s;
      toServer = c;
      if (!s.length && !c.length && !(client.session && server.session)) break;
    }
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
    assert.equal(server.session, null, "no server session after a failure");
    return e;
  }
  assert.ok(client.session && server.session, `${choice}: the handshake did not finish`);
  roundTrip(client, server);
  return "ok";
}

function roundTrip(client: Handshake, server: Handshake): void {
  const c = client.session;
  const s = server.session;
  assert.ok(c && s);
  const up = Buffer.from("up through the tunnel");
  const down = Buffer.from("and back down");
  const got = (events: ReturnType<typeof s.opener.push>) =>
    Buffer.concat(events.flatMap((e) => (e.type === "data" ? [e.data] : [])));
  assert.deepEqual(got(s.opener.push(Buffer.concat([server.takeRest(), ...c.sealer.seal(up)]))), up);
  assert.deepEqual(got(c.opener.push(Buffer.concat([client.takeRest(), ...s.sealer.seal(down)]))), down);
}

describe("a server with keys [A, B]", () => {
  const cases: [ProtocolChoice, ProtocolChoice][] = [
    ["monopiped2", "monopiped2"],
    ["monopiped1", "monopiped1"],
    ["spiped", "spiped"],
    ["auto", "monopiped2"],
    ["auto", "monopiped1"],
  ];
  for (const [server, client] of cases) {
    it(`${server} server: accepts ${client} clients of A and of B, refuses C`, () => {
      assert.equal(connect(server, [A], [A, B], client), "ok", "client of A");
      assert.equal(connect(server, [B], [A, B], client), "ok", "client of B");
      const refused = connect(server, [C], [A, B], client);
      assert.ok(refused instanceof ProtocolError, "client of C");
      assert.equal(refused.code, "bad-handshake");
    });
  }

  it("a client with keys [B, A] uses B only: a server of A alone refuses it", () => {
    for (const choice of ["monopiped2", "monopiped1", "spiped"] as const) {
      assert.equal(connect(choice, [B, A], [B]), "ok", choice);
      const refused = connect(choice, [B, A], [A]);
      assert.ok(refused instanceof ProtocolError, choice);
    }
  });

  it("the key order does not matter to the server; one key still works as before", () => {
    for (const choice of ["monopiped2", "monopiped1", "spiped", "auto"] as const) {
      assert.equal(connect(choice, [A], [B, C, A]), "ok", choice);
      assert.equal(connect(choice, [A], [A]), "ok", choice);
    }
  });

  it("monopiped1: a server with several keys sends its hello only after the client's opened", () => {
    const server = createHandshake("server", "monopiped1", [A, B]);
    assert.deepEqual(server.start(), [], "no hello before the key is known");
    const client = createHandshake("client", "monopiped1", [B]);
    const [hello] = client.start();
    const out = server.receive(hello);
    assert.equal(out.length, 1);
    assert.equal(out[0].length, 48);
    client.receive(out[0]);
    roundTrip(client, server);
    // With one key the server says its hello at once, as the original does.
    assert.equal(createHandshake("server", "monopiped1", [A]).start().length, 1);
  });
});
