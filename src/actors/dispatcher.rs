//! `Dispatcher`: owns the orchestrator's publishing channels and puts requests
//! on `readQ` and `writeQ` with `reply_to = responseQ` and a correlation id.
//! Writes are persistent and confirmed by the broker (a confirmed write survives a
//! broker restart and waits in `writeQ` until a master takes it); reads expire
//! after the request timeout so a read nobody could serve does not linger.

use std::time::Duration;

use actix::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

use crate::broker::{self, RESPONSE_Q};

/// Publish one request; resolves once the broker has it (confirmed for writes).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), PublishError>")]
pub struct Publish {
    pub queue: &'static str,
    pub correlation_id: String,
    pub body: Vec<u8>,
    /// Persistent and confirmed (writes), or transient with an expiry (reads).
    pub durable: bool,
    pub expires_after: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("publish to the broker failed: {0}")]
pub struct PublishError(pub String);

/// Where a publish goes: a real AMQP channel, or (in tests) anything else.
pub trait Publisher: Unpin + 'static {
    fn publish(
        &self,
        msg: Publish,
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
        msg: Publish,
    ) -> futures_util::future::BoxFuture<'static, Result<(), PublishError>> {
        let props = BasicProperties::default()
            .with_correlation_id(msg.correlation_id.clone().into())
            .with_reply_to(RESPONSE_Q.into())
            .with_content_type("application/json".into());
        if msg.durable {
            let channel = self.writes.clone();
            Box::pin(async move {
                broker::publish_confirmed(
                    &channel,
                    msg.queue,
                    &msg.body,
                    props,
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| PublishError(e.to_string()))
            })
        } else {
            let channel = self.reads.clone();
            let props = props.with_expiration(msg.expires_after.as_millis().to_string().into());
            Box::pin(async move {
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
                    .map_err(|e| PublishError(e.to_string()))
            })
        }
    }
}

pub struct Dispatcher<P: Publisher> {
    publisher: P,
}

impl<P: Publisher> Dispatcher<P> {
    pub fn new(publisher: P) -> Self {
        Dispatcher { publisher }
    }
}

impl<P: Publisher> Actor for Dispatcher<P> {
    type Context = Context<Self>;
}

impl<P: Publisher> Handler<Publish> for Dispatcher<P> {
    type Result = ResponseFuture<Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        self.publisher.publish(msg)
    }
}
