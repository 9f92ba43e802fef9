//! Fencing: the proof a master gives before anything it answers leaves it. A
//! master may answer a write or a strong read only while ZooKeeper's master
//! znode still names it and the epoch it won; a master that was paused or cut
//! off and replaced fails the check and answers nothing more (its deliveries go
//! back to the queue for the new master).
//!
//! Checks are batched: a caller waits for a check that *started after it
//! asked*, and every caller waiting when a check starts shares it. So the cost
//! is one ZooKeeper round trip (`sync` + read of the master znode) per batch of
//! writes and strong reads, whatever their number. Once a check fails the fence
//! stays failed: a deposed master never becomes master again under that epoch.
//!
//! The read follows a `sync` so that, in an ensemble, the server this session
//! is connected to has applied everything the leader committed before the
//! check began: a follower that lags (or was cut off from the leader) cannot
//! show this master the master znode of a term that is already over. (ZooKeeper's
//! `sync` is not itself a quorum operation, ZOOKEEPER-1675: a leader that is
//! cut off but does not yet know it could still answer; it stops serving after
//! `syncLimit` ticks, less than the session timeout after which a new master
//! can be elected. docs/cluster.md.) A lost connection decides nothing: the
//! check is asked again once the session has moved to another server, until
//! the session ends. The ZooKeeper side is [`ZkAuthority`]
//! (`fence/zookeeper.rs`); the tests below use a fake authority.

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

/// Why a check failed.
pub type Deposed = String;

mod zookeeper;
pub use zookeeper::ZkAuthority;

/// A handle to the fencing task of one master term (pid, epoch).
#[derive(Clone)]
pub struct Fence {
    asks: mpsc::UnboundedSender<oneshot::Sender<Result<(), Deposed>>>,
    failed: watch::Receiver<Option<Deposed>>,
}

/// Where the fence asks whether the term still holds.
pub trait Authority: Send + 'static {
    fn still_master(&self) -> futures_util::future::BoxFuture<'_, Result<(), Deposed>>;
}

impl Fence {
    /// Starts the fencing task (on the current tokio runtime).
    pub fn start(authority: impl Authority) -> Fence {
        let (asks, rx) = mpsc::unbounded_channel();
        let (failed_tx, failed) = watch::channel(None);
        tokio::spawn(run(authority, rx, failed_tx));
        Fence { asks, failed }
    }

    /// Resolves once a check that started after this call has passed; fails
    /// if it did not (or an earlier one failed).
    pub async fn check(&self) -> Result<(), Deposed> {
        if let Some(why) = self.failed.borrow().clone() {
            return Err(why);
        }
        let (tx, rx) = oneshot::channel();
        self.asks
            .send(tx)
            .map_err(|_| "the fencing task ended".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the fencing task ended".into()))
    }

    /// Resolves when a check has failed: this worker is no longer master.
    pub async fn deposed(&self) -> Deposed {
        let mut failed = self.failed.clone();
        let why = match failed.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone().unwrap_or_default(),
            Err(_) => "the fencing task ended".into(),
        };
        why
    }
}

async fn run(
    authority: impl Authority,
    mut asks: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), Deposed>>>,
    failed: watch::Sender<Option<Deposed>>,
) {
    while let Some(first) = asks.recv().await {
        // Everyone who asked before this check starts shares it.
        let mut waiting = vec![first];
        while let Ok(next) = asks.try_recv() {
            waiting.push(next);
        }
        let earlier = failed.borrow().clone();
        let verdict = match earlier {
            Some(why) => Err(why),
            None => authority.still_master().await,
        };
        if let Err(why) = &verdict {
            failed.send_if_modified(|f| {
                if f.is_none() {
                    warn!(reason = %why, "fencing check failed: answering nothing more");
                    *f = Some(why.clone());
                    return true;
                }
                false
            });
        }
        for w in waiting {
            let _ = w.send(verdict.clone());
        }
    }
}

/// A fake authority for the tests of the fence and of what it guards.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use tokio::sync::Notify;

    use super::{Authority, Deposed};

    /// Counts checks; a check waits for `gate` when there is one; fails once
    /// `deposed` is set.
    #[derive(Clone, Default)]
    pub(crate) struct FakeAuthority {
        pub checks: Arc<AtomicUsize>,
        pub deposed: Arc<AtomicBool>,
        pub gate: Option<Arc<Notify>>,
    }

    impl FakeAuthority {
        /// Why a check fails once deposed.
        pub const REASON: &'static str = "taken by another master";
    }

    impl Authority for FakeAuthority {
        fn still_master(&self) -> BoxFuture<'_, Result<(), Deposed>> {
            Box::pin(async move {
                self.checks.fetch_add(1, Ordering::SeqCst);
                if let Some(g) = &self.gate {
                    g.notified().await;
                }
                if self.deposed.load(Ordering::SeqCst) {
                    Err(Self::REASON.into())
                } else {
                    Ok(())
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeAuthority as Fake;
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn callers_waiting_together_share_one_check() {
        let gate = Arc::new(Notify::new());
        let fake = Fake {
            gate: Some(gate.clone()),
            ..Fake::default()
        };
        let fence = Fence::start(fake.clone());
        // The first check starts and blocks; ten more callers queue behind it.
        let first = tokio::spawn({
            let f = fence.clone();
            async move { f.check().await }
        });
        while fake.checks.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (0..10)
            .map(|_| {
                let f = fence.clone();
                tokio::spawn(async move { f.check().await })
            })
            .collect();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        gate.notify_one(); // first check passes
        assert_eq!(first.await.ok(), Some(Ok(())));
        // The ten did not take the first check (it started before they asked):
        // they share the second one.
        while fake.checks.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for l in later {
            assert_eq!(l.await.ok(), Some(Ok(())));
        }
        assert_eq!(fake.checks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_check_fails_every_later_one_and_reports_deposition() {
        let fake = Fake::default();
        let fence = Fence::start(fake.clone());
        assert_eq!(fence.check().await, Ok(()));
        fake.deposed.store(true, Ordering::SeqCst);
        assert_eq!(fence.check().await, Err(Fake::REASON.to_string()));
        assert_eq!(fence.deposed().await, Fake::REASON);
        // Even if ZooKeeper would say yes again, the term is over.
        fake.deposed.store(false, Ordering::SeqCst);
        assert!(fence.check().await.is_err());
    }
}
