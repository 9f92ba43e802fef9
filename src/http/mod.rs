//! The orchestrator's HTTP API: thin handlers grouped by resource. Every route
//! answers other methods with a JSON 405, unknown paths with a JSON 404; who
//! may call which route is [`auth`]'s business. The JSON error type, body
//! reading and the 404/405 answers are shared with the RideShare services:
//! they live in the `dbaas-api` crate and are re-exported here.

pub mod auth;
pub use dbaas_api::http::{body, error, resource};
pub mod db;
pub(crate) mod health;
pub(crate) mod observe;
pub(crate) mod workers;

use actix::{Addr, Recipient};
use actix_web::{web, Route};

use crate::actors::dispatcher::Probe;
use crate::actors::election::Election;
use crate::actors::rpc::Rpc;
use crate::actors::scaler::Scaler;
use crate::actors::supervisor::ContainerSupervisor;
use crate::coord::session::Session;

/// What the handlers other than `db/*` reach: the actors they ask about the
/// cluster. (`db/*` reach the DBaaS only through the RPC boundary,
/// `web::Data<Rpc>`.)
pub struct AppState {
    /// A broker round trip, for readiness.
    pub broker_probe: Recipient<Probe>,
    /// The orchestrator's ZooKeeper session.
    pub zk: Session,
    /// This orchestrator, as the others see it.
    pub me: crate::coord::leadership::OrchestratorInfo,
    /// Whether it leads, or whom it follows.
    pub standing: tokio::sync::watch::Receiver<crate::coord::leadership::Standing>,
    /// Forwards the crash API to the leader when this orchestrator follows.
    pub forwarder: reqwest::Client,
    pub election: Addr<Election>,
    pub supervisor: Addr<ContainerSupervisor>,
    pub scaler: Addr<Scaler>,
    /// Renders `/metrics` (None: no recorder installed).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Writes waiting in `writeQ.dead` (None: not known, no broker session).
    pub dead_writes: tokio::sync::watch::Receiver<Option<u32>>,
    /// The orchestrator's supervised connections (`crate::tasks`).
    pub tasks: crate::tasks::Tasks,
}

/// A resource that serves `method` and answers 405 to everything else.
fn only(path: &str, method: Route, allow: &'static str) -> actix_web::Resource {
    resource::resource(path, vec![method], allow)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        "/api/v1/db/read",
        web::post().to(db::read::<Rpc>),
        "POST",
    ))
    .service(only(
        "/api/v1/db/write",
        web::post().to(db::write::<Rpc>),
        "POST",
    ))
    .service(only(
        "/api/v1/db/clear",
        web::post().to(db::clear::<Rpc>),
        "POST",
    ))
    .service(only(
        "/api/v1/crash/master",
        web::post().to(workers::crash_master),
        "POST",
    ))
    .service(only(
        "/api/v1/crash/slave",
        web::post().to(workers::crash_slave),
        "POST",
    ))
    .service(only(
        "/api/v1/worker/list",
        web::get().to(workers::list),
        "GET",
    ))
    .service(only(
        "/api/v1/worker/status",
        web::get().to(workers::status),
        "GET",
    ))
    .service(only(
        "/api/v1/scaler",
        web::get().to(workers::scaler),
        "GET",
    ))
    .service(only("/api/v1/health", web::get().to(health::health), "GET"))
    .service(only("/api/v1/ready", web::get().to(health::ready), "GET"))
    .service(only("/metrics", web::get().to(observe::metrics), "GET"))
    .service(only("/", web::get().to(observe::status_page), "GET"))
    .default_service(web::to(resource::not_found));
}
