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

pub mod fetch;
pub mod frame;
pub mod serve;

use std::sync::Once;
use std::time::Duration;

use tracing::warn;

pub use fetch::{fetch_once, fetch_with_retries, Attempt};
pub use serve::serve;

/// Chunks a source has published but the broker has not confirmed yet, and
/// chunks a joiner has received but not yet written and acknowledged.
pub const IN_FLIGHT: usize = 4;

/// The shared secret that makes snapshots authentic.
pub const SECRET_ENV: &str = "DBAAS_SNAPSHOT_SECRET";
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

impl Settings {
    pub fn from_env() -> Settings {
        let number = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let secret = std::env::var(SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes);
        if secret.is_none() {
            static ONCE: Once = Once::new();
            ONCE.call_once(|| {
                warn!("{SECRET_ENV} is not set: snapshots are checked by digest only, not authenticated");
            });
        }
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
