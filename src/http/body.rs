//! Reading request bodies with a size limit, so an oversized body is a JSON 413
//! and never buffered whole.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use super::error::ApiError;

/// The largest body `db/read` and `db/write` accept.
pub const MAX_BODY: usize = 1 << 20;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (declared or streamed).
    TooLarge,
    /// The connection failed mid-body.
    Broken(String),
}

/// Reads the whole body, refusing more than `limit` bytes without buffering them.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `db/read` or `db/write` body: over [`MAX_BODY`] is a 413.
pub async fn read(req: &HttpRequest, payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    read_limited(req, payload, MAX_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            ),
            BodyError::Broken(e) => ApiError::bad_request(format!("reading body: {e}")),
        })
}
