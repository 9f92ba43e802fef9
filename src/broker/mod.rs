//! RabbitMQ: the queue names, the topology every process declares, connecting
//! with retries, and the messages that travel on the queues.
//!
//! - `readQ`: a durable work queue (round-robin among consumers, manual acks).
//! - `writeQ`: a durable quorum queue with a delivery limit; poison writes end in
//!   `writeQ.dead` (see [`dead`]).
//! - `responseQ.<uuid>`: the orchestrator's reply queue (RPC pattern,
//!   correlation ids), one per orchestrator broker session, exclusive: declared
//!   and consumed by that session alone and deleted with its connection
//!   (`crate::actors::rpc::replies`). Workers answer on each request's
//!   `reply_to` ([`reply`]) and declare no reply queue. The spec's single,
//!   shared `responseQ` is no longer declared or used (consumed by several
//!   orchestrators it would hand each about half of the others' replies); one
//!   left by an older version can be deleted.
//! - `syncQ`: a RabbitMQ *stream*: an append-only log every replica reads in full
//!   from its own offset, so every slave sees every write in the same order and a
//!   new slave can start reading from where its snapshot ends.
//!
//! On a RabbitMQ cluster ([`set_replicas`], `DBAAS_REPLICAS` > 1, docs/cluster.md)
//! every durable queue is replicated: `writeQ` and the work queues are quorum
//! queues on that many nodes, `syncQ` a stream on that many nodes, so none
//! is lost or unusable with one node. `DBAAS_AMQP_URL` may then name several
//! nodes, comma-separated ([`addresses`]): each connection attempt tries them
//! in turn, starting with the one that worked last.

pub mod dead;
pub(crate) mod link;
pub mod messages;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

pub const READ_Q: &str = "readQ";
pub const WRITE_Q: &str = "writeQ";
pub const SYNC_Q: &str = "syncQ";
/// AMQP header carrying the HTTP request id to the worker.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id a delivery carries, if any.
pub fn request_id(props: &lapin::BasicProperties) -> Option<String> {
    match props
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(REQUEST_ID_HEADER))?
    {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Snapshot requests from joining replicas, served by any caught-up worker.
pub const SNAPSHOT_Q: &str = "snapshotQ";
/// Strong reads, served by the master alone (an extra queue, as the spec allows).
pub const MASTER_READ_Q: &str = "readQ.master";

/// AMQP heartbeat asked for when the URL does not set one: a frozen or dead
/// peer is noticed within about two intervals, and its unacknowledged
/// deliveries go back to their queues.
pub const HEARTBEAT_SECS: u16 = 5;

/// `url` with a `heartbeat` parameter (kept if it has one).
pub fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_SECS}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_SECS}")
    }
}

/// The broker addresses a `DBAAS_AMQP_URL` names: one URL, or several
/// separated by commas (the nodes of a cluster), in the order given.
pub fn addresses(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// `url` (or a comma-separated list of URLs) with each password replaced by
/// `***`, for messages and logs.
pub fn redacted(url: &str) -> String {
    if url.contains(',') {
        return addresses(url)
            .into_iter()
            .map(redacted)
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// The `host:port` an AMQP URL connects to (the scheme's port when it names
/// none), for judging where the broker is; never the credentials.
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.strip_prefix('[') {
        // [::1] or [::1]:5672
        Some(v6) => v6.split_once(']').is_some_and(|(_, p)| p.starts_with(':')),
        None => authority.contains(':'),
    };
    if has_port {
        Some(authority.to_string())
    } else {
        let port = if scheme == "amqps" { 5671 } else { 5672 };
        Some(format!("{authority}:{port}"))
    }
}

/// Connects to `url` and declares the topology, retrying with capped backoff
/// until `patience` runs out. Right after a restart RabbitMQ accepts
/// connections some time before its durable queues and the stream are usable
/// (`NOT_FOUND - home node ... is down`), so declaring is part of each attempt.
pub async fn open(url: &str, name: &str, patience: Duration) -> anyhow::Result<Connection> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    let mut last_failure = String::new();
    loop {
        let failure = match open_once(url, name).await {
            Ok(conn) => {
                info!(name, "connected to RabbitMQ");
                return Ok(conn);
            }
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "RabbitMQ at {} not usable: {failure}",
                redacted(url)
            ));
        }
        // One line per kind of failure, not one per attempt.
        let class = failure_class(&failure);
        if class != last_failure {
            warn!(name, error = %failure, "RabbitMQ not usable yet; retrying with backoff");
            last_failure = class;
        }
        tokio::time::sleep(crate::backoff::jitter(delay)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Which of the addresses worked last: the next attempt starts there.
static LAST_GOOD: AtomicUsize = AtomicUsize::new(0);

/// Makes the next connection attempt of this process start at the address
/// after the one that worked last (that node was found cut off).
pub fn avoid_current() {
    LAST_GOOD.fetch_add(1, Ordering::Relaxed);
}

/// How long one address may take to accept a connection.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

/// One attempt: each address of `urls` in turn ([`addresses`], starting with
/// the one that worked last, then the others in order) until one connects and
/// declares the topology; the error names every address's failure.
pub async fn open_once(urls: &str, name: &str) -> anyhow::Result<Connection> {
    let list = addresses(urls);
    if list.is_empty() {
        return Err(anyhow::anyhow!("no RabbitMQ address given"));
    }
    let first = LAST_GOOD.load(Ordering::Relaxed) % list.len();
    let mut failures = Vec::new();
    for i in (0..list.len()).map(|k| (first + k) % list.len()) {
        match open_one(list[i], name).await {
            Ok(conn) => {
                if !failures.is_empty() {
                    info!(name, broker = %redacted(list[i]), "connected to another RabbitMQ node");
                }
                LAST_GOOD.store(i, Ordering::Relaxed);
                return Ok(conn);
            }
            Err(e) if list.len() == 1 => return Err(e),
            Err(e) => failures.push(format!("{}: {e}", redacted(list[i]))),
        }
    }
    Err(anyhow::anyhow!("{}", failures.join("; ")))
}

/// Connects (bounded) to one address and declares the topology.
async fn open_one(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let conn = tokio::time::timeout(
        CONNECT_PATIENCE,
        Connection::connect(&with_heartbeat(url), props),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connection attempt timed out"))??;
    let declared = tokio::time::timeout(Duration::from_secs(10), async {
        declare_topology(&conn).await?;
        declare_sync_stream(&conn).await?;
        dead::declare(&conn).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("declaring the queues timed out"));
    match declared {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => {
            let _ = conn.close(200, "topology not ready".into()).await;
            Err(e)
        }
        Err(e) => {
            let _ = conn.close(200, "topology not ready".into()).await;
            Err(e)
        }
    }
}

/// The error without the parts that change between attempts.
fn failure_class(e: &anyhow::Error) -> String {
    e.to_string()
        .chars()
        .take_while(|c| !c.is_ascii_digit())
        .collect()
}

/// Declares the queues but `writeQ` and `writeQ.dead`, which [`dead::declare`]
/// declares (idempotent: every process declares them), with
/// [`work_queue_args`]. A queue that exists with other arguments (406: a
/// classic queue of a single-node deployment now run as a cluster, or the
/// other way round) is used as it is, with a warning: changing a queue's type
/// means deleting it, which an operator does while it is empty
/// (docs/cluster.md).
pub async fn declare_topology(conn: &Connection) -> lapin::Result<()> {
    let args = work_queue_args(replicas());
    let mut channel = conn.create_channel().await?;
    for q in [READ_Q, MASTER_READ_Q, SNAPSHOT_Q] {
        match channel
            .queue_declare(q.into(), durable(), args.clone())
            .await
        {
            Ok(_) => {}
            Err(e) if is_precondition_failed(&e) => {
                // The 406 closed the channel.
                channel = conn.create_channel().await?;
                channel
                    .queue_declare(q.into(), passive(), FieldTable::default())
                    .await?;
                warn!(
                    queue = q,
                    replicas = replicas(),
                    "queue exists with other arguments: using it as it is (docs/cluster.md says how to change its type)"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// How many RabbitMQ nodes hold each queue: 1 (one node, classic queues as
/// ever) or the cluster's size (`DBAAS_REPLICAS`).
static REPLICAS: AtomicUsize = AtomicUsize::new(1);

/// Sets the replication this process declares its queues with (`DBAAS_REPLICAS`).
pub fn set_replicas(n: usize) {
    REPLICAS.store(n.max(1), Ordering::Relaxed);
}

/// The replication this process declares its queues with (at least 1).
pub fn replicas() -> usize {
    REPLICAS.load(Ordering::Relaxed).max(1)
}

/// Arguments of the work queues (`readQ`, `readQ.master`, `snapshotQ`,
/// `writeQ.dead`) for `replicas` nodes: none on one node (a classic
/// queue, as a single-node deployment always had), else a quorum queue on
/// `replicas` nodes. A classic queue lives on one node: with that node down it
/// cannot even be declared (`NOT_FOUND - home node ... is down`), so in a
/// cluster every process would wait for that node; a quorum queue goes on
/// with a majority of its nodes and loses nothing it confirmed.
pub fn work_queue_args(replicas: usize) -> FieldTable {
    let mut args = FieldTable::default();
    if replicas > 1 {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        add_group_size(&mut args, replicas);
    }
    args
}

/// `x-quorum-initial-group-size` = `replicas` (a quorum queue's replicas; a
/// larger value than the cluster has nodes means every node).
pub fn add_group_size(args: &mut FieldTable, replicas: usize) {
    if replicas > 1 {
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongLongInt(i64::try_from(replicas).unwrap_or(i64::MAX)),
        );
    }
}

/// How much of `syncQ` RabbitMQ keeps: the log is bounded, and a replica whose
/// offset fell out of it recovers from a snapshot (`worker::sync`). RabbitMQ
/// deletes whole segments, oldest first, once the stream is over `max_bytes`
/// (or its segments are older than `max_age`), so `segment_bytes` is the
/// granularity. Set by the binaries from `DBAAS_SYNC_*` (config::BrokerArgs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRetention {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// RabbitMQ's age syntax (`7D`, `12h`, `30m`, `90s`); none: by size only.
    pub max_age: Option<String>,
}

/// 1 GiB of log (several million writes) in 16 MiB segments.
pub const DEFAULT_SYNC_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_SYNC_SEGMENT_BYTES: u64 = 16 << 20;

static SYNC_RETENTION: std::sync::RwLock<SyncRetention> = std::sync::RwLock::new(SyncRetention {
    max_bytes: DEFAULT_SYNC_MAX_BYTES,
    segment_bytes: DEFAULT_SYNC_SEGMENT_BYTES,
    max_age: None,
});

/// Sets the retention this process declares `syncQ` with.
pub fn set_sync_retention(retention: SyncRetention) {
    if let Ok(mut r) = SYNC_RETENTION.write() {
        *r = retention;
    }
}

fn sync_retention() -> SyncRetention {
    SYNC_RETENTION
        .read()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone())
}

/// The arguments `syncQ` is declared with.
pub fn sync_stream_args(retention: &SyncRetention) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(retention.max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(retention.segment_bytes).unwrap_or(i64::MAX)),
    );
    if let Some(age) = &retention.max_age {
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(age.as_str().into()),
        );
    }
    if replicas() > 1 {
        args.insert(
            "x-initial-cluster-size".into(),
            AMQPValue::LongLongInt(i64::try_from(replicas()).unwrap_or(i64::MAX)),
        );
    }
    args
}

/// Declares the `syncQ` stream with this process's retention. A stream that
/// exists with other arguments (declared before retention was configured, or
/// with other values) is used as it is: RabbitMQ refuses to redeclare a queue
/// with different arguments (406) and a stream cannot be redeclared without
/// losing the log. Its retention is then changed with a policy, which applies
/// to an existing stream (docs/replication.md).
pub async fn declare_sync_stream(conn: &Connection) -> lapin::Result<()> {
    let retention = sync_retention();
    let declared = conn
        .create_channel()
        .await?
        .queue_declare(SYNC_Q.into(), durable(), sync_stream_args(&retention))
        .await;
    match declared {
        Ok(_) => Ok(()),
        Err(e) if is_precondition_failed(&e) => {
            conn.create_channel()
                .await?
                .queue_declare(SYNC_Q.into(), passive(), FieldTable::default())
                .await?;
            warn!(
                ?retention,
                "syncQ exists with other arguments: using it as it is; set its retention with a policy (docs/replication.md)"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether `e` is the broker's 406 PRECONDITION_FAILED (a queue redeclared
/// with other arguments; it also closed the channel).
pub(crate) fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// Declare options of a durable queue.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declare options that only check a queue exists.
fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

/// A channel with publisher confirms on, for publishes that must not be lost.
pub async fn confirmed_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// A channel for consuming with at most `prefetch` unacknowledged deliveries.
pub async fn consumer_channel(conn: &Connection, prefetch: u16) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    Ok(ch)
}

/// Consumer arguments to read the `syncQ` stream from `offset`
/// ("first", "next", "last", or an absolute offset).
pub fn stream_offset(offset: StreamOffset) -> FieldTable {
    let mut args = FieldTable::default();
    let v = match offset {
        StreamOffset::First => AMQPValue::LongString("first".into()),
        StreamOffset::Next => AMQPValue::LongString("next".into()),
        StreamOffset::At(n) => AMQPValue::LongLongInt(n as i64),
    };
    args.insert("x-stream-offset".into(), v);
    args
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    First,
    Next,
    At(u64),
}

/// The stream offset RabbitMQ attaches to each delivery from a stream.
pub fn delivery_stream_offset(props: &lapin::BasicProperties) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// Publishes `body` to `queue` (default exchange) as a persistent message and waits
/// for the broker's confirm: an error means the message may not be stored.
/// A `basic.nack` (a quorum queue or stream that lost its leader: a client of
/// a killed node gets a few before the new leader takes the message) is
/// retried, the same message again, with a short backoff, until `patience`
/// runs out; every caller's message is safe to store twice (writes carry
/// their write id, barriers and markers their nonce).
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    patience: Duration,
) -> anyhow::Result<()> {
    publish_confirmed_within(channel, queue, body, properties, patience, patience).await
}

/// The broker kept refusing a publish (`basic.nack`) for longer than the
/// caller allows on one channel.
#[derive(Debug, thiserror::Error)]
#[error("broker refused publish to {queue} {nacks} time(s)")]
pub struct Refused {
    pub queue: String,
    pub nacks: u32,
}

/// [`publish_confirmed`], but nacks are retried on this channel only for
/// `nack_patience`; then the error is [`Refused`]. A channel opened while a
/// quorum queue's leader was being replaced can go on refusing after the new
/// leader is elected (RabbitMQ 3.10: seen for 10 s, until the old leader's
/// node came back); a new channel finds the new leader.
pub async fn publish_confirmed_within(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    patience: Duration,
    nack_patience: Duration,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let deadline = start + patience;
    let nack_deadline = start + nack_patience;
    let properties = properties.with_delivery_mode(2);
    let mut backoff = Duration::from_millis(50);
    let mut nacks = 0u32;
    loop {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let refused = match tokio::time::timeout(left, confirm).await {
            Ok(Ok(c)) if c.is_ack() => {
                if nacks > 0 {
                    info!(
                        queue,
                        nacks, "publish confirmed after the broker refused it"
                    );
                }
                return Ok(());
            }
            Ok(Ok(c)) => format!("{c:?}"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "no confirm from broker for {queue} within {patience:?}"
                ))
            }
        };
        nacks += 1;
        if tokio::time::Instant::now() + backoff >= deadline.min(nack_deadline) {
            warn!(queue, nacks, last = %refused, "broker keeps refusing a publish");
            return Err(Refused {
                queue: queue.to_string(),
                nacks,
            }
            .into());
        }
        warn!(
            queue,
            nacks, "broker refused a publish (nack): publishing it again"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// The default of [`max_reply_bytes`]: 8 MiB, well under RabbitMQ's largest
/// message (128 MiB in 3.x, 16 MiB by default in 4.x).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 8 << 20;

static MAX_REPLY_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_REPLY_BYTES);

/// The largest reply body a worker publishes; a larger answer is replaced by
/// an error reply (a message over the broker's limit would close the channel).
pub fn max_reply_bytes() -> usize {
    MAX_REPLY_BYTES.load(Ordering::Relaxed)
}

/// Sets [`max_reply_bytes`] for this process (the worker's `DBAAS_MAX_REPLY_BYTES`).
pub fn set_max_reply_bytes(bytes: usize) {
    MAX_REPLY_BYTES.store(bytes.max(1024), Ordering::Relaxed);
}

/// A `Vec` that refuses to grow past a limit, so an oversized reply is never
/// serialized whole.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("reply over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `reply` as JSON, or, if that is over `limit` bytes, an error reply (too
/// large: a 413 for the client) telling the client to ask for less.
pub fn reply_body(reply: &messages::Reply, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Capped {
        bytes: Vec::new(),
        limit,
    };
    match serde_json::to_writer(&mut out, reply) {
        Ok(()) => Ok(out.bytes),
        Err(e) if e.is_io() => {
            warn!(limit, "reply over the size limit: answered with an error");
            let refusal = messages::Reply::Error(crate::db::Failure::new(
                crate::db::ErrorKind::TooLarge,
                format!(
                    "the answer is larger than the {limit} bytes a reply may carry: ask for fewer rows with \"limit\" and page with \"offset\", or for fewer \"columns\""
                ),
            ));
            Ok(serde_json::to_vec(&refusal)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `reply` to the delivery's `reply_to` queue with its correlation id (RPC
/// pattern); a reply to a queue that is gone (its orchestrator's session
/// ended) is dropped by the broker. Deliveries without `reply_to` get no
/// answer. A reply over [`max_reply_bytes`] is replaced by an error reply.
pub async fn reply(
    channel: &Channel,
    request: &lapin::BasicProperties,
    reply: &messages::Reply,
) -> anyhow::Result<()> {
    let Some(reply_to) = request.reply_to().as_ref() else {
        return Ok(());
    };
    let mut props = lapin::BasicProperties::default();
    if let Some(id) = request.correlation_id().as_ref() {
        props = props.with_correlation_id(id.clone());
    }
    let body = reply_body(reply, max_reply_bytes())?;
    channel
        .basic_publish(
            "".into(),
            reply_to.clone(),
            lapin::options::BasicPublishOptions::default(),
            &body,
            props,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::messages::Reply;
    use super::*;
    use crate::db::ReadOutcome;

    #[test]
    fn an_address_list_is_split_on_commas_in_order() {
        assert_eq!(
            addresses("amqp://a:1@h1:5672/%2f, amqp://a:1@h2:5672/%2f,"),
            vec!["amqp://a:1@h1:5672/%2f", "amqp://a:1@h2:5672/%2f"]
        );
        assert_eq!(addresses("amqp://h1"), vec!["amqp://h1"]);
        assert_eq!(
            redacted("amqp://u:p1@h1:5672/v,amqp://u:p2@h2:5672/v"),
            "amqp://u:***@h1:5672/v,amqp://u:***@h2:5672/v"
        );
    }

    #[test]
    fn the_host_of_a_url_is_found_without_its_credentials() {
        for (url, host) in [
            ("amqp://u:p@127.0.0.1:5684/%2f", Some("127.0.0.1:5684")),
            ("amqp://u:p@w@rabbitmq/%2f", Some("rabbitmq:5672")),
            ("amqps://localhost?heartbeat=5", Some("localhost:5671")),
            ("amqp://[::1]/v", Some("[::1]:5672")),
            ("amqp://u:p@[::1]:5673", Some("[::1]:5673")),
            ("amqp://", None),
            ("not a url", None),
        ] {
            assert_eq!(host_port(url).as_deref(), host, "{url}");
        }
    }

    #[test]
    fn one_node_keeps_classic_work_queues_a_cluster_gets_quorum_queues() {
        assert!(work_queue_args(1).inner().is_empty());
        let args = work_queue_args(3);
        assert_eq!(
            args.inner().get(&ShortString::from("x-queue-type")),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            args.inner()
                .get(&ShortString::from("x-quorum-initial-group-size")),
            Some(&AMQPValue::LongLongInt(3))
        );
    }

    #[test]
    fn redacted_hides_the_password_only() {
        assert_eq!(
            redacted("amqp://dbaas:s3cret@127.0.0.1:5672/%2f"),
            "amqp://dbaas:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    fn rows(n: usize) -> Reply {
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"username": "someone with a long name"}"#).expect("row");
        Reply::Read(ReadOutcome {
            rows: vec![row; n],
            seq: 1,
            worker: Some(7),
            more: false,
        })
    }

    #[test]
    fn a_reply_over_the_limit_becomes_an_error_saying_how_to_page() {
        let small = reply_body(&rows(3), 4096).expect("body");
        let back: Reply = serde_json::from_slice(&small).expect("reply");
        assert_eq!(back, rows(3));
        let big = reply_body(&rows(1000), 4096).expect("body");
        assert!(big.len() < 4096);
        match serde_json::from_slice::<Reply>(&big).expect("reply") {
            Reply::Error(f) => {
                assert_eq!(f.kind, crate::db::ErrorKind::TooLarge);
                assert!(
                    f.message.contains("\"limit\"") && f.message.contains("\"offset\""),
                    "{}",
                    f.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
