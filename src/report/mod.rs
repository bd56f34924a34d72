//! Periodic reports (O6; HP Art. 12.6 yearly in December, HP Art. 14.3 monthly by the
//! operator, HN Art. 7.7 and 16.13 periodic reports on security, connections and exchanges):
//! transactions per service and agency, success rates, latency percentiles, uptime per
//! connected system, incidents, maintenance, subscription requests and service levels, for a
//! month or a year, as JSON, HTML (inline SVG charts) or CSV.
//!
//! May import `registry` (model, traffic rollups), `audit` (a node's own rollup), `probes`
//! (history aggregates, read-only types) and `config`; never `cluster`, `admin` or `gateway`
//! (`app.rs` wires the publisher, `admin` calls [`model::build`]).
//!
//! # Files
//!
//! | file | owns |
//! |---|---|
//! | `period.rs` | [`Period`]: a month or a year in Vietnam time, parsing and bounds |
//! | `model.rs` | the [`Report`] model and the pure [`build`] |
//! | `incidents.rs` | the incidents section: incidents of the period from the replicated incident log |
//! | `incident_report.rs` | one incident's report (HP Art. 10.5g): JSON model and self-contained HTML |
//! | `html.rs` | the self-contained HTML page with SVG charts |
//! | `csv.rs` | the CSV tables |
//! | `publish.rs` | the node's rollup publisher (its audit log → `PublishTrafficRollup`) |
//!
//! # Why rollups
//!
//! A node's audit log holds only the transactions that node proxied. Each node therefore
//! publishes, through Raft, its rollup per local day (`registry::traffic`): rows of consumer ×
//! service version × outcome with counts, bytes and a fixed-bucket latency histogram, keyed
//! `{day}/{node}`, so republishing replaces. The report reads only replicated rollups and can be
//! made on any node, including while the node that proxied the traffic is down.

pub mod csv;
pub mod html;
pub mod incident_report;
pub mod incidents;
pub mod model;
pub mod period;
pub mod publish;

use thiserror::Error;

pub use model::{build, Inputs, ProbeHistory, Report, Targets};
pub use period::Period;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{0}")]
    Period(String),
    #[error("{0}")]
    Format(String),
}
