//! A worker: one binary, one code path for both roles. It keeps its own SQLite
//! copy, applies the `syncQ` stream to it, serves `readQ` while it is a slave, and
//! when ZooKeeper's election makes it master it first reads the stream up to its
//! own barrier (so it has everything earlier masters published) and then serves
//! `writeQ`. Any broken invariant ends the process (crash-only): the orchestrator's
//! supervisor starts a fresh replica in its place.

pub mod election;
pub mod fence;
pub mod reads;
pub mod replica;
pub mod snapshot;
pub mod sync;
pub mod writes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use tokio::sync::watch;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use crate::broker::{self, messages::SyncMessage, StreamOffset, MASTER_READ_Q, READ_Q, SYNC_Q};
use crate::coord::{self, Role};
use crate::db::Store;
use fence::{Fence, ZkAuthority};
use reads::MasterGate;
use replica::Replica;

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
    pub role: Arc<watch::Sender<Role>>,
    /// The nonce of the last barrier read from `syncQ`.
    pub barrier_seen: Arc<watch::Sender<Option<String>>>,
    /// The epoch this worker leads in (0 while a slave).
    pub epoch: Arc<AtomicU64>,
    /// The `syncQ` offset after the last message the sync loop processed.
    pub stream_next: Arc<AtomicU64>,
    pub started_at_ms: i64,
}

const PATIENCE: Duration = Duration::from_secs(60);
/// How long a joining worker waits for a snapshot before reading the whole stream.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(2);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let zk = coord::connect(&config.zk_hosts, config.zk_session_timeout, PATIENCE).await?;
    let pid = match (config.pid, &config.assigned_name) {
        (Some(pid), _) => pid,
        (None, Some(name)) => assigned_pid(&zk, name).await?,
        (None, None) => std::process::id(),
    };
    std::fs::create_dir_all(&config.data_dir)?;
    let db_path = config.data_dir.join(format!("worker-{pid}.sqlite"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    let conn = broker::open(&config.amqp_url, &format!("worker-{pid}"), PATIENCE).await?;

    // A copy of the data from a caught-up peer, if there is one.
    let started = std::time::Instant::now();
    let peers = coord::workers(&zk).await?;
    let offered = if peers
        .iter()
        .any(|w| matches!(w.role, Role::Slave | Role::Master))
    {
        snapshot::fetch(&conn, &db_path, SNAPSHOT_PATIENCE).await?
    } else {
        None
    };
    let from = match offered {
        Some(snap) => {
            info!(pid, seq = snap.seq, bytes = snap.bytes, resume_offset = snap.resume_offset, took = ?started.elapsed(), "loaded snapshot");
            StreamOffset::At(snap.resume_offset)
        }
        None => {
            info!(pid, "no snapshot: reading syncQ from the start");
            StreamOffset::First
        }
    };
    let store = Store::open(&db_path)?;
    let state = WorkerState {
        pid,
        replica: Replica::new(store)?,
        role: Arc::new(watch::channel(Role::Joining).0),
        barrier_seen: Arc::new(watch::channel(None).0),
        epoch: Arc::new(AtomicU64::new(0)),
        stream_next: Arc::new(AtomicU64::new(0)),
        started_at_ms: chrono::Utc::now().timestamp_millis(),
    };

    tokio::spawn(heartbeat(config.data_dir.join("heartbeat")));
    election::register(&zk, &state).await?;
    info!(pid, db = %db_path.display(), "worker registered; catching up");
    tokio::spawn(election::publish_progress(
        zk.clone(),
        state.clone(),
        Duration::from_millis(500),
    ));

    let outcome = tokio::select! {
        stop = sync::run(&conn, state.clone(), from) => Err(anyhow::anyhow!("sync stopped: {stop}")),
        lost = election::session_lost(&zk) => Err(anyhow::anyhow!("ZooKeeper session ended: {lost:?}")),
        served = serve(&conn, &zk, state.clone(), &config) => served,
        _ = shutdown_signal() => {
            info!(pid, "shutting down");
            Ok(())
        }
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

/// Slave until elected, then promotion and the master's write service.
async fn serve(
    conn: &lapin::Connection,
    zk: &zk::Client,
    state: WorkerState,
    config: &Config,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let marker = SyncMessage::Marker {
        pid: state.pid,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    read_back(conn, &state, marker).await?;
    state.role.send_replace(Role::Slave);
    info!(pid = state.pid, seq = state.replica.seq(), took = ?started.elapsed(), "caught up: serving reads");
    snapshot::serve(conn, state.clone(), config.data_dir.clone()).await?;
    let reads = reads::start(conn, READ_Q, state.clone(), config.read_wait, None).await?;
    let epoch = election::win(zk, &state).await?;
    state.epoch.store(epoch, Ordering::Relaxed);
    state.role.send_replace(Role::Promoting);
    // Unacked reads go back to readQ for the slaves.
    let _ = reads.close(200, "promoted to master".into()).await;
    let barrier = SyncMessage::Barrier {
        epoch,
        pid: state.pid,
        nonce: uuid::Uuid::new_v4().to_string(),
    };
    read_back(conn, &state, barrier).await?;
    state.role.send_replace(Role::Master);
    info!(
        pid = state.pid,
        epoch,
        seq = state.replica.seq(),
        "now master: serving writeQ"
    );
    // Everything applied so far came from the stream: acknowledged already.
    let (acked, acked_rx) = watch::channel(state.replica.seq());
    let fence = Fence::start(ZkAuthority {
        zk: zk.clone(),
        pid: state.pid,
        epoch,
    });
    let gate = MasterGate {
        fence: fence.clone(),
        acked: acked_rx,
    };
    let _master_reads = reads::start(
        conn,
        MASTER_READ_Q,
        state.clone(),
        config.read_wait,
        Some(gate),
    )
    .await?;
    tokio::select! {
        served = writes::run(conn, state, epoch, fence.clone(), acked) => served,
        why = fence.deposed() => Err(anyhow::anyhow!("deposed: {why}")),
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
    let mut seen = state.barrier_seen.subscribe();
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
    tokio::time::timeout(
        PATIENCE,
        seen.wait_for(|n| n.as_deref() == Some(nonce.as_str())),
    )
    .await
    .map_err(|_| anyhow::anyhow!("did not read own marker back within {PATIENCE:?}"))??;
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

/// Touches `path` every second, for container health checks.
async fn heartbeat(path: PathBuf) {
    loop {
        if let Err(e) = tokio::fs::write(&path, chrono::Utc::now().to_rfc3339()).await {
            warn!(error = %e, path = %path.display(), "could not write heartbeat");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
