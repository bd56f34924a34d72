#!/usr/bin/env python3
"""OAuth 2.0 client credentials (RFC 6749 §4.4, RFC 7523, RFC 7009) against the LGSP gateway,
driven by two third-party client libraries from PyPI:

- requests-oauthlib + oauthlib (BackendApplicationClient): HTTP Basic (the library's default)
  and form client_id/client_secret;
- Authlib (OAuth2Session): client_secret_basic, private_key_jwt (RS256 assertion, RFC 7523) with
  and without a `kid`, and revocation (RFC 7009).

Each token is then used by the same library for a GET and a POST through the gateway, checked
against the provider's echo. Usage: oauth2_client.py CONFIG.json (or the JSON on stdin); see
_compat.py for the configuration. Exits 1 with a message at the first failed check.
"""

import json
import os
import time

# `lgsp dev` serves plain HTTP on loopback; both libraries refuse plain-HTTP token endpoints
# unless told this is intended.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

import requests  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession  # noqa: E402
from authlib.integrations.requests_client import OAuthError as AuthlibError  # noqa: E402
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402
from oauthlib.oauth2 import BackendApplicationClient  # noqa: E402
from oauthlib.oauth2.rfc6749.errors import InvalidClientError  # noqa: E402
from requests_oauthlib import OAuth2Session  # noqa: E402

from _compat import check, expect_echo, expect_refusal, expect_status, load_config, run  # noqa: E402

cfg = load_config()
gw = cfg["gateway_url"].rstrip("/")
token_url = f"{gw}/token"
revoke_url = f"{gw}/revoke"
url = gw + cfg["service_path"]
o = cfg["oauth2"]
key, secret = o["consumer_key"], o["consumer_secret"]
BODY = json.dumps({"so_dinh_danh": "031099000123", "ho_ten": "Nguyễn Văn A"}, ensure_ascii=False).encode("utf-8")
state = {}


def check_token(tok, what):
    check(isinstance(tok.get("access_token"), str) and tok["access_token"], f"{what}: no access_token in {tok}")
    check(str(tok.get("token_type", "")).lower() == "bearer", f"{what}: token_type is {tok.get('token_type')!r}")
    check(isinstance(tok.get("expires_in"), int) and tok["expires_in"] > 0, f"{what}: expires_in is {tok.get('expires_in')!r}")
    check("scope" in tok, f"{what}: no scope member (SPEC §3 answers it, possibly empty)")


def calls(session, what):
    r = session.get(url, params={"so_dinh_danh": "031099000123"}, timeout=30)
    expect_echo(cfg, r, "GET", b"", f"{what}: GET", query="so_dinh_danh=031099000123")
    r = session.post(url, data=BODY, headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    expect_echo(cfg, r, "POST", BODY, f"{what}: POST")


def oauthlib_basic():
    s = OAuth2Session(client=BackendApplicationClient(client_id=key))
    # requests-oauthlib's default: client credentials in HTTP Basic, grant_type in the form.
    tok = s.fetch_token(token_url=token_url, client_id=key, client_secret=secret, timeout=30)
    check_token(tok, "requests-oauthlib (Basic)")
    calls(s, "requests-oauthlib (Basic)")


def oauthlib_form():
    s = OAuth2Session(client=BackendApplicationClient(client_id=key))
    tok = s.fetch_token(token_url=token_url, client_id=key, client_secret=secret, include_client_id=True, timeout=30)
    check_token(tok, "requests-oauthlib (form client_id/client_secret)")
    calls(s, "requests-oauthlib (form)")


def oauthlib_wrong_secret():
    s = OAuth2Session(client=BackendApplicationClient(client_id=key))
    try:
        s.fetch_token(token_url=token_url, client_id=key, client_secret=secret + "x", timeout=30)
    except InvalidClientError:
        return
    raise AssertionError("a wrong consumer secret was given a token")


def authlib_basic():
    s = AuthlibSession(client_id=key, client_secret=secret, token_endpoint_auth_method="client_secret_basic")
    tok = s.fetch_token(token_url, grant_type="client_credentials", timeout=30)
    check_token(tok, "Authlib client_secret_basic")
    calls(s, "Authlib client_secret_basic")
    state["authlib_token"] = tok["access_token"]


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT with a 5-minute assertion (its default is 1 hour), through the
    library's own `expires_in` parameter of private_key_jwt_sign."""

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(
            RSAKey.import_key(auth.client_secret),
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            claims=self.claims,
            header=self.headers,
            alg=self.alg,
            expires_in=300,
        )


def authlib_jwt(auth_class, with_kid):
    def step():
        auth = auth_class(token_url, headers={"kid": o["jwt_key_id"]} if with_kid else None)
        s = AuthlibSession(client_id=key, client_secret=o["jwt_private_key_pem"], token_endpoint_auth_method=auth)
        tok = s.fetch_token(token_url, grant_type="client_credentials", timeout=30)
        check_token(tok, "Authlib private_key_jwt")
        calls(s, "Authlib private_key_jwt")

    return step


def authlib_jwt_wrong_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    s = AuthlibSession(client_id=key, client_secret=other, token_endpoint_auth_method=PrivateKeyJWT(token_url))
    try:
        s.fetch_token(token_url, grant_type="client_credentials", timeout=30)
    except AuthlibError as e:
        check(e.error == "invalid_client", f"an assertion signed by an unregistered key: error {e.error!r}, expected invalid_client")
        return
    raise AssertionError("an assertion signed by an unregistered key was given a token")


def authlib_revoke():
    token = state["authlib_token"]
    s = AuthlibSession(client_id=key, client_secret=secret, token_endpoint_auth_method="client_secret_basic")
    r = s.revoke_token(revoke_url, token=token, token_type_hint="access_token", timeout=30)
    expect_status(r, 200, "RFC 7009 revocation")
    # The revocation is a replicated registry command: allow it a moment to reach the view.
    deadline = time.time() + 5
    while True:
        r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code == 401 or time.time() > deadline:
            break
        time.sleep(0.1)
    expect_refusal(r, 401, "INVALID_TOKEN", "a call with the revoked token")


def refusals():
    expect_refusal(requests.get(url, timeout=30), 401, "CREDENTIALS_REQUIRED", "a call without credentials")
    r = requests.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    expect_refusal(r, 401, "INVALID_TOKEN", "a call with a made-up token")


run(
    [
        ("requests-oauthlib BackendApplicationClient, HTTP Basic: token, GET, POST", oauthlib_basic),
        ("requests-oauthlib BackendApplicationClient, form client_secret: token, GET, POST", oauthlib_form),
        ("requests-oauthlib: a wrong secret raises InvalidClientError", oauthlib_wrong_secret),
        ("Authlib client_secret_basic: token, GET, POST", authlib_basic),
        ("Authlib private_key_jwt (RS256, kid, 5-minute assertion): token, GET, POST", authlib_jwt(ShortLivedPrivateKeyJWT, True)),
        ("Authlib private_key_jwt (RS256, no kid, 5-minute assertion): token, GET, POST", authlib_jwt(ShortLivedPrivateKeyJWT, False)),
        ("Authlib private_key_jwt with the library's defaults (1-hour assertion): token, GET, POST", authlib_jwt(PrivateKeyJWT, False)),
        ("Authlib private_key_jwt with an unregistered key: invalid_client", authlib_jwt_wrong_key),
        ("Authlib revoke_token (RFC 7009), then the token is refused", authlib_revoke),
        ("no credentials / a made-up token: 401 envelopes", refusals),
    ]
)
