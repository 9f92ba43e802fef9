//! `RpcWaiter`: completes the request waiting for each reply from the
//! session's reply queue (fed by [`super::rpc::replies`]), matched by correlation id. A request's
//! slot is registered and, if it ends without a reply (timeout, refusal,
//! client gone), forgotten by the RPC boundary's slot guard
//! ([`super::rpc::slot`]), so a late reply is dropped instead of leaking.

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::debug;

use crate::broker::messages::Reply;
use crate::db::Failure;

/// Register interest in the reply with this correlation id (before publishing).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Expect {
    pub correlation_id: String,
    pub reply: oneshot::Sender<Reply>,
}

/// The waiting request gave up (timeout, refusal, client gone): drop its slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub correlation_id: String,
}

/// A reply arrived on the reply queue.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Delivered {
    pub correlation_id: String,
    pub reply: Reply,
}

/// The connection the requests went out on is gone, and their replies with it:
/// every waiting request is answered at once (unavailable: a 503) saying so.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Abandon {
    pub reason: String,
}

/// How many requests are waiting (for status and tests).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Pending;

/// How many replies arrived that no request waited for (late, duplicate, or
/// another orchestrator's: the last must never happen, as each has a reply
/// queue of its own).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Unmatched;

#[derive(Default)]
pub struct RpcWaiter {
    waiting: HashMap<String, oneshot::Sender<Reply>>,
    unmatched: u64,
}

impl Actor for RpcWaiter {
    type Context = Context<Self>;
}

impl Handler<Expect> for RpcWaiter {
    type Result = ();
    fn handle(&mut self, msg: Expect, _: &mut Context<Self>) {
        self.waiting.insert(msg.correlation_id, msg.reply);
    }
}

impl Handler<Forget> for RpcWaiter {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.waiting.remove(&msg.correlation_id);
    }
}

impl Handler<Delivered> for RpcWaiter {
    type Result = ();
    fn handle(&mut self, msg: Delivered, _: &mut Context<Self>) {
        match self.waiting.remove(&msg.correlation_id) {
            Some(tx) => {
                let _ = tx.send(msg.reply);
            }
            None => {
                self.unmatched += 1;
                debug!(id = %msg.correlation_id, "reply for a request nobody waits for (late or duplicate)")
            }
        }
    }
}

impl Handler<Abandon> for RpcWaiter {
    type Result = ();
    fn handle(&mut self, msg: Abandon, _: &mut Context<Self>) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Reply::Error(Failure::unavailable(format!(
                "{}: no reply can come; a write may still be applied once (it waits in writeQ if the broker stored it)",
                msg.reason
            ))));
        }
    }
}

impl Handler<Pending> for RpcWaiter {
    type Result = usize;
    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> usize {
        self.waiting.len()
    }
}

impl Handler<Unmatched> for RpcWaiter {
    type Result = u64;
    fn handle(&mut self, _: Unmatched, _: &mut Context<Self>) -> u64 {
        self.unmatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::WriteOutcome;

    fn reply(seq: u64) -> Reply {
        Reply::Write(WriteOutcome {
            seq,
            rows_affected: 1,
            last_insert_id: None,
            statements: Vec::new(),
        })
    }

    #[actix_rt::test]
    async fn replies_reach_the_request_with_their_correlation_id() {
        let waiter = RpcWaiter::default().start();
        let (tx_a, rx_a) = oneshot::channel();
        let (tx_b, rx_b) = oneshot::channel();
        waiter
            .send(Expect {
                correlation_id: "a".into(),
                reply: tx_a,
            })
            .await
            .expect("send");
        waiter
            .send(Expect {
                correlation_id: "b".into(),
                reply: tx_b,
            })
            .await
            .expect("send");
        waiter
            .send(Delivered {
                correlation_id: "b".into(),
                reply: reply(2),
            })
            .await
            .expect("send");
        waiter
            .send(Delivered {
                correlation_id: "a".into(),
                reply: reply(1),
            })
            .await
            .expect("send");
        assert_eq!(rx_a.await.expect("a answered"), reply(1));
        assert_eq!(rx_b.await.expect("b answered"), reply(2));
        assert_eq!(waiter.send(Pending).await.expect("send"), 0);
        assert_eq!(waiter.send(Unmatched).await.expect("send"), 0);
    }

    #[actix_rt::test]
    async fn abandoning_answers_every_waiting_request_as_unavailable() {
        let waiter = RpcWaiter::default().start();
        let mut rxs = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = oneshot::channel();
            waiter.do_send(Expect {
                correlation_id: id.into(),
                reply: tx,
            });
            rxs.push(rx);
        }
        waiter
            .send(Abandon {
                reason: "connection lost".into(),
            })
            .await
            .expect("send");
        for rx in rxs {
            match rx.await.expect("answered") {
                Reply::Error(e) => {
                    assert_eq!(e.kind, crate::db::ErrorKind::Unavailable);
                    assert!(e.message.starts_with("connection lost"), "{}", e.message);
                }
                other => panic!("not an error: {other:?}"),
            }
        }
        assert_eq!(waiter.send(Pending).await.expect("send"), 0);
    }

    #[actix_rt::test]
    async fn late_and_unknown_replies_are_dropped() {
        let waiter = RpcWaiter::default().start();
        let (tx, rx) = oneshot::channel();
        waiter
            .send(Expect {
                correlation_id: "x".into(),
                reply: tx,
            })
            .await
            .expect("send");
        waiter
            .send(Forget {
                correlation_id: "x".into(),
            })
            .await
            .expect("send");
        waiter
            .send(Delivered {
                correlation_id: "x".into(),
                reply: reply(1),
            })
            .await
            .expect("send");
        waiter
            .send(Delivered {
                correlation_id: "nobody".into(),
                reply: reply(1),
            })
            .await
            .expect("send");
        assert!(rx.await.is_err(), "forgotten request gets nothing");
        assert_eq!(waiter.send(Pending).await.expect("send"), 0);
        assert_eq!(waiter.send(Unmatched).await.expect("send"), 2);
    }
}
