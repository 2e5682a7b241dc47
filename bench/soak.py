#!/usr/bin/env python3
"""A long life on loopback: R releases, one after another, fanned out to a small fleet.

Starts N lanpatch nodes on 127.0.0.1 (node 1 the admin's: seed and collector; the others in ring
"broad"), then for each of R versions of one product: makes a release of S MiB of random bytes,
signs it, approves it for "broad" (the signer's default rollout rules), publishes it on node 1 and
waits until every endpoint reports it installed. After each release it prints one line: fan-out
time (publish to the last endpoint's verified copy), resident memory and open file descriptors
per node (min-max), disk use by kind on the endpoints (max), the gossip messages the endpoints
published since the last line (sum), and WARN lines logged so far (sum over nodes). At the end it
prints the figures the issue asks for: RSS over the last 20 releases, disk bounds, fan-out time
first and last, WARN lines per node per hour.

usage: bench/soak.py [RELEASES=100] [NODES=6] [SIZE_MIB=16]
       LANPATCH_BIN=DIR takes lanpatch-node and lanpatch-signer from DIR (default target/release,
       built with `cargo build --release --locked` when missing); KEEP=1 keeps the work directory;
       NODE_LOG sets the nodes' log filter (say "info,lanpatch_node::downloads=debug").
Exit code 1 when a release does not reach every endpoint in 120 s, 2 on bad usage.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def usage():
    print(__doc__, file=sys.stderr)
    sys.exit(2)


def status(path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b'"Status"\n')
            buf = b""
            while not buf.endswith(b"\n"):
                part = s.recv(1 << 20)
                if not part:
                    break
                buf += part
        return json.loads(buf)["Status"]
    except (OSError, ValueError, KeyError):
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_figures(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def metric_sum(addr, name):
    """Sums every sample of a counter from a node's /metrics (plain HTTP/1.0 on loopback)."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            buf = b""
            while True:
                part = s.recv(1 << 20)
                if not part:
                    break
                buf += part
    except OSError:
        return 0
    total = 0.0
    for line in buf.decode(errors="replace").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args) or len(args) > 3:
        usage()
    try:
        releases = int(args[0]) if len(args) > 0 else 100
        nodes = int(args[1]) if len(args) > 1 else 6
        size_mib = int(args[2]) if len(args) > 2 else 16
    except ValueError:
        usage()
    if releases < 1 or nodes < 2 or size_mib < 1:
        usage()
    bindir = os.environ.get("LANPATCH_BIN") or os.path.join(ROOT, "target", "release")
    node_bin, signer_bin = os.path.join(bindir, "lanpatch-node"), os.path.join(bindir, "lanpatch-signer")
    if not os.environ.get("LANPATCH_BIN") and not (os.path.exists(node_bin) and os.path.exists(signer_bin)):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "lanpatch-node", "-p", "lanpatch-signer"],
                       cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="lanpatch-soak.")
    procs = []

    def cleanup():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP") == "1":
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def signer(*a):
        r = subprocess.run([signer_bin, *a], cwd=work, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"lanpatch-signer {' '.join(a)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    try:
        signer("keygen", "--out", "alice.key")
        signer("keygen", "--out", "enroll.key")
        signer("root", "init", "--out", "root.lpr",
               "--root-key", "alice.key.pub", "--root-threshold", "1",
               "--release-key", "alice.key.pub", "--release-threshold", "1",
               "--approve-key", "alice.key.pub", "--approve-threshold", "1",
               "--enroll-key", "enroll.key.pub", "--enroll-threshold", "1")
        signer("root", "sign", "--key", "alice.key", "root.lpr")
        seed_port = free_port()
        socks, logs = [], []
        for i in range(1, nodes + 1):
            name = "admin" if i == 1 else f"node{i}"
            d = os.path.join(work, name)
            os.makedirs(d)
            port = seed_port if i == 1 else free_port()
            extra = 'collector = true\nring = "admin"\nrollout_rings = ["broad"]\n' if i == 1 else 'ring = "broad"\n'
            peers = "" if i == 1 else f'"/ip4/127.0.0.1/tcp/{seed_port}"'
            with open(os.path.join(d, "node.toml"), "w") as f:
                f.write(f'data_dir = "data"\ntrust_root = "../root.lpr"\nhostname = "{name}"\n'
                        f'listen = ["/ip4/127.0.0.1/tcp/{port}"]\nstatic_peers = [{peers}]\nmdns = false\n'
                        f'metrics_listen = "127.0.0.1:0"\n{extra}')
                if os.environ.get("NODE_LOG"):
                    f.write(f'log = {json.dumps(os.environ["NODE_LOG"])}\n')
            # Enrolled as an admin enrolls a host (lanpatch-node id, enroll node, join).
            cfg = os.path.join(d, "node.toml")
            key = json.loads(subprocess.run([node_bin, "id", "--json", "--config", cfg], check=True,
                                            capture_output=True, text=True).stdout)["node_key"]
            signer("enroll", "node", "--root", "root.lpr", "--key", "enroll.key", "--node-key", key,
                   "--hostname", name, "--ring", "admin" if i == 1 else "broad", "--expires", "30d",
                   "--out", f"{name}.cert")
            subprocess.run([node_bin, "join", "--config", cfg, os.path.join(work, f"{name}.cert")], check=True,
                           capture_output=True)
            log = open(os.path.join(d, "node.log"), "w")
            procs.append(subprocess.Popen([node_bin, "run", "--config", os.path.join(d, "node.toml")],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            socks.append(os.path.join(d, "data", "control.sock"))
            logs.append(os.path.join(d, "node.log"))
        deadline = time.time() + 60
        while True:
            sts = [status(s) for s in socks]
            if all(st and len(st["peers"]) == nodes - 1 for st in sts):
                break
            if time.time() > deadline:
                raise SystemExit("the nodes did not connect to each other within 60 s")
            time.sleep(0.3)
        metrics = [st["metrics"] for st in sts]
        started = time.time()
        print(f"soak: {nodes} nodes on loopback, {releases} releases of {size_mib} MiB, work in {work}")
        print("release  fanout_s  rss_mib(min-max)  fds(min-max)  blobs_mib partial stage state_mib  "
              "published  warn")
        rows = []
        published_before = sum(metric_sum(m, "lanpatch_gossip_published_total") for m in metrics[1:])
        for v in range(1, releases + 1):
            src = os.path.join(work, "src")
            os.makedirs(src, exist_ok=True)
            with open(os.path.join(src, "payload.bin"), "wb") as f:
                f.write(os.urandom(size_mib << 20))
            bundle = f"b{v}"
            signer("release", "create", "--product", "agent", "--version", str(v), "--dir", src,
                   "--install", "sh -c true", "--out", bundle)
            shutil.rmtree(src)
            signer("release", "sign", "--key", "alice.key", bundle)
            signer("approve", "--key", "alice.key", "--ring", "broad", "--rings", "broad", bundle)
            t0 = time.time()
            signer("publish", "--node", socks[0], bundle)
            deadline = t0 + 120
            while True:
                sts = [status(s) for s in socks]
                done = []
                for st in sts[1:]:
                    r = [r for r in (st or {}).get("releases", []) if r["version"] == v]
                    if r and r[0]["state"] == "Installed":
                        done.append(r[0]["finished_ms"] or 0)
                if len(done) == nodes - 1:
                    break
                if time.time() > deadline:
                    states = [[(r["version"], r["state"]) for r in (st or {}).get("releases", []) if r["version"] == v]
                              for st in sts[1:]]
                    raise SystemExit(f"release {v} did not reach every endpoint within 120 s: {states}")
                time.sleep(0.2)
            shutil.rmtree(os.path.join(work, bundle))
            fanout = max(done) / 1000 - t0
            figs = [proc_figures(p.pid) for p in procs]
            rss = [f[0] for f in figs]
            fds = [f[1] for f in figs]
            disk = [st["disk"] for st in sts[1:]]
            published = sum(metric_sum(m, "lanpatch_gossip_published_total") for m in metrics[1:])
            warn = 0
            for path in logs:
                with open(path, errors="replace") as f:
                    warn += sum(1 for line in f if re.search(r"\bWARN\b", line))
            row = dict(v=v, fanout=fanout, rss=rss, fds=fds, blobs=max(d["blobs"] for d in disk),
                       partial=max(d["partial"] for d in disk), stage=max(d["stage"] for d in disk),
                       state=max(d["state"] for d in disk), published=published - published_before, warn=warn)
            published_before = published
            rows.append(row)
            print(f"{v:7d}  {fanout:8.2f}  {min(rss):6.1f}-{max(rss):6.1f}     {min(fds):4d}-{max(fds):4d}     "
                  f"{row['blobs'] / 2**20:9.1f} {row['partial'] / 2**20:7.1f} {row['stage'] / 2**20:5.1f} "
                  f"{row['state'] / 2**20:9.2f}  {row['published']:9.0f}  {warn:4d}", flush=True)
        hours = (time.time() - started) / 3600
        last = rows[-20:]
        print("\nsummary")
        for i in range(nodes):
            seq = [r["rss"][i] for r in last]
            print(f"  node {i + 1}: RSS over the last {len(last)} releases {min(seq):.1f}-{max(seq):.1f} MiB "
                  f"(spread {max(seq) - min(seq):.1f}), at release 1 {rows[0]['rss'][i]:.1f} MiB")
        print(f"  endpoints' disk: blobs at most {max(r['blobs'] for r in rows) / 2**20:.1f} MiB, "
              f"stage at most {max(r['stage'] for r in rows) / 2**20:.1f} MiB, "
              f"state.db at most {max(r['state'] for r in rows) / 2**20:.2f} MiB")
        first, lastf = [r["fanout"] for r in rows[:10]], [r["fanout"] for r in rows[-10:]]
        print(f"  fan-out: first 10 releases {min(first):.2f}-{max(first):.2f} s, "
              f"last 10 {min(lastf):.2f}-{max(lastf):.2f} s")
        # The spread #31 asks for: p90 within 1.2 x the median, the median within 2 x round 1's.
        times = sorted(r["fanout"] for r in rows)
        median, p90 = times[len(times) // 2], times[min(len(times) - 1, (len(times) * 9) // 10)]
        print(f"  fan-out spread: median {median:.2f} s, p90 {p90:.2f} s (p90 / median {p90 / median:.2f}), "
              f"round 1 {rows[0]['fanout']:.2f} s (median / round 1 {median / rows[0]['fanout']:.2f})")
        pub = [r["published"] for r in rows[len(rows) // 2:]]
        print(f"  gossip messages published by the {nodes - 1} endpoints per release (second half): "
              f"{min(pub):.0f}-{max(pub):.0f}")
        print(f"  WARN lines: {rows[-1]['warn']} in {hours * 60:.1f} min over {nodes} nodes = "
              f"{rows[-1]['warn'] / nodes / max(hours, 1e-9):.1f} per node per hour")
    finally:
        cleanup()


main()
