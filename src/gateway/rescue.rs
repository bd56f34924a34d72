//! The one place where a gateway refusal becomes a response: the JSON envelope of SPEC §3
//! (`{"status":"01","code","message","transactionId"}`), its HTTP status and `Retry-After`.
//!
//! Invariants: codes are stable; messages are Vietnamese then English and never say whether
//! another agency, system or key exists; no refusal carries request data back.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, GwBody};

/// Why the gateway answered itself instead of the provider.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { status, code, message: message.into(), retry_after: None }
    }

    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn unauthenticated(code: &'static str, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn no_credentials() -> Refusal {
        Refusal::unauthenticated(
            "CREDENTIALS_REQUIRED",
            "Thiếu thông tin xác thực: gửi Authorization: Bearer <token> (lấy tại POST /token) hoặc chữ ký HTTP (RFC 9421). / \
             No credentials: send Authorization: Bearer <token> (from POST /token) or an HTTP message signature (RFC 9421).",
        )
    }

    pub fn invalid_token() -> Refusal {
        Refusal::unauthenticated(
            "INVALID_TOKEN",
            "Mã truy cập không hợp lệ, đã hết hạn hoặc đã bị thu hồi; lấy mã mới tại POST /token. / \
             The access token is invalid, expired or revoked; get a new one from POST /token.",
        )
    }

    pub fn subscription_required() -> Refusal {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "SUBSCRIPTION_REQUIRED",
            "Hệ thống của bạn chưa có đăng ký đang hiệu lực cho dịch vụ, phiên bản và môi trường này; gửi yêu cầu đăng ký (Mẫu 02). / \
             Your system has no active subscription to this service version in this environment; request one (Form 02).",
        )
    }

    pub fn internal() -> Refusal {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Lỗi nội bộ của LGSP; vui lòng thử lại và báo cho đơn vị vận hành kèm mã giao dịch. / \
             Internal LGSP error; retry and report the transaction id to the operator.",
        )
    }

    /// The envelope response, stamped with the transaction id.
    pub fn into_response(self, txn: &str) -> Response<GwBody> {
        let body = serde_json::json!({
            "status": "01",
            "code": self.code,
            "message": self.message,
            "transactionId": txn,
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut r = Response::new(full(Bytes::from(bytes)));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if let Ok(v) = HeaderValue::from_str(txn) {
            h.insert("x-transaction-id", v);
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"lgsp\", Signature"));
        }
        r
    }
}
