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
//!
//! Poison writes ([`quarantine`]): a new master first takes `writeQ` one
//! delivery at a time, for as long as the deliveries are suspects (writes that
//! came back unanswered more than once), and switches to batches at the first
//! delivery that is not. A delivery that came back as often as the limit is
//! not applied: it is published to `writeQ.dead` (confirmed with the batch's
//! `syncQ` entries) and answered with an error in its place in the batch.
//!
//! The answering rule itself is I/O-free in [`answer`] (unit-tested with
//! fakes); this file is the lapin side: consuming, committing, publishing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

mod answer;
mod lapin_outbox;
mod quarantine;

use super::fence::Fence;
use super::WorkerState;
use crate::broker::messages::{Reply, SyncMessage, WriteMessage};
use crate::broker::{self, dead, SYNC_Q, WRITE_Q};
use crate::db::{Commit, DbError, Failure};
use answer::Committed;
use lapin_outbox::{confirmation, LapinOutbox};
use quarantine::Verdict;

/// Writes committed together at most.
pub const MAX_BATCH: usize = 64;
/// Committed batches waiting to be answered, at most; with [`MAX_BATCH`] this
/// bounds the writes delivered and unacknowledged (the prefetch on `writeQ`).
pub const IN_FLIGHT: usize = 4;
const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

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
    acked: Arc<watch::Sender<u64>>,
) -> anyhow::Result<()> {
    let sync = broker::confirmed_channel(conn).await?;
    let replies = conn.create_channel().await?;
    let (committed, to_answer) = mpsc::channel(IN_FLIGHT);
    let mut answering = tokio::spawn(answer::run(
        to_answer,
        fence,
        LapinOutbox(replies),
        acked,
        CONFIRM_PATIENCE,
    ));
    let limit = dead::write_delivery_limit();

    // One at a time while the deliveries are suspects: a write that kills this
    // master takes nothing else back to writeQ with it. The channel stays open
    // (dropping it would close it) until its last delivery is acked.
    let careful = broker::consumer_channel(conn, 1).await?;
    let mut one_by_one = careful
        .basic_consume(
            WRITE_Q.into(),
            format!("writes-{}-careful", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            biased;
            ended = &mut answering => return Err(answering_ended(ended)),
            next = one_by_one.next() => next,
        };
        let Some(delivery) = delivery else {
            return Err(anyhow::anyhow!("writeQ consumer ended"));
        };
        let delivery = delivery?;
        let count = dead::delivery_count(&delivery.properties);
        let verdict = quarantine::verdict(count, limit);
        if verdict == Verdict::Apply {
            // Not a suspect: no further delivery comes to this consumer (the
            // one in hand is still answered and acked on its channel).
            careful
                .basic_cancel(one_by_one.tag(), BasicCancelOptions::default())
                .await?;
        } else if verdict == Verdict::Suspect {
            info!(
                count,
                "a write that came back unanswered: applying it alone"
            );
        }
        let batch = commit_and_publish(&state, &sync, epoch, limit, vec![delivery]).await?;
        if committed.send(batch).await.is_err() {
            return Err(answering_ended(answering.await));
        }
        if verdict == Verdict::Apply {
            break;
        }
    }

    let channel = broker::consumer_channel(conn, (MAX_BATCH * IN_FLIGHT) as u16).await?;
    let mut consumer = channel
        .basic_consume(
            WRITE_Q.into(),
            format!("writes-{}", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
        let batch = commit_and_publish(&state, &sync, epoch, limit, deliveries).await?;
        if committed.send(batch).await.is_err() {
            return Err(answering_ended(answering.await));
        }
    }
    drop(careful);
    Err(anyhow::anyhow!("writeQ consumer ended"))
}

/// Quarantines the deliveries that came back `limit` times, parses and commits
/// the others in one transaction, and publishes the new entries on `syncQ`
/// (without waiting for the confirms; the quarantined writes' publishes to
/// `writeQ.dead` are confirmed with them).
async fn commit_and_publish(
    state: &WorkerState,
    sync: &Channel,
    epoch: u64,
    limit: u64,
    deliveries: Vec<Delivery>,
) -> anyhow::Result<Committed<Delivery>> {
    // Quarantined and unreadable messages are answered with an error and take no part.
    let mut parsed: Vec<Option<Reply>> = Vec::with_capacity(deliveries.len());
    let mut writes = Vec::new();
    let mut confirms = Vec::new();
    for delivery in &deliveries {
        let count = dead::delivery_count(&delivery.properties);
        if quarantine::verdict(count, limit) == Verdict::Quarantine {
            let write_id = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|v| v["write_id"].as_str().map(String::from));
            warn!(
                write_id = write_id.as_deref().unwrap_or("?"),
                count,
                request_id = broker::request_id(&delivery.properties).unwrap_or_default(),
                "quarantining a write that came back unanswered {count} times: to writeQ.dead"
            );
            confirms.push(confirmation(
                quarantine::publish(sync, delivery, count, state.pid).await?,
            ));
            parsed.push(Some(quarantine::refusal(write_id.as_deref(), count)));
            continue;
        }
        match serde_json::from_slice::<WriteMessage>(&delivery.data) {
            Ok(msg) => {
                writes.push((msg.write_id, msg.request));
                parsed.push(None);
            }
            Err(e) => parsed.push(Some(Reply::Error(Failure::bad_request(e.to_string())))),
        }
    }
    let results = if writes.is_empty() {
        Vec::new()
    } else {
        state.replica.commit_batch(epoch, writes).await?
    };

    let mut last_seq = 0;
    for result in &results {
        if let Ok(Commit::New(entry, _)) = result {
            last_seq = entry.seq;
            let body = serde_json::to_vec(&SyncMessage::Entry(entry.clone()))?;
            let props = BasicProperties::default().with_delivery_mode(2);
            confirms.push(confirmation(
                sync.basic_publish(
                    "".into(),
                    SYNC_Q.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            ));
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
        None => Reply::Error(Failure::internal("missing batch result")),
    }
}

fn answering_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Err(e)) => e,
        Ok(Ok(())) => anyhow::anyhow!("the write answering task ended"),
        Err(e) => anyhow::anyhow!("the write answering task failed: {e}"),
    }
}
