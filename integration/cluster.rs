//! The nemesis on three simulated hosts (`scripts/cluster`, docs/cluster.md):
//! a RabbitMQ cluster and a ZooKeeper ensemble of three, one node of each per
//! network namespace, and an orchestrator given every address. Writers run
//! the whole time while, one after the other, a RabbitMQ node is killed
//! (SIGKILL) and brought back, the ZooKeeper leader is killed and brought
//! back, and one host is cut off from the other two for longer than the
//! session timeout and healed. Checked: at every sample at most one master;
//! no sequence number acknowledged for two different writes; at the end every
//! acknowledged write is on every replica exactly once and the replicas are
//! identical. Measured: per fault, the longest time without an acknowledged
//! write (docs/benchmarks.md).
//!
//! Workers across hosts (issue 20 item 4, `host_loss`): with `scripts/cluster
//! up --engines` each host serves the Docker Engine API and an orchestrator
//! with the docker runtime spreads the master and slaves over the three; the
//! host of a slave, then in a second test the master's, is lost as a whole
//! (its link down) and its workers are replaced on the others. Skipped with
//! a `host loss:` line when the hosts run no engines.
//!
//! `#[ignore]`d in the main run: `scripts/test` brings the cluster up
//! (`scripts/cluster up --brokers-only` under its own names) and runs it with
//! `DBAAS_TEST_CLUSTER`, `DBAAS_TEST_CLUSTER_AMQP` (the nodes' base URLs,
//! comma-separated) and `DBAAS_TEST_CLUSTER_ZK` set, and
//! `DBAAS_TEST_CLUSTER_ENGINES` when the hosts serve Docker engines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{every_replica_holds_exactly, wait_until, Namespace, Options, Orchestrator};

const WRITERS: usize = 4;
/// The workers' ZooKeeper session timeout here: a leader election of the
/// ensemble (about 1 s, more under load) must fit in it.
const SESSION_TIMEOUT_MS: u64 = 5000;

fn var(k: &str) -> String {
    std::env::var(k)
        .unwrap_or_else(|_| panic!("{k} is not set: run this test through scripts/test"))
}

/// Runs `scripts/cluster ARGS` (the fault commands) without blocking the
/// writers' runtime; its stdout.
async fn cluster(args: &[&str]) -> String {
    let out = tokio::process::Command::new(var("DBAAS_TEST_CLUSTER"))
        .args(args)
        .output()
        .await
        .expect("run scripts/cluster");
    assert!(
        out.status.success(),
        "scripts/cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `scripts/cluster ARGS`' stdout, or None if it failed.
async fn try_cluster(args: &[&str]) -> Option<Vec<u8>> {
    let out = tokio::process::Command::new(var("DBAAS_TEST_CLUSTER"))
        .args(args)
        .output()
        .await
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// A vhost (on the cluster, so on every node) and a ZooKeeper chroot of the test's own.
async fn namespace() -> Namespace {
    let name = format!(
        "cluster-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let bases = var("DBAAS_TEST_CLUSTER_AMQP");
    let zk = var("DBAAS_TEST_CLUSTER_ZK");
    cluster(&["ctl", "add_vhost", &name]).await;
    let user = crate::common::amqp_user(&bases);
    cluster(&[
        "ctl",
        "set_permissions",
        "-p",
        &name,
        &user,
        ".*",
        ".*",
        ".*",
    ])
    .await;
    let client = zookeeper_client::Client::connect(&zk)
        .await
        .expect("connect ZooKeeper");
    client
        .create(
            &format!("/{name}"),
            b"",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .expect("create chroot");
    Namespace {
        amqp_url: dbaas::broker::addresses(&bases)
            .iter()
            .map(|b| format!("{b}/{name}"))
            .collect::<Vec<_>>()
            .join(","),
        zk_hosts: format!("{zk}/{name}"),
        name,
    }
}

/// What the writers saw: when each write was acknowledged, and with which seq.
#[derive(Default)]
struct History {
    acks: Vec<(Instant, String, u64)>,
    failed_attempts: usize,
}

/// Writes `name` (one Idempotency-Key for all its attempts) until it is
/// acknowledged; gives up after a minute.
async fn write_until_acked(o: &Orchestrator, name: &str, history: &Mutex<History>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let r = o
            .http
            .post(o.url("/api/v1/db/write"))
            .header("Idempotency-Key", name)
            .timeout(Duration::from_secs(10))
            .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}))
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            assert_ne!(status, 409, "{name} conflicted: applied twice?");
            if status == 200 {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let seq = body["seq"].as_u64().unwrap_or(0);
                if let Ok(mut h) = history.lock() {
                    h.acks.push((Instant::now(), name.to_string(), seq));
                }
                return true;
            }
        }
        if let Ok(mut h) = history.lock() {
            h.failed_attempts += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The longest time without an acknowledged write that overlaps `[from, to]`,
/// and when it began (relative to `from`; negative: before).
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> (Duration, f64) {
    acks.windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .map(|w| {
            let start = if w[0] >= from {
                (w[0] - from).as_secs_f64()
            } else {
                -(from - w[0]).as_secs_f64()
            };
            (w[1] - w[0], start)
        })
        .max_by_key(|(gap, _)| *gap)
        .unwrap_or_default()
}

/// Writers and a sampler running against an orchestrator while faults go
/// on: [`WRITERS`] writers insert users the whole time, each write retried
/// with its Idempotency-Key until acknowledged; the sampler reads
/// `worker/status` every 200 ms.
struct Load {
    started: Instant,
    history: Arc<Mutex<History>>,
    running: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Vec<String>>>,
    sampler: tokio::task::JoinHandle<Samples>,
}

/// The sampler's count of samples, the most masters at one, and each change
/// of master (when first seen, the new master).
type Samples = (usize, usize, Vec<(Instant, u64)>);

/// What a [`Load`] saw, checked: at most one master at every sample, and no
/// sequence number acknowledged for two different writes.
struct Outcome {
    acked: BTreeSet<String>,
    /// When each write was acknowledged, in order.
    times: Vec<Instant>,
    failed_attempts: usize,
    samples: usize,
    /// The most masters at one sample.
    most: usize,
    /// Each change of master: when it was first seen, and the new master.
    masters_seen: Vec<(Instant, u64)>,
    elapsed: Duration,
}

impl Load {
    fn start(o: &Arc<Orchestrator>) -> Load {
        let history = Arc::new(Mutex::new(History::default()));
        let running = Arc::new(AtomicBool::new(true));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (o, history, running) = (o.clone(), history.clone(), running.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while running.load(Ordering::SeqCst) {
                    let name = format!("w{w}-{i:05}");
                    assert!(
                        write_until_acked(&o, &name, &history).await,
                        "{name} not acknowledged within a minute"
                    );
                    acked.push(name);
                    i += 1;
                }
                acked
            }));
        }
        let sampler = {
            let (o, running) = (o.clone(), running.clone());
            tokio::spawn(async move {
                let (mut samples, mut most) = (0usize, 0usize);
                let mut masters_seen: Vec<(Instant, u64)> = Vec::new();
                while running.load(Ordering::SeqCst) {
                    let (code, s) = o.get_json("/api/v1/worker/status").await;
                    if code == 200 {
                        let masters = s["workers"]
                            .as_array()
                            .map(|ws| ws.iter().filter(|w| w["role"] == "master").count())
                            .unwrap_or(0);
                        most = most.max(masters);
                        samples += 1;
                        if let Some(m) = s["master"].as_u64() {
                            if masters_seen.last().is_none_or(|(_, last)| *last != m) {
                                masters_seen.push((Instant::now(), m));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (samples, most, masters_seen)
            })
        };
        Load {
            started: Instant::now(),
            history,
            running,
            writers,
            sampler,
        }
    }

    /// When the writes so far were acknowledged, in order.
    fn ack_times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self
            .history
            .lock()
            .map(|h| h.acks.iter().map(|(t, _, _)| *t).collect())
            .unwrap_or_default();
        times.sort();
        times
    }

    /// Waits until `n` more writes than now have been acknowledged.
    async fn more_acks(&self, n: usize, patience: Duration) {
        let from = self.ack_times().len();
        wait_until(
            &format!("{n} more writes acknowledged"),
            patience,
            || async { (self.ack_times().len() >= from + n).then_some(()) },
        )
        .await
        .unwrap_or_else(|| panic!("no {n} writes acknowledged within {patience:?}"));
    }

    /// Stops the writers and the sampler, and checks what they saw.
    async fn stop(self) -> Outcome {
        self.running.store(false, Ordering::SeqCst);
        let mut acked = BTreeSet::new();
        for w in self.writers {
            acked.extend(w.await.expect("writer"));
        }
        let (samples, most, masters_seen) = self.sampler.await.expect("sampler");
        assert!(samples > 50, "only {samples} status samples");
        assert!(most <= 1, "{most} masters at one sample");
        let history = std::mem::take(&mut *self.history.lock().expect("history"));
        // Two masters acknowledging at once would hand out one seq twice.
        let mut by_seq: BTreeMap<u64, &str> = BTreeMap::new();
        for (_, name, seq) in &history.acks {
            if let Some(other) = by_seq.insert(*seq, name) {
                assert_eq!(other, name, "seq {seq} acknowledged for {other} and {name}");
            }
        }
        let mut times: Vec<Instant> = history.acks.iter().map(|(t, _, _)| *t).collect();
        times.sort();
        Outcome {
            acked,
            times,
            failed_attempts: history.failed_attempts,
            samples,
            most,
            masters_seen,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Waits until all three RabbitMQ nodes run in one cluster again.
async fn rabbit_whole() {
    wait_until(
        "RabbitMQ cluster whole",
        Duration::from_secs(120),
        || async {
            let out = try_cluster(&["ctl", "cluster_status", "--formatter", "json"]).await?;
            let s: serde_json::Value = serde_json::from_slice(&out).ok()?;
            let partitions = &s["partitions"];
            (s["running_nodes"].as_array()?.len() == 3
                && partitions.as_object().is_none_or(|p| p.is_empty())
                && partitions.as_array().is_none_or(|p| p.is_empty()))
            .then_some(())
        },
    )
    .await
    .expect("the RabbitMQ cluster became whole again");
}

/// Waits until every replica of the queues and streams of `vhost` (the
/// test's own) runs: before a host is taken away. A node counts as running
/// before the replicas it holds have started, and a host taken away while one
/// of a queue's three replicas is down leaves that queue without a majority:
/// in the CI run of 2026-11-26 the host-loss test began 3 s after the nemesis
/// healed a partition, lost the master's host, and no worker could read
/// `syncQ` for the two minutes the test waited.
async fn replicas_running(vhost: &str) {
    let last = std::cell::RefCell::new(None);
    let running = wait_until(
        "every replica of the test's queues running",
        Duration::from_secs(60),
        || {
            let last = &last;
            async move {
                let down = replicas_down(vhost).await?;
                let done = down.is_empty();
                *last.borrow_mut() = Some(down);
                done.then_some(())
            }
        },
    )
    .await;
    assert!(
        running.is_some(),
        "replicas of {vhost}'s queues still down after 60 s (queue, node): {:?}",
        last.borrow()
    );
}

/// The replicas of `vhost`'s quorum queues and streams that are not running,
/// as (queue, node); None if RabbitMQ did not answer.
async fn replicas_down(vhost: &str) -> Option<Vec<(String, String)>> {
    let out = try_cluster(&[
        "ctl",
        "list_queues",
        "-p",
        vhost,
        "name",
        "members",
        "online",
        "--formatter",
        "json",
    ])
    .await?;
    let queues: Vec<serde_json::Value> = serde_json::from_slice(&out).ok()?;
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut down = Vec::new();
    for q in &queues {
        let online = names(&q["online"]);
        for member in names(&q["members"]) {
            if !online.contains(&member) {
                down.push((q["name"].as_str().unwrap_or("?").to_string(), member));
            }
        }
    }
    Some(down)
}

/// Waits until three ZooKeeper servers serve (one leader, two followers).
async fn zk_whole() {
    wait_until(
        "ZooKeeper ensemble whole",
        Duration::from_secs(90),
        || async {
            let modes = try_cluster(&["zk-modes"]).await?;
            let text = String::from_utf8_lossy(&modes).to_string();
            (text.matches("Mode: leader").count() == 1
                && text.matches("Mode: follower").count() == 2)
                .then_some(())
        },
    )
    .await
    .expect("the ZooKeeper ensemble became whole again");
}

/// Copies the orchestrator's and workers' logs to `DBAAS_TEST_CLUSTER_LOGS`,
/// when set, for a look at each failover afterwards.
fn keep_logs(o: &Orchestrator) {
    let Ok(to) = std::env::var("DBAAS_TEST_CLUSTER_LOGS") else {
        return;
    };
    let to = std::path::PathBuf::from(to);
    let _ = std::fs::create_dir_all(&to);
    let _ = std::fs::copy(
        o.dir.path().join("orchestrator.log"),
        to.join("orchestrator.log"),
    );
    if let Ok(entries) = std::fs::read_dir(o.dir.path().join("logs")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster's network namespaces: run by scripts/test"]
async fn writes_survive_node_loss_leader_loss_and_a_partition_exactly_once() {
    let o = Arc::new(
        Orchestrator::start(
            "cluster",
            Options {
                slaves: 2,
                ..cluster_options().await
            },
        )
        .await,
    );
    // The faults start from a whole cluster.
    replicas_running(&o.ns.name).await;
    zk_whole().await;
    let load = Load::start(&o);

    // (fault, when it began, when it was undone, when the cluster was whole again)
    let mut faults: Vec<(&str, Instant, Instant, Instant)> = Vec::new();
    let wall = |what: &str| {
        eprintln!(
            "cluster nemesis: {} {what}",
            chrono::Utc::now().format("%H:%M:%S%.3f")
        )
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. kill -9 a RabbitMQ node: h1, the first address every process tries.
    let t0 = Instant::now();
    cluster(&["kill-rabbit", "1"]).await;
    wall("killed RabbitMQ h1");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let undone = Instant::now();
    cluster(&["start-rabbit", "1"]).await;
    rabbit_whole().await;
    wall("RabbitMQ whole again");
    faults.push((
        "RabbitMQ node h1 killed (kill -9)",
        t0,
        undone,
        Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. kill -9 the ZooKeeper leader.
    let leader = cluster(&["zk-leader"]).await;
    let t0 = Instant::now();
    cluster(&["kill-zk", &leader]).await;
    wall(&format!("killed the ZooKeeper leader h{leader}"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let undone = Instant::now();
    cluster(&["start-zk", &leader]).await;
    zk_whole().await;
    wall("ZooKeeper whole again");
    faults.push((
        "ZooKeeper leader killed (kill -9)",
        t0,
        undone,
        Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. Cut off a host from its peers for longer than the session timeout
    // and RabbitMQ's net_ticktime, then heal: first the host of the
    // ZooKeeper leader, then h2, the node every process moved to when h1
    // died (its clients hang until it pauses itself), unless that was the same.
    let leader_host = cluster(&["zk-leader"]).await;
    let mut cuts = vec![(leader_host.clone(), "host of the ZooKeeper leader")];
    if leader_host != "2" {
        cuts.push(("2".to_string(), "h2, the RabbitMQ node the clients use"));
    }
    for (host, what) in cuts {
        let t0 = Instant::now();
        cluster(&["partition", &host]).await;
        wall(&format!("cut off h{host}"));
        tokio::time::sleep(Duration::from_secs(15)).await;
        let undone = Instant::now();
        cluster(&["heal", &host]).await;
        wall(&format!("healed h{host}"));
        rabbit_whole().await;
        zk_whole().await;
        wall("both whole again");
        let label: &'static str = if what.starts_with("host") {
            "host of the ZooKeeper leader cut off from its peers for 15 s"
        } else {
            "h2 (the clients' RabbitMQ node) cut off from its peers for 15 s"
        };
        faults.push((label, t0, undone, Instant::now()));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let Outcome {
        acked,
        times,
        failed_attempts,
        samples,
        most,
        masters_seen,
        elapsed,
    } = load.stop().await;
    eprintln!(
        "cluster nemesis: {} writes acknowledged in {elapsed:?} ({failed_attempts} failed attempts, retried), {samples} samples, at most {most} master",
        acked.len(),
    );
    let mut worst = Duration::ZERO;
    for (fault, from, undone, whole) in &faults {
        let (during, at) = longest_gap(&times, *from, *undone);
        let (after, at_after) = longest_gap(&times, *undone, *whole);
        eprintln!(
            "cluster nemesis: {fault}: longest time without an acknowledged write {during:.2?} (from {at:+.2} s) while in effect ({:.1?}); {after:.2?} (from {at_after:+.2} s after it was undone) while the node rejoined ({:.1?})",
            *undone - *from,
            *whole - *undone
        );
        let failovers = masters_seen
            .iter()
            .skip(1)
            .filter(|(t, _)| t > from && t <= whole)
            .count();
        eprintln!("cluster nemesis: {fault}: {failovers} change(s) of master");
        worst = worst.max(during).max(after);
    }
    every_replica_holds_exactly(&o, &acked, &BTreeSet::new(), 2).await;
    keep_logs(&o);
    // Bounded, with room for a loaded CI machine; the figures are the report.
    assert!(worst < Duration::from_secs(30), "unavailable for {worst:?}");
}

/// The hosts' Docker engines, `(name, http URL)`, when `scripts/cluster up
/// --engines` started them (`DBAAS_TEST_CLUSTER_ENGINES`, in
/// `DBAAS_DOCKER_HOSTS`'s form); the spec itself as the second value.
fn engines() -> Option<(Vec<(String, String)>, String)> {
    let spec = std::env::var("DBAAS_TEST_CLUSTER_ENGINES").ok()?;
    let engines = dbaas::orchestrator::parse_docker_hosts(&spec)
        .expect("DBAAS_TEST_CLUSTER_ENGINES is name=url,...")
        .into_iter()
        .map(|(name, url)| (name, url.replacen("tcp://", "http://", 1)))
        .collect();
    Some((engines, spec))
}

/// The containers labelled `dbaas.worker=<instance>` on an engine, any
/// state: (name, state); None while the engine does not answer.
async fn engine_containers(
    http: &reqwest::Client,
    engine: &str,
    instance: &str,
) -> Option<Vec<(String, String)>> {
    let filters = json!({"label": [format!("dbaas.worker={instance}")]}).to_string();
    let list: serde_json::Value = http
        .get(format!("{engine}/containers/json"))
        .query(&[("all", "true"), ("filters", filters.as_str())])
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        list.as_array()?
            .iter()
            .map(|c| {
                (
                    c["Names"][0].as_str().unwrap_or("?").to_string(),
                    c["State"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect(),
    )
}

/// Each worker's (role, host, pid) in a `worker/status` answer.
fn placement(status: &serde_json::Value) -> Vec<(String, String, u64)> {
    status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["role"].as_str().unwrap_or("?").to_string(),
                        w["host"].as_str().unwrap_or("?").to_string(),
                        w["pid"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A host's link taken down for the test; brought back up when dropped,
/// so a failing test leaves the cluster whole for the next one.
struct LinkDown(String);

impl LinkDown {
    async fn take(host: &str) -> LinkDown {
        cluster(&["link-down", host]).await;
        LinkDown(host.to_string())
    }

    async fn restore(self) {
        cluster(&["link-up", &self.0]).await;
        std::mem::forget(self);
    }
}

impl Drop for LinkDown {
    fn drop(&mut self) {
        let _ = std::process::Command::new(var("DBAAS_TEST_CLUSTER"))
            .args(["link-up", &self.0])
            .output();
    }
}

/// Which worker's host is lost.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Slave,
    Master,
}

/// Workers spread over the three hosts' Docker engines (issue 20 item 4):
/// the master and two slaves start on three different hosts; then the host
/// of one of them (`victim`) is lost as a whole, its link down, while
/// writers run. Checked: within a bound the supervisor has a master and two
/// serving slaves again, none on the lost host; writes are acknowledged
/// with the host still down; the supervisor counts the lost workers dead
/// though its kill cannot reach their engine; once the link is back their
/// containers have exited or are gone; at most one master at every sample;
/// every acknowledged write once on every replica. Measured (printed as
/// `host loss: ...`): cut to replacement serving.
async fn host_loss(victim: Victim) {
    let Some((engines, spec)) = engines() else {
        eprintln!(
            "host loss: skipped: the hosts run no Docker engines (scripts/cluster up --engines, which needs podman)"
        );
        return;
    };
    let mut opts = cluster_options().await;
    let instance = opts.namespace.as_ref().expect("a namespace").name.clone();
    let image = std::env::var("DBAAS_TEST_WORKER_IMAGE")
        .unwrap_or_else(|_| "localhost/dbaas-worker:dev".into());
    opts.extra_env.extend([
        ("DBAAS_RUNTIME".into(), "docker".into()),
        ("DBAAS_DOCKER_HOSTS".into(), spec.clone()),
        ("DBAAS_DOCKER_NETWORK".into(), "host".into()),
        ("DBAAS_WORKER_IMAGE".into(), image),
        ("DBAAS_INSTANCE".into(), instance.clone()),
    ]);
    let o = Arc::new(Orchestrator::start("hosts", Options { slaves: 2, ..opts }).await);
    let before = placement(&o.wait_for_workers(2).await);
    let hosts: BTreeSet<&str> = before.iter().map(|(_, h, _)| h.as_str()).collect();
    assert_eq!(
        hosts.len(),
        3,
        "the master and the slaves on three hosts: {before:?}"
    );
    let pids: BTreeSet<u64> = before.iter().map(|(_, _, p)| *p).collect();
    assert_eq!(
        o.pids().await.into_iter().collect::<BTreeSet<_>>(),
        pids,
        "worker/list gives the containers' pids"
    );
    let role = match victim {
        Victim::Slave => "slave",
        Victim::Master => "master",
    };
    // DBAAS_TEST_LOST_HOST=h1 loses that host if it holds the victim's role
    // (h1's RabbitMQ node is every process's first address: see
    // docs/cluster.md, "Workers across hosts").
    let wanted = std::env::var("DBAAS_TEST_LOST_HOST").ok();
    let cut = before
        .iter()
        .filter(|(r, _, _)| r == role)
        .map(|(_, h, _)| h.clone())
        .find(|h| wanted.as_ref().is_none_or(|w| w == h))
        .or_else(|| {
            before
                .iter()
                .find(|(r, _, _)| r == role)
                .map(|(_, h, _)| h.clone())
        })
        .expect("a worker of that role");
    let cut_no = cut.trim_start_matches('h').to_string();
    let cut_engine = engines
        .iter()
        .find(|(name, _)| *name == cut)
        .map(|(_, url)| url.clone())
        .expect("the host's engine");
    eprintln!("host loss: workers (role, host, pid) {before:?}; losing {cut}, the {role}'s host");

    let load = Load::start(&o);
    load.more_acks(20, Duration::from_secs(30)).await;
    // A host is taken from a whole cluster: every replica of this test's
    // queues running (the test before may have just healed a node).
    replicas_running(&instance).await;
    zk_whole().await;

    let t0 = Instant::now();
    let link = LinkDown::take(&cut_no).await;
    // The lost host's workers leave the status when their sessions expire;
    // then the supervisor has replaced them once a master and two serving
    // slaves run elsewhere.
    let gone_at = std::cell::Cell::new(None);
    let after = wait_until(
        "the lost host's workers replaced on the others",
        Duration::from_secs(120),
        || {
            let o = o.clone();
            let cut = cut.clone();
            let gone = &gone_at;
            async move {
                let s = o.status().await;
                let now = placement(&s);
                if gone.get().is_none() && now.iter().all(|(_, h, _)| *h != cut) {
                    gone.set(Some(t0.elapsed()));
                }
                let masters = now.iter().filter(|(r, _, _)| r == "master").count();
                let slaves = now.iter().filter(|(r, _, _)| r == "slave").count();
                (s["master"].is_u64()
                    && masters == 1
                    && slaves == 2
                    && now.len() == 3
                    && now.iter().all(|(_, h, _)| *h != cut))
                .then_some(now)
            }
        },
    )
    .await;
    let replaced = t0.elapsed();
    let Some(after) = after else {
        panic!(
            "{cut}'s workers not replaced within 120 s: {}",
            o.status().await
        )
    };
    eprintln!("host loss: replaced after {replaced:.1?}: {after:?}");
    let listed: BTreeSet<u64> = o.pids().await.into_iter().collect();
    let now: BTreeSet<u64> = after.iter().map(|(_, _, p)| *p).collect();
    assert_eq!(listed, now, "worker/list gives the replacements' pids");
    // Writes go on with the host still down.
    load.more_acks(20, Duration::from_secs(30)).await;
    // The supervisor's kill of each lost worker goes to an engine that does
    // not answer; bounded, it gives up and the worker is counted dead all
    // the same, still with the link down.
    let lost: Vec<u64> = before
        .iter()
        .filter(|(_, h, _)| *h == cut)
        .map(|(_, _, p)| *p)
        .collect();
    wait_until(
        "the lost workers counted dead",
        Duration::from_secs(60),
        || async {
            let s = o.status().await;
            let events: Vec<String> = s["supervisor"]["events"]
                .as_array()?
                .iter()
                .filter_map(|e| e["what"].as_str().map(String::from))
                .collect();
            lost.iter()
                .all(|p| {
                    events
                        .iter()
                        .any(|e| e.starts_with(&format!("worker {p} ended")))
                })
                .then_some(())
        },
    )
    .await
    .expect("the supervisor counted the lost host's workers dead");
    let counted_dead = t0.elapsed();

    let undone = Instant::now();
    link.restore().await;
    let http = reqwest::Client::new();
    // Its workers ended on their own when their sessions did; none runs
    // again, and no second master appears (the sampler goes on).
    let old = wait_until(
        "the lost host's old containers exited or gone",
        Duration::from_secs(60),
        || async {
            let list = engine_containers(&http, &cut_engine, &instance).await?;
            list.iter()
                .all(|(_, state)| state != "running")
                .then_some(list)
        },
    )
    .await
    .expect("the lost host's old containers exited or were removed");
    let old_ended = undone.elapsed();
    rabbit_whole().await;
    zk_whole().await;
    let whole = Instant::now();
    // Reported, not asserted: RabbitMQ restarts the returned node's replicas
    // in its own time (a replica still down here leaves its queue two of three).
    eprintln!(
        "host loss: {cut} back, its node running again: replicas of the test's queues not running yet (queue, node): {:?}",
        replicas_down(&instance).await
    );
    load.more_acks(20, Duration::from_secs(30)).await;

    let Outcome {
        acked,
        times,
        failed_attempts,
        samples,
        most,
        masters_seen,
        ..
    } = load.stop().await;
    let (during, at) = longest_gap(&times, t0, undone);
    let (rejoin, at_rejoin) = longest_gap(&times, undone, whole);
    let failovers = masters_seen.iter().skip(1).filter(|(t, _)| *t > t0).count();
    eprintln!(
        "host loss: {cut} (the {role}'s host) lost, its link down: its workers gone from the status after {:.1} s, replaced (a master and 2 serving slaves, none on {cut}) after {:.1} s, counted dead (the kill through its engine given up) after {:.1} s; longest time without an acknowledged write {during:.2?} (from {at:+.2} s); {failovers} change(s) of master",
        gone_at.get().unwrap_or(replaced).as_secs_f64(),
        replaced.as_secs_f64(),
        counted_dead.as_secs_f64(),
    );
    eprintln!(
        "host loss: {cut}'s link back after {:.1?}: its old containers {old:?} ({old_ended:.1?} after), longest time without an acknowledged write {rejoin:.2?} (from {at_rejoin:+.2} s) while it rejoined; {} writes acknowledged ({failed_attempts} failed attempts, retried), {samples} samples, at most {most} master",
        undone - t0,
        acked.len()
    );
    every_replica_holds_exactly(&o, &acked, &BTreeSet::new(), 2).await;
    keep_logs(&o);
    drop(o);
    // The orchestrator stopped its workers; what it left on an engine (an
    // exited container it had not removed yet) goes too.
    for (_, engine) in &engines {
        for (name, _) in engine_containers(&http, engine, &instance)
            .await
            .unwrap_or_default()
        {
            let _ = http
                .delete(format!(
                    "{engine}/containers/{}",
                    name.trim_start_matches('/')
                ))
                .query(&[("force", "true")])
                .send()
                .await;
        }
    }
    assert!(
        replaced < Duration::from_secs(60),
        "replaced after {replaced:?}"
    );
    assert!(
        during.max(rejoin) < Duration::from_secs(30),
        "unavailable for {:?}",
        during.max(rejoin)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster's network namespaces and engines: run by scripts/test"]
async fn a_lost_slave_hosts_workers_are_replaced_on_the_others() {
    host_loss(Victim::Slave).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/cluster's network namespaces and engines: run by scripts/test"]
async fn a_lost_master_hosts_workers_are_replaced_on_the_others() {
    host_loss(Victim::Master).await;
}

/// The leading orchestrator SIGKILLed on the cluster while writers go
/// through two orchestrators (issue 20): the scenario of
/// `orchestrators::leaders_death_hands_over`, on the three hosts' brokers.
#[tokio::test]
#[ignore = "needs scripts/cluster's network namespaces: run by scripts/test"]
async fn the_leading_orchestrator_dies_and_another_adopts_the_workers() {
    let opts = cluster_options().await;
    crate::orchestrators::leaders_death_hands_over("cluster-leader", opts).await;
}

/// Two orchestrators serving at once on the cluster's brokers (issue 20):
/// `orchestrators::two_serve_at_once`.
#[tokio::test]
#[ignore = "needs scripts/cluster's network namespaces: run by scripts/test"]
async fn two_orchestrators_answer_every_request_on_the_cluster() {
    let opts = cluster_options().await;
    crate::orchestrators::two_serve_at_once("cluster-two", opts).await;
}

/// Reads through two orchestrators scale by their sum on the cluster's
/// brokers and ensemble (issue 20): `orchestrators::scale_by_the_sum`.
#[tokio::test]
#[ignore = "needs scripts/cluster's network namespaces: run by scripts/test"]
async fn reads_through_two_orchestrators_scale_by_their_sum_on_the_cluster() {
    let opts = cluster_options().await;
    crate::orchestrators::scale_by_the_sum("cluster-sum", opts).await;
}

/// An orchestrator's options on a namespace of the cluster's own: every
/// queue on three nodes, the cluster's session timeout and, the brokers off
/// loopback, an authenticating snapshot secret.
async fn cluster_options() -> Options {
    Options {
        namespace: Some(namespace().await),
        extra_env: vec![
            ("DBAAS_REPLICAS".into(), "3".into()),
            (
                "DBAAS_SNAPSHOT_SECRET".into(),
                "cluster-nemesis-snapshot-secret".into(),
            ),
            (
                "DBAAS_ZK_SESSION_TIMEOUT_MS".into(),
                SESSION_TIMEOUT_MS.to_string(),
            ),
        ],
        request_timeout_ms: 10_000,
        ..Options::default()
    }
}

/// `readQ` on a cluster is a quorum queue declared with
/// [`dbaas::broker::work_queue_args`]; reads carry a per-message TTL (the
/// request timeout) so one nobody took in time is dropped rather than served
/// late. RabbitMQ supports message TTL on quorum queues since 3.10: checked
/// here on a queue declared the same way.
#[tokio::test]
#[ignore = "needs scripts/cluster's network namespaces: run by scripts/test"]
async fn a_read_nobody_took_expires_from_a_quorum_queue() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    let ns = namespace().await;
    let conn = dbaas::broker::open(&ns.amqp_url, "ttl-probe", Duration::from_secs(30))
        .await
        .expect("connect to the cluster");
    let channel = dbaas::broker::confirmed_channel(&conn)
        .await
        .expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            "ttl-probe".into(),
            durable,
            dbaas::broker::work_queue_args(3),
        )
        .await
        .expect("declare a quorum queue");
    let confirm = channel
        .basic_publish(
            "".into(),
            "ttl-probe".into(),
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default().with_expiration("1500".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let count = || async {
        channel
            .queue_declare("ttl-probe".into(), passive, Default::default())
            .await
            .ok()
            .map(|q| q.message_count())
    };
    assert_eq!(count().await, Some(1), "the read waits in the queue");
    wait_until("the read expired", Duration::from_secs(15), || async {
        (count().await == Some(0)).then_some(())
    })
    .await
    .expect("a quorum queue drops a message past its TTL");
}
