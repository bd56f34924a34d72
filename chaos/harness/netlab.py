"""The network of a chaos run: one Linux bridge and one network namespace per node, and the
network faults applied inside those namespaces.

What it owns:
  * the bridge `lgspchaos0` (10.78.0.1/24, the harness's own address: clients, the provider the
    gateway calls, the UDP relay), and per node k a namespace `lgspchaos-nK` joined to the bridge
    by a veth pair, with the address 10.78.0.(10+k) on its `eth0`;
  * partitions: an nftables table `lgspchaos` in a node's namespace that drops packets to and/or
    from chosen peers (only peers: the harness at 10.78.0.1 always reaches every node, as an
    agency's clients would reach a node that lost its peers);
  * the route through the relay (`relay_via`): a NAT rule in each namespace that sends the
    cluster's QUIC packets for a peer to the relay on the bridge (see relay.py), set up before the
    nodes start so that every packet between nodes takes it.

Invariants: every name is fixed and `destroy()` removes all of it, also what a crashed earlier
run left behind. Uses only `ip` (iproute2) and `nft` (nftables). Needs root.
"""

from __future__ import annotations

import os
import signal
import subprocess

BRIDGE = "lgspchaos0"
SUBNET = "10.78.0"
HOST_IP = f"{SUBNET}.1"
NS_PREFIX = "lgspchaos-n"
CLUSTER_PORT = 7443
RELAY_BASE_PORT = 17000


class NetError(Exception):
    """A network command failed; the message names it and carries its output."""


def sh(cmd: list[str], *, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise NetError(f"`{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def node_ip(k: int) -> str:
    return f"{SUBNET}.{10 + k}"


def ns_name(k: int) -> str:
    return f"{NS_PREFIX}{k}"


def in_ns(k: int, cmd: list[str]) -> list[str]:
    """The command line that runs `cmd` in node k's namespace (`ip netns exec` execs it, so the
    process started is the command itself, with its own pid)."""
    return ["ip", "netns", "exec", ns_name(k), *cmd]


def nft(k: int, script: str) -> None:
    sh(in_ns(k, ["nft", "-f", "-"]), input=script)


class Lab:
    def __init__(self, n: int):
        self.n = n

    def create(self) -> None:
        self.destroy()
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
        sh(["ip", "link", "set", BRIDGE, "up"])
        for k in range(1, self.n + 1):
            ns, veth = ns_name(k), f"lgc{k}"
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            sh(["ip", "link", "set", veth, "master", BRIDGE])
            sh(["ip", "link", "set", veth, "up"])
            sh(in_ns(k, ["ip", "addr", "add", f"{node_ip(k)}/24", "dev", "eth0"]))
            sh(in_ns(k, ["ip", "link", "set", "eth0", "up"]))
            sh(in_ns(k, ["ip", "link", "set", "lo", "up"]))
            sh(in_ns(k, ["ip", "route", "add", "default", "via", HOST_IP]))

    def destroy(self) -> None:
        """Removes the bridge and every namespace of this suite (any number of nodes), after
        killing what still runs in those namespaces (only our nodes ever run there)."""
        for line in sh(["ip", "netns", "list"], check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(NS_PREFIX):
                for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh(["ip", "netns", "del", name], check=False)
        for line in sh(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                dev = parts[1].strip().split("@")[0]
                if dev == BRIDGE or (dev.startswith("lgc") and dev[3:].isdigit()):
                    sh(["ip", "link", "del", dev], check=False)

    # --- partitions -------------------------------------------------------------------------
    def block(self, k: int, *, inbound_from: list[int] = (), outbound_to: list[int] = ()) -> None:
        """Node k drops packets from `inbound_from` and to `outbound_to` (replaces earlier rules)."""
        rules = [f"add rule inet lgspchaos input ip saddr {node_ip(j)} drop" for j in inbound_from]
        rules += [f"add rule inet lgspchaos output ip daddr {node_ip(j)} drop" for j in outbound_to]
        script = "\n".join([
            "table inet lgspchaos {}",
            "delete table inet lgspchaos",
            "table inet lgspchaos {",
            "  chain input { type filter hook input priority 0; policy accept; }",
            "  chain output { type filter hook output priority 0; policy accept; }",
            "}",
            *rules,
        ]) + "\n"
        nft(k, script)

    def isolate(self, group: list[int]) -> None:
        """A symmetric partition: the nodes in `group` and the others cannot reach each other."""
        others = [j for j in range(1, self.n + 1) if j not in group]
        for k in range(1, self.n + 1):
            peers = others if k in group else list(group)
            self.block(k, inbound_from=peers, outbound_to=peers)

    def heal(self) -> None:
        for k in range(1, self.n + 1):
            nft(k, "table inet lgspchaos {}\ndelete table inet lgspchaos\n")

    # --- the relay --------------------------------------------------------------------------
    def relay_via(self) -> None:
        """Sends every node's cluster packets for peer j to HOST_IP:RELAY_BASE_PORT+j (relay.py)."""
        for k in range(1, self.n + 1):
            rules = [
                f"add rule ip lgspchaosnat out ip daddr {node_ip(j)} udp dport {CLUSTER_PORT} dnat to {HOST_IP}:{RELAY_BASE_PORT + j}"
                for j in range(1, self.n + 1) if j != k
            ]
            nft(k, "\n".join([
                "table ip lgspchaosnat {",
                "  chain out { type nat hook output priority -100; policy accept; }",
                "}",
                *rules,
            ]) + "\n")
