//! 24/7 health probes of registered systems and service versions (issue 6; requirements O2,
//! O3; design in ARCHITECTURE.md "Probes").
//!
//! Owns: the checks themselves (`check`: HTTP(S), TCP connect, TLS certificate expiry), flap
//! suppression and status changes (`state`), and which live node probes which target
//! (`assign`), the scheduler (`runner`), history on `probes.redb` (`history`) and the node's
//! running service (`service`: assignment over live nodes, status-change proposals, gossip of
//! results), wired to the cluster by `app.rs` through `service::Cluster`.
//!
//! May import `registry` (read-only model types such as `ProbeSpec`) and `config`; never
//! `cluster`, `admin` or `gateway` (`app.rs` wires probes to them). Keeps the registry pure:
//! nothing here writes to it except through commands proposed by `app`.

pub mod assign;
pub mod check;
pub mod history;
pub mod runner;
pub mod service;
pub mod state;

/// One check's verdict, ordered from best to worst (the registry's replicated type).
pub use crate::registry::model::ProbeHealth as Health;
