//! OAuth 2.0 client credentials (RFC 6749 §4.4) for consumer systems: `POST /token` with client
//! authentication by HTTP Basic, form `client_id`/`client_secret`, or an RS256 `private_key_jwt`
//! assertion (RFC 7523); `POST /revoke` (RFC 7009); and bearer validation on every call.
//!
//! Access tokens are HS256 JWTs signed with a key derived from the cluster's secrets key, so
//! any node validates them locally without a lookup. A revoked token's `jti` is replicated as a
//! registry command and refused by every node until the token would have expired anyway. An
//! assertion's `jti` is remembered in `shared::SharedState`, which tells the other nodes, so a
//! replayed assertion is refused cluster-wide (once the gossip has arrived).
//! Bearer validation remembers the claims of tokens it has verified, keyed by the token's
//! SHA-256 (never the token itself), so a repeated token costs one hash instead of an HMAC and
//! two JSON decodings; expiry is still checked on every call.
//! Invariants: secrets are compared in constant time; nothing here logs a secret or a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::shared::{JtiRefused, SharedState};
use super::view::{CredView, View};
use crate::registry::{SecretHash, SigAlg};
use crate::secrets;

/// Claims of an access token issued by this appliance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// Credential id.
    pub sub: String,
    /// Consumer system.
    pub sys: String,
    /// Environment of the credential.
    pub env: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default)]
    pub scope: String,
}

const ISSUER: &str = "lgsp";
/// Most verified tokens remembered; past it, expired entries are dropped, then all of them.
const VERIFIED_TOKENS_MAX: usize = 100_000;
/// Longest accepted remaining lifetime of a `private_key_jwt` assertion, seconds (1 h + leeway).
const MAX_ASSERTION_LIFETIME: i64 = 3600 + 60;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: &'static str,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: &'static str) -> Self {
        OAuthError { status, error, description }
    }
    fn invalid_client() -> Self {
        OAuthError::new(
            401,
            "invalid_client",
            "Xác thực hệ thống thất bại: sai consumer key/secret hoặc assertion không hợp lệ. / Client authentication failed: wrong consumer key/secret or invalid assertion.",
        )
    }
}

/// Issues and validates access tokens.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl_seconds: u64,
    /// credential id -> SHA-256 of a secret already verified by argon2 (imported secrets), so
    /// that only the first token request pays for argon2.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// SHA-256 of an access token whose signature and claims were verified -> its claims.
    verified_tokens: RwLock<HashMap<[u8; 32], Arc<Claims>>>,
}

impl TokenAuthority {
    pub fn new(key: [u8; 32], ttl_seconds: u64) -> TokenAuthority {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        TokenAuthority {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            ttl_seconds,
            verified: Mutex::new(HashMap::new()),
            verified_tokens: RwLock::new(HashMap::new()),
        }
    }

    /// A new token for `cred`.
    pub fn issue(&self, cred: &CredView, scope: &str, now: i64) -> Result<(String, Claims), OAuthError> {
        let claims = Claims {
            iss: ISSUER.into(),
            sub: cred.id.clone(),
            sys: cred.system.clone(),
            env: cred.environment.as_str().into(),
            jti: hex::encode(secrets::random_bytes::<12>()),
            iat: now,
            exp: now + i64::try_from(self.ttl_seconds).unwrap_or(3600),
            scope: scope.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(|t| (t, claims))
            .map_err(|_| OAuthError::new(500, "server_error", "Không tạo được mã truy cập. / Could not issue a token."))
    }

    /// Claims of a token this appliance issued and that has not expired (revocation and the
    /// credential's liveness are checked by the caller against the view).
    pub fn validate(&self, token: &str) -> Option<Arc<Claims>> {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        self.validate_at(token, now)
    }

    /// [`TokenAuthority::validate`] at `now` (Unix seconds, the clock jsonwebtoken reads): a
    /// token seen before is valid while `exp >= now`, exactly the rule of a full decoding
    /// with no leeway.
    fn validate_at(&self, token: &str, now: i64) -> Option<Arc<Claims>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let seen = self.verified_tokens.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some(claims) = seen {
            return (claims.exp >= now).then_some(claims);
        }
        let claims = Arc::new(jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?.claims);
        let mut cache = self.verified_tokens.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_TOKENS_MAX {
            cache.retain(|_, c| c.exp >= now);
            if cache.len() >= VERIFIED_TOKENS_MAX {
                cache.clear();
            }
        }
        cache.insert(key, Arc::clone(&claims));
        Some(claims)
    }

    /// Decodes a token's claims even if expired (for `/revoke`); the signature must hold.
    pub fn decode_for_revocation(&self, token: &str) -> Option<Claims> {
        let mut v = self.validation.clone();
        v.validate_exp = false;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok().map(|d| d.claims)
    }

    /// Authenticates the client of a token or revoke request. A `private_key_jwt` assertion's
    /// `jti` is admitted in `shared` (RFC 7523 §3 replay protection, cluster-wide).
    pub fn authenticate(&self, view: &View, req: &TokenRequest, now: i64, shared: &SharedState) -> Result<Arc<CredView>, OAuthError> {
        match &req.client {
            ClientAuth::Secret { client_id, secret } => {
                let cred = view.credential_by_consumer_key(client_id).ok_or_else(OAuthError::invalid_client)?;
                if self.check_secret(&cred, secret) {
                    Ok(cred)
                } else {
                    Err(OAuthError::invalid_client())
                }
            }
            ClientAuth::Assertion { assertion } => self.check_assertion(view, assertion, now, shared),
            ClientAuth::None => Err(OAuthError::new(
                401,
                "invalid_client",
                "Thiếu xác thực hệ thống: dùng HTTP Basic consumer_key:consumer_secret, client_id/client_secret, hoặc private_key_jwt. / No client authentication: use HTTP Basic consumer_key:consumer_secret, form client_id/client_secret, or private_key_jwt.",
            )),
        }
    }

    fn check_secret(&self, cred: &CredView, secret: &str) -> bool {
        match &cred.secret {
            SecretHash::Sha256 { .. } => secrets::verify_secret(&cred.secret, secret),
            SecretHash::Argon2id { .. } => {
                let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
                let cached = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&cred.id).copied();
                if let Some(c) = cached {
                    return bool::from(c.ct_eq(&digest));
                }
                let ok = secrets::verify_secret(&cred.secret, secret);
                if ok {
                    self.verified.lock().unwrap_or_else(|e| e.into_inner()).insert(cred.id.clone(), digest);
                }
                ok
            }
        }
    }

    fn check_assertion(&self, view: &View, assertion: &str, now: i64, shared: &SharedState) -> Result<Arc<CredView>, OAuthError> {
        #[derive(Deserialize)]
        struct Peek {
            iss: String,
        }
        #[derive(Deserialize)]
        struct AssertionClaims {
            iss: String,
            sub: String,
            #[serde(default)]
            aud: serde_json::Value,
            exp: i64,
            jti: String,
        }
        let bad = OAuthError::invalid_client;
        if assertion.len() > 16 * 1024 {
            return Err(bad());
        }
        let payload = assertion.split('.').nth(1).ok_or_else(bad)?;
        let peek: Peek = URL_SAFE_NO_PAD.decode(payload).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(bad)?;
        let cred = view.credential_by_consumer_key(&peek.iss).ok_or_else(bad)?;
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| bad())?;
        if header.alg != Algorithm::RS256 {
            return Err(OAuthError::new(
                400,
                "invalid_client",
                "private_key_jwt phải ký bằng RS256. / private_key_jwt must be signed with RS256.",
            ));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let keys = cred.public_keys.iter().filter(|k| matches!(k.alg, SigAlg::RsaPssSha512 | SigAlg::RsaV15Sha256));
        let mut claims = None;
        for k in keys {
            if header.kid.as_ref().is_some_and(|kid| kid != &k.key_id) {
                continue;
            }
            let Ok(dk) = DecodingKey::from_rsa_pem(k.pem.as_bytes()) else { continue };
            if let Ok(d) = jsonwebtoken::decode::<AssertionClaims>(assertion, &dk, &validation) {
                claims = Some(d.claims);
                break;
            }
        }
        let c = claims.ok_or_else(bad)?;
        let aud_ok = match &c.aud {
            serde_json::Value::String(s) => s.ends_with("/token"),
            serde_json::Value::Array(a) => a.iter().any(|v| v.as_str().is_some_and(|s| s.ends_with("/token"))),
            _ => false,
        };
        // Assertions may live up to an hour (Authlib's default); their jti is remembered until
        // they expire, so a longer life costs memory, not safety.
        if c.iss != c.sub || c.iss != cred.consumer_key || !aud_ok || c.exp > now + MAX_ASSERTION_LIFETIME || c.jti.is_empty() {
            return Err(bad());
        }
        match shared.admit_jti(&cred.id, &c.jti, c.exp, now) {
            Ok(()) => Ok(cred),
            // A full cache is refused like a replay, as before: forgetting would re-open replays.
            Err(JtiRefused::Replayed | JtiRefused::Full) => Err(OAuthError::new(
                400,
                "invalid_client",
                "Assertion đã được dùng (jti lặp lại). / The assertion was already used (replayed jti).",
            )),
        }
    }
}

/// How the client authenticated itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    Secret { client_id: String, secret: String },
    Assertion { assertion: String },
    None,
}

/// A parsed `/token` or `/revoke` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub scope: String,
    /// For `/revoke`: the token to revoke.
    pub token: Option<String>,
    pub client: ClientAuth,
}

/// Parses the form body and the `Authorization: Basic` header (RFC 6749 §2.3.1: Basic uses
/// form-urlencoded client id and secret).
pub fn parse_request(authorization: Option<&str>, form: &[u8]) -> Result<TokenRequest, OAuthError> {
    let invalid = |d: &'static str| OAuthError::new(400, "invalid_request", d);
    let mut grant_type = None;
    let mut scope = String::new();
    let mut token = None;
    let mut client_id = None;
    let mut client_secret = None;
    let mut assertion = None;
    let mut assertion_type = None;
    for (k, v) in form_urlencoded(form).ok_or_else(|| {
        invalid(
            "Thân yêu cầu không phải application/x-www-form-urlencoded hợp lệ. / The body is not valid application/x-www-form-urlencoded.",
        )
    })? {
        let slot = match k.as_str() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "client_secret" => &mut client_secret,
            "client_assertion" => &mut assertion,
            "client_assertion_type" => &mut assertion_type,
            "token" => &mut token,
            "scope" => {
                scope = v;
                continue;
            }
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(invalid("Một tham số xuất hiện hai lần. / A parameter appears twice."));
        }
    }
    let basic = authorization.and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        Some((percent_decode(id)?, percent_decode(secret)?))
    });
    let client = match (basic, client_secret, assertion) {
        (Some((id, secret)), None, None) => ClientAuth::Secret { client_id: id, secret },
        (None, Some(secret), None) => {
            ClientAuth::Secret { client_id: client_id.ok_or_else(|| invalid("Thiếu client_id. / client_id is missing."))?, secret }
        }
        (None, None, Some(a)) => {
            if assertion_type.as_deref() != Some(ASSERTION_TYPE) {
                return Err(invalid("client_assertion_type phải là urn:ietf:params:oauth:client-assertion-type:jwt-bearer. / client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer."));
            }
            ClientAuth::Assertion { assertion: a }
        }
        (None, None, None) => ClientAuth::None,
        _ => return Err(invalid("Chỉ dùng một cách xác thực hệ thống. / Use exactly one client authentication method.")),
    };
    Ok(TokenRequest { grant_type, scope, token, client })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Splits `application/x-www-form-urlencoded`; `None` if not UTF-8 or badly escaped.
pub fn form_urlencoded(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_and_form() {
        let h = format!("Basic {}", STANDARD.encode("key%3A1:s%26ecret"));
        let r = parse_request(Some(&h), b"grant_type=client_credentials&scope=a+b").unwrap();
        assert_eq!(r.client, ClientAuth::Secret { client_id: "key:1".into(), secret: "s&ecret".into() });
        assert_eq!(r.scope, "a b");
        let r = parse_request(None, b"grant_type=client_credentials&client_id=k&client_secret=s").unwrap();
        assert_eq!(r.client, ClientAuth::Secret { client_id: "k".into(), secret: "s".into() });
        assert!(parse_request(Some(&h), b"client_secret=x").is_err(), "two methods");
        assert!(parse_request(None, b"grant_type=a&grant_type=b").is_err());
        assert!(parse_request(None, b"client_assertion=x&client_assertion_type=wrong").is_err());
        assert!(parse_request(None, b"%zz=1").is_err());
    }

    #[test]
    fn token_round_trip_and_tamper() {
        let ta = TokenAuthority::new([7u8; 32], 60);
        let cred = CredView::test("cred-1", "sys-1");
        let (t, c) = ta.issue(&cred, "", 1_900_000_000).unwrap();
        assert_eq!(c.exp, 1_900_000_060);
        let (t2, _) = ta.issue(&cred, "", chrono::Utc::now().timestamp()).unwrap();
        assert!(ta.validate(&t2).is_some());
        assert!(ta.validate(&t).is_some_and(|c| c.sub == "cred-1"));
        let mut tampered = t2.clone();
        tampered.pop();
        tampered.push(if t2.ends_with('A') { 'B' } else { 'A' });
        assert!(ta.validate(&tampered).is_none());
        let other = TokenAuthority::new([8u8; 32], 60);
        assert!(other.validate(&t2).is_none(), "another cluster's key");
        let (old, _) = ta.issue(&cred, "", 1_000).unwrap();
        assert!(ta.validate(&old).is_none(), "expired");
        assert!(ta.decode_for_revocation(&old).is_some());
    }

    #[test]
    fn a_remembered_token_still_expires_and_never_vouches_for_another() {
        let ta = TokenAuthority::new([7u8; 32], 60);
        let cred = CredView::test("cred-1", "sys-1");
        let now = chrono::Utc::now().timestamp();
        let (t, c) = ta.issue(&cred, "", now).unwrap();
        let first = ta.validate_at(&t, now).expect("fresh token");
        assert_eq!(ta.verified_tokens.read().unwrap().len(), 1, "remembered after the first check");
        let again = ta.validate_at(&t, now).expect("remembered token");
        assert!(Arc::ptr_eq(&first, &again), "the second check is answered from memory");
        assert!(ta.validate_at(&t, c.exp).is_some(), "valid up to and including exp, as a full decoding");
        assert!(ta.validate_at(&t, c.exp + 1).is_none(), "a remembered token expires like any other");
        let mut tampered = t.clone();
        tampered.pop();
        tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(ta.validate_at(&tampered, now).is_none(), "a remembered token vouches for no other string");
        let other = TokenAuthority::new([8u8; 32], 60);
        assert!(other.validate_at(&t, now).is_none(), "the memory belongs to one key");
    }
}
