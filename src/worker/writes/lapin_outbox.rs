//! The answering rule's lapin side ([`super::answer::Outbox`]): replies on
//! their own channel, acks on the channel each delivery came on, and the
//! broker's publisher confirms as the rule's [`Confirm`]s.

use futures_util::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, PublisherConfirm};
use tracing::debug;

use super::answer::{Confirm, Outbox};
use crate::broker::{self, messages::Reply};

/// The broker's answer to a publish, as the answering rule sees it.
pub(super) fn confirmation(publish: PublisherConfirm) -> Confirm {
    Box::pin(async move { Ok(publish.await?.is_ack()) })
}

/// Replies and acks through lapin: replies on their own channel, acks on the
/// channel each delivery came on.
pub(super) struct LapinOutbox(pub(super) Channel);

impl Outbox for LapinOutbox {
    type Delivery = Delivery;

    fn reply<'a>(
        &'a self,
        delivery: &'a Delivery,
        reply: &'a Reply,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        let request_id = broker::request_id(&delivery.properties).unwrap_or_default();
        debug!(request_id, "write answered");
        Box::pin(broker::reply(&self.0, &delivery.properties, reply))
    }

    fn ack_through<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
            Ok(())
        })
    }
}
