//! The gateway (SPEC §3–4): the data plane agencies' systems call. Authenticates the calling
//! system, checks its subscription, enforces rate limits, streams the request to the
//! provider and the answer back, and writes a metadata-only audit record.
//!
//! Layout: `server` (listener, TLS, HTTP/1.1+2) → `stack` (phase order, written once) using
//! `oauth`, `httpsig`, `digest`, `rate_limit`, `upstream`, `body`; `shared` holds the nonce and
//! jti replay caches and rate limits that the cluster keeps in step by gossip; `rescue` turns
//! refusals into the JSON envelope; `view` is the registry as the gateway reads it; `metrics`;
//! `feed` is the public maintenance feed (`/maintenance.json`, `/maintenance.atom`).
//! Invariants: never imports `cluster` or `admin`; reads the registry only through the view
//! handed over on a watch channel, so it keeps serving the last view if the registry stalls;
//! payloads are never written anywhere.

pub mod body;
pub mod digest;
pub mod feed;
pub mod httpsig;
pub mod metrics;
pub mod oauth;
pub mod rate_limit;
pub mod rescue;
pub mod server;
pub mod shared;
pub mod stack;
pub mod upstream;
pub mod view;

pub use shared::{Outbox, SharedState};
pub use stack::{Gateway, Proposer};
pub use view::View;
