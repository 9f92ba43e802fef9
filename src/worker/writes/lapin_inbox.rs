//! The intake rule's lapin side ([`super::intake::Inbox`]): deliveries alone
//! on a consumer with prefetch 1, batches on a second consumer opened once the
//! first is cancelled. The first consumer's channel stays open until the
//! inbox is dropped: closing it would return its last delivery, still being
//! answered, to `writeQ`.

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::intake::Inbox;
use super::{IN_FLIGHT, MAX_BATCH};
use crate::broker::{self, dead, WRITE_Q};

pub(super) struct LapinInbox<'c> {
    conn: &'c Connection,
    pid: u32,
    /// Kept open for the deliveries taken alone.
    alone_channel: Channel,
    alone: Consumer,
    /// Opened at the first batch (the channel must outlive the consumer).
    batches: Option<(Channel, Consumer)>,
}

impl<'c> LapinInbox<'c> {
    /// Starts consuming `writeQ` one delivery at a time.
    pub(super) async fn open(conn: &'c Connection, pid: u32) -> anyhow::Result<Self> {
        let channel = broker::consumer_channel(conn, 1).await?;
        let alone = channel
            .basic_consume(
                WRITE_Q.into(),
                format!("writes-{pid}-careful").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(LapinInbox {
            conn,
            pid,
            alone_channel: channel,
            alone,
            batches: None,
        })
    }

    async fn batch_consumer(&mut self) -> anyhow::Result<&mut Consumer> {
        if self.batches.is_none() {
            let channel =
                broker::consumer_channel(self.conn, (MAX_BATCH * IN_FLIGHT) as u16).await?;
            let consumer = channel
                .basic_consume(
                    WRITE_Q.into(),
                    format!("writes-{}", self.pid).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.batches = Some((channel, consumer));
        }
        match &mut self.batches {
            Some((_, consumer)) => Ok(consumer),
            None => anyhow::bail!("the writeQ batch consumer is missing"),
        }
    }
}

fn delivered(next: Option<lapin::Result<Delivery>>) -> anyhow::Result<Delivery> {
    match next {
        Some(delivery) => Ok(delivery?),
        None => anyhow::bail!("writeQ consumer ended"),
    }
}

impl Inbox for LapinInbox<'_> {
    type Delivery = Delivery;

    fn returned(&self, delivery: &Delivery) -> u64 {
        dead::delivery_count(&delivery.properties)
    }

    fn next_alone(&mut self) -> BoxFuture<'_, anyhow::Result<Delivery>> {
        Box::pin(async move { delivered(self.alone.next().await) })
    }

    fn stop_alone(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.alone_channel
                .basic_cancel(self.alone.tag(), BasicCancelOptions::default())
                .await?;
            Ok(())
        })
    }

    fn next(&mut self) -> BoxFuture<'_, anyhow::Result<Delivery>> {
        Box::pin(async move {
            let consumer = self.batch_consumer().await?;
            delivered(consumer.next().await)
        })
    }

    fn ready(&mut self) -> Option<anyhow::Result<Delivery>> {
        let (_, consumer) = self.batches.as_mut()?;
        match consumer.next().now_or_never() {
            Some(Some(delivery)) => Some(delivery.map_err(Into::into)),
            _ => None,
        }
    }
}
