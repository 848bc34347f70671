/**
 * Socket reads into one buffer the whole process shares, instead of a new 64 KiB buffer per read.
 *
 * net.Socket's `onread` option makes libuv read into a caller's buffer and hands each read to a
 * callback: no allocation, no stream machinery, no 'data' event per read. One buffer serves every
 * socket of the process because JavaScript runs one callback at a time and each read is consumed
 * (sealed, opened, or copied by whoever keeps it) before the callback returns.
 *
 * `onread` is public for sockets we dial (net.connect). A socket a server accepts has no such
 * option, so its handle is moved into a new net.Socket made with `onread` (the `handle` option the
 * server itself uses). That is the one use of Node internals here: `_handle`, the handle's
 * `useUserBuffer` and the server's `_server` connection count. adoptAccepted() checks each and
 * returns null where a Node version differs (the caller keeps the ordinary socket); the unit test
 * test/unit/fastread.test.ts fails on any Node version where the fast path is not taken.
 */
import net from "node:net";

/** Bytes per read: a few 64 KiB records per read, one syscall and one callback for all. */
export const READ_SIZE = 256 * 1024;

/**
 * Bytes a socket may queue for writing before write() asks its source to pause. Pausing a socket
 * read through `onread` stops libuv's polling of it (and resuming starts it again), so it is kept
 * for real backpressure: a read's worth of records fits under it.
 */
export const WRITE_HIGH_WATER = 512 * 1024;

/** Who receives a socket's reads: called with a view of the shared buffer, valid during the call only. */
export interface ReadSink {
  onBytes(chunk: Buffer): void;
}

const SINK = Symbol("monopiped.readSink");
/** Set on sockets whose reads come through onRead. */
const FAST = Symbol("monopiped.fastRead");
/** Bytes read before a sink was set (copies): delivered first when it is. */
const EARLY = Symbol("monopiped.earlyReads");

type FastSocket = net.Socket & { [SINK]?: ReadSink; [EARLY]?: Buffer[]; [FAST]?: true };

let shared: Buffer | null = null;
function sharedBuffer(): Buffer {
  shared ??= Buffer.allocUnsafeSlow(READ_SIZE);
  return shared;
}

function onRead(this: FastSocket, nread: number, buf: Buffer): boolean {
  const chunk = buf.subarray(0, nread);
  const sink = this[SINK];
  if (sink) sink.onBytes(chunk);
  else {
    this[EARLY] ??= [];
    this[EARLY].push(Buffer.from(chunk));
  }
  return true; // false would stop reading; pause() does that
}

/** The `onread` option for net.connect / new net.Socket. */
function onreadOption(): { buffer: Buffer; callback: (nread: number, buf: Buffer) => boolean } {
  return { buffer: sharedBuffer(), callback: onRead as (nread: number, buf: Buffer) => boolean };
}

/** Options for net.connect that make the socket read through the shared buffer (then call markFast). */
export function fastConnectOptions(): {
  onread: ReturnType<typeof onreadOption>;
  writableHighWaterMark: number;
} {
  return { onread: onreadOption(), writableHighWaterMark: WRITE_HIGH_WATER };
}

/** Record that `socket` was made with fastConnectOptions() / onreadOption(). */
export function markFast(socket: net.Socket): void {
  (socket as FastSocket)[FAST] = true;
}

/** Whether `socket` reads through the shared buffer (its reads go to setReadSink's sink, not 'data'). */
export function isFast(socket: net.Socket): boolean {
  return (socket as FastSocket)[FAST] === true;
}

/** Route a fast socket's reads to `sink` (reads that came before it go first, now). */
export function setReadSink(socket: net.Socket, sink: ReadSink): void {
  const s = socket as FastSocket;
  s[SINK] = sink;
  const early = s[EARLY];
  if (early) {
    s[EARLY] = undefined;
    for (const chunk of early) sink.onBytes(chunk);
  }
}

interface HandleLike {
  useUserBuffer?: unknown;
}
type ServerSide = { _handle?: HandleLike | null; _server?: unknown; server?: unknown };

/**
 * The accepted (and still paused) `socket` as a new socket reading through `onread`, or null where
 * this Node version does not allow it (then `socket` is untouched and still usable).
 */
export function adoptAccepted(socket: net.Socket): net.Socket | null {
  const old = socket as net.Socket & ServerSide;
  const handle = old._handle;
  if (!handle || typeof handle.useUserBuffer !== "function" || !("_server" in old)) return null;
  if (old.readableFlowing !== false || old.destroyed) return null;
  let fresh: net.Socket & ServerSide;
  try {
    fresh = new net.Socket({
      handle,
      allowHalfOpen: true,
      readable: true,
      writable: true,
      pauseOnCreate: true,
      onread: onreadOption(),
      writableHighWaterMark: WRITE_HIGH_WATER,
    } as net.SocketConstructorOpts) as net.Socket & ServerSide;
  } catch {
    return null;
  }
  // The server counts its connections on the socket it made: the new one closes in its place.
  old._handle = null;
  fresh._server = old._server;
  fresh.server = old.server;
  markFast(fresh);
  return fresh;
}

/**
 * A socket the HTTP server has just handed over with an upgrade request, as a new socket reading
 * through `onread` (see adoptAccepted), or null (then `socket` is untouched). The HTTP parser has
 * let go of the handle by then; nothing may be waiting in the old socket's own buffer.
 */
export function adoptUpgraded(socket: net.Socket): net.Socket | null {
  if (socket.readableLength > 0 || socket.destroyed) return null;
  socket.pause();
  return adoptAccepted(socket);
}
