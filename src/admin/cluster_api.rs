//! Cluster endpoints (`lgsp cluster ...`, `lgsp node drain|resume`): status, join tokens,
//! promotion, removal, leadership transfer, draining, certificate rotation, and the test-only
//! partition hook.
//!
//! Invariants: operators only (auditors may read the status); membership changes are carried
//! out by the leader whichever node receives them.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{ApiError, ApiJson, Endpoint, Shared};
use crate::cluster::types::{MembershipOp, NodeId};

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/cluster",
            summary: "Cluster status: leader, term, log indices, each node's role and lag",
            roles: "operator, auditor",
            handler: || get(status),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/cluster/join-tokens",
            summary: "Create a one-time join token for a new node (shown once)",
            roles: "operator",
            handler: || post(create_token),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/cluster/nodes/{id}/promote",
            summary: "Make a caught-up learner a voter",
            roles: "operator",
            handler: || post(promote),
        },
        Endpoint {
            method: "delete",
            path: "/api/v1/cluster/nodes/{id}",
            summary: "Remove a node from the cluster",
            roles: "operator",
            handler: || delete(remove),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/cluster/leader",
            summary: "Transfer leadership to another voter ({\"node_id\": N})",
            roles: "operator",
            handler: || post(transfer),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/cluster/leave",
            summary: "Take the node that receives this call out of the cluster",
            roles: "operator",
            handler: || post(leave),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/node/drain",
            summary: "Take the node that receives this call out of service: /status answers 503, leadership moves away (refused when fewer than a quorum of healthy voters would stay in service)",
            roles: "operator",
            handler: || post(drain),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/node/resume",
            summary: "Put the node that receives this call back in service",
            roles: "operator",
            handler: || post(resume),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/cluster/certificate/rotate",
            summary: "Give the node that receives this call a new cluster certificate, without downtime",
            roles: "operator",
            handler: || post(rotate),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/cluster/test-partition",
            summary: "Test-only (LGSP_TEST_FAULTS=1): drop all cluster traffic with these nodes ({\"blocked\": [ids]})",
            roles: "operator",
            handler: || put(partition),
        },
    ]
}

async fn status(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_reader("read the cluster status")?;
    let s = st.cluster.status().await;
    let mut v = serde_json::to_value(&s).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    v["node"] = json!(st.cluster.id);
    v["quorum"] = json!(st.cluster.has_quorum());
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// Promote the node to voter once it has caught up (default true).
    #[serde(default = "yes")]
    voter: bool,
    /// Validity, 60 s to 7 days (default 1 hour).
    #[serde(default = "hour")]
    ttl_seconds: u64,
}

fn yes() -> bool {
    true
}
fn hour() -> u64 {
    3600
}

async fn create_token(
    State(st): State<Shared>,
    p: Principal,
    ApiJson(b): ApiJson<TokenBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_operator("create join tokens")?;
    if !(60..=7 * 24 * 3600).contains(&b.ttl_seconds) {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "INVALID", "ttl_seconds: must be between 60 and 604800");
        e.details = Some(json!({ "field": "ttl_seconds" }));
        return Err(e);
    }
    let (token, expires_at) = st.cluster.create_join_token(p.actor(), b.voter, Duration::from_secs(b.ttl_seconds)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "token": token, "expires_at": expires_at, "voter": b.voter }))))
}

/// Node ids are numbers; checked after the role, so a refusal never depends on the path.
fn node_id(raw: &str) -> Result<NodeId, ApiError> {
    raw.parse().map_err(|_| {
        let mut e =
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID", format!("{raw:?} is not a node id (a number, see `lgsp cluster status`)"));
        e.details = Some(json!({ "field": "id" }));
        e
    })
}

async fn promote(State(st): State<Shared>, p: Principal, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    p.require_operator("change the cluster membership")?;
    let id = node_id(&raw)?;
    st.cluster.membership(MembershipOp::Promote { node_id: id }).await?;
    Ok(Json(json!({ "promoted": id })))
}

async fn remove(State(st): State<Shared>, p: Principal, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    p.require_operator("change the cluster membership")?;
    let id = node_id(&raw)?;
    st.cluster.membership(MembershipOp::Remove { node_id: id }).await?;
    Ok(Json(json!({ "removed": id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    node_id: NodeId,
}

async fn transfer(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<TransferBody>) -> Result<Json<Value>, ApiError> {
    p.require_operator("move the cluster leadership")?;
    st.cluster.membership(MembershipOp::TransferLeader { to: b.node_id }).await?;
    Ok(Json(json!({ "leader": b.node_id })))
}

async fn leave(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_operator("change the cluster membership")?;
    let id = st.cluster.id;
    st.cluster.membership(MembershipOp::Remove { node_id: id }).await?;
    Ok(Json(json!({ "removed": id, "message": "this node has left the cluster; stop it and wipe its data directory before reuse" })))
}

async fn drain(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_operator("drain a node")?;
    let r = st.cluster.drain(p.actor()).await?;
    Ok(Json(json!({ "node_id": r.node_id, "draining": r.draining, "leader": r.leader,
        "message": "the node is out of service: /status answers 503 so load balancers stop sending traffic; requests already accepted finish. `lgsp node resume` puts it back" })))
}

async fn resume(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_operator("resume a node")?;
    let r = st.cluster.resume(p.actor()).await?;
    Ok(Json(json!({ "node_id": r.node_id, "draining": r.draining, "leader": r.leader, "message": "the node is back in service" })))
}

async fn rotate(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_operator("rotate cluster certificates")?;
    st.cluster.rotate_certificate().await?;
    Ok(Json(json!({ "rotated": st.cluster.id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    blocked: Vec<NodeId>,
}

async fn partition(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<PartitionBody>) -> Result<Json<Value>, ApiError> {
    p.require_operator("inject faults")?;
    if !st.cluster.faults_enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NO_SUCH_ENDPOINT",
            "no admin API endpoint at this path; see /api/v1/openapi.json",
        ));
    }
    st.cluster.set_partition(&b.blocked)?;
    Ok(Json(json!({ "blocked": b.blocked })))
}
