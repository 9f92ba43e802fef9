//! `POST /api/v1/crash/master`, `POST /api/v1/crash/slave`,
//! `GET /api/v1/worker/list`, `GET /api/v1/worker/status`, `GET /api/v1/scaler`.
//!
//! Only the leading orchestrator acts on workers: a follower forwards the
//! crash API to the leader (with the caller's credentials, once: a forwarded
//! call is never forwarded again) and answers with the leader's answer.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::actors::election::GetMembership;
use crate::actors::scaler::{GetScalerStatus, ScalerStatus};
use crate::actors::supervisor::{Crash, CrashError, GetSupervisorStatus, SupervisorStatus, Target};
use crate::coord::leadership::{OrchestratorInfo, Standing};
use crate::coord::{Role, StartedFrom};

/// A 500 for an actor that did not take the message (stopped, or its mailbox
/// closed). Here rather than as a `From` for [`ApiError`]: the error type is
/// the `dbaas-api` crate's, which knows no actors.
fn unreachable_actor(e: actix::MailboxError) -> ApiError {
    ApiError::internal(format!("internal actor unavailable: {e}"))
}

pub async fn crash_master(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    crash(&state, &req, Target::Master).await
}

pub async fn crash_slave(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    crash(&state, &req, Target::Slave).await
}

/// Marks a crash call one orchestrator forwarded to the leader.
const FORWARDED: &str = "x-dbaas-forwarded-by";
/// How long a follower waits for the leader's answer to a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

async fn crash(
    state: &AppState,
    req: &HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    match state
        .supervisor
        .send(Crash(target))
        .await
        .map_err(unreachable_actor)?
    {
        Ok(pid) => Ok(HttpResponse::Ok().json([pid.to_string()])),
        Err(e @ CrashError::NoTarget(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(CrashError::NotLeader) => forward_to_leader(state, req).await,
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// Sends the same call to the leading orchestrator and relays its answer.
async fn forward_to_leader(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let leader = match &*state.standing.borrow() {
        Standing::Following { leader: Some(l) } => l.clone(),
        _ => {
            return Err(ApiError::unavailable(
                "no orchestrator leads right now (an election is under way); retry shortly",
            ))
        }
    };
    if req.headers().contains_key(FORWARDED) {
        return Err(ApiError::unavailable(format!(
            "forwarded here as to the leader, but {} leads now; retry shortly",
            leader.id
        )));
    }
    let url = format!("{}{}", leader.http.trim_end_matches('/'), req.path());
    let mut call = state
        .forwarder
        .post(&url)
        .timeout(FORWARD_TIMEOUT)
        .header(FORWARDED, state.me.id.as_str());
    if let Some(auth) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        call = call.header(reqwest::header::AUTHORIZATION, auth.as_bytes());
    }
    let answer = call.send().await.map_err(|e| {
        ApiError::unavailable(format!(
            "the leading orchestrator {} did not answer: {e}",
            leader.id
        ))
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = answer.bytes().await.map_err(|e| {
        ApiError::unavailable(format!(
            "the leading orchestrator {}'s answer broke off: {e}",
            leader.id
        ))
    })?;
    tracing::info!(leader = %leader.id, %status, path = req.path(), "crash call forwarded to the leader");
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(body))
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
    /// Where it runs: the host, or the Docker engine it was started on.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

/// This orchestrator among the orchestrators.
#[derive(Serialize)]
struct OrchestratorStatus {
    id: String,
    #[serde(flatten)]
    standing: Standing,
    /// Every live orchestrator (empty: ZooKeeper not reachable).
    orchestrators: Vec<OrchestratorInfo>,
}

#[derive(Serialize)]
struct Status {
    orchestrator: OrchestratorStatus,
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
            host: w.host.clone(),
        })
        .collect();
    let orchestrators = match state.zk.client() {
        Ok(client) => tokio::time::timeout(
            Duration::from_secs(2),
            crate::coord::leadership::orchestrators(&client),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let standing = state.standing.borrow().clone();
    Ok(HttpResponse::Ok().json(Status {
        orchestrator: OrchestratorStatus {
            id: state.me.id.clone(),
            standing,
            orchestrators,
        },
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
