//! The gateway listener (SPEC §3). Until the data-plane issue lands it knows no routes: every
//! request is answered with the gateway's JSON envelope (`"status":"01"`) and an
//! `X-Transaction-Id`, the shape every later refusal will keep.
//!
//! Invariants: never imports `cluster`; answers only from what it is handed.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

pub fn router() -> Router {
    Router::new().fallback(|| async { not_found() })
}

fn not_found() -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "status": "01", "code": "NO_SUCH_SERVICE",
        "message": "no service is published at this path / không có dịch vụ tại đường dẫn này",
        "transactionId": id,
    });
    let mut r = (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-transaction-id", v);
    }
    r
}
