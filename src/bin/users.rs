//! The users service binary: flags and env, logging, then [`dbaas::rideshare::users::run`].

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "RideShare users service (data in the DBaaS)")]
struct Args {
    /// HTTP address.
    #[arg(long, env = "USERS_BIND", default_value = "127.0.0.1:8001")]
    bind: String,
    /// The DBaaS orchestrator's base URL.
    #[arg(long, env = "DBAAS_URL", default_value = "http://127.0.0.1:8000")]
    dbaas_url: String,
    /// Timeout of each call to the DBaaS, in milliseconds.
    #[arg(long, env = "RIDESHARE_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    dbaas::telemetry::init();
    let a = Args::parse();
    dbaas::rideshare::users::run(dbaas::rideshare::users::Config {
        bind: a.bind,
        dbaas_url: a.dbaas_url,
        timeout: Duration::from_millis(a.timeout_ms),
    })
    .await
}
