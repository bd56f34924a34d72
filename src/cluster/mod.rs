//! Replication and storage of the registry. The only module that knows redb (and, from the
//! cluster issue on, openraft and quinn).
//!
//! Today a single node: [`store::Store`] applies each proposed [`crate::registry::Envelope`] and
//! commits the changed rows, the applied index and the admin-audit entry in one fsynced redb
//! transaction. May import `registry` only.

pub mod store;

pub use store::{AuditEntry, Store, StoreError};
