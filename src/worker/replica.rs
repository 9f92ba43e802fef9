//! The worker's store, shared by its consumers: every database call runs on the
//! blocking pool, and the applied sequence number is published on a watch channel
//! so reads can wait for a `min_seq` and promotion can wait for a barrier.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::db::{
    Commit, DbError, LogEntry, ReadOutcome, ReadRequest, Store, SyncApplied, WriteRequest,
};

#[derive(Clone)]
pub struct Replica {
    store: Arc<Mutex<Store>>,
    applied: watch::Sender<u64>,
}

impl Replica {
    pub fn new(store: Store) -> Replica {
        let (applied, _) = watch::channel(store.seq());
        Replica {
            store: Arc::new(Mutex::new(store)),
            applied,
        }
    }

    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let store = self.store.clone();
        let applied = self.applied.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store
                .lock()
                .map_err(|_| DbError::Internal("store lock poisoned".into()))?;
            let out = f(&mut guard);
            applied.send_if_modified(|seq| {
                let changed = *seq != guard.seq();
                *seq = guard.seq();
                changed
            });
            out
        })
        .await
        .map_err(|e| DbError::Internal(format!("database task failed: {e}")))?
    }

    pub fn seq(&self) -> u64 {
        *self.applied.borrow()
    }

    pub async fn epoch(&self) -> Result<u64, DbError> {
        self.with_store(|s| Ok(s.epoch())).await
    }

    pub async fn read(&self, request: ReadRequest) -> Result<ReadOutcome, DbError> {
        self.with_store(move |s| s.read(&request)).await
    }

    pub async fn commit_batch(
        &self,
        epoch: u64,
        writes: Vec<(String, WriteRequest)>,
    ) -> Result<Vec<Result<Commit, DbError>>, DbError> {
        self.with_store(move |s| s.commit_batch(epoch, &writes))
            .await
    }

    pub async fn apply_sync(&self, entry: LogEntry) -> Result<SyncApplied, DbError> {
        self.with_store(move |s| s.apply_sync(&entry)).await
    }

    pub async fn observe_epoch(&self, epoch: u64) -> Result<bool, DbError> {
        self.with_store(move |s| s.observe_epoch(epoch)).await
    }

    /// Online backup of this copy to `path`: (seq, epoch) it holds.
    pub async fn backup_to(&self, path: std::path::PathBuf) -> Result<(u64, u64), DbError> {
        self.with_store(move |s| s.backup_to(&path)).await
    }

    /// Waits until this replica has applied `seq`; false if `patience` ran out first.
    pub async fn wait_for_seq(&self, seq: u64, patience: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(patience, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
