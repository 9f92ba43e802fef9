//! Command-line flags several binaries share, as clap groups they flatten in,
//! so each flag and its environment variable are defined once.

use std::time::Duration;

/// Where the brokers are: the orchestrator and the worker take these.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "DBAAS_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// ZooKeeper hosts (host:port[,host:port...][/chroot]).
    #[arg(long, env = "DBAAS_ZK_HOSTS", default_value = "127.0.0.1:2181")]
    pub zk_hosts: String,
    /// ZooKeeper session timeout: how long a dead worker stays registered, the
    /// bound on detecting a worker killed where the orchestrator cannot see it.
    #[arg(long, env = "DBAAS_ZK_SESSION_TIMEOUT_MS", default_value_t = 2000)]
    pub zk_session_timeout_ms: u64,
}

impl BrokerArgs {
    pub fn zk_session_timeout(&self) -> Duration {
        Duration::from_millis(self.zk_session_timeout_ms)
    }
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
}

impl DbaasClientArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
