//! The admin API's one error type and its JSON shape `{"code","message","details"?}`.
//!
//! Invariants: `code` values are stable (clients and tests match on them); a message says what
//! failed and what to do; storage details never reach the client beyond a generic message.

use crate::cluster::node::ClusterError;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::cluster::StoreError;
use crate::registry::RegistryError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, retry_after: None }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    /// Also used for objects outside the caller's agency, so their existence is not revealed.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{kind} {id:?} does not exist"))
    }
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let mut e = Self::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("{field}: {reason}"));
        e.details = Some(json!({ "field": field }));
        e
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
            RegistryError::AlreadyExists { .. } | RegistryError::Conflict { .. } => StatusCode::CONFLICT,
            RegistryError::Invalid { .. } => StatusCode::BAD_REQUEST,
            RegistryError::Rule { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut out = ApiError::new(status, e.code(), e.to_string());
        if let RegistryError::Invalid { field, .. } = &e {
            out.details = Some(json!({ "field": field }));
        }
        out
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(r) => r.into(),
            other => {
                tracing::error!(error = %other, "registry storage failure");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "STORAGE_UNAVAILABLE", "the registry could not be saved; nothing was changed. Try again; if it persists, the operator should check the node's disk")
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::NoQuorum(_) | ClusterError::NotInitialized => StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::Ambiguous(_) | ClusterError::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
            ClusterError::Refused(_) => StatusCode::CONFLICT,
            ClusterError::Storage(_) | ClusterError::Transport(_) | ClusterError::File { .. } => {
                tracing::error!(error = %e, "cluster failure");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut out = ApiError::new(status, e.code(), e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            out.retry_after = Some(1);
        }
        out
    }
}

/// Marks a response that says an object does not exist (as opposed to an unknown path), so the
/// admin router can check with the leader before giving that answer for a write.
#[derive(Clone, Copy, Debug)]
pub struct NotFoundObject;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.code == "NOT_FOUND" {
            resp.extensions_mut().insert(NotFoundObject);
        }
        if let Some(s) = self.retry_after {
            if let Ok(v) = s.to_string().parse() {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A JSON object body whose rejections are [`ApiError`]s: 415 without a JSON content type,
/// 413 above the body limit, 400 `INVALID_INPUT` for anything but a well-formed JSON object of
/// the expected shape (arrays are not accepted in place of objects).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if !json_type {
            return Err(unsupported_media_type());
        }
        parse_object(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an empty body is `None` (for actions whose body is optional).
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json_type {
            return Err(unsupported_media_type());
        }
        parse_object(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

fn bytes_rejection(rej: BytesRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", format!("the request body is too large: {}", rej.body_text()))
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("the request body could not be read: {}", rej.body_text()))
    }
}

fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", "the request body must be a JSON object ({...})")),
        None => return Err(ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", "the request body is empty; send a JSON object")),
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field.is_empty() || field == "." {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("the request body is not valid: {inner}"))
        } else {
            ApiError::invalid(&field, format!("{inner}"))
        }
    })?;
    // Trailing data after the object (`{..}{..}`) is refused too.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("the request body is not valid: {e}")))?;
    Ok(value)
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", format!("the query string is not valid: {}", rej.body_text()))
}
