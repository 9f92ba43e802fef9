//! The master's write service, with group commit: it takes every write already
//! delivered from `writeQ` (up to [`MAX_BATCH`], never waiting for more), commits
//! them in one SQLite transaction (each in its own savepoint, in delivery order,
//! which is the sequence order), publishes their entries on `syncQ` pipelined and
//! waits for all the broker's confirms, then answers and acks each. A write
//! redelivered after a crash is recognised by its write id and not applied twice.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tracing::{debug, warn};

use super::WorkerState;
use crate::broker::messages::{ErrorReply, Reply, SyncMessage, WriteMessage};
use crate::broker::{self, SYNC_Q, WRITE_Q};
use crate::coord::{self, MasterInfo};
use crate::db::Commit;
use zookeeper_client as zk;

/// Writes committed together at most; also the prefetch on `writeQ`.
pub const MAX_BATCH: usize = 64;
const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// Consumes `writeQ` until the consumer ends or publishing to `syncQ` fails; either
/// way the error is returned and the worker stops (a write committed here but not
/// published must not be answered from this copy again).
pub async fn run(
    conn: &Connection,
    zk: &zk::Client,
    state: WorkerState,
    epoch: u64,
) -> anyhow::Result<()> {
    let channel = broker::consumer_channel(conn, MAX_BATCH as u16).await?;
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
    while let Some(first) = consumer.next().await {
        let mut batch = vec![first?];
        while batch.len() < MAX_BATCH {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                _ => break,
            }
        }
        // Parse; unreadable messages are answered with 400 and take no part.
        let mut replies_out: Vec<Option<Reply>> = Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        for delivery in &batch {
            match serde_json::from_slice::<WriteMessage>(&delivery.data) {
                Ok(msg) => {
                    writes.push((msg.write_id, msg.request));
                    replies_out.push(None);
                }
                Err(e) => {
                    replies_out.push(Some(Reply::Error(ErrorReply::bad_request(e.to_string()))))
                }
            }
        }
        let results = state.replica.commit_batch(epoch, writes).await?;

        // Publish every new entry, then wait for all the confirms together.
        let mut confirms = Vec::new();
        let mut last_seq = 0;
        for result in &results {
            if let Ok(Commit::New(entry, _)) = result {
                last_seq = entry.seq;
                let body = serde_json::to_vec(&SyncMessage::Entry(entry.clone()))?;
                let props = BasicProperties::default().with_delivery_mode(2);
                confirms.push(
                    sync.basic_publish(
                        "".into(),
                        SYNC_Q.into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?,
                );
            }
        }
        let published = confirms.len();
        let confirmed =
            tokio::time::timeout(CONFIRM_PATIENCE, futures_util::future::join_all(confirms))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no confirm from the broker for syncQ within {CONFIRM_PATIENCE:?}"
                    )
                })?;
        for c in confirmed {
            let c = c?;
            if !c.is_ack() {
                return Err(anyhow::anyhow!(
                    "broker refused a syncQ entry (batch up to seq {last_seq}): {c:?}"
                ));
            }
        }
        if published > 0 {
            debug!(
                batch = batch.len(),
                published, last_seq, "group committed and published"
            );
        }
        // Fencing: answer and ack only while still the master of this epoch. A
        // master that was paused past its session and replaced stops here, so
        // its writes go back to writeQ for the new master (its entries, of an
        // old epoch, are ignored by replicas that saw the new master's barrier).
        still_master(zk, state.pid, epoch).await?;

        let mut results = results.into_iter();
        for (delivery, reply) in batch.iter().zip(replies_out) {
            let reply = match reply {
                Some(r) => r,
                None => match results.next() {
                    Some(Ok(Commit::New(_, outcome))) | Some(Ok(Commit::Duplicate(outcome))) => {
                        Reply::Write(outcome)
                    }
                    Some(Err(e)) => Reply::Error(e.into()),
                    None => Reply::Error(ErrorReply {
                        status: 500,
                        error: "missing batch result".into(),
                    }),
                },
            };
            let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
            debug!(request_id, "write answered");
            if let Err(e) = broker::reply(&replies, &delivery.properties, &reply).await {
                warn!(error = %e, "could not send write reply");
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    Err(anyhow::anyhow!("writeQ consumer ended"))
}

/// Fails unless the master znode still names this worker and epoch.
async fn still_master(zk: &zk::Client, pid: u32, epoch: u64) -> anyhow::Result<()> {
    match coord::master(zk).await {
        Ok(Some(MasterInfo { pid: p, epoch: e })) if p == pid && e == epoch => Ok(()),
        Ok(other) => Err(anyhow::anyhow!(
            "no longer master (master znode: {other:?}); not acknowledging"
        )),
        Err(e) => Err(anyhow::anyhow!(
            "cannot confirm leadership with ZooKeeper ({e}); not acknowledging"
        )),
    }
}
