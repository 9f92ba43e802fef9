//! Reads the `syncQ` stream and applies it to this worker's copy, strictly in
//! sequence order. Every worker runs this, master included: a master ignores its
//! own entries (duplicates), and a master that sees a newer master's barrier
//! knows it has been replaced and stops.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::Connection;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::WorkerState;
use crate::broker::messages::SyncMessage;
use crate::broker::{self, StreamOffset, SYNC_Q};
use crate::coord::Role;
use crate::db::{LogEntry, SyncApplied};

/// Why the sync loop stopped; every reason ends the worker (crash-only: the
/// supervisor starts a fresh replica).
#[derive(Debug, thiserror::Error)]
pub enum SyncStop {
    #[error("syncQ consumer ended")]
    Ended,
    #[error("replica missing entries: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("replica diverged: {0}")]
    Diverged(String),
    #[error("a newer master (pid {pid}, epoch {epoch}) took over")]
    Superseded { pid: u32, epoch: u64 },
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

impl SyncStop {
    /// The copy cannot follow the log from where it is (entries it needs are
    /// gone, e.g. out of `syncQ`'s retention, or it disagrees with the log): it
    /// must be replaced by a snapshot, not resumed.
    pub fn copy_unusable(&self) -> bool {
        matches!(self, SyncStop::Gap { .. } | SyncStop::Diverged(_))
    }
}

/// Whether the barrier of (`pid`, `epoch`) means this worker (`me`, leading
/// or about to lead with `role`, its copy at `current` epoch) has been
/// replaced: another worker's barrier of a newer epoch. A barrier of an
/// older or the same epoch is history replayed; a slave just follows.
pub fn superseded_by(me: u32, role: Role, current: u64, pid: u32, epoch: u64) -> bool {
    pid != me && matches!(role, Role::Master | Role::Promoting) && epoch > current
}

/// Reads `syncQ` from `from` and applies it; `position` is moved to the
/// offset after each batch processed (this loop is its only writer).
pub async fn run(
    conn: &Connection,
    state: WorkerState,
    from: StreamOffset,
    position: &watch::Sender<u64>,
) -> SyncStop {
    match consume(conn, &state, from, position).await {
        Ok(()) => SyncStop::Ended,
        Err(e) => e,
    }
}

/// How long a worker waits for `syncQ` to have a running replica on its node.
const REPLICA_PATIENCE: Duration = Duration::from_secs(30);

/// A consumer of `syncQ` from `from` (and the channel it lives on). On a
/// cluster, a node's stream replica is restarted by RabbitMQ's stream
/// coordinator after the stream's leader moves (a node lost or cut off);
/// until then consuming there is refused (406 `does not have a replica on the
/// local node`). That is waited out, with backoff, for up to
/// [`REPLICA_PATIENCE`], rather than ending the worker.
async fn subscribe(
    conn: &Connection,
    state: &WorkerState,
    from: StreamOffset,
) -> Result<(lapin::Channel, lapin::Consumer), SyncStop> {
    let deadline = tokio::time::Instant::now() + REPLICA_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        // A refusal closes the channel: each attempt has its own.
        let channel = broker::consumer_channel(conn, 512).await?;
        match channel
            .basic_consume(
                SYNC_Q.into(),
                format!("sync-{}", state.pid).into(),
                BasicConsumeOptions::default(),
                broker::stream_offset(from),
            )
            .await
        {
            Ok(consumer) => return Ok((channel, consumer)),
            Err(e)
                if broker::is_precondition_failed(&e)
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                warn!(error = %e, "syncQ has no running replica on this RabbitMQ node yet (its leader moved): waiting");
                tokio::time::sleep(crate::backoff::jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn consume(
    conn: &Connection,
    state: &WorkerState,
    from: StreamOffset,
    position: &watch::Sender<u64>,
) -> Result<(), SyncStop> {
    let (_channel, mut consumer) = subscribe(conn, state, from).await?;
    info!(pid = state.pid, ?from, "reading syncQ");
    while let Some(first) = consumer.next().await {
        // Every message already delivered, up to a bound: consecutive entries
        // are applied in one transaction on the store thread, and the whole
        // run is acked at once (`multiple`), instead of one hop and one ack
        // per entry.
        let mut deliveries = vec![first?];
        while deliveries.len() < APPLY_BATCH {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => deliveries.push(delivery?),
                _ => break,
            }
        }
        let mut entries = Vec::new();
        for delivery in &deliveries {
            match serde_json::from_slice::<SyncMessage>(&delivery.data) {
                Ok(SyncMessage::Entry(entry)) => entries.push(entry),
                Ok(other) => {
                    apply(state, std::mem::take(&mut entries)).await?;
                    observe(state, other).await?;
                }
                Err(e) => warn!(error = %e, "skipping unreadable syncQ message"),
            }
        }
        apply(state, entries).await?;
        let Some(last) = deliveries.last() else {
            continue;
        };
        if let Some(offset) = broker::delivery_stream_offset(&last.properties) {
            position.send_replace(offset + 1);
        }
        last.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(())
}

/// `syncQ` messages applied together at most.
const APPLY_BATCH: usize = 256;

/// Applies consecutive entries in one transaction; a gap or a failure ends
/// the sync (the copy cannot follow the log from here).
async fn apply(state: &WorkerState, entries: Vec<LogEntry>) -> Result<(), SyncStop> {
    if entries.is_empty() {
        return Ok(());
    }
    let seqs: Vec<(u64, u64)> = entries.iter().map(|e| (e.seq, e.epoch)).collect();
    let outcomes = state
        .replica
        .apply_sync_batch(entries)
        .await
        .map_err(|e| SyncStop::Diverged(e.to_string()))?;
    for ((seq, epoch), outcome) in seqs.into_iter().zip(outcomes) {
        match outcome {
            SyncApplied::Applied => debug!(seq, "applied"),
            SyncApplied::Duplicate => {}
            SyncApplied::Stale => warn!(seq, epoch, "ignored entry from a replaced master"),
            SyncApplied::Gap { expected } => return Err(SyncStop::Gap { expected, got: seq }),
        }
    }
    Ok(())
}

/// A barrier (a master taking over) or a marker (a worker's own, read back).
async fn observe(state: &WorkerState, message: SyncMessage) -> Result<(), SyncStop> {
    match message {
        SyncMessage::Entry(_) => {}
        SyncMessage::Barrier { epoch, pid, nonce } => {
            let current = state.replica.epoch().await.unwrap_or(0);
            let role = state.role.get();
            if superseded_by(state.pid, role, current, pid, epoch) {
                return Err(SyncStop::Superseded { pid, epoch });
            }
            match state.replica.observe_epoch(epoch).await {
                Ok(true) => info!(epoch, master = pid, "new master's barrier"),
                Ok(false) => warn!(epoch, master = pid, "ignored barrier of an old epoch"),
                Err(e) => error!(error = %e, "recording epoch failed"),
            }
            state.marks_seen.record(nonce);
        }
        SyncMessage::Marker { pid, nonce } => {
            if pid == state.pid {
                state.marks_seen.record(nonce);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_workers_newer_barrier_supersedes_a_master() {
        for role in [Role::Master, Role::Promoting] {
            assert!(superseded_by(7, role, 3, 9, 4), "{role:?}: newer epoch");
            assert!(
                !superseded_by(7, role, 3, 9, 3),
                "{role:?}: same epoch, replayed"
            );
            assert!(
                !superseded_by(7, role, 3, 9, 2),
                "{role:?}: older epoch, replayed"
            );
            assert!(
                !superseded_by(7, role, 3, 7, 4),
                "{role:?}: its own barrier"
            );
        }
    }

    #[test]
    fn a_slave_is_never_superseded() {
        for role in [Role::Slave, Role::Joining] {
            assert!(!superseded_by(7, role, 3, 9, 4), "{role:?}");
        }
    }
}
