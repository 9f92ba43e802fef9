//! The rides service binary: flags and env, logging, then [`dbaas::rideshare::rides::run`].

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "RideShare rides service (data in the DBaaS)")]
struct Args {
    /// HTTP address.
    #[arg(long, env = "RIDES_BIND", default_value = "127.0.0.1:8002")]
    bind: String,
    /// The DBaaS orchestrator's base URL.
    #[arg(long, env = "DBAAS_URL", default_value = "http://127.0.0.1:8000")]
    dbaas_url: String,
    /// Base URL of the users API: the load balancer.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8080")]
    users_url: String,
    /// This service's public address, sent as `Origin` to the users service
    /// (default: `http://<bind>`).
    #[arg(long, env = "RIDES_ORIGIN")]
    origin: Option<String>,
    /// Timeout of each call to the DBaaS and the users service, in milliseconds.
    #[arg(long, env = "RIDESHARE_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    dbaas::telemetry::init();
    let a = Args::parse();
    let origin = a.origin.unwrap_or_else(|| format!("http://{}", a.bind));
    dbaas::rideshare::rides::run(dbaas::rideshare::rides::Config {
        bind: a.bind,
        dbaas_url: a.dbaas_url,
        users_url: a.users_url,
        origin,
        timeout: Duration::from_millis(a.timeout_ms),
    })
    .await
}
