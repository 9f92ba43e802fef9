//! The read service: a slave consumes `readQ` together with the other slaves
//! (RabbitMQ hands out deliveries round-robin); the master consumes
//! `readQ.master` (strong reads, and eventual ones while no slave serves). The
//! consumer runs on the store thread, so each read runs in place on this
//! replica; it is answered on the request's `reply_to` queue with its
//! correlation id.
//!
//! The master answers only what it can prove ([`MasterGate`]): it reads, waits
//! until every write the read saw is acknowledged (confirmed on `syncQ` and
//! fenced), and then passes a fencing check that started after the read. A
//! master that was deposed meanwhile (paused, cut off) answers nothing: the
//! read goes back to the queue for the new master. So a strong read sees every
//! write acknowledged before it began, and never state that was not
//! acknowledged.
//!
//! A read that must wait for its `min_seq` longer than a moment gives its
//! delivery back (it is acked and parked), so reads waiting on a far `min_seq`
//! never hold the prefetch slots other reads need. (A parked read is lost if
//! this worker stops meanwhile: its client gets the request timeout.)

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use super::fence::Fence;
use super::WorkerState;
use crate::broker;
use crate::broker::messages::{ReadMessage, Reply};
use crate::db::Failure;

/// Deliveries in flight per slave; also how many reads it runs at once.
const PREFETCH: u16 = 32;
/// How long a read waiting for its `min_seq` keeps its delivery before it is
/// parked.
const HOLD_WHILE_WAITING: Duration = Duration::from_millis(100);

/// What a master checks before a read's answer leaves it.
#[derive(Clone)]
pub struct MasterGate {
    pub fence: Fence,
    /// The last sequence number acknowledged by this master's write service.
    pub acked: watch::Receiver<u64>,
}

/// A running read consumer.
pub struct Reads {
    /// Closed to stop (unacked reads go back to the queue for another worker).
    pub channel: Channel,
    /// Resolves when the consumer has ended (its channel or connection closed).
    pub ended: oneshot::Receiver<()>,
}

/// Starts consuming `queue` (a master passes its `gate`).
pub async fn start(
    conn: &Connection,
    queue: &str,
    state: WorkerState,
    read_wait: Duration,
    gate: Option<MasterGate>,
) -> lapin::Result<Reads> {
    let channel = broker::consumer_channel(conn, PREFETCH).await?;
    let replies = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("{queue}-{}", state.pid).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // On the store thread: each read runs where the connection lives.
    let replica = state.replica.clone();
    let (alive, ended) = oneshot::channel::<()>();
    replica.spawn(async move {
        // Dropped when the loop ends: the worker hears of it.
        let _alive = alive;
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let state = state.clone();
            let replies = replies.clone();
            let gate = gate.clone();
            tokio::spawn(
                async move { serve_one(&state, delivery, &replies, read_wait, gate).await },
            );
        }
    });
    Ok(Reads { channel, ended })
}

async fn serve_one(
    state: &WorkerState,
    delivery: Delivery,
    replies: &Channel,
    read_wait: Duration,
    gate: Option<MasterGate>,
) {
    let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
    let mut acked = false;
    let message: ReadMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            let reply = Reply::Error(Failure::bad_request(e.to_string()));
            return send(replies, delivery, &reply, acked).await;
        }
    };
    if let Some(min) = message.request.min_seq {
        // The usual wait (a write just made) is short and keeps the delivery,
        // so it goes back to the queue if this worker stops; a longer one is
        // parked: acked, so its slot serves other reads while it waits.
        if !state.replica.wait_for_seq(min, HOLD_WHILE_WAITING).await {
            ack(&delivery).await;
            acked = true;
        }
    }
    let reply = answer(state, message, read_wait).await;
    if let (Some(gate), Reply::Read(outcome)) = (gate, &reply) {
        if let Err(why) = gate.vouch(outcome.seq, read_wait).await {
            debug!(request_id, reason = %why, "read not answered: not provably master");
            if !acked {
                // Back to the queue for the current master.
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                if let Err(e) = delivery.nack(requeue).await {
                    warn!(error = %e, "could not give a read back");
                }
            }
            return;
        }
    }
    debug!(
        request_id,
        ok = !matches!(reply, Reply::Error(_)),
        "served read"
    );
    send(replies, delivery, &reply, acked).await
}

impl MasterGate {
    /// Ok once the state up to `seq` is acknowledged and this worker has been
    /// confirmed master after the read.
    async fn vouch(&self, seq: u64, patience: Duration) -> Result<(), String> {
        let mut acked = self.acked.clone();
        tokio::time::timeout(patience, acked.wait_for(|a| *a >= seq))
            .await
            .map_err(|_| format!("writes up to seq {seq} not acknowledged within {patience:?}"))?
            .map_err(|_| "the write service ended".to_string())?;
        self.fence.check().await
    }
}

/// The reply, written, then the ack. Not both at once: lapin writes a method
/// frame (the ack) ahead of queued publishes (the reply), so a worker dying
/// between the two writes would have acked a read it never answered, where
/// this order at worst answers a redelivered read twice. (Polling both
/// together served 9–11 % more reads: docs/benchmarks.md.)
async fn send(replies: &Channel, delivery: Delivery, reply: &Reply, acked: bool) {
    if let Err(e) = broker::reply(replies, &delivery.properties, reply).await {
        warn!(error = %e, "could not send read reply");
    }
    if !acked {
        ack(&delivery).await;
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        warn!(error = %e, "could not ack read");
    }
}

async fn answer(state: &WorkerState, message: ReadMessage, read_wait: Duration) -> Reply {
    if let Some(min) = message.request.min_seq {
        if !state.replica.wait_for_seq(min, read_wait).await {
            return Reply::Error(Failure::unavailable(format!(
                "replica {} has applied seq {} and did not reach {min} within {read_wait:?}",
                state.pid,
                state.replica.seq()
            )));
        }
    }
    let outcome = state.replica.read(message.request).await.map(|mut o| {
        o.worker = Some(state.pid);
        o
    });
    Reply::from_read(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::fence::fake::FakeAuthority as Term;
    use std::sync::atomic::Ordering;

    fn gate(acked: u64) -> (MasterGate, watch::Sender<u64>, Term) {
        let (tx, rx) = watch::channel(acked);
        let term = Term::default();
        let gate = MasterGate {
            fence: Fence::start(term.clone()),
            acked: rx,
        };
        (gate, tx, term)
    }

    #[tokio::test]
    async fn a_strong_read_waits_until_every_write_it_saw_is_acknowledged() {
        let (gate, acked, _) = gate(4);
        let vouching = tokio::spawn(async move { gate.vouch(6, Duration::from_secs(5)).await });
        acked.send_replace(5);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !vouching.is_finished(),
            "vouched for seq 6 with 5 acknowledged"
        );
        acked.send_replace(6);
        assert_eq!(vouching.await.ok(), Some(Ok(())));
    }

    #[tokio::test]
    async fn a_read_of_unacknowledged_state_is_not_answered() {
        let (gate, _acked, _) = gate(4);
        let verdict = gate.vouch(6, Duration::from_millis(50)).await;
        assert!(verdict.is_err_and(|e| e.contains("not acknowledged")));
    }

    #[tokio::test]
    async fn a_deposed_master_answers_no_read() {
        let (gate, _acked, term) = gate(9);
        assert_eq!(gate.vouch(9, Duration::from_secs(1)).await, Ok(()));
        term.deposed.store(true, Ordering::SeqCst);
        assert_eq!(
            gate.vouch(9, Duration::from_secs(1)).await,
            Err(Term::REASON.to_string())
        );
    }
}
