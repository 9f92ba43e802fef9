//! `GET /api/v1/health` (the process is alive and serving HTTP) and
//! `GET /api/v1/ready` (it can serve requests now: a RabbitMQ round trip works,
//! the ZooKeeper session is connected, and a master and at least one serving
//! slave are known). Readiness answers 503 with every reason it is not ready,
//! so health checks and `scripts/up` see the truth, not just a live port.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::actors::dispatcher::Probe;
use crate::actors::election::GetMembership;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let mut not_ready = Vec::new();
    match state.broker_probe.send(Probe).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => not_ready.push(why),
        Err(e) => not_ready.push(format!("dispatcher unavailable: {e}")),
    }
    let membership = if state.zk.is_connected() {
        state.election.send(GetMembership).await.ok()
    } else {
        not_ready.push("no connected ZooKeeper session".into());
        None
    };
    if let Some(m) = &membership {
        if m.master_pid().is_none() {
            not_ready.push("no master elected".into());
        }
        if m.serving_slaves() == 0 {
            not_ready.push("no slave serving reads".into());
        }
    }
    let master = membership.as_ref().and_then(|m| m.master_pid());
    let slaves = membership.as_ref().map_or(0, |m| m.serving_slaves());
    if not_ready.is_empty() {
        HttpResponse::Ok().json(json!({"ready": true, "master": master, "serving_slaves": slaves}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "error": not_ready.join("; "),
            "reasons": not_ready,
            "master": master,
            "serving_slaves": slaves,
        }))
    }
}
