//! Command-line flags several binaries share, as clap groups they flatten in,
//! so each flag and its environment variable are defined once. The flags the
//! RideShare services share too (HTTP server limits, how to reach the DBaaS,
//! secrets) live in the `dbaas-api` crate and are re-exported here; the
//! brokers' flags, which only the orchestrator and the worker take, are here.

use std::path::PathBuf;
use std::time::Duration;

pub use dbaas_api::config::{secret_from, DbaasClientArgs, HttpLimits, HttpServerArgs, Secret};

/// Where the brokers are: the orchestrator and the worker take these.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL, or several separated by commas (the nodes of a cluster,
    /// tried in turn with backoff). It holds the broker password: give it in
    /// the environment, not as a flag.
    #[arg(
        long,
        env = "DBAAS_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// ZooKeeper hosts (host:port[,host:port...][/chroot]).
    #[arg(long, env = "DBAAS_ZK_HOSTS", default_value = "127.0.0.1:2181")]
    pub zk_hosts: String,
    /// ZooKeeper digest credentials `user:password`: the project's znodes are
    /// then created readable and writable by that identity only. Unset: the
    /// znodes are open to every client (loopback development only).
    #[arg(long, env = "DBAAS_ZK_AUTH", hide_env_values = true)]
    pub zk_auth: Option<Secret>,
    /// A file whose first line is the ZooKeeper digest credentials (wins over DBAAS_ZK_AUTH).
    #[arg(long, env = "DBAAS_ZK_AUTH_FILE")]
    pub zk_auth_file: Option<PathBuf>,
    /// ZooKeeper session timeout: how long a dead worker stays registered, the
    /// bound on detecting a worker killed where the orchestrator cannot see it.
    #[arg(long, env = "DBAAS_ZK_SESSION_TIMEOUT_MS", default_value_t = 2000)]
    pub zk_session_timeout_ms: u64,
    /// RabbitMQ nodes each queue is replicated on: 1 keeps classic work
    /// queues on one node; more makes every queue a quorum queue (and syncQ a
    /// stream) on that many nodes of a cluster (docs/cluster.md). Every process
    /// must use the same value: set it on the orchestrator, it is passed to the workers.
    #[arg(long, env = "DBAAS_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// syncQ retention: RabbitMQ keeps at most this many bytes of the log
    /// (replicas that fall further behind recover from a snapshot).
    #[arg(long, env = "DBAAS_SYNC_MAX_BYTES", default_value_t = crate::broker::DEFAULT_SYNC_MAX_BYTES)]
    pub sync_max_bytes: u64,
    /// syncQ segment size: retention deletes whole segments.
    #[arg(long, env = "DBAAS_SYNC_SEGMENT_BYTES", default_value_t = crate::broker::DEFAULT_SYNC_SEGMENT_BYTES)]
    pub sync_segment_bytes: u64,
    /// syncQ retention by age too (RabbitMQ's syntax: 7D, 12h, 30m); none by default.
    #[arg(long, env = "DBAAS_SYNC_MAX_AGE")]
    pub sync_max_age: Option<String>,
    /// Shared secret (16+ characters) that authenticates snapshots
    /// (HMAC-SHA256): sources sign, joiners accept only what checks out. The
    /// orchestrator passes it to the workers. Unset: refused unless every
    /// RabbitMQ address is loopback. Give it in the environment, not as a flag.
    #[arg(long, env = "DBAAS_SNAPSHOT_SECRET", hide_env_values = true)]
    pub snapshot_secret: Option<Secret>,
}

impl BrokerArgs {
    /// Applies the syncQ retention and the replication to this process's
    /// topology declarations.
    pub fn apply_topology(&self) {
        crate::broker::set_replicas(self.replicas);
        crate::broker::set_sync_retention(crate::broker::SyncRetention {
            max_bytes: self.sync_max_bytes,
            segment_bytes: self.sync_segment_bytes,
            max_age: self.sync_max_age.clone().filter(|a| !a.is_empty()),
        });
    }

    /// Makes this process's ZooKeeper sessions authenticate with the digest
    /// credentials given (if any), and create the project's znodes for them only.
    pub fn apply_zk_auth(&self) -> anyhow::Result<()> {
        let auth = secret_from(self.zk_auth.as_ref(), self.zk_auth_file.as_deref())?;
        match auth {
            Some(s) => crate::coord::set_auth(Some(crate::coord::ZkAuth::parse(s.expose())?)),
            None => crate::coord::set_auth(None),
        }
        Ok(())
    }

    /// Decides how this process treats snapshots ([`crate::worker::snapshot::decide`]):
    /// with the secret, without it on loopback (a warning), or not at all.
    pub fn apply_snapshot_secret(&self) -> anyhow::Result<()> {
        use crate::worker::snapshot::{self, Authentication, SECRET_ENV};
        match snapshot::decide(self.snapshot_secret.as_ref(), &self.amqp_url)
            .map_err(|e| anyhow::anyhow!(e))?
        {
            Authentication::Secret(s) => {
                tracing::info!("snapshots are authenticated (HMAC-SHA256 under {SECRET_ENV})");
                snapshot::set_secret(Some(s));
            }
            Authentication::DigestOnlyOnLoopback => {
                tracing::warn!(
                    "{SECRET_ENV} is not set: snapshots are not authenticated (checked by digest \
                     only); allowed because every RabbitMQ address is loopback"
                );
                snapshot::set_secret(None);
            }
        }
        Ok(())
    }

    pub fn zk_session_timeout(&self) -> Duration {
        Duration::from_millis(self.zk_session_timeout_ms)
    }
}
