//! Operational plumbing: logging set-up, shutdown signals, the metrics/status listener.
//!
//! Invariants: nothing here knows the registry's internals beyond read-only counts handed to
//! it by `app`; secrets are never passed to a log macro.

pub mod logging;
pub mod metrics;
pub mod shutdown;
