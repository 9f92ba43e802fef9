//! `Dispatcher`: owns the orchestrator's publishing channels and puts requests
//! on `readQ`, `readQ.master` and `writeQ` with a correlation id and
//! `reply_to` = this broker session's own exclusive reply queue
//! (`responseQ.<uuid>`, [`super::rpc::replies`]), so a reply comes back to
//! the orchestrator that asked and to no other. Writes are persistent and
//! confirmed by the broker (a confirmed write survives a broker restart and
//! waits in `writeQ` until a master takes it); reads expire after the request
//! timeout so a read nobody could serve does not linger.
//!
//! It keeps the [`Routes`] the `Election` last told it, and each request's
//! [`Target`] says, under them, which [`Queue`] it goes to and whether it can
//! be served at all (the rules live in [`super::rpc::request`]). It publishes,
//! and tells the `Scaler` of each read it takes (below); the reply slot is the
//! RPC boundary's ([`super::rpc`]), registered with the `RpcWaiter` before the
//! request reaches this actor.
//!
//! **What the Scaler counts.** A read is counted here and nowhere else, once
//! it is known to be both valid (only requests that validated reach the
//! boundary) and servable under the current routes: a `min_seq` refused as
//! beyond any sequence number (a 400) is not counted, so neither malformed
//! nor unservable reads can scale the cluster. A servable read is counted
//! even if the broker then fails to take it: the demand was real.

use std::time::Duration;

use actix::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

pub use super::rpc::request::Routes;
use super::rpc::request::{Queue, Target};
use super::scaler::ReadReceived;
use crate::broker::{self, REQUEST_ID_HEADER};
use crate::db::Failure;

/// Publish one request; resolves once the broker has it (confirmed for
/// writes). An error is the request's answer: unservable (bad request) or the
/// broker unreachable (unavailable).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Failure>")]
pub struct Publish(pub Outbound);

/// One request as it goes to the broker.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Where it goes and whether it can be served.
    pub target: Target,
    pub correlation_id: String,
    /// The encoded `ReadMessage` / `WriteMessage`.
    pub body: Vec<u8>,
    /// Reads expire from their queue after this long.
    pub expires_after: Duration,
    /// Carried to the worker in the `x-request-id` header, for its logs.
    pub request_id: String,
}

/// Where a publish goes: a real AMQP channel, or (in tests) anything else.
pub trait Publisher: Unpin + 'static {
    fn publish(
        &self,
        queue: Queue,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>>;

    /// One round trip to the broker.
    fn probe(&self) -> futures_util::future::BoxFuture<'static, Result<(), String>>;
}

/// The AMQP publisher: one plain channel for reads, one confirmed for writes.
pub struct AmqpPublisher {
    pub reads: Channel,
    pub writes: Channel,
    /// Where replies go: the session's own reply queue
    /// ([`super::rpc::replies::Replies::queue`]), consumed before anything
    /// is published.
    pub reply_to: String,
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
        let (channel, reply_to) = (self.reads.clone(), self.reply_to.clone());
        Box::pin(async move {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            // The session's reply queue is still there (only this connection
            // may declare it, even passively: it is exclusive).
            let declared =
                channel.queue_declare(reply_to.as_str().into(), passive, FieldTable::default());
            match tokio::time::timeout(Duration::from_secs(2), declared).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("RabbitMQ round trip failed: {e}")),
                Err(_) => Err("RabbitMQ round trip timed out".into()),
            }
        })
    }

    fn publish(
        &self,
        queue: Queue,
        msg: Outbound,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString(msg.request_id.clone().into()),
        );
        let props = BasicProperties::default()
            .with_correlation_id(msg.correlation_id.clone().into())
            .with_reply_to(self.reply_to.as_str().into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let durable = msg.target.durable();
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
                    queue.name(),
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
                        queue.name().into(),
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
            crate::prometheus::publish(queue.name(), outcome);
            res.map_err(|e| e.to_string())
        })
    }
}

/// The broker session's publisher, or `None` while the connection is down
/// (then every publish fails at once: unavailable, a 503).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPublisher<P: Publisher>(pub Option<P>);

/// Whether a round trip to the broker works now (for readiness).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Probe;

pub struct Dispatcher<P: Publisher> {
    publisher: Option<P>,
    routes: Routes,
    /// Told of every read taken (the `Scaler`).
    reads: Option<Recipient<ReadReceived>>,
}

impl<P: Publisher> Dispatcher<P> {
    pub fn new(publisher: Option<P>) -> Self {
        Dispatcher {
            publisher,
            routes: Routes::default(),
            reads: None,
        }
    }

    /// Tells `scaler` of each valid, servable read.
    pub fn counting_reads(mut self, scaler: Recipient<ReadReceived>) -> Self {
        self.reads = Some(scaler);
        self
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
    type Result = ResponseFuture<Result<(), Failure>>;

    fn handle(&mut self, Publish(request): Publish, _: &mut Context<Self>) -> Self::Result {
        if let Err(unservable) = request.target.servable(self.routes) {
            return Box::pin(async move { Err(unservable) });
        }
        // The one place a read is counted for the Scaler (module docs).
        if let (Target::Read { .. }, Some(scaler)) = (request.target, &self.reads) {
            scaler.do_send(ReadReceived);
        }
        let Some(publisher) = &self.publisher else {
            return Box::pin(async {
                Err(Failure::unavailable(
                    "not connected to RabbitMQ (reconnecting)",
                ))
            });
        };
        let published = publisher.publish(request.target.queue(self.routes), request);
        Box::pin(async move {
            published
                .await
                .map_err(|e| Failure::unavailable(format!("publish to the broker failed: {e}")))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::actors::rpc::request::MIN_SEQ_MARGIN;
    use crate::db::{Consistency, ErrorKind};

    /// Stands in for the Scaler: counts the reads it is told of.
    #[derive(Default)]
    pub(crate) struct ReadCounter(usize);

    impl Actor for ReadCounter {
        type Context = Context<Self>;
    }

    impl Handler<ReadReceived> for ReadCounter {
        type Result = ();
        fn handle(&mut self, _: ReadReceived, _: &mut Context<Self>) {
            self.0 += 1;
        }
    }

    /// How many reads the counter was told of (answered after every
    /// `ReadReceived` sent before it: one mailbox, in order).
    #[derive(Message)]
    #[rtype(result = "usize")]
    pub(crate) struct Counted;

    impl Handler<Counted> for ReadCounter {
        type Result = usize;
        fn handle(&mut self, _: Counted, _: &mut Context<Self>) -> usize {
            self.0
        }
    }

    /// Records what it publishes; fails every publish when `fail` is set.
    #[derive(Clone, Default)]
    pub(crate) struct Recording {
        pub sent: Arc<Mutex<Vec<String>>>,
        pub fail: bool,
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
            queue: Queue,
            msg: Outbound,
        ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
            let (sent, fail) = (self.sent.clone(), self.fail);
            Box::pin(async move {
                if fail {
                    return Err("connection closed".into());
                }
                if let Ok(mut s) = sent.lock() {
                    s.push(format!("{} {}", queue.name(), msg.correlation_id));
                }
                Ok(())
            })
        }
    }

    impl Recording {
        pub(crate) fn sent(&self) -> Vec<String> {
            self.sent.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    const EVENTUAL: Target = Target::Read {
        consistency: Consistency::Eventual,
        min_seq: None,
    };
    const STRONG: Target = Target::Read {
        consistency: Consistency::Strong,
        min_seq: None,
    };

    fn publish(target: Target, id: &str) -> Publish {
        Publish(Outbound {
            target,
            correlation_id: id.into(),
            body: b"{}".to_vec(),
            expires_after: Duration::from_secs(1),
            request_id: "r".into(),
        })
    }

    async fn send_all(d: &Addr<Dispatcher<Recording>>, msgs: &[(Target, &str)]) {
        for (target, id) in msgs {
            d.send(publish(*target, id))
                .await
                .expect("send")
                .expect("published");
        }
    }

    #[actix_rt::test]
    async fn eventual_reads_go_to_the_master_while_no_slave_serves_and_nothing_is_refused() {
        let publisher = Recording::default();
        let dispatcher = Dispatcher::new(Some(publisher.clone())).start();
        // Nobody serves yet (start, or mid-failover): everything waits in a
        // queue the next master serves.
        send_all(
            &dispatcher,
            &[(EVENTUAL, "r1"), (STRONG, "s1"), (Target::Write, "w1")],
        )
        .await;
        assert_eq!(
            publisher.sent(),
            vec!["readQ.master r1", "readQ.master s1", "writeQ w1"]
        );

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
            publisher.sent()[3..],
            [
                "readQ.master r2",
                "readQ r3",
                "readQ.master s3",
                "readQ.master r4"
            ]
        );
    }

    #[actix_rt::test]
    async fn without_a_broker_connection_requests_fail_at_once() {
        let dispatcher = Dispatcher::<Recording>::new(None).start();
        let failed = dispatcher
            .send(publish(Target::Write, "w1"))
            .await
            .expect("send");
        assert!(
            matches!(&failed, Err(f) if f.kind == ErrorKind::Unavailable),
            "{failed:?}"
        );
        assert!(dispatcher.send(Probe).await.expect("send").is_err());
        // The connection comes back.
        let publisher = Recording::default();
        dispatcher
            .send(SetPublisher(Some(publisher.clone())))
            .await
            .expect("send");
        send_all(&dispatcher, &[(Target::Write, "w2")]).await;
        assert_eq!(publisher.sent(), vec!["writeQ w2"]);
        assert_eq!(dispatcher.send(Probe).await.expect("send"), Ok(()));
    }

    #[actix_rt::test]
    async fn an_unservable_request_is_refused_before_the_broker() {
        let publisher = Recording::default();
        let dispatcher = Dispatcher::new(Some(publisher.clone())).start();
        dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: true,
                latest_seq: Some(40),
            })
            .await
            .expect("send");
        let far = Target::Read {
            consistency: Consistency::Eventual,
            min_seq: Some(1_000_000_000_000_000),
        };
        let refused = dispatcher.send(publish(far, "far")).await.expect("send");
        assert!(
            matches!(&refused, Err(f) if f.kind == ErrorKind::BadRequest),
            "{refused:?}"
        );
        assert!(publisher.sent().is_empty());
    }

    #[actix_rt::test]
    async fn only_valid_servable_reads_are_counted_for_the_scaler() {
        let publisher = Recording::default();
        let counter = ReadCounter::default().start();
        let dispatcher = Dispatcher::new(Some(publisher.clone()))
            .counting_reads(counter.clone().recipient())
            .start();
        let counted = || counter.send(Counted);
        dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: true,
                latest_seq: Some(40),
            })
            .await
            .expect("send");
        let at = |min| Target::Read {
            consistency: Consistency::Eventual,
            min_seq: Some(min),
        };
        send_all(
            &dispatcher,
            &[
                (EVENTUAL, "r1"),
                (STRONG, "s1"),
                (at(40 + MIN_SEQ_MARGIN), "near"),
                (Target::Write, "w1"),
            ],
        )
        .await;
        assert_eq!(counted().await.expect("send"), 3, "every read, no write");

        // Refused (400) as beyond any sequence number: not counted.
        for id in ["far-1", "far-2"] {
            let refused = dispatcher
                .send(publish(at(41 + MIN_SEQ_MARGIN), id))
                .await
                .expect("send");
            assert!(
                matches!(&refused, Err(f) if f.kind == ErrorKind::BadRequest),
                "{refused:?}"
            );
        }
        assert_eq!(counted().await.expect("send"), 3, "refused reads counted");
        assert_eq!(publisher.sent().len(), 4);

        // Servable, but the broker is away (a 503): the demand still counts.
        dispatcher.send(SetPublisher(None)).await.expect("send");
        let failed = dispatcher
            .send(publish(EVENTUAL, "r2"))
            .await
            .expect("send");
        assert!(
            matches!(&failed, Err(f) if f.kind == ErrorKind::Unavailable),
            "{failed:?}"
        );
        assert_eq!(counted().await.expect("send"), 4);
    }

    #[actix_rt::test]
    async fn a_failed_publish_is_unavailable() {
        let dispatcher = Dispatcher::new(Some(Recording {
            fail: true,
            ..Recording::default()
        }))
        .start();
        let failed = dispatcher
            .send(publish(Target::Write, "w1"))
            .await
            .expect("send");
        match failed {
            Err(f) => {
                assert_eq!(f.kind, ErrorKind::Unavailable);
                assert!(f.message.contains("connection closed"), "{}", f.message);
            }
            Ok(()) => panic!("published"),
        }
    }
}
