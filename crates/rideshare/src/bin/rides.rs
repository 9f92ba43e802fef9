//! The rides service binary: flags and env, logging, then [`rideshare::rides::run`].

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "RideShare rides service (data in the DBaaS)")]
struct Args {
    /// HTTP address.
    #[arg(long, env = "RIDES_BIND", default_value = "127.0.0.1:8002")]
    bind: String,
    #[command(flatten)]
    dbaas: dbaas_api::config::DbaasClientArgs,
    #[command(flatten)]
    http: dbaas_api::config::HttpServerArgs,
    /// Base URL of the users API: the load balancer.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8080")]
    users_url: String,
    /// This service's public address, sent as `Origin` to the users service
    /// (default: `http://<bind>`).
    #[arg(long, env = "RIDES_ORIGIN")]
    origin: Option<String>,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    dbaas_api::telemetry::init();
    let a = Args::parse();
    let origin = a.origin.unwrap_or_else(|| format!("http://{}", a.bind));
    rideshare::rides::run(rideshare::rides::Config {
        bind: a.bind,
        http: a.http.limits(),
        dbaas_url: a.dbaas.dbaas_url.clone(),
        users_url: a.users_url,
        origin,
        timeout: a.dbaas.timeout(),
        retry_budget: a.dbaas.retry_budget(),
        dbaas_token: a.dbaas.token()?,
    })
    .await
}
