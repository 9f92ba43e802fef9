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
//! Both rules are I/O-free and unit-tested with fakes: how deliveries become
//! batches in [`intake`], how batches are answered in [`answer`]. Their lapin
//! sides are `lapin_inbox` and `lapin_outbox`; this file wires them and
//! commits and publishes a batch.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

mod answer;
mod intake;
mod lapin_inbox;
mod lapin_outbox;
mod quarantine;

use super::fence::Fence;
use super::WorkerState;
use crate::broker::messages::{Reply, SyncMessage, WriteMessage};
use crate::broker::{self, dead, SYNC_Q};
use crate::db::{Commit, DbError, Failure};
use answer::Committed;
use intake::{Committer, Stopped};
use lapin_inbox::LapinInbox;
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
    let mut inbox = LapinInbox::open(conn, state.pid).await?;
    let mut log = LapinCommitter {
        state,
        sync,
        epoch,
        limit,
    };
    let stopped = tokio::select! {
        biased;
        ended = &mut answering => return Err(answering_ended(ended)),
        stopped = intake::run(&mut inbox, &mut log, &committed, limit) => stopped,
    };
    match stopped {
        Stopped::AnsweringEnded => Err(answering_ended(answering.await)),
        Stopped::Failed(e) => Err(e),
    }
}

/// Commits and publishes for the intake rule: SQLite through the replica,
/// entries and quarantined writes through lapin.
struct LapinCommitter {
    state: WorkerState,
    sync: Channel,
    epoch: u64,
    limit: u64,
}

impl Committer<Delivery> for LapinCommitter {
    fn commit(
        &mut self,
        deliveries: Vec<Delivery>,
    ) -> BoxFuture<'_, anyhow::Result<Committed<Delivery>>> {
        Box::pin(commit_and_publish(
            &self.state,
            &self.sync,
            self.epoch,
            self.limit,
            deliveries,
        ))
    }
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
