//! Failover without errors: clients keep being answered through every single
//! fault of a worker. Each client writes its own key and reads it back at
//! `eventual` consistency with the `min_seq` its write returned, while the
//! master is crashed through the API, killed with SIGKILL, and paused (SIGSTOP,
//! left stopped); then the only slave is crashed. With the default pool (a
//! master and one slave) every master fault promotes the only slave, so reads
//! must be served by the master until a replacement slave serves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{sigkill, signal, wait_until, Options, Orchestrator};

#[derive(Default)]
struct Tally {
    writes: AtomicU64,
    reads: AtomicU64,
    failed: std::sync::Mutex<Vec<String>>,
    stale: AtomicU64,
    slowest_ms: AtomicU64,
}

impl Tally {
    fn fail(&self, what: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.push(what);
        }
    }
    fn took(&self, started: Instant) {
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slowest_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// Writes `client`'s key with increasing values and reads each back with its
/// `min_seq`, until `stop`.
async fn client(o: Arc<Orchestrator>, client: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let name = format!("client-{client}");
    let (status, body) = o
        .write(json!({"table": "users", "insert": {"username": name, "password": "0"}}))
        .await;
    assert_eq!(status, 200, "seed {name}: {body}");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let (status, body) = o
            .write(json!({"table": "users", "update": {"set": {"password": n.to_string()}, "where": {"username": name}}}))
            .await;
        tally.took(started);
        tally.writes.fetch_add(1, Ordering::Relaxed);
        let Some(seq) = body["seq"].as_u64().filter(|_| status == 200) else {
            tally.fail(format!("write {name}={n}: {status} {body}"));
            continue;
        };
        let started = Instant::now();
        let (status, body) = o
            .read(json!({"table": "users", "columns": ["password"], "where": {"username": name}, "min_seq": seq}))
            .await;
        tally.took(started);
        tally.reads.fetch_add(1, Ordering::Relaxed);
        if status != 200 {
            tally.fail(format!("read {name} at {seq}: {status} {body}"));
        } else if body["rows"][0]["password"] != json!(n.to_string()) {
            tally.stale.fetch_add(1, Ordering::Relaxed);
            tally.fail(format!("read {name} at {seq} saw {body}, wrote {n}"));
        }
    }
}

/// Waits until the pool is back to a master and one serving slave, other than `gone`.
async fn healed(o: &Orchestrator, gone: u64) {
    wait_until("the pool heals", Duration::from_secs(30), || async {
        let s = o.status().await;
        let serving = crate::common::slave_pids(&s);
        let master = s["master"].as_u64();
        (master.is_some_and(|m| m != gone) && serving.len() == 1 && !serving.contains(&gone))
            .then_some(())
    })
    .await
    .expect("the pool healed after the fault");
}

#[tokio::test]
async fn clients_see_no_error_through_crashes_kills_and_pauses() {
    let o = Arc::new(Orchestrator::start("failover", Options::default()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(o.clone(), c, stop.clone(), tally.clone())))
        .collect();
    let progressed = |min: u64| {
        let tally = tally.clone();
        async move {
            let target = tally.reads.load(Ordering::Relaxed) + min;
            wait_until("clients make progress", Duration::from_secs(30), || async {
                (tally.reads.load(Ordering::Relaxed) >= target).then_some(())
            })
            .await
            .expect("clients progressed");
        }
    };
    progressed(50).await;

    let master = || async { o.master_pid().await.expect("a master") };
    let m = master().await;
    let (status, body) = o.post_json("/api/v1/crash/master", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    healed(&o, m).await;
    progressed(50).await;

    let m = master().await;
    sigkill(m);
    healed(&o, m).await;
    progressed(50).await;

    // Paused past its session: it must be ended, and its deliveries served by
    // its successor within the request deadline.
    let m = master().await;
    signal(m, libc::SIGSTOP);
    healed(&o, m).await;
    assert!(
        wait_until(
            "the paused master is ended",
            Duration::from_secs(10),
            || async { (!crate::common::alive(m)).then_some(()) }
        )
        .await
        .is_some(),
        "a worker whose registration vanished was left running"
    );
    progressed(50).await;

    let (status, body) = o.post_json("/api/v1/crash/slave", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let slave: u64 = body[0]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("crashed pid");
    healed(&o, slave).await;
    progressed(50).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let failed = tally.failed.lock().map(|f| f.clone()).unwrap_or_default();
    eprintln!(
        "writes {} reads {} failed {} stale {} slowest {} ms",
        tally.writes.load(Ordering::Relaxed),
        tally.reads.load(Ordering::Relaxed),
        failed.len(),
        tally.stale.load(Ordering::Relaxed),
        tally.slowest_ms.load(Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "requests failed: {failed:#?}");
}
