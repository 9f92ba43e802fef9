//! Autoscaling with a short interval: 45 reads in one interval give 3 slaves,
//! a quiet interval brings the pool back to 1; no request fails meanwhile and
//! slaves stopped on purpose are not replaced.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{slave_pids, wait_until, Options, Orchestrator};

const INTERVAL_SECS: u64 = 4;

async fn read_ok(o: &Orchestrator) {
    let (status, body) = o.read(json!({"table": "users", "count": true})).await;
    assert_eq!(status, 200, "a read failed while scaling: {body}");
}

#[tokio::test]
async fn the_slave_pool_follows_the_read_rate() {
    let o = Orchestrator::start(
        "scaling",
        Options {
            scale_interval_secs: INTERVAL_SECS,
            ..Options::default()
        },
    )
    .await;
    let (_, before) = o.get_json("/api/v1/scaler").await;
    assert_eq!(before["timer_started"], false);
    // Writes, listings, status and crash calls are not counted.
    o.insert_user("w").await;
    o.get_json("/api/v1/worker/list").await;
    let (status, _) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(status, 200);
    o.wait_for_workers(1).await;
    let (_, scaler) = o.get_json("/api/v1/scaler").await;
    assert_eq!(
        (scaler["reads"].as_u64(), scaler["timer_started"].as_bool()),
        (Some(0), Some(false))
    );

    for _ in 0..45 {
        read_ok(&o).await;
    }
    let (_, counted) = o.get_json("/api/v1/scaler").await;
    assert_eq!(counted["timer_started"], true);

    // Scale out to 3 slaves (4 pids), reading (fewer than 20) all along.
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let (o_ref, reads_ref) = (&o, &reads);
    let grown = wait_until("3 slaves", Duration::from_secs(30), || async move {
        if reads_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 15 {
            read_ok(o_ref).await;
        }
        let s = o_ref.status().await;
        (slave_pids(&s).len() == 3).then_some(s)
    })
    .await
    .expect("scaled out to 3 slaves");
    assert_eq!(o.pids().await.len(), 4, "{grown}");
    let decisions = o.get_json("/api/v1/scaler").await.1["decisions"].clone();
    // The first interval saw the 45 reads (and maybe some of the 15 after them).
    let first = decisions[0]["reads"].as_u64().unwrap_or(0);
    assert!((45..=60).contains(&first), "{decisions}");
    assert_eq!(decisions[0]["slaves"], 3);

    // The interval with at most 15 reads asks for 1 slave: the two highest go.
    let shrunk = wait_until("back to 1 slave", Duration::from_secs(30), || async {
        let s = o.status().await;
        (slave_pids(&s).len() == 1 && s["workers"].as_array().map(Vec::len) == Some(2)).then_some(s)
    })
    .await
    .expect("scaled in to 1 slave");
    read_ok(&o).await;

    // Stopped on purpose: no replacement follows, for a whole further interval.
    let events = shrunk["supervisor"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let what: Vec<&str> = events.iter().filter_map(|e| e["what"].as_str()).collect();
    let stopped: Vec<&str> = what
        .iter()
        .filter(|w| w.contains("scale in"))
        .filter_map(|w| w.split_whitespace().nth(2))
        .collect();
    assert_eq!(stopped.len(), 2, "{what:?}");
    for pid in stopped {
        assert!(
            !what
                .iter()
                .any(|w| w.starts_with(&format!("worker {pid} died"))),
            "the scale-in stop of {pid} was taken for a crash: {what:?}"
        );
    }
    let started_before = events
        .iter()
        .filter(|e| e["what"].as_str().unwrap_or("").starts_with("started"))
        .count();
    let later = wait_until(
        "next decision",
        Duration::from_secs(3 * INTERVAL_SECS),
        || async {
            let s = o.status().await;
            (s["scaler"]["decisions"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
                >= 3)
                .then_some(s)
        },
    )
    .await
    .expect("another decision");
    let events = later["supervisor"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let started_after = events
        .iter()
        .filter(|e| e["what"].as_str().unwrap_or("").starts_with("started"))
        .count();
    assert_eq!(
        started_before, started_after,
        "no worker started after the scale-in: {events:?}"
    );
    assert_eq!(o.pids().await.len(), 2);
}
