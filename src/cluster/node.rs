//! One member of the cluster: Raft (openraft) over the QUIC transport, with the appliance's
//! rules around it.
//!
//! Owns: the node's identity files (`DATA_DIR/cluster/`), the Raft handle, write forwarding to
//! the leader, read barriers for linearizable admin reads, admitting joining nodes, membership
//! changes (learner → voter promotion once caught up, removal, leadership transfer),
//! certificate rotation, and the periodic exchange of shared gateway state.
//!
//! Invariants:
//! - [`ClusterNode::write`] returns only once the entry is committed *and* applied on this
//!   node, so the caller's next read here sees it. Every node computes the same outcome (apply
//!   is deterministic), so the outcome is read locally, never shipped from the leader.
//! - A write is retried only when it certainly never reached a leader's log (no leader known,
//!   leader unreachable before sending, "not the leader" answers). Anything ambiguous is reported
//!   as such, never retried: registry commands are not all idempotent.
//! - A node without a quorum never acknowledges a write or a linearizable read; the gateway
//!   keeps serving from the last applied state (it never waits on Raft).
//!
//! May import `registry`, `secrets` and the other `cluster` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use chrono::Utc;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::batch::{Batcher, Slot, WriteFailure};
use super::pki::{self, ClusterCa, JoinTokenString, NodeIdentity};
use super::store::{self, Applied, Store};
use super::transport::{response_kind, CommitBound, Peer, RpcHandler, Transport, TransportError};
use super::types::{
    ClusterCommand, ClusterEnvelope, ClusterOutcome, ClusterStatus, DrainReport, JoinGrant, JoinRequest, MembershipOp, NodeId, NodeInfo,
    NodeStatus, Request, RpcRequest, RpcResponse, SharedBatch, TypeConfig, FIRST_NODE,
};
use crate::registry::{Actor, Role};
use crate::secrets::{self, SecretsKey};

/// How long a write may wait for a quorum before the caller is told it failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a linearizable read may wait for the leader's confirmation.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How often shared gateway state is sent to the other nodes.
pub const SHARE_INTERVAL: Duration = Duration::from_millis(50);
/// A learner this close to the leader's log is promoted (when its join token said voter).
const PROMOTE_LAG: u64 = 100;
/// How often [`ClusterNode::core_stopped`] looks whether the Raft core stopped.
const CORE_CHECK: Duration = Duration::from_millis(250);
/// A voter this close to the leader's log counts as healthy for a drain's quorum check.
const HEALTHY_LAG: u64 = 1000;
/// Node certificates are renewed when they have fewer days than this left.
const RENEW_DAYS: i64 = 30;
const CERT_DAYS: u32 = 365;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not part of a cluster: run `lgsp cluster init` on the first node, or `lgsp cluster join` on the others")]
    NotInitialized,
    #[error("no quorum: {0}; check `lgsp cluster status` on the other nodes and the network between them")]
    NoQuorum(String),
    #[error("the leader did not confirm the change ({0}); it may or may not have been applied: read the object before retrying")]
    Ambiguous(String),
    #[error(
        "the change was committed, but this node no longer holds its outcome (it was replaced by a snapshot); read the object to check"
    )]
    OutcomeUnknown,
    #[error("{0}")]
    Refused(String),
    #[error("cluster storage: {0}")]
    Storage(String),
    #[error("cluster transport: {0}")]
    Transport(String),
    #[error("{what} {path}: {reason}")]
    File { what: &'static str, path: String, reason: String },
}

impl ClusterError {
    /// A stable code for the admin API.
    pub fn code(&self) -> &'static str {
        match self {
            ClusterError::NotInitialized => "NOT_INITIALIZED",
            ClusterError::NoQuorum(_) => "NO_QUORUM",
            ClusterError::Ambiguous(_) => "OUTCOME_UNKNOWN",
            ClusterError::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ClusterError::Refused(_) => "REFUSED",
            ClusterError::Storage(_) => "STORAGE",
            ClusterError::Transport(_) => "TRANSPORT",
            ClusterError::File { .. } => "STORAGE",
        }
    }
}

fn file_err(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> ClusterError {
    ClusterError::File { what, path: path.display().to_string(), reason: reason.to_string() }
}

/// `DATA_DIR/cluster/node.json`: who this node is in which cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeFile {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// The address peers dial (kept so that a node started with an ephemeral port keeps it).
    pub raft_addr: String,
    /// Set by `cluster init`: the node initialises Raft with itself as the only voter.
    #[serde(default)]
    pub initialize: bool,
    /// Members known at join time, for the first contact.
    #[serde(default)]
    pub seeds: BTreeMap<NodeId, NodeInfo>,
}

pub fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

impl NodeFile {
    pub fn load(data_dir: &Path) -> Result<Option<NodeFile>, ClusterError> {
        let path = cluster_dir(data_dir).join("node.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| file_err("damaged node file", &path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err("cannot read", &path, e)),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let dir = cluster_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| file_err("cannot create", &dir, e))?;
        let path = dir.join("node.json");
        let tmp = dir.join("node.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| file_err("cannot encode", &path, e))?;
        secrets::write_private(&tmp, &bytes).map_err(|e| file_err("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_err("cannot write", &path, e))
    }
}

/// Extra certificate names for an advertised `host:port`.
fn sans_for(raft_addr: &str) -> Vec<String> {
    match raft_addr.rsplit_once(':') {
        Some((host, _)) => vec![host.trim_start_matches('[').trim_end_matches(']').to_owned()],
        None => Vec::new(),
    }
}

/// `lgsp cluster init`: makes this data directory the first node of a new cluster (CA, node
/// certificate, node file). Refuses a directory that already belongs to a cluster.
pub fn init_offline(data_dir: &Path, raft_addr: &str) -> Result<NodeFile, ClusterError> {
    if let Some(nf) = NodeFile::load(data_dir)? {
        return Err(ClusterError::Refused(format!(
            "{} already belongs to cluster {} as node {}; use an empty data directory for a new cluster",
            data_dir.display(),
            nf.cluster_id,
            nf.node_id
        )));
    }
    let dir = cluster_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| file_err("cannot create", &dir, e))?;
    let cluster_id = secrets::new_id("c");
    let ca = ClusterCa::create(&cluster_id).map_err(|e| ClusterError::Storage(e.to_string()))?;
    ca.save(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
    let (key_pem, pub_pem) = pki::generate_node_key().map_err(|e| ClusterError::Storage(e.to_string()))?;
    let cert_pem =
        ca.issue(FIRST_NODE, &cluster_id, &pub_pem, &sans_for(raft_addr), CERT_DAYS).map_err(|e| ClusterError::Storage(e.to_string()))?;
    let identity = NodeIdentity { node_id: FIRST_NODE, ca_cert_pem: ca.cert_pem().to_owned(), cert_pem, key_pem };
    identity.save(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
    let nf = NodeFile { cluster_id, node_id: FIRST_NODE, raft_addr: raft_addr.to_owned(), initialize: true, seeds: BTreeMap::new() };
    nf.save(data_dir)?;
    Ok(nf)
}

/// `lgsp cluster join`: presents a join token to a member at `peer`, receives the node's
/// certificate, the CA and the cluster's secrets key, and writes them to the data directory.
pub async fn join_offline(data_dir: &Path, token: &str, peer: &str, info: NodeInfo) -> Result<NodeFile, ClusterError> {
    if let Some(nf) = NodeFile::load(data_dir)? {
        return Err(ClusterError::Refused(format!(
            "{} already belongs to cluster {} as node {}; use an empty data directory to join",
            data_dir.display(),
            nf.cluster_id,
            nf.node_id
        )));
    }
    if data_dir.join("registry.redb").exists() {
        return Err(ClusterError::Refused(format!(
            "{} already holds a registry; a joining node must start empty (move the directory away first)",
            data_dir.display()
        )));
    }
    let token = JoinTokenString::parse(token).map_err(|e| ClusterError::Refused(e.to_string()))?;
    let (key_pem, public_key_pem) = pki::generate_node_key().map_err(|e| ClusterError::Storage(e.to_string()))?;
    let req = JoinRequest {
        token_id: token.id.clone(),
        token_secret: token.secret.clone(),
        sans: sans_for(&info.raft_addr),
        info: info.clone(),
        public_key_pem,
    };
    let grant = super::transport::join(peer, &token, req, Duration::from_secs(20)).await.map_err(|e| match e {
        TransportError::Refused { message, .. } => ClusterError::Refused(message),
        other => ClusterError::Transport(format!("cannot join through {peer}: {other}")),
    })?;
    let dir = cluster_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| file_err("cannot create", &dir, e))?;
    SecretsKey::install(&data_dir.join("secrets.key"), &grant.secrets_key_b64).map_err(|e| ClusterError::Refused(e.to_string()))?;
    let ca = ClusterCa::from_pem(&grant.ca_cert_pem, &grant.ca_key_pem).map_err(|e| ClusterError::Storage(e.to_string()))?;
    ca.save(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
    let identity =
        NodeIdentity { node_id: grant.node_id, ca_cert_pem: grant.ca_cert_pem.clone(), cert_pem: grant.node_cert_pem.clone(), key_pem };
    identity.save(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
    let nf = NodeFile {
        cluster_id: grant.cluster_id,
        node_id: grant.node_id,
        raft_addr: info.raft_addr,
        initialize: false,
        seeds: grant.members,
    };
    nf.save(data_dir)?;
    Ok(nf)
}

/// Picks a free UDP port on `ip` (for a dev node started with ephemeral ports: the port is then
/// kept in the node file, so the node keeps its address across restarts).
pub fn pick_udp_port(ip: std::net::IpAddr) -> Result<u16, ClusterError> {
    let s =
        std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| ClusterError::Transport(format!("cannot pick a UDP port: {e}")))?;
    s.local_addr().map(|a| a.port()).map_err(|e| ClusterError::Transport(format!("cannot pick a UDP port: {e}")))
}

/// What [`ClusterNode::start`] needs.
pub struct StartOptions {
    pub data_dir: PathBuf,
    /// Where the QUIC listener binds; port 0 means "the port in the node file".
    pub listen: SocketAddr,
    /// This node's name and URLs (the raft address comes from the node file).
    pub info: NodeInfo,
    pub tuning: crate::config::ClusterConfig,
    pub secrets: SecretsKey,
    /// Allow the test-only fault hook (`LGSP_TEST_FAULTS=1`).
    pub faults_enabled: bool,
}

/// Fed by the gateway: returns what accumulated since the last call (None: nothing).
pub type ShareSource = Arc<dyn Fn() -> Option<SharedBatch> + Send + Sync>;
/// Receives what another node's gateway accumulated, with that node's name.
pub type ShareSink = Arc<dyn Fn(&str, SharedBatch) + Send + Sync>;

pub struct ClusterNode {
    pub id: NodeId,
    pub cluster_id: String,
    raft: Raft<TypeConfig>,
    store: Arc<Store>,
    transport: Transport,
    data_dir: PathBuf,
    info: RwLock<NodeInfo>,
    secrets_b64: String,
    election_max: Duration,
    /// When this node last heard from a leader (an AppendEntries it accepted or checked).
    heard_leader: std::sync::Mutex<Option<Instant>>,
    faults_enabled: bool,
    share_sink: OnceLock<ShareSink>,
    /// Group commit of client writes while this node leads.
    batcher: Batcher,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("id", &self.id).field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

/// Routes transport requests to the node once it exists.
struct Handler {
    node: Arc<OnceLock<Weak<ClusterNode>>>,
}

impl RpcHandler for Handler {
    fn handle(
        &self,
        peer: Peer,
        req: RpcRequest,
        tail: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (RpcResponse, Vec<u8>)> + Send>> {
        let node = self.node.get().and_then(Weak::upgrade);
        Box::pin(async move {
            match node {
                Some(n) => n.serve(peer, req, tail).await,
                None => (error("starting", "the node is still starting; retry in a moment", None), Vec::new()),
            }
        })
    }
}

fn error(code: &str, message: impl Into<String>, leader: Option<NodeId>) -> RpcResponse {
    RpcResponse::Error { code: code.into(), message: message.into(), leader }
}

/// The leader's answer to a forwarded write that failed. A storage failure or a stopped Raft
/// core (`Fatal`) may strike after the entry was appended and replicated, so the entry can still
/// commit through the other nodes: it is `outcome_unknown`, never a refusal.
fn write_failure_response(f: WriteFailure, leader: Option<NodeId>) -> RpcResponse {
    match f {
        WriteFailure::NotLeader(l) => error("not_leader", "this node is not the leader", l),
        WriteFailure::Refused(e) => error("refused", e, leader),
        WriteFailure::Fatal(e) | WriteFailure::Unknown(e) => error("outcome_unknown", e, leader),
    }
}

/// What a node that forwarded a write tells its client when the leader answered with an error
/// (other than "not the leader", which is retried): a refusal only when the leader refused.
fn forwarded_write_error(code: &str, message: String) -> ClusterError {
    match code {
        "no_quorum" | "outcome_unknown" => ClusterError::Ambiguous(message),
        _ => ClusterError::Refused(message),
    }
}

impl ClusterNode {
    /// Opens storage, binds the transport and starts Raft. A node created by `cluster init`
    /// initialises a one-voter cluster on its first start; a joined node asks to be added as a
    /// learner (and is promoted once caught up if its token said so).
    pub async fn start(opts: StartOptions) -> Result<Arc<ClusterNode>, ClusterError> {
        let Some(mut nf) = NodeFile::load(&opts.data_dir)? else {
            return Err(ClusterError::NotInitialized);
        };
        let dir = cluster_dir(&opts.data_dir);
        let identity = NodeIdentity::load(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        if identity.node_id != nf.node_id {
            return Err(file_err(
                "inconsistent identity in",
                &dir,
                format!("node.pem is for node {} but node.json says {}", identity.node_id, nf.node_id),
            ));
        }
        let listen = if opts.listen.port() == 0 {
            let port = nf.raft_addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(0);
            SocketAddr::new(opts.listen.ip(), port)
        } else {
            opts.listen
        };
        let data_dir = opts.data_dir.clone();
        let (store, mut log_store, mut sm) = tokio::task::spawn_blocking(move || store::open_storage(&data_dir))
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        // The leader writes its own entries in parallel with replicating them (log_store).
        log_store.serve_as(nf.node_id).map_err(|e| ClusterError::Storage(e.to_string()))?;
        // Applied entries reach the registry file in groups (store::Store::start_flusher).
        store.start_flusher().map_err(|e| ClusterError::Storage(e.to_string()))?;
        sm.wait_for_log(log_store.durable());
        let bound = CommitBound { durable: log_store.durable(), held_back: Arc::new(std::sync::atomic::AtomicBool::new(false)) };

        let cell: Arc<OnceLock<Weak<ClusterNode>>> = Arc::new(OnceLock::new());
        let transport = match Transport::bind(listen, identity.clone(), Arc::new(Handler { node: cell.clone() })).await {
            Ok(t) => t,
            // A dev node on ephemeral ports whose remembered port was taken meanwhile (or a
            // copied data directory): take a new port and tell the cluster (see `announce`).
            Err(_) if opts.listen.port() == 0 => {
                let port = pick_udp_port(opts.listen.ip())?;
                let fresh = SocketAddr::new(opts.listen.ip(), port);
                let t = Transport::bind(fresh, identity, Arc::new(Handler { node: cell.clone() }))
                    .await
                    .map_err(|e| ClusterError::Transport(format!("cannot listen on {fresh}/udp: {e}")))?;
                tracing::warn!(old = %nf.raft_addr, new = %fresh, "the remembered cluster port was taken; moved to a new one");
                nf.raft_addr = fresh.to_string();
                nf.save(&opts.data_dir)?;
                t
            }
            Err(e) => return Err(ClusterError::Transport(format!("cannot listen on {listen}/udp: {e}"))),
        };

        let t = &opts.tuning;
        let mut config = openraft::Config {
            cluster_name: nf.cluster_id.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_ms,
            election_timeout_max: t.election_timeout_ms * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_logs),
            max_in_snapshot_log_to_keep: t.keep_logs,
            ..Default::default()
        };
        // Registry imports make large entries: keep each AppendEntries message moderate.
        config.max_payload_entries = 64;
        config.replication_lag_threshold = t.snapshot_logs.saturating_mul(2);
        config.install_snapshot_timeout = 60_000;
        let config = Arc::new(config.validate().map_err(|e| ClusterError::Refused(format!("invalid Raft settings: {e}")))?);
        let raft = Raft::new(nf.node_id, config, transport.network(Some(bound.clone())), log_store, sm)
            .await
            .map_err(|e| ClusterError::Storage(format!("Raft did not start: {e}")))?;

        let mut info = opts.info.clone();
        info.raft_addr = nf.raft_addr.clone();
        let (stop, _) = tokio::sync::watch::channel(false);
        let node = Arc::new(ClusterNode {
            id: nf.node_id,
            cluster_id: nf.cluster_id.clone(),
            batcher: Batcher::start(raft.clone()),
            raft,
            store,
            transport,
            data_dir: opts.data_dir.clone(),
            info: RwLock::new(info.clone()),
            secrets_b64: opts.secrets.to_base64(),
            election_max: Duration::from_millis(t.election_timeout_ms * 3 / 2),
            heard_leader: std::sync::Mutex::new(None),
            faults_enabled: opts.faults_enabled,
            share_sink: OnceLock::new(),
            stop,
        });
        let _ = cell.set(Arc::downgrade(&node));

        if nf.initialize {
            let initialized = node.raft.is_initialized().await.map_err(|e| ClusterError::Storage(e.to_string()))?;
            if !initialized {
                let members = BTreeMap::from([(nf.node_id, info.clone())]);
                match node.raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => return Err(ClusterError::Storage(format!("cannot initialise the cluster: {e}"))),
                }
            }
            nf.initialize = false;
            nf.save(&opts.data_dir)?;
        }
        tokio::spawn(announce_commits(node.raft.clone(), bound, node.stop.subscribe()));
        tokio::spawn(announce(Arc::downgrade(&node), nf.seeds.clone(), node.stop.subscribe()));
        tokio::spawn(leader_duties(Arc::downgrade(&node), node.stop.subscribe()));
        tokio::spawn(renew_certificate(Arc::downgrade(&node), node.stop.subscribe()));
        Ok(node)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn local_raft_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Proposes `req`, waits until it is committed and applied here, and returns its outcome.
    pub async fn write(&self, req: Request) -> Result<Applied, ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let slot = self.commit(req, deadline).await?;
        self.wait_applied(slot.index, deadline + WRITE_TIMEOUT).await?;
        self.store.outcome(slot.index).and_then(|a| a.member(slot.position)).ok_or(ClusterError::OutcomeUnknown)
    }

    /// The leader this node knows of and its addresses (read in place: no copy of the metrics).
    fn leader_and_node(&self) -> (Option<NodeId>, Option<NodeInfo>) {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let leader = m.current_leader;
        let node = leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        (leader, node)
    }

    async fn commit(&self, req: Request, deadline: Instant) -> Result<Slot, ClusterError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::NoQuorum("no leader could be reached within 5 s".into()));
            }
            let remaining = deadline - now;
            match self.leader_and_node() {
                (Some(l), _) if l == self.id => match tokio::time::timeout(remaining, self.batcher.write(req.clone())).await {
                    Err(_) => {
                        return Err(ClusterError::Ambiguous("this node is the leader but could not reach a quorum within 5 s".into()))
                    }
                    Ok(Ok(slot)) => return Ok(slot),
                    Ok(Err(WriteFailure::NotLeader(_))) => {}
                    Ok(Err(WriteFailure::Refused(e))) => return Err(ClusterError::Refused(e)),
                    // The entry may have been appended and replicated before the core stopped:
                    // the same "outcome unknown" as when the leader fails a forwarded write.
                    Ok(Err(WriteFailure::Unknown(e))) => return Err(ClusterError::Ambiguous(e)),
                    Ok(Err(WriteFailure::Fatal(e))) => {
                        return Err(ClusterError::Ambiguous(format!("this node's Raft core stopped during the write: {e}")))
                    }
                },
                (Some(l), Some(n)) => {
                    match self
                        .transport
                        .call(l, &n.raft_addr, RpcRequest::ClientWrite { request: req.clone() }, Vec::new(), remaining)
                        .await
                    {
                        Ok((RpcResponse::Written { index, position }, _)) => return Ok(Slot { index, position }),
                        Ok((RpcResponse::Error { code, .. }, _)) if code == "not_leader" || code == "starting" => {}
                        Ok((RpcResponse::Error { code, message, .. }, _)) => return Err(forwarded_write_error(&code, message)),
                        Ok((other, _)) => {
                            return Err(ClusterError::Transport(format!("unexpected answer from the leader: {}", response_kind(&other))))
                        }
                        // Never sent: safe to try again (with whoever leads by then).
                        Err(TransportError::Unreachable { .. }) => {}
                        Err(e) => return Err(ClusterError::Ambiguous(format!("the leader (node {l}) did not answer: {e}"))),
                    }
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let mut rx = self.store.subscribe();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::Storage("the node is stopping".into())),
                Err(_) => {
                    return Err(ClusterError::NoQuorum(format!("this node has not applied index {index} yet (it is behind the leader)")))
                }
            }
        }
    }

    /// Returns once this node's state includes every write acknowledged before the call
    /// (a linearizable read may then read the local state).
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClusterError::NoQuorum("the leader could not confirm a read within 3 s".into()));
            }
            let remaining = deadline - now;
            match self.leader_and_node() {
                (Some(l), _) if l == self.id => match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                        return Err(ClusterError::NoQuorum(e.to_string()))
                    }
                    Ok(Err(RaftError::Fatal(e))) => return Err(ClusterError::Storage(e.to_string())),
                    Err(_) => return Err(ClusterError::NoQuorum("this node leads but no quorum confirmed it within 3 s".into())),
                },
                (Some(l), Some(n)) => match self.transport.call(l, &n.raft_addr, RpcRequest::ReadIndex, Vec::new(), remaining).await {
                    Ok((RpcResponse::ReadIndex { index }, _)) => return self.wait_applied(index, deadline).await,
                    Ok((RpcResponse::Error { code, message, .. }, _)) if code == "no_quorum" => {
                        return Err(ClusterError::NoQuorum(message))
                    }
                    _ => {}
                },
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Resolves when this node's Raft core stopped on its own (a storage failure such as a full
    /// disk): the node can no longer take part in the cluster until it is restarted. Returns why.
    /// Checked every [`CORE_CHECK`] rather than on every change of the metrics, which change
    /// with every entry appended, replicated or applied (waking a task for each would cost a
    /// context switch per write).
    pub async fn core_stopped(&self) -> String {
        let rx = self.raft.metrics();
        let mut tick = tokio::time::interval(CORE_CHECK);
        loop {
            tick.tick().await;
            if let Err(e) = &rx.borrow().running_state {
                return e.to_string();
            }
            if rx.has_changed().is_err() {
                return "the Raft core ended".into();
            }
        }
    }

    /// True when the membership this node has applied carries its current addresses (a node
    /// restarted on other ports registers them again, see `announce`).
    pub fn registered(&self) -> bool {
        let info = self.info.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.store.membership().membership().get_node(&self.id) == Some(&info)
    }

    /// True when this node knows a leader that heard from a quorum recently: admin writes and
    /// reads work. When false the gateway still serves from the last applied state.
    pub fn has_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            None => false,
            Some(l) if l == self.id => m.millis_since_quorum_ack.is_some_and(|ms| u128::from(ms) < self.election_max.as_millis() * 2),
            Some(_) => m.state == ServerState::Follower || m.state == ServerState::Learner,
        }
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The cluster as seen from the leader when it answers, else from this node.
    pub async fn status(&self) -> ClusterStatus {
        if let (Some(l), Some(n)) = self.leader_and_node() {
            if l != self.id {
                if let Ok((RpcResponse::Status(s), _)) =
                    self.transport.call(l, &n.raft_addr, RpcRequest::Status, Vec::new(), Duration::from_secs(2)).await
                {
                    return s;
                }
            }
        }
        self.local_status()
    }

    /// The cluster as this node sees it (only a leader knows its followers' progress).
    pub fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let nodes = membership
            .nodes()
            .map(|(id, info)| {
                let matched =
                    if *id == self.id { last } else { m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index) };
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                };
                let lag = match (m.replication.is_some() || *id == self.id, last, matched) {
                    (true, Some(last), Some(mi)) => Some(last.saturating_sub(mi)),
                    (true, Some(last), None) => Some(last),
                    _ => None,
                };
                NodeStatus { id: *id, info: info.clone(), role: role.into(), matched_index: matched, lag }
            })
            .collect();
        ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            reporter: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            nodes,
        }
    }

    /// Creates a one-time join token (`lgsp cluster token create`). Returns the token string
    /// (shown once) and its expiry.
    pub async fn create_join_token(
        &self,
        actor: Actor,
        voter: bool,
        ttl: Duration,
    ) -> Result<(String, chrono::DateTime<Utc>), ClusterError> {
        let id = secrets::new_id("jt");
        let secret = secrets::random_string(32);
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let command = ClusterCommand::CreateJoinToken { id: id.clone(), secret_sha256: pki::hash_secret(&secret), expires_at, voter };
        self.write_cluster(actor, command).await?;
        let ca = ClusterCa::load(&cluster_dir(&self.data_dir)).map_err(|e| ClusterError::Storage(e.to_string()))?;
        Ok((JoinTokenString::new(&id, &secret, ca.fingerprint()).to_string(), expires_at))
    }

    /// Whether an operator drained this node (`lgsp node drain`), as this node last applied.
    pub fn is_draining(&self) -> bool {
        self.store.cluster().draining.contains(&self.id)
    }

    /// Takes this node out of service (`lgsp node drain`): refused when the voters left in
    /// service (healthy, as the leader sees them, and not drained) would be fewer than a quorum;
    /// otherwise the drain is recorded through Raft (so it survives restarts and every node
    /// knows it) and, when this node leads, leadership moves to the most caught-up voter in
    /// service. The caller is told who leads afterwards. Traffic already accepted finishes; the
    /// load balancer stops sending more when `/status` answers 503.
    pub async fn drain(&self, actor: Actor) -> Result<DrainReport, ClusterError> {
        let st = self.status().await;
        let draining = self.store.cluster().draining.clone();
        let voters: Vec<&NodeStatus> = st.nodes.iter().filter(|n| n.role != "learner").collect();
        let quorum = voters.len() / 2 + 1;
        let in_service: Vec<&NodeStatus> = voters
            .iter()
            .copied()
            .filter(|n| n.id != self.id && !draining.contains(&n.id) && n.lag.is_some_and(|l| l <= HEALTHY_LAG))
            .collect();
        if voters.iter().any(|n| n.id == self.id) && in_service.len() < quorum {
            return Err(ClusterError::Refused(format!(
                "draining node {} would leave {} healthy voter(s) in service, fewer than the quorum of {quorum} out of {}; \
                 bring the other nodes back (or resume a drained one) first",
                self.id,
                in_service.len(),
                voters.len()
            )));
        }
        self.set_draining(actor, true).await?;
        // The leader's duty loop hands leadership to the most caught-up voter in service;
        // wait (bounded) for that, so the caller learns who leads now.
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(self.election_max * 4 + Duration::from_secs(1), async {
            while rx.borrow_and_update().current_leader == Some(self.id) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let leader = self.raft.metrics().borrow().current_leader;
        Ok(DrainReport { node_id: self.id, draining: true, leader })
    }

    /// Puts a drained node back in service (`lgsp node resume`).
    pub async fn resume(&self, actor: Actor) -> Result<DrainReport, ClusterError> {
        self.set_draining(actor, false).await?;
        Ok(DrainReport { node_id: self.id, draining: false, leader: self.raft.metrics().borrow().current_leader })
    }

    async fn set_draining(&self, actor: Actor, draining: bool) -> Result<(), ClusterError> {
        self.write_cluster(actor, ClusterCommand::SetDraining { node_id: self.id, draining }).await.map(|_| ())
    }

    /// Asks every node for a backup of the state at one log entry (`lgsp backup create`);
    /// returns that entry's index once it is applied here.
    pub async fn backup(&self, actor: Actor, id: String, reason: String) -> Result<u64, ClusterError> {
        self.write_cluster(actor, ClusterCommand::Backup { id: id.clone(), reason }).await?;
        self.store.cluster().backups.iter().find(|b| b.id == id).map(|b| b.index).ok_or(ClusterError::OutcomeUnknown)
    }

    /// Proposes a cluster command now; a refusal becomes [`ClusterError::Refused`].
    async fn write_cluster(&self, actor: Actor, command: ClusterCommand) -> Result<ClusterOutcome, ClusterError> {
        match self.write(Request::Cluster(ClusterEnvelope { at: Utc::now(), actor, command })).await? {
            Applied::Cluster(Ok(o)) => Ok(o),
            Applied::Cluster(Err(e)) => Err(ClusterError::Refused(e.to_string())),
            _ => Err(ClusterError::OutcomeUnknown),
        }
    }

    /// Carries out a membership change on the leader (forwarded there from any node).
    pub async fn membership(&self, op: MembershipOp) -> Result<(), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT * 2;
        loop {
            match self.leader_and_node() {
                (Some(l), _) if l == self.id => return self.membership_here(op).await,
                (Some(l), Some(n)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.transport.call(l, &n.raft_addr, RpcRequest::Membership { op: op.clone() }, Vec::new(), remaining).await {
                        Ok((RpcResponse::Ok, _)) => return Ok(()),
                        Ok((RpcResponse::Error { code, .. }, _)) if code == "not_leader" => {}
                        Ok((RpcResponse::Error { message, .. }, _)) => return Err(ClusterError::Refused(message)),
                        Ok((other, _)) => return Err(ClusterError::Transport(format!("unexpected answer: {}", response_kind(&other)))),
                        Err(TransportError::Unreachable { .. }) => {}
                        Err(e) => return Err(ClusterError::Ambiguous(e.to_string())),
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoQuorum("no leader to carry out the membership change".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn membership_here(&self, op: MembershipOp) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known = |id: &NodeId| membership.get_node(id).is_some();
        match op {
            MembershipOp::Promote { node_id } => {
                if !known(&node_id) {
                    return Err(ClusterError::Refused(format!("node {node_id} is not a member; it must join first")));
                }
                if voters.contains(&node_id) {
                    return Ok(());
                }
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([node_id]))).await
            }
            MembershipOp::Remove { node_id } => {
                if !known(&node_id) {
                    return Err(ClusterError::Refused(format!("node {node_id} is not a member")));
                }
                if voters.contains(&node_id) {
                    if voters.len() == 1 {
                        return Err(ClusterError::Refused("cannot remove the only voter; the cluster would have no members left".into()));
                    }
                    self.change(ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))).await?;
                }
                self.change(ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))).await?;
                let env = ClusterEnvelope { at: Utc::now(), actor: Actor::system(), command: ClusterCommand::ForgetNode { node_id } };
                self.write(Request::Cluster(env)).await.map(|_| ())
            }
            MembershipOp::TransferLeader { to } => {
                if to == self.id {
                    return Ok(());
                }
                if !voters.contains(&to) {
                    return Err(ClusterError::Refused(format!("node {to} is not a voter; only a voter can lead")));
                }
                self.transfer_to(to, &membership).await
            }
        }
    }

    /// One membership change; waits (up to 10 s) for a change already in progress (e.g. an
    /// automatic promotion) to finish first.
    async fn change(&self, change: ChangeMembers<NodeId, NodeInfo>) -> Result<(), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT * 2;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.raft.change_membership(change.clone(), false)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(ClusterError::Refused(format!("membership change refused: {e}"))),
                Err(_) => return Err(ClusterError::Ambiguous("the membership change was not confirmed within 10 s".into())),
            }
        }
    }

    /// openraft 0.9 has no leadership transfer: stop heartbeats so the followers' leader lease
    /// runs out, then have the target start an election (its log is up to date: it is a voter
    /// that acknowledged our last entries). Best effort: another follower may win; the caller
    /// is told who leads afterwards.
    async fn transfer_to(&self, to: NodeId, membership: &openraft::Membership<NodeId, NodeInfo>) -> Result<(), ClusterError> {
        let Some(target) = membership.get_node(&to).cloned() else {
            return Err(ClusterError::Refused(format!("node {to} is not a member")));
        };
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(self.election_max + Duration::from_millis(50)).await;
        let sent = self.transport.call(to, &target.raft_addr, RpcRequest::Elect, Vec::new(), Duration::from_secs(2)).await;
        let mut rx = self.raft.metrics();
        let waited = tokio::time::timeout(self.election_max * 3, async {
            loop {
                if rx.borrow_and_update().current_leader.is_some_and(|l| l != self.id) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.raft.runtime_config().heartbeat(true);
        if let Err(e) = sent {
            return Err(ClusterError::Transport(format!("cannot reach node {to}: {e}")));
        }
        let leader = self.raft.metrics().borrow().current_leader;
        match (waited, leader) {
            (Ok(()), Some(l)) if l == to => Ok(()),
            (_, Some(l)) if l != self.id => {
                Err(ClusterError::Refused(format!("leadership moved to node {l} instead of node {to}; try again")))
            }
            _ => Err(ClusterError::Refused(format!("node {to} did not take over leadership; try again"))),
        }
    }

    /// Issues this node a new certificate from the cluster CA and switches the transport to it
    /// without dropping in-flight requests.
    pub async fn rotate_certificate(&self) -> Result<(), ClusterError> {
        let dir = cluster_dir(&self.data_dir);
        let ca = ClusterCa::load(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let (key_pem, pub_pem) = pki::generate_node_key().map_err(|e| ClusterError::Storage(e.to_string()))?;
        let raft_addr = self.info.read().unwrap_or_else(|e| e.into_inner()).raft_addr.clone();
        let name = self.info.read().unwrap_or_else(|e| e.into_inner()).name.clone();
        let cert_pem =
            ca.issue(self.id, &name, &pub_pem, &sans_for(&raft_addr), CERT_DAYS).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let identity = NodeIdentity { node_id: self.id, ca_cert_pem: ca.cert_pem().to_owned(), cert_pem, key_pem };
        identity.save(&dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        self.transport.rotate(identity).await.map_err(|e| ClusterError::Transport(e.to_string()))?;
        tracing::info!(node = self.id, "cluster certificate rotated");
        Ok(())
    }

    /// The test-only fault hook: drop all traffic to and from these nodes.
    pub fn set_partition(&self, blocked: &[NodeId]) -> Result<(), ClusterError> {
        if !self.faults_enabled {
            return Err(ClusterError::Refused("the fault hook exists for tests only (LGSP_TEST_FAULTS=1)".into()));
        }
        self.transport.faults().heal();
        for id in blocked {
            self.transport.faults().block(*id);
        }
        Ok(())
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults_enabled
    }

    /// Starts exchanging shared gateway state with the other members.
    pub fn start_sharing(self: &Arc<Self>, source: ShareSource, sink: ShareSink) {
        let _ = self.share_sink.set(sink);
        tokio::spawn(share_loop(Arc::downgrade(self), source, self.stop.subscribe()));
    }

    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
        self.transport.shutdown().await;
    }

    /// After refusing a candidate whose log is behind this node's, campaigns at once (see
    /// [`campaigns_to_outrun`]) when this node has not heard from a leader for a lease either.
    async fn outrun_stale_candidate(&self, term: u64, log: Option<openraft::LogId<NodeId>>, resp: &openraft::raft::VoteResponse<NodeId>) {
        if self.raft.metrics().borrow().current_leader == Some(self.id) {
            return;
        }
        let heard = *self.heard_leader.lock().unwrap_or_else(|e| e.into_inner());
        let silent = heard.is_none_or(|t| t.elapsed() > self.election_max);
        let n = campaigns_to_outrun(term, log.as_ref(), resp, silent);
        if n == 0 {
            return;
        }
        tracing::info!(candidate_term = term, campaigns = n, "a candidate with an older log asked for this node's vote; campaigning now");
        for _ in 0..n {
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }

    async fn serve(self: Arc<Self>, peer: Peer, req: RpcRequest, tail: Vec<u8>) -> (RpcResponse, Vec<u8>) {
        let from = match (&peer, &req) {
            (Peer::Node(id), _) => *id,
            (Peer::Unauthenticated, RpcRequest::Join(_)) => 0,
            (Peer::Unauthenticated, _) => return (error("unauthenticated", "present the cluster certificate", None), Vec::new()),
        };
        let leader = self.raft.metrics().borrow().current_leader;
        let not_leader = || error("not_leader", "this node is not the leader", leader);
        let resp = match req {
            RpcRequest::AppendEntries(r) => {
                let resp = self.raft.append_entries(r).await;
                // A stale leader (answered HigherVote) does not count as heard.
                if resp.as_ref().is_ok_and(|a| !matches!(a, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
                    *self.heard_leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                RpcResponse::AppendEntries(resp)
            }
            RpcRequest::Vote(r) => {
                let (term, log) = (r.vote.leader_id().term, r.last_log_id);
                let resp = self.raft.vote(r).await;
                if let Ok(v) = &resp {
                    self.outrun_stale_candidate(term, log, v).await;
                }
                RpcResponse::Vote(resp)
            }
            RpcRequest::FullSnapshot { vote, meta } => {
                let snapshot = openraft::storage::Snapshot { meta, snapshot: Box::new(std::io::Cursor::new(tail)) };
                RpcResponse::FullSnapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            RpcRequest::ClientWrite { request } => {
                if leader != Some(self.id) {
                    not_leader()
                } else {
                    match tokio::time::timeout(WRITE_TIMEOUT, self.batcher.write(request)).await {
                        Ok(Ok(slot)) => RpcResponse::Written { index: slot.index, position: slot.position },
                        Ok(Err(f)) => write_failure_response(f, leader),
                        Err(_) => error("no_quorum", "the leader could not reach a quorum within 5 s", leader),
                    }
                }
            }
            RpcRequest::ReadIndex => {
                if leader != Some(self.id) {
                    not_leader()
                } else {
                    match tokio::time::timeout(READ_TIMEOUT, self.raft.ensure_linearizable()).await {
                        Ok(Ok(id)) => RpcResponse::ReadIndex { index: id.map_or(0, |l| l.index) },
                        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => not_leader(),
                        Ok(Err(e)) => error("no_quorum", e.to_string(), leader),
                        Err(_) => error("no_quorum", "the leader could not confirm a quorum within 3 s", leader),
                    }
                }
            }
            RpcRequest::AddLearner { node_id, info } => {
                // A node registers itself, directly or through any member (which forwards).
                let member = self.raft.metrics().borrow().membership_config.membership().get_node(&from).is_some();
                if node_id != from && !member {
                    error("forbidden", format!("node {from} cannot register node {node_id}"), None)
                } else {
                    self.add_learner(node_id, info).await
                }
            }
            RpcRequest::Join(j) => self.admit(j).await,
            RpcRequest::Share(batch) => {
                let name = self.raft.metrics().borrow().membership_config.membership().get_node(&from).map(|n| n.name.clone());
                match (self.share_sink.get(), name) {
                    (Some(sink), Some(name)) => {
                        sink(&name, batch);
                        RpcResponse::Ok
                    }
                    (None, _) => RpcResponse::Ok,
                    (_, None) => error("forbidden", format!("node {from} is not a member"), None),
                }
            }
            RpcRequest::Membership { op } => {
                if leader != Some(self.id) {
                    not_leader()
                } else {
                    match self.membership_here(op).await {
                        Ok(()) => RpcResponse::Ok,
                        Err(e) => error(e.code(), e.to_string(), leader),
                    }
                }
            }
            RpcRequest::Status => RpcResponse::Status(self.local_status()),
            RpcRequest::Elect => match self.raft.trigger().elect().await {
                Ok(()) => RpcResponse::Ok,
                Err(e) => error("refused", e.to_string(), leader),
            },
        };
        (resp, Vec::new())
    }

    /// On the leader: adds an admitted node as a learner, or updates its addresses.
    async fn add_learner(&self, node_id: NodeId, info: NodeInfo) -> RpcResponse {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            // Forward: the node may not know who leads yet.
            if let (Some(l), Some(n)) = self.leader_and_node() {
                if let Ok((resp, _)) =
                    self.transport.call(l, &n.raft_addr, RpcRequest::AddLearner { node_id, info }, Vec::new(), WRITE_TIMEOUT).await
                {
                    return resp;
                }
            }
            return error("not_leader", "no leader reachable from this node", m.current_leader);
        }
        let membership = m.membership_config.membership().clone();
        match membership.get_node(&node_id) {
            Some(existing) if *existing == info => return RpcResponse::Ok,
            Some(_) => {
                return match self.change(ChangeMembers::SetNodes(BTreeMap::from([(node_id, info)]))).await {
                    Ok(()) => RpcResponse::Ok,
                    Err(e) => error(e.code(), e.to_string(), Some(self.id)),
                };
            }
            None => {}
        }
        if !self.store.cluster_state().nodes.contains_key(&node_id) {
            return error("forbidden", format!("node {node_id} was not admitted with a join token (or was removed); join again"), None);
        }
        match tokio::time::timeout(WRITE_TIMEOUT * 2, self.raft.add_learner(node_id, info, false)).await {
            Ok(Ok(_)) => {
                tracing::info!(node = node_id, "node added as a learner");
                RpcResponse::Ok
            }
            Ok(Err(e)) => error("refused", e.to_string(), Some(self.id)),
            Err(_) => error("no_quorum", "adding the learner was not confirmed within 10 s", Some(self.id)),
        }
    }

    /// Handles a join: consumes the token through Raft (so it works once, cluster-wide), then
    /// signs the node's certificate.
    async fn admit(&self, j: JoinRequest) -> RpcResponse {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().nodes().any(|(_, n)| n.name == j.info.name) {
            return error("join_refused", format!("a node named {:?} is already a member; choose another name", j.info.name), None);
        }
        let env = ClusterEnvelope {
            at: Utc::now(),
            actor: Actor { user: format!("node:{}", j.info.name), role: Role::Operator, agency: None },
            command: ClusterCommand::ConsumeJoinToken {
                id: j.token_id.clone(),
                secret_sha256: pki::hash_secret(&j.token_secret),
                name: j.info.name.clone(),
            },
        };
        let node_id = match self.write(Request::Cluster(env)).await {
            Ok(Applied::Cluster(Ok(ClusterOutcome::Joined { node_id }))) => node_id,
            Ok(Applied::Cluster(Err(refusal))) => return error("join_refused", refusal.to_string(), None),
            Ok(_) => return error("join_refused", "unexpected outcome", None),
            Err(e) => return error("unavailable", e.to_string(), None),
        };
        let dir = cluster_dir(&self.data_dir);
        let ca = match ClusterCa::load(&dir) {
            Ok(ca) => ca,
            Err(e) => return error("unavailable", format!("this node cannot sign certificates: {e}"), None),
        };
        let cert = match ca.issue(node_id, &j.info.name, &j.public_key_pem, &j.sans, CERT_DAYS) {
            Ok(c) => c,
            Err(e) => return error("join_refused", format!("cannot issue a certificate for that key: {e}"), None),
        };
        tracing::info!(node = node_id, name = %j.info.name, "node admitted with a join token");
        let members = m.membership_config.membership().nodes().map(|(id, n)| (*id, n.clone())).collect();
        RpcResponse::Joined(JoinGrant {
            node_id,
            cluster_id: self.cluster_id.clone(),
            ca_cert_pem: ca.cert_pem().to_owned(),
            ca_key_pem: ca.key_pem().to_owned(),
            node_cert_pem: cert,
            secrets_key_b64: self.secrets_b64.clone(),
            members,
        })
    }
}

/// How many elections this node should start, one after another, after answering `resp` to a
/// vote request at `term` from a candidate whose last log id is `log`; 0 for none.
///
/// openraft 0.9 refuses a candidate whose log is behind without taking on its term, so this
/// node's own campaign, at its next election timeout, would be at the candidate's term, collide
/// with the candidate's vote for itself and fail, costing a second election timeout (~1.2 s
/// instead of ~0.9 s to elect a leader after a leader's crash under load; the follower that
/// received the leader's last entries is often not the first to time out). Campaigning now at a
/// term above the candidate's wins its vote, since this node's log is more up to date.
/// Only when this node has not heard from a leader for a lease either (`silent`): otherwise the
/// leader is alive and the candidate was refused for that (openraft's own lease check).
/// At most [`MAX_CAMPAIGNS`], so that a long-isolated candidate with a high term cannot make
/// this node churn.
fn campaigns_to_outrun(term: u64, log: Option<&openraft::LogId<NodeId>>, resp: &openraft::raft::VoteResponse<NodeId>, silent: bool) -> u64 {
    let mine = resp.vote.leader_id().term;
    let behind = resp.last_log_id.as_ref() > log;
    if resp.vote_granted || !silent || !behind || term < mine {
        return 0;
    }
    let n = term + 1 - mine;
    if n > MAX_CAMPAIGNS {
        0
    } else {
        n
    }
}

/// See [`campaigns_to_outrun`].
const MAX_CAMPAIGNS: u64 = 3;

/// When the leader held back a commit index from its followers because its own log was not yet
/// on disk (`transport::CommitBound`), sends a heartbeat as soon as the log is: followers then
/// learn of the commit at once rather than at the next heartbeat.
async fn announce_commits(raft: Raft<TypeConfig>, bound: CommitBound, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut durable = bound.durable.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
                if bound.held_back.swap(false, std::sync::atomic::Ordering::AcqRel) && raft.trigger().heartbeat().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Makes sure the membership holds this node with its current addresses (a joined node's
/// first start, or a node whose URLs changed).
async fn announce(node: Weak<ClusterNode>, seeds: BTreeMap<NodeId, NodeInfo>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    loop {
        let Some(n) = node.upgrade() else { return };
        let info = n.info.read().unwrap_or_else(|e| e.into_inner()).clone();
        let m = n.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        if membership.get_node(&n.id) == Some(&info) {
            return;
        }
        let mut targets: Vec<(NodeId, String)> = Vec::new();
        if let (Some(l), Some(li)) = n.leader_and_node() {
            targets.push((l, li.raft_addr));
        }
        targets.extend(membership.nodes().map(|(id, i)| (*id, i.raft_addr.clone())));
        targets.extend(seeds.iter().map(|(id, i)| (*id, i.raft_addr.clone())));
        for (id, addr) in targets {
            if id == n.id {
                if m.current_leader == Some(n.id) {
                    if let RpcResponse::Ok = n.add_learner(n.id, info.clone()).await {
                        return;
                    }
                }
                continue;
            }
            let req = RpcRequest::AddLearner { node_id: n.id, info: info.clone() };
            match n.transport.call(id, &addr, req, Vec::new(), WRITE_TIMEOUT * 2).await {
                Ok((RpcResponse::Ok, _)) => {
                    tracing::info!(node = n.id, via = id, "registered with the cluster");
                    return;
                }
                Ok((RpcResponse::Error { code, message, .. }, _)) if code == "forbidden" => {
                    tracing::error!(node = n.id, error = %message, "the cluster refused this node");
                    return;
                }
                _ => {}
            }
        }
        attempt += 1;
        if attempt % 30 == 0 {
            tracing::warn!(node = n.id, "still trying to register with the cluster; check that the other nodes are up and reachable");
        }
        drop(n);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// On the leader: promotes learners admitted as voters once they have caught up.
async fn leader_duties(node: Weak<ClusterNode>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        let m = n.raft.metrics().borrow().clone();
        if m.current_leader != Some(n.id) {
            continue;
        }
        let membership = m.membership_config.membership().clone();
        let Some(last) = m.last_log_index else { continue };
        let cluster = n.store.cluster_state();
        if cluster.draining.contains(&n.id) {
            // A drained node does not lead: hand over to the most caught-up voter in service.
            let candidate = membership
                .voter_ids()
                .filter(|v| *v != n.id && !cluster.draining.contains(v))
                .filter_map(|v| m.replication.as_ref().and_then(|r| r.get(&v).cloned().flatten()).map(|l| (v, l.index)))
                .filter(|(_, matched)| matched + HEALTHY_LAG >= last)
                .max_by_key(|(_, matched)| *matched);
            if let Some((to, _)) = candidate {
                match n.transfer_to(to, &membership).await {
                    Ok(()) => tracing::info!(to, "drained node handed over leadership"),
                    Err(e) => tracing::warn!(error = %e, "drained node could not hand over leadership; will retry"),
                }
                continue;
            }
        }
        let wanted = cluster.nodes;
        for learner in membership.learner_ids() {
            if !wanted.get(&learner).is_some_and(|r| r.voter) {
                continue;
            }
            let matched = m.replication.as_ref().and_then(|r| r.get(&learner).cloned().flatten()).map(|l| l.index);
            if matched.is_some_and(|mi| mi + PROMOTE_LAG >= last) {
                match n.change(ChangeMembers::AddVoterIds(BTreeSet::from([learner]))).await {
                    Ok(()) => tracing::info!(node = learner, "learner caught up and promoted to voter"),
                    Err(e) => tracing::warn!(node = learner, error = %e, "promotion to voter failed; will retry"),
                }
            }
        }
    }
}

/// Renews the node's certificate when it nears expiry (checked hourly).
async fn renew_certificate(node: Weak<ClusterNode>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let dir = cluster_dir(&n.data_dir);
        if let Ok(identity) = NodeIdentity::load(&dir) {
            if let Ok(not_after) = identity.cert_not_after() {
                if not_after - Utc::now() < chrono::Duration::days(RENEW_DAYS) {
                    if let Err(e) = n.rotate_certificate().await {
                        tracing::error!(error = %e, "the cluster certificate expires soon and could not be renewed");
                    }
                }
            }
        }
        drop(n);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Sends what the local gateway accumulated to every other member, every [`SHARE_INTERVAL`].
async fn share_loop(node: Weak<ClusterNode>, source: ShareSource, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SHARE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let Some(n) = node.upgrade() else { return };
        let Some(batch) = source() else { continue };
        let m = n.raft.metrics().borrow().clone();
        let peers: Vec<(NodeId, String)> =
            m.membership_config.membership().nodes().filter(|(id, _)| **id != n.id).map(|(id, i)| (*id, i.raft_addr.clone())).collect();
        let calls = peers.into_iter().map(|(id, addr)| {
            let n = n.clone();
            let batch = batch.clone();
            async move {
                if let Err(e) = n.transport.call(id, &addr, RpcRequest::Share(batch), Vec::new(), Duration::from_millis(500)).await {
                    tracing::debug!(peer = id, error = %e, "shared gateway state not delivered");
                }
            }
        });
        futures_join_all(calls).await;
    }
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(calls: impl Iterator<Item = F>) {
    let mut set = tokio::task::JoinSet::new();
    for c in calls {
        set.spawn(c);
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_with_a_newer_log_outruns_a_stale_candidate_only_when_it_lost_the_leader_too() {
        use openraft::raft::VoteResponse;
        use openraft::{CommittedLeaderId, LogId, Vote};
        let log = |index| Some(LogId::new(CommittedLeaderId::new(1, 1), index));
        // This node (3) still at the old leader's term 1, its log at 10; candidate 2 at term 2, log 9.
        let refused = VoteResponse::new(Vote::new_committed(1, 1), log(10), false);
        assert_eq!(campaigns_to_outrun(2, log(9).as_ref(), &refused, true), 2, "to term 3, above the candidate's");
        // Already a candidate at the same term as the stale one: one more campaign suffices.
        let candidate = VoteResponse::new(Vote::new(2, 3), log(10), false);
        assert_eq!(campaigns_to_outrun(2, log(9).as_ref(), &candidate, true), 1);
        // Nothing to do: the leader was heard recently, the candidate's log is as long (refused
        // for another reason), the vote was granted, or the candidate's term is from the past.
        assert_eq!(campaigns_to_outrun(2, log(9).as_ref(), &refused, false), 0);
        assert_eq!(campaigns_to_outrun(2, log(10).as_ref(), &refused, true), 0);
        assert_eq!(campaigns_to_outrun(2, None, &VoteResponse::new(Vote::new(2, 2), log(10), true), true), 0);
        assert_eq!(campaigns_to_outrun(1, log(9).as_ref(), &VoteResponse::new(Vote::new(2, 3), log(10), false), true), 0);
        // A candidate far ahead in terms (isolated for long) does not make this node churn.
        assert_eq!(campaigns_to_outrun(9, log(9).as_ref(), &refused, true), 0);
    }

    #[test]
    fn a_leaders_storage_failure_reaches_the_client_as_unknown_not_as_a_refusal() {
        // Found by the chaos suite (disk-full): the leader's state machine failed after the
        // entry had been replicated; the follower answered 409 REFUSED and the write was applied.
        let RpcResponse::Error { code, message, .. } = write_failure_response(WriteFailure::Fatal("disk full".into()), Some(1)) else {
            panic!("an error answer")
        };
        assert!(matches!(forwarded_write_error(&code, message), ClusterError::Ambiguous(_)), "code {code}");
        let RpcResponse::Error { code, message, .. } = write_failure_response(WriteFailure::Refused("no".into()), Some(1)) else {
            panic!("an error answer")
        };
        assert!(matches!(forwarded_write_error(&code, message), ClusterError::Refused(_)));
        assert!(matches!(forwarded_write_error("no_quorum", String::new()), ClusterError::Ambiguous(_)));
    }
}
