//! `Dispatcher`: owns the orchestrator's publishing channels and puts requests
//! on `readQ`, `readQ.master` and `writeQ` with `reply_to = responseQ` and a
//! correlation id. Writes are persistent and confirmed by the broker (a
//! confirmed write survives a broker restart and waits in `writeQ` until a
//! master takes it); reads expire after the request timeout so a read nobody
//! could serve does not linger.
//!
//! It keeps the [`Routes`] the `Election` last told it and chooses the queue:
//! strong reads go to the master; eventual reads go to the slaves, or to the
//! master while no slave serves (after a promotion, a slave crash, at start).
//! Nothing is refused for lack of a worker: a request published while nobody
//! serves waits in its queue for the next worker (a failover takes well under
//! the request timeout). It registers each request's reply slot with the
//! `RpcWaiter` before publishing: one message from the HTTP handler per request.

use std::time::Duration;

use actix::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tokio::sync::oneshot;

use super::rpc_waiter::{Expect, Forget, RpcWaiter};
use crate::broker::messages::Reply;
use crate::broker::{self, MASTER_READ_Q, READ_Q, REQUEST_ID_HEADER, RESPONSE_Q, WRITE_Q};
use crate::db::Consistency;
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

/// What a request is, which decides where it goes and how it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read(Consistency),
    /// Persistent and confirmed; waits durably in `writeQ` for a master.
    Write,
}

/// One request as it goes to the broker.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub kind: Kind,
    pub correlation_id: String,
    pub body: Vec<u8>,
    /// Reads expire from their queue after this long.
    pub expires_after: Duration,
    /// A read's `min_seq`: one no write has reached is refused at once
    /// rather than parked on a replica until its wait runs out.
    pub min_seq: Option<u64>,
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
    /// The highest sequence number a worker reported (None: no worker known).
    pub latest_seq: Option<u64>,
}

/// How far beyond the latest reported sequence number a `min_seq` may be:
/// workers report their progress every 500 ms, so a client may legitimately
/// hold a `seq` somewhat newer than the last report, never this much newer.
pub const MIN_SEQ_MARGIN: u64 = 100_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The request can never be served as asked.
    #[error("{0}")]
    Unservable(String),
    #[error("publish to the broker failed: {0}")]
    Broker(String),
}

/// The queue a request of `kind` goes to under `routes`.
pub fn queue_for(routes: Routes, kind: Kind) -> &'static str {
    match kind {
        Kind::Write => WRITE_Q,
        Kind::Read(Consistency::Strong) => MASTER_READ_Q,
        // The master holds every acknowledged write: it answers while no
        // slave serves; with neither (mid-failover) the next master will.
        Kind::Read(Consistency::Eventual) if routes.serving_slaves == 0 => MASTER_READ_Q,
        Kind::Read(Consistency::Eventual) => READ_Q,
    }
}

/// Where a publish goes: a real AMQP channel, or (in tests) anything else.
pub trait Publisher: Unpin + 'static {
    fn publish(
        &self,
        queue: &'static str,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>>;

    /// One round trip to the broker.
    fn probe(&self) -> futures_util::future::BoxFuture<'static, Result<(), String>>;
}

/// The AMQP publisher: one plain channel for reads, one confirmed for writes.
pub struct AmqpPublisher {
    pub reads: Channel,
    pub writes: Channel,
    /// Told when the broker keeps refusing writes on `writes` (nacks for
    /// [`NACK_PATIENCE`]): the session then starts again on new channels.
    pub refused: std::sync::Arc<tokio::sync::Notify>,
}

/// How long a write's publish is retried on one channel while the broker
/// refuses it; then it fails (503, the client retries) and the broker
/// session starts again.
pub const NACK_PATIENCE: Duration = Duration::from_secs(1);

impl Publisher for AmqpPublisher {
    fn probe(&self) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let channel = self.reads.clone();
        Box::pin(async move {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = channel.queue_declare(RESPONSE_Q.into(), passive, FieldTable::default());
            match tokio::time::timeout(Duration::from_secs(2), declared).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("RabbitMQ round trip failed: {e}")),
                Err(_) => Err("RabbitMQ round trip timed out".into()),
            }
        })
    }

    fn publish(
        &self,
        queue: &'static str,
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
        let durable = msg.kind == Kind::Write;
        let channel = if durable {
            self.writes.clone()
        } else {
            self.reads.clone()
        };
        let refused = self.refused.clone();
        Box::pin(async move {
            let res = if durable {
                let res = broker::publish_confirmed_within(
                    &channel,
                    queue,
                    &msg.body,
                    props,
                    Duration::from_secs(10),
                    NACK_PATIENCE,
                )
                .await;
                if res
                    .as_ref()
                    .is_err_and(|e| e.downcast_ref::<broker::Refused>().is_some())
                {
                    refused.notify_one();
                }
                res
            } else {
                let props = props.with_expiration(msg.expires_after.as_millis().to_string().into());
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
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
            crate::prometheus::publish(queue, outcome);
            res.map_err(|e| PublishError::Broker(e.to_string()))
        })
    }
}

/// The broker session's publisher, or `None` while the connection is down
/// (then every publish fails at once with 503).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPublisher<P: Publisher>(pub Option<P>);

/// Whether a round trip to the broker works now (for readiness).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Probe;

pub struct Dispatcher<P: Publisher> {
    publisher: Option<P>,
    /// Receives the replies; told each request's reply slot before its publish.
    waiter: Addr<RpcWaiter>,
    routes: Routes,
}

impl<P: Publisher> Dispatcher<P> {
    pub fn new(publisher: Option<P>, waiter: Addr<RpcWaiter>) -> Self {
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

impl<P: Publisher> Handler<SetPublisher<P>> for Dispatcher<P> {
    type Result = ();
    fn handle(&mut self, SetPublisher(p): SetPublisher<P>, _: &mut Context<Self>) {
        self.publisher = p;
    }
}

impl<P: Publisher> Handler<Probe> for Dispatcher<P> {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        match &self.publisher {
            Some(p) => p.probe(),
            None => Box::pin(async { Err("not connected to RabbitMQ".to_string()) }),
        }
    }
}

impl<P: Publisher> Handler<Publish> for Dispatcher<P> {
    type Result = ResponseFuture<Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let Publish { request, reply } = msg;
        if let (Some(min), Some(latest)) = (request.min_seq, self.routes.latest_seq) {
            if min > latest.saturating_add(MIN_SEQ_MARGIN) {
                let why = format!("min_seq {min} is beyond any sequence number a write has been given (latest {latest})");
                return Box::pin(async move { Err(PublishError::Unservable(why)) });
            }
        }
        let queue = queue_for(self.routes, request.kind);
        let Some(publisher) = &self.publisher else {
            return Box::pin(async {
                Err(PublishError::Broker(
                    "not connected to RabbitMQ (reconnecting)".into(),
                ))
            });
        };
        // Registered before the publish, and the waiter's mailbox is in order:
        // the reply (which follows the publish) always finds its slot.
        let correlation_id = request.correlation_id.clone();
        self.waiter.do_send(Expect {
            correlation_id: correlation_id.clone(),
            reply,
        });
        let waiter = self.waiter.clone();
        let published = publisher.publish(queue, request);
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
    use crate::db::WriteOutcome;

    /// Records what it publishes; fails every publish when `fail` is set.
    #[derive(Clone, Default)]
    struct Recording {
        sent: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }

    impl Publisher for Recording {
        fn probe(&self) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    Err("down".into())
                } else {
                    Ok(())
                }
            })
        }

        fn publish(
            &self,
            queue: &'static str,
            msg: Outbound,
        ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>> {
            let (sent, fail) = (self.sent.clone(), self.fail);
            Box::pin(async move {
                if fail {
                    return Err(PublishError::Broker("connection closed".into()));
                }
                if let Ok(mut s) = sent.lock() {
                    s.push(format!("{queue} {}", msg.correlation_id));
                }
                Ok(())
            })
        }
    }

    const EVENTUAL: Kind = Kind::Read(Consistency::Eventual);
    const STRONG: Kind = Kind::Read(Consistency::Strong);

    fn publish(kind: Kind, id: &str) -> (Publish, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let request = Outbound {
            kind,
            correlation_id: id.into(),
            body: b"{}".to_vec(),
            min_seq: None,
            expires_after: Duration::from_secs(1),
            request_id: "r".into(),
        };
        (Publish { request, reply }, rx)
    }

    fn start(publisher: Recording) -> (Addr<Dispatcher<Recording>>, Addr<RpcWaiter>) {
        let waiter = RpcWaiter::default().start();
        let dispatcher = Dispatcher::new(Some(publisher), waiter.clone()).start();
        (dispatcher, waiter)
    }

    fn sent(p: &Recording) -> Vec<String> {
        p.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn send_all(d: &Addr<Dispatcher<Recording>>, msgs: &[(Kind, &str)]) {
        for (kind, id) in msgs {
            let (msg, _) = publish(*kind, id);
            d.send(msg).await.expect("send").expect("published");
        }
    }

    #[actix_rt::test]
    async fn eventual_reads_go_to_the_master_while_no_slave_serves_and_nothing_is_refused() {
        let publisher = Recording::default();
        let (dispatcher, waiter) = start(publisher.clone());
        // Nobody serves yet (start, or mid-failover): everything waits in a
        // queue the next master serves.
        send_all(
            &dispatcher,
            &[(EVENTUAL, "r1"), (STRONG, "s1"), (Kind::Write, "w1")],
        )
        .await;
        assert_eq!(
            sent(&publisher),
            vec!["readQ.master r1", "readQ.master s1", "writeQ w1"]
        );
        assert_eq!(waiter.send(Pending).await.expect("send"), 3);

        let routes = |serving_slaves, master| Routes {
            serving_slaves,
            master,
            latest_seq: Some(0),
        };
        dispatcher.send(routes(0, true)).await.expect("send");
        send_all(&dispatcher, &[(EVENTUAL, "r2")]).await;
        dispatcher.send(routes(1, true)).await.expect("send");
        send_all(&dispatcher, &[(EVENTUAL, "r3"), (STRONG, "s3")]).await;
        // The only slave is promoted: reads go back to the master.
        dispatcher.send(routes(0, false)).await.expect("send");
        send_all(&dispatcher, &[(EVENTUAL, "r4")]).await;
        assert_eq!(
            sent(&publisher)[3..],
            [
                "readQ.master r2",
                "readQ r3",
                "readQ.master s3",
                "readQ.master r4"
            ]
        );
    }

    #[actix_rt::test]
    async fn the_reply_reaches_the_slot_registered_before_the_publish() {
        let (dispatcher, waiter) = start(Recording::default());
        dispatcher
            .send(Routes {
                serving_slaves: 2,
                master: true,
                latest_seq: None,
            })
            .await
            .expect("send");
        let (msg, rx) = publish(EVENTUAL, "c-1");
        dispatcher
            .send(msg)
            .await
            .expect("send")
            .expect("published");
        let outcome = Reply::Write(WriteOutcome {
            seq: 7,
            rows_affected: 1,
            last_insert_id: None,
            statements: Vec::new(),
        });
        waiter.do_send(Delivered {
            correlation_id: "c-1".into(),
            reply: outcome.clone(),
        });
        assert_eq!(rx.await.expect("answered"), outcome);
    }

    #[actix_rt::test]
    async fn without_a_broker_connection_requests_fail_at_once() {
        let waiter = RpcWaiter::default().start();
        let dispatcher = Dispatcher::<Recording>::new(None, waiter.clone()).start();
        let (msg, rx) = publish(Kind::Write, "w1");
        let failed = dispatcher.send(msg).await.expect("send");
        assert!(matches!(failed, Err(PublishError::Broker(_))));
        assert!(rx.await.is_err(), "no slot was kept");
        assert!(dispatcher.send(Probe).await.expect("send").is_err());
        // The connection comes back.
        let publisher = Recording::default();
        dispatcher
            .send(SetPublisher(Some(publisher.clone())))
            .await
            .expect("send");
        send_all(&dispatcher, &[(Kind::Write, "w2")]).await;
        assert_eq!(sent(&publisher), vec!["writeQ w2"]);
        assert_eq!(dispatcher.send(Probe).await.expect("send"), Ok(()));
    }

    #[actix_rt::test]
    async fn a_min_seq_far_beyond_the_latest_is_refused_at_once() {
        let publisher = Recording::default();
        let (dispatcher, waiter) = start(publisher.clone());
        let far = |min: u64| {
            let (mut msg, _) = publish(EVENTUAL, &min.to_string());
            msg.request.min_seq = Some(min);
            msg
        };
        // No worker reported yet: nothing to judge by, the read waits.
        assert!(dispatcher.send(far(u64::MAX)).await.expect("send").is_ok());
        dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: true,
                latest_seq: Some(40),
            })
            .await
            .expect("send");
        let refused = dispatcher
            .send(far(1_000_000_000_000_000))
            .await
            .expect("send");
        assert!(matches!(refused, Err(PublishError::Unservable(_))));
        assert!(dispatcher
            .send(far(40 + MIN_SEQ_MARGIN))
            .await
            .expect("send")
            .is_ok());
        assert_eq!(sent(&publisher).len(), 2);
        assert_eq!(waiter.send(Pending).await.expect("send"), 2);
    }

    #[actix_rt::test]
    async fn a_failed_publish_leaves_nothing_waiting() {
        let (dispatcher, waiter) = start(Recording {
            fail: true,
            ..Recording::default()
        });
        let (msg, rx) = publish(Kind::Write, "w1");
        let failed = dispatcher.send(msg).await.expect("send");
        assert!(matches!(failed, Err(PublishError::Broker(_))));
        assert_eq!(waiter.send(Pending).await.expect("send"), 0);
        assert!(rx.await.is_err(), "the slot was dropped");
    }
}
