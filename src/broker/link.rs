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
