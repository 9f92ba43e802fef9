//! The worker binary: flags and env, logging, then [`dbaas::worker::run`].

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "DBaaS worker: a SQLite replica that becomes master by election"
)]
struct Args {
    #[command(flatten)]
    brokers: dbaas::config::BrokerArgs,
    /// Directory for this worker's SQLite file.
    #[arg(long, env = "DBAAS_DATA_DIR", default_value = ".run/workers")]
    data_dir: PathBuf,
    /// The pid to register under (default: this process's pid).
    #[arg(long, env = "DBAAS_WORKER_PID")]
    pid: Option<u32>,
    /// Wait for the supervisor to assign the pid at /dbaas/assigned/<NAME> (containers).
    #[arg(long, env = "DBAAS_WORKER_NAME")]
    assigned_name: Option<String>,
    /// Where this worker runs, as `worker/status` shows it (the docker
    /// runtime names the engine it started the worker on; default: the host name).
    #[arg(long, env = "DBAAS_WORKER_HOST")]
    host: Option<String>,
    /// How long a read with min_seq waits for this replica to catch up.
    #[arg(long, env = "DBAAS_READ_WAIT_MS", default_value_t = 5000)]
    read_wait_ms: u64,
    /// How a new worker gets the data: a peer's `snapshot`, or `replay` of all of syncQ.
    #[arg(long, env = "DBAAS_CATCH_UP", default_value = "snapshot", value_parser = ["snapshot", "replay"])]
    catch_up: String,
    /// The largest reply this worker publishes, in bytes; a larger answer is an
    /// error telling the client to page (keep it under RabbitMQ's message limit).
    #[arg(long, env = "DBAAS_MAX_REPLY_BYTES", default_value_t = dbaas::broker::DEFAULT_MAX_REPLY_BYTES)]
    max_reply_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dbaas::telemetry::init();
    let a = Args::parse();
    dbaas::broker::set_max_reply_bytes(a.max_reply_bytes);
    a.brokers.apply_topology();
    a.brokers.apply_zk_auth()?;
    a.brokers.apply_snapshot_secret()?;
    dbaas::worker::run(dbaas::worker::Config {
        amqp_url: a.brokers.amqp_url.clone(),
        zk_hosts: a.brokers.zk_hosts.clone(),
        zk_session_timeout: a.brokers.zk_session_timeout(),
        data_dir: a.data_dir,
        pid: a.pid,
        assigned_name: a.assigned_name,
        host: a.host.unwrap_or_else(dbaas::orchestrator::host_name),
        read_wait: Duration::from_millis(a.read_wait_ms),
        catch_up: if a.catch_up == "replay" {
            dbaas::worker::CatchUp::Replay
        } else {
            dbaas::worker::CatchUp::Snapshot
        },
    })
    .await
}
