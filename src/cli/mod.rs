//! The `lgsp` command line (SPEC §6): `serve` and `dev` run the appliance; every other command
//! talks to a node's admin API. `--json` prints the API's JSON unchanged; otherwise lists are
//! printed as aligned columns and objects as indented JSON.
//!
//! Invariants: `anyhow` lives here and in `main.rs` only; usage and configuration errors (and
//! `serve` on a node not yet initialised) exit 64, refused or failed operations exit 1; secrets
//! are read from stdin or the environment, never required on the command line.

pub mod client;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use client::{Client, Connection};

/// Exit code for bad configuration or usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "lgsp", version, about = "City LGSP appliance: data-sharing platform for a city's agencies")]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a node from a configuration file
    Serve {
        #[arg(long, default_value = "/etc/lgsp/lgsp.toml")]
        config: PathBuf,
    },
    /// Run a complete single-node appliance on loopback for evaluation (plain HTTP)
    Dev(DevArgs),
    /// Log in with a username and password (read from stdin); prints a session token
    Login {
        #[arg(long)]
        username: String,
    },
    /// Agencies and their restructuring (rename, split, merge, dissolve)
    #[command(subcommand)]
    Agency(AgencyCmd),
    /// Information systems
    #[command(subcommand)]
    System(SystemCmd),
    /// Services and versions
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Subscriptions: request, provider approval, operator approval
    #[command(subcommand)]
    Subscription(SubscriptionCmd),
    /// Consumer credentials (secrets shown once)
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Shared catalogs (danh mục dùng chung)
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Admin accounts
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// Audit trails
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Declarative registry import and export (TOML or JSON)
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// The cluster: create it, join nodes, membership, status
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// This node's service state: drain it before maintenance, resume it after
    #[command(subcommand)]
    Node(NodeCmd),
    /// Maintenance windows announced to affected agencies (minimum notice, office hours)
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Health probes of systems and service versions: set, clear, list, history, uptime
    #[command(subcommand)]
    Probe(ProbeCmd),
    /// Backups: create one on every node, list this node's, verify a file offline
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The incident log (O5): open (every node backs up first), update, resolve, list, show, and
    /// the incident report of a serious incident
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// Periodic report of the whole cluster: a month (operator's monthly report) or a year
    /// (the December report): traffic, success, latency, uptime, maintenance, subscriptions, SLA
    Report(ReportArgs),
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub gateway_addr: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub admin_addr: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
    /// Let the OS pick every port (see dev.json for the URLs)
    #[arg(long)]
    pub ephemeral_ports: bool,
    /// Extra CA certificates (PEM) to trust for HTTPS providers
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// This node's name in the cluster
    #[arg(long, default_value = "dev")]
    pub name: String,
    /// The cluster (QUIC) listener; with --ephemeral-ports a free port is chosen once and kept
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub cluster_addr: std::net::SocketAddr,
    /// Snapshot and compact the Raft log every this many entries
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// Entries kept behind a snapshot
    #[arg(long)]
    pub keep_logs: Option<u64>,
    /// Raft heartbeat (ms)
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout (ms)
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// A TOML file with `[notify]`, `[maintenance]`, `[backup]` and `[report]` sections (as in
    /// lgsp.toml), for trying notices, maintenance windows, scheduled backups and reports in dev mode
    #[arg(long)]
    pub ops_config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Make this node the first of a new cluster (creates the cluster CA); run once, offline
    Init {
        #[arg(long, default_value = "/etc/lgsp/lgsp.toml")]
        config: PathBuf,
    },
    /// Join an existing cluster with a one-time token; run offline on the new node, then start it
    Join {
        /// From `lgsp cluster token create` (or set LGSP_JOIN_TOKEN)
        #[arg(long, env = "LGSP_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// host:port of any member's cluster listener
        #[arg(long)]
        peer: String,
        /// The node's configuration file
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// For a dev node: its data directory (instead of --config)
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// For a dev node: its name
        #[arg(long, default_value = "dev")]
        name: String,
        /// For a dev node: its cluster listener (port 0 picks a free one)
        #[arg(long, default_value = "127.0.0.1:0")]
        cluster_addr: std::net::SocketAddr,
    },
    /// Leader, term, log indices, and each node's role and lag
    Status,
    /// Join tokens
    #[command(subcommand)]
    Token(JoinTokenCmd),
    /// Make a caught-up learner a voter
    Promote { node_id: u64 },
    /// Remove a node from the cluster
    Remove { node_id: u64 },
    /// Hand leadership to another voter
    TransferLeader { node_id: u64 },
    /// Take the node you are connected to out of the cluster
    Leave,
    /// Give the node you are connected to a new cluster certificate (no downtime)
    RotateCert,
}

/// What a window takes out of service, and its reason in both languages.
#[derive(Debug, Args)]
pub struct WindowArgs {
    /// `platform`, `nodes:NAME[,NAME..]` or `services:CONTEXT[,CONTEXT..]`
    #[arg(long)]
    pub scope: Option<String>,
    /// Start (RFC 3339, e.g. 2026-12-06T22:00:00+07:00)
    #[arg(long)]
    pub start: Option<String>,
    /// End (RFC 3339)
    #[arg(long)]
    pub end: Option<String>,
    /// Reason in Vietnamese
    #[arg(long)]
    pub reason_vi: Option<String>,
    /// Reason in English
    #[arg(long)]
    pub reason_en: Option<String>,
    /// Shorter notice than [maintenance] min_notice: give --emergency-reason
    #[arg(long)]
    pub emergency: bool,
    #[arg(long, default_value = "")]
    pub emergency_reason: String,
}

impl WindowArgs {
    fn body(&self) -> Result<Value> {
        let mut b = serde_json::Map::new();
        if let Some(s) = &self.scope {
            let scope = match s.split_once(':') {
                None if s == "platform" => json!({"kind": "platform"}),
                Some(("nodes", n)) => json!({"kind": "nodes", "nodes": n.split(',').map(str::trim).collect::<Vec<_>>()}),
                Some(("services", v)) => json!({"kind": "services", "services": v.split(',').map(str::trim).collect::<Vec<_>>()}),
                _ => anyhow::bail!("--scope {s:?}: use platform, nodes:NAME[,NAME] or services:CONTEXT[,CONTEXT]"),
            };
            b.insert("scope".into(), scope);
        }
        for (k, v) in [("start", &self.start), ("end", &self.end)] {
            if let Some(v) = v {
                b.insert(k.into(), json!(v));
            }
        }
        match (&self.reason_vi, &self.reason_en) {
            (Some(vi), Some(en)) => {
                b.insert("reason".into(), json!({"vi": vi, "en": en}));
            }
            (None, None) => {}
            _ => anyhow::bail!("give the reason in both languages: --reason-vi and --reason-en"),
        }
        if self.emergency {
            b.insert("emergency".into(), json!(true));
            b.insert("emergency_reason".into(), json!(self.emergency_reason));
        }
        Ok(Value::Object(b))
    }
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCmd {
    /// List windows (newest start first)
    List,
    /// Announce a window; affected agencies and the operator are notified
    Announce {
        /// An id for the window (generated if left out)
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Change a window's scope, times or reason
    Change {
        id: String,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Cancel a window
    Cancel {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Take the node you are connected to out of service: /status answers 503 (load balancers
    /// stop sending traffic), leadership moves away; refused if fewer than a quorum of healthy
    /// voters would stay in service
    Drain,
    /// Put the node you are connected to back in service
    Resume,
}

/// What a probe belongs to: `--system ID`, or `--service CONTEXT --version V`.
#[derive(Debug, Args)]
pub struct ProbeOwnerArgs {
    #[arg(long, conflicts_with_all = ["service", "version"], required_unless_present = "service")]
    pub system: Option<String>,
    #[arg(long, requires = "version")]
    pub service: Option<String>,
    #[arg(long, requires = "service")]
    pub version: Option<String>,
}

impl ProbeOwnerArgs {
    fn path(&self) -> String {
        match (&self.system, &self.service, &self.version) {
            (Some(id), _, _) => format!("/api/v1/systems/{id}/probe"),
            (None, Some(s), Some(v)) => format!("/api/v1/services/{s}/versions/{v}/probe"),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ProbeCmd {
    /// Set (or replace) the probe agreed at registration
    Set {
        #[command(flatten)]
        owner: ProbeOwnerArgs,
        /// http (GET a URL, expect a status), tcp (connect) or tls (handshake, certificate days left)
        #[arg(long)]
        kind: String,
        /// URL for http, host:port for tcp and tls
        #[arg(long)]
        target: String,
        /// Seconds between checks (10-3600)
        #[arg(long, default_value_t = 30)]
        interval: u32,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u32,
        /// HTTP status meaning healthy
        #[arg(long, default_value_t = 200)]
        expect_status: u16,
        /// Fewer days left on the certificate than this is degraded
        #[arg(long, default_value_t = 21)]
        tls_warn_days: u32,
    },
    /// Remove a probe
    Clear {
        #[command(flatten)]
        owner: ProbeOwnerArgs,
    },
    /// Every probe with its status and latest result (from whichever node probes it)
    List,
    /// Hourly or daily aggregates and status changes of one probe (target as in `list`)
    History {
        target: String,
        #[arg(long)]
        daily: bool,
        /// RFC 3339 instant (default: 7 days before --to)
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 instant (default: now)
        #[arg(long)]
        to: Option<String>,
    },
    /// Uptime per day and for the month of a system's probes (and its service versions')
    Uptime {
        system: String,
        /// YYYY-MM (default: this month, UTC)
        #[arg(long)]
        month: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCmd {
    /// Create a one-time join token (printed once)
    Create {
        /// Keep the node a learner (non-voting) instead of promoting it once caught up
        #[arg(long)]
        learner: bool,
        /// Validity in seconds
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgencyCmd {
    List {
        #[arg(long)]
        status: Option<String>,
    },
    Show {
        code: String,
    },
    Create {
        #[arg(long)]
        code: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// Rename, optionally under a new identifier code
    Rename {
        code: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        new_code: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Split into new agencies: --into CODE=NAME (twice or more), --assign SYSTEM=CODE for every system
    Split {
        code: String,
        #[arg(long, required = true)]
        into: Vec<String>,
        #[arg(long)]
        assign: Vec<String>,
        #[arg(long)]
        reason: String,
    },
    /// Merge --source agencies into --into-code (new or existing)
    Merge {
        #[arg(long, required = true)]
        source: Vec<String>,
        #[arg(long)]
        into_code: String,
        #[arg(long)]
        into_name: String,
        #[arg(long)]
        reason: String,
    },
    Dissolve {
        code: String,
        #[arg(long)]
        successor: Option<String>,
        #[arg(long)]
        reason: String,
    },
    Suspend {
        code: String,
        #[arg(long)]
        reason: String,
    },
    Reinstate {
        code: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    List {
        #[arg(long)]
        agency: Option<String>,
    },
    Show {
        id: String,
    },
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        agency: String,
        #[arg(long)]
        name: String,
        /// NĐ 85/2016 security level (1-5)
        #[arg(long, conflicts_with = "commitment")]
        security_level: Option<u8>,
        /// Reference of a signed security commitment (Form 03)
        #[arg(long, requires = "signed_on")]
        commitment: Option<String>,
        #[arg(long)]
        signed_on: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    List,
    Show {
        context: String,
    },
    Create {
        #[arg(long)]
        context: String,
        #[arg(long)]
        provider_system: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "json")]
        format: String,
        #[arg(long = "method")]
        methods: Vec<String>,
    },
    AddVersion {
        context: String,
        version: String,
        #[arg(long)]
        production: Option<String>,
        #[arg(long)]
        test: Option<String>,
    },
    Publish {
        context: String,
        version: String,
    },
    Deprecate {
        context: String,
        version: String,
        /// RFC 3339 instant, e.g. 2027-06-01T00:00:00+07:00
        #[arg(long)]
        retire_at: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        override_reason: Option<String>,
    },
    Retire {
        context: String,
        version: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        override_reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCmd {
    List {
        #[arg(long)]
        state: Option<String>,
    },
    Show {
        id: String,
    },
    Request {
        #[arg(long)]
        consumer_system: String,
        #[arg(long)]
        service: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        environment: String,
        #[arg(long)]
        purpose: String,
    },
    ProviderApprove {
        id: String,
    },
    Approve {
        id: String,
    },
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    List {
        #[arg(long)]
        system: Option<String>,
    },
    Issue {
        #[arg(long)]
        system: String,
        #[arg(long)]
        environment: String,
        #[arg(long)]
        hmac: bool,
    },
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Replace the public keys (RFC 9421, private_key_jwt): --key KEYID:ALG:PEMFILE, repeatable
    SetKeys {
        id: String,
        #[arg(long = "key")]
        keys: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    List,
    Show {
        code: String,
    },
    Create {
        #[arg(long)]
        code: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_agency: String,
    },
    /// Publish a new version from FILE: JSON {fields, entries}, or --format dvhc for dvhc-2025.json
    Publish {
        code: String,
        file: PathBuf,
        #[arg(long, default_value = "json")]
        format: String,
        #[arg(long)]
        append: bool,
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    List,
    /// Create a user; the password is read from stdin
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        agency: Option<String>,
        #[arg(long, default_value = "")]
        display_name: String,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    Unlock {
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    List,
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back up every node at one log index (each node writes its own file); waits for this node's
    Create {
        /// Why (kept in the backup's manifest and the admin audit trail), e.g. "before incident 42"
        #[arg(long)]
        reason: String,
    },
    /// This node's backup files
    List,
    /// Check a backup file offline: every checksum, the manifest, the registry snapshot and the
    /// audit chain (exit 1 naming the damaged part). An encrypted backup is checked up to its
    /// encrypted part without --identity, completely with it
    Verify {
        file: PathBuf,
        /// An age identity file (from `lgsp backup keygen`) that opens an encrypted backup
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Offline: make DIR a new one-node cluster holding the backup's registry and audit log
    /// (verifies first; refuses a directory with data unless --force, which moves it aside)
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Restore even if DIR holds data (its contents are moved to DIR.before-restore-TIME)
        #[arg(long)]
        force: bool,
        /// The restored node's name (default: the backed-up node's)
        #[arg(long)]
        name: Option<String>,
        /// host:port other nodes will dial for the cluster listener (port 0: pick a free one)
        #[arg(long, default_value = "127.0.0.1:0")]
        cluster_addr: String,
        /// The cluster's secrets.key (keep a copy offline): without it sealed secrets and
        /// access tokens issued before the backup do not survive
        #[arg(long)]
        secrets_key: Option<PathBuf>,
        /// The node's audit-signing.key, to continue its audit chain with the same key
        #[arg(long)]
        audit_key: Option<PathBuf>,
        /// An age identity file (from `lgsp backup keygen`) that opens the backup's keys.age
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Make an age identity for encrypting the keys in backups: writes the identity to FILE
    /// (keep it offline) and prints the recipient for `[backup] recipients`
    Keygen {
        #[arg(long)]
        output: PathBuf,
    },
}

/// Severity levels of an incident (see ARCHITECTURE.md, "Incidents").
const SEVERITIES: [&str; 3] = ["normal", "serious", "national"];

#[derive(Debug, Subcommand)]
pub enum IncidentCmd {
    /// Open an incident: every node backs up first (HP Art. 10.5c, reason "pre-incident: TITLE"),
    /// then the incident is recorded (even if the backup failed: the output then says so) and
    /// those affected are told the expected fix time
    Open {
        /// An id for the incident (generated if left out)
        #[arg(long)]
        id: Option<String>,
        /// Title in Vietnamese (also the English title unless --title-en)
        #[arg(long)]
        title: String,
        /// Title in English
        #[arg(long)]
        title_en: Option<String>,
        /// normal, serious (nghiêm trọng: several agencies, a report is due) or national
        #[arg(long, value_parser = SEVERITIES)]
        severity: String,
        /// An affected service context (repeat for several)
        #[arg(long = "service")]
        services: Vec<String>,
        /// An affected agency code (repeat for several)
        #[arg(long = "agency")]
        agencies: Vec<String>,
        /// When it was detected (default now), e.g. 2026-12-07T08:30+07:00
        #[arg(long)]
        detected: Option<String>,
        /// Expected fix time, e.g. 2026-12-07T10:00+07:00 (notified to those affected)
        #[arg(long)]
        expected_fix: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Add a timeline entry: a note and/or changes (a new expected fix time is notified)
    Update {
        id: String,
        #[arg(long)]
        note: Option<String>,
        /// open, isolated, fixing or monitoring (resolve with `lgsp incident resolve`)
        #[arg(long, value_parser = ["open", "isolated", "fixing", "monitoring"])]
        status: Option<String>,
        #[arg(long)]
        expected_fix: Option<String>,
        #[arg(long, value_parser = SEVERITIES)]
        severity: Option<String>,
        /// Replaces the affected services (repeat for several)
        #[arg(long = "service")]
        services: Vec<String>,
        /// Replaces the affected agencies (repeat for several)
        #[arg(long = "agency")]
        agencies: Vec<String>,
        #[arg(long)]
        cause: Option<String>,
        /// Beyond the operator's capacity: Sở KH&CN and related units were asked to help
        #[arg(long)]
        escalate: bool,
    },
    /// Resolve an incident; those affected are notified
    Resolve {
        id: String,
        #[arg(long)]
        resolution: String,
        #[arg(long)]
        cause: Option<String>,
    },
    /// The incident log, newest first
    List {
        /// Only incidents not resolved yet
        #[arg(long)]
        open: bool,
    },
    /// An incident with its timeline
    Show { id: String },
    /// The incident report (HTML by default; --json or --format json for JSON)
    Report {
        id: String,
        #[arg(long, default_value = "html", value_parser = ["html", "json"])]
        format: String,
        /// Write to this file instead of standard output
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// An instant given on the command line: RFC 3339, seconds optional (2026-12-07T10:00+07:00).
fn instant(flag: &str, s: &str) -> Result<String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%:z"))
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%#z"))
        .map_err(|_| anyhow::anyhow!("{flag} {s:?}: give a time with its offset, e.g. 2026-12-07T10:00+07:00"))?;
    Ok(t.to_rfc3339())
}

/// `lgsp incident show` as text: the record, then the timeline.
fn print_incident(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!("incident {}: {} / {}", s("id"), v["title"]["vi"].as_str().unwrap_or(""), v["title"]["en"].as_str().unwrap_or(""));
    for k in [
        "severity",
        "status",
        "detected_at",
        "expected_fix_at",
        "resolved_at",
        "services",
        "affected_agencies",
        "escalated",
        "serious",
        "cause",
        "resolution",
    ] {
        println!("  {k:<18} {}", s(k));
    }
    let b = &v["backup"];
    match b["status"].as_str() {
        Some("ok") => println!(
            "  {:<18} {} at log index {} ({})",
            "backup",
            b["id"].as_str().unwrap_or(""),
            b["log_index"],
            b["file"].as_str().unwrap_or("")
        ),
        _ => println!("  {:<18} NONE: {}", "backup", b["error"].as_str().unwrap_or("")),
    }
    println!("timeline:");
    for e in v["timeline"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:<10} {:<12} {}",
            e["at"].as_str().unwrap_or(""),
            e["by"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["text"].as_str().unwrap_or("")
        );
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("period").required(true).args(["month", "year"])))]
pub struct ReportArgs {
    /// A month in Vietnam time, YYYY-MM (e.g. 2026-11)
    #[arg(long)]
    pub month: Option<String>,
    /// A year, YYYY (twelve months, with a table per month)
    #[arg(long)]
    pub year: Option<String>,
    /// html (one self-contained page with charts), csv (one table, see --table) or json
    #[arg(long, default_value = "html", value_parser = ["html", "csv", "json"])]
    pub format: String,
    /// With --format csv: traffic, outcomes, uptime, maintenance, subscriptions, sla or coverage
    #[arg(long, default_value = "traffic")]
    pub table: String,
    /// Write to this file instead of standard output
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Search the transaction audit log (metadata of every call through the gateway)
    Search {
        /// RFC 3339 instant, e.g. 2026-11-01T00:00:00+07:00
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        consumer_agency: Option<String>,
        #[arg(long)]
        consumer_system: Option<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        txn_id: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Verify the audit log's hash chain and signatures (exit 1 if anything was edited or deleted)
    Verify {
        /// Verify segment files in this directory offline instead of asking a node
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Trusted public key of the node (base64 or PEM file content) for offline verification
        #[arg(long)]
        key: Option<String>,
    },
    /// Daily reconciliation counts per consumer x service x outcome
    Reconcile {
        /// Local date (Asia/Ho_Chi_Minh), YYYY-MM-DD
        #[arg(long)]
        date: String,
        /// Write CSV to this file instead of printing
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Compare a provider's or consumer's CSV with our counts for a date
    Compare {
        #[arg(long)]
        date: String,
        file: PathBuf,
    },
    /// The admin audit trail (who changed what in the registry)
    Admin {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Validate the whole file, then apply it atomically (idempotent)
    Import {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the registry as a document (no secrets); format from the file extension
    Export {
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long, default_value = "toml")]
        format: String,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match cli.cmd {
        Cmd::Serve { config } => match Config::load(&config) {
            Ok(cfg) => run_app(cfg, Some(config)),
            Err(e) => {
                eprintln!("lgsp: invalid configuration: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Cmd::Dev(d) => {
            let any = |a: std::net::SocketAddr| {
                if d.ephemeral_ports {
                    std::net::SocketAddr::new(a.ip(), 0)
                } else {
                    a
                }
            };
            let mut cfg = Config::dev(d.data_dir, any(d.gateway_addr), any(d.admin_addr), any(d.metrics_addr));
            cfg.gateway.upstream_ca_file = d.upstream_ca;
            cfg.node.name = d.name;
            cfg.listen.cluster = any(d.cluster_addr);
            if let Some(v) = d.snapshot_logs {
                cfg.cluster.snapshot_logs = v;
            }
            if let Some(v) = d.keep_logs {
                cfg.cluster.keep_logs = v;
            }
            if let Some(v) = d.heartbeat_ms {
                cfg.cluster.heartbeat_ms = v;
            }
            if let Some(v) = d.election_timeout_ms {
                cfg.cluster.election_timeout_ms = v;
            }
            if let Some(p) = &d.ops_config {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Ops {
                    #[serde(default)]
                    notify: crate::config::NotifyConfig,
                    #[serde(default)]
                    maintenance: crate::config::MaintenanceConfig,
                    #[serde(default)]
                    backup: crate::config::BackupConfig,
                    #[serde(default)]
                    report: crate::config::ReportConfig,
                }
                let ops: Ops =
                    match std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
                    {
                        Ok(o) => o,
                        Err(e) => {
                            eprintln!("lgsp: --ops-config {}: {e}", p.display());
                            return ExitCode::from(EXIT_USAGE);
                        }
                    };
                cfg.notify = ops.notify;
                cfg.maintenance = ops.maintenance;
                cfg.backup = ops.backup;
                cfg.report = ops.report;
            }
            if let Err(e) = cfg.validate() {
                eprintln!("lgsp: invalid configuration: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            run_app(cfg, None)
        }
        Cmd::Cluster(ClusterCmd::Init { config }) => offline(cluster_init(&config)),
        Cmd::Cluster(ClusterCmd::Join { token, peer, config, data_dir, name, cluster_addr }) => {
            offline(cluster_join(token, peer, config, data_dir, name, cluster_addr))
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lgsp", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lgsp: {e}");
                ExitCode::FAILURE
            }
        },
        cmd => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lgsp: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(remote(cmd, &cli.conn, cli.json)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs an offline command (no admin API involved).
fn offline(f: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lgsp: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn cluster_init(config: &std::path::Path) -> Result<()> {
    let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let advertise = cfg.cluster_advertise(cfg.listen.cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&cfg.node.data_dir).with_context(|| format!("cannot create {}", cfg.node.data_dir.display()))?;
    let nf = crate::cluster::node::init_offline(&cfg.node.data_dir, &advertise)?;
    println!(
        "initialised cluster {} with this node ({}, id {}) as its first member at {advertise}.\nStart it (systemctl start lgsp), then create join tokens for the other nodes: lgsp cluster token create",
        nf.cluster_id, cfg.node.name, nf.node_id
    );
    Ok(())
}

async fn cluster_join(
    token: String,
    peer: String,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    name: String,
    cluster_addr: std::net::SocketAddr,
) -> Result<()> {
    use crate::cluster::node;
    let (dir, info) = match (config, data_dir) {
        (Some(path), _) => {
            let cfg = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
            let advertise = cfg.cluster_advertise(cfg.listen.cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
            (cfg.node.data_dir, crate::cluster::types::NodeInfo { name: cfg.node.name, raft_addr: advertise, ..Default::default() })
        }
        (None, Some(dir)) => {
            let port = if cluster_addr.port() == 0 { node::pick_udp_port(cluster_addr.ip())? } else { cluster_addr.port() };
            let addr = std::net::SocketAddr::new(cluster_addr.ip(), port).to_string();
            (dir, crate::cluster::types::NodeInfo { name, raft_addr: addr, ..Default::default() })
        }
        (None, None) => bail!("give --config FILE (a production node) or --data-dir DIR (a dev node)"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let nf = node::join_offline(&dir, &token, &peer, info.clone()).await?;
    println!(
        "joined cluster {} as node {} ({}) at {}. Start the node now; it is added as a learner and, if the token allows, promoted to voter once it has caught up.",
        nf.cluster_id, nf.node_id, info.name, nf.raft_addr
    );
    Ok(())
}

/// Runs a node; `source` is the config file a SIGHUP re-reads (`None` for `lgsp dev`).
fn run_app(cfg: Config, source: Option<PathBuf>) -> ExitCode {
    crate::ops::logging::init(&cfg.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lgsp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(crate::app::run(cfg, source));
    // A long blocking job (a large import) must not keep a stopped node alive: it is one
    // registry transaction, so abandoning it leaves nothing half-written.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Not set up yet: retrying cannot help, so exit like a configuration error (the unit's
        // RestartPreventExitStatus=64 keeps systemd from restarting it in a loop).
        Err(e @ crate::app::AppError::Cluster(crate::cluster::node::ClusterError::NotInitialized)) => {
            tracing::error!(error = %e, "lgsp cannot start");
            eprintln!("lgsp: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            tracing::error!(error = %e, "lgsp stopped");
            crate::ops::systemd::status(&format!("failed: {e}"));
            eprintln!("lgsp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_stdin_line(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).with_context(|| format!("cannot read the {what} from stdin"))?;
    let line = s.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        bail!("no {what} on stdin; pipe it in, e.g. `printf '%s\\n' \"$PASS\" | lgsp ...`");
    }
    Ok(line)
}

fn pair(s: &str, what: &str) -> Result<(String, String)> {
    let (a, b) = s.split_once('=').with_context(|| format!("{what} {s:?} must look like KEY=VALUE"))?;
    Ok((a.to_owned(), b.to_owned()))
}

fn qs(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `lgsp cluster status` as a table.
fn print_cluster(v: &Value) {
    let opt = |x: &Value| if x.is_null() { "-".to_owned() } else { x.to_string() };
    println!(
        "cluster {}  leader {}  term {}  last log {}  applied {}  snapshot {}  (seen from node {}; quorum: {})",
        v["cluster_id"].as_str().unwrap_or("?"),
        opt(&v["leader"]),
        opt(&v["term"]),
        opt(&v["last_log_index"]),
        opt(&v["last_applied"]),
        opt(&v["snapshot_index"]),
        opt(&v["reporter"]),
        opt(&v["quorum"]),
    );
    let mut rows = vec![["ID", "NAME", "ROLE", "MATCHED", "LAG", "RAFT", "ADMIN"].map(str::to_owned).to_vec()];
    for n in v["nodes"].as_array().into_iter().flatten() {
        rows.push(vec![
            opt(&n["id"]),
            n["name"].as_str().unwrap_or("").to_owned(),
            n["role"].as_str().unwrap_or("").to_owned(),
            opt(&n["matched_index"]),
            opt(&n["lag"]),
            n["raft_addr"].as_str().unwrap_or("").to_owned(),
            n["admin_url"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        println!("{}", r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end());
    }
}

/// Prints a list as columns, or an object as indented JSON.
/// Percent-encodes a query value (RFC 3339 instants carry `+` and `:`).
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn show(v: &Value, json_out: bool, cols: &[&str]) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match v.get("items").and_then(Value::as_array) {
        Some(items) if !cols.is_empty() => {
            let cell = |it: &Value, c: &str| match &it[c] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            let widths: Vec<usize> =
                cols.iter().map(|c| items.iter().map(|it| cell(it, c).chars().count()).max().unwrap_or(0).max(c.len())).collect();
            let line = |vals: Vec<String>| {
                vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
            };
            println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
            for it in items {
                println!("{}", line(cols.iter().map(|c| cell(it, c)).collect()));
            }
            if let Some(t) = v["total"].as_u64() {
                if t as usize > items.len() {
                    println!("({} of {t} shown)", items.len());
                }
            }
        }
        _ if v.is_null() => println!("ok"),
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Reads a registry document, TOML or JSON by extension.
pub fn read_document(file: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
    } else {
        let t: toml::Value = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", file.display()))?;
        Ok(serde_json::to_value(t)?)
    }
}

async fn remote(cmd: Cmd, conn: &Connection, j: bool) -> Result<()> {
    if let Cmd::Audit(AuditCmd::Verify { dir: Some(dir), key }) = &cmd {
        let trusted = match key {
            Some(k) => Some(crate::audit::parse_public_key(k).map_err(|e| anyhow::anyhow!("--key: {e}"))?),
            None => None,
        };
        let report = crate::audit::verify(dir, None, trusted.as_ref())?;
        if j {
            show(&serde_json::to_value(&report)?, true, &[]);
        } else {
            println!("{report}");
        }
        if !report.ok() {
            bail!("the audit log in {} failed verification", dir.display());
        }
        return Ok(());
    }
    if let Cmd::Backup(BackupCmd::Verify { file, identity }) = &cmd {
        let identity = match identity {
            Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read the identity file {}", p.display()))?),
            None => None,
        };
        let checked = crate::backup::check(file, identity.as_deref())?;
        let (m, opened) = match &checked {
            crate::backup::Checked::Open(v) => (&v.manifest, Some(v)),
            crate::backup::Checked::Sealed(m) => (m, None),
        };
        let mut out = json!({
            "ok": true, "file": file, "id": m.id, "reason": m.reason, "created_at": m.created_at, "cluster_id": m.cluster_id,
            "node_id": m.node_id, "node_name": m.node_name, "log_index": m.log_index, "log_term": m.log_term,
            "parts": m.parts, "encrypted": opened.is_none_or(|v| v.encrypted), "contents_checked": opened.is_some(),
        });
        if let Some(v) = opened {
            out["registry_digest"] = v.registry_digest.clone().into();
        }
        if j {
            show(&out, true, &[]);
        } else if let Some(v) = opened {
            println!(
                "{}: OK ({} parts checked; node {} at log index {}; registry digest {})",
                file.display(),
                m.parts.len(),
                m.node_name,
                m.log_index,
                v.registry_digest
            );
        } else {
            println!(
                "{}: encrypted backup of node {} at log index {}: the container and the encrypted part's SHA-256 are OK; pass --identity to check its contents",
                file.display(),
                m.node_name,
                m.log_index
            );
        }
        return Ok(());
    }
    if let Cmd::Backup(BackupCmd::Keygen { output }) = &cmd {
        if output.exists() {
            bail!("{} exists; choose a new file (an identity is never overwritten)", output.display());
        }
        let (identity, recipient) = crate::backup::keys::keygen();
        crate::secrets::write_private(output, identity.as_bytes()).with_context(|| format!("cannot write {}", output.display()))?;
        if j {
            show(&json!({"identity_file": output, "recipient": recipient}), true, &[]);
        } else {
            println!("{recipient}");
            eprintln!("identity written to {} (keep it offline); put the line above in [backup] recipients", output.display());
        }
        return Ok(());
    }
    if let Cmd::Backup(BackupCmd::Restore { file, data_dir, force, name, cluster_addr, secrets_key, audit_key, identity }) = &cmd {
        let opts = crate::backup::restore::RestoreOptions {
            file: file.clone(),
            data_dir: data_dir.clone(),
            force: *force,
            name: name.clone(),
            cluster_addr: cluster_addr.clone(),
            secrets_key: secrets_key.clone(),
            audit_key: audit_key.clone(),
            identity: identity.clone(),
        };
        let r = tokio::task::spawn_blocking(move || crate::backup::restore::restore(&opts)).await??;
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        if j {
            show(&serde_json::to_value(&r)?, true, &[]);
        } else {
            println!(
                "restored backup {} (log index {}) into {} as node {:?} of the new cluster {}; registry digest {} (identical to the backup's); {} audit segment(s). Start the node, then join the others with `lgsp cluster join`.",
                r.backup_id,
                r.log_index,
                r.data_dir.display(),
                r.node_name,
                r.cluster_id,
                r.registry_digest,
                r.audit_segments
            );
            if let Some(a) = &r.moved_aside {
                println!("the directory's previous contents are in {}", a.display());
            }
        }
        return Ok(());
    }
    if let Cmd::Login { username } = &cmd {
        let c = Client::new(conn, false)?;
        let password = read_stdin_line("password")?;
        let v = c.post("/api/v1/auth/login", json!({"username": username, "password": password})).await?;
        if j {
            show(&v, true, &[]);
        } else {
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("session token valid until {}; export LGSP_TOKEN=<token> to use it", v["expires_at"]);
        }
        return Ok(());
    }
    let c = Client::new(conn, true)?;
    match cmd {
        Cmd::Agency(a) => match a {
            AgencyCmd::List { status } => show(&c.get(&format!("/api/v1/agencies{}", qs(&[("status", status)]))).await?, j, &["code", "name", "status", "suspended"]),
            AgencyCmd::Show { code } => show(&c.get(&format!("/api/v1/agencies/{code}")).await?, j, &[]),
            AgencyCmd::Create { code, name, parent } => show(&c.post("/api/v1/agencies", json!({"code": code, "name": name, "parent": parent})).await?, j, &[]),
            AgencyCmd::Rename { code, name, new_code, reason } => {
                show(&c.post(&format!("/api/v1/agencies/{code}/rename"), json!({"new_name": name, "new_code": new_code, "reason": reason})).await?, j, &[])
            }
            AgencyCmd::Split { code, into, assign, reason } => {
                let into: Vec<Value> = into.iter().map(|s| pair(s, "--into").map(|(c, n)| json!({"code": c, "name": n}))).collect::<Result<_>>()?;
                let systems: serde_json::Map<String, Value> = assign.iter().map(|s| pair(s, "--assign").map(|(k, v)| (k, Value::String(v)))).collect::<Result<_>>()?;
                show(&c.post(&format!("/api/v1/agencies/{code}/split"), json!({"into": into, "systems": systems, "reason": reason})).await?, j, &[])
            }
            AgencyCmd::Merge { source, into_code, into_name, reason } => {
                show(&c.post("/api/v1/agencies/merge", json!({"sources": source, "into": {"code": into_code, "name": into_name}, "reason": reason})).await?, j, &[])
            }
            AgencyCmd::Dissolve { code, successor, reason } => show(&c.post(&format!("/api/v1/agencies/{code}/dissolve"), json!({"successor": successor, "reason": reason})).await?, j, &[]),
            AgencyCmd::Suspend { code, reason } => show(&c.post(&format!("/api/v1/agencies/{code}/suspend"), json!({"reason": reason})).await?, j, &[]),
            AgencyCmd::Reinstate { code, reason } => show(&c.post(&format!("/api/v1/agencies/{code}/reinstate"), json!({"reason": reason})).await?, j, &[]),
        },
        Cmd::System(s) => match s {
            SystemCmd::List { agency } => show(&c.get(&format!("/api/v1/systems{}", qs(&[("agency", agency)]))).await?, j, &["id", "agency", "name"]),
            SystemCmd::Show { id } => show(&c.get(&format!("/api/v1/systems/{id}")).await?, j, &[]),
            SystemCmd::Create { id, agency, name, security_level, commitment, signed_on } => {
                let security = match (security_level, commitment) {
                    (Some(l), None) => json!({"kind": "level", "level": l}),
                    (None, Some(doc)) => json!({"kind": "commitment", "document": doc, "signed_on": signed_on}),
                    _ => bail!("give --security-level N (NĐ 85/2016) or --commitment REF --signed-on YYYY-MM-DD (Form 03)"),
                };
                show(&c.post("/api/v1/systems", json!({"id": id, "agency": agency, "name": name, "security": security})).await?, j, &[])
            }
        },
        Cmd::Service(s) => match s {
            ServiceCmd::List => show(&c.get("/api/v1/services").await?, j, &["context", "provider_system", "name"]),
            ServiceCmd::Show { context } => show(&c.get(&format!("/api/v1/services/{context}")).await?, j, &[]),
            ServiceCmd::Create { context, provider_system, name, description, format, methods } => show(
                &c.post("/api/v1/services", json!({"context": context, "provider_system": provider_system, "name": name, "description": description, "format": format, "methods": methods})).await?,
                j,
                &[],
            ),
            ServiceCmd::AddVersion { context, version, production, test } => {
                show(&c.post(&format!("/api/v1/services/{context}/versions"), json!({"version": version, "upstream": {"production": production, "test": test}})).await?, j, &[])
            }
            ServiceCmd::Publish { context, version } => show(&c.post(&format!("/api/v1/services/{context}/versions/{version}/publish"), json!({})).await?, j, &[]),
            ServiceCmd::Deprecate { context, version, retire_at, reason, override_reason } => show(
                &c.post(&format!("/api/v1/services/{context}/versions/{version}/deprecate"), json!({"retire_at": retire_at, "reason": reason, "override_reason": override_reason})).await?,
                j,
                &[],
            ),
            ServiceCmd::Retire { context, version, reason, override_reason } => {
                show(&c.post(&format!("/api/v1/services/{context}/versions/{version}/retire"), json!({"reason": reason, "override_reason": override_reason})).await?, j, &[])
            }
        },
        Cmd::Subscription(s) => match s {
            SubscriptionCmd::List { state } => show(
                &c.get(&format!("/api/v1/subscriptions{}", qs(&[("state", state)]))).await?,
                j,
                &["id", "consumer_system", "service", "version", "environment", "state", "decision_due", "overdue"],
            ),
            SubscriptionCmd::Show { id } => show(&c.get(&format!("/api/v1/subscriptions/{id}")).await?, j, &[]),
            SubscriptionCmd::Request { consumer_system, service, version, environment, purpose } => show(
                &c.post("/api/v1/subscriptions", json!({"consumer_system": consumer_system, "service": service, "version": version, "environment": environment, "purpose": purpose})).await?,
                j,
                &[],
            ),
            SubscriptionCmd::ProviderApprove { id } => show(&c.post(&format!("/api/v1/subscriptions/{id}/provider-approve"), json!({})).await?, j, &[]),
            SubscriptionCmd::Approve { id } => show(&c.post(&format!("/api/v1/subscriptions/{id}/approve"), json!({})).await?, j, &[]),
            SubscriptionCmd::Reject { id, reason } => show(&c.post(&format!("/api/v1/subscriptions/{id}/reject"), json!({"reason": reason})).await?, j, &[]),
            SubscriptionCmd::Revoke { id, reason } => show(&c.post(&format!("/api/v1/subscriptions/{id}/revoke"), json!({"reason": reason})).await?, j, &[]),
        },
        Cmd::Credential(s) => match s {
            CredentialCmd::List { system } => show(&c.get(&format!("/api/v1/credentials{}", qs(&[("system", system)]))).await?, j, &["id", "system", "environment", "consumer_key", "revoked_at"]),
            CredentialCmd::Issue { system, environment, hmac } => show(&c.post("/api/v1/credentials", json!({"system": system, "environment": environment, "hmac": hmac})).await?, j, &[]),
            CredentialCmd::Revoke { id, reason } => show(&c.post(&format!("/api/v1/credentials/{id}/revoke"), json!({"reason": reason})).await?, j, &[]),
            CredentialCmd::SetKeys { id, keys } => {
                let mut list = Vec::new();
                for k in keys {
                    let mut parts = k.splitn(3, ':');
                    let (Some(key_id), Some(alg), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
                        bail!("--key {k:?} must look like KEYID:ALG:PEMFILE, e.g. stp-1:ed25519:./stp-1.pub.pem");
                    };
                    let pem = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
                    list.push(json!({"key_id": key_id, "alg": alg, "pem": pem}));
                }
                show(&c.call(reqwest::Method::PUT, &format!("/api/v1/credentials/{id}/public-keys"), Some(&json!({"public_keys": list}))).await?, j, &[])
            }
        },
        Cmd::Catalog(s) => match s {
            CatalogCmd::List => show(&c.get("/api/v1/catalogs").await?, j, &["code", "name", "owner_agency", "latest_version", "entries"]),
            CatalogCmd::Show { code } => show(&c.get(&format!("/api/v1/catalogs/{code}")).await?, j, &[]),
            CatalogCmd::Create { code, name, owner_agency } => show(&c.post("/api/v1/catalogs", json!({"code": code, "name": name, "owner_agency": owner_agency})).await?, j, &[]),
            CatalogCmd::Publish { code, file, format, append, note } => {
                let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
                let body = match format.as_str() {
                    "dvhc" => {
                        let (fields, entries) = crate::registry::dvhc::from_json(&text).map_err(anyhow::Error::msg)?;
                        json!({"fields": fields, "entries": entries, "append": append, "note": note})
                    }
                    "json" => {
                        let mut v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
                        v["append"] = json!(append);
                        v["note"] = json!(note);
                        v
                    }
                    other => bail!("unknown --format {other:?}; use json or dvhc"),
                };
                show(&c.post(&format!("/api/v1/catalogs/{code}/versions"), body).await?, j, &[])
            }
        },
        Cmd::User(u) => match u {
            UserCmd::List => show(&c.get("/api/v1/users").await?, j, &["username", "role", "agency", "disabled", "locked_until"]),
            UserCmd::Create { username, role, agency, display_name } => {
                let password = read_stdin_line("password")?;
                show(&c.post("/api/v1/users", json!({"username": username, "role": role, "agency": agency, "display_name": display_name, "password": password})).await?, j, &[])
            }
            UserCmd::Disable { username } => show(&c.call(reqwest::Method::PATCH, &format!("/api/v1/users/{username}"), Some(&json!({"disabled": true}))).await?, j, &[]),
            UserCmd::Enable { username } => show(&c.call(reqwest::Method::PATCH, &format!("/api/v1/users/{username}"), Some(&json!({"disabled": false}))).await?, j, &[]),
            UserCmd::Unlock { username } => show(&c.post(&format!("/api/v1/users/{username}/unlock"), json!({})).await?, j, &[]),
        },
        Cmd::Cluster(cc) => match cc {
            ClusterCmd::Init { .. } | ClusterCmd::Join { .. } => bail!("init and join run offline on the node itself"),
            ClusterCmd::Status => {
                let v = c.get("/api/v1/cluster").await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    print_cluster(&v);
                }
            }
            ClusterCmd::Token(JoinTokenCmd::Create { learner, ttl }) => {
                let v = c.post("/api/v1/cluster/join-tokens", json!({"voter": !learner, "ttl_seconds": ttl})).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    println!("{}", v["token"].as_str().unwrap_or_default());
                    eprintln!("one-time join token, valid until {}; on the new node: lgsp cluster join --token TOKEN --peer HOST:7443", v["expires_at"]);
                }
            }
            ClusterCmd::Promote { node_id } => show(&c.post(&format!("/api/v1/cluster/nodes/{node_id}/promote"), json!({})).await?, j, &[]),
            ClusterCmd::Remove { node_id } => show(&c.call(reqwest::Method::DELETE, &format!("/api/v1/cluster/nodes/{node_id}"), None).await?, j, &[]),
            ClusterCmd::TransferLeader { node_id } => show(&c.post("/api/v1/cluster/leader", json!({"node_id": node_id})).await?, j, &[]),
            ClusterCmd::Leave => show(&c.post("/api/v1/cluster/leave", json!({})).await?, j, &[]),
            ClusterCmd::RotateCert => show(&c.post("/api/v1/cluster/certificate/rotate", json!({})).await?, j, &[]),
        },
        Cmd::Maintenance(mc) => {
            let cols = ["id", "status", "start", "end", "emergency", "office_hours"];
            let one = |v: &Value| {
                if let Some(ws) = v["warnings"].as_array() {
                    for w in ws.iter().filter_map(Value::as_str) {
                        eprintln!("warning: {w}");
                    }
                }
            };
            match mc {
                MaintenanceCmd::List => show(&c.get("/api/v1/maintenance").await?, j, &cols),
                MaintenanceCmd::Announce { id, window } => {
                    let mut b = window.body()?;
                    if let Some(id) = id {
                        b["id"] = json!(id);
                    }
                    let v = c.post("/api/v1/maintenance", b).await?;
                    one(&v);
                    show(&v, j, &[]);
                }
                MaintenanceCmd::Change { id, window } => {
                    let v = c.call(reqwest::Method::PATCH, &format!("/api/v1/maintenance/{id}"), Some(&window.body()?)).await?;
                    one(&v);
                    show(&v, j, &[]);
                }
                MaintenanceCmd::Cancel { id, reason } => show(&c.post(&format!("/api/v1/maintenance/{id}/cancel"), json!({"reason": reason})).await?, j, &[]),
            }
        }
        Cmd::Probe(pc) => match pc {
            ProbeCmd::Set { owner, kind, target, interval, timeout_ms, expect_status, tls_warn_days } => {
                let body = json!({"kind": kind, "target": target, "interval_s": interval, "timeout_ms": timeout_ms, "expect_status": expect_status, "tls_warn_days": tls_warn_days});
                show(&c.call(reqwest::Method::PUT, &owner.path(), Some(&body)).await?, j, &[])
            }
            ProbeCmd::Clear { owner } => show(&c.call(reqwest::Method::DELETE, &owner.path(), None).await?, j, &[]),
            ProbeCmd::List => {
                let v = c.get("/api/v1/probes").await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    let items: Vec<Value> = v["items"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|it| {
                                    json!({
                                        "target": it["target"], "agency": it["agency"], "status": it["status"],
                                        "flapping": it["flapping"], "node": it["latest"]["node"],
                                        "last": it["latest"]["last"]["health"], "detail": it["latest"]["last"]["detail"],
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    show(&json!({"items": items, "total": v["total"]}), false, &["target", "agency", "status", "flapping", "node", "last", "detail"]);
                }
            }
            ProbeCmd::History { target, daily, from, to } => {
                let mut q = vec![format!("granularity={}", if daily { "daily" } else { "hourly" })];
                q.extend(from.map(|f| format!("from={}", urlencoding(&f))));
                q.extend(to.map(|t| format!("to={}", urlencoding(&t))));
                let v = c.get(&format!("/api/v1/probes/{target}/history?{}", q.join("&"))).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    show(&json!({"items": v["rows"]}), false, &["start", "checks", "up", "degraded", "down", "uptime", "latency_avg_ms", "latency_max_ms"]);
                    println!();
                    show(&json!({"items": v["events"]}), false, &["seq", "at", "from", "to", "notify", "node", "reason"]);
                }
            }
            ProbeCmd::Uptime { system, month } => {
                let q = month.map(|m| format!("?month={m}")).unwrap_or_default();
                let v = c.get(&format!("/api/v1/systems/{system}/uptime{q}")).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    for t in v["targets"].as_array().cloned().unwrap_or_default() {
                        println!("{}  month {}: uptime {}", t["target"].as_str().unwrap_or_default(), v["month"].as_str().unwrap_or_default(), t["month"]["uptime"]);
                        show(&json!({"items": t["days"]}), false, &["day", "checks", "uptime"]);
                    }
                }
            }
        },
        Cmd::Node(nc) => match nc {
            NodeCmd::Drain => show(&c.post("/api/v1/node/drain", json!({})).await?, j, &[]),
            NodeCmd::Resume => show(&c.post("/api/v1/node/resume", json!({})).await?, j, &[]),
        },
        Cmd::Token(t) => match t {
            TokenCmd::List => show(&c.get("/api/v1/tokens").await?, j, &["id", "username", "name", "expires_at", "session"]),
            TokenCmd::Create { name, expires_in_days } => show(&c.post("/api/v1/tokens", json!({"name": name, "expires_in_days": expires_in_days})).await?, j, &[]),
            TokenCmd::Revoke { id } => show(&c.call(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?, j, &[]),
        },
        Cmd::Audit(AuditCmd::Search { from, to, consumer_agency, consumer_system, service, outcome, txn_id, limit }) => show(
            &c.get(&format!(
                "/api/v1/audit/transactions{}",
                qs(&[
                    ("from", from),
                    ("to", to),
                    ("consumer_agency", consumer_agency),
                    ("consumer_system", consumer_system),
                    ("service", service),
                    ("outcome", outcome),
                    ("txn_id", txn_id),
                    ("limit", Some(limit.to_string())),
                ])
            ))
            .await?,
            j,
            &["at", "txn_id", "consumer_system", "service", "version", "method", "status", "outcome", "upstream_us"],
        ),
        Cmd::Audit(AuditCmd::Verify { dir: Some(_), .. }) => unreachable!("offline verification is handled before connecting"),
        Cmd::Audit(AuditCmd::Verify { dir: None, .. }) => {
            let v = c.post("/api/v1/audit/verify", json!({})).await?;
            if j {
                show(&v, true, &[]);
            } else {
                println!("{}", v["text"].as_str().unwrap_or_default());
            }
            if v["ok"].as_bool() != Some(true) {
                bail!("the audit log failed verification");
            }
        }
        Cmd::Audit(AuditCmd::Reconcile { date, output }) => {
            if j {
                show(&c.get(&format!("/api/v1/audit/reconciliation?date={}", urlencode(&date))).await?, true, &[]);
            } else {
                let csv = c.get_text(&format!("/api/v1/audit/reconciliation?date={}&format=csv", urlencode(&date))).await?;
                match output {
                    Some(p) => std::fs::write(&p, csv).with_context(|| format!("cannot write {}", p.display()))?,
                    None => print!("{csv}"),
                }
            }
        }
        Cmd::Audit(AuditCmd::Compare { date, file }) => {
            let csv = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let v = c.post_text(&format!("/api/v1/audit/reconciliation/compare?date={}", urlencode(&date)), "text/csv", csv).await?;
            if j {
                show(&v, true, &[]);
            } else if v["matches"].as_bool() == Some(true) {
                println!("{} matches our counts for {date}", file.display());
            } else {
                show(&json!({"items": v["differences"]}), false, &["kind", "consumer_system", "service", "version", "outcome", "ours", "theirs"]);
                bail!("{} differs from our counts for {date}", file.display());
            }
        }
        Cmd::Audit(AuditCmd::Admin { user, target, limit }) => show(
            &c.get(&format!("/api/v1/audit/admin{}", qs(&[("user", user), ("target", target), ("limit", Some(limit.to_string()))]))).await?,
            j,
            &["index", "at", "user", "action", "target", "reason"],
        ),
        Cmd::Registry(r) => match r {
            RegistryCmd::Import { file, dry_run } => {
                let doc = read_document(&file)?;
                let v = c.post(&format!("/api/v1/registry/import{}", if dry_run { "?dry_run=true" } else { "" }), doc).await?;
                if j {
                    show(&v, true, &[]);
                } else if v["applied"].as_bool() == Some(true) {
                    println!("imported {}: {} change(s) applied", file.display(), v["changes"]);
                } else if dry_run {
                    println!("{} is valid: {} change(s) would be applied", file.display(), v["changes"]);
                } else {
                    println!("{} is already in the registry: nothing to change", file.display());
                }
            }
            RegistryCmd::Export { output, format } => {
                let mut v = c.get("/api/v1/registry/export").await?;
                strip_nulls(&mut v);
                let as_json = output.as_ref().and_then(|o| o.extension()).map(|e| e.eq_ignore_ascii_case("json")).unwrap_or(format == "json" || j);
                let text = if as_json { serde_json::to_string_pretty(&v)? + "\n" } else { toml::to_string(&v).context("cannot express the registry as TOML")? };
                match output {
                    Some(p) => std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?,
                    None => print!("{text}"),
                }
            }
        },
        Cmd::Backup(BackupCmd::Create { reason }) => {
            let v = c.post("/api/v1/backups", json!({"reason": reason})).await?;
            if j {
                show(&v, true, &[]);
            } else {
                println!("backup {} at log index {}: {}", v["id"].as_str().unwrap_or_default(), v["log_index"], v["file"].as_str().unwrap_or_default());
            }
        }
        Cmd::Backup(BackupCmd::List) => show(&c.get("/api/v1/backups").await?, j, &["id", "log_index", "created_at", "node_name", "reason", "size", "file"]),
        Cmd::Backup(BackupCmd::Verify { .. } | BackupCmd::Restore { .. } | BackupCmd::Keygen { .. }) => unreachable!("offline verification is handled before connecting"),
        Cmd::Incident(ic) => match ic {
            IncidentCmd::Open { id, title, title_en, severity, services, agencies, detected, expected_fix, description } => {
                let mut b = json!({
                    "title": {"vi": title, "en": title_en.unwrap_or_else(|| title.clone())},
                    "severity": severity, "services": services, "agencies": agencies, "description": description,
                });
                if let Some(id) = id {
                    b["id"] = json!(id);
                }
                if let Some(t) = detected {
                    b["detected_at"] = json!(instant("--detected", &t)?);
                }
                if let Some(t) = expected_fix {
                    b["expected_fix_at"] = json!(instant("--expected-fix", &t)?);
                }
                let v = c.post("/api/v1/incidents", b).await?;
                for w in v["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    eprintln!("\n!!! WARNING !!! {w}\n");
                }
                if j {
                    show(&v, true, &[]);
                } else {
                    print_incident(&v);
                }
            }
            IncidentCmd::Update { id, note, status, expected_fix, severity, services, agencies, cause, escalate } => {
                let mut b = json!({});
                if let Some(n) = note {
                    b["note"] = json!(n);
                }
                if let Some(x) = status {
                    b["status"] = json!(x);
                }
                if let Some(t) = expected_fix {
                    b["expected_fix_at"] = json!(instant("--expected-fix", &t)?);
                }
                if let Some(x) = severity {
                    b["severity"] = json!(x);
                }
                if !services.is_empty() {
                    b["services"] = json!(services);
                }
                if !agencies.is_empty() {
                    b["agencies"] = json!(agencies);
                }
                if let Some(x) = cause {
                    b["cause"] = json!(x);
                }
                if escalate {
                    b["escalate"] = json!(true);
                }
                let v = c.post(&format!("/api/v1/incidents/{}/updates", urlencode(&id)), b).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    print_incident(&v);
                }
            }
            IncidentCmd::Resolve { id, resolution, cause } => {
                let v = c.post(&format!("/api/v1/incidents/{}/resolve", urlencode(&id)), json!({"resolution": resolution, "cause": cause})).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    print_incident(&v);
                }
            }
            IncidentCmd::List { open } => {
                let mut v = c.get(if open { "/api/v1/incidents?open=true" } else { "/api/v1/incidents" }).await?;
                if let Some(items) = v["items"].as_array_mut() {
                    for it in items.iter_mut().filter(|_| !j) {
                        it["title"] = it["title"]["vi"].clone();
                    }
                }
                show(&v, j, &["id", "status", "severity", "detected_at", "expected_fix_at", "serious", "title"]);
            }
            IncidentCmd::Show { id } => {
                let v = c.get(&format!("/api/v1/incidents/{}", urlencode(&id))).await?;
                if j {
                    show(&v, true, &[]);
                } else {
                    print_incident(&v);
                }
            }
            IncidentCmd::Report { id, format, output } => {
                let format = if j { "json" } else { format.as_str() };
                let mut text = c.get_text(&format!("/api/v1/incidents/{}/report?format={format}", urlencode(&id))).await?;
                if format == "json" {
                    let v: Value = serde_json::from_str(&text).context("the incident report is not JSON")?;
                    text = serde_json::to_string_pretty(&v)? + "\n";
                }
                match output {
                    Some(p) => {
                        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
                        eprintln!("incident report written to {}", p.display());
                    }
                    None => print!("{text}"),
                }
            }
        },
        Cmd::Report(r) => {
            let format = if j { "json" } else { r.format.as_str() };
            let mut q = match (&r.month, &r.year) {
                (Some(m), _) => format!("month={}", urlencode(m)),
                (None, Some(y)) => format!("year={}", urlencode(y)),
                (None, None) => bail!("give --month YYYY-MM or --year YYYY"),
            };
            q.push_str(&format!("&format={format}"));
            if format == "csv" {
                q.push_str(&format!("&table={}", urlencode(&r.table)));
            }
            let mut text = c.get_text(&format!("/api/v1/reports?{q}")).await?;
            if format == "json" {
                let v: Value = serde_json::from_str(&text).context("the report is not JSON")?;
                text = serde_json::to_string_pretty(&v)? + "\n";
            }
            match r.output {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
                    eprintln!("report written to {}", p.display());
                }
                None => print!("{text}"),
            }
        }
        Cmd::Serve { .. } | Cmd::Dev(_) | Cmd::Login { .. } | Cmd::Completions { .. } | Cmd::Man => unreachable!("handled before connecting"),
    }
    Ok(())
}
