#!/usr/bin/env python3
"""Generates one consumer key pair per RFC 9421 public-key algorithm with `cryptography`
(OpenSSL), independently of the gateway's Rust crates, and prints them as JSON:

    {"keys": [{"alg": "ed25519", "key_id": "compat-ed25519",
               "private_key_pem": "...PKCS#8...", "public_key_pem": "...SubjectPublicKeyInfo..."}, ...]}

tests/compat.rs registers the public halves with PUT /api/v1/credentials/{id}/public-keys and
hands the private halves to the client scripts. The rsa-v1_5-sha256 key also signs the RS256
private_key_jwt assertions of oauth2_client.py.
"""

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def pems(private):
    return (
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    )


keys = []
for alg, private in [
    ("ed25519", ed25519.Ed25519PrivateKey.generate()),
    ("ecdsa-p256-sha256", ec.generate_private_key(ec.SECP256R1())),
    ("rsa-pss-sha512", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("rsa-v1_5-sha256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
]:
    priv, pub = pems(private)
    keys.append({"alg": alg, "key_id": f"compat-{alg}", "private_key_pem": priv, "public_key_pem": pub})
print(json.dumps({"keys": keys}))
