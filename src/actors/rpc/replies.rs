//! Where the orchestrator receives its replies: a reply queue of its own
//! per broker session, `responseQ.<uuid>`, declared **exclusive** (only the
//! connection that declared it may consume it, and the broker deletes it
//! when that connection closes or its heartbeat stops) and consumed with an
//! exclusive consumer. Every request names it as `reply_to` (the
//! `Dispatcher`'s [`AmqpPublisher`](crate::actors::dispatcher::AmqpPublisher)),
//! and workers answer on `reply_to`, as ever (`broker::reply`). So no reply
//! destination is ever shared: two orchestrators on one broker cannot take
//! each other's replies (the spec's single `responseQ` would hand each about
//! half of the other's), and a session's queue does not outlive it. A reply
//! to a queue that is gone (its session ended, its requests already answered
//! 503) is dropped by the broker.
//!
//! An exclusive queue is a classic queue on the node the connection is on:
//! on a cluster it is not replicated, and need not be, as it lives and dies
//! with the connection (losing that node ends the session anyway, and the
//! next session declares a new queue on another node). Why this and not direct
//! reply-to (measured 4–13 % slower here, and it needs a consumer on every
//! publishing channel): docs/cluster.md, "Replies: one destination per
//! orchestrator", and docs/benchmarks.md.
//!
//! Replies are not acked (`no_ack`): one that arrives while nobody waits is
//! dropped anyway. Each reaches the `RpcWaiter` as a [`Delivered`], matched
//! there to its waiting request by correlation id. The orchestrator's broker
//! session starts the consumer before anything is published and ends the
//! session when it ends.

use actix::Addr;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tracing::{info, warn};

use crate::actors::rpc_waiter::{Delivered, RpcWaiter};
use crate::broker::messages::Reply;

/// What every reply queue's name starts with (the spec's `responseQ`); the
/// rest is unique per session.
pub const REPLY_Q_PREFIX: &str = "responseQ.";

/// A running consumer of this session's reply queue.
pub struct Replies {
    queue: String,
    /// Kept open as long as the consumer runs.
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// A fresh reply queue name: [`REPLY_Q_PREFIX`] and a uuid, so a new
/// session never collides with its predecessor's queue while the broker has
/// not yet noticed the old connection is gone.
fn fresh_name() -> String {
    format!("{REPLY_Q_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Declares this session's reply queue (exclusive, auto-delete, not
/// durable, a classic queue whatever `DBAAS_REPLICAS` says) on a channel of
/// its own and consumes it with an exclusive consumer. Requests name
/// [`Replies::queue`] as `reply_to`.
pub async fn consume(conn: &lapin::Connection) -> lapin::Result<Replies> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            fresh_name().as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                durable: false,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = declared.name().to_string();
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "orchestrator-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    info!(queue = %queue, "consuming replies on this session's own exclusive queue");
    Ok(Replies {
        queue,
        _channel: channel,
        consumer,
    })
}

impl Replies {
    /// The queue requests name as `reply_to`.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Feeds every reply to `waiter`; returns why the consumer ended.
    pub async fn feed(mut self, waiter: &Addr<RpcWaiter>) -> String {
        while let Some(delivery) = self.consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return format!("reply queue {} consumer failed: {e}", self.queue),
            };
            let id = delivery.properties.correlation_id().as_ref();
            match decode(id.map(|id| id.as_str()), &delivery.data) {
                Ok(Some(delivered)) => waiter.do_send(delivered),
                Ok(None) => warn!(queue = %self.queue, "reply without a correlation id"),
                Err(e) => warn!(queue = %self.queue, error = %e, "unreadable reply"),
            }
        }
        format!("reply queue {} consumer ended", self.queue)
    }
}

/// A reply's body under its correlation id (None: no id, nobody to give it to).
fn decode(
    correlation_id: Option<&str>,
    body: &[u8],
) -> Result<Option<Delivered>, serde_json::Error> {
    let reply: Reply = serde_json::from_slice(body)?;
    Ok(correlation_id.map(|id| Delivered {
        correlation_id: id.to_string(),
        reply,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ErrorKind;

    #[test]
    fn replies_are_decoded_under_their_correlation_id() {
        let body = br#"{"write": {"seq": 3, "rows_affected": 1}}"#;
        let delivered = decode(Some("c-1"), body)
            .expect("readable")
            .expect("has an id");
        assert_eq!(delivered.correlation_id, "c-1");
        assert!(matches!(delivered.reply, Reply::Write(w) if w.seq == 3));
        assert!(decode(None, body).expect("readable").is_none());
        assert!(decode(Some("c-2"), b"not json").is_err());
    }

    #[test]
    fn an_older_workers_error_reply_is_understood() {
        let old = br#"{"error": {"status": 409, "error": "constraint violated: UNIQUE"}}"#;
        let delivered = decode(Some("c-1"), old)
            .expect("readable")
            .expect("has an id");
        match delivered.reply {
            Reply::Error(f) => assert_eq!(f.kind, ErrorKind::Constraint),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_session_gets_a_reply_queue_of_its_own() {
        let (a, b) = (fresh_name(), fresh_name());
        assert!(a.starts_with("responseQ.") && b.starts_with("responseQ."));
        assert_ne!(a, b);
        assert!(a.len() < 255, "an AMQP short string");
    }
}
