//! The one place that wires modules together: start-up order, listeners, bootstrap, drain.
//!
//! Start-up order: data dir -> secrets key -> registry store (fails fast if unreadable) ->
//! bootstrap operator on first start -> bind every listener -> announce readiness (log line,
//! `dev.json`) -> serve until SIGTERM/SIGINT -> drain.

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
use crate::ops::{host::Host, metrics::Metrics, shutdown, status};
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
}

/// `lgsp_cluster_*` gauges, refreshed from Raft's metrics at every scrape.
fn cluster_gauges(metrics: &Metrics, node: Arc<ClusterNode>) -> Result<Arc<dyn Fn() + Send + Sync>, prometheus::Error> {
    use prometheus::{IntGauge, IntGaugeVec, Opts};
    let reg = metrics.registry();
    let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        reg.register(Box::new(g.clone()))?;
        Ok(g)
    };
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

/// A listener bound to every interface is announced under loopback; operators reach nodes by
/// the addresses in their own inventory.
fn advertised(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), a.port())
    } else {
        a
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
async fn maintain_view(store: Arc<Store>, key: SecretsKey, tx: tokio::sync::watch::Sender<Arc<View>>, stop: shutdown::Shutdown) {
    let mut applied = store.subscribe();
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            _ = &mut stopped => return,
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
                tx.send_replace(Arc::new(v));
            }
            Err(e) => tracing::error!(error = %e, "gateway view rebuild failed; serving the previous view"),
        }
    }
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

pub async fn run(cfg: Config) -> Result<(), AppError> {
    let started = Instant::now();
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

    let tls = match (&cfg.tls, cfg.dev_mode) {
        (Some(t), _) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&t.cert, &t.key)
                .await
                .map_err(|e| AppError::Tls(format!("{}: {e}", t.cert.display())))?,
        ),
        (None, true) => None,
        (None, false) => return Err(AppError::Tls("no [tls] section outside dev mode".into())),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin_l = bind("admin", cfg.listen.admin)?;
    let gateway_l = bind("gateway", cfg.listen.gateway)?;
    let metrics_l = bind("metrics", cfg.listen.metrics)?;
    let admin_addr = local(&admin_l, "admin", cfg.listen.admin)?;
    let gateway_addr = local(&gateway_l, "gateway", cfg.listen.gateway)?;
    let metrics_addr = local(&metrics_l, "metrics", cfg.listen.metrics)?;
    let admin_url = format!("{scheme}://{}", advertised(admin_addr));
    let gateway_url = format!("{scheme}://{}", advertised(gateway_addr));
    let metrics_url = format!("http://{}", advertised(metrics_addr));

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
    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        cluster: cluster.clone(),
        key: key.clone(),
        cfg: cfg.admin.clone(),
        audit_dir: dir.join("audit"),
        audit: Some(audit_log.clone()),
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
    let metrics = metrics.with_refresh(refresh);
    let host = Host::new(&dir, metrics.registry()).map_err(|e| AppError::Gateway(format!("host metrics: {e}")))?;
    let metrics = metrics.with_services(status::Services {
        host,
        data_dir: dir.clone(),
        thresholds: cfg.status.clone(),
        storage: storage_probe(store.clone(), dir.clone()),
    });
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
    let gateway_tls = match &cfg.tls {
        Some(t) => Some(gateway::server::tls_config(&t.cert, &t.key).map_err(AppError::Tls)?),
        None => None,
    };
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

    // Nonces, assertion ids and rate-limit usage travel between the gateways of all nodes.
    let (outbox, inbox) = (gw.shared(), gw.shared());
    cluster.start_sharing(
        Arc::new(move || {
            let o = outbox.take_outbox();
            if o.is_empty() {
                return None;
            }
            serde_json::to_value(&o).ok().map(|payload| SharedBatch { payload })
        }),
        Arc::new(move |from: &str, batch: SharedBatch| match serde_json::from_value::<gateway::Outbox>(batch.payload) {
            Ok(o) => inbox.absorb(from, o),
            Err(e) => tracing::warn!(peer = %from, error = %e, "ignored shared gateway state in an unknown format"),
        }),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve(admin_l, admin_app, tls.clone(), stop.clone()));
    tasks.spawn(gateway::server::serve(gw.clone(), gateway_l, gateway_tls, stop.clone()));
    tokio::spawn(maintain_view(store.clone(), key.clone(), view_tx, stop.clone()));
    tasks.spawn(serve(metrics_l, metrics.router(), None, stop.clone()));

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

    tokio::select! {
        _ = shutdown::os_signal() => tracing::info!("shutdown requested; draining"),
        Some(res) = tasks.join_next() => {
            if let Ok(Err(e)) = res {
                tracing::error!(error = %e, "a listener failed");
            }
        }
    }
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
    Ok(())
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
