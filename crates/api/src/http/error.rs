//! The one error type HTTP handlers return: a status and a message, rendered
//! as `{"error": "..."}`. Errors about a DBaaS request also carry its kind
//! (`{"error": "...", "kind": "constraint", "constraint": "unique"}`), and
//! this is the one place a kind becomes an HTTP status ([`status_of`]).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::db::{Constraint, ErrorKind, Failure};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// What kind of failure (errors of `db/read`, `db/write`, `db/clear`).
    pub kind: Option<ErrorKind>,
    /// Which rule, for a constraint.
    pub constraint: Option<Constraint>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: None,
            constraint: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// This error, saying its kind in the body.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = Some(kind);
        self
    }
}

/// The status a failure of `kind` is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Constraint => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Invalid | ErrorKind::KeyReused | ErrorKind::Quarantined => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Full => StatusCode::INSUFFICIENT_STORAGE,
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        ApiError {
            status: status_of(f.kind),
            message: f.message,
            kind: Some(f.kind),
            constraint: f.constraint,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The client was too slow: the rest of its body is not waited for.
            res.force_close();
        }
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(kind) = self.kind {
            body["kind"] = serde_json::json!(kind);
        }
        if let Some(constraint) = self.constraint {
            body["constraint"] = serde_json::json!(constraint);
        }
        res.json(body)
    }
}

impl From<crate::db::RequestError> for ApiError {
    fn from(e: crate::db::RequestError) -> Self {
        ApiError::bad_request(e.0).with_kind(ErrorKind::BadRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_keeps_the_status_the_api_documents() {
        let cases = [
            (ErrorKind::BadRequest, 400),
            (ErrorKind::Constraint, 409),
            (ErrorKind::TooLarge, 413),
            (ErrorKind::Invalid, 422),
            (ErrorKind::KeyReused, 422),
            (ErrorKind::Quarantined, 422),
            (ErrorKind::Internal, 500),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Timeout, 504),
            (ErrorKind::Full, 507),
        ];
        for (kind, status) in cases {
            assert_eq!(status_of(kind).as_u16(), status, "{kind:?}");
        }
    }
}
