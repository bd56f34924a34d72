#!/usr/bin/env python3
"""RFC 9421 HTTP Message Signatures against the LGSP gateway, signed by third-party libraries
from PyPI: pyauth's `http-message-signatures` (the signer) and its Requests plugin
`requests-http-signature` (HTTPSignatureAuth, which also writes the RFC 9530 Content-Digest).

For every algorithm the gateway accepts (hmac-sha256, ed25519, ecdsa-p256-sha256,
rsa-pss-sha512, rsa-v1_5-sha256): a GET with a query and a POST with a body, signed with the
library's defaults (@method, @authority, @target-uri, plus the Date and Content-Digest it adds)
and a nonce, checked against the provider's echo. Then the refusals: a tampered body, a changed
URL, a replayed nonce, no nonce, a wrong key, a stale `created`, a body not covered by
content-digest; and coverage by @authority + @path + @query and a sha-512 Content-Digest
computed here and signed with the low-level HTTPMessageSigner.

Usage: httpsig_client.py CONFIG.json (or the JSON on stdin); see _compat.py. Exits 1 with a
message at the first failed check.
"""

import base64
import datetime
import hashlib
import json
import secrets

import requests
from http_message_signatures import HTTPMessageSigner, algorithms
from http_message_signatures.resolvers import MappingKeyResolver
from requests_http_signature import HTTPSignatureAuth

from _compat import check, expect_echo, expect_refusal, load_config, run

ALGS = {
    "hmac-sha256": algorithms.HMAC_SHA256,
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}

cfg = load_config()
url = cfg["gateway_url"].rstrip("/") + cfg["service_path"]
keys = {k["alg"]: k for k in cfg["httpsig"]["keys"]}
missing = sorted(set(ALGS) - set(keys))
if missing:
    raise SystemExit(f"FAIL configuration: no key for {', '.join(missing)}")
BODY = json.dumps({"so_dinh_danh": "031099000123", "ho_ten": "Trần Thị B", "ghi_chu": "x" * 3000}, ensure_ascii=False).encode()
QUERY = "so_dinh_danh=031099000123&loai=thuong+tru"
session = requests.Session()


def key_material(k):
    if k["alg"] == "hmac-sha256":
        return base64.b64decode(k["secret_base64"])
    return k["private_key_pem"].encode()


def auth_for(alg, **options):
    k = keys[alg]
    options.setdefault("use_nonce", True)
    return HTTPSignatureAuth(signature_algorithm=ALGS[alg], key=key_material(k), key_id=k["key_id"], **options)


def prepared(method, auth, body=None, query=QUERY):
    req = requests.Request(method, f"{url}?{query}" if query else url, data=body, auth=auth)
    if body is not None:
        req.headers["Content-Type"] = "application/json; charset=utf-8"
    return session.prepare_request(req)


def send(p):
    return session.send(p, timeout=30)


def get_and_post(alg):
    def step():
        r = send(prepared("GET", auth_for(alg)))
        expect_echo(cfg, r, "GET", b"", f"{alg} GET", query=QUERY)
        r = send(prepared("POST", auth_for(alg), body=BODY))
        echo = expect_echo(cfg, r, "POST", BODY, f"{alg} POST", query=QUERY)
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
        check(
            echo["headers"].get("content-digest") == digest,
            f"{alg} POST: the provider saw Content-Digest {echo['headers'].get('content-digest')!r}, expected {digest!r}",
        )

    return step


def authority_path_query():
    auth = auth_for("hmac-sha256", covered_component_ids=("@method", "@authority", "@path", "@query"))
    r = send(prepared("POST", auth, body=BODY))
    expect_echo(cfg, r, "POST", BODY, "@authority + @path + @query", query=QUERY)


def own_sha512_digest():
    """The low-level signer over a Content-Digest computed here (RFC 9530, sha-512)."""
    k = keys["ed25519"]
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519,
        key_resolver=MappingKeyResolver(private_keys={k["key_id"]: key_material(k)}, public_keys={}),
    )
    p = prepared("PUT", None, body=BODY)
    p.headers["Content-Digest"] = "sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ":"
    signer.sign(
        p,
        key_id=k["key_id"],
        nonce=secrets.token_hex(16),
        covered_component_ids=("@method", "@target-uri", "content-type", "content-digest"),
        use_existing_digest=True,
    )
    expect_echo(cfg, send(p), "PUT", BODY, "sha-512 Content-Digest via HTTPMessageSigner", query=QUERY)


def tampered_body():
    for alg in ("hmac-sha256", "ed25519"):
        p = prepared("POST", auth_for(alg), body=BODY)
        p.body = BODY.replace(b"031099000123", b"031099000999")  # same length, other content
        check(len(p.body) == len(BODY), "the tampered body must keep its length")
        expect_refusal(send(p), 400, "CONTENT_DIGEST_MISMATCH", f"{alg}: a body changed after signing")


def changed_url():
    p = prepared("GET", auth_for("ecdsa-p256-sha256"))
    p.url = p.url.replace("031099000123", "031099000999")
    expect_refusal(send(p), 401, "SIGNATURE_INVALID", "a URL changed after signing")


def replayed_nonce():
    p = prepared("GET", auth_for("rsa-pss-sha512"))
    expect_echo(cfg, send(p), "GET", b"", "the first use of a signature", query=QUERY)
    expect_refusal(send(p), 401, "SIGNATURE_NONCE_REPLAYED", "the same signed request sent again")


def no_nonce():
    p = prepared("GET", auth_for("ed25519", use_nonce=False))
    expect_refusal(send(p), 401, "SIGNATURE_NONCE_REQUIRED", "a signature without a nonce")


def wrong_key():
    k = keys["hmac-sha256"]
    auth = HTTPSignatureAuth(signature_algorithm=algorithms.HMAC_SHA256, key=secrets.token_bytes(32), key_id=k["key_id"], use_nonce=True)
    expect_refusal(send(prepared("GET", auth)), 401, "SIGNATURE_INVALID", "an HMAC with another secret")
    auth = HTTPSignatureAuth(signature_algorithm=algorithms.HMAC_SHA256, key=secrets.token_bytes(32), key_id="no-such-key", use_nonce=True)
    expect_refusal(send(prepared("GET", auth)), 401, "SIGNATURE_UNKNOWN_KEY", "an unregistered keyid")


class StaleAuth(HTTPSignatureAuth):
    def get_created(self, request):
        created = super().get_created(request)
        return created - datetime.timedelta(seconds=900)


def stale_created():
    k = keys["rsa-v1_5-sha256"]
    auth = StaleAuth(signature_algorithm=algorithms.RSA_V1_5_SHA256, key=key_material(k), key_id=k["key_id"], use_nonce=True)
    expect_refusal(send(prepared("GET", auth)), 401, "SIGNATURE_CREATED_OUT_OF_WINDOW", "created 15 minutes ago")


def body_not_covered():
    k = keys["hmac-sha256"]
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(private_keys={k["key_id"]: key_material(k)}, public_keys={}),
    )
    p = prepared("POST", None, body=BODY)
    signer.sign(p, key_id=k["key_id"], nonce=secrets.token_hex(16), covered_component_ids=("@method", "@target-uri"))
    expect_refusal(send(p), 401, "SIGNATURE_COMPONENTS_INSUFFICIENT", "a body without content-digest coverage")


run(
    [(f"{alg}: GET with a query and POST with a body (library defaults + nonce)", get_and_post(alg)) for alg in ALGS]
    + [
        ("hmac-sha256 over @authority + @path + @query + content-digest", authority_path_query),
        ("ed25519 via HTTPMessageSigner over a sha-512 Content-Digest computed here", own_sha512_digest),
        ("a body tampered after signing: 400 CONTENT_DIGEST_MISMATCH", tampered_body),
        ("a URL changed after signing: 401 SIGNATURE_INVALID", changed_url),
        ("a replayed nonce: 401 SIGNATURE_NONCE_REPLAYED", replayed_nonce),
        ("no nonce: 401 SIGNATURE_NONCE_REQUIRED", no_nonce),
        ("a wrong HMAC secret / an unknown keyid: 401", wrong_key),
        ("created outside the ±300 s window: 401", stale_created),
        ("a POST whose body is not covered: 401", body_not_covered),
    ]
)
