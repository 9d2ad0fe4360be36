//! Error answers: every non-2xx answer is the JSON error object of DESIGN.md.
//!
//! Clients decide what to do by `error.code` (retry, stop, ask for a token), so an
//! error must never arrive as an HTML page or an empty body, whichever layer made it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_core::protocol::{ErrorBody, ErrorCode, ErrorResponse};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn too_large() -> ApiError {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the body is over 8 MiB, before or after gzip decoding",
        )
    }

    /// Internal failures keep their detail in the log, not in the answer.
    pub fn internal() -> ApiError {
        ApiError::new(ErrorCode::Internal, "internal server error")
    }
}

/// The JSON error answer for `code`.
pub fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    ApiError::new(code, message).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorResponse {
            error: ErrorBody::new(self.code, self.message),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The protocol code for an HTTP error status made by some layer other than ours.
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        410 => ErrorCode::CursorExpired,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    }
}
