//! The one place that wires modules together: start-up order, listeners, bootstrap, drain.
//!
//! Start-up order: signal handlers (SIGTERM, SIGINT, SIGHUP) -> data dir -> secrets key -> TLS pair -> bind every listener
//! -> registry store (fails fast if unreadable) -> bootstrap operator on first start -> serve ->
//! announce readiness (log line, `dev.json`, `READY=1` to systemd, watchdog armed) -> serve
//! until SIGTERM/SIGINT, reloading on SIGHUP -> `STOPPING=1` and drain.
//!
//! Reload (SIGHUP, [`Running::reload`]): the config file is read and validated again; the log
//! level and the TLS certificate and key take effect at once; other changed settings are named
//! in a warning as needing a restart; a file that does not parse or validate changes nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admin::{self, AdminState};
use crate::audit::{self, AuditLog};
use crate::cluster::node::{self, ClusterError, ClusterNode, NodeFile, StartOptions};
use crate::cluster::types::{NodeInfo, SharedBatch, FIRST_NODE};
use crate::cluster::{Store, StoreError};
use crate::config::Config;
use crate::gateway::{self, Gateway, Proposer, View};
use crate::notify;
use crate::ops::tls::CertStore;
use crate::ops::{host::Host, logging, metrics::Metrics, shutdown, status, systemd};
use crate::registry::{Actor, Command, Role};
use crate::secrets::{self, SecretsError, SecretsKey};

#[derive(Debug, Error)]
pub enum AppError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("cannot handle signals: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the systemd watchdog thread: {0}")]
    Watchdog(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the Raft core stopped ({0}); exiting so that the service manager restarts the node. Check free space and the disk under the data directory")]
    CoreStopped(String),
}

/// `lgsp_cluster_*` gauges, refreshed from Raft's metrics at every scrape.
fn cluster_gauges(metrics: &Metrics, node: Arc<ClusterNode>) -> Result<Arc<dyn Fn() + Send + Sync>, prometheus::Error> {
    use prometheus::{IntGaugeVec, Opts};
    let reg = metrics.registry();
    let gauge = |name: &str, help: &str| crate::ops::metrics::int_gauge(reg, name, help);
    let term = gauge("lgsp_cluster_term", "Current Raft term")?;
    let leader = gauge("lgsp_cluster_is_leader", "1 if this node is the Raft leader")?;
    let quorum = gauge("lgsp_cluster_quorum", "1 if this node knows a leader that reaches a quorum (admin writes work)")?;
    let last_log = gauge("lgsp_cluster_last_log_index", "Index of the last entry in this node's Raft log")?;
    let applied = gauge("lgsp_cluster_applied_index", "Index of the last entry applied to this node's registry")?;
    let voters = gauge("lgsp_cluster_voters", "Voting members in the membership this node knows")?;
    let lag = IntGaugeVec::new(
        Opts::new("lgsp_cluster_replication_lag_entries", "Entries each member is behind the leader (exported by the leader only)"),
        &["node"],
    )?;
    reg.register(Box::new(lag.clone()))?;
    Ok(Arc::new(move || {
        let s = node.local_status();
        term.set(s.term as i64);
        leader.set(i64::from(s.leader == Some(node.id)));
        quorum.set(i64::from(node.has_quorum()));
        last_log.set(s.last_log_index.unwrap_or(0) as i64);
        applied.set(s.last_applied.unwrap_or(0) as i64);
        voters.set(s.nodes.iter().filter(|n| n.role != "learner").count() as i64);
        lag.reset();
        if s.leader == Some(node.id) {
            for n in &s.nodes {
                if let Some(l) = n.lag {
                    lag.with_label_values(&[n.info.name.as_str()]).set(l as i64);
                }
            }
        }
    }))
}

/// The configuration in force, and what a reload can act on.
struct Running {
    /// The file SIGHUP re-reads; `None` in dev mode.
    source: Option<PathBuf>,
    /// What the node runs with: the start-up config plus what reloads applied.
    cfg: Config,
    /// The gateway and admin listeners' certificate (absent in dev mode).
    certs: Option<Arc<CertStore>>,
    /// The status line systemd shows while serving.
    serving: String,
}

impl Running {
    /// Handles one SIGHUP; never fails the node (problems are logged and the old settings stay).
    fn reload(&mut self) {
        systemd::reloading();
        let status = self.apply_file();
        systemd::ready(&status);
    }

    /// Returns the status line to show afterwards.
    fn apply_file(&mut self) -> String {
        let Some(path) = self.source.clone() else {
            tracing::warn!("SIGHUP: dev mode has no configuration file to reload; nothing changed");
            return self.serving.clone();
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e, "configuration reload failed; the running configuration stays in force (fix the file, then reload again)");
                return format!("{}; last reload failed: {e}", self.serving);
            }
        };
        let mut applied: Vec<&str> = Vec::new();
        let mut failed: Vec<&str> = Vec::new();
        if new.log.level != self.cfg.log.level {
            match logging::set_level(&new.log.level) {
                Ok(effective) => {
                    applied.push("log.level");
                    self.cfg.log.level = new.log.level.clone();
                    if effective != new.log.level {
                        tracing::warn!(effective = %effective, "LGSP_LOG is set and overrides log.level");
                    }
                }
                Err(e) => {
                    failed.push("log.level");
                    tracing::error!(error = %e, "log level not changed");
                }
            }
        }
        if let (Some(store), Some(t)) = (&self.certs, &new.tls) {
            match store.reload(&t.cert, &t.key) {
                Ok(s) => {
                    applied.push("tls");
                    self.cfg.tls = Some(t.clone());
                    tracing::info!(cert = %t.cert.display(), sha256 = %s.sha256, subject = %s.subject, not_after = %s.not_after, "TLS certificate reloaded; new connections get it, open ones keep theirs");
                }
                Err(e) => {
                    failed.push("tls");
                    tracing::error!(error = %e, "TLS certificate reload failed; the listeners keep presenting the previous certificate");
                }
            }
        }
        let pending = restart_needed(&self.cfg, &new);
        if !pending.is_empty() {
            tracing::warn!(settings = %pending.join(", "), "changed settings take effect only after a restart (systemctl restart lgsp); the running values stay until then");
        }
        tracing::info!(config = %path.display(), applied = %applied.join(", "), failed = %failed.join(", "), restart_needed = %pending.join(", "), "configuration reloaded");
        if failed.is_empty() {
            self.serving.clone()
        } else {
            format!("{}; last reload failed for {}", self.serving, failed.join(", "))
        }
    }
}

/// Settings that differ between the running and the reloaded config and need a restart.
fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (running, new);
    [
        ("node.data_dir", a.node.data_dir != b.node.data_dir),
        ("node.name", a.node.name != b.node.name),
        ("listen.gateway", a.listen.gateway != b.listen.gateway),
        ("listen.admin", a.listen.admin != b.listen.admin),
        ("listen.metrics", a.listen.metrics != b.listen.metrics),
        ("listen.cluster", a.listen.cluster != b.listen.cluster),
        ("log.format", a.log.format != b.log.format),
        ("admin", a.admin != b.admin),
        ("gateway", a.gateway != b.gateway),
        ("audit", a.audit != b.audit),
        ("cluster", a.cluster != b.cluster),
        ("status", a.status != b.status),
        ("notify", a.notify != b.notify),
        ("maintenance", a.maintenance != b.maintenance),
        ("probes", a.probes != b.probes),
        ("report", a.report != b.report),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect()
}

/// The `storage` check of `/status/services`: the registry file answers a read transaction
/// and the data directory takes a new file.
fn storage_probe(store: Arc<Store>, dir: PathBuf) -> status::StorageFn {
    Arc::new(move || {
        let applied = store.probe().map_err(|e| format!("cannot read the registry store: {e}"))?;
        let probe = dir.join(".status-probe");
        std::fs::write(&probe, b"lgsp").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(serde_json::json!({ "applied_index": applied }))
    })
}

/// The `host:port` under which a listener is announced to the cluster (`lgsp cluster status`,
/// `dev.json`). A listener bound to every interface takes the host of `cluster.advertise` (the
/// address peers already reach this node by), else loopback.
fn advertised(a: SocketAddr, cluster_advertise: Option<&str>) -> String {
    if !a.ip().is_unspecified() {
        return a.to_string();
    }
    match cluster_advertise.and_then(|h| h.rsplit_once(':')).map(|(host, _)| host).filter(|h| !h.is_empty()) {
        Some(host) => format!("{host}:{}", a.port()),
        None => SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), a.port()).to_string(),
    }
}

/// Lets the gateway propose registry commands (token revocation, catalog entries) as the
/// calling system, without knowing how commands are stored or replicated.
struct StoreProposer(admin::Shared);

impl Proposer for StoreProposer {
    fn propose(
        &self,
        system: &str,
        agency: &str,
        command: Command,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let actor = Actor { user: format!("system:{system}"), role: Role::AgencyAdmin, agency: Some(agency.to_owned()) };
        Box::pin(async move { self.0.propose(actor, command).await.map(|_| ()).map_err(|e| e.message) })
    }
}

/// Rebuilds the gateway's view after every applied command (coalescing bursts).
/// `applied` must be subscribed before the initial view is built, so that an entry applied in
/// between (Raft replays committed entries during start-up) triggers a rebuild.
async fn maintain_view(
    store: Arc<Store>,
    key: SecretsKey,
    tx: tokio::sync::watch::Sender<Arc<View>>,
    mut applied: tokio::sync::watch::Receiver<u64>,
    stop: shutdown::Shutdown,
) {
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut built_at = tx.borrow().applied;
    loop {
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            _ = &mut stopped => return,
        }
        // Probe results, notice deliveries and logins are applied often and change nothing
        // the gateway reads: the view it serves stays current.
        if store.last_changed(&View::READS) <= built_at {
            continue;
        }
        let (store2, key2) = (store.clone(), key.clone());
        let built = tokio::task::spawn_blocking(move || {
            let index = store2.last_applied();
            let reg = store2.read();
            View::build(&reg, &key2, index)
        })
        .await;
        match built {
            Ok(v) => {
                built_at = v.applied;
                tx.send_replace(Arc::new(v));
            }
            Err(e) => tracing::error!(error = %e, "gateway view rebuild failed; serving the previous view"),
        }
    }
}

/// What the probe service needs from the cluster: members in service, the registered probes
/// and their replicated status, and proposing status changes as the appliance.
struct ProbeCluster(admin::Shared);

impl crate::probes::service::Cluster for ProbeCluster {
    fn members(&self) -> Vec<String> {
        let draining = self.0.store.cluster().draining.clone();
        self.0.cluster.local_status().nodes.into_iter().filter(|n| !draining.contains(&n.id)).map(|n| n.info.name).collect()
    }

    fn registered(&self) -> Vec<crate::probes::service::Registered> {
        let reg = self.0.store.read();
        reg.probe_targets()
            .into_iter()
            .map(|t| crate::probes::service::Registered {
                status: reg.probe_status.get(&t.target).map(|s| s.status),
                cert_notified: reg.probe_alerts.get(&t.target).and_then(|a| a.cert_notified.clone()),
                spec: t.spec.clone(),
                target: t.target,
            })
            .collect()
    }

    fn registry_version(&self) -> u64 {
        self.0.store.last_applied()
    }

    fn status_of(&self, target: &str) -> Option<Option<crate::probes::Health>> {
        let reg = self.0.store.read();
        let owner = crate::registry::ProbeOwner::parse(target)?;
        reg.probe_of(&owner)?;
        Some(reg.probe_status.get(target).map(|s| s.status))
    }

    fn propose(&self, command: Command) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(
            async move { self.0.propose(Actor::system(), command).await.map(|_| ()).map_err(|e| format!("{}: {}", e.code, e.message)) },
        )
    }
}

/// What the traffic-rollup publisher needs from the cluster: this node's published rollups and
/// proposing new ones as the appliance.
struct RollupCluster(admin::Shared);

impl crate::report::publish::Cluster for RollupCluster {
    fn published(&self, node: &str) -> std::collections::BTreeMap<chrono::NaiveDate, (chrono::DateTime<Utc>, bool)> {
        let reg = self.0.store.read();
        reg.traffic_rollups.values().filter(|r| r.node == node).map(|r| (r.day, (r.as_of, r.complete))).collect()
    }

    fn propose(&self, command: Command) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(
            async move { self.0.propose(Actor::system(), command).await.map(|_| ()).map_err(|e| format!("{}: {}", e.code, e.message)) },
        )
    }
}

/// Starts this node's probe service (history in `DATA_DIR/probes.redb`, checks trusting the
/// gateway's upstream roots) and hands it to the admin API.
fn start_probes(
    cfg: &Config,
    st: &admin::Shared,
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<crate::probes::service::ProbeService>, AppError> {
    use crate::probes::{check::Checker, history::History, service::ProbeService};
    let checker = Checker::new(roots).map_err(|e| AppError::Gateway(e.to_string()))?;
    let history = History::open(&cfg.node.data_dir.join("probes.redb")).map_err(|e| AppError::Gateway(e.to_string()))?;
    let mut pcfg = cfg.probes.clone();
    // Test hook: black-box tests probe every few hundred milliseconds.
    let test_hooks = cfg.dev_mode || std::env::var("LGSP_TEST_FAULTS").is_ok_and(|v| v == "1");
    if test_hooks {
        pcfg.interval_override_ms = std::env::var("LGSP_TEST_PROBE_INTERVAL_MS").ok().and_then(|v| v.parse().ok());
    }
    let svc = ProbeService::start(cfg.node.name.clone(), pcfg, checker, history, Arc::new(ProbeCluster(st.clone())));
    let _ = st.probes.set(svc.clone());
    Ok(svc)
}

/// What `lgsp dev` writes to `DIR/dev.json` (SPEC §8).
#[derive(Debug, Serialize, Deserialize)]
pub struct DevInfo {
    pub admin_url: String,
    pub gateway_url: String,
    pub metrics_url: String,
    /// The first operator's credentials; empty on a node that joined a cluster (use the first
    /// node's: accounts are replicated).
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub api_token: String,
    /// This node's id in its cluster.
    #[serde(default)]
    pub node_id: u64,
    /// `host:port` of the node's cluster listener (what `lgsp cluster join --peer` takes).
    #[serde(default)]
    pub cluster_addr: String,
}

/// The first operator account, created on first start.
struct Bootstrap {
    username: String,
    password: String,
    api_token: String,
}

/// Runs the node until SIGTERM/SIGINT. `source` is the config file SIGHUP re-reads (`None` in
/// dev mode, where SIGHUP changes nothing).
pub async fn run(cfg: Config, source: Option<PathBuf>) -> Result<(), AppError> {
    let started = Instant::now();
    // First, so that no SIGTERM or SIGHUP after READY=1 can kill the process undrained.
    let mut terminations = shutdown::Terminations::register().map_err(AppError::Signal)?;
    let mut hangups = shutdown::Hangups::register().map_err(AppError::Signal)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = cfg.node.data_dir.clone();
    create_private_dir(&dir)?;
    // `lgsp dev` makes its data directory a one-node cluster on first start; `serve` needs
    // `lgsp cluster init` or `lgsp cluster join` first.
    if cfg.dev_mode && NodeFile::load(&dir)?.is_none() {
        let ip = cfg.listen.cluster.ip();
        let port = if cfg.listen.cluster.port() == 0 { node::pick_udp_port(ip)? } else { cfg.listen.cluster.port() };
        node::init_offline(&dir, &SocketAddr::new(ip, port).to_string())?;
    }
    if NodeFile::load(&dir)?.is_none() {
        return Err(ClusterError::NotInitialized.into());
    }
    let key = SecretsKey::load_or_create(&dir.join("secrets.key"))?;

    // One certificate store and one server config for the gateway and admin listeners, so a
    // reload swaps the pair for both.
    let certs = match (&cfg.tls, cfg.dev_mode) {
        (Some(t), _) => Some(CertStore::load(&t.cert, &t.key).map_err(|e| AppError::Tls(e.to_string()))?),
        (None, true) => None,
        (None, false) => return Err(AppError::Tls("no [tls] section outside dev mode".into())),
    };
    let server_tls = match &certs {
        Some(c) => Some(c.server_config().map_err(|e| AppError::Tls(e.to_string()))?),
        None => None,
    };
    let tls = server_tls.clone().map(axum_server::tls_rustls::RustlsConfig::from_config);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin_l = bind("admin", cfg.listen.admin)?;
    let gateway_l = bind("gateway", cfg.listen.gateway)?;
    let metrics_l = bind("metrics", cfg.listen.metrics)?;
    let admin_addr = local(&admin_l, "admin", cfg.listen.admin)?;
    let gateway_addr = local(&gateway_l, "gateway", cfg.listen.gateway)?;
    let metrics_addr = local(&metrics_l, "metrics", cfg.listen.metrics)?;
    let host = cfg.cluster.advertise.as_deref();
    let admin_url = format!("{scheme}://{}", advertised(admin_addr, host));
    let gateway_url = format!("{scheme}://{}", advertised(gateway_addr, host));
    let metrics_url = format!("http://{}", advertised(metrics_addr, host));

    let cluster = ClusterNode::start(StartOptions {
        data_dir: dir.clone(),
        listen: cfg.listen.cluster,
        info: NodeInfo {
            name: cfg.node.name.clone(),
            raft_addr: String::new(),
            admin_url: admin_url.clone(),
            gateway_url: gateway_url.clone(),
            metrics_url: metrics_url.clone(),
        },
        tuning: cfg.cluster.clone(),
        secrets: key.clone(),
        faults_enabled: std::env::var("LGSP_TEST_FAULTS").is_ok_and(|v| v == "1"),
    })
    .await?;
    let store = cluster.store().clone();
    {
        let reg = store.read();
        tracing::info!(
            node = cluster.id,
            cluster = %cluster.cluster_id,
            raft = %cluster.local_raft_addr(),
            agencies = reg.agencies.len(),
            systems = reg.systems.len(),
            services = reg.services.len(),
            subscriptions = reg.subscriptions.len(),
            "registry loaded"
        );
    }
    let (audit_trigger, audit_stop) = shutdown::channel();
    let audit_key = audit::load_or_create_signing_key(&dir.join("audit-signing.key"))?;
    let audit_cfg = audit::AuditConfig {
        fsync_interval: std::time::Duration::from_millis(cfg.audit.fsync_interval_ms),
        retention_days: cfg.audit.retention_days,
        ..audit::AuditConfig::default()
    };
    let (audit_log, audit_writer) = AuditLog::open(&dir.join("audit"), &cfg.node.name, audit_key, audit_cfg)?;
    let audit_task = tokio::spawn(audit_writer.run(audit_stop.wait()));
    // Backups: the store hands each committed backup point (with the state at that entry) to
    // this node's writer.
    let (backup_tx, backup_rx) = tokio::sync::mpsc::unbounded_channel();
    let backups = crate::backup::writer::BackupService::new(
        crate::backup::writer::WriterConfig {
            dir: cfg.backup.dir.clone().unwrap_or_else(|| dir.join("backups")),
            node_id: cluster.id,
            node_name: cfg.node.name.clone(),
            cluster_id: cluster.cluster_id.clone(),
            audit_dir: dir.join("audit"),
            config_file: source.clone(),
            keep: cfg.backup.keep,
            keep_days: cfg.backup.keep_days,
            post_hook: cfg.backup.post_hook.clone(),
            recipients: cfg.backup.recipients.clone(),
            encrypt: cfg.backup.encrypt,
            data_dir: dir.clone(),
        },
        Some(audit_log.clone()),
    );
    store.set_backup_sink(backup_tx);
    tokio::spawn(backups.clone().run(backup_rx));
    if let Some(every) = cfg.backup.interval_secs() {
        tokio::spawn(crate::backup::writer::schedule(cluster.clone(), std::time::Duration::from_secs(every)));
    }
    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        cluster: cluster.clone(),
        key: key.clone(),
        cfg: cfg.admin.clone(),
        audit_dir: dir.join("audit"),
        audit: Some(audit_log.clone()),
        maintenance: cfg.maintenance.clone(),
        probes: std::sync::OnceLock::new(),
        backups: Some(backups.clone()),
        report: cfg.report.clone(),
    });
    let boot = if cluster.id == FIRST_NODE { bootstrap(&admin_state).await? } else { None };

    let (trigger, stop) = shutdown::channel();
    let admin_app = admin::router(admin_state.clone());
    let counts_store = store.clone();
    let metrics = Metrics::new(
        &cfg.node.name,
        Arc::new(move || {
            let r = counts_store.read();
            vec![
                ("agency", r.agencies.len() as i64),
                ("system", r.systems.len() as i64),
                ("service", r.services.len() as i64),
                ("subscription", r.subscriptions.len() as i64),
                ("credential", r.credentials.len() as i64),
                ("catalog", r.catalogs.len() as i64),
            ]
        }),
    );

    let health_node = cluster.clone();
    let metrics = metrics.with_health(Arc::new(move || {
        let quorum = health_node.has_quorum();
        (quorum, serde_json::json!({ "node_id": health_node.id, "quorum": quorum, "leader": health_node.leader() }))
    }));
    let refresh = cluster_gauges(&metrics, cluster.clone()).map_err(|e| AppError::Gateway(format!("cluster metrics: {e}")))?;
    let drain_node = cluster.clone();
    let (maint_store, node_name) = (store.clone(), cfg.node.name.clone());
    // A node inside a `nodes` maintenance window answers /status like a drained node.
    let metrics = metrics.with_refresh(refresh).with_drain(Arc::new(move || {
        drain_node.is_draining() || {
            let now = Utc::now();
            maint_store.read().maintenance.values().any(|w| w.active_at(now) && w.scope.covers_node(&node_name))
        }
    }));
    let host = Host::new(&dir, metrics.registry()).map_err(|e| AppError::Gateway(format!("host metrics: {e}")))?;
    backups.register_metrics(metrics.registry()).map_err(|e| AppError::Gateway(format!("backup metrics: {e}")))?;
    let metrics = metrics.with_services(status::Services {
        host,
        data_dir: dir.clone(),
        thresholds: cfg.status.clone(),
        storage: storage_probe(store.clone(), dir.clone()),
        probes: {
            let st = admin_state.clone();
            Some(Arc::new(move || st.probes.get().map(|p| p.figures()).unwrap_or((0, 0, 0))))
        },
    });
    // Subscribed first: what is applied while the view is built triggers a rebuild.
    let applied_rx = store.subscribe();
    let initial = {
        let reg = store.read();
        View::build(&reg, &key, store.last_applied())
    };
    let (view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(initial));
    let gateway_metrics = gateway::metrics::GatewayMetrics::new(metrics.registry()).map_err(|e| AppError::Gateway(e.to_string()))?;
    let upstreams = gateway::upstream::Upstreams::new(
        cfg.gateway.upstream_ca_file.as_deref(),
        std::time::Duration::from_millis(cfg.gateway.connect_timeout_ms),
    )
    .map_err(|e| AppError::Gateway(e.to_string()))?;
    let probes = start_probes(&cfg, &admin_state, upstreams.roots())?;
    let gateway_tls = server_tls;
    let gw = Arc::new(Gateway::new(
        &cfg.node.name,
        view_rx,
        gateway::oauth::TokenAuthority::new(key.derive("lgsp oauth access token v1"), cfg.gateway.token_ttl_seconds),
        upstreams,
        Some(audit_log.clone()),
        gateway_metrics,
        Arc::new(StoreProposer(admin_state.clone())),
        cfg.gateway.clone(),
        ed25519_dalek::SigningKey::from_bytes(&key.derive("lgsp upstream signature v1")),
        if gateway_tls.is_some() { "https" } else { "http" },
    ));

    // Nonces, assertion ids and rate-limit usage travel between the gateways of all nodes;
    // probe results (and the heartbeat that says which nodes are alive) under `probes`.
    let (outbox, inbox) = (gw.shared(), gw.shared());
    let (probes_out, probes_in) = (probes.clone(), probes.clone());
    cluster.start_sharing(
        Arc::new(move || {
            let o = outbox.take_outbox();
            let p = probes_out.gossip_out();
            if o.is_empty() && p.is_none() {
                return None;
            }
            let mut payload = serde_json::to_value(&o).ok()?;
            if let (Some(p), Some(obj)) = (p, payload.as_object_mut()) {
                obj.insert("probes".into(), serde_json::to_value(&p).ok()?);
            }
            Some(SharedBatch { payload })
        }),
        Arc::new(move |from: &str, mut batch: SharedBatch| {
            if let Some(p) = batch.payload.as_object_mut().and_then(|o| o.remove("probes")) {
                match serde_json::from_value::<crate::probes::service::Gossip>(p) {
                    Ok(g) => probes_in.absorb(from, g),
                    Err(e) => tracing::warn!(peer = %from, error = %e, "ignored probe results in an unknown format"),
                }
            }
            match serde_json::from_value::<gateway::Outbox>(batch.payload) {
                Ok(o) => inbox.absorb(from, o),
                Err(e) => tracing::warn!(peer = %from, error = %e, "ignored shared gateway state in an unknown format"),
            }
        }),
    );

    // The leader sends the replicated outbox and proposes maintenance stages (crate::notify).
    let notifier =
        Arc::new(notify::Notifier::new(&cfg.notify, key.clone(), metrics.registry()).map_err(|e| AppError::Gateway(e.to_string()))?);
    let (lead_node, plan_store, prop_state) = (cluster.clone(), store.clone(), admin_state.clone());
    let hooks = notify::Hooks {
        is_leader: Arc::new(move || lead_node.leader() == Some(lead_node.id)),
        plan: Arc::new(move |now, reminder| notify::plan(&plan_store.read(), now, reminder, 256)),
        propose: Arc::new(move |c| {
            let st = prop_state.clone();
            Box::pin(async move { st.propose(Actor::system(), c).await.map(|_| ()).map_err(|e| e.message) })
        }),
    };
    tokio::spawn(notify::run(notifier, hooks, cfg.maintenance.clone(), std::time::Duration::from_millis(500), stop.clone().wait()));

    // This node's traffic rollups for the periodic reports (crate::report::publish).
    let publisher = crate::report::publish::Publisher {
        node: cfg.node.name.clone(),
        audit_dir: dir.join("audit"),
        audit: Some(audit_log.clone()),
        interval: std::time::Duration::from_secs(cfg.report.publish_interval_secs()),
        keep_days: cfg.report.rollup_keep_days,
        cluster: Arc::new(RollupCluster(admin_state.clone())),
    };
    tokio::spawn(publisher.run(stop.clone().wait()));

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve(admin_l, admin_app, tls.clone(), stop.clone()));
    tasks.spawn(gateway::server::serve(gw.clone(), gateway_l, gateway_tls, stop.clone()));
    tokio::spawn(maintain_view(store.clone(), key.clone(), view_tx, applied_rx, stop.clone()));
    tasks.spawn(serve(metrics_l, metrics.router(), None, stop.clone()));

    // Ready means current: a node restarted while the cluster went on (tokens issued, services
    // changed) first catches up with the leader, so that it does not refuse what the others
    // accept. Without a quorum it serves its last applied registry (degraded), as it would later.
    // Its own addresses are current in the applied membership too (re-registered after a restart
    // on other ports), so that `cluster status` and forwarding peers see where it listens.
    match cluster.read_barrier().await {
        Ok(()) => {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while !cluster.registered() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if cluster.registered() {
                tracing::debug!("caught up with the cluster before announcing readiness");
            } else {
                tracing::warn!("this node's addresses are not yet registered with the cluster; announcing readiness anyway");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not confirm the registry is current (no leader with a quorum yet); serving the last applied registry until the cluster is reachable")
        }
    }

    if cfg.dev_mode {
        let info = write_dev_json(
            &dir,
            &admin_url,
            &gateway_url,
            &metrics_url,
            boot.as_ref(),
            cluster.id,
            &cluster.local_raft_addr().to_string(),
        )?;
        let creds = if info.username.is_empty() {
            format!("  credentials: those of the cluster's first node (accounts are replicated)\n  node      : {} in the cluster, listening on {}/udp", info.node_id, info.cluster_addr)
        } else {
            format!("  username  : {}\n  password  : {}\n  api token : {}", info.username, info.password, info.api_token)
        };
        eprintln!(
            "LGSP dev appliance ready (plain HTTP on loopback: for evaluation only)\n  admin API : {admin_url}/api/v1/  (OpenAPI: {admin_url}/api/v1/openapi.json)\n  gateway   : {gateway_url}\n  metrics   : {metrics_url}/metrics\n{creds}\n  (also in {})",
            dir.join("dev.json").display()
        );
    } else if let Some(b) = &boot {
        let path = dir.join("initial-admin.json");
        let body = serde_json::json!({"username": b.username, "password": b.password, "api_token": b.api_token});
        secrets::write_private(&path, body.to_string().as_bytes())
            .map_err(|source| AppError::Write { path: path.display().to_string(), source })?;
        tracing::warn!(path = %path.display(), "first start: the initial operator credentials were written to this file (mode 0600); log in, change the password and delete the file");
    }
    tracing::info!(admin = %admin_url, gateway = %gateway_url, metrics = %metrics_url, startup_ms = started.elapsed().as_millis() as u64, "ready");
    if let Some(c) = &certs {
        let s = c.summary();
        tracing::info!(sha256 = %s.sha256, subject = %s.subject, not_after = %s.not_after, "TLS certificate presented on the gateway and admin listeners");
    }
    let serving = format!("serving: gateway {gateway_url}, admin {admin_url}, metrics {metrics_url}");
    systemd::ready(&serving);
    let watchdog = match systemd::watchdog_interval() {
        Some(interval) => {
            let probe = store.clone();
            // The registry lock can be taken and the registry file answers a read transaction
            // (the same read as the `storage` component of `/status/services`).
            let storage: systemd::StorageCheck = Arc::new(move || {
                drop(probe.read());
                probe.probe().map(|_| ()).map_err(|e| e.to_string())
            });
            Some(systemd::Watchdog::start(interval, tokio::runtime::Handle::current(), storage).map_err(AppError::Watchdog)?)
        }
        None => None,
    };

    let mut running = Running { source, cfg, certs, serving };
    // A node whose Raft core stopped (e.g. its disk filled) would otherwise stay up as a zombie:
    // proxying from a frozen registry and refusing every admin call. It exits non-zero instead,
    // after draining like on SIGTERM, and `Restart=on-failure` brings it back once it can write.
    let mut core_stopped = None;
    loop {
        tokio::select! {
            _ = terminations.next() => {
                tracing::info!("shutdown requested; draining");
                break;
            }
            why = cluster.core_stopped() => {
                tracing::error!(error = %why, "the Raft core stopped; draining and exiting so that the node is restarted");
                core_stopped = Some(why);
                break;
            }
            Some(res) = tasks.join_next() => {
                if let Ok(Err(e)) = res {
                    tracing::error!(error = %e, "a listener failed");
                }
                break;
            }
            _ = hangups.next() => running.reload(),
        }
    }
    systemd::stopping("draining: no new connections; finishing requests in flight");
    trigger.fire();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!("drain took longer than 10 s; exiting anyway");
    }
    // Only now that no request is in flight: flush the audit log and sign its tail.
    drop(gw);
    audit_trigger.fire();
    match audit_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "audit log did not close cleanly"),
        Err(e) => tracing::error!(error = %e, "audit writer stopped abnormally"),
        Ok(Ok(())) => {}
    }
    cluster.shutdown().await;
    tracing::info!("stopped");
    drop(watchdog);
    match core_stopped {
        Some(why) => Err(AppError::CoreStopped(why)),
        None => Ok(()),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AppError> {
    std::fs::create_dir_all(dir).map_err(|source| AppError::DataDir { path: dir.display().to_string(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| AppError::Bind { what, addr, source })?;
    l.set_nonblocking(true).map_err(|source| AppError::Bind { what, addr, source })?;
    Ok(l)
}

fn local(l: &std::net::TcpListener, what: &'static str, addr: SocketAddr) -> Result<SocketAddr, AppError> {
    l.local_addr().map_err(|source| AppError::Bind { what, addr, source })
}

async fn serve(
    l: std::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: shutdown::Shutdown,
) -> std::io::Result<()> {
    match tls {
        Some(cfg) => {
            let handle = axum_server::Handle::new();
            let h2 = handle.clone();
            tokio::spawn(async move {
                stop.wait().await;
                h2.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(l, cfg).handle(handle).serve(app.into_make_service()).await
        }
        None => {
            let l = tokio::net::TcpListener::from_std(l)?;
            axum::serve(l, app).with_graceful_shutdown(stop.wait()).await
        }
    }
}

/// Creates the first operator (and an API token) when the registry has no users.
async fn bootstrap(st: &admin::Shared) -> Result<Option<Bootstrap>, AppError> {
    if !st.store.read().users.is_empty() {
        return Ok(None);
    }
    let username = "admin".to_owned();
    // Random, and guaranteed to meet the O7 policy.
    let password = format!("Lgsp-{}-9a", secrets::random_string(12));
    let hash = secrets::hash_password(&password)?;
    let actor = Actor::system();
    st.propose(
        actor.clone(),
        Command::CreateUser {
            username: username.clone(),
            display_name: "Operator".into(),
            role: Role::Operator,
            agency: None,
            password_hash: hash,
        },
    )
    .await
    .map_err(|e| AppError::Bootstrap(e.message))?;
    let op = Actor { user: username.clone(), role: Role::Operator, agency: None };
    let (api_token, _) =
        admin::auth::issue_token(st, op, &username, "bootstrap", None, false).await.map_err(|e| AppError::Bootstrap(e.message))?;
    tracing::info!(user = %username, at = %Utc::now(), "created the first operator account");
    Ok(Some(Bootstrap { username, password, api_token }))
}

/// Writes `dev.json`; on a restart (no new bootstrap) keeps the credentials already there.
fn write_dev_json(
    dir: &Path,
    admin_url: &str,
    gateway_url: &str,
    metrics_url: &str,
    boot: Option<&Bootstrap>,
    node_id: u64,
    cluster_addr: &str,
) -> Result<DevInfo, AppError> {
    let path: PathBuf = dir.join("dev.json");
    let (username, password, api_token) = match boot {
        Some(b) => (b.username.clone(), b.password.clone(), b.api_token.clone()),
        None => match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<DevInfo>(&b).ok()) {
            Some(old) => (old.username, old.password, old.api_token),
            None if node_id != FIRST_NODE => (String::new(), String::new(), String::new()),
            None => {
                return Err(AppError::Bootstrap(format!(
                    "{} is missing or unreadable and the registry already has users; use a new --data-dir",
                    path.display()
                )))
            }
        },
    };
    let info = DevInfo {
        admin_url: admin_url.into(),
        gateway_url: gateway_url.into(),
        metrics_url: metrics_url.into(),
        username,
        password,
        api_token,
        node_id,
        cluster_addr: cluster_addr.into(),
    };
    let text = serde_json::to_vec_pretty(&info).map_err(|e| AppError::Bootstrap(e.to_string()))?;
    secrets::write_private(&path, &text).map_err(|source| AppError::Write { path: path.display().to_string(), source })?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_needed_names_what_a_reload_cannot_apply() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let running = Config::dev(PathBuf::from("/var/lib/lgsp"), any, any, any);
        let mut new = running.clone();
        new.log.level = "debug".into();
        new.tls = Some(crate::config::TlsConfig { cert: "/etc/lgsp/tls/new.crt".into(), key: "/etc/lgsp/tls/new.key".into() });
        assert!(restart_needed(&running, &new).is_empty(), "log level and TLS are applied by a reload");
        new.listen.admin = SocketAddr::from(([127, 0, 0, 1], 9443));
        new.gateway.retries = 3;
        new.log.format = crate::config::LogFormat::Json;
        new.node.data_dir = PathBuf::from("/srv/lgsp");
        assert_eq!(restart_needed(&running, &new), ["node.data_dir", "listen.admin", "log.format", "gateway"]);
    }

    #[test]
    fn listeners_on_every_interface_are_announced_under_the_cluster_address() {
        let any = SocketAddr::from(([0, 0, 0, 0], 9443));
        assert_eq!(advertised(any, Some("10.77.0.11:7443")), "10.77.0.11:9443");
        assert_eq!(advertised(any, Some("db1.hp.gov.vn:7443")), "db1.hp.gov.vn:9443");
        assert_eq!(advertised(any, Some("[fd00::11]:7443")), "[fd00::11]:9443");
        assert_eq!(advertised(any, None), "127.0.0.1:9443");
        let bound = SocketAddr::from(([10, 0, 0, 5], 8443));
        assert_eq!(advertised(bound, Some("10.77.0.11:7443")), "10.0.0.5:8443", "an explicit address is announced as bound");
    }
}
