//! Several orchestrators on one set of workers (issue 20): every one serves
//! HTTP, one leads (only its supervisor and scaler act), replies reach the
//! orchestrator that asked, the leader's death hands over to another that
//! adopts the workers, and the scaler counts the reads of all of them.
//! Process runtime, on the shared RabbitMQ and ZooKeeper; the orchestrators
//! share the workers' data directory as they would a host. The leader's
//! death is watched through nginx in front of both (`common::load_balancer`).
//! The three scenarios run on the three simulated hosts' brokers too
//! (`cluster::`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::load_balancer::LoadBalancer;
use crate::common::{
    alive, every_replica_holds_exactly, sigkill, slave_pids, wait_until, Options, Orchestrator,
};

/// A second orchestrator on `first`'s brokers and data, waiting until it
/// serves (its broker session is up; it sees the workers).
async fn another(
    test: &str,
    first: &Orchestrator,
    extra_env: Vec<(String, String)>,
) -> Orchestrator {
    let o = Orchestrator::spawn(
        test,
        &Options {
            namespace: Some(first.ns.clone()),
            data_dir: Some(first.data_dir()),
            extra_env,
            ..Options::default()
        },
    )
    .await;
    wait_until(
        "the second orchestrator is ready",
        Duration::from_secs(60),
        || async { (o.get_json("/api/v1/ready").await.0 == 200).then_some(()) },
    )
    .await
    .unwrap_or_else(|| panic!("never ready:\n{}", o.log()));
    o
}

/// What `o` says of itself: "leading" or "following", and the leader it names.
async fn standing(o: &Orchestrator) -> (String, Option<String>) {
    let s = o.status().await;
    let me = &s["orchestrator"];
    (
        me["standing"].as_str().unwrap_or_default().to_string(),
        me["leader"]["id"].as_str().map(String::from),
    )
}

async fn id_of(o: &Orchestrator) -> String {
    o.status().await["orchestrator"]["id"]
        .as_str()
        .expect("an orchestrator id")
        .to_string()
}

/// Waits until `o` leads.
async fn leads(o: &Orchestrator, patience: Duration) {
    wait_until("leadership", patience, || async {
        (standing(o).await.0 == "leading").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("never led:\n{}", o.log()));
}

fn pids(status: &Value) -> BTreeSet<u64> {
    status["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["pid"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn two_orchestrators_serve_at_once_one_leads_and_every_reply_reaches_its_asker() {
    two_serve_at_once("two-serve", Options::default()).await;
}

/// Two orchestrators on `opts`' brokers (1 slave): the second follows and
/// starts nothing, 8 clients on each get every answer, the crash API
/// through the follower reaches the leader, and the last one to stop stops
/// the workers. Also run on the three simulated hosts (`cluster::`).
pub(crate) async fn two_serve_at_once(test: &str, opts: Options) {
    let extra_env = opts.extra_env.clone();
    let first = Orchestrator::start(test, opts).await;
    leads(&first, Duration::from_secs(30)).await;
    let workers = pids(&first.wait_for_workers(1).await);
    let second = another(test, &first, extra_env).await;

    // The second follows the first and starts no workers of its own.
    let first_id = id_of(&first).await;
    assert_eq!(
        standing(&second).await,
        ("following".to_string(), Some(first_id.clone()))
    );
    let s = second.status().await;
    assert_eq!(
        s["orchestrator"]["orchestrators"].as_array().map(Vec::len),
        Some(2),
        "{s}"
    );

    // Both at once, 8 clients each: every request answered by the one asked.
    let mut clients = Vec::new();
    for (k, o) in [&first, &second].into_iter().enumerate() {
        for c in 0..8 {
            let (http, write, read) = (
                o.http.clone(),
                o.url("/api/v1/db/write"),
                o.url("/api/v1/db/read"),
            );
            clients.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                for i in 0..25 {
                    let name = format!("o{k}-c{c}-{i}");
                    let w = http
                        .post(&write)
                        .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    let r = http
                        .post(&read)
                        .json(&json!({"table": "users", "columns": ["username"], "where": {"username": name}}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    for (what, got) in [("write", w), ("read", r)] {
                        if !matches!(got, Ok(200)) {
                            failed.push(format!("{what} {name}: {got:?}"));
                        }
                    }
                }
                failed
            }));
        }
    }
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.expect("client"));
    }
    assert!(
        failed.is_empty(),
        "{} of 800 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(
        pids(&second.status().await),
        workers,
        "the follower started or ended workers"
    );

    // The crash API through the follower reaches the leader.
    let victim = *slave_pids(&first.status().await).last().expect("a slave");
    let (status, body) = second.post_json("/api/v1/crash/slave", &json!({})).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!([victim.to_string()])),
        "{body}"
    );
    let replaced = first.wait_for_workers(1).await;
    assert!(!pids(&replaced).contains(&victim));

    // Stopped one after the other, leader first: the last one stops the
    // workers (the follower takes over just to do so), none is left running.
    let running = pids(&replaced);
    let (mut first, mut second) = (first, second);
    first.stop();
    second.stop();
    let left = wait_until("the workers stopped", Duration::from_secs(30), || async {
        running.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    assert!(
        left.is_some(),
        "workers left running: {:?}:\n{}",
        running,
        second.log()
    );
}

/// Writers that retry: each sends to the first URL and moves to the next
/// (if there are several) when a request gets no answer or a 5xx, retrying
/// the same write (same Idempotency-Key) until it is answered.
struct Writers {
    running: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl Writers {
    fn start(http: &reqwest::Client, urls: Vec<String>, n: usize) -> Writers {
        let running = Arc::new(AtomicBool::new(true));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|k| {
                let (http, urls, running, acked) =
                    (http.clone(), urls.clone(), running.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut at = 0;
                    let mut i = 0;
                    while running.load(Ordering::SeqCst) {
                        let name = format!("w{k}-{i:05}");
                        loop {
                            let r = http
                                .post(format!("{}/api/v1/db/write", urls[at % urls.len()]))
                                .header("Idempotency-Key", &name)
                                .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}))
                                .timeout(Duration::from_secs(10))
                                .send()
                                .await;
                            match r {
                                Ok(r) if r.status().is_success() => break,
                                Ok(r) if !r.status().is_server_error() => {
                                    panic!("{name}: {} {}", r.status(), r.text().await.unwrap_or_default())
                                }
                                _ => {}
                            }
                            if !running.load(Ordering::SeqCst) {
                                return Some(name);
                            }
                            at += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if let Ok(mut a) = acked.lock() {
                            a.push((name, Instant::now()));
                        }
                        i += 1;
                        // A steady load: the replicas' files are read whole at the end.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    None
                })
            })
            .collect();
        Writers {
            running,
            acked,
            tasks,
        }
    }

    fn acked_after(&self, t: Instant) -> usize {
        self.acked
            .lock()
            .map(|a| a.iter().filter(|(_, at)| *at > t).count())
            .unwrap_or(0)
    }

    async fn stop(self) -> (BTreeSet<String>, BTreeSet<String>) {
        self.running.store(false, Ordering::SeqCst);
        let mut unknown = BTreeSet::new();
        for t in self.tasks {
            unknown.extend(t.await.expect("writer"));
        }
        let acked = self
            .acked
            .lock()
            .map(|a| a.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        (acked, unknown)
    }
}

#[tokio::test]
async fn the_leaders_death_hands_over_to_another_that_adopts_the_workers() {
    leaders_death_hands_over("leader-dies", Options::default()).await;
}

/// Two orchestrators (on `opts`' brokers, with 2 slaves), writers going
/// through nginx in front of both, and the leader SIGKILLed: the
/// other leads within the session timeout, adopts the same workers (none
/// replaced), the writes go on, a crashed slave is replaced by the new
/// leader, and every acknowledged write is once on every replica. Also run
/// on the three simulated hosts (`cluster::`).
pub(crate) async fn leaders_death_hands_over(test: &str, opts: Options) {
    let extra_env = opts.extra_env.clone();
    let first = Orchestrator::start(test, Options { slaves: 2, ..opts }).await;
    leads(&first, Duration::from_secs(30)).await;
    let second = another(test, &first, extra_env).await;
    let before = pids(&first.wait_for_workers(2).await);

    // Writers through a load balancer in front of both.
    let upstreams: Vec<String> = [&first, &second]
        .iter()
        .map(|o| o.url.trim_start_matches("http://").to_string())
        .collect();
    let lb = LoadBalancer::start(&upstreams).await;
    let writers = Writers::start(&second.http, vec![lb.url.clone()], 3);
    let started = Instant::now();
    wait_until("writes flow", Duration::from_secs(30), || async {
        (writers.acked_after(started) >= 20).then_some(())
    })
    .await
    .expect("writes acknowledged before the kill");

    let killed = Instant::now();
    sigkill(first.pid().expect("the first orchestrator's pid"));
    leads(&second, Duration::from_secs(30)).await;
    eprintln!(
        "leader SIGKILLed -> the other leads: {:?}",
        killed.elapsed()
    );

    // The workers carry on: adopted, not replaced; writes go on.
    let adopted = pids(&second.wait_for_workers(2).await);
    assert_eq!(
        adopted, before,
        "the new leader adopted the running workers"
    );
    let s = second.status().await;
    assert!(
        s["supervisor"]["events"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["what"].as_str().is_some_and(|w| w.starts_with("leading")))),
        "the takeover is in the supervisor's events: {s}"
    );
    let metrics = second.metrics_text().await;
    assert!(
        metrics.contains("dbaas_orchestrator_leading 1"),
        "{metrics}"
    );
    let after = Instant::now();
    wait_until(
        "writes after the takeover",
        Duration::from_secs(30),
        || async { (writers.acked_after(after) >= 20).then_some(()) },
    )
    .await
    .expect("writes acknowledged after the takeover");

    // The new leader supervises: a crashed slave is replaced.
    let victim = *slave_pids(&second.status().await).last().expect("a slave");
    let (status, body) = second.post_json("/api/v1/crash/slave", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let replaced = second.wait_for_workers(2).await;
    assert!(!pids(&replaced).contains(&victim));

    let (acked, unknown) = writers.stop().await;
    every_replica_holds_exactly(&second, &acked, &unknown, 2).await;
}

#[tokio::test]
async fn reads_through_two_orchestrators_scale_the_slaves_by_their_sum() {
    scale_by_the_sum("scale-sum", Options::default()).await;
}

/// Two orchestrators on `opts`' brokers, an 8 s interval: 25 reads through
/// each make one decision of 50 reads and 3 slaves. Also run on the three
/// simulated hosts (`cluster::`).
pub(crate) async fn scale_by_the_sum(test: &str, opts: Options) {
    let mut extra_env = opts.extra_env.clone();
    extra_env.push(("DBAAS_SCALE_INTERVAL_SECS".into(), "8".into()));
    let first = Orchestrator::start(
        test,
        Options {
            scale_interval_secs: 8,
            ..opts
        },
    )
    .await;
    leads(&first, Duration::from_secs(30)).await;
    let second = another(test, &first, extra_env).await;
    first.insert_user("someone").await;
    // 25 reads through each: 50 in all, 3 slaves; either alone would be 2.
    for o in [&first, &second] {
        for _ in 0..25 {
            let (status, body) = o
                .read(json!({"table": "users", "columns": ["username"]}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let decision = wait_until(
        "the leader's first decision",
        Duration::from_secs(30),
        || async {
            let s = first.get_json("/api/v1/scaler").await.1;
            s["decisions"].as_array()?.first().cloned()
        },
    )
    .await
    .expect("a scaling decision");
    assert_eq!(decision["reads"], 50, "{decision}");
    assert_eq!(decision["slaves"], 3, "{decision}");
    first.wait_for_workers(3).await;
    // The follower keeps no interval of its own.
    let s = second.get_json("/api/v1/scaler").await.1;
    assert_eq!(s["deciding"], false, "{s}");
    assert_eq!(s["counted_here"], 25, "{s}");
}
