//! The registry: who may talk to whom (REQUIREMENTS R1–R9), as a deterministic state machine.
//!
//! Owns the model, the [`Command`] log format, the pure [`apply`] function and read views.
//! Invariants: no I/O, no clock, no randomness, and no `use crate::` of any other module
//! (checked by `tests/architecture.rs`). The cluster replicates [`Envelope`]s; every node applies
//! them with [`apply`] and reaches the same state.

pub mod apply;
pub mod command;
pub mod document;
pub mod dvhc;
pub mod error;
pub mod incident;
pub mod maintenance;
pub mod model;
pub mod notice;
pub mod rules;
pub mod state;
pub mod traffic;

pub use apply::{apply, Outcome};
pub use command::{Actor, Command, Decision, DeliveryOutcome, DeliveryResult, Envelope, NewAgency, ServiceSpec, FORMAT};
pub use error::RegistryError;
pub use model::*;
pub use state::{Changes, Entity, State, SETTINGS_TABLE};

#[cfg(test)]
mod tests;
