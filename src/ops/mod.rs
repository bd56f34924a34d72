//! Operational plumbing: logging set-up, process signals, the service manager's notifications
//! and watchdog, the reloadable TLS identity, the metrics/status listener, host figures and the
//! Level 2 status checks.
//!
//! Invariants: nothing here knows the registry's internals beyond read-only counts and checks
//! handed to it by `app`; secrets are never passed to a log macro.

pub mod host;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod status;
pub mod systemd;
pub mod tls;
