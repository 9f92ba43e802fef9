//! Only those who hold a credential reach the data, the admin API, the broker
//! and the coordinator: API tokens by scope, protected mode, the broker user
//! `scripts/lib/services.sh` creates (and `guest` gone), ZooKeeper digest
//! ACLs, fake worker registrations that are never signalled, and no process
//! without the snapshot secret unless its broker is on loopback.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use zookeeper_client as zk;

use crate::common::private_brokers::PrivateBrokers;
use crate::common::{self, bin, free_port, wait_until, Options, Orchestrator};

const DATA: &str = "data-token-for-the-security-tests";
const ADMIN: &str = "admin-token-for-the-security-tests";

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut req = http.request(method, &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, r.json().await.unwrap_or(Value::Null), challenge)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_route_answers_by_the_scope_of_the_token() {
    let o = Orchestrator::start(
        "sec-scopes",
        Options {
            extra_env: vec![
                // Two data tokens valid at once (rotation).
                (
                    "DBAAS_DATA_TOKENS".into(),
                    format!("{DATA},another-data-token-0123"),
                ),
                ("DBAAS_ADMIN_TOKENS".into(), ADMIN.into()),
            ],
            token: Some(ADMIN.into()),
            ..Options::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let read = json!({"table": "users", "columns": ["username"]});
    let write = json!({"table": "users", "insert": {"username": "sec-alice", "password": "p"}});

    // No token: 401 with a JSON error and a challenge, on data and admin routes.
    for (m, path, body) in [
        (&post, "/api/v1/db/read", Some(read.clone())),
        (&post, "/api/v1/db/clear", None),
        (&post, "/api/v1/crash/slave", None),
        (&get, "/api/v1/worker/status", None),
        (&get, "/metrics", None),
    ] {
        let (status, body, challenge) = call(&http, m.clone(), o.url(path), None, body).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{path}");
    }
    // A token nobody issued: 401.
    let (status, body, challenge) = call(
        &http,
        post.clone(),
        o.url("/api/v1/db/read"),
        Some("not-a-token-anyone-issued"),
        Some(read.clone()),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.is_some_and(|c| c.contains("invalid_token")));

    // The data scope reads and writes, with either data token.
    let (status, body, _) = call(
        &http,
        post.clone(),
        o.url("/api/v1/db/write"),
        Some(DATA),
        Some(write),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call(
        &http,
        post.clone(),
        o.url("/api/v1/db/read"),
        Some("another-data-token-0123"),
        Some(read.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // ... and nothing else: 403 with a JSON error naming the scope needed.
    for (m, path) in [
        (&post, "/api/v1/db/clear"),
        (&post, "/api/v1/crash/slave"),
        (&post, "/api/v1/crash/master"),
        (&get, "/api/v1/worker/list"),
        (&get, "/api/v1/worker/status"),
        (&get, "/api/v1/scaler"),
        (&get, "/metrics"),
    ] {
        let (status, body, _) = call(&http, m.clone(), o.url(path), Some(DATA), None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("admin")),
            "{path}: {body}"
        );
    }

    // The admin scope does everything, data operations included.
    let (status, body, _) = call(
        &http,
        post.clone(),
        o.url("/api/v1/db/read"),
        Some(ADMIN),
        Some(read),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["username"], "sec-alice");
    for path in ["/api/v1/worker/status", "/api/v1/scaler", "/metrics"] {
        let r = http
            .get(o.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }

    // Health checks and the (static) status page need nothing.
    for path in ["/api/v1/health", "/api/v1/ready", "/"] {
        let r = http.get(o.url(path)).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }

    // The users service sends its data token.
    let port = free_port();
    let log = o.dir.path().join("users.log");
    let mut users = Command::new(bin("users"))
        .env("USERS_BIND", format!("127.0.0.1:{port}"))
        .env("DBAAS_URL", &o.url)
        .env("DBAAS_TOKEN", DATA)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start users");
    let users_url = format!("http://127.0.0.1:{port}/api/v1/users");
    let created = wait_until("users service", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), users_url.clone());
        async move {
            let r = http
                .put(&url)
                .json(&json!({"username": "sec-bob", "password": "3d725109c7e7c0bfb9d709836735b56d943d263f"}))
                .send()
                .await
                .ok()?;
            Some(r.status().as_u16())
        }
    })
    .await;
    let _ = users.kill();
    let _ = users.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(created, Some(201), "users log:\n{text}");
    // dbaasctl sends DBAAS_TOKEN: an admin token lists the workers, a data token may not.
    let ctl = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_dbaasctl"))
            .arg("workers")
            .env("DBAAS_URL", &o.url)
            .env("DBAAS_TOKEN", token)
            .output()
            .expect("run dbaasctl")
    };
    let out = ctl(ADMIN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(DATA);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("403"), "{err}");

    // The tokens never show in the orchestrator's log, nor the users service's.
    for t in [DATA, ADMIN] {
        assert!(!o.log().contains(t), "a token is in the orchestrator log");
        assert!(!text.contains(t), "a token is in the users log");
    }
}

/// Runs the orchestrator binary with `env` (brokers unreachable: nothing is
/// started) and returns it once it serves `/api/v1/health`, or its exit.
fn orchestrator_on(bind: &str, env: &[(&str, &str)]) -> std::process::Child {
    Command::new(bin("orchestrator"))
        .env("DBAAS_BIND", bind)
        .env("DBAAS_AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
        .env("DBAAS_ZK_HOSTS", "127.0.0.1:1")
        .env("DBAAS_WORKER_BIN", bin("worker"))
        .env_remove("DBAAS_DATA_TOKENS")
        .env_remove("DBAAS_ADMIN_TOKENS")
        .env_remove("DBAAS_INSECURE_OPEN")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orchestrator")
}

async fn serves_health(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/api/v1/health");
    wait_until("health", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await
    .is_some()
}

fn stop(child: std::process::Child) -> String {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_mode_refuses_a_public_bind_without_tokens() {
    let port = free_port();
    let bind = format!("0.0.0.0:{port}");
    // No tokens, not loopback: refuses to start, and says why.
    let out = orchestrator_on(&bind, &[])
        .wait_with_output()
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(err.contains("refusing to serve"), "{err}");
    assert!(err.contains("--insecure-open"), "{err}");

    // --insecure-open (the env form): starts, and says so loudly.
    let child = orchestrator_on(&bind, &[("DBAAS_INSECURE_OPEN", "true")]);
    let up = serves_health(port).await;
    let err = stop(child);
    assert!(up, "never served with DBAAS_INSECURE_OPEN: {err}");
    assert!(err.contains("INSECURE"), "{err}");

    // With tokens (here from a file) it starts on any address, and asks for them.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admin-tokens");
    std::fs::write(&file, format!("# rotated in May\n{ADMIN}\n")).expect("token file");
    let port = free_port();
    let child = orchestrator_on(
        &format!("0.0.0.0:{port}"),
        &[
            ("DBAAS_DATA_TOKENS", DATA),
            ("DBAAS_ADMIN_TOKENS_FILE", &file.display().to_string()),
        ],
    );
    let up = serves_health(port).await;
    let scaler = format!("http://127.0.0.1:{port}/api/v1/scaler");
    let http = reqwest::Client::new();
    let without = http.get(&scaler).send().await.map(|r| r.status().as_u16());
    let with = http
        .get(&scaler)
        .bearer_auth(ADMIN)
        .send()
        .await
        .map(|r| r.status().as_u16());
    let err = stop(child);
    assert!(up, "never served with tokens: {err}");
    assert_eq!(without.ok(), Some(401), "{err}");
    assert_eq!(with.ok(), Some(200), "{err}");
    assert!(!err.contains(DATA) && !err.contains(ADMIN), "{err}");

    // Loopback without tokens: open, as scripts/up runs it.
    let port = free_port();
    let child = orchestrator_on(&format!("127.0.0.1:{port}"), &[]);
    let up = serves_health(port).await;
    let err = stop(child);
    assert!(up, "never served on loopback: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_snapshot_secret_only_a_loopback_broker_is_accepted() {
    const SECRET: &str = "snapshot-secret-of-the-security-tests";
    // A broker off loopback (TEST-NET-1: never reached), no secret: both
    // binaries refuse before connecting, naming the host, not the password.
    for binary in ["orchestrator", "worker"] {
        let out = Command::new(bin(binary))
            .env(
                "DBAAS_AMQP_URL",
                "amqp://dbaas:hunter2-pw@192.0.2.1:5672/%2f",
            )
            .env("DBAAS_ZK_HOSTS", "127.0.0.1:1")
            .env("DBAAS_BIND", format!("127.0.0.1:{}", free_port()))
            .env_remove("DBAAS_SNAPSHOT_SECRET")
            .stdout(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} started: {err}");
        assert!(
            err.contains("refusing to run without DBAAS_SNAPSHOT_SECRET")
                && err.contains("192.0.2.1:5672"),
            "{binary}: {err}"
        );
        assert!(
            !err.contains("hunter2"),
            "{binary} showed the password: {err}"
        );
    }

    // With the secret: it runs, says snapshots are authenticated, never the secret.
    let port = free_port();
    let child = orchestrator_on(
        &format!("127.0.0.1:{port}"),
        &[("DBAAS_SNAPSHOT_SECRET", SECRET)],
    );
    let up = serves_health(port).await;
    let err = stop(child);
    assert!(up, "never served with a secret: {err}");
    assert!(err.contains("snapshots are authenticated"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    // Loopback broker, no secret: it runs, and says loudly what that means.
    let port = free_port();
    let child = Command::new(bin("orchestrator"))
        .env("DBAAS_BIND", format!("127.0.0.1:{port}"))
        .env("DBAAS_AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
        .env("DBAAS_ZK_HOSTS", "127.0.0.1:1")
        .env("DBAAS_WORKER_BIN", bin("worker"))
        .env_remove("DBAAS_SNAPSHOT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orchestrator");
    let up = serves_health(port).await;
    let err = stop(child);
    assert!(up, "never served on loopback without a secret: {err}");
    assert!(err.contains("snapshots are not authenticated"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_started_by_services_sh_refuses_guest() {
    let brokers = PrivateBrokers::start();
    let ns = brokers.namespace();
    assert!(ns.amqp_url.starts_with("amqp://dbaas:"), "{}", ns.amqp_url);
    let props = || lapin::ConnectionProperties::default();
    let ours = lapin::Connection::connect(&ns.amqp_url, props()).await;
    assert!(
        ours.is_ok(),
        "the generated user is refused: {:?}",
        ours.err()
    );
    let guest = format!("amqp://guest:guest@127.0.0.1:{}/%2f", brokers.amqp_port);
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        lapin::Connection::connect(&guest, props()),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "guest/guest was accepted by a broker services.sh started"
    );
    // The password is the broker's own: a private file.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(brokers.dir.path().join("secrets/rabbitmq-password"))
        .expect("password file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

async fn zk_client(hosts: &str, auth: Option<&str>) -> zk::Client {
    let mut c = zk::Client::connector();
    if let Some(a) = auth {
        c = c.with_auth("digest", a.as_bytes());
    }
    c.connect(hosts).await.expect("connect ZooKeeper")
}

fn fake_record(pid: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "pid": pid, "role": "slave", "seq": 0, "epoch": 0,
        "started_at_ms": chrono::Utc::now().timestamp_millis(),
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zookeeper_client_without_the_credentials_cannot_register_a_worker() {
    let ns = common::namespace("sec-zk").await;
    let auth = format!("dbaas:{}", uuid::Uuid::new_v4().simple());
    // An earlier run without credentials left the layout open to all.
    let open = zk_client(&ns.zk_hosts, None).await;
    let anyone = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    open.create("/dbaas", b"", &anyone).await.expect("create");
    open.create("/dbaas/workers", b"", &anyone)
        .await
        .expect("create");
    let o = Orchestrator::start(
        "sec-zk",
        Options {
            namespace: Some(ns.clone()),
            extra_env: vec![("DBAAS_ZK_AUTH".into(), auth.clone())],
            ..Options::default()
        },
    )
    .await;
    let pids = o.pids().await;
    assert_eq!(pids.len(), 2, "the workers registered with the credentials");

    let fake = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    for (who, client) in [
        ("no credentials", open),
        (
            "other credentials",
            zk_client(&ns.zk_hosts, Some("dbaas:not-the-password")).await,
        ),
    ] {
        let created = client
            .create("/dbaas/workers/4242", &fake_record(4242), &fake)
            .await;
        assert_eq!(created.err(), Some(zk::Error::NoAuth), "{who}");
        let master = client.create("/dbaas/master", b"{}", &fake).await;
        assert!(master.is_err(), "{who} took the master znode");
        let read = client
            .get_data(&format!("/dbaas/workers/{}", pids[0]))
            .await;
        assert_eq!(read.err(), Some(zk::Error::NoAuth), "{who}");
        let acl = client
            .set_acl("/dbaas", &zk::Acls::anyone_all(), None)
            .await;
        assert_eq!(acl.err(), Some(zk::Error::NoAuth), "{who}");
    }
    // The same credentials can (the project's processes).
    let ours = zk_client(&ns.zk_hosts, Some(&auth)).await;
    let (acl, _) = ours.get_acl("/dbaas/workers").await.expect("get_acl");
    assert!(
        acl.iter().all(|a| a.scheme() == "digest"),
        "still open: {acl:?}"
    );
    assert!(ours
        .get_data(&format!("/dbaas/workers/{}", pids[0]))
        .await
        .is_ok());
    assert!(!o.log().contains(&auth), "the credentials are in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fake_worker_naming_an_unrelated_process_is_never_signalled() {
    let o = Orchestrator::start("sec-fake", Options::default()).await;
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let victim = sleeper.id();
    // Registered as a slave with the highest pid: it would be the scale-in
    // and crash/slave target.
    let zk = zk_client(&o.ns.zk_hosts, None).await;
    zk.create(
        &format!("/dbaas/workers/{victim}"),
        &fake_record(victim),
        &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .expect("create fake znode");
    let warned = wait_until("the warning", Duration::from_secs(10), || async {
        o.log().contains("ignoring a registration").then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning:\n{}", o.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        common::alive(u64::from(victim)),
        "the supervisor signalled it"
    );

    let (status, body) = o.post_json("/api/v1/crash/slave", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body[0], victim.to_string(), "crash/slave chose the fake");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(common::alive(u64::from(victim)), "crash/slave killed it");

    // Its registration vanishing is no reason to end it either.
    zk.delete(&format!("/dbaas/workers/{victim}"), None)
        .await
        .expect("delete");
    o.wait_for_workers(1).await;
    assert!(common::alive(u64::from(victim)));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_orchestrator_adopts_real_workers_after_verifying_them() {
    let ns = common::namespace("sec-adopt").await;
    let data = tempfile::tempdir().expect("tempdir");
    let opts = |stop_workers: bool| Options {
        namespace: Some(ns.clone()),
        data_dir: Some(data.path().to_path_buf()),
        extra_env: vec![(
            "DBAAS_STOP_WORKERS_ON_EXIT".into(),
            stop_workers.to_string(),
        )],
        ..Options::default()
    };
    let mut first = Orchestrator::start("sec-adopt", opts(false)).await;
    let workers = first.pids().await;
    first.stop();
    assert!(workers.iter().all(|p| common::alive(*p)), "workers stopped");

    // This one stops its workers with it: none outlives the test.
    let second = Orchestrator::start("sec-adopt", opts(true)).await;
    assert_eq!(second.pids().await, workers, "the same workers, adopted");
    assert!(
        second.log().contains("adopted a running worker process"),
        "{}",
        second.log()
    );
    // Adopted after verification, so the crash API may kill one.
    let (status, body) = second.post_json("/api/v1/crash/slave", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let killed: u64 = body[0]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("a pid");
    let gone = wait_until("the killed slave", Duration::from_secs(10), || async {
        (!common::alive(killed)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the adopted slave was not killed");
    second.wait_for_workers(1).await;
}
