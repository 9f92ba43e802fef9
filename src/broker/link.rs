//! A RabbitMQ session that comes back, for the orchestrator: connect and
//! declare (a supervised task, `crate::tasks`: retried with capped backoff and
//! jitter, forever, its state shown in `worker/status`), run the
//! caller's session on the connection until it breaks, then start again. The
//! caller's session owns everything made on the connection (channels, the
//! reply consumer) and says why it ended; nothing ends with only a log line.
//!
//! lapin 4 can recover connections itself (`enable_auto_recover`), replaying
//! queues and consumers on a new connection. It is not used here: its backoff
//! gives up after a set number of attempts, a RabbitMQ restart leaves the
//! stream unusable for tens of seconds after connections are accepted again,
//! and requests waiting on the broken connection must fail at once (their
//! replies are gone) rather than wait for a recovery they cannot see. One
//! explicit loop gives one clear state for readiness and the logs.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Connection, Event};
use tracing::{info, warn};

use crate::tasks::{Round, Tasks};

/// How often [`cut_off`] asks the cluster for a confirm.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may wait for its confirm before the node is taken for cut off.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(3);

/// Runs `session` on a fresh connection each time the last one ended, forever,
/// as the task `task` of `tasks` (`crate::tasks::keep`: capped backoff and
/// jitter between rounds, the state in `worker/status` and `/metrics`). The
/// session calls [`Round::up`] once it serves and returns why it ended.
pub async fn maintain<F, Fut>(
    tasks: Tasks,
    task: &'static str,
    url: String,
    name: String,
    session: F,
) where
    F: Fn(Connection, Round) -> Fut + Clone,
    Fut: Future<Output = String>,
{
    crate::tasks::keep(tasks, task, move |round| {
        let (url, name, session) = (url.clone(), name.clone(), session.clone());
        async move {
            match super::open_once(&url, &name).await {
                Ok(conn) => {
                    info!(name, "connected to RabbitMQ");
                    session(conn, round).await
                }
                Err(e) => format!("RabbitMQ not usable: {e}"),
            }
        }
    })
    .await
}

/// Resolves when `conn` reports an error or is no longer connected.
pub async fn broken(conn: &Connection) -> String {
    let mut events = conn.events_listener();
    loop {
        match tokio::time::timeout(Duration::from_secs(1), events.next()).await {
            Ok(Some(Event::Error(e))) => return format!("connection error: {e}"),
            Ok(Some(Event::ConnectionBlocked(why))) => {
                warn!(reason = %why, "RabbitMQ blocked the connection (resource alarm)")
            }
            Ok(Some(Event::ConnectionUnblocked)) => info!("RabbitMQ unblocked the connection"),
            Ok(Some(_)) => {}
            Ok(None) => return "connection closed".into(),
            Err(_) if !conn.status().connected() => return "connection lost".into(),
            Err(_) => {}
        }
    }
}

/// On a cluster (`DBAAS_REPLICAS` > 1): resolves when the node `conn` is on no
/// longer reaches a majority of the cluster, then closes `conn` and makes the
/// next connection attempt start at another address. Never resolves on one node.
///
/// A node cut off from its peers keeps its clients' connections open (and
/// heartbeats answered) until it notices it is in the minority and pauses
/// (`pause_minority`, after about `net_ticktime`, 10 s or more): meanwhile it
/// confirms nothing and delivers nothing. So every [`PROBE_EVERY`] this
/// publishes a small message, with a confirm, to a quorum queue of this
/// connection's own whose leader is on the same node (`client-local`): a
/// majority of its replicas is that node and one other, so the confirm comes
/// while the node reaches any peer, and not when it reaches none. No confirm
/// within [`PROBE_PATIENCE`]: the node is cut off (docs/cluster.md).
pub async fn cut_off(conn: &Connection) -> String {
    if super::replicas() <= 1 {
        return std::future::pending().await;
    }
    let why = match probe(conn).await {
        Ok(why) => why,
        // The connection is going anyway: `broken` says why.
        Err(_) => return std::future::pending().await,
    };
    warn!(reason = %why, "leaving this RabbitMQ node");
    super::avoid_current();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        conn.close(200, "node cut off".into()),
    )
    .await;
    why
}

/// Probes until a confirm does not come in time (`Ok(why)`), or the
/// connection fails (`Err`).
///
/// The probe queue must outlive every probe: a quorum queue's `x-expires`
/// counts only consumers and `basic.get` as use (RabbitMQ 3.10 expires one
/// even when it is declared again, rabbitmq-server#5894), not publishes, and a
/// publish to a queue that is gone is confirmed at once by the node itself,
/// cut off or not. So the probe consumes its own queue (no-ack, drained by a
/// task): the queue lives as long as the connection, and goes a minute after it.
/// A declare that does not finish in time (the node waits for a peer it has
/// not yet seen go) is tried again rather than ending the probe.
async fn probe(conn: &Connection) -> anyhow::Result<String> {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let queue = format!("probe.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString("client-local".into()),
    );
    // Gone a minute after its consumer (this connection): probes of dead
    // processes do not pile up.
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    let declare = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = loop {
        let channel = super::confirmed_channel(conn).await?;
        match tokio::time::timeout(
            PROBE_PATIENCE,
            channel.queue_declare(queue.as_str().into(), declare, args.clone()),
        )
        .await
        {
            Ok(Ok(_)) => break channel,
            Ok(Err(e)) if !conn.status().connected() => return Err(e.into()),
            Ok(Err(e)) => warn!(error = %e, "declaring the probe queue failed; trying again"),
            Err(_) => warn!("declaring the probe queue took over {PROBE_PATIENCE:?}; trying again"),
        }
        // A fresh channel each time: a late declare-ok or a channel error
        // must not be taken for the next answer.
        let _ = tokio::time::timeout(PROBE_PATIENCE, channel.close(200, "retry".into())).await;
        tokio::time::sleep(PROBE_EVERY).await;
    };
    let mut own = channel
        .basic_consume(
            queue.as_str().into(),
            "probe".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Ends when the channel does.
    tokio::spawn(async move { while own.next().await.is_some() {} });
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"",
                lapin::BasicProperties::default(),
            )
            .await?;
        match tokio::time::timeout(PROBE_PATIENCE, confirm).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Ok(format!(
                    "no confirm from RabbitMQ within {PROBE_PATIENCE:?}: this node is cut off from the cluster"
                ))
            }
        }
    }
}
