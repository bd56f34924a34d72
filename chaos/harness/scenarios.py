"""The scenarios: which fault, on which node, for how long, how many times.

Each scenario is a fault and its heal, applied `cycles` times to a fresh cluster while the
workloads run (main.py does the rest: cluster, workloads, recovery measurement, checks). The node
a fault hits is chosen when the fault starts (e.g. whoever leads at that moment).

`single_node`: the fault takes out (at most) one node, so the gateway's success rate is held
to the ≥ 99.9 % goal; faults on several nodes at once report their rate without a goal.
"""

from __future__ import annotations

import errno
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Scenario:
    name: str
    about: str
    fault: Callable[[Any, int], tuple[Any, str]]  # (ctx, cycle) -> (state handed to heal, what was done)
    heal: Callable[[Any, Any], None]
    nodes: int = 3
    cycles: int = 2
    hold: float = 8.0
    single_node: bool = True
    faketime: bool = False
    relay: bool = False
    tmpfs: bool = False
    tags: list[str] = field(default_factory=list)


def _leader(ctx) -> int:
    return ctx.cluster.wait_leader(30)


def _follower(ctx) -> int:
    lead = _leader(ctx)
    return random.choice([k for k in ctx.cluster.nodes if k != lead])


def _others(ctx, k: int) -> list[int]:
    return [j for j in ctx.cluster.nodes if j != k]


# --- processes -----------------------------------------------------------------------------
def kill_leader(ctx, cycle):
    k = _leader(ctx)
    ctx.cluster.kill(k)
    return k, f"kill -9 node {k} (leader)"


def kill_follower(ctx, cycle):
    k = _follower(ctx)
    ctx.cluster.kill(k)
    return k, f"kill -9 node {k} (follower)"


def restart(ctx, state):
    ctx.cluster.start(state)


def pause_leader(ctx, cycle):
    k = _leader(ctx)
    ctx.cluster.pause(k)
    return k, f"SIGSTOP node {k} (leader)"


def resume(ctx, state):
    ctx.cluster.resume(state)


def crash_all(ctx, cycle):
    for k in ctx.cluster.nodes:
        ctx.cluster.kill(k)
    return None, "kill -9 every node at once"


def restart_all(ctx, state):
    for k in ctx.cluster.nodes:
        ctx.cluster.start(k, wait=False)
    for k in ctx.cluster.nodes:
        ctx.cluster.wait_ready(k)


def rolling_stop(ctx, cycle):
    """Followers first, the leader last (as an operator upgrades); a graceful stop (SIGTERM)."""
    if cycle == 0:
        lead = _leader(ctx)
        ctx.order = [k for k in ctx.cluster.nodes if k != lead] + [lead]
    k = ctx.order[cycle % len(ctx.order)]
    ctx.cluster.stop(k)
    return k, f"graceful restart of node {k}"


# --- network -------------------------------------------------------------------------------
def partition_leader(ctx, cycle):
    k = _leader(ctx)
    ctx.lab.isolate([k])
    return k, f"partition: node {k} (leader) | {_others(ctx, k)}"


def partition_asymmetric(ctx, cycle):
    k = _leader(ctx)
    ctx.lab.block(k, inbound_from=_others(ctx, k))
    return k, f"asymmetric partition: node {k} (leader) hears no peer, its packets still go out"


def partition_majority(ctx, cycle):
    k = _leader(ctx)
    minority = [k, random.choice(_others(ctx, k))]
    ctx.lab.isolate(minority)
    rest = [j for j in ctx.cluster.nodes if j not in minority]
    return None, f"partition: {sorted(minority)} (with the leader) | {rest}"


def heal_network(ctx, state):
    ctx.lab.heal()


NETWORK_FAULT = {"delay_ms": 25, "jitter_ms": 50, "loss": 0.05}


def bad_network(ctx, cycle):
    ctx.relay_set(NETWORK_FAULT)
    p = NETWORK_FAULT
    return None, (f"every packet between nodes: delay {p['delay_ms']}+U(0,{p['jitter_ms']}) ms (reordered), "
                  f"{p['loss'] * 100:.0f}% lost")


def good_network(ctx, state):
    ctx.relay_set({"delay_ms": 0, "jitter_ms": 0, "loss": 0.0})


# --- disk and clock ------------------------------------------------------------------------
def fill_disk(ctx, cycle):
    k = _leader(ctx)
    path = ctx.cluster.nodes[k].data / "chaos-filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    st = os.statvfs(ctx.cluster.nodes[k].data)
    return (k, path), f"disk full on node {k} (leader): {st.f_bavail * st.f_frsize} bytes left"


def free_disk(ctx, state):
    k, path = state
    os.unlink(path)
    # A node that died of the full disk is started again, as systemd would (Restart=on-failure).
    if not ctx.cluster.nodes[k].alive():
        ctx.note(f"node {k} had exited during the disk-full fault; restarted after freeing space")
        ctx.cluster.start(k)


SKEW_S = 300


def skew_clock(ctx, cycle):
    k = _leader(ctx)
    s = SKEW_S if cycle % 2 == 0 else -SKEW_S
    ctx.cluster.skew(k, s)
    time.sleep(2)  # libfaketime re-reads the offset at most once a second
    seen, answers = ctx.token_from(k)
    seen_s = "unknown" if seen is None else f"{seen:+.0f} s"
    ctx.note(f"clock {s:+d} s on node {k}: its tokens' iat is {seen_s} off; that token through each node's gateway: "
             + ", ".join(f"node {j}: {st}" for j, st in answers.items()))
    return k, f"clock of node {k} (leader) {s:+d} s (libfaketime)"


def unskew_clock(ctx, state):
    ctx.cluster.skew(state, 0)


SCENARIOS = [
    Scenario("kill-leader", "kill -9 of the leader, restarted after the hold", kill_leader, restart, cycles=3, hold=5, tags=["ci"]),
    Scenario("kill-follower", "kill -9 of a follower, restarted after the hold", kill_follower, restart, cycles=2, hold=5),
    Scenario("pause-leader", "SIGSTOP of the leader, SIGCONT after the hold", pause_leader, resume, cycles=2, hold=8),
    Scenario("partition-leader", "the leader cut off from every peer (both directions)", partition_leader, heal_network,
             cycles=2, hold=10, tags=["ci"]),
    Scenario("partition-asymmetric", "the leader receives nothing from its peers; what it sends still arrives",
             partition_asymmetric, heal_network, cycles=2, hold=10),
    Scenario("partition-majority", "5 nodes: the leader and one follower cut off from the other three", partition_majority,
             heal_network, nodes=5, cycles=1, hold=12, single_node=False),
    Scenario("network", "delay, reordering and loss on every packet between nodes (UDP relay; no sch_netem here)", bad_network,
             good_network, cycles=1, hold=20, single_node=False, relay=True),
    Scenario("disk-full", "the leader's data directory (a 256 MiB tmpfs) filled to the last byte, freed after the hold",
             fill_disk, free_disk, cycles=1, hold=12, tmpfs=True, tags=["ci"]),
    Scenario("clock-skew", f"the leader's wall clock moved +{SKEW_S} s, then -{SKEW_S} s (libfaketime; monotonic time untouched)",
             skew_clock, unskew_clock, cycles=2, hold=10, faketime=True),
    Scenario("rolling-restart", "every node stopped (SIGTERM) and started in turn, followers first", rolling_stop, restart,
             cycles=3, hold=1),
    Scenario("crash-all", "kill -9 of every node at once, all restarted after the hold", crash_all, restart_all, cycles=1, hold=3,
             single_node=False),
]

BY_NAME = {s.name: s for s in SCENARIOS}


def relay_params(path: str, params: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(params, f)
    os.replace(tmp, path)
