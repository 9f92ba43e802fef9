//! `BENCH_PARTS=restarts scripts/bench`: how long the service takes to come
//! back after its infrastructure restarts (issue 13's figures), each with
//! brokers of its own (`bench/harness/brokers.rs`):
//!
//! - the whole system (orchestrator, workers, RabbitMQ, ZooKeeper) stopped and
//!   started on the same data, at two data sizes: from the orchestrator's start
//!   to the first strong read of the last write. Each worker resumes its own
//!   copy, so this should not grow with the history;
//! - RabbitMQ stopped and started: from the broker's return to the first
//!   acknowledged write;
//! - ZooKeeper stopped past the session timeout and started: from its return
//!   to the first acknowledged write and the first read.

mod harness;
mod shared;

use std::time::{Duration, Instant};

use harness::brokers::PrivateBrokers;
use harness::{wait_until, Options, Orchestrator};
use serde_json::{json, Value};

/// Rows per insert write (the request model's largest insert).
const BULK: usize = 10_000;

fn options(brokers: &PrivateBrokers, data: &std::path::Path) -> Options {
    Options {
        slaves: 1,
        namespace: Some(brokers.namespace()),
        data_dir: Some(data.to_path_buf()),
        ..Options::default()
    }
}

/// Inserts `rows` users in writes of [`BULK`] rows; returns the last name.
async fn load(o: &Orchestrator, rows: usize) -> String {
    let mut name = String::new();
    for start in (0..rows).step_by(BULK) {
        let batch: Vec<Value> = (start..(start + BULK).min(rows))
            .map(|i| {
                name = format!("u{i:07}");
                json!({"username": name, "password": "p"})
            })
            .collect();
        let (status, body) = o.write(json!({"table": "users", "insert": batch})).await;
        assert_eq!(status, 200, "{body}");
    }
    name
}

/// Waits for the first answered read; how long it took.
async fn first_read(o: &Orchestrator, patience: Duration) -> Duration {
    let started = Instant::now();
    wait_until("a read is answered", patience, || async {
        let (status, _) = o.read(json!({"table": "users", "count": true})).await;
        (status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no read answered: {}", o.log()));
    started.elapsed()
}

/// Whole system stopped and started with `rows` rows: (seconds to the first
/// read of the last write, where each worker's copy came from).
async fn whole_system(rows: usize) -> (f64, Vec<String>) {
    let brokers = PrivateBrokers::start();
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = Orchestrator::start("bench-restart", options(&brokers, data.path())).await;
    let last = load(&o, rows).await;
    o.stop();
    brokers.stop_rabbitmq();
    brokers.stop_zookeeper();
    brokers.start_zookeeper();
    brokers.start_rabbitmq();
    let started = Instant::now();
    let o = Orchestrator::spawn("bench-restart", &options(&brokers, data.path())).await;
    o.read_back(&last, Duration::from_secs(300)).await;
    let took = started.elapsed().as_secs_f64();
    let status = o.wait_for_workers(1).await;
    let starts = status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["start"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    (took, starts)
}

/// RabbitMQ stopped and started: seconds from its return to the first write.
async fn rabbitmq_restart() -> f64 {
    let brokers = PrivateBrokers::start();
    let data = tempfile::tempdir().expect("tempdir");
    let o = Orchestrator::start("bench-rmq", options(&brokers, data.path())).await;
    load(&o, 1000).await;
    brokers.stop_rabbitmq();
    brokers.start_rabbitmq();
    o.first_write("after-rabbitmq", Duration::from_secs(300))
        .await
        .as_secs_f64()
}

/// ZooKeeper stopped past the session timeout and started: seconds from its
/// return to the first write and to the first read.
async fn zookeeper_restart() -> (f64, f64) {
    let brokers = PrivateBrokers::start();
    let data = tempfile::tempdir().expect("tempdir");
    let o = Orchestrator::start("bench-zk", options(&brokers, data.path())).await;
    load(&o, 1000).await;
    brokers.stop_zookeeper();
    tokio::time::sleep(Duration::from_secs(3)).await;
    brokers.start_zookeeper();
    let (write, read) = tokio::join!(
        o.first_write("after-zookeeper", Duration::from_secs(300)),
        first_read(&o, Duration::from_secs(300))
    );
    (write.as_secs_f64(), read.as_secs_f64())
}

#[tokio::main]
async fn main() {
    if !shared::under_cargo_bench("restarts") {
        return;
    }
    let sizes: &[usize] = if shared::smoke() {
        &[100]
    } else {
        &[10_000, 100_000]
    };
    let mut md = String::from("# Restarts\n\n");
    md.push_str(&format!(
        "{} Process runtime, a master and one slave, each scenario on brokers of its own \
         (RabbitMQ and ZooKeeper restarted as `scripts/up` runs them).\n\n",
        shared::machine()
    ));
    md.push_str(
        "| scenario | rows | back → | seconds | workers' copies from |\n|---|---|---|---|---|\n",
    );
    let mut json_rows = Vec::new();
    for &rows in sizes {
        let (took, starts) = whole_system(rows).await;
        md.push_str(&format!(
            "| whole system stopped and started | {rows} | first strong read of the last write \
             (from the orchestrator's start) | {took:.3} | {} |\n",
            starts.join(", ")
        ));
        json_rows.push(
            json!({"scenario": "whole-system", "rows": rows, "seconds": took, "starts": starts}),
        );
    }
    if !shared::smoke() {
        let rmq = rabbitmq_restart().await;
        md.push_str(&format!(
            "| RabbitMQ stopped and started | 1000 | first acknowledged write \
             (from the broker's start) | {rmq:.3} | |\n"
        ));
        json_rows.push(json!({"scenario": "rabbitmq", "rows": 1000, "first_write": rmq}));
        let (write, read) = zookeeper_restart().await;
        md.push_str(&format!(
            "| ZooKeeper stopped 3 s and started | 1000 | first acknowledged write / first read \
             (from ZooKeeper's start) | {write:.3} / {read:.3} | |\n"
        ));
        json_rows.push(json!({
            "scenario": "zookeeper", "rows": 1000, "first_write": write, "first_read": read,
        }));
    }
    if !shared::smoke() {
        shared::write_results("restarts", &md, &json!(json_rows));
    } else {
        println!("{md}");
    }
}
