//! The joiner side. One attempt ([`fetch_once`]): a private reply queue, a
//! request on `snapshotQ`, then the frames of one source, each chunk written
//! to the slot's incoming file as it arrives (at most [`IN_FLIGHT`] chunks
//! unacknowledged, so memory stays flat) and hashed on the way. The file is
//! renamed into place only after the size, the digest and (with a secret) the
//! MAC check out and SQLite's `quick_check` passes on it; on any other path it
//! is removed. A source that stops sending for [`Settings::idle`], fails,
//! or sends something that does not check out ends the attempt with an error.
//!
//! [`fetch_with_retries`] asks again, with a short backoff, until a transfer
//! checks out: requests go round-robin among the slaves, so a retry usually
//! reaches another source when there is one. It gives up only at its
//! deadline, and then with an error, never by replaying the whole log instead.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::frame::{Frame, Incoming};
use super::{Settings, Snapshot, TempFile, IN_FLIGHT};
use crate::broker::SNAPSHOT_Q;

/// How one attempt ended, when it brought no snapshot.
#[derive(Debug)]
pub enum Attempt {
    /// Nobody took the request within the patience.
    NoAnswer,
    /// A master that serves only while alone: ask again.
    Declined { source: u32 },
    /// A transfer began and failed: interrupted, refused, or not checking out.
    Failed { source: Option<u32>, reason: String },
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::NoAnswer => write!(f, "no source answered"),
            Attempt::Declined { source } => write!(f, "worker {source} declined"),
            Attempt::Failed { source, reason } => match source {
                Some(s) => write!(f, "transfer from worker {s} failed: {reason}"),
                None => write!(f, "transfer failed: {reason}"),
            },
        }
    }
}

fn failed(source: Option<u32>, reason: impl std::fmt::Display) -> Attempt {
    Attempt::Failed {
        source,
        reason: reason.to_string(),
    }
}

/// Asks once for a snapshot and, if one arrives and checks out, puts it at
/// `dest` (through `incoming`, removed on every other path). `patience`: how
/// long the request waits for a source to take it.
pub async fn fetch_once(
    conn: &Connection,
    dest: &Path,
    incoming: &Path,
    patience: Duration,
    settings: &Settings,
) -> Result<Snapshot, Attempt> {
    let channel = conn.create_channel().await.map_err(|e| failed(None, e))?;
    let outcome = attempt(&channel, dest, incoming, patience, settings).await;
    let _ = channel.close(200, "snapshot attempt over".into()).await;
    outcome
}

async fn attempt(
    channel: &lapin::Channel,
    dest: &Path,
    incoming: &Path,
    patience: Duration,
    settings: &Settings,
) -> Result<Snapshot, Attempt> {
    channel
        .basic_qos(IN_FLIGHT as u16, BasicQosOptions::default())
        .await
        .map_err(|e| failed(None, e))?;
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
        .await
        .map_err(|e| failed(None, e))?;
    let mut frames = channel
        .basic_consume(
            reply_q.name().clone(),
            "snapshot-reply".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| failed(None, e))?;
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
        .await
        .map_err(|e| failed(None, e))?;

    let temp = TempFile(incoming.to_path_buf());
    let mut file: Option<tokio::fs::File> = None;
    let mut transfer: Option<Incoming> = None;
    let mut source = None;
    // Until a source takes the request, then between frames.
    let mut wait = patience;
    loop {
        let delivery = match tokio::time::timeout(wait, frames.next()).await {
            Err(_) if source.is_none() => return Err(Attempt::NoAnswer),
            Err(_) => return Err(failed(source, format!("nothing arrived for {wait:?}"))),
            Ok(None) => return Err(failed(source, "the reply queue's consumer ended")),
            Ok(Some(Err(e))) => return Err(failed(source, e)),
            Ok(Some(Ok(d))) => d,
        };
        if delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str())
            != Some(id.as_str())
        {
            let _ = delivery.ack(BasicAckOptions::default()).await;
            continue;
        }
        wait = settings.idle;
        let frame = Frame::decode(&delivery.data).map_err(|e| failed(source, e))?;
        match frame {
            Frame::Accepted { source: s } => source = Some(s),
            Frame::Declined { source: s, .. } => return Err(Attempt::Declined { source: s }),
            Frame::Progress => {}
            Frame::Failed { reason } => {
                return Err(failed(source, format!("the source gave up: {reason}")))
            }
            Frame::Begin(offer) => {
                if transfer.is_some() {
                    return Err(failed(source, "a second begin"));
                }
                transfer = Some(Incoming::new(offer));
                file = Some(
                    tokio::fs::File::create(&temp.0)
                        .await
                        .map_err(|e| failed(source, e))?,
                );
            }
            Frame::Chunk { index, data } => {
                let (Some(t), Some(f)) = (transfer.as_mut(), file.as_mut()) else {
                    return Err(failed(source, "a chunk before the begin"));
                };
                t.chunk(index, &data).map_err(|e| failed(source, e))?;
                f.write_all(&data).await.map_err(|e| failed(source, e))?;
            }
            Frame::End { digest, mac } => {
                let (Some(t), Some(mut f)) = (transfer.take(), file.take()) else {
                    return Err(failed(source, "an end before the begin"));
                };
                let offer = t.offer;
                let chunks = t.chunks();
                t.finish(&digest, mac.as_deref(), settings.secret.as_deref(), &id)
                    .map_err(|e| failed(source, format!("rejected: {e}")))?;
                f.flush().await.map_err(|e| failed(source, e))?;
                f.sync_all().await.map_err(|e| failed(source, e))?;
                drop(f);
                quick_check(&temp.0)
                    .await
                    .map_err(|e| failed(source, format!("rejected: {e}")))?;
                tokio::fs::rename(&temp.0, dest)
                    .await
                    .map_err(|e| failed(source, e))?;
                temp.keep();
                return Ok(Snapshot {
                    seq: offer.seq,
                    resume_offset: offer.resume_offset,
                    bytes: offer.bytes,
                    chunks,
                    source: source.unwrap_or(0),
                });
            }
        }
        // Acknowledged once handled (a chunk: written): the source may send
        // another only then.
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}

/// SQLite's `PRAGMA quick_check` on the received file, opened read-only and
/// immutable (so nothing is written next to it).
async fn quick_check(path: &Path) -> Result<(), String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| format!("not an SQLite database: {e}"))?;
        let verdict: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| format!("quick_check failed: {e}"))?;
        if verdict == ["ok"] {
            Ok(())
        } else {
            Err(format!("quick_check: {}", verdict.join("; ")))
        }
    })
    .await
    .map_err(|e| format!("quick_check did not finish: {e}"))?
}

/// How long [`fetch_with_retries`] keeps asking.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(300);

/// Asks until a snapshot checks out (`Ok(Some)`), or until `sources` says
/// nobody could serve one (`Ok(None)`: the caller replays the log, as the
/// first workers do). Every failed attempt is logged; at the deadline, with a
/// source still there, it is an error: the worker ends rather than replay.
pub async fn fetch_with_retries<F, Fut>(
    conn: &Connection,
    dest: &Path,
    incoming: &Path,
    patience: Duration,
    mut sources: F,
) -> anyhow::Result<Option<Snapshot>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let settings = Settings::from_env();
    let deadline = tokio::time::Instant::now() + RETRY_DEADLINE;
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        if !sources().await? {
            if attempts > 0 {
                warn!(attempts, "no source left to serve a snapshot");
            }
            return Ok(None);
        }
        attempts += 1;
        match fetch_once(conn, dest, incoming, patience, &settings).await {
            Ok(snapshot) => return Ok(Some(snapshot)),
            Err(Attempt::Declined { source }) => {
                info!(
                    source,
                    "the master declined: a slave serves snapshots; asking again"
                )
            }
            Err(e) => {
                warn!(attempt = attempts, error = %e, "snapshot attempt failed; asking again")
            }
        }
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(anyhow::anyhow!(
                "no snapshot checked out in {attempts} attempts within {RETRY_DEADLINE:?}; not replaying the log while a source exists"
            ));
        }
        tokio::time::sleep(crate::backoff::jitter(delay)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
