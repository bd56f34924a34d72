//! The TLS identity the gateway and admin listeners present (`[tls] cert`, `key`), swappable
//! while the node runs: certificates are renewed (ACME, the city's CA) without a restart.
//!
//! One [`CertStore`] is the certificate resolver of the one rustls `ServerConfig` both
//! listeners use. [`CertStore::reload`] reads the files again and swaps the key pair in;
//! handshakes from then on present the new certificate, connections already established keep
//! theirs (nothing is dropped).
//!
//! Invariants: a pair is swapped in only when the certificate chain parses, the key parses and
//! the key belongs to the certificate; otherwise the old pair stays and the error says which
//! file is wrong. Key material is never logged: only paths, subjects, expiry and the
//! certificate's SHA-256 fingerprint.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not PEM ({reason})")]
    Pem { path: String, reason: String },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1 expected)")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    Key { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert} ({reason}); install the matching pair")]
    Mismatch { cert: String, key: String, reason: String },
    #[error("TLS server set-up failed: {0}")]
    Config(String),
}

/// What an operator needs to recognise a certificate in a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// SHA-256 of the end-entity certificate (DER), lower-case hex.
    pub sha256: String,
    pub subject: String,
    /// `notAfter`, RFC 3339.
    pub not_after: String,
}

/// The current certificate chain and key; the resolver of the listeners' `ServerConfig`.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<(Arc<CertifiedKey>, CertSummary)>,
}

impl CertStore {
    /// Loads the pair from disk (start-up: an error here stops the node).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(CertStore { current: RwLock::new(pair) }))
    }

    /// Reads the pair again and swaps it in; on error the old pair stays in use.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<CertSummary, TlsError> {
        let pair = load_pair(cert, key)?;
        let summary = pair.1.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(summary)
    }

    /// The certificate being presented now.
    pub fn summary(&self) -> CertSummary {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// A server config presenting this store's current pair, ALPN `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, CertSummary), TlsError> {
    let cert_show = cert.display().to_string();
    let key_show = key.display().to_string();
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read { path: cert_show.clone(), source })?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: cert_show.clone(), reason: e.to_string() })?;
    let Some(leaf) = chain.first() else { return Err(TlsError::NoCertificate { path: cert_show }) };
    let summary = summarise(leaf.as_ref());
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read { path: key_show.clone(), source })?;
    let der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem { path: key_show.clone(), reason: e.to_string() })?
        .ok_or_else(|| TlsError::NoKey { path: key_show.clone() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsError::Key { path: key_show.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(TlsError::Mismatch { cert: cert_show, key: key_show, reason: e.to_string() }),
    }
    Ok((Arc::new(certified), summary))
}

fn summarise(der: &[u8]) -> CertSummary {
    let sha256 = hex::encode(Sha256::digest(der));
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => CertSummary {
            sha256,
            subject: c.subject().to_string(),
            not_after: chrono::DateTime::from_timestamp(c.validity().not_after.timestamp(), 0).map(|t| t.to_rfc3339()).unwrap_or_default(),
        },
        Err(_) => CertSummary { sha256, subject: String::new(), not_after: String::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name}.example"));
        let cert = params.self_signed(&key).expect("cert");
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_one_on_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (c1, k1) = pair(tmp.path(), "one");
        let (c2, k2) = pair(tmp.path(), "two");
        let store = CertStore::load(&c1, &k1).expect("load");
        let first = store.summary();
        assert_eq!(first.subject, "CN=one.example");
        assert_eq!(first.sha256.len(), 64);
        assert!(!first.not_after.is_empty());

        let e = store.reload(&c2, &k1).expect_err("a key of another certificate");
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(store.summary(), first, "the old pair stays after a failed reload");
        let e = store.reload(&tmp.path().join("missing.crt"), &k2).expect_err("missing file");
        assert!(e.to_string().contains("missing.crt"), "{e}");
        std::fs::write(tmp.path().join("garbage.key"), "not a key").expect("write");
        let e = store.reload(&c2, &tmp.path().join("garbage.key")).expect_err("no key");
        assert!(e.to_string().contains("garbage.key"), "{e}");
        assert_eq!(store.summary(), first);

        let second = store.reload(&c2, &k2).expect("reload");
        assert_ne!(second.sha256, first.sha256);
        assert_eq!(second.subject, "CN=two.example");
        assert_eq!(store.summary(), second);
        assert!(store.server_config().is_ok());
    }
}
