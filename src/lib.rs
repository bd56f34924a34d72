//! LGSP appliance: the city data center's data-sharing platform. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod notify;
pub mod ops;
pub mod probes;
pub mod registry;
pub mod report;
pub mod secrets;
