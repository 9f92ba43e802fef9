//! `scripts/bench`: measures the DBaaS against the broker's own RPC limit on the
//! same machine in the same run, plus failover, catch-up and scaling times and
//! peak memory. Writes bench/results/latest.md and latest.json.
//! `BENCH_SMOKE=1` runs everything with tiny sizes (CI). For quick comparisons
//! while working on one path, `BENCH_PARTS` (e.g. `broker,http`), `BENCH_WORKLOADS`
//! (e.g. `point read`) and `BENCH_CONCURRENCY` (e.g. `16`) narrow the run; a
//! narrowed run writes bench/results/partial.* instead of latest.*.

#[path = "../integration/common/mod.rs"]
mod common;
mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sigkill, slave_pids, wait_until, Options, Orchestrator};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use shared::{narrowed, smoke, wanted};
use tokio::sync::oneshot;

struct Sizes {
    load_secs: f64,
    concurrency: Vec<usize>,
    failover_runs: usize,
    catch_up_rows: Vec<usize>,
    replay_rows: usize,
}

fn sizes() -> Sizes {
    let mut sizes = default_sizes();
    if let Some(c) = narrowed("BENCH_CONCURRENCY") {
        sizes.concurrency = c.iter().filter_map(|c| c.parse().ok()).collect();
    }
    if let Some(secs) = std::env::var("BENCH_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        sizes.load_secs = secs;
    }
    sizes
}

fn default_sizes() -> Sizes {
    if smoke() {
        Sizes {
            load_secs: 0.5,
            concurrency: vec![1, 4],
            failover_runs: 1,
            catch_up_rows: vec![1000],
            replay_rows: 500,
        }
    } else {
        Sizes {
            load_secs: 3.0,
            concurrency: vec![1, 16, 64],
            failover_runs: 5,
            catch_up_rows: vec![10_000, 100_000, 1_000_000],
            replay_rows: 10_000,
        }
    }
}

/// Latencies of one load run.
struct Run {
    ok: usize,
    failed: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut l = self.lat.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }
    fn json(&self) -> Value {
        json!({"ok": self.ok, "failed": self.failed, "rps": self.rps(), "p50_ms": self.pct(0.5), "p99_ms": self.pct(0.99), "p999_ms": self.pct(0.999)})
    }
}

/// Runs `op` from `concurrency` tasks for `secs` seconds.
async fn load<F, Fut>(concurrency: usize, secs: f64, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut ok, mut failed) = (Vec::new(), 0, 0);
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if op(n).await {
                    ok += 1;
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, ok, failed)
        }));
    }
    let mut run = Run {
        ok: 0,
        failed: 0,
        secs: 0.0,
        lat: Vec::new(),
    };
    for t in tasks {
        if let Ok((lat, ok, failed)) = t.await {
            run.lat.extend(lat);
            run.ok += ok;
            run.failed += failed;
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    run
}

/// A minimal lapin RPC loop (client publishes with reply_to + correlation id,
/// a server replies): the physical limit of this design on this machine.
async fn broker_limit(concurrency: usize, secs: f64, request: Vec<u8>, reply: Vec<u8>) -> Run {
    let ns = common::namespace("bench-broker").await;
    // Client and server each with their own connection, as the orchestrator and
    // a worker have (one connection would make its I/O thread the limit).
    let connect = |name| dbaas::broker::open(&ns.amqp_url, name, Duration::from_secs(10));
    let conn = connect("bench-server").await.expect("amqp");
    let client_conn = connect("bench-client").await.expect("amqp");
    let server = conn.create_channel().await.expect("channel");
    server.basic_qos(64, Default::default()).await.expect("qos");
    server
        .queue_declare(
            "bench.rpc".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut requests = server
        .basic_consume(
            "bench.rpc".into(),
            "server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let replies_ch = conn.create_channel().await.expect("channel");
    tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let mut props = BasicProperties::default();
            if let Some(id) = d.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            if let Some(to) = d.properties.reply_to().clone() {
                let _ = replies_ch
                    .basic_publish("".into(), to, BasicPublishOptions::default(), &reply, props)
                    .await;
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    let client = client_conn.create_channel().await.expect("channel");
    client
        .queue_declare(
            "bench.replies".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let mut replies = client
        .basic_consume(
            "bench.replies".into(),
            "client".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let w = waiting.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = replies.next().await {
            if let Some(id) = d.properties.correlation_id() {
                if let Some(tx) = w.lock().ok().and_then(|mut m| m.remove(id.as_str())) {
                    let _ = tx.send(());
                }
            }
        }
    });
    let request = Arc::new(request);
    load(concurrency, secs, move |n| {
        let (client, waiting, request) = (client.clone(), waiting.clone(), request.clone());
        async move {
            let id = n.to_string();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut m) = waiting.lock() {
                m.insert(id.clone(), tx);
            }
            let props = BasicProperties::default()
                .with_correlation_id(id.into())
                .with_reply_to("bench.replies".into());
            if client
                .basic_publish(
                    "".into(),
                    "bench.rpc".into(),
                    BasicPublishOptions::default(),
                    &request,
                    props,
                )
                .await
                .is_err()
            {
                return false;
            }
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_ok_and(|r| r.is_ok())
        }
    })
    .await
}

async fn post_ok(http: &reqwest::Client, url: &str, body: &Value) -> bool {
    http.post(url)
        .json(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Inserts `rows` users in batches of 1000 (or one per write when `single`).
async fn populate(o: &Orchestrator, prefix: &str, rows: usize, single: bool) -> u64 {
    let url = o.url("/api/v1/db/write");
    let batch = if single { 1 } else { 1000 };
    let chunks: Vec<usize> = (0..rows).step_by(batch).collect();
    let last = Arc::new(Mutex::new(0u64));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, url, chunks, next, last, prefix) = (
            o.http.clone(),
            url.clone(),
            chunks.clone(),
            next.clone(),
            last.clone(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&start) = chunks.get(i) else { break };
                let rows: Vec<Value> = (start..(start + batch).min(rows))
                    .map(|r| json!({"username": format!("{prefix}{r:07}"), "password": "p"}))
                    .collect();
                let r = http
                    .post(&url)
                    .json(&json!({"table": "users", "insert": rows}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<Value>().await {
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        if let Ok(mut l) = last.lock() {
                            *l = (*l).max(seq);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seq = *last.lock().expect("lock");
    seq
}

/// Time from crashing a slave until its replacement serves a read at `seq`.
async fn join_time(o: &Orchestrator, seq: u64, rows: usize) -> f64 {
    let old = slave_pids(&o.status().await);
    let started = Instant::now();
    let (status, _) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(status, 200);
    wait_until("new slave serving", Duration::from_secs(600), || async {
        let s = o.status().await;
        let new: Vec<u64> = slave_pids(&s)
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect();
        let new = *new.first()?;
        let (st, body) = o
            .read(json!({"table": "users", "count": true, "min_seq": seq}))
            .await;
        (st == 200
            && body["worker"].as_u64() == Some(new)
            && body["rows"][0]["count"].as_u64() >= Some(rows as u64))
        .then_some(())
    })
    .await
    .expect("new slave served");
    started.elapsed().as_secs_f64()
}

/// Seconds from `started` (just before the master was crashed) to the first
/// write that succeeds.
async fn first_write_after(o: &Orchestrator, tag: &str, started: Instant) -> f64 {
    let mut i = 0;
    loop {
        i += 1;
        let body = json!({"table": "users", "insert": {"username": format!("{tag}-{i}"), "password": "p"}});
        if post_ok(&o.http, &o.url("/api/v1/db/write"), &body).await {
            return started.elapsed().as_secs_f64();
        }
    }
}

fn peak_kib(pid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn min_med_max(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({"min": v.first(), "median": v.get(v.len() / 2), "max": v.last(), "runs": v.len()})
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to test here.
    if !shared::under_cargo_bench("dbaas") {
        return;
    }
    let sz = sizes();
    let mut report = serde_json::Map::new();
    let mut md = String::from("# DBaaS benchmark\n\n");
    md.push_str(&format!(
        "{} One run; ratios compare figures of this same run.\n\n",
        shared::machine()
    ));

    // 1. The broker's own RPC limit, with the payload sizes of real requests.
    let read_body =
        json!({"request": {"table": "users", "where": {"username": {"=": "u0000042"}}}})
            .to_string()
            .into_bytes();
    let reply_body = json!({"read": {"rows": [{"username": "u0000042", "password": "p"}], "seq": 1000, "worker": 12345}}).to_string().into_bytes();
    let mut broker = HashMap::new();
    if wanted("BENCH_PARTS", "broker") {
        md.push_str("## Broker RPC limit (lapin, same machine)\n\n| concurrency | req/s | p50 ms | p99 ms | p999 ms |\n|---|---|---|---|---|\n");
        for &c in &sz.concurrency {
            let r = broker_limit(c, sz.load_secs, read_body.clone(), reply_body.clone()).await;
            md.push_str(&format!(
                "| {c} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
                r.rps(),
                r.pct(0.5),
                r.pct(0.99),
                r.pct(0.999)
            ));
            broker.insert(c, r.rps());
            report.insert(format!("broker_c{c}"), r.json());
        }
    }

    // 2. Through the orchestrator's HTTP API (and 3. failover, on the same system).
    if wanted("BENCH_PARTS", "http") || wanted("BENCH_PARTS", "failover") {
        let o = Arc::new(
            Orchestrator::start(
                "bench-http",
                Options {
                    slaves: 1,
                    ..Options::default()
                },
            )
            .await,
        );
        populate(&o, "u", 10_000, false).await;
        let rides: Vec<Value> = (0..1000)
        .map(|i| json!({"created_by": "u0000001", "timestamp": format!("2031-01-{:02} 10:00:00", 1 + i % 28), "source": 1 + i % 10, "destination": 2}))
        .collect();
        assert!(
            post_ok(
                &o.http,
                &o.url("/api/v1/db/write"),
                &json!({"table": "rides", "insert": rides})
            )
            .await
        );
        if wanted("BENCH_PARTS", "http") {
            md.push_str("\n## Through the orchestrator (HTTP → RabbitMQ → worker → HTTP)\n\n| workload | concurrency | req/s | ratio to broker limit | p50 ms | p99 ms | p999 ms | failed |\n|---|---|---|---|---|---|---|---|\n");
            let workloads: Vec<&str> = vec![
                "point read",
                "strong point read",
                "range read",
                "insert",
                "90/10 mix",
            ];
            for w in workloads.iter().filter(|w| wanted("BENCH_WORKLOADS", w)) {
                for &c in &sz.concurrency {
                    let (http, read_url, write_url) = (
                        o.http.clone(),
                        o.url("/api/v1/db/read"),
                        o.url("/api/v1/db/write"),
                    );
                    let kind = w.to_string();
                    let r = load(c, sz.load_secs, move |n| {
                let (http, read_url, write_url, kind) = (http.clone(), read_url.clone(), write_url.clone(), kind.clone());
                async move {
                    let point = json!({"table": "users", "where": {"username": format!("u{:07}", n % 10_000)}});
                    let range = json!({"table": "rides", "columns": ["ride_id", "created_by", "timestamp"], "where": {"source": 1 + (n % 10) as i64, "timestamp": {">": "2031-01-10 00:00:00"}}, "order_by": [{"column": "timestamp"}], "limit": 20});
                    let insert = json!({"table": "users", "insert": {"username": format!("{kind}-{n}-{}", uuid::Uuid::new_v4().simple()), "password": "p"}});
                    match kind.as_str() {
                        "point read" => post_ok(&http, &read_url, &point).await,
                        "strong point read" => {
                            let mut strong = point;
                            strong["consistency"] = json!("strong");
                            post_ok(&http, &read_url, &strong).await
                        }
                        "range read" => post_ok(&http, &read_url, &range).await,
                        "insert" => post_ok(&http, &write_url, &insert).await,
                        _ if n % 10 == 0 => post_ok(&http, &write_url, &insert).await,
                        _ => post_ok(&http, &read_url, &point).await,
                    }
                }
            })
            .await;
                    let ratio = r.rps() / broker.get(&c).copied().unwrap_or(f64::NAN);
                    md.push_str(&format!(
                        "| {w} | {c} | {:.0} | {:.0}% | {:.2} | {:.2} | {:.2} | {} |\n",
                        r.rps(),
                        ratio * 100.0,
                        r.pct(0.5),
                        r.pct(0.99),
                        r.pct(0.999),
                        r.failed
                    ));
                    let mut j = r.json();
                    j["ratio_to_broker"] = json!(ratio);
                    report.insert(format!("{w} c{c}"), j);
                }
            }
            // Peak memory after the load.
            let status = o.status().await;
            let mut mem = vec![("orchestrator".to_string(), o.pid().and_then(peak_kib))];
            for w in status["workers"].as_array().cloned().unwrap_or_default() {
                let pid = w["pid"].as_u64().unwrap_or(0);
                mem.push((
                    format!("worker {} ({})", pid, w["role"].as_str().unwrap_or("")),
                    peak_kib(pid),
                ));
            }
            md.push_str(
        "\n## Peak memory (VmHWM) after the load above\n\n| process | peak MiB |\n|---|---|\n",
    );
            for (name, kib) in &mem {
                md.push_str(&format!(
                    "| {name} | {} |\n",
                    kib.map(|k| format!("{:.1}", k as f64 / 1024.0))
                        .unwrap_or("?".into())
                ));
            }
            report.insert(
                "peak_memory_kib".into(),
                json!(mem
                    .iter()
                    .map(|(n, k)| (n.clone(), json!(k)))
                    .collect::<serde_json::Map<_, _>>()),
            );
        }

        // 3. Failover.
        if wanted("BENCH_PARTS", "failover") {
            let (mut by_api, mut by_kill) = (Vec::new(), Vec::new());
            for run in 0..sz.failover_runs {
                o.wait_for_workers(1).await;
                let started = Instant::now();
                let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
                assert_eq!(status, 200);
                by_api.push(first_write_after(&o, &format!("fa{run}"), started).await);
                let s = o.wait_for_workers(1).await;
                let master = s["master"].as_u64().expect("master");
                let started = Instant::now();
                sigkill(master);
                by_kill.push(first_write_after(&o, &format!("fk{run}"), started).await);
            }
            md.push_str(&format!(
        "\n## Failover: to the first successful write ({} runs)\n\n| cause | min s | median s | max s |\n|---|---|---|---|\n",
        sz.failover_runs
    ));
            for (name, v) in [
                ("crash/master API", &by_api),
                ("SIGKILL of the master", &by_kill),
            ] {
                let j = min_med_max(v.clone());
                md.push_str(&format!(
                    "| {name} | {:.3} | {:.3} | {:.3} |\n",
                    j["min"].as_f64().unwrap_or(0.0),
                    j["median"].as_f64().unwrap_or(0.0),
                    j["max"].as_f64().unwrap_or(0.0)
                ));
                report.insert(format!("failover {name}"), j);
            }
        }
        drop(o);
    }

    // 4. Catch-up of a new slave: snapshot vs replaying the whole history.
    if wanted("BENCH_PARTS", "catchup") {
        md.push_str("\n## Catch-up: crash/slave until the replacement serves a read of the latest write\n\n| rows | history (writes) | mode | seconds |\n|---|---|---|---|\n");
        for (mode, env) in [("snapshot", "snapshot"), ("replay", "replay")] {
            let o = Orchestrator::start(
                &format!("bench-catchup-{mode}"),
                Options {
                    extra_env: vec![("DBAAS_CATCH_UP".into(), env.into())],
                    ..Options::default()
                },
            )
            .await;
            // Single-row history: here replay pays for every write ever made.
            let seq = populate(&o, "h", sz.replay_rows, true).await;
            let t = join_time(&o, seq, sz.replay_rows).await;
            md.push_str(&format!(
                "| {} | {} | {mode} | {t:.2} |\n",
                sz.replay_rows, sz.replay_rows
            ));
            report.insert(
                format!("catch-up {} single-row writes {mode}", sz.replay_rows),
                json!(t),
            );
        }
        let o = Orchestrator::start("bench-catchup-sizes", Options::default()).await;
        let mut have = 0;
        for &rows in &sz.catch_up_rows {
            let seq = populate(&o, &format!("s{rows}-"), rows - have, false).await;
            have = rows;
            let t = join_time(&o, seq, rows).await;
            md.push_str(&format!("| {rows} | {seq} | snapshot | {t:.2} |\n"));
            report.insert(format!("catch-up {rows} rows snapshot"), json!(t));
        }
        drop(o);
    }

    // 5. Scaling: from the decision to the new slaves serving.
    if wanted("BENCH_PARTS", "scaling") {
        let o = Orchestrator::start(
            "bench-scale",
            Options {
                scale_interval_secs: 2,
                ..Options::default()
            },
        )
        .await;
        for _ in 0..45 {
            o.read(json!({"table": "users", "count": true})).await;
        }
        let served = wait_until("3 slaves", Duration::from_secs(60), || async {
            let s = o.status().await;
            (slave_pids(&s).len() == 3).then_some(chrono::Utc::now().timestamp_millis())
        })
        .await
        .expect("scaled out");
        let decided = o.status().await["scaler"]["decisions"][0]["at_ms"]
            .as_i64()
            .unwrap_or(served);
        let scale_secs = (served - decided) as f64 / 1000.0;
        md.push_str(&format!("\n## Scaling\n\nFrom the decision (45 reads → 3 slaves) to both new slaves serving reads: {scale_secs:.2} s.\n"));
        report.insert("scale-out decision to serving".into(), json!(scale_secs));
        drop(o);
    }

    // A smoke run (CI) or a narrowed one must not overwrite the published figures.
    let name = if smoke() {
        "smoke"
    } else if [
        "BENCH_PARTS",
        "BENCH_WORKLOADS",
        "BENCH_CONCURRENCY",
        "BENCH_LOAD_SECS",
    ]
    .iter()
    .any(|v| narrowed(v).is_some())
    {
        "partial"
    } else {
        "latest"
    };
    shared::write_results(name, &md, &Value::Object(report));
}
