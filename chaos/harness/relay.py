#!/usr/bin/env python3
"""A UDP relay on the bridge that delays, reorders and drops the cluster's packets.

Why: the kernels this suite runs on (the development and CI VMs) are built without `sch_netem`
(CONFIG_NET_SCH_NETEM is not set), so `tc qdisc ... netem` is not available. Instead each node's
namespace sends its QUIC packets for peer j to HOST:BASE+j (a NAT rule, netlab.Lab.relay_via);
this relay forwards them to peer j from one socket per sender, and the answers back, each packet
after `delay_ms` plus a uniform random `jitter_ms` (packets overtake each other: reordering), or
not at all with probability `loss`.

The parameters are read from the control file (JSON: {"delay_ms":..,"jitter_ms":..,"loss":..})
whenever it changes, so the harness turns the fault on and off without restarting the relay.
Counts of forwarded and dropped packets are written to the control file's `.stats` twin.

Usage: relay.py HOST BASE_PORT NODE_IPS(comma-separated, node k first at index k-1) PEER_PORT CONTROL
"""

from __future__ import annotations

import heapq
import json
import os
import random
import selectors
import socket
import sys
import time


def main() -> None:
    host, base, ips, peer_port, control = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), sys.argv[5]
    sel = selectors.DefaultSelector()
    listeners: dict[socket.socket, tuple[str, int]] = {}
    for k, ip in enumerate(ips, start=1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, base + k))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("listen", s))
        listeners[s] = (ip, peer_port)
    upstream: dict[tuple[socket.socket, tuple[str, int]], socket.socket] = {}
    params = {"delay_ms": 0.0, "jitter_ms": 0.0, "loss": 0.0}
    mtime = 0.0
    queue: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
    seq = 0
    stats = {"forwarded": 0, "dropped": 0}
    last_stats = 0.0

    def schedule(sock: socket.socket, data: bytes, to: tuple[str, int]) -> None:
        nonlocal seq
        if params["loss"] and random.random() < params["loss"]:
            stats["dropped"] += 1
            return
        due = time.monotonic() + (params["delay_ms"] + random.uniform(0, params["jitter_ms"])) / 1000
        seq += 1
        heapq.heappush(queue, (due, seq, sock, data, to))

    while True:
        try:
            m = os.stat(control).st_mtime
            if m != mtime:
                mtime = m
                with open(control) as f:
                    params.update(json.load(f))
        except (OSError, ValueError):
            pass
        now = time.monotonic()
        timeout = 0.1 if not queue else max(0.0, min(0.1, queue[0][0] - now))
        for key, _ in sel.select(timeout):
            kind, sock = key.data[0], key.data[1]
            while True:
                try:
                    data, src = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if kind == "listen":
                    up = upstream.get((sock, src))
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind((host, 0))
                        up.setblocking(False)
                        upstream[(sock, src)] = up
                        sel.register(up, selectors.EVENT_READ, ("up", up, sock, src))
                    schedule(up, data, listeners[sock])
                else:
                    _, _, lsock, client = key.data
                    schedule(lsock, data, client)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, data, to = heapq.heappop(queue)
            try:
                sock.sendto(data, to)
                stats["forwarded"] += 1
            except OSError:
                stats["dropped"] += 1
        if now - last_stats > 1:
            last_stats = now
            try:
                with open(control + ".stats", "w") as f:
                    json.dump(stats, f)
            except OSError:
                pass


if __name__ == "__main__":
    main()
