//! A RabbitMQ session that comes back, for the orchestrator: connect and
//! declare (retrying with capped backoff and jitter, forever), run the
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

/// Longest wait between two rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `session` on a fresh connection each time the last one ended, forever.
pub async fn maintain<F, Fut>(url: String, name: String, mut session: F)
where
    F: FnMut(Connection) -> Fut,
    Fut: Future<Output = String>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        // `open` logs each kind of failure once; a minute per round bounds it.
        match super::open(&url, &name, Duration::from_secs(60)).await {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                let why = session(conn).await;
                warn!(name, reason = %why, "RabbitMQ session ended; reconnecting");
            }
            Err(e) => warn!(name, error = %e, "still no RabbitMQ; retrying"),
        }
        tokio::time::sleep(crate::backoff::jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
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
