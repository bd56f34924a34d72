//! SPEC §3: "Payloads are streamed, never written to disk." Requests and answers carrying unique
//! markers go through the gateway (bearer and signature, successes and refusals); then every
//! byte the node left on disk (data directory: redb, audit segments, keys, dev.json; and its
//! log) is searched for the markers, raw, hex-upper and base64.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use gateway_support::*;
use serde_json::json;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The forms in which a marker could end up on disk.
fn forms(marker: &str) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("raw".to_owned(), marker.as_bytes().to_vec()),
        ("upper".to_owned(), marker.to_ascii_uppercase().into_bytes()),
        ("base64".to_owned(), STANDARD.encode(marker).into_bytes()),
        ("base64url".to_owned(), URL_SAFE_NO_PAD.encode(marker).into_bytes()),
    ];
    // A marker that is hex may also be stored decoded (as bytes) or base64 of those bytes.
    if let Ok(bytes) = hex::decode(marker) {
        v.push(("decoded-hex".to_owned(), bytes.clone()));
        v.push(("base64-of-bytes".to_owned(), STANDARD.encode(&bytes).into_bytes()));
    }
    // Long enough fragments catch a marker that was cut or wrapped.
    v.push(("first-half".to_owned(), marker.as_bytes()[..marker.len() / 2].to_vec()));
    v
}

#[test]
fn payload_bytes_are_never_at_rest() {
    let body_marker = random_hex(32);
    let resp_marker = random_hex(32);
    let query_marker = random_hex(32);
    let header_marker = random_hex(32);
    let refused_marker = random_hex(32);
    let secret_marker = random_hex(32);

    let mut gw = Gw::start();
    let p = Provider::start(200, &resp_marker);
    gw.set_upstreams("dancu", "v1", &p.url(), &p.url());
    gw.patch_version("dancu", "v1", json!({"max_body_bytes": 4096}));
    let cred = gw.credential("stp-hotich", "production", true);
    let tok = gw.token(&cred);
    let signer = cred.hmac_signer();
    let auth = h("authorization", &format!("Bearer {tok}"));
    let json_body = |m: &str| format!("{{\"hoTen\":\"Nguyễn Văn A\",\"cccd\":\"{m}\",\"b64\":\"{}\"}}", STANDARD.encode(m)).into_bytes();

    // Bearer, success: marker in the body, in a query parameter and in a header; the provider's
    // answer echoes them and adds its own marker.
    let r = gw.send(
        "POST",
        &format!("/dancu/v1/citizens?cccd={query_marker}&page=1"),
        &[auth.clone(), h("content-type", "application/json"), h("x-echo", &header_marker)],
        Some(json_body(&body_marker)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for m in [&body_marker, &resp_marker, &query_marker, &header_marker] {
        assert!(text.contains(m.as_str()), "the answer carries marker {m}: {text}");
    }
    let seen = p.last().expect("seen");
    assert!(contains(&seen.body, body_marker.as_bytes()), "the provider got the body");
    // Bearer GET with the marker in the query only.
    let r = gw.send("GET", &format!("/dancu/v1/citizens/lookup?id={query_marker}&x={body_marker}"), std::slice::from_ref(&auth), None);
    assert_eq!(r.status, 200);

    // Signature, success (body covered by content-digest), with the query marker too.
    let path = format!("/dancu/v1/signed?cccd={query_marker}");
    let headers = sign_request(&gw.authority, &signer, "POST", &path, Some(&json_body(&body_marker)), &SignParams::fresh());
    let r = gw.send("POST", &path, &headers, Some(json_body(&body_marker)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&resp_marker));

    // Refusals carrying markers: tampered body (refused while streaming), stale signature,
    // no credentials, no subscription, body too large, garbage token, unknown service.
    let headers = sign_request(&gw.authority, &signer, "POST", "/dancu/v1/signed", Some(&json_body(&body_marker)), &SignParams::fresh());
    let r = gw.send("POST", "/dancu/v1/signed", &headers, Some(json_body(&refused_marker)));
    assert_refusal(&r, 400, "CONTENT_DIGEST_MISMATCH");
    let stale = SignParams { created: now() - 1000, ..SignParams::fresh() };
    let path = format!("/dancu/v1/signed?q={query_marker}");
    let headers = sign_request(&gw.authority, &signer, "POST", &path, Some(&json_body(&refused_marker)), &stale);
    let r = gw.send("POST", &path, &headers, Some(json_body(&refused_marker)));
    assert_refusal(&r, 401, "SIGNATURE_CREATED_OUT_OF_WINDOW");
    let r = gw.send("POST", &format!("/dancu/v1/x?cccd={query_marker}"), &[h("x-echo", &header_marker)], Some(json_body(&refused_marker)));
    assert_refusal(&r, 401, "CREDENTIALS_REQUIRED");
    let tcred = gw.credential("stp-hotich", "test", false);
    let ttok = gw.token(&tcred);
    let r = gw.send(
        "POST",
        &format!("/dancu/v1/x?cccd={query_marker}"),
        &[h("authorization", &format!("Bearer {ttok}"))],
        Some(json_body(&refused_marker)),
    );
    assert_refusal(&r, 403, "SUBSCRIPTION_REQUIRED");
    let mut big = json_body(&refused_marker);
    big.extend(std::iter::repeat_n(b' ', 5000));
    let r = gw.send("POST", "/dancu/v1/x", std::slice::from_ref(&auth), Some(big.clone()));
    assert_refusal(&r, 413, "PAYLOAD_TOO_LARGE");
    let r = gw.send_chunked("POST", "/dancu/v1/x", std::slice::from_ref(&auth), big);
    assert_refusal(&r, 413, "PAYLOAD_TOO_LARGE");
    let r = gw.send("GET", &format!("/dancu/v1/x?cccd={query_marker}"), &[h("authorization", &format!("Bearer {refused_marker}"))], None);
    assert_refusal(&r, 401, "INVALID_TOKEN");
    let r = gw.send("GET", &format!("/nosuch/v1/x?cccd={query_marker}"), std::slice::from_ref(&auth), None);
    assert_refusal(&r, 404, "NO_SUCH_SERVICE");
    // /token with a marker as the (wrong) client secret, and as a scope: neither is kept.
    let r = gw.token_request(&cred.consumer_key, &secret_marker);
    assert_eq!(r.status, 401);
    let basic = STANDARD.encode(format!("{}:{}", cred.consumer_key, cred.consumer_secret));
    let r = gw.send(
        "POST",
        "/token",
        &[h("authorization", &format!("Basic {basic}")), h("content-type", "application/x-www-form-urlencoded")],
        Some(format!("grant_type=client_credentials&scope={secret_marker}").into_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Flush and sign the audit tail, then stop the node so that everything is on disk.
    let (s, b) = gw.op.get("/api/v1/audit/transactions?limit=1000");
    assert_eq!(s, 200, "{b}");
    assert!(b["items"].as_array().is_some_and(|a| a.len() >= 10), "transactions were audited: {b}");
    let (s, b) = gw.op.post("/api/v1/audit/verify", json!({}));
    assert_eq!(s, 200, "{b}");
    gw.node.stop();

    let root = gw.node.dir.parent().expect("temp dir").to_owned();
    let mut files = Vec::new();
    files_under(&root, &mut files);
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "jsonl")), "audit segments exist: {files:?}");
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "redb")), "the registry exists: {files:?}");
    assert!(files.contains(&gw.node.log), "the node's log is searched too: {files:?}");
    let mut found = Vec::new();
    let mut scanned = 0usize;
    for f in &files {
        let bytes = std::fs::read(f).expect("read file");
        scanned += bytes.len();
        for (name, m) in [
            ("body", &body_marker),
            ("response", &resp_marker),
            ("query", &query_marker),
            ("header", &header_marker),
            ("refused-body", &refused_marker),
            ("client-secret/scope", &secret_marker),
        ] {
            for (form, needle) in forms(m) {
                if contains(&bytes, &needle) {
                    found.push(format!("{} holds the {name} marker ({form})", f.display()));
                }
            }
        }
    }
    assert!(scanned > 0);
    // Positive control: the scan does see what the audit is meant to keep (metadata).
    let audit_bytes: Vec<u8> =
        files.iter().filter(|f| f.extension().is_some_and(|e| e == "jsonl")).flat_map(|f| std::fs::read(f).unwrap_or_default()).collect();
    for meta in ["/dancu/v1/citizens", "stp-hotich", CONSUMER_AGENCY, "CONTENT_DIGEST_MISMATCH", &sha256_hex(&json_body(&body_marker))] {
        assert!(contains(&audit_bytes, meta.as_bytes()), "the audit segments hold the metadata {meta:?}");
    }
    assert!(found.is_empty(), "payload at rest:\n{}", found.join("\n"));
}
