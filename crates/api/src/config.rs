//! Command-line flags the HTTP services share (the orchestrator and the
//! RideShare services), as clap groups they flatten in, so each flag and its
//! environment variable are defined once. The brokers' flags are the `dbaas`
//! crate's (`dbaas::config::BrokerArgs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret from the command line or the environment (a token, a password):
/// `Debug` shows `<redacted>`, so printing the flags never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// A secret given directly, or the first line of a file (the file wins):
/// the error names the file, never the content.
pub fn secret_from(value: Option<&Secret>, file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        return match line {
            Some(l) => Ok(Some(Secret::new(l))),
            None => Err(anyhow::anyhow!("{} is empty", path.display())),
        };
    }
    Ok(value.filter(|s| !s.0.is_empty()).cloned())
}

/// How a RideShare service reaches the DBaaS: the users and rides services take these.
#[derive(clap::Args, Debug, Clone)]
pub struct DbaasClientArgs {
    /// The DBaaS orchestrator's base URL.
    #[arg(long, env = "DBAAS_URL", default_value = "http://127.0.0.1:8000")]
    pub dbaas_url: String,
    /// Timeout of each call to the DBaaS (and, for rides, the users service), in milliseconds.
    #[arg(long, env = "RIDESHARE_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How long a DBaaS call that got no answer (unreachable, timed out,
    /// 502/503/504) is retried in all, in milliseconds; 0 tries once.
    #[arg(long, env = "RIDESHARE_RETRY_MS", default_value_t = 15_000)]
    pub retry_ms: u64,
    /// A DBaaS token of the `data` scope, sent as `Authorization: Bearer`
    /// (needed when the orchestrator requires tokens).
    #[arg(long, env = "DBAAS_TOKEN", hide_env_values = true)]
    pub dbaas_token: Option<Secret>,
    /// A file whose first line is the DBaaS token (wins over DBAAS_TOKEN).
    #[arg(long, env = "DBAAS_TOKEN_FILE")]
    pub dbaas_token_file: Option<PathBuf>,
}

impl DbaasClientArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }
    /// The token to send, from DBAAS_TOKEN_FILE or DBAAS_TOKEN.
    pub fn token(&self) -> anyhow::Result<Option<Secret>> {
        secret_from(self.dbaas_token.as_ref(), self.dbaas_token_file.as_deref())
    }
}

/// What an HTTP server allows its clients: the orchestrator and the RideShare
/// services take these, so one slow or greedy client cannot hold the server.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpServerArgs {
    /// How long a client may take to send a request's head, and then its body
    /// (each); after that it gets a 408 and its connection is closed.
    #[arg(long, env = "HTTP_CLIENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub client_timeout_ms: u64,
    /// Connections served at once, across the server's threads; further ones
    /// wait in the listen backlog.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
}

impl HttpServerArgs {
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            client_timeout: Duration::from_millis(self.client_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
        }
    }
}

/// The limits an HTTP server applies (see [`HttpServerArgs`]). Registered as
/// app data, so body readers find the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// For the request head, and again for the body.
    pub client_timeout: Duration,
    /// Connections at once, all server threads together.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            client_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    /// The server's threads: one per core.
    pub fn workers(&self) -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// actix counts connections per thread.
    pub fn connections_per_worker(&self) -> usize {
        self.max_connections.div_ceil(self.workers()).max(1)
    }

    /// How long a closing connection may take to shut down.
    pub fn disconnect_timeout(&self) -> Duration {
        self.client_timeout.min(Duration::from_secs(1))
    }
}
