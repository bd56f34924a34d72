"""Three Debian 12 hosts booted with systemd under systemd-nspawn, for the end-to-end test.

What this module provides:
  * `ensure_image(cache)`: a debootstrapped bookworm root with systemd, sshd and python3, kept
    under the cache directory and rebuilt only when missing (or when the package list below
    changes: the directory name carries a hash of it).
  * `Lab`: the per-run world — a Linux bridge `lgspe2e0` (10.77.0.1/24, the host's address) and
    one network namespace per host joined to it by a veth pair; per host an overlay of the image;
    `systemd-nspawn -b --register=no --keep-unit` in that namespace; an SSH key for the run.
  * `Lab.ssh(host, command)`: run a command on a host as root.

Invariants:
  * Everything the lab creates has a fixed name (bridge `lgspe2e0`, namespaces `lgspe2e-hN`,
    state and overlay mounts under `/var/tmp/lgsp-e2e`; logs of the last run stay in
    `/var/tmp/lgsp-e2e-logs`), and `Lab.destroy()` removes all of it even when a previous run
    died half-way, so a crashed or KEEP=1 run never breaks the next one.
  * Only processes this lab started are killed: pids come from the state directory and are
    checked to still be our `systemd-nspawn --machine=hN` before anything is signalled.

Works on a host whose PID 1 is not systemd and whose cgroups are v1 (a Firecracker VM):
`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0` keeps the containers on the legacy hierarchy that
`/sys/fs/cgroup/systemd` provides; `--register=no` needs no systemd-machined; `--keep-unit` is
harmless without a systemd PID 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("LGSP_E2E_MIRROR", "http://deb.debian.org/debian")
# What a host needs: systemd as PID 1, sshd and python3 (+ python3-apt for Ansible's apt
# module), dbus (systemctl), iproute2/curl/procps for debugging, adduser for the package.
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt",
    "iproute2", "curl", "ca-certificates", "adduser", "procps",
]
# Units that only slow a throw-away host down or fail in a container.
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "systemd-timesyncd.service",
]
# Bump when the image preparation below changes, so cached images are rebuilt.
IMAGE_RECIPE = "3"

STATE = Path("/var/tmp/lgsp-e2e")
# Logs of the last run, kept after it ends (hosts' consoles, Ansible, HAProxy, Prometheus).
LOGS = Path("/var/tmp/lgsp-e2e-logs")
BRIDGE = "lgspe2e0"
SUBNET = "10.77.0"
HOST_IP = f"{SUBNET}.1"


class LabError(Exception):
    """A step of building or running the lab failed; the message says which and why."""


def run(cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float | None = None,
        env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command; on failure raises LabError with its output."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and p.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed (exit {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p


def ensure_image(cache: Path, log) -> Path:
    """Returns the cached root filesystem, debootstrapping it first when it is missing."""
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, PACKAGES, MASKED_UNITS, IMAGE_RECIPE]).encode()).hexdigest()[:12]
    image = cache / f"image-{SUITE}-{key}"
    if (image / "etc" / "os-release").exists():
        log(f"image: cached {image}")
        return image
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"image-{SUITE}-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = cache / f"tmp-image-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"image: debootstrap {SUITE} into {image} (cached for later runs)")
    with open(cache / "debootstrap.log", "w") as out:
        p = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
            stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise LabError(f"debootstrap failed (exit {p.returncode}); see {cache / 'debootstrap.log'}")
    # Each host gets its own machine id at boot (systemd-nspawn passes a random one).
    (tmp / "etc" / "machine-id").write_text("")
    units = tmp / "etc" / "systemd" / "system"
    for unit in MASKED_UNITS:
        link = units / unit
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/dev/null")
    (tmp / "etc" / "ssh" / "sshd_config.d" / "lgsp-e2e.conf").write_text(
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n")
    # Packages are installed from copied .deb files; the hosts have no route to a mirror.
    (tmp / "etc" / "apt" / "apt.conf.d" / "99lgsp-e2e").write_text('APT::Install-Recommends "false";\n')
    shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (tmp / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
    tmp.rename(image)
    return image


class Lab:
    """The bridge, the namespaces and the booted hosts of one run."""

    def __init__(self, names: list[str], log):
        self.names = names
        self.log = log
        self.ip = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(names)}
        self.key = STATE / "id_ed25519"
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- life cycle -------------------------------------------------------------------------

    def create(self, image: Path) -> None:
        (STATE / "hosts").mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lgsp-e2e", "-f", str(self.key)])
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        for name in self.names:
            self._network(name)
            self._root(name, image)
        for name in self.names:
            self._boot(name)
        for name in self.names:
            self._wait_ready(name)

    def destroy(self) -> None:
        """Stops our containers and removes namespaces, bridge and host roots; idempotent."""
        pids = STATE / "pids.json"
        nspawns = json.loads(pids.read_text()) if pids.exists() else {}
        for name, pid in nspawns.items():
            _kill_container_init(pid, name)
        for name, pid in nspawns.items():
            p = self.procs.get(name)
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            else:
                _wait_gone(pid, name)
        self.procs.clear()
        for mountpoint in _mounts_under(STATE):
            run(["umount", "--lazy", mountpoint], check=False)
        netns = run(["ip", "netns", "list"], check=False, capture=True).stdout
        for line in netns.splitlines():
            ns = line.split()[0] if line.split() else ""
            if ns.startswith("lgspe2e-"):
                run(["ip", "netns", "del", ns], check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            run(["ip", "link", "del", BRIDGE], check=False)
        shutil.rmtree(STATE, ignore_errors=True)

    # ---- talking to hosts -------------------------------------------------------------------

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3"]

    def ssh(self, name: str, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(["ssh", *self.ssh_args(), f"root@{self.ip[name]}", command], check=check, capture=True, timeout=timeout)

    # ---- steps ------------------------------------------------------------------------------

    def _network(self, name: str) -> None:
        ns, veth = f"lgspe2e-{name}", f"lgspe2e-{name}"
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0", "netns", ns])
        run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", "host0"])
        run(["ip", "-n", ns, "link", "set", "host0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", HOST_IP])

    def _root(self, name: str, image: Path) -> None:
        """The host's root: an overlay of the cached image (read-only below) and a small
        per-host upper directory, so booting needs no copy and the cache stays pristine."""
        base = STATE / "hosts" / name
        for d in ("upper", "work", "root"):
            (base / d).mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={image},upperdir={base / 'upper'},workdir={base / 'work'}", str(base / "root")])
        root = base / "root"
        (root / "etc" / "hostname").write_text(f"{name}\n")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{ip} {n}\n" for n, ip in self.ip.items())
        (root / "etc" / "hosts").write_text(hosts)
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        os.chmod(ssh_dir / "authorized_keys", 0o600)

    def _boot(self, name: str) -> None:
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="0")
        out = open(LOGS / f"{name}-console.log", "wb")
        self.procs[name] = subprocess.Popen(
            ["systemd-nspawn", "-b", "--register=no", "--keep-unit", f"--machine={name}",
             f"--network-namespace-path=/run/netns/lgspe2e-{name}", "--console=passive",
             "-D", str(STATE / "hosts" / name / "root")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        (STATE / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))

    def _wait_ready(self, name: str, deadline_s: float = 120) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            if self.procs[name].poll() is not None:
                raise LabError(f"{name}: systemd-nspawn exited ({self.procs[name].returncode}); "
                               f"see {LOGS / (name + '-console.log')}")
            p = self.ssh(name, "systemctl is-system-running --wait", check=False, timeout=60)
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.ssh(name, "systemctl --failed --no-legend", check=False).stdout.strip()
                    self.log(f"{name}: booted degraded; failed units: {failed}")
                return
            if time.monotonic() > deadline:
                raise LabError(f"{name}: no SSH/boot after {deadline_s:.0f} s (last: {state!r} {p.stderr.strip()})")
            time.sleep(0.5)


def _ours(pid: int, name: str) -> bool:
    """Whether pid is still the systemd-nspawn this lab started for host `name`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"systemd-nspawn") and f"--machine={name}".encode() in cmdline


def _kill_container_init(pid: int, name: str) -> None:
    """SIGKILLs the container's init (the child of our systemd-nspawn): its whole PID namespace
    dies with it and systemd-nspawn exits."""
    if not _ours(pid, name):
        return
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int, name: str) -> None:
    """Waits for a systemd-nspawn of an earlier run (not our child) to exit; kills it after 10 s."""
    for _ in range(100):
        if not _ours(pid, name):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _mounts_under(dir: Path) -> list[str]:
    """Mount points below dir, deepest first."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(f"{dir}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)
