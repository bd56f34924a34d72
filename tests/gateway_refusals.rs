//! The gateway's refusal matrix (SPEC §3): every way a call is refused answers with the right
//! status, the stable code and the JSON envelope, and the provider sees nothing. Also: the five
//! RFC 9421 algorithms and `private_key_jwt` succeed, and OAuth revocation takes effect.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use gateway_support::*;
use lgsp::gateway::httpsig::SignerKey;
use serde_json::{json, Value};

/// Asserts a refusal and that `p` saw no new request because of it.
#[track_caller]
fn refused(p: &Provider, what: &str, call: impl FnOnce() -> Resp, status: u16, code: &str) -> Resp {
    let before = p.count();
    let r = call();
    assert_eq!(r.status, status, "{what}: expected {status} {code}, got {} {}", r.status, r.text());
    assert_refusal(&r, status, code);
    assert_eq!(p.count(), before, "{what}: the provider must see nothing");
    r
}

#[derive(serde::Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    sys: &'a str,
    env: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
    scope: &'a str,
}

/// An access token signed like the appliance's own (HS256, key derived from secrets.key).
fn craft_token(gw: &Gw, cred: &Cred, iat: i64, exp: i64) -> String {
    let key = derive_key(&gw.node.dir, "lgsp oauth access token v1");
    let claims =
        AccessClaims { iss: "lgsp", sub: &cred.id, sys: &cred.system, env: "production", jti: random_hex(12), iat, exp, scope: "" };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(&key))
        .expect("encode")
}

fn form_post(gw: &Gw, path: &str, basic: Option<(&str, &str)>, form: &str) -> Resp {
    let mut headers = vec![h("content-type", "application/x-www-form-urlencoded")];
    if let Some((k, s)) = basic {
        headers.push(h("authorization", &format!("Basic {}", STANDARD.encode(format!("{k}:{s}")))));
    }
    gw.send("POST", path, &headers, Some(form.as_bytes().to_vec()))
}

#[track_caller]
fn oauth_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], error, "{}", r.text());
    r.txn();
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
}

#[test]
fn refusal_matrix() {
    let gw = Gw::start();
    let p = Provider::start(200, "");
    gw.set_upstreams("dancu", "v1", &p.url(), &p.url());
    let cred = gw.credential("stp-hotich", "production", true);
    let tok = gw.token(&cred);
    let signer = cred.hmac_signer();
    let bearer = |t: &str| vec![h("authorization", &format!("Bearer {t}"))];
    // Sanity: the good paths work.
    assert_eq!(gw.bearer(&tok, "GET", "/dancu/v1/ok", None).status, 200);
    assert_eq!(gw.signed(&signer, "GET", "/dancu/v1/ok", None).status, 200);

    // --- No or unusable credentials: 401, whatever the path. ---
    refused(&p, "no credentials", || gw.send("GET", "/dancu/v1/x", &[], None), 401, "CREDENTIALS_REQUIRED");
    refused(&p, "no credentials, POST", || gw.send("POST", "/dancu/v1/x", &[], Some(b"{}".to_vec())), 401, "CREDENTIALS_REQUIRED");
    refused(&p, "unauthenticated unknown service", || gw.send("GET", "/nosuch/v1/x", &[], None), 401, "CREDENTIALS_REQUIRED");
    refused(&p, "unauthenticated root", || gw.send("GET", "/", &[], None), 401, "CREDENTIALS_REQUIRED");
    refused(&p, "garbage token, unknown service", || gw.send("GET", "/nosuch/x", &bearer("garbage"), None), 401, "INVALID_TOKEN");
    refused(&p, "garbage token", || gw.send("GET", "/dancu/v1/x", &bearer("not.a.jwt"), None), 401, "INVALID_TOKEN");
    refused(
        &p,
        "Basic instead of Bearer",
        || gw.send("GET", "/dancu/v1/x", &[h("authorization", &format!("Basic {}", STANDARD.encode("a:b")))], None),
        401,
        "UNSUPPORTED_AUTHORIZATION",
    );
    let mut tampered = tok.clone().into_bytes();
    let mid = tampered.len() - 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    refused(&p, "tampered token", || gw.send("GET", "/dancu/v1/x", &bearer(&tampered), None), 401, "INVALID_TOKEN");
    // A token with an edited payload (another credential's id) and the old signature.
    let parts: Vec<&str> = tok.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("claims");
    claims["exp"] = json!(claims["exp"].as_i64().unwrap_or(0) + 3600);
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    refused(&p, "forged claims", || gw.send("GET", "/dancu/v1/x", &bearer(&forged), None), 401, "INVALID_TOKEN");

    // Expired token, signed with the appliance's own key; the same recipe unexpired works.
    let good = craft_token(&gw, &cred, now() - 10, now() + 600);
    assert_eq!(gw.bearer(&good, "GET", "/dancu/v1/crafted", None).status, 200, "the crafted-token recipe matches the appliance's");
    let expired = craft_token(&gw, &cred, now() - 7200, now() - 60);
    refused(&p, "expired token", || gw.send("GET", "/dancu/v1/x", &bearer(&expired), None), 401, "INVALID_TOKEN");
    let just_expired = craft_token(&gw, &cred, now() - 3600, now() - 1);
    refused(&p, "token expired a second ago", || gw.send("GET", "/dancu/v1/x", &bearer(&just_expired), None), 401, "INVALID_TOKEN");

    // --- /token ---
    let r = gw.token_request(&cred.consumer_key, "wrong-secret");
    oauth_error(&r, 401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());
    oauth_error(&gw.token_request("no-such-key", "x"), 401, "invalid_client");
    oauth_error(
        &form_post(&gw, "/token", None, &format!("grant_type=client_credentials&client_id={}&client_secret=nope", cred.consumer_key)),
        401,
        "invalid_client",
    );
    oauth_error(&form_post(&gw, "/token", None, "grant_type=client_credentials"), 401, "invalid_client");
    oauth_error(
        &form_post(&gw, "/token", Some((&cred.consumer_key, &cred.consumer_secret)), "grant_type=password"),
        400,
        "unsupported_grant_type",
    );
    let r = form_post(
        &gw,
        "/token",
        None,
        &format!("grant_type=client_credentials&client_id={}&client_secret={}", cred.consumer_key, cred.consumer_secret),
    );
    assert_eq!(r.status, 200, "form client_secret works: {}", r.text());

    // --- Revocation (RFC 7009) ---
    let victim = gw.token(&cred);
    assert_eq!(gw.bearer(&victim, "GET", "/dancu/v1/pre-revoke", None).status, 200);
    // Another client cannot revoke it (answered 200, but nothing happens).
    let other = gw.credential("stp-hotich", "production", false);
    gw.token(&other);
    let r = form_post(&gw, "/revoke", Some((&other.consumer_key, &other.consumer_secret)), &format!("token={victim}"));
    assert_eq!(r.status, 200, "{}", r.text());
    gw.sync();
    assert_eq!(gw.bearer(&victim, "GET", "/dancu/v1/still-valid", None).status, 200, "a foreign client's revoke is ignored");
    let r = form_post(&gw, "/revoke", Some((&cred.consumer_key, "wrong")), &format!("token={victim}"));
    oauth_error(&r, 401, "invalid_client");
    let r = form_post(&gw, "/revoke", Some((&cred.consumer_key, &cred.consumer_secret)), &format!("token={victim}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.txn();
    gw.sync();
    refused(&p, "revoked token", || gw.send("GET", "/dancu/v1/x", &bearer(&victim), None), 401, "INVALID_TOKEN");
    assert_eq!(gw.bearer(&tok, "GET", "/dancu/v1/other-token", None).status, 200, "other tokens of the credential stay valid");

    // --- RFC 9421 signatures ---
    let fresh = SignParams::fresh();
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/replay", None, &fresh);
    assert_eq!(gw.send("GET", "/dancu/v1/replay", &headers, None).status, 200);
    refused(&p, "replayed nonce", || gw.send("GET", "/dancu/v1/replay", &headers, None), 401, "SIGNATURE_NONCE_REPLAYED");
    let stale = SignParams { created: now() - 400, ..SignParams::fresh() };
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/x", None, &stale);
    refused(&p, "created 400 s ago", || gw.send("GET", "/dancu/v1/x", &headers, None), 401, "SIGNATURE_CREATED_OUT_OF_WINDOW");
    let future = SignParams { created: now() + 400, ..SignParams::fresh() };
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/x", None, &future);
    refused(&p, "created 400 s ahead", || gw.send("GET", "/dancu/v1/x", &headers, None), 401, "SIGNATURE_CREATED_OUT_OF_WINDOW");
    let no_nonce = SignParams { nonce: None, ..SignParams::fresh() };
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/x", None, &no_nonce);
    refused(&p, "no nonce", || gw.send("GET", "/dancu/v1/x", &headers, None), 401, "SIGNATURE_NONCE_REQUIRED");
    // Tampered path, query, method, covered header.
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &SignParams::fresh());
    refused(&p, "tampered path", || gw.send("GET", "/dancu/v1/b", &headers, None), 401, "SIGNATURE_INVALID");
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a?id=1", None, &SignParams::fresh());
    refused(&p, "tampered query", || gw.send("GET", "/dancu/v1/a?id=2", &headers, None), 401, "SIGNATURE_INVALID");
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &SignParams::fresh());
    refused(&p, "tampered method", || gw.send("DELETE", "/dancu/v1/a", &headers, None), 401, "SIGNATURE_INVALID");
    let with_header = SignParams {
        components: Some(vec!["@method".into(), "@target-uri".into(), "x-purpose".into()]),
        extra: vec![h("x-purpose", "tra-cuu")],
        ..SignParams::fresh()
    };
    let mut headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &with_header);
    assert_eq!(gw.send("GET", "/dancu/v1/a", &headers, None).status, 200, "a covered extra header, untouched");
    let with_header = SignParams { nonce: Some(random_hex(12)), ..with_header };
    headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &with_header);
    for (k, v) in headers.iter_mut() {
        if k == "x-purpose" {
            *v = "xoa-du-lieu".into();
        }
    }
    refused(&p, "tampered covered header", || gw.send("GET", "/dancu/v1/a", &headers, None), 401, "SIGNATURE_INVALID");
    // Coverage policy.
    let thin = SignParams { components: Some(vec!["@target-uri".into()]), ..SignParams::fresh() };
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &thin);
    refused(&p, "@method not covered", || gw.send("GET", "/dancu/v1/a", &headers, None), 401, "SIGNATURE_COMPONENTS_INSUFFICIENT");
    let no_digest = SignParams { components: Some(vec!["@method".into(), "@target-uri".into()]), ..SignParams::fresh() };
    let body = b"{\"id\":1}".to_vec();
    let headers = sign_request(&gw.authority, &signer, "POST", "/dancu/v1/a", Some(&body), &no_digest);
    refused(
        &p,
        "body without covered content-digest",
        || gw.send("POST", "/dancu/v1/a", &headers, Some(body.clone())),
        401,
        "SIGNATURE_COMPONENTS_INSUFFICIENT",
    );
    // Unknown key, half a signature.
    let stranger = Signer { key: SignerKey::Hmac(vec![7; 32]), key_id: "no-such-key".into() };
    let headers = sign_request(&gw.authority, &stranger, "GET", "/dancu/v1/a", None, &SignParams::fresh());
    refused(&p, "unknown keyid", || gw.send("GET", "/dancu/v1/a", &headers, None), 401, "SIGNATURE_UNKNOWN_KEY");
    let wrong_secret = Signer { key: SignerKey::Hmac(vec![7; 32]), key_id: signer.key_id.clone() };
    let headers = sign_request(&gw.authority, &wrong_secret, "GET", "/dancu/v1/a", None, &SignParams::fresh());
    refused(&p, "wrong HMAC secret", || gw.send("GET", "/dancu/v1/a", &headers, None), 401, "SIGNATURE_INVALID");
    let headers = sign_request(&gw.authority, &signer, "GET", "/dancu/v1/a", None, &SignParams::fresh());
    let only_input: Vec<_> = headers.iter().filter(|(k, _)| k == "signature-input").cloned().collect();
    refused(&p, "Signature-Input without Signature", || gw.send("GET", "/dancu/v1/a", &only_input, None), 401, "SIGNATURE_MALFORMED");

    // Tampered body: the signature (over content-digest) holds, the body does not match it.
    // The body streams, so the provider may see the request start, but never the whole body.
    let signed_body = b"{\"cccd\":\"001099012345\",\"purpose\":\"ho-tich\"}".to_vec();
    let evil_body = b"{\"cccd\":\"001099099999\",\"purpose\":\"ho-tich\"}".to_vec();
    assert_eq!(signed_body.len(), evil_body.len());
    let headers = sign_request(&gw.authority, &signer, "POST", "/dancu/v1/body", Some(&signed_body), &SignParams::fresh());
    let r = gw.send("POST", "/dancu/v1/body", &headers, Some(evil_body.clone()));
    assert_refusal(&r, 400, "CONTENT_DIGEST_MISMATCH");
    let longer = b"{\"cccd\":\"001099012345\",\"purpose\":\"ho-tich\",\"x\":1}".to_vec();
    let headers = sign_request(&gw.authority, &signer, "POST", "/dancu/v1/body", Some(&signed_body), &SignParams::fresh());
    let r = gw.send("POST", "/dancu/v1/body", &headers, Some(longer.clone()));
    assert_refusal(&r, 400, "CONTENT_DIGEST_MISMATCH");
    for s in p.all() {
        assert!(
            !(s.complete && (s.body == evil_body || s.body == longer)),
            "the provider received a complete tampered body: {:?}",
            String::from_utf8_lossy(&s.body)
        );
    }
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["outcome"], "CONTENT_DIGEST_MISMATCH", "{rec}");
    // The content-digest header itself edited: the signature no longer verifies.
    let mut headers = sign_request(&gw.authority, &signer, "POST", "/dancu/v1/body", Some(&signed_body), &SignParams::fresh());
    for (k, v) in headers.iter_mut() {
        if k == "content-digest" {
            *v = lgsp::gateway::digest::content_digest_sha256(&evil_body);
        }
    }
    refused(&p, "edited content-digest", || gw.send("POST", "/dancu/v1/body", &headers, Some(evil_body.clone())), 401, "SIGNATURE_INVALID");
    // The untampered signed body goes through whole.
    let r = gw.signed(&signer, "POST", "/dancu/v1/body", Some(signed_body.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.last().expect("seen").body, signed_body);

    // --- Authorisation ---
    // The test credential of a system subscribed in production only.
    let test_cred = gw.credential("stp-hotich", "test", true);
    let test_tok = gw.token(&test_cred);
    refused(
        &p,
        "test credential, production-only subscription",
        || gw.bearer(&test_tok, "GET", "/dancu/v1/x", None),
        403,
        "SUBSCRIPTION_REQUIRED",
    );
    refused(
        &p,
        "test credential signing, production-only subscription",
        || gw.signed(&test_cred.hmac_signer(), "GET", "/dancu/v1/x", None),
        403,
        "SUBSCRIPTION_REQUIRED",
    );
    // A system without any subscription.
    gw.system("stp-nosub", CONSUMER_AGENCY);
    let nosub = gw.credential("stp-nosub", "production", false);
    let nosub_tok = gw.token(&nosub);
    refused(&p, "no subscription", || gw.bearer(&nosub_tok, "GET", "/dancu/v1/x", None), 403, "SUBSCRIPTION_REQUIRED");
    refused(&p, "no subscription, default version", || gw.bearer(&nosub_tok, "GET", "/dancu/x", None), 403, "SUBSCRIPTION_REQUIRED");
    // A revoked subscription.
    gw.system("stp-revsub", CONSUMER_AGENCY);
    let sub = gw.subscribe("stp-revsub", "dancu", "v1", "production");
    let revsub = gw.credential("stp-revsub", "production", false);
    let revsub_tok = gw.token(&revsub);
    gw.sync();
    assert_eq!(gw.bearer(&revsub_tok, "GET", "/dancu/v1/x", None).status, 200);
    let (s, b) = gw.op.post(&format!("/api/v1/subscriptions/{sub}/revoke"), json!({"reason": "hết nhu cầu"}));
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "revoked subscription", || gw.bearer(&revsub_tok, "GET", "/dancu/v1/x", None), 403, "SUBSCRIPTION_REQUIRED");
    // Unknown service or version, only after authentication.
    refused(&p, "unknown service", || gw.bearer(&tok, "GET", "/nosuch/v1/x", None), 404, "NO_SUCH_SERVICE");
    refused(&p, "unknown service, signed", || gw.signed(&signer, "GET", "/nosuch/x", None), 404, "NO_SUCH_SERVICE");
    refused(&p, "unknown version", || gw.bearer(&tok, "GET", "/dancu/v7/x", None), 404, "NO_SUCH_VERSION");
    // Methods the provider does not allow.
    let (s, b) = gw.op.patch(
        "/api/v1/services/dancu",
        json!({"context": "dancu", "provider_system": "hp-dancu", "name": "Tra cứu dân cư", "methods": ["GET", "POST"]}),
    );
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "method not allowed", || gw.bearer(&tok, "DELETE", "/dancu/v1/x", None), 403, "METHOD_NOT_ALLOWED");
    assert_eq!(gw.bearer(&tok, "GET", "/dancu/v1/x", None).status, 200);

    // A revoked credential: its tokens, its HMAC key and its secret all stop working.
    let doomed = gw.credential("stp-hotich", "production", true);
    let doomed_tok = gw.token(&doomed);
    gw.sync();
    assert_eq!(gw.bearer(&doomed_tok, "GET", "/dancu/v1/x", None).status, 200);
    assert_eq!(gw.signed(&doomed.hmac_signer(), "GET", "/dancu/v1/x", None).status, 200);
    let (s, b) = gw.op.post(&format!("/api/v1/credentials/{}/revoke", doomed.id), json!({"reason": "lộ khóa"}));
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "token of a revoked credential", || gw.bearer(&doomed_tok, "GET", "/dancu/v1/x", None), 401, "INVALID_TOKEN");
    refused(
        &p,
        "HMAC key of a revoked credential",
        || gw.signed(&doomed.hmac_signer(), "GET", "/dancu/v1/x", None),
        401,
        "SIGNATURE_UNKNOWN_KEY",
    );
    oauth_error(&gw.token_request(&doomed.consumer_key, &doomed.consumer_secret), 401, "invalid_client");

    // A suspended consumer agency: every path refused with 403, tokens included.
    let (s, b) = gw.op.post(&format!("/api/v1/agencies/{CONSUMER_AGENCY}/suspend"), json!({"reason": "kiểm tra an toàn thông tin"}));
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "suspended consumer, bearer", || gw.bearer(&tok, "GET", "/dancu/v1/x", None), 403, "CONSUMER_SUSPENDED");
    refused(&p, "suspended consumer, signature", || gw.signed(&signer, "GET", "/dancu/v1/x", None), 403, "CONSUMER_SUSPENDED");
    refused(&p, "suspended consumer, catalog", || gw.bearer(&tok, "GET", "/dmdc/Category/x", None), 403, "CONSUMER_SUSPENDED");
    refused(&p, "suspended consumer, /token", || gw.token_request(&cred.consumer_key, &cred.consumer_secret), 403, "CONSUMER_SUSPENDED");
    let (s, b) = gw.op.post(&format!("/api/v1/agencies/{CONSUMER_AGENCY}/reinstate"), json!({"reason": "đã khắc phục"}));
    assert_eq!(s, 200, "{b}");
    gw.sync();
    assert_eq!(gw.bearer(&tok, "GET", "/dancu/v1/x", None).status, 200, "reinstated");

    // A suspended provider agency: its services are unavailable (503).
    let (s, b) = gw.op.post(&format!("/api/v1/agencies/{PROVIDER_AGENCY}/suspend"), json!({"reason": "bảo trì"}));
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "suspended provider", || gw.bearer(&tok, "GET", "/dancu/v1/x", None), 503, "SERVICE_SUSPENDED");
    let (s, b) = gw.op.post(&format!("/api/v1/agencies/{PROVIDER_AGENCY}/reinstate"), json!({"reason": "xong"}));
    assert_eq!(s, 200, "{b}");

    // A retired version: 404 VERSION_RETIRED.
    let (s, b) = gw.op.post(
        "/api/v1/services/dancu/versions/v1/retire",
        json!({"reason": "thay bằng phiên bản mới", "override_reason": "kiểm thử ngừng cung cấp"}),
    );
    assert_eq!(s, 200, "{b}");
    gw.sync();
    refused(&p, "retired version", || gw.bearer(&tok, "GET", "/dancu/v1/x", None), 404, "VERSION_RETIRED");
    refused(&p, "retired version, signed", || gw.signed(&signer, "GET", "/dancu/v1/x", None), 404, "VERSION_RETIRED");
    refused(&p, "retired version, unauthenticated", || gw.send("GET", "/dancu/v1/x", &[], None), 401, "CREDENTIALS_REQUIRED");
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa key")
}

#[derive(serde::Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

fn assertion(pem: &str, kid: Option<&str>, claims: &Assertion<'_>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa pem"))
        .expect("sign assertion")
}

fn assertion_form(a: &str) -> String {
    format!("grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}")
}

#[test]
fn five_signature_algorithms_and_private_key_jwt() {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};

    let gw = Gw::start();
    let p = Provider::start(200, "");
    gw.set_upstreams("dancu", "v1", &p.url(), &p.url());
    let cred = gw.credential("stp-hotich", "production", true);

    let rsa_priv = rsa_key();
    let rsa_pub_pem = rsa_priv.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem");
    let rsa_priv_pem = rsa_priv.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let ec = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let ec_pem = ec.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem");
    let ed = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let ed_pem = ed.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem");
    let (s, b) = gw.op.put(
        &format!("/api/v1/credentials/{}/public-keys", cred.id),
        json!({"public_keys": [
            {"key_id": "stp-pss", "alg": "rsa-pss-sha512", "pem": rsa_pub_pem},
            {"key_id": "stp-v15", "alg": "rsa-v1_5-sha256", "pem": rsa_pub_pem},
            {"key_id": "stp-p256", "alg": "ecdsa-p256-sha256", "pem": ec_pem},
            {"key_id": "stp-ed", "alg": "ed25519", "pem": ed_pem},
        ]}),
    );
    assert_eq!(s, 200, "{b}");
    gw.sync();

    let signers = [
        ("hmac-sha256", cred.hmac_signer()),
        ("rsa-pss-sha512", Signer { key: SignerKey::RsaPss(Box::new(rsa_priv.clone())), key_id: "stp-pss".into() }),
        ("rsa-v1_5-sha256", Signer { key: SignerKey::RsaV15(Box::new(rsa_priv.clone())), key_id: "stp-v15".into() }),
        ("ecdsa-p256-sha256", Signer { key: SignerKey::EcdsaP256(ec.clone()), key_id: "stp-p256".into() }),
        ("ed25519", Signer { key: SignerKey::Ed25519(ed.clone()), key_id: "stp-ed".into() }),
    ];
    for (alg, signer) in &signers {
        let r = gw.signed(signer, "GET", &format!("/dancu/v1/{alg}?q=1"), None);
        assert_eq!(r.status, 200, "{alg} GET: {}", r.text());
        let seen = p.last().expect("seen");
        assert_eq!(seen.path, format!("/{alg}"));
        for gone in ["signature", "signature-input", "authorization"] {
            assert!(!seen.headers.iter().any(|(n, _)| n == gone), "{alg}: {gone} reached the provider");
        }
        let rec = gw.audit(&r.txn());
        assert_eq!(rec["auth_method"], format!("httpsig-{alg}"), "{rec}");
        assert_eq!(rec["consumer_system"], "stp-hotich");

        let body = format!("{{\"alg\":\"{alg}\",\"data\":\"{}\"}}", random_hex(100)).into_bytes();
        let r = gw.signed(signer, "POST", &format!("/dancu/v1/{alg}"), Some(body.clone()));
        assert_eq!(r.status, 200, "{alg} POST: {}", r.text());
        let seen = p.last().expect("seen");
        assert!(seen.complete);
        assert_eq!(seen.body, body, "{alg}: body intact");
    }
    // A registered keyid signed with another private key of the same algorithm.
    let impostor = Signer { key: SignerKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)), key_id: "stp-ed".into() };
    let before = p.count();
    let r = gw.signed(&impostor, "GET", "/dancu/v1/x", None);
    assert_refusal(&r, 401, "SIGNATURE_INVALID");
    // A keyid used with a key of another algorithm.
    let mismatched = Signer { key: SignerKey::Ed25519(ed.clone()), key_id: "stp-p256".into() };
    let r = gw.signed(&mismatched, "GET", "/dancu/v1/x", None);
    assert_refusal(&r, 401, "SIGNATURE_ALGORITHM_MISMATCH");
    assert_eq!(p.count(), before);

    // private_key_jwt (RFC 7523): an RS256 assertion signed with the registered RSA key.
    let aud = format!("{}/token", gw.url);
    let claims = |jti: &str| Assertion {
        iss: &cred.consumer_key,
        sub: &cred.consumer_key,
        aud: &aud,
        exp: now() + 120,
        iat: now(),
        jti: jti.into(),
    };
    let a = assertion(&rsa_priv_pem, None, &claims(&random_hex(16)));
    let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(assertion_form(&a).into_bytes()));
    assert_eq!(r.status, 200, "private_key_jwt: {}", r.text());
    let tok = r.json()["access_token"].as_str().expect("token").to_owned();
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["auth_method"], "private_key_jwt", "{rec}");
    let r = gw.bearer(&tok, "GET", "/dancu/v1/jwt", None);
    assert_eq!(r.status, 200, "{}", r.text());
    // With a kid naming the key.
    let a2 = assertion(&rsa_priv_pem, Some("stp-v15"), &claims(&random_hex(16)));
    let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(assertion_form(&a2).into_bytes()));
    assert_eq!(r.status, 200, "private_key_jwt with kid: {}", r.text());
    // Replayed jti.
    let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(assertion_form(&a).into_bytes()));
    assert!(r.status == 400 || r.status == 401, "replayed assertion: {} {}", r.status, r.text());
    assert_eq!(r.json()["error"], "invalid_client", "{}", r.text());
    r.txn();
    // Bad assertions.
    let other_rsa = rsa_key().to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let bad: Vec<(&str, String)> = vec![
        ("signed by an unregistered key", assertion(&other_rsa, None, &claims(&random_hex(16)))),
        ("wrong audience", {
            let mut c = claims(&random_hex(16));
            c.aud = "https://elsewhere.example/oauth";
            assertion(&rsa_priv_pem, None, &c)
        }),
        ("expired", {
            let mut c = claims(&random_hex(16));
            c.exp = now() - 120;
            assertion(&rsa_priv_pem, None, &c)
        }),
        ("lives too long", {
            let mut c = claims(&random_hex(16));
            c.exp = now() + 86_400;
            assertion(&rsa_priv_pem, None, &c)
        }),
        ("sub differs from iss", {
            let mut c = claims(&random_hex(16));
            c.sub = "someone-else";
            assertion(&rsa_priv_pem, None, &c)
        }),
        ("kid of a non-RSA key", assertion(&rsa_priv_pem, Some("stp-ed"), &claims(&random_hex(16)))),
    ];
    for (what, a) in bad {
        let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(assertion_form(&a).into_bytes()));
        assert!(r.status == 400 || r.status == 401, "{what}: {} {}", r.status, r.text());
        assert_eq!(r.json()["error"], "invalid_client", "{what}: {}", r.text());
    }
    // An HS256 assertion (e.g. signed with the consumer secret) is refused.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(&random_hex(16)),
        &jsonwebtoken::EncodingKey::from_secret(cred.consumer_secret.as_bytes()),
    )
    .expect("hs256");
    let r = gw.send("POST", "/token", &[h("content-type", "application/x-www-form-urlencoded")], Some(assertion_form(&hs).into_bytes()));
    assert!(r.status == 400 || r.status == 401, "HS256 assertion: {} {}", r.status, r.text());
    assert_eq!(r.json()["error"], "invalid_client");
}

/// RFC 7009: once `/revoke` has answered 200, the token must no longer be accepted, also on
/// the very next request (not only after the gateway's registry view has caught up).
#[test]
fn revoked_token_is_refused_on_the_very_next_call() {
    let gw = Gw::start();
    let p = Provider::start(200, "");
    gw.set_upstreams("dancu", "v1", &p.url(), &p.url());
    // A registry of realistic size (a DVHC-like catalog of some thousands of entries), so that
    // rebuilding the gateway's view after a change takes a few milliseconds, as in production.
    let (s, b) = gw.op.post("/api/v1/catalogs", json!({"code": "dvhc-test", "name": "Đơn vị hành chính", "owner_agency": PROVIDER_AGENCY}));
    assert_eq!(s, 201, "{b}");
    let entries: Vec<Value> =
        (0..20_000).map(|i| json!({"code": format!("{i:05}"), "name": format!("Phường {i}"), "parent": "31"})).collect();
    let (s, b) = gw.op.post(
        "/api/v1/catalogs/dvhc-test/versions",
        json!({"fields": [{"name": "code"}, {"name": "name"}, {"name": "parent"}], "entries": entries}),
    );
    assert_eq!(s, 201, "{}", b.to_string().chars().take(500).collect::<String>());
    let cred = gw.credential("stp-hotich", "production", false);
    gw.token(&cred);
    let mut accepted_after_revoke = 0;
    for _ in 0..50 {
        let t = gw.token(&cred);
        assert_eq!(gw.bearer(&t, "GET", "/dancu/v1/before", None).status, 200);
        let r = form_post(
            &gw,
            "/revoke",
            Some((&cred.consumer_key, &cred.consumer_secret)),
            &format!("token={t}&token_type_hint=access_token"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = gw.bearer(&t, "GET", "/dancu/v1/after", None);
        if r.status == 200 {
            accepted_after_revoke += 1;
        } else {
            assert_refusal(&r, 401, "INVALID_TOKEN");
        }
    }
    assert_eq!(accepted_after_revoke, 0, "a token was accepted after /revoke had answered 200 ({accepted_after_revoke} of 50 tries)");
}
