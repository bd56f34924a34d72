//! RFC 9421 HTTP Message Signatures: the gateway verifies consumers' signed requests (SPEC §3) and
//! signs its own upstream requests. This file owns the parsing of `Signature-Input`/`Signature`,
//! the signature base (RFC 9421 §2), the gateway's signature policy, key parsing, the replay
//! (nonce) cache and the signing helpers.
//!
//! Invariants:
//! - The key decides the algorithm. The `alg` parameter, when present, must agree with the key
//!   registered for the `keyid`; it never selects a verifier on its own.
//! - Every input is bounded (field sizes, member, component and parameter counts, string lengths)
//!   before any work proportional to it is done; nothing here panics on hostile input.
//! - Policy (SPEC §3): `@method`; `@target-uri` or `@authority` + `@path` (+ `@query` when the
//!   request has a query); `content-digest` when the request has a body; `created` within the
//!   window; `expires`, if present, not past. A `nonce` is *parsed* here and exposed in
//!   [`Verified::nonce`]; requiring one and refusing replays is the caller's policy, enforced
//!   with [`NonceCache`]. The gateway requires a nonce: a signature without one is accepted only
//!   where the caller's policy explicitly allows it.
//! - HMAC tags are compared in constant time.
//! - Verification parses no key material: keys are parsed once, when the registry view is built
//!   ([`ParsedKey::from_pem`], [`ParsedKey::hmac`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, Method};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;
use sfv::{BareItem, Dictionary, InnerList, Item, ListEntry, Parameters, Parser, SerializeValue};
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::registry::SigAlg;

/// Largest accepted `Signature-Input` or `Signature` field, all field lines combined (bytes).
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most covered components one signature may list.
pub const MAX_COMPONENTS: usize = 32;
/// Most members (signatures) in one `Signature-Input` or `Signature` dictionary.
pub const MAX_SIGNATURES: usize = 8;
/// Most signature parameters (`created`, `keyid`, ... and unknown ones) on one signature.
pub const MAX_PARAMS: usize = 16;
/// Longest `keyid`, `nonce`, `tag` or `alg` value, and longest component name (characters).
pub const MAX_PARAM_CHARS: usize = 256;
/// Longest decoded signature (an RSA-4096 signature is 512 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// Most field lines of one signature field.
const MAX_FIELD_LINES: usize = 16;
/// Most `:` in one field: sfv's byte-sequence parser rescans the rest of the input at each one,
/// so this keeps hostile input linear.
const MAX_COLONS: usize = 64;
/// Smallest RSA modulus accepted (bits); the largest (4096) is enforced by the `rsa` crate.
const MIN_RSA_BITS: usize = 2048;

/// Why a signature was refused, or a key or signing request was unusable. [`HttpSigError::code`]
/// is the stable code the gateway puts in its JSON envelope; the message speaks to the developer
/// of the calling system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpSigError {
    #[error("the request carries no HTTP message signature: send Signature-Input and Signature headers (RFC 9421), or an OAuth 2.0 bearer token")]
    Missing,
    #[error("no signature labelled `{0}` in Signature-Input; sign with that label or send it")]
    LabelMissing(String),
    #[error("malformed HTTP message signature: {0}")]
    Malformed(String),
    #[error("unknown keyid `{0}`: use the keyid registered for your system's credential in this environment")]
    UnknownKey(String),
    #[error("signature algorithm mismatch: {0}")]
    AlgorithmMismatch(String),
    #[error("the signature covers too little of the request: {0}")]
    ComponentsInsufficient(String),
    #[error("the signature's `created` ({created}) is more than {window} s away from the gateway's clock ({now}); synchronise your clock (NTP) and sign each request just before sending it")]
    CreatedOutOfWindow { created: i64, now: i64, window: i64 },
    #[error("the signature expired at {expires} (gateway clock {now}); sign the request again")]
    Expired { expires: i64, now: i64 },
    #[error("the signature does not verify: {0}")]
    Invalid(String),
    #[error("this nonce was already used with this key; use a fresh random nonce for every request")]
    NonceReplayed,
    #[error("the gateway cannot remember more nonces right now; retry shortly")]
    NonceCacheFull,
    #[error("public key for {alg} is unusable: {reason}")]
    KeyInvalid { alg: &'static str, reason: String },
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

impl HttpSigError {
    /// The stable code for the gateway's JSON envelope and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            HttpSigError::Missing | HttpSigError::LabelMissing(_) => "SIGNATURE_MISSING",
            HttpSigError::Malformed(_) => "SIGNATURE_MALFORMED",
            HttpSigError::UnknownKey(_) => "SIGNATURE_UNKNOWN_KEY",
            HttpSigError::AlgorithmMismatch(_) => "SIGNATURE_ALGORITHM_MISMATCH",
            HttpSigError::ComponentsInsufficient(_) => "SIGNATURE_COMPONENTS_INSUFFICIENT",
            HttpSigError::CreatedOutOfWindow { .. } => "SIGNATURE_CREATED_OUT_OF_WINDOW",
            HttpSigError::Expired { .. } => "SIGNATURE_EXPIRED",
            HttpSigError::Invalid(_) => "SIGNATURE_INVALID",
            HttpSigError::NonceReplayed => "SIGNATURE_NONCE_REPLAYED",
            HttpSigError::NonceCacheFull => "SIGNATURE_NONCE_CACHE_FULL",
            HttpSigError::KeyInvalid { .. } => "SIGNATURE_KEY_INVALID",
            HttpSigError::Signing(_) => "SIGNATURE_SIGNING_FAILED",
        }
    }

    /// The HTTP status the gateway answers with: 401 for anything the caller got wrong, 503 when
    /// the nonce cache is full (retry later), 500 for the gateway's own key or signing faults.
    pub fn status(&self) -> http::StatusCode {
        match self {
            HttpSigError::NonceCacheFull => http::StatusCode::SERVICE_UNAVAILABLE,
            HttpSigError::KeyInvalid { .. } | HttpSigError::Signing(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

fn malformed(msg: impl Into<String>) -> HttpSigError {
    HttpSigError::Malformed(msg.into())
}

/// A verification key, parsed once when the registry view is built.
#[derive(Clone)]
pub enum ParsedKey {
    /// The shared secret of an `hmac-sha256` key.
    Hmac(Vec<u8>),
    RsaPss(rsa::pss::VerifyingKey<Sha512>),
    RsaV15(rsa::pkcs1v15::VerifyingKey<Sha256>),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the HMAC secret.
        write!(f, "ParsedKey({})", self.alg().as_str())
    }
}

impl ParsedKey {
    /// Parses a public key for `alg` from PEM: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`) for all
    /// four public-key algorithms; for RSA also PKCS#1 (`BEGIN RSA PUBLIC KEY`), and for
    /// `rsa-pss-sha512` also an SPKI tagged with the RSASSA-PSS OID. RSA keys must have 2048 to
    /// 4096 bits. `hmac-sha256` has no PEM form: use [`ParsedKey::hmac`].
    pub fn from_pem(alg: SigAlg, pem: &str) -> Result<ParsedKey, HttpSigError> {
        let bad = |reason: String| HttpSigError::KeyInvalid { alg: alg.as_str(), reason };
        let pem = pem.trim();
        match alg {
            SigAlg::HmacSha256 => Err(bad("hmac-sha256 keys are shared secrets, not PEM".into())),
            SigAlg::RsaPssSha512 => Ok(ParsedKey::RsaPss(rsa::pss::VerifyingKey::new(rsa_public_key(pem, true).map_err(bad)?))),
            SigAlg::RsaV15Sha256 => Ok(ParsedKey::RsaV15(rsa::pkcs1v15::VerifyingKey::new(rsa_public_key(pem, false).map_err(bad)?))),
            SigAlg::EcdsaP256Sha256 => p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
                .map(ParsedKey::EcdsaP256)
                .map_err(|e| bad(format!("expected a P-256 SubjectPublicKeyInfo PEM (BEGIN PUBLIC KEY): {e}"))),
            SigAlg::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
                .map(ParsedKey::Ed25519)
                .map_err(|e| bad(format!("expected an Ed25519 SubjectPublicKeyInfo PEM (BEGIN PUBLIC KEY): {e}"))),
        }
    }

    /// An `hmac-sha256` key from its shared secret (the registry generates these, 32 bytes).
    pub fn hmac(secret: &[u8]) -> ParsedKey {
        ParsedKey::Hmac(secret.to_vec())
    }

    /// The algorithm this key verifies.
    pub fn alg(&self) -> SigAlg {
        match self {
            ParsedKey::Hmac(_) => SigAlg::HmacSha256,
            ParsedKey::RsaPss(_) => SigAlg::RsaPssSha512,
            ParsedKey::RsaV15(_) => SigAlg::RsaV15Sha256,
            ParsedKey::EcdsaP256(_) => SigAlg::EcdsaP256Sha256,
            ParsedKey::Ed25519(_) => SigAlg::Ed25519,
        }
    }

    /// Verifies `sig` over `base` with this key's algorithm (RFC 9421 §3.3). No policy here.
    fn verify_bytes(&self, base: &[u8], sig: &[u8]) -> bool {
        match self {
            ParsedKey::Hmac(secret) => match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
                Ok(mut mac) => {
                    mac.update(base);
                    let tag = mac.finalize().into_bytes();
                    bool::from(tag.as_slice().ct_eq(sig))
                }
                Err(_) => false,
            },
            ParsedKey::RsaPss(k) => rsa::pss::Signature::try_from(sig).is_ok_and(|s| k.verify(base, &s).is_ok()),
            ParsedKey::RsaV15(k) => rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| k.verify(base, &s).is_ok()),
            ParsedKey::EcdsaP256(k) => {
                // RFC 9421 §3.3.4: the raw 64-byte r || s, never DER.
                sig.len() == 64 && p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(base, &s).is_ok())
            }
            ParsedKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify_strict(base, &s).is_ok()),
        }
    }
}

const RSASSA_PSS_OID: rsa::pkcs8::ObjectIdentifier = rsa::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// An RSA public key of 2048..=4096 bits; `pss` also admits an SPKI tagged id-RSASSA-PSS.
fn rsa_public_key(pem: &str, pss: bool) -> Result<rsa::RsaPublicKey, String> {
    let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("cannot read the PKCS#1 RSA public key: {e}"))?
    } else {
        match rsa::RsaPublicKey::from_public_key_pem(pem) {
            Ok(k) => k,
            Err(first) => pss
                .then(|| rsa_pss_spki(pem))
                .flatten()
                .ok_or_else(|| format!("expected an RSA SubjectPublicKeyInfo PEM (BEGIN PUBLIC KEY): {first}"))?,
        }
    };
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"));
    }
    Ok(key)
}

/// An SPKI whose algorithm is id-RSASSA-PSS (as `openssl genpkey -algorithm RSA-PSS` writes);
/// the PSS parameters in it are ignored because RFC 9421 fixes them (SHA-512, MGF1-SHA-512, salt 64).
fn rsa_pss_spki(pem: &str) -> Option<rsa::RsaPublicKey> {
    use rsa::pkcs8::der::{Decode as _, Document};
    let (label, doc) = Document::from_pem(pem).ok()?;
    if label != "PUBLIC KEY" {
        return None;
    }
    let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(doc.as_bytes()).ok()?;
    if spki.algorithm.oid != RSASSA_PSS_OID {
        return None;
    }
    let pk = rsa::pkcs1::RsaPublicKey::from_der(spki.subject_public_key.as_bytes()?).ok()?;
    let n = rsa::BigUint::from_bytes_be(pk.modulus.as_bytes());
    let e = rsa::BigUint::from_bytes_be(pk.public_exponent.as_bytes());
    rsa::RsaPublicKey::new(n, e).ok()
}

/// What the gateway knows about the request being verified or signed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `https` (or `http` in `lgsp dev`).
    pub scheme: &'a str,
    /// Host and optional port as the client addressed it (`Host` or the HTTP/2 `:authority`).
    pub authority: &'a str,
    /// The path as received, still percent-encoded, without the query.
    pub path: &'a str,
    /// The query as received, without the `?`; `Some("")` for a bare `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Whether the request has content (then `content-digest` must be covered).
    pub has_body: bool,
}

/// One covered component of a signature, in the order the signer listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The component name: `@method`, `content-digest`, ...
    pub name: String,
    /// The serialised component identifier as it appears in the signature base, with its
    /// parameters: `"@query-param";name="id"`.
    pub identifier: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Method,
    TargetUri,
    Authority,
    Scheme,
    RequestTarget,
    Path,
    Query,
    /// The `name` parameter, percent-encoded as RFC 9421 §2.2.8 prescribes.
    QueryParam(String),
    Field(HeaderName, FieldMode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldMode {
    /// Trimmed field lines joined with ", " (RFC 9421 §2.1).
    Raw,
    /// `;sf`: strict re-serialisation as a structured dictionary (§2.1.1).
    Strict,
    /// `;key="m"`: one member of a structured dictionary (§2.1.2).
    Key(String),
    /// `;bs`: each field line as a byte sequence (§2.1.3).
    Bytes,
}

/// Fields `;sf` may be applied to: the ones known to be structured dictionaries.
const DICTIONARY_FIELDS: &[&str] =
    &["content-digest", "repr-digest", "want-content-digest", "want-repr-digest", "signature", "signature-input"];

/// One signature chosen from the request's `Signature-Input` and `Signature` fields. Treat it
/// as read-only: [`verify`] rebuilds `@signature-params` from what was parsed, not from these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRequest {
    pub label: String,
    /// The `keyid` parameter (required by the gateway: it selects the key).
    pub key_id: String,
    /// The `alg` parameter as sent; informative only, checked against the key's algorithm.
    pub alg: Option<String>,
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub tag: Option<String>,
    pub components: Vec<Component>,
    signature: Vec<u8>,
    /// The `@signature-params` value: the inner list and its parameters, re-serialised.
    params_line: String,
}

/// A signature that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub alg: SigAlg,
    pub created: i64,
    /// The nonce, if the signer sent one. The gateway requires it and records it in a
    /// [`NonceCache`]; a signature without a nonce is acceptable only where the caller allows it.
    pub nonce: Option<String>,
    /// Whether `content-digest` (the whole field) is covered; the caller must then check the body
    /// against it (`gateway::digest`).
    pub covers_content_digest: bool,
}

/// Parses `Signature-Input` and `Signature` and picks one signature: the one labelled `label`,
/// else the first in `Signature-Input`. Covered components and parameters are validated here;
/// policy and cryptography are [`verify`]'s.
pub fn parse(headers: &HeaderMap, label: Option<&str>) -> Result<SignatureRequest, HttpSigError> {
    let input = combined_field(headers, "signature-input")?;
    let sigs = combined_field(headers, "signature")?;
    let (input, sigs) = match (input, sigs) {
        (None, None) => return Err(HttpSigError::Missing),
        (Some(_), None) => return Err(malformed("Signature-Input is present but Signature is not; send both")),
        (None, Some(_)) => return Err(malformed("Signature is present but Signature-Input is not; send both")),
        (Some(i), Some(s)) => (i, s),
    };
    let input = parse_dictionary(&input, "Signature-Input")?;
    let sigs = parse_dictionary(&sigs, "Signature")?;
    let label = match label {
        Some(l) => l.to_owned(),
        None => match input.keys().next() {
            Some(first) => first.clone(),
            None => return Err(HttpSigError::Missing),
        },
    };
    let Some(entry) = input.get(&label) else {
        return Err(HttpSigError::LabelMissing(label));
    };
    let ListEntry::InnerList(inner) = entry else {
        return Err(malformed(format!(
            "Signature-Input `{label}` must be an inner list of components, e.g. (\"@method\" \"@target-uri\")"
        )));
    };
    let signature = match sigs.get(&label) {
        None => return Err(malformed(format!("Signature has no member `{label}`; label the signature as in Signature-Input"))),
        Some(ListEntry::Item(Item { bare_item: BareItem::ByteSeq(b), .. })) => b.clone(),
        Some(_) => return Err(malformed(format!("Signature `{label}` must be a byte sequence (:base64:)"))),
    };
    if signature.is_empty() || signature.len() > MAX_SIGNATURE_BYTES {
        return Err(malformed(format!("Signature `{label}` has {} bytes; expected 1 to {MAX_SIGNATURE_BYTES}", signature.len())));
    }
    from_inner_list(&label, inner, signature)
}

/// Verifies `sig` against the request, the key registered for `sig.key_id` and that key's
/// algorithm `alg`, applying the gateway's policy (module docs). `now_unix` is the gateway's
/// clock; `window_secs` the allowed distance of `created` from it.
pub fn verify(
    sig: &SignatureRequest,
    req: &RequestView<'_>,
    key: &ParsedKey,
    alg: SigAlg,
    now_unix: i64,
    window_secs: i64,
) -> Result<Verified, HttpSigError> {
    if key.alg() != alg {
        return Err(HttpSigError::AlgorithmMismatch(format!(
            "key `{}` is registered for {} but holds a {} key; ask the LGSP operator to re-register it",
            sig.key_id,
            alg.as_str(),
            key.alg().as_str()
        )));
    }
    if let Some(declared) = &sig.alg {
        if declared != alg.as_str() {
            return Err(HttpSigError::AlgorithmMismatch(format!(
                "alg=\"{declared}\" but key `{}` is registered for {}; sign with {} or omit alg",
                sig.key_id,
                alg.as_str(),
                alg.as_str()
            )));
        }
    }
    check_time(sig, now_unix, window_secs)?;
    check_coverage(sig, req)?;
    let base = signature_base(sig, req)?;
    if !key.verify_bytes(base.as_bytes(), &sig.signature) {
        return Err(HttpSigError::Invalid(format!(
            "the {} signature does not match this request; rebuild the signature base from the request exactly as sent (RFC 9421 §2.5) and sign it with the private key of `{}`",
            alg.as_str(),
            sig.key_id
        )));
    }
    Ok(Verified {
        key_id: sig.key_id.clone(),
        alg,
        created: sig.created.unwrap_or_default(),
        nonce: sig.nonce.clone(),
        covers_content_digest: covers_whole_field(sig, "content-digest"),
    })
}

fn check_time(sig: &SignatureRequest, now: i64, window: i64) -> Result<(), HttpSigError> {
    let window = window.max(0);
    let Some(created) = sig.created else {
        return Err(malformed("the signature has no `created` parameter; add created=<unix seconds> to Signature-Input"));
    };
    if now.saturating_sub(created).unsigned_abs() > window.unsigned_abs() {
        return Err(HttpSigError::CreatedOutOfWindow { created, now, window });
    }
    if let Some(expires) = sig.expires {
        if expires < now {
            return Err(HttpSigError::Expired { expires, now });
        }
    }
    Ok(())
}

fn check_coverage(sig: &SignatureRequest, req: &RequestView<'_>) -> Result<(), HttpSigError> {
    let has = |k: &Kind| sig.components.iter().any(|c| &c.kind == k);
    if !has(&Kind::Method) {
        return Err(HttpSigError::ComponentsInsufficient("cover \"@method\"".into()));
    }
    if !has(&Kind::TargetUri) {
        if !has(&Kind::Authority) || !has(&Kind::Path) {
            return Err(HttpSigError::ComponentsInsufficient(
                "cover \"@target-uri\", or \"@authority\" and \"@path\" (and \"@query\" when the URL has a query)".into(),
            ));
        }
        if req.query.is_some() && !has(&Kind::Query) {
            return Err(HttpSigError::ComponentsInsufficient("the URL has a query: cover \"@query\" (or \"@target-uri\")".into()));
        }
    }
    if req.has_body && !covers_whole_field(sig, "content-digest") {
        return Err(HttpSigError::ComponentsInsufficient(
            "the request has a body: send a Content-Digest header (RFC 9530) and cover \"content-digest\"".into(),
        ));
    }
    Ok(())
}

/// Whether the field is covered in full (plain, `;sf` or `;bs`; a `;key` covers one member only).
fn covers_whole_field(sig: &SignatureRequest, field: &str) -> bool {
    sig.components.iter().any(|c| matches!(&c.kind, Kind::Field(n, mode) if n.as_str() == field && !matches!(mode, FieldMode::Key(_))))
}

/// Builds the signature base (RFC 9421 §2.5) for `sig` over `req`.
fn signature_base(sig: &SignatureRequest, req: &RequestView<'_>) -> Result<String, HttpSigError> {
    let mut out = String::with_capacity(256 + 64 * sig.components.len());
    for c in &sig.components {
        if let Kind::QueryParam(name) = &c.kind {
            let values = query_param_values(req.query.unwrap_or(""), name);
            if values.is_empty() {
                return Err(HttpSigError::Invalid(format!(
                    "the signature covers {} but the query has no parameter `{name}`",
                    c.identifier
                )));
            }
            for v in values {
                push_line(&mut out, &c.identifier, &v)?;
            }
        } else {
            let v = component_value(c, req)?;
            push_line(&mut out, &c.identifier, &v)?;
        }
    }
    out.push_str("\"@signature-params\": ");
    out.push_str(&sig.params_line);
    Ok(out)
}

fn push_line(out: &mut String, identifier: &str, value: &str) -> Result<(), HttpSigError> {
    // A value must not break the line structure of the base: visible ASCII, space and tab only.
    if let Some(bad) = value.bytes().find(|b| !(b == &b'\t' || (0x20..0x7f).contains(b))) {
        return Err(malformed(format!("{identifier} has a byte 0x{bad:02x} that cannot appear in a signature base")));
    }
    out.push_str(identifier);
    out.push_str(": ");
    out.push_str(value);
    out.push('\n');
    Ok(())
}

fn component_value(c: &Component, req: &RequestView<'_>) -> Result<String, HttpSigError> {
    let scheme = req.scheme.to_ascii_lowercase();
    let path = if req.path.is_empty() { "/" } else { req.path };
    let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(match &c.kind {
        Kind::Method => req.method.as_str().to_owned(),
        Kind::Scheme => scheme,
        Kind::Authority => normalize_authority(&scheme, req.authority),
        Kind::TargetUri => format!("{scheme}://{}{path}{query}", normalize_authority(&scheme, req.authority)),
        Kind::RequestTarget => format!("{path}{query}"),
        Kind::Path => path.to_owned(),
        Kind::Query => {
            if query.is_empty() {
                "?".to_owned()
            } else {
                query
            }
        }
        Kind::QueryParam(_) => return Err(malformed("internal: @query-param handled by the caller")),
        Kind::Field(name, mode) => field_value(name, mode, req.headers)?,
    })
}

/// Lowercase host, default port dropped (RFC 9421 §2.2.3).
fn normalize_authority(scheme: &str, authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    match a.strip_suffix(default) {
        Some(stripped) if !default.is_empty() => stripped.to_owned(),
        _ => a,
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ' && *c != b'\t').unwrap_or(b.len());
    let end = b.iter().rposition(|c| *c != b' ' && *c != b'\t').map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn field_value(name: &HeaderName, mode: &FieldMode, headers: &HeaderMap) -> Result<String, HttpSigError> {
    let lines: Vec<&[u8]> = headers.get_all(name).iter().map(|v| trim_ows(v.as_bytes())).collect();
    if lines.is_empty() {
        return Err(HttpSigError::Invalid(format!("the signature covers \"{name}\" but the request has no {name} header")));
    }
    if let FieldMode::Bytes = mode {
        return Ok(lines.iter().map(|l| format!(":{}:", B64.encode(l))).collect::<Vec<_>>().join(", "));
    }
    let mut texts = Vec::with_capacity(lines.len());
    for l in &lines {
        match std::str::from_utf8(l) {
            Ok(s) if s.is_ascii() => texts.push(s),
            _ => return Err(malformed(format!("the {name} header has non-ASCII bytes; cover it as \"{name}\";bs"))),
        }
    }
    let joined = texts.join(", ");
    let not_dict = || HttpSigError::Invalid(format!("the {name} header is not a valid structured dictionary (RFC 8941)"));
    match mode {
        FieldMode::Raw | FieldMode::Bytes => Ok(joined),
        FieldMode::Strict => Parser::parse_dictionary(joined.as_bytes()).ok().and_then(|d| d.serialize_value().ok()).ok_or_else(not_dict),
        FieldMode::Key(key) => {
            let dict = Parser::parse_dictionary(joined.as_bytes()).map_err(|_| not_dict())?;
            match dict.get(key) {
                Some(ListEntry::Item(item)) => item.serialize_value().map_err(|_| not_dict()),
                Some(ListEntry::InnerList(il)) => vec![ListEntry::InnerList(il.clone())].serialize_value().map_err(|_| not_dict()),
                None => {
                    Err(HttpSigError::Invalid(format!("the signature covers member `{key}` of {name}, which the header does not have")))
                }
            }
        }
    }
}

/// Values of query parameter `name` (already percent-encoded per RFC 9421 §2.2.8), in order.
fn query_param_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (reencode(&form_decode(n)) == name).then(|| reencode(&form_decode(v)))
        })
        .collect()
}

/// WHATWG application/x-www-form-urlencoded parsing of one name or value: `+` is a space, `%XX`
/// a byte (a `%` not followed by two hex digits stays as it is), then UTF-8 decoding with
/// replacement of invalid sequences.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes with the application/x-www-form-urlencoded percent-encode set, a space as
/// `%20` (RFC 9421 §2.2.8): only ASCII alphanumerics and `*-._` stay as they are.
fn reencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// All field lines of `name`, joined with ", "; `None` when the field is absent.
fn combined_field(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, HttpSigError> {
    let mut out = String::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i >= MAX_FIELD_LINES {
            return Err(malformed(format!("more than {MAX_FIELD_LINES} {name} header lines")));
        }
        let Ok(s) = v.to_str() else {
            return Err(malformed(format!("the {name} header has non-ASCII bytes")));
        };
        if out.len() + s.len() + 2 > MAX_FIELD_BYTES {
            return Err(malformed(format!("the {name} header is longer than {MAX_FIELD_BYTES} bytes")));
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(s);
    }
    Ok(if headers.contains_key(name) { Some(out) } else { None })
}

fn parse_dictionary(value: &str, what: &str) -> Result<Dictionary, HttpSigError> {
    if value.bytes().filter(|b| *b == b':').count() > MAX_COLONS {
        return Err(malformed(format!("{what} has too many members")));
    }
    let dict = Parser::parse_dictionary(value.as_bytes())
        .map_err(|e| malformed(format!("{what} is not a structured dictionary (RFC 8941): {}", e.trim_start_matches("parse_"))))?;
    if dict.is_empty() {
        return Err(malformed(format!("{what} is empty")));
    }
    if dict.len() > MAX_SIGNATURES {
        return Err(malformed(format!("{what} has more than {MAX_SIGNATURES} signatures")));
    }
    Ok(dict)
}

/// Validates one signature's inner list (components and parameters) into a [`SignatureRequest`].
fn from_inner_list(label: &str, inner: &InnerList, signature: Vec<u8>) -> Result<SignatureRequest, HttpSigError> {
    if inner.items.len() > MAX_COMPONENTS {
        return Err(malformed(format!("`{label}` covers {} components; at most {MAX_COMPONENTS} are accepted", inner.items.len())));
    }
    if inner.params.len() > MAX_PARAMS {
        return Err(malformed(format!("`{label}` has more than {MAX_PARAMS} parameters")));
    }
    let mut components: Vec<Component> = Vec::with_capacity(inner.items.len());
    for item in &inner.items {
        let c = parse_component(item)?;
        if components.iter().any(|o| o.identifier == c.identifier) {
            return Err(malformed(format!("{} is listed twice; list each component once", c.identifier)));
        }
        components.push(c);
    }
    let (mut created, mut expires, mut nonce, mut key_id, mut alg, mut tag) = (None, None, None, None, None, None);
    for (name, value) in &inner.params {
        match name.as_str() {
            "created" => created = Some(int_param(name, value)?),
            "expires" => expires = Some(int_param(name, value)?),
            "nonce" => nonce = Some(str_param(name, value)?),
            "keyid" => key_id = Some(str_param(name, value)?),
            "alg" => alg = Some(str_param(name, value)?),
            "tag" => tag = Some(str_param(name, value)?),
            // Unknown parameters are covered (they are in @signature-params) and otherwise ignored.
            _ => {}
        }
    }
    let Some(key_id) = key_id else {
        return Err(malformed(format!("`{label}` has no keyid parameter; add keyid=\"<your registered key id>\"")));
    };
    let params_line = vec![ListEntry::InnerList(inner.clone())]
        .serialize_value()
        .map_err(|e| malformed(format!("`{label}` cannot be serialised: {e}")))?;
    Ok(SignatureRequest { label: label.to_owned(), key_id, alg, created, expires, nonce, tag, components, signature, params_line })
}

fn int_param(name: &str, v: &BareItem) -> Result<i64, HttpSigError> {
    v.as_int().ok_or_else(|| malformed(format!("the {name} parameter must be an integer (unix seconds)")))
}

fn str_param(name: &str, v: &BareItem) -> Result<String, HttpSigError> {
    match v.as_str() {
        Some("") => Err(malformed(format!("the {name} parameter is empty"))),
        Some(s) if s.len() <= MAX_PARAM_CHARS => Ok(s.to_owned()),
        Some(_) => Err(malformed(format!("the {name} parameter is longer than {MAX_PARAM_CHARS} characters"))),
        None => Err(malformed(format!("the {name} parameter must be a quoted string"))),
    }
}

fn parse_component(item: &Item) -> Result<Component, HttpSigError> {
    let BareItem::String(name) = &item.bare_item else {
        return Err(malformed("each covered component must be a quoted string, e.g. (\"@method\" \"@target-uri\")"));
    };
    if name.is_empty() || name.len() > MAX_PARAM_CHARS {
        return Err(malformed("a covered component name is empty or too long"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!("component names are lowercase: \"{}\"", name.to_ascii_lowercase())));
    }
    let identifier = item.serialize_value().map_err(|e| malformed(format!("component \"{name}\" cannot be serialised: {e}")))?;
    let no_params = |k: Kind| -> Result<Kind, HttpSigError> {
        match item.params.keys().next() {
            None => Ok(k),
            Some(p) if p == "req" => Err(malformed(format!("{identifier}: the req parameter is for signing responses, not requests"))),
            Some(p) => Err(malformed(format!("{identifier}: parameter `{p}` is not supported on {name}"))),
        }
    };
    let kind = match name.as_str() {
        "@method" => no_params(Kind::Method)?,
        "@target-uri" => no_params(Kind::TargetUri)?,
        "@authority" => no_params(Kind::Authority)?,
        "@scheme" => no_params(Kind::Scheme)?,
        "@request-target" => no_params(Kind::RequestTarget)?,
        "@path" => no_params(Kind::Path)?,
        "@query" => no_params(Kind::Query)?,
        "@query-param" => query_param_kind(&identifier, &item.params)?,
        "@status" => return Err(malformed("\"@status\" belongs to responses; a request cannot cover it")),
        "@signature-params" => return Err(malformed("\"@signature-params\" is added to the base automatically; do not list it")),
        n if n.starts_with('@') => return Err(malformed(format!("unknown derived component \"{n}\" (RFC 9421 §2.2)"))),
        n => field_kind(n, &identifier, &item.params)?,
    };
    Ok(Component { name: name.clone(), identifier, kind })
}

fn query_param_kind(identifier: &str, params: &Parameters) -> Result<Kind, HttpSigError> {
    let mut name = None;
    for (k, v) in params {
        match (k.as_str(), v) {
            ("name", BareItem::String(s)) => name = Some(s.clone()),
            ("name", _) => return Err(malformed(format!("{identifier}: name must be a quoted string"))),
            (p, _) => return Err(malformed(format!("{identifier}: parameter `{p}` is not supported on \"@query-param\""))),
        }
    }
    name.map(Kind::QueryParam).ok_or_else(|| malformed("\"@query-param\" needs a name parameter: \"@query-param\";name=\"id\""))
}

fn field_kind(name: &str, identifier: &str, params: &Parameters) -> Result<Kind, HttpSigError> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| malformed(format!("\"{name}\" is not a valid header field name")))?;
    let (mut sf, mut bs, mut key) = (false, false, None);
    for (k, v) in params {
        match (k.as_str(), v) {
            ("sf", BareItem::Boolean(true)) => sf = true,
            ("bs", BareItem::Boolean(true)) => bs = true,
            ("key", BareItem::String(s)) => key = Some(s.clone()),
            ("sf" | "bs", _) => return Err(malformed(format!("{identifier}: `{k}` takes no value"))),
            ("key", _) => return Err(malformed(format!("{identifier}: key must be a quoted string"))),
            ("req", _) => return Err(malformed(format!("{identifier}: the req parameter is for signing responses, not requests"))),
            ("tr", _) => return Err(malformed(format!("{identifier}: trailers cannot be covered at this gateway"))),
            (p, _) => return Err(malformed(format!("{identifier}: unknown component parameter `{p}`"))),
        }
    }
    let mode = match (sf, bs, key) {
        (false, false, None) => FieldMode::Raw,
        (false, true, None) => FieldMode::Bytes,
        (_, false, Some(k)) => FieldMode::Key(k),
        (true, false, None) if DICTIONARY_FIELDS.contains(&name) => FieldMode::Strict,
        (true, false, None) => return Err(malformed(format!("{identifier}: sf is supported only for {}", DICTIONARY_FIELDS.join(", ")))),
        (_, true, _) => return Err(malformed(format!("{identifier}: bs cannot be combined with sf or key"))),
    };
    Ok(Kind::Field(header, mode))
}

/// Replay protection for signature nonces.
///
/// A nonce is remembered per `keyid` until its signature's `created` leaves the window
/// (`created + window`); after that the signature is refused by the `created` check anyway, so
/// forgetting the nonce cannot re-admit it. Memory is bounded: expired entries are evicted on
/// every call, and when a shard still holds its share of `max_entries`, new nonces are *refused*
/// ([`HttpSigError::NonceCacheFull`], HTTP 503) rather than older ones forgotten, because
/// forgetting would re-open replays. Entries are SHA-256 digests of (keyid, nonce), so each costs
/// a fixed few dozen bytes whatever the caller sends. The window must be at least the window
/// given to [`verify`]. A cache lives in one node; nonces other nodes admitted are added with
/// [`NonceCache::remember`] when their gossip arrives (`shared`), so a replay sent to another
/// node is refused from then on. The capacity is therefore shared by the whole cluster's traffic.
pub struct NonceCache {
    shards: Vec<Mutex<Shard>>,
    window: i64,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    seen: HashMap<[u8; 32], i64>,
    by_expiry: BTreeSet<(i64, [u8; 32])>,
}

const NONCE_SHARDS: usize = 16;

impl NonceCache {
    /// A cache for signatures whose `created` is within ±`window_secs` of now, holding at most
    /// about `max_entries` nonces (rounded up to a multiple of the shard count).
    pub fn new(window_secs: i64, max_entries: usize) -> NonceCache {
        NonceCache {
            shards: (0..NONCE_SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window: window_secs.max(0),
            per_shard: max_entries.div_ceil(NONCE_SHARDS).max(1),
        }
    }

    /// `true` if this (keyid, nonce) is new and is now remembered; `false` if it was seen within
    /// the window, if `created` is outside the window, or if the cache is full (see
    /// [`NonceCache::admit`] for which).
    pub fn check_and_remember(&self, key_id: &str, nonce: &str, created: i64, now: i64) -> bool {
        self.admit(key_id, nonce, created, now).is_ok()
    }

    /// Like [`NonceCache::check_and_remember`], saying why a nonce is refused:
    /// [`HttpSigError::NonceReplayed`], [`HttpSigError::NonceCacheFull`] or
    /// [`HttpSigError::CreatedOutOfWindow`].
    pub fn admit(&self, key_id: &str, nonce: &str, created: i64, now: i64) -> Result<(), HttpSigError> {
        self.insert(key_id, nonce, created, now, true)
    }

    /// Remembers a nonce another node admitted, so that a replay here is refused. Already known
    /// is fine; a nonce whose `created` is outside the window is skipped (its signature would be
    /// refused anyway). Errs only with [`HttpSigError::NonceCacheFull`]: then it is not
    /// remembered, and the caller counts the loss.
    pub fn remember(&self, key_id: &str, nonce: &str, created: i64, now: i64) -> Result<(), HttpSigError> {
        match self.insert(key_id, nonce, created, now, false) {
            Err(HttpSigError::CreatedOutOfWindow { .. }) => Ok(()),
            other => other,
        }
    }

    fn insert(&self, key_id: &str, nonce: &str, created: i64, now: i64, refuse_known: bool) -> Result<(), HttpSigError> {
        if now.saturating_sub(created).unsigned_abs() > self.window.unsigned_abs() {
            return Err(HttpSigError::CreatedOutOfWindow { created, now, window: self.window });
        }
        let mut h = Sha256::new();
        h.update((key_id.len() as u64).to_be_bytes());
        h.update(key_id.as_bytes());
        h.update(nonce.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        let expiry = created.saturating_add(self.window);
        let mut shard = self.shard(id[0]);
        shard.evict(now);
        if shard.seen.contains_key(&id) {
            return if refuse_known { Err(HttpSigError::NonceReplayed) } else { Ok(()) };
        }
        if shard.seen.len() >= self.per_shard {
            return Err(HttpSigError::NonceCacheFull);
        }
        shard.seen.insert(id, expiry);
        shard.by_expiry.insert((expiry, id));
        Ok(())
    }

    /// Nonces currently held, for metrics (expired ones are evicted lazily, shard by shard, so
    /// this can briefly include some).
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard_at(i).seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, byte: u8) -> MutexGuard<'_, Shard> {
        self.shard_at(usize::from(byte) % self.shards.len())
    }

    fn shard_at(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave a shard inconsistent in a way that matters
        // (at worst an entry is in one index only), so a poisoned lock is used as is.
        self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shard {
    fn evict(&mut self, now: i64) {
        while let Some(&(expiry, id)) = self.by_expiry.first() {
            if expiry >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&id);
        }
    }
}

/// A private key the appliance (or a test, or a tool acting as a consumer) signs with.
#[derive(Clone)]
pub enum SignerKey {
    Hmac(Vec<u8>),
    RsaPss(Box<rsa::RsaPrivateKey>),
    RsaV15(Box<rsa::RsaPrivateKey>),
    EcdsaP256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({})", self.alg().as_str())
    }
}

impl SignerKey {
    /// Reads a private key for `alg` from PEM: PKCS#8 (`BEGIN PRIVATE KEY`) for all, PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) for RSA, SEC1 (`BEGIN EC PRIVATE KEY`) for P-256.
    pub fn from_pem(alg: SigAlg, pem: &str) -> Result<SignerKey, HttpSigError> {
        let bad = |e: String| HttpSigError::Signing(format!("cannot read the {} private key: {e}", alg.as_str()));
        let pem = pem.trim();
        let rsa_key = || -> Result<Box<rsa::RsaPrivateKey>, HttpSigError> {
            if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
                rsa::RsaPrivateKey::from_pkcs1_pem(pem).map(Box::new).map_err(|e| bad(e.to_string()))
            } else {
                rsa::RsaPrivateKey::from_pkcs8_pem(pem).map(Box::new).map_err(|e| bad(e.to_string()))
            }
        };
        match alg {
            SigAlg::HmacSha256 => Err(bad("hmac-sha256 keys are shared secrets, not PEM".into())),
            SigAlg::RsaPssSha512 => Ok(SignerKey::RsaPss(rsa_key()?)),
            SigAlg::RsaV15Sha256 => Ok(SignerKey::RsaV15(rsa_key()?)),
            SigAlg::EcdsaP256Sha256 => {
                let secret = if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
                    p256::SecretKey::from_sec1_pem(pem).map_err(|e| bad(e.to_string()))?
                } else {
                    p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| bad(e.to_string()))?
                };
                Ok(SignerKey::EcdsaP256(secret.into()))
            }
            SigAlg::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map(SignerKey::Ed25519).map_err(|e| bad(e.to_string())),
        }
    }

    pub fn alg(&self) -> SigAlg {
        match self {
            SignerKey::Hmac(_) => SigAlg::HmacSha256,
            SignerKey::RsaPss(_) => SigAlg::RsaPssSha512,
            SignerKey::RsaV15(_) => SigAlg::RsaV15Sha256,
            SignerKey::EcdsaP256(_) => SigAlg::EcdsaP256Sha256,
            SignerKey::Ed25519(_) => SigAlg::Ed25519,
        }
    }

    fn sign_bytes(&self, base: &[u8]) -> Result<Vec<u8>, HttpSigError> {
        let failed = |e: rsa::signature::Error| HttpSigError::Signing(e.to_string());
        Ok(match self {
            SignerKey::Hmac(secret) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|e| HttpSigError::Signing(e.to_string()))?;
                mac.update(base);
                mac.finalize().into_bytes().to_vec()
            }
            SignerKey::RsaPss(k) => rsa::pss::SigningKey::<Sha512>::new(k.as_ref().clone())
                .try_sign_with_rng(&mut rand::thread_rng(), base)
                .map_err(failed)?
                .to_vec(),
            SignerKey::RsaV15(k) => rsa::pkcs1v15::SigningKey::<Sha256>::new(k.as_ref().clone()).try_sign(base).map_err(failed)?.to_vec(),
            SignerKey::EcdsaP256(k) => {
                let s: p256::ecdsa::Signature = k.try_sign(base).map_err(failed)?;
                s.to_bytes().to_vec()
            }
            SignerKey::Ed25519(k) => k.try_sign(base).map_err(failed)?.to_bytes().to_vec(),
        })
    }
}

/// Signature parameters for [`sign_with`].
#[derive(Debug, Clone, Copy)]
pub struct SignOptions<'a> {
    pub label: &'a str,
    pub key_id: &'a str,
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<&'a str>,
    pub tag: Option<&'a str>,
    /// Whether to send the `alg` parameter (informative; verifiers decide by the key).
    pub include_alg: bool,
}

/// Signs `req` with the appliance's Ed25519 key for an upstream call. `components` are names
/// (`"@method"`, `"content-digest"`) or serialised identifiers with parameters
/// (`"\"@query-param\";name=\"id\""`). Returns the `Signature-Input` and `Signature` values.
pub fn sign(
    req: &RequestView<'_>,
    components: &[&str],
    key_id: &str,
    key: &ed25519_dalek::SigningKey,
    created: i64,
    nonce: &str,
    label: &str,
) -> Result<(String, String), HttpSigError> {
    let opts = SignOptions { label, key_id, created, expires: None, nonce: Some(nonce), tag: None, include_alg: true };
    sign_with(req, components, &opts, &SignerKey::Ed25519(key.clone()))
}

/// Signs `req` with any of the five algorithms; returns the `Signature-Input` and `Signature`
/// values. The signature base is built by the same code [`verify`] uses.
pub fn sign_with(
    req: &RequestView<'_>,
    components: &[&str],
    opts: &SignOptions<'_>,
    key: &SignerKey,
) -> Result<(String, String), HttpSigError> {
    let failed = |what: &str, e: &str| HttpSigError::Signing(format!("{what}: {e}"));
    let mut items = Vec::with_capacity(components.len());
    for c in components {
        let item = if c.starts_with('"') {
            Parser::parse_item(c.as_bytes()).map_err(|e| failed(&format!("component {c}"), e))?
        } else {
            Item::new(BareItem::String((*c).to_owned()))
        };
        items.push(item);
    }
    let mut params = Parameters::new();
    params.insert("created".into(), BareItem::Integer(opts.created));
    if let Some(e) = opts.expires {
        params.insert("expires".into(), BareItem::Integer(e));
    }
    if let Some(n) = opts.nonce {
        params.insert("nonce".into(), BareItem::String(n.to_owned()));
    }
    params.insert("keyid".into(), BareItem::String(opts.key_id.to_owned()));
    if opts.include_alg {
        params.insert("alg".into(), BareItem::String(key.alg().as_str().to_owned()));
    }
    if let Some(t) = opts.tag {
        params.insert("tag".into(), BareItem::String(t.to_owned()));
    }
    let inner = InnerList::with_params(items, params);
    let mut input = Dictionary::new();
    input.insert(opts.label.to_owned(), ListEntry::InnerList(inner.clone()));
    let input = input.serialize_value().map_err(|e| failed("Signature-Input", e))?;
    let parsed = from_inner_list(opts.label, &inner, Vec::new())?;
    let base = signature_base(&parsed, req)?;
    let sig = key.sign_bytes(base.as_bytes())?;
    let mut out = Dictionary::new();
    out.insert(opts.label.to_owned(), ListEntry::Item(Item::new(BareItem::ByteSeq(sig))));
    let out = out.serialize_value().map_err(|e| failed("Signature", e))?;
    Ok((input, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // RFC 9421 Appendix B.1 test keys (public, for testing only).
    const RSA_PUBLIC_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsPBRrw
WEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsdJKFq
MGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75jfZg
kne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKIlE0P
uKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZSFlQ
PSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQAB
-----END RSA PUBLIC KEY-----";
    const RSA_PRIVATE_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEqAIBAAKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsP
BRrwWEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsd
JKFqMGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75
jfZgkne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKI
lE0PuKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZ
SFlQPSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQABAoIBAG/JZuSWdoVHbi56
vjgCgkjg3lkO1KrO3nrdm6nrgA9P9qaPjxuKoWaKO1cBQlE1pSWp/cKncYgD5WxE
CpAnRUXG2pG4zdkzCYzAh1i+c34L6oZoHsirK6oNcEnHveydfzJL5934egm6p8DW
+m1RQ70yUt4uRc0YSor+q1LGJvGQHReF0WmJBZHrhz5e63Pq7lE0gIwuBqL8SMaA
yRXtK+JGxZpImTq+NHvEWWCu09SCq0r838ceQI55SvzmTkwqtC+8AT2zFviMZkKR
Qo6SPsrqItxZWRty2izawTF0Bf5S2VAx7O+6t3wBsQ1sLptoSgX3QblELY5asI0J
YFz7LJECgYkAsqeUJmqXE3LP8tYoIjMIAKiTm9o6psPlc8CrLI9CH0UbuaA2JCOM
cCNq8SyYbTqgnWlB9ZfcAm/cFpA8tYci9m5vYK8HNxQr+8FS3Qo8N9RJ8d0U5Csw
DzMYfRghAfUGwmlWj5hp1pQzAuhwbOXFtxKHVsMPhz1IBtF9Y8jvgqgYHLbmyiu1
mwJ5AL0pYF0G7x81prlARURwHo0Yf52kEw1dxpx+JXER7hQRWQki5/NsUEtv+8RT
qn2m6qte5DXLyn83b1qRscSdnCCwKtKWUug5q2ZbwVOCJCtmRwmnP131lWRYfj67
B/xJ1ZA6X3GEf4sNReNAtaucPEelgR2nsN0gKQKBiGoqHWbK1qYvBxX2X3kbPDkv
9C+celgZd2PW7aGYLCHq7nPbmfDV0yHcWjOhXZ8jRMjmANVR/eLQ2EfsRLdW69bn
f3ZD7JS1fwGnO3exGmHO3HZG+6AvberKYVYNHahNFEw5TsAcQWDLRpkGybBcxqZo
81YCqlqidwfeO5YtlO7etx1xLyqa2NsCeG9A86UjG+aeNnXEIDk1PDK+EuiThIUa
/2IxKzJKWl1BKr2d4xAfR0ZnEYuRrbeDQYgTImOlfW6/GuYIxKYgEKCFHFqJATAG
IxHrq1PDOiSwXd2GmVVYyEmhZnbcp8CxaEMQoevxAta0ssMK3w6UsDtvUvYvF22m
qQKBiD5GwESzsFPy3Ga0MvZpn3D6EJQLgsnrtUPZx+z2Ep2x0xc5orneB5fGyF1P
WtP+fG5Q6Dpdz3LRfm+KwBCWFKQjg7uTxcjerhBWEYPmEMKYwTJF5PBG9/ddvHLQ
EQeNC8fHGg4UXU8mhHnSBt3EA10qQJfRDs15M38eG2cYwB1PZpDHScDnDA0=
-----END RSA PRIVATE KEY-----";
    const RSA_PSS_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----";
    const ECC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----";
    const ECC_PRIVATE_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----";
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
    const SHARED_SECRET_B64: &str = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

    const RFC_CREATED: i64 = 1618884473;
    const RFC_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
    const WINDOW: i64 = 300;
    const NOW: i64 = 1_750_000_000;

    fn secret() -> Vec<u8> {
        B64.decode(SHARED_SECRET_B64).unwrap()
    }

    /// An owned request that lends out [`RequestView`]s.
    #[derive(Clone)]
    struct Req {
        method: Method,
        scheme: String,
        authority: String,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
        has_body: bool,
    }

    impl Req {
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                scheme: &self.scheme,
                authority: &self.authority,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                has_body: self.has_body,
            }
        }
        fn header(mut self, name: &'static str, value: &str) -> Req {
            self.headers.append(name, HeaderValue::from_str(value).unwrap());
            self
        }
        fn set(mut self, name: &'static str, value: &str) -> Req {
            self.headers.insert(name, HeaderValue::from_str(value).unwrap());
            self
        }
    }

    /// The RFC 9421 Appendix B.2 test request: `POST https://example.com/foo?param=Value&Pet=dog`.
    fn rfc_request() -> Req {
        Req {
            method: Method::POST,
            scheme: "https".into(),
            authority: "example.com".into(),
            path: "/foo".into(),
            query: Some("param=Value&Pet=dog".into()),
            headers: HeaderMap::new(),
            has_body: true,
        }
        .header("host", "example.com")
        .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
        .header("content-type", "application/json")
        .header("content-digest", RFC_DIGEST)
        .header("content-length", "18")
    }

    fn with_sig(req: &Req, input: &str, sig: &str) -> Req {
        req.clone().set("signature-input", input).set("signature", sig)
    }

    /// The signature base for a `Signature-Input` value over `req` (no crypto, no policy).
    fn base_of(req: &Req, input: &str) -> Result<String, HttpSigError> {
        let r = with_sig(req, input, "sig=:AAAA:, sig1=:AAAA:");
        let label = input.split('=').next().unwrap();
        let parsed = parse(&r.headers, Some(label))?;
        signature_base(&parsed, &r.view())
    }

    fn rfc_vector(req: &Req, input: &str, sig: &str, key: &ParsedKey, expected_base: &str) -> SignatureRequest {
        let r = with_sig(req, input, sig);
        let parsed = parse(&r.headers, None).unwrap();
        let base = signature_base(&parsed, &r.view()).unwrap();
        assert_eq!(base, expected_base);
        assert!(key.verify_bytes(base.as_bytes(), &parsed.signature), "RFC signature must verify");
        parsed
    }

    #[test]
    fn rfc_b21_minimal_rsa_pss() {
        let key = ParsedKey::from_pem(SigAlg::RsaPssSha512, RSA_PSS_PUBLIC).unwrap();
        let input = r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
        let sig = "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:";
        let expected = r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
        let req = rfc_request();
        let parsed = rfc_vector(&req, input, sig, &key, expected);
        assert_eq!(parsed.nonce.as_deref(), Some("b3k2pp5k7z-50gnwp.yemd"));
        // Cryptographically fine, but covers nothing: the gateway's policy refuses it.
        let r = with_sig(&req, input, sig);
        let e = verify(&parsed, &r.view(), &key, SigAlg::RsaPssSha512, RFC_CREATED, WINDOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_COMPONENTS_INSUFFICIENT");
    }

    #[test]
    fn rfc_b22_selective_rsa_pss_with_query_param() {
        let key = ParsedKey::from_pem(SigAlg::RsaPssSha512, RSA_PSS_PUBLIC).unwrap();
        let input = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
        let sig = "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:";
        let expected = format!(
            "\"@authority\": example.com\n\"content-digest\": {RFC_DIGEST}\n\"@query-param\";name=\"Pet\": dog\n\"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
        );
        let parsed = rfc_vector(&rfc_request(), input, sig, &key, &expected);
        assert_eq!(parsed.tag.as_deref(), Some("header-example"));
    }

    #[test]
    fn rfc_b23_full_coverage_passes_policy() {
        let key = ParsedKey::from_pem(SigAlg::RsaPssSha512, RSA_PSS_PUBLIC).unwrap();
        let input = r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#;
        let sig = "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:";
        let expected = format!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@query\": ?param=Value&Pet=dog\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-digest\": {RFC_DIGEST}\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\""
        );
        let req = rfc_request();
        let parsed = rfc_vector(&req, input, sig, &key, &expected);
        let r = with_sig(&req, input, sig);
        let v = verify(&parsed, &r.view(), &key, SigAlg::RsaPssSha512, RFC_CREATED + 10, WINDOW).unwrap();
        assert_eq!(
            v,
            Verified {
                key_id: "test-key-rsa-pss".into(),
                alg: SigAlg::RsaPssSha512,
                created: RFC_CREATED,
                nonce: None,
                covers_content_digest: true
            }
        );
        // The same signature with the key registered for another algorithm is refused.
        let e = verify(&parsed, &r.view(), &key, SigAlg::RsaV15Sha256, RFC_CREATED, WINDOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_ALGORITHM_MISMATCH");
        // Tampering with any covered part breaks it.
        let mut t = r.clone();
        t.query = Some("param=Value&Pet=cat".into());
        assert_eq!(verify(&parsed, &t.view(), &key, SigAlg::RsaPssSha512, RFC_CREATED, WINDOW).unwrap_err().code(), "SIGNATURE_INVALID");
    }

    #[test]
    fn rfc_b24_ecdsa_response_signature_verifies() {
        // B.2.4 signs a response; only the crypto applies to a request gateway, so the base is
        // taken verbatim from the RFC.
        let key = ParsedKey::from_pem(SigAlg::EcdsaP256Sha256, ECC_PUBLIC).unwrap();
        let base = "\"@status\": 200\n\"content-type\": application/json\n\"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\"content-length\": 23\n\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
        let sig = B64.decode("wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==").unwrap();
        assert!(key.verify_bytes(base.as_bytes(), &sig));
        assert!(!key.verify_bytes(base.replace("200", "201").as_bytes(), &sig));
        // A request cannot cover @status.
        let e = base_of(&rfc_request(), r#"sig=("@status");created=1;keyid="k""#).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_MALFORMED");
    }

    #[test]
    fn rfc_b25_hmac_sha256_exact() {
        let key = ParsedKey::hmac(&secret());
        let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
        let sig = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
        let expected = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\"";
        let req = rfc_request();
        let parsed = rfc_vector(&req, input, sig, &key, expected);
        // HMAC is deterministic: signing the same base gives the RFC's bytes.
        let mine = SignerKey::Hmac(secret()).sign_bytes(expected.as_bytes()).unwrap();
        assert_eq!(B64.encode(mine), "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=");
        let r = with_sig(&req, input, sig);
        let e = verify(&parsed, &r.view(), &key, SigAlg::HmacSha256, RFC_CREATED, WINDOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_COMPONENTS_INSUFFICIENT");
        assert!(e.to_string().contains("@method"));
    }

    #[test]
    fn rfc_b26_ed25519_exact() {
        let key = ParsedKey::from_pem(SigAlg::Ed25519, ED25519_PUBLIC).unwrap();
        let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
        let sig = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
        let expected = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
        let req = rfc_request();
        let parsed = rfc_vector(&req, input, sig, &key, expected);
        let signer = SignerKey::from_pem(SigAlg::Ed25519, ED25519_PRIVATE).unwrap();
        assert_eq!(
            B64.encode(signer.sign_bytes(expected.as_bytes()).unwrap()),
            "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
        );
        // The request has a query the signature does not cover, and a body without content-digest.
        let r = with_sig(&req, input, sig);
        let e = verify(&parsed, &r.view(), &key, SigAlg::Ed25519, RFC_CREATED, WINDOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_COMPONENTS_INSUFFICIENT");
        assert!(e.to_string().contains("@query"), "{e}");
    }

    #[test]
    fn rfc_2_1_http_fields() {
        let req = rfc_request()
            .set("host", "www.example.com")
            .set("date", "Tue, 20 Apr 2021 02:07:56 GMT")
            .header("x-ows-header", "   Leading and trailing whitespace.   ")
            .header("cache-control", "max-age=60")
            .header("cache-control", "   must-revalidate")
            .header("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)")
            .header("x-empty-header", "");
        let b = base_of(&req, r#"sig=("host" "date" "x-ows-header" "cache-control" "example-dict" "x-empty-header");keyid="k""#).unwrap();
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "\"host\": www.example.com",
                "\"date\": Tue, 20 Apr 2021 02:07:56 GMT",
                "\"x-ows-header\": Leading and trailing whitespace.",
                "\"cache-control\": max-age=60, must-revalidate",
                "\"example-dict\": a=1,    b=2;x=1;y=2,   c=(a   b   c)",
                "\"x-empty-header\": ",
            ]
        );
    }

    #[test]
    fn rfc_2_1_2_dictionary_members_and_2_1_3_byte_sequences() {
        let req = rfc_request()
            .header("example-dict", " a=1, b=2;x=1;y=2, c=(a   b    c), d")
            .header("example-header", "value, with, lots")
            .header("example-header", "of, commas");
        let b = base_of(
            &req,
            r#"sig=("example-dict";key="a" "example-dict";key="d" "example-dict";key="b" "example-dict";key="c" "example-header";bs);keyid="k""#,
        )
        .unwrap();
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "\"example-dict\";key=\"a\": 1",
                "\"example-dict\";key=\"d\": ?1",
                "\"example-dict\";key=\"b\": 2;x=1;y=2",
                "\"example-dict\";key=\"c\": (a b c)",
                "\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:",
            ]
        );
        let e = base_of(&req, r#"sig=("example-dict";key="zz");keyid="k""#).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_INVALID");
        // ;sf re-serialises a known dictionary field strictly.
        let req = req.set("content-digest", "sha-256=:AAAA:,    sha-512=:BBBB:");
        let b = base_of(&req, r#"sig=("content-digest";sf);keyid="k""#).unwrap();
        assert!(b.starts_with("\"content-digest\";sf: sha-256=:AAAA:, sha-512=:BBBB:\n"), "{b}");
        let e = base_of(&req, r#"sig=("example-dict";sf);keyid="k""#).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_MALFORMED");
    }

    #[test]
    fn rfc_2_2_derived_components() {
        let mut req = rfc_request();
        req.method = Method::GET;
        req.authority = "www.Example.com:443".into();
        req.path = "/path".into();
        req.query = Some("param=value&foo=bar&baz=bat%2Dman".into());
        let b =
            base_of(&req, r#"sig=("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query");keyid="k""#).unwrap();
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(
            lines[..7],
            [
                "\"@method\": GET",
                "\"@target-uri\": https://www.example.com/path?param=value&foo=bar&baz=bat%2Dman",
                "\"@authority\": www.example.com",
                "\"@scheme\": https",
                "\"@request-target\": /path?param=value&foo=bar&baz=bat%2Dman",
                "\"@path\": /path",
                "\"@query\": ?param=value&foo=bar&baz=bat%2Dman",
            ]
        );
        // No query: "@query" is a lone "?"; an empty path is "/"; a non-default port stays.
        req.query = None;
        req.path = String::new();
        req.authority = "example.com:8443".into();
        let b = base_of(&req, r#"sig=("@query" "@path" "@authority" "@target-uri");keyid="k""#).unwrap();
        assert!(
            b.starts_with("\"@query\": ?\n\"@path\": /\n\"@authority\": example.com:8443\n\"@target-uri\": https://example.com:8443/\n"),
            "{b}"
        );
    }

    #[test]
    fn rfc_2_2_8_query_params() {
        let mut req = rfc_request();
        req.query = Some("var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something".into());
        let b = base_of(
            &req,
            r#"sig=("@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20");keyid="k""#,
        )
        .unwrap();
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "\"@query-param\";name=\"var\": this%20is%20a%20big%0Amultiline%20value",
                "\"@query-param\";name=\"bar\": with%20plus%20whitespace",
                "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something",
            ]
        );
        // A repeated parameter gives one line per occurrence, in order; an absent one is an error.
        req.query = Some("a=1&b=2&a=3&a".into());
        let b = base_of(&req, r#"sig=("@query-param";name="a");keyid="k""#).unwrap();
        assert!(b.starts_with("\"@query-param\";name=\"a\": 1\n\"@query-param\";name=\"a\": 3\n\"@query-param\";name=\"a\": \n"), "{b}");
        assert_eq!(base_of(&req, r#"sig=("@query-param";name="zz");keyid="k""#).unwrap_err().code(), "SIGNATURE_INVALID");
        assert_eq!(base_of(&req, r#"sig=("@query-param");keyid="k""#).unwrap_err().code(), "SIGNATURE_MALFORMED");
        // Hostile encodings decode without panicking.
        req.query = Some("%=%&%%41=%4&%zz=%C3&\u{00e9}=x".into());
        let _ = base_of(&req, r#"sig=("@query-param";name="%25");keyid="k""#);
        assert_eq!(form_decode("%4"), "%4");
        assert_eq!(form_decode("%41%"), "A%");
        assert_eq!(form_decode("%C3"), "\u{fffd}");
    }

    /// A request every policy accepts, and the components that cover it.
    fn good_request() -> Req {
        Req {
            method: Method::POST,
            scheme: "https".into(),
            authority: "lgsp.example.vn".into(),
            path: "/dancu/v1/congdan".into(),
            query: Some("id=001&ky=2024".into()),
            headers: HeaderMap::new(),
            has_body: true,
        }
        .header("content-type", "application/json")
        .header("content-digest", &crate::gateway::digest::content_digest_sha256(b"{}"))
        .header("x-request-id", "abc")
    }

    const GOOD: &[&str] = &["@method", "@target-uri", "content-digest", "content-type"];

    fn opts(created: i64) -> SignOptions<'static> {
        SignOptions { label: "sig1", key_id: "key-1", created, expires: None, nonce: Some("n-1"), tag: None, include_alg: true }
    }

    fn signers() -> Vec<(SignerKey, ParsedKey)> {
        vec![
            (SignerKey::Hmac(secret()), ParsedKey::hmac(&secret())),
            (
                SignerKey::from_pem(SigAlg::RsaPssSha512, RSA_PRIVATE_PKCS1).unwrap(),
                ParsedKey::from_pem(SigAlg::RsaPssSha512, RSA_PUBLIC_PKCS1).unwrap(),
            ),
            (
                SignerKey::from_pem(SigAlg::RsaV15Sha256, RSA_PRIVATE_PKCS1).unwrap(),
                ParsedKey::from_pem(SigAlg::RsaV15Sha256, RSA_PUBLIC_PKCS1).unwrap(),
            ),
            (
                SignerKey::from_pem(SigAlg::EcdsaP256Sha256, ECC_PRIVATE_SEC1).unwrap(),
                ParsedKey::from_pem(SigAlg::EcdsaP256Sha256, ECC_PUBLIC).unwrap(),
            ),
            (SignerKey::from_pem(SigAlg::Ed25519, ED25519_PRIVATE).unwrap(), ParsedKey::from_pem(SigAlg::Ed25519, ED25519_PUBLIC).unwrap()),
        ]
    }

    fn signed(req: &Req, components: &[&str], o: &SignOptions<'_>, key: &SignerKey) -> Req {
        let (input, sig) = sign_with(&req.view(), components, o, key).unwrap();
        with_sig(req, &input, &sig)
    }

    fn check(req: &Req, key: &ParsedKey, now: i64) -> Result<Verified, HttpSigError> {
        let sig = parse(&req.headers, None)?;
        verify(&sig, &req.view(), key, key.alg(), now, WINDOW)
    }

    #[test]
    fn round_trip_all_five_algorithms() {
        let req = good_request();
        for (signer, key) in signers() {
            let alg = signer.alg();
            let r = signed(&req, GOOD, &opts(NOW), &signer);
            let v = check(&r, &key, NOW).unwrap_or_else(|e| panic!("{}: {e}", alg.as_str()));
            assert_eq!(v, Verified { key_id: "key-1".into(), alg, created: NOW, nonce: Some("n-1".into()), covers_content_digest: true });
            let input = r.headers["signature-input"].to_str().unwrap();
            assert_eq!(
                input,
                format!(
                    "sig1=(\"@method\" \"@target-uri\" \"content-digest\" \"content-type\");created={NOW};nonce=\"n-1\";keyid=\"key-1\";alg=\"{}\"",
                    alg.as_str()
                )
            );
            // Authority + path + query instead of the target URI.
            let r = signed(&req, &["@method", "@authority", "@path", "@query", "content-digest"], &opts(NOW), &signer);
            check(&r, &key, NOW).unwrap();
            // Uncovered headers may change in transit.
            let r = r.set("x-request-id", "changed").header("via", "1.1 proxy");
            check(&r, &key, NOW).unwrap();
            // Another key of the same algorithm does not verify.
            if let ParsedKey::Hmac(_) = key {
                let e = check(&signed(&req, GOOD, &opts(NOW), &SignerKey::Hmac(b"other".to_vec())), &key, NOW).unwrap_err();
                assert_eq!(e.code(), "SIGNATURE_INVALID");
            }
        }
    }

    #[test]
    fn sign_ed25519_for_upstream_and_verify() {
        let signer = ed25519_dalek::SigningKey::from_pkcs8_pem(ED25519_PRIVATE).unwrap();
        let key = ParsedKey::from_pem(SigAlg::Ed25519, ED25519_PUBLIC).unwrap();
        let req = good_request();
        let (input, sig) = sign(&req.view(), GOOD, "lgsp-node-1", &signer, NOW, "nonce-xyz", "lgsp").unwrap();
        assert!(input.starts_with("lgsp=(\"@method\" \"@target-uri\" \"content-digest\" \"content-type\");created="), "{input}");
        assert!(input.contains("alg=\"ed25519\""));
        let r = with_sig(&req, &input, &sig);
        let v = check(&r, &key, NOW + 5).unwrap();
        assert_eq!(v.nonce.as_deref(), Some("nonce-xyz"));
        assert_eq!(v.key_id, "lgsp-node-1");
        // Components with parameters are accepted in serialised form.
        let (input, _) = sign(&req.view(), &["@method", "\"@query-param\";name=\"id\""], "k", &signer, NOW, "n", "s").unwrap();
        assert!(input.contains("\"@query-param\";name=\"id\""), "{input}");
        // Signing refuses what verification would refuse.
        assert!(sign(&req.view(), &["@status"], "k", &signer, NOW, "n", "s").is_err());
        assert!(sign(&req.view(), &["@method"], "k", &signer, NOW, "n", "Bad Label").is_err());
        assert!(sign(&req.view(), &["\"unterminated"], "k", &signer, NOW, "n", "s").is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let req = good_request();
        for (signer, key) in signers() {
            let r = signed(&req, GOOD, &opts(NOW), &signer);
            let mut cases: Vec<(&str, Req)> = Vec::new();
            let mut t = r.clone();
            t.method = Method::PUT;
            cases.push(("method", t));
            let mut t = r.clone();
            t.path = "/dancu/v1/congdan2".into();
            cases.push(("path", t));
            let mut t = r.clone();
            t.query = Some("id=002&ky=2024".into());
            cases.push(("query", t));
            let mut t = r.clone();
            t.query = None;
            cases.push(("query removed", t));
            let mut t = r.clone();
            t.authority = "evil.example".into();
            cases.push(("authority", t));
            let mut t = r.clone();
            t.scheme = "http".into();
            cases.push(("scheme", t));
            cases.push(("header", r.clone().set("content-type", "text/plain")));
            cases.push(("header line added", r.clone().header("content-type", "text/plain")));
            cases.push(("digest", r.clone().set("content-digest", &crate::gateway::digest::content_digest_sha256(b"[]"))));
            let mut t = r.clone();
            t.headers.remove("content-type");
            cases.push(("header removed", t));
            let sig = r.headers["signature"].to_str().unwrap();
            let mut bytes = B64.decode(&sig["sig1=:".len()..sig.len() - 1]).unwrap();
            bytes[0] ^= 1;
            cases.push(("signature bit", r.clone().set("signature", &format!("sig1=:{}:", B64.encode(&bytes)))));
            let input = r.headers["signature-input"].to_str().unwrap().replace("n-1", "n-2");
            cases.push(("params", r.clone().set("signature-input", &input)));
            for (what, t) in cases {
                let e = check(&t, &key, NOW).unwrap_err();
                assert_eq!(e.code(), "SIGNATURE_INVALID", "{} {what}: {e}", key.alg().as_str());
            }
        }
    }

    #[test]
    fn policy_refusals() {
        let (signer, key) = signers().remove(4);
        let req = good_request();
        let insufficient = |components: &[&str], req: &Req| {
            let e = check(&signed(req, components, &opts(NOW), &signer), &key, NOW).unwrap_err();
            assert_eq!(e.code(), "SIGNATURE_COMPONENTS_INSUFFICIENT", "{components:?}: {e}");
            e.to_string()
        };
        assert!(insufficient(&["@target-uri", "content-digest"], &req).contains("@method"));
        assert!(insufficient(&["@method", "content-digest"], &req).contains("@target-uri"));
        insufficient(&["@method", "@authority", "content-digest"], &req);
        insufficient(&["@method", "@path", "@query", "content-digest"], &req);
        insufficient(&["@method", "@request-target", "@authority", "content-digest"], &req);
        assert!(insufficient(&["@method", "@authority", "@path", "content-digest"], &req).contains("@query"));
        assert!(insufficient(&["@method", "@target-uri"], &req).contains("content-digest"));
        insufficient(&["@method", "@target-uri", "\"content-digest\";key=\"sha-256\""], &req);
        // Without a query or a body, less is needed.
        let mut plain = req.clone();
        plain.query = None;
        plain.has_body = false;
        check(&signed(&plain, &["@method", "@authority", "@path"], &opts(NOW), &signer), &key, NOW).unwrap();
        let v = check(&signed(&plain, &["@method", "@target-uri"], &opts(NOW), &signer), &key, NOW).unwrap();
        assert!(!v.covers_content_digest);
        // Whole-field forms of content-digest count.
        let v = check(&signed(&req, &["@method", "@target-uri", "\"content-digest\";sf"], &opts(NOW), &signer), &key, NOW).unwrap();
        assert!(v.covers_content_digest);
        check(&signed(&req, &["@method", "@target-uri", "\"content-digest\";bs"], &opts(NOW), &signer), &key, NOW).unwrap();
        // The body needs a Content-Digest header to cover.
        let mut t = req.clone();
        t.headers.remove("content-digest");
        let e = sign_with(&t.view(), GOOD, &opts(NOW), &signer).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_INVALID");
    }

    #[test]
    fn created_and_expires() {
        let (signer, key) = signers().remove(0);
        let req = good_request();
        for created in [NOW - WINDOW, NOW + WINDOW, NOW] {
            check(&signed(&req, GOOD, &opts(created), &signer), &key, NOW).unwrap();
        }
        for created in [NOW - WINDOW - 1, NOW + WINDOW + 1, 0, -NOW, 999_999_999_999_999] {
            let e = check(&signed(&req, GOOD, &opts(created), &signer), &key, NOW).unwrap_err();
            assert_eq!(e.code(), "SIGNATURE_CREATED_OUT_OF_WINDOW", "{created}");
            assert!(e.to_string().contains("clock"));
        }
        // A negative window behaves as zero.
        let r = signed(&req, GOOD, &opts(NOW), &signer);
        let sig = parse(&r.headers, None).unwrap();
        assert!(verify(&sig, &r.view(), &key, SigAlg::HmacSha256, NOW, -5).is_ok());
        assert!(verify(&sig, &r.view(), &key, SigAlg::HmacSha256, NOW + 1, -5).is_err());
        // expires in the past is refused, now or later accepted.
        for (expires, ok) in [(NOW - 1, false), (NOW, true), (NOW + 60, true)] {
            let o = SignOptions { expires: Some(expires), ..opts(NOW - 10) };
            let res = check(&signed(&req, GOOD, &o, &signer), &key, NOW);
            assert_eq!(res.is_ok(), ok, "{expires}: {res:?}");
            if !ok {
                assert_eq!(res.unwrap_err().code(), "SIGNATURE_EXPIRED");
            }
        }
        // created is required.
        let r = with_sig(
            &req,
            r#"sig1=("@method" "@target-uri" "content-digest");keyid="key-1";nonce="x""#,
            "sig1=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
        );
        let e = check(&r, &key, NOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_MALFORMED");
        assert!(e.to_string().contains("created"));
    }

    #[test]
    fn algorithm_checks() {
        let req = good_request();
        let all = signers();
        let (hmac_signer, hmac_key) = &all[0];
        let (_, ed_key) = &all[4];
        // alg parameter disagreeing with the key: refused before any crypto.
        let r = signed(&req, GOOD, &opts(NOW), hmac_signer);
        let input = r.headers["signature-input"].to_str().unwrap().replace("hmac-sha256", "ed25519");
        let t = r.clone().set("signature-input", &input);
        assert_eq!(check(&t, hmac_key, NOW).unwrap_err().code(), "SIGNATURE_ALGORITHM_MISMATCH");
        let input = r.headers["signature-input"].to_str().unwrap().replace("hmac-sha256", "none");
        let t = r.clone().set("signature-input", &input);
        assert_eq!(check(&t, hmac_key, NOW).unwrap_err().code(), "SIGNATURE_ALGORITHM_MISMATCH");
        // An HMAC-signed request checked against an Ed25519 key: the key decides, and it fails.
        let o = SignOptions { include_alg: false, ..opts(NOW) };
        let r = signed(&req, GOOD, &o, hmac_signer);
        assert_eq!(check(&r, ed_key, NOW).unwrap_err().code(), "SIGNATURE_INVALID");
        // The registry's algorithm must match the parsed key.
        let sig = parse(&r.headers, None).unwrap();
        let e = verify(&sig, &r.view(), hmac_key, SigAlg::Ed25519, NOW, WINDOW).unwrap_err();
        assert_eq!(e.code(), "SIGNATURE_ALGORITHM_MISMATCH");
        // Without alg, the key's algorithm is used.
        check(&r, hmac_key, NOW).unwrap();
    }

    #[test]
    fn label_selection() {
        let req = good_request();
        let all = signers();
        let (a, ka) = &all[0];
        let (b, kb) = &all[4];
        let (ia, sa) = sign_with(&req.view(), GOOD, &SignOptions { label: "first", ..opts(NOW) }, a).unwrap();
        let (ib, sb) = sign_with(&req.view(), GOOD, &SignOptions { label: "second", ..opts(NOW) }, b).unwrap();
        let r = req.clone().header("signature-input", &ia).header("signature-input", &ib).header("signature", &sb).header("signature", &sa);
        let first = parse(&r.headers, None).unwrap();
        assert_eq!(first.label, "first");
        verify(&first, &r.view(), ka, SigAlg::HmacSha256, NOW, WINDOW).unwrap();
        let second = parse(&r.headers, Some("second")).unwrap();
        verify(&second, &r.view(), kb, SigAlg::Ed25519, NOW, WINDOW).unwrap();
        assert_eq!(parse(&r.headers, Some("third")).unwrap_err(), HttpSigError::LabelMissing("third".into()));
        assert_eq!(parse(&r.headers, Some("third")).unwrap_err().code(), "SIGNATURE_MISSING");
        // Signature lacking the chosen label.
        let r2 = req.clone().set("signature-input", &ia).set("signature", &sb);
        assert_eq!(parse(&r2.headers, None).unwrap_err().code(), "SIGNATURE_MALFORMED");
    }

    #[test]
    fn missing_and_half_present() {
        let req = good_request();
        assert_eq!(parse(&req.headers, None).unwrap_err(), HttpSigError::Missing);
        assert_eq!(HttpSigError::Missing.code(), "SIGNATURE_MISSING");
        let only_input = req.clone().set("signature-input", "sig=(\"@method\");keyid=\"k\"");
        assert_eq!(parse(&only_input.headers, None).unwrap_err().code(), "SIGNATURE_MALFORMED");
        let only_sig = req.clone().set("signature", "sig=:AAAA:");
        assert_eq!(parse(&only_sig.headers, None).unwrap_err().code(), "SIGNATURE_MALFORMED");
        assert_eq!(HttpSigError::UnknownKey("k".into()).code(), "SIGNATURE_UNKNOWN_KEY");
        assert_eq!(HttpSigError::UnknownKey("k".into()).status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(HttpSigError::NonceCacheFull.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let req = good_request();
        let long = format!("sig=(\"@method\");keyid=\"{}\"", "k".repeat(MAX_PARAM_CHARS + 1));
        let many =
            format!("sig=({});created=1;keyid=\"k\"", (0..=MAX_COMPONENTS).map(|i| format!("\"x-h{i}\"")).collect::<Vec<_>>().join(" "));
        let params = format!("sig=(\"@method\");keyid=\"k\"{}", (0..MAX_PARAMS).map(|i| format!(";p{i}=1")).collect::<String>());
        let huge = format!("sig=(\"@method\");keyid=\"k\";x=\"{}\"", "a".repeat(MAX_FIELD_BYTES));
        let members = (0..=MAX_SIGNATURES).map(|i| format!("s{i}=(\"@method\");keyid=\"k\"")).collect::<Vec<_>>().join(", ");
        let cases: Vec<&str> = vec![
            "",
            " ",
            "garbage",
            "sig=",
            "sig=(",
            "sig=(\"@method\"",
            "sig=\"@method\";keyid=\"k\"",
            "sig=(@method);keyid=\"k\"",
            "sig=(\"@method\")",
            "sig=(\"@method\");keyid=k",
            "sig=(\"@method\");keyid=\"\"",
            "sig=(\"@method\");keyid=\"k\";created=1.5",
            "sig=(\"@method\");keyid=\"k\";created=\"1\"",
            "sig=(\"@method\");keyid=\"k\";created=9999999999999999",
            "sig=(\"@method\");keyid=\"k\";expires=?1",
            "sig=(\"@method\");keyid=\"k\";nonce=1",
            "sig=(\"@method\" \"@method\");keyid=\"k\"",
            "sig=(\"@Method\");keyid=\"k\"",
            "sig=(\"Content-Type\");keyid=\"k\"",
            "sig=(\"\");keyid=\"k\"",
            "sig=(\"bad header\");keyid=\"k\"",
            "sig=(\"@unknown\");keyid=\"k\"",
            "sig=(\"@status\");keyid=\"k\"",
            "sig=(\"@signature-params\");keyid=\"k\"",
            "sig=(\"@method\";req);keyid=\"k\"",
            "sig=(\"@method\";x=1);keyid=\"k\"",
            "sig=(\"content-type\";req);keyid=\"k\"",
            "sig=(\"content-type\";tr);keyid=\"k\"",
            "sig=(\"content-type\";zz);keyid=\"k\"",
            "sig=(\"content-type\";bs;sf);keyid=\"k\"",
            "sig=(\"content-type\";bs;key=\"a\");keyid=\"k\"",
            "sig=(\"content-type\";sf=?0);keyid=\"k\"",
            "sig=(\"content-type\";key=1);keyid=\"k\"",
            "sig=(\"@query-param\";name=1);keyid=\"k\"",
            "sig=(\"@query-param\";name=\"a\";x);keyid=\"k\"",
            "sig=(1 2 3);keyid=\"k\"",
            "sig=(:AAAA:);keyid=\"k\"",
            "sig=(\"@method\");keyid=\"k\",",
            "sig=(\"@method\");keyid=\"k\" junk",
            "Sig=(\"@method\");keyid=\"k\"",
            &long,
            &many,
            &params,
            &huge,
            &members,
        ];
        for input in cases {
            let Ok(v) = HeaderValue::from_str(input) else { continue };
            let mut r = req.clone();
            r.headers.insert("signature-input", v);
            r.headers.insert("signature", HeaderValue::from_static("sig=:AAAA:"));
            let e = parse(&r.headers, None).unwrap_err();
            assert!(matches!(e.code(), "SIGNATURE_MALFORMED" | "SIGNATURE_MISSING"), "{input:?}: {e:?}");
        }
        // Bad Signature values.
        let input = "sig=(\"@method\");keyid=\"k\"";
        for sig in [
            "",
            "sig",
            "sig=AAAA",
            "sig=\"AAAA\"",
            "sig=::",
            "sig=:!!!:",
            "sig=(:AAAA:)",
            "other=:AAAA:",
            &format!("sig=:{}:", B64.encode([0u8; 2000])),
        ] {
            let r = req.clone().set("signature-input", input).set("signature", sig);
            assert_eq!(parse(&r.headers, None).unwrap_err().code(), "SIGNATURE_MALFORMED", "{sig:?}");
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let req = good_request();
        let key = ParsedKey::hmac(&secret());
        let seed_input = r#"sig1=("@method" "@target-uri" "content-digest" "@query-param";name="id" "x";key="a" "y";bs);created=1750000000;keyid="key-1";nonce="n""#;
        let seed_sig = "sig1=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"\"();=,:*@-_ ./?azAZ09\t\x7f\x80\xff\\";
        for _ in 0..3000 {
            let mut input = seed_input.as_bytes().to_vec();
            let mut sig = seed_sig.as_bytes().to_vec();
            for _ in 0..(next() % 6) {
                let target = if next() % 2 == 0 { &mut input } else { &mut sig };
                let pos = (next() as usize) % (target.len() + 1);
                match next() % 3 {
                    0 if pos < target.len() => {
                        target.remove(pos);
                    }
                    1 if pos < target.len() => target[pos] = alphabet[(next() as usize) % alphabet.len()],
                    _ => target.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let mut r = req.clone().header("x", "a=1").header("y", "\u{1F600}");
            let (Ok(i), Ok(s)) = (HeaderValue::from_bytes(&input), HeaderValue::from_bytes(&sig)) else { continue };
            r.headers.insert("signature-input", i);
            r.headers.insert("signature", s);
            if let Ok(p) = parse(&r.headers, None) {
                let _ = verify(&p, &r.view(), &key, SigAlg::HmacSha256, NOW, WINDOW);
            }
        }
        // Non-ASCII, control and huge inputs.
        for v in [&b"sig=(\"\xc3\xa9\");keyid=\"k\""[..], b"\xff\xfe", &[b'a'; 70_000][..], &b"sig=:".repeat(3000)[..]] {
            let mut r = req.clone();
            r.headers.insert("signature-input", HeaderValue::from_bytes(v).unwrap());
            r.headers.insert("signature", HeaderValue::from_bytes(v).unwrap());
            assert!(parse(&r.headers, None).is_err());
        }
        let mut r = req.clone();
        for _ in 0..=MAX_FIELD_LINES {
            r = r.header("signature-input", "sig=(\"@method\");keyid=\"k\"").header("signature", "sig=:AAAA:");
        }
        assert_eq!(parse(&r.headers, None).unwrap_err().code(), "SIGNATURE_MALFORMED");
        // A covered header with obs-text must be covered with ;bs.
        let r = req.clone().header("x-bin", "caf\u{e9}");
        assert_eq!(base_of(&r, r#"sig=("x-bin");keyid="k""#).unwrap_err().code(), "SIGNATURE_MALFORMED");
        assert!(base_of(&r, r#"sig=("x-bin";bs);keyid="k""#).unwrap().starts_with("\"x-bin\";bs: :Y2Fmw6k=:\n"));
        // Derived values with line breaks cannot inject lines into the base.
        let mut r = req.clone();
        r.path = "/a\n\"@method\": GET".into();
        assert_eq!(base_of(&r, r#"sig=("@path");keyid="k""#).unwrap_err().code(), "SIGNATURE_MALFORMED");
    }

    #[test]
    fn key_parsing() {
        for (alg, pem) in [
            (SigAlg::RsaPssSha512, RSA_PSS_PUBLIC),
            (SigAlg::RsaPssSha512, RSA_PUBLIC_PKCS1),
            (SigAlg::RsaV15Sha256, RSA_PSS_PUBLIC),
            (SigAlg::RsaV15Sha256, RSA_PUBLIC_PKCS1),
            (SigAlg::EcdsaP256Sha256, ECC_PUBLIC),
            (SigAlg::Ed25519, ED25519_PUBLIC),
        ] {
            let k = ParsedKey::from_pem(alg, &format!("\n  {pem}\n")).unwrap();
            assert_eq!(k.alg(), alg);
            assert_eq!(format!("{k:?}"), format!("ParsedKey({})", alg.as_str()));
        }
        assert_eq!(format!("{:?}", ParsedKey::hmac(b"very secret")), "ParsedKey(hmac-sha256)");
        assert!(!format!("{:?}", SignerKey::Hmac(b"very secret".to_vec())).contains("secret"));
        for (alg, pem) in [
            (SigAlg::HmacSha256, ED25519_PUBLIC),
            (SigAlg::EcdsaP256Sha256, ED25519_PUBLIC),
            (SigAlg::Ed25519, ECC_PUBLIC),
            (SigAlg::RsaPssSha512, ECC_PUBLIC),
            (SigAlg::Ed25519, RSA_PSS_PUBLIC),
            (SigAlg::Ed25519, "garbage"),
            (SigAlg::RsaV15Sha256, ""),
            (SigAlg::EcdsaP256Sha256, "-----BEGIN PUBLIC KEY-----\n\u{1F600}\n-----END PUBLIC KEY-----"),
        ] {
            let e = ParsedKey::from_pem(alg, pem).unwrap_err();
            assert_eq!(e.code(), "SIGNATURE_KEY_INVALID", "{} {pem:.30}", alg.as_str());
        }
        // RSA keys below 2048 bits are refused.
        use rsa::pkcs8::EncodePublicKey as _;
        let n = rsa::BigUint::from_bytes_be(&[0xc3; 128]);
        let small = rsa::RsaPublicKey::new(n, rsa::BigUint::from(65537u32)).unwrap();
        let pem = small.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let e = ParsedKey::from_pem(SigAlg::RsaV15Sha256, &pem).unwrap_err();
        assert!(e.to_string().contains("1024 bits"), "{e}");
    }

    #[test]
    fn rsa_pss_oid_spki_is_accepted_for_pss_only() {
        // Re-tag the B.1.2 key's SPKI with id-RSASSA-PSS (no parameters).
        let body: String = RSA_PSS_PUBLIC.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = B64.decode(body).unwrap();
        let rsa_enc = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(&der[4..19], &rsa_enc);
        let mut pss = vec![0x30, 0x82, 0x01, 0x20, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        pss.extend_from_slice(&der[19..]);
        let b64 = B64.encode(&pss);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"));
        let key = ParsedKey::from_pem(SigAlg::RsaPssSha512, &pem).unwrap();
        assert!(ParsedKey::from_pem(SigAlg::RsaV15Sha256, &pem).is_err());
        // It verifies the RFC's B.2.1 signature.
        let base = r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
        let sig = B64.decode("d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==").unwrap();
        assert!(key.verify_bytes(base.as_bytes(), &sig));
    }

    #[test]
    fn ecdsa_signatures_must_be_raw_r_s() {
        let all = signers();
        let (signer, key) = &all[3];
        let sig = signer.sign_bytes(b"base").unwrap();
        assert_eq!(sig.len(), 64);
        assert!(key.verify_bytes(b"base", &sig));
        let der = p256::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
        assert!(!key.verify_bytes(b"base", der.as_bytes()));
        assert!(!key.verify_bytes(b"base", &sig[..63]));
    }

    #[test]
    fn nonce_cache_refuses_replays() {
        let cache = NonceCache::new(WINDOW, 10_000);
        assert!(cache.check_and_remember("k1", "n1", NOW, NOW));
        assert!(!cache.check_and_remember("k1", "n1", NOW, NOW + 1));
        assert_eq!(cache.admit("k1", "n1", NOW - 5, NOW + 2), Err(HttpSigError::NonceReplayed));
        assert_eq!(HttpSigError::NonceReplayed.code(), "SIGNATURE_NONCE_REPLAYED");
        // Another key may use the same nonce; the (keyid, nonce) pair is what counts.
        assert!(cache.check_and_remember("k2", "n1", NOW, NOW));
        assert!(cache.check_and_remember("k1n", "1", NOW, NOW));
        assert!(cache.check_and_remember("k1", "n2", NOW, NOW));
        assert_eq!(cache.len(), 4);
        // Still remembered at the edge of the window...
        assert!(!cache.check_and_remember("k1", "n1", NOW, NOW + WINDOW));
        // ...and past it the signature itself is out of the window, so it stays refused.
        assert_eq!(
            cache.admit("k1", "n1", NOW, NOW + WINDOW + 1),
            Err(HttpSigError::CreatedOutOfWindow { created: NOW, now: NOW + WINDOW + 1, window: WINDOW })
        );
        // Expired entries are evicted as time passes.
        assert!(cache.check_and_remember("k9", "late", NOW + 2 * WINDOW, NOW + 2 * WINDOW));
        let _ = (0..64).map(|i| cache.check_and_remember("k9", &format!("x{i}"), NOW + 2 * WINDOW, NOW + 2 * WINDOW)).count();
        assert_eq!(cache.len(), 65);
        assert!(!cache.is_empty());
    }

    #[test]
    fn nonce_cache_is_bounded_and_refuses_when_full() {
        let cache = NonceCache::new(WINDOW, NONCE_SHARDS); // one entry per shard
        let mut admitted = 0;
        let mut full = 0;
        for i in 0..1000 {
            match cache.admit("k", &format!("n{i}"), NOW, NOW) {
                Ok(()) => admitted += 1,
                Err(HttpSigError::NonceCacheFull) => full += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(admitted, NONCE_SHARDS);
        assert_eq!(full, 1000 - NONCE_SHARDS);
        assert_eq!(cache.len(), NONCE_SHARDS);
        // Once the window has passed, room is made again; nothing was forgotten early.
        assert!(cache.check_and_remember("k", "fresh", NOW + WINDOW + 1, NOW + WINDOW + 1));
        assert!(cache.len() <= NONCE_SHARDS);
        assert_eq!(HttpSigError::NonceCacheFull.code(), "SIGNATURE_NONCE_CACHE_FULL");
    }

    #[test]
    fn nonce_cache_is_thread_safe() {
        let cache = std::sync::Arc::new(NonceCache::new(WINDOW, 100_000));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = cache.clone();
                std::thread::spawn(move || (0..500).filter(|i| c.check_and_remember("k", &format!("n{i}"), NOW, NOW)).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 500);
    }

    #[test]
    fn remembered_nonces_are_refused_as_replays() {
        // Two caches stand for two nodes: what A admitted, B remembers from A's gossip.
        let a = NonceCache::new(WINDOW, 10_000);
        let b = NonceCache::new(WINDOW, 10_000);
        assert_eq!(a.admit("k1", "n1", NOW, NOW), Ok(()));
        assert_eq!(b.remember("k1", "n1", NOW, NOW + 1), Ok(()));
        assert_eq!(b.admit("k1", "n1", NOW, NOW + 1), Err(HttpSigError::NonceReplayed));
        // Remembering twice, or a nonce B admitted itself, is not an error.
        assert_eq!(b.remember("k1", "n1", NOW, NOW + 1), Ok(()));
        assert_eq!(b.admit("k1", "n2", NOW, NOW + 1), Ok(()));
        assert_eq!(b.remember("k1", "n2", NOW, NOW + 1), Ok(()));
        // Outside the window there is nothing to remember: the signature is refused anyway.
        assert_eq!(b.remember("k1", "old", NOW - WINDOW - 1, NOW), Ok(()));
        assert_eq!(b.len(), 2);
        // A full cache says so, and nothing is forgotten to make room.
        let full = NonceCache::new(WINDOW, NONCE_SHARDS);
        let lost = (0..100).filter(|i| full.remember("k", &format!("n{i}"), NOW, NOW).is_err()).count();
        assert_eq!(lost, 100 - NONCE_SHARDS);
        assert_eq!(full.len(), NONCE_SHARDS);
    }

    #[test]
    fn nonce_is_exposed_for_the_callers_policy() {
        let (signer, key) = signers().remove(0);
        let o = SignOptions { nonce: None, ..opts(NOW) };
        let v = check(&signed(&good_request(), GOOD, &o, &signer), &key, NOW).unwrap();
        assert_eq!(v.nonce, None);
    }
}
