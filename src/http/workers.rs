//! `POST /api/v1/crash/master`, `POST /api/v1/crash/slave`,
//! `GET /api/v1/worker/list`, `GET /api/v1/worker/status`, `GET /api/v1/scaler`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::actors::election::GetMembership;
use crate::actors::scaler::{GetScalerStatus, ScalerStatus};
use crate::actors::supervisor::{Crash, CrashError, GetSupervisorStatus, SupervisorStatus, Target};
use crate::coord::{Role, StartedFrom};

/// A 500 for an actor that did not take the message (stopped, or its mailbox
/// closed). Here rather than as a `From` for [`ApiError`]: the error type is
/// the `dbaas-api` crate's, which knows no actors.
fn unreachable_actor(e: actix::MailboxError) -> ApiError {
    ApiError::internal(format!("internal actor unavailable: {e}"))
}

pub async fn crash_master(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crash(&state, Target::Master).await
}

pub async fn crash_slave(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    crash(&state, Target::Slave).await
}

async fn crash(state: &AppState, target: Target) -> Result<HttpResponse, ApiError> {
    match state
        .supervisor
        .send(Crash(target))
        .await
        .map_err(unreachable_actor)?
    {
        Ok(pid) => Ok(HttpResponse::Ok().json([pid.to_string()])),
        Err(e @ CrashError::NoTarget(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let membership = state
        .election
        .send(GetMembership)
        .await
        .map_err(unreachable_actor)?;
    let pids: Vec<u32> = membership.pids().into_iter().collect();
    Ok(HttpResponse::Ok().json(pids))
}

#[derive(Serialize)]
struct WorkerStatus {
    pid: u32,
    role: Role,
    seq: u64,
    /// How many writes this worker is behind the master.
    lag: u64,
    epoch: u64,
    age_ms: i64,
    /// The slot whose file the worker keeps, and where its data came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<StartedFrom>,
}

#[derive(Serialize)]
struct Status {
    master: Option<u32>,
    epoch: Option<u64>,
    workers: Vec<WorkerStatus>,
    supervisor: SupervisorStatus,
    scaler: ScalerStatus,
    /// Quarantined writes waiting in `writeQ.dead` (null: RabbitMQ unreachable).
    dead_writes: Option<u32>,
    /// The orchestrator's supervised connections, by name.
    tasks: std::collections::BTreeMap<String, crate::tasks::TaskState>,
}

pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let membership = state
        .election
        .send(GetMembership)
        .await
        .map_err(unreachable_actor)?;
    let master = membership.master_pid();
    let now = chrono::Utc::now().timestamp_millis();
    let workers = membership
        .workers
        .iter()
        .map(|w| WorkerStatus {
            pid: w.pid,
            role: if Some(w.pid) == master {
                Role::Master
            } else {
                w.role
            },
            seq: w.seq,
            lag: membership.lag(w),
            epoch: w.epoch,
            age_ms: now - w.started_at_ms,
            slot: w.slot,
            start: w.start,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Status {
        master,
        epoch: membership.master.map(|m| m.epoch),
        workers,
        supervisor: state
            .supervisor
            .send(GetSupervisorStatus)
            .await
            .map_err(unreachable_actor)?,
        scaler: state
            .scaler
            .send(GetScalerStatus)
            .await
            .map_err(unreachable_actor)?,
        dead_writes: *state.dead_writes.borrow(),
        tasks: state.tasks.snapshot(),
    }))
}

pub async fn scaler(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(
        state
            .scaler
            .send(GetScalerStatus)
            .await
            .map_err(unreachable_actor)?,
    ))
}
