//! Replication and storage of the registry. The only module that knows redb, openraft and
//! quinn.
//!
//! [`store::Store`] holds the replicated state (registry, cluster bookkeeping, admin audit) in
//! redb and is the Raft state machine ([`store::StateMachine`]): each batch of committed
//! entries, their effects, the applied log id and the membership are committed in one fsynced
//! transaction. [`log_store::LogStore`] keeps the Raft log and vote in a second redb file;
//! [`snapshot`] owns the snapshot format and files. [`store::open_storage`] opens all three.
//! May import `registry` only.

pub mod log_store;
pub mod snapshot;
pub mod store;
pub mod types;

#[cfg(test)]
mod storage_tests;

pub use log_store::{LogReader, LogStore};
pub use store::{open_storage, Applied, AuditEntry, SnapshotBuilder, StateMachine, Store, StoreError};
