//! Replication under faults: concurrent writers while masters and slaves are
//! crashed (through the API and by SIGKILL); afterwards every acknowledged
//! write is on every live replica exactly once and the replicas are identical.
//! Also: read-your-writes with `min_seq`, and catch-up of a new slave by snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    every_replica_holds_exactly, sigkill, signal, slave_pids, wait_until, Options, Orchestrator,
};

const WRITERS: usize = 4;
const PER_WRITER: usize = 400;

/// Writes one user, retrying (same Idempotency-Key) until acknowledged.
async fn write_acked(o: &Orchestrator, name: &str) -> bool {
    for _ in 0..40 {
        let r = o
            .http
            .post(o.url("/api/v1/db/write"))
            .header("Idempotency-Key", name)
            .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().as_u16() == 409 => panic!("{name} conflicted: applied twice?"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

async fn settled(o: &Orchestrator, slaves: usize) -> Value {
    o.wait_for_workers(slaves).await
}

#[tokio::test]
async fn acknowledged_writes_survive_crashes_exactly_once_on_every_replica() {
    let o = Arc::new(
        Orchestrator::start(
            "faults",
            Options {
                slaves: 2,
                ..Options::default()
            },
        )
        .await,
    );

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let o = o.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{i:04}");
                if write_acked(&o, &name).await {
                    acked.push(name);
                }
            }
            acked
        }));
    }

    // Chaos while the writers run: every kind of death, twice.
    for round in 0..2 {
        let s = settled(&o, 2).await;
        let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
        assert_eq!(status, 200, "round {round}: crash master");
        let s2 = settled(&o, 2).await;
        sigkill(*slave_pids(&s2).first().expect("a slave"));
        let s3 = wait_until("slave replaced", Duration::from_secs(30), || async {
            let now = o.status().await;
            (slave_pids(&now) != slave_pids(&s2) && slave_pids(&now).len() == 2).then_some(now)
        })
        .await
        .expect("slave replaced after SIGKILL");
        let (status, _) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
        assert_eq!(status, 200, "round {round}: crash slave");
        settled(&o, 2).await;
        sigkill(s3["master"].as_u64().expect("master"));
        wait_until(
            "failover after SIGKILL",
            Duration::from_secs(30),
            || async {
                let now = o.status().await;
                (now["master"]
                    .as_u64()
                    .is_some_and(|m| Some(m) != s3["master"].as_u64())
                    && slave_pids(&now).len() == 2)
                    .then_some(())
            },
        )
        .await
        .expect("failover");
        assert_ne!(s["master"], Value::Null);
    }

    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }
    assert_eq!(
        acked.len(),
        WRITERS * PER_WRITER,
        "every write was eventually acknowledged"
    );

    every_replica_holds_exactly(&o, &acked, &BTreeSet::new(), 2).await;
}

#[tokio::test]
async fn min_seq_reads_never_miss_the_write_they_follow() {
    let o = Orchestrator::start(
        "minseq",
        Options {
            slaves: 2,
            ..Options::default()
        },
    )
    .await;
    for i in 0..100 {
        let name = format!("ryw-{i:03}");
        let seq = o.insert_user(&name).await["seq"].as_u64().expect("seq");
        let (status, body) = o
            .read(json!({"table": "users", "where": {"username": name}, "min_seq": seq}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["rows"].as_array().map(Vec::len),
            Some(1),
            "read after write {i}: {body}"
        );
        assert!(body["seq"].as_u64() >= Some(seq));
    }
}

#[tokio::test]
async fn a_replacement_resumes_its_slots_copy_or_joins_from_a_snapshot() {
    let o = Orchestrator::start("snapshot", Options::default()).await;
    let mut last = 0;
    for chunk in 0..20 {
        let futs: Vec<_> = (0..50)
            .map(|i| o.insert_user_owned(format!("s{chunk:02}-{i:02}")))
            .collect();
        for seq in futures_util::future::join_all(futs).await {
            last = last.max(seq);
        }
    }
    let worker_log = |pid: u64| {
        std::fs::read_to_string(o.dir.path().join("logs").join(format!("worker-{pid}.log")))
            .unwrap_or_default()
    };
    let start_of = |s: &Value, pid: u64| {
        s["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["pid"].as_u64() == Some(pid)))
            .map(|w| w["start"].clone())
            .unwrap_or(Value::Null)
    };
    // Caught up: the new slave serves the data as of the last write.
    let serves_all = |new: u64| {
        let o = &o;
        async move {
            let (status, body) = o
                .read(json!({"table": "users", "count": true, "min_seq": last}))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["rows"][0]["count"], 1000);
            assert_eq!(body["worker"].as_u64(), Some(new));
        }
    };

    // A killed slave's replacement takes over its slot and resumes its copy.
    let old = slave_pids(&o.status().await)[0];
    let (status, _) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(status, 200);
    let s = settled(&o, 1).await;
    let new = slave_pids(&s)[0];
    assert_ne!(new, old);
    assert_eq!(start_of(&s, new), "own_file", "{s}");
    assert!(
        worker_log(new).contains("resuming own copy"),
        "the replacement resumed the slot's copy:\n{}",
        worker_log(new)
    );
    serves_all(new).await;

    // A killed master's copy may hold commits that never reached syncQ: the
    // replacement that takes its slot discards it and joins from a snapshot.
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let s = wait_until(
        "the old master's slot refilled",
        Duration::from_secs(30),
        || async {
            let s = settled(&o, 1).await;
            let slave = *slave_pids(&s).first()?;
            (slave != new).then_some(s)
        },
    )
    .await
    .expect("a replacement slave");
    let joined = slave_pids(&s)[0];
    assert_eq!(start_of(&s, joined), "snapshot", "{s}");
    assert!(
        worker_log(joined).contains("loaded snapshot"),
        "the replacement used a snapshot:\n{}",
        worker_log(joined)
    );
    serves_all(joined).await;
}

/// `DBAAS_CATCH_UP=replay`: a joiner reads `syncQ` from the start even when a
/// caught-up peer could serve it a snapshot.
#[tokio::test]
async fn with_replay_a_joiner_reads_the_log_though_a_peer_could_serve_a_snapshot() {
    let o = Orchestrator::start(
        "replay",
        Options {
            extra_env: vec![("DBAAS_CATCH_UP".into(), "replay".into())],
            ..Options::default()
        },
    )
    .await;
    let seqs: Vec<u64> =
        futures_util::future::join_all((0..100).map(|i| o.insert_user_owned(format!("r{i:03}"))))
            .await;
    let last = seqs.into_iter().max().unwrap_or(0);
    // The master's slot cannot be resumed, so its replacement must catch up
    // from elsewhere, while the promoted slave could serve a snapshot.
    let old = slave_pids(&o.status().await);
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let s = wait_until("a new slave", Duration::from_secs(30), || async {
        let s = settled(&o, 1).await;
        let slave = *slave_pids(&s).first()?;
        (!old.contains(&slave)).then_some(s)
    })
    .await
    .expect("a replacement slave");
    let joined = slave_pids(&s)[0];
    let start = s["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["pid"].as_u64() == Some(joined)))
        .map(|w| w["start"].clone());
    assert_eq!(start, Some(json!("log")), "{s}");
    let log = std::fs::read_to_string(
        o.dir
            .path()
            .join("logs")
            .join(format!("worker-{joined}.log")),
    )
    .unwrap_or_default();
    assert!(!log.contains("loaded snapshot"), "{log}");
    let (status, body) = o
        .read(json!({"table": "users", "count": true, "min_seq": last}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["count"], 100);
}

#[tokio::test]
async fn a_master_paused_past_its_session_acknowledges_nothing_and_loses_nothing() {
    let o = Arc::new(
        Orchestrator::start(
            "paused",
            Options {
                request_timeout_ms: 20_000,
                ..Options::default()
            },
        )
        .await,
    );
    let s = o.status().await;
    let old = s["master"].as_u64().expect("master");
    let successor = slave_pids(&s)[0];
    signal(old, libc::SIGSTOP);

    // A write sent while the master is frozen: its delivery sits with the old master.
    let writer = {
        let o = o.clone();
        tokio::spawn(async move {
            o.write(json!({"table": "users", "insert": {"username": "written-while-paused", "password": "p"}}))
                .await
        })
    };
    // Its session expires and the slave takes over.
    wait_until("the slave takes over", Duration::from_secs(30), || async {
        (o.master_pid().await == Some(successor)).then_some(())
    })
    .await
    .expect("failover from a paused master");

    // Resumed, the old master must stop instead of acknowledging anything.
    signal(old, libc::SIGCONT);
    wait_until("the old master exits", Duration::from_secs(20), || async {
        (!crate::common::alive(old)).then_some(())
    })
    .await
    .expect("the replaced master stopped");
    let (status, body) = writer.await.expect("writer task");
    assert_eq!(
        status, 200,
        "the write was applied by the new master: {body}"
    );
    let seq = body["seq"].as_u64().expect("seq");

    // Applied exactly once, on the master and on a slave.
    let (status, strong) = o
        .read(json!({"table": "users", "where": {"username": "written-while-paused"}, "consistency": "strong"}))
        .await;
    assert_eq!(status, 200, "{strong}");
    assert_eq!(strong["rows"].as_array().map(Vec::len), Some(1), "{strong}");
    o.wait_for_workers(1).await;
    let (status, eventual) = o
        .read(json!({"table": "users", "where": {"username": "written-while-paused"}, "min_seq": seq}))
        .await;
    assert_eq!(status, 200, "{eventual}");
    assert_eq!(
        eventual["rows"].as_array().map(Vec::len),
        Some(1),
        "{eventual}"
    );
}

#[tokio::test]
async fn a_master_that_lost_its_znode_stops_before_acknowledging() {
    let o = Arc::new(
        Orchestrator::start(
            "fenced",
            Options {
                request_timeout_ms: 20_000,
                ..Options::default()
            },
        )
        .await,
    );
    let s = o.status().await;
    let old = s["master"].as_u64().expect("master");
    let successor = slave_pids(&s)[0];

    // In one atomic step, someone else holds the master znode: what an old
    // master would find after an election it missed while paused.
    let zk = zookeeper_client::Client::connect(&o.ns.zk_hosts)
        .await
        .expect("zk");
    let fake = serde_json::to_vec(&json!({"pid": 1, "epoch": 999})).expect("json");
    let mut multi = zk.new_multi_writer();
    multi.add_delete("/dbaas/master", None).expect("delete op");
    multi
        .add_create(
            "/dbaas/master",
            &fake,
            &zookeeper_client::CreateMode::Ephemeral
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .expect("create op");
    multi.commit().await.expect("take the master znode");

    let writer = {
        let o = o.clone();
        tokio::spawn(async move {
            o.write(
                json!({"table": "users", "insert": {"username": "fenced-write", "password": "p"}}),
            )
            .await
        })
    };
    // The old master commits locally, sees it is no longer master, and stops
    // without answering or acking.
    wait_until(
        "the fenced master exits",
        Duration::from_secs(20),
        || async { (!crate::common::alive(old)).then_some(()) },
    )
    .await
    .expect("the fenced master stopped");
    assert!(
        !writer.is_finished(),
        "the fenced master must not have answered the write"
    );

    // The impostor leaves; the real successor is elected and applies the write once.
    zk.delete("/dbaas/master", None)
        .await
        .expect("release the master znode");
    let (status, body) = writer.await.expect("writer task");
    assert_eq!(status, 200, "{body}");
    // The orchestrator's view follows ZooKeeper's watches: it may trail the
    // answer by a moment.
    let master = wait_until(
        "the orchestrator sees the successor",
        Duration::from_secs(10),
        || async { (o.master_pid().await == Some(successor)).then_some(()) },
    )
    .await;
    assert!(
        master.is_some(),
        "the successor became master: {}",
        o.status().await
    );
    let (status, rows) = o
        .read(json!({"table": "users", "where": {"username": "fenced-write"}, "consistency": "strong"}))
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["rows"].as_array().map(Vec::len), Some(1), "{rows}");
}
