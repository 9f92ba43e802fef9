//! The worker's side of ZooKeeper: registering its ephemeral znode, publishing
//! its role and progress there, and the election loop that decides when this
//! worker must become master (see [`crate::coord::election`] for the rule).

use std::time::Duration;

use tracing::{info, warn};
use zookeeper_client as zk;

use super::WorkerState;
use crate::coord::election::{contenders, decide, Decision};
use crate::coord::{self, MasterInfo, Role, WorkerInfo, EPOCH, MASTER, WORKERS};

/// Creates this worker's ephemeral znode.
pub async fn register(client: &zk::Client, state: &WorkerState) -> anyhow::Result<()> {
    let info = info(state);
    let path = coord::worker_path(state.pid);
    match client
        .create(&path, &serde_json::to_vec(&info)?, &coord::ephemeral())
        .await
    {
        Ok(_) => Ok(()),
        Err(zk::Error::NodeExists) => Err(anyhow::anyhow!(
            "{path} already exists: another live worker has pid {}",
            state.pid
        )),
        Err(e) => Err(e.into()),
    }
}

fn info(state: &WorkerState) -> WorkerInfo {
    WorkerInfo {
        pid: state.pid,
        role: state.role.get(),
        seq: state.replica.seq(),
        epoch: *state.epoch.borrow(),
        started_at_ms: state.started_at_ms,
        slot: Some(state.slot),
        start: Some(state.start),
        host: Some(state.host.clone()),
    }
}

/// Keeps the znode's record current: on every role change, and the applied
/// sequence number at most every `every`.
pub async fn publish_progress(client: zk::Client, state: WorkerState, every: Duration) {
    let path = coord::worker_path(state.pid);
    let mut roles = state.role.subscribe();
    let mut last = None;
    loop {
        let now = info(&state);
        if last.as_ref() != Some(&now) {
            match serde_json::to_vec(&now) {
                Ok(body) => match client.set_data(&path, &body, None).await {
                    Ok(_) => last = Some(now),
                    Err(e) => warn!(error = %e, "could not update worker znode"),
                },
                Err(e) => warn!(error = %e, "could not encode worker record"),
            }
        }
        tokio::select! {
            _ = roles.changed() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs the election until this worker holds the master znode; returns the epoch
/// it won. Only the lowest live slave watches the master; the others watch their
/// predecessor, so one death wakes one worker.
pub async fn win(client: &zk::Client, state: &WorkerState) -> anyhow::Result<u64> {
    loop {
        match step(client, state).await {
            Ok(Some(epoch)) => return Ok(epoch),
            Ok(None) => {}
            // A lost connection to one server of the ensemble: the session
            // moves to another and the election goes on from a fresh look.
            Err(e) => match e.downcast_ref::<zk::Error>() {
                Some(z) if coord::is_transient(z) => {
                    warn!(error = %z, "election: ZooKeeper connection lost; going on once the session is back");
                    coord::reconnected(client).await?;
                }
                _ => return Err(e),
            },
        }
    }
}

/// One look at the master znode and the live workers, and what follows: the
/// epoch won, or None to look again.
async fn step(client: &zk::Client, state: &WorkerState) -> anyhow::Result<Option<u64>> {
    let master = coord::master(client).await?;
    let registered: Vec<u32> = client
        .list_children(WORKERS)
        .await?
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let joining: Vec<u32> = coord::workers(client)
        .await?
        .iter()
        .filter(|w| w.role == Role::Joining)
        .map(|w| w.pid)
        .collect();
    let live = contenders(&registered, &joining, state.pid);
    match decide(state.pid, master.map(|m| m.pid), &live) {
        Decision::Lead => {
            // Only after a restart of the election loop with our own znode in place.
            return Ok(Some(master.map(|m| m.epoch).unwrap_or_default()));
        }
        Decision::Promote => return try_take_master(client, state.pid).await,
        Decision::WatchMaster => wait_for_change(client, MASTER).await?,
        Decision::WatchPredecessor(p) => wait_for_change(client, &coord::worker_path(p)).await?,
    }
    Ok(None)
}

async fn wait_for_change(client: &zk::Client, path: &str) -> anyhow::Result<()> {
    let (stat, watcher) = client.check_and_watch_stat(path).await?;
    if stat.is_some() {
        let event = watcher.changed().await;
        info!(path, event = ?event.event_type, "watched znode changed");
    }
    Ok(())
}

/// Bumps the epoch counter (compare-and-set) and tries to create the master
/// znode with it. `None` if another worker got there first.
async fn try_take_master(client: &zk::Client, pid: u32) -> anyhow::Result<Option<u64>> {
    let epoch = loop {
        let (data, stat) = client.get_data(EPOCH).await?;
        let current: u64 = std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let next = current + 1;
        match client
            .set_data(EPOCH, next.to_string().as_bytes(), Some(stat.version))
            .await
        {
            Ok(_) => break next,
            Err(zk::Error::BadVersion) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let record = serde_json::to_vec(&MasterInfo { pid, epoch })?;
    match client.create(MASTER, &record, &coord::ephemeral()).await {
        Ok(_) => {
            info!(pid, epoch, "won the election");
            Ok(Some(epoch))
        }
        Err(zk::Error::NodeExists) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Resolves when the ZooKeeper session is over (expired, closed, auth failed): a
/// worker without a session may no longer act as master or be counted as live.
pub async fn session_lost(client: &zk::Client) -> zk::SessionState {
    let mut watcher = client.state_watcher();
    loop {
        let state = watcher.changed().await;
        if state.is_terminated() {
            return state;
        }
        if state == zk::SessionState::Disconnected {
            warn!("ZooKeeper connection lost; waiting for the session to resume");
        }
    }
}
