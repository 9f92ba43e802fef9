//! Catch-up by snapshot. A joining replica asks on `snapshotQ` for a copy of the
//! data; any caught-up worker answers with an SQLite online backup of its copy
//! and the `syncQ` stream offset to resume from. The joiner then reads the
//! stream from that offset only: joining costs the size of the data, not the
//! length of the write history. With no one to answer (the first workers), the
//! joiner reads the stream from the start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::WorkerState;
use crate::broker::{self, SNAPSHOT_Q};
use crate::coord::Role;

const SEQ: &str = "x-dbaas-seq";
const OFFSET: &str = "x-dbaas-offset";

/// A snapshot written to disk, and where to resume the stream after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub resume_offset: u64,
    pub bytes: usize,
}

fn header(props: &BasicProperties, key: &str) -> Option<u64> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))?
    {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Asks for a snapshot and writes it to `dest`; `None` if nobody answered
/// within `patience`.
pub async fn fetch(
    conn: &Connection,
    dest: &Path,
    patience: Duration,
) -> anyhow::Result<Option<Snapshot>> {
    let channel = conn.create_channel().await?;
    let reply_q = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            reply_q.name().clone(),
            "snapshot-reply".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let id = uuid::Uuid::new_v4().to_string();
    channel
        .basic_publish(
            "".into(),
            SNAPSHOT_Q.into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default()
                .with_reply_to(reply_q.name().clone())
                .with_correlation_id(id.clone().into())
                .with_expiration(patience.as_millis().to_string().into()),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + patience;
    let outcome = loop {
        let next = match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) | Ok(None) => break None,
            Ok(Some(d)) => d?,
        };
        if next
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str())
            != Some(id.as_str())
        {
            continue;
        }
        let (Some(seq), Some(resume_offset)) = (
            header(&next.properties, SEQ),
            header(&next.properties, OFFSET),
        ) else {
            warn!("snapshot reply without seq/offset headers; ignoring it");
            break None;
        };
        tokio::fs::write(dest, &next.data).await?;
        break Some(Snapshot {
            seq,
            resume_offset,
            bytes: next.data.len(),
        });
    };
    let _ = channel.close(200, "snapshot fetched".into()).await;
    Ok(outcome)
}

/// How long a master waits for its snapshot's seq to be confirmed on `syncQ`.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// Resolves once every write in a backup at `seq` is on `syncQ` for good. A
/// slave's copy holds only what it read from the log; a master's may hold
/// commits still waiting for the broker's confirm (and which a deposed master
/// never gets): a joiner must not start from those, so the master answers only
/// once they are confirmed and answered. The role is read after the backup: a
/// worker not yet master then held nothing but the log (the master's
/// confirmed seq starts at what it read from the log).
async fn confirmed(state: &WorkerState, seq: u64) -> anyhow::Result<()> {
    if *state.role.borrow() != Role::Master {
        return Ok(());
    }
    let mut confirmed = state.confirmed.subscribe();
    let waited = tokio::time::timeout(CONFIRM_PATIENCE, confirmed.wait_for(|c| *c >= seq))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        _ => Err(anyhow::anyhow!(
            "seq {seq} not confirmed on syncQ within {CONFIRM_PATIENCE:?}: not served"
        )),
    }
}

/// Answers snapshot requests from this (caught-up) replica until the channel
/// ends; a master answers only at a seq confirmed on `syncQ`.
pub async fn serve(
    conn: &Connection,
    state: WorkerState,
    scratch: PathBuf,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let channel = broker::consumer_channel(conn, 1).await?;
    let mut requests = channel
        .basic_consume(
            SNAPSHOT_Q.into(),
            format!("snapshot-{}", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (alive, ended) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // Dropped when the loop ends: the worker hears of it.
        let _alive = alive;
        while let Some(Ok(request)) = requests.next().await {
            let Some(reply_to) = request.properties.reply_to().clone() else {
                let _ = request.ack(BasicAckOptions::default()).await;
                continue;
            };
            // The stream position first: everything after the backup's seq is
            // published after it, so resuming here misses nothing.
            let resume_offset = state.stream_next.load(std::sync::atomic::Ordering::SeqCst);
            let path = scratch.join(format!("snapshot-{}.sqlite", uuid::Uuid::new_v4()));
            let started = std::time::Instant::now();
            let result = match state.replica.backup_to(path.clone()).await {
                Ok((seq, _)) => match confirmed(&state, seq).await {
                    Ok(()) => tokio::fs::read(&path)
                        .await
                        .map(|bytes| (seq, bytes))
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            };
            let _ = tokio::fs::remove_file(&path).await;
            match result {
                Ok((seq, bytes)) => {
                    let mut headers = FieldTable::default();
                    headers.insert(SEQ.into(), AMQPValue::LongLongInt(seq as i64));
                    headers.insert(OFFSET.into(), AMQPValue::LongLongInt(resume_offset as i64));
                    let mut props = BasicProperties::default().with_headers(headers);
                    if let Some(id) = request.properties.correlation_id() {
                        props = props.with_correlation_id(id.clone());
                    }
                    let sent = channel
                        .basic_publish(
                            "".into(),
                            reply_to,
                            BasicPublishOptions::default(),
                            &bytes,
                            props,
                        )
                        .await;
                    info!(seq, resume_offset, bytes = bytes.len(), took = ?started.elapsed(), ok = sent.is_ok(), "served a snapshot");
                }
                Err(e) => warn!(error = %e, "could not take a snapshot"),
            }
            let _ = request.ack(BasicAckOptions::default()).await;
        }
    });
    Ok(ended)
}
