//! Backup endpoints (`lgsp backup create|list`): asking every node for a backup at one log
//! index (the `Backup` cluster command), and listing the backup files of the node that answers.
//!
//! Invariants: operators only create (auditors may list); creating answers once this node's
//! file is written (or says it is still being written); files are read through `backup::list`,
//! which reads only manifests.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{ApiError, ApiJson, Endpoint, Shared};

/// How long `POST /api/v1/backups` waits for this node's file before answering 202.
pub const WAIT: Duration = Duration::from_secs(120);

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "post",
            path: "/api/v1/backups",
            summary: "Back up every node at one log index ({\"reason\": R}); answers with this node's file",
            roles: "operator",
            handler: || post(create),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/backups",
            summary: "The backup files of the node that answers (from their manifests)",
            roles: "operator, auditor",
            handler: || get(list),
        },
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    reason: String,
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "BACKUP_UNAVAILABLE",
        "this node has no backup writer; it is starting or stopping, try again",
    )
}

/// What became of a backup this node asked for (`POST /api/v1/backups`, and the pre-incident
/// backup of `POST /api/v1/incidents`).
pub enum BackupOutcome {
    /// The point is in the log and this node wrote its file.
    Written { id: String, index: u64, file: std::path::PathBuf, size: u64 },
    /// The point is in the log; this node is still writing its file.
    Pending { id: String, index: u64 },
    /// The point is in the log but this node could not write its file.
    FileFailed { id: String, index: u64, error: String },
}

/// Proposes the `Backup` cluster command with `reason` and waits up to `wait` for this node's
/// file. Errors: no backup writer on this node, or the command could not be committed.
pub async fn backup_now(st: &Shared, p: &Principal, reason: &str, wait: Duration) -> Result<BackupOutcome, ApiError> {
    let service = st.backups.clone().ok_or_else(unavailable)?;
    let id = crate::backup::new_id(chrono::Utc::now());
    let index = st.cluster.backup(p.actor(), id.clone(), reason.to_owned()).await?;
    Ok(match service.wait(&id, wait).await {
        Some(Ok(file)) => {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            BackupOutcome::Written { id, index, file, size }
        }
        Some(Err(e)) => BackupOutcome::FileFailed { id, index, error: e.to_string() },
        None => BackupOutcome::Pending { id, index },
    })
}

async fn create(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<CreateBody>) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_operator("create backups")?;
    let reason = b.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 500 {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "INVALID", "reason: required, at most 500 characters (why this backup is made)");
        e.details = Some(json!({ "field": "reason" }));
        return Err(e);
    }
    let node = st.cluster.id;
    match backup_now(&st, &p, &reason, WAIT).await? {
        BackupOutcome::Written { id, index, file, size } => Ok((
            StatusCode::CREATED,
            Json(json!({ "id": id, "reason": reason, "log_index": index, "node": node, "file": file, "size": size })),
        )),
        BackupOutcome::FileFailed { id, index, error } => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "BACKUP_FAILED",
            format!("backup {id} (log index {index}) was recorded, but this node could not write its file: {error}"),
        )),
        BackupOutcome::Pending { id, index } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "reason": reason, "log_index": index, "node": node,
                "message": "the backup point is recorded; this node is still writing its file, see `lgsp backup list`" })),
        )),
    }
}

async fn list(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_reader("list backups")?;
    let service = st.backups.clone().ok_or_else(unavailable)?;
    let dir = service.dir().to_path_buf();
    let listed = tokio::task::spawn_blocking(move || crate::backup::list(&dir))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "BACKUP_LIST_FAILED", e.to_string()))?;
    let items: Vec<Value> = listed
        .iter()
        .rev()
        .map(|l| match &l.manifest {
            Some(m) => json!({ "id": m.id, "reason": m.reason, "created_at": m.created_at, "actor": m.actor, "log_index": m.log_index,
                "node_id": m.node_id, "node_name": m.node_name, "cluster_id": m.cluster_id, "size": l.size, "file": l.file }),
            None => json!({ "file": l.file, "size": l.size, "error": l.error }),
        })
        .collect();
    Ok(Json(json!({ "items": items, "total": items.len(), "dir": service.dir() })))
}
