//! `Dispatcher`: owns the orchestrator's publishing channels and puts requests
//! on `readQ` and `writeQ` with `reply_to = responseQ` and a correlation id.
//! Writes are persistent and confirmed by the broker (a confirmed write survives a
//! broker restart and waits in `writeQ` until a master takes it); reads expire
//! after the request timeout so a read nobody could serve does not linger.

use std::time::Duration;

use actix::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

use crate::broker::{self, REQUEST_ID_HEADER, RESPONSE_Q};
use lapin::types::{AMQPValue, FieldTable};

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
    /// Carried to the worker in the `x-request-id` header, for its logs.
    pub request_id: String,
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
            res.map_err(|e| PublishError(e.to_string()))
        })
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
