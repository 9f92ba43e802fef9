//! The master's write service: consumes `writeQ` one message at a time (so the
//! commit order is the sequence order), commits, publishes the entry on `syncQ`
//! and waits for the broker's confirm, then answers and only then acks. A write
//! redelivered after a crash is recognised by its write id and not applied twice.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tracing::{debug, warn};

use super::WorkerState;
use crate::broker::messages::{ErrorReply, Reply, SyncMessage, WriteMessage};
use crate::broker::{self, SYNC_Q, WRITE_Q};
use crate::db::Commit;

const PREFETCH: u16 = 64;
const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// Consumes `writeQ` until the consumer ends or publishing to `syncQ` fails; either
/// way the error is returned and the worker stops (a write committed here but not
/// published must not be answered from this copy again).
pub async fn run(conn: &Connection, state: WorkerState, epoch: u64) -> anyhow::Result<()> {
    let channel = broker::consumer_channel(conn, PREFETCH).await?;
    let sync = broker::confirmed_channel(conn).await?;
    let replies = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            WRITE_Q.into(),
            format!("writes-{}", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
        let reply = match serde_json::from_slice::<WriteMessage>(&delivery.data) {
            Err(e) => Reply::Error(ErrorReply::bad_request(e.to_string())),
            Ok(msg) => match state.replica.commit(msg.write_id, epoch, msg.request).await {
                Ok(Commit::New(entry, outcome)) => {
                    let seq = entry.seq;
                    let body = serde_json::to_vec(&SyncMessage::Entry(entry))?;
                    broker::publish_confirmed(
                        &sync,
                        SYNC_Q,
                        &body,
                        BasicProperties::default(),
                        CONFIRM_PATIENCE,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("publishing seq {seq} on syncQ: {e}"))?;
                    debug!(seq, request_id, "committed and published");
                    Reply::Write(outcome)
                }
                Ok(Commit::Duplicate(outcome)) => {
                    debug!(
                        seq = outcome.seq,
                        "redelivered write answered from its first outcome"
                    );
                    Reply::Write(outcome)
                }
                Err(e) => Reply::Error(e.into()),
            },
        };
        if let Err(e) = broker::reply(&replies, &delivery.properties, &reply).await {
            warn!(error = %e, "could not send write reply");
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Err(anyhow::anyhow!("writeQ consumer ended"))
}
