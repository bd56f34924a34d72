//! Secrets at rest and in comparison: argon2id passwords, salted SHA-256 for generated
//! high-entropy secrets, XChaCha20-Poly1305 sealing for secrets that must be recovered (HMAC
//! keys), random identifiers, and the O7 password policy.
//!
//! Invariants: every comparison of secret material is constant-time; plaintext secrets are
//! never logged or stored; may import only `registry` (for the stored shapes).

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::registry::document::SecretTool;
use crate::registry::{Sealed, SecretHash};

#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("cannot read the secrets key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the secrets key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the secrets key {path} is damaged (expected 32 bytes, base64); restore it from backup")]
    Damaged { path: String },
    #[error("{path} already holds a different secrets key: this data directory belongs to another node or cluster; join with an empty data directory")]
    Conflict { path: String },
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A random URL-safe string carrying `bytes` bytes of entropy.
pub fn random_string(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A short random identifier with a prefix, e.g. `sub-3f9a0c1d2e4b`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(random_bytes::<8>()))
}

/// Hashes an admin password with argon2id (PHC string with its own salt).
pub fn hash_password(password: &str) -> Result<String, SecretsError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| SecretsError::Hash(e.to_string()))?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| SecretsError::Hash(e.to_string()))
}

/// Checks a password against an argon2id PHC string (constant-time inside argon2).
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

/// A fixed argon2id hash to verify against when the user does not exist, so that a login for
/// an unknown user costs as much as one for a known user.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-password-Aa1!").unwrap_or_default())
}

/// O7: at least 8 characters with upper case, lower case, a digit and a special character.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    if password.chars().count() < 8 {
        missing.push("at least 8 characters");
    }
    if !password.chars().any(char::is_uppercase) {
        missing.push("an upper-case letter");
    }
    if !password.chars().any(char::is_lowercase) {
        missing.push("a lower-case letter");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        missing.push("a digit");
    }
    if !password.chars().any(|c| !c.is_alphanumeric() && !c.is_whitespace()) {
        missing.push("a special character");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("the password needs {}", missing.join(", ")))
    }
}

/// Salted SHA-256 for generated secrets with 256 bits of entropy (tokens, consumer secrets).
pub fn hash_generated(secret: &str) -> SecretHash {
    let salt = hex::encode(random_bytes::<16>());
    let hash = hex::encode(Sha256::new().chain_update(salt.as_bytes()).chain_update(secret.as_bytes()).finalize());
    SecretHash::Sha256 { salt, hash }
}

/// Constant-time check of a secret against its stored hash.
pub fn verify_secret(stored: &SecretHash, secret: &str) -> bool {
    match stored {
        SecretHash::Sha256 { salt, hash } => {
            let got = hex::encode(Sha256::new().chain_update(salt.as_bytes()).chain_update(secret.as_bytes()).finalize());
            got.as_bytes().ct_eq(hash.as_bytes()).into()
        }
        SecretHash::Argon2id { phc } => verify_password(phc, secret),
    }
}

/// The key that seals recoverable secrets. One per cluster (shared when a node joins).
#[derive(Clone)]
pub struct SecretsKey(chacha20poly1305::Key);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// Loads `path`, creating it (mode 0600) with a fresh random key if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        let show = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = STANDARD.decode(text.trim()).map_err(|_| SecretsError::Damaged { path: show.clone() })?;
                if bytes.len() != 32 {
                    return Err(SecretsError::Damaged { path: show });
                }
                Ok(SecretsKey(*chacha20poly1305::Key::from_slice(&bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes::<32>();
                write_private(path, STANDARD.encode(key).as_bytes()).map_err(|source| SecretsError::Write { path: show, source })?;
                Ok(SecretsKey(*chacha20poly1305::Key::from_slice(&key)))
            }
            Err(source) => Err(SecretsError::Read { path: show, source }),
        }
    }

    /// The key as written in `secrets.key` (base64), for handing to a joining node over the
    /// cluster's authenticated channel. Never log it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_slice())
    }

    /// Writes a key received from the cluster to `path` (mode 0600). Refuses to replace a
    /// different key already there: the node's sealed secrets would become unreadable.
    pub fn install(path: &Path, b64: &str) -> Result<Self, SecretsError> {
        let show = path.display().to_string();
        let bytes = STANDARD.decode(b64.trim()).map_err(|_| SecretsError::Damaged { path: show.clone() })?;
        if bytes.len() != 32 {
            return Err(SecretsError::Damaged { path: show });
        }
        let key = SecretsKey(*chacha20poly1305::Key::from_slice(&bytes));
        match std::fs::read_to_string(path) {
            Ok(existing) if existing.trim() == b64.trim() => return Ok(key),
            Ok(_) => return Err(SecretsError::Conflict { path: show }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SecretsError::Read { path: show, source }),
        }
        write_private(path, STANDARD.encode(&bytes).as_bytes()).map_err(|source| SecretsError::Write { path: show, source })?;
        Ok(key)
    }

    /// A 32-byte key for one purpose, derived from this key (HMAC-SHA256 over the label), so
    /// that every node holding the cluster key derives the same purpose keys.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice()).expect("HMAC accepts keys of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plain: &[u8]) -> Sealed {
        let nonce = random_bytes::<24>();
        let cipher = XChaCha20Poly1305::new(&self.0);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = cipher.encrypt(XNonce::from_slice(&nonce), plain).unwrap_or_default();
        Sealed { nonce: STANDARD.encode(nonce), ciphertext: STANDARD.encode(ct) }
    }

    pub fn open(&self, sealed: &Sealed) -> Option<Vec<u8>> {
        let nonce = STANDARD.decode(&sealed.nonce).ok()?;
        let ct = STANDARD.decode(&sealed.ciphertext).ok()?;
        if nonce.len() != 24 {
            return None;
        }
        XChaCha20Poly1305::new(&self.0).decrypt(XNonce::from_slice(&nonce), ct.as_ref()).ok()
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The importer's view of secret handling.
pub struct ImportSecrets<'a>(pub &'a SecretsKey);

impl SecretTool for ImportSecrets<'_> {
    fn hash_imported(&mut self, secret: &str) -> SecretHash {
        SecretHash::Argon2id { phc: hash_password(secret).unwrap_or_default() }
    }
    fn verify(&self, hash: &SecretHash, secret: &str) -> bool {
        verify_secret(hash, secret)
    }
    fn seal(&mut self, plain: &[u8]) -> Sealed {
        self.0.seal(plain)
    }
    fn open(&self, sealed: &Sealed) -> Option<Vec<u8>> {
        self.0.open(sealed)
    }
    fn new_id(&mut self, prefix: &str) -> String {
        new_id(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy_names_what_is_missing() {
        assert!(check_password_policy("Abcdef1!").is_ok());
        let e = check_password_policy("abc").unwrap_err();
        assert!(e.contains("8 characters") && e.contains("upper-case") && e.contains("digit") && e.contains("special"));
        assert!(check_password_policy("ABCDEFG1!").unwrap_err().contains("lower-case"));
    }

    #[test]
    fn secrets_hash_and_seal_roundtrip() {
        let h = hash_generated("s3cret");
        assert!(verify_secret(&h, "s3cret"));
        assert!(!verify_secret(&h, "s3cret "));
        let p = hash_password("Pa55word!").unwrap();
        assert!(verify_password(&p, "Pa55word!"));
        assert!(!verify_password(&p, "Pa55word?"));
        let dir = tempfile::tempdir().unwrap();
        let k = SecretsKey::load_or_create(&dir.path().join("k")).unwrap();
        let s = k.seal(b"hmac key bytes");
        assert_eq!(k.open(&s).unwrap(), b"hmac key bytes");
        let k2 = SecretsKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(k2.open(&s).unwrap(), b"hmac key bytes");
    }
}
