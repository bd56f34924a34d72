#!/usr/bin/env python3
"""End-to-end test: the LGSP appliance deployed the way a city data center runs it.

From nothing (or the cache) to a checked three-node cluster:
  1. build the .deb (scripts/build-deb) and a second one with a higher version for the upgrade;
  2. debootstrap a Debian 12 root with systemd (cached under LGSP_E2E_CACHE, default
     /var/cache/lgsp-e2e) and boot three hosts from copies of it with
     `systemd-nspawn -b --register=no --keep-unit`, each in its own network namespace on a bridge
     (hosts.py);
  3. `ansible-lint` the role, then roll out over SSH with site, bootstrap, join and seed, twice,
     and require the second pass to report changed=0;
  4. check, as an operator would: every node sees the same leader and 3 voters; a call through
     the gateway shows up in `journalctl -u lgsp -o json` with its TRANSACTION_ID; a real
     Prometheus scrapes all 3 nodes; a SIGSTOPped node is restarted by the systemd watchdog;
  5. roll the cluster to the new package with upgrade.yml while a load generator sends requests
     through HAProxy (health-checked on /status, retrying refused connections on another node),
     and require zero failed requests and the new version on every node.

Run as root on Debian 12: `tests/e2e/run.py` (see tests/e2e/README.md). KEEP=1 leaves the hosts
up afterwards; `tests/e2e/run.py --cleanup` removes them; `tests/e2e/run.py --prepare` only fills
the cache. Exit status 0 only if every check held.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # keep tests/e2e free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hosts  # noqa: E402
import traffic  # noqa: E402
from hosts import LOGS, STATE, LabError, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "tests" / "e2e"
ANSIBLE = REPO / "ansible"
CACHE = Path(os.environ.get("LGSP_E2E_CACHE", "/var/cache/lgsp-e2e"))
KEEP = os.environ.get("KEEP") == "1"
VERBOSE = os.environ.get("VERBOSE") == "1"
NAMES = ["h1", "h2", "h3"]
GATEWAY_PORT, ADMIN_PORT, METRICS_PORT = 8443, 9443, 9464
UPSTREAM_PORT, HAPROXY_PORT, PROMETHEUS_PORT = 18080, 18443, 19090
# From tests/e2e/registry.toml.
CONSUMER_KEY, CONSUMER_SECRET, CONTEXT = "e2e-stp-hotich", "e2e-secret-7f3a9c1d5b2e8f40", "dancu"

T0 = time.monotonic()
TIMINGS: list[tuple[str, float]] = []


class Failed(Exception):
    """A check did not hold; the message says what was expected and what was seen."""


def log(msg: str) -> None:
    print(f"[e2e {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


@contextlib.contextmanager
def step(name: str):
    log(f"==> {name}")
    t = time.monotonic()
    yield
    TIMINGS.append((name, time.monotonic() - t))
    log(f"    {name}: {time.monotonic() - t:.1f} s")


def poll(what: str, fn, deadline_s: float, interval: float = 0.5):
    """Calls fn until it returns a truthy value; fails with fn's last complaint after the deadline.
    fn returns a value (done) or raises/returns None (not yet)."""
    end = time.monotonic() + deadline_s
    last = "never checked"
    while True:
        try:
            v = fn()
            if v:
                return v
            last = f"not yet ({v!r})"
        except (Failed, LabError, OSError, ValueError, KeyError, http.client.HTTPException) as e:
            last = str(e)
        if time.monotonic() > end:
            raise Failed(f"{what}: still not true after {deadline_s:.0f} s; last: {last}")
        time.sleep(interval)


# ---- preparation ------------------------------------------------------------------------------

TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "haproxy": "haproxy",
         "prometheus": "prometheus", "ip": "iproute2", "openssl": "openssl", "ssh": "openssh-client",
         "dpkg-deb": "dpkg"}


def check_tools() -> None:
    if os.geteuid() != 0:
        raise Failed("run as root (it creates network namespaces and boots containers)")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise Failed(f"missing tools; apt-get install {' '.join(missing)} python3-venv")


def ensure_venv() -> Path:
    """A virtualenv with the pinned Ansible, cached by the hash of requirements.txt."""
    req = E2E / "requirements.txt"
    venv = CACHE / f"venv-{hashlib.sha256(req.read_bytes()).hexdigest()[:12]}"
    if (venv / "bin" / "ansible-playbook").exists():
        return venv
    for old in CACHE.glob("venv-*"):
        shutil.rmtree(old, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r", str(req)], timeout=900)
    except LabError:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return venv


def build_packages(out: Path) -> tuple[Path, Path, str, str]:
    """The package under test (scripts/build-deb, or LGSP_E2E_DEB) and a copy of it with a higher
    version for the rolling upgrade."""
    if os.environ.get("LGSP_E2E_DEB"):
        deb = Path(os.environ["LGSP_E2E_DEB"])
    else:
        script = REPO / "scripts" / "build-deb"
        if not script.exists():
            raise Failed("scripts/build-deb is missing; set LGSP_E2E_DEB=/path/to/lgsp.deb")
        p = subprocess.run([str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise Failed(f"scripts/build-deb failed (exit {p.returncode})")
        deb = Path(p.stdout.strip().splitlines()[-1])
    if not deb.is_file():
        raise Failed(f"no package at {deb}")
    v1 = run(["dpkg-deb", "--field", str(deb), "Version"], capture=True).stdout.strip()
    v2 = f"{v1}+e2e1"
    # The "rebuilt" package: the same contents under a higher version, so apt upgrades it.
    tree = out / "deb-tree"
    shutil.rmtree(tree, ignore_errors=True)
    run(["dpkg-deb", "--raw-extract", str(deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {v2}", control.read_text()))
    new = out / f"lgsp_{v2}_amd64.deb"
    run(["dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "--build", str(tree), str(new)])
    shutil.rmtree(tree)
    first = out / deb.name
    shutil.copy(deb, first)
    return first, new, v1, v2


def make_pki(dir: Path, ips: dict[str, str]) -> None:
    """A test CA and one server certificate per host naming its address (and 127.0.0.1)."""
    dir.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(dir / "ca.key"), "-out", str(dir / "ca.crt"),
         "-days", "3", "-subj", "/CN=lgsp e2e test CA"])
    for name, ip in ips.items():
        (dir / f"{name}.ext").write_text(
            f"subjectAltName=IP:{ip},IP:127.0.0.1,DNS:{name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "req", *ec, "-keyout", str(dir / f"{name}.key"), "-out", str(dir / f"{name}.csr"),
             "-subj", f"/CN={name}"])
        run(["openssl", "x509", "-req", "-in", str(dir / f"{name}.csr"), "-CA", str(dir / "ca.crt"),
             "-CAkey", str(dir / "ca.key"), "-CAcreateserial", "-days", "3", "-out", str(dir / f"{name}.crt"),
             "-extfile", str(dir / f"{name}.ext")])


def write_inventory(path: Path, lab: hosts.Lab, deb: Path, pki: Path) -> None:
    inv = {"lgsp": {
        "hosts": {n: {"ansible_host": ip, "lgsp_address": ip} for n, ip in lab.ip.items()},
        "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "lgsp_deb": str(deb),
            "lgsp_tls_cert_src": f"{pki}/{{{{ inventory_hostname }}}}.crt",
            "lgsp_tls_key_src": f"{pki}/{{{{ inventory_hostname }}}}.key",
            "lgsp_tls_ca_src": f"{pki}/ca.crt",
            "lgsp_registry_file": str(E2E / "registry.toml"),
            # HAProxy checks every 300 ms and needs 2 failures: 2 s is plenty.
            "lgsp_drain_seconds": 2,
        },
    }}
    path.write_text(json.dumps({"all": {"children": inv}}, indent=2))


# ---- Ansible ----------------------------------------------------------------------------------

class Ansible:
    RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

    def __init__(self, venv: Path, inventory: Path | None = None):
        self.venv, self.inventory = venv, inventory
        self.env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_RETRY_FILES_ENABLED="False",
                        PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
        self.count = 0

    def start_lint(self) -> subprocess.Popen:
        """Starts `ansible-lint` on ansible/ (it runs while the package and image are made)."""
        out = open(LOGS / "ansible-lint.log", "w")
        return subprocess.Popen([str(self.venv / "bin" / "ansible-lint"), "--offline", "--nocolor"], cwd=ANSIBLE,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def finish_lint(self, p: subprocess.Popen) -> None:
        if p.wait() == 0:
            return
        text = (LOGS / "ansible-lint.log").read_text()
        if "Unable to find a working copy of ansible" in text:
            # ansible-lint's own `ansible --version` failed (seen once on a loaded machine whose
            # disk was briefly full): show why, and lint once more.
            v = subprocess.run([str(self.venv / "bin" / "ansible"), "--version"], cwd=ANSIBLE, env=self.env,
                               capture_output=True, text=True)
            log(f"    ansible-lint could not run `ansible --version` (exit {v.returncode}: {v.stderr.strip()[-300:]}); retrying")
            if self.start_lint().wait() == 0:
                return
            text = (LOGS / "ansible-lint.log").read_text()
        raise Failed(f"ansible-lint found problems:\n{text[-5000:]}")

    def play(self, playbook: str, *extra: str) -> dict[str, int]:
        """Runs a playbook; returns changed= per host from the recap. Fails on any failure."""
        self.count += 1
        logfile = LOGS / f"ansible-{self.count:02d}-{playbook.removesuffix('.yml')}.log"
        cmd = [str(self.venv / "bin" / "ansible-playbook"), "-i", str(self.inventory), str(ANSIBLE / playbook), *extra]
        with open(logfile, "w") as out:
            p = subprocess.Popen(cmd, cwd=ANSIBLE, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            text = []
            for line in p.stdout:
                out.write(f"{time.monotonic() - T0:7.1f} {line}")
                text.append(line)
                if VERBOSE:
                    print(f"    | {line}", end="", flush=True)
            p.wait()
        output = "".join(text)
        recap = {m[1]: (int(m[3]), int(m[4]), int(m[5])) for m in self.RECAP.finditer(output)}
        if p.returncode != 0 or not recap or any(u or f for _, u, f in recap.values()):
            raise Failed(f"ansible-playbook {playbook} failed (exit {p.returncode}); log {logfile}:\n{output[-5000:]}")
        changed = {h: c for h, (c, _, _) in recap.items()}
        log(f"    {playbook}: changed per host {changed}")
        return changed


# ---- checks -----------------------------------------------------------------------------------

class Cli:
    """Runs `lgsp` on a host as the operator (token passed on stdin, not on a command line)."""

    def __init__(self, lab: hosts.Lab, token: str):
        self.lab, self.token = lab, token

    def json(self, name: str, args: str) -> dict:
        env = f"LGSP_ADMIN_URL=https://{self.lab.ip[name]}:{ADMIN_PORT} LGSP_CA=/etc/lgsp/tls/ca.crt"
        p = hosts.run(["ssh", *self.lab.ssh_args(), f"root@{self.lab.ip[name]}",
                       f"read -r LGSP_TOKEN; export LGSP_TOKEN; {env} lgsp {args} --json"],
                      capture=True, check=False, input=self.token + "\n", timeout=60)
        if p.returncode != 0:
            raise Failed(f"{name}: lgsp {args} failed: {p.stderr.strip()}")
        return json.loads(p.stdout)


def node_status(ip: str) -> dict:
    with urllib.request.urlopen(f"http://{ip}:{METRICS_PORT}/status", timeout=5) as r:
        return json.load(r)


def cluster_healthy(lab: hosts.Lab, cli: Cli) -> int:
    """Every node: /status up with a quorum, and `lgsp cluster status` showing one leader, the same
    from everywhere, and 3 voters caught up. Returns the leader's id."""
    leaders = set()
    for name in lab.names:
        s = node_status(lab.ip[name])
        if s.get("status") != "up":
            raise Failed(f"{name}: /status is {s}")
        c = cli.json(name, "cluster status")
        roles = sorted(n["role"] for n in c["nodes"])
        if roles != ["leader", "voter", "voter"]:
            raise Failed(f"{name}: roles {roles}, want one leader and two voters: {c['nodes']}")
        lagging = [n["name"] for n in c["nodes"] if n.get("lag") is None or n["lag"] > 10]
        if lagging:
            raise Failed(f"{name}: nodes behind the leader: {lagging}")
        leaders.add(c["leader"])
        leaders.add(s["cluster"]["leader"])
    if len(leaders) != 1 or None in leaders:
        raise Failed(f"nodes disagree about the leader: {leaders}")
    return leaders.pop()


def call_gateway(ip: str, ca: Path, path: str, token: str) -> tuple[int, dict, bytes]:
    """One call straight to a node's gateway (HTTPS, certificate verified against the test CA)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    c = http.client.HTTPSConnection(ip, GATEWAY_PORT, context=ctx, timeout=30)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def journal_entry(lab: hosts.Lab, name: str, want: dict[str, str]) -> dict | None:
    """The first journal entry of lgsp.service on `name` that has every field in `want`."""
    p = lab.ssh(name, "journalctl -u lgsp -o json --no-pager", check=False, timeout=60)
    for line in p.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if all(e.get(k) == v for k, v in want.items()):
            return e
    return None


def service_state(lab: hosts.Lab, name: str) -> dict[str, str]:
    out = lab.ssh(name, "systemctl show lgsp -p MainPID -p NRestarts -p ActiveState -p WatchdogUSec").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# ---- the test ---------------------------------------------------------------------------------

def test(lab: hosts.Lab) -> None:
    with step("prepare in parallel: packages, Ansible virtualenv and Debian image (cached)"):
        check_tools()
        lab.destroy()  # whatever a previous run left behind
        (STATE / "debs").mkdir(parents=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            image_job = pool.submit(hosts.ensure_image, CACHE, log)
            debs_job = pool.submit(build_packages, STATE / "debs")
            ansible = Ansible(pool.submit(ensure_venv).result())
            lint = ansible.start_lint()
            deb1, deb2, v1, v2 = debs_job.result()
            log(f"    packages: {deb1.name} and {deb2.name}")
            image = image_job.result()
    with step("boot 3 hosts (systemd-nspawn, one network namespace each)"):
        lab.create(image)
    pki = STATE / "pki"
    make_pki(pki, lab.ip)
    ansible.inventory = STATE / "inventory.json"
    write_inventory(ansible.inventory, lab, deb1, pki)

    with step("ansible-lint (started while preparing)"):
        ansible.finish_lint(lint)
    with step("roll out: site, bootstrap, join, seed"):
        for pb in ("site.yml", "bootstrap.yml", "join.yml", "seed.yml"):
            ansible.play(pb)
    with step("roll out again: nothing changes"):
        for pb in ("site.yml", "bootstrap.yml", "join.yml", "seed.yml"):
            changed = ansible.play(pb)
            if any(changed.values()):
                raise Failed(f"second run of {pb} changed something: {changed}; see {LOGS}")

    token = json.loads(lab.ssh("h1", "cat /var/lib/lgsp/initial-admin.json").stdout)["api_token"]
    cli = Cli(lab, token)
    with step("cluster healthy from every node"):
        leader = poll("3 voters, one leader, seen alike from every node", lambda: cluster_healthy(lab, cli), 60)
        log(f"    leader is node {leader}")

    with traffic.Upstream(hosts.HOST_IP, UPSTREAM_PORT), \
            traffic.haproxy(STATE, HAPROXY_PORT, lab.ip, pki / "ca.crt", GATEWAY_PORT, METRICS_PORT) as lb:
        bearer = poll("a token from POST /token through HAProxy",
                      lambda: traffic.oauth_token("127.0.0.1", HAPROXY_PORT, CONSUMER_KEY, CONSUMER_SECRET), 30)
        status, _, body = traffic.call("127.0.0.1", HAPROXY_PORT, f"/{CONTEXT}/v1/citizens/1", bearer)
        if status != 200 or json.loads(body).get("path") != "/api/citizens/1":
            raise Failed(f"a call through HAProxy and the gateway to the provider: HTTP {status} {body[:300]!r}")

        with step("a failed call is in the journal with its structured fields"):
            # The gateway logs a transaction at warning level when the provider cannot be
            # reached (others at debug): service `canbo` points at a port nothing listens on.
            status, headers, body = call_gateway(lab.ip["h1"], pki / "ca.crt", "/canbo/v1/officials/1", bearer)
            txid = headers.get("x-transaction-id")
            if status != 502 or not txid:
                raise Failed(f"h1 gateway, provider down: want 502 with X-Transaction-Id, got {status} {headers} {body[:300]!r}")
            want = {"TRANSACTION_ID": txid, "AGENCY": "000.00.01.H31", "SYSTEM": "stp-hotich", "SERVICE": "canbo",
                    "PRIORITY": "4"}
            try:
                entry = poll(f"journalctl -u lgsp -o json on h1 has an entry with {want}",
                             lambda: journal_entry(lab, "h1", want), 30, 1)
            except Failed:
                seen = [e for e in [journal_entry(lab, "h1", {"TRANSACTION_ID": txid})] if e]
                raise Failed(f"no journal entry on h1 with {want}; first entry with that TRANSACTION_ID: {seen}")
            log("    " + ", ".join(f"{k}={entry[k]}" for k in sorted(entry) if not k.startswith("_") and k.isupper()))

        with step("Prometheus scrapes all 3 nodes"), \
                traffic.prometheus(STATE, PROMETHEUS_PORT, lab.ip, METRICS_PORT) as prom:
            def all_up():
                prom.check_alive()
                r = traffic.prometheus_query(PROMETHEUS_PORT, 'up{job="lgsp"}')
                up = {x["metric"]["instance"]: x["value"][1] for x in r}
                want = {f"{ip}:{METRICS_PORT}" for ip in lab.ip.values()}
                return set(up) == want and all(v == "1" for v in up.values()) and up
            log(f"    up: {poll('up{job=lgsp} == 1 for the 3 nodes', all_up, 60, 1)}")
            poll("one leader among the scraped nodes: sum(lgsp_cluster_is_leader) == 1",
                 lambda: [x["value"][1] for x in traffic.prometheus_query(PROMETHEUS_PORT, "sum(lgsp_cluster_is_leader)")] == ["1"],
                 30, 1)

        with step("the systemd watchdog restarts a SIGSTOPped node"):
            victim = "h3"
            before = service_state(lab, victim)
            if before.get("WatchdogUSec") in (None, "", "0", "infinity"):
                raise Failed(f"lgsp.service has no watchdog (WatchdogUSec={before.get('WatchdogUSec')})")
            lab.ssh(victim, f"kill -STOP {before['MainPID']}")
            log(f"    stopped pid {before['MainPID']} on {victim} (watchdog {before['WatchdogUSec']})")

            def restarted():
                s = service_state(lab, victim)
                return (s["ActiveState"] == "active" and s["MainPID"] not in ("0", before["MainPID"])
                        and int(s["NRestarts"]) > int(before["NRestarts"]) and s)
            after = poll(f"{victim} restarted by systemd", restarted, 180, 1)
            log(f"    new pid {after['MainPID']}, NRestarts {before['NRestarts']} -> {after['NRestarts']}")
            why = lab.ssh(victim, "journalctl -u lgsp --no-pager -o cat | grep -i 'watchdog timeout'", check=False).stdout
            if not why.strip():
                raise Failed(f"{victim} was restarted, but systemd logged no watchdog timeout for lgsp.service")
            poll("cluster healthy again", lambda: cluster_healthy(lab, cli), 120, 1)

            # The restarted node must serve with the registry it had: the consumer's token and
            # subscription (seeded long before the crash) are accepted again.
            def serves():
                status, _, body = call_gateway(lab.ip[victim], pki / "ca.crt", f"/{CONTEXT}/v1/citizens/1", bearer)
                if status != 200:
                    raise Failed(f"HTTP {status} {body[:160]!r}")
                return True
            poll(f"{victim}, restarted after a crash, accepts the consumer's calls again (its gateway view "
                 "has caught up with its registry)", serves, 30, 0.5)

        with step("rolling upgrade under load through HAProxy: no request lost"):
            pids = {n: service_state(lab, n)["MainPID"] for n in lab.names}
            lb_log_start = (STATE / "haproxy.log").stat().st_size
            with traffic.Load("127.0.0.1", HAPROXY_PORT, bearer, CONTEXT) as load:
                poll("load flowing", lambda: load.snapshot()[0] >= 50, 30, 0.2)
                ansible.play("upgrade.yml", "-e", f"lgsp_deb={deb2}")
                end_ok = load.snapshot()[0] + 50
                poll("load still flowing after the upgrade", lambda: load.snapshot()[0] >= end_ok, 30, 0.2)
                lb.check_alive()
            ok, failed = load.snapshot()
            log(f"    {ok} requests answered, {failed} failed")
            if load.failures:
                raise Failed(f"{failed} request(s) failed during the rolling upgrade (of {ok + failed}):\n  "
                             + load.summary() + "\n first ones:\n  " + "\n  ".join(load.failures[:5]))
            # Each node was taken out by the load balancer's health check (drained: /status 503)
            # and came back, rather than only riding on HAProxy's retries.
            with open(STATE / "haproxy.log", errors="replace") as f:
                f.seek(lb_log_start)
                lb_log = f.read()
            for name in lab.names:
                if f"Server lgsp/{name} is DOWN" not in lb_log or f"Server lgsp/{name} is UP" not in lb_log:
                    raise Failed(f"HAProxy never saw {name} leave and rejoin the pool; see {STATE / 'haproxy.log'}")
            for name in lab.names:
                version = lab.ssh(name, "dpkg-query --showformat='${Version}' --show lgsp").stdout.strip()
                s = service_state(lab, name)
                exe = lab.ssh(name, f"readlink /proc/{s['MainPID']}/exe").stdout.strip()
                if version != v2 or s["MainPID"] == pids[name] or exe != "/usr/bin/lgsp":
                    raise Failed(f"{name}: package {version} (want {v2}), pid {pids[name]} -> {s['MainPID']}, exe {exe}")
            poll("cluster healthy after the upgrade", lambda: cluster_healthy(lab, cli), 60, 1)
            changed = ansible.play("upgrade.yml", "-e", f"lgsp_deb={deb2}")
            if any(changed.values()):
                raise Failed(f"a second upgrade.yml to the same package changed something: {changed}")
            log(f"    all 3 nodes run {v2}")


def dump_diagnostics(lab: hosts.Lab) -> None:
    """On failure: each host's lgsp unit state and journal, into the log directory, and the
    journal's last lines on the console."""
    for name in lab.names:
        state = lab.ssh(name, "systemctl status lgsp --no-pager --lines=0", check=False, timeout=30)
        journal = lab.ssh(name, "journalctl -u lgsp --no-pager -n 300", check=False, timeout=30)
        (LOGS / f"{name}-lgsp.log").write_text(state.stdout + state.stderr + "\n" + journal.stdout + journal.stderr)
        print(f"---- {name}: journalctl -u lgsp (last 15 lines; more in {LOGS / (name + '-lgsp.log')})")
        print("\n".join(journal.stdout.splitlines()[-15:]) or journal.stderr)


def prepare() -> int:
    """Only fills the cache (Debian image, Ansible virtualenv), so that a later run starts at the
    packages: scripts/test runs this in the background while the Rust tests run."""
    try:
        check_tools()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            image_job = pool.submit(hosts.ensure_image, CACHE, log)
            ensure_venv()
            image_job.result()
    except (Failed, LabError, subprocess.SubprocessError, OSError) as e:
        print(f"\nprepare FAILED: {e}\n", file=sys.stderr)
        return 1
    log(f"prepared: Debian image and Ansible virtualenv cached in {CACHE}")
    return 0


def main() -> int:
    lab = hosts.Lab(NAMES, log)
    if sys.argv[1:] == ["--cleanup"]:
        lab.destroy()
        return 0
    prepare_only = sys.argv[1:] == ["--prepare"]
    if sys.argv[1:] and not prepare_only:
        print(__doc__)
        return 64
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lock = open("/var/tmp/lgsp-e2e.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another tests/e2e/run.py is running", file=sys.stderr)
        return 1
    if prepare_only:
        return prepare()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    ok = False
    try:
        test(lab)
        ok = True
    except (Failed, LabError, subprocess.SubprocessError, OSError) as e:
        print(f"\nFAILED: {e}\n", file=sys.stderr)
        if lab.procs:
            dump_diagnostics(lab)
        print(f"logs: {LOGS}", file=sys.stderr)
    finally:
        if KEEP:
            log(f"KEEP=1: hosts stay up ({', '.join(f'{n} {ip}' for n, ip in lab.ip.items())}); "
                f"ssh -i {lab.key} root@{lab.ip['h1']}; inventory {STATE / 'inventory.json'}; "
                "remove with tests/e2e/run.py --cleanup")
        else:
            lab.destroy()
    for name, secs in TIMINGS:
        print(f"  {secs:6.1f} s  {name}")
    print(f"e2e {'passed' if ok else 'FAILED'} in {time.monotonic() - T0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
