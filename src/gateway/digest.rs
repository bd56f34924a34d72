//! RFC 9530 `Content-Digest`: parsing the header a consumer sends, checking the body against it
//! while it streams through the gateway, and producing the header for the gateway's own requests.
//!
//! Invariants:
//! - Only `sha-256` and `sha-512` are checked; other algorithms are ignored (the deprecated and
//!   insecure ones of the RFC 9530 registry included), but at least one supported digest is
//!   required. When both are present, both must match.
//! - The body is never buffered: [`DigestCheck`] hashes chunks as they pass.
//! - Digests are compared in constant time; the header is bounded before it is parsed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::HeaderMap;
use sfv::{BareItem, Item, ListEntry, Parser};
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Largest accepted `Content-Digest` field, all field lines combined (bytes).
pub const MAX_DIGEST_FIELD_BYTES: usize = 4 * 1024;
/// Most `:` in the field (sfv rescans the input at each byte sequence; keeps parsing linear).
const MAX_COLONS: usize = 64;

/// Why a `Content-Digest` was refused. [`DigestError::code`] is the gateway's stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("malformed Content-Digest: {0}; send e.g. Content-Digest: sha-256=:<base64 of the SHA-256 of the body>:")]
    Malformed(String),
    #[error("Content-Digest has no sha-256 or sha-512 digest; add one (RFC 9530)")]
    Unsupported,
    #[error("the body does not match its Content-Digest; compute the digest over the exact bytes sent (after any Content-Encoding)")]
    Mismatch,
}

impl DigestError {
    pub fn code(&self) -> &'static str {
        match self {
            DigestError::Malformed(_) => "CONTENT_DIGEST_MALFORMED",
            DigestError::Unsupported => "CONTENT_DIGEST_UNSUPPORTED",
            DigestError::Mismatch => "CONTENT_DIGEST_MISMATCH",
        }
    }
}

/// The digests a request announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    sha256: Option<[u8; 32]>,
    sha512: Option<[u8; 64]>,
}

impl ExpectedDigest {
    /// Parses a `Content-Digest` value: a structured dictionary (RFC 8941) of byte sequences.
    pub fn parse(header: &str) -> Result<ExpectedDigest, DigestError> {
        if header.len() > MAX_DIGEST_FIELD_BYTES {
            return Err(DigestError::Malformed(format!("longer than {MAX_DIGEST_FIELD_BYTES} bytes")));
        }
        if header.bytes().filter(|b| *b == b':').count() > MAX_COLONS {
            return Err(DigestError::Malformed("too many members".into()));
        }
        let dict = Parser::parse_dictionary(header.as_bytes())
            .map_err(|e| DigestError::Malformed(format!("not a structured dictionary ({})", e.trim_start_matches("parse_"))))?;
        if dict.is_empty() {
            return Err(DigestError::Malformed("empty".into()));
        }
        let mut out = ExpectedDigest { sha256: None, sha512: None };
        for (alg, entry) in &dict {
            let bytes = match entry {
                ListEntry::Item(Item { bare_item: BareItem::ByteSeq(b), .. }) => Some(b),
                _ => None,
            };
            match alg.as_str() {
                "sha-256" => out.sha256 = Some(fixed(alg, bytes)?),
                "sha-512" => out.sha512 = Some(fixed(alg, bytes)?),
                _ => {}
            }
        }
        if out.sha256.is_none() && out.sha512.is_none() {
            return Err(DigestError::Unsupported);
        }
        Ok(out)
    }

    /// Reads `Content-Digest` from `headers` (field lines joined with ", "); `Ok(None)` when
    /// absent.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<ExpectedDigest>, DigestError> {
        let mut joined = String::new();
        for (i, v) in headers.get_all("content-digest").iter().enumerate() {
            let s = v.to_str().map_err(|_| DigestError::Malformed("non-ASCII bytes".into()))?;
            if joined.len() + s.len() + 2 > MAX_DIGEST_FIELD_BYTES {
                return Err(DigestError::Malformed(format!("longer than {MAX_DIGEST_FIELD_BYTES} bytes")));
            }
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(s);
        }
        if !headers.contains_key("content-digest") {
            return Ok(None);
        }
        ExpectedDigest::parse(&joined).map(Some)
    }
}

fn fixed<const N: usize>(alg: &str, bytes: Option<&Vec<u8>>) -> Result<[u8; N], DigestError> {
    let Some(b) = bytes else {
        return Err(DigestError::Malformed(format!("{alg} must be a byte sequence (:base64:)")));
    };
    <[u8; N]>::try_from(b.as_slice()).map_err(|_| DigestError::Malformed(format!("{alg} must be {N} bytes, got {}", b.len())))
}

/// Hashes a body as it streams and checks it against the announced digests at the end.
pub struct DigestCheck {
    expected: ExpectedDigest,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl DigestCheck {
    pub fn new(expected: ExpectedDigest) -> DigestCheck {
        DigestCheck { sha256: expected.sha256.map(|_| Sha256::new()), sha512: expected.sha512.map(|_| Sha512::new()), expected }
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
    }

    /// After the last chunk: every announced supported digest must match.
    pub fn finish(self) -> Result<(), DigestError> {
        let mut ok = subtle::Choice::from(1u8);
        if let (Some(h), Some(want)) = (self.sha256, self.expected.sha256) {
            ok &= h.finalize().as_slice().ct_eq(&want);
        }
        if let (Some(h), Some(want)) = (self.sha512, self.expected.sha512) {
            ok &= h.finalize().as_slice().ct_eq(&want);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(DigestError::Mismatch)
        }
    }
}

/// The `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest_sha256(body: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = b"{\"hello\": \"world\"}";
    // RFC 9530 §2 / Appendix B and RFC 9421 B.2 use this body and these digests.
    const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    fn check(header: &str, chunks: &[&[u8]]) -> Result<(), DigestError> {
        let mut c = DigestCheck::new(ExpectedDigest::parse(header)?);
        for ch in chunks {
            c.update(ch);
        }
        c.finish()
    }

    #[test]
    fn produces_rfc_9530_example() {
        assert_eq!(content_digest_sha256(HELLO), HELLO_SHA256);
    }

    #[test]
    fn rfc_9530_examples_verify() {
        check(HELLO_SHA256, &[HELLO]).unwrap();
        check(HELLO_SHA512, &[HELLO]).unwrap();
        check(&format!("{HELLO_SHA256}, {HELLO_SHA512}"), &[HELLO]).unwrap();
        // RFC 9530 Appendix B.1: an empty representation.
        check("sha-512=:z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==:", &[]).unwrap();
        check("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", &[b""]).unwrap();
    }

    #[test]
    fn streaming_in_any_chunking_matches() {
        for split in 0..=HELLO.len() {
            let (a, b) = HELLO.split_at(split);
            check(HELLO_SHA256, &[a, b]).unwrap();
            check(HELLO_SHA512, &[a, &[], b]).unwrap();
        }
    }

    #[test]
    fn mismatch_is_refused() {
        assert_eq!(check(HELLO_SHA256, &[b"{\"hello\": \"World\"}"]), Err(DigestError::Mismatch));
        assert_eq!(check(HELLO_SHA256, &[HELLO, b" "]), Err(DigestError::Mismatch));
        assert_eq!(check(HELLO_SHA256, &[]), Err(DigestError::Mismatch));
        // Both present: both must match, a right sha-512 does not excuse a wrong sha-256.
        let wrong256 = content_digest_sha256(b"other");
        assert_eq!(check(&format!("{wrong256}, {HELLO_SHA512}"), &[HELLO]), Err(DigestError::Mismatch));
        assert_eq!(DigestError::Mismatch.code(), "CONTENT_DIGEST_MISMATCH");
    }

    #[test]
    fn unknown_algorithms_are_ignored_but_one_supported_is_required() {
        check(&format!("md5=:HFmCb+CgHnTPXS7sGEVZsQ==:, {HELLO_SHA256}, sha3-256=:abcd:"), &[HELLO]).unwrap();
        for h in ["md5=:HFmCb+CgHnTPXS7sGEVZsQ==:", "unixsum=:AAA=:", "sha3-512=:AAAA:", "crc32c=5"] {
            let e = ExpectedDigest::parse(h).unwrap_err();
            assert_eq!(e, DigestError::Unsupported, "{h}");
            assert_eq!(e.code(), "CONTENT_DIGEST_UNSUPPORTED");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let long = "a".repeat(MAX_DIGEST_FIELD_BYTES + 1);
        let colons = format!("sha-256=:{}:", ":".repeat(100));
        for h in [
            "",
            "   ",
            "sha-256",
            "sha-256=abc",
            "sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\"",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",  // unterminated
            "sha-256=:AAAA:",                                         // wrong length
            "sha-512=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", // 32 bytes for sha-512
            "sha-256=(:AAAA:)",
            "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:,",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=: trailing",
            "sha-256=:Ẋ48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            "\u{1F600}",
            &long,
            &colons,
        ] {
            let e = ExpectedDigest::parse(h).unwrap_err();
            assert!(matches!(e, DigestError::Malformed(_)), "{h:?}: {e:?}");
            assert_eq!(e.code(), "CONTENT_DIGEST_MALFORMED");
        }
    }

    #[test]
    fn from_headers_joins_lines_and_reports_absence() {
        let mut h = HeaderMap::new();
        assert_eq!(ExpectedDigest::from_headers(&h), Ok(None));
        h.append("content-digest", HELLO_SHA256.parse().unwrap());
        h.append("content-digest", HELLO_SHA512.parse().unwrap());
        let d = ExpectedDigest::from_headers(&h).unwrap().unwrap();
        assert!(d.sha256.is_some() && d.sha512.is_some());
        let mut bad = HeaderMap::new();
        bad.insert("content-digest", http::HeaderValue::from_bytes(b"sha-256=:\xff:").unwrap());
        assert!(matches!(ExpectedDigest::from_headers(&bad), Err(DigestError::Malformed(_))));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert!(DigestError::Unsupported.to_string().contains("sha-256"));
        assert!(DigestError::Malformed("x".into()).to_string().contains("Content-Digest: sha-256="));
    }
}
