"""The LGSP cluster of a chaos scenario: N `lgsp serve` processes, one per network namespace,
configured as in production (packaging/lgsp.toml: TLS on the gateway and admin listeners,
QUIC with mutual TLS between nodes, `cluster.advertise` = the node's own address on the bridge).

What it owns: each node's directory (configuration, data directory, log), its process (started
with `ip netns exec`, so the pid is lgsp's own: kill -9, SIGSTOP and SIGCONT reach it directly),
the TLS certificate of the listeners (one CA and one certificate naming every node's address,
made with openssl), and the cluster's bootstrap: `lgsp cluster init` on node 1, a join token per
other node from the admin API, `lgsp cluster join`, and the wait until every node is a voter.

A node may run under libfaketime (`faketime=True`): its clock is then the real one plus the
offset in its `faketime` file, which `skew()` changes while it runs (monotonic time is left
alone, so only the wall clock moves: what NTP trouble does to a server).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netlab import CLUSTER_PORT, HOST_IP, in_ns, node_ip
from nodehttp import Http, Outcome, tls_context

ADMIN_PORT, GATEWAY_PORT, METRICS_PORT = 9443, 8443, 9464
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


class ClusterError(Exception):
    """The cluster could not be built or a node did not come up; the message says which."""


@dataclass
class Node:
    k: int
    dir: Path
    ip: str
    proc: subprocess.Popen | None = None
    node_id: int | None = None
    faketime: bool = False
    paused: bool = False
    log_offset: int = 0
    exits: list = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def config(self) -> Path:
        return self.dir / "lgsp.toml"

    @property
    def log(self) -> Path:
        return self.dir / "lgsp.log"

    @property
    def clock_file(self) -> Path:
        return self.dir / "faketime"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def make_tls(dirpath: Path, n: int) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def ossl(*args: str) -> None:
        p = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=dirpath)
        if p.returncode != 0:
            raise ClusterError(f"openssl {args[0]} failed: {p.stderr.strip()}")

    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=lgsp-chaos-ca")
    ossl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=lgsp-chaos")
    sans = ",".join(f"IP:{node_ip(k)}" for k in range(1, n + 1))
    (dirpath / "ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
         "-days", "3", "-extfile", "ext")


CONFIG = """# Written by the chaos harness: a production-like node (packaging/lgsp.toml) in namespace {ns}.
[node]
data_dir = "{data}"
name = "node-{k}"

[listen]
gateway = "0.0.0.0:{gw}"
admin = "0.0.0.0:{admin}"
metrics = "0.0.0.0:{metrics}"
cluster = "0.0.0.0:{cport}"

[tls]
cert = "{tls}/server.crt"
key = "{tls}/server.key"

[log]
format = "plain"
level = "info"

[cluster]
advertise = "{ip}:{cport}"
heartbeat_ms = 50
election_timeout_ms = 250
"""


class Cluster:
    def __init__(self, workdir: Path, n: int, binary: str, *, faketime: bool = False, log=print):
        self.dir, self.n, self.bin, self.log = workdir, n, binary, log
        self.tls = workdir / "tls"
        self.nodes = {k: Node(k, workdir / f"n{k}", node_ip(k), faketime=faketime) for k in range(1, n + 1)}
        self.token: str | None = None
        self.ctx = None
        self.http: Http | None = None  # the harness's own control connection (main thread only)

    # --- bootstrap ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Certificates, directories and configuration files (before any mount on a data dir)."""
        make_tls(self.tls, self.n)
        self.ctx = tls_context(str(self.tls / "ca.crt"))
        self.http = Http(self.ctx)
        for k, nd in self.nodes.items():
            nd.data.mkdir(parents=True, exist_ok=True)
            nd.config.write_text(CONFIG.format(ns=f"n{k}", data=nd.data, k=k, gw=GATEWAY_PORT, admin=ADMIN_PORT,
                                               metrics=METRICS_PORT, cport=CLUSTER_PORT, tls=self.tls, ip=nd.ip))
            if nd.faketime:
                nd.clock_file.write_text("+0\n")

    def bootstrap(self) -> None:
        first = self.nodes[1]
        self._offline(1, ["cluster", "init", "--config", str(first.config)])
        self.start(1)
        boot = first.data / "initial-admin.json"
        self.token = json.loads(boot.read_text())["api_token"]
        for k in range(2, self.n + 1):
            o = self.admin(1, "POST", "/api/v1/cluster/join-tokens", {}, timeout=10)
            if not o.ok:
                raise ClusterError(f"no join token for node {k}: {o.status} {o.body[:300]!r} {o.error or ''}")
            tok = o.json()["token"]
            self._offline(k, ["cluster", "join", "--config", str(self.nodes[k].config), "--peer", f"{first.ip}:{CLUSTER_PORT}"],
                          env={"LGSP_JOIN_TOKEN": tok})
            self.start(k)
        self.wait_whole(90)

    def _offline(self, k: int, args: list[str], env: dict | None = None) -> None:
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.run(in_ns(k, [self.bin, *args]), capture_output=True, text=True, env=e, timeout=120)
        if p.returncode != 0:
            raise ClusterError(f"node {k}: lgsp {' '.join(args[:2])} failed: {p.stderr.strip() or p.stdout.strip()}")

    def node_id(self, k: int) -> int | None:
        nd = self.nodes[k]
        if nd.node_id is None:
            try:
                nd.node_id = int(json.loads((nd.data / "cluster" / "node.json").read_text())["node_id"])
            except (OSError, ValueError, KeyError):
                return None
        return nd.node_id

    def by_id(self, node_id) -> int | None:
        for k in self.nodes:
            if self.node_id(k) == node_id:
                return k
        return None

    # --- processes ----------------------------------------------------------------------------
    def start(self, k: int, *, wait: bool = True, timeout: float = 60) -> None:
        nd = self.nodes[k]
        prefix: list[str] = []
        if nd.faketime:
            prefix = ["env", f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME_TIMESTAMP_FILE={nd.clock_file}",
                      "FAKETIME_DONT_FAKE_MONOTONIC=1", "FAKETIME_CACHE_DURATION=1"]
        nd.log_offset = nd.log.stat().st_size if nd.log.exists() else 0
        with open(nd.log, "ab") as logf:
            nd.proc = subprocess.Popen(in_ns(k, [*prefix, self.bin, "serve", "--config", str(nd.config)]), stdout=logf,
                                       stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True)
        nd.paused = False
        if wait:
            self.wait_ready(k, timeout)

    def wait_ready(self, k: int, timeout: float = 60) -> None:
        nd = self.nodes[k]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not nd.alive():
                raise ClusterError(f"node {k} exited while starting (exit {nd.proc.returncode}); see {nd.log}:\n{self.log_tail(k)}")
            with open(nd.log, "rb") as f:
                f.seek(nd.log_offset)
                if re.search(rb"\bready\b.*startup_ms", f.read()):
                    return
            time.sleep(0.1)
        raise ClusterError(f"node {k} not ready after {timeout:.0f} s; see {nd.log}:\n{self.log_tail(k)}")

    def log_tail(self, k: int, lines: int = 15) -> str:
        try:
            return "\n".join(self.nodes[k].log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, k: int, sig: int = signal.SIGKILL) -> None:
        nd = self.nodes[k]
        if nd.alive():
            nd.exits.append(nd.proc)  # an exit we asked for
            os.kill(nd.proc.pid, sig)
            if nd.paused:
                os.kill(nd.proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            try:
                nd.proc.wait(timeout=30 if sig != signal.SIGKILL else 10)
            except subprocess.TimeoutExpired:
                os.kill(nd.proc.pid, signal.SIGKILL)
                nd.proc.wait(timeout=10)
        nd.paused = False

    def stop(self, k: int) -> None:
        """A graceful stop, as systemd does it: SIGTERM, then the node drains (at most 30 s)."""
        self.kill(k, signal.SIGTERM)

    def pause(self, k: int) -> None:
        nd = self.nodes[k]
        if nd.alive():
            os.kill(nd.proc.pid, signal.SIGSTOP)
            nd.paused = True

    def resume(self, k: int) -> None:
        nd = self.nodes[k]
        if nd.alive() and nd.paused:
            os.kill(nd.proc.pid, signal.SIGCONT)
        nd.paused = False

    def skew(self, k: int, seconds: int) -> None:
        """Moves node k's wall clock `seconds` away from the real one (libfaketime re-reads the file)."""
        self.nodes[k].clock_file.write_text(f"{seconds:+d}\n")

    def check_exits(self) -> list[str]:
        """Nodes that died without being told to (recorded once each)."""
        out = []
        for k, nd in self.nodes.items():
            if nd.proc is not None and nd.proc.poll() is not None and nd.proc not in nd.exits:
                nd.exits.append(nd.proc)
                out.append(f"node {k} exited on its own (exit {nd.proc.returncode}); log: {nd.log}")
        return out

    def shutdown(self) -> None:
        for k, nd in self.nodes.items():
            if nd.alive():
                if nd.paused:
                    os.kill(nd.proc.pid, signal.SIGCONT)
                os.kill(nd.proc.pid, signal.SIGKILL)
                try:
                    nd.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if self.http:
            self.http.close()

    # --- admin API ----------------------------------------------------------------------------
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def admin(self, k: int, method: str, path: str, body=None, *, timeout: float = 5, http: Http | None = None) -> Outcome:
        return (http or self.http).call(self.nodes[k].ip, ADMIN_PORT, method, path, body=body, headers=self.auth(), timeout=timeout)

    def status(self, k: int, timeout: float = 2) -> dict | None:
        o = self.admin(k, "GET", "/api/v1/cluster", timeout=timeout)
        return o.json() if o.ok else None

    def leader(self) -> int | None:
        """The leader as the first answering live node sees it."""
        for k, nd in self.nodes.items():
            if not nd.alive() or nd.paused:
                continue
            s = self.status(k)
            if s and s.get("leader") is not None:
                return self.by_id(s["leader"])
        return None

    def wait_leader(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            k = self.leader()
            if k is not None:
                return k
            time.sleep(0.1)
        raise ClusterError(f"no leader within {timeout:.0f} s")

    def whole(self) -> bool:
        """Every node is a voter (or the leader) in the leader's view, and none lags."""
        k = self.leader()
        if k is None:
            return False
        s = self.status(k)
        if not s:
            return False
        nodes = s.get("nodes", [])
        return len(nodes) == self.n and all(x.get("role") in ("leader", "voter") and (x.get("lag") or 0) < 100 for x in nodes)

    def wait_whole(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.whole():
                return
            time.sleep(0.2)
        raise ClusterError(f"the cluster did not get {self.n} voters within {timeout:.0f} s")

    def gateway_url(self, k: int) -> tuple[str, int]:
        return self.nodes[k].ip, GATEWAY_PORT

    @staticmethod
    def provider_base(port: int) -> str:
        return f"http://{HOST_IP}:{port}/api"
