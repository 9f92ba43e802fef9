//! The measuring half of the `dbaas` bench (`main.rs`): each part runs the
//! system (or the bare broker) and returns its figures as data; `report.rs`
//! turns them into bench/results/*.md and *.json.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::harness::{self, sigkill, slave_pids, wait_until, Options, Orchestrator};
use crate::shared::{narrowed, smoke, wanted};

/// How much of each part to run.
pub struct Sizes {
    pub load_secs: f64,
    pub concurrency: Vec<usize>,
    pub failover_runs: usize,
    pub catch_up_rows: Vec<usize>,
    pub replay_rows: usize,
}

impl Sizes {
    /// The full run, or tiny sizes with `BENCH_SMOKE=1`; `BENCH_CONCURRENCY`
    /// and `BENCH_LOAD_SECS` override.
    pub fn from_env() -> Sizes {
        let mut sizes = if smoke() {
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
        };
        if let Some(c) = narrowed("BENCH_CONCURRENCY") {
            sizes.concurrency = c.iter().filter_map(|c| c.parse().ok()).collect();
        }
        let secs = std::env::var("BENCH_LOAD_SECS").ok();
        if let Some(secs) = secs.and_then(|s| s.parse().ok()) {
            sizes.load_secs = secs;
        }
        sizes
    }
}

/// Latencies of one load run.
pub struct Run {
    pub ok: usize,
    pub failed: usize,
    pub secs: f64,
    pub lat: Vec<Duration>,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// The `p` quantile of the latencies, in milliseconds.
    pub fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut l = self.lat.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }
}

/// Runs `op` from `concurrency` tasks for `secs` seconds.
pub async fn load<F, Fut>(concurrency: usize, secs: f64, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
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

// ---------------------------------------------------------- 1. broker limit

/// The broker's own limits at each concurrency (issue 17's yardsticks), with
/// the payload sizes of a real point read, its reply and a ride insert.
pub async fn broker(sz: &Sizes) -> Vec<(usize, Ceilings)> {
    let read = json!({"request": {"table": "users", "where": {"username": {"=": "u0000042"}}}});
    let reply = json!({"read": {
        "rows": [{"username": "u0000042", "password": "p"}], "seq": 1000, "worker": 12345,
    }});
    let write = json!({"write_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "request": {
        "table": "rides", "insert": {"created_by": "u0000042", "source": 1, "destination": 2,
        "timestamp": "2026-11-26 10:00:00"}}});
    let (request, reply, write) = (
        read.to_string().into_bytes(),
        reply.to_string().into_bytes(),
        write.to_string().into_bytes(),
    );
    let mut runs = Vec::new();
    for &c in &sz.concurrency {
        let rpc = |server| Rpc {
            server,
            request: request.clone(),
            reply: reply.clone(),
            replies: ReplyRoute::Shared,
        };
        let one_at_a_time = broker_limit(c, sz.load_secs, rpc(Server::OneAtATime)).await;
        let rpc_ceiling = broker_limit(c, sz.load_secs, rpc(Server::Concurrent)).await;
        let write_floor = broker_limit(
            c,
            sz.load_secs,
            Rpc {
                server: Server::ReplicatedWrite,
                request: write.clone(),
                reply: reply.clone(),
                replies: ReplyRoute::Shared,
            },
        )
        .await;
        runs.push((
            c,
            Ceilings {
                one_at_a_time,
                rpc_ceiling,
                write_floor,
            },
        ));
    }
    runs
}

/// The broker's own figures at one concurrency, the yardsticks of the HTTP
/// figures measured in the same run.
pub struct Ceilings {
    /// RPC with a server that handles one delivery at a time (a worker's
    /// shape, not the broker's limit).
    pub one_at_a_time: Run,
    /// RPC with a server that handles each delivery concurrently and replies
    /// at once: the ceiling for reads.
    pub rpc_ceiling: Run,
    /// A persistent request on a durable queue, publisher-confirmed; the
    /// server appends it to a stream (confirmed), then replies and acks, each
    /// delivery concurrently; no database: the floor under a replicated,
    /// acknowledged write.
    pub write_floor: Run,
}

/// How the bench's server handles `bench.rpc` deliveries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    OneAtATime,
    Concurrent,
    ReplicatedWrite,
}

struct Rpc {
    server: Server,
    request: Vec<u8>,
    reply: Vec<u8>,
    replies: ReplyRoute,
}

/// Where the bench's client receives its replies (issue 20: one reply
/// destination per orchestrator).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplyRoute {
    /// A named queue, `bench.replies`, the shape of the shared `responseQ`.
    Shared,
    /// An exclusive, auto-delete, server-named queue of the client's own.
    Exclusive,
    /// RabbitMQ's direct reply-to: a no-ack consumer on
    /// `amq.rabbitmq.reply-to` on the channel the requests go out on.
    Direct,
}

impl ReplyRoute {
    pub fn label(self) -> &'static str {
        match self {
            ReplyRoute::Shared => "shared named queue (responseQ)",
            ReplyRoute::Exclusive => "exclusive auto-delete queue",
            ReplyRoute::Direct => "direct reply-to",
        }
    }
}

async fn declare(ch: &Channel, queue: &str) {
    declare_with(
        ch,
        queue,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
}

async fn declare_with(ch: &Channel, queue: &str, opts: QueueDeclareOptions, args: FieldTable) {
    ch.queue_declare(queue.into(), opts, args)
        .await
        .expect("declare");
}

/// Replies to `d` on `channel` with `reply`, then acks it.
async fn answer(channel: &Channel, d: &lapin::message::Delivery, reply: &[u8]) {
    let mut props = BasicProperties::default();
    if let Some(id) = d.properties.correlation_id() {
        props = props.with_correlation_id(id.clone());
    }
    if let Some(to) = d.properties.reply_to().clone() {
        let publish = BasicPublishOptions::default();
        let _ = channel
            .basic_publish("".into(), to, publish, reply, props)
            .await;
    }
    let _ = d.ack(BasicAckOptions::default()).await;
}

/// A minimal lapin RPC loop (client publishes with reply_to + correlation id,
/// a server replies) in the shape `rpc.server` says: the broker's own limits
/// on this machine, in a namespace of their own.
async fn broker_limit(concurrency: usize, secs: f64, rpc: Rpc) -> Run {
    let ns = harness::namespace("bench-broker").await;
    // Client and server each with their own connection, as the orchestrator and
    // a worker have (one connection would make its I/O thread the limit).
    let connect = |name| dbaas::broker::open(&ns.amqp_url, name, Duration::from_secs(10));
    let conn = connect("bench-server").await.expect("amqp");
    let client_conn = connect("bench-client").await.expect("amqp");
    let server = conn.create_channel().await.expect("channel");
    server
        .basic_qos(256, Default::default())
        .await
        .expect("qos");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let writes = rpc.server == Server::ReplicatedWrite;
    if writes {
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        declare_with(&server, "bench.rpc", durable, quorum).await;
        let mut stream = FieldTable::default();
        stream.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        declare_with(&server, "bench.log", durable, stream).await;
    } else {
        declare(&server, "bench.rpc").await;
    }
    let (opts, args) = (BasicConsumeOptions::default(), FieldTable::default());
    let mut requests = server
        .basic_consume("bench.rpc".into(), "server".into(), opts, args)
        .await
        .expect("consume");
    let replies_ch = conn.create_channel().await.expect("channel");
    let log = dbaas::broker::confirmed_channel(&conn)
        .await
        .expect("channel");
    let (shape, reply) = (rpc.server, Arc::new(rpc.reply));
    tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let (replies_ch, log, reply) = (replies_ch.clone(), log.clone(), reply.clone());
            let handle = async move {
                if shape == Server::ReplicatedWrite {
                    let props = BasicProperties::default().with_delivery_mode(2);
                    let publish = BasicPublishOptions::default();
                    let appended = match log
                        .basic_publish("".into(), "bench.log".into(), publish, &d.data, props)
                        .await
                    {
                        Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
                        Err(_) => false,
                    };
                    if !appended {
                        return;
                    }
                }
                answer(&replies_ch, &d, &reply).await;
            };
            if shape == Server::OneAtATime {
                handle.await;
            } else {
                tokio::spawn(handle);
            }
        }
    });
    let client = if writes {
        dbaas::broker::confirmed_channel(&client_conn)
            .await
            .expect("channel")
    } else {
        client_conn.create_channel().await.expect("channel")
    };
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let reply_to: String = match rpc.replies {
        ReplyRoute::Shared => {
            declare(&client, "bench.replies").await;
            "bench.replies".into()
        }
        ReplyRoute::Exclusive => {
            let own = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            };
            let q = client
                .queue_declare("".into(), own, FieldTable::default())
                .await
                .expect("declare");
            q.name().to_string()
        }
        ReplyRoute::Direct => "amq.rabbitmq.reply-to".into(),
    };
    let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let consume_from = match rpc.replies {
        ReplyRoute::Direct => "amq.rabbitmq.reply-to".to_string(),
        _ => reply_to.clone(),
    };
    let mut replies = client
        .basic_consume(
            consume_from.as_str().into(),
            "client".into(),
            no_ack,
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
    let request = Arc::new(rpc.request);
    let reply_to = Arc::new(reply_to);
    load(concurrency, secs, move |n| {
        let (client, waiting, request, reply_to) = (
            client.clone(),
            waiting.clone(),
            request.clone(),
            reply_to.clone(),
        );
        async move {
            let id = n.to_string();
            let (tx, rx) = oneshot::channel();
            if let Ok(mut m) = waiting.lock() {
                m.insert(id.clone(), tx);
            }
            let mut props = BasicProperties::default()
                .with_correlation_id(id.into())
                .with_reply_to(reply_to.as_str().into());
            if writes {
                props = props.with_delivery_mode(2);
            }
            let publish = BasicPublishOptions::default();
            let sent = client
                .basic_publish("".into(), "bench.rpc".into(), publish, &request, props)
                .await;
            let Ok(confirm) = sent else { return false };
            // A write counts once the broker has it (confirm) and it is answered.
            if writes && !confirm.await.is_ok_and(|c| c.is_ack()) {
                return false;
            }
            let answered = tokio::time::timeout(Duration::from_secs(5), rx).await;
            answered.is_ok_and(|r| r.is_ok())
        }
    })
    .await
}

/// One run of the reply-route comparison.
pub struct RouteRun {
    pub concurrency: usize,
    /// 1, 2, ...: the rounds alternate the routes (A B C A B C) so that the
    /// machine's drift shows as spread, not as a difference.
    pub round: usize,
    /// `rpc` (the RPC ceiling's server) or `write` (the replicated-write
    /// floor's: the request on a confirm channel).
    pub shape: &'static str,
    pub route: ReplyRoute,
    pub run: Run,
}

/// Issue 20: the RPC ceiling with each way of receiving replies, and the
/// replicated-write floor (requests published on a confirm channel) with the
/// shared queue and with direct reply-to, interleaved in `rounds` rounds,
/// each round starting with the next route.
pub async fn reply_routes(sz: &Sizes, rounds: usize) -> Vec<RouteRun> {
    let request = json!({"request": {"table": "users", "where": {"username": {"=": "u0000042"}}}});
    let reply = json!({"read": {
        "rows": [{"username": "u0000042", "password": "p"}], "seq": 1000, "worker": 12345,
    }});
    let write = json!({"write_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "request": {
        "table": "rides", "insert": {"created_by": "u0000042", "source": 1, "destination": 2,
        "timestamp": "2026-11-26 10:00:00"}}});
    let (request, reply, write) = (
        request.to_string().into_bytes(),
        reply.to_string().into_bytes(),
        write.to_string().into_bytes(),
    );
    let mut runs = Vec::new();
    for &c in &sz.concurrency {
        for round in 1..=rounds {
            // Each round starts with another route (A B C, B C A, C A B), so
            // a machine that gets busier during a round favours none of them.
            let mut rpc = [
                ReplyRoute::Shared,
                ReplyRoute::Exclusive,
                ReplyRoute::Direct,
            ];
            rpc.rotate_left((round - 1) % 3);
            let mut writes = [ReplyRoute::Shared, ReplyRoute::Direct];
            writes.rotate_left((round - 1) % 2);
            let shapes = rpc
                .into_iter()
                .map(|r| ("rpc", Server::Concurrent, &request, r))
                .chain(
                    writes
                        .into_iter()
                        .map(|r| ("write", Server::ReplicatedWrite, &write, r)),
                );
            for (shape, server, body, route) in shapes {
                let rpc = Rpc {
                    server,
                    request: body.clone(),
                    reply: reply.clone(),
                    replies: route,
                };
                let run = broker_limit(c, sz.load_secs, rpc).await;
                runs.push(RouteRun {
                    concurrency: c,
                    round,
                    shape,
                    route,
                    run,
                });
            }
        }
    }
    runs
}

// ----------------------------------------- 2. through the orchestrator's HTTP

/// The workloads of part 2, as `BENCH_WORKLOADS` names them.
const WORKLOADS: [&str; 5] = [
    "point read",
    "strong point read",
    "range read",
    "insert",
    "90/10 mix",
];

pub async fn post_ok(http: &reqwest::Client, url: &str, body: &Value) -> bool {
    let answer = http.post(url).json(body).send().await;
    answer.is_ok_and(|r| r.status().is_success())
}

/// A master and a slave with 10 000 users and 1 000 rides loaded.
pub async fn loaded_system() -> Orchestrator {
    loaded_system_with(1).await
}

/// A master and `slaves` slaves with 10 000 users and 1 000 rides loaded.
pub async fn loaded_system_with(slaves: usize) -> Orchestrator {
    let o = Orchestrator::start(
        "bench-http",
        Options {
            slaves,
            ..Options::default()
        },
    )
    .await;
    populate(&o, "u", 10_000, false).await;
    let rides: Vec<Value> = (0..1000)
        .map(|i| {
            json!({
                "created_by": "u0000001",
                "timestamp": format!("2031-01-{:02} 10:00:00", 1 + i % 28),
                "source": 1 + i % 10,
                "destination": 2,
            })
        })
        .collect();
    let insert = json!({"table": "rides", "insert": rides});
    assert!(post_ok(&o.http, &o.url("/api/v1/db/write"), &insert).await);
    o
}

/// One request of `workload`; the `n`th of the run.
pub async fn request(http: reqwest::Client, o_url: Arc<String>, workload: &str, n: usize) -> bool {
    let (read_url, write_url) = (
        format!("{o_url}/api/v1/db/read"),
        format!("{o_url}/api/v1/db/write"),
    );
    let point = json!({"table": "users", "where": {"username": format!("u{:07}", n % 10_000)}});
    let range = json!({
        "table": "rides",
        "columns": ["ride_id", "created_by", "timestamp"],
        "where": {"source": 1 + (n % 10) as i64, "timestamp": {">": "2031-01-10 00:00:00"}},
        "order_by": [{"column": "timestamp"}],
        "limit": 20,
    });
    let name = format!("{workload}-{n}-{}", uuid::Uuid::new_v4().simple());
    let insert = json!({"table": "users", "insert": {"username": name, "password": "p"}});
    match workload {
        "point read" => post_ok(&http, &read_url, &point).await,
        "strong point read" => {
            let mut strong = point;
            strong["consistency"] = json!("strong");
            post_ok(&http, &read_url, &strong).await
        }
        "range read" => post_ok(&http, &read_url, &range).await,
        "insert" => post_ok(&http, &write_url, &insert).await,
        _ if n.is_multiple_of(10) => post_ok(&http, &write_url, &insert).await,
        _ => post_ok(&http, &read_url, &point).await,
    }
}

/// Each wanted workload at each concurrency: (workload, concurrency, run).
pub async fn http(o: &Orchestrator, sz: &Sizes) -> Vec<(&'static str, usize, Run)> {
    let mut runs = Vec::new();
    for w in WORKLOADS
        .into_iter()
        .filter(|w| wanted("BENCH_WORKLOADS", w))
    {
        for &c in &sz.concurrency {
            let (http, base) = (o.http.clone(), Arc::new(o.url.clone()));
            let run = load(c, sz.load_secs, move |n| {
                request(http.clone(), base.clone(), w, n)
            })
            .await;
            runs.push((w, c, run));
        }
    }
    runs
}

/// The peak memory (VmHWM, KiB) of a process, if it can be read.
fn peak_kib(pid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 3. Peak memory of the orchestrator and each worker: (process, KiB).
pub async fn peak_memory(o: &Orchestrator) -> Vec<(String, Option<u64>)> {
    let status = o.status().await;
    let mut mem = vec![("orchestrator".to_string(), o.pid().and_then(peak_kib))];
    for w in status["workers"].as_array().cloned().unwrap_or_default() {
        let pid = w["pid"].as_u64().unwrap_or(0);
        let role = w["role"].as_str().unwrap_or("");
        mem.push((format!("worker {pid} ({role})"), peak_kib(pid)));
    }
    mem
}

// ------------------------------------------------------------- 4. failover

/// Seconds to the first successful write after each `crash/master` call and
/// after each SIGKILL of the master.
pub struct Failover {
    pub by_api: Vec<f64>,
    pub by_kill: Vec<f64>,
}

/// Seconds from `started` (just before the master was crashed) to the first
/// write that succeeds.
async fn first_write_after(o: &Orchestrator, tag: &str, started: Instant) -> f64 {
    let url = o.url("/api/v1/db/write");
    for i in 1.. {
        let user = json!({"username": format!("{tag}-{i}"), "password": "p"});
        if post_ok(&o.http, &url, &json!({"table": "users", "insert": user})).await {
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

pub async fn failover(o: &Orchestrator, runs: usize) -> Failover {
    let (mut by_api, mut by_kill) = (Vec::new(), Vec::new());
    for run in 0..runs {
        o.wait_for_workers(1).await;
        let started = Instant::now();
        let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
        assert_eq!(status, 200);
        by_api.push(first_write_after(o, &format!("fa{run}"), started).await);
        let s = o.wait_for_workers(1).await;
        let master = s["master"].as_u64().expect("master");
        let started = Instant::now();
        sigkill(master);
        by_kill.push(first_write_after(o, &format!("fk{run}"), started).await);
    }
    Failover { by_api, by_kill }
}

// ------------------------------------------------------------- 5. catch-up

/// One catch-up: `rows` rows written in `history` writes, joined by `mode`.
pub struct CatchUp {
    pub rows: usize,
    pub history: u64,
    pub mode: &'static str,
    /// Written one row per write (the history is as long as the data).
    pub single_rows: bool,
    pub secs: f64,
}

/// Inserts `rows` users in batches of 1000 (or one per write when `single`);
/// the highest seq answered.
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
            while let Some(&start) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                let rows: Vec<Value> = (start..(start + batch).min(rows))
                    .map(|r| json!({"username": format!("{prefix}{r:07}"), "password": "p"}))
                    .collect();
                let body = json!({"table": "users", "insert": rows});
                let Ok(r) = http.post(&url).json(&body).send().await else {
                    continue;
                };
                if let Ok(v) = r.json::<Value>().await {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if let Ok(mut l) = last.lock() {
                        *l = (*l).max(seq);
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
/// Seconds from crash/slave until the replacement, started with an empty
/// copy, serves the latest write; `how` is how it must have caught up
/// (`snapshot` or `log`), checked so the figure is what it says.
async fn join_time(o: &Orchestrator, seq: u64, rows: usize, how: &str) -> f64 {
    let status = o.status().await;
    let old = slave_pids(&status);
    // A replacement would resume the killed slave's copy from its slot (no
    // catch-up at all): unlink that copy first, so the replacement joins
    // empty, by snapshot or by replay (the running slave keeps its open file).
    let slot = status["workers"]
        .as_array()
        .and_then(|ws| {
            ws.iter()
                .find(|w| w["pid"].as_u64() == old.iter().max().copied())
        })
        .and_then(|w| w["slot"].as_u64())
        .expect("the slave's slot");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(o.data.join(format!("slot-{slot}.sqlite{suffix}")));
    }
    let started = Instant::now();
    let (status, _) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(status, 200);
    let read = json!({"table": "users", "count": true, "min_seq": seq});
    let new = wait_until("new slave serving", Duration::from_secs(600), || async {
        let s = o.status().await;
        let new = slave_pids(&s).into_iter().find(|p| !old.contains(p))?;
        let (st, body) = o.read(read.clone()).await;
        let all = body["rows"][0]["count"].as_u64() >= Some(rows as u64);
        (st == 200 && body["worker"].as_u64() == Some(new) && all).then_some(new)
    })
    .await
    .expect("new slave served");
    let secs = started.elapsed().as_secs_f64();
    let status = o.status().await;
    let start = status["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["pid"].as_u64() == Some(new)))
        .map(|w| w["start"].clone());
    assert_eq!(
        start,
        Some(json!(how)),
        "the replacement caught up another way"
    );
    secs
}

/// A history of single-row writes joined by snapshot and by replay, then
/// snapshots of growing tables.
pub async fn catch_up(sz: &Sizes) -> Vec<CatchUp> {
    let mut joins = Vec::new();
    for mode in ["snapshot", "replay"] {
        let opts = Options {
            extra_env: vec![("DBAAS_CATCH_UP".into(), mode.into())],
            ..Options::default()
        };
        let o = Orchestrator::start(&format!("bench-catchup-{mode}"), opts).await;
        // Single-row history: here replay pays for every write ever made.
        let seq = populate(&o, "h", sz.replay_rows, true).await;
        let how = if mode == "replay" { "log" } else { "snapshot" };
        let secs = join_time(&o, seq, sz.replay_rows, how).await;
        joins.push(CatchUp {
            rows: sz.replay_rows,
            history: sz.replay_rows as u64,
            mode,
            single_rows: true,
            secs,
        });
    }
    let o = Orchestrator::start("bench-catchup-sizes", Options::default()).await;
    let mut have = 0;
    for &rows in &sz.catch_up_rows {
        let history = populate(&o, &format!("s{rows}-"), rows - have, false).await;
        have = rows;
        let secs = join_time(&o, history, rows, "snapshot").await;
        joins.push(CatchUp {
            rows,
            history,
            mode: "snapshot",
            single_rows: false,
            secs,
        });
    }
    joins
}

// -------------------------------------------------------------- 6. scaling

/// Seconds from the scaler's decision (45 reads → 3 slaves) to both new
/// slaves serving.
pub async fn scaling() -> f64 {
    let opts = Options {
        scale_interval_secs: 2,
        ..Options::default()
    };
    let o = Orchestrator::start("bench-scale", opts).await;
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
    (served - decided) as f64 / 1000.0
}
