//! The read service: a slave consumes `readQ` together with the other slaves
//! (RabbitMQ hands out deliveries round-robin); the master consumes
//! `readQ.master` (strong reads). The consumer runs on the store thread, so each
//! read runs in place on this replica; it is answered on the request's
//! `reply_to` queue with its correlation id.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::{debug, warn};

use super::WorkerState;
use crate::broker;
use crate::broker::messages::{ErrorReply, ReadMessage, Reply};

/// Deliveries in flight per slave; also how many reads it runs at once.
const PREFETCH: u16 = 32;

/// Starts consuming `queue`; the returned channel is closed to stop (unacked
/// reads go back to the queue for another worker).
pub async fn start(
    conn: &Connection,
    queue: &str,
    state: WorkerState,
    read_wait: Duration,
) -> lapin::Result<Channel> {
    let channel = broker::consumer_channel(conn, PREFETCH).await?;
    let replies = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("{queue}-{}", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // On the store thread: each read runs where the connection lives.
    let replica = state.replica.clone();
    replica.spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let state = state.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
                let reply = answer(&state, &delivery.data, read_wait).await;
                debug!(
                    request_id,
                    ok = !matches!(reply, Reply::Error(_)),
                    "served read"
                );
                if let Err(e) = broker::reply(&replies, &delivery.properties, &reply).await {
                    warn!(error = %e, "could not send read reply");
                }
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    warn!(error = %e, "could not ack read");
                }
            });
        }
    });
    Ok(channel)
}

async fn answer(state: &WorkerState, body: &[u8], read_wait: Duration) -> Reply {
    let message: ReadMessage = match serde_json::from_slice(body) {
        Ok(m) => m,
        Err(e) => return Reply::Error(ErrorReply::bad_request(e.to_string())),
    };
    if let Some(min) = message.request.min_seq {
        if !state.replica.wait_for_seq(min, read_wait).await {
            return Reply::Error(ErrorReply {
                status: 503,
                error: format!(
                    "replica {} has applied seq {} and did not reach {min} within {read_wait:?}",
                    state.pid,
                    state.replica.seq()
                ),
            });
        }
    }
    let outcome = state.replica.read(message.request).await.map(|mut o| {
        o.worker = Some(state.pid);
        o
    });
    Reply::from_read(outcome)
}
