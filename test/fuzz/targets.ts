/**
 * Fuzz targets: every parser that reads bytes or text from outside. Each target makes its own cases
 * (fast-check arbitraries): random input, valid input mutated (bit flips, truncation, duplication,
 * reordering, deletion, insertion, splicing of two sessions), and valid input as is, all of it
 * delivered in arbitrary chunks. check() throws an InvariantError when an invariant fails:
 *
 * - only the parser's own error is thrown (ProtocolError; ws's WS_ERR_* errors; AddressError;
 *   UsageError);
 * - a handshake authenticates only on the genuine bytes (never on a mutated prefix), and never on
 *   a replay where the protocol promises that; unmodified input completes;
 * - an opener emits events only for whole records that arrived unmodified, in order, and all of
 *   them when the input is unmodified (no plaintext before authentication);
 * - buffered bytes never exceed one record (or one handshake message).
 */
import fc from "fast-check";
import { AddressError, parseAddress } from "../../src/address.js";
import { parseRunArgs, UsageError } from "../../src/cli.js";
import { ProtocolError } from "../../src/protocol/errors.js";
import {
  createHandshake,
  type Keys,
  loadProtocols,
  type ProtocolChoice,
  prepareKeys,
} from "../../src/protocol/index.js";
import { monopiped1Handshake } from "../../src/protocol/monopiped1.js";
import {
  HEADER_LEN,
  Monopiped2Opener,
  Monopiped2Sealer,
  monopiped2Handshake,
  MAX_PAYLOAD as V2_MAX_PAYLOAD,
} from "../../src/protocol/monopiped2.js";
import { CipherState, keyPairFromSecret, TAGLEN } from "../../src/protocol/noise.js";
import { _internal as spipedInternal } from "../../src/protocol/spiped.js";
import type {
  Handshake,
  OpenEvent,
  RecordOpener,
  RecordSealer,
  Role,
  Session,
} from "../../src/protocol/types.js";
import { MAX_PAYLOAD as WS_MAX_PAYLOAD } from "../../src/transport/ws-link.js";
import { FrameReader } from "../../src/transport/ws-read.js";

// The compatibility protocols' code is loaded on demand (as an end does at start-up).
await loadProtocols("all");

export class InvariantError extends Error {}

function invariant(ok: unknown, message: string): asserts ok {
  if (!ok) throw new InvariantError(message);
}

export interface FuzzTarget<C = unknown> {
  name: string;
  arbitrary: fc.Arbitrary<C>;
  /** Runs one case; throws InvariantError (or anything unexpected) on a failure. */
  check(c: C): void | Promise<void>;
  /** Valid inputs, each checked under every split into two chunks (and byte by byte). */
  splits?(): { bytes: Buffer; check(chunks: Buffer[]): void }[];
}

// ---------------------------------------------------------------------------------------------
// Mutations and chunking

const MUTATIONS = ["flip", "truncate", "duplicate", "swap", "splice", "insert", "delete", "byte"] as const;
type Mutation = { kind: (typeof MUTATIONS)[number]; a: number; b: number; c: number; bytes: Uint8Array };

const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  kind: fc.constantFrom(...MUTATIONS),
  a: fc.nat(),
  b: fc.nat(),
  c: fc.nat(),
  bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }),
});

/**
 * Applies `m` to `wire`, whose units (records or messages) end at `bounds`; `other` is another
 * session's wire for splicing.
 */
function mutate(wire: Buffer, bounds: readonly number[], m: Mutation, other: Buffer): Buffer {
  const len = wire.length;
  if (len === 0) return Buffer.from(m.bytes);
  const at = m.a % (len + 1);
  switch (m.kind) {
    case "flip": {
      const out = Buffer.from(wire);
      const bit = m.a % (len * 8);
      out[bit >> 3] ^= 1 << (bit & 7);
      return out;
    }
    case "truncate":
      return wire.subarray(0, m.a % len);
    case "duplicate": {
      // A whole unit duplicated in place (a replayed record), or any byte range copied elsewhere.
      if (bounds.length > 0 && m.c % 2 === 0) {
        const i = m.b % bounds.length;
        const start = i === 0 ? 0 : bounds[i - 1];
        return Buffer.concat([
          wire.subarray(0, bounds[i]),
          wire.subarray(start, bounds[i]),
          wire.subarray(bounds[i]),
        ]);
      }
      const start = m.b % len;
      const piece = wire.subarray(start, start + 1 + (m.c % (len - start)));
      return Buffer.concat([wire.subarray(0, at), piece, wire.subarray(at)]);
    }
    case "swap": {
      // Two units exchanged (records reordered); without units, two halves.
      if (bounds.length >= 2) {
        const units: Buffer[] = [];
        let start = 0;
        for (const end of bounds) {
          units.push(wire.subarray(start, end));
          start = end;
        }
        const tail = wire.subarray(start);
        const i = m.b % units.length;
        const j = m.c % units.length;
        [units[i], units[j]] = [units[j], units[i]];
        return Buffer.concat([...units, tail]);
      }
      return Buffer.concat([wire.subarray(at), wire.subarray(0, at)]);
    }
    case "splice": {
      // This session up to a point, then another session's bytes from a point.
      const from = other.length === 0 ? 0 : m.b % other.length;
      return Buffer.concat([wire.subarray(0, at), other.subarray(from)]);
    }
    case "insert":
      return Buffer.concat([wire.subarray(0, at), m.bytes, wire.subarray(at)]);
    case "delete":
      return Buffer.concat([wire.subarray(0, at), wire.subarray(Math.min(len, at + 1 + (m.b % 64)))]);
    case "byte": {
      const out = Buffer.from(wire);
      out[m.a % len] = m.bytes[0];
      return out;
    }
  }
}

/** Chunking: cut points (taken modulo the length), or one byte at a time. */
type Chunking = { cuts: number[]; single: boolean };
const chunkingArb: fc.Arbitrary<Chunking> = fc.record({
  cuts: fc.array(fc.nat(), { maxLength: 6 }),
  single: fc.boolean().map((b) => b && Math.random() < 0.1),
});

function chunk(bytes: Buffer, how: Chunking): Buffer[] {
  if (how.single && bytes.length <= 4096) return Array.from(bytes, (_, i) => bytes.subarray(i, i + 1));
  const cuts = [...new Set(how.cuts.map((c) => c % (bytes.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let start = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(bytes.subarray(start, c));
    start = c;
  }
  return out;
}

/** Input of a case: which source, which mutations, how chunked. */
type Source =
  | { mode: "random"; bytes: Uint8Array }
  | { mode: "valid" }
  | { mode: "mutated"; mutations: Mutation[] };
function sourceArb(maxRandom: number): fc.Arbitrary<Source> {
  return fc.oneof(
    {
      weight: 2,
      arbitrary: fc.record({
        mode: fc.constant("random" as const),
        bytes: fc.uint8Array({ maxLength: maxRandom }),
      }),
    },
    { weight: 1, arbitrary: fc.record({ mode: fc.constant("valid" as const) }) },
    {
      weight: 6,
      arbitrary: fc.record({
        mode: fc.constant("mutated" as const),
        mutations: fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
      }),
    },
  );
}

function isProtocolError(e: unknown): e is ProtocolError {
  return e instanceof ProtocolError;
}

function rethrowUnlessProtocolError(e: unknown, where: string): void {
  if (!isProtocolError(e)) {
    throw new InvariantError(
      `${where}: threw something other than a ProtocolError: ${String((e as Error)?.stack ?? e)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Record openers

/** What one genuine record yields, for comparing what an opener releases. */
type Item = { data: Buffer } | { end: true } | { abort: string };

interface Stream {
  wire: Buffer;
  /** End offset of each record. */
  bounds: number[];
  items: Item[];
}

/** Flattened events: data joined between control events, empty data dropped. */
function flattenItems(items: readonly Item[]): string[] {
  const out: string[] = [];
  let data: Buffer[] = [];
  const flush = () => {
    const d = Buffer.concat(data);
    if (d.length > 0) out.push(`data:${d.toString("hex")}`);
    data = [];
  };
  for (const it of items) {
    if ("data" in it) data.push(it.data);
    else {
      flush();
      out.push("end" in it ? "end" : `abort:${it.abort}`);
    }
  }
  flush();
  return out;
}

function eventsToItems(events: readonly OpenEvent[]): Item[] {
  return events.map(
    (e): Item =>
      e.type === "data" ? { data: e.data } : e.type === "end" ? { end: true } : { abort: e.reason },
  );
}

interface OpenerSpec {
  name: string;
  streams: Stream[];
  /** A fresh opener for stream i's keys. */
  opener(i: number): RecordOpener;
  maxRecord: number;
}

type OpenerCase = { stream: number; other: number; source: Source; chunking: Chunking };

/** Checks one delivery of `chunks` to a fresh opener for stream `i` against the stream's records. */
function checkOpener(spec: OpenerSpec, i: number, chunks: Buffer[], mutated: boolean): void {
  const s = spec.streams[i];
  const fed = Buffer.concat(chunks);
  const opener = spec.opener(i);
  const events: OpenEvent[] = [];
  let failed = false;
  for (const c of chunks) {
    try {
      events.push(...opener.push(c));
    } catch (e) {
      rethrowUnlessProtocolError(e, `${spec.name} opener`);
      failed = true;
      break;
    }
    invariant(
      opener.buffered <= spec.maxRecord,
      `${spec.name}: ${opener.buffered} bytes buffered, more than one record (${spec.maxRecord})`,
    );
  }
  invariant(Buffer.concat(chunks).equals(fed), `${spec.name}: the opener wrote into its input`);
  // How many leading records arrived byte for byte as sealed.
  let intact = 0;
  while (intact < s.bounds.length && s.bounds[intact] <= fed.length) {
    const start = intact === 0 ? 0 : s.bounds[intact - 1];
    if (!fed.subarray(start, s.bounds[intact]).equals(s.wire.subarray(start, s.bounds[intact]))) break;
    intact++;
  }
  const got = flattenItems(eventsToItems(events)).join("|");
  let matched = -1;
  for (let j = intact; j >= 0; j--) {
    if (flattenItems(s.items.slice(0, j)).join("|") === got) {
      matched = j;
      break;
    }
  }
  invariant(
    matched >= 0,
    `${spec.name}: released events that are not those of the ${intact} intact leading record(s): ${got.slice(0, 200)}`,
  );
  if (!mutated && fed.equals(s.wire)) {
    invariant(!failed, `${spec.name}: the unmodified records were refused`);
    invariant(
      matched === s.items.length || flattenItems(s.items).join("|") === got,
      `${spec.name}: unmodified records not all released`,
    );
    invariant(opener.buffered === 0, `${spec.name}: bytes left buffered after whole records`);
  }
}

function openerTarget(spec: OpenerSpec): FuzzTarget<OpenerCase> {
  const n = spec.streams.length;
  return {
    name: `${spec.name} record opener`,
    arbitrary: fc.record({
      stream: fc.nat(n - 1),
      other: fc.nat(n - 1),
      source: sourceArb(3 * spec.maxRecord > 4096 ? 512 : 3 * spec.maxRecord),
      chunking: chunkingArb,
    }),
    check(c) {
      const s = spec.streams[c.stream];
      let bytes: Buffer;
      if (c.source.mode === "random") bytes = Buffer.from(c.source.bytes);
      else if (c.source.mode === "valid") bytes = s.wire;
      else {
        bytes = s.wire;
        for (const m of c.source.mutations) bytes = mutate(bytes, s.bounds, m, spec.streams[c.other].wire);
      }
      const mutated =
        !bytes.equals(s.wire.subarray(0, Math.min(bytes.length, s.wire.length))) ||
        bytes.length > s.wire.length;
      checkOpener(spec, c.stream, chunk(bytes, c.chunking), mutated);
    },
    splits() {
      return spec.streams
        .filter((s) => s.wire.length <= (spec.name === "monopiped1" ? 1200 : 4096))
        .map((s) => {
          const i = spec.streams.indexOf(s);
          return { bytes: s.wire, check: (chunks: Buffer[]) => checkOpener(spec, i, chunks, false) };
        });
    },
  };
}

/** Record shapes every opener is tried with (sizes in bytes; "end"/"abort" close a stream). */
const SHAPES: (number | "end" | "abort" | "empty")[][] = [
  [1],
  [5, "end"],
  [0, 300, "abort"],
  ["empty", 17, "empty", 2000, "end", "abort"],
  [1023, 1024, 1025, 1040, 1041],
  [3, 3, 3, 3, 3, 3],
  [V2_MAX_PAYLOAD, 1, "end"],
  [V2_MAX_PAYLOAD + 1],
  ["abort"],
  [64, "end"],
];

function pseudoBytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

/** Seals a shape; returns the wire and, per record, its end offset and what it yields. */
function sealStream(
  shape: (number | "end" | "abort" | "empty")[],
  sealer: RecordSealer & { empty?(): Buffer },
  itemsOf: (record: Buffer, payload: Buffer | null, kind: string) => Item[],
  seed: number,
): Stream {
  const records: Buffer[] = [];
  const bounds: number[] = [];
  const items: Item[] = [];
  let at = 0;
  const add = (recs: Buffer[], payloads: (Buffer | null)[], kind: string) => {
    recs.forEach((r, k) => {
      records.push(r);
      at += r.length;
      bounds.push(at);
      items.push(...itemsOf(r, payloads[k] ?? null, kind));
    });
  };
  for (const step of shape) {
    if (step === "end") add(sealer.end(), [], "end");
    else if (step === "abort") add(sealer.abort(`reason ${seed}`), [], "abort");
    else if (step === "empty") {
      if (sealer.empty) add([sealer.empty()], [Buffer.alloc(0)], "data");
    } else {
      const plain = pseudoBytes(step, seed++);
      const recs = sealer.seal(plain);
      const per = sealer.maxPlaintext;
      add(
        recs,
        recs.map((_, k) => plain.subarray(k * per, (k + 1) * per)),
        "data",
      );
    }
  }
  return { wire: Buffer.concat(records), bounds, items };
}

function monopiped2OpenerSpec(): OpenerSpec {
  const keys = SHAPES.map((_, i) => Buffer.alloc(32, i + 1));
  const cipher = (k: Buffer) => {
    const c = new CipherState();
    c.initializeKey(k);
    return c;
  };
  const streams = SHAPES.map((shape, i) =>
    sealStream(
      shape,
      new Monopiped2Sealer(cipher(keys[i])),
      (_r, payload, kind) =>
        kind === "end"
          ? [{ end: true }]
          : kind === "abort"
            ? [{ abort: `reason ${i}` }]
            : [{ data: payload as Buffer }],
      i,
    ),
  );
  // An abort's reason is `reason <seed>` where seed advanced past the data records: recompute it.
  SHAPES.forEach((shape, i) => {
    let seed = i;
    for (const step of shape) if (typeof step === "number") seed++;
    for (const it of streams[i].items) if ("abort" in it) it.abort = `reason ${seed}`;
  });
  return {
    name: "monopiped2",
    streams,
    opener: (i) => new Monopiped2Opener(cipher(keys[i])),
    maxRecord: HEADER_LEN + V2_MAX_PAYLOAD + TAGLEN,
  };
}

/** A monopiped1 session pair from fixed ephemerals, so it can be made again for each case. */
function monopiped1Pair(keys: Keys, seed: number): { client: Session; server: Session } {
  const c = monopiped1Handshake("client", keys.monopiped1, Buffer.alloc(32, seed));
  const s = monopiped1Handshake("server", keys.monopiped1, Buffer.alloc(32, seed + 100));
  const [hc] = c.start();
  const [hs] = s.start();
  c.receive(hs);
  s.receive(hc);
  return { client: c.session as Session, server: s.session as Session };
}

/** The server's session of monopiped1Pair(keys, seed) again, from the client's (fixed) hello alone. */
function monopiped1ServerSession(keys: Keys, seed: number, clientHello: Buffer): Session {
  const s = monopiped1Handshake("server", keys.monopiped1, Buffer.alloc(32, seed + 100));
  s.receive(clientHello);
  return s.session as Session;
}

function monopiped1OpenerSpec(): OpenerSpec {
  const keys = SHAPES.map((_, i) => prepareKeys(Buffer.from(`fuzz monopiped1 key ${i}`)));
  const streams = SHAPES.map((shape, i) =>
    sealStream(
      shape.filter((s) => typeof s === "number" && s <= 5000),
      monopiped1Pair(keys[i], i + 1).client.sealer,
      (_r, payload) => (payload && payload.length > 0 ? [{ data: payload }] : []),
      i,
    ),
  );
  const hellos = keys.map(
    (k, i) => monopiped1Handshake("client", k.monopiped1, Buffer.alloc(32, i + 1)).start()[0],
  );
  return {
    name: "monopiped1",
    streams,
    opener: (i) => monopiped1ServerSession(keys[i], i + 1, hellos[i]).opener,
    maxRecord: 1060,
  };
}

function spipedOpenerSpec(): OpenerSpec {
  const { PacketKeys, makeSession } = spipedInternal;
  const keys = SHAPES.map((_, i) => ({ E: Buffer.alloc(32, i + 1), H: Buffer.alloc(32, i + 101) }));
  const streams = SHAPES.map((shape, i) =>
    sealStream(
      shape.filter((s) => typeof s === "number" && s > 0 && s <= 5000),
      makeSession(new PacketKeys(keys[i].E, keys[i].H), new PacketKeys(keys[i].E, keys[i].H)).sealer,
      (_r, payload) => (payload && payload.length > 0 ? [{ data: payload }] : []),
      i,
    ),
  );
  return {
    name: "spiped",
    streams,
    opener: (i) =>
      makeSession(new PacketKeys(keys[i].E, keys[i].H), new PacketKeys(keys[i].E, keys[i].H)).opener,
    maxRecord: 1060,
  };
}

// ---------------------------------------------------------------------------------------------
// Handshakes

const KEY_A = prepareKeys(Buffer.from("fuzz key file A\n"));
const KEY_B = prepareKeys(Buffer.from("fuzz key file B\n"));
const KEY_C = prepareKeys(Buffer.from("fuzz key file C (the server does not hold it)\n"));
/** Servers hold [A, B]; clients hold A. */
const SERVER_KEYS = [KEY_A, KEY_B];

interface HandshakeSpec {
  name: string;
  role: Role;
  /** The protocol the target runs, and the one its genuine peer runs. */
  target: ProtocolChoice;
  peers: ProtocolChoice[];
  /** Largest handshake message the target may hold while waiting. */
  maxBuffered: number;
  /** Whether a recorded (replayed) peer transcript may authenticate (monopiped1: it does, finding M1). */
  replayAuthenticates: boolean;
  /** Some cases run spiped without forward secrecy (-f), to keep most cases clear of 2048-bit DH. */
  spiped?: boolean;
}

type HandshakeCase = {
  peer: number;
  peerKey: number; // 0: A, 1: B, 2: C
  noPfs: boolean;
  live: boolean;
  flight: number; // which flight to the target is mutated (live mode)
  source: Source;
  chunking: Chunking;
  other: number;
};

function peerKeys(spec: HandshakeSpec, which: number): Keys[] {
  if (spec.role === "client") return SERVER_KEYS; // the target is a client of A; its peer serves [A, B]
  return [[KEY_A], [KEY_B], [KEY_C]][which];
}

/**
 * X25519 key pairs made once and reused as monopiped2 ephemerals (fuzzing only: a real handshake
 * makes a fresh one), so that a case costs the parsing and the DH, not a key generation.
 */
const EPHEMERALS = Array.from({ length: 16 }, (_, i) => keyPairFromSecret(Buffer.alloc(32, i + 1)));
const ephemeral = () => EPHEMERALS[Math.floor(Math.random() * EPHEMERALS.length)];

function makeTarget(spec: HandshakeSpec, noPfs: boolean, pooled = true): Handshake {
  if (spec.target === "monopiped2" && pooled) {
    return monopiped2Handshake(
      spec.role,
      (spec.role === "client" ? [KEY_A] : SERVER_KEYS).map((k) => k.monopiped2),
      ephemeral(),
    );
  }
  return createHandshake(
    spec.role,
    spec.target,
    spec.role === "client" ? [KEY_A] : SERVER_KEYS,
    noPfs ? { noPfs: true } : {},
  );
}

function makePeer(spec: HandshakeSpec, c: HandshakeCase, pooled = true): Handshake {
  const peerRole: Role = spec.role === "client" ? "server" : "client";
  if (spec.peers[c.peer % spec.peers.length] === "monopiped2" && pooled) {
    return monopiped2Handshake(
      peerRole,
      peerKeys(spec, c.peerKey).map((k) => k.monopiped2),
      ephemeral(),
    );
  }
  return createHandshake(
    peerRole,
    spec.peers[c.peer % spec.peers.length],
    peerKeys(spec, c.peerKey),
    c.noPfs ? { noPfs: true } : {},
  );
}

/** Recorded peer transcripts (what the peer sent in a genuine handshake), for replays and splicing. */
interface Recorded {
  flights: Buffer[];
}

function record(spec: HandshakeSpec, c: HandshakeCase): Recorded {
  // A genuine run between a fresh target-like end and a peer; returns the peer's flights. Fresh
  // ephemerals, never the pool's: a replay must not meet its own recorded ephemeral again.
  const target = makeTarget(spec, c.noPfs, false);
  const peer = makePeer(spec, c, false);
  const flights: Buffer[] = [];
  let toTarget = peer.start();
  let toPeer = target.start();
  for (let round = 0; round < 6; round++) {
    if (toTarget.length) flights.push(Buffer.concat(toTarget));
    const a = toTarget.flatMap((m) => target.receive(m));
    const b = toPeer.flatMap((m) => peer.receive(m));
    toPeer = a;
    toTarget = b;
    if (!a.length && !b.length) break;
  }
  return { flights };
}

function checkHandshakeRun(
  spec: HandshakeSpec,
  target: Handshake,
  genuine: Buffer,
  actual: Buffer,
  mayAuthenticate: boolean,
  replayable: readonly Buffer[] = [],
): void {
  if (!target.session) {
    invariant(
      target.buffered <= spec.maxBuffered,
      `${spec.name}: ${target.buffered} bytes held in the handshake (at most ${spec.maxBuffered})`,
    );
    return;
  }
  const rest = target.takeRest();
  const consumed = actual.length - rest.length;
  const isPrefixOf = (g: Buffer) =>
    consumed <= g.length && actual.subarray(0, consumed).equals(g.subarray(0, consumed));
  // Where a replay authenticates (monopiped1, finding M1), a recorded genuine transcript may too.
  const replayed = spec.replayAuthenticates && replayable.some(isPrefixOf);
  invariant(
    mayAuthenticate || replayed,
    `${spec.name}: authenticated where it must not (replay, or a key it does not hold)`,
  );
  invariant(
    isPrefixOf(genuine) || replayed,
    `${spec.name}: authenticated on bytes that differ from the genuine handshake`,
  );
}

function handshakeTarget(spec: HandshakeSpec): FuzzTarget<HandshakeCase> {
  // A few recorded transcripts per peer protocol, made once.
  const recorded: Recorded[] = [];
  for (let i = 0; i < 4; i++) {
    recorded.push(
      record(spec, {
        peer: i,
        peerKey: 0,
        noPfs: i % 2 === 0,
        live: true,
        flight: 0,
        source: { mode: "valid" },
        chunking: { cuts: [], single: false },
        other: 0,
      }),
    );
  }
  const flat = recorded.map((r) => Buffer.concat(r.flights));
  const boundsOf = (r: Recorded) => {
    let at = 0;
    return r.flights.map((f) => {
      at += f.length;
      return at;
    });
  };

  function live(c: HandshakeCase): void {
    const target = makeTarget(spec, c.noPfs);
    const peer = makePeer(spec, c);
    const genuineFed: Buffer[] = [];
    const actualFed: Buffer[] = [];
    let toTarget = peer.start();
    let toPeer = target.start();
    let flightIndex = 0;
    let mutated = false;
    for (let round = 0; round < 6; round++) {
      let out: Buffer[] = [];
      if (toTarget.length) {
        const genuine = Buffer.concat(toTarget);
        let actual: Buffer = genuine;
        if (flightIndex === c.flight % 2 && c.source.mode === "mutated") {
          const other = flat[c.other % flat.length];
          for (const m of c.source.mutations) actual = mutate(actual, [], m, other);
        }
        if (c.source.mode === "random" && flightIndex === 0) actual = Buffer.from(c.source.bytes);
        if (!actual.equals(genuine)) mutated = true;
        flightIndex++;
        genuineFed.push(genuine);
        actualFed.push(actual);
        try {
          for (const piece of chunk(actual, c.chunking)) {
            out.push(...target.receive(piece));
            if (!target.session) {
              invariant(
                target.buffered <= spec.maxBuffered,
                `${spec.name}: ${target.buffered} bytes held in the handshake`,
              );
            }
          }
        } catch (e) {
          rethrowUnlessProtocolError(e, spec.name);
          invariant(target.session === null, `${spec.name}: a session and an error`);
          return;
        }
      }
      let back: Buffer[] = [];
      try {
        back = toPeer.flatMap((m) => peer.receive(m));
      } catch (e) {
        rethrowUnlessProtocolError(e, `${spec.name} (its genuine peer)`);
        out = [];
      }
      toPeer = out;
      toTarget = back;
      if (!out.length && !back.length) break;
    }
    const wrongKey = spec.role === "server" && c.peerKey === 2;
    const genuine = Buffer.concat(genuineFed);
    const actual = Buffer.concat(actualFed);
    checkHandshakeRun(spec, target, genuine, actual, !wrongKey, flat);
    if (!mutated && c.source.mode !== "random") {
      if (wrongKey) {
        invariant(!target.session, `${spec.name}: accepted a key it does not hold`);
        return;
      }
      invariant(target.session && peer.session, `${spec.name}: the unmodified handshake did not complete`);
      // A record each way: the sessions agree.
      const up = Buffer.from("fuzz");
      const got = (events: OpenEvent[]) =>
        Buffer.concat(events.flatMap((e) => (e.type === "data" ? [e.data] : [])));
      const t = target.session as Session;
      const p = peer.session as Session;
      invariant(
        got(p.opener.push(Buffer.concat([peer.takeRest(), ...t.sealer.seal(up)]))).equals(up),
        `${spec.name}: records do not open`,
      );
      invariant(
        got(t.opener.push(Buffer.concat(p.sealer.seal(up)))).equals(up),
        `${spec.name}: records do not open`,
      );
    }
  }

  function replay(c: HandshakeCase): void {
    const r = recorded[c.other % recorded.length];
    const genuine = flat[c.other % flat.length];
    let bytes: Buffer = genuine;
    if (c.source.mode === "random") bytes = Buffer.from(c.source.bytes);
    else if (c.source.mode === "mutated")
      for (const m of c.source.mutations)
        bytes = mutate(bytes, boundsOf(r), m, flat[(c.other + 1) % flat.length]);
    const target = makeTarget(spec, c.noPfs);
    target.start();
    try {
      for (const piece of chunk(bytes, c.chunking)) {
        target.receive(piece);
        if (!target.session)
          invariant(target.buffered <= spec.maxBuffered, `${spec.name}: ${target.buffered} bytes held`);
      }
    } catch (e) {
      rethrowUnlessProtocolError(e, spec.name);
      return;
    }
    checkHandshakeRun(spec, target, genuine, bytes, spec.replayAuthenticates, flat);
  }

  return {
    name: `${spec.name} handshake`,
    arbitrary: fc.record({
      peer: fc.nat(7),
      peerKey: fc.constantFrom(0, 0, 0, 1, 2),
      // spiped with forward secrecy costs four 2048-bit exponentiations: 1 case in 10.
      noPfs: spec.spiped ? fc.nat(9).map((n) => n !== 0) : fc.constant(false),
      // A live handshake costs both ends' key generation and DH: 1 case in 3.
      live: fc.nat(2).map((n) => n === 0),
      flight: fc.nat(1),
      source: sourceArb(400),
      chunking: chunkingArb,
      other: fc.nat(7),
    }),
    check(c) {
      if (c.live) live(c);
      else replay(c);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames (our FrameReader, src/transport/ws-read.ts, as WsLink configures it)

function frame(opcode: number, payload: Buffer, opts: { fin?: boolean; mask?: boolean } = {}): Buffer {
  const fin = opts.fin ?? true;
  const mask = opts.mask ?? true;
  const len = payload.length;
  const head: number[] = [(fin ? 0x80 : 0) | opcode];
  const m = mask ? 0x80 : 0;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else {
    head.push(m | 127, 0, 0, 0, 0);
    head.push((len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff);
  }
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3];
  return Buffer.concat([Buffer.from(head), key, body]);
}

interface WsStream {
  wire: Buffer;
  bounds: number[];
  messages: Buffer[];
  isServer: boolean;
  /** The unmodified stream ends in a violation (a text message: the tunnel carries binary only). */
  violates?: boolean;
}

function wsStreams(): WsStream[] {
  const mk = (isServer: boolean, parts: [Buffer, Buffer | null][]): WsStream => {
    let at = 0;
    const bounds: number[] = [];
    for (const [f] of parts) {
      at += f.length;
      bounds.push(at);
    }
    return {
      wire: Buffer.concat(parts.map(([f]) => f)),
      bounds,
      messages: parts.flatMap(([, m]) => (m ? [m] : [])),
      isServer,
    };
  };
  const streams: WsStream[] = [];
  for (const isServer of [true, false]) {
    const mask = isServer; // a server receives masked frames
    const p = (n: number, s: number) => pseudoBytes(n, s);
    streams.push(
      mk(isServer, [
        [frame(2, p(48, 1), { mask }), p(48, 1)],
        [frame(2, p(19, 2), { mask }), p(19, 2)],
        [frame(9, p(4, 3), { mask }), null],
        [frame(2, p(1000, 4), { mask }), p(1000, 4)],
      ]),
      mk(isServer, [
        [frame(2, p(200, 5), { fin: false, mask }), null],
        [frame(0, p(100, 6), { fin: false, mask }), null],
        [frame(10, p(0, 0), { mask }), null],
        [frame(0, p(50, 7), { mask }), Buffer.concat([p(200, 5), p(100, 6), p(50, 7)])],
        [frame(8, Buffer.from([0x03, 0xe8]), { mask }), null],
      ]),
      mk(isServer, [[frame(2, p(65536, 8), { mask }), p(65536, 8)]]),
      mk(isServer, [[frame(2, p(WS_MAX_PAYLOAD, 9), { mask }), p(WS_MAX_PAYLOAD, 9)]]),
      {
        ...mk(isServer, [
          [frame(2, Buffer.alloc(0), { mask }), Buffer.alloc(0)],
          [frame(1, Buffer.from("text"), { mask }), null],
        ]),
        violates: true,
      },
    );
  }
  return streams;
}

type WsCase = { stream: number; other: number; source: Source; chunking: Chunking; tooBig: boolean };

function wsTarget(): FuzzTarget<WsCase> {
  const streams = wsStreams();
  const overLimit = [true, false].map((isServer) =>
    frame(2, pseudoBytes(WS_MAX_PAYLOAD + 1, 1), { mask: isServer }),
  );

  function run(s: WsStream, chunks: Buffer[], mutated: boolean, expectTooBig: boolean): void {
    const messages: Buffer[] = [];
    const violations: number[] = [];
    let stopped = false;
    const reader = new FrameReader(
      s.isServer,
      WS_MAX_PAYLOAD,
      {
        message: (data) => {
          invariant(violations.length === 0 && !stopped, "ws-read: a message after a violation or a Close");
          invariant(data.length <= WS_MAX_PAYLOAD, `ws-read: a ${data.length}-byte message over the limit`);
          messages.push(Buffer.from(data));
        },
        control: (f, opcode) => {
          invariant(opcode >= 8 && opcode <= 10, `ws-read: control frame with opcode ${opcode}`);
          invariant(f.length <= 14 + 125, `ws-read: a ${f.length}-byte control frame`);
          if (opcode === 8) {
            stopped = true;
            reader.stop();
          }
        },
        violation: (code) => {
          invariant(code === 1002 || code === 1009, `ws-read: close code ${code}`);
          invariant(violations.length === 0, "ws-read: a second violation");
          violations.push(code);
        },
      },
      true,
    );
    // Each piece is lent, as a read of the shared buffer is: overwritten once the call returns.
    const shared = Buffer.alloc(Math.max(1, ...chunks.map((c) => c.length)));
    for (const c of chunks) {
      const piece = shared.subarray(0, c.length);
      c.copy(piece);
      try {
        reader.push(piece);
      } catch (e) {
        throw new InvariantError(`ws-read: FrameReader threw: ${String((e as Error)?.stack ?? e)}`);
      }
      shared.fill(0xa5);
    }
    if (expectTooBig) invariant(violations[0] === 1009, "ws-read: a message over the limit was not refused");
    if (!mutated && !expectTooBig) {
      invariant(
        s.violates ? violations[0] === 1002 : violations.length === 0,
        `ws-read: the unmodified frames gave violations [${violations.join(", ")}]`,
      );
      invariant(
        messages.length === s.messages.length && messages.every((m, i) => m.equals(s.messages[i])),
        "ws-read: the unmodified frames did not give their messages",
      );
    }
  }

  return {
    name: "WebSocket frames (FrameReader, 128 KiB message limit)",
    arbitrary: fc.record({
      stream: fc.nat(streams.length - 1),
      other: fc.nat(streams.length - 1),
      source: sourceArb(300),
      chunking: chunkingArb,
      tooBig: fc.nat(49).map((n) => n === 0),
    }),
    check(c) {
      const s = streams[c.stream];
      if (c.tooBig) {
        run(s, chunk(overLimit[s.isServer ? 0 : 1], c.chunking), false, true);
        return;
      }
      let bytes: Buffer = s.wire;
      if (c.source.mode === "random") bytes = Buffer.from(c.source.bytes);
      else if (c.source.mode === "mutated")
        for (const m of c.source.mutations) bytes = mutate(bytes, s.bounds, m, streams[c.other].wire);
      run(s, chunk(bytes, c.chunking), !bytes.equals(s.wire), false);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Addresses and flags

const ADDRESSES = [
  "127.0.0.1:8080",
  "[::1]:443",
  "localhost:0",
  "example.com:65535",
  "/run/monopiped.sock",
  "ws://127.0.0.1:8080/tunnel",
  "wss://example.com/path?x=1",
  "[fe80::1%eth0]:22",
  "0.0.0.0:1",
];

function mutateText(text: string, ops: { kind: number; a: number; s: string }[]): string {
  let t = text;
  for (const op of ops) {
    const at = t.length === 0 ? 0 : op.a % (t.length + 1);
    switch (op.kind % 4) {
      case 0:
        t = t.slice(0, at) + op.s + t.slice(at);
        break;
      case 1:
        t = t.slice(0, at) + t.slice(at + 1 + (op.a % 5));
        break;
      case 2:
        t = t.slice(0, at);
        break;
      default:
        t = t.slice(0, at) + op.s + t.slice(at + op.s.length);
    }
  }
  return t;
}

const textOpsArb = fc.array(
  fc.record({
    kind: fc.nat(3),
    a: fc.nat(),
    s: fc.string({ maxLength: 4, unit: fc.constantFrom(..."[]:/0123456789abf%.-@ \t\n\u0000é") }),
  }),
  { maxLength: 3 },
);

type AddressCase = { text: string; allowUrl: boolean; allowPortZero: boolean };

function addressTarget(): FuzzTarget<AddressCase> {
  return {
    name: "address parser (parseAddress)",
    arbitrary: fc.record({
      text: fc.oneof(
        fc.string({ maxLength: 40 }),
        fc.string({ maxLength: 40, unit: "binary" }),
        fc.tuple(fc.constantFrom(...ADDRESSES), textOpsArb).map(([a, ops]) => mutateText(a, ops)),
      ),
      allowUrl: fc.boolean(),
      allowPortZero: fc.boolean(),
    }),
    check(c) {
      let a: ReturnType<typeof parseAddress>;
      try {
        a = parseAddress(c.text, { allowUrl: c.allowUrl, allowPortZero: c.allowPortZero });
      } catch (e) {
        invariant(e instanceof AddressError, `parseAddress(${JSON.stringify(c.text)}) threw ${String(e)}`);
        return;
      }
      if (a.kind === "tcp") {
        invariant(a.host.length > 0, "empty host accepted");
        invariant(
          Number.isInteger(a.port) && a.port <= 65535 && (a.port > 0 || c.allowPortZero),
          `bad port ${a.port}`,
        );
      } else if (a.kind === "unix") invariant(a.path.startsWith("/"), "unix path not absolute");
      else
        invariant(
          c.allowUrl && (a.url.protocol === "ws:" || a.url.protocol === "wss:"),
          "URL accepted where not allowed",
        );
    },
  };
}

// -u/--user is left out: a user name is looked up by running `id`, one process per case.
const FLAGS = [
  "-e",
  "-d",
  "-l",
  "-s",
  "-t",
  "-k",
  "-w",
  "-f",
  "-g",
  "-n",
  "-o",
  "-b",
  "-j",
  "-p",
  "-F",
  "-r",
  "-R",
  "-D",
  "-h",
  "-v",
  "-H",
  "--encrypt",
  "--decrypt",
  "--listen",
  "--listener",
  "--source",
  "--target",
  "--key",
  "--ws",
  "--protocol",
  "--no-pfs",
  "--require-pfs",
  "--max-conns",
  "--timeout",
  "--grace",
  "--bind",
  "--no-keepalive",
  "--pidfile",
  "--foreground",
  "--resolve-interval",
  "--no-resolve",
  "--daemon",
  "--syslog",
  "--log-level",
  "--log-format",
  "--help",
  "--version",
  "--path",
  "--trust-proxy",
  "--ping-interval",
  "--ca",
  "--insecure",
  "--sni",
  "--host",
  "--header",
  "--proxy",
  "--max-pending",
  "--hello-timeout",
  "--queue-timeout",
  "--idle-timeout",
  "--stall-timeout",
  "--metrics",
  "--workers",
  "--proxy-protocol",
];
const VALUES = [
  ...ADDRESSES,
  "key.bin",
  "-",
  "0",
  "1",
  "5",
  "-1",
  "1e3",
  "0x10",
  "NaN",
  "Infinity",
  "3.5",
  "",
  " ",
  "auto",
  "v1",
  "v2",
  "monopiped1",
  "monopiped2",
  "spiped",
  "debug",
  "json",
  "text",
  "/",
  "/x",
  "http://u:p@127.0.0.1:3128",
  "Name: value",
  "bad header",
  "1000",
];

type ArgsCase = { argv: string[]; pipe: boolean };

function argsTarget(): FuzzTarget<ArgsCase> {
  const token = fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...FLAGS) },
    { weight: 5, arbitrary: fc.constantFrom(...VALUES) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(fc.constantFrom(...FLAGS.filter((f) => f.startsWith("--"))), fc.constantFrom(...VALUES))
        .map(([f, v]) => `${f}=${v}`),
    },
    { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  );
  const valid = [
    ["-e", "-l", "127.0.0.1:3000", "-t", "127.0.0.1:4000", "-k", "key.bin"],
    ["-d", "-l", "127.0.0.1:4000", "-t", "127.0.0.1:22", "-k", "key.bin", "--protocol", "auto"],
    ["-d", "-w", "-s", "[::1]:443", "-t", "/run/x.sock", "-k", "key.bin", "-n", "10", "-o", "2"],
    ["-e", "-s", "127.0.0.1:1", "-t", "wss://h/p", "-k", "-", "--proxy", "http://127.0.0.1:3128"],
  ];
  return {
    name: "flag parser (parseRunArgs)",
    arbitrary: fc.record({
      argv: fc.oneof(
        fc.array(token, { maxLength: 14 }),
        fc
          .tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.nat(2), token), { maxLength: 3 }))
          .map(([v, ops]) => {
            const a = [...v];
            for (const [at, kind, t] of ops) {
              const i = at % (a.length + 1);
              if (kind === 0) a.splice(i, 0, t);
              else if (kind === 1) a.splice(i, 1);
              else a[i % a.length] = t;
            }
            return a;
          }),
      ),
      pipe: fc.boolean(),
    }),
    check(c) {
      const argv = c.argv.filter((t) => !/^-[^-]*u|^--u/.test(t));
      try {
        parseRunArgs(argv, c.pipe ? "pipe" : "run");
      } catch (e) {
        invariant(
          e instanceof UsageError,
          `parseRunArgs(${JSON.stringify(argv)}) threw ${String((e as Error)?.stack ?? e)}`,
        );
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------

export function allTargets(): FuzzTarget<never>[] {
  const hs = (spec: HandshakeSpec) => handshakeTarget(spec) as FuzzTarget<never>;
  return [
    hs({
      name: "monopiped2 server",
      role: "server",
      target: "monopiped2",
      peers: ["monopiped2"],
      maxBuffered: 48,
      replayAuthenticates: false,
    }),
    hs({
      name: "monopiped2 client",
      role: "client",
      target: "monopiped2",
      peers: ["monopiped2"],
      maxBuffered: 48,
      replayAuthenticates: false,
    }),
    hs({
      name: "monopiped1 server",
      role: "server",
      target: "monopiped1",
      peers: ["monopiped1"],
      maxBuffered: 48,
      replayAuthenticates: true,
    }),
    hs({
      name: "monopiped1 client",
      role: "client",
      target: "monopiped1",
      peers: ["monopiped1"],
      maxBuffered: 48,
      replayAuthenticates: true,
    }),
    hs({
      name: "spiped server",
      role: "server",
      target: "spiped",
      peers: ["spiped"],
      maxBuffered: 32 + 288,
      replayAuthenticates: false,
      spiped: true,
    }),
    hs({
      name: "spiped client",
      role: "client",
      target: "spiped",
      peers: ["spiped"],
      maxBuffered: 32 + 288,
      replayAuthenticates: false,
      spiped: true,
    }),
    hs({
      name: "auto-detect server",
      role: "server",
      target: "auto",
      peers: ["monopiped2", "monopiped1"],
      maxBuffered: 48,
      replayAuthenticates: true,
    }),
    openerTarget(monopiped2OpenerSpec()) as FuzzTarget<never>,
    openerTarget(monopiped1OpenerSpec()) as FuzzTarget<never>,
    openerTarget(spipedOpenerSpec()) as FuzzTarget<never>,
    wsTarget() as FuzzTarget<never>,
    addressTarget() as FuzzTarget<never>,
    argsTarget() as FuzzTarget<never>,
  ];
}

/** Runs `cases` cases of one target; never stops at a failure. */
export function runTarget(
  target: FuzzTarget<never>,
  cases: number,
  seed?: number,
  withSplits = true,
): { cases: number; failures: number; first?: string; seed: number } {
  let failures = 0;
  let first: string | undefined;
  let count = 0;
  const s = seed ?? (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;
  fc.check(
    fc.property(target.arbitrary as fc.Arbitrary<unknown>, (c) => {
      count++;
      try {
        (target.check as (c: unknown) => void)(c);
      } catch (e) {
        failures++;
        first ??= `${String((e as Error)?.message ?? e)}\n  case: ${JSON.stringify(c, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v)).slice(0, 600)}`;
      }
      return true;
    }),
    { numRuns: cases, seed: s },
  );
  // Every split of each valid input into two chunks, and byte by byte.
  for (const v of withSplits ? (target.splits?.() ?? []) : []) {
    if (v.bytes.length === 0) continue;
    for (let k = 0; k <= v.bytes.length; k++) {
      count++;
      try {
        v.check([v.bytes.subarray(0, k), v.bytes.subarray(k)]);
      } catch (e) {
        failures++;
        first ??= `split at ${k}: ${String((e as Error)?.message ?? e)}`;
      }
    }
  }
  return { cases: count, failures, first, seed: s };
}
