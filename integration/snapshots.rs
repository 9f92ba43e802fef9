//! Snapshots of any size, authentic, from a slave: a joiner's snapshot comes in
//! many chunks (a small chunk size stands in for data larger than RabbitMQ's
//! message limit), from a slave while the master has one, checked by digest,
//! MAC and `quick_check`; a forged, an interrupted and a corrupted transfer are
//! each rejected and the joiner still catches up from a genuine source.

use std::path::Path;
use std::time::Duration;

use dbaas::db::Store;
use dbaas::worker::snapshot::frame::{Frame, Offer, Outgoing};
use dbaas::worker::snapshot::serve::{send_file, Reply};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};

use crate::common::{slave_pids, wait_until, Options, Orchestrator};

const SECRET: &str = "integration-secret";

fn env(chunk: usize) -> Vec<(String, String)> {
    vec![
        ("DBAAS_SNAPSHOT_SECRET".into(), SECRET.into()),
        ("DBAAS_SNAPSHOT_CHUNK_BYTES".into(), chunk.to_string()),
        ("DBAAS_SNAPSHOT_IDLE_MS".into(), "1500".into()),
    ]
}

fn worker_log(o: &Orchestrator, pid: u64) -> String {
    std::fs::read_to_string(o.dir.path().join("logs").join(format!("worker-{pid}.log")))
        .unwrap_or_default()
}

/// The number after `key=` on the first line containing `what`.
fn field(log: &str, what: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

async fn load(o: &Orchestrator, batches: usize) -> u64 {
    let mut seq = 0;
    for b in 0..batches {
        let rows: Vec<Value> = (0..500)
            .map(|i| json!({"username": format!("b{b:02}-{i:04}"), "password": "x".repeat(64)}))
            .collect();
        let (status, body) = o.write(json!({"table": "users", "insert": rows})).await;
        assert_eq!(status, 200, "{body}");
        seq = body["seq"].as_u64().unwrap_or(seq);
    }
    seq
}

/// The old master's slot refilled: a new slave that started from a snapshot.
async fn refilled(o: &Orchestrator, slaves: usize, before: &[u64]) -> (Value, u64) {
    let s = wait_until("a replacement slave", Duration::from_secs(90), || async {
        let s = o.status().await;
        let workers = s["workers"].as_array()?;
        let fresh = workers
            .iter()
            .find(|w| w["role"] == "slave" && !before.contains(&w["pid"].as_u64().unwrap_or(0)))?;
        let pid = fresh["pid"].as_u64()?;
        (slave_pids(&s).len() == slaves && s["master"].is_u64()).then_some((s.clone(), pid))
    })
    .await;
    s.expect("the old master's slot was refilled")
}

/// `worker` answers reads (round-robin among the slaves: asked until it does)
/// with all `rows` as of `seq`.
async fn serves_count(o: &Orchestrator, seq: u64, rows: u64, worker: u64) {
    for _ in 0..20 {
        let (status, body) = o
            .read(json!({"table": "users", "count": true, "min_seq": seq}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0]["count"], rows);
        if body["worker"].as_u64() == Some(worker) {
            return;
        }
    }
    panic!("worker {worker} never answered a read");
}

/// No snapshot left in transit, one file per slot.
fn disk_is_clean(data: &Path, slots: usize) {
    let names: Vec<String> = std::fs::read_dir(data)
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("snapshot-")),
        "a snapshot file stayed behind: {names:?}"
    );
    let copies = names.iter().filter(|n| n.ends_with(".sqlite")).count();
    assert_eq!(copies, slots, "{names:?}");
}

#[tokio::test]
async fn a_snapshot_larger_than_a_message_comes_in_chunks_from_a_slave_not_the_master() {
    let o = Orchestrator::start(
        "chunks",
        Options {
            slaves: 2,
            extra_env: env(16 * 1024),
            ..Options::default()
        },
    )
    .await;
    let seq = load(&o, 6).await;
    let before: Vec<u64> = o.pids().await;
    // Snapshots each worker served so far (at start, to the workers after it).
    let served = |pid: u64| worker_log(&o, pid).matches("served a snapshot").count();
    let served_before: Vec<usize> = before.iter().map(|p| served(*p)).collect();
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let (s, joined) = refilled(&o, 2, &before).await;
    let log = worker_log(&o, joined);
    let chunks = field(&log, "loaded snapshot", "chunks").expect("loaded a snapshot");
    let bytes = field(&log, "loaded snapshot", "bytes").expect("its size");
    assert!(
        chunks > 10 && bytes > 10 * 16 * 1024,
        "{chunks} chunks, {bytes} bytes"
    );
    let source = field(&log, "loaded snapshot", "source").expect("its source");
    let master = s["master"].as_u64().expect("a master");
    assert_ne!(source, master, "the master served while a slave could");
    assert!(slave_pids(&s).contains(&source), "served by a slave: {s}");
    let served_since = |pid: u64| {
        let i = before
            .iter()
            .position(|p| *p == pid)
            .expect("a worker from before");
        served(pid) - served_before[i]
    };
    assert_eq!(served_since(master), 0, "the new master served a snapshot");
    assert_eq!(served_since(source), 1);
    serves_count(&o, seq, 3000, joined).await;
    disk_is_clean(&o.data_dir(), 3);
}

/// A consumer of `snapshotQ` ahead of every worker (higher priority): it
/// answers the joiner's requests as an attacker or a broken source would.
struct Impostor {
    channel: lapin::Channel,
    requests: lapin::Consumer,
}

impl Impostor {
    async fn start(amqp: &str) -> (lapin::Connection, Impostor) {
        let conn = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = dbaas::broker::confirmed_channel(&conn)
            .await
            .expect("a channel with confirms");
        let mut args = FieldTable::default();
        args.insert("x-priority".into(), AMQPValue::LongInt(100));
        let requests = channel
            .basic_consume(
                "snapshotQ".into(),
                "impostor".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .expect("consume");
        (conn, Impostor { channel, requests })
    }

    /// The next request: (reply queue, correlation id).
    async fn request(&mut self) -> (String, String) {
        let d = tokio::time::timeout(Duration::from_secs(60), self.requests.next())
            .await
            .expect("a snapshot request")
            .expect("consumer open")
            .expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        (
            d.properties
                .reply_to()
                .as_ref()
                .expect("reply_to")
                .to_string(),
            d.properties
                .correlation_id()
                .as_ref()
                .expect("id")
                .to_string(),
        )
    }
}

/// A well-formed SQLite copy holding a user the system never had.
fn forged_file(dir: &Path) -> (std::path::PathBuf, u64) {
    let db = dir.join("forged.sqlite");
    let mut s = Store::open(&db).expect("store");
    let w: dbaas::db::WriteRequest = dbaas::db::request::parse(
        br#"{"table": "users", "insert": {"username": "forged", "password": "p"}}"#,
    )
    .expect("write");
    for i in 0..5 {
        s.commit(&format!("f{i}"), 1, &w).ok();
    }
    let out = dir.join("forged.snapshot");
    Store::snapshot_file(&db, &out, 64, || {}).expect("snapshot");
    let bytes = std::fs::metadata(&out).expect("size").len();
    (out, bytes)
}

#[tokio::test]
async fn forged_interrupted_and_corrupted_snapshots_are_rejected_and_the_joiner_catches_up() {
    let o = Orchestrator::start(
        "forged",
        Options {
            slaves: 1,
            extra_env: env(4096),
            ..Options::default()
        },
    )
    .await;
    let seq = load(&o, 2).await;
    let (_conn, mut impostor) = Impostor::start(&o.ns.amqp_url).await;
    let channel = impostor.channel.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let (forged, bytes) = forged_file(dir.path());
    let offer = Offer {
        seq: seq + 1000,
        resume_offset: 0,
        bytes,
    };
    let before: Vec<u64> = o.pids().await;
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);

    // 1. A forged file, signed without the secret.
    let (to, id) = impostor.request().await;
    let mut reply = Reply::new(&channel, to, id);
    reply
        .send(&Frame::Accepted { source: 1 })
        .await
        .expect("send");
    send_file(&mut reply, &forged, offer, Some(b"a guess"), 4096)
        .await
        .expect("sent");

    // 2. A transfer that stops midway.
    let (to, id) = impostor.request().await;
    let mut stalled = Reply::new(&channel, to, id);
    stalled
        .send(&Frame::Accepted { source: 2 })
        .await
        .expect("send");
    stalled.send(&Frame::Begin(offer)).await.expect("send");
    let data = std::fs::read(&forged).expect("read");
    stalled
        .send(&Frame::Chunk {
            index: 0,
            data: data[..1024].to_vec(),
        })
        .await
        .expect("send");
    stalled.flush().await.expect("confirmed");

    // 3. A chunk corrupted on the way (the MAC is genuine: the digest catches it).
    let (to, id) = impostor.request().await;
    // The joiner gave up the stalled transfer: its reply queue is gone, and a
    // source still sending there hears of it.
    let more = Frame::Chunk {
        index: 1,
        data: vec![0; 16],
    };
    let gone = match stalled.send(&more).await {
        Ok(()) => stalled.flush().await,
        Err(e) => Err(e),
    };
    assert!(
        gone.as_ref()
            .is_err_and(|e| e.to_string().contains("reply queue is gone")),
        "{gone:?}"
    );
    let mut reply = Reply::new(&channel, to, id.clone());
    reply
        .send(&Frame::Accepted { source: 3 })
        .await
        .expect("send");
    reply.send(&Frame::Begin(offer)).await.expect("send");
    let mut out = Outgoing::default();
    for (i, piece) in data.chunks(4096).enumerate() {
        let mut frame = out.chunk(piece.to_vec());
        if let (1, Frame::Chunk { data, .. }) = (i, &mut frame) {
            data[100] ^= 0xff;
        }
        reply.send(&frame).await.expect("send");
    }
    reply
        .send(&out.end(Some(SECRET.as_bytes()), &id, &offer))
        .await
        .expect("send");
    reply.flush().await.expect("confirmed");

    // Then the impostor leaves: the master, alone, serves the genuine snapshot.
    impostor
        .channel
        .basic_cancel("impostor".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let (s, joined) = refilled(&o, 1, &before).await;
    let log = worker_log(&o, joined);
    for why in ["MAC mismatch", "nothing arrived for", "digest mismatch"] {
        assert!(log.contains(why), "{why} not in the joiner's log:\n{log}");
    }
    assert!(log.contains("loaded snapshot"), "{log}");
    let master = s["master"].as_u64().expect("master");
    assert_eq!(field(&log, "loaded snapshot", "source"), Some(master));
    serves_count(&o, seq, 1000, joined).await;
    let (status, body) = o
        .read(json!({"table": "users", "count": true, "where": {"username": "forged"}, "min_seq": seq}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"][0]["count"], 0,
        "the forged data was never used"
    );
    disk_is_clean(&o.data_dir(), 2);
}
