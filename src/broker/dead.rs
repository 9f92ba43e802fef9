//! `writeQ` as a quorum queue with a delivery limit, and `writeQ.dead`, where
//! poison writes end (issue 14).
//!
//! - `writeQ` is a RabbitMQ *quorum* queue: it counts how often each message was
//!   handed out and came back unacknowledged (its consumer crashed, lost its
//!   connection or closed its channel) and stamps the count on the next delivery
//!   as `x-delivery-count`. The master reads it and quarantines a write that came
//!   back [`write_delivery_limit`] times (see `worker::quarantine`).
//! - The queue's own `x-delivery-limit` is one above that, with dead-lettering to
//!   `writeQ.dead` through the default exchange: the broker's backstop for a
//!   write that kills the master even before it is inspected.
//! - `writeQ.dead` is a durable classic queue. Each message is the original
//!   write (body and properties) plus headers saying why and when it was
//!   quarantined; [`list`], [`drop_writes`] and [`retry`] are `dbaasctl dead`.
//!
//! Every process declares the same arguments ([`declare`], from
//! `broker::open_once`): the limit comes from `DBAAS_WRITE_DELIVERY_LIMIT`,
//! which the orchestrator passes on to its workers. A `writeQ` left by an older
//! release (a classic queue) is migrated when it is empty ([`declare`]).

use std::sync::OnceLock;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tracing::{info, warn};

use super::messages::WriteMessage;
use super::WRITE_Q;

/// Where quarantined writes wait for an operator.
pub const DEAD_WRITE_Q: &str = "writeQ.dead";
/// The environment variable that sets [`write_delivery_limit`].
pub const DELIVERY_LIMIT_ENV: &str = "DBAAS_WRITE_DELIVERY_LIMIT";
/// Deliveries a write gets before it is quarantined, by default.
pub const DEFAULT_WRITE_DELIVERY_LIMIT: u64 = 5;
/// The smallest limit accepted: a write that was merely in flight when a
/// master died (or in the batch of a poison write) comes back once or twice
/// (see `worker::quarantine::SUSPECT_AFTER`); it must not be quarantined.
pub const MIN_WRITE_DELIVERY_LIMIT: u64 = 3;

/// Headers the master adds to a write it quarantines.
pub const REASON_HEADER: &str = "x-dbaas-dead-reason";
pub const DEAD_AT_HEADER: &str = "x-dbaas-dead-at";
pub const DEAD_COUNT_HEADER: &str = "x-dbaas-delivery-count";
pub const DEAD_BY_HEADER: &str = "x-dbaas-dead-by";

/// How many unacknowledged deliveries a write may have before the master
/// quarantines it instead of applying it: `DBAAS_WRITE_DELIVERY_LIMIT`
/// (default 5, at least 3), read once per process.
pub fn write_delivery_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        parse_limit(std::env::var(DELIVERY_LIMIT_ENV).ok().as_deref()).unwrap_or_else(|bad| {
            warn!(
                value = bad,
                "{DELIVERY_LIMIT_ENV} is not a whole number; using {DEFAULT_WRITE_DELIVERY_LIMIT}"
            );
            DEFAULT_WRITE_DELIVERY_LIMIT
        })
    })
}

/// The limit `value` sets (None: the default); an unreadable value is returned
/// as the error.
fn parse_limit(value: Option<&str>) -> Result<u64, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_WRITE_DELIVERY_LIMIT),
        Some(v) => v
            .parse::<u64>()
            .map(|n| n.clamp(MIN_WRITE_DELIVERY_LIMIT, 1000))
            .map_err(|_| v.to_string()),
    }
}

/// `writeQ`'s arguments for a quarantine `limit`: a quorum queue whose
/// broker-side delivery limit (the backstop) is one above it, dead-lettering to
/// `writeQ.dead` through the default exchange.
pub fn write_queue_arguments(limit: u64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(DEAD_WRITE_Q.into()),
    );
    args
}

/// Declares `writeQ.dead` and `writeQ` (a quorum queue, see the module doc).
///
/// A `writeQ` that exists with other arguments makes the broker refuse (406,
/// which closes the channel). If it is the classic queue of an older release
/// and empty, it is deleted and declared again as a quorum queue; if it still
/// holds writes, the error says how to drain it (the caller retries). Any other
/// difference means processes disagree on `DBAAS_WRITE_DELIVERY_LIMIT`.
pub async fn declare(conn: &Connection) -> anyhow::Result<()> {
    let limit = write_delivery_limit();
    let replicas = super::replicas();
    let mut channel = conn.create_channel().await?;
    match channel
        .queue_declare(
            DEAD_WRITE_Q.into(),
            super::durable(),
            super::work_queue_args(replicas),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if super::is_precondition_failed(&e) => {
            channel = conn.create_channel().await?;
            channel
                .queue_declare(DEAD_WRITE_Q.into(), super::passive(), FieldTable::default())
                .await?;
            warn!(
                replicas,
                "writeQ.dead exists with other arguments: using it as it is (docs/cluster.md)"
            );
        }
        Err(e) => return Err(e.into()),
    }
    let mut args = write_queue_arguments(limit);
    super::add_group_size(&mut args, replicas);
    match channel
        .queue_declare(WRITE_Q.into(), super::durable(), args)
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        Err(e) if super::is_precondition_failed(&e) => {
            if replicas > 1 && same_but_group_size(conn, limit).await? {
                return Ok(());
            }
            migrate(conn, limit).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `writeQ` is the quorum queue of a single-node deployment (the same
/// delivery limit, no initial group size): a cluster uses it as it is. Its
/// replicas are the nodes it was created on; `rabbitmq-queues grow` adds the
/// others (docs/cluster.md).
async fn same_but_group_size(conn: &Connection, limit: u64) -> anyhow::Result<bool> {
    let channel = conn.create_channel().await?;
    match channel
        .queue_declare(
            WRITE_Q.into(),
            super::durable(),
            write_queue_arguments(limit),
        )
        .await
    {
        Ok(_) => {
            warn!("writeQ is a quorum queue declared without x-quorum-initial-group-size: using it as it is; add replicas with `rabbitmq-queues grow` (docs/cluster.md)");
            let _ = channel.close(200, "declared".into()).await;
            Ok(true)
        }
        Err(e) if super::is_precondition_failed(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `writeQ` exists with other arguments: replace it if it is an empty classic
/// queue of an older release, or say what is wrong.
async fn migrate(conn: &Connection, limit: u64) -> anyhow::Result<()> {
    // The older release declared `writeQ` durable without arguments: only that
    // queue accepts this declaration.
    let channel = conn.create_channel().await?;
    let legacy = match channel
        .queue_declare(WRITE_Q.into(), super::durable(), FieldTable::default())
        .await
    {
        Ok(q) => q,
        Err(e) if super::is_precondition_failed(&e) => {
            return Err(anyhow::anyhow!(
                "writeQ exists with other arguments than this process declares (a quorum queue with x-delivery-limit {}, on {} node(s)): every process must run with the same {DELIVERY_LIMIT_ENV} (this one has {limit}) and DBAAS_REPLICAS; to change it, delete writeQ while it is empty",
                limit + 1,
                super::replicas()
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let waiting = legacy.message_count();
    if waiting > 0 {
        let _ = channel.close(200, "classic writeQ not empty".into()).await;
        return Err(anyhow::anyhow!(
            "writeQ is still the classic queue of an earlier release and holds {waiting} write(s): it becomes a quorum queue once it is empty. Drain it first: run the earlier release's orchestrator and workers until writeQ is empty (rabbitmqctl list_queues name messages), or move its messages with a shovel to a temporary queue; this process keeps retrying"
        ));
    }
    let options = QueueDeleteOptions {
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    match channel.queue_delete(WRITE_Q.into(), options).await {
        Ok(_) => {}
        // A write arrived in between (406) or another process deleted it first.
        Err(e) => {
            return Err(anyhow::anyhow!(
                "could not delete the empty classic writeQ to migrate it: {e}"
            ))
        }
    }
    channel
        .queue_declare(
            WRITE_Q.into(),
            super::durable(),
            write_queue_arguments(limit),
        )
        .await?;
    let _ = channel.close(200, "migrated".into()).await;
    info!(
        limit,
        "migrated writeQ from a classic queue to a quorum queue with a delivery limit"
    );
    Ok(())
}

/// Messages in `writeQ.dead` now (a passive declare, which leaves it as it is).
pub async fn depth(channel: &Channel) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(DEAD_WRITE_Q.into(), super::passive(), FieldTable::default())
        .await?;
    Ok(q.message_count())
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(name))
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// How many times this message was delivered before and came back
/// unacknowledged. RabbitMQ 3.x quorum queues stamp `x-delivery-count` on every
/// redelivery; 4.x counts there only explicit rejections and counts every
/// earlier delivery in `x-acquired-count`, so the larger of the two is taken.
/// A first delivery carries neither: 0.
pub fn delivery_count(props: &BasicProperties) -> u64 {
    ["x-delivery-count", "x-acquired-count"]
        .iter()
        .filter_map(|h| header(props, h).and_then(as_u64))
        .max()
        .unwrap_or(0)
}

/// The headers of a write as the master quarantines it: the original ones
/// plus why, when, by which worker and after how many deliveries.
pub fn quarantine_headers(
    original: &BasicProperties,
    reason: &str,
    deliveries: u64,
    by_pid: u32,
) -> FieldTable {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        DEAD_AT_HEADER.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    headers.insert(
        DEAD_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(deliveries).unwrap_or(i64::MAX)),
    );
    headers.insert(
        DEAD_BY_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(by_pid)),
    );
    headers
}

/// One message of `writeQ.dead`, as `dbaasctl dead list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadWrite {
    /// The write id (`key:<Idempotency-Key>` or a uuid); "?" if unreadable.
    pub write_id: String,
    /// What the write does, e.g. "insert into users".
    pub what: String,
    /// Deliveries it had before it was quarantined.
    pub deliveries: Option<u64>,
    /// Why it is here: the master's reason, or the broker's (`delivery_limit`).
    pub reason: String,
    /// When it got here (RFC 3339), if the message says.
    pub at: Option<String>,
}

/// A `writeQ.dead` message summarised.
pub fn describe(props: &BasicProperties, body: &[u8]) -> DeadWrite {
    let (write_id, what) = match serde_json::from_slice::<WriteMessage>(body) {
        Ok(m) => (m.write_id, m.request.to_string()),
        Err(_) => {
            // Not a valid write (any more): show what can be read of it.
            let raw: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            let id = raw
                .as_ref()
                .and_then(|v| v["write_id"].as_str())
                .unwrap_or("?")
                .to_string();
            (id, "unreadable write".to_string())
        }
    };
    // Dead-lettered by the broker: the `x-death` entry says why and when.
    let death = header(props, "x-death").and_then(|v| match v {
        AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    });
    let death_field = |k: &str| {
        death
            .as_ref()
            .and_then(|t| t.inner().get(&ShortString::from(k)).cloned())
    };
    let reason = header(props, REASON_HEADER)
        .and_then(as_text)
        .or_else(|| {
            death_field("reason")
                .and_then(|v| as_text(&v))
                .map(|r| format!("dead-lettered by RabbitMQ ({r})"))
        })
        .unwrap_or_else(|| "unknown".into());
    let at = header(props, DEAD_AT_HEADER).and_then(as_text).or_else(|| {
        death_field("time")
            .and_then(|v| as_u64(&v))
            .and_then(|secs| chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0))
            .map(|t| t.to_rfc3339())
    });
    let deliveries = header(props, DEAD_COUNT_HEADER)
        .and_then(as_u64)
        .or_else(|| {
            // The broker moved it on the return that went over the limit.
            let counted = delivery_count(props);
            (counted > 0).then_some(counted + 1)
        });
    DeadWrite {
        write_id,
        what,
        deliveries,
        reason,
        at,
    }
}

/// Which dead writes an operator command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    All,
    WriteId(String),
}

impl Select {
    fn matches(&self, w: &DeadWrite) -> bool {
        match self {
            Select::All => true,
            Select::WriteId(id) => &w.write_id == id,
        }
    }
}

/// Takes every message of `writeQ.dead` onto `channel` without acknowledging
/// (so closing the channel puts back whatever was not acked), at most as many
/// as were there at the start: writes quarantined meanwhile stay for next time.
async fn take_all(channel: &Channel) -> anyhow::Result<Vec<lapin::message::Delivery>> {
    let there = depth(channel).await?;
    let mut taken = Vec::new();
    while taken.len() < there as usize {
        match channel
            .basic_get(DEAD_WRITE_Q.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => taken.push(m.delivery),
            None => break,
        }
    }
    Ok(taken)
}

/// Every dead write, oldest first; they all stay in `writeQ.dead`.
pub async fn list(conn: &Connection) -> anyhow::Result<Vec<DeadWrite>> {
    let channel = conn.create_channel().await?;
    let taken = take_all(&channel).await?;
    let listed = taken
        .iter()
        .map(|d| describe(&d.properties, &d.data))
        .collect();
    // Nothing was acknowledged: closing the channel puts all of them back.
    channel.close(200, "listed".into()).await?;
    Ok(listed)
}

/// Removes the selected dead writes for good; returns what was removed.
pub async fn drop_writes(conn: &Connection, select: &Select) -> anyhow::Result<Vec<DeadWrite>> {
    let channel = conn.create_channel().await?;
    let mut dropped = Vec::new();
    for d in take_all(&channel).await? {
        let w = describe(&d.properties, &d.data);
        if select.matches(&w) {
            d.ack(BasicAckOptions::default()).await?;
            dropped.push(w);
        }
    }
    channel.close(200, "dropped".into()).await?;
    Ok(dropped)
}

/// Headers that belong to a message's dead life, not to the write.
fn is_dead_header(name: &str) -> bool {
    name.starts_with("x-dbaas-dead")
        || name == DEAD_COUNT_HEADER
        || name.starts_with("x-death")
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
        || name == "x-delivery-count"
        || name == "x-acquired-count"
}

/// The properties a retried write is published with: the original ones
/// (reply_to, correlation id, request id) without the dead-letter headers.
/// The reply then goes to the reply queue of the orchestrator session that
/// published the write; that session is usually long over, its queue gone
/// with it, and the broker drops the reply (the client had its 504).
pub fn retry_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if !is_dead_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let mut out = BasicProperties::default().with_headers(headers);
    if let Some(r) = props.reply_to() {
        out = out.with_reply_to(r.clone());
    }
    if let Some(c) = props.correlation_id() {
        out = out.with_correlation_id(c.clone());
    }
    out
}

/// Puts the selected dead writes back on `writeQ` as new messages (delivery
/// count 0), each confirmed by the broker before it leaves `writeQ.dead`;
/// returns what was retried. A write already applied (it was quarantined after
/// its commit) is recognised by its write id and not applied twice.
pub async fn retry(conn: &Connection, select: &Select) -> anyhow::Result<Vec<DeadWrite>> {
    let channel = super::confirmed_channel(conn).await?;
    let mut retried = Vec::new();
    for d in take_all(&channel).await? {
        let w = describe(&d.properties, &d.data);
        if select.matches(&w) {
            super::publish_confirmed(
                &channel,
                WRITE_Q,
                &d.data,
                retry_properties(&d.properties),
                Duration::from_secs(10),
            )
            .await?;
            d.ack(BasicAckOptions::default()).await?;
            retried.push(w);
        }
    }
    channel.close(200, "retried".into()).await?;
    Ok(retried)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(t)
    }

    #[test]
    fn the_limit_comes_from_the_environment_with_a_floor() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_WRITE_DELIVERY_LIMIT));
        assert_eq!(parse_limit(Some(" 7 ")), Ok(7));
        assert_eq!(parse_limit(Some("1")), Ok(MIN_WRITE_DELIVERY_LIMIT));
        assert_eq!(parse_limit(Some("five")), Err("five".to_string()));
    }

    #[test]
    fn the_queue_backstop_is_one_above_the_quarantine_limit() {
        let args = write_queue_arguments(5);
        let get = |k: &str| args.inner().get(&ShortString::from(k)).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(6)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("".into()))
        );
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString(DEAD_WRITE_Q.into()))
        );
    }

    #[test]
    fn the_delivery_count_is_the_larger_of_the_brokers_counts() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        assert_eq!(
            delivery_count(&props(&[("x-delivery-count", AMQPValue::LongLongInt(3))])),
            3
        );
        assert_eq!(
            delivery_count(&props(&[
                ("x-delivery-count", AMQPValue::LongInt(0)),
                ("x-acquired-count", AMQPValue::LongLongInt(4)),
            ])),
            4
        );
        assert_eq!(
            delivery_count(&props(&[("x-delivery-count", AMQPValue::LongLongInt(-1))])),
            0
        );
    }

    #[test]
    fn a_quarantined_write_is_described_and_retried_without_its_dead_headers() {
        let body = br#"{"write_id":"key:k1","request":{"table":"users","insert":{"username":"u","password":"p"}}}"#;
        let original = props(&[
            ("x-request-id", AMQPValue::LongString("r1".into())),
            ("x-delivery-count", AMQPValue::LongLongInt(5)),
        ])
        .with_reply_to("responseQ.5f1d0c3e9a7b4e21b0c4d2a8f6e3b1c7".into())
        .with_correlation_id("c1".into());
        let dead = original.clone().with_headers(quarantine_headers(
            &original,
            "killed its master",
            6,
            42,
        ));
        let w = describe(&dead, body);
        assert_eq!(w.write_id, "key:k1");
        assert_eq!(w.what, "insert into users");
        assert_eq!(w.deliveries, Some(6));
        assert_eq!(w.reason, "killed its master");
        assert!(w.at.is_some());

        let again = retry_properties(&dead);
        let headers = again.headers().clone().unwrap_or_default();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-request-id"]);
        assert_eq!(
            again.reply_to().as_ref().map(|s| s.as_str()),
            Some("responseQ.5f1d0c3e9a7b4e21b0c4d2a8f6e3b1c7")
        );
        assert_eq!(
            again.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c1")
        );
        assert!(Select::WriteId("key:k1".into()).matches(&w));
        assert!(!Select::WriteId("key:k2".into()).matches(&w));
    }

    #[test]
    fn a_write_the_broker_dead_lettered_says_so() {
        let mut death = FieldTable::default();
        death.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let p = props(&[
            (
                "x-death",
                AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
            ),
            ("x-delivery-count", AMQPValue::LongLongInt(6)),
        ]);
        let w = describe(&p, b"not json");
        assert_eq!(w.write_id, "?");
        assert_eq!(w.what, "unreadable write");
        assert_eq!(w.reason, "dead-lettered by RabbitMQ (delivery_limit)");
        assert_eq!(w.deliveries, Some(7));
        assert_eq!(w.at.as_deref(), Some("2023-11-14T22:13:20+00:00"));
    }
}
