//! The project's own Jepsen-style test: are strong reads, writes and
//! compare-and-set linearizable while the master is paused, killed and crashed?
//!
//! - **Load**: concurrent clients (8) run strong reads (`db/read` with
//!   `"consistency": "strong"` of `users.password` by `username`), blind writes
//!   (`update` of `password` where `username` = key) and compare-and-set
//!   (`update` where `username` = key and `password` = the value the client last
//!   saw; `rows_affected` 1 is success, 0 a refused CAS) on a few live keys, and
//!   record every call with its invoke and return times. Every value written is
//!   unique. As Jepsen's independent keys do, a key retires after
//!   `JEPSEN_OPS_PER_KEY` operations and a fresh (pre-seeded) key takes its
//!   place, which keeps each key's history small enough for the checker. A
//!   client gives up on a call after 2 s (unknown outcome) and goes on as a
//!   fresh process. After the load, a final strong read of every key.
//! - **Nemesis**, during the load, on the master: SIGSTOP until another worker
//!   is master (the ZooKeeper session is set to 1 s here) and 1.5 s more, then
//!   SIGCONT; `kill -9`; `POST /api/v1/crash/master`; in the mixed schedule
//!   also a paused slave. After each fault it waits for the cluster to recover.
//! - **Probe** (the targeted trigger): pause the master; once another
//!   worker is master per `worker/status`, write a key until a write is
//!   acknowledged; read it strongly from 8 connections at once; resume the old
//!   master 0.3 s later; a final read once the cluster has recovered. At least
//!   90 % of the strong reads must be answered. (Whether the resumed master's
//!   stale answers leave it before it notices its lost session is a race: on
//!   the code this test was written against, about one round in four.)
//! - **Checker**: stateright's `LinearizabilityTester` with a register-with-CAS
//!   specification, key by key (see `linearizability/checker.rs`).
//!   Operations of unknown outcome count as possibly applied at any later time.
//!
//! Every run writes its history (`history.jsonl`, one operation per line),
//! the nemesis' faults (`nemesis.jsonl`), the verdict with the checker's
//! explanation (`result.txt`) and the orchestrator's and workers' logs under
//! `target/tmp/jepsen/`; a failure names the directory.
//! `JEPSEN_HISTORY=<history.jsonl>` re-checks a saved history
//! (`cargo test --test integration recheck -- --ignored`).
//!
//! Knobs (environment): `JEPSEN_SECS` (load duration, default 10),
//! `JEPSEN_NEMESIS` (comma list of `pause`, `kill`, `crash`, `pause-slave`,
//! `none`, or `mixed`; default `pause,kill,pause,crash`), `JEPSEN_CLIENTS` (8),
//! `JEPSEN_KEYS` (live keys, 4), `JEPSEN_OPS_PER_KEY` (100),
//! `JEPSEN_PROBE_ROUNDS` (6), `JEPSEN_SESSION_MS` (1000). `scripts/jepsen` runs
//! a long one with the mixed nemesis.

mod checker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::common::{signal, slave_pids, wait_until, Options, Orchestrator};
use checker::{Entry, Op, Outcome, Ret, Value, Verdict};

/// Every key starts at this value (seeded before the run).
const INITIAL: Value = 0;
/// The workers' ZooKeeper session: a pause longer than this deposes a master.
/// `JEPSEN_SESSION_MS` overrides it.
fn session_ms() -> u64 {
    env_or("JEPSEN_SESSION_MS", 1000)
}
/// How long the orchestrator waits for a worker (then 504): longer than any
/// pause, so few operations end with an unknown outcome.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long the probe, and the final reads, wait for an answer before they
/// count the call unknown: longer than anything the cluster may take.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 5_000);
/// How long a load client waits before it gives up on a call (unknown) and
/// goes on as a fresh process, Jepsen's way. Short, so that while a paused
/// master holds the calls delivered to it the clients go on reaching the new
/// master; longer than the pause's hold after the new master is seen, so
/// answers the old master gives when it resumes are still heard.
const LOAD_CLIENT_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long the nemesis keeps a master paused once another worker is master.
const PAUSE_HOLD: Duration = Duration::from_millis(1500);
/// Slaves besides the master: two, so one can take over while another joins.
const SLAVES: usize = 2;
/// How long the checker may take before the run counts as failed.
const CHECK_BUDGET: Duration = Duration::from_secs(300);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    PauseMaster,
    KillMaster,
    CrashMaster,
    PauseSlave,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::PauseMaster => "pause",
            Fault::KillMaster => "kill",
            Fault::CrashMaster => "crash",
            Fault::PauseSlave => "pause-slave",
        }
    }
}

fn nemesis_schedule() -> Vec<Fault> {
    let spec = std::env::var("JEPSEN_NEMESIS").unwrap_or_else(|_| "pause,kill,pause,crash".into());
    let spec = if spec == "mixed" {
        "pause,kill,pause-slave,pause,crash".to_string()
    } else {
        spec
    };
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|s| match s {
            "pause" => Fault::PauseMaster,
            "kill" => Fault::KillMaster,
            "crash" => Fault::CrashMaster,
            "pause-slave" => Fault::PauseSlave,
            other => panic!("JEPSEN_NEMESIS: unknown fault {other:?}"),
        })
        .collect()
}

/// A fault as the nemesis injected it (one line of `nemesis.jsonl`).
#[derive(Debug, Serialize)]
struct FaultRecord {
    fault: Fault,
    pid: u64,
    start_ns: u64,
    end_ns: u64,
    note: String,
}

/// The shared recorder of one run.
struct Run {
    url: String,
    start: Instant,
    history: Mutex<Vec<Entry>>,
    faults: Mutex<Vec<FaultRecord>>,
    next_value: AtomicU64,
}

impl Run {
    fn new(url: &str) -> Arc<Run> {
        Arc::new(Run {
            url: url.to_string(),
            start: Instant::now(),
            history: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            next_value: AtomicU64::new(INITIAL + 1),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn fresh_value(&self) -> Value {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, e: Entry) {
        self.history.lock().expect("history lock").push(e);
    }

    fn fault(&self, fault: Fault, pid: u64, start_ns: u64, note: String) {
        let end_ns = self.now_ns();
        self.faults.lock().expect("faults lock").push(FaultRecord {
            fault,
            pid,
            start_ns,
            end_ns,
            note,
        });
    }

    /// Runs one operation on `key` and returns it as recorded in the history.
    async fn perform(
        &self,
        http: &reqwest::Client,
        (process, client): (u32, u32),
        key: u32,
        op: Op,
    ) -> Entry {
        let name = key_name(key);
        let (path, body) = match op {
            Op::Read => (
                "/api/v1/db/read",
                json!({"table": "users", "columns": ["password"], "where": {"username": name}, "consistency": "strong"}),
            ),
            Op::Write { value } => (
                "/api/v1/db/write",
                json!({"table": "users", "update": {"set": {"password": value.to_string()}, "where": {"username": name}}}),
            ),
            Op::Cas { from, to } => (
                "/api/v1/db/write",
                json!({"table": "users", "update": {"set": {"password": to.to_string()}, "where": {"username": name, "password": from.to_string()}}}),
            ),
        };
        let invoke_ns = self.now_ns();
        let answer = http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await;
        let mut e = Entry {
            process,
            client,
            key,
            op,
            outcome: Outcome::Unknown,
            ret: None,
            invoke_ns,
            return_ns: 0,
            status: None,
            worker: None,
            seq: None,
            error: None,
        };
        match answer {
            Err(err) => e.error = Some(err.to_string()),
            Ok(r) => {
                let status = r.status().as_u16();
                e.status = Some(status);
                match r.json::<Json>().await {
                    Err(err) => e.error = Some(format!("answer body: {err}")),
                    Ok(body) if status == 200 => {
                        e.worker = body["worker"].as_u64();
                        e.seq = body["seq"].as_u64();
                        e.ret = Some(interpret(op, &body));
                        e.outcome = Outcome::Ok;
                    }
                    Ok(body) => {
                        e.error = Some(body["error"].as_str().unwrap_or_default().to_string());
                        // A 4xx was refused before anything was applied; a 5xx
                        // (504: no answer in time) may still be applied later.
                        if (400..500).contains(&status) {
                            e.outcome = Outcome::Fail;
                        }
                    }
                }
            }
        }
        e.return_ns = self.now_ns();
        e
    }
}

/// What a 200 answer means for the register.
fn interpret(op: Op, body: &Json) -> Ret {
    match op {
        Op::Read => match body["rows"].as_array().map(Vec::as_slice) {
            Some([]) => Ret::Read(None),
            Some([row]) => match row["password"].as_str().map(str::parse::<Value>) {
                Some(Ok(v)) => Ret::Read(Some(v)),
                _ => Ret::Impossible(format!("read {row}")),
            },
            _ => Ret::Impossible(format!("read answer {body}")),
        },
        Op::Write { .. } => match body["rows_affected"].as_u64() {
            Some(1) => Ret::WriteOk,
            _ => Ret::Impossible(format!("blind write answered {body}")),
        },
        Op::Cas { .. } => match body["rows_affected"].as_u64() {
            Some(1) => Ret::CasApplied,
            Some(0) => Ret::CasFailed,
            _ => Ret::Impossible(format!("cas answered {body}")),
        },
    }
}

fn key_name(key: u32) -> String {
    format!("jepsen-{key}")
}

/// Inserts `count` keys with the initial value, acknowledged.
async fn seed(o: &Orchestrator, count: u32) {
    let mut first = 0;
    while first < count {
        let last = count.min(first + 5000);
        let rows: Vec<Json> = (first..last)
            .map(|k| json!({"username": key_name(k), "password": INITIAL.to_string()}))
            .collect();
        let (status, body) = o.write(json!({"table": "users", "insert": rows})).await;
        assert_eq!(status, 200, "seeding keys {first}..{last}: {body}");
        first = last;
    }
}

/// Which key a client uses next: `live` slots, each running through its keys
/// (slot, slot + live, slot + 2 live, ...) `per_key` operations at a time.
struct Keys {
    live: u32,
    per_key: u64,
    total: u32,
    issued: Vec<AtomicU64>,
    /// The last value any client saw per key: what a CAS expects.
    last_seen: Mutex<HashMap<u32, Value>>,
}

impl Keys {
    fn new(live: u32, per_key: u64, total: u32) -> Keys {
        Keys {
            live,
            per_key,
            total,
            issued: (0..live).map(|_| AtomicU64::new(0)).collect(),
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    fn pick(&self, rng: &mut Rng) -> u32 {
        let slot = rng.below(self.live);
        let n = self.issued[slot as usize].fetch_add(1, Ordering::Relaxed);
        let generation = u32::try_from(n / self.per_key).unwrap_or(u32::MAX);
        let last_generation = (self.total - 1 - slot) / self.live;
        slot + self.live * generation.min(last_generation)
    }

    fn last_seen(&self, key: u32) -> Value {
        let seen = self.last_seen.lock().expect("last_seen lock");
        seen.get(&key).copied().unwrap_or(INITIAL)
    }

    fn saw(&self, key: u32, v: Value) {
        self.last_seen
            .lock()
            .expect("last_seen lock")
            .insert(key, v);
    }
}

/// A small xorshift generator: the workload needs no better.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        u32::try_from(self.0 % u64::from(n)).unwrap_or(0)
    }
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("http client")
}

/// One client: operations back to back until the deadline. After an unknown
/// outcome it continues as a fresh logical process (Jepsen's way), since the
/// old one may still have an operation in flight.
async fn client(run: Arc<Run>, keys: Arc<Keys>, id: u32, clients: u32, deadline: Instant) {
    let http = http_client(LOAD_CLIENT_TIMEOUT);
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(id) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut incarnation = 0;
    while Instant::now() < deadline {
        let key = keys.pick(&mut rng);
        let op = match rng.below(10) {
            0..=3 => Op::Read,
            4..=6 => Op::Write {
                value: run.fresh_value(),
            },
            _ => Op::Cas {
                from: keys.last_seen(key),
                to: run.fresh_value(),
            },
        };
        let e = run
            .perform(&http, (id + clients * incarnation, id), key, op)
            .await;
        match (&e.outcome, &e.ret, op) {
            (Outcome::Unknown, _, _) => incarnation += 1,
            (Outcome::Ok, Some(Ret::Read(Some(v))), _) => keys.saw(key, *v),
            (Outcome::Ok, Some(Ret::WriteOk), Op::Write { value }) => keys.saw(key, value),
            (Outcome::Ok, Some(Ret::CasApplied), Op::Cas { to, .. }) => keys.saw(key, to),
            _ => {}
        }
        run.record(e);
    }
}

/// Stops a process and continues it when dropped, so no test leaves a
/// stopped worker behind, even when it panics.
struct Paused(u64);

impl Paused {
    fn new(pid: u64) -> Paused {
        signal(pid, libc::SIGSTOP);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

async fn current_master(o: &Orchestrator) -> Option<u64> {
    wait_until("a master", Duration::from_secs(30), || async {
        o.master_pid().await
    })
    .await
}

/// Waits (bounded) until another worker than `old` is master.
async fn master_other_than(o: &Orchestrator, old: u64) -> Option<u64> {
    wait_until("another master", Duration::from_secs(30), || async {
        o.master_pid().await.filter(|m| *m != old)
    })
    .await
}

/// Waits (bounded) until a master other than `not_master` and all slaves serve.
async fn settle(o: &Orchestrator, not_master: Option<u64>) -> Result<(), String> {
    let ok = wait_until(
        "the cluster to recover",
        Duration::from_secs(60),
        || async {
            let s = o.status().await;
            let workers = s["workers"].as_array()?;
            let master = s["master"].as_u64()?;
            let settled = Some(master) != not_master
                && slave_pids(&s).len() == SLAVES
                && workers.len() == SLAVES + 1
                && workers
                    .iter()
                    .all(|w| w["role"] == "master" || w["role"] == "slave");
            settled.then_some(())
        },
    )
    .await;
    match ok {
        Some(()) => Ok(()),
        None => Err(format!(
            "the cluster did not recover within 60 s: {}",
            o.status().await
        )),
    }
}

/// Injects one fault and waits for the cluster to recover from it.
async fn inject(o: &Orchestrator, run: &Run, fault: Fault, hold: Duration) -> Result<(), String> {
    let start_ns = run.now_ns();
    let master = current_master(o).await.ok_or("no master to fault")?;
    match fault {
        Fault::PauseMaster => {
            let paused = Paused::new(master);
            let successor = master_other_than(o, master).await;
            // Clients now reach the new master while the old one still holds
            // its subscriptions: hold the pause a little longer.
            tokio::time::sleep(hold).await;
            drop(paused);
            run.fault(
                fault,
                master,
                start_ns,
                match successor {
                    Some(s) => format!("worker {s} became master during the pause"),
                    None => "no other worker became master within 30 s".into(),
                },
            );
            settle(o, Some(master)).await
        }
        Fault::KillMaster => {
            crate::common::sigkill(master);
            run.fault(fault, master, start_ns, "kill -9".into());
            settle(o, Some(master)).await
        }
        Fault::CrashMaster => {
            let (status, body) = o.post_json("/api/v1/crash/master", &Json::Null).await;
            run.fault(fault, master, start_ns, format!("{status} {body}"));
            settle(o, Some(master)).await
        }
        Fault::PauseSlave => {
            let s = o.status().await;
            let Some(&slave) = slave_pids(&s).iter().max() else {
                return Err(format!("no slave to pause: {s}"));
            };
            let paused = Paused::new(slave);
            tokio::time::sleep(Duration::from_millis(session_ms()) + hold).await;
            drop(paused);
            run.fault(
                fault,
                slave,
                start_ns,
                "slave paused past its session".into(),
            );
            settle(o, None).await
        }
    }
}

/// The nemesis: faults from `schedule` in turn, with quiet gaps, until `deadline`.
async fn nemesis(
    o: Arc<Orchestrator>,
    run: Arc<Run>,
    schedule: Vec<Fault>,
    deadline: Instant,
) -> Result<(), String> {
    let quiet = Duration::from_millis(700);
    let mut faults = schedule.iter().cycle();
    if schedule.is_empty() {
        return Ok(());
    }
    loop {
        tokio::time::sleep(quiet).await;
        // A fault needs a few seconds: start one only if it can end in time.
        if Instant::now() + Duration::from_secs(3) > deadline {
            return Ok(());
        }
        let Some(&fault) = faults.next() else {
            return Ok(());
        };
        inject(&o, &run, fault, PAUSE_HOLD).await?;
    }
}

/// Runs the checker on its own thread (deep recursion), bounded in time.
fn check_bounded(history: Vec<Entry>) -> Option<Verdict> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("linearizability-checker".into())
        .stack_size(512 << 20)
        .spawn(move || {
            let _ = tx.send(checker::check(&history, INITIAL));
        })
        .expect("checker thread");
    rx.recv_timeout(CHECK_BUDGET).ok()
}

/// Writes the history, the faults and the result, and copies the
/// orchestrator's and workers' logs; returns the directory.
fn save(
    test: &str,
    history: &[Entry],
    faults: &[FaultRecord],
    result: &str,
    o: &Orchestrator,
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("jepsen")
        .join(format!(
            "{test}-{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id()
        ));
    std::fs::create_dir_all(&dir).expect("create the history directory");
    let mut sorted: Vec<&Entry> = history.iter().collect();
    sorted.sort_by_key(|e| (e.invoke_ns, e.process));
    let lines = |items: Vec<String>| items.into_iter().map(|l| l + "\n").collect::<String>();
    let history_lines = sorted
        .iter()
        .map(|e| serde_json::to_string(e).expect("entry as JSON"))
        .collect();
    std::fs::write(dir.join("history.jsonl"), lines(history_lines)).expect("write history");
    let fault_lines = faults
        .iter()
        .map(|f| serde_json::to_string(f).expect("fault as JSON"))
        .collect();
    std::fs::write(dir.join("nemesis.jsonl"), lines(fault_lines)).expect("write nemesis");
    std::fs::write(dir.join("result.txt"), result).expect("write result");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("create the log directory");
    let _ = std::fs::write(logs.join("orchestrator.log"), o.log());
    if let Ok(entries) = std::fs::read_dir(o.dir.path().join("logs")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), logs.join(e.file_name()));
        }
    }
    dir
}

/// Workers the nemesis faulted that are still running once the orchestrator
/// has stopped (a deposed master that never exited): killed, so no test leaves
/// one behind, after a bounded wait and only if `/proc` shows our worker
/// binary under that pid. Returns their pids.
async fn reap_leftovers(run: &Run) -> Vec<u64> {
    let faulted: std::collections::BTreeSet<u64> = run
        .faults
        .lock()
        .expect("faults lock")
        .iter()
        .map(|f| f.pid)
        .collect();
    let ours = |pid: u64| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let exe = crate::common::bin("worker");
        crate::common::alive(pid) && cmdline.starts_with(exe.as_os_str().as_encoded_bytes())
    };
    let gone = wait_until(
        "faulted workers to exit",
        Duration::from_secs(5),
        || async { faulted.iter().all(|&p| !ours(p)).then_some(()) },
    )
    .await;
    if gone.is_some() {
        return Vec::new();
    }
    let left: Vec<u64> = faulted.into_iter().filter(|&p| ours(p)).collect();
    for &pid in &left {
        signal(pid, libc::SIGCONT);
        crate::common::sigkill(pid);
    }
    left
}

/// Checks the run's history, saves everything, prints the summary line and
/// fails the test on a violation (or on `trouble`, e.g. a cluster that never
/// recovered), naming the directory that keeps the evidence.
async fn conclude(
    o: Arc<Orchestrator>,
    test: &str,
    run: &Run,
    trouble: Option<String>,
    extra: &str,
) {
    let mut o = Arc::into_inner(o).expect("no task holds the orchestrator any more");
    o.stop();
    let leftovers = reap_leftovers(run).await;
    let history = run.history.lock().expect("history lock").clone();
    let faults = std::mem::take(&mut *run.faults.lock().expect("faults lock"));
    let count = |o: Outcome| history.iter().filter(|e| e.outcome == o).count();
    let (ok, fail, unknown) = (
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Unknown),
    );
    let mut by_fault: Vec<String> = Vec::new();
    for kind in [
        Fault::PauseMaster,
        Fault::KillMaster,
        Fault::CrashMaster,
        Fault::PauseSlave,
    ] {
        let n = faults.iter().filter(|f| f.fault == kind).count();
        if n > 0 {
            by_fault.push(format!("{}={n}", kind.name()));
        }
    }
    let verdict = check_bounded(history.clone());
    let (verdict_word, explanation, checked, keys, elapsed) = match &verdict {
        None => (
            format!("UNDECIDED (the checker ran out of its {CHECK_BUDGET:?})"),
            String::new(),
            0,
            0,
            CHECK_BUDGET,
        ),
        Some(v) => (
            if v.linearizable() {
                "linearizable".to_string()
            } else {
                format!("NOT linearizable ({} key(s))", v.violations.len())
            },
            v.violations
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            v.ops_checked,
            v.keys,
            v.elapsed,
        ),
    };
    let summary = format!(
        "jepsen {test}: {} operations ({ok} ok, {fail} fail, {unknown} unknown), {checked} checked \
         on {keys} keys in {:.1} s, {} faults ({}){extra}: {verdict_word}",
        history.len(),
        elapsed.as_secs_f64(),
        faults.len(),
        by_fault.join(", "),
    );
    let mut result = format!("{summary}\n");
    if !leftovers.is_empty() {
        result.push_str(&format!(
            "note: faulted workers {leftovers:?} outlived the orchestrator's stop and were killed\n"
        ));
    }
    if let Some(t) = &trouble {
        result.push_str(&format!("trouble: {t}\n"));
    }
    result.push_str(&explanation);
    let dir = save(test, &history, &faults, &result, &o);
    println!("\n{summary}\n  history: {}", dir.display());
    let good = verdict.as_ref().is_some_and(Verdict::linearizable);
    assert!(
        good && trouble.is_none(),
        "{result}\nhistory, faults and result kept in {}",
        dir.display()
    );
}

fn options() -> Options {
    Options {
        slaves: SLAVES,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        extra_env: vec![(
            "DBAAS_ZK_SESSION_TIMEOUT_MS".into(),
            session_ms().to_string(),
        )],
        ..Options::default()
    }
}

#[tokio::test]
async fn strong_reads_writes_and_cas_stay_linearizable_under_a_master_nemesis() {
    let secs: u64 = env_or("JEPSEN_SECS", 10);
    let clients: u32 = env_or("JEPSEN_CLIENTS", 8);
    let live: u32 = env_or("JEPSEN_KEYS", 4).max(1);
    let per_key: u64 = env_or("JEPSEN_OPS_PER_KEY", 100).max(1);
    // Enough keys for 2 000 operations a second, at most 10 000.
    let total = u32::try_from((secs * 2000 / per_key).clamp(u64::from(live) * 4, 10_000))
        .unwrap_or(10_000)
        / live
        * live;
    let o = Arc::new(Orchestrator::start("jepsen", options()).await);
    seed(&o, total).await;
    let run = Run::new(&o.url);
    let keys = Arc::new(Keys::new(live, per_key, total));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(run.clone(), keys.clone(), id, clients, deadline)))
        .collect();
    let mut trouble = nemesis(o.clone(), run.clone(), nemesis_schedule(), deadline)
        .await
        .err();
    for w in workers {
        w.await.expect("client task");
    }
    if trouble.is_none() {
        trouble = settle(&o, None).await.err();
        let touched: std::collections::BTreeSet<u32> = run
            .history
            .lock()
            .expect("history lock")
            .iter()
            .map(|e| e.key)
            .collect();
        final_reads(&run, touched, u32::MAX).await;
    }
    conclude(
        o,
        "load",
        &run,
        trouble,
        &format!(", {clients} clients, {live} live keys, {per_key} ops a key, {secs} s"),
    )
    .await;
}

/// Final strong reads, one per key, by one fresh process once the cluster has
/// recovered (Jepsen's final reads): they show whether a value seen during a
/// fault survived it.
async fn final_reads(run: &Run, keys: impl IntoIterator<Item = u32>, process: u32) {
    let http = http_client(CLIENT_TIMEOUT);
    for key in keys {
        let e = run.perform(&http, (process, u32::MAX), key, Op::Read).await;
        let unknown = e.outcome == Outcome::Unknown;
        run.record(e);
        if unknown {
            return;
        }
    }
}

/// What one probe round saw.
#[derive(Default)]
struct ProbeCount {
    reads: usize,
    answered: usize,
    by_paused: usize,
}

/// One round of the probe on `key`: pause the master; once another worker is
/// master, write the key until a write is acknowledged (an attempt the paused
/// master holds stays pending, and another starts after a second); read it
/// strongly from `readers` connections at once; resume the old master 0.3 s
/// later. Then, once the cluster has recovered, a final read. Returns the
/// round's counts or what went wrong.
async fn probe_round(
    o: &Orchestrator,
    run: &Arc<Run>,
    key: u32,
    readers: u32,
    processes: &AtomicU32,
) -> Result<ProbeCount, String> {
    let next_process = || processes.fetch_add(1, Ordering::Relaxed);
    settle(o, None).await?;
    let start_ns = run.now_ns();
    let old = current_master(o).await.ok_or("no master")?;
    let paused = Paused::new(old);
    let new = master_other_than(o, old)
        .await
        .ok_or_else(|| format!("no worker replaced the paused master {old}"))?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut attempts = Vec::new();
    let mut acked = None;
    for _ in 0..20 {
        let value = run.fresh_value();
        let (run, done, process) = (run.clone(), done_tx.clone(), next_process());
        attempts.push(tokio::spawn(async move {
            let http = http_client(CLIENT_TIMEOUT);
            let e = run
                .perform(&http, (process, 0), key, Op::Write { value })
                .await;
            let _ = done.send((e.outcome == Outcome::Ok).then_some(value));
            e
        }));
        let patience = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(answer)) = tokio::time::timeout_at(patience, done_rx.recv()).await {
            if answer.is_some() {
                acked = answer;
                break;
            }
        }
        if acked.is_some() {
            break;
        }
    }
    let Some(value) = acked else {
        drop(paused);
        for a in attempts {
            run.record(a.await.expect("writer task"));
        }
        return Err(format!("no write acknowledged by the new master {new}"));
    };
    let resume_at = Instant::now() + Duration::from_millis(300);
    let reads: Vec<_> = (0..readers)
        .map(|client| {
            let (run, process) = (run.clone(), next_process());
            tokio::spawn(async move {
                let http = http_client(CLIENT_TIMEOUT);
                run.perform(&http, (process, client), key, Op::Read).await
            })
        })
        .collect();
    tokio::time::sleep_until(resume_at.into()).await;
    drop(paused);
    run.fault(
        Fault::PauseMaster,
        old,
        start_ns,
        format!("probe round on key {key}: worker {new} master, write of {value} acknowledged"),
    );
    let mut count = ProbeCount::default();
    for r in reads {
        let e = r.await.expect("reader task");
        count.reads += 1;
        if e.outcome == Outcome::Ok {
            count.answered += 1;
            count.by_paused += usize::from(e.worker == Some(old));
        }
        run.record(e);
    }
    for a in attempts {
        run.record(a.await.expect("writer task"));
    }
    settle(o, None).await?;
    final_reads(run, [key], next_process()).await;
    Ok(count)
}

#[tokio::test]
async fn a_paused_master_never_answers_a_strong_read() {
    let rounds: u32 = env_or("JEPSEN_PROBE_ROUNDS", 6);
    let readers = 8;
    let o = Arc::new(Orchestrator::start("jepsen-probe", options()).await);
    seed(&o, rounds).await;
    let run = Run::new(&o.url);
    let processes = AtomicU32::new(0);
    let mut trouble = None;
    let mut total = ProbeCount::default();
    let mut rounds_answered_by_paused = 0;
    for key in 0..rounds {
        match probe_round(&o, &run, key, readers, &processes).await {
            Ok(c) => {
                rounds_answered_by_paused += u32::from(c.by_paused > 0);
                total.reads += c.reads;
                total.answered += c.answered;
                total.by_paused += c.by_paused;
            }
            Err(e) => {
                trouble = Some(e);
                break;
            }
        }
    }
    // A deposed master must not sit on the reads it was handed either: the
    // issue asks that at least 90 % of the probe's strong reads be answered.
    if trouble.is_none() && total.answered * 10 < total.reads * 9 {
        trouble = Some(format!(
            "only {} of {} strong reads were answered",
            total.answered, total.reads
        ));
    }
    conclude(
        o,
        "probe",
        &run,
        trouble,
        &format!(
            ", {rounds} rounds: {} of {} strong reads answered, {} by the paused master \
             (in {rounds_answered_by_paused} round(s))",
            total.answered, total.reads, total.by_paused,
        ),
    )
    .await;
}

/// Re-checks a saved history: `JEPSEN_HISTORY=target/tmp/jepsen/<run>/history.jsonl`.
#[test]
#[ignore = "needs JEPSEN_HISTORY"]
fn recheck_a_saved_history() {
    let path = std::env::var("JEPSEN_HISTORY").expect("JEPSEN_HISTORY names a history.jsonl");
    let text = std::fs::read_to_string(&path).expect("read the history");
    let history: Vec<Entry> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a history line"))
        .collect();
    let v = check_bounded(history).expect("the checker finished");
    for (_, why) in &v.violations {
        println!("{why}");
    }
    println!(
        "{} operations checked on {} keys in {:?}: {}",
        v.ops_checked,
        v.keys,
        v.elapsed,
        if v.linearizable() {
            "linearizable"
        } else {
            "NOT linearizable"
        }
    );
    assert!(v.linearizable());
}
