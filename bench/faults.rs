//! `BENCH_PARTS=faults scripts/bench`: what clients see during each single fault.
//!
//! Eight clients run through the orchestrator's HTTP API for the whole run, each
//! on its own `users` row: update it, then read it back at `eventual`
//! consistency with `min_seq` = the seq the write returned (read-your-writes).
//! Clients retry at once, without backing off. Faults are injected one at a
//! time; before each the system must be healthy (one master and the desired
//! slaves serving), and after it the bench waits (bounded) until it is healthy
//! again. Per fault, over a window from `PRE` before the fault to `POST` after
//! recovery: requests sent, failed reads and writes (non-2xx or transport
//! error), read-your-writes violations, the longest read and write, the span
//! from the first to the last failure, and the time until the pool is back.
//!
//! Writes bench/results/faults.md and faults.json. `BENCH_FAULTS` narrows the
//! run to some faults (names as in [`Fault::key`]; then faults-partial.*);
//! `BENCH_SMOKE=1` runs `crash-slave` alone with short windows (faults-smoke.*).

mod harness;
mod shared;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{sigkill, signal, slave_pids, wait_until, Options, Orchestrator};
use serde_json::{json, Value};

/// The ZooKeeper session timeout the bench sets (and the default, 2 s): the
/// short pause stays under it, the long one goes well over it.
const SESSION_TIMEOUT_MS: u64 = 2000;
const CLIENTS: usize = 8;
/// How long a client waits for any answer (the server's own timeouts are 5 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on waiting for the pool to be healthy, before and after a fault.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// The scale-down pool's scaler interval: its first decision comes this long
/// after the load starts.
const SCALE_INTERVAL_SECS: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    CrashMaster,
    CrashSlave,
    KillMaster,
    KillSlave,
    /// SIGSTOP of the master, SIGCONT after this many milliseconds.
    PauseMaster(u64),
    ScaleDown,
}

impl Fault {
    /// The name `BENCH_FAULTS` selects it by.
    fn key(self) -> &'static str {
        match self {
            Fault::CrashMaster => "crash-master",
            Fault::CrashSlave => "crash-slave",
            Fault::KillMaster => "kill-master",
            Fault::KillSlave => "kill-slave",
            Fault::PauseMaster(ms) if ms < SESSION_TIMEOUT_MS => "pause-short",
            Fault::PauseMaster(_) => "pause-long",
            Fault::ScaleDown => "scale-down",
        }
    }

    fn label(self) -> String {
        match self {
            Fault::CrashMaster => "`POST crash/master`".into(),
            Fault::CrashSlave => "`POST crash/slave`".into(),
            Fault::KillMaster => "`kill -9` of the master".into(),
            Fault::KillSlave => "`kill -9` of the slave".into(),
            Fault::PauseMaster(ms) => format!(
                "master paused {} s ({} the {} s session timeout)",
                ms as f64 / 1000.0,
                if ms < SESSION_TIMEOUT_MS { "<" } else { ">" },
                SESSION_TIMEOUT_MS as f64 / 1000.0
            ),
            Fault::ScaleDown => "scale-down, 2 → 1 slaves".into(),
        }
    }
}

/// Timing of the windows around each fault.
struct Timing {
    /// Steady load measured before the first fault.
    steady: Duration,
    /// Part of the window before the fault.
    pre: Duration,
    /// Part of the window after the pool is healthy again.
    post: Duration,
}

fn timing() -> Timing {
    if shared::smoke() {
        Timing {
            steady: Duration::from_secs(1),
            pre: Duration::from_millis(500),
            post: Duration::from_secs(1),
        }
    } else {
        Timing {
            steady: Duration::from_secs(5),
            pre: Duration::from_secs(2),
            post: Duration::from_secs(3),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Write,
}

/// One request as a client saw it.
struct Record {
    kind: Kind,
    start: Instant,
    took: Duration,
    /// `None` when answered 2xx; otherwise the status and the error's text, or
    /// the transport error.
    error: Option<String>,
    /// A 2xx read that did not show the client's last acknowledged write.
    violation: bool,
}

/// Sends one request and classifies the outcome.
async fn timed(kind: Kind, req: reqwest::RequestBuilder) -> (Record, Option<Value>) {
    let start = Instant::now();
    let (error, body) = match req.send().await {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(v) => (None, Some(v)),
            Err(e) => (Some(format!("unreadable 2xx body: {e}")), None),
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.json::<Value>().await.ok().and_then(|v| {
                v["error"].as_str().map(|e| {
                    // Keep the reason; drop what varies (pids, seqs) only by cutting it short.
                    e.chars().take(120).collect::<String>()
                })
            });
            (Some(format!("{status} {}", text.unwrap_or_default())), None)
        }
        Err(e) if e.is_timeout() => (Some("no answer within the client timeout".into()), None),
        Err(e) if e.is_connect() => (Some("connection refused".into()), None),
        Err(_) => (Some("transport error".into()), None),
    };
    let record = Record {
        kind,
        start,
        took: start.elapsed(),
        error,
        violation: false,
    };
    (record, body)
}

/// One client: update its own row, read it back with `min_seq`, until `stop`
/// (or `until`, whichever comes first).
async fn client(
    http: reqwest::Client,
    base: String,
    key: String,
    stop: Arc<AtomicBool>,
    until: Instant,
) -> Vec<Record> {
    let (write_url, read_url) = (
        format!("{base}/api/v1/db/write"),
        format!("{base}/api/v1/db/read"),
    );
    let mut records = Vec::new();
    let (mut n, mut acknowledged_seq) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        n += 1;
        let value = format!("v{n}");
        let update = json!({"set": {"password": value}, "where": {"username": key}});
        let write = json!({"table": "users", "update": update});
        let (w, reply) = timed(Kind::Write, http.post(&write_url).json(&write)).await;
        records.push(w);
        // After a failed write the row's value is unknown (the write may still
        // apply): the read is sent but not checked.
        let expected = match reply.and_then(|r| r["seq"].as_u64()) {
            Some(seq) => {
                acknowledged_seq = seq;
                Some(value)
            }
            None => None,
        };
        let read = json!({"table": "users", "columns": ["password"], "where": {"username": key},
            "consistency": "eventual", "min_seq": acknowledged_seq});
        let (mut r, reply) = timed(Kind::Read, http.post(&read_url).json(&read)).await;
        if let (Some(reply), Some(expected)) = (reply, expected) {
            let seen = reply["rows"][0]["password"].as_str();
            let seq = reply["seq"].as_u64().unwrap_or(0);
            r.violation = seen != Some(expected.as_str()) || seq < acknowledged_seq;
        }
        records.push(r);
    }
    records
}

/// The load: `CLIENTS` clients on one orchestrator, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Record>>>,
}

impl Load {
    async fn start(o: &Orchestrator, tag: &str) -> Load {
        // Each client's row exists before the load starts: the load only updates.
        let rows: Vec<Value> = (0..CLIENTS)
            .map(|i| json!({"username": format!("{tag}-{i}"), "password": "v0"}))
            .collect();
        let (status, body) = o.write(json!({"table": "users", "insert": rows})).await;
        assert_eq!(status, 200, "insert the clients' rows: {body}");
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("http client");
        let stop = Arc::new(AtomicBool::new(false));
        // Bound on the load itself, should the bench never stop it.
        let until = Instant::now() + Duration::from_secs(1800);
        let tasks = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client(
                    http.clone(),
                    o.url.clone(),
                    format!("{tag}-{i}"),
                    stop.clone(),
                    until,
                ))
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            if let Ok(records) = t.await {
                all.extend(records);
            }
        }
        all
    }
}

/// `worker/status`, or `None` while the orchestrator does not answer.
async fn status(o: &Orchestrator) -> Option<Value> {
    let r = o
        .http
        .get(o.url("/api/v1/worker/status"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

fn pids(s: &Value) -> Vec<u64> {
    s["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["pid"].as_u64()).collect())
        .unwrap_or_default()
}

/// One master and `slaves` serving slaves, nothing else; `gone` no longer
/// listed and `not_master` no longer master.
fn healthy(s: &Value, slaves: usize, gone: Option<u64>, not_master: Option<u64>) -> bool {
    let Some(workers) = s["workers"].as_array() else {
        return false;
    };
    let role = |r: &str| workers.iter().filter(|w| w["role"] == r).count();
    let master = s["master"].as_u64();
    master.is_some()
        && role("master") == 1
        && role("slave") == slaves
        && workers.len() == slaves + 1
        && gone.is_none_or(|p| !pids(s).contains(&p))
        && (not_master.is_none() || master != not_master)
}

async fn wait_healthy(
    o: &Orchestrator,
    slaves: usize,
    gone: Option<u64>,
    not_master: Option<u64>,
) -> Option<Value> {
    wait_until("a healthy pool", HEALTHY_WITHIN, || async {
        let s = status(o).await?;
        healthy(&s, slaves, gone, not_master).then_some(s)
    })
    .await
}

/// A fault as it was carried out.
struct Injected {
    at: Instant,
    /// The worker hit, which must be gone before the pool counts as healthy.
    gone: Option<u64>,
    /// A paused master must have been replaced.
    not_master: Option<u64>,
}

/// The pid in a crash API answer (`["4242"]`).
fn crashed_pid(body: &Value) -> Option<u64> {
    body[0].as_str()?.parse().ok()
}

async fn inject(o: &Orchestrator, fault: Fault, before: &Value) -> Result<Injected, String> {
    let master = before["master"].as_u64();
    let slave = slave_pids(before).into_iter().max();
    match fault {
        Fault::CrashMaster | Fault::CrashSlave => {
            let path = if fault == Fault::CrashMaster {
                "/api/v1/crash/master"
            } else {
                "/api/v1/crash/slave"
            };
            let at = Instant::now();
            let (st, body) = o.post_json(path, &Value::Null).await;
            match (st, crashed_pid(&body)) {
                (200, Some(pid)) => Ok(Injected {
                    at,
                    gone: Some(pid),
                    not_master: None,
                }),
                _ => Err(format!("{path} answered {st} {body}")),
            }
        }
        Fault::KillMaster | Fault::KillSlave => {
            let pid = if fault == Fault::KillMaster {
                master
            } else {
                slave
            }
            .ok_or("no such worker in worker/status")?;
            let at = Instant::now();
            sigkill(pid);
            Ok(Injected {
                at,
                gone: Some(pid),
                not_master: None,
            })
        }
        Fault::PauseMaster(ms) => {
            let pid = master.ok_or("no master in worker/status")?;
            let at = Instant::now();
            signal(pid, libc::SIGSTOP);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            signal(pid, libc::SIGCONT);
            Ok(Injected {
                at,
                gone: None,
                // Past the session timeout the master must have been replaced.
                not_master: (ms > SESSION_TIMEOUT_MS).then_some(pid),
            })
        }
        Fault::ScaleDown => {
            // The scaler's first decision (the pool was started with 2 slaves and
            // a reads-per-slave so high that it asks for 1).
            let decided = wait_until(
                "the scaler's decision",
                Duration::from_secs(SCALE_INTERVAL_SECS + 30),
                || async {
                    let (st, s) = o.get_json("/api/v1/scaler").await;
                    (st == 200).then_some(())?;
                    s["decisions"][0]["at_ms"].as_i64()
                },
            )
            .await
            .ok_or("the scaler made no decision")?;
            let ago = chrono::Utc::now().timestamp_millis() - decided;
            let at = Instant::now()
                .checked_sub(Duration::from_millis(ago.max(0) as u64))
                .unwrap_or_else(Instant::now);
            Ok(Injected {
                at,
                gone: None,
                not_master: None,
            })
        }
    }
}

/// One row of the table.
struct Outcome {
    label: String,
    window: (Instant, Instant),
    /// Seconds from the fault to a healthy pool; `None` if not within the bound.
    recovered: Option<f64>,
    master_changed: Option<bool>,
    note: Option<String>,
}

/// Runs the faults on one pool of `slaves` slaves under load; returns the rows
/// (windows into the records) and the records.
async fn run_pool(
    o: &Orchestrator,
    tag: &str,
    slaves: usize,
    faults: &[Fault],
    steady: bool,
    t: &Timing,
) -> (Vec<Outcome>, Vec<Record>) {
    let load = Load::start(o, tag).await;
    let mut rows = Vec::new();
    if steady {
        let from = Instant::now();
        tokio::time::sleep(t.steady).await;
        rows.push(Outcome {
            label: format!("none (steady load, {} s)", t.steady.as_secs_f64()),
            window: (from, Instant::now()),
            recovered: None,
            master_changed: None,
            note: None,
        });
    }
    for &fault in faults {
        let label = fault.label();
        let Some(before) = wait_healthy(o, slaves, None, None).await else {
            rows.push(skipped(label, "the pool was not healthy before the fault"));
            continue;
        };
        tokio::time::sleep(t.pre).await;
        let before = status(o).await.unwrap_or(before);
        eprintln!("fault: {label}");
        let injected = match inject(o, fault, &before).await {
            Ok(i) => i,
            Err(e) => {
                rows.push(skipped(label, &e));
                continue;
            }
        };
        let desired = if fault == Fault::ScaleDown { 1 } else { slaves };
        let after = wait_healthy(o, desired, injected.gone, injected.not_master).await;
        let recovered = after.as_ref().map(|_| injected.at.elapsed().as_secs_f64());
        let master_changed = after
            .as_ref()
            .map(|a| a["master"].as_u64() != before["master"].as_u64());
        tokio::time::sleep(t.post).await;
        rows.push(Outcome {
            label,
            window: (
                injected.at.checked_sub(t.pre).unwrap_or(injected.at),
                Instant::now(),
            ),
            recovered,
            master_changed,
            note: after.is_none().then(|| {
                format!(
                    "not healthy within {} s: {}",
                    HEALTHY_WITHIN.as_secs(),
                    status_line(&before)
                )
            }),
        });
    }
    (rows, load.stop().await)
}

fn skipped(label: String, why: &str) -> Outcome {
    let now = Instant::now();
    Outcome {
        label,
        window: (now, now),
        recovered: None,
        master_changed: None,
        note: Some(format!("skipped: {why}")),
    }
}

fn status_line(s: &Value) -> String {
    let workers: Vec<String> = s["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| format!("{} {}", w["pid"], w["role"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    format!("before it: {}", workers.join(", "))
}

/// What the records of one window add up to.
#[derive(Default)]
struct Figures {
    reads: usize,
    writes: usize,
    failed_reads: usize,
    failed_writes: usize,
    violations: usize,
    longest_read: Duration,
    longest_write: Duration,
    /// From the start of the first failed request to the end of the last.
    failing: Option<(Instant, Instant)>,
    errors: BTreeMap<String, usize>,
}

fn figures(records: &[Record], (from, to): (Instant, Instant)) -> Figures {
    let mut f = Figures::default();
    for r in records.iter().filter(|r| r.start >= from && r.start < to) {
        let (count, failed, longest) = match r.kind {
            Kind::Read => (&mut f.reads, &mut f.failed_reads, &mut f.longest_read),
            Kind::Write => (&mut f.writes, &mut f.failed_writes, &mut f.longest_write),
        };
        *count += 1;
        *longest = (*longest).max(r.took);
        f.violations += usize::from(r.violation);
        if let Some(e) = &r.error {
            *failed += 1;
            let what = if r.kind == Kind::Read {
                "read"
            } else {
                "write"
            };
            *f.errors.entry(format!("{what}: {e}")).or_default() += 1;
            let end = r.start + r.took;
            f.failing = Some(match f.failing {
                None => (r.start, end),
                Some((a, b)) => (a.min(r.start), b.max(end)),
            });
        }
    }
    f
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    if !shared::under_cargo_bench("faults") {
        return;
    }
    let t = timing();
    let all = [
        Fault::CrashMaster,
        Fault::CrashSlave,
        Fault::KillMaster,
        Fault::KillSlave,
        Fault::PauseMaster(SESSION_TIMEOUT_MS / 2),
        Fault::PauseMaster(SESSION_TIMEOUT_MS * 5 / 2),
        Fault::ScaleDown,
    ];
    let chosen: Vec<Fault> = all
        .into_iter()
        .filter(|f| {
            if shared::smoke() {
                *f == Fault::CrashSlave
            } else {
                shared::wanted("BENCH_FAULTS", f.key())
            }
        })
        .collect();
    let started = Instant::now();
    let session = (
        "DBAAS_ZK_SESSION_TIMEOUT_MS".to_string(),
        SESSION_TIMEOUT_MS.to_string(),
    );
    let mut results: Vec<(Outcome, Figures)> = Vec::new();

    // The default pool (a master and one slave) for every fault but scale-down.
    let single: Vec<Fault> = chosen
        .iter()
        .copied()
        .filter(|f| *f != Fault::ScaleDown)
        .collect();
    if !single.is_empty() {
        let o = Orchestrator::start(
            "bench-faults",
            Options {
                slaves: 1,
                extra_env: vec![session.clone()],
                ..Options::default()
            },
        )
        .await;
        let (rows, records) = run_pool(&o, "fc", 1, &single, true, &t).await;
        results.extend(rows.into_iter().map(|r| {
            let f = figures(&records, r.window);
            (r, f)
        }));
        drop(o);
    }
    // Scale-down needs a pool of two slaves and a scaler that asks for one.
    if chosen.contains(&Fault::ScaleDown) {
        let o = Orchestrator::start(
            "bench-faults-scale",
            Options {
                slaves: 2,
                scale_interval_secs: SCALE_INTERVAL_SECS,
                extra_env: vec![
                    session.clone(),
                    ("DBAAS_READS_PER_SLAVE".into(), "1000000000".into()),
                ],
                ..Options::default()
            },
        )
        .await;
        let (rows, records) = run_pool(&o, "fs", 2, &[Fault::ScaleDown], false, &t).await;
        results.extend(rows.into_iter().map(|r| {
            let f = figures(&records, r.window);
            (r, f)
        }));
        drop(o);
    }
    report(&results, &t, started.elapsed());
}

/// Writes bench/results/faults.md and faults.json (faults-smoke.* or
/// faults-partial.* for a smoke or narrowed run): a row per fault, then the
/// errors the clients got.
fn report(results: &[(Outcome, Figures)], t: &Timing, total: Duration) {
    let mut md = String::from("# Faults under load\n\n");
    md.push_str(&format!(
        "{} {CLIENTS} clients, each updating its own `users` row and reading it back \
         at `eventual` consistency with `min_seq` (read-your-writes), retrying at once. \
         Process runtime, a master and one slave (scale-down: two slaves), ZooKeeper \
         session timeout {} s, request timeout 5 s. Window: {} s before the fault to {} s \
         after the pool is healthy again. Latencies in seconds, failed requests included. \
         Run time {:.0} s.\n\n",
        shared::machine(),
        SESSION_TIMEOUT_MS as f64 / 1000.0,
        t.pre.as_secs_f64(),
        t.post.as_secs_f64(),
        total.as_secs_f64()
    ));
    md.push_str(
        "| fault | requests (reads / writes) | failed reads | failed writes | RYW violations | \
         longest read | longest write | failures from first to last | pool healthy again \
         | new master |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json_rows = Vec::new();
    let mut notes = String::new();
    for (o, f) in results {
        let span = f.failing.map(|(a, b)| b.duration_since(a));
        md.push_str(&format!(
            "| {} | {} ({} / {}) | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.label,
            f.reads + f.writes,
            f.reads,
            f.writes,
            f.failed_reads,
            f.failed_writes,
            f.violations,
            secs(f.longest_read),
            secs(f.longest_write),
            span.map(secs).unwrap_or_else(|| "–".into()),
            match (&o.recovered, &o.note) {
                (Some(r), _) => format!("{r:.3}"),
                (None, Some(_)) => "**no**".into(),
                (None, None) => "–".into(),
            },
            match o.master_changed {
                Some(true) => "yes",
                Some(false) => "no",
                None => "–",
            }
        ));
        if o.note.is_some() || !f.errors.is_empty() {
            notes.push_str(&format!("- {}:", o.label));
            if let Some(n) = &o.note {
                notes.push_str(&format!(" {n}."));
            }
            let errors: Vec<String> = f
                .errors
                .iter()
                .map(|(e, n)| format!("{n} × {}", e.trim_end()))
                .collect();
            if !errors.is_empty() {
                notes.push_str(&format!(" {}", errors.join("; ")));
            }
            notes.push('\n');
        }
        json_rows.push(json!({
            "fault": o.label,
            "reads": f.reads, "writes": f.writes,
            "failed_reads": f.failed_reads, "failed_writes": f.failed_writes,
            "read_your_writes_violations": f.violations,
            "longest_read_s": f.longest_read.as_secs_f64(),
            "longest_write_s": f.longest_write.as_secs_f64(),
            "failing_s": span.map(|d| d.as_secs_f64()),
            "healthy_again_s": o.recovered,
            "new_master": o.master_changed,
            "note": o.note,
            "errors": f.errors,
        }));
    }
    if !notes.is_empty() {
        md.push_str("\nErrors the clients got:\n\n");
        md.push_str(&notes);
    }
    let name = if shared::smoke() {
        "faults-smoke"
    } else if shared::narrowed("BENCH_FAULTS").is_some() {
        "faults-partial"
    } else {
        "faults"
    };
    shared::write_results(
        name,
        &md,
        &json!({"run_secs": total.as_secs_f64(), "faults": json_rows}),
    );
}
