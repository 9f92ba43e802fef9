//! The master's answering rule, without I/O: committed batches are answered
//! in commit order, and a batch's replies and acks leave only after
//!
//! 1. every publish the batch made (its `syncQ` entries, its quarantined
//!    writes' copies in `writeQ.dead`) is confirmed by the broker, and
//! 2. the fence has passed (this worker is still the master of its epoch).
//!
//! Batches waiting together are answered together (one fencing check); each
//! batch acks exactly its own deliveries (`multiple` up to its last one: a
//! batch's deliveries share one channel, consecutive batches may not). The
//! first batch that may not be answered ends the loop with the reason, and
//! nothing after it is answered or acked either: the worker stops and the
//! broker gives the deliveries to the next master.
//!
//! The broker side is the [`Outbox`] trait; `super::lapin_outbox` is the real
//! one, the tests below use an in-memory fake.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use crate::broker::messages::Reply;
use crate::worker::fence::Fence;

/// Whether the broker took a publish (`Ok(true)`), refused it (`Ok(false)`,
/// a `basic.nack`) or the channel failed.
pub type Confirm = BoxFuture<'static, anyhow::Result<bool>>;

/// Where a master's answers go: replies to the clients, acks to `writeQ`.
pub trait Outbox: Send + 'static {
    /// A delivered write.
    type Delivery: Send + Sync + 'static;
    /// Sends `reply` to the client that sent `delivery` (errors are logged
    /// by the caller: a lost reply leaves the write applied, and the client's
    /// retry under its write id gets the same outcome).
    fn reply<'a>(
        &'a self,
        delivery: &'a Self::Delivery,
        reply: &'a Reply,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Acks every unacked delivery of `delivery`'s channel up to it.
    fn ack_through<'a>(&'a self, delivery: &'a Self::Delivery)
        -> BoxFuture<'a, anyhow::Result<()>>;
}

/// A batch committed and published, not yet answered.
pub struct Committed<D> {
    pub deliveries: Vec<D>,
    /// One per delivery, in the same order.
    pub replies: Vec<Reply>,
    pub confirms: Vec<Confirm>,
    /// The highest sequence number the batch committed (0: none).
    pub last_seq: u64,
}

/// Answers the batches from `batches` in order until the channel closes
/// (`Ok`) or a batch may not be answered (`Err`, why). `acked` is raised to
/// the last sequence number answered.
pub async fn run<O: Outbox>(
    mut batches: mpsc::Receiver<Committed<O::Delivery>>,
    fence: Fence,
    outbox: O,
    acked: Arc<watch::Sender<u64>>,
    confirm_patience: Duration,
) -> anyhow::Result<()> {
    while let Some(first) = batches.recv().await {
        let mut group = vec![first];
        while let Ok(next) = batches.try_recv() {
            group.push(next);
        }
        let last_seq = group.iter().map(|b| b.last_seq).max().unwrap_or(0);
        // The confirms go first; what is answered afterwards is kept apart.
        let mut confirms = Vec::new();
        let mut answers = Vec::with_capacity(group.len());
        for batch in group {
            confirms.extend(batch.confirms);
            answers.push((batch.deliveries, batch.replies));
        }
        let confirmed =
            tokio::time::timeout(confirm_patience, futures_util::future::join_all(confirms))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no confirm for syncQ/writeQ.dead within {confirm_patience:?}")
                })?;
        for c in confirmed {
            if !c? {
                anyhow::bail!(
                    "broker refused a syncQ entry or a quarantined write (batches up to seq {last_seq})"
                );
            }
        }
        // Fencing: a master that was paused past its session and replaced
        // stops here, so its writes go back to writeQ for the new master (its
        // entries, of an old epoch, are ignored by replicas that saw the new
        // master's barrier).
        fence
            .check()
            .await
            .map_err(|why| anyhow::anyhow!("{why}; not acknowledging"))?;

        let sent = answers
            .iter()
            .flat_map(|(deliveries, replies)| deliveries.iter().zip(replies))
            .map(|(delivery, reply)| outbox.reply(delivery, reply));
        for outcome in futures_util::future::join_all(sent).await {
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "could not send write reply");
            }
        }
        for last in answers
            .iter()
            .filter_map(|(deliveries, _)| deliveries.last())
        {
            outbox.ack_through(last).await?;
        }
        acked.send_if_modified(|a| {
            let raised = last_seq > *a;
            *a = (*a).max(last_seq);
            raised
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Failure;
    use crate::worker::fence::fake::FakeAuthority as Term;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// Records what would have left the worker, in order.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn events(&self) -> Vec<String> {
            self.0.lock().map(|e| e.clone()).unwrap_or_default()
        }
    }

    impl Outbox for Recorder {
        type Delivery = &'static str;
        fn reply<'a>(
            &'a self,
            d: &'a &'static str,
            _: &'a Reply,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(format!("reply {d}"));
                Ok(())
            })
        }
        fn ack_through<'a>(&'a self, d: &'a &'static str) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(format!("ack {d}"));
                Ok(())
            })
        }
    }

    fn ok_reply() -> Reply {
        Reply::Error(Failure::bad_request("placeholder outcome"))
    }

    fn batch(
        names: &[&'static str],
        confirms: Vec<Confirm>,
        last_seq: u64,
    ) -> Committed<&'static str> {
        Committed {
            deliveries: names.to_vec(),
            replies: names.iter().map(|_| ok_reply()).collect(),
            confirms,
            last_seq,
        }
    }

    /// A confirm the test resolves by hand.
    fn pending_confirm() -> (oneshot::Sender<bool>, Confirm) {
        let (tx, rx) = oneshot::channel();
        (
            tx,
            Box::pin(async move { rx.await.map_err(|_| anyhow::anyhow!("dropped")) }),
        )
    }

    fn confirmed(ack: bool) -> Confirm {
        Box::pin(async move { Ok(ack) })
    }

    struct Running {
        batches: mpsc::Sender<Committed<&'static str>>,
        outbox: Recorder,
        authority: Term,
        acked: watch::Receiver<u64>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    fn start() -> Running {
        let (batches, rx) = mpsc::channel(8);
        let outbox = Recorder::default();
        let authority = Term::default();
        let acked = Arc::new(watch::channel(0).0);
        let acked_rx = acked.subscribe();
        let task = tokio::spawn(run(
            rx,
            Fence::start(authority.clone()),
            outbox.clone(),
            acked,
            Duration::from_millis(200),
        ));
        Running {
            batches,
            outbox,
            authority,
            acked: acked_rx,
            task,
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn nothing_leaves_before_every_confirm_of_the_batch() {
        let mut r = start();
        let (first, c1) = pending_confirm();
        let (second, c2) = pending_confirm();
        r.batches
            .send(batch(&["w1", "w2"], vec![c1, c2], 2))
            .await
            .expect("send");
        settle().await;
        first.send(true).expect("confirm");
        settle().await;
        assert!(
            r.outbox.events().is_empty(),
            "answered before its second confirm"
        );
        second.send(true).expect("confirm");
        r.acked.wait_for(|a| *a == 2).await.expect("acked raised");
        assert_eq!(r.outbox.events(), ["reply w1", "reply w2", "ack w2"]);
    }

    #[tokio::test]
    async fn a_refused_publish_answers_nothing_and_ends_the_service() {
        let r = start();
        r.batches
            .send(batch(&["w1"], vec![confirmed(true), confirmed(false)], 1))
            .await
            .expect("send");
        let ended = r.task.await.expect("joined");
        assert!(ended.is_err_and(|e| e.to_string().contains("refused")));
        assert!(r.outbox.events().is_empty());
        assert_eq!(*r.acked.borrow(), 0);
    }

    #[tokio::test]
    async fn a_confirm_that_never_comes_ends_the_service_unanswered() {
        let r = start();
        let (_never, c) = pending_confirm();
        r.batches
            .send(batch(&["w1"], vec![c], 1))
            .await
            .expect("send");
        let ended = r.task.await.expect("joined");
        assert!(ended.is_err_and(|e| e.to_string().contains("no confirm")));
        assert!(r.outbox.events().is_empty());
    }

    #[tokio::test]
    async fn a_deposed_master_answers_and_acks_nothing_more() {
        let r = start();
        r.batches
            .send(batch(&["w1"], vec![confirmed(true)], 1))
            .await
            .expect("send");
        let mut acked = r.acked.clone();
        acked.wait_for(|a| *a == 1).await.expect("first answered");
        r.authority.deposed.store(true, Ordering::SeqCst);
        r.batches
            .send(batch(&["w2"], vec![confirmed(true)], 2))
            .await
            .expect("send");
        let ended = r.task.await.expect("joined");
        assert!(ended.is_err_and(|e| e.to_string().contains("another master")));
        assert_eq!(r.outbox.events(), ["reply w1", "ack w1"]);
        assert_eq!(*r.acked.borrow(), 1);
    }

    #[tokio::test]
    async fn batches_waiting_together_are_answered_together_each_acking_its_own() {
        let mut r = start();
        // Held by the first batch's confirm, three batches queue up behind it.
        let (go, c) = pending_confirm();
        r.batches
            .send(batch(&["a1", "a2"], vec![c], 2))
            .await
            .expect("send");
        settle().await;
        r.batches
            .send(batch(&["b1"], vec![confirmed(true)], 3))
            .await
            .expect("send");
        // A batch of quarantined writes only: no seq, still answered.
        r.batches
            .send(batch(&["c1"], vec![confirmed(true)], 0))
            .await
            .expect("send");
        go.send(true).expect("confirm");
        r.acked.wait_for(|a| *a == 3).await.expect("acked raised");
        settle().await;
        let events = r.outbox.events();
        // a's group went alone (it was taken before the others arrived), then b and c together.
        assert_eq!(
            events,
            ["reply a1", "reply a2", "ack a2", "reply b1", "reply c1", "ack b1", "ack c1"]
        );
        drop(r.batches);
        assert!(r.task.await.expect("joined").is_ok());
    }

    #[tokio::test]
    async fn a_later_batch_never_overtakes_an_earlier_one() {
        let mut r = start();
        let (go, c) = pending_confirm();
        r.batches
            .send(batch(&["early"], vec![c], 1))
            .await
            .expect("send");
        settle().await;
        r.batches
            .send(batch(&["late"], vec![confirmed(true)], 2))
            .await
            .expect("send");
        settle().await;
        assert!(r.outbox.events().is_empty(), "the later batch went first");
        go.send(true).expect("confirm");
        r.acked.wait_for(|a| *a == 2).await.expect("acked raised");
        assert_eq!(
            r.outbox.events(),
            ["reply early", "ack early", "reply late", "ack late"]
        );
    }
}
