//! One backup file: writing it (with the `tar` crate, ustar headers), checking it strictly
//! (every header checksum, size, SHA-256, padding and the trailer, so any changed byte is
//! found), reading its parts back, and listing a directory of them.
//!
//! Invariants: see `backup/mod.rs`. The strict reader accepts only what [`write`] produces:
//! regular-file members with ustar headers, zero padding, and a zero trailer of at least two
//! blocks up to the end of the file.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    BackupError, Header, Manifest, Part, AUDIT_PREFIX, BACKUP_FORMAT, BACKUP_VERSION, ENCRYPTED_KIND, ENCRYPTED_PART, EXTENSION, MANIFEST,
    MANIFEST_SUM, REGISTRY_PART,
};
use crate::cluster::snapshot::SnapshotDoc;

const BLOCK: usize = 512;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io { action, path: path.to_path_buf(), source }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a backup file into `dir` and returns its path. `parts` are (name, kind, bytes), in
/// the order they are to appear. With `encrypt_to` (age recipients), the complete backup is
/// encrypted to them and becomes the only part ([`ENCRYPTED_PART`]) of an outer file of the same
/// format, whose manifest repeats the header (so listing and retention still work).
pub fn write(dir: &Path, header: &Header, parts: &[(String, String, Vec<u8>)], encrypt_to: &[String]) -> Result<PathBuf, BackupError> {
    fs::create_dir_all(dir).map_err(io("create the backup directory", dir))?;
    let mtime = chrono::Utc::now().timestamp().max(0) as u64;
    let (manifest, bytes) = encode(header, parts, mtime)?;
    let (manifest, bytes) = if encrypt_to.is_empty() {
        (manifest, bytes)
    } else {
        let sealed = super::keys::encrypt(&bytes, encrypt_to).map_err(|reason| BackupError::Seal { reason })?;
        encode(header, &[(ENCRYPTED_PART.to_owned(), ENCRYPTED_KIND.to_owned(), sealed)], mtime)?
    };
    let name = file_name(&manifest);
    let dest = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(BackupError::Io { action: "write the backup file", path: dest, source: e });
    }
    Ok(dest)
}

/// The bytes of a backup file holding `parts`, and its manifest.
fn encode(header: &Header, parts: &[(String, String, Vec<u8>)], mtime: u64) -> Result<(Manifest, Vec<u8>), BackupError> {
    let manifest = Manifest {
        format: BACKUP_FORMAT.into(),
        version: BACKUP_VERSION,
        id: header.id.clone(),
        reason: header.reason.clone(),
        created_at: header.created_at.clone(),
        actor: header.actor.clone(),
        cluster_id: header.cluster_id.clone(),
        node_id: header.node_id,
        node_name: header.node_name.clone(),
        log_index: header.log_index,
        log_term: header.log_term,
        lgsp_version: env!("CARGO_PKG_VERSION").into(),
        parts: parts
            .iter()
            .map(|(name, kind, bytes)| Part { name: name.clone(), kind: kind.clone(), size: bytes.len() as u64, sha256: sha256_hex(bytes) })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    let sum = format!("{}  {MANIFEST}\n", sha256_hex(&manifest_bytes));
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes)
    };
    let packed = (|| {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, MANIFEST, &manifest_bytes)?;
        for (name, _, bytes) in parts {
            add(&mut b, name, bytes)?;
        }
        add(&mut b, MANIFEST_SUM, sum.as_bytes())?;
        b.into_inner()
    })();
    let bytes = packed.map_err(|source| BackupError::Io { action: "pack the backup", path: PathBuf::from(&manifest.id), source })?;
    Ok((manifest, bytes))
}

/// `lgsp-<node>-<index>-<id>.lgspbak`, with bytes outside `[A-Za-z0-9._-]` as `_`.
fn file_name(m: &Manifest) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect::<String>();
    format!("lgsp-{}-{:010}-{}.{EXTENSION}", clean(&m.node_name), m.log_index, clean(&m.id))
}

/// A checked backup: its manifest and every part's bytes.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    pub parts: BTreeMap<String, Vec<u8>>,
    /// [`registry_digest`] of the registry part.
    pub registry_digest: String,
    /// The file was encrypted (and opened with an identity to be checked).
    pub encrypted: bool,
}

impl Verified {
    /// The registry part's bytes (an encoded `SnapshotDoc`).
    pub fn registry(&self) -> Option<&[u8]> {
        self.parts.get(REGISTRY_PART).map(Vec::as_slice)
    }
}

/// The members of a tar file, checked strictly; errors name the member they are in.
fn read_members(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    let damaged = |part: &str, reason: String| BackupError::Damaged { path: path.to_path_buf(), part: part.to_owned(), reason };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut pos = 0usize;
    loop {
        let after = out.last().map_or_else(|| "the start of the file".to_owned(), |(n, _)| n.clone());
        let Some(h) = bytes.get(pos..pos + BLOCK) else {
            return Err(damaged("container", format!("the file ends after {after} (byte {pos} of {}): it is truncated", bytes.len())));
        };
        if h.iter().all(|&b| b == 0) {
            // The trailer: zero blocks up to the end of the file, at least two.
            let rest = &bytes[pos..];
            if rest.len() < 2 * BLOCK || rest.iter().any(|&b| b != 0) {
                return Err(damaged(
                    "container",
                    format!("the end-of-archive blocks after {after} are damaged or cut short: the file is truncated or was altered"),
                ));
            }
            return Ok(out);
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| damaged("container", format!("the header after {after} is unreadable")))?;
        let computed: u64 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(b) }).sum();
        if stored != computed {
            return Err(damaged("container", format!("the header of the member after {after} fails its checksum (byte {pos})")));
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).into_owned()
        };
        let (prefix, short) = (field(345..500), field(0..100));
        let name = if prefix.is_empty() { short } else { format!("{prefix}/{short}") };
        if h[156] != b'0' && h[156] != 0 {
            return Err(damaged(&name, "is not a regular file; this file was not written by lgsp".into()));
        }
        let size = parse_octal(&h[124..136]).ok_or_else(|| damaged(&name, "its size field is unreadable".into()))?;
        let size = usize::try_from(size).map_err(|_| damaged(&name, "its size is impossible".into()))?;
        let start = pos + BLOCK;
        let padded = size.div_ceil(BLOCK) * BLOCK;
        let Some(data) = bytes.get(start..start + size) else {
            return Err(damaged(
                &name,
                format!("the file ends inside it ({} of {size} bytes present): it is truncated", bytes.len().saturating_sub(start)),
            ));
        };
        let Some(pad) = bytes.get(start + size..start + padded) else {
            return Err(damaged(&name, "the file ends inside its padding: it is truncated".into()));
        };
        if pad.iter().any(|&b| b != 0) {
            return Err(damaged(&name, "the padding after it holds data (a changed byte)".into()));
        }
        out.push((name, data.to_vec()));
        pos = start + padded;
    }
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return None;
    }
    u64::from_str_radix(s, 8).ok()
}

/// What [`check`] found: a backup whose contents were checked, or an encrypted backup checked
/// only as far as it can be without the identity (container, manifest, the encrypted part's
/// size and SHA-256).
#[derive(Debug)]
pub enum Checked {
    Open(Verified),
    Sealed(Manifest),
}

/// Reads and checks a backup file completely (see [`check`]); an encrypted backup needs the
/// text of an age identity file that opens it.
pub fn verify(path: &Path, identity: Option<&str>) -> Result<Verified, BackupError> {
    match check(path, identity)? {
        Checked::Open(v) => Ok(v),
        Checked::Sealed(_) => Err(BackupError::Encrypted { path: path.to_path_buf() }),
    }
}

/// Checks a backup file: the container, the manifest and its checksum, every part's size and
/// SHA-256, that no part is missing or extra, that the registry part is a snapshot at the
/// manifest's index and that the audit segments verify. An encrypted backup is opened with
/// `identity` (its inner backup must carry the same id and index as the outer manifest) or,
/// without one, checked as far as the encrypted part. Offline.
pub fn check(path: &Path, identity: Option<&str>) -> Result<Checked, BackupError> {
    let bytes = fs::read(path).map_err(io("read the backup", path))?;
    let (manifest, mut parts) = read_container(path, &bytes)?;
    if !is_encrypted(&manifest) {
        return contents(path, manifest, parts).map(Checked::Open);
    }
    let Some(identity) = identity else { return Ok(Checked::Sealed(manifest)) };
    let sealed = parts.remove(ENCRYPTED_PART).unwrap_or_default();
    let inner = super::keys::decrypt(&sealed, identity, ENCRYPTED_PART).map_err(|reason| BackupError::Seal { reason })?;
    let (inner_manifest, inner_parts) = read_container(path, &inner)?;
    if is_encrypted(&inner_manifest) || inner_manifest.id != manifest.id || inner_manifest.log_index != manifest.log_index {
        return Err(BackupError::Damaged {
            path: path.to_path_buf(),
            part: ENCRYPTED_PART.into(),
            reason: "the encrypted backup inside does not match the outer manifest (id or log index): the file was put together from two backups"
                .into(),
        });
    }
    let mut v = contents(path, inner_manifest, inner_parts)?;
    v.encrypted = true;
    Ok(Checked::Open(v))
}

/// True for the outer file of an encrypted backup.
fn is_encrypted(m: &Manifest) -> bool {
    matches!(m.parts.as_slice(), [p] if p.kind == ENCRYPTED_KIND && p.name == ENCRYPTED_PART)
}

/// The manifest and the parts of one container, every byte checked.
fn read_container(path: &Path, bytes: &[u8]) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), BackupError> {
    let damaged = |part: &str, reason: String| BackupError::Damaged { path: path.to_path_buf(), part: part.to_owned(), reason };
    if bytes.len() < BLOCK || bytes.get(257..262).is_none_or(|m| m != b"ustar") {
        return Err(BackupError::NotABackup { path: path.to_path_buf(), reason: "it is not a tar file written by lgsp backup".into() });
    }
    let mut members = read_members(path, bytes)?;
    let first = members.first().map(|(n, _)| n.clone()).unwrap_or_default();
    if first != MANIFEST {
        return Err(BackupError::NotABackup { path: path.to_path_buf(), reason: format!("its first member is {first:?}, not {MANIFEST}") });
    }
    let (_, manifest_bytes) = members.remove(0);
    let Some((last, sum)) = members.pop() else {
        return Err(damaged(MANIFEST_SUM, "missing: the file is truncated".into()));
    };
    if last != MANIFEST_SUM {
        return Err(damaged(MANIFEST_SUM, format!("missing (the last member is {last:?}): the file is truncated or was altered")));
    }
    // Exactly the line `write` puts there (sha256sum(1) format), so no byte of it goes unchecked.
    if sum != format!("{}  {MANIFEST}\n", sha256_hex(&manifest_bytes)).as_bytes() {
        return Err(damaged(MANIFEST, "its SHA-256 does not match manifest.sha256 (the manifest was changed)".into()));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| damaged(MANIFEST, format!("cannot be read ({e})")))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(BackupError::NotABackup { path: path.to_path_buf(), reason: format!("its format is {:?}", manifest.format) });
    }
    if manifest.version != BACKUP_VERSION {
        return Err(BackupError::Version { path: path.to_path_buf(), found: manifest.version });
    }
    if members.len() != manifest.parts.len() {
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        for p in &manifest.parts {
            if !names.contains(&p.name.as_str()) {
                return Err(damaged(&p.name, "listed in the manifest but missing from the file".into()));
            }
        }
        return Err(damaged("container", format!("holds {} parts, the manifest lists {}", members.len(), manifest.parts.len())));
    }
    let mut parts = BTreeMap::new();
    for ((name, data), want) in members.into_iter().zip(&manifest.parts) {
        if name != want.name {
            return Err(damaged(&want.name, format!("expected here, found {name:?} instead")));
        }
        if data.len() as u64 != want.size {
            return Err(damaged(&name, format!("{} bytes, the manifest says {}", data.len(), want.size)));
        }
        if sha256_hex(&data) != want.sha256 {
            return Err(damaged(&name, "SHA-256 mismatch: its contents were changed".into()));
        }
        parts.insert(name, data);
    }
    Ok((manifest, parts))
}

/// The checks of a plain backup's contents: the registry snapshot and the audit chain.
fn contents(path: &Path, manifest: Manifest, parts: BTreeMap<String, Vec<u8>>) -> Result<Verified, BackupError> {
    let damaged = |part: &str, reason: String| BackupError::Damaged { path: path.to_path_buf(), part: part.to_owned(), reason };
    let registry = parts.get(REGISTRY_PART).ok_or_else(|| damaged(REGISTRY_PART, "missing".into()))?;
    let doc = SnapshotDoc::decode(registry).map_err(|e| damaged(REGISTRY_PART, e.to_string()))?;
    let index = doc.last_applied.map_or(0, |l| l.index);
    if index != manifest.log_index {
        return Err(damaged(REGISTRY_PART, format!("holds the state at index {index}, the manifest says {}", manifest.log_index)));
    }
    let registry_digest = registry_digest(&doc);
    check_audit(path, &parts)?;
    Ok(Verified { manifest, parts, registry_digest, encrypted: false })
}

/// Runs the audit verifier over the backup's segments (copied to a private temporary directory).
fn check_audit(path: &Path, parts: &BTreeMap<String, Vec<u8>>) -> Result<(), BackupError> {
    let segments: Vec<(&String, &Vec<u8>)> = parts.iter().filter(|(n, _)| n.starts_with(AUDIT_PREFIX)).collect();
    if segments.is_empty() {
        return Ok(());
    }
    let tmp = std::env::temp_dir().join(format!("lgsp-backup-verify-{:016x}", rand::random::<u64>()));
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(io("create a temporary directory", &tmp))?;
        for (name, data) in &segments {
            let file = name.trim_start_matches(AUDIT_PREFIX);
            if file.contains('/') || file.starts_with('.') {
                return Err(BackupError::Damaged {
                    path: path.to_path_buf(),
                    part: (*name).clone(),
                    reason: "has an unsafe file name".into(),
                });
            }
            fs::write(tmp.join(file), data).map_err(io("write a temporary file in", &tmp))?;
        }
        let report = crate::audit::verify(&tmp, None, None).map_err(|e| BackupError::Damaged {
            path: path.to_path_buf(),
            part: "audit".into(),
            reason: e.to_string(),
        })?;
        match report.findings.iter().find(|f| f.severity == crate::audit::Severity::Error) {
            None => Ok(()),
            Some(f) => Err(BackupError::Damaged {
                path: path.to_path_buf(),
                part: format!("{AUDIT_PREFIX}{}", f.file),
                reason: format!("the audit chain does not verify: {}", f.message),
            }),
        }
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// SHA-256 over the registry tables, settings and admin audit trail of a snapshot document
/// (what a restore must reproduce exactly; not the applied log id or membership).
pub fn registry_digest(doc: &SnapshotDoc) -> String {
    let mut h = Sha256::new();
    for (table, rows) in &doc.tables {
        h.update(b"table\0");
        h.update(table.as_bytes());
        for (key, row) in rows {
            h.update(b"\0row\0");
            h.update(key.as_bytes());
            h.update(b"\0");
            h.update(row.get().as_bytes());
        }
        h.update(b"\n");
    }
    h.update(b"settings\0");
    if let Some(s) = &doc.settings {
        h.update(s.get().as_bytes());
    }
    h.update(b"\nadmin_audit\0");
    for (index, entry) in &doc.admin_audit {
        h.update(index.to_be_bytes());
        h.update(entry.get().as_bytes());
    }
    hex::encode(h.finalize())
}

/// One backup file found by [`list`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub file: PathBuf,
    pub size: u64,
    /// `None` when the manifest cannot be read (see `error`).
    pub manifest: Option<Manifest>,
    pub error: Option<String>,
}

/// The backup files in `dir` (by name, oldest index first); reads only their manifests.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BackupError::Io { action: "read the backup directory", path: dir.to_path_buf(), source: e }),
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != EXTENSION) {
            continue;
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        let (manifest, error) = match read_manifest(&path) {
            Ok(m) => (Some(m), None),
            Err(err) => (None, Some(err.to_string())),
        };
        out.push(Listed { file: path, size, manifest, error });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The manifest (first member) of a backup file, without checking the rest.
fn read_manifest(path: &Path) -> Result<Manifest, BackupError> {
    let mut f = fs::File::open(path).map_err(io("open the backup", path))?;
    let mut header = [0u8; BLOCK];
    f.read_exact(&mut header).map_err(io("read the backup", path))?;
    let size = parse_octal(&header[124..136]).unwrap_or(0).min(16 << 20);
    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
    f.read_exact(&mut data).map_err(io("read the backup", path))?;
    serde_json::from_slice(&data).map_err(|e| BackupError::Damaged {
        path: path.to_path_buf(),
        part: MANIFEST.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_VERSION};

    fn sample(dir: &Path, encrypt_to: &[String]) -> PathBuf {
        let doc = SnapshotDoc {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            last_applied: None,
            membership: Default::default(),
            tables: BTreeMap::new(),
            settings: None,
            admin_audit: Vec::new(),
            cluster: Default::default(),
        };
        let header = Header {
            id: "bk-1".into(),
            reason: "test".into(),
            created_at: "2026-11-23T00:00:00Z".into(),
            actor: "admin".into(),
            cluster_id: "c".into(),
            node_id: 1,
            node_name: "n1".into(),
            log_index: 0,
            log_term: 0,
        };
        let parts = vec![
            (REGISTRY_PART.to_owned(), "registry".to_owned(), doc.encode().unwrap()),
            (super::super::CONFIG_PART.to_owned(), "config".to_owned(), b"# dev\n".to_vec()),
        ];
        write(dir, &header, &parts, encrypt_to).unwrap()
    }

    #[test]
    fn round_trip_and_any_flipped_byte_is_refused() {
        let dir = std::env::temp_dir().join(format!("lgsp-bk-unit-{:x}", rand::random::<u64>()));
        let path = sample(&dir, &[]);
        let ok = verify(&path, None).unwrap();
        assert_eq!(ok.manifest.parts.len(), 2);
        let bytes = fs::read(&path).unwrap();
        // Every byte of the file matters: headers, data, padding, trailer.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let bad = dir.join("bad.lgspbak");
            fs::write(&bad, &b).unwrap();
            assert!(verify(&bad, None).is_err(), "a flipped byte at {i} was not detected");
        }
        for cut in [1, 512, bytes.len() / 2, bytes.len() - 1] {
            let bad = dir.join("cut.lgspbak");
            fs::write(&bad, &bytes[..bytes.len() - cut]).unwrap();
            assert!(verify(&bad, None).is_err(), "cutting {cut} bytes was not detected");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_encrypted_backup_is_checked_without_the_identity_and_opened_with_it() {
        let dir = std::env::temp_dir().join(format!("lgsp-bk-unit-{:x}", rand::random::<u64>()));
        let (identity, recipient) = crate::backup::keys::keygen();
        let (other, _) = crate::backup::keys::keygen();
        let plain = verify(&sample(&dir.join("plain"), &[]), None).unwrap();
        let path = sample(&dir, &[recipient]);
        let bytes = fs::read(&path).unwrap();
        // Nothing of the registry or the configuration is readable in the file.
        assert!(!bytes.windows(6).any(|w| w == b"# dev\n"), "the configuration part is in clear");
        assert!(!bytes.windows(SNAPSHOT_FORMAT.len()).any(|w| w == SNAPSHOT_FORMAT.as_bytes()), "the registry part is in clear");
        match check(&path, None).unwrap() {
            Checked::Sealed(m) => assert_eq!((m.id.as_str(), m.parts.len(), m.parts[0].kind.as_str()), ("bk-1", 1, ENCRYPTED_KIND)),
            Checked::Open(_) => panic!("opened without an identity"),
        }
        assert!(matches!(verify(&path, None), Err(BackupError::Encrypted { .. })));
        let opened = verify(&path, Some(&identity)).unwrap();
        assert!(opened.encrypted);
        assert_eq!(opened.registry_digest, plain.registry_digest);
        assert_eq!(opened.parts.len(), 2);
        let e = verify(&path, Some(&other)).unwrap_err().to_string();
        assert!(e.contains("cannot be decrypted with this identity"), "{e}");
        // A changed byte of the encrypted part is found without the identity.
        let mut b = bytes.clone();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        let bad = dir.join("bad.lgspbak");
        fs::write(&bad, &b).unwrap();
        assert!(check(&bad, None).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
