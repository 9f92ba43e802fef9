//! `BENCH_PARTS=scale scripts/bench`: how the system scales with the data.
//!
//! For each size (1 M, 5 M and 10 M `users` rows; `BENCH_SCALE_ROWS=1000000`
//! narrows it), on brokers of its own (`bench/harness/brokers.rs`)
//! and a master with two slaves:
//!
//! - **load**: rows/s, in writes of 10 000 rows each (two writers);
//! - **replacement**: `POST crash/master`, until the old master's slot is
//!   refilled by a new slave serving at lag 0. A crashed *slave*'s
//!   replacement resumes its slot's own file (no copy at all), so it is the
//!   master's crash that needs a snapshot: its copy may hold unconfirmed
//!   commits and is discarded, and the worker started in its slot joins from
//!   a snapshot served by the remaining slave. The time includes the election
//!   and the new worker's start; the snapshot's own share is in the logs;
//! - next to it, in the same run, on the serving slave's file: an SQLite online
//!   backup (the same code the worker runs, its own connection, 4 MiB steps)
//!   and a `cp`, with the page cache warm and, where the bench may drop the
//!   caches (root), cold;
//! - worker RSS (VmHWM, the peak, and VmRSS from /proc/<pid>/status) of the
//!   joiner, of the source and of the new master after the replacement;
//! - disk in use of the data directory, and the files in it;
//! - whole-system restart: the orchestrator stopped (its workers with it) and
//!   started again on the same data, until a read answers with every row;
//! - at the largest size, the snapshot transfer alone (through the broker,
//!   digest and quick_check included) at several chunk sizes.
//!
//! Writes bench/results/scale.md and scale.json (scale-smoke.* with
//! `BENCH_SMOKE=1`, 20 000 rows; scale-partial.* when `BENCH_SCALE_ROWS` names
//! other sizes).

mod harness;
mod shared;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbaas::db::Store;
use dbaas::worker::snapshot::frame::{Frame, Offer};
use dbaas::worker::snapshot::serve::{send_file, Reply};
use dbaas::worker::snapshot::{fetch_once, Settings};
use futures_util::StreamExt;
use harness::brokers::PrivateBrokers;
use harness::{slave_pids, wait_until, Options, Orchestrator};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};

const BATCH: usize = 10_000;
const WRITERS: usize = 2;

fn sizes() -> Vec<u64> {
    if shared::smoke() {
        return vec![20_000];
    }
    match shared::narrowed("BENCH_SCALE_ROWS") {
        Some(l) => l.iter().filter_map(|s| s.parse().ok()).collect(),
        None => vec![1_000_000, 5_000_000, 10_000_000],
    }
}

/// (VmHWM, VmRSS) in MiB.
fn rss(pid: u64) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some((kb("VmHWM:")? / 1024.0, kb("VmRSS:")? / 1024.0))
}

/// Bytes on disk under `dir` and the names of its files.
fn disk(dir: &Path) -> (u64, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                bytes += m.blocks() * 512;
                if m.len() > 0 {
                    names.push(format!(
                        "{} ({:.0} MB)",
                        e.file_name().to_string_lossy(),
                        m.len() as f64 / 1e6
                    ));
                }
            }
        }
    }
    names.sort();
    (bytes, names)
}

async fn load(o: &Orchestrator, rows: u64) -> (f64, u64) {
    let writes = (rows as usize).div_ceil(BATCH);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let http = o.http.clone();
        let url = o.url("/api/v1/db/write");
        tasks.push(tokio::spawn(async move {
            let mut last = 0u64;
            for b in (w..writes).step_by(WRITERS) {
                let batch: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let name = format!("u{b:05}-{i:05}");
                        json!({"username": name, "password": "pw-0123456789"})
                    })
                    .collect();
                let body = json!({"table": "users", "insert": batch});
                let mut tries = 0;
                loop {
                    tries += 1;
                    let r = http
                        .post(&url)
                        .header("Idempotency-Key", format!("load-{b}"))
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            last = last.max(v["seq"].as_u64().unwrap_or(0));
                            break;
                        }
                        other => {
                            assert!(tries < 20, "write {b} kept failing: {other:?}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            last
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.expect("writer"));
    }
    let took = started.elapsed().as_secs_f64();
    ((writes * BATCH) as f64 / took, last)
}

fn worker(s: &Value, pid: u64) -> Option<&Value> {
    s["workers"]
        .as_array()?
        .iter()
        .find(|w| w["pid"].as_u64() == Some(pid))
}

/// Every worker at `seq`.
async fn all_at(o: &Orchestrator, seq: u64) -> Value {
    wait_until(
        "every worker caught up",
        Duration::from_secs(1800),
        || async {
            let s = o.status().await;
            let ws = s["workers"].as_array()?;
            (ws.len() == 3 && ws.iter().all(|w| w["seq"].as_u64() >= Some(seq)))
                .then_some(s.clone())
        },
    )
    .await
    .expect("workers caught up")
}

fn log_of(o: &Orchestrator, pid: u64) -> String {
    std::fs::read_to_string(o.dir.path().join("logs").join(format!("worker-{pid}.log")))
        .unwrap_or_default()
}

/// The last line of `log` containing `what`.
fn line_with<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines().rev().find(|l| l.contains(what)).unwrap_or("")
}

/// The value after `key=` in `line`.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .to_string()
}

struct Sized {
    rows: u64,
    file_mb: f64,
    load_rows_s: f64,
    replaced_s: f64,
    backup_s: f64,
    cp_s: f64,
    cp_cold_s: Option<f64>,
    snapshot_line: String,
    served_line: String,
    joiner_rss: (f64, f64),
    source_rss: (f64, f64),
    master_rss: (f64, f64),
    disk_mb: f64,
    files: Vec<String>,
    restart_s: f64,
    chunk_sweep: Vec<(usize, f64)>,
}

async fn one_size(rows: u64, sweep: bool) -> Sized {
    let brokers = PrivateBrokers::start();
    let data = tempfile::tempdir_in(std::env::var("BENCH_SCALE_DIR").unwrap_or("/tmp".into()))
        .expect("data dir");
    let opts = |ns| Options {
        slaves: 2,
        namespace: Some(ns),
        data_dir: Some(data.path().to_path_buf()),
        request_timeout_ms: 30_000,
        extra_env: vec![("RUST_LOG".into(), "info,lapin=warn".into())],
        ..Options::default()
    };
    let mut o = Orchestrator::start("scale", opts(brokers.namespace())).await;
    let (load_rows_s, last) = load(&o, rows).await;
    let s = all_at(&o, last).await;
    eprintln!("{rows} rows loaded at {load_rows_s:.0} rows/s");

    // The references, on the file of the slave that will serve.
    let source = slave_pids(&s)[0];
    let slot = worker(&s, source)
        .and_then(|w| w["slot"].as_u64())
        .unwrap_or(0);
    let file = data.path().join(format!("slot-{slot}.sqlite"));
    // Outside the data directory (same disk), kept for the transfer sweep.
    let refs = tempfile::tempdir_in(data.path().parent().unwrap_or(Path::new("/tmp")))
        .expect("reference dir");
    let copy = refs.path().join("backup.sqlite");
    let t = Instant::now();
    let f = file.clone();
    let c = copy.clone();
    tokio::task::spawn_blocking(move || Store::snapshot_file(&f, &c, 1024, || {}))
        .await
        .expect("joined")
        .expect("backup");
    let backup_s = t.elapsed().as_secs_f64();
    // The database's size: the backup holds what the file and its WAL hold.
    let file_mb = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let cp_to = refs.path().join("cp.sqlite");
    let cp_s = timed_cp(&file, &cp_to);
    let cp_cold_s = drop_caches().then(|| timed_cp(&file, &cp_to));

    // The replacement.
    let before = o.pids().await;
    let t = Instant::now();
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let joined = wait_until("the slot refilled", Duration::from_secs(1800), || async {
        let s = o.status().await;
        let ws = s["workers"].as_array()?;
        let fresh = ws.iter().find(|w| {
            w["role"] == "slave"
                && !before.contains(&w["pid"].as_u64().unwrap_or(0))
                && w["seq"].as_u64() >= Some(last)
        })?;
        fresh["pid"].as_u64()
    })
    .await
    .expect("a new slave at lag 0");
    let replaced_s = t.elapsed().as_secs_f64();
    let joiner_log = log_of(&o, joined);
    let snapshot_line = line_with(&joiner_log, "loaded snapshot").to_string();
    let from = field(&snapshot_line, "source").parse().unwrap_or(0u64);
    let served_line = line_with(&log_of(&o, from), "served a snapshot").to_string();
    let joiner_rss = rss(joined).unwrap_or_default();
    let source_rss = rss(from).unwrap_or_default();
    let master_rss = o.status().await["master"]
        .as_u64()
        .and_then(rss)
        .unwrap_or_default();
    let (disk_bytes, files) = disk(data.path());
    eprintln!("replaced in {replaced_s:.2} s (backup {backup_s:.2} s, cp {cp_s:.2} s)");

    // Whole-system restart on the same data.
    let ns = o.ns.clone();
    o.stop();
    drop(o);
    let t = Instant::now();
    let o = Orchestrator::spawn("scale", &opts(ns)).await;
    let answered = wait_until("first read", Duration::from_secs(1800), || async {
        let (status, body) = o.read(json!({"table": "users", "count": true})).await;
        (status == 200 && body["rows"][0]["count"].as_u64() >= Some(rows)).then_some(())
    })
    .await;
    assert!(answered.is_some(), "no read answered after the restart");
    let restart_s = t.elapsed().as_secs_f64();
    let mut o = o;

    // The transfer alone at several chunk sizes, on the same file, once the
    // workers are gone (the bench is the only consumer of snapshotQ).
    let mut chunk_sweep = Vec::new();
    if sweep {
        o.stop();
        // Two rounds, sizes alternating, the faster of each kept.
        let chunks = [256 << 10, 1 << 20, 4 << 20, 8 << 20];
        let mut best = [f64::MAX; 4];
        for _ in 0..2 {
            for (i, chunk) in chunks.iter().enumerate() {
                best[i] = best[i].min(transfer(&brokers, &copy, *chunk).await);
            }
        }
        chunk_sweep = chunks.into_iter().zip(best).collect();
    }
    drop(o);
    Sized {
        rows,
        file_mb,
        load_rows_s,
        replaced_s,
        backup_s,
        cp_s,
        cp_cold_s,
        snapshot_line,
        served_line,
        joiner_rss,
        source_rss,
        master_rss,
        disk_mb: disk_bytes as f64 / 1e6,
        files,
        restart_s,
        chunk_sweep,
    }
}

/// Seconds to send `file` through the broker in `chunk`-byte chunks and
/// receive, verify and `quick_check` it (the backup itself not included).
async fn transfer(brokers: &PrivateBrokers, file: &Path, chunk: usize) -> f64 {
    let amqp = brokers.namespace().amqp_url;
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = dbaas::broker::confirmed_channel(&conn)
        .await
        .expect("a channel with confirms");
    let mut requests = channel
        .basic_consume(
            "snapshotQ".into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let bytes = std::fs::metadata(file).expect("size").len();
    let source = file.to_path_buf();
    let server = tokio::spawn(async move {
        let d = requests.next().await.expect("request").expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let to = d
            .properties
            .reply_to()
            .as_ref()
            .expect("reply_to")
            .to_string();
        let id = d
            .properties
            .correlation_id()
            .as_ref()
            .expect("id")
            .to_string();
        let mut reply = Reply::new(&channel, to, id);
        reply
            .send(&Frame::Accepted { source: 0 })
            .await
            .expect("send");
        let offer = Offer {
            seq: 1,
            resume_offset: 1,
            bytes,
        };
        send_file(&mut reply, &source, offer, None, chunk)
            .await
            .expect("sent");
    });
    let dir = tempfile::tempdir_in(file.parent().unwrap_or(Path::new("/tmp"))).expect("dir");
    let dest: PathBuf = dir.path().join("received.sqlite");
    let settings = Settings {
        chunk_bytes: chunk,
        idle: Duration::from_secs(60),
        secret: None,
    };
    let t = Instant::now();
    let got = fetch_once(
        &conn,
        &dest,
        &dir.path().join("incoming"),
        Duration::from_secs(10),
        &settings,
    )
    .await;
    let took = t.elapsed().as_secs_f64();
    assert!(got.is_ok(), "transfer at {chunk}: {:?}", got.err());
    server.await.expect("server");
    let _ = conn.close(200, "done".into()).await;
    took
}

/// Seconds to `cp` `from` to `to` (the copy is removed afterwards).
fn timed_cp(from: &Path, to: &Path) -> f64 {
    let t = Instant::now();
    let status = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
    let took = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(to);
    took
}

/// Empties the page cache (needs root); whether it could.
fn drop_caches() -> bool {
    let synced = std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn mib(v: (f64, f64)) -> String {
    format!("{:.0} / {:.0}", v.0, v.1)
}

#[tokio::main]
async fn main() {
    if !shared::under_cargo_bench("scale") {
        return;
    }
    let started = Instant::now();
    let mut results = Vec::new();
    let sizes = sizes();
    for (i, rows) in sizes.iter().enumerate() {
        results.push(one_size(*rows, i + 1 == sizes.len()).await);
        // Written after each size: a long run that is cut short keeps its figures.
        report(&results, started);
    }
}

fn report(results: &[Sized], started: Instant) {
    let mut md = format!(
        "# Scale: snapshots, load, restart by data size\n\n{} Release build, RabbitMQ 3.10 and \
         ZooKeeper 3.8 of the bench's own, a master and two slaves, the data directory on the \
         machine's one disk. Run of {:.0} s on {}.\n\n",
        shared::machine(),
        started.elapsed().as_secs_f64(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    md.push_str(
        "| rows | SQLite file | load | slot refilled (crash/master → new slave at lag 0) | \
         online backup of the same file | `cp` of it (warm / cold) | joiner RSS peak / now | \
         source RSS peak / now | new master RSS peak / now | data dir on disk | \
         restart → first read |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows_json = Vec::new();
    for r in results {
        md.push_str(&format!(
            "| {} | {:.0} MB | {:.0} rows/s | {:.2} s | {:.2} s | {:.2} / {} s | {} MiB | {} MiB \
             | {} MiB | {:.0} MB | {:.2} s |\n",
            r.rows,
            r.file_mb,
            r.load_rows_s,
            r.replaced_s,
            r.backup_s,
            r.cp_s,
            r.cp_cold_s.map_or("–".to_string(), |s| format!("{s:.2}")),
            mib(r.joiner_rss),
            mib(r.source_rss),
            mib(r.master_rss),
            r.disk_mb,
            r.restart_s
        ));
        rows_json.push(json!({
            "rows": r.rows, "file_mb": r.file_mb, "load_rows_per_s": r.load_rows_s,
            "replaced_s": r.replaced_s, "online_backup_s": r.backup_s, "cp_s": r.cp_s, "cp_cold_s": r.cp_cold_s,
            "joiner_vmhwm_mib": r.joiner_rss.0, "joiner_vmrss_mib": r.joiner_rss.1,
            "source_vmhwm_mib": r.source_rss.0, "source_vmrss_mib": r.source_rss.1,
            "master_vmhwm_mib": r.master_rss.0, "master_vmrss_mib": r.master_rss.1,
            "data_dir_mb": r.disk_mb, "files": r.files, "restart_s": r.restart_s,
            "joiner_log": r.snapshot_line, "source_log": r.served_line,
            "chunk_sweep_s": r.chunk_sweep,
        }));
    }
    md.push_str(
        "\nPer size, the snapshot as the workers logged it, and the data directory after the \
         replacement:\n\n",
    );
    for r in results {
        md.push_str(&format!(
            "- {} rows: source `{}`; joiner `{}`; files: {}\n",
            r.rows,
            r.served_line
                .split("served a snapshot")
                .nth(1)
                .unwrap_or("")
                .trim(),
            r.snapshot_line
                .split("loaded snapshot")
                .nth(1)
                .unwrap_or("")
                .trim(),
            r.files.join(", ")
        ));
    }
    if let Some(r) = results.iter().find(|r| !r.chunk_sweep.is_empty()) {
        md.push_str(&format!(
            "\nThe transfer alone (the {} MB file of {} rows through the broker, digest and \
             `quick_check` on arrival, no backup):\n\n| chunk | seconds | MB/s |\n|---|---|---|\n",
            r.file_mb.round(),
            r.rows
        ));
        for (chunk, s) in &r.chunk_sweep {
            md.push_str(&format!(
                "| {} KiB | {:.2} | {:.0} |\n",
                chunk / 1024,
                s,
                r.file_mb / s
            ));
        }
    }
    let full = shared::narrowed("BENCH_SCALE_ROWS").is_none_or(|l| {
        l.len() == 3
            && ["1000000", "5000000", "10000000"]
                .iter()
                .all(|s| l.iter().any(|x| x == s))
    });
    let name = if shared::smoke() {
        "scale-smoke"
    } else if full {
        "scale"
    } else {
        "scale-partial"
    };
    shared::write_results(name, &md, &json!({"sizes": rows_json}));
}
