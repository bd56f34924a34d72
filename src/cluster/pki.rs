//! The cluster's PKI: the cluster CA, each node's identity (key + certificate signed by the CA),
//! the join token string an operator copies to a new node, and the rule that ties a certificate
//! to a node id (SAN DNS `node-<id>.lgsp`).
//!
//! Invariants: a node's private key is generated on the node and never leaves it (the CA signs
//! a public key); the CA certificate that nodes trust is the one on disk, byte for byte (the
//! in-memory issuer is only a signing handle); private keys are written mode 0600 through a
//! temporary file and a rename, so a crash never leaves half a key. May import `registry`
//! (types), its own cluster modules and the `secrets` helpers only.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use super::types::NodeId;
use crate::registry::Timestamp;

/// Prefix (and format version) of a join token string.
pub const JOIN_TOKEN_PREFIX: &str = "lgspjoin1";
/// DNS suffix of the names that identify nodes in certificates.
pub const NODE_NAME_SUFFIX: &str = ".lgsp";
/// How long the cluster CA is valid.
pub const CA_VALID_DAYS: u32 = 3650;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{what} is damaged or not PEM ({detail}); restore the cluster directory from backup or re-join the node")]
    BadPem { what: String, detail: String },
    #[error("{what}: the private key does not belong to the certificate; restore both files from the same backup")]
    KeyMismatch { what: String },
    #[error(
        "the node certificate is not signed by the cluster CA beside it ({detail}); re-join the node or restore the cluster directory"
    )]
    NotIssuedByCa { detail: String },
    #[error("cannot create a certificate: {0}")]
    Generate(String),
    #[error("the node's public key is not a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`): {0}")]
    BadPublicKey(String),
    #[error("{0:?} is neither an IP address nor a valid DNS name; fix the certificate names")]
    BadSan(String),
    #[error("{0:?} names another node; node identities are assigned by the cluster, remove it from the certificate names")]
    ForeignNodeName(String),
    #[error("the certificate validity must be at least one day")]
    BadValidity,
    #[error("the certificate carries no node identity (SAN DNS node-<id>{NODE_NAME_SUFFIX}); it was not issued by an lgsp cluster")]
    NoNodeIdentity,
    #[error("the certificate names several nodes ({0:?}); refusing an ambiguous identity")]
    SeveralNodeIdentities(Vec<NodeId>),
    #[error("the node identity says node {expected} but its certificate is for node {found}; restore the cluster directory from backup")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("cannot parse the certificate: {0}")]
    BadCertificate(String),
    #[error("invalid join token: {0}. Copy the whole token printed by `lgsp cluster token create`; it looks like {JOIN_TOKEN_PREFIX}.<id>.<secret>.<CA fingerprint>")]
    BadJoinToken(String),
}

// ------------------------------------------------------------------------------------------
// Cluster CA

/// The cluster's certificate authority: signs every node certificate. Its key is replicated to
/// every node (in the join grant) so any node can admit the next one and renew certificates.
pub struct ClusterCa {
    /// The CA certificate exactly as distributed (trust anchor of every node).
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    /// A re-signed copy of the CA built from the stored certificate's parameters. It is used
    /// only as the issuer handle for `signed_by` (subject DN and key identifier come from it,
    /// so leaves chain to the original certificate); it is never distributed.
    issuer: Certificate,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256, 10 years, CN `lgsp cluster <id> CA`).
    pub fn create(cluster_id: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("lgsp cluster {cluster_id} CA"));
        params.distinguished_name = dn;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let (not_before, not_after) = validity(CA_VALID_DAYS)?;
        params.not_before = not_before.to_datetime();
        params.not_after = not_after.to_datetime();
        let cert = params.self_signed(&key).map_err(gen_err)?;
        ClusterCa::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The CA from its certificate and key (PEM), e.g. from a join grant.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let cert_der = first_cert("the cluster CA certificate", cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad_pem("the cluster CA key", e))?;
        let parsed = parse_cert(&cert_der)?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(PkiError::KeyMismatch { what: "the cluster CA".into() });
        }
        if !parsed.is_ca() {
            return Err(PkiError::BadCertificate("the cluster CA certificate is not a CA certificate".into()));
        }
        let params = CertificateParams::from_ca_cert_der(&cert_der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let issuer = params.self_signed(&key).map_err(gen_err)?;
        Ok(ClusterCa { cert_pem: cert_pem.to_owned(), cert_der, key, issuer })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert = read_text(&dir.join(CA_CERT_FILE))?;
        let key = read_text(&dir.join(CA_KEY_FILE))?;
        ClusterCa::from_pem(&cert, &key)
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`, each through a temporary file.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(dir, CA_CERT_FILE, self.cert_pem.as_bytes(), false)?;
        write_file(dir, CA_KEY_FILE, self.key.serialize_pem().as_bytes(), true)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM, PKCS#8), for the join grant only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate (DER), lowercase hex: what a join token pins.
    pub fn fingerprint(&self) -> String {
        fingerprint_der(&self.cert_der)
    }

    /// Signs a node certificate for a public key the node generated (SPKI PEM). The
    /// certificate names `node-<id>.lgsp` (the identity peers check) plus `sans` (IP
    /// addresses become IP SANs, anything else DNS SANs); it is valid for both TLS server and
    /// client authentication, from one hour ago (clock skew) for `valid_days` days (but not
    /// beyond the CA). Returns the certificate PEM.
    pub fn issue(&self, node_id: NodeId, name: &str, public_key_pem: &str, sans: &[String], valid_days: u32) -> Result<String, PkiError> {
        if valid_days == 0 {
            return Err(PkiError::BadValidity);
        }
        let public_key = SubjectPublicKeyInfo::from_pem(public_key_pem).map_err(|e| PkiError::BadPublicKey(e.to_string()))?;
        let own = server_name(node_id);
        let mut names = vec![SanType::DnsName(own.as_str().try_into().map_err(gen_err)?)];
        for san in sans {
            let san = san.trim();
            if san.eq_ignore_ascii_case(&own) {
                continue;
            }
            if let Ok(ip) = san.parse::<IpAddr>() {
                names.push(SanType::IpAddress(ip));
                continue;
            }
            if DnsName::try_from(san).is_err() {
                return Err(PkiError::BadSan(san.to_owned()));
            }
            if parse_node_name(san).is_some() || san.to_ascii_lowercase().ends_with(NODE_NAME_SUFFIX) {
                return Err(PkiError::ForeignNodeName(san.to_owned()));
            }
            names.push(SanType::DnsName(san.try_into().map_err(|_| PkiError::BadSan(san.to_owned()))?));
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, if name.is_empty() { own.clone() } else { name.to_owned() });
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let (not_before, not_after) = validity(valid_days)?;
        params.not_before = not_before.to_datetime();
        params.not_after = not_after.to_datetime().min(self.issuer.params().not_after);
        let cert = params.signed_by(&public_key, &self.issuer, &self.key).map_err(gen_err)?;
        Ok(cert.pem())
    }
}

// ------------------------------------------------------------------------------------------
// Node identity

/// What a node presents to its peers: its id, the cluster CA it trusts, its certificate and
/// its private key (all PEM). Stored as `ca.pem`, `node.pem`, `node.key` (0600).
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Reads `ca.pem`, `node.pem` and `node.key` from `dir`; the node id comes from the
    /// certificate. Checks that the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<NodeIdentity, PkiError> {
        let ca_cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let cert_pem = read_text(&dir.join(NODE_CERT_FILE))?;
        let key_pem = read_text(&dir.join(NODE_KEY_FILE))?;
        let cert = first_cert("the node certificate", &cert_pem)?;
        let node_id = node_id_from_cert(&cert)?;
        let identity = NodeIdentity { node_id, ca_cert_pem, cert_pem, key_pem };
        identity.check_key()?;
        Ok(identity)
    }

    /// Writes the three files into `dir` (the key 0600), each through a temporary file.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_file(dir, CA_CERT_FILE, self.ca_cert_pem.as_bytes(), false)?;
        write_file(dir, NODE_KEY_FILE, self.key_pem.as_bytes(), true)?;
        write_file(dir, NODE_CERT_FILE, self.cert_pem.as_bytes(), false)
    }

    /// When the node certificate expires (for rotation decisions).
    pub fn cert_not_after(&self) -> Result<Timestamp, PkiError> {
        let der = first_cert("the node certificate", &self.cert_pem)?;
        let ts = parse_cert(&der)?.validity().not_after.timestamp();
        Timestamp::from_timestamp(ts, 0).ok_or_else(|| PkiError::BadCertificate(format!("expiry {ts} is out of range")))
    }

    /// SHA-256 of the node certificate (DER), lowercase hex.
    pub fn cert_fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint_der(&first_cert("the node certificate", &self.cert_pem)?))
    }

    /// Checks everything a peer will check, so a bad identity fails at start with a clear
    /// message rather than as a refused handshake: the certificate names `node_id`, the key
    /// belongs to it, and it is signed by the CA and valid now.
    pub fn validate(&self) -> Result<(), PkiError> {
        let cert = first_cert("the node certificate", &self.cert_pem)?;
        let found = node_id_from_cert(&cert)?;
        if found != self.node_id {
            return Err(PkiError::WrongNode { expected: self.node_id, found });
        }
        self.check_key()?;
        let ca = first_cert("the cluster CA certificate", &self.ca_cert_pem)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(|e| PkiError::BadCertificate(format!("the cluster CA certificate: {e}")))?;
        let parsed = rustls::server::ParsedCertificate::try_from(&cert).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], UnixTime::now(), algs.all)
            .map_err(|e| PkiError::NotIssuedByCa { detail: e.to_string() })
    }

    fn check_key(&self) -> Result<(), PkiError> {
        let cert = first_cert("the node certificate", &self.cert_pem)?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| bad_pem("the node key", e))?;
        if parse_cert(&cert)?.public_key().raw != key.public_key_der().as_slice() {
            return Err(PkiError::KeyMismatch { what: "the node identity".into() });
        }
        Ok(())
    }
}

/// A new node key pair (ECDSA P-256): `(private key PEM (PKCS#8), public key PEM (SPKI))`.
/// The public half goes into a [`super::types::JoinRequest`]; the private half stays here.
pub fn generate_node_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

// ------------------------------------------------------------------------------------------
// Join tokens

/// The join token as an operator copies it: `lgspjoin1.<token id>.<secret>.<CA fingerprint>`.
/// The fingerprint lets the new node check it reached the right cluster before it sends the
/// secret; the cluster keeps only [`hash_secret`] of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinTokenString {
    pub id: String,
    pub secret: String,
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_fingerprint: String,
}

impl fmt::Debug for JoinTokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenString").field("id", &self.id).field("ca_fingerprint", &self.ca_fingerprint).finish_non_exhaustive()
    }
}

impl JoinTokenString {
    pub fn new(id: impl Into<String>, secret: impl Into<String>, ca_fingerprint: impl Into<String>) -> JoinTokenString {
        JoinTokenString { id: id.into(), secret: secret.into(), ca_fingerprint: ca_fingerprint.into().to_ascii_lowercase() }
    }

    /// Parses a token string; surrounding whitespace (from copy and paste) is ignored.
    pub fn parse(text: &str) -> Result<JoinTokenString, PkiError> {
        let text = text.trim();
        let bad = |m: String| Err(PkiError::BadJoinToken(m));
        if text.is_empty() {
            return bad("the token is empty".into());
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts[0] != JOIN_TOKEN_PREFIX {
            return if parts[0].starts_with("lgspjoin") {
                bad(format!("token format {:?} is not supported by this version of lgsp (it reads {JOIN_TOKEN_PREFIX})", parts[0]))
            } else {
                bad(format!("it does not start with `{JOIN_TOKEN_PREFIX}.`"))
            };
        }
        if parts.len() != 4 {
            return bad(format!("it has {} dot-separated parts, expected 4 (was it cut off when copied?)", parts.len()));
        }
        let (id, secret, fingerprint) = (parts[1], parts[2], parts[3]);
        let token_chars = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if id.is_empty() || !token_chars(id) {
            return bad("the token id (second part) is empty or has characters other than letters, digits, '-' and '_'".into());
        }
        if secret.is_empty() || !token_chars(secret) {
            return bad("the secret (third part) is empty or has characters other than letters, digits, '-' and '_'".into());
        }
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("the CA fingerprint (fourth part) must be 64 hex digits, found {} characters", fingerprint.len()));
        }
        Ok(JoinTokenString::new(id, secret, fingerprint))
    }
}

impl fmt::Display for JoinTokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_TOKEN_PREFIX}.{}.{}.{}", self.id, self.secret, self.ca_fingerprint)
    }
}

/// SHA-256 of a join token secret, lowercase hex: what the cluster replicates.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

// ------------------------------------------------------------------------------------------
// Node names in certificates

/// The TLS name that identifies a node: `node-<id>.lgsp`.
pub fn server_name(node_id: NodeId) -> String {
    format!("node-{node_id}{NODE_NAME_SUFFIX}")
}

/// The node id a certificate (DER) identifies, from its SAN DNS `node-<id>.lgsp`. Refuses a
/// certificate with no such name or with names for several nodes.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, PkiError> {
    let cert = parse_cert(der)?;
    let san = cert.subject_alternative_name().map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut ids: Vec<NodeId> = san
        .map(|ext| {
            ext.value.general_names.iter().filter_map(|n| if let GeneralName::DNSName(d) = n { parse_node_name(d) } else { None }).collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(PkiError::NoNodeIdentity),
        [id] => Ok(*id),
        _ => Err(PkiError::SeveralNodeIdentities(ids)),
    }
}

/// The node id of a presented certificate chain (its first certificate).
pub fn node_id_from_chain(chain: &[CertificateDer<'_>]) -> Result<NodeId, PkiError> {
    chain.first().map_or(Err(PkiError::NoNodeIdentity), |leaf| node_id_from_cert(leaf))
}

/// SHA-256 of a certificate (DER), lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// SHA-256 of the first certificate in a PEM text, lowercase hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_der(&first_cert("the certificate", pem)?))
}

/// The first certificate in a PEM text.
pub fn first_cert(what: &str, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(bad_pem(what, e)),
        None => Err(PkiError::BadPem { what: what.into(), detail: "no CERTIFICATE block".into() }),
    }
}

/// `node-<id>.lgsp` → id, in canonical decimal only (no sign, no leading zero), so that one id
/// has exactly one name.
fn parse_node_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_NAME_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

fn parse_cert(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(PkiError::BadCertificate(e.to_string())),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = crate::secrets::random_bytes::<16>();
    // Positive and 16 bytes long (RFC 5280: positive, at most 20 octets).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from(bytes.to_vec())
}

/// (now − 1 h, now + days), the hour absorbing clock skew between nodes.
fn validity(days: u32) -> Result<(ASN1Time, ASN1Time), PkiError> {
    let now = chrono::Utc::now().timestamp();
    let at = |ts: i64| ASN1Time::from_timestamp(ts).map_err(|e| PkiError::Generate(format!("validity: {e}")));
    Ok((at(now - 3600)?, at(now + i64::from(days) * 86_400)?))
}

fn gen_err(e: impl fmt::Display) -> PkiError {
    PkiError::Generate(e.to_string())
}

fn bad_pem(what: &str, e: impl fmt::Display) -> PkiError {
    PkiError::BadPem { what: what.into(), detail: e.to_string() }
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_owned(), source })
}

/// Writes `dir/name` through `dir/.name.tmp` + rename (+ directory fsync), so readers see the
/// old or the new file, never half of one. Private files are created 0600.
fn write_file(dir: &Path, name: &str, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Write { path, source }
    };
    create_private_dir(dir).map_err(write_err(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A stale temporary file may carry other permissions; start from nothing.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_err(&tmp)(e)),
        _ => {}
    }
    if private {
        crate::secrets::write_private(&tmp, bytes).map_err(write_err(&tmp))?;
    } else {
        write_public(&tmp, bytes).map_err(write_err(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err(dir))?;
    Ok(())
}

fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_identity(ca: &ClusterCa, node_id: NodeId) -> NodeIdentity {
        let (key_pem, public_pem) = generate_node_key().expect("key");
        let cert_pem = ca.issue(node_id, "n", &public_pem, &["127.0.0.1".into(), "db1.example".into()], 30).expect("issue");
        NodeIdentity { node_id, ca_cert_pem: ca.cert_pem().to_owned(), cert_pem, key_pem }
    }

    #[test]
    fn ca_round_trips_through_disk_and_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create("c1").expect("create");
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fingerprint_pem(ca.cert_pem()).expect("fp"));
        ca.save(dir.path()).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = ClusterCa::load(dir.path()).expect("load");
        assert_eq!(back.fingerprint(), fp, "fingerprint is stable across save/load");
        assert_eq!(back.cert_pem(), ca.cert_pem());
        // Saving again (replacing files) works and keeps the fingerprint.
        back.save(dir.path()).expect("save again");
        assert_eq!(ClusterCa::load(dir.path()).expect("load").fingerprint(), fp);
        let parsed_der = first_cert("ca", ca.cert_pem()).expect("der");
        let parsed = parse_cert(&parsed_der).expect("parse");
        assert!(parsed.subject().to_string().contains("lgsp cluster c1 CA"));
    }

    #[test]
    fn ca_with_a_foreign_key_is_refused() {
        let a = ClusterCa::create("a").expect("a");
        let b = ClusterCa::create("b").expect("b");
        assert!(matches!(ClusterCa::from_pem(a.cert_pem(), &b.key_pem()), Err(PkiError::KeyMismatch { .. })));
    }

    #[test]
    fn issued_identity_validates_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create("c1").expect("create");
        // A CA reloaded from disk issues certificates that chain to the original certificate.
        ca.save(dir.path()).expect("save");
        let reloaded = ClusterCa::load(dir.path()).expect("load");
        let id = node_identity(&reloaded, 7);
        id.validate().expect("valid identity");
        assert_eq!(node_id_from_cert(&first_cert("n", &id.cert_pem).expect("der")).expect("id"), 7);
        let days = (id.cert_not_after().expect("not after") - chrono::Utc::now()).num_days();
        assert!((29..=30).contains(&days), "{days}");
        id.save(dir.path()).expect("save identity");
        let back = NodeIdentity::load(dir.path()).expect("load identity");
        assert_eq!(back.node_id, 7);
        assert_eq!(back.cert_pem, id.cert_pem);
        // Certificates carry fresh random serials even for one key.
        let (_, public_pem) = generate_node_key().expect("key");
        let a = reloaded.issue(7, "n", &public_pem, &[], 1).expect("a");
        let b = reloaded.issue(7, "n", &public_pem, &[], 1).expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn identity_from_another_ca_or_wrong_node_is_refused() {
        let a = ClusterCa::create("a").expect("a");
        let b = ClusterCa::create("b").expect("b");
        let mut id = node_identity(&a, 2);
        id.ca_cert_pem = b.cert_pem().to_owned();
        assert!(matches!(id.validate(), Err(PkiError::NotIssuedByCa { .. })));
        let mut id = node_identity(&a, 2);
        id.node_id = 3;
        assert!(matches!(id.validate(), Err(PkiError::WrongNode { expected: 3, found: 2 })));
        let other = node_identity(&a, 2);
        id.node_id = 2;
        id.key_pem = other.key_pem;
        assert!(matches!(id.validate(), Err(PkiError::KeyMismatch { .. })));
    }

    #[test]
    fn issue_refuses_bad_input() {
        let ca = ClusterCa::create("c").expect("ca");
        let (_, public_pem) = generate_node_key().expect("key");
        assert!(matches!(ca.issue(2, "n", "not a key", &[], 1), Err(PkiError::BadPublicKey(_))));
        assert!(matches!(ca.issue(2, "n", &public_pem, &[], 0), Err(PkiError::BadValidity)));
        assert!(matches!(ca.issue(2, "n", &public_pem, &["bad name!".into()], 1), Err(PkiError::BadSan(_))));
        assert!(matches!(ca.issue(2, "n", &public_pem, &["node-3.lgsp".into()], 1), Err(PkiError::ForeignNodeName(_))));
        // Its own name among the extra names is harmless.
        assert!(ca.issue(2, "n", &public_pem, &["node-2.lgsp".into(), "::1".into()], 1).is_ok());
    }

    #[test]
    fn node_names_are_canonical() {
        assert_eq!(server_name(12), "node-12.lgsp");
        assert_eq!(parse_node_name("node-12.lgsp"), Some(12));
        assert_eq!(parse_node_name("node-0.lgsp"), Some(0));
        for bad in ["node-012.lgsp", "node-.lgsp", "node-+1.lgsp", "node-1.lgsp.evil", "xnode-1.lgsp", "node-99999999999999999999.lgsp"] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn join_token_round_trips() {
        let fp = "ab".repeat(32);
        let t = JoinTokenString::new("tok-1", "s3cr_et-X", fp.to_uppercase());
        let text = t.to_string();
        assert_eq!(text, format!("lgspjoin1.tok-1.s3cr_et-X.{fp}"));
        assert_eq!(JoinTokenString::parse(&format!("  {text}\n")).expect("parse"), t);
        assert!(!format!("{t:?}").contains("s3cr_et"), "Debug must not show the secret");
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn malformed_join_tokens_say_what_is_wrong() {
        let fp = "0".repeat(64);
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            (&*format!("lgsp.t.s.{fp}"), "does not start with"),
            (&*format!("lgspjoin2.t.s.{fp}"), "not supported"),
            ("lgspjoin1.t.s", "3 dot-separated parts"),
            (&*format!("lgspjoin1.t.s.{fp}.x"), "5 dot-separated parts"),
            (&*format!("lgspjoin1..s.{fp}"), "token id"),
            (&*format!("lgspjoin1.t/x.s.{fp}"), "token id"),
            (&*format!("lgspjoin1.t..{fp}"), "secret"),
            (&*format!("lgspjoin1.t.s=.{fp}"), "secret"),
            ("lgspjoin1.t.s.abc", "64 hex digits, found 3"),
            (&*format!("lgspjoin1.t.s.{}", "g".repeat(64)), "64 hex digits"),
        ];
        for (text, expected) in cases {
            let err = JoinTokenString::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains("lgsp cluster token create"), "{text:?}: says what to do: {err}");
        }
    }
}
