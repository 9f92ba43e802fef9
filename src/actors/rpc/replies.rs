//! The `responseQ` consumer: every reply a worker publishes reaches the
//! `RpcWaiter` as a [`Delivered`], matched there to its waiting request by
//! correlation id. Replies are not acked (`no_ack`): one that arrives while
//! nobody waits is dropped anyway. The orchestrator's broker session starts it
//! before anything is published and ends the session when it ends.

use actix::Addr;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tracing::warn;

use crate::actors::rpc_waiter::{Delivered, RpcWaiter};
use crate::broker::messages::Reply;
use crate::broker::RESPONSE_Q;

/// A running consumer of `responseQ`.
pub struct Replies {
    /// Kept open as long as the consumer runs.
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// Starts consuming `responseQ` on a channel of its own.
pub async fn consume(conn: &lapin::Connection) -> lapin::Result<Replies> {
    let channel = conn.create_channel().await?;
    let consumer = channel
        .basic_consume(
            RESPONSE_Q.into(),
            "orchestrator-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(Replies {
        _channel: channel,
        consumer,
    })
}

impl Replies {
    /// Feeds every reply to `waiter`; returns why the consumer ended.
    pub async fn feed(mut self, waiter: &Addr<RpcWaiter>) -> String {
        while let Some(delivery) = self.consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return format!("responseQ consumer failed: {e}"),
            };
            let id = delivery.properties.correlation_id().as_ref();
            match decode(id.map(|id| id.as_str()), &delivery.data) {
                Ok(Some(delivered)) => waiter.do_send(delivered),
                Ok(None) => warn!("reply without a correlation id on responseQ"),
                Err(e) => warn!(error = %e, "unreadable reply on responseQ"),
            }
        }
        "responseQ consumer ended".into()
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
}
