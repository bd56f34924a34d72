//! The `keys.age` part of a backup: the node's secret files (the cluster's `secrets.key` and
//! the node's `audit-signing.key`) in a small tar, encrypted with age to the X25519 recipients
//! of `[backup] recipients`; opened at restore with the matching identity file.
//!
//! Also the age encryption of a whole backup (`[backup] encrypt`), with the same recipients.
//!
//! Invariants: the plaintext of these files never reaches a backup file; without recipients
//! there is no `keys.age` at all; an identity that does not match is refused with a clear
//! error before anything is written.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::str::FromStr;

/// The files sealed into `keys.age`, by their name in the data directory.
pub const SEALED_FILES: [&str; 2] = ["secrets.key", "audit-signing.key"];

/// Checks a recipient string (`age1...`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| format!("{:?} is not an age X25519 recipient (age1...): {e}", text.trim()))
}

/// Encrypts `files` (name, bytes) to every recipient.
pub fn seal(files: &[(String, Vec<u8>)], recipients: &[String]) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes.as_slice()).map_err(|e| format!("cannot pack the keys: {e}"))?;
    }
    let plain = b.into_inner().map_err(|e| format!("cannot pack the keys: {e}"))?;
    encrypt(&plain, recipients)
}

/// Encrypts `plain` with age to every recipient.
pub fn encrypt(plain: &[u8], recipients: &[String]) -> Result<Vec<u8>, String> {
    let parsed = recipients.iter().map(|r| parse_recipient(r)).collect::<Result<Vec<_>, _>>()?;
    let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| format!("cannot encrypt the backup: {e}"))?;
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).map_err(|e| format!("cannot encrypt the backup: {e}"))?;
    w.write_all(plain).map_err(|e| format!("cannot encrypt the backup: {e}"))?;
    w.finish().map_err(|e| format!("cannot encrypt the backup: {e}"))?;
    Ok(out)
}

/// Decrypts the age-encrypted part `what` with the identities in `identity_file` (an age
/// identity file: `AGE-SECRET-KEY-1...` lines, `#` comments).
pub fn decrypt(sealed: &[u8], identity_file: &str, what: &str) -> Result<Vec<u8>, String> {
    let identities = identity_file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            age::x25519::Identity::from_str(l)
                .map_err(|e| format!("the identity file holds a line that is not an age X25519 identity: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if identities.is_empty() {
        return Err("the identity file holds no age identity (AGE-SECRET-KEY-1...)".into());
    }
    let dec = age::Decryptor::new_buffered(sealed).map_err(|e| format!("{what} cannot be read: {e}"))?;
    let mut r = dec.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).map_err(|e| {
        format!("{what} cannot be decrypted with this identity ({e}); use the identity whose public key is in [backup] recipients")
    })?;
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).map_err(|e| format!("{what} is damaged: {e}"))?;
    Ok(plain)
}

/// Decrypts `keys.age` with the identities in `identity_file`.
pub fn open(sealed: &[u8], identity_file: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let plain = decrypt(sealed, identity_file, super::KEYS_PART)?;
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(plain.as_slice());
    for e in a.entries().map_err(|e| format!("keys.age is damaged: {e}"))? {
        let mut e = e.map_err(|e| format!("keys.age is damaged: {e}"))?;
        let name = e.path().map_err(|e| format!("keys.age is damaged: {e}"))?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).map_err(|e| format!("keys.age is damaged: {e}"))?;
        if SEALED_FILES.contains(&name.as_str()) {
            out.insert(name, bytes);
        }
    }
    Ok(out)
}

/// A new identity file's text and its recipient (`lgsp backup keygen`).
pub fn keygen() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
    (format!("# lgsp backup identity; public key (for [backup] recipients): {recipient}\n{secret}\n"), recipient)
}
