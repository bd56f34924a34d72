//! `lgsp backup restore FILE --data-dir DIR [--force]`: offline, turns a verified backup into a
//! fresh data directory holding a new one-node cluster with the backup's registry, admin audit
//! trail and transaction-audit segments, and proves the registry digest is unchanged.
//!
//! Invariants: nothing is written before the whole file has verified; a directory holding
//! anything is refused unless `force`, and even then its contents are moved aside
//! (`DIR.before-restore-<time>`), never deleted; the restored cluster is new (new CA and
//! cluster id), so nodes of the old cluster can never talk to it by accident; the secrets key
//! comes only from the operator's copy (`--secrets-key`), never from the backup in plaintext.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{file, BackupError, AUDIT_PREFIX, CONFIG_PART, KEYS_PART};
use crate::cluster::node::{init_offline, pick_udp_port};
use crate::cluster::types::NodeInfo;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub force: bool,
    /// The restored node's name (default: the name in the backup).
    pub name: Option<String>,
    /// `host:port` of the restored node's cluster listener (port 0: a free one on that host).
    pub cluster_addr: String,
    /// The operator's copy of the cluster's `secrets.key` (base64 text).
    pub secrets_key: Option<PathBuf>,
    /// The node's audit signing key (`audit-signing.key`), to continue the chain with it.
    pub audit_key: Option<PathBuf>,
    /// An age identity file that opens the backup's `keys.age` (the keys given explicitly win).
    pub identity: Option<PathBuf>,
}

/// What was restored, for the operator and the tests.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub backup_id: String,
    pub log_index: u64,
    pub cluster_id: String,
    pub node_name: String,
    pub registry_digest: String,
    pub audit_segments: usize,
    /// Where the old contents went with `--force`.
    pub moved_aside: Option<PathBuf>,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "{0} is not empty: restoring there would mix two nodes' data. Choose a new directory, or pass --force to move its contents aside first"
    )]
    NotEmpty(PathBuf),
    #[error("cannot {action} {path}: {reason}")]
    Io { action: &'static str, path: PathBuf, reason: String },
    #[error("restore failed: {0}")]
    Failed(String),
    #[error("the restored registry's digest {after} differs from the backup's {before}; do not use {dir}, report this as a bug")]
    Mismatch { before: String, after: String, dir: PathBuf },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |e| RestoreError::Io { action, path: path.to_path_buf(), reason: e.to_string() }
}

fn is_empty(dir: &Path) -> Result<bool, RestoreError> {
    match fs::read_dir(dir) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(RestoreError::Io { action: "read", path: dir.to_path_buf(), reason: e.to_string() }),
    }
}

/// Restores a backup; see the module documentation.
pub fn restore(o: &RestoreOptions) -> Result<Restored, RestoreError> {
    let identity = match &o.identity {
        Some(p) => Some(fs::read_to_string(p).map_err(io_err("read the identity file", p))?),
        None => None,
    };
    let verified = file::verify(&o.file, identity.as_deref())?;
    let m = &verified.manifest;
    let sealed = match (&identity, verified.parts.get(KEYS_PART)) {
        (Some(text), Some(bytes)) => super::keys::open(bytes, text).map_err(RestoreError::Failed)?,
        (Some(_), None) => {
            return Err(RestoreError::Failed(
                "--identity was given, but this backup holds no keys.age ([backup] recipients were not set when it was made); use --secrets-key".into(),
            ))
        }
        (None, _) => Default::default(),
    };
    let mut moved_aside = None;
    if !is_empty(&o.data_dir)? {
        if !o.force {
            return Err(RestoreError::NotEmpty(o.data_dir.clone()));
        }
        let aside = PathBuf::from(format!("{}.before-restore-{}", o.data_dir.display(), chrono::Utc::now().format("%Y%m%dT%H%M%SZ")));
        fs::rename(&o.data_dir, &aside).map_err(io_err("move aside", &o.data_dir))?;
        moved_aside = Some(aside);
    }
    fs::create_dir_all(&o.data_dir).map_err(io_err("create", &o.data_dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&o.data_dir, fs::Permissions::from_mode(0o700)).map_err(io_err("restrict", &o.data_dir))?;
    }
    let mut warnings = Vec::new();
    if o.secrets_key.is_none() {
        if let Some(b) = sealed.get("secrets.key") {
            let text = String::from_utf8_lossy(b).into_owned();
            crate::secrets::SecretsKey::install(&o.data_dir.join("secrets.key"), &text).map_err(|e| RestoreError::Failed(e.to_string()))?;
        }
    }
    if o.audit_key.is_none() {
        if let Some(b) = sealed.get("audit-signing.key") {
            crate::secrets::write_private(&o.data_dir.join("audit-signing.key"), b).map_err(io_err("write", &o.data_dir))?;
        }
    }
    match &o.secrets_key {
        None if sealed.contains_key("secrets.key") => {}
        Some(p) => {
            let text = fs::read_to_string(p).map_err(io_err("read the secrets key", p))?;
            crate::secrets::SecretsKey::install(&o.data_dir.join("secrets.key"), &text).map_err(|e| RestoreError::Failed(e.to_string()))?;
        }
        None => warnings.push(
            "no --secrets-key: a new key is made at first start, so sealed secrets (HMAC keys, webhook secrets) cannot be opened and access tokens issued before the backup are refused; restore again with the cluster's secrets.key to keep them".into(),
        ),
    }
    match &o.audit_key {
        None if sealed.contains_key("audit-signing.key") => {}
        Some(p) => {
            let dest = o.data_dir.join("audit-signing.key");
            fs::copy(p, &dest).map_err(io_err("copy the audit key", p))?;
            crate::audit::load_or_create_signing_key(&dest).map_err(|e| RestoreError::Failed(e.to_string()))?;
        }
        None => warnings.push(
            "no --audit-key: the restored node signs new audit entries with a new key (`lgsp audit verify` lists the key change)".into(),
        ),
    }

    let name = o.name.clone().unwrap_or_else(|| m.node_name.clone());
    let addr = match o.cluster_addr.rsplit_once(':') {
        Some((host, "0")) => {
            let ip: std::net::IpAddr =
                host.trim_matches(['[', ']']).parse().map_err(|e| RestoreError::Failed(format!("--cluster-addr {host}: {e}")))?;
            format!("{host}:{}", pick_udp_port(ip).map_err(|e| RestoreError::Failed(e.to_string()))?)
        }
        _ => o.cluster_addr.clone(),
    };
    let nf = init_offline(&o.data_dir, &addr).map_err(|e| RestoreError::Failed(e.to_string()))?;
    let registry = verified.registry().ok_or_else(|| RestoreError::Failed("the backup has no registry part".into()))?;
    let info = NodeInfo { name: name.clone(), raft_addr: addr, ..NodeInfo::default() };
    let index = crate::cluster::restore::restore_registry(&o.data_dir, registry, info, chrono::Utc::now())
        .map_err(|e| RestoreError::Failed(e.to_string()))?;

    let audit_dir = o.data_dir.join("audit");
    fs::create_dir_all(&audit_dir).map_err(io_err("create", &audit_dir))?;
    let mut segments = 0;
    for (part, bytes) in &verified.parts {
        if let Some(seg) = part.strip_prefix(AUDIT_PREFIX) {
            let dest = audit_dir.join(seg);
            fs::write(&dest, bytes).map_err(io_err("write", &dest))?;
            segments += 1;
        } else if part == CONFIG_PART {
            let dest = o.data_dir.join("restored-lgsp.toml");
            fs::write(&dest, bytes).map_err(io_err("write", &dest))?;
        }
    }
    let after = crate::cluster::restore::read_state(&o.data_dir).map_err(|e| RestoreError::Failed(e.to_string()))?;
    let after = file::registry_digest(&after);
    if after != verified.registry_digest {
        return Err(RestoreError::Mismatch { before: verified.registry_digest.clone(), after, dir: o.data_dir.clone() });
    }
    Ok(Restored {
        data_dir: o.data_dir.clone(),
        backup_id: m.id.clone(),
        log_index: index,
        cluster_id: nf.cluster_id,
        node_name: name,
        registry_digest: after,
        audit_segments: segments,
        moved_aside,
        warnings,
    })
}
