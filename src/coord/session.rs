//! A ZooKeeper session that renews itself, for the orchestrator. A session can
//! end for good (ZooKeeper restarted and forgot it, a partition longer than
//! its timeout): the client is then dead and never reconnects. This opens a new
//! one (a supervised task, `crate::tasks`: capped backoff, its state shown in
//! `worker/status` and `/metrics`), as often as needed, and hands it out to whoever
//! asks next; callers take [`Session::client`] for each piece of work and treat
//! "no session now" like any other ZooKeeper error (retry later).
//!
//! Workers do not use it: a worker's identity *is* its session (its ephemeral
//! znodes, the master znode it holds), so a worker whose session ends stops and
//! is replaced.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;
use zookeeper_client as zk;

use crate::tasks::{Round, Tasks};

#[derive(Clone)]
pub struct Session {
    current: watch::Receiver<Option<zk::Client>>,
}

impl Session {
    /// Starts keeping a session to `hosts` as the task `zookeeper` of `tasks`;
    /// returns at once (the first session may still be on its way:
    /// [`Session::client`] says so meanwhile).
    pub fn start(hosts: String, timeout: Duration, tasks: Tasks) -> Session {
        let (tx, current) = watch::channel(None);
        let tx = Arc::new(tx);
        tokio::spawn(crate::tasks::keep(tasks, "zookeeper", move |round| {
            session_round(hosts.clone(), timeout, tx.clone(), round)
        }));
        Session { current }
    }

    /// The live session's client, or `ConnectionLoss` while there is none.
    pub fn client(&self) -> Result<zk::Client, zk::Error> {
        self.current
            .borrow()
            .clone()
            .filter(|c| !c.state().is_terminated())
            .ok_or(zk::Error::ConnectionLoss)
    }

    /// Whether a session is established and connected now.
    pub fn is_connected(&self) -> bool {
        self.client()
            .is_ok_and(|c| c.state() == zk::SessionState::SyncConnected)
    }

    /// Waits (up to `patience`) for a session.
    pub async fn ready(&self, patience: Duration) -> Result<zk::Client, zk::Error> {
        let mut current = self.current.clone();
        let wait = current.wait_for(|c| c.as_ref().is_some_and(|c| !c.state().is_terminated()));
        let client = match tokio::time::timeout(patience, wait).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        };
        client.ok_or(zk::Error::ConnectionLoss)
    }
}

/// One session: opened, handed out until it ends for good, withdrawn.
async fn session_round(
    hosts: String,
    timeout: Duration,
    current: Arc<watch::Sender<Option<zk::Client>>>,
    round: Round,
) -> String {
    let client = match super::connect(&hosts, timeout, Duration::ZERO).await {
        Ok(c) => c,
        Err(e) => return format!("no ZooKeeper session: {e}"),
    };
    let id = client.session_id();
    info!(session = ?id, "ZooKeeper session established");
    round.up(format!("session {:#x}", id.0));
    let mut states = client.state_watcher();
    current.send_replace(Some(client));
    let ended = loop {
        let state = states.changed().await;
        if state.is_terminated() {
            break state;
        }
    };
    current.send_replace(None);
    format!("ZooKeeper session ended ({ended:?})")
}
