"""The workloads that run during every fault, and the history they record.

* Register clients (`RegisterWorkload`): each loop picks a node at random and either writes a
  unique value to its team's current key (PATCH /api/v1/systems/{key} {"description": ...}) or
  reads it back (GET, a linearizable read by default). Keys are systems `reg-N` made ahead by a
  feeder (`Keys`); a team moves to a fresh key every `ops_per_key` operations, so each key's
  history stays short enough for the checker (Jepsen's "independent keys"). Every operation is
  recorded with its invocation and completion time and outcome: `ok`, `fail` (certainly not
  applied: never sent, or refused with a 4xx) or `info` (unknown: a timeout, a reset, a 5xx such
  as OUTCOME_UNKNOWN). After an `info` write the client continues as a new process (the old
  one's write stays in flight forever). A client leaves a node that failed alone for a second
  and backs off (50 ms doubling to 2 s) while its writes keep ending unknown: a burst of unknown
  writes on one key would make the checker's search explode.
* A set client (`SetWorkload`): creates a new system `set-N` through a random node every few
  milliseconds; at the end every node must list every acknowledged one ("acknowledged lost").
* Gateway clients (`GatewayWorkload`): one per node, calling the proxied service through that
  node like an agency behind the load balancer; see `GatewayWorkload` for how a dead node counts.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time

from nodehttp import Http

AGENCY = "000.00.02.H31"
SYSTEM_BODY = {"agency": AGENCY, "security": {"kind": "level", "level": 2}}


class Clock:
    """Seconds since the scenario started (monotonic): the time axis of every record."""

    def __init__(self):
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


def classify(o, *, write: bool) -> str:
    if o.ok:
        return "ok"
    if o.status is None:
        return "info" if (o.sent and write) else "fail"
    if 400 <= o.status < 500:
        return "fail"
    return "info" if write else "fail"


class Keys:
    """Registers ready for use: systems `reg-N` created (acknowledged, description "init") ahead of
    need by a feeder thread, so that a key's whole history is known to start from "init"."""

    def __init__(self, cluster, first: int, *, low: int = 16):
        self.c, self.low = cluster, low
        self.ready: list[str] = [f"reg-{i}" for i in range(first)]
        self.next = first
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True, name="keys")

    def initial(self) -> list[str]:
        return list(self.ready)

    def take(self) -> str | None:
        with self.lock:
            return self.ready.pop(0) if self.ready else None

    def _feed(self) -> None:
        http = Http(self.c.ctx)
        nodes = list(self.c.nodes)
        while not self.stop.is_set():
            if len(self.ready) >= self.low:
                time.sleep(0.05)
                continue
            key = f"reg-{self.next}"
            o = self.c.admin(random.choice(nodes), "POST", "/api/v1/systems", {"id": key, "name": key, "description": "init", **SYSTEM_BODY},
                             timeout=3, http=http)
            if o.ok:
                with self.lock:
                    self.ready.append(key)
            if o.ok or o.status == 409 or (o.status is None and o.sent):
                self.next += 1  # never reuse a name whose creation may have happened
            if not o.ok:
                time.sleep(0.2)
        http.close()


class RegisterWorkload:
    """`clients` clients in teams of `team` share one key at a time; a team moves to a fresh key
    after `ops_per_key` operations on it (if the feeder has one ready), so that a key's history
    stays within what the checker can search exhaustively (it finds a violation in a 40-operation
    history with 4 concurrent clients within a second, and in a 60-operation one only in ~30 s:
    the search is exponential, see chaos/README.md)."""

    def __init__(self, cluster, clock: Clock, *, clients: int, team: int, ops_per_key: int, timeout: float, keys: Keys):
        self.c, self.clock, self.clients, self.team, self.ops_per_key, self.timeout = cluster, clock, clients, team, ops_per_key, timeout
        self.keys = keys
        self.history: list[dict] = []
        self.stop = threading.Event()
        self.pids = itertools.count(1)
        self.threads: list[threading.Thread] = []
        teams = (clients + team - 1) // team
        self.team_key = [keys.take() for _ in range(teams)]
        self.team_ops = [0] * teams
        self.team_lock = threading.Lock()

    def key_for(self, cid: int) -> str:
        t = cid // self.team
        with self.team_lock:
            if self.team_ops[t] >= self.ops_per_key:
                fresh = self.keys.take()
                if fresh is not None:
                    self.team_key[t], self.team_ops[t] = fresh, 0
            self.team_ops[t] += 1
            return self.team_key[t]

    def start(self) -> None:
        self.keys.thread.start()
        for cid in range(self.clients):
            t = threading.Thread(target=self._client, args=(cid,), daemon=True, name=f"register-{cid}")
            t.start()
            self.threads.append(t)

    def _client(self, cid: int) -> None:
        http = Http(self.c.ctx)
        process = next(self.pids)
        seq = 0
        nodes = list(self.c.nodes)
        avoid: dict[int, float] = {}  # node -> until when this client leaves it alone
        backoff = 0.0
        while not self.stop.is_set():
            t_inv = self.clock.now()
            usable = [n for n in nodes if avoid.get(n, 0) <= t_inv] or nodes
            key, k = self.key_for(cid), random.choice(usable)
            if random.random() < 0.5:
                seq += 1
                value = f"c{cid}-{seq}"
                o = self.c.admin(k, "PATCH", f"/api/v1/systems/{key}", {"description": value}, timeout=self.timeout, http=http)
                kind = classify(o, write=True)
                rec = {"process": process, "key": key, "f": "write", "value": value, "type": kind, "invoke": t_inv}
            else:
                o = self.c.admin(k, "GET", f"/api/v1/systems/{key}", timeout=self.timeout, http=http)
                kind = classify(o, write=False)
                j = o.json() if kind == "ok" else None
                rec = {"process": process, "key": key, "f": "read", "value": j.get("description") if isinstance(j, dict) else None,
                       "type": kind, "invoke": t_inv}
            t_c = self.clock.now()
            if kind == "ok":
                rec["complete"] = t_c
            rec.update(node=k, status=o.status, code=None if kind == "ok" else o.code(), elapsed=round(t_c - t_inv, 4))
            self.history.append(rec)
            if kind == "info" and rec["f"] == "write":
                process = next(self.pids)
            # Like a careful client: leave a node that failed alone for a second, and back off
            # while failures go on (each write of unknown outcome widens the checker's search).
            if kind == "ok":
                backoff = 0.0
            else:
                avoid[k] = t_c + 1.0
                backoff = min(2.0, max(0.05, backoff * 2)) if kind == "info" else max(backoff, 0.05)
                time.sleep(backoff)
        http.close()

    def final_reads(self, keys: list[str]) -> list[str]:
        """Reads every key through every node after the faults (linearizable reads, recorded)."""
        failed: dict[tuple[int, str], int] = {}
        http = Http(self.c.ctx)
        for k in self.c.nodes:
            process = next(self.pids)
            for key in keys:
                t_inv = self.clock.now()
                o = self.c.admin(k, "GET", f"/api/v1/systems/{key}", timeout=10, http=http)
                t_c = self.clock.now()
                if not o.ok:
                    failed[(k, f"{o.status} {o.code()}")] = failed.get((k, f"{o.status} {o.code()}"), 0) + 1
                    continue
                self.history.append({"process": process, "key": key, "f": "read", "value": (o.json() or {}).get("description"),
                                     "type": "ok", "invoke": t_inv, "complete": t_c, "node": k, "status": o.status, "final": True})
        http.close()
        return [f"final reads through node {k}: {n} of {len(keys)} failed ({why})" for (k, why), n in sorted(failed.items())]

    def join(self) -> None:
        self.stop.set()
        self.keys.stop.set()
        for t in [*self.threads, self.keys.thread]:
            t.join(timeout=30)


class SetWorkload:
    def __init__(self, cluster, clock: Clock, *, timeout: float, pace: float = 0.02):
        self.c, self.clock, self.timeout, self.pace = cluster, clock, timeout, pace
        self.records: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="set")

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        http = Http(self.c.ctx)
        nodes = list(self.c.nodes)
        for n in itertools.count():
            if self.stop.is_set():
                break
            sid, k, t = f"set-{n}", random.choice(nodes), self.clock.now()
            o = self.c.admin(k, "POST", "/api/v1/systems", {"id": sid, "name": sid, **SYSTEM_BODY}, timeout=self.timeout, http=http)
            self.records.append({"id": sid, "node": k, "type": classify(o, write=True), "invoke": t, "status": o.status,
                                 "code": None if o.ok else o.code()})
            time.sleep(self.pace if o.ok else 0.05)
        http.close()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def check(self) -> dict:
        """Lists the systems on every node (linearizable read) and finds acknowledged creates missing."""
        acked = {r["id"] for r in self.records if r["type"] == "ok"}
        unknown = {r["id"] for r in self.records if r["type"] == "info"}
        failed = {r["id"] for r in self.records if r["type"] == "fail"}
        http = Http(self.c.ctx)
        per_node, lost, problems = {}, set(), []
        for k in self.c.nodes:
            o = self.c.admin(k, "GET", "/api/v1/systems?limit=100000", timeout=15, http=http)
            if not o.ok:
                problems.append(f"node {k}: cannot list systems: {o.status} {o.code()}")
                continue
            ids = {s["id"] for s in (o.json() or {}).get("items", []) if s["id"].startswith("set-")}
            missing = acked - ids
            lost |= missing
            per_node[k] = {"present": len(ids), "missing_acked": sorted(missing)[:20], "failed_but_present": sorted(failed & ids)[:20]}
        http.close()
        return {"acked": len(acked), "unknown": len(unknown), "failed": len(failed), "lost": sorted(lost),
                "failed_but_present": sorted(set().union(*(set(v["failed_but_present"]) for v in per_node.values())) if per_node else []),
                "per_node": per_node, "problems": problems}


class GatewayWorkload:
    """One client per node sends GET /dancu/v1/citizens to that node every `pace` seconds, the
    way an agency's system reaches the cluster through its load balancer (keepalived VIP or
    HAProxy with `retries 1` and `option redispatch`): when the node gives no HTTP answer at all
    (connection refused or reset, TLS or request timeout after `timeout` s) the request is sent
    once more to another node, as the balancer would redispatch it. An HTTP answer is final:
    2xx counts as success, anything else (502, 503, 401...) as a failure. The first attempt's
    outcome is recorded too, so the rate without a balancer can be read from the records."""

    def __init__(self, cluster, clock: Clock, token: str, *, pace: float = 0.025, timeout: float = 2.0):
        self.c, self.clock, self.token, self.pace, self.timeout = cluster, clock, token, pace, timeout
        self.records: list[dict] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True, name=f"gateway-{k}") for k in cluster.nodes]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _call(self, http: Http, k: int):
        host, port = self.c.gateway_url(k)
        return http.call(host, port, "GET", "/dancu/v1/citizens", headers={"Authorization": f"Bearer {self.token}"}, timeout=self.timeout)

    def _run(self, home: int) -> None:
        http = Http(self.c.ctx)
        others = [k for k in self.c.nodes if k != home]
        while not self.stop.is_set():
            t = self.clock.now()
            o = self._call(http, home)
            first = o.status
            served = home
            if o.status is None:
                served = random.choice(others)
                http.drop(self.c.gateway_url(served))  # a redispatch opens a new connection
                o = self._call(http, served)
            done = self.clock.now()
            self.records.append({"t": t, "latency": done - t, "ok": o.status == 200, "status": o.status, "first": first,
                                 "home": home, "served": served, "error": o.error})
            rest = self.pace - (self.clock.now() - t)
            if rest > 0:
                time.sleep(rest)
        http.close()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def dump_jsonl(path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
