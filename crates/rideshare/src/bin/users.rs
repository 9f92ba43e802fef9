//! The users service binary: flags and env, logging, then [`rideshare::users::run`].

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "RideShare users service (data in the DBaaS)")]
struct Args {
    /// HTTP address.
    #[arg(long, env = "USERS_BIND", default_value = "127.0.0.1:8001")]
    bind: String,
    #[command(flatten)]
    dbaas: dbaas_api::config::DbaasClientArgs,
    #[command(flatten)]
    http: dbaas_api::config::HttpServerArgs,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    dbaas_api::telemetry::init();
    let a = Args::parse();
    rideshare::users::run(rideshare::users::Config {
        bind: a.bind,
        http: a.http.limits(),
        dbaas_url: a.dbaas.dbaas_url.clone(),
        timeout: a.dbaas.timeout(),
        retry_budget: a.dbaas.retry_budget(),
        dbaas_token: a.dbaas.token()?,
    })
    .await
}
