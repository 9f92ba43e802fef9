//! Reading request bodies with a size limit and a time limit, so an oversized
//! body is a JSON 413 and never buffered whole, and a client that sends its
//! body too slowly gets a 408 and loses its connection.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use super::error::ApiError;
use crate::config::HttpLimits;

/// The largest body `db/read` and `db/write` accept.
pub const MAX_BODY: usize = 1 << 20;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (declared or streamed).
    TooLarge,
    /// Not all there within the time limit.
    TimedOut(Duration),
    /// The connection failed mid-body.
    Broken(String),
}

/// The body timeout of the server serving `req` (its [`HttpLimits`] app data).
pub fn timeout_of(req: &HttpRequest) -> Duration {
    req.app_data::<HttpLimits>()
        .copied()
        .unwrap_or_default()
        .client_timeout
}

/// Reads the whole body within `timeout`, refusing more than `limit` bytes
/// without buffering them.
pub async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::BytesMut, BodyError> {
    tokio::time::timeout(timeout, read_all(req, payload, limit))
        .await
        .unwrap_or(Err(BodyError::TimedOut(timeout)))
}

async fn read_all(
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

/// A `db/read` or `db/write` body: over [`MAX_BODY`] is a 413, slower than
/// the server's client timeout a 408.
pub async fn read(req: &HttpRequest, payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    read_limited(req, payload, MAX_BODY, timeout_of(req))
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            ),
            e @ BodyError::TimedOut(_) => timed_out(e),
            BodyError::Broken(e) => ApiError::bad_request(format!("reading body: {e}")),
        })
}

/// The 408 for a body that did not arrive in time; the connection is closed
/// with it (the rest of the body is never read).
pub fn timed_out(e: BodyError) -> ApiError {
    let after = match e {
        BodyError::TimedOut(t) => format!(" within {t:?}"),
        _ => String::new(),
    };
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!("the request body did not arrive{after}"),
    )
}
