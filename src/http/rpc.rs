//! One request/reply exchange with the workers: hand the request and a reply
//! slot to the `Dispatcher` (which registers the slot with the `RpcWaiter` and
//! publishes), then wait (bounded) for the reply.

use std::time::Duration;

use actix_web::http::StatusCode;
use tokio::sync::oneshot;

use super::error::ApiError;
use super::AppState;
use crate::actors::dispatcher::{Kind, Outbound, Publish, PublishError};
use crate::actors::rpc_waiter::Forget;
use crate::broker::messages::Reply;

/// Sends `body` as a request of `kind` and waits for the reply. A timeout is a
/// 504 whose message says whether the request may still be applied (writes
/// wait in `writeQ` for a master).
pub async fn call(
    state: &AppState,
    kind: Kind,
    body: Vec<u8>,
    min_seq: Option<u64>,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let (reply, mut rx) = oneshot::channel();
    let mut publish = std::pin::pin!(state.dispatcher.send(Publish {
        request: Outbound {
            kind,
            correlation_id: correlation_id.clone(),
            body,
            min_seq,
            expires_after: state.timeout,
            request_id: request_id.to_string(),
        },
        reply,
    }));
    // The reply can come before the broker's confirm of the request (for a
    // write the confirm waits for RabbitMQ's disk): a reply means a worker took
    // the request, so it is the answer either way.
    let early = tokio::select! {
        published = &mut publish => {
            published_ok(published)?;
            None
        }
        reply = &mut rx => Some(reply),
    };
    match early {
        Some(Ok(reply)) => return Ok(reply),
        // The dispatcher dropped the reply slot: it refused or failed to publish.
        Some(Err(_)) => {
            published_ok(publish.await)?;
            return Err(ApiError::internal("reply channel closed"));
        }
        None => {}
    }
    match tokio::time::timeout(state.timeout, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Err(ApiError::internal("reply channel closed")),
        Err(_) => {
            state.waiter.do_send(Forget { correlation_id });
            crate::prometheus::rpc_timeout(kind_label(kind));
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                timeout_message(kind, state.timeout),
            ))
        }
    }
}

fn published_ok(
    published: Result<Result<(), PublishError>, actix::MailboxError>,
) -> Result<(), ApiError> {
    match published {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ PublishError::Unservable(_))) => Err(ApiError::bad_request(e.to_string())),
        Ok(Err(e)) => Err(ApiError::unavailable(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Write => "write",
        Kind::Read(crate::db::Consistency::Strong) => "strong_read",
        Kind::Read(crate::db::Consistency::Eventual) => "read",
    }
}

fn timeout_message(kind: Kind, timeout: Duration) -> String {
    if kind == Kind::Write {
        format!("no master answered within {timeout:?}; the write is queued in writeQ and will be applied once, when a master takes it")
    } else {
        format!("no worker answered within {timeout:?}")
    }
}

/// Maps a worker's error reply to the HTTP error it stands for.
pub fn worker_error(status: u16, error: String) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error,
    )
}
