//! Catch-up by snapshot. A joining replica asks on `snapshotQ` for a copy of
//! the data; a caught-up worker answers with an SQLite online backup of its
//! copy and the `syncQ` stream offset to resume from. The joiner then reads the
//! stream from that offset only: joining costs the size of the data, not the
//! length of the write history. With no one to answer (the first workers), the
//! joiner reads the stream from the start.
//!
//! - [`frame`]: the wire format, the digest and the MAC (pure, unit-tested).
//! - [`serve`]: the source side; slaves serve, a master only while alone.
//! - [`fetch`]: the joiner side, one attempt; [`fetch::fetch_with_retries`]
//!   retries until a source serves a transfer that checks out.
//!
//! The file travels in chunks ([`Settings::chunk_bytes`], 1 MiB by default)
//! over the joiner's private reply queue, with publisher confirms and at most
//! [`IN_FLIGHT`] chunks unconfirmed on the source and at most [`IN_FLIGHT`]
//! unacknowledged on the joiner, so neither side holds more than a few chunks
//! in memory, whatever the size of the data, and no message comes near
//! RabbitMQ's size limit. docs/replication.md has the design and
//! bench/results/scale.md the measurements.
//!
//! **Authentication** ([`decide`], docs/security.md): every process is given
//! `DBAAS_SNAPSHOT_SECRET` (the orchestrator passes its own to the workers it
//! starts); sources sign each transfer with it and joiners accept only a
//! transfer whose MAC checks out. Without a secret a process runs only when
//! every RabbitMQ address is loopback, as protected mode does for the API,
//! and says loudly that snapshots are then checked by digest only.

pub mod fetch;
pub mod frame;
pub mod serve;

use std::sync::OnceLock;
use std::time::Duration;

use crate::config::Secret;

pub use fetch::{fetch_once, fetch_with_retries, Attempt};
pub use serve::serve;

/// Chunks a source has published but the broker has not confirmed yet, and
/// chunks a joiner has received but not yet written and acknowledged.
pub const IN_FLIGHT: usize = 4;

/// The shared secret that makes snapshots authentic.
pub const SECRET_ENV: &str = "DBAAS_SNAPSHOT_SECRET";
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// The chunk size in bytes (tests make it small to send many chunks).
pub const CHUNK_ENV: &str = "DBAAS_SNAPSHOT_CHUNK_BYTES";
/// How long a joiner waits for the next frame of a transfer under way.
pub const IDLE_ENV: &str = "DBAAS_SNAPSHOT_IDLE_MS";

pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15);

/// A snapshot written to disk, and where to resume the stream after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub resume_offset: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// The worker that served it.
    pub source: u32,
}

/// The knobs of a transfer, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub chunk_bytes: usize,
    /// A joiner gives up on a transfer that sends nothing for this long.
    pub idle: Duration,
    /// Sign (source) and require (joiner) a MAC; none: digest only.
    pub secret: Option<Vec<u8>>,
}

/// How a process treats snapshots, decided once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Sources sign every transfer with the secret; joiners require it.
    Secret(Secret),
    /// No secret, and every RabbitMQ address is loopback: snapshots are
    /// checked by digest only (loudly logged).
    DigestOnlyOnLoopback,
}

/// Decides from the secret given and the RabbitMQ URLs (`DBAAS_AMQP_URL`,
/// comma-separated). A secret of at least [`MIN_SECRET_BYTES`] authenticates
/// snapshots. Without one, as protected mode does for the API, a process
/// runs only when every broker address is loopback; anywhere else whoever can
/// publish on the broker could answer a joiner's request with a database of
/// their own, so it refuses. The error names hosts, never credentials.
pub fn decide(secret: Option<&Secret>, amqp_urls: &str) -> Result<Authentication, String> {
    match secret.filter(|s| !s.expose().is_empty()) {
        Some(s) if s.expose().len() < MIN_SECRET_BYTES => Err(format!(
            "{SECRET_ENV} is too short ({} bytes): give at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 24`)",
            s.expose().len()
        )),
        Some(s) => Ok(Authentication::Secret(s.clone())),
        None => {
            let outside: Vec<String> = crate::broker::addresses(amqp_urls)
                .into_iter()
                .map(|u| crate::broker::host_port(u).unwrap_or_else(|| "an unparsable URL".into()))
                .filter(|hp| !crate::http::auth::loopback_only(hp))
                .collect();
            if outside.is_empty() {
                Ok(Authentication::DigestOnlyOnLoopback)
            } else {
                Err(format!(
                    "refusing to run without {SECRET_ENV}: RabbitMQ at {} is not on loopback, and \
                     whoever can publish there could answer a joining worker's snapshot request with \
                     a database of their own. Set {SECRET_ENV} (at least {MIN_SECRET_BYTES} \
                     characters, e.g. `openssl rand -hex 24`) on the orchestrator: it passes it to \
                     the workers it starts",
                    outside.join(", ")
                ))
            }
        }
    }
}

static SECRET: OnceLock<Option<Secret>> = OnceLock::new();

/// Sets this process's snapshot secret, once, at startup (from [`decide`];
/// later calls are ignored).
pub fn set_secret(secret: Option<Secret>) {
    let _ = SECRET.set(secret);
}

/// This process's snapshot secret: the one set at startup or, in a process
/// that set none (tests, tools), [`SECRET_ENV`].
pub fn secret() -> Option<&'static Secret> {
    SECRET
        .get_or_init(|| {
            std::env::var(SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .map(Secret::new)
        })
        .as_ref()
}

impl Settings {
    pub fn from_env() -> Settings {
        let number = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let secret = secret().map(|s| s.expose().as_bytes().to_vec());
        Settings {
            chunk_bytes: number(CHUNK_ENV)
                .map(|n| n.clamp(1024, 64 << 20) as usize)
                .unwrap_or(DEFAULT_CHUNK_BYTES),
            idle: number(IDLE_ENV)
                .map(|ms| Duration::from_millis(ms.max(100)))
                .unwrap_or(DEFAULT_IDLE),
            secret,
        }
    }
}

/// Removes a file (and what SQLite keeps next to it) when dropped: snapshot
/// files in transit are gone on every path, errors and panics included.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// Keeps the file (it was renamed into place).
    pub fn keep(mut self) {
        self.0 = std::path::PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "amqp://u:p@127.0.0.1:5672/%2f";

    #[test]
    fn a_secret_authenticates_wherever_the_broker_is() {
        let secret = Secret::new("0123456789abcdef0123");
        for urls in [LOCAL, "amqp://u:p@rabbitmq:5672/%2f"] {
            assert_eq!(
                decide(Some(&secret), urls),
                Ok(Authentication::Secret(secret.clone()))
            );
        }
    }

    #[test]
    fn without_a_secret_only_a_loopback_broker_runs() {
        for urls in [
            LOCAL,
            "amqp://localhost",
            "amqp://u:p@[::1]:5684/v,amqp://u:p@127.0.0.2:5685/v",
        ] {
            assert_eq!(
                decide(None, urls),
                Ok(Authentication::DigestOnlyOnLoopback),
                "{urls}"
            );
            // An empty variable is no secret.
            assert_eq!(
                decide(Some(&Secret::new("")), urls),
                Ok(Authentication::DigestOnlyOnLoopback)
            );
        }
        // One node elsewhere is enough to refuse; the message names hosts only.
        let refused = decide(
            None,
            "amqp://dbaas:hunter2@127.0.0.1:5672/%2f,amqp://dbaas:hunter2@10.77.0.2:5672/%2f",
        )
        .expect_err("refused");
        assert!(refused.contains("10.77.0.2:5672"), "{refused}");
        assert!(refused.contains(SECRET_ENV), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(decide(None, "amqp://u:p@0.0.0.0:5672").is_err());
        assert!(decide(None, "nonsense").is_err());
    }

    #[test]
    fn a_short_secret_is_refused_everywhere() {
        let refused = decide(Some(&Secret::new("s3cr3t-v4lue")), LOCAL).expect_err("refused");
        assert!(refused.contains("too short (12 bytes)"), "{refused}");
        assert!(
            !refused.contains("s3cr3t"),
            "the value is never shown: {refused}"
        );
    }
}
