//! Backups (Requirement O4): the backup file format, writing one from a consistent snapshot
//! point, checking one offline (`lgsp backup verify`), listing a directory of them. The design
//! (format, the `Backup` Raft command, restore, schedule) is in ARCHITECTURE.md "Backups".
//!
//! Invariants: a backup file is an uncompressed POSIX tar whose first member is `manifest.json`
//! and whose last member is `manifest.sha256` (the SHA-256 of the manifest's exact bytes); every
//! other member is listed in the manifest with its size and SHA-256, in file order. A file is
//! written under a temporary name, fsynced and renamed, owner-only, so a listed file is always
//! complete. Verification reads the file once, member by member, never trusts a size it has not
//! checked, and names the damaged part in its error. No plaintext secret is ever written: the
//! registry part holds only hashes and sealed values (see `secrets.rs`).
//! May import `cluster::snapshot` (the registry part is a Raft snapshot document) and `audit`.

pub mod file;
pub mod keys;
pub mod restore;
pub mod writer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use file::{check, list, registry_digest, verify, write, Checked, Listed, Verified};

/// Names the manifest's kind; anything else is not an lgsp backup.
pub const BACKUP_FORMAT: &str = "lgsp-backup";
/// Bumped when the layout changes incompatibly.
pub const BACKUP_VERSION: u32 = 1;
/// File name extension of backup files.
pub const EXTENSION: &str = "lgspbak";
/// Member names fixed by the format.
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SUM: &str = "manifest.sha256";
pub const REGISTRY_PART: &str = "registry.json";
pub const CONFIG_PART: &str = "config/lgsp.toml";
pub const AUDIT_PREFIX: &str = "audit/";
pub const KEYS_PART: &str = "keys.age";
/// The only part of an encrypted backup: the complete plain backup file, age-encrypted.
pub const ENCRYPTED_PART: &str = "backup.lgspbak.age";
pub const ENCRYPTED_KIND: &str = "encrypted";

/// A new backup id: the instant (UTC, to the second) and 6 random hex digits.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), hex::encode(crate::secrets::random_bytes::<3>()))
}

/// What a backup file says about itself (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub reason: String,
    pub created_at: String,
    /// Who asked for it (`scheduled` for the schedule).
    pub actor: String,
    /// The cluster CA's fingerprint.
    pub cluster_id: String,
    pub node_id: u64,
    pub node_name: String,
    /// The registry part is the replicated state at exactly this log entry.
    pub log_index: u64,
    pub log_term: u64,
    pub lgsp_version: String,
    /// Every member but the manifest and its checksum, in file order.
    pub parts: Vec<Part>,
}

/// One member of a backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    /// `registry`, `audit`, `config`, `keys`, or `encrypted` (the one part of an encrypted backup).
    pub kind: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the member's bytes.
    pub sha256: String,
}

/// What goes into a new backup file, besides its parts.
#[derive(Debug, Clone)]
pub struct Header {
    pub id: String,
    pub reason: String,
    pub created_at: String,
    pub actor: String,
    pub cluster_id: String,
    pub node_id: u64,
    pub node_name: String,
    pub log_index: u64,
    pub log_term: u64,
}

#[derive(Debug, Error)]
pub enum BackupError {
    #[error("cannot {action} {path}: {source}; check the path, its permissions and free disk space")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// The file is damaged: `part` names the member (or `container` for the tar itself).
    #[error("backup {path} is damaged: {part}: {reason}. Do not restore it; use another backup (`lgsp backup list`)")]
    Damaged { path: PathBuf, part: String, reason: String },
    #[error("{path} is not an lgsp backup ({reason})")]
    NotABackup { path: PathBuf, reason: String },
    #[error(
        "backup {path} has format version {found}, but this lgsp reads only version {BACKUP_VERSION}; use the lgsp version that wrote it"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("backup {path} is encrypted; pass --identity with the age identity file whose public key is in [backup] recipients")]
    Encrypted { path: PathBuf },
    #[error("{reason}")]
    Seal { reason: String },
    #[error("cannot encode the backup manifest: {0} (a bug; please report it)")]
    Encode(#[from] serde_json::Error),
}
