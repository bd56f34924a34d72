//! What the Raft pieces agree on: the openraft type configuration, node metadata, what a log
//! entry carries, the cluster's own replicated bookkeeping, and the RPC messages between nodes.
//!
//! Invariants: everything here is plain data (serde), with no I/O; applying a
//! [`ClusterCommand`] is deterministic (reads `at` from the envelope, never a clock), like
//! `registry::apply`.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::registry::{Actor, Envelope, Timestamp};

pub type NodeId = u64;

/// How peers and tools reach a node. Stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique in the cluster, shown in status, logs and audit records.
    pub name: String,
    /// `host:port` of the node's QUIC listener, as its peers dial it.
    pub raft_addr: String,
    #[serde(default)]
    pub admin_url: String,
    #[serde(default)]
    pub gateway_url: String,
    #[serde(default)]
    pub metrics_url: String,
}

openraft::declare_raft_types!(
    /// The appliance's Raft: registry and cluster commands in, nothing but the index out
    /// (a node reads a command's outcome from its own deterministic apply).
    pub TypeConfig:
        D = Request,
        R = (),
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What one Raft log entry carries.
#[allow(
    clippy::large_enum_variant,
    reason = "an entry is built once per proposal and moved a few times; boxing would change every constructor"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Request {
    /// A registry change (admin API, gateway token revocation, import ...).
    Registry(Envelope),
    /// A change to the cluster's own bookkeeping.
    Cluster(ClusterEnvelope),
    /// Several concurrent writes carried by one entry (group commit on the leader, see
    /// `cluster::batch`), applied in order; each member has its own outcome. Never nested.
    /// An older node cannot apply it: every node of a cluster must run a version that knows
    /// this variant before any of them leads (true of every release since it was added).
    Batch(Vec<Request>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEnvelope {
    /// Instant assigned by the proposer; apply never reads a clock.
    pub at: Timestamp,
    pub actor: Actor,
    pub command: ClusterCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterCommand {
    /// A one-time join token; only the SHA-256 of its secret is replicated.
    CreateJoinToken { id: String, secret_sha256: String, expires_at: Timestamp, voter: bool },
    /// A node presented a join token: consume it and allocate the node's id.
    ConsumeJoinToken { id: String, secret_sha256: String, name: String },
    /// The node left the membership; its name may be reused.
    ForgetNode { node_id: NodeId },
    /// The operator took a node out of service (`lgsp node drain`) or put it back (`resume`).
    SetDraining { node_id: NodeId, draining: bool },
    /// `lgsp backup create`: every node writes a backup of the state at exactly this entry's
    /// index (the store hands that point to the node's backup writer; see ARCHITECTURE.md).
    Backup { id: String, reason: String },
}

/// How many backup points [`ClusterState::backups`] remembers.
pub const BACKUPS_KEPT: usize = 64;

/// A backup point as replicated: the entry at `index` asked every node for a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPoint {
    pub id: String,
    pub index: u64,
    pub at: Timestamp,
    pub by: String,
    pub reason: String,
}

/// One join token as replicated (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub secret_sha256: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub expires_at: Timestamp,
    /// Promote the node to voter once it has caught up.
    pub voter: bool,
    #[serde(default)]
    pub used_by: Option<NodeId>,
}

/// A node the cluster has admitted (by `cluster init` or a join token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub joined_at: Timestamp,
    /// Promote to voter once caught up (from the join token).
    pub voter: bool,
}

/// The cluster's replicated bookkeeping, beside the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub join_tokens: BTreeMap<String, JoinToken>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Nodes an operator drained: their `/status` answers 503 and they do not lead.
    #[serde(default)]
    pub draining: std::collections::BTreeSet<NodeId>,
    /// The most recent backup points, oldest first (at most [`BACKUPS_KEPT`]).
    #[serde(default)]
    pub backups: Vec<BackupPoint>,
}

/// What applying a cluster command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOutcome {
    TokenCreated,
    Joined { node_id: NodeId },
    Forgotten,
    DrainSet,
    BackupPoint,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterRefusal {
    #[error("the join token is unknown, already used or expired; create a new one with `lgsp cluster token create`")]
    BadJoinToken,
    #[error("a join token with id {0} already exists")]
    DuplicateToken(String),
    #[error("a backup with id {0} was already made")]
    DuplicateBackup(String),
    #[error("a node named {0:?} is already a member; choose another [node] name or remove the old node first")]
    NameTaken(String),
}

/// The id the cluster's first node gets (`lgsp cluster init`).
pub const FIRST_NODE: NodeId = 1;

impl ClusterState {
    /// Applies one command; on error nothing changed.
    pub fn apply(&mut self, env: &ClusterEnvelope) -> Result<ClusterOutcome, ClusterRefusal> {
        match &env.command {
            ClusterCommand::CreateJoinToken { id, secret_sha256, expires_at, voter } => {
                if self.join_tokens.contains_key(id) {
                    return Err(ClusterRefusal::DuplicateToken(id.clone()));
                }
                // Expired and used tokens are dropped here so the table stays small.
                self.join_tokens.retain(|_, t| t.used_by.is_none() && t.expires_at > env.at);
                self.join_tokens.insert(
                    id.clone(),
                    JoinToken {
                        id: id.clone(),
                        secret_sha256: secret_sha256.clone(),
                        created_at: env.at,
                        created_by: env.actor.user.clone(),
                        expires_at: *expires_at,
                        voter: *voter,
                        used_by: None,
                    },
                );
                Ok(ClusterOutcome::TokenCreated)
            }
            ClusterCommand::ConsumeJoinToken { id, secret_sha256, name } => {
                let ok = match self.join_tokens.get(id) {
                    Some(t) => {
                        t.used_by.is_none()
                            && t.expires_at > env.at
                            && subtle::ConstantTimeEq::ct_eq(t.secret_sha256.as_bytes(), secret_sha256.as_bytes()).into()
                    }
                    None => false,
                };
                if !ok {
                    return Err(ClusterRefusal::BadJoinToken);
                }
                if self.nodes.values().any(|n| &n.name == name) {
                    return Err(ClusterRefusal::NameTaken(name.clone()));
                }
                let node_id = self.nodes.keys().next_back().map_or(FIRST_NODE + 1, |last| (last + 1).max(FIRST_NODE + 1));
                let voter = self.join_tokens.get(id).is_some_and(|t| t.voter);
                if let Some(t) = self.join_tokens.get_mut(id) {
                    t.used_by = Some(node_id);
                }
                self.nodes.insert(node_id, NodeRecord { name: name.clone(), joined_at: env.at, voter });
                Ok(ClusterOutcome::Joined { node_id })
            }
            ClusterCommand::ForgetNode { node_id } => {
                self.nodes.remove(node_id);
                self.draining.remove(node_id);
                Ok(ClusterOutcome::Forgotten)
            }
            ClusterCommand::SetDraining { node_id, draining } => {
                if *draining {
                    self.draining.insert(*node_id);
                } else {
                    self.draining.remove(node_id);
                }
                Ok(ClusterOutcome::DrainSet)
            }
            ClusterCommand::Backup { id, reason } => {
                if self.backups.iter().any(|b| &b.id == id) {
                    return Err(ClusterRefusal::DuplicateBackup(id.clone()));
                }
                // The index is filled in by the store, which knows the entry's position.
                self.backups.push(BackupPoint { id: id.clone(), index: 0, at: env.at, by: env.actor.user.clone(), reason: reason.clone() });
                if self.backups.len() > BACKUPS_KEPT {
                    self.backups.remove(0);
                }
                Ok(ClusterOutcome::BackupPoint)
            }
        }
    }
}

/// A message from one node to another over the cluster transport. Raft's own RPCs and the
/// appliance's (forwarded writes, read barriers, joins, shared gateway state).
#[derive(Debug, Clone, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum buffers its content, and buffered maps lose
// their integer keys (openraft's memberships are keyed by node id).
#[serde(rename_all = "snake_case")]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// The snapshot's bytes travel as the message's binary tail, not in the JSON header.
    FullSnapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, NodeInfo>,
    },
    /// A write sent to the leader by a node that is not the leader.
    ClientWrite {
        request: Request,
    },
    /// Asks the leader for an index that a linearizable read must wait for.
    ReadIndex,
    /// A node that holds a certificate asks to be added as a learner (or to have its address
    /// updated) after start.
    AddLearner {
        node_id: NodeId,
        info: NodeInfo,
    },
    /// The only RPC accepted from a peer without a client certificate.
    Join(JoinRequest),
    /// Gateway state every node must know (seen nonces, rate-limit usage).
    Share(SharedBatch),
    /// A membership change, carried out by the leader.
    Membership {
        op: MembershipOp,
    },
    /// The cluster as the receiver sees it (the leader knows every follower's progress).
    Status,
    /// Start an election now (the last step of a leadership transfer).
    Elect,
}

/// Membership changes an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MembershipOp {
    /// Make a caught-up learner a voter.
    Promote { node_id: NodeId },
    /// Take a node out of the cluster (voter or learner).
    Remove { node_id: NodeId },
    /// Hand leadership to another voter.
    TransferLeader { to: NodeId },
}

/// One node as `lgsp cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `leader`, `voter` or `learner`.
    pub role: String,
    /// Highest log index known to be on that node (from the leader's replication state).
    pub matched_index: Option<u64>,
    /// Entries the node is behind the leader's last log index.
    pub lag: Option<u64>,
}

/// What `lgsp node drain|resume` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub node_id: NodeId,
    pub draining: bool,
    /// Who leads afterwards, as this node knows.
    pub leader: Option<NodeId>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that produced this view (the leader when it could be reached).
    pub reporter: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Milliseconds since the leader last heard from a quorum (leader only).
    pub millis_since_quorum_ack: Option<u64>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret part of the join token (the token id travels beside it).
    pub token_id: String,
    pub token_secret: String,
    pub info: NodeInfo,
    /// The joining node's public key (PEM, SubjectPublicKeyInfo); the cluster signs a
    /// certificate for it. The private key never leaves the node.
    pub public_key_pem: String,
    /// Extra names and addresses for the certificate (hostnames, IPs).
    #[serde(default)]
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub ca_cert_pem: String,
    /// The CA key (PEM), so that any node can admit the next one and renew certificates.
    pub ca_key_pem: String,
    pub node_cert_pem: String,
    /// The cluster's secrets key (base64), shared by all nodes: sealed secrets and tokens.
    pub secrets_key_b64: String,
    /// The current members, for the node's first contact.
    pub members: BTreeMap<NodeId, NodeInfo>,
}

/// Gateway state shared between nodes, batched (seen nonces and assertion ids, rate-limit
/// usage). Opaque here: the gateway defines its shape, `app` converts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SharedBatch {
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum buffers its content, and buffered maps lose
// their integer keys (openraft's memberships are keyed by node id).
#[serde(rename_all = "snake_case")]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    FullSnapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// The write is committed at this index (wait for it to be applied locally).
    Written {
        /// The member's position when the write went into a batch entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<u32>,
        index: u64,
    },
    ReadIndex {
        index: u64,
    },
    Joined(JoinGrant),
    Status(ClusterStatus),
    Ok,
    /// The appliance's refusal: a stable code, an operator-facing message, and the leader if
    /// the receiver knows it (`not_leader`).
    Error {
        code: String,
        message: String,
        leader: Option<NodeId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Role;

    fn env(at: &str, command: ClusterCommand) -> ClusterEnvelope {
        ClusterEnvelope { at: at.parse().expect("time"), actor: Actor { user: "op".into(), role: Role::Operator, agency: None }, command }
    }

    #[test]
    fn join_token_is_one_time_and_expires() {
        let mut s = ClusterState::default();
        let create = ClusterCommand::CreateJoinToken {
            id: "t1".into(),
            secret_sha256: "aa".into(),
            expires_at: "2026-01-01T01:00:00Z".parse().expect("time"),
            voter: true,
        };
        assert_eq!(s.apply(&env("2026-01-01T00:00:00Z", create.clone())), Ok(ClusterOutcome::TokenCreated));
        assert_eq!(s.apply(&env("2026-01-01T00:00:00Z", create)), Err(ClusterRefusal::DuplicateToken("t1".into())));
        let wrong = ClusterCommand::ConsumeJoinToken { id: "t1".into(), secret_sha256: "ab".into(), name: "n2".into() };
        assert_eq!(s.apply(&env("2026-01-01T00:10:00Z", wrong)), Err(ClusterRefusal::BadJoinToken));
        let right = ClusterCommand::ConsumeJoinToken { id: "t1".into(), secret_sha256: "aa".into(), name: "n2".into() };
        assert_eq!(s.apply(&env("2026-01-01T00:10:00Z", right.clone())), Ok(ClusterOutcome::Joined { node_id: 2 }));
        assert_eq!(s.apply(&env("2026-01-01T00:11:00Z", right)), Err(ClusterRefusal::BadJoinToken));
        let late = ClusterCommand::CreateJoinToken {
            id: "t2".into(),
            secret_sha256: "bb".into(),
            expires_at: "2026-01-01T01:00:00Z".parse().expect("time"),
            voter: false,
        };
        assert!(s.apply(&env("2026-01-01T00:00:00Z", late)).is_ok());
        let expired = ClusterCommand::ConsumeJoinToken { id: "t2".into(), secret_sha256: "bb".into(), name: "n3".into() };
        assert_eq!(s.apply(&env("2026-01-01T02:00:00Z", expired)), Err(ClusterRefusal::BadJoinToken));
        assert!(s.nodes.get(&2).is_some_and(|n| n.voter));
    }

    #[test]
    fn request_round_trips_through_json() {
        let r = Request::Cluster(env("2026-01-01T00:00:00Z", ClusterCommand::ForgetNode { node_id: 3 }));
        let text = serde_json::to_string(&r).expect("encode");
        let back: Request = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, r);
    }

    /// The log format of a batch entry (golden): a change here breaks every stored log.
    #[test]
    fn a_batch_entry_keeps_its_log_format() {
        let member = Request::Cluster(env("2026-01-01T00:00:00Z", ClusterCommand::ForgetNode { node_id: 3 }));
        let member_json = serde_json::to_value(&member).expect("encode");
        let batch = Request::Batch(vec![member.clone(), member]);
        let json = serde_json::to_value(&batch).expect("encode");
        assert_eq!(json, serde_json::json!({ "kind": "batch", "body": [member_json.clone(), member_json] }));
        assert_eq!(serde_json::from_value::<Request>(json).expect("decode"), batch);
    }
}
