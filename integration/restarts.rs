//! Workers keep their data across restarts: a worker reopens its slot's own
//! SQLite file and reads `syncQ` from that file's offset; a copy that fell
//! behind the log's retention is discarded and replaced from a snapshot. (The
//! whole system restarted on the same data, brokers included, is in
//! `faults.rs`: it restarts brokers.)

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{wait_until, Options, Orchestrator};
use crate::faults::{all_present_once, write_users};

/// Each worker's `start` (where its copy came from) and whether its seq was
/// already past 0 when it registered, sorted.
pub(crate) fn starts_of(status: &Value) -> Vec<(String, bool)> {
    let mut starts: Vec<(String, bool)> = status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["start"].as_str().unwrap_or("?").to_string(),
                        w["seq"].as_u64().unwrap_or(0) > 0,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    starts.sort();
    starts
}

/// Bytes on disk of the `syncQ` stream of `vhost` on the shared test broker
/// (its data sits beside the `rabbitmqctl` wrapper `scripts/test` writes).
fn stream_bytes(vhost: &str) -> u64 {
    let mnesia = crate::common::brokers()
        .rabbitmqctl
        .parent()
        .expect("the broker's run dir")
        .join("rabbitmq/mnesia");
    let prefix = format!("{vhost}_syncQ_");
    let mut found = None;
    for node in std::fs::read_dir(&mnesia).expect("mnesia dir").flatten() {
        for stream in std::fs::read_dir(node.path().join("stream"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if stream.file_name().to_string_lossy().starts_with(&prefix) {
                let bytes = std::fs::read_dir(stream.path())
                    .expect("stream dir")
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum();
                found = Some(bytes);
            }
        }
    }
    found.unwrap_or_else(|| panic!("no syncQ stream of {vhost} under {}", mnesia.display()))
}

/// The `syncQ` of the test's vhost keeps about 64 KiB: a few hundred writes.
fn tiny_retention() -> Vec<(String, String)> {
    vec![
        ("DBAAS_SYNC_MAX_BYTES".into(), (64 * 1024).to_string()),
        ("DBAAS_SYNC_SEGMENT_BYTES".into(), (16 * 1024).to_string()),
    ]
}

/// A copy left behind while the log moved past its retention: the worker that
/// reopens it finds entries missing, discards it, and its replacement joins
/// from a snapshot; every write is on every replica, the log stays bounded.
#[tokio::test]
async fn a_copy_behind_the_logs_retention_is_replaced_from_a_snapshot() {
    let data = tempfile::tempdir().expect("tempdir");
    let opts = |ns| Options {
        slaves: 2,
        namespace: ns,
        data_dir: Some(data.path().to_path_buf()),
        extra_env: tiny_retention(),
        ..Options::default()
    };
    let mut o = Orchestrator::start("retention", opts(None)).await;
    let ns = o.ns.clone();
    let mut names = write_users(&o, "first", 20).await;
    o.stop();
    // One copy (its database and write-ahead log) is kept aside while the
    // others move on.
    let behind = data.path().join("slot-2.sqlite");
    let kept = tempfile::tempdir().expect("tempdir");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        for suffix in ["", "-wal"] {
            let source = format!("{}{suffix}", from.display());
            let target = format!("{}{suffix}", to.display());
            let _ = std::fs::remove_file(&target);
            if std::path::Path::new(&source).exists() {
                std::fs::copy(&source, &target).expect("copy a copy");
            }
        }
        let _ = std::fs::remove_file(format!("{}-shm", to.display()));
    };
    let aside = kept.path().join("slot-2.sqlite");
    copy(&behind, &aside);

    let mut o = Orchestrator::start("retention", opts(Some(ns.clone()))).await;
    names.extend(write_users(&o, "second", 1500).await);
    o.stop();
    // The log stayed bounded: 1 500 entries are several times the 64 KiB kept.
    let log = stream_bytes(&ns.name);
    eprintln!("syncQ on disk after 1 520 writes: {log} bytes");
    assert!(
        log < 160 * 1024,
        "syncQ holds {log} bytes on disk, over its 64 KiB retention plus segments"
    );
    copy(&aside, &behind);

    let o = Orchestrator::spawn("retention", &opts(Some(ns))).await;
    let status = wait_until(
        "a replacement joined from a snapshot",
        Duration::from_secs(90),
        || async {
            let s = o.status().await;
            let starts = starts_of(&s);
            let serving = s["workers"]
                .as_array()
                .map(|ws| ws.iter().filter(|w| w["role"] == "slave").count())
                .unwrap_or(0);
            (serving == 2 && starts.iter().any(|(from, _)| from == "snapshot")).then_some(s)
        },
    )
    .await;
    let Some(status) = status else {
        panic!("no worker joined from a snapshot: {}", o.status().await)
    };
    let log = std::fs::read_dir(o.dir.path().join("logs"))
        .expect("worker logs")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains("own copy cannot follow the log"),
        "the old copy was found behind the log: {status}"
    );
    all_present_once(&o, &names).await;
    // Every slave has every write too (eventual reads at the master's seq,
    // round-robin over the slaves).
    let seq = o.status().await["workers"]
        .as_array()
        .and_then(|ws| ws.iter().filter_map(|w| w["seq"].as_u64()).max())
        .expect("seq");
    for _ in 0..4 {
        let (status, body) = o
            .read(
                json!({"table": "users", "columns": ["username"], "min_seq": seq, "limit": 10000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(rows, names.len(), "worker {}: {rows} rows", body["worker"]);
    }
}

/// The orchestrator killed (SIGKILL) with writes in flight and started again:
/// the new one adopts the running workers (same processes, nothing replaced)
/// and every acknowledged write is there exactly once; the writes whose answer
/// was lost with the old orchestrator are there at most once.
#[tokio::test]
async fn an_orchestrator_killed_mid_writes_is_replaced_and_adopts_the_workers() {
    let data = tempfile::tempdir().expect("tempdir");
    let opts = |ns| Options {
        slaves: 1,
        namespace: ns,
        data_dir: Some(data.path().to_path_buf()),
        ..Options::default()
    };
    let first = std::sync::Arc::new(Orchestrator::start("orch-kill", opts(None)).await);
    let ns = first.ns.clone();
    let mut names = write_users(&first, "before", 20).await;
    let workers = first.pids().await;

    // Writers keep going while the orchestrator is killed under them.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let o = first.clone();
            tokio::spawn(async move {
                let (mut acked, mut unknown) = (Vec::new(), Vec::new());
                for i in 0..1000 {
                    let name = format!("during-{w}-{i}");
                    let sent = o
                        .http
                        .post(o.url("/api/v1/db/write"))
                        .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => acked.push(name),
                        _ => {
                            unknown.push(name);
                            break;
                        }
                    }
                }
                (acked, unknown)
            })
        })
        .collect();
    wait_until("writes are flowing", Duration::from_secs(10), || async {
        let s = first.status().await;
        let seq = s["workers"]
            .as_array()?
            .iter()
            .filter_map(|w| w["seq"].as_u64())
            .max()?;
        (seq > 40).then_some(())
    })
    .await
    .expect("writes flowing");
    crate::common::sigkill(first.pid().expect("a child process"));
    let mut unknown = Vec::new();
    for w in writers {
        let (acked, lost) = w.await.expect("writer");
        names.extend(acked);
        unknown.extend(lost);
    }

    let second = Orchestrator::start("orch-kill", opts(Some(ns))).await;
    assert_eq!(second.pids().await, workers, "the same workers, adopted");
    names.extend(write_users(&second, "after", 20).await);
    all_present_once(&second, &names).await;
    let (status, body) = second
        .read(json!({"table": "users", "columns": ["username"], "consistency": "strong", "limit": 10000}))
        .await;
    assert_eq!(status, 200, "{body}");
    for name in unknown {
        let copies = body["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["username"] == name.as_str())
                    .count()
            })
            .unwrap_or(0);
        assert!(copies <= 1, "{name} applied {copies} times");
    }
}
