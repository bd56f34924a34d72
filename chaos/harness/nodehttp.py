"""HTTPS calls to the nodes with keep-alive connections, classified the way the checker needs.

Each `Http` object belongs to one thread (one client) and keeps one connection per node. An
answer is an `Outcome`: the HTTP status and body, or, when there is none, whether the request may
have reached the node (`sent`): a failure to connect (refused, TLS handshake not finished) means
the request never left this client, so a write certainly did not happen; any failure after that
(reset, timeout while waiting for the answer) leaves its outcome unknown.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass


@dataclass
class Outcome:
    status: int | None
    body: bytes
    error: str | None
    sent: bool
    headers: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def code(self) -> str:
        """The API's error code (e.g. NO_QUORUM), or the transport error's class."""
        if self.status is None:
            return (self.error or "error").split(":")[0]
        j = self.json()
        return j.get("code", str(self.status)) if isinstance(j, dict) else str(self.status)


def tls_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


class Http:
    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.conns: dict[tuple[str, int], http.client.HTTPSConnection] = {}

    def call(self, host: str, port: int, method: str, path: str, *, body=None, headers: dict | None = None,
             timeout: float = 5.0) -> Outcome:
        key = (host, port)
        conn = self.conns.get(key)
        if conn is None:
            conn = http.client.HTTPSConnection(host, port, context=self.ctx, timeout=timeout)
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as e:
                conn.close()
                return Outcome(None, b"", f"connect: {e}", sent=False)
            self.conns[key] = conn
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            payload = r.read()
            if r.will_close:
                self.drop(key)
            return Outcome(r.status, payload, None, sent=True, headers={k.lower(): v for k, v in r.getheaders()})
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            self.drop(key)
            return Outcome(None, b"", f"{type(e).__name__}: {e}", sent=True)

    def drop(self, key: tuple[str, int]) -> None:
        c = self.conns.pop(key, None)
        if c is not None:
            c.close()

    def close(self) -> None:
        for k in list(self.conns):
            self.drop(k)
