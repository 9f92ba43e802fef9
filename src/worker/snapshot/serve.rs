//! The source side. Every caught-up worker consumes `snapshotQ`, one request
//! at a time: slaves with consumer priority [`SLAVE_PRIORITY`], the master with
//! [`MASTER_PRIORITY`], so RabbitMQ hands a request to the master only when no
//! slave can take it. A master that gets one anyway answers `Declined` unless
//! it is alone ([`alone`]: the queue's only consumer, or no other worker
//! registered as a slave; then it serves, at a seq confirmed on `syncQ`), and
//! the joiner asks again: the master never stalls on a snapshot while a slave
//! can serve it.
//!
//! Serving: `Accepted` at once, then the `syncQ` offset is read, then the
//! backup is taken on a connection of its own on a blocking thread
//! ([`Store::snapshot_file`], its seq read inside its read transaction), with
//! `Progress` frames while it runs; the file is then streamed from disk in
//! chunks with publisher confirms, at most [`IN_FLIGHT`] unconfirmed, each
//! published `mandatory` so a joiner that went away (its reply queue with it)
//! is noticed at the next confirm. The backup file is removed on every path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
    BasicRecoverOptions, QueueDeclareOptions,
};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tracing::{info, warn};
use zookeeper_client as zk;

use super::frame::{Frame, Offer, Outgoing};
use super::{Settings, TempFile, IN_FLIGHT};
use crate::broker::{self, SNAPSHOT_Q};
use crate::coord::{self, Role};
use crate::db::Store;
use crate::worker::WorkerState;

pub const SLAVE_PRIORITY: i32 = 10;
pub const MASTER_PRIORITY: i32 = 0;
/// Pages copied per backup step (4 MiB of 4 KiB pages).
const PAGES_PER_STEP: i32 = 1024;
/// How often a source says it is still taking the backup.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a source waits for the broker to confirm a frame.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(30);
/// How long a master waits for its snapshot's seq to be confirmed on `syncQ`.
const SEQ_CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// Where replies to one request go.
pub struct Reply<'a> {
    pub channel: &'a Channel,
    pub to: String,
    pub id: String,
    /// Confirms not yet awaited, oldest first.
    pending: std::collections::VecDeque<PublisherConfirm>,
}

impl<'a> Reply<'a> {
    /// `channel` must have publisher confirms on ([`broker::confirmed_channel`]).
    pub fn new(channel: &'a Channel, to: String, id: String) -> Reply<'a> {
        Reply {
            channel,
            to,
            id,
            pending: Default::default(),
        }
    }

    /// Publishes `frame`, keeping at most [`IN_FLIGHT`] unconfirmed.
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.to.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &frame.encode(),
                BasicProperties::default().with_correlation_id(self.id.as_str().into()),
            )
            .await?;
        self.pending.push_back(confirm);
        while self.pending.len() >= IN_FLIGHT {
            self.await_oldest().await?;
        }
        Ok(())
    }

    /// Waits until every frame sent is confirmed and routed.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.await_oldest().await?;
        }
        Ok(())
    }

    async fn await_oldest(&mut self) -> anyhow::Result<()> {
        let Some(confirm) = self.pending.pop_front() else {
            return Ok(());
        };
        match tokio::time::timeout(CONFIRM_PATIENCE, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(anyhow::anyhow!(
                "the joiner's reply queue is gone: it stopped waiting"
            )),
            Ok(Ok(other)) => Err(anyhow::anyhow!("the broker refused a frame: {other:?}")),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow::anyhow!(
                "no confirm from the broker within {CONFIRM_PATIENCE:?}"
            )),
        }
    }
}

/// Streams the file at `path` as `offer`'s data and the closing frame (with a
/// MAC under `secret`); returns the number of chunks. Reads `chunk_bytes` at a
/// time: memory stays at a few chunks whatever the file's size.
pub async fn send_file(
    reply: &mut Reply<'_>,
    path: &Path,
    offer: Offer,
    secret: Option<&[u8]>,
    chunk_bytes: usize,
) -> anyhow::Result<u64> {
    let mut file = tokio::fs::File::open(path).await?;
    reply.send(&Frame::Begin(offer)).await?;
    let mut out = Outgoing::default();
    let mut sent = 0u64;
    loop {
        let mut buf = Vec::with_capacity(chunk_bytes);
        let n = (&mut file)
            .take(chunk_bytes as u64)
            .read_to_end(&mut buf)
            .await?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if sent > offer.bytes {
            return Err(anyhow::anyhow!("the file grew while being sent"));
        }
        let frame = out.chunk(buf);
        reply.send(&frame).await?;
    }
    if sent != offer.bytes {
        return Err(anyhow::anyhow!(
            "{sent} of {} bytes read from the backup",
            offer.bytes
        ));
    }
    let chunks = out.chunks();
    reply
        .send(&out.end(secret, &reply.id.clone(), &offer))
        .await?;
    reply.flush().await?;
    Ok(chunks)
}

/// Answers snapshot requests until the consumer ends. `db` is this worker's
/// copy, `backup_path` where its backup is taken (removed after each request).
pub async fn serve(
    conn: &Connection,
    zk: zk::Client,
    state: WorkerState,
    db: PathBuf,
    backup_path: PathBuf,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let replies = broker::confirmed_channel(conn).await?;
    let mut consumer = Consumer::start(conn, &state).await?;
    let (alive, ended) = oneshot::channel::<()>();
    let mut role = state.role.subscribe();
    tokio::spawn(async move {
        // Dropped when the loop ends: the worker hears of it.
        let _alive = alive;
        let settings = Settings::from_env();
        loop {
            tokio::select! {
                next = consumer.requests.next() => {
                    let Some(Ok(request)) = next else { break };
                    answer(&replies, &zk, &state, &request, &db, &backup_path, &settings).await;
                    let _ = request.ack(BasicAckOptions::default()).await;
                }
                changed = role.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // A slave promoted to master drops to the master's priority.
                    if priority(*role.borrow()) != consumer.priority {
                        consumer = match consumer.restart(&state).await {
                            Ok(c) => c,
                            Err(e) => {
                                warn!(error = %e, "could not consume snapshotQ again");
                                break;
                            }
                        };
                    }
                }
            }
        }
    });
    Ok(ended)
}

fn priority(role: Role) -> i32 {
    match role {
        Role::Master | Role::Promoting => MASTER_PRIORITY,
        Role::Slave | Role::Joining => SLAVE_PRIORITY,
    }
}

/// The `snapshotQ` consumer, on a channel of its own.
struct Consumer {
    channel: Channel,
    requests: lapin::Consumer,
    priority: i32,
    tag: String,
}

impl Consumer {
    async fn start(conn: &Connection, state: &WorkerState) -> anyhow::Result<Consumer> {
        let channel = broker::consumer_channel(conn, 1).await?;
        Consumer::on(channel, state).await
    }

    async fn on(channel: Channel, state: &WorkerState) -> anyhow::Result<Consumer> {
        let priority = priority(state.role.get());
        let mut args = FieldTable::default();
        args.insert("x-priority".into(), AMQPValue::LongInt(priority));
        let tag = format!("snapshot-{}-{}", state.pid, uuid::Uuid::new_v4().simple());
        let requests = channel
            .basic_consume(
                SNAPSHOT_Q.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        Ok(Consumer {
            channel,
            requests,
            priority,
            tag,
        })
    }

    /// Consumes again at the priority of the current role; a request already
    /// delivered but not taken goes back to the queue.
    async fn restart(self, state: &WorkerState) -> anyhow::Result<Consumer> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        self.channel
            .basic_recover(BasicRecoverOptions { requeue: true })
            .await?;
        let next = Consumer::on(self.channel, state).await?;
        info!(
            priority = next.priority,
            "consuming snapshotQ at a new priority"
        );
        Ok(next)
    }
}

/// Whether no slave can serve a snapshot, so the master must: it is the
/// only consumer of `snapshotQ`, or no other worker is registered as a
/// slave. The second matters on a cluster: a quorum queue keeps counting the
/// consumers of a node cut off from the others (suspected down, until the
/// node is back), so a lost slave's consumer outlives its registration, and
/// without it every joiner would be declined until the node returned.
async fn alone(channel: &Channel, zk: &zk::Client, me: u32) -> anyhow::Result<bool> {
    let q = channel
        .queue_declare(
            SNAPSHOT_Q.into(),
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if q.consumer_count() <= 1 {
        return Ok(true);
    }
    let workers = coord::workers(zk).await?;
    Ok(no_other_slave(&workers, me))
}

/// No worker but `me` is registered as a serving slave.
fn no_other_slave(workers: &[coord::WorkerInfo], me: u32) -> bool {
    !workers.iter().any(|w| w.pid != me && w.role == Role::Slave)
}

async fn answer(
    channel: &Channel,
    zk: &zk::Client,
    state: &WorkerState,
    request: &lapin::message::Delivery,
    db: &Path,
    out: &Path,
    settings: &Settings,
) {
    let Some(to) = request
        .properties
        .reply_to()
        .as_ref()
        .map(|q| q.to_string())
    else {
        return;
    };
    let id = request
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let mut reply = Reply::new(channel, to, id);
    let role = state.role.get();
    if matches!(role, Role::Master | Role::Promoting) {
        match alone(channel, zk, state.pid).await {
            Ok(true) => {}
            Ok(false) => {
                let declined = Frame::Declined {
                    source: state.pid,
                    reason: "the master serves snapshots only while no slave can".into(),
                };
                let _ = reply.send(&declined).await;
                let _ = reply.flush().await;
                info!("declined a snapshot request: a slave serves them");
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not count snapshotQ's consumers: declining");
                return;
            }
        }
    }
    let started = Instant::now();
    match serve_one(&mut reply, state, db, out, settings).await {
        Ok((offer, chunks)) => info!(
            seq = offer.seq,
            resume_offset = offer.resume_offset,
            bytes = offer.bytes,
            chunks,
            took = ?started.elapsed(),
            "served a snapshot"
        ),
        Err(e) => {
            warn!(error = %e, took = ?started.elapsed(), "snapshot not served");
            let failed = Frame::Failed {
                reason: e.to_string(),
            };
            // Best effort: the joiner also notices silence.
            let _ = reply.send(&failed).await;
            let _ = reply.flush().await;
        }
    }
}

async fn serve_one(
    reply: &mut Reply<'_>,
    state: &WorkerState,
    db: &Path,
    out: &Path,
    settings: &Settings,
) -> anyhow::Result<(Offer, u64)> {
    reply.send(&Frame::Accepted { source: state.pid }).await?;
    // The stream position first: everything after the backup's seq is
    // published after it, so resuming here misses nothing.
    let resume_offset = *state.stream_next.borrow();
    let temp = TempFile(out.to_path_buf());
    let (db, dest) = (db.to_path_buf(), out.to_path_buf());
    let mut backup = tokio::task::spawn_blocking(move || {
        Store::snapshot_file(&db, &dest, PAGES_PER_STEP, || {})
    });
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let (seq, _) = loop {
        tokio::select! {
            done = &mut backup => break done??,
            _ = progress.tick() => reply.send(&Frame::Progress).await?,
        }
    };
    confirmed(state, seq).await?;
    let bytes = tokio::fs::metadata(&temp.0).await?.len();
    let offer = Offer {
        seq,
        resume_offset,
        bytes,
    };
    let chunks = send_file(
        reply,
        &temp.0,
        offer,
        settings.secret.as_deref(),
        settings.chunk_bytes,
    )
    .await?;
    drop(temp);
    Ok((offer, chunks))
}

/// Resolves once every write in a backup at `seq` is on `syncQ` for good. A
/// slave's copy holds only what it read from the log; a master's may hold
/// commits still waiting for the broker's confirm (and which a deposed master
/// never gets): a joiner must not start from those, so the master answers only
/// once they are confirmed and answered. The role is read after the backup: a
/// worker not yet master then held nothing but the log (the master's
/// confirmed seq starts at what it read from the log).
async fn confirmed(state: &WorkerState, seq: u64) -> anyhow::Result<()> {
    if state.role.get() != Role::Master {
        return Ok(());
    }
    let mut confirmed = state.confirmed.subscribe();
    let waited = tokio::time::timeout(SEQ_CONFIRM_PATIENCE, confirmed.wait_for(|c| *c >= seq))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        _ => Err(anyhow::anyhow!(
            "seq {seq} not confirmed on syncQ within {SEQ_CONFIRM_PATIENCE:?}: not served"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: u32, role: Role) -> coord::WorkerInfo {
        coord::WorkerInfo {
            pid,
            role,
            seq: 0,
            epoch: 1,
            started_at_ms: 0,
            slot: None,
            start: None,
            host: None,
        }
    }

    #[test]
    fn the_master_serves_when_no_other_worker_is_a_serving_slave() {
        // The master and joiners only (the slaves were lost with their host).
        let left = [worker(7, Role::Master), worker(9, Role::Joining)];
        assert!(no_other_slave(&left, 7));
        // A serving slave is registered: it takes the requests.
        let with_slave = [worker(7, Role::Master), worker(8, Role::Slave)];
        assert!(!no_other_slave(&with_slave, 7));
    }
}
