//! The markers and barriers a worker has read back from `syncQ`. A worker
//! publishes one (a slave's marker on joining, a new master's barrier) and
//! waits until its own sync loop reads it: everything before it in the stream
//! is then applied. The loop can read several in a row faster than a waiter
//! wakes (a slave's marker, then the new master's barrier a millisecond
//! later), so the last few are kept, not just the latest: a waiter never
//! misses its own.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;

/// How many recent nonces are kept; far more than can arrive between a
/// record and a waiter's wake-up.
const KEPT: usize = 64;

/// Nonces of the markers and barriers read from `syncQ`, newest last.
#[derive(Debug)]
pub struct Marks(watch::Sender<VecDeque<String>>);

impl Default for Marks {
    fn default() -> Self {
        Marks(watch::channel(VecDeque::new()).0)
    }
}

impl Marks {
    /// The sync loop read the marker or barrier `nonce`.
    pub fn record(&self, nonce: String) {
        self.0.send_modify(|seen| {
            if seen.len() == KEPT {
                seen.pop_front();
            }
            seen.push_back(nonce);
        });
    }

    /// A waiter for `nonce`: take it *before* publishing, so a read-back that
    /// comes first is not missed.
    pub fn waiter(&self) -> watch::Receiver<VecDeque<String>> {
        self.0.subscribe()
    }

    /// Waits until `nonce` has been read, at most `patience`. False on timeout.
    pub async fn wait(
        mut waiter: watch::Receiver<VecDeque<String>>,
        nonce: &str,
        patience: Duration,
    ) -> bool {
        matches!(
            tokio::time::timeout(
                patience,
                waiter.wait_for(|seen| seen.iter().any(|n| n == nonce))
            )
            .await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_marker_followed_at_once_by_a_barrier_is_not_missed() {
        let marks = Marks::default();
        let waiter = marks.waiter();
        // Both read before the waiter runs: the latest alone would be "barrier".
        marks.record("marker".into());
        marks.record("barrier".into());
        assert!(Marks::wait(waiter, "marker", Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn a_nonce_never_read_times_out() {
        let marks = Marks::default();
        let waiter = marks.waiter();
        marks.record("someone else's".into());
        assert!(!Marks::wait(waiter, "mine", Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn only_the_last_few_are_kept() {
        let marks = Marks::default();
        for n in 0..KEPT + 1 {
            marks.record(n.to_string());
        }
        let waiter = marks.waiter();
        assert!(!Marks::wait(waiter.clone(), "0", Duration::from_millis(10)).await);
        assert!(Marks::wait(waiter, &KEPT.to_string(), Duration::from_millis(10)).await);
    }
}
