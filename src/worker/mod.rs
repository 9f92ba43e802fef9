//! A worker: one binary, one code path for both roles. It keeps its own SQLite
//! copy, applies the `syncQ` stream to it, serves `readQ` while it is a slave, and
//! when ZooKeeper's election makes it master it first reads the stream up to its
//! own barrier (so it has everything earlier masters published) and then serves
//! `writeQ`. Its copy is named by a slot ([`slot`]), so a worker started after
//! it resumes the copy instead of copying everything again. A slave that loses
//! RabbitMQ reconnects and resumes the log where it stopped; any other broken
//! invariant ends the process (crash-only): the orchestrator's supervisor
//! starts a replica in its place, which resumes this slot's copy when it can.

pub(crate) mod election;
pub(crate) mod fence;
pub(crate) mod marks;
pub(crate) mod reads;
pub(crate) mod replica;
pub(crate) mod role;
pub(crate) mod slot;
pub mod snapshot;
pub(crate) mod sync;
pub(crate) mod writes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use tokio::sync::watch;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use crate::broker::{self, messages::SyncMessage, StreamOffset, MASTER_READ_Q, READ_Q, SYNC_Q};
use crate::coord::{self, Role, StartedFrom};
use crate::db::Store;
use fence::{Fence, ZkAuthority};
use reads::MasterGate;
use replica::Replica;
use slot::Slot;

/// How a worker is started (flags and env of the `worker` binary).
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: String,
    pub zk_hosts: String,
    pub zk_session_timeout: Duration,
    pub data_dir: PathBuf,
    /// The pid this worker is known by; defaults to its OS pid.
    pub pid: Option<u32>,
    /// In a container the worker cannot see its host pid: it waits for the
    /// supervisor to write it at `/dbaas/assigned/<name>`.
    pub assigned_name: Option<String>,
    /// Where it runs (shown in `worker/status`).
    pub host: String,
    /// How long a read with `min_seq` waits for this replica to catch up.
    pub read_wait: Duration,
    /// Join from a peer's snapshot (default) or by replaying all of `syncQ`.
    pub catch_up: CatchUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    Snapshot,
    Replay,
}

/// What the worker's tasks share.
#[derive(Clone)]
pub struct WorkerState {
    pub pid: u32,
    pub replica: Replica,
    /// Advanced only by `run` and `serve` ([`role`]).
    pub role: Arc<role::RoleCell>,
    /// The markers and barriers read back from `syncQ`.
    pub marks_seen: Arc<marks::Marks>,
    /// The epoch this worker leads in (0 while a slave); only `serve` sets
    /// it, through the sender `run` hands it.
    pub epoch: watch::Receiver<u64>,
    /// The `syncQ` offset after the last message the sync loop processed;
    /// only the sync loop moves it, through the sender `run` hands it.
    pub stream_next: watch::Receiver<u64>,
    /// While master: the last seq confirmed on `syncQ` and answered (fenced).
    pub confirmed: Arc<watch::Sender<u64>>,
    /// The slot whose file this worker keeps, and where its copy came from.
    pub slot: u32,
    pub start: StartedFrom,
    pub started_at_ms: i64,
    pub host: String,
}

const PATIENCE: Duration = Duration::from_secs(60);
/// How long a snapshot request waits for a source to take it (it is asked
/// again, until a transfer checks out, while a source exists).
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(2);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let zk = coord::connect(&config.zk_hosts, config.zk_session_timeout, PATIENCE).await?;
    let pid = match (config.pid, &config.assigned_name) {
        (Some(pid), _) => pid,
        (None, Some(name)) => assigned_pid(&zk, name).await?,
        (None, None) => std::process::id(),
    };
    let slot = Slot::claim(&config.data_dir)?;
    let conn = broker::open(&config.amqp_url, &format!("worker-{pid}"), PATIENCE).await?;
    let started = std::time::Instant::now();
    let (store, from, start) = open_copy(&conn, &zk, &slot, &config).await?;
    info!(pid, slot = slot.index, ?start, seq = store.seq(), ?from, took = ?started.elapsed(), "copy ready");
    let (leading, epoch_rx) = watch::channel(0);
    let (stream_position, stream_next_rx) = watch::channel(0);
    let state = WorkerState {
        pid,
        slot: slot.index,
        start,
        replica: Replica::new(store)?,
        role: Arc::new(role::RoleCell::default()),
        marks_seen: Arc::new(marks::Marks::default()),
        epoch: epoch_rx,
        stream_next: stream_next_rx,
        confirmed: Arc::new(watch::channel(0).0),
        started_at_ms: chrono::Utc::now().timestamp_millis(),
        host: config.host.clone(),
    };

    // Background loops that never end by design: owned here, so one that
    // ends anyway (a panic) ends the worker instead of leaving it half alive.
    let mut background = crate::tasks::CrashOnly::new(crate::tasks::Tasks::default());
    background.spawn("heartbeat", heartbeat(config.data_dir.join("heartbeat")));
    background.spawn(
        "stream offset recorder",
        record_stream_offset(state.clone(), Duration::from_millis(500)),
    );
    election::register(&zk, &state).await?;
    info!(pid, db = %slot.db_path().display(), "worker registered; catching up");
    background.spawn(
        "progress publisher",
        election::publish_progress(zk.clone(), state.clone(), Duration::from_millis(500)),
    );

    let mut conn = conn;
    let mut from = from;
    let outcome = loop {
        let ended = tokio::select! {
            stop = sync::run(&conn, state.clone(), from, &stream_position) => {
                if stop.copy_unusable() {
                    // Crash-only: the next worker in this slot starts from a snapshot.
                    warn!(pid, slot = slot.index, error = %stop, "own copy cannot follow the log: discarding it");
                    slot.discard_data();
                    break Err(anyhow::anyhow!("sync stopped: {stop}"));
                }
                anyhow::anyhow!("sync stopped: {stop}")
            }
            lost = election::session_lost(&zk) => break Err(anyhow::anyhow!("ZooKeeper session ended: {lost:?}")),
            why = background.ended() => break Err(anyhow::anyhow!("{why}")),
            // Its RabbitMQ node was cut off from the cluster (and closed):
            // a slave reconnects to another node, a master ends.
            why = broker::link::cut_off(&conn) => anyhow::anyhow!("{why}"),
            served = serve(&conn, &zk, state.clone(), &config, &slot, &leading) => match served {
                Ok(()) => break Ok(()),
                Err(e) => e,
            },
            _ = crate::shutdown::signal() => {
                info!(pid, "shutting down");
                close_copy(&state).await;
                break Ok(());
            }
        };
        // A replica that lost its broker connection reconnects and resumes
        // the log where it stopped. A master does not: its copy may hold
        // commits the broker never confirmed, so it ends (its copy is not
        // resumed) and a slave takes over. Anything else is crash-only too.
        let role = state.role.get();
        if conn.status().connected() || !matches!(role, Role::Joining | Role::Slave) {
            break Err(ended);
        }
        warn!(pid, error = %ended, offset = *state.stream_next.borrow(), "lost RabbitMQ: reconnecting, then resuming syncQ where this copy stopped");
        if let Err(e) = state.role.advance(Role::Joining) {
            break Err(e);
        }
        conn = match broker::open(&config.amqp_url, &format!("worker-{pid}"), PATIENCE).await {
            Ok(conn) => conn,
            Err(e) => break Err(e.context("RabbitMQ did not come back")),
        };
        let next = *state.stream_next.borrow();
        if next > 0 {
            from = StreamOffset::At(next);
        }
        info!(
            pid,
            ?from,
            seq = state.replica.seq(),
            "reconnected to RabbitMQ"
        );
    };
    // Leave at once rather than after the session timeout; a dead worker's
    // ephemeral znodes would go with its session anyway.
    if let Err(e) = coord::forget_dead_worker(&zk, pid).await {
        warn!(error = %e, "could not remove own znodes");
    }
    let _ = conn.close(200, "worker stopping".into()).await;
    if let Err(e) = &outcome {
        error!(pid, error = %e, "worker stopped");
    }
    outcome
}

/// The worker's copy and where to read `syncQ` from: the slot's own file when
/// it is a prefix of the log, else a caught-up peer's snapshot, else an empty
/// copy that reads the log from its start (the first workers).
async fn open_copy(
    conn: &lapin::Connection,
    zk: &zk::Client,
    slot: &Slot,
    config: &Config,
) -> anyhow::Result<(Store, StreamOffset, StartedFrom)> {
    if let Some(reopened) = reopen(slot) {
        return Ok(reopened);
    }
    slot.discard_data();
    let db_path = slot.db_path();
    let offered = if config.catch_up == CatchUp::Snapshot {
        // Sources: caught-up workers (one being promoted too: it serves once
        // master, as the only one). None (the first workers): replay the log.
        let sources = || async {
            Ok(coord::workers(zk)
                .await?
                .iter()
                .any(|w| matches!(w.role, Role::Slave | Role::Promoting | Role::Master)))
        };
        snapshot::fetch_with_retries(
            conn,
            &db_path,
            &slot.incoming_path(),
            SNAPSHOT_PATIENCE,
            sources,
        )
        .await?
    } else {
        None
    };
    match offered {
        Some(snap) => {
            info!(
                seq = snap.seq,
                bytes = snap.bytes,
                chunks = snap.chunks,
                source = snap.source,
                resume_offset = snap.resume_offset,
                "loaded snapshot"
            );
            let mut store = Store::open(&db_path)?;
            // The peer's bookkeeping came with its file: this copy's is its own.
            store.record_stream_offset(snap.resume_offset)?;
            store.record_leading(0)?;
            Ok((
                store,
                StreamOffset::At(snap.resume_offset),
                StartedFrom::Snapshot,
            ))
        }
        None => {
            info!("no snapshot: reading syncQ from the start");
            Ok((
                Store::open(&db_path)?,
                StreamOffset::First,
                StartedFrom::Log,
            ))
        }
    }
}

/// The slot's own file, if it can be resumed: it opens, holds writes, knows its
/// `syncQ` offset, and is a prefix of the log (not a master's copy that may
/// hold commits never confirmed on `syncQ`).
fn reopen(slot: &Slot) -> Option<(Store, StreamOffset, StartedFrom)> {
    let path = slot.db_path();
    if !path.exists() {
        return None;
    }
    let store = match Store::open(&path) {
        Ok(store) => store,
        Err(e) => {
            warn!(error = %e, path = %path.display(), "own copy unreadable: starting afresh");
            return None;
        }
    };
    let disk = match store.disk_state() {
        Ok(disk) => disk,
        Err(e) => {
            warn!(error = %e, "own copy's bookkeeping unreadable: starting afresh");
            return None;
        }
    };
    if disk.leading_epoch != 0 {
        info!(epoch = disk.leading_epoch, seq = disk.seq, "own copy was a master's, closed with commits not known to be on syncQ: starting afresh");
        return None;
    }
    if disk.seq == 0 || disk.stream_offset == 0 {
        return None;
    }
    info!(
        seq = disk.seq,
        offset = disk.stream_offset,
        "resuming own copy"
    );
    Some((
        store,
        StreamOffset::At(disk.stream_offset),
        StartedFrom::OwnFile,
    ))
}

/// On a clean stop: the copy's last `syncQ` offset, and, for a master whose
/// every commit is confirmed, that the copy is a prefix of the log again.
async fn close_copy(state: &WorkerState) {
    let offset = *state.stream_next.borrow();
    if offset > 0 {
        if let Err(e) = state.replica.record_stream_offset(offset).await {
            warn!(error = %e, "could not record the stream offset");
        }
    }
    // Promoting: nothing of its own committed yet. Master: clean once every
    // commit is confirmed (the write service has stopped taking more).
    let role = state.role.get();
    let clean = match role {
        Role::Promoting => true,
        Role::Master => *state.confirmed.borrow() >= state.replica.seq(),
        _ => false,
    };
    if clean {
        match state.replica.record_leading(0).await {
            Ok(()) => info!(
                seq = state.replica.seq(),
                "every commit confirmed: own copy resumable"
            ),
            Err(e) => warn!(error = %e, "could not mark own copy resumable"),
        }
    }
}

/// Records the `syncQ` offset the copy has applied up to, every `every`, so a
/// restarted worker in this slot resumes near where this one stopped.
async fn record_stream_offset(state: WorkerState, every: Duration) {
    let mut recorded = 0;
    loop {
        tokio::time::sleep(every).await;
        let next = *state.stream_next.borrow();
        if next != recorded {
            match state.replica.record_stream_offset(next).await {
                Ok(()) => recorded = next,
                Err(e) => warn!(error = %e, "could not record the stream offset"),
            }
        }
    }
}

/// Slave until elected, then promotion and the master's write service.
async fn serve(
    conn: &lapin::Connection,
    zk: &zk::Client,
    state: WorkerState,
    config: &Config,
    slot: &Slot,
    leading: &watch::Sender<u64>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let marker = SyncMessage::Marker {
        pid: state.pid,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    read_back(conn, &state, marker).await?;
    state.role.advance(Role::Slave)?;
    info!(pid = state.pid, seq = state.replica.seq(), took = ?started.elapsed(), "caught up: serving reads");
    // Every consumer is owned here: one that ends (its channel or the
    // connection closed) ends the worker, crash-only, and the worker that
    // replaces it resumes this slot's copy.
    let mut snapshots = snapshot::serve(
        conn,
        zk.clone(),
        state.clone(),
        slot.db_path(),
        slot.outgoing_path(),
    )
    .await?;
    let mut reads = reads::start(conn, READ_Q, state.clone(), config.read_wait, None).await?;
    let epoch = tokio::select! {
        won = election::win(zk, &state) => won?,
        _ = &mut reads.ended => return Err(anyhow::anyhow!("readQ consumer ended")),
        _ = &mut snapshots => return Err(anyhow::anyhow!("snapshotQ consumer ended")),
    };
    // From the first own commit on, the copy may hold writes that never reach
    // syncQ: a restart must not resume it as a prefix of the log.
    state.replica.record_leading(epoch).await?;
    leading.send_replace(epoch);
    state.role.advance(Role::Promoting)?;
    // Unacked reads go back to readQ for the slaves.
    let _ = reads.channel.close(200, "promoted to master".into()).await;
    let barrier = SyncMessage::Barrier {
        epoch,
        pid: state.pid,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    read_back(conn, &state, barrier).await?;
    state.role.advance(Role::Master)?;
    info!(
        pid = state.pid,
        epoch,
        seq = state.replica.seq(),
        "now master: serving writeQ"
    );
    // Everything applied so far came from the stream: acknowledged already.
    state.confirmed.send_replace(state.replica.seq());
    let acked_rx = state.confirmed.subscribe();
    let fence = Fence::start(ZkAuthority {
        zk: zk.clone(),
        pid: state.pid,
        epoch,
    });
    let gate = MasterGate {
        fence: fence.clone(),
        acked: acked_rx,
    };
    let master_reads = reads::start(
        conn,
        MASTER_READ_Q,
        state.clone(),
        config.read_wait,
        Some(gate),
    )
    .await?;
    tokio::select! {
        served = writes::run(conn, state.clone(), epoch, fence.clone(), state.confirmed.clone()) => served,
        why = fence.deposed() => Err(anyhow::anyhow!("deposed: {why}")),
        _ = master_reads.ended => Err(anyhow::anyhow!("readQ.master consumer ended")),
        _ = snapshots => Err(anyhow::anyhow!("snapshotQ consumer ended")),
    }
}

/// Publishes `message` (a barrier or a marker) on `syncQ` and waits until the
/// sync loop has read it back: by then everything published before it is
/// applied here.
async fn read_back(
    conn: &lapin::Connection,
    state: &WorkerState,
    message: SyncMessage,
) -> anyhow::Result<()> {
    let nonce = match &message {
        SyncMessage::Barrier { nonce, .. } | SyncMessage::Marker { nonce, .. } => nonce.clone(),
        SyncMessage::Entry(_) => return Err(anyhow::anyhow!("an entry is no marker")),
    };
    let waiter = state.marks_seen.waiter();
    let channel = broker::confirmed_channel(conn).await?;
    let body = serde_json::to_vec(&message)?;
    broker::publish_confirmed(
        &channel,
        SYNC_Q,
        &body,
        BasicProperties::default(),
        PATIENCE,
    )
    .await?;
    if !marks::Marks::wait(waiter, &nonce, PATIENCE).await {
        anyhow::bail!("did not read own marker back within {PATIENCE:?}");
    }
    let _ = channel.close(200, "marker read".into()).await;
    Ok(())
}

async fn assigned_pid(zk: &zk::Client, name: &str) -> anyhow::Result<u32> {
    let path = coord::assigned_path(name);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (stat, watcher) = zk.check_and_watch_stat(&path).await?;
        if stat.is_some() {
            let (data, _) = zk.get_data(&path).await?;
            return std::str::from_utf8(&data)?
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{path} holds no pid: {e}"));
        }
        tokio::time::timeout_at(deadline, watcher.changed())
            .await
            .map_err(|_| anyhow::anyhow!("no pid assigned at {path} within {PATIENCE:?}"))?;
    }
}

/// `task`, answering its name when it ends.
/// Touches `path` every second, for container health checks.
async fn heartbeat(path: PathBuf) {
    loop {
        if let Err(e) = tokio::fs::write(&path, chrono::Utc::now().to_rfc3339()).await {
            warn!(error = %e, path = %path.display(), "could not write heartbeat");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
