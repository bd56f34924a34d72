//! Replication and storage of the registry. The only module that knows redb, openraft and
//! quinn.
//!
//! [`store::Store`] applies each committed [`crate::registry::Envelope`] and commits the changed
//! rows, the applied log id and the admin-audit entry in one fsynced redb transaction.
//! [`pki`] runs the cluster CA and node identities; [`transport`] carries RPCs between nodes
//! over QUIC with mutual TLS and implements openraft's network on top.
//! May import `registry` and, for key files and random serials, the `secrets` helpers only.

pub mod pki;
pub mod store;
pub mod transport;
pub mod types;

pub use store::{AuditEntry, Store, StoreError};
