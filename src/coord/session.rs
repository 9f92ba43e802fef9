//! A ZooKeeper session that renews itself, for the orchestrator. A session can
//! end for good (ZooKeeper restarted and forgot it, a partition longer than
//! its timeout): the client is then dead and never reconnects. This opens a new
//! one with capped backoff, as often as needed, and hands it out to whoever
//! asks next; callers take [`Session::client`] for each piece of work and treat
//! "no session now" like any other ZooKeeper error (retry later).
//!
//! Workers do not use it: a worker's identity *is* its session (its ephemeral
//! znodes, the master znode it holds), so a worker whose session ends stops and
//! is replaced.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use zookeeper_client as zk;

#[derive(Clone)]
pub struct Session {
    current: watch::Receiver<Option<zk::Client>>,
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Session {
    /// Starts keeping a session to `hosts`; returns at once (the first session
    /// may still be on its way: [`Session::client`] says so meanwhile).
    pub fn start(hosts: String, timeout: Duration) -> Session {
        let (tx, current) = watch::channel(None);
        tokio::spawn(keep(hosts, timeout, tx));
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

async fn keep(hosts: String, timeout: Duration, current: watch::Sender<Option<zk::Client>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let client = match super::connect(&hosts, timeout, Duration::ZERO).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "no ZooKeeper session");
                tokio::time::sleep(crate::backoff::jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        info!(session = ?client.session_id(), "ZooKeeper session established");
        let mut states = client.state_watcher();
        current.send_replace(Some(client));
        let ended = loop {
            let state = states.changed().await;
            if state.is_terminated() {
                break state;
            }
        };
        warn!(?ended, "ZooKeeper session ended; opening a new one");
        current.send_replace(None);
        if current.is_closed() {
            return;
        }
    }
}
