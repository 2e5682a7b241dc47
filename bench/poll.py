#!/usr/bin/env python3
"""Polls lanpatch nodes through their control sockets, all from this one process: a process per
node per round (lanpatch-node status | python3) costs more CPU than the nodes themselves at N = 64
on a 2-core machine, and would slow down the transfer it measures.

usage: poll.py peers WANT TIMEOUT SOCK...   until every node has >= WANT peers; prints the fewest
       poll.py done TIMEOUT SOCK...         until every node finished its (one) release; prints
                                            each node's finished_ms, one per line, and on stderr
                                            how many nodes fetched from an origin and how much
Exit code 1 on timeout (with what was seen), 2 on bad usage.
"""
import json
import socket
import sys
import time


def status(path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b'"Status"\n')
            buf = b""
            while not buf.endswith(b"\n"):
                part = s.recv(65536)
                if not part:
                    break
                buf += part
        return json.loads(buf)["Status"]
    except (OSError, ValueError, KeyError):
        return None


def origin_summary(sts):
    """Verified bytes taken from origins (each release status's from_origin): how many nodes fetched
    and their sum over the release size. Above 1 means a range was fetched twice."""
    def from_origin(r):
        if "from_origin" in r:
            return r["from_origin"]
        # Binaries from before the typed field (a "before" run with LANPATCH_BIN).
        return sum(v for k, v in r["bytes_from"].items() if k.startswith("origin "))
    per_node = [from_origin(st["releases"][0]) for st in sts]
    size = max(st["releases"][0]["total_bytes"] for st in sts) or 1
    fetchers = sum(1 for b in per_node if b > 0)
    print(f"  origin fetchers: {fetchers} of {len(sts)} nodes; verified bytes from the origin {sum(per_node) / size:.3f} x S",
          file=sys.stderr)


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("peers", "done"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode = sys.argv[1]
    if mode == "peers":
        want, timeout, socks = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    else:
        want, timeout, socks = None, float(sys.argv[2]), sys.argv[3:]
    deadline = time.time() + timeout
    while True:
        sts = [status(p) for p in socks]
        if mode == "peers":
            fewest = min(len(st["peers"]) if st else 0 for st in sts)
            if fewest >= want:
                print(fewest)
                return
        else:
            fin = [st["releases"][0]["finished_ms"] if st and st["releases"] else None for st in sts]
            if all(fin):
                print("\n".join(str(f) for f in fin))
                origin_summary(sts)
                return
        if time.time() > deadline:
            seen = fewest if mode == "peers" else sum(1 for f in fin if f)
            print(f"timed out: {seen}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.5)


main()
