/**
 * ws's own frame writer and parser (exported by the package, not in its type declarations): the
 * independent source our framing (ws-frame.ts) and frame reader (ws-read.ts) are held against.
 */
import { createRequire } from "node:module";

export interface FrameOptions {
  fin: boolean;
  opcode: number;
  mask: boolean;
  readOnly: boolean;
  rsv1: boolean;
}
export type ReceiverT = NodeJS.WritableStream & {
  on(ev: "message", f: (data: Buffer, isBinary: boolean) => void): ReceiverT;
  on(ev: "error", f: (err: Error) => void): ReceiverT;
};

const ws = createRequire(import.meta.url)("ws") as { Sender: unknown; Receiver: unknown };
export const Sender = ws.Sender as { frame(data: Buffer, o: FrameOptions): Buffer[] };
export const Receiver = ws.Receiver as new (o: { isServer: boolean; maxPayload: number }) => ReceiverT;
