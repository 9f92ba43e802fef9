//! The benches' own harness: an orchestrator process (process runtime, real
//! workers) in a RabbitMQ vhost and ZooKeeper chroot of its own on the
//! brokers `scripts/bench` started, or on brokers of a bench's own
//! ([`brokers`]). Smaller than the test harness (`integration/common`): no
//! containers, no tokens, no log dumps on panic; waiting is on conditions.

#![allow(dead_code)]

pub mod brokers;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A private vhost and ZooKeeper chroot (or a bench's own brokers).
#[derive(Clone, Debug)]
pub struct Namespace {
    pub amqp_url: String,
    pub zk_hosts: String,
}

fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the bench through scripts/bench"))
}

/// A fresh vhost and chroot named after `name` on `scripts/bench`'s brokers.
pub async fn namespace(name: &str) -> Namespace {
    let (amqp, zk) = (env("DBAAS_TEST_AMQP"), env("DBAAS_TEST_ZK"));
    let ctl = PathBuf::from(env("DBAAS_TEST_RABBITMQCTL"));
    let name = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let user = amqp
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(creds, _)| creds.split(':').next())
        .filter(|u| !u.is_empty())
        .unwrap_or("guest")
        .to_string();
    for args in [
        vec!["add_vhost", &name],
        vec!["set_permissions", "-p", &name, &user, ".*", ".*", ".*"],
    ] {
        let out = Command::new(&ctl)
            .args(&args)
            .output()
            .expect("run rabbitmqctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rabbitmqctl {args:?}: {err}");
    }
    let client = zookeeper_client::Client::connect(&zk)
        .await
        .expect("connect ZooKeeper");
    let mode =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client
        .create(&format!("/{name}"), b"", &mode)
        .await
        .expect("create chroot");
    Namespace {
        amqp_url: format!("{amqp}/{name}"),
        zk_hosts: format!("{zk}/{name}"),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "orchestrator" => PathBuf::from(env!("CARGO_BIN_EXE_orchestrator")),
        "worker" => PathBuf::from(env!("CARGO_BIN_EXE_worker")),
        other => panic!("unknown binary {other}"),
    }
}

/// How an orchestrator runs.
pub struct Options {
    pub slaves: usize,
    pub request_timeout_ms: u64,
    pub scale_interval_secs: u64,
    pub extra_env: Vec<(String, String)>,
    /// Brokers of the bench's own (default: a fresh vhost and chroot).
    pub namespace: Option<Namespace>,
    /// The workers' data directory (default: one of the orchestrator's own),
    /// for a later orchestrator to start on the same data.
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            slaves: 1,
            request_timeout_ms: 5000,
            scale_interval_secs: 3600,
            extra_env: Vec::new(),
            namespace: None,
            data_dir: None,
        }
    }
}

/// An orchestrator process and the workers it runs; stopped (workers too) on drop.
pub struct Orchestrator {
    child: Child,
    pub url: String,
    pub ns: Namespace,
    pub dir: tempfile::TempDir,
    /// The workers' data directory (their slots' SQLite files).
    pub data: PathBuf,
    pub http: reqwest::Client,
}

impl Orchestrator {
    /// Starts an orchestrator and waits until its master and slaves serve and
    /// it reports itself ready.
    pub async fn start(name: &str, opts: Options) -> Orchestrator {
        let o = Self::spawn(name, &opts).await;
        o.wait_for_workers(opts.slaves).await;
        let ready = wait_until("ready", Duration::from_secs(60), || async {
            (o.get_json("/api/v1/ready").await.0 == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            panic!("never ready: {}", o.get_json("/api/v1/ready").await.1);
        }
        o
    }

    /// Starts an orchestrator and waits only until it serves HTTP.
    pub async fn spawn(name: &str, opts: &Options) -> Orchestrator {
        let ns = match &opts.namespace {
            Some(ns) => ns.clone(),
            None => namespace(name).await,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("orchestrator.log")).expect("log file");
        let data = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let child = Command::new(bin("orchestrator"))
            .env("DBAAS_AMQP_URL", &ns.amqp_url)
            .env("DBAAS_ZK_HOSTS", &ns.zk_hosts)
            .env("DBAAS_BIND", format!("127.0.0.1:{port}"))
            .env(
                "DBAAS_REQUEST_TIMEOUT_MS",
                opts.request_timeout_ms.to_string(),
            )
            .env("DBAAS_INITIAL_SLAVES", opts.slaves.to_string())
            .env(
                "DBAAS_SCALE_INTERVAL_SECS",
                opts.scale_interval_secs.to_string(),
            )
            .env("DBAAS_WORKER_BIN", bin("worker"))
            .env("DBAAS_DATA_DIR", &data)
            .env("DBAAS_WORKER_LOG_DIR", dir.path().join("logs"))
            .env("RUST_LOG", "info,lapin=warn")
            .envs(opts.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orchestrator");
        let o = Orchestrator {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ns,
            dir,
            data,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below the server's keep-alive (5 s): never reuse a
                // connection the server is closing.
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        };
        let up = wait_until("orchestrator HTTP", Duration::from_secs(60), || async {
            o.http
                .get(o.url("/api/v1/health"))
                .send()
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(up.is_some(), "orchestrator never served HTTP:\n{}", o.log());
        o
    }

    pub fn pid(&self) -> Option<u64> {
        Some(u64::from(self.child.id()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orchestrator.log")).unwrap_or_default()
    }

    /// Waits until there is exactly one master and `slaves` serving slaves.
    pub async fn wait_for_workers(&self, slaves: usize) -> Value {
        let what = format!("master and {slaves} slave(s)");
        let found = wait_until(&what, Duration::from_secs(60), || async {
            let s = self.status().await;
            let workers = s["workers"].as_array()?;
            let masters = workers.iter().filter(|w| w["role"] == "master").count();
            let serving = workers.iter().filter(|w| w["role"] == "slave").count();
            let settled = masters == 1 && serving == slaves && workers.len() == slaves + 1;
            (s["master"].is_u64() && settled).then_some(s)
        })
        .await;
        found.unwrap_or_else(|| panic!("workers never settled: {}", self.log()))
    }

    /// Waits (up to `patience`) until inserting user `name` is acknowledged
    /// (a 409 means an earlier attempt was applied); how long it took.
    pub async fn first_write(&self, name: &str, patience: Duration) -> Duration {
        let started = Instant::now();
        let user = json!({"table": "users", "insert": {"username": name, "password": "p"}});
        wait_until("a write is acknowledged", patience, || async {
            let (status, _) = self.write(user.clone()).await;
            (status == 200 || status == 409).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("no write acknowledged within {patience:?}: {}", self.log()));
        started.elapsed()
    }

    /// Waits (up to `patience`) until a strong read finds user `name`; how
    /// long it took.
    pub async fn read_back(&self, name: &str, patience: Duration) -> Duration {
        let started = Instant::now();
        let read = json!({"table": "users", "where": {"username": name}, "consistency": "strong"});
        wait_until("the write is read back", patience, || async {
            let (status, body) = self.read(read.clone()).await;
            let found = body["rows"].as_array().is_some_and(|r| r.len() == 1);
            (status == 200 && found).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{name} never read back: {}", self.log()));
        started.elapsed()
    }

    pub async fn status(&self) -> Value {
        self.get_json("/api/v1/worker/status").await.1
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn write(&self, body: Value) -> (u16, Value) {
        self.post_json("/api/v1/db/write", &body).await
    }

    pub async fn read(&self, body: Value) -> (u16, Value) {
        self.post_json("/api/v1/db/read", &body).await
    }

    pub async fn pids(&self) -> Vec<u64> {
        let (status, body) = self.get_json("/api/v1/worker/list").await;
        assert_eq!(status, 200, "{body}");
        let pids = body.as_array().expect("pid array").iter();
        pids.map(|p| p.as_u64().expect("integer pid")).collect()
    }

    /// Stops the orchestrator (SIGTERM: it stops its workers) and waits for it.
    pub fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 50 ms until it yields a value or `patience` runs out.
pub async fn wait_until<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            eprintln!("gave up waiting for {what} after {patience:?}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `sig` to a process, as someone outside the system would.
pub fn signal(pid: u64, sig: i32) {
    let pid = i32::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

pub fn sigkill(pid: u64) {
    signal(pid, libc::SIGKILL);
}

/// The pids of the serving slaves in a `worker/status` answer.
pub fn slave_pids(status: &Value) -> Vec<u64> {
    let workers = status["workers"].as_array().cloned().unwrap_or_default();
    let slaves = workers.iter().filter(|w| w["role"] == "slave");
    slaves.filter_map(|w| w["pid"].as_u64()).collect()
}
