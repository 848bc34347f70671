#!/usr/bin/env python3
"""A tiny application that is not built on libuv, to judge how a connection ended.

libuv (hence Node.js) may report a TCP reset that arrives behind data as an ordinary end of file;
CPython's socket module reads the error itself. Prints one JSON line and exits 0.

  app.py connect HOST PORT [options]   connect, act, read, report
  app.py serve HOST PORT [options]     accept one connection, act, read, report (first prints
                                       {"port": N} once listening; PORT 0 picks one)

options:
  --send N        send N bytes (a repeating pattern) after connecting/accepting
  --push N        send N bytes of the pattern piece by piece (never all of it in memory, so N may
                  be 1 GiB); a reset or broken pipe while pushing ends the run with "end": "reset"
                  (no more than --timeout S blocked: "timeout") instead of an exception; the
                  report then also has "pushed": bytes sent
  --then ACTION   after sending: 'shut' (FIN, keep reading), 'rst' (reset at once, no reading),
                  'close' (close at once), or 'read' (default: keep reading until the end)
  --wait S        seconds to wait before ACTION (default 0)
  --timeout S     give up reading after S seconds of silence (default 20)

report: {"received": bytes, "sha256": hex of what was received, "end": "eof" | "reset" |
         "timeout" | "none" | "error: ..."}
"""
import hashlib
import json
import socket
import struct
import sys
import time


def pattern(n):
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


def act(sock, send, then, wait, timeout, push=0):
    if send:
        sock.sendall(pattern(send))
    if push:
        block = pattern(256 * 1024)
        pushed = 0
        try:
            while pushed < push:
                piece = block[: min(len(block), push - pushed)]
                sock.sendall(piece)
                pushed += len(piece)
        except (ConnectionResetError, BrokenPipeError):
            sock.close()
            return {"received": 0, "sha256": hashlib.sha256(b"").hexdigest(), "end": "reset", "pushed": pushed}
        except socket.timeout:
            sock.close()
            return {"received": 0, "sha256": hashlib.sha256(b"").hexdigest(), "end": "timeout", "pushed": pushed}
    if wait:
        time.sleep(wait)
    if then == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return {"received": 0, "sha256": hashlib.sha256(b"").hexdigest(), "end": "none"}
    if then == "close":
        sock.close()
        return {"received": 0, "sha256": hashlib.sha256(b"").hexdigest(), "end": "none"}
    if then == "shut":
        sock.shutdown(socket.SHUT_WR)
    sock.settimeout(timeout)
    h = hashlib.sha256()
    n = 0
    end = "eof"
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        except socket.timeout:
            end = "timeout"
            break
        except OSError as e:
            end = "error: %s" % e
            break
        if not chunk:
            break
        n += len(chunk)
        h.update(chunk)
    sock.close()
    return {"received": n, "sha256": h.hexdigest(), "end": end}


def main(argv):
    if len(argv) < 3 or argv[0] not in ("connect", "serve"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, host, port = argv[0], argv[1], int(argv[2])
    opts = {"--send": "0", "--push": "0", "--then": "read", "--wait": "0", "--timeout": "20"}
    rest = argv[3:]
    for i in range(0, len(rest), 2):
        if rest[i] not in opts or i + 1 >= len(rest):
            print("bad option: %s" % rest[i], file=sys.stderr)
            return 2
        opts[rest[i]] = rest[i + 1]
    send, then = int(opts["--send"]), opts["--then"]
    wait, timeout = float(opts["--wait"]), float(opts["--timeout"])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if mode == "connect":
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(1)
        print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
        srv.settimeout(60)
        sock, _ = srv.accept()
        srv.close()
    report = act(sock, send, then, wait, timeout, int(opts["--push"]))
    if int(opts["--push"]) and "pushed" not in report:
        report["pushed"] = int(opts["--push"])
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
