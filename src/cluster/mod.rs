//! Replication and storage of the registry. The only module that knows redb, openraft and
//! quinn.
//!
//! [`store::Store`] holds the replicated state (registry, cluster bookkeeping, admin audit) in
//! memory and in redb and is the Raft state machine ([`store::StateMachine`]): committed entries
//! are applied in memory and written in groups, each write one transaction with the applied log
//! id and the membership (fsynced every 10th; the log is the durable record and is applied again
//! after a crash). [`log_store::LogStore`] keeps the Raft log and vote in a second redb file,
//! its last entries also in memory for replication, and makes appends durable first in
//! [`journal`] (a checksummed record per append, moved into the file in batches);
//! [`snapshot`] owns the snapshot format and files. [`store::open_storage`] opens all three.
//! [`pki`] runs the cluster CA and node identities; [`transport`] carries RPCs between nodes
//! over QUIC with mutual TLS and implements openraft's network on top. [`node`] is one member:
//! Raft, write forwarding, read barriers, joins and membership; [`batch`] is its leader's group
//! commit (concurrent writes share one entry).
//! May import `registry` and `secrets` only.

pub mod batch;
pub mod journal;
pub mod log_store;
pub mod node;
pub mod pki;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod transport;
pub mod types;

#[cfg(test)]
mod storage_tests;

pub use log_store::{LogReader, LogStore};
pub use store::{open_storage, Applied, AuditEntry, BackupSnapshot, SnapshotBuilder, StateMachine, Store, StoreError};
