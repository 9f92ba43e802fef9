//! The fence's ZooKeeper adapter: the master znode, read after a `sync`,
//! riding out a connection loss for as long as the session can last.

use tracing::info;
use zookeeper_client as zk;

use super::{Authority, Deposed};
use crate::coord::{self, MasterInfo, MASTER};

/// The real authority: ZooKeeper's master znode, read after a `sync` so a
/// lagging server of an ensemble cannot vouch for a deposed master.
pub struct ZkAuthority {
    pub zk: zk::Client,
    pub pid: u32,
    pub epoch: u64,
}

impl Authority for ZkAuthority {
    fn still_master(&self) -> futures_util::future::BoxFuture<'_, Result<(), Deposed>> {
        Box::pin(async move {
            // A lost connection is no answer: in an ensemble the session moves
            // to another server (a leader election drops every client for
            // a second or so) and keeps its ephemeral znodes, the master
            // znode among them. So the check is asked again once the session
            // is connected, for as long as the session can last; only an
            // answer, or the end of the session, decides. Nothing is
            // acknowledged meanwhile.
            let deadline = tokio::time::Instant::now() + self.zk.session_timeout();
            loop {
                match self.confirm().await {
                    Ok(verdict) => return verdict,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(format!(
                        "cannot confirm leadership with ZooKeeper within the session timeout ({e})"
                    ))
                    }
                    Err(e) => {
                        info!(error = %e, "fencing check waits for the ZooKeeper session to reconnect");
                        if let Err(e) = coord::reconnected(&self.zk).await {
                            return Err(format!(
                                "cannot confirm leadership with ZooKeeper: the session did not come back ({e})"
                            ));
                        }
                    }
                }
            }
        })
    }
}

impl ZkAuthority {
    /// One check: `sync`, then the master znode. `Ok` holds the verdict;
    /// `Err` is a connection loss or timeout, which decides nothing.
    async fn confirm(&self) -> Result<Result<(), Deposed>, zk::Error> {
        let unsure = coord::is_transient;
        let denied = |e: zk::Error| format!("cannot confirm leadership with ZooKeeper ({e})");
        match self.zk.sync(MASTER).await {
            Ok(()) => {}
            Err(e) if unsure(&e) => return Err(e),
            Err(e) => return Ok(Err(denied(e))),
        }
        Ok(match coord::master(&self.zk).await {
            Ok(Some(MasterInfo { pid, epoch })) if pid == self.pid && epoch == self.epoch => Ok(()),
            Ok(other) => Err(format!("no longer master (master znode: {other:?})")),
            Err(e) if unsure(&e) => return Err(e),
            Err(e) => Err(denied(e)),
        })
    }
}
