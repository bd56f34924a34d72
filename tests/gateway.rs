//! The gateway's proxy behaviour against real providers on loopback (SPEC §3, §4, §7): routing,
//! environments, what the provider sees, byte-for-byte answers, timeouts, unreachable
//! providers and retries, body limits, HTTP/2, rate limits, upstream authentication, shared
//! catalogs, metrics, and the transaction audit (search, verify, tamper detection).
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::upstream::Upstream;
use gateway_support::*;
use serde_json::{json, Value};

/// One HTTP/1.1 request written by hand (so that the path reaches the gateway exactly as
/// written; clients normalise dot-segments away). Returns (status, headers, body).
fn raw_http(authority: &str, head: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(authority).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    (status, headers, out[split + 4..].to_vec())
}

fn count_header(headers: &[(String, String)], name: &str) -> usize {
    headers.iter().filter(|(n, _)| n == name).count()
}

#[test]
fn routing_environments_headers_and_byte_for_byte_answers() {
    let gw = Gw::start();
    let prod = Upstream::start();
    let test_up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", prod.url()), &format!("{}/test", test_up.url()));
    let cred = gw.credential("stp-hotich", "production", true);
    let tok = gw.token(&cred);
    let mut txns = HashSet::new();

    // /{context}/{version}/... with spoofed identity headers and stray consumer credentials.
    let spoof = [
        h("authorization", &format!("Bearer {tok}")),
        h("x-consumer-agency", "999.99.99.H99"),
        h("x-consumer-system", "evil-system"),
        h("x-transaction-id", "spoofed-txn"),
        h("forwarded", "for=\"6.6.6.6\";proto=https;host=\"evil.example\""),
        h("signature-input", "sig1=(\"@method\");created=1;keyid=\"nope\""),
        h("signature", "sig1=:AAAA:"),
        h("x-custom-thing", "keep-me; as=is"),
    ];
    let r = gw.send("GET", "/dancu/v1/citizens/001?id=42&name=a%20b", &spoof, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let txn = r.txn();
    assert!(txns.insert(txn.clone()));
    let echo = r.json();
    assert_eq!(echo["path"], "/api/citizens/001", "{echo}");
    assert_eq!(echo["query"], "id=42&name=a%20b", "query passed on untouched: {echo}");
    assert_eq!(echo["method"], "GET");
    let seen = prod.last().expect("provider saw the call");
    for gone in ["authorization", "signature", "signature-input"] {
        assert_eq!(seen.header(gone), None, "{gone} must not reach the provider: {:?}", seen.headers);
    }
    for (name, want) in [
        ("x-transaction-id", txn.as_str()),
        ("x-consumer-agency", CONSUMER_AGENCY),
        ("x-consumer-system", "stp-hotich"),
        ("forwarded", &format!("for=\"127.0.0.1\";proto=http;host=\"{}\"", gw.authority)),
    ] {
        assert_eq!(count_header(&seen.headers, name), 1, "exactly one {name}: {:?}", seen.headers);
        assert_eq!(seen.header(name), Some(want), "{name} as the provider saw it: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-custom-thing"), Some("keep-me; as=is"), "other headers pass: {:?}", seen.headers);
    assert_eq!(test_up.count(), 0, "a production credential never reaches the test upstream");

    // A signed request: the signature headers are removed as well.
    let r = gw.signed(&cred.hmac_signer(), "POST", "/dancu/v1/signed", Some(b"{\"a\":1}".to_vec()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(txns.insert(r.txn()));
    let seen = prod.last().expect("seen");
    for gone in ["authorization", "signature", "signature-input"] {
        assert_eq!(seen.header(gone), None, "{gone} must not reach the provider: {:?}", seen.headers);
    }
    assert!(seen.header("content-digest").is_some(), "content-digest is end to end and passes: {:?}", seen.headers);

    // /dancu/v9/... names a version that does not exist.
    let before = prod.count();
    let r = gw.bearer(&tok, "GET", "/dancu/v9/x", None);
    assert_refusal(&r, 404, "NO_SUCH_VERSION");
    assert!(txns.insert(r.txn()));
    assert_eq!(prod.count(), before);

    // Default version: the newest published one. v2 goes to a provider of our own (headers, bytes).
    let rich = Provider::start(202, "resp-marker");
    let (s, b) = gw.op.post(
        "/api/v1/services/dancu/versions",
        json!({"version": "v2", "upstream": {"production": format!("{}/p2", rich.url()), "test": format!("{}/t2", rich.url())}}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = gw.op.post("/api/v1/services/dancu/versions/v2/publish", json!({}));
    assert_eq!(s, 200, "{b}");
    gw.subscribe("stp-hotich", "dancu", "v2", "production");
    gw.sync();
    let r = gw.send("GET", "/dancu/records/7?q=1", &[h("authorization", &format!("Bearer {tok}")), h("x-echo", "giữ nguyên")], None);
    assert_eq!(r.status, 202, "the provider's status passes: {}", r.text());
    assert!(txns.insert(r.txn()));
    let seen = rich.last().expect("v2 provider saw the default-version call");
    assert_eq!(seen.path, "/p2/records/7", "default version is v2");
    assert_eq!(r.body, "|resp-marker|q=1|giữ nguyên".as_bytes().to_vec(), "body byte for byte (a UTF-8 header passed on as sent)");
    for (name, _) in PROVIDER_HEADERS {
        let want: Vec<&str> = PROVIDER_HEADERS.iter().filter(|(n, _)| n == name).map(|(_, v)| *v).collect();
        let got: Vec<String> = r.headers.get_all(*name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        assert_eq!(got, want, "provider header {name} passed back unchanged (values and order)");
    }
    assert_eq!(r.header("content-length").as_deref(), Some(r.body.len().to_string().as_str()));
    // Explicit v1 still goes to v1.
    let r = gw.bearer(&tok, "GET", "/dancu/v1/still-v1", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/still-v1");
    // Binary answer, every byte value.
    let r = gw.bearer(&tok, "GET", "/dancu/v2/binary", None);
    assert_eq!(r.status, 202);
    assert_eq!(r.body, (0..=255u8).cycle().take(4096).collect::<Vec<u8>>(), "binary body byte for byte");

    // The provider's error statuses are its answer, passed back as they are (not an envelope).
    let r = gw.bearer(&tok, "GET", "/dancu/v1/status/418", None);
    assert_eq!(r.status, 418);
    assert_eq!(r.body, b"{\"upstream\":\"status\"}".to_vec());
    assert!(txns.insert(r.txn()));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/status/302", None);
    assert_eq!(r.status, 302, "redirects are passed back, not followed");

    // Large answer: 5 MiB streamed back whole.
    let n = 5 * 1024 * 1024;
    let r = gw.bearer(&tok, "GET", &format!("/dancu/v1/bytes?n={n}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n, "5 MiB answer length");
    assert!(r.body.iter().all(|b| *b == b'x'), "5 MiB answer content");
    assert_eq!(r.header("content-length"), Some(n.to_string()));
    assert!(txns.insert(r.txn()));

    // Large request: 5 MiB of random bytes arrive intact.
    let big: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    let r = gw.bearer(&tok, "POST", "/dancu/v1/upload", Some(big.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_len"], n, "{echo}");
    assert_eq!(echo["body_sha256"], sha256_hex(&big), "the provider received the same bytes");
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["request_bytes"], n);
    assert_eq!(rec["request_sha256"], sha256_hex(&big));

    // The test environment: a test credential calls the version's test upstream.
    gw.subscribe("stp-hotich", "dancu", "v1", "test");
    let tcred = gw.credential("stp-hotich", "test", false);
    let ttok = gw.token(&tcred);
    let prod_before = prod.count();
    let r = gw.bearer(&ttok, "GET", "/dancu/v1/env-check", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/test/env-check", "the test credential reaches the test upstream");
    assert_eq!(test_up.last().expect("test upstream").path, "/test/env-check");
    assert_eq!(prod.count(), prod_before, "never the production one");
    // ... and has no subscription to v2 in test.
    let r = gw.bearer(&ttok, "GET", "/dancu/v2/x", None);
    assert_refusal(&r, 403, "SUBSCRIPTION_REQUIRED");

    // Every answer, the gateway's own included, carries a transaction id, all distinct.
    let r = gw.token_request(&cred.consumer_key, "wrong");
    assert_eq!(r.status, 401);
    assert!(txns.insert(r.txn()));
    let r = gw.send("GET", "/token", &[], None);
    assert_refusal(&r, 405, "METHOD_NOT_ALLOWED");
    assert!(txns.insert(r.txn()));
    let r = gw.send("GET", "/", &[], None);
    assert_refusal(&r, 401, "CREDENTIALS_REQUIRED");
    assert!(txns.insert(r.txn()));
    let r = gw.token_request(&cred.consumer_key, &cred.consumer_secret);
    assert_eq!(r.status, 200);
    assert!(txns.insert(r.txn()));
}

#[test]
fn timeouts_unreachable_providers_and_retries() {
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    gw.patch_version("dancu", "v1", json!({"timeout_ms": 300}));
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);

    // The provider answers too late: 504, and the slow call is not repeated.
    let before = up.count();
    let t = Instant::now();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/slow?ms=3000", None);
    assert_refusal(&r, 504, "UPSTREAM_TIMEOUT");
    assert!(t.elapsed() < Duration::from_millis(2500), "answered at the timeout, not after the provider: {:?}", t.elapsed());
    assert_eq!(up.count(), before + 1, "a timed-out call is not retried");
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["status"], 504);
    assert_eq!(rec["outcome"], "UPSTREAM_TIMEOUT");

    // A 5xx from the provider is its answer: passed back, not retried.
    let before = up.count();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/status/503", None);
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"{\"upstream\":\"status\"}".to_vec());
    assert_eq!(up.count(), before + 1, "a provider's 503 is not retried");

    // A provider that accepts the connection and drops it: 502, and nothing is sent twice
    // (the request may have been processed), neither GET nor POST.
    let dropper = Dropper::start();
    gw.set_upstreams("dancu", "v1", &dropper.url(), &dropper.url());
    let r = gw.bearer(&tok, "GET", "/dancu/v1/drop", None);
    assert_refusal(&r, 502, "UPSTREAM_UNREACHABLE");
    assert_eq!(dropper.count(), 1, "GET whose connection dropped after sending is not retried");
    let r = gw.bearer(&tok, "POST", "/dancu/v1/drop", Some(b"{\"x\":1}".to_vec()));
    assert_refusal(&r, 502, "UPSTREAM_UNREACHABLE");
    assert_eq!(dropper.count(), 2, "POST is never retried");

    // Nobody listening (connection refused): 502. An idempotent call without a body is
    // retried once after a 50 ms pause; a POST is not (the audit shows the time spent).
    let gone = Upstream::start();
    let gone_url = gone.url();
    drop(gone);
    gw.set_upstreams("dancu", "v1", &gone_url, &gone_url);
    for _ in 0..2 {
        let r = gw.bearer(&tok, "GET", "/dancu/v1/unreachable", None);
        assert_refusal(&r, 502, "UPSTREAM_UNREACHABLE");
        let rec = gw.audit(&r.txn());
        assert_eq!(rec["outcome"], "UPSTREAM_UNREACHABLE");
        assert!(rec["gateway_us"].as_u64().is_some_and(|us| us >= 50_000), "GET to a refused port is retried once after 50 ms: {rec}");
    }
    let mut fastest = u64::MAX;
    for _ in 0..3 {
        let r = gw.bearer(&tok, "POST", "/dancu/v1/unreachable", Some(b"{}".to_vec()));
        assert_refusal(&r, 502, "UPSTREAM_UNREACHABLE");
        let rec = gw.audit(&r.txn());
        fastest = fastest.min(rec["gateway_us"].as_u64().unwrap_or(u64::MAX));
    }
    assert!(fastest < 50_000, "a POST to a refused port is not retried (no 50 ms back-off): fastest {fastest} us");
}

#[test]
fn body_limits_by_length_and_while_streaming() {
    let gw = Gw::start();
    let p = Provider::start(200, "");
    gw.set_upstreams("dancu", "v1", &p.url(), &p.url());
    gw.patch_version("dancu", "v1", json!({"max_body_bytes": 1000}));
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);
    let auth = [h("authorization", &format!("Bearer {tok}"))];

    let at_limit = vec![b'a'; 1000];
    let r = gw.send("POST", "/dancu/v1/in", &auth, Some(at_limit.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.last().expect("seen").body, at_limit);

    // Content-Length above the limit: refused before the provider is called.
    let before = p.count();
    let r = gw.send("POST", "/dancu/v1/over", &auth, Some(vec![b'b'; 1001]));
    assert_refusal(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(p.count(), before, "the provider saw nothing");
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["status"], 413);
    assert_eq!(rec["outcome"], "PAYLOAD_TOO_LARGE");

    // Chunked (no Content-Length) under the limit passes whole.
    let small: Vec<u8> = (0..900).map(|i| (i % 251) as u8).collect();
    let r = gw.send_chunked("POST", "/dancu/v1/chunked-ok", &auth, small.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = p.last().expect("seen");
    assert!(seen.complete);
    assert_eq!(seen.body, small);

    // Chunked above the limit: cut off while streaming; the provider never gets it whole.
    let big: Vec<u8> = vec![b'c'; 5000];
    let r = gw.send_chunked("POST", "/dancu/v1/chunked-over", &auth, big.clone());
    assert_refusal(&r, 413, "PAYLOAD_TOO_LARGE");
    assert!(
        !p.all().iter().any(|s| s.path.ends_with("/chunked-over") && s.complete && s.body.len() == big.len()),
        "the provider must not receive a complete over-limit body"
    );
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["status"], 413);
    assert_eq!(rec["outcome"], "PAYLOAD_TOO_LARGE");
}

#[test]
fn http2_prior_knowledge_on_the_plain_dev_gateway() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    let cred = gw.credential("stp-hotich", "production", true);
    let tok = gw.token(&cred);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let call = |method: &str, path: &str, headers: Vec<(String, String)>, body: Vec<u8>| {
        let mut b = http::Request::builder().method(method).uri(format!("{}{path}", gw.url));
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(bytes::Bytes::from(body))).expect("request");
        rt.block_on(async {
            let resp = client.request(req).await.expect("h2c prior-knowledge request to the dev gateway");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("body").to_bytes().to_vec();
            (parts, body)
        })
    };

    let (parts, body) = call("GET", "/dancu/v1/h2?x=1", vec![h("authorization", &format!("Bearer {tok}"))], vec![]);
    assert_eq!(parts.version, http::Version::HTTP_2, "served over HTTP/2");
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let txn = parts.headers.get("x-transaction-id").expect("X-Transaction-Id over h2").to_str().expect("ascii").to_owned();
    let echo: Value = serde_json::from_slice(&body).expect("echo json");
    assert_eq!(echo["path"], "/h2");
    assert_eq!(echo["query"], "x=1");
    let seen = up.last().expect("seen");
    assert_eq!(seen.header("x-transaction-id"), Some(txn.as_str()));
    assert_eq!(seen.header("authorization"), None);

    // A refusal over h2 is the same envelope.
    let (parts, body) = call("GET", "/dancu/v1/h2", vec![], vec![]);
    assert_eq!(parts.status, 401);
    let v: Value = serde_json::from_slice(&body).expect("envelope");
    assert_eq!(v["code"], "CREDENTIALS_REQUIRED");
    assert_eq!(v["transactionId"].as_str(), parts.headers.get("x-transaction-id").and_then(|v| v.to_str().ok()));

    // RFC 9421 over h2: the authority is the :authority pseudo-header.
    let payload = b"{\"h2\":true}".to_vec();
    let headers = sign_request(&gw.authority, &cred.hmac_signer(), "POST", "/dancu/v1/h2-signed", Some(&payload), &SignParams::fresh());
    let (parts, body) = call("POST", "/dancu/v1/h2-signed", headers, payload.clone());
    assert_eq!(parts.status, 200, "signed POST over h2: {}", String::from_utf8_lossy(&body));
    let echo: Value = serde_json::from_slice(&body).expect("echo json");
    assert_eq!(echo["body_sha256"], sha256_hex(&payload));

    // Forwarded carries the host the consumer addressed; over HTTP/2 that is :authority.
    let seen = up.last().expect("seen");
    assert_eq!(
        seen.header("forwarded"),
        Some(format!("for=\"127.0.0.1\";proto=http;host=\"{}\"", gw.authority).as_str()),
        "Forwarded host over HTTP/2 must come from :authority (there is no Host header in h2)"
    );
}

#[test]
fn rate_limits_and_daily_quotas() {
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());

    // Per second: 1/s, burst 1.
    gw.system("stp-rate", CONSUMER_AGENCY);
    let sub = gw.subscribe("stp-rate", "dancu", "v1", "production");
    let (s, b) = gw.op.put(&format!("/api/v1/subscriptions/{sub}/limits"), json!({"per_second": 1}));
    assert_eq!(s, 200, "{b}");
    let cred = gw.credential("stp-rate", "production", false);
    let tok = gw.token(&cred);
    gw.sync();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/a", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let before = up.count();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/b", None);
    assert_refusal(&r, 429, "RATE_LIMITED");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(up.count(), before, "a rate-limited call never reaches the provider");
    std::thread::sleep(Duration::from_millis(1100));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/c", None);
    assert_eq!(r.status, 200, "after Retry-After the call passes: {}", r.text());

    // Per day: 3 calls, then refused until midnight Vietnam time.
    gw.system("stp-quota", CONSUMER_AGENCY);
    let sub = gw.subscribe("stp-quota", "dancu", "v1", "production");
    let (s, b) = gw.op.put(&format!("/api/v1/subscriptions/{sub}/limits"), json!({"per_day": 3}));
    assert_eq!(s, 200, "{b}");
    let cred = gw.credential("stp-quota", "production", false);
    let tok = gw.token(&cred);
    gw.sync();
    for i in 0..3 {
        let r = gw.bearer(&tok, "GET", &format!("/dancu/v1/q{i}"), None);
        assert_eq!(r.status, 200, "call {i} within the quota: {}", r.text());
    }
    let before = up.count();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/q3", None);
    assert_refusal(&r, 429, "QUOTA_EXHAUSTED");
    let ra: i64 = r.header("retry-after").and_then(|s| s.parse().ok()).expect("Retry-After seconds");
    let want = secs_to_vn_midnight();
    assert!((ra - want).abs() <= 5, "Retry-After {ra} should be the wait until midnight in Vietnam ({want})");
    assert_eq!(up.count(), before);
    let rec = gw.audit(&r.txn());
    assert_eq!(rec["status"], 429);
    assert_eq!(rec["outcome"], "QUOTA_EXHAUSTED");
    assert_eq!(rec["consumer_system"], "stp-quota");

    // Other subscriptions are unaffected.
    let main = gw.credential("stp-hotich", "production", false);
    let t = gw.token(&main);
    for _ in 0..5 {
        assert_eq!(gw.bearer(&t, "GET", "/dancu/v1/free", None).status, 200);
    }
}

#[test]
fn upstream_authentication_basic_bearer_and_signature() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use lgsp::gateway::httpsig::{self, ParsedKey, RequestView};
    use lgsp::registry::SigAlg;

    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", up.url()), &up.url());
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);

    gw.patch_version("dancu", "v1", json!({"upstream_auth": {"kind": "basic", "username": "lgsp", "password": "pa:ss word"}}));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/basic", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("seen");
    use base64::Engine;
    let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("lgsp:pa:ss word"));
    assert_eq!(seen.header("authorization"), Some(want.as_str()), "the appliance's Basic credentials, not the consumer's token");
    assert_eq!(count_header(&seen.headers, "authorization"), 1);

    gw.patch_version("dancu", "v1", json!({"upstream_auth": {"kind": "bearer", "token": "provider-token-123"}}));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/bearer", None);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().expect("seen").header("authorization"), Some("Bearer provider-token-123"));

    gw.patch_version("dancu", "v1", json!({"upstream_auth": {"kind": "signature"}}));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/signed-upstream", None);
    assert_eq!(r.status, 200);
    let txn = r.txn();
    let seen = up.last().expect("seen");
    assert_eq!(seen.header("authorization"), None, "the consumer's token is not passed on");
    let input = seen.header("signature-input").expect("Signature-Input from the appliance");
    assert!(seen.header("signature").is_some(), "Signature from the appliance");
    // Verify it with the appliance's public key (derived from secrets.key like the appliance does).
    let sk = ed25519_dalek::SigningKey::from_bytes(&derive_key(&gw.node.dir, "lgsp upstream signature v1"));
    let pem = sk.verifying_key().to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF).expect("pem");
    let key_id = format!("lgsp-{}", &hex::encode(sk.verifying_key().as_bytes())[..16]);
    assert!(input.contains(&format!("keyid=\"{key_id}\"")), "keyid of the appliance key: {input}");
    assert!(input.contains("nonce="), "a nonce: {input}");
    let mut map = http::HeaderMap::new();
    for (k, v) in &seen.headers {
        map.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), http::HeaderValue::from_str(v).expect("value"));
    }
    let sig = httpsig::parse(&map, None).expect("parse the appliance's signature");
    let rv = RequestView {
        method: &http::Method::GET,
        scheme: "http",
        authority: &up.addr.to_string(),
        path: &seen.path,
        query: None,
        headers: &map,
        has_body: false,
    };
    let key = ParsedKey::from_pem(SigAlg::Ed25519, &pem).expect("key");
    let verified = httpsig::verify(&sig, &rv, &key, SigAlg::Ed25519, now(), 300).expect("the appliance's signature verifies");
    assert_eq!(verified.key_id, key_id);
    let names: Vec<&str> = sig.components.iter().map(|c| c.name.as_str()).collect();
    for c in ["@method", "@target-uri", "x-transaction-id", "x-consumer-agency", "x-consumer-system"] {
        assert!(names.contains(&c), "the provider can trust {c}: covered {names:?}");
    }
    assert_eq!(seen.header("x-transaction-id"), Some(txn.as_str()));

    gw.patch_version("dancu", "v1", json!({"upstream_auth": {"kind": "none"}}));
    let r = gw.bearer(&tok, "GET", "/dancu/v1/none", None);
    assert_eq!(r.status, 200);
    let seen = up.last().expect("seen");
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("signature"), None);
}

#[test]
fn shared_catalogs_through_the_gateway() {
    let gw = Gw::start();
    let (s, b) = gw.op.post(
        "/api/v1/catalogs",
        json!({"code": "gioi-tinh", "name": "Giới tính", "owner_agency": PROVIDER_AGENCY, "description": "Danh mục giới tính"}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = gw.op.post(
        "/api/v1/catalogs/gioi-tinh/versions",
        json!({"fields": [{"name": "code", "type": "string"}, {"name": "name", "type": "string"}],
               "entries": [{"code": "1", "name": "Nam"}, {"code": "2", "name": "Nữ"}]}),
    );
    assert_eq!(s, 201, "{b}");
    let consumer = gw.credential("stp-hotich", "production", false);
    let ctok = gw.token(&consumer);
    let owner = gw.credential("hp-dancu", "production", false);
    let otok = gw.token(&owner);
    gw.sync();

    // Authentication first, for catalogs too.
    let r = gw.send("GET", "/dmdc/Metadata/gioi-tinh", &[], None);
    assert_refusal(&r, 401, "CREDENTIALS_REQUIRED");

    let r = gw.bearer(&ctok, "GET", "/dmdc/Metadata/gioi-tinh", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.txn();
    let v = r.json();
    assert_eq!(v["status"], "00");
    assert_eq!(v["data"]["code"], "gioi-tinh");
    assert_eq!(v["data"]["version"], 1);
    let names: Vec<&str> = v["data"]["fields"].as_array().expect("fields").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["code", "name"]);

    let r = gw.bearer(&ctok, "GET", "/dmdc/Category/gioi-tinh", None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(v["data"][1]["name"], "Nữ");

    let r = gw.bearer(&ctok, "GET", "/dmdc/Category/khong-co", None);
    assert_refusal(&r, 404, "NO_SUCH_CATALOG");

    // Only the owner agency's systems add entries.
    let add = json!({"entries": [{"code": "3", "name": "Khác"}]}).to_string().into_bytes();
    let r = gw.send("POST", "/dmdc/Category/gioi-tinh", &[h("authorization", &format!("Bearer {ctok}"))], Some(add.clone()));
    assert_refusal(&r, 403, "CATALOG_OWNER_ONLY");
    let r = gw.send(
        "POST",
        "/dmdc/Category/gioi-tinh",
        &[h("authorization", &format!("Bearer {otok}")), h("content-type", "application/json")],
        Some(add),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["added"], 1);
    let v = eventually("the new catalog version is served", || {
        let r = gw.bearer(&ctok, "GET", "/dmdc/Category/gioi-tinh", None);
        (r.json()["version"] == 2).then(|| r.json())
    });
    assert_eq!(v["total"], 3);
    assert_eq!(v["data"][2]["name"], "Khác");
    // Older versions stay readable.
    let r = gw.bearer(&ctok, "GET", "/dmdc/Category/gioi-tinh?version=1", None);
    assert_eq!(r.json()["total"], 2);
    let (s, b) = gw.op.get("/api/v1/catalogs/gioi-tinh");
    assert_eq!(s, 200);
    assert_eq!(b["latest_version"], 2, "{b}");
}

fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn prometheus_metrics_after_traffic() {
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);
    let mut txns = vec![];
    for _ in 0..3 {
        let r = gw.bearer(&tok, "GET", "/dancu/v1/m", None);
        assert_eq!(r.status, 200);
        txns.push(r.txn());
    }
    let r = gw.bearer(&tok, "POST", "/dancu/v1/m", Some(vec![b'z'; 100]));
    assert_eq!(r.status, 200);
    let r = gw.send("GET", "/dancu/v1/m", &[], None);
    assert_refusal(&r, 401, "CREDENTIALS_REQUIRED");
    txns.push(r.txn());
    let r = gw.bearer("garbage", "GET", "/dancu/v1/m", None);
    assert_refusal(&r, 401, "INVALID_TOKEN");
    let r = gw.bearer(&tok, "GET", "/dancu/v1/status/500", None);
    assert_eq!(r.status, 500);

    let text = gw.metrics();
    let ok = metric_value(&text, "lgsp_gateway_requests_total", &[("service", "dancu"), ("consumer", CONSUMER_AGENCY), ("outcome", "OK")]);
    assert!(ok.is_some_and(|v| v >= 4.0), "requests_total OK by service and consumer agency:\n{text}");
    let err = metric_value(
        &text,
        "lgsp_gateway_requests_total",
        &[("service", "dancu"), ("consumer", CONSUMER_AGENCY), ("outcome", "UPSTREAM_ERROR_STATUS")],
    );
    assert_eq!(err, Some(1.0), "provider errors are counted by outcome:\n{text}");
    let refused = metric_value(&text, "lgsp_gateway_requests_total", &[("outcome", "CREDENTIALS_REQUIRED")]);
    assert!(refused.is_some_and(|v| v >= 1.0), "refusals counted by outcome:\n{text}");
    let hist = metric_value(&text, "lgsp_gateway_request_duration_seconds_count", &[("service", "dancu")]);
    assert!(hist.is_some_and(|v| v >= 5.0), "latency histogram by service:\n{text}");
    assert!(text.contains("lgsp_gateway_request_duration_seconds_bucket{"), "histogram buckets:\n{text}");
    assert!(
        metric_value(&text, "lgsp_gateway_upstream_duration_seconds_count", &[("service", "dancu")]).is_some_and(|v| v >= 5.0),
        "upstream latency histogram:\n{text}"
    );
    for reason in ["CREDENTIALS_REQUIRED", "INVALID_TOKEN"] {
        let v = metric_value(&text, "lgsp_gateway_auth_failures_total", &[("reason", reason)]);
        assert!(v.is_some_and(|v| v >= 1.0), "auth failures by reason {reason}:\n{text}");
    }
    let bytes = metric_value(&text, "lgsp_gateway_request_bytes_total", &[("service", "dancu")]);
    assert!(bytes.is_some_and(|v| v >= 100.0), "request bytes:\n{text}");
    // Bounded labels: no transaction id, no path.
    for t in &txns {
        assert!(!text.contains(t.as_str()), "a transaction id in the metrics: {t}");
    }
    assert!(!text.contains("/dancu/v1/m"), "a path in the metrics");
    // Conventional names: lgsp_ prefix on every gateway family, counters end in _total.
    for l in text.lines().filter(|l| l.starts_with("# TYPE lgsp_gateway_")) {
        let mut parts = l.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
    }
}

/// Runs `lgsp audit verify --dir DIR`; returns (success, stdout + stderr).
fn verify_offline(node: &common::Node, dir: &std::path::Path) -> (bool, String) {
    let out = node.cli(&["audit", "verify", "--dir", dir.to_str().expect("utf-8 path")], None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn transaction_audit_records_verify_and_tampering_is_detected() {
    let mut gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    let cred = gw.credential("stp-hotich", "production", true);
    let tok = gw.token(&cred);

    // A bearer GET (with a query that must not be stored).
    let r = gw.bearer(&tok, "GET", "/dancu/v1/records/9?cccd=001099012345", None);
    assert_eq!(r.status, 200);
    let get_txn = r.txn();
    let get_body = r.body.clone();
    // A signed POST with a body.
    let payload: Vec<u8> = (0..1234).map(|_| rand::random::<u8>()).collect();
    let r = gw.signed(&cred.hmac_signer(), "POST", "/dancu/v1/records", Some(payload.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    let post_txn = r.txn();
    let post_body = r.body.clone();
    // The default version, a provider error, a refusal, a token.
    let r = gw.bearer(&tok, "GET", "/dancu/default", None);
    assert_eq!(r.status, 200);
    let default_txn = r.txn();
    let r = gw.bearer(&tok, "GET", "/dancu/v1/status/500", None);
    let err_txn = r.txn();
    let r = gw.send("GET", "/dancu/v1/x", &[], None);
    let refused_txn = r.txn();
    let tcred = gw.credential("stp-hotich", "test", false);
    let ttok = gw.token(&tcred);
    let r = gw.bearer(&ttok, "GET", "/dancu/v1/x", None);
    assert_refusal(&r, 403, "SUBSCRIPTION_REQUIRED");
    let sub_txn = r.txn();

    let rec = gw.audit(&get_txn);
    let expect = [
        ("txn_id", json!(get_txn)),
        ("consumer_agency", json!(CONSUMER_AGENCY)),
        ("consumer_system", json!("stp-hotich")),
        ("service", json!("dancu")),
        ("version", json!("v1")),
        ("environment", json!("production")),
        ("method", json!("GET")),
        ("path", json!("/dancu/v1/records/9")),
        ("status", json!(200)),
        ("outcome", json!("OK")),
        ("request_bytes", json!(0)),
        ("response_bytes", json!(get_body.len())),
        ("response_sha256", json!(sha256_hex(&get_body))),
        ("auth_method", json!("oauth2")),
    ];
    for (k, v) in expect {
        assert_eq!(rec[k], v, "audit {k}: {rec}");
    }
    assert!(rec["upstream_us"].as_u64().is_some(), "upstream time recorded: {rec}");
    assert!(!rec.to_string().contains("001099012345"), "no query string in the audit: {rec}");

    let rec = gw.audit(&post_txn);
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["request_bytes"], payload.len(), "{rec}");
    assert_eq!(rec["request_sha256"], sha256_hex(&payload), "{rec}");
    assert_eq!(rec["response_bytes"], post_body.len());
    assert_eq!(rec["response_sha256"], sha256_hex(&post_body));
    assert_eq!(rec["auth_method"], "httpsig-hmac-sha256");
    assert_eq!(rec["status"], 200);

    let rec = gw.audit(&default_txn);
    assert_eq!(rec["version"], "v1", "the default version resolved: {rec}");
    assert_eq!(rec["path"], "/dancu/default");
    let rec = gw.audit(&err_txn);
    assert_eq!(rec["status"], 500);
    assert_eq!(rec["outcome"], "UPSTREAM_ERROR_STATUS");
    let rec = gw.audit(&refused_txn);
    assert_eq!(rec["status"], 401);
    assert_eq!(rec["outcome"], "CREDENTIALS_REQUIRED");
    assert_eq!(rec["consumer_system"], "");
    assert!(rec["upstream_us"].is_null(), "the provider was not called: {rec}");
    let rec = gw.audit(&sub_txn);
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["outcome"], "SUBSCRIPTION_REQUIRED");
    assert_eq!(rec["environment"], "test");
    assert_eq!(rec["consumer_agency"], CONSUMER_AGENCY);

    // Search filters.
    let (s, b) = gw.op.get("/api/v1/audit/transactions?service=dancu&outcome=OK&consumer_system=stp-hotich");
    assert_eq!(s, 200);
    let found: Vec<&str> = b["items"].as_array().expect("items").iter().filter_map(|i| i["txn_id"].as_str()).collect();
    assert!(found.contains(&get_txn.as_str()) && found.contains(&post_txn.as_str()), "{b}");
    assert!(!found.contains(&err_txn.as_str()));

    let (s, b) = gw.op.post("/api/v1/audit/verify", json!({}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ok"], true, "the live audit log verifies: {}", b["text"]);

    // Offline: stop the node, check the files verify, then edit one byte of a record.
    gw.node.stop();
    let audit_dir = gw.node.dir.join("audit");
    let (ok, text) = verify_offline(&gw.node, &audit_dir);
    assert!(ok, "untouched log verifies offline:\n{text}");
    let mut segs: Vec<_> = std::fs::read_dir(&audit_dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segs.sort();
    let (seg, original) = segs
        .iter()
        .find_map(|p| {
            let t = std::fs::read_to_string(p).ok()?;
            t.contains(&get_txn).then_some((p.clone(), t))
        })
        .expect("a segment holds the GET record");
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    let idx = lines.iter().position(|l| l.contains(&get_txn)).expect("record line");
    assert!(idx + 1 < lines.len(), "the record is not the last line");
    let seq_of =
        |l: &str| -> u64 { l.strip_prefix("{\"seq\":").and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).expect("seq") };
    let seq = seq_of(lines[idx]);
    let edited_line = lines[idx].replacen("\"status\":200", "\"status\":201", 1);
    assert_ne!(edited_line, lines[idx]);
    assert_eq!(edited_line.len(), lines[idx].len(), "one byte changed");
    let mut edited = lines.clone();
    edited[idx] = &edited_line;
    std::fs::write(&seg, edited.concat()).expect("write");
    let (ok, text) = verify_offline(&gw.node, &audit_dir);
    assert!(!ok, "an edited record must fail verification:\n{text}");
    assert!(text.contains(&format!("seq {seq} [hash_mismatch]")), "the report names seq {seq} as edited:\n{text}");

    // A deleted record line is detected too.
    let mut deleted = lines.clone();
    deleted.remove(idx);
    std::fs::write(&seg, deleted.concat()).expect("write");
    let (ok, text) = verify_offline(&gw.node, &audit_dir);
    assert!(!ok, "a deleted record must fail verification:\n{text}");
    assert!(text.contains(&format!("seq {seq} [missing_entries]")), "the report names the missing seq {seq}:\n{text}");

    // Restored, it verifies again.
    std::fs::write(&seg, &original).expect("restore");
    let (ok, text) = verify_offline(&gw.node, &audit_dir);
    assert!(ok, "restored log verifies:\n{text}");
}

#[test]
fn dot_segments_cannot_escape_the_upstream_prefix() {
    // The version's upstream is http://provider/api: a consumer may reach /api/... and nothing
    // else on that host. Dot-segments (RFC 3986 §5.2.4; %2E is the same character, §6.2.2.2)
    // forwarded as they are would be resolved by the provider to paths outside /api.
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", up.url()), &up.url());
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);
    for path in
        ["/dancu/v1/../../admin/secret", "/dancu/v1/a/../../../admin", "/dancu/v1/%2e%2e/%2E%2E/admin", "/dancu/v1/.%2e/admin", "/dancu/.."]
    {
        let before = up.count();
        let (status, headers, body) = raw_http(
            &gw.authority,
            &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n", gw.authority),
        );
        assert!(headers.iter().any(|(k, _)| k == "x-transaction-id"), "{path}: X-Transaction-Id");
        if up.count() == before {
            // Refused by the gateway: its own envelope.
            assert!(status == 400 || status == 404, "{path}: refused with {status}");
            let v: Value = serde_json::from_slice(&body).expect("envelope");
            assert_eq!(v["status"], "01", "{path}: {v}");
            continue;
        }
        let seen = up.last().expect("seen").path;
        let segments: Vec<String> = seen.split('/').map(|s| s.to_ascii_lowercase().replace("%2e", ".")).collect();
        assert!(
            !segments.iter().any(|s| s == ".." || s == "."),
            "{path}: the provider was sent {seen:?}, whose dot-segments resolve outside the upstream prefix /api; \
             normalise (RFC 3986 §5.2.4) and keep the result under the prefix, or refuse with 400"
        );
        assert!(seen == "/api" || seen.starts_with("/api/"), "{path}: the provider was sent {seen:?}, outside /api");
    }
}

#[test]
fn connection_nominated_headers_are_not_forwarded() {
    // RFC 9110 §7.6.1: a proxy removes the fields a Connection header names before forwarding.
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &up.url(), &up.url());
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);
    let (status, _, body) = raw_http(
        &gw.authority,
        &format!(
            "GET /dancu/v1/hop HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nConnection: close, x-hop-secret\r\nX-Hop-Secret: for-the-gateway-only\r\nX-End-To-End: yes\r\n\r\n",
            gw.authority
        ),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = up.last().expect("seen");
    assert_eq!(seen.header("x-end-to-end"), Some("yes"));
    assert_eq!(seen.header("connection"), None);
    assert_eq!(
        seen.header("x-hop-secret"),
        None,
        "a header named in Connection is hop-by-hop and must not be forwarded: {:?}",
        seen.headers
    );
}
