//! The master's intake rule, without I/O: how deliveries of `writeQ` become
//! committed batches.
//!
//! 1. **Suspects one at a time.** A new master first takes deliveries alone
//!    (at most one unacknowledged), for as long as they are suspects or
//!    quarantined ([`quarantine::verdict`]): a write that kills this master
//!    takes nothing else back to `writeQ` with it.
//! 2. **Then batches.** The first delivery that is neither is still taken
//!    alone, and the one-at-a-time intake stops before any batch is taken;
//!    from then on a batch is every delivery already here, up to
//!    [`MAX_BATCH`], never waiting for more.
//! 3. Each batch goes to the [`Committer`] (commit, quarantine, publish) and
//!    then, in order, to the answering task ([`super::answer`]). The intake
//!    ends at the first failure, or when the answering task is gone.
//!
//! The broker side is the [`Inbox`] trait (`super::lapin_inbox` is the real
//! one); the tests below use in-memory fakes.

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::info;

use super::answer::Committed;
use super::quarantine::{self, Verdict};
use super::MAX_BATCH;

/// Deliveries of `writeQ`, in the two ways the master takes them.
pub trait Inbox: Send {
    /// A delivered write.
    type Delivery: Send + Sync + 'static;
    /// How many earlier deliveries of `delivery` came back unanswered.
    fn returned(&self, delivery: &Self::Delivery) -> u64;
    /// The next delivery taken alone (at most one unacknowledged at a time).
    fn next_alone(&mut self) -> BoxFuture<'_, anyhow::Result<Self::Delivery>>;
    /// No more deliveries alone; those already taken are still answered.
    fn stop_alone(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// The next delivery for a batch, waiting for one.
    fn next(&mut self) -> BoxFuture<'_, anyhow::Result<Self::Delivery>>;
    /// A delivery that is already here, without waiting (`None`: none is).
    fn ready(&mut self) -> Option<anyhow::Result<Self::Delivery>>;
}

/// Commits a batch of deliveries and publishes what it must (its `syncQ`
/// entries, its quarantined writes), without waiting for the confirms.
pub trait Committer<D>: Send {
    fn commit(&mut self, deliveries: Vec<D>) -> BoxFuture<'_, anyhow::Result<Committed<D>>>;
}

/// Why the intake stopped.
#[derive(Debug)]
pub enum Stopped {
    /// The answering task is gone (its own result says why).
    AnsweringEnded,
    /// The inbox or the committer failed.
    Failed(anyhow::Error),
}

/// Takes deliveries from `inbox` by the rule above, commits them with
/// `committer` and hands each batch to `answering`, until something stops it.
pub async fn run<I, C>(
    inbox: &mut I,
    committer: &mut C,
    answering: &mpsc::Sender<Committed<I::Delivery>>,
    limit: u64,
) -> Stopped
where
    I: Inbox,
    C: Committer<I::Delivery>,
{
    match intake(inbox, committer, answering, limit).await {
        Ok(stopped) | Err(stopped) => stopped,
    }
}

async fn intake<I, C>(
    inbox: &mut I,
    committer: &mut C,
    answering: &mpsc::Sender<Committed<I::Delivery>>,
    limit: u64,
) -> Result<Stopped, Stopped>
where
    I: Inbox,
    C: Committer<I::Delivery>,
{
    loop {
        let delivery = inbox.next_alone().await.map_err(Stopped::Failed)?;
        let count = inbox.returned(&delivery);
        let verdict = quarantine::verdict(count, limit);
        match verdict {
            // Not a suspect: nothing more comes alone (the one in hand is
            // still answered and acked).
            Verdict::Apply => inbox.stop_alone().await.map_err(Stopped::Failed)?,
            Verdict::Suspect => info!(
                count,
                "a write that came back unanswered: applying it alone"
            ),
            Verdict::Quarantine => {}
        }
        hand_over(committer, answering, vec![delivery]).await?;
        if verdict == Verdict::Apply {
            break;
        }
    }
    loop {
        let mut deliveries = vec![inbox.next().await.map_err(Stopped::Failed)?];
        while deliveries.len() < MAX_BATCH {
            match inbox.ready() {
                Some(delivery) => deliveries.push(delivery.map_err(Stopped::Failed)?),
                None => break,
            }
        }
        hand_over(committer, answering, deliveries).await?;
    }
}

async fn hand_over<D, C: Committer<D>>(
    committer: &mut C,
    answering: &mpsc::Sender<Committed<D>>,
    deliveries: Vec<D>,
) -> Result<(), Stopped> {
    let batch = committer
        .commit(deliveries)
        .await
        .map_err(Stopped::Failed)?;
    answering
        .send(batch)
        .await
        .map_err(|_| Stopped::AnsweringEnded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A delivery: its name and how many times it came back before.
    type Fake = (String, u64);

    /// `writeQ` as waves of deliveries: a wave is what is already there when
    /// the master looks; the next wave arrives only when it waits for one.
    /// Records how each delivery was taken.
    #[derive(Default)]
    struct FakeInbox {
        waves: VecDeque<VecDeque<Fake>>,
        stopped_alone: bool,
        events: Arc<Mutex<Vec<String>>>,
    }

    impl FakeInbox {
        fn new(waves: &[&[(&str, u64)]]) -> Self {
            FakeInbox {
                waves: waves
                    .iter()
                    .map(|w| w.iter().map(|(n, c)| (n.to_string(), *c)).collect())
                    .collect(),
                ..Default::default()
            }
        }

        fn record(&self, event: String) {
            if let Ok(mut events) = self.events.lock() {
                events.push(event);
            }
        }

        /// Waits for a delivery: the rest of this wave, else the next wave.
        fn take(&mut self) -> anyhow::Result<Fake> {
            while let Some(wave) = self.waves.front_mut() {
                if let Some(d) = wave.pop_front() {
                    return Ok(d);
                }
                self.waves.pop_front();
            }
            anyhow::bail!("writeQ consumer ended")
        }
    }

    impl Inbox for FakeInbox {
        type Delivery = Fake;
        fn returned(&self, delivery: &Fake) -> u64 {
            delivery.1
        }
        fn next_alone(&mut self) -> BoxFuture<'_, anyhow::Result<Fake>> {
            Box::pin(async move {
                anyhow::ensure!(!self.stopped_alone, "taken alone after the stop");
                let d = self.take()?;
                self.record(format!("alone {}", d.0));
                Ok(d)
            })
        }
        fn stop_alone(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
            Box::pin(async move {
                self.stopped_alone = true;
                self.record("stop alone".into());
                Ok(())
            })
        }
        fn next(&mut self) -> BoxFuture<'_, anyhow::Result<Fake>> {
            Box::pin(async move {
                anyhow::ensure!(self.stopped_alone, "a batch while taking writes alone");
                self.take()
            })
        }
        fn ready(&mut self) -> Option<anyhow::Result<Fake>> {
            let wave = self.waves.front_mut()?;
            wave.pop_front().map(Ok)
        }
    }

    /// Commits by recording the names in each batch; can be told to fail.
    #[derive(Default)]
    struct FakeCommitter {
        fail_at: Option<String>,
    }

    impl Committer<Fake> for FakeCommitter {
        fn commit(
            &mut self,
            deliveries: Vec<Fake>,
        ) -> BoxFuture<'_, anyhow::Result<Committed<Fake>>> {
            Box::pin(async move {
                if let Some(bad) = &self.fail_at {
                    anyhow::ensure!(
                        !deliveries.iter().any(|d| &d.0 == bad),
                        "SQLite refused the batch"
                    );
                }
                Ok(Committed {
                    replies: Vec::new(),
                    deliveries,
                    confirms: Vec::new(),
                    last_seq: 0,
                })
            })
        }
    }

    const LIMIT: u64 = 5;

    /// Runs the intake until the inbox is empty; the batches it handed over
    /// (names) and why it stopped.
    async fn intake_of(
        inbox: &mut FakeInbox,
        committer: &mut FakeCommitter,
    ) -> (Vec<Vec<String>>, Stopped) {
        let (tx, mut rx) = mpsc::channel(1024);
        let stopped = run(inbox, committer, &tx, LIMIT).await;
        drop(tx);
        let mut batches = Vec::new();
        while let Some(batch) = rx.recv().await {
            batches.push(batch.deliveries.into_iter().map(|d| d.0).collect());
        }
        (batches, stopped)
    }

    fn names(batches: &[&[&str]]) -> Vec<Vec<String>> {
        batches
            .iter()
            .map(|b| b.iter().map(|n| n.to_string()).collect())
            .collect()
    }

    fn events(inbox: &FakeInbox) -> Vec<String> {
        inbox.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn suspects_are_taken_alone_until_the_first_ordinary_write_then_batches() {
        // A quarantined write, two suspects, then ordinary writes, all there
        // at once: only the first ordinary one still comes alone.
        let mut inbox = FakeInbox::new(&[&[
            ("poison", LIMIT + 2),
            ("s1", 3),
            ("s2", quarantine::SUSPECT_AFTER),
            ("w1", 1),
            ("w2", 0),
            ("w3", 0),
            ("w4", 1),
        ]]);
        let (batches, stopped) = intake_of(&mut inbox, &mut FakeCommitter::default()).await;
        assert_eq!(
            batches,
            names(&[&["poison"], &["s1"], &["s2"], &["w1"], &["w2", "w3", "w4"]])
        );
        assert_eq!(
            events(&inbox),
            [
                "alone poison",
                "alone s1",
                "alone s2",
                "alone w1",
                "stop alone"
            ]
        );
        assert!(matches!(stopped, Stopped::Failed(e) if e.to_string().contains("consumer ended")));
    }

    #[tokio::test]
    async fn a_batch_is_what_is_already_there_never_more_than_max_batch() {
        let many: Vec<String> = (0..MAX_BATCH * 2 + 5).map(|i| format!("w{i}")).collect();
        let first: Vec<(&str, u64)> = many.iter().map(|n| (n.as_str(), 0)).collect();
        // The first wave is larger than two batches; the second (two writes)
        // arrives only after the master waited.
        let mut inbox = FakeInbox::new(&[&[("start", 0)], &first, &[("late1", 0), ("late2", 0)]]);
        let (batches, _) = intake_of(&mut inbox, &mut FakeCommitter::default()).await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, MAX_BATCH, MAX_BATCH, 5, 2]);
        assert_eq!(batches[4], ["late1", "late2"]);
        let in_order: Vec<&String> = batches.iter().flatten().collect();
        assert_eq!(in_order.len(), 1 + many.len() + 2);
        assert!(in_order[1..=many.len()]
            .iter()
            .zip(&many)
            .all(|(a, b)| *a == b));
    }

    #[tokio::test]
    async fn a_failed_commit_stops_the_intake_and_hands_nothing_after_it_over() {
        let mut inbox = FakeInbox::new(&[&[("w1", 0)], &[("w2", 0), ("bad", 0)], &[("w3", 0)]]);
        let mut committer = FakeCommitter {
            fail_at: Some("bad".into()),
        };
        let (batches, stopped) = intake_of(&mut inbox, &mut committer).await;
        assert_eq!(batches, names(&[&["w1"]]));
        assert!(matches!(stopped, Stopped::Failed(e) if e.to_string().contains("refused")));
    }

    #[tokio::test]
    async fn the_intake_stops_when_the_answering_task_is_gone() {
        let mut inbox = FakeInbox::new(&[&[("w1", 0), ("w2", 0)]]);
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let stopped = run(&mut inbox, &mut FakeCommitter::default(), &tx, LIMIT).await;
        assert!(matches!(stopped, Stopped::AnsweringEnded));
    }
}
