"""Shared helpers of the compatibility scripts: the JSON configuration, checks that exit with a
clear message, and the checks of the provider's echo (tests/common/upstream.rs answers every
request with {method, path, query, headers, body_len, body_sha256}).

The configuration is a JSON object read from the file named by the first argument, or from
stdin when there is none:

    {
      "gateway_url": "http://127.0.0.1:PORT",
      "service_path": "/dancu/v1/citizens",          # a path of a published service
      "upstream_path": "/api/citizens",              # where the provider sees it
      "consumer_system": "stp-hotich",
      "consumer_agency": "000.00.01.H31",
      "oauth2": {"consumer_key": "...", "consumer_secret": "...",
                 "jwt_key_id": "...", "jwt_private_key_pem": "-----BEGIN PRIVATE KEY-----..."},
      "httpsig": {"keys": [{"alg": "hmac-sha256", "key_id": "...", "secret_base64": "..."},
                           {"alg": "ed25519", "key_id": "...", "private_key_pem": "..."}, ...]}
    }
"""

import hashlib
import json
import sys

import requests


class CheckFailed(Exception):
    pass


def load_config():
    if len(sys.argv) > 1 and sys.argv[1] != "-":
        with open(sys.argv[1], encoding="utf-8") as f:
            return json.load(f)
    return json.load(sys.stdin)


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def describe(resp):
    body = resp.text
    if len(body) > 600:
        body = body[:600] + "..."
    return f"{resp.request.method} {resp.url} -> {resp.status_code} {body}"


def expect_status(resp, status, what):
    check(resp.status_code == status, f"{what}: expected HTTP {status}, got {describe(resp)}")


def expect_refusal(resp, status, code, what):
    """A response the gateway produced itself: the JSON envelope of SPEC §3."""
    expect_status(resp, status, what)
    try:
        env = resp.json()
    except ValueError:
        raise CheckFailed(f"{what}: the refusal is not JSON: {describe(resp)}")
    check(env.get("status") == "01", f"{what}: envelope status is not \"01\": {env}")
    check(env.get("code") == code, f"{what}: expected code {code}, got {env.get('code')}: {env.get('message')}")
    check(env.get("transactionId") == resp.headers.get("X-Transaction-Id"), f"{what}: transactionId differs from X-Transaction-Id")


def expect_echo(cfg, resp, method, body, what, query=""):
    """The provider answered 200 and saw the request as the gateway must forward it."""
    expect_status(resp, 200, what)
    txn = resp.headers.get("X-Transaction-Id")
    check(txn, f"{what}: no X-Transaction-Id on the response")
    try:
        echo = resp.json()
    except ValueError:
        raise CheckFailed(f"{what}: the provider's echo is not JSON: {describe(resp)}")
    check(echo.get("method") == method, f"{what}: the provider saw method {echo.get('method')}, expected {method}")
    check(echo.get("path") == cfg["upstream_path"], f"{what}: the provider saw path {echo.get('path')}, expected {cfg['upstream_path']}")
    check(echo.get("query") == query, f"{what}: the provider saw query {echo.get('query')!r}, expected {query!r}")
    body = body or b""
    check(echo.get("body_len") == len(body), f"{what}: the provider got {echo.get('body_len')} body bytes, expected {len(body)}")
    check(
        echo.get("body_sha256") == hashlib.sha256(body).hexdigest(),
        f"{what}: the provider got a different body (sha256 {echo.get('body_sha256')})",
    )
    h = echo.get("headers", {})
    check(h.get("x-transaction-id") == txn, f"{what}: provider's X-Transaction-Id {h.get('x-transaction-id')} != response's {txn}")
    check(h.get("x-consumer-system") == cfg["consumer_system"], f"{what}: X-Consumer-System is {h.get('x-consumer-system')!r}")
    check(h.get("x-consumer-agency") == cfg["consumer_agency"], f"{what}: X-Consumer-Agency is {h.get('x-consumer-agency')!r}")
    check("forwarded" in h, f"{what}: no Forwarded header reached the provider")
    for leaked in ("authorization", "signature", "signature-input"):
        check(leaked not in h, f"{what}: the consumer's {leaked} header reached the provider")
    return echo


def run(steps):
    """Runs every (name, fn) step, one line each; exits 1 if any failed, listing the failures."""
    failed = []
    for name, fn in steps:
        try:
            fn()
        except CheckFailed as e:
            failed.append((name, str(e)))
        except requests.RequestException as e:
            failed.append((name, f"HTTP error: {e!r}"))
        except Exception as e:  # a library raised: a failure of this step
            failed.append((name, f"{type(e).__name__}: {e}"))
        else:
            print(f"ok   {name}", flush=True)
            continue
        print(f"FAIL {name}: {failed[-1][1]}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(steps)} checks failed:", file=sys.stderr)
        for name, why in failed:
            print(f"FAIL {name}: {why}", file=sys.stderr)
        sys.exit(1)
    print(f"all {len(steps)} checks passed")
