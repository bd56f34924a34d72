//! The cluster transport: QUIC between nodes with mutual TLS under the cluster CA, one
//! request/response per bidirectional stream, and openraft's network on top of it.
//!
//! One quinn endpoint (one UDP socket) both listens and dials. A peer is identified by the SAN
//! `node-<id>.lgsp` of the certificate it presents; a peer without a certificate may only send
//! [`RpcRequest::Join`] (and small messages). A dial to node N requires the server's
//! certificate to name node N, so a wrong address in the membership can never reach the wrong
//! node.
//!
//! Wire format of a message (request or response), on one stream each way:
//! `u32 big-endian header length ‖ JSON header (RpcRequest / RpcResponse) ‖ binary tail`, the
//! tail being the rest of the stream (snapshot bytes). A message is at most [`MAX_MESSAGE`].
//!
//! Invariants: TLS 1.3 only, the ring provider passed explicitly, no session resumption (a
//! resumed session would keep presenting a rotated-out certificate); nothing here panics on
//! network input. May import `registry` (types), its own cluster modules and `secrets` only.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{AnyError, Snapshot, Vote};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinHandle;

use super::pki::{self, JoinTokenString, NodeIdentity, PkiError};
use super::types::{JoinGrant, JoinRequest, NodeId, NodeInfo, RpcRequest, RpcResponse, TypeConfig};

/// ALPN protocol of the cluster transport; both sides must offer it.
pub const ALPN: &[u8] = b"lgsp-cluster/1";
/// Largest message (header + tail) either side sends or accepts. AppendEntries batches can
/// carry whole registry imports, and snapshots travel in one message.
pub const MAX_MESSAGE: usize = 512 * 1024 * 1024;
/// Largest message accepted from a peer without a certificate (a join request is a few KiB).
pub const MAX_UNAUTHENTICATED_MESSAGE: usize = 1024 * 1024;
/// QUIC keep-alive: a dead peer is noticed within the idle timeout even when Raft is quiet.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// QUIC idle timeout (milliseconds): a connection silent this long is closed.
pub const IDLE_TIMEOUT_MS: u32 = 10_000;
/// Base timeout for sending a full snapshot; see [`snapshot_timeout`].
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long openraft waits before re-contacting an unreachable node. Short, so a restarted
/// node is back in the replication within a heartbeat or two.
pub const BACKOFF: Duration = Duration::from_millis(200);
/// How long a dial may go on in the background, whatever the call that began it allows (a
/// heartbeat allows 50 ms; a handshake on a loaded machine, or one whose first packet was lost,
/// takes longer).
pub const DIAL_BUDGET: Duration = Duration::from_secs(2);
/// A call joins a dial in progress only if it began this recently; an older one may be stuck
/// waiting to resend a first packet that went to a peer that was down then, so a new dial is
/// begun instead (the old one still finishes or gives up on its own).
const JOIN_WINDOW: Duration = Duration::from_millis(200);

/// How long a peer without a certificate may take to send its (small) request.
const UNAUTHENTICATED_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream reset code: the request was dropped by the test fault hook.
const CODE_DROPPED: u32 = 1;
/// Stream stop code: the request was too large.
const CODE_TOO_LARGE: u32 = 2;
/// TLS server name dialled by [`join`] (the verifier checks the CA fingerprint, not a name).
const JOIN_SERVER_NAME: &str = "join.lgsp";

/// Who sent a request, as the server established it from the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate: only [`RpcRequest::Join`] is served.
    Unauthenticated,
    /// A certificate signed by the cluster CA naming this node.
    Node(NodeId),
}

/// Serves requests that arrive over the transport. Called on its own task per stream, so a
/// slow request (a snapshot) does not hold up others. The returned tail is sent after the
/// response header (e.g. snapshot bytes); most responses return an empty tail.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, req: RpcRequest, tail: Vec<u8>) -> Pin<Box<dyn Future<Output = (RpcResponse, Vec<u8>)> + Send>>;
}

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("the node identity cannot be used for the cluster transport: {0}")]
    Identity(#[from] PkiError),
    #[error("TLS configuration for the cluster transport failed: {0}")]
    Tls(String),
    #[error("cannot listen for cluster traffic on {addr}: {source}; check that the port is free and the address belongs to this host")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// Connecting or the TLS handshake failed: the peer is down, refuses us, or is not the node
    /// we expected. Raft backs off before trying again.
    #[error("{peer} is unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    /// The connection or stream failed during the call (the request may have been received).
    #[error("the connection to {peer} failed during the call: {reason}")]
    Network { peer: String, reason: String },
    #[error("{peer} did not answer within {} ms", timeout.as_millis())]
    Timeout { peer: String, timeout: Duration },
    #[error("a cluster message of {size} bytes exceeds the limit of {limit} bytes; split the change (e.g. import the registry in parts)")]
    TooLarge { size: usize, limit: usize },
    /// The peer answered with the appliance's refusal.
    #[error("refused: {message} ({code})")]
    Refused { code: String, message: String },
    #[error(
        "{peer} is not a node of the cluster this join token belongs to ({reason}); check the address, or create a token on the cluster you mean to join"
    )]
    UntrustedServer { peer: String, reason: String },
    #[error("unexpected answer from {peer}: {what}")]
    Protocol { peer: String, what: String },
}

/// Test-only fault injection: while a node is blocked, calls to it fail at once as
/// [`TransportError::Unreachable`] and requests from it are dropped (the stream is reset
/// without an answer). It exists for partition tests; the admin API exposes it only when the
/// test environment variable is set.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn block(&self, node_id: NodeId) {
        lock(&self.blocked).insert(node_id);
    }

    pub fn unblock(&self, node_id: NodeId) {
        lock(&self.blocked).remove(&node_id);
    }

    /// Unblocks every node.
    pub fn heal(&self) {
        lock(&self.blocked).clear();
    }

    pub fn blocked(&self) -> Vec<NodeId> {
        lock(&self.blocked).iter().copied().collect()
    }

    pub fn is_blocked(&self, node_id: NodeId) -> bool {
        lock(&self.blocked).contains(&node_id)
    }
}

/// The node's cluster endpoint: serves peers' requests through an [`RpcHandler`] and calls
/// peers. Cheap to clone (one shared endpoint).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    endpoint: Endpoint,
    local_addr: SocketAddr,
    provider: Arc<CryptoProvider>,
    /// The client configuration for new dials and its generation; a cached connection made
    /// under an older generation (before a rotation) is not reused.
    client: RwLock<(u64, quinn::ClientConfig)>,
    /// One slot per target: its connection and the dial in progress, if any. The lock is
    /// held only to look or to store, never across a handshake.
    conns: Mutex<HashMap<NodeId, Arc<Mutex<Slot>>>>,
    /// Dials begun so far (also each dial's id).
    dials: AtomicU64,
    faults: Arc<Faults>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds only an endpoint handle; closing lets it end.
        self.endpoint.close(VarInt::from_u32(0), b"transport dropped");
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    dial: Option<Dial>,
}

/// A dial running on its own task; it stores the connection in the slot and then says how it
/// went (`None` while it runs, `Some(Err(reason))` if it failed).
struct Dial {
    id: u64,
    started: Instant,
    addr: String,
    generation: u64,
    done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

struct Cached {
    addr: String,
    generation: u64,
    conn: Connection,
    /// Calls in flight hold a read guard; retiring the connection takes the write guard, so
    /// it is closed only after they finish.
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Cached {
    /// Why this connection may not serve a call to `addr` under `generation`, if it may not.
    fn unusable(&self, addr: &str, generation: u64) -> Option<&'static str> {
        if self.conn.close_reason().is_some() {
            Some("closed")
        } else if self.addr != addr {
            Some("address changed")
        } else if self.generation != generation {
            Some("certificate rotated")
        } else {
            None
        }
    }

    /// Closes the connection once the calls in flight on it are done.
    fn retire(self, why: &'static str) {
        tokio::spawn(async move {
            let _idle = self.gate.write_owned().await;
            self.conn.close(VarInt::from_u32(0), why.as_bytes());
        });
    }
}

impl Transport {
    /// Listens on `listen` (UDP) and serves requests with `handler`. The identity is checked
    /// first, so a bad certificate fails here with a clear message.
    pub async fn bind(listen: SocketAddr, identity: NodeIdentity, handler: Arc<dyn RpcHandler>) -> Result<Transport, TransportError> {
        identity.validate()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = server_config(&identity, &provider)?;
        let client = client_config(&identity, &provider)?;
        let endpoint = Endpoint::server(server, listen).map_err(|source| TransportError::Bind { addr: listen, source })?;
        let local_addr = endpoint.local_addr().map_err(|source| TransportError::Bind { addr: listen, source })?;
        let faults = Arc::new(Faults::default());
        let serve = Arc::new(Serve { handler, faults: faults.clone() });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), serve));
        tracing::info!(node_id = identity.node_id, %local_addr, "cluster transport listening");
        Ok(Transport {
            inner: Arc::new(Inner {
                node_id: identity.node_id,
                endpoint,
                local_addr,
                provider,
                client: RwLock::new((0, client)),
                conns: Mutex::new(HashMap::new()),
                dials: AtomicU64::new(0),
                faults,
                accept_task: Mutex::new(Some(accept_task)),
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The test fault hook (see [`Faults`]).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// openraft's network over this transport.
    /// openraft's network over this transport. With `durable`, no AppendEntries tells a
    /// follower of a commit index beyond what this node's log has on disk (`log_store`); a
    /// message whose commit index was held back sets `held_back`.
    pub fn network(&self, durable: Option<CommitBound>) -> Network {
        Network { transport: self.clone(), bound: durable }
    }

    /// Sends one request to node `target` at `addr` (`host:port`) and waits for its answer,
    /// within `timeout` overall. Reuses the cached connection to `target`, dialling (again) if
    /// there is none, it failed, its address changed, or the certificate was rotated.
    pub async fn call(
        &self,
        target: NodeId,
        addr: &str,
        req: RpcRequest,
        tail: Vec<u8>,
        timeout: Duration,
    ) -> Result<(RpcResponse, Vec<u8>), TransportError> {
        let peer = || format!("node {target} ({addr})");
        if self.inner.faults.is_blocked(target) {
            return Err(TransportError::Unreachable { peer: peer(), reason: "blocked by the test fault hook".into() });
        }
        let head = encode_head(&req, tail.len())?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut retried = false;
        loop {
            let (conn, _in_flight, fresh) = match tokio::time::timeout_at(deadline, self.connection(target, addr)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(TransportError::Unreachable {
                        peer: peer(),
                        reason: format!("no handshake within {} ms", timeout.as_millis()),
                    })
                }
            };
            let result = tokio::time::timeout_at(deadline, exchange(&conn, &head, &tail, MAX_MESSAGE)).await;
            match result {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Failure::NotSent(e))) if !fresh && !retried => {
                    // The cached connection died while idle (e.g. the peer restarted): dial again.
                    tracing::debug!(target, error = %e, "cached cluster connection is dead; re-dialling");
                    self.evict(target, &conn);
                    retried = true;
                }
                Ok(Err(failure)) => {
                    self.evict(target, &conn);
                    return Err(failure.into_error(peer(), fresh));
                }
                Err(_) => {
                    self.evict(target, &conn);
                    return Err(TransportError::Timeout { peer: peer(), timeout });
                }
            }
        }
    }

    /// Installs a new certificate (same node, e.g. renewed): new incoming handshakes present
    /// it at once, and cached outgoing connections are retired so the next call dials with
    /// it. Calls in flight on an old connection finish; the connection is closed when the last
    /// of them is done. The listener is not restarted.
    pub async fn rotate(&self, identity: NodeIdentity) -> Result<(), TransportError> {
        if identity.node_id != self.inner.node_id {
            return Err(TransportError::Identity(PkiError::WrongNode { expected: self.inner.node_id, found: identity.node_id }));
        }
        identity.validate()?;
        let server = server_config(&identity, &self.inner.provider)?;
        let client = client_config(&identity, &self.inner.provider)?;
        self.inner.endpoint.set_server_config(Some(server));
        {
            let mut current = self.inner.client.write().unwrap_or_else(|e| e.into_inner());
            *current = (current.0 + 1, client);
        }
        let slots: Vec<_> = lock(&self.inner.conns).values().cloned().collect();
        for slot in slots {
            // A dial still running under the old configuration is not stored when it ends.
            if let Some(old) = lock(&slot).cached.take() {
                old.retire("certificate rotated");
            }
        }
        tracing::info!(node_id = self.inner.node_id, "cluster certificate rotated");
        Ok(())
    }

    /// Closes the endpoint: connections are closed and the accept loop ends.
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(VarInt::from_u32(0), b"shutdown");
        lock(&self.inner.conns).clear();
        let task = lock(&self.inner.accept_task).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }

    fn slot(&self, target: NodeId) -> Arc<Mutex<Slot>> {
        lock(&self.inner.conns).entry(target).or_default().clone()
    }

    /// The generation of the client configuration (bumped by each rotation).
    fn generation(&self) -> u64 {
        self.inner.client.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The client configuration for a new dial, and its generation.
    fn client_config(&self) -> (u64, quinn::ClientConfig) {
        let current = self.inner.client.read().unwrap_or_else(|e| e.into_inner());
        (current.0, current.1.clone())
    }

    /// The connection to use for `target`, a guard that keeps it open while the call is in
    /// flight, and whether it was dialled for this call. A dial runs on its own task within
    /// [`DIAL_BUDGET`], so a call that gives up (its own timeout) does not abort it: the next
    /// call finds the connection stored, or joins the dial if it began within [`JOIN_WINDOW`].
    async fn connection(&self, target: NodeId, addr: &str) -> Result<(Connection, InFlight, bool), TransportError> {
        let slot = self.slot(target);
        let unreachable = |reason: String| TransportError::Unreachable { peer: format!("node {target} ({addr})"), reason };
        let mut dialled = false;
        loop {
            let generation = self.generation();
            let mut done = {
                let mut s = lock(&slot);
                if let Some(c) = s.cached.take() {
                    match c.unusable(addr, generation) {
                        // Only a connection taken out of the slot is ever retired, so its
                        // gate has no writer and the read guard is granted at once.
                        None => match c.gate.clone().try_read_owned() {
                            Ok(in_flight) => {
                                let conn = c.conn.clone();
                                s.cached = Some(c);
                                return Ok((conn, in_flight, dialled));
                            }
                            Err(_) => c.retire("closing"),
                        },
                        Some(why) => c.retire(why),
                    }
                }
                match &s.dial {
                    Some(d) if d.addr == addr && d.generation == generation && d.started.elapsed() < JOIN_WINDOW => d.done.clone(),
                    _ => {
                        // A rotation in between makes the dial's generation older than the
                        // configuration's: its connection is not stored, and the loop dials again.
                        let (_, config) = self.client_config();
                        let dial = self.begin_dial(slot.clone(), target, addr, generation, config);
                        let done = dial.done.clone();
                        s.dial = Some(dial);
                        done
                    }
                }
            };
            let outcome = done.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                Ok(Some(Ok(()))) => dialled = true,
                Ok(Some(Err(reason))) => return Err(unreachable(reason)),
                _ => return Err(unreachable("the dial ended without an outcome (the transport is shutting down)".into())),
            }
        }
    }

    /// Starts a dial to `target` on its own task; see [`Transport::connection`].
    fn begin_dial(&self, slot: Arc<Mutex<Slot>>, target: NodeId, addr: &str, generation: u64, config: quinn::ClientConfig) -> Dial {
        let id = self.inner.dials.fetch_add(1, Ordering::Relaxed);
        let (tx, done) = tokio::sync::watch::channel(None);
        let this = self.clone();
        let dial_addr = addr.to_owned();
        tokio::spawn(async move {
            let addr = dial_addr;
            let handshake = tokio::time::timeout(DIAL_BUDGET, this.handshake(target, &addr, config)).await;
            let result = handshake.unwrap_or_else(|_| Err(format!("no handshake within {} s", DIAL_BUDGET.as_secs())));
            let outcome = {
                let mut s = lock(&slot);
                if s.dial.as_ref().is_some_and(|d| d.id == id) {
                    s.dial = None;
                }
                result.map(|conn| {
                    let current = this.generation();
                    let keep_other = s.cached.as_ref().is_some_and(|c| c.unusable(&addr, current).is_none());
                    if generation != current {
                        conn.close(VarInt::from_u32(0), b"certificate rotated");
                    } else if keep_other {
                        // A later dial finished first; its connection serves everyone.
                        conn.close(VarInt::from_u32(0), b"duplicate dial");
                    } else {
                        if let Some(old) = s.cached.take() {
                            old.retire("replaced");
                        }
                        let gate = Arc::new(tokio::sync::RwLock::new(()));
                        s.cached = Some(Cached { addr: addr.clone(), generation, conn, gate });
                    }
                })
            };
            if let Err(reason) = &outcome {
                tracing::debug!(target, %addr, %reason, "cluster dial failed");
            }
            tx.send_replace(Some(outcome));
        });
        Dial { id, started: Instant::now(), addr: addr.to_owned(), generation, done }
    }

    /// Dials `target` at `addr` and checks that the server is that node.
    async fn handshake(&self, target: NodeId, addr: &str, config: quinn::ClientConfig) -> Result<Connection, String> {
        let sock = resolve(addr, Some(self.inner.local_addr)).await?;
        let connecting = self.inner.endpoint.connect_with(config, sock, &pki::server_name(target)).map_err(|e| e.to_string())?;
        let conn = connecting.await.map_err(|e| describe_connection_error(&e))?;
        // webpki already matched the name; also refuse a certificate naming several nodes.
        let checked = match peer_node_id(&conn) {
            Some(Ok(id)) if id == target => return Ok(conn),
            Some(Ok(id)) => format!("the server's certificate is for node {id}"),
            Some(Err(e)) => e.to_string(),
            None => "the server presented no certificate".into(),
        };
        conn.close(VarInt::from_u32(0), b"wrong node");
        Err(checked)
    }

    /// Forgets `conn` if it is still the cached connection to `target`.
    fn evict(&self, target: NodeId, conn: &Connection) {
        let slot = self.slot(target);
        let mut s = lock(&slot);
        if s.cached.as_ref().is_some_and(|c| c.conn.stable_id() == conn.stable_id()) {
            s.cached = None;
        }
    }

    /// How many dials this transport has begun.
    #[cfg(test)]
    fn dials(&self) -> u64 {
        self.inner.dials.load(Ordering::Relaxed)
    }
}

type InFlight = tokio::sync::OwnedRwLockReadGuard<()>;

/// Asks the node at `peer_addr` to admit this node, presenting `token` (its id and secret are
/// put into `request`). A throwaway endpoint without a client certificate is used; the server
/// must present a chain ending at a CA whose fingerprint is the token's, and its certificate
/// must verify against that CA, before anything (the secret) is sent.
pub async fn join(
    peer_addr: &str,
    token: &JoinTokenString,
    mut request: JoinRequest,
    timeout: Duration,
) -> Result<JoinGrant, TransportError> {
    let peer = peer_addr.to_owned();
    let unreachable = |reason: String| TransportError::Unreachable { peer: peer.clone(), reason };
    request.token_id = token.id.clone();
    request.token_secret = token.secret.clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier::new(&token.ca_fingerprint, provider.clone()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).map_err(tls_err)?));
    config.transport_config(transport_config());

    let sock = resolve(peer_addr, None).await.map_err(unreachable)?;
    let bind: SocketAddr = if sock.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let endpoint = Endpoint::client(bind).map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?;
    let head = encode_head(&RpcRequest::Join(request), 0)?;
    let attempt = async {
        let connecting = endpoint.connect_with(config, sock, JOIN_SERVER_NAME).map_err(|e| unreachable(e.to_string()))?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                return Err(match verifier.refusal() {
                    Some(reason) => TransportError::UntrustedServer { peer: peer.clone(), reason },
                    None => unreachable(describe_connection_error(&e)),
                })
            }
        };
        let answer = exchange(&conn, &head, &[], MAX_MESSAGE).await.map_err(|f| f.into_error(peer.clone(), true));
        conn.close(VarInt::from_u32(0), b"done");
        answer
    };
    let answer = tokio::time::timeout(timeout, attempt).await;
    endpoint.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match answer {
        Err(_) => Err(TransportError::Timeout { peer, timeout }),
        Ok(Err(e)) => Err(e),
        Ok(Ok((RpcResponse::Joined(grant), _))) => {
            // The grant's CA must be the one the token pins (and the one we just verified).
            let granted = pki::fingerprint_pem(&grant.ca_cert_pem)?;
            if granted != token.ca_fingerprint {
                return Err(TransportError::UntrustedServer { peer, reason: "the granted CA is not the one in the token".into() });
            }
            Ok(grant)
        }
        Ok(Ok((RpcResponse::Error { code, message, .. }, _))) => Err(TransportError::Refused { code, message }),
        Ok(Ok((other, _))) => Err(TransportError::Protocol { peer, what: format!("{} instead of a join grant", response_kind(&other)) }),
    }
}

// ------------------------------------------------------------------------------------------
// openraft network

/// openraft's network factory over the transport.
#[derive(Clone)]
pub struct Network {
    transport: Transport,
    bound: Option<CommitBound>,
}

/// What bounds the commit index a leader tells its followers: its own durable log.
#[derive(Clone)]
pub struct CommitBound {
    pub durable: tokio::sync::watch::Receiver<super::log_store::Durable>,
    /// Set when a message carried a lower commit index than openraft's: the node sends a
    /// heartbeat once the log has caught up (`node::announce_commits`).
    pub held_back: Arc<std::sync::atomic::AtomicBool>,
}

impl CommitBound {
    /// Lowers `leader_commit` to the last durable entry when it is beyond it.
    fn apply(&self, leader_commit: &mut Option<openraft::LogId<NodeId>>) {
        let durable = self.durable.borrow().last;
        let beyond = |c: &openraft::LogId<NodeId>| durable.is_none_or(|d| c.index > d.index);
        if leader_commit.as_ref().is_some_and(beyond) {
            *leader_commit = durable;
            self.held_back.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// openraft's client for one target node. Connects lazily, through the transport's cache.
pub struct NetworkClient {
    transport: Transport,
    target: NodeId,
    node: NodeInfo,
    bound: Option<CommitBound>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> NetworkClient {
        NetworkClient { transport: self.transport.clone(), target, node: node.clone(), bound: self.bound.clone() }
    }
}

type RaftRpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl NetworkClient {
    async fn rpc(&self, req: RpcRequest, tail: Vec<u8>, timeout: Duration) -> Result<RpcResponse, TransportError> {
        self.transport.call(self.target, &self.node.raft_addr, req, tail, timeout).await.map(|(resp, _)| resp)
    }

    fn rpc_error<E: std::error::Error>(&self, e: TransportError, action: RPCTypes, timeout: Duration, entries: usize) -> RaftRpcError<E> {
        match e {
            TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            TransportError::Timeout { .. } => {
                RPCError::Timeout(Timeout { action, id: self.transport.node_id(), target: self.target, timeout })
            }
            // The leader retries at once with at most this many entries.
            TransportError::TooLarge { .. } if entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(u64::try_from(entries / 2).unwrap_or(1)))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn unexpected(&self, resp: &RpcResponse) -> NetworkError {
        NetworkError::from(AnyError::error(match resp {
            RpcResponse::Error { code, message, .. } => format!("node {} refused: {message} ({code})", self.target),
            other => format!("node {} answered {} to a Raft RPC", self.target, response_kind(other)),
        }))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RemoteError<NodeId, NodeInfo, E> {
        RemoteError::new_with_node(self.target, self.node.clone(), e)
    }
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        if let Some(b) = &self.bound {
            b.apply(&mut rpc.leader_commit);
        }
        let (entries, ttl) = (rpc.entries.len(), option.hard_ttl());
        match self.rpc(RpcRequest::AppendEntries(rpc), Vec::new(), ttl).await {
            Ok(RpcResponse::AppendEntries(Ok(resp))) => Ok(resp),
            Ok(RpcResponse::AppendEntries(Err(e))) => Err(RPCError::RemoteError(self.remote(e))),
            Ok(other) => Err(RPCError::Network(self.unexpected(&other))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries, ttl, entries)),
        }
    }

    /// The chunked path is not used: snapshots go whole through [`Self::full_snapshot`].
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        Err(RPCError::Network(NetworkError::from(AnyError::error(
            "chunked snapshot transfer is not supported by the lgsp transport; full snapshots are used",
        ))))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let ttl = option.hard_ttl();
        match self.rpc(RpcRequest::Vote(rpc), Vec::new(), ttl).await {
            Ok(RpcResponse::Vote(Ok(resp))) => Ok(resp),
            Ok(RpcResponse::Vote(Err(e))) => Err(RPCError::RemoteError(self.remote(e))),
            Ok(other) => Err(RPCError::Network(self.unexpected(&other))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote, ttl, 0)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let bytes = (*snapshot.snapshot).into_inner();
        let timeout = snapshot_timeout(bytes.len());
        let req = RpcRequest::FullSnapshot { vote, meta: snapshot.meta };
        let call = self.rpc(req, bytes, timeout);
        let result = tokio::select! {
            // Cancellation wins even when both are ready (the call is then never started).
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = call => result,
        };
        match result {
            Ok(RpcResponse::FullSnapshot(Ok(resp))) => Ok(resp),
            Ok(RpcResponse::FullSnapshot(Err(e))) => Err(StreamingError::RemoteError(self.remote(e))),
            Ok(other) => Err(StreamingError::Network(self.unexpected(&other))),
            Err(e) => Err(match self.rpc_error::<openraft::error::Infallible>(e, RPCTypes::InstallSnapshot, timeout, 0) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::new(&other)),
            }),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(BACKOFF))
    }
}

/// Time allowed for sending a snapshot of `len` bytes: [`SNAPSHOT_TIMEOUT`] plus one second
/// per 4 MiB (a 512 MiB snapshot gets about three minutes).
pub fn snapshot_timeout(len: usize) -> Duration {
    SNAPSHOT_TIMEOUT + Duration::from_secs(u64::try_from(len / (4 * 1024 * 1024)).unwrap_or(u64::MAX / 2))
}

// ------------------------------------------------------------------------------------------
// Server side

struct Serve {
    handler: Arc<dyn RpcHandler>,
    faults: Arc<Faults>,
}

async fn accept_loop(endpoint: Endpoint, serve: Arc<Serve>) {
    while let Some(incoming) = endpoint.accept().await {
        let serve = serve.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, serve).await,
                Err(e) => tracing::debug!(%remote, error = %e, "cluster handshake failed"),
            }
        });
    }
}

async fn serve_connection(conn: Connection, serve: Arc<Serve>) {
    let peer = match peer_node_id(&conn) {
        None => Peer::Unauthenticated,
        Some(Ok(id)) => Peer::Node(id),
        Some(Err(e)) => {
            tracing::warn!(remote = %conn.remote_address(), error = %e, "refusing a cluster peer whose certificate names no single node");
            conn.close(VarInt::from_u32(0), b"certificate names no single node");
            return;
        }
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(serve.clone(), peer, send, recv));
            }
            Err(e) => {
                tracing::debug!(?peer, error = %e, "cluster connection ended");
                return;
            }
        }
    }
}

async fn serve_stream(serve: Arc<Serve>, peer: Peer, mut send: SendStream, mut recv: RecvStream) {
    if let Peer::Node(id) = peer {
        if serve.faults.is_blocked(id) {
            let _ = send.reset(VarInt::from_u32(CODE_DROPPED));
            let _ = recv.stop(VarInt::from_u32(CODE_DROPPED));
            return;
        }
    }
    let read = match peer {
        Peer::Node(_) => read_message::<RpcRequest>(&mut recv, MAX_MESSAGE).await,
        Peer::Unauthenticated => {
            match tokio::time::timeout(UNAUTHENTICATED_READ_TIMEOUT, read_message(&mut recv, MAX_UNAUTHENTICATED_MESSAGE)).await {
                Ok(read) => read,
                Err(_) => Err(Failure::Stream("the request did not arrive in time".into())),
            }
        }
    };
    let (resp, tail) = match read {
        Ok((RpcRequest::Join(req), tail)) => serve.handler.handle(peer, RpcRequest::Join(req), tail).await,
        Ok((_, _)) if peer == Peer::Unauthenticated => (
            refusal("unauthenticated", "this request needs a node certificate from the cluster CA; only joining is possible without one"),
            Vec::new(),
        ),
        Ok((req, tail)) => serve.handler.handle(peer, req, tail).await,
        Err(Failure::TooLarge { size, limit }) => {
            let _ = recv.stop(VarInt::from_u32(CODE_TOO_LARGE));
            let message = TransportError::TooLarge { size, limit }.to_string();
            (refusal("too_large", &message), Vec::new())
        }
        Err(Failure::Decode(e)) => (refusal("bad_request", &format!("cannot decode the request: {e}")), Vec::new()),
        Err(e) => {
            tracing::debug!(?peer, error = %e.describe(), "cluster request not received");
            return;
        }
    };
    let head = match encode_head(&resp, tail.len()) {
        Ok(head) => head,
        Err(e) => match encode_head(&refusal("too_large", &format!("the answer is too large: {e}")), 0) {
            Ok(head) => return finish_response(&mut send, &head, &[], peer).await,
            Err(_) => return,
        },
    };
    finish_response(&mut send, &head, &tail, peer).await;
}

async fn finish_response(send: &mut SendStream, head: &[u8], tail: &[u8], peer: Peer) {
    let written = async {
        send.write_all(head).await?;
        send.write_all(tail).await?;
        send.finish()?;
        Ok::<(), quinn::WriteError>(())
    };
    if let Err(e) = written.await {
        tracing::debug!(?peer, error = %e, "cluster answer not delivered");
    }
}

fn refusal(code: &str, message: &str) -> RpcResponse {
    RpcResponse::Error { code: code.into(), message: message.into(), leader: None }
}

// ------------------------------------------------------------------------------------------
// Framing

/// Why an exchange failed, before it becomes a [`TransportError`].
enum Failure {
    /// The stream could not be opened: nothing was sent.
    NotSent(ConnectionError),
    /// The connection failed after the request was (perhaps) sent.
    Connection(ConnectionError),
    /// This stream was reset, ended early, or similar.
    Stream(String),
    TooLarge {
        size: usize,
        limit: usize,
    },
    Decode(serde_json::Error),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::NotSent(e) | Failure::Connection(e) => describe_connection_error(e),
            Failure::Stream(s) => s.clone(),
            Failure::TooLarge { size, limit } => format!("{size} bytes exceed the limit of {limit}"),
            Failure::Decode(e) => format!("undecodable message: {e}"),
        }
    }

    /// `fresh`: the connection was dialled for this call. A connection that fails before it
    /// ever carried an answer was refused (e.g. the server rejected our certificate after the
    /// client-side handshake completed), which is unreachability, not a mid-call failure.
    fn into_error(self, peer: String, fresh: bool) -> TransportError {
        let reason = self.describe();
        match self {
            Failure::NotSent(_) => TransportError::Unreachable { peer, reason },
            Failure::Connection(e) if fresh || is_handshake_refusal(&e) => TransportError::Unreachable { peer, reason },
            Failure::TooLarge { size, limit } => TransportError::TooLarge { size, limit },
            Failure::Decode(_) => TransportError::Protocol { peer, what: reason },
            _ => TransportError::Network { peer, reason },
        }
    }
}

impl From<quinn::WriteError> for Failure {
    fn from(e: quinn::WriteError) -> Failure {
        match e {
            quinn::WriteError::ConnectionLost(e) => Failure::Connection(e),
            quinn::WriteError::Stopped(code) => Failure::Stream(format!("the peer stopped reading (code {code})")),
            other => Failure::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadError> for Failure {
    fn from(e: quinn::ReadError) -> Failure {
        match e {
            quinn::ReadError::ConnectionLost(e) => Failure::Connection(e),
            quinn::ReadError::Reset(code) if code == VarInt::from_u32(CODE_DROPPED) => {
                Failure::Stream("the peer dropped the request (test fault hook)".into())
            }
            quinn::ReadError::Reset(code) => Failure::Stream(format!("the peer reset the stream (code {code})")),
            other => Failure::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadExactError> for Failure {
    fn from(e: quinn::ReadExactError) -> Failure {
        match e {
            quinn::ReadExactError::FinishedEarly(n) => Failure::Stream(format!("the message ended after {n} bytes of its header")),
            quinn::ReadExactError::ReadError(e) => e.into(),
        }
    }
}

/// Length prefix and JSON header of a message whose tail has `tail_len` bytes; refuses a
/// message over [`MAX_MESSAGE`].
fn encode_head<T: Serialize>(header: &T, tail_len: usize) -> Result<Vec<u8>, TransportError> {
    let json = serde_json::to_vec(header)
        .map_err(|e| TransportError::Protocol { peer: "this node".into(), what: format!("cannot encode: {e}") })?;
    let size = 4 + json.len() + tail_len;
    if size > MAX_MESSAGE {
        return Err(TransportError::TooLarge { size, limit: MAX_MESSAGE });
    }
    let len = u32::try_from(json.len()).map_err(|_| TransportError::TooLarge { size, limit: MAX_MESSAGE })?;
    let mut head = Vec::with_capacity(4 + json.len());
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&json);
    Ok(head)
}

/// Reads one message of at most `limit` bytes (header + tail) to the end of the stream.
async fn read_message<T: DeserializeOwned>(recv: &mut RecvStream, limit: usize) -> Result<(T, Vec<u8>), Failure> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let header_len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if header_len > limit.saturating_sub(4) {
        return Err(Failure::TooLarge { size: header_len.saturating_add(4), limit });
    }
    let mut header = vec![0u8; header_len];
    recv.read_exact(&mut header).await?;
    let left = limit - 4 - header_len;
    let tail = match recv.read_to_end(left).await {
        Ok(tail) => tail,
        Err(quinn::ReadToEndError::TooLong) => return Err(Failure::TooLarge { size: limit + 1, limit }),
        Err(quinn::ReadToEndError::Read(e)) => return Err(e.into()),
    };
    let header = serde_json::from_slice(&header).map_err(Failure::Decode)?;
    Ok((header, tail))
}

/// One request/response on a new stream of `conn`.
async fn exchange(conn: &Connection, head: &[u8], tail: &[u8], limit: usize) -> Result<(RpcResponse, Vec<u8>), Failure> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(Failure::NotSent)?;
    send.write_all(head).await?;
    send.write_all(tail).await?;
    send.finish().map_err(|e| Failure::Stream(e.to_string()))?;
    read_message(&mut recv, limit).await
}

// ------------------------------------------------------------------------------------------
// TLS and QUIC configuration

fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    // Raft, forwarded writes and gateway sharing run side by side on one connection.
    t.max_concurrent_bidi_streams(VarInt::from_u32(256));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Larger windows than the defaults so snapshots and big batches are not window-bound on
    // a LAN with some latency.
    t.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    Arc::new(t)
}

/// The chain a node presents, `[node certificate, CA certificate]` (the CA is included so a
/// joining node can check the CA fingerprint), its key, and the CA as the only trust root.
fn tls_material(
    identity: &NodeIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Arc<RootCertStore>), TransportError> {
    let leaf = pki::first_cert("the node certificate", &identity.cert_pem)?;
    let ca = pki::first_cert("the cluster CA certificate", &identity.ca_cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| PkiError::BadPem { what: "the node key".into(), detail: e.to_string() })?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| TransportError::Tls(format!("the cluster CA certificate is not a usable trust anchor: {e}")))?;
    Ok((vec![leaf, ca], key, Arc::new(roots)))
}

fn server_config(identity: &NodeIdentity, provider: &Arc<CryptoProvider>) -> Result<quinn::ServerConfig, TransportError> {
    let (chain, key, roots) = tls_material(identity)?;
    // A client certificate is verified when presented; without one the peer may only join.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No tickets: a resumed session would carry the client's old certificate after rotation.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).map_err(tls_err)?));
    config.transport_config(transport_config());
    Ok(config)
}

fn client_config(identity: &NodeIdentity, provider: &Arc<CryptoProvider>) -> Result<quinn::ClientConfig, TransportError> {
    let (chain, key, roots) = tls_material(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).map_err(tls_err)?));
    config.transport_config(transport_config());
    Ok(config)
}

/// Verifies a server for [`join`]: its chain must contain a CA certificate with the pinned
/// fingerprint, its certificate must verify against that CA (signature, validity, server
/// usage) and name a node. The server name is not checked (the joiner does not know the
/// node id it dials); the pinned CA is what makes the server trustworthy.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// Why the last verification failed, for an operator-facing error.
    refused: Mutex<Option<String>>,
}

impl PinnedCaVerifier {
    fn new(fingerprint: &str, provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier { fingerprint: fingerprint.to_ascii_lowercase(), provider, refused: Mutex::new(None) }
    }

    fn refusal(&self) -> Option<String> {
        lock(&self.refused).clone()
    }

    fn refuse(&self, reason: String, error: rustls::Error) -> rustls::Error {
        *lock(&self.refused) = Some(reason);
        error
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |e: rustls::CertificateError| rustls::Error::InvalidCertificate(e);
        let Some(ca) = intermediates.iter().find(|c| pki::fingerprint_der(c) == self.fingerprint) else {
            return Err(self.refuse("its CA fingerprint differs from the token's".into(), bad(rustls::CertificateError::UnknownIssuer)));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| self.refuse(format!("its CA certificate is unusable: {e}"), e))?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity).map_err(|e| self.refuse(e.to_string(), e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| self.refuse(format!("its certificate does not verify against the pinned CA: {e}"), e))?;
        if let Err(e) = pki::node_id_from_cert(end_entity) {
            return Err(self.refuse(e.to_string(), bad(rustls::CertificateError::NotValidForName)));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

// ------------------------------------------------------------------------------------------
// Helpers

/// The node id the peer's certificate names; `None` without a certificate.
fn peer_node_id(conn: &Connection) -> Option<Result<NodeId, PkiError>> {
    let identity = conn.peer_identity()?;
    match identity.downcast::<Vec<CertificateDer<'static>>>() {
        Ok(chain) => Some(pki::node_id_from_chain(&chain)),
        Err(_) => Some(Err(PkiError::NoNodeIdentity)),
    }
}

/// Resolves `host:port`; with `local` given, prefers an address of the endpoint's family (an
/// IPv4 socket cannot reach an IPv6 address).
async fn resolve(addr: &str, local: Option<SocketAddr>) -> Result<SocketAddr, String> {
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {addr:?}: {e}"))?.collect();
    let preferred = match local {
        Some(local) if local.is_ipv4() => candidates.iter().find(|a| a.is_ipv4()),
        _ => None,
    };
    preferred.or(candidates.first()).copied().ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// A TLS alert from the peer closes the connection with a CRYPTO_ERROR code (0x100–0x1ff).
fn is_handshake_refusal(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => (0x100..0x200).contains(&u64::from(close.error_code)),
        ConnectionError::TransportError(t) => (0x100..0x200).contains(&u64::from(t.code)),
        _ => false,
    }
}

fn describe_connection_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::TimedOut => "no answer (timed out); is the node running and the UDP port open?".into(),
        e if is_handshake_refusal(e) => format!("TLS handshake refused ({e}); are both nodes' certificates from this cluster's CA?"),
        e => e.to_string(),
    }
}

/// The name of an answer, for error messages.
pub fn response_kind(resp: &RpcResponse) -> &'static str {
    match resp {
        RpcResponse::AppendEntries(_) => "append_entries",
        RpcResponse::Vote(_) => "vote",
        RpcResponse::FullSnapshot(_) => "full_snapshot",
        RpcResponse::Written { .. } => "written",
        RpcResponse::ReadIndex { .. } => "read_index",
        RpcResponse::Joined(_) => "joined",
        RpcResponse::Status(_) => "status",
        RpcResponse::Ok => "ok",
        RpcResponse::Error { .. } => "error",
    }
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use openraft::error::ReplicationClosed;
    use openraft::{SnapshotMeta, Vote};

    use super::*;
    use crate::cluster::pki::{generate_node_key, ClusterCa};

    const LONG: Duration = Duration::from_secs(30);

    /// Answers canned responses and records what it saw.
    struct TestHandler {
        ca_pem: String,
        seen: Mutex<Vec<(Peer, String)>>,
    }

    impl TestHandler {
        fn seen(&self) -> Vec<(Peer, String)> {
            lock(&self.seen).clone()
        }
    }

    impl RpcHandler for TestHandler {
        fn handle(&self, peer: Peer, req: RpcRequest, tail: Vec<u8>) -> Pin<Box<dyn Future<Output = (RpcResponse, Vec<u8>)> + Send>> {
            let kind = match &req {
                RpcRequest::Join(j) => format!("join:{}", j.token_id),
                // Externally tagged: a unit variant is a string, the others an object of one key.
                other => match serde_json::to_value(other) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
                    _ => String::new(),
                },
            };
            lock(&self.seen).push((peer, kind));
            let ca_pem = self.ca_pem.clone();
            Box::pin(async move {
                match req {
                    RpcRequest::Join(j) if j.token_id == "bad" => (
                        RpcResponse::Error { code: "bad_join_token".into(), message: "the join token is unknown".into(), leader: None },
                        vec![],
                    ),
                    RpcRequest::Join(j) => (
                        RpcResponse::Joined(JoinGrant {
                            node_id: 9,
                            cluster_id: "c1".into(),
                            ca_cert_pem: ca_pem,
                            ca_key_pem: String::new(),
                            node_cert_pem: format!("cert for {}", j.info.name),
                            secrets_key_b64: String::new(),
                            members: Default::default(),
                        }),
                        vec![],
                    ),
                    RpcRequest::Vote(v) => (RpcResponse::Vote(Ok(VoteResponse::new(v.vote, None, true))), vec![]),
                    RpcRequest::AppendEntries(_) => (RpcResponse::AppendEntries(Err(RaftError::Fatal(Fatal::Stopped))), vec![]),
                    RpcRequest::FullSnapshot { vote, .. } => (
                        RpcResponse::FullSnapshot(Ok(SnapshotResponse::new(vote))),
                        u64::try_from(tail.len()).unwrap_or(0).to_be_bytes().to_vec(),
                    ),
                    RpcRequest::ReadIndex => {
                        // Slow on purpose: an RPC in flight during a rotation.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        (RpcResponse::ReadIndex { index: 1 }, vec![])
                    }
                    _ => {
                        let mut back = tail;
                        back.reverse();
                        (RpcResponse::Written { index: back.len() as u64, position: None }, back)
                    }
                }
            })
        }
    }

    fn identity(ca: &ClusterCa, node_id: NodeId) -> NodeIdentity {
        let (key_pem, public_pem) = generate_node_key().expect("key");
        let cert_pem = ca.issue(node_id, &format!("n{node_id}"), &public_pem, &["127.0.0.1".into()], 30).expect("issue");
        NodeIdentity { node_id, ca_cert_pem: ca.cert_pem().to_owned(), cert_pem, key_pem }
    }

    async fn node(ca: &ClusterCa, node_id: NodeId) -> (Transport, Arc<TestHandler>) {
        node_at(ca, node_id, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn node_at(ca: &ClusterCa, node_id: NodeId, addr: SocketAddr) -> (Transport, Arc<TestHandler>) {
        let handler = Arc::new(TestHandler { ca_pem: ca.cert_pem().to_owned(), seen: Mutex::new(Vec::new()) });
        let t = Transport::bind(addr, identity(ca, node_id), handler.clone()).await.expect("bind");
        (t, handler)
    }

    fn share() -> RpcRequest {
        RpcRequest::Share(Default::default())
    }

    fn join_request() -> JoinRequest {
        JoinRequest {
            token_id: String::new(),
            token_secret: String::new(),
            info: NodeInfo { name: "n9".into(), raft_addr: "127.0.0.1:1".into(), ..Default::default() },
            public_key_pem: String::new(),
            sans: vec![],
        }
    }

    async fn cached_conn(t: &Transport, target: NodeId) -> Option<Connection> {
        lock(&t.slot(target)).cached.as_ref().map(|c| c.conn.clone())
    }

    fn peer_leaf(conn: &Connection) -> CertificateDer<'static> {
        let chain = conn.peer_identity().expect("identity").downcast::<Vec<CertificateDer<'static>>>().expect("certs");
        chain[0].clone()
    }

    /// One call over a throwaway endpoint with a hand-made client configuration.
    async fn raw_call(config: quinn::ClientConfig, addr: SocketAddr, name: &str, req: &RpcRequest) -> Result<RpcResponse, TransportError> {
        let endpoint = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let peer = addr.to_string();
        let conn = endpoint
            .connect_with(config, addr, name)
            .expect("connect")
            .await
            .map_err(|e| TransportError::Unreachable { peer: peer.clone(), reason: e.to_string() })?;
        let head = encode_head(req, 0).expect("head");
        let answer = exchange(&conn, &head, &[], MAX_MESSAGE).await.map_err(|f| f.into_error(peer, true));
        endpoint.close(VarInt::from_u32(0), b"");
        answer.map(|(resp, _)| resp)
    }

    fn anonymous_client(ca_pem: &str) -> quinn::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(pki::first_cert("ca", ca_pem).expect("ca")).expect("root");
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")))
    }

    #[tokio::test]
    async fn rpc_round_trip_carries_a_binary_tail_and_the_peer_id() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let tail: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let (resp, back) = a.call(2, &b.local_addr().to_string(), share(), tail.clone(), LONG).await.expect("call");
        assert!(matches!(resp, RpcResponse::Written { index: 5_000_000, .. }), "{resp:?}");
        assert_eq!(back.len(), tail.len());
        assert!(back.iter().rev().eq(tail.iter()));
        assert_eq!(hb.seen(), vec![(Peer::Node(1), "share".to_owned())]);
        // The connection is cached and reused; host names resolve.
        let first = cached_conn(&a, 2).await.expect("cached").stable_id();
        let addr = format!("localhost:{}", b.local_addr().port());
        a.call(2, &addr, share(), vec![], LONG).await.expect("by name");
        a.call(2, &addr, share(), vec![], LONG).await.expect("again");
        assert_ne!(cached_conn(&a, 2).await.expect("cached").stable_id(), first, "an address change re-dials");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn messages_over_the_limit_are_refused_before_sending() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let err = a.call(2, &b.local_addr().to_string(), share(), vec![0; MAX_MESSAGE], LONG).await.expect_err("too large");
        assert!(matches!(err, TransportError::TooLarge { limit: MAX_MESSAGE, .. }), "{err}");
        assert!(hb.seen().is_empty());
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused() {
        let ca = ClusterCa::create("c1").expect("ca");
        let other = ClusterCa::create("c2").expect("other ca");
        let (b, hb) = node(&ca, 2).await;
        // A whole node of another cluster.
        let (c, _) = node(&other, 3).await;
        let err = c.call(2, &b.local_addr().to_string(), share(), vec![], LONG).await.expect_err("refused");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        // A client that trusts our CA but presents a certificate of another CA: the server
        // refuses the handshake.
        let mut foreign = identity(&other, 1);
        foreign.ca_cert_pem = ca.cert_pem().to_owned();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = client_config(&foreign, &provider).expect("client config");
        let err = raw_call(config, b.local_addr(), &pki::server_name(2), &share()).await.expect_err("refused");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        assert!(hb.seen().is_empty(), "{:?}", hb.seen());
    }

    #[tokio::test]
    async fn a_client_without_certificate_may_only_join() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (b, hb) = node(&ca, 2).await;
        let config = anonymous_client(ca.cert_pem());
        let vote = RpcRequest::Vote(VoteRequest::new(Vote::new(1, 1), None));
        match raw_call(config.clone(), b.local_addr(), &pki::server_name(2), &vote).await.expect("answer") {
            RpcResponse::Error { code, .. } => assert_eq!(code, "unauthenticated"),
            other => panic!("{other:?}"),
        }
        let mut join = join_request();
        join.token_id = "t1".into();
        let resp = raw_call(config, b.local_addr(), &pki::server_name(2), &RpcRequest::Join(join)).await.expect("answer");
        assert!(matches!(resp, RpcResponse::Joined(_)), "{resp:?}");
        assert_eq!(hb.seen(), vec![(Peer::Unauthenticated, "join:t1".to_owned())], "the vote never reached the handler");
    }

    #[tokio::test]
    async fn dialling_a_node_under_another_id_fails_the_name_check() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let err = a.call(3, &b.local_addr().to_string(), share(), vec![], LONG).await.expect_err("wrong node");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        assert!(hb.seen().is_empty());
    }

    #[tokio::test]
    async fn join_checks_the_ca_fingerprint_before_sending_the_token() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (b, hb) = node(&ca, 2).await;
        let addr = b.local_addr().to_string();
        let good = JoinTokenString::new("t1", "secret", ca.fingerprint());
        let grant = join(&addr, &good, join_request(), LONG).await.expect("join");
        assert_eq!(grant.node_id, 9);
        assert_eq!(grant.node_cert_pem, "cert for n9");
        assert_eq!(hb.seen(), vec![(Peer::Unauthenticated, "join:t1".to_owned())]);

        let wrong = JoinTokenString::new("t2", "secret", ClusterCa::create("c2").expect("other").fingerprint());
        let err = join(&addr, &wrong, join_request(), LONG).await.expect_err("wrong fingerprint");
        assert!(matches!(err, TransportError::UntrustedServer { .. }), "{err}");
        assert!(err.to_string().contains("fingerprint"), "{err}");
        assert_eq!(hb.seen().len(), 1, "the token with the wrong fingerprint was never sent");

        let refused = JoinTokenString::new("bad", "secret", ca.fingerprint());
        match join(&addr, &refused, join_request(), LONG).await {
            Err(TransportError::Refused { code, .. }) => assert_eq!(code, "bad_join_token"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn blocked_nodes_fail_fast_and_unblocking_restores_them() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let addr = b.local_addr().to_string();
        a.call(2, &addr, share(), vec![], LONG).await.expect("before");

        a.faults().block(2);
        assert_eq!(a.faults().blocked(), vec![2]);
        let err = a.call(2, &addr, share(), vec![], LONG).await.expect_err("blocked");
        assert!(matches!(&err, TransportError::Unreachable { reason, .. } if reason.contains("fault hook")), "{err}");
        a.faults().unblock(2);
        a.call(2, &addr, share(), vec![], LONG).await.expect("unblocked");

        // Requests from a blocked node are dropped by the receiver.
        b.faults().block(1);
        let err = a.call(2, &addr, share(), vec![], LONG).await.expect_err("dropped");
        assert!(matches!(&err, TransportError::Network { reason, .. } if reason.contains("dropped")), "{err}");
        b.faults().heal();
        assert!(b.faults().blocked().is_empty());
        a.call(2, &addr, share(), vec![], LONG).await.expect("healed");
        assert_eq!(hb.seen().len(), 3);
    }

    #[tokio::test]
    async fn rotation_presents_the_new_certificate_and_lets_calls_in_flight_finish() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
        a.call(2, &b_addr, share(), vec![], LONG).await.expect("before");
        b.call(1, &a_addr, share(), vec![], LONG).await.expect("before");
        let old = cached_conn(&a, 2).await.expect("cached");

        let slow = {
            let a = a.clone();
            let b_addr = b_addr.clone();
            tokio::spawn(async move { a.call(2, &b_addr, RpcRequest::ReadIndex, vec![], LONG).await })
        };
        // Let the slow call reach the handler.
        while !hb.seen().iter().any(|(_, k)| k == "read_index") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (new_a, new_b) = (identity(&ca, 1), identity(&ca, 2));
        a.rotate(new_a.clone()).await.expect("rotate a");
        b.rotate(new_b.clone()).await.expect("rotate b");
        assert!(a.rotate(identity(&ca, 5)).await.is_err(), "another node's identity is refused");

        let (resp, _) = slow.await.expect("join").expect("the call in flight finishes");
        assert!(matches!(resp, RpcResponse::ReadIndex { index: 1 }));

        a.call(2, &b_addr, share(), vec![], LONG).await.expect("after");
        let new = cached_conn(&a, 2).await.expect("cached");
        assert_ne!(new.stable_id(), old.stable_id(), "the old connection was replaced");
        assert_eq!(peer_leaf(&new), pki::first_cert("b", &new_b.cert_pem).expect("der"), "b presents its new certificate");
        b.call(1, &a_addr, share(), vec![], LONG).await.expect("after");
        let back = cached_conn(&b, 1).await.expect("cached");
        assert_eq!(peer_leaf(&back), pki::first_cert("a", &new_a.cert_pem).expect("der"), "a presents its new certificate");
        // The old connection closes once its last call is done.
        tokio::time::timeout(LONG, old.closed()).await.expect("old connection closed");
        assert!(hb.seen().iter().all(|(p, _)| *p == Peer::Node(1)));
    }

    #[tokio::test]
    async fn a_dial_outlives_the_call_that_started_it() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr");
        // Node 2 is not up yet: the call gives up after a heartbeat's budget, the dial goes on and
        // resends its first packet about a second later, when node 2 listens.
        let err = a.call(2, &port.to_string(), share(), vec![], Duration::from_millis(50)).await.expect_err("node 2 is down");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        let (_b, hb) = node_at(&ca, 2, port).await;
        let waited = tokio::time::timeout(LONG, async {
            while cached_conn(&a, 2).await.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the dial begun by the abandoned call finished and stored its connection");
        a.call(2, &port.to_string(), share(), vec![], LONG).await.expect("the next call uses it");
        assert_eq!(a.dials(), 1, "no second handshake");
        assert_eq!(hb.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_restarted_peer_is_reached_despite_a_dial_begun_while_it_was_down() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr");
        let heartbeat = Duration::from_millis(50);
        // Node 2 is down: the dial's first packet is lost and its resend is about a second away.
        let err = a.call(2, &port.to_string(), share(), vec![], heartbeat).await.expect_err("down");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");

        let (_b, handler) = node_at(&ca, 2, port).await; // node 2 is back on its port
        let give_up = Instant::now() + 2 * DIAL_BUDGET;
        loop {
            match a.call(2, &port.to_string(), share(), vec![], heartbeat).await {
                Ok(_) => break,
                Err(e) if Instant::now() < give_up => tracing::debug!(error = %e, "not yet"),
                Err(e) => panic!("node 2 never reached: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Calls did not wait for the stale dial to resend: a newer one reached the peer.
        assert!(a.dials() >= 2, "dials: {}", a.dials());
        assert_eq!(handler.seen().len(), 1);
    }

    #[tokio::test]
    async fn raft_network_maps_answers_and_errors() {
        let ca = ClusterCa::create("c1").expect("ca");
        let (a, _) = node(&ca, 1).await;
        let (b, hb) = node(&ca, 2).await;
        let info = NodeInfo { name: "n2".into(), raft_addr: b.local_addr().to_string(), ..Default::default() };
        let mut client = a.network(None).new_client(2, &info).await;
        let option = RPCOption::new(Duration::from_secs(10));

        let resp = client.vote(VoteRequest::new(Vote::new(3, 1), None), option.clone()).await.expect("vote");
        assert!(resp.vote_granted);
        assert_eq!(resp.vote, Vote::new(3, 1));

        let append = AppendEntriesRequest { vote: Vote::new(3, 1), prev_log_id: None, entries: vec![], leader_commit: None };
        match client.append_entries(append, option.clone()).await {
            Err(RPCError::RemoteError(e)) => {
                assert_eq!(e.target, 2);
                assert!(matches!(e.source, RaftError::Fatal(Fatal::Stopped)));
            }
            other => panic!("{other:?}"),
        }

        let snapshot = Snapshot { meta: SnapshotMeta::default(), snapshot: Box::new(Cursor::new(vec![7u8; 100_000])) };
        let resp = client.full_snapshot(Vote::new(3, 1), snapshot, std::future::pending(), option.clone()).await.expect("snapshot");
        assert_eq!(resp.vote, Vote::new(3, 1));
        let snapshot = Snapshot { meta: SnapshotMeta::default(), snapshot: Box::new(Cursor::new(vec![7u8; 10])) };
        let cancelled = client.full_snapshot(Vote::new(3, 1), snapshot, async { ReplicationClosed::new("test") }, option.clone()).await;
        assert!(matches!(cancelled, Err(StreamingError::Closed(_))), "{cancelled:?}");
        assert!(matches!(
            client
                .install_snapshot(
                    InstallSnapshotRequest { vote: Vote::new(3, 1), meta: SnapshotMeta::default(), offset: 0, data: vec![], done: true },
                    option.clone()
                )
                .await,
            Err(RPCError::Network(_))
        ));

        a.faults().block(2);
        let err = client.vote(VoteRequest::new(Vote::new(3, 1), None), option.clone()).await.expect_err("blocked");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        a.faults().heal();

        // Nobody listens there: no handshake within the TTL is unreachability.
        let closed_port = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr");
        let gone = NodeInfo { raft_addr: closed_port.to_string(), ..Default::default() };
        let mut client = a.network(None).new_client(3, &gone).await;
        let err = client.vote(VoteRequest::new(Vote::new(3, 1), None), RPCOption::new(Duration::from_millis(300))).await.expect_err("gone");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        assert_eq!(client.backoff().next(), Some(BACKOFF));
        assert_eq!(hb.seen().iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(), vec!["vote", "append_entries", "full_snapshot"]);
    }
}
