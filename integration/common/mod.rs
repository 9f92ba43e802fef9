//! The integration harness: every test gets its own RabbitMQ vhost and its own
//! ZooKeeper chroot on the brokers `scripts/test` started, so tests never see
//! each other's queues or znodes, and a real orchestrator process (process
//! runtime, real workers) on a free port. Waiting is always on a condition.
//!
//! - [`rideshare`]: the `users` and `rides` service processes on a DBaaS.
//! - [`fake_http`]: stand-ins built with actix-web (a users service, a proxy
//!   that loses replies), each on a thread of its own.
//! - [`private_brokers`]: a RabbitMQ and a ZooKeeper of one test's own.

#![allow(dead_code)]

pub mod fake_http;
pub mod load_balancer;
pub mod private_brokers;
pub mod rideshare;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where `scripts/test` put the brokers.
pub struct Brokers {
    pub amqp: String,
    pub zk: String,
    pub rabbitmqctl: PathBuf,
}

pub fn brokers() -> Brokers {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run the integration tests through scripts/test")
        })
    };
    Brokers {
        amqp: var("DBAAS_TEST_AMQP"),
        zk: var("DBAAS_TEST_ZK"),
        rabbitmqctl: PathBuf::from(var("DBAAS_TEST_RABBITMQCTL")),
    }
}

/// A private vhost and ZooKeeper chroot.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub name: String,
    pub amqp_url: String,
    pub zk_hosts: String,
}

fn ctl(b: &Brokers, args: &[&str]) {
    let out = Command::new(&b.rabbitmqctl)
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn namespace(test: &str) -> Namespace {
    let b = brokers();
    let name = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    ctl(&b, &["add_vhost", &name]);
    // The broker's user (scripts/test's own, or guest on an older broker) gets
    // the vhost rabbitmqctl just made.
    let user = amqp_user(&b.amqp);
    ctl(
        &b,
        &["set_permissions", "-p", &name, &user, ".*", ".*", ".*"],
    );
    let zk = zookeeper_client::Client::connect(&b.zk)
        .await
        .expect("connect ZooKeeper");
    zk.create(
        &format!("/{name}"),
        b"",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .expect("create chroot");
    Namespace {
        amqp_url: format!("{}/{name}", b.amqp),
        zk_hosts: format!("{}/{name}", b.zk),
        name,
    }
}

/// The user name of an `amqp://user:password@host:port` URL.
pub fn amqp_user(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(creds, _)| creds.split(':').next().unwrap_or("").to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "guest".to_string())
}

/// `DBAAS_TEST_RUNTIME=docker` runs the same tests with worker containers
/// (through `DOCKER_HOST`, podman here) built from `DBAAS_TEST_WORKER_IMAGE`.
pub fn runtime_env() -> Vec<(String, String)> {
    match std::env::var("DBAAS_TEST_RUNTIME").as_deref() {
        Ok("docker") => vec![
            ("DBAAS_RUNTIME".into(), "docker".into()),
            (
                "DBAAS_WORKER_IMAGE".into(),
                std::env::var("DBAAS_TEST_WORKER_IMAGE")
                    .unwrap_or_else(|_| "localhost/dbaas-worker:dev".into()),
            ),
            ("DBAAS_DOCKER_NETWORK".into(), "host".into()),
        ],
        _ => Vec::new(),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How the orchestrator runs: a child process, or a container (podman).
enum Process {
    Child(Child),
    Container(String),
}

/// An orchestrator process and the workers it runs; stopped (workers too) on drop.
pub struct Orchestrator {
    process: Process,
    pub url: String,
    pub ns: Namespace,
    pub dir: tempfile::TempDir,
    /// The workers' data directory ([`Options::data_dir`], or one under `dir`).
    data: PathBuf,
    /// Its workers run in containers (docker runtime): each keeps its copy
    /// in its own file system, not in `data`.
    containers: bool,
    /// Where its worker containers are, for their logs when a test fails.
    worker_engines: WorkerEngines,
    pub http: reqwest::Client,
}

/// The engines an orchestrator's worker containers run on and their label's
/// instance (`DBAAS_INSTANCE`, by default its ZooKeeper hosts).
struct WorkerEngines {
    instance: String,
    /// `podman --url` values (`DBAAS_DOCKER_HOSTS`'s); none: this machine's podman.
    urls: Vec<String>,
}

impl WorkerEngines {
    /// From the orchestrator's environment (the last setting of a name wins).
    fn of(env: &[(String, String)], zk_hosts: &str) -> WorkerEngines {
        let last = |name: &str| env.iter().rfind(|(k, _)| k == name).map(|(_, v)| v.clone());
        WorkerEngines {
            instance: last("DBAAS_INSTANCE").unwrap_or_else(|| zk_hosts.to_string()),
            urls: last("DBAAS_DOCKER_HOSTS")
                .map(|hosts| {
                    hosts
                        .split(',')
                        .filter_map(|h| h.split_once('=').map(|(_, url)| url.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Where the worker image keeps the copy (`DBAAS_DATA_DIR` in
/// containers/worker.static.Dockerfile).
const CONTAINER_DATA_DIR: &str = "/data";

pub struct Options {
    pub slaves: usize,
    pub request_timeout_ms: u64,
    pub scale_interval_secs: u64,
    pub worker_bin: Option<PathBuf>,
    pub extra_env: Vec<(String, String)>,
    /// Brokers of the test's own (default: a fresh vhost and chroot on the shared ones).
    pub namespace: Option<Namespace>,
    /// The workers' data directory (default: one of the orchestrator's own),
    /// for a later orchestrator to start on the same data.
    pub data_dir: Option<PathBuf>,
    /// The bearer token the harness's HTTP client sends (an orchestrator
    /// given API tokens in `extra_env`: an admin token, so status works).
    pub token: Option<String>,
    /// The port the orchestrator listens on (default: a free one), for a
    /// later orchestrator to serve the same URL.
    pub port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            slaves: 1,
            request_timeout_ms: 5000,
            scale_interval_secs: 3600,
            worker_bin: None,
            extra_env: Vec::new(),
            namespace: None,
            data_dir: None,
            token: None,
            port: None,
        }
    }
}

/// The binary `name` of this build. The orchestrator's and the worker's are
/// this package's, which cargo builds for its tests; the users and rides
/// services are the `rideshare` package's, which cargo does not build for
/// another package's tests: they are looked for beside the orchestrator
/// (`target/<profile>/`), where `cargo build --workspace --bins` (as
/// `scripts/test` runs it first) puts them.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "orchestrator" => PathBuf::from(env!("CARGO_BIN_EXE_orchestrator")),
        "worker" => PathBuf::from(env!("CARGO_BIN_EXE_worker")),
        "users" | "rides" => {
            let path = Path::new(env!("CARGO_BIN_EXE_orchestrator")).with_file_name(name);
            assert!(
                path.exists(),
                "{} is not built: run `cargo build --workspace --bins` (with this test's profile) first",
                path.display()
            );
            path
        }
        other => panic!("unknown binary {other}"),
    }
}

impl Orchestrator {
    /// Starts an orchestrator and waits until its master and slaves serve and
    /// it reports itself ready (its RabbitMQ session is up: an orchestrator
    /// that adopts running workers sees them before its broker session is).
    pub async fn start(test: &str, opts: Options) -> Orchestrator {
        let o = Self::spawn(test, &opts).await;
        o.wait_for_workers(opts.slaves).await;
        if opts.slaves == 0 {
            // Never ready without a slave: its broker session is what is left.
            o.wait_for_broker_session().await;
            return o;
        }
        let ready = wait_until("ready", Duration::from_secs(60), || async {
            (o.get_json("/api/v1/ready").await.0 == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            panic!("never ready: {}", o.get_json("/api/v1/ready").await.1);
        }
        o
    }

    /// Starts an orchestrator without waiting for workers.
    pub async fn spawn(test: &str, opts: &Options) -> Orchestrator {
        let ns = match &opts.namespace {
            Some(ns) => ns.clone(),
            None => namespace(test).await,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = opts.port.unwrap_or_else(free_port);
        let data = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let log = std::fs::File::create(dir.path().join("orchestrator.log")).expect("log file");
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
            .env(
                "DBAAS_WORKER_BIN",
                opts.worker_bin.clone().unwrap_or_else(|| bin("worker")),
            )
            .env("DBAAS_DATA_DIR", &data)
            .env("DBAAS_WORKER_LOG_DIR", dir.path().join("logs"))
            .env("RUST_LOG", "info,lapin=warn")
            .envs(runtime_env())
            .envs(opts.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orchestrator");
        // The last setting wins, as it does for the child's environment.
        let env: Vec<(String, String)> = runtime_env()
            .into_iter()
            .chain(opts.extra_env.iter().cloned())
            .collect();
        let containers = env
            .iter()
            .rfind(|(k, _)| k == "DBAAS_RUNTIME")
            .is_some_and(|(_, v)| v == "docker");
        let engines = WorkerEngines::of(&env, &ns.zk_hosts);
        let mut o = Self::attach(
            Process::Child(child),
            ns,
            dir,
            data,
            port,
            opts.token.as_deref(),
            containers,
        )
        .await;
        o.worker_engines = engines;
        o
    }

    /// Runs the orchestrator image in a container (host network, the Docker
    /// API socket mounted, docker runtime) and waits for its workers.
    pub async fn in_container(
        test: &str,
        image: &str,
        worker_image: &str,
        slaves: usize,
    ) -> Orchestrator {
        let ns = namespace(test).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let host = std::env::var("DOCKER_HOST").expect("DOCKER_HOST names the podman socket");
        let socket = host.strip_prefix("unix://").expect("a unix socket");
        let name = format!("dbaas-orchestrator-{}", ns.name);
        let out = Command::new("podman")
            .args(["run", "-d", "--name", &name, "--network", "host"])
            .args(["-v", &format!("{socket}:/var/run/docker.sock")])
            .args(["-e", &format!("DBAAS_AMQP_URL={}", ns.amqp_url)])
            .args(["-e", &format!("DBAAS_ZK_HOSTS={}", ns.zk_hosts)])
            .args(["-e", &format!("DBAAS_BIND=127.0.0.1:{port}")])
            .args([
                "-e",
                "DBAAS_RUNTIME=docker",
                "-e",
                "DBAAS_DOCKER_NETWORK=host",
            ])
            .args(["-e", &format!("DBAAS_WORKER_IMAGE={worker_image}")])
            .args(["-e", &format!("DBAAS_INITIAL_SLAVES={slaves}")])
            .arg(image)
            .output()
            .expect("podman run");
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = dir.path().join("data");
        let o = Self::attach(Process::Container(name), ns, dir, data, port, None, true).await;
        o.wait_for_workers(slaves).await;
        o
    }

    async fn attach(
        process: Process,
        ns: Namespace,
        dir: tempfile::TempDir,
        data: PathBuf,
        port: u16,
        token: Option<&str>,
        containers: bool,
    ) -> Orchestrator {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .expect("token is a header value");
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        // This machine's podman, the default instance; `spawn` sets what
        // the orchestrator's environment says.
        let worker_engines = WorkerEngines::of(&[], &ns.zk_hosts);
        let o = Orchestrator {
            process,
            url: format!("http://127.0.0.1:{port}"),
            ns,
            dir,
            data,
            containers,
            worker_engines,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below the server's keep-alive (5 s): never reuse a connection
                // the server is closing (a POST on it fails as incomplete).
                .pool_idle_timeout(Duration::from_secs(2))
                .default_headers(headers)
                .build()
                .expect("http client"),
        };
        let http = o.http.clone();
        let url = o.url("/api/v1/worker/list");
        let up = wait_until("orchestrator HTTP", Duration::from_secs(60), || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).send().await.ok().map(|_| ()) }
        })
        .await;
        assert!(up.is_some(), "orchestrator never served HTTP:\n{}", o.log());
        o
    }

    /// The orchestrator's OS pid, when it runs as a local process.
    pub fn pid(&self) -> Option<u64> {
        match &self.process {
            Process::Child(c) => Some(u64::from(c.id())),
            Process::Container(_) => None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn log(&self) -> String {
        match &self.process {
            Process::Child(_) => std::fs::read_to_string(self.dir.path().join("orchestrator.log"))
                .unwrap_or_default(),
            Process::Container(name) => Command::new("podman")
                .args(["logs", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default(),
        }
    }

    /// The workers' data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// The SQLite file of worker `pid`, which holds `slot`: in the data
    /// directory, or for a worker container in its own file system
    /// ([`container_root`]).
    pub fn replica_file(&self, pid: u64, slot: u64) -> PathBuf {
        let name = format!("slot-{slot}.sqlite");
        if self.containers {
            container_root(pid)
                .join(CONTAINER_DATA_DIR.trim_start_matches('/'))
                .join(name)
        } else {
            self.data_dir().join(name)
        }
    }
}

/// The root file system of the container whose process is `pid` (a pid of
/// this machine), by a path of this mount namespace: where the file system
/// that is its root (same device) is mounted here, as podman mounts it.
/// `/proc/<pid>/root` reaches it too, but SQLite resolves symbolic links on
/// open, and that one reads as `/`; it is the answer only when no mount matches.
pub fn container_root(pid: u64) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let Ok(dev) = std::fs::metadata(&proc_root).map(|m| m.dev()) else {
        return proc_root;
    };
    // The kernel's encoding of a device number (glibc's major/minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let device = format!("{major}:{minor}");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            // id parent major:minor root mount-point ...
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&device.as_str()) && f.get(3) == Some(&"/"))
                .then(|| PathBuf::from(f[4]))
        })
        .unwrap_or(proc_root)
}

impl Orchestrator {
    /// Waits until there is exactly one master and `slaves` serving slaves.
    pub async fn wait_for_workers(&self, slaves: usize) -> Value {
        let found = wait_until(
            &format!("master and {slaves} slave(s)"),
            Duration::from_secs(60),
            || async {
                let s = self.status().await;
                let workers = s["workers"].as_array()?;
                let masters = workers.iter().filter(|w| w["role"] == "master").count();
                let serving = workers.iter().filter(|w| w["role"] == "slave").count();
                (s["master"].is_u64()
                    && masters == 1
                    && serving == slaves
                    && workers.len() == slaves + 1)
                    .then_some(s)
            },
        )
        .await;
        match found {
            Some(s) => s,
            None => panic!("workers never settled: {}", self.status().await),
        }
    }

    /// Waits until the orchestrator's RabbitMQ session is up (readiness then
    /// names no broker problem, whatever else it still waits for).
    pub async fn wait_for_broker_session(&self) {
        wait_until("the broker session", Duration::from_secs(30), || async {
            let (_, ready) = self.get_json("/api/v1/ready").await;
            let reason = ready["error"].as_str().unwrap_or_default().to_string();
            (!reason.contains("RabbitMQ")).then_some(())
        })
        .await
        .expect("the orchestrator connected to RabbitMQ");
    }

    /// Waits (up to `patience`) until inserting user `name` is acknowledged
    /// (a 409 means an earlier attempt was applied); how long it took.
    pub async fn first_write(&self, name: &str, patience: Duration) -> Duration {
        let started = Instant::now();
        wait_until("a write is acknowledged", patience, || async {
            let (status, _) = self
                .write(json!({"table": "users", "insert": {"username": name, "password": "p"}}))
                .await;
            (status == 200 || status == 409).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("no write acknowledged within {patience:?}: {}", self.log()));
        started.elapsed()
    }

    /// Waits (up to `patience`) until a strong read finds user `name` once;
    /// how long it took.
    pub async fn read_back(&self, name: &str, patience: Duration) -> Duration {
        let started = Instant::now();
        wait_until("the write is read back", patience, || async {
            let (status, body) = self
                .read(
                    json!({"table": "users", "where": {"username": name}, "consistency": "strong"}),
                )
                .await;
            (status == 200 && body["rows"].as_array().is_some_and(|r| r.len() == 1)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{name} never read back: {}", self.log()));
        started.elapsed()
    }

    /// The `/metrics` text (Prometheus format).
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
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

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
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

    pub async fn insert_user(&self, name: &str) -> Value {
        let (status, body) = self
            .write(json!({"table": "users", "insert": {"username": name, "password": "p"}}))
            .await;
        assert_eq!(status, 200, "insert {name}: {body}");
        body
    }

    /// Inserts a user (owned name, for concurrent use) and returns the write's seq.
    pub async fn insert_user_owned(&self, name: String) -> u64 {
        self.insert_user(&name).await["seq"].as_u64().unwrap_or(0)
    }

    pub async fn pids(&self) -> Vec<u64> {
        let (status, body) = self.get_json("/api/v1/worker/list").await;
        assert_eq!(status, 200);
        body.as_array()
            .expect("pid array")
            .iter()
            .map(|p| p.as_u64().expect("integer pid"))
            .collect()
    }

    /// A queue of this test's vhost, as RabbitMQ counts it now: messages
    /// ready for delivery, and delivered but not yet acknowledged.
    pub fn queue_depth(&self, queue: &str) -> Option<(u64, u64)> {
        let out = Command::new(&brokers().rabbitmqctl)
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "-p",
                &self.ns.name,
            ])
            .args(["name", "messages_ready", "messages_unacknowledged"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != queue {
                return None;
            }
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
    }

    pub async fn master_pid(&self) -> Option<u64> {
        self.status().await["master"].as_u64()
    }

    /// Reads usernames with read-your-writes at `seq`.
    pub async fn usernames_at(&self, seq: u64) -> Vec<String> {
        let (status, body) = self
            .read(json!({"table": "users", "columns": ["username"], "min_seq": seq, "order_by": [{"column": "username"}]}))
            .await;
        assert_eq!(status, 200, "read: {body}");
        body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["username"].as_str().expect("username").to_string())
            .collect()
    }

    /// Stops the orchestrator (SIGTERM: it stops its workers) and waits for it.
    pub fn stop(&mut self) {
        let child = match &mut self.process {
            Process::Child(child) => child,
            Process::Container(name) => {
                let _ = Command::new("podman")
                    .args(["stop", "-t", "30", name.as_str()])
                    .output();
                let _ = Command::new("podman")
                    .args(["rm", "-f", name.as_str()])
                    .output();
                return;
            }
        };
        terminate(child, Duration::from_secs(20));
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `patience`; waits
/// for it either way.
pub fn terminate(child: &mut Child, patience: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        // Logs first: a container's go with it.
        if std::thread::panicking() {
            eprintln!("---- orchestrator log ----\n{}", self.log());
            if self.containers {
                let engines = &self.worker_engines;
                print_worker_container_logs(&engines.instance, &engines.urls);
            }
        }
        self.stop();
        if std::thread::panicking() {
            print_worker_logs(&self.dir.path().join("logs"));
        }
    }
}

/// The last lines of every worker container labelled for this orchestrator,
/// on each of `engines` (this machine's podman when none). An engine that does
/// not answer (a test cut its host off) is given 10 s.
fn print_worker_container_logs(instance: &str, engines: &[String]) {
    let local = [String::new()];
    let engines = if engines.is_empty() {
        &local[..]
    } else {
        engines
    };
    let podman = |url: &str, args: &[&str]| {
        let mut c = Command::new("timeout");
        c.args(["10", "podman"]);
        if !url.is_empty() {
            c.args(["--url", url]);
        }
        c.args(args).output()
    };
    let label = format!("label=dbaas.worker={instance}");
    for url in engines {
        let Ok(out) = podman(url, &["ps", "-aq", "--filter", &label]) else {
            continue;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(logs) = podman(url, &["logs", "--tail", "60", id]) {
                eprintln!("---- worker container {id} {url} (last lines) ----");
                eprintln!("{}", String::from_utf8_lossy(&logs.stdout));
                eprintln!("{}", String::from_utf8_lossy(&logs.stderr));
            }
        }
    }
}

fn print_worker_logs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("---- {} (last lines) ----", e.path().display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A worker binary behind a gate: a script in `dir` that waits until the gate
/// file exists, then runs the worker (so a test decides when workers start).
/// Returns (script, gate).
pub fn gated_worker(dir: &Path) -> (PathBuf, PathBuf) {
    let gate = dir.join("open");
    let script = dir.join("gated-worker");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexec '{}' \"$@\"\n",
            gate.display(),
            bin("worker").display()
        ),
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    (script, gate)
}

/// Every username in `store` (worker `pid`'s copy), a page at a time in
/// username order.
fn all_usernames(store: &dbaas::db::Store, pid: u64) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let mut query = serde_json::json!({
            "table": "users",
            "columns": ["username"],
            "order_by": [{"column": "username"}],
            "limit": 10000,
        });
        if let Some(after) = names.last() {
            query["where"] = serde_json::json!({"username": {">": after}});
        }
        let request = dbaas::db::request::parse(query.to_string().as_bytes()).expect("query");
        let out = store.read(&request).expect("read replica");
        let before = names.len();
        names.extend(
            out.rows
                .iter()
                .filter_map(|r| r["username"].as_str().map(String::from)),
        );
        if !out.more {
            return names;
        }
        assert!(
            names.len() > before,
            "worker {pid}: a full page without names"
        );
    }
}

/// The exactly-once check at the end of a fault test: once every replica has
/// applied a last write (`last`), each one's SQLite file holds every name in
/// `acked` once, each name in `unknown` (writes whose outcome the writer
/// never learnt: 503, 504, a lost connection) at most once, no other user but
/// `last`, and all files are identical.
pub async fn every_replica_holds_exactly(
    o: &Orchestrator,
    acked: &std::collections::BTreeSet<String>,
    unknown: &std::collections::BTreeSet<String>,
    slaves: usize,
) {
    use dbaas::db::Store;
    use std::collections::BTreeSet;
    // Wait until every replica has applied the master's last write, then compare files.
    let last = o.insert_user("last").await["seq"].as_u64().expect("seq");
    let status = wait_until("replicas caught up", Duration::from_secs(30), || async {
        let s = o.wait_for_workers(slaves).await;
        s["workers"]
            .as_array()?
            .iter()
            .all(|w| w["seq"].as_u64() >= Some(last))
            .then_some(s)
    })
    .await
    .expect("all replicas at the last seq");
    let mut sums = BTreeSet::new();
    for w in status["workers"].as_array().expect("workers") {
        let pid = w["pid"].as_u64().expect("pid");
        let slot = w["slot"].as_u64().expect("slot");
        let path = o.replica_file(pid, slot);
        let store = Store::open_read_only(&path).expect("open replica");
        assert!(
            store.seq() >= last,
            "worker {pid} at {} < {last}",
            store.seq()
        );
        let names = all_usernames(&store, pid);
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "worker {pid} holds duplicates");
        for a in acked {
            assert!(
                unique.contains(a),
                "worker {pid} lost acknowledged write {a}"
            );
        }
        let others: Vec<&str> = unique
            .iter()
            .map(|n| n.as_str())
            .filter(|n| *n != "last" && !acked.contains(*n) && !unknown.contains(*n))
            .collect();
        assert!(
            others.is_empty() && names.iter().any(|n| n == "last"),
            "worker {pid}: only acknowledged writes, writes of unknown outcome and 'last': also {others:?}"
        );
        sums.insert(store.checksum().expect("checksum"));
    }
    assert_eq!(sums.len(), 1, "replicas differ: {sums:?}");
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

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
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
    status["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|w| w["role"] == "slave")
                .filter_map(|w| w["pid"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}
