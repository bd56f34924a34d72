//! Fuzzes the gateway's parsers of consumer-supplied signature headers: `Signature-Input`,
//! `Signature` and `Content-Digest` through `httpsig::parse`, `httpsig::verify` (signature base
//! construction and every policy check) and `digest::ExpectedDigest::parse` / `DigestCheck`.
//! Nothing may panic, whatever the bytes.
//!
//! Input: up to four parts separated by `\n` (a byte no header value can hold):
//! Signature-Input, Signature, Content-Digest, and the request's query string.
//!
//! Run (nightly): `cargo +nightly fuzz run httpsig_parse -- -max_total_time=60`
//! or on stable: `RUSTC_BOOTSTRAP=1 cargo fuzz run httpsig_parse -- -max_total_time=60`.
#![no_main]

use http::{HeaderMap, HeaderValue, Method};
use lgsp::gateway::digest::{DigestCheck, ExpectedDigest};
use lgsp::gateway::httpsig::{self, ParsedKey, RequestView};
use lgsp::registry::SigAlg;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_618_884_473;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let input = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let digest = parts.next().unwrap_or_default();
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());

    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("example.com"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("example-dict", HeaderValue::from_static("a=1, b=2;x=1;y=2, c=(a b c), d"));
    for (name, value) in [("signature-input", input), ("signature", signature), ("content-digest", digest)] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }

    if let Ok(d) = std::str::from_utf8(digest) {
        if let Ok(expected) = ExpectedDigest::parse(d) {
            let mut check = DigestCheck::new(expected);
            check.update(data);
            let _ = check.finish();
        }
    }
    let _ = ExpectedDigest::from_headers(&headers);

    let method = Method::POST;
    let req = RequestView {
        method: &method,
        scheme: "https",
        authority: "example.com",
        path: "/foo",
        query,
        headers: &headers,
        has_body: data.len() % 2 == 0,
    };
    for label in [None, Some("sig1")] {
        if let Ok(sig) = httpsig::parse(&headers, label) {
            let hmac = ParsedKey::hmac(b"fuzz");
            let _ = httpsig::verify(&sig, &req, &hmac, SigAlg::HmacSha256, NOW, 300);
            let _ = httpsig::verify(&sig, &req, &hmac, SigAlg::Ed25519, NOW, 300);
        }
    }
});
