//! The service survives its own infrastructure: RabbitMQ stopped and started,
//! RabbitMQ killed with SIGKILL, ZooKeeper stopped past the session timeout,
//! and the whole system stopped and started again on the same data.
//! Each test runs its own brokers (restarting the shared ones would disturb the
//! other tests), writes before and after the fault, and ends with every
//! acknowledged write present exactly once. They are `#[ignore]`d in the main
//! run and run one at a time by `scripts/test` (a broker restarting under the
//! load of the whole suite can take minutes to serve its stream again).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::private_brokers::PrivateBrokers;
use crate::common::{wait_until, Options, Orchestrator};
use crate::restarts::starts_of;

async fn start(test: &str, brokers: &PrivateBrokers) -> Orchestrator {
    Orchestrator::start(
        test,
        Options {
            namespace: Some(brokers.namespace()),
            ..Options::default()
        },
    )
    .await
}

/// Writes `n` users named `prefix-i`; returns their names (all acknowledged).
pub(crate) async fn write_users(o: &Orchestrator, prefix: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let (status, body) = o
            .write(json!({"table": "users", "insert": {"username": name, "password": "p"}}))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        names.push(name);
    }
    names
}

/// After a fault has ended: the first acknowledged write (its time printed
/// under `label`), ten more, and every acknowledged write present once.
async fn recovers(o: &Orchestrator, mut names: Vec<String>, label: &str) {
    let first = format!("after-{label}");
    let took = o.first_write(&first, Duration::from_secs(240)).await;
    eprintln!("{label}: back -> first acknowledged write: {took:?}");
    names.push(first);
    names.extend(write_users(o, &format!("{label}-then"), 10).await);
    all_present_once(o, &names).await;
}

/// Every name is present exactly once (strong read on the master), and the
/// orchestrator reports itself ready.
pub(crate) async fn all_present_once(o: &Orchestrator, names: &[String]) {
    wait_until("ready", Duration::from_secs(60), || async {
        (o.get_json("/api/v1/ready").await.0 == 200).then_some(())
    })
    .await
    .expect("the orchestrator became ready again");
    let (status, body) = o
        .read(json!({"table": "users", "columns": ["username"], "consistency": "strong", "limit": 10000}))
        .await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<String> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["username"].as_str().map(str::to_string))
        .collect();
    for n in names {
        let copies = rows.iter().filter(|r| *r == n).count();
        assert_eq!(copies, 1, "{n} present {copies} times");
    }
}

#[tokio::test]
#[ignore = "run alone by scripts/test: restarts its own brokers"]
async fn rabbitmq_stopped_and_started_the_service_comes_back() {
    let brokers = PrivateBrokers::start();
    let o = start("rmq-restart", &brokers).await;
    let names = write_users(&o, "before", 10).await;
    assert_eq!(o.get_json("/api/v1/ready").await.0, 200);
    let slave = crate::common::slave_pids(&o.status().await)[0];

    brokers.stop_rabbitmq();
    // Without a broker, requests fail at once (not after the deadline) and
    // readiness says why.
    let started = Instant::now();
    let (status, body) = o
        .write(json!({"table": "users", "insert": {"username": "during", "password": "p"}}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = o.get_json("/api/v1/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("RabbitMQ"),
        "{body}"
    );
    // The supervised connection says it is down, and why.
    let down = wait_until(
        "the rabbitmq task is down",
        Duration::from_secs(10),
        || async {
            let s = o.status().await;
            (s["tasks"]["rabbitmq"]["up"] == false).then_some(s)
        },
    )
    .await
    .expect("the rabbitmq task reported down");
    assert!(down["tasks"]["zookeeper"]["up"] == true, "{down}");

    brokers.start_rabbitmq();
    recovers(&o, names, "rabbitmq-restart").await;
    let tasks = o.status().await["tasks"].clone();
    assert!(tasks["rabbitmq"]["up"] == true, "{tasks}");
    assert!(tasks["rabbitmq"]["restarts"].as_u64() >= Some(1), "{tasks}");
    // The slave rode it out: same process, reconnected, resumed its copy.
    let pids = o.pids().await;
    assert!(
        pids.contains(&slave),
        "slave {slave} still serves: {pids:?}"
    );
    let log = std::fs::read_to_string(
        o.dir
            .path()
            .join("logs")
            .join(format!("worker-{slave}.log")),
    )
    .unwrap_or_default();
    assert!(log.contains("reconnected to RabbitMQ"), "{log}");
}

/// Not in `scripts/test`: after a SIGKILL, RabbitMQ 3.10 sometimes refuses the
/// `syncQ` stream (`NOT_FOUND - home node ... is down`) for minutes on a busy
/// machine (the service waits it out and recovers, but past CI's bounds).
/// Run it alone: `cargo test --test integration -- --ignored faults::rabbitmq_killed`
/// (it passed in 2.2 s from the restart to the first write on a quiet machine).
#[tokio::test]
#[ignore = "RabbitMQ's own stream recovery after kill -9 can take minutes: run alone"]
async fn rabbitmq_killed_the_service_comes_back() {
    let brokers = PrivateBrokers::start();
    let o = start("rmq-kill", &brokers).await;
    let names = write_users(&o, "before", 10).await;
    brokers.kill_rabbitmq();
    brokers.start_rabbitmq();
    recovers(&o, names, "rabbitmq-kill").await;
}

#[tokio::test]
#[ignore = "run alone by scripts/test: restarts its own brokers"]
async fn zookeeper_stopped_past_the_session_timeout_the_service_comes_back() {
    let brokers = PrivateBrokers::start();
    let o = start("zk-restart", &brokers).await;
    let names = write_users(&o, "before", 10).await;
    brokers.stop_zookeeper();
    // Longer than the 2 s session timeout: every session expires.
    let down = Instant::now();
    wait_until("readiness notices", Duration::from_secs(10), || async {
        (o.get_json("/api/v1/ready").await.0 == 503).then_some(())
    })
    .await
    .expect("readiness reported ZooKeeper gone");
    if let Some(rest) = Duration::from_secs(3).checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    brokers.start_zookeeper();
    recovers(&o, names, "zookeeper-restart").await;
    // The supervisor kept seeing the live set: one master and one slave, no more.
    o.wait_for_workers(1).await;
}

/// Everything stopped (orchestrator and workers, RabbitMQ, ZooKeeper) and
/// started again on the same data: every worker reopens its own copy and reads
/// `syncQ` from that copy's offset (none replays the log or needs a snapshot),
/// and every acknowledged write is there once.
#[tokio::test]
#[ignore = "run alone by scripts/test: restarts its own brokers"]
async fn whole_system_restarted_on_the_same_data_resumes_each_workers_copy() {
    let brokers = PrivateBrokers::start();
    let data = tempfile::tempdir().expect("tempdir");
    let opts = || Options {
        slaves: 2,
        namespace: Some(brokers.namespace()),
        data_dir: Some(data.path().to_path_buf()),
        ..Options::default()
    };
    let mut o = Orchestrator::start("whole-restart", opts()).await;
    let names = write_users(&o, "before", 200).await;
    let seq_before = o.status().await["workers"]
        .as_array()
        .and_then(|ws| ws.iter().filter_map(|w| w["seq"].as_u64()).max())
        .expect("a seq");
    o.stop();
    brokers.stop_rabbitmq();
    brokers.stop_zookeeper();

    brokers.start_zookeeper();
    brokers.start_rabbitmq();
    let started = Instant::now();
    let o = Orchestrator::spawn("whole-restart", &opts()).await;
    let last = names.last().expect("a name").clone();
    o.read_back(&last, Duration::from_secs(240)).await;
    eprintln!(
        "whole-system restart ({} writes): orchestrator start -> first read of the last write: {:?}",
        names.len(),
        started.elapsed()
    );
    let status = o.wait_for_workers(2).await;
    let starts = starts_of(&status);
    assert_eq!(
        starts,
        vec![("own_file".to_string(), true); 3],
        "every worker resumed its own copy at or past seq {seq_before}: {status}"
    );
    recovers(&o, names, "whole-restart").await;
}
