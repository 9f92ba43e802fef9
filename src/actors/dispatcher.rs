//! `Dispatcher`: owns the orchestrator's publishing channels and puts requests
//! on `readQ` and `writeQ` with `reply_to = responseQ` and a correlation id.
//! Writes are persistent and confirmed by the broker (a confirmed write survives a
//! broker restart and waits in `writeQ` until a master takes it); reads expire
//! after the request timeout so a read nobody could serve does not linger.
//!
//! It keeps the [`Routes`] the `Election` last told it, so a read nobody can
//! serve is refused at once, and it registers each request's reply slot with the
//! `RpcWaiter` before publishing: one message from the HTTP handler per request.

use std::time::Duration;

use actix::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tokio::sync::oneshot;

use super::rpc_waiter::{Expect, Forget, RpcWaiter};
use crate::broker::messages::Reply;
use crate::broker::{self, MASTER_READ_Q, READ_Q, REQUEST_ID_HEADER, RESPONSE_Q};
use lapin::types::{AMQPValue, FieldTable};

/// Publish one request and have its reply sent to `reply`; resolves once the
/// broker has it (confirmed for writes).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), PublishError>")]
pub struct Publish {
    pub request: Outbound,
    /// Where the `RpcWaiter` sends the reply.
    pub reply: oneshot::Sender<Reply>,
}

/// One request as it goes to the broker.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub queue: &'static str,
    pub correlation_id: String,
    pub body: Vec<u8>,
    /// Persistent and confirmed (writes), or transient with an expiry (reads).
    pub durable: bool,
    pub expires_after: Duration,
    /// Carried to the worker in the `x-request-id` header, for its logs.
    pub request_id: String,
}

/// Who can take requests now, as the `Election` sees it.
#[derive(Message, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Routes {
    /// Slaves serving `readQ`.
    pub serving_slaves: usize,
    /// Whether a master serves `writeQ` and `readQ.master`.
    pub master: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Nobody consumes the queue now: the request would only wait and expire.
    #[error("{0}")]
    NoConsumer(&'static str),
    #[error("publish to the broker failed: {0}")]
    Broker(String),
}

/// Why a request to `queue` cannot be served now (writes always can: they wait
/// durably in `writeQ` for a master).
fn refusal(routes: Routes, queue: &str) -> Option<&'static str> {
    match queue {
        READ_Q if routes.serving_slaves == 0 => Some("no slave is available to serve reads"),
        MASTER_READ_Q if !routes.master => Some("no master is available for a strong read"),
        _ => None,
    }
}

/// Where a publish goes: a real AMQP channel, or (in tests) anything else.
pub trait Publisher: Unpin + 'static {
    fn publish(
        &self,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>>;
}

/// The AMQP publisher: one plain channel for reads, one confirmed for writes.
pub struct AmqpPublisher {
    pub reads: Channel,
    pub writes: Channel,
}

impl Publisher for AmqpPublisher {
    fn publish(
        &self,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>> {
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString(msg.request_id.clone().into()),
        );
        let props = BasicProperties::default()
            .with_correlation_id(msg.correlation_id.clone().into())
            .with_reply_to(RESPONSE_Q.into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let (channel, durable) = if msg.durable {
            (self.writes.clone(), true)
        } else {
            (self.reads.clone(), false)
        };
        Box::pin(async move {
            let res = if durable {
                broker::publish_confirmed(
                    &channel,
                    msg.queue,
                    &msg.body,
                    props,
                    Duration::from_secs(10),
                )
                .await
            } else {
                let props = props.with_expiration(msg.expires_after.as_millis().to_string().into());
                channel
                    .basic_publish(
                        "".into(),
                        msg.queue.into(),
                        BasicPublishOptions::default(),
                        &msg.body,
                        props,
                    )
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            };
            let outcome = match (&res, durable) {
                (Err(_), _) => "failed",
                (Ok(()), true) => "confirmed",
                (Ok(()), false) => "sent",
            };
            crate::prometheus::publish(msg.queue, outcome);
            res.map_err(|e| PublishError::Broker(e.to_string()))
        })
    }
}

pub struct Dispatcher<P: Publisher> {
    publisher: P,
    /// Receives the replies; told each request's reply slot before its publish.
    waiter: Addr<RpcWaiter>,
    routes: Routes,
}

impl<P: Publisher> Dispatcher<P> {
    pub fn new(publisher: P, waiter: Addr<RpcWaiter>) -> Self {
        Dispatcher {
            publisher,
            waiter,
            routes: Routes::default(),
        }
    }
}

impl<P: Publisher> Actor for Dispatcher<P> {
    type Context = Context<Self>;
}

impl<P: Publisher> Handler<Routes> for Dispatcher<P> {
    type Result = ();
    fn handle(&mut self, routes: Routes, _: &mut Context<Self>) {
        self.routes = routes;
    }
}

impl<P: Publisher> Handler<Publish> for Dispatcher<P> {
    type Result = ResponseFuture<Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let Publish { request, reply } = msg;
        if let Some(why) = refusal(self.routes, request.queue) {
            return Box::pin(async move { Err(PublishError::NoConsumer(why)) });
        }
        // Registered before the publish, and the waiter's mailbox is in order:
        // the reply (which follows the publish) always finds its slot.
        let correlation_id = request.correlation_id.clone();
        self.waiter.do_send(Expect {
            correlation_id: correlation_id.clone(),
            reply,
        });
        let waiter = self.waiter.clone();
        let published = self.publisher.publish(request);
        Box::pin(async move {
            let res = published.await;
            if res.is_err() {
                waiter.do_send(Forget { correlation_id });
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::actors::rpc_waiter::{Delivered, Pending};
    use crate::broker::WRITE_Q;
    use crate::db::WriteOutcome;

    /// Records what it publishes; fails every publish when `fail` is set.
    #[derive(Clone, Default)]
    struct Recording {
        sent: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }

    impl Publisher for Recording {
        fn publish(
            &self,
            msg: Outbound,
        ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>> {
            let (sent, fail) = (self.sent.clone(), self.fail);
            Box::pin(async move {
                if fail {
                    return Err(PublishError::Broker("connection closed".into()));
                }
                if let Ok(mut s) = sent.lock() {
                    s.push(format!("{} {}", msg.queue, msg.correlation_id));
                }
                Ok(())
            })
        }
    }

    fn publish(queue: &'static str, id: &str) -> (Publish, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let request = Outbound {
            queue,
            correlation_id: id.into(),
            body: b"{}".to_vec(),
            durable: queue == WRITE_Q,
            expires_after: Duration::from_secs(1),
            request_id: "r".into(),
        };
        (Publish { request, reply }, rx)
    }

    fn start(publisher: Recording) -> (Addr<Dispatcher<Recording>>, Addr<RpcWaiter>) {
        let waiter = RpcWaiter::default().start();
        let dispatcher = Dispatcher::new(publisher, waiter.clone()).start();
        (dispatcher, waiter)
    }

    fn sent(p: &Recording) -> Vec<String> {
        p.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[actix_rt::test]
    async fn refuses_reads_nobody_serves_and_always_takes_writes() {
        let publisher = Recording::default();
        let (dispatcher, waiter) = start(publisher.clone());
        let (msg, _) = publish(READ_Q, "r1");
        let refused = dispatcher.send(msg).await.expect("send");
        assert!(matches!(refused, Err(PublishError::NoConsumer(_))));
        let (msg, _) = publish(MASTER_READ_Q, "s1");
        let refused = dispatcher.send(msg).await.expect("send");
        assert!(matches!(refused, Err(PublishError::NoConsumer(_))));
        // Writes wait durably in writeQ for a master.
        let (msg, _) = publish(WRITE_Q, "w1");
        dispatcher
            .send(msg)
            .await
            .expect("send")
            .expect("published");
        assert_eq!(sent(&publisher), vec!["writeQ w1"]);
        assert_eq!(waiter.send(Pending).await.expect("send"), 1);

        dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: false,
            })
            .await
            .expect("send");
        let (msg, _) = publish(READ_Q, "r2");
        dispatcher
            .send(msg)
            .await
            .expect("send")
            .expect("published");
        let (msg, _) = publish(MASTER_READ_Q, "s2");
        assert!(dispatcher.send(msg).await.expect("send").is_err());
        assert_eq!(sent(&publisher), vec!["writeQ w1", "readQ r2"]);
    }

    #[actix_rt::test]
    async fn the_reply_reaches_the_slot_registered_before_the_publish() {
        let (dispatcher, waiter) = start(Recording::default());
        dispatcher
            .send(Routes {
                serving_slaves: 2,
                master: true,
            })
            .await
            .expect("send");
        let (msg, rx) = publish(READ_Q, "c-1");
        dispatcher
            .send(msg)
            .await
            .expect("send")
            .expect("published");
        let outcome = Reply::Write(WriteOutcome {
            seq: 7,
            rows_affected: 1,
            last_insert_id: None,
        });
        waiter.do_send(Delivered {
            correlation_id: "c-1".into(),
            reply: outcome.clone(),
        });
        assert_eq!(rx.await.expect("answered"), outcome);
    }

    #[actix_rt::test]
    async fn a_failed_publish_leaves_nothing_waiting() {
        let (dispatcher, waiter) = start(Recording {
            fail: true,
            ..Recording::default()
        });
        let (msg, rx) = publish(WRITE_Q, "w1");
        let failed = dispatcher.send(msg).await.expect("send");
        assert!(matches!(failed, Err(PublishError::Broker(_))));
        assert_eq!(waiter.send(Pending).await.expect("send"), 0);
        assert!(rx.await.is_err(), "the slot was dropped");
    }
}
