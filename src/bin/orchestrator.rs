//! The orchestrator binary: flags and env, logging, then [`dbaas::orchestrator::run`].

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "DBaaS orchestrator: HTTP API, queues, election watch, worker supervision, autoscaling"
)]
struct Args {
    #[command(flatten)]
    brokers: dbaas::config::BrokerArgs,
    /// HTTP address (port 80 in containers).
    #[arg(long, env = "DBAAS_BIND", default_value = "127.0.0.1:8000")]
    bind: String,
    /// This orchestrator's name among several (unique); default: host name
    /// and HTTP port, the same across restarts (a restarted orchestrator
    /// replaces its predecessor's record at once).
    #[arg(long, env = "DBAAS_ORCHESTRATOR_ID")]
    id: Option<String>,
    /// URL at which the other orchestrators reach this one's HTTP API;
    /// default: `http://` and the bind address (host name for 0.0.0.0).
    #[arg(long, env = "DBAAS_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// How long an HTTP request waits for a worker's reply.
    #[arg(long, env = "DBAAS_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Slaves to keep before the scaler's first decision.
    #[arg(long, env = "DBAAS_INITIAL_SLAVES", default_value_t = 1)]
    initial_slaves: usize,
    /// Autoscaling interval, started by the first db/read.
    #[arg(long, env = "DBAAS_SCALE_INTERVAL_SECS", default_value_t = 120)]
    scale_interval_secs: u64,
    /// Reads per interval that one slave is expected to serve.
    #[arg(long, env = "DBAAS_READS_PER_SLAVE", default_value_t = 20)]
    reads_per_slave: u64,
    /// The fewest slaves the scaler asks for (at least 1).
    #[arg(long, env = "DBAAS_MIN_SLAVES", default_value_t = 1)]
    min_slaves: usize,
    /// The most slaves the scaler asks for (8 fits a 2-core, 24 GiB machine).
    #[arg(long, env = "DBAAS_MAX_SLAVES", default_value_t = 8)]
    max_slaves: usize,
    #[command(flatten)]
    http: dbaas::config::HttpServerArgs,
    /// Where workers run: `process` (local processes) or `docker` (Docker Engine API).
    #[arg(long, env = "DBAAS_RUNTIME", default_value = "process", value_parser = ["process", "docker"])]
    runtime: String,
    /// Stop the workers when the orchestrator stops (else the next one adopts them).
    #[arg(long, env = "DBAAS_STOP_WORKERS_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    stop_workers_on_exit: bool,
    /// Worker image (docker runtime).
    #[arg(
        long,
        env = "DBAAS_WORKER_IMAGE",
        default_value = "localhost/dbaas-worker:dev"
    )]
    worker_image: String,
    /// Network for worker containers: `host` or the compose network (docker runtime).
    #[arg(long, env = "DBAAS_DOCKER_NETWORK", default_value = "host")]
    docker_network: String,
    /// Label value marking this orchestrator's worker containers (default: the ZooKeeper hosts).
    #[arg(long, env = "DBAAS_INSTANCE")]
    instance: Option<String>,
    /// Docker engines to spread the workers over, `name=url,...` (e.g.
    /// `h1=tcp://10.0.0.1:2375`); default: DOCKER_HOST or the local socket.
    #[arg(long, env = "DBAAS_DOCKER_HOSTS")]
    docker_hosts: Option<String>,
    /// Worker binary (process runtime); default: `worker` beside this binary.
    #[arg(long, env = "DBAAS_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Directory for the workers' SQLite files (process runtime).
    #[arg(long, env = "DBAAS_DATA_DIR", default_value = ".run/workers")]
    data_dir: PathBuf,
    /// Directory for the workers' logs (process runtime); stderr if unset.
    #[arg(long, env = "DBAAS_WORKER_LOG_DIR")]
    worker_log_dir: Option<PathBuf>,
    /// API tokens of the `data` scope (db/read, db/write), comma-separated;
    /// give them in the environment or a file, never as a flag.
    #[arg(long, env = "DBAAS_DATA_TOKENS", hide_env_values = true)]
    data_tokens: Option<dbaas::config::Secret>,
    /// A file of `data` tokens, one per line (`#` comments).
    #[arg(long, env = "DBAAS_DATA_TOKENS_FILE")]
    data_tokens_file: Option<PathBuf>,
    /// API tokens of the `admin` scope (everything), comma-separated.
    #[arg(long, env = "DBAAS_ADMIN_TOKENS", hide_env_values = true)]
    admin_tokens: Option<dbaas::config::Secret>,
    /// A file of `admin` tokens, one per line (`#` comments).
    #[arg(long, env = "DBAAS_ADMIN_TOKENS_FILE")]
    admin_tokens_file: Option<PathBuf>,
    /// Serve without tokens on a non-loopback address (protected mode refuses
    /// that otherwise): anyone who reaches the port can read, write, clear and crash.
    #[arg(long, env = "DBAAS_INSECURE_OPEN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    insecure_open: bool,
}

fn main() -> anyhow::Result<()> {
    dbaas::telemetry::init();
    let a = Args::parse();
    a.brokers.apply_topology();
    a.brokers.apply_zk_auth()?;
    a.brokers.apply_snapshot_secret()?;
    let tokens = dbaas::http::auth::Tokens::load(
        a.data_tokens.as_ref().map(|t| t.expose()),
        a.data_tokens_file.as_deref(),
        a.admin_tokens.as_ref().map(|t| t.expose()),
        a.admin_tokens_file.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("API tokens: {e}"))?;
    let auth = dbaas::http::auth::Auth::decide(&a.bind, tokens, a.insecure_open)
        .map_err(|e| anyhow::anyhow!(e))?;
    let slave_bounds = dbaas::actors::scaler::SlaveBounds::new(a.min_slaves, a.max_slaves)
        .map_err(|e| anyhow::anyhow!("DBAAS_MIN_SLAVES / DBAAS_MAX_SLAVES: {e}"))?;
    let runtime = if a.runtime == "docker" {
        dbaas::orchestrator::RuntimeOptions::Docker {
            image: a.worker_image,
            network: a.docker_network,
            instance: a.instance.unwrap_or_else(|| a.brokers.zk_hosts.clone()),
            hosts: dbaas::orchestrator::parse_docker_hosts(
                a.docker_hosts.as_deref().unwrap_or(""),
            )?,
        }
    } else {
        let worker_bin = match a.worker_bin {
            Some(p) => p,
            None => std::env::current_exe()?
                .parent()
                .map(|d| d.join("worker"))
                .ok_or_else(|| {
                    anyhow::anyhow!("cannot locate the worker binary; pass --worker-bin")
                })?,
        };
        dbaas::orchestrator::RuntimeOptions::Process {
            worker_bin,
            data_dir: a.data_dir,
            log_dir: a.worker_log_dir,
        }
    };
    let host = dbaas::orchestrator::host_name();
    let id =
        a.id.unwrap_or_else(|| dbaas::orchestrator::default_id(&host, &a.bind));
    let advertise = a
        .advertise_url
        .unwrap_or_else(|| dbaas::orchestrator::advertised(&a.bind, &host));
    let config = dbaas::orchestrator::Config {
        id,
        advertise,
        amqp_url: a.brokers.amqp_url.clone(),
        zk_hosts: a.brokers.zk_hosts.clone(),
        zk_session_timeout: a.brokers.zk_session_timeout(),
        bind: a.bind,
        request_timeout: Duration::from_millis(a.request_timeout_ms),
        initial_slaves: a.initial_slaves,
        scale_interval: Duration::from_secs(a.scale_interval_secs),
        reads_per_slave: a.reads_per_slave,
        slave_bounds,
        http: a.http.limits(),
        runtime,
        stop_workers_on_exit: a.stop_workers_on_exit,
        auth,
    };
    actix_rt::System::new().block_on(dbaas::orchestrator::run(config))
}
