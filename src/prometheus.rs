//! Prometheus metrics of the orchestrator: every metric's name in one place,
//! the recorder it installs, and the functions the rest of the code calls.
//!
//! Workers export nothing themselves: their progress (role, applied seq) already
//! reaches the orchestrator through their ZooKeeper records, and the orchestrator
//! exports it per worker. So workers need no HTTP port (containers on a private
//! network stay that way) and one scrape target shows the whole service.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::coord::Membership;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder; its handle renders the exposition text.
/// The histograms' upkeep runs every 5 seconds on the current runtime.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Per-worker gauges are refreshed twice a second; a worker's series vanish
    // 10 s after it is gone.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(10)))
        .install_recorder()?;
    let upkeep = handle.clone();
    actix::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// One HTTP request, by route pattern and status.
pub fn http_request(endpoint: &str, status: u16, elapsed: Duration) {
    counter!("dbaas_http_requests_total", "endpoint" => endpoint.to_string(), "status" => status.to_string())
        .increment(1);
    histogram!("dbaas_http_request_duration_seconds", "endpoint" => endpoint.to_string())
        .record(elapsed.as_secs_f64());
}

/// A request that got no reply from a worker in time.
pub fn rpc_timeout(kind: &'static str) {
    counter!("dbaas_rpc_timeouts_total", "kind" => kind).increment(1);
}

/// A publish to the broker: `confirmed` (writes, acked by the broker), `sent`
/// (reads, unconfirmed) or `failed` (nack, timeout, channel error).
pub fn publish(queue: &'static str, outcome: &'static str) {
    counter!("dbaas_publishes_total", "queue" => queue, "outcome" => outcome).increment(1);
}

/// The workers as ZooKeeper shows them: per worker its applied seq and lag.
pub fn membership(m: &Membership) {
    let master = m.master_pid();
    for w in &m.workers {
        let pid = w.pid.to_string();
        gauge!("dbaas_worker_applied_seq", "pid" => pid.clone()).set(w.seq as f64);
        gauge!("dbaas_worker_lag", "pid" => pid.clone()).set(m.lag(w) as f64);
        gauge!("dbaas_worker_is_master", "pid" => pid).set(if Some(w.pid) == master {
            1.0
        } else {
            0.0
        });
    }
    gauge!("dbaas_workers").set(m.workers.len() as f64);
}

/// A new master took over; `took` is how long there was none.
pub fn election(took: Option<Duration>) {
    counter!("dbaas_elections_total").increment(1);
    if let Some(t) = took {
        histogram!("dbaas_election_duration_seconds").record(t.as_secs_f64());
    }
}

pub fn worker_started() {
    counter!("dbaas_workers_started_total").increment(1);
}

/// A worker ended: `crash_api`, `scale_in`, `died` (unexpectedly) or `shutdown`.
pub fn worker_stopped(cause: &'static str) {
    counter!("dbaas_workers_stopped_total", "cause" => cause).increment(1);
}

/// Writes waiting in `writeQ.dead` (quarantined poison writes).
/// A supervised task's state (`crate::tasks`): up or not, and how many of its
/// rounds ended.
pub fn task(name: &'static str, up: bool, restarts: u64) {
    gauge!("dbaas_task_up", "task" => name).set(if up { 1.0 } else { 0.0 });
    counter!("dbaas_task_restarts_total", "task" => name).absolute(restarts);
}

pub fn dead_writes(n: u32) {
    gauge!("dbaas_dead_writes").set(f64::from(n));
}

pub fn scaler_decision(reads: u64, slaves: usize) {
    counter!("dbaas_scaler_decisions_total").increment(1);
    gauge!("dbaas_scaler_last_interval_reads").set(reads as f64);
    gauge!("dbaas_scaler_target_slaves").set(slaves as f64);
}

/// This orchestrator leads (1) or follows (0); each time it starts leading
/// counts as a takeover.
pub fn leadership(leading: bool) {
    gauge!("dbaas_orchestrator_leading").set(if leading { 1.0 } else { 0.0 });
    if leading {
        counter!("dbaas_leader_takeovers_total").increment(1);
    }
}
