#!/usr/bin/env python3
"""Report traffic at fleet scale: a time-stepped simulation of lanpatch's report protocol, before
(be1f531: every node re-sends its latest report of every trusted release every 150 s, and its
inventory every hour) and after (reports and inventories once, when made; digests after a change
and hourly; pulls of what a collector lacks; see docs/PROTOCOL.md "Reports and anti-entropy").

The fleet: N nodes and one collector on one gossip topic (every published message reaches every
node, so what a node receives per hour is what the whole fleet publishes). R releases are trusted
and installed everywhere at the start. At 10 min a new release rolls out: each node makes its 5
reports (queued, downloading, downloaded, installing, installed) at random times over the next
30 min and a new inventory, and the oldest release expires; a second release rolls out the same
way from 2:05. The collector is down from 2:00 to 2:15 (it misses what is published then), and every message otherwise misses it with probability LOSS. The run lasts
H hours in 15 s steps (the node's resync tick). Message sizes are the real signed encodings
(`cargo run -p lanpatch-protocol --example message_sizes`).

Printed per protocol and N: messages and bytes each node publishes per hour, messages and bytes
each node receives per hour (the fleet's total), and at the end whether the collector holds every
node's latest report of every trusted release and its latest inventory (and how late the last
one took to repair, from when the collector missed it).

usage: bench/report_traffic.py [NODES=100,1000,10000] [RELEASES=20] [HOURS=6] [LOSS=0.002]
Exit code 1 when a protocol leaves the collector without a message at the end, 2 on bad usage.
"""
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = 15
RESEND_GAP = 150
DIGEST_DELAY = 30
SPREAD = 10
REPORTS_PER_RELEASE = 5
DOWN = (2 * 3600, 2 * 3600 + 900)


def usage():
    print(__doc__, file=sys.stderr)
    sys.exit(2)


def sizes(releases):
    out = subprocess.run(
        ["cargo", "run", "-q", "--release", "-p", "lanpatch-protocol", "--example", "message_sizes", "1500", str(releases)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


class Fleet:
    """What the nodes said (latest seq per release, inventory seq) and what the collector holds."""

    def __init__(self, n, releases, loss, rng):
        self.n, self.rng, self.loss = n, rng, loss
        self.trusted = list(range(releases))
        self.latest = [{r: 1 for r in self.trusted} for _ in range(n)]
        self.inventory = [1] * n
        self.held = [dict(d) for d in self.latest]
        self.held_inv = [1] * n
        self.seq = 1
        self.msgs = {"report": 0, "inventory": 0, "digest": 0, "pull": 0}
        # A message the collector missed: when it was first missed; the longest repair.
        self.missed = {}
        self.worst_repair = 0

    def delivered(self, t):
        return not (DOWN[0] <= t < DOWN[1]) and self.rng.random() >= self.loss

    def arrived(self, t, key, fresh):
        """The collector got `key`'s latest message at t; `fresh`: made just now."""
        since = self.missed.pop(key, None)
        if since is not None and not fresh:
            self.worst_repair = max(self.worst_repair, t - since)

    def publish_report(self, t, node, release, seq, fresh):
        self.msgs["report"] += 1
        key = (node, release)
        if self.delivered(t):
            if self.held[node].get(release, 0) < seq:
                self.held[node][release] = seq
            self.arrived(t, key, fresh)
        elif self.held[node].get(release, 0) < seq:
            self.missed.setdefault(key, t)

    def publish_inventory(self, t, node, fresh):
        self.msgs["inventory"] += 1
        key = (node, None)
        if self.delivered(t):
            self.held_inv[node] = max(self.held_inv[node], self.inventory[node])
            self.arrived(t, key, fresh)
        elif self.held_inv[node] < self.inventory[node]:
            self.missed.setdefault(key, t)

    def converged(self):
        missing = 0
        for node in range(self.n):
            for r in self.trusted:
                if self.held[node].get(r, 0) < self.latest[node][r]:
                    missing += 1
            if self.held_inv[node] < self.inventory[node]:
                missing += 1
        return missing


def rollout(fleet, rng, at, release):
    """Each node's transitions of a new release over 30 min from `at`: (time, node, kind, release)
    with kind 'report' or 'inventory'."""
    events = []
    for node in range(fleet.n):
        start = at + rng.uniform(0, 1800 - 60 * REPORTS_PER_RELEASE)
        for i in range(REPORTS_PER_RELEASE):
            events.append((start + 60 * i + rng.uniform(0, 30), node, "report", release))
        events.append((start + 60 * REPORTS_PER_RELEASE, node, "inventory", release))
    return events


def simulate(protocol, n, releases, hours, loss, seed=1):
    rng = random.Random(seed)
    fleet = Fleet(n, releases, loss, rng)
    # Two rollouts: one at 0:10, one during the collector's absence (2:05).
    events = sorted(rollout(fleet, rng, 600, releases) + rollout(fleet, rng, DOWN[0] + 300, releases + 1))
    ei = 0
    end = hours * 3600
    # before: per (node, release) next re-send time, kept in buckets by tick; inventory hourly
    buckets = {}
    if protocol == "before":
        for node in range(n):
            phase = rng.randrange(RESEND_GAP // TICK)
            for r in fleet.trusted:
                buckets.setdefault(phase, []).append((node, r))
    inv_due = [rng.uniform(0, 3600) for _ in range(n)]
    # after: digest due times per node, pulls pending at the collector
    digest_due = [None] * n
    heartbeat = [rng.uniform(0, 3600) for _ in range(n)]
    pulls = []  # (time, node)
    asked_everyone_at = None
    t = 0
    tick = 0
    while t < end:
        # transitions made in this tick
        while ei < len(events) and events[ei][0] < t + TICK:
            _, node, kind, new_release = events[ei]
            ei += 1
            if new_release not in fleet.trusted:
                fleet.trusted.append(new_release)
                old = fleet.trusted.pop(0)
                for d in fleet.latest + fleet.held:
                    d.pop(old, None)
            fleet.seq += 1
            if kind == "report":
                fleet.latest[node][new_release] = fleet.seq
                fleet.publish_report(t, node, new_release, fleet.seq, True)
            else:
                fleet.inventory[node] = fleet.seq
                fleet.publish_inventory(t, node, True)
            if protocol == "before":
                nxt = tick + RESEND_GAP // TICK
                if kind == "report" and (node, new_release) not in buckets.get(nxt, []):
                    buckets.setdefault(nxt, []).append((node, new_release))
            elif digest_due[node] is None:
                digest_due[node] = t + DIGEST_DELAY
        if protocol == "before":
            due = buckets.pop(tick, [])
            again = tick + RESEND_GAP // TICK
            for node, r in due:
                if r in fleet.latest[node]:
                    fleet.publish_report(t, node, r, fleet.latest[node][r], False)
                    buckets.setdefault(again, []).append((node, r))
            for node in range(n):
                if inv_due[node] <= t:
                    inv_due[node] += 3600
                    fleet.publish_inventory(t, node, False)
        else:
            if DOWN[1] <= t < DOWN[1] + TICK and asked_everyone_at is None:
                # The collector rejoins and asks everyone once; answers spread over 1-11 delays.
                asked_everyone_at = t
                fleet.msgs["pull"] += 1
                for node in range(n):
                    when = t + DIGEST_DELAY + rng.uniform(0, SPREAD * DIGEST_DELAY)
                    digest_due[node] = when if digest_due[node] is None else min(digest_due[node], when)
            for node in range(n):
                send = False
                if digest_due[node] is not None and digest_due[node] <= t:
                    digest_due[node] = None
                    send = True
                if heartbeat[node] <= t:
                    heartbeat[node] += 3600
                    send = True
                if not send:
                    continue
                fleet.msgs["digest"] += 1
                if not fleet.delivered(t):
                    continue
                lacks = any(fleet.held[node].get(r, 0) < s for r, s in fleet.latest[node].items()) or (
                    fleet.held_inv[node] < fleet.inventory[node]
                )
                if lacks:
                    pulls.append((t + rng.uniform(0, SPREAD * DIGEST_DELAY / 4), node))
            keep = []
            for when, node in pulls:
                if when > t:
                    keep.append((when, node))
                    continue
                fleet.msgs["pull"] += 1
                for r, s in list(fleet.latest[node].items()):
                    if fleet.held[node].get(r, 0) < s:
                        # restamped: a new seq for the same state
                        fleet.seq += 1
                        fleet.latest[node][r] = fleet.seq
                        fleet.publish_report(t, node, r, fleet.seq, False)
                if fleet.held_inv[node] < fleet.inventory[node]:
                    fleet.seq += 1
                    fleet.inventory[node] = fleet.seq
                    fleet.publish_inventory(t, node, False)
            pulls = keep
        t += TICK
        tick += 1
    return fleet


def main():
    args = sys.argv[1:]
    if len(args) > 4 or any(a in ("-h", "--help") for a in args):
        usage()
    try:
        nodes = [int(x) for x in (args[0] if args else "100,1000,10000").split(",")]
        releases = int(args[1]) if len(args) > 1 else 20
        hours = int(args[2]) if len(args) > 2 else 6
        loss = float(args[3]) if len(args) > 3 else 0.002
    except ValueError:
        usage()
    size = sizes(releases)
    print(f"message bytes (signed, encoded): report {size['report']}, inventory {size['inventory']} "
          f"({size['packages']} packages), digest {size['digest']} ({releases} releases), pull {size['pull_one']}")
    print(f"{releases} trusted releases, two rollouts (0:10, 2:05), collector down 2:00-2:15, loss {loss}, {hours} h")
    print("| N | protocol | sent msgs/node/h | sent bytes/node/h | received msgs/node/h | received bytes/node/h "
          "| collector complete at end | longest repair of a missed message |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for n in nodes:
        for protocol in ("before", "after"):
            f = simulate(protocol, n, releases, hours, loss)
            total = sum(f.msgs.values())
            by = {k: f.msgs[k] * size[{"pull": "pull_one"}.get(k, k)] for k in f.msgs}
            total_bytes = sum(by.values())
            per_h = hours * n
            missing = f.converged()
            failed |= missing > 0
            catch = f"{f.worst_repair:.0f} s"
            print(f"| {n} | {protocol} | {total / per_h:.1f} | {total_bytes / per_h / 1024:.1f} KiB "
                  f"| {total / hours:,.0f} | {total_bytes / hours / 2**20:,.1f} MiB "
                  f"| {'yes' if missing == 0 else f'no: {missing} missing'} | {catch} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
