"""What sits around the cluster in a data center, run on the test's host: the provider (a small
HTTP upstream), an HAProxy in front of the three gateways, a Prometheus server scraping the three
nodes, and a load generator that calls a service through HAProxy and counts every failure.

Invariants:
  * Every request the load generator sends is accounted for: it either got the upstream's answer
    through the gateway (HTTP 200 whose body names the path it asked for) or it is a failure,
    recorded with when and why. Nothing is retried by the generator itself; retrying a refused
    or reset connection on another server is HAProxy's job, as it is in production.
  * HAProxy judges a node by `GET /status` on its metrics port, like a data center's load
    balancer: a draining or stopped node leaves the pool before it stops answering.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Upstream:
    """The provider's API: answers every GET with JSON naming the path it received."""

    def __init__(self, addr: str, port: int):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                body = json.dumps({"path": self.path, "transaction": self.headers.get("X-Transaction-Id")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((addr, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class Process:
    """A long-running helper (haproxy, prometheus) with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log: Path):
        self.name, self.cmd, self.log = name, cmd, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log}")


def haproxy(dir: Path, listen_port: int, nodes: dict[str, str], ca: Path, gateway_port: int, metrics_port: int) -> Process:
    """HAProxy on 127.0.0.1:listen_port, plain HTTP in front, HTTPS (verified) to the gateways."""
    servers = "\n".join(
        f"    server {name} {ip}:{gateway_port} ssl verify required ca-file {ca} "
        f"check port {metrics_port} no-check-ssl inter 300 fall 2 rise 2"
        for name, ip in nodes.items())
    cfg = f"""
global
    # Every request (server, timings, termination state) goes to haproxy.log.
    log stderr format short local0 info
    maxconn 1000

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection a node refuses is retried on another node. Nothing else is retried: a
    # request a node accepted must be answered, even while it is being upgraded.
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend gateway
    bind 127.0.0.1:{listen_port}
    default_backend lgsp

backend lgsp
    balance roundrobin
    # Which node answered, for the load generator's failure reports.
    http-response set-header X-Lgsp-Node %[srv_name]
    option httpchk GET /status
    http-check expect status 200
{servers}
"""
    path = dir / "haproxy.cfg"
    path.write_text(cfg)
    subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], check=True)
    return Process("haproxy", ["haproxy", "-db", "-f", str(path)], dir / "haproxy.log")


def prometheus(dir: Path, port: int, targets: dict[str, str], metrics_port: int) -> Process:
    """A Prometheus server scraping every node's /metrics each second (job `lgsp`)."""
    static = ",".join(f'"{ip}:{metrics_port}"' for ip in targets.values())
    (dir / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: lgsp
    static_configs:
      - targets: [{static}]
""")
    return Process("prometheus", [
        "prometheus", f"--config.file={dir / 'prometheus.yml'}", f"--storage.tsdb.path={dir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], dir / "prometheus.log")


def prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {query!r} failed: {body}")
    return body["data"]["result"]


def oauth_token(host: str, port: int, key: str, secret: str) -> str:
    """A bearer token from the gateway's POST /token (client credentials, HTTP Basic)."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
    c.request("POST", "/token", body="grant_type=client_credentials",
              headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"POST /token answered {r.status}: {body[:300]!r}")
    return json.loads(body)["access_token"]


def call(host: str, port: int, path: str, token: str) -> tuple[int, dict, bytes]:
    """One request through the gateway; returns status, headers and body."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


class Load:
    """Workers that each send GET /{context}/v1/... through HAProxy over a kept-alive
    connection, back to back, until stopped."""

    def __init__(self, host: str, port: int, token: str, context: str, workers: int = 3):
        self.host, self.port, self.token, self.context = host, port, token, context
        self.workers = workers
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(workers)]
        self.started = 0.0

    def __enter__(self):
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=40)

    def _worker(self, n: int) -> None:
        conn = None
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            path = f"/{self.context}/v1/citizens/{n}-{i}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
                r = conn.getresponse()
                body = r.read()
                good = r.status == 200 and json.loads(body).get("path", "").endswith(f"/citizens/{n}-{i}")
                if not good:
                    node = r.getheader("X-Lgsp-Node", "?")
                    self._fail(f"{path}: HTTP {r.status} from {node}: {body[:160].decode(errors='replace')}")
                else:
                    with self.lock:
                        self.ok += 1
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError, socket.timeout) as e:
                self._fail(f"{path}: {type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"t+{time.monotonic() - self.started:.1f}s {what}")

    def summary(self) -> str:
        """Failures grouped by what went wrong (time of the first and last of each kind)."""
        kinds: dict[str, list[str]] = {}
        with self.lock:
            for f in self.failures:
                when, what = f.split(" ", 1)
                kind = what.split(": ", 1)[1][:90] if ": " in what else what
                kinds.setdefault(kind, []).append(when)
        return "\n  ".join(f"{len(w)} x {k} ({w[0]} .. {w[-1]})" for k, w in kinds.items())

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, len(self.failures)
