//! The Raft log's journal (`DATA_DIR/raft-log.wal`): the entries appended since the log file's
//! last durable transaction, each batch one checksummed record written and fdatasynced in place.
//!
//! A durable redb transaction rewrites a path of B-tree pages and the header in several places
//! of the file before its fsync; one small record in a preallocated file is a single write and
//! a data-only sync (no size or block change), about half the time on the benchmark disk. So
//! `log_store` makes appended entries durable here first and moves them into the redb log in
//! batches, with a durable transaction (a checkpoint once the journal holds
//! [`CHECKPOINT_BYTES`], or a vote, truncation or purge).
//!
//! Record: magic `LGJ1`, payload length (u32 LE), epoch (u64 LE), CRC-32 of length, epoch and
//! payload (u32 LE), payload. The file has two halves; epoch `e` writes its records one after
//! the other from the start of half `e % 2`. The log file names an epoch `m`: the records of
//! `m` and then of `m + 1` are the journal, any other record (from an older epoch, left in the
//! file) or a torn last record (bad checksum) ends a half. A checkpoint moves the journal to the
//! next epoch (new records go to the other half, appends never wait for the checkpoint), then
//! writes the entries of the old epoch into the log file with the new epoch's number in one
//! durable transaction: the old half is then dead and may be overwritten by the epoch after.
//! A vote, truncation or purge writes every entry into the file and names a new epoch whose
//! half holds nothing yet, so a record from before a truncation is never read again.
//!
//! Owns the file only; what a payload holds is `log_store`'s. May import `cluster::store` (its
//! error type) only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::store::StoreError;

const MAGIC: &[u8; 4] = b"LGJ1";
const HEADER: usize = 20;

/// The journal file's size, written with zeros when it is created so that records overwrite
/// allocated blocks (the sync after a record then changes no metadata). Each half holds one
/// epoch.
pub const JOURNAL_SIZE: u64 = 2 << 20;
const HALF: u64 = JOURNAL_SIZE / 2;

/// How full the journal may get before the log store checkpoints (a durable transaction of the
/// log file, which restarts the journal).
pub const CHECKPOINT_BYTES: u64 = 256 << 10;

/// The journal file, open for writing at the end of its current epoch's records.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    epoch: u64,
    /// Where the next record goes in the epoch's half: the length of its records.
    pos: u64,
}

fn half_of(epoch: u64) -> u64 {
    (epoch % 2) * HALF
}

fn failed<'a>(path: &'a Path, what: &'a str) -> impl Fn(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::Storage(format!("cannot {what} the Raft log's journal {}: {e}", path.display()))
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads the payloads of its records of
    /// `epoch` (the one the log file names) and then of `epoch + 1`, in order. The journal goes
    /// on after the last of them, in the later epoch if it has any.
    pub fn open(path: &Path, epoch: u64) -> Result<(Journal, Vec<Vec<u8>>), StoreError> {
        let created = !path.exists();
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(failed(path, "open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(failed(path, "read"))?;
        if bytes.len() as u64 != JOURNAL_SIZE {
            // New, or cut short by a crash while it was created: fill what is missing with zeros.
            let missing = JOURNAL_SIZE.saturating_sub(bytes.len() as u64) as usize;
            file.write_all(&vec![0u8; missing]).map_err(failed(path, "create"))?;
            file.set_len(JOURNAL_SIZE.max(bytes.len() as u64)).map_err(failed(path, "create"))?;
            file.sync_all().map_err(failed(path, "create"))?;
            if created {
                if let Some(dir) = path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(failed(path, "create"))?;
                }
            }
        }
        let (mut records, pos) = records_of(&bytes, epoch);
        let (next, next_pos) = records_of(&bytes, epoch + 1);
        let (epoch, pos) = if next.is_empty() { (epoch, pos) } else { (epoch + 1, next_pos) };
        records.extend(next);
        Ok((Journal { file, path: path.to_path_buf(), epoch, pos }, records))
    }

    /// The epoch this journal writes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many bytes the current epoch's records take.
    pub fn used(&self) -> u64 {
        self.pos
    }

    /// True when a record with `len` payload bytes fits in the epoch's half.
    pub fn fits(&self, len: usize) -> bool {
        self.pos + (HEADER + len) as u64 <= HALF
    }

    /// Writes one record and syncs it: when this returns, the payload survives a crash.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), StoreError> {
        if !self.fits(payload.len()) {
            return Err(StoreError::Storage(format!(
                "the Raft log's journal {} has no room for a {}-byte record; this is a bug, restart the node",
                self.path.display(),
                payload.len()
            )));
        }
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::Storage("a journal record over 4 GiB".into()))?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&checksum(len, self.epoch, payload).to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all_at(&record, half_of(self.epoch) + self.pos).map_err(failed(&self.path, "write"))?;
        self.file.sync_data().map_err(failed(&self.path, "sync"))?;
        self.pos += record.len() as u64;
        Ok(())
    }

    /// Starts the next epoch, at the beginning of the other half. Only while the log file
    /// names the current epoch or the new one: the other half's records are then dead.
    pub fn next_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.pos = 0;
        self.epoch
    }
}

fn checksum(len: u32, epoch: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The payloads of the records of `epoch` from the start of its half, and where they end.
fn records_of(file: &[u8], epoch: u64) -> (Vec<Vec<u8>>, u64) {
    let start = half_of(epoch) as usize;
    let bytes = file.get(start..(start + HALF as usize).min(file.len())).unwrap_or_default();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let field = |at: usize, n: usize| &header[at..at + n];
        let len = u32::from_le_bytes(field(4, 4).try_into().unwrap_or_default());
        let their_epoch = u64::from_le_bytes(field(8, 8).try_into().unwrap_or_default());
        let sum = u32::from_le_bytes(field(16, 4).try_into().unwrap_or_default());
        let Some(payload) = bytes.get(pos + HEADER..pos + HEADER + len as usize) else { break };
        if field(0, 4) != MAGIC || their_epoch != epoch || checksum(len, their_epoch, payload) != sum {
            break;
        }
        out.push(payload.to_vec());
        pos += HEADER + len as usize;
    }
    (out, pos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(path: &Path, epoch: u64) -> Vec<Vec<u8>> {
        Journal::open(path, epoch).expect("open").1
    }

    #[test]
    fn records_of_the_current_epoch_come_back_in_order() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("j.wal");
        let (mut j, none) = Journal::open(&path, 7).expect("open");
        assert!(none.is_empty());
        assert_eq!(std::fs::metadata(&path).expect("file").len(), JOURNAL_SIZE, "preallocated");
        j.append(b"one").expect("append");
        j.append(b"two").expect("append");
        assert_eq!(j.used(), 2 * HEADER as u64 + 6);
        drop(j);
        assert_eq!(reopen(&path, 7), vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(reopen(&path, 8).is_empty(), "another epoch's records are not the journal");
        let (j, _) = Journal::open(&path, 7).expect("open");
        assert_eq!(j.used(), 2 * HEADER as u64 + 6, "goes on after them");
    }

    #[test]
    fn a_torn_record_ends_the_journal() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("j.wal");
        let (mut j, _) = Journal::open(&path, 1).expect("open");
        j.append(b"kept").expect("append");
        j.append(b"torn record").expect("append");
        j.append(b"after").expect("append");
        drop(j);
        // Damage one byte of the second record's payload, as a crash mid-write would.
        let file = OpenOptions::new().write(true).open(&path).expect("file");
        file.write_all_at(b"X", half_of(1) + (HEADER + 4 + HEADER + 2) as u64).expect("write");
        assert_eq!(reopen(&path, 1), vec![b"kept".to_vec()]);
    }

    #[test]
    fn the_named_epoch_and_the_next_are_the_journal_and_no_other() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("j.wal");
        let (mut j, _) = Journal::open(&path, 1).expect("open");
        j.append(b"old 1").expect("append");
        j.append(b"old 2").expect("append");
        assert_eq!(j.next_epoch(), 2);
        assert_eq!(j.used(), 0);
        j.append(b"new").expect("append");
        drop(j);
        // A checkpoint in flight: the file still names epoch 1.
        let (j, records) = Journal::open(&path, 1).expect("open");
        assert_eq!(records, vec![b"old 1".to_vec(), b"old 2".to_vec(), b"new".to_vec()]);
        assert_eq!((j.epoch(), j.used()), (2, HEADER as u64 + 3), "goes on in the later epoch");
        drop(j);
        // The checkpoint done: epoch 1's records are dead.
        assert_eq!(reopen(&path, 2), vec![b"new".to_vec()]);
        // Epoch 3 overwrites epoch 1's half; what is left of epoch 1 there is never read.
        let (mut j, _) = Journal::open(&path, 2).expect("open");
        assert_eq!(j.next_epoch(), 3);
        j.append(b"3").expect("append");
        drop(j);
        assert_eq!(reopen(&path, 3), vec![b"3".to_vec()]);
        assert!(reopen(&path, 4).is_empty());
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_and_a_short_file_is_filled() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("j.wal");
        std::fs::write(&path, b"short").expect("write");
        let (mut j, records) = Journal::open(&path, 1).expect("open");
        assert!(records.is_empty());
        assert_eq!(std::fs::metadata(&path).expect("file").len(), JOURNAL_SIZE);
        let big = vec![1u8; JOURNAL_SIZE as usize];
        assert!(!j.fits(big.len()));
        assert!(j.append(&big).is_err());
        assert_eq!(j.used(), 0, "nothing written");
    }
}
