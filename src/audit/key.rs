//! The node's Ed25519 audit signing key on disk (PKCS#8 PEM, mode 0600, created once) and the
//! text forms of its public key that auditors pass to `verify`.
//!
//! Invariants: an existing key is never replaced (a new key would orphan the trust placed in
//! the old one); a key file is written whole (temporary file, fsync, rename, fsync directory);
//! the private key is never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::AuditError;

/// Loads the signing key at `path`, creating it (and its directory) on first use.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let err = |reason: String| AuditError::Key { path: path.to_owned(), reason };
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the audit signing key is readable by other users; chmod 600 it");
                }
            }
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                err(format!(
                    "not a PKCS#8 Ed25519 private key in PEM ({e}); restore it from backup — do not replace it, or old checkpoints verify only with the old public key"
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| err(format!("cannot encode a new key: {e}")))?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(AuditError::io("create", dir))?;
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(AuditError::io("create", &tmp))?;
            f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()).map_err(AuditError::io("write", &tmp))?;
            std::fs::rename(&tmp, path).map_err(AuditError::io("rename into place", path))?;
            super::segment::sync_dir(dir)?;
            tracing::info!(path = %path.display(), public_key = %encode_public_key(&key.verifying_key()), "created the audit signing key");
            Ok(key)
        }
        Err(e) => Err(AuditError::io("read", path)(e)),
    }
}

/// The public key as it appears in anchors and checkpoints: standard base64 of its 32 bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// A trusted public key given by an auditor: that base64 form, or a PEM `PUBLIC KEY`.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuditError> {
    let text = text.trim();
    let bad = |reason: String| AuditError::Key { path: "(trusted public key)".into(), reason };
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| bad(format!("not an Ed25519 PEM public key: {e}")));
    }
    let bytes = STANDARD.decode(text).map_err(|_| bad("neither PEM nor base64; copy the \"key\" of a checkpoint".into()))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("an Ed25519 public key is 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("not a valid Ed25519 public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/audit.pem");
        let a = load_or_create_signing_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = load_or_create_signing_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&path, "garbage").unwrap();
        let e = load_or_create_signing_key(&path).unwrap_err().to_string();
        assert!(e.contains("restore it from backup"), "{e}");
    }

    #[test]
    fn public_key_forms() {
        let k = SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert_eq!(parse_public_key(&encode_public_key(&k)).unwrap(), k);
        let pem = k.to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(parse_public_key(&pem).unwrap(), k);
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key("not base64!").is_err());
    }
}
