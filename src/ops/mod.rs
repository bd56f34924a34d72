//! Operational plumbing: logging set-up, shutdown signals, the metrics/status listener, host
//! figures and the Level 2 status checks.
//!
//! Invariants: nothing here knows the registry's internals beyond read-only counts handed to
//! it by `app`; secrets are never passed to a log macro.

pub mod host;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod status;
