//! ZooKeeper: the znode layout both the workers and the orchestrator use, the
//! records stored in them, and connecting.
//!
//! ```text
//! /dbaas/workers/<pid>   ephemeral, one per live worker: WorkerInfo (role, applied seq)
//! /dbaas/master          ephemeral, held by the master: MasterInfo (pid, epoch)
//! /dbaas/epoch           persistent counter, bumped (compare-and-set) by each new master
//! /dbaas/assigned/<name> persistent, the host pid the supervisor read for a container
//! /dbaas/orchestrators/…, /dbaas/leader, /dbaas/leader_epoch, /dbaas/scale
//!                        which orchestrator leads: see [`leadership`]
//! ```
//!
//! With digest credentials ([`set_auth`], from `DBAAS_ZK_AUTH`), every session
//! authenticates with them and every znode above is created with
//! `creator_all`: all permissions for that digest identity, nothing for
//! anyone else (no world read either: the records name the pids the
//! orchestrator signals). A client without the credentials can then neither
//! register a worker nor take the master znode. Nodes an earlier, open run
//! left world-writable get the same ACL when a process with credentials
//! connects ([`ensure_layout`]). Without credentials the znodes stay open to
//! every client, as before (development on loopback).

pub mod election;
pub mod leadership;
mod membership;
pub mod session;

pub use membership::Membership;

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

pub const ROOT: &str = "/dbaas";
pub const WORKERS: &str = "/dbaas/workers";
pub const MASTER: &str = "/dbaas/master";
pub const EPOCH: &str = "/dbaas/epoch";
pub const ASSIGNED: &str = "/dbaas/assigned";

pub fn worker_path(pid: u32) -> String {
    format!("{WORKERS}/{pid}")
}

pub fn assigned_path(name: &str) -> String {
    format!("{ASSIGNED}/{name}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registered, still reading `syncQ` up to the present; serves no reads yet.
    Joining,
    Slave,
    /// Elected, applying what earlier masters published before taking writes.
    Promoting,
    Master,
}

/// What a worker publishes about itself in its znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub pid: u32,
    pub role: Role,
    /// Last applied replication sequence number.
    pub seq: u64,
    pub epoch: u64,
    /// Unix milliseconds when the worker started.
    pub started_at_ms: i64,
    /// The slot whose SQLite file the worker keeps (`worker::slot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Where the worker's data came from when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartedFrom>,
    /// The host (or Docker engine) it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Where a worker's copy came from when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedFrom {
    /// Its slot's own file, then `syncQ` from the file's own offset.
    OwnFile,
    /// A peer's snapshot, then `syncQ` from the snapshot's offset.
    Snapshot,
    /// `syncQ` read from its start (the first workers, or `--catch-up replay`).
    Log,
}

/// The master znode's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    pub pid: u32,
    pub epoch: u64,
}

/// ZooKeeper digest credentials: `user:password`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    user_password: String,
}

impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.user_password.split(':').next().unwrap_or("");
        write!(f, "ZkAuth {{ user: {user:?}, password: <redacted> }}")
    }
}

impl ZkAuth {
    /// `user:password`, both non-empty; the error never shows the password.
    pub fn parse(s: &str) -> anyhow::Result<ZkAuth> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(ZkAuth {
                user_password: s.to_string(),
            }),
            _ => Err(anyhow::anyhow!(
                "ZooKeeper credentials (DBAAS_ZK_AUTH) must be user:password"
            )),
        }
    }

    /// The `user:password` form, for a worker's environment.
    pub fn expose(&self) -> &str {
        &self.user_password
    }
}

static AUTH: OnceLock<Option<ZkAuth>> = OnceLock::new();

/// Sets this process's ZooKeeper credentials, once, before the first session
/// (later calls are ignored: a process keeps one identity).
pub fn set_auth(auth: Option<ZkAuth>) {
    let _ = AUTH.set(auth);
}

/// This process's ZooKeeper credentials, if any.
pub fn auth() -> Option<&'static ZkAuth> {
    AUTH.get().and_then(Option::as_ref)
}

/// Opens a ZooKeeper session, retrying until `patience` runs out.
pub async fn connect(
    hosts: &str,
    session_timeout: Duration,
    patience: Duration,
) -> anyhow::Result<zk::Client> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut connector = zk::Client::connector()
            .with_session_timeout(session_timeout)
            .with_connection_timeout(Duration::from_secs(2));
        if let Some(a) = auth() {
            connector = connector.with_auth("digest", a.user_password.as_bytes());
        }
        let attempt = connector.connect(hosts);
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(client)) => {
                ensure_layout(&client).await?;
                return Ok(client);
            }
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::anyhow!(
                    "cannot connect to ZooKeeper at {hosts}: {e}"
                ))
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::anyhow!(
                    "timed out connecting to ZooKeeper at {hosts}"
                ))
            }
            _ => tracing::warn!(hosts, "ZooKeeper not reachable yet, retrying"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The ACL of every znode the project creates: the credentials' identity
/// only when there are credentials, else anyone.
pub fn acls() -> zk::Acls<'static> {
    if auth().is_some() {
        zk::Acls::creator_all()
    } else {
        zk::Acls::anyone_all()
    }
}

pub fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(acls())
}

pub fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(acls())
}

fn layout_error(path: &str, e: zk::Error) -> anyhow::Error {
    if e == zk::Error::NoAuth {
        anyhow::anyhow!(
            "{path}: not authorized: the project's znodes belong to other ZooKeeper \
             credentials (check DBAAS_ZK_AUTH / DBAAS_ZK_AUTH_FILE)"
        )
    } else {
        anyhow::anyhow!("creating {path}: {e}")
    }
}

async fn ensure_layout(client: &zk::Client) -> anyhow::Result<()> {
    for path in [
        ROOT,
        WORKERS,
        ASSIGNED,
        leadership::ORCHESTRATORS,
        leadership::SCALE,
    ] {
        match client.create(path, b"", &persistent()).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(layout_error(path, e)),
        }
    }
    for counter in [EPOCH, leadership::LEADER_EPOCH] {
        match client.create(counter, b"0", &persistent()).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(layout_error(counter, e)),
        }
    }
    if auth().is_some() {
        restrict_open_nodes(client).await?;
    }
    Ok(())
}

/// Gives the persistent znodes an earlier run created open to anyone the
/// credentials-only ACL (ephemeral ones of that run go with their sessions).
async fn restrict_open_nodes(client: &zk::Client) -> anyhow::Result<()> {
    let mut paths: Vec<String> = [
        ROOT,
        WORKERS,
        ASSIGNED,
        EPOCH,
        leadership::ORCHESTRATORS,
        leadership::LEADER_EPOCH,
        leadership::SCALE,
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    match client.list_children(ASSIGNED).await {
        Ok(children) => paths.extend(children.iter().map(|c| assigned_path(c))),
        Err(e) => return Err(layout_error(ASSIGNED, e)),
    }
    for path in paths {
        let (acl, stat) = match client.get_acl(&path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(layout_error(&path, e)),
        };
        if !acl.iter().any(|a| a.scheme() == "world") {
            continue;
        }
        match client.set_acl(&path, &acls(), Some(stat.aversion)).await {
            Ok(_) => tracing::warn!(
                path,
                "znode was open to every ZooKeeper client; restricted to the configured credentials"
            ),
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
            Err(e) => return Err(layout_error(&path, e)),
        }
    }
    Ok(())
}

/// Reads the master znode, if there is a master.
/// Whether `e` says nothing about the data, only that the connection to the
/// server went (or did not answer in time): in an ensemble the session moves
/// to another server and the same request may be asked again there.
pub fn is_transient(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_)
    )
}

/// Waits until `client`'s session is connected again (it moves to another
/// server of the ensemble by itself), for at most its session timeout; an
/// error if the session ended for good or did not come back in that time.
pub async fn reconnected(client: &zk::Client) -> Result<(), zk::Error> {
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    loop {
        let mut states = client.state_watcher();
        match client.state() {
            zk::SessionState::SyncConnected => return Ok(()),
            s if s.is_terminated() => return Err(zk::Error::SessionExpired),
            _ => {}
        }
        if tokio::time::timeout_at(deadline, states.changed())
            .await
            .is_err()
        {
            return Err(zk::Error::Timeout);
        }
    }
}

pub async fn master(client: &zk::Client) -> Result<Option<MasterInfo>, zk::Error> {
    match client.get_data(MASTER).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads every registered worker's record (skipping ones that vanish meanwhile).
pub async fn workers(client: &zk::Client) -> Result<Vec<WorkerInfo>, zk::Error> {
    let mut out = Vec::new();
    for child in client.list_children(WORKERS).await? {
        match client.get_data(&format!("{WORKERS}/{child}")).await {
            Ok((data, _)) => {
                if let Ok(info) = serde_json::from_slice::<WorkerInfo>(&data) {
                    out.push(info);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|w| w.pid);
    Ok(out)
}

/// Removes a dead worker's znodes (and the master znode if it held it), so the
/// rest of the system reacts at once instead of after the session timeout.
/// Only for workers known to be dead: a live worker's session would keep going.
pub async fn forget_dead_worker(client: &zk::Client, pid: u32) -> Result<(), zk::Error> {
    match client.get_data(MASTER).await {
        Ok((data, stat)) => {
            let holder = serde_json::from_slice::<MasterInfo>(&data).ok();
            if holder.is_some_and(|m| m.pid == pid) {
                // Versioned: never deletes a master znode a new master created meanwhile.
                match client.delete(MASTER, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(zk::Error::NoNode) => {}
        Err(e) => return Err(e),
    }
    match client.delete(&worker_path(pid), None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_is_asked_again_an_answer_or_a_lost_session_is_not() {
        assert!(is_transient(&zk::Error::ConnectionLoss));
        assert!(is_transient(&zk::Error::Timeout));
        assert!(!is_transient(&zk::Error::NoNode));
        assert!(!is_transient(&zk::Error::NoAuth));
        assert!(!is_transient(&zk::Error::SessionExpired));
        assert!(!is_transient(&zk::Error::BadVersion));
    }
}
