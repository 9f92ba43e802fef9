//! The master's write service, with group commit: it takes every write already
//! delivered from `writeQ` (up to [`MAX_BATCH`], never waiting for more), commits
//! them in one SQLite transaction (each in its own savepoint, in delivery order,
//! which is the sequence order) and publishes their entries on `syncQ`
//! pipelined. A second task answers the batches in order: it waits for a batch's
//! confirms from the broker, checks with ZooKeeper that this worker is still the
//! master of its epoch (fencing), then sends the replies and acks the batch
//! (batches that are ready together are answered together).
//! Batches overlap: the next one is committed and published while the earlier
//! ones wait for their confirms ([`IN_FLIGHT`] at most). A write redelivered
//! after a crash is recognised by its write id and not applied twice.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::fence::Fence;
use super::WorkerState;
use crate::broker::messages::{ErrorReply, Reply, SyncMessage, WriteMessage};
use crate::broker::{self, SYNC_Q, WRITE_Q};
use crate::db::{Commit, DbError};

/// Writes committed together at most.
pub const MAX_BATCH: usize = 64;
/// Committed batches waiting to be answered, at most; with [`MAX_BATCH`] this
/// bounds the writes delivered and unacknowledged (the prefetch on `writeQ`).
pub const IN_FLIGHT: usize = 4;
const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// A batch committed and published, not yet answered.
struct Committed {
    deliveries: Vec<Delivery>,
    replies: Vec<Reply>,
    confirms: Vec<PublisherConfirm>,
    last_seq: u64,
}

/// Consumes `writeQ` until the consumer ends, publishing to `syncQ` fails or
/// this worker is no longer the master; either way the error is returned and the
/// worker stops (a write committed here but not published must not be answered
/// from this copy again). `acked` is raised to the last sequence number
/// answered, once its entry is confirmed on `syncQ` and the fence has passed:
/// state up to it is acknowledged, so strong reads may show it.
pub async fn run(
    conn: &Connection,
    state: WorkerState,
    epoch: u64,
    fence: Fence,
    acked: watch::Sender<u64>,
) -> anyhow::Result<()> {
    let channel = broker::consumer_channel(conn, (MAX_BATCH * IN_FLIGHT) as u16).await?;
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
    let (committed, to_answer) = mpsc::channel(IN_FLIGHT);
    let mut answering = tokio::spawn(answer(to_answer, fence, replies, acked));
    loop {
        let first = tokio::select! {
            biased;
            ended = &mut answering => return Err(answering_ended(ended)),
            first = consumer.next() => first,
        };
        let Some(first) = first else { break };
        let mut deliveries = vec![first?];
        while deliveries.len() < MAX_BATCH {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => deliveries.push(delivery?),
                _ => break,
            }
        }
        let batch = commit_and_publish(&state, &sync, epoch, deliveries).await?;
        if committed.send(batch).await.is_err() {
            return Err(answering_ended(answering.await));
        }
    }
    Err(anyhow::anyhow!("writeQ consumer ended"))
}

/// Parses, commits in one transaction, and publishes the new entries on `syncQ`
/// (without waiting for the confirms).
async fn commit_and_publish(
    state: &WorkerState,
    sync: &Channel,
    epoch: u64,
    deliveries: Vec<Delivery>,
) -> anyhow::Result<Committed> {
    // Unreadable messages are answered with 400 and take no part.
    let mut parsed: Vec<Option<Reply>> = Vec::with_capacity(deliveries.len());
    let mut writes = Vec::new();
    for delivery in &deliveries {
        match serde_json::from_slice::<WriteMessage>(&delivery.data) {
            Ok(msg) => {
                writes.push((msg.write_id, msg.request));
                parsed.push(None);
            }
            Err(e) => parsed.push(Some(Reply::Error(ErrorReply::bad_request(e.to_string())))),
        }
    }
    let results = state.replica.commit_batch(epoch, writes).await?;

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
    if !confirms.is_empty() {
        debug!(
            batch = deliveries.len(),
            published = confirms.len(),
            last_seq,
            "group committed and published"
        );
    }
    let mut results = results.into_iter();
    let replies = parsed
        .into_iter()
        .map(|reply| reply.unwrap_or_else(|| reply_for(results.next())))
        .collect();
    Ok(Committed {
        deliveries,
        replies,
        confirms,
        last_seq,
    })
}

fn reply_for(result: Option<Result<Commit, DbError>>) -> Reply {
    match result {
        Some(Ok(Commit::New(_, outcome))) | Some(Ok(Commit::Duplicate(outcome))) => {
            Reply::Write(outcome)
        }
        Some(Err(e)) => Reply::Error(e.into()),
        None => Reply::Error(ErrorReply {
            status: 500,
            error: "missing batch result".into(),
        }),
    }
}

/// Answers the committed batches in order; returns at the first batch it may not
/// answer (then nothing after it is answered or acked either). Batches that are
/// waiting together are answered together: one fencing check for all of them.
async fn answer(
    mut batches: mpsc::Receiver<Committed>,
    fence: Fence,
    replies: Channel,
    acked: watch::Sender<u64>,
) -> anyhow::Result<()> {
    while let Some(first) = batches.recv().await {
        let mut group = vec![first];
        while let Ok(next) = batches.try_recv() {
            group.push(next);
        }
        let last_seq = group.iter().map(|b| b.last_seq).max().unwrap_or(0);
        let confirms = group
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.confirms));
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
                    "broker refused a syncQ entry (batches up to seq {last_seq}): {c:?}"
                ));
            }
        }
        // Fencing: answer and ack only while still the master of this epoch. A
        // master that was paused past its session and replaced stops here, so
        // its writes go back to writeQ for the new master (its entries, of an
        // old epoch, are ignored by replicas that saw the new master's barrier).
        fence
            .check()
            .await
            .map_err(|why| anyhow::anyhow!("{why}; not acknowledging"))?;

        let sent = group
            .iter()
            .flat_map(|b| b.deliveries.iter().zip(&b.replies))
            .map(|(delivery, reply)| {
                let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
                debug!(request_id, "write answered");
                broker::reply(&replies, &delivery.properties, reply)
            });
        for outcome in futures_util::future::join_all(sent).await {
            if let Err(e) = outcome {
                warn!(error = %e, "could not send write reply");
            }
        }
        // Earlier batches are acked already: this acks exactly this group.
        if let Some(last) = group.last().and_then(|b| b.deliveries.last()) {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        acked.send_if_modified(|a| {
            let raised = last_seq > *a;
            *a = (*a).max(last_seq);
            raised
        });
    }
    Ok(())
}

fn answering_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Err(e)) => e,
        Ok(Ok(())) => anyhow::anyhow!("the write answering task ended"),
        Err(e) => anyhow::anyhow!("the write answering task failed: {e}"),
    }
}
