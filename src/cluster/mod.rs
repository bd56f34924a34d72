//! Replication and storage of the registry. The only module that knows redb, openraft and
//! quinn.
//!
//! [`store::Store`] applies each committed [`crate::registry::Envelope`] and commits the changed
//! rows, the applied log id and the admin-audit entry in one fsynced redb transaction.
//! May import `registry` only.

pub mod store;
pub mod types;

pub use store::{AuditEntry, Store, StoreError};
