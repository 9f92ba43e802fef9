//! The RideShare users and rides services against a real DBaaS (orchestrator,
//! master and slave): every endpoint and status code, the user check across
//! services (one list call, with `Origin`), upcoming-ride filtering by time,
//! `_count` semantics, clear, and the upstream grader's flows.
//!
//! The harness here starts the `users` and `rides` binaries on free ports,
//! rides pointing straight at users (no load balancer), and stops them on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{free_port, wait_until, Options, Orchestrator};

const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";
const ORIGIN: &str = "http://rides.test.example";

// ---------------------------------------------------------------- harness

/// A users or rides process; SIGTERM then SIGKILL on drop.
struct Service {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(bin: &str, bind_var: &str, env: &[(&str, String)]) -> Service {
        let exe = match bin {
            "users" => env!("CARGO_BIN_EXE_users"),
            "rides" => env!("CARGO_BIN_EXE_rides"),
            other => panic!("unknown service {other}"),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{bin}.log"));
        let port = free_port();
        let mut child = Command::new(exe)
            .env(bind_var, format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env("RIDESHARE_TIMEOUT_MS", "8000")
            // Short, so that a DBaaS that is down answers 503 soon.
            .env("RIDESHARE_RETRY_MS", "1000")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start service");
        let url = format!("http://127.0.0.1:{port}");
        let http = client();
        let count_url = format!("{url}/api/v1/_count");
        let up = wait_until(bin, Duration::from_secs(30), || {
            let (http, count_url) = (http.clone(), count_url.clone());
            async move {
                let r = http.get(&count_url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        if up.is_none() || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            panic!(
                "{bin} never served:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Service {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

async fn start_users(dbaas: &str) -> Service {
    Service::start("users", "USERS_BIND", &[("DBAAS_URL", dbaas.to_string())]).await
}

async fn start_rides(dbaas: &str, users: &str) -> Service {
    Service::start(
        "rides",
        "RIDES_BIND",
        &[
            ("DBAAS_URL", dbaas.to_string()),
            ("USERS_URL", users.to_string()),
            ("RIDES_ORIGIN", ORIGIN.to_string()),
        ],
    )
    .await
}

/// A DBaaS with the two services on it.
struct Stack {
    // Field order is drop order: services before the orchestrator.
    rides: Service,
    users: Service,
    o: Orchestrator,
}

impl Stack {
    async fn start(name: &str) -> Stack {
        let o = Orchestrator::start(name, Options::default()).await;
        let users = start_users(&o.url).await;
        let rides = start_rides(&o.url, &users.url).await;
        Stack { rides, users, o }
    }
}

enum Body {
    Empty,
    Json(Value),
    Form(Vec<(&'static str, String)>),
    Raw(&'static str, Vec<u8>),
}

#[derive(Debug)]
struct Resp {
    status: u16,
    json: Value,
    text: String,
}

async fn call(method: Method, url: &str, body: Body) -> Resp {
    let mut r = client().request(method.clone(), url);
    r = match body {
        Body::Empty => r,
        Body::Json(v) => r.json(&v),
        Body::Form(pairs) => r.form(&pairs),
        Body::Raw(ct, bytes) => r.header("content-type", ct).body(bytes),
    };
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, json, text }
}

async fn get(url: &str) -> Resp {
    call(Method::GET, url, Body::Empty).await
}

/// Asserts a status and, for errors, a JSON `{"error": ...}` body; for 204 an empty body.
fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    if status == 204 {
        assert!(r.text.is_empty(), "{what}: 204 with a body: {r:?}");
    } else if status >= 400 {
        assert!(
            r.json["error"].is_string(),
            "{what}: not a JSON error: {r:?}"
        );
    }
}

fn ts(offset: chrono::Duration) -> String {
    (chrono::Local::now() + offset)
        .format("%d-%m-%Y:%S-%M-%H")
        .to_string()
}

fn future() -> String {
    ts(chrono::Duration::days(365))
}

async fn add_user(users: &Service, name: &str) {
    let r = call(
        Method::PUT,
        &users.url("/api/v1/users"),
        Body::Json(json!({"username": name, "password": PASSWORD})),
    )
    .await;
    expect(&r, 201, &format!("add user {name}"));
    assert_eq!(r.json, json!({}));
}

async fn add_ride(rides: &Service, by: &str, timestamp: &str, src: Value, dst: Value) -> Resp {
    call(
        Method::POST,
        &rides.url("/api/v1/rides"),
        Body::Json(
            json!({"created_by": by, "timestamp": timestamp, "source": src, "destination": dst}),
        ),
    )
    .await
}

async fn upcoming(rides: &Service, src: u32, dst: u32) -> Resp {
    get(&rides.url(&format!("/api/v1/rides?source={src}&destination={dst}"))).await
}

async fn ride_ids(rides: &Service, src: u32, dst: u32) -> Vec<i64> {
    let r = upcoming(rides, src, dst).await;
    if r.status == 204 {
        return Vec::new();
    }
    expect(&r, 200, "list upcoming");
    r.json
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x["rideId"].as_i64().expect("rideId"))
        .collect()
}

async fn count(svc: &Service) -> u64 {
    let r = get(&svc.url("/api/v1/_count")).await;
    expect(&r, 200, "_count");
    r.json[0].as_u64().expect("[n]")
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn users_api_answers_every_status() {
    let s = Stack::start("rs-users").await;
    let users = s.users.url("/api/v1/users");

    expect(&get(&users).await, 204, "no users yet");
    add_user(&s.users, "bob").await;
    add_user(&s.users, "alice").await;
    // Uppercase hex and form-encoded bodies are fine.
    let r = call(
        Method::PUT,
        &users,
        Body::Form(vec![
            ("username", "Carol".into()),
            ("password", PASSWORD.to_uppercase()),
        ]),
    )
    .await;
    expect(&r, 201, "form-encoded user");
    let r = get(&users).await;
    expect(&r, 200, "list users");
    assert_eq!(r.json, json!(["Carol", "alice", "bob"]));

    // Duplicates (case-sensitive) and invalid bodies are 400.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"username": "alice", "password": PASSWORD}),
            "duplicate",
        ),
        (
            json!({"username": "alice", "password": "abc"}),
            "short password",
        ),
        (
            json!({"username": "x", "password": format!("{PASSWORD}0")}),
            "41 digits",
        ),
        (
            json!({"username": "x", "password": PASSWORD.replace('3', "g")}),
            "not hex",
        ),
        (json!({"username": "x"}), "no password"),
        (json!({"password": PASSWORD}), "no username"),
        (
            json!({"username": "", "password": PASSWORD}),
            "empty username",
        ),
        (
            json!({"username": 5, "password": PASSWORD}),
            "numeric username",
        ),
        (json!(["alice", PASSWORD]), "not an object"),
    ];
    for (body, what) in bad {
        expect(
            &call(Method::PUT, &users, Body::Json(body)).await,
            400,
            what,
        );
    }
    expect(
        &call(
            Method::PUT,
            &users,
            Body::Raw("application/json", b"{oops".to_vec()),
        )
        .await,
        400,
        "malformed JSON",
    );
    expect(
        &call(Method::PUT, &users, Body::Empty).await,
        400,
        "empty body",
    );
    // Huge inputs: a name as long as the DBaaS stores is stored, a longer
    // one and an oversized body are clean 400s.
    let long = "u".repeat(dbaas::db::request::limits::MAX_TEXT);
    add_user(&s.users, &long).await;
    expect(
        &call(
            Method::PUT,
            &users,
            Body::Json(json!({"username": "v".repeat(100_000), "password": PASSWORD})),
        )
        .await,
        400,
        "a name longer than the DBaaS stores",
    );
    expect(
        &call(
            Method::PUT,
            &users,
            Body::Json(json!({"username": "y".repeat(1 << 20), "password": PASSWORD})),
        )
        .await,
        400,
        "oversized body",
    );
    expect(
        &call(
            Method::PUT,
            &users,
            Body::Raw(
                "application/json",
                format!(
                    "{{\"username\": \"z\", \"password\": {}}}",
                    "9".repeat(100_000)
                )
                .into_bytes(),
            ),
        )
        .await,
        400,
        "huge number as password",
    );
    let r = get(&users).await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(4));

    // Removal.
    let r = call(
        Method::DELETE,
        &s.users.url("/api/v1/users/bob"),
        Body::Empty,
    )
    .await;
    expect(&r, 200, "delete bob");
    assert_eq!(r.json, json!({}));
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/bob"),
            Body::Empty,
        )
        .await,
        400,
        "delete bob again",
    );
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/ALICE"),
            Body::Empty,
        )
        .await,
        400,
        "names are case-sensitive",
    );
    let r = call(
        Method::DELETE,
        &s.users.url("/api/v1/users/a%20b%2Fc"),
        Body::Empty,
    )
    .await;
    expect(&r, 400, "unknown encoded name");

    // 405 on every route, 404 elsewhere.
    for (m, path) in [
        (Method::POST, "/api/v1/users"),
        (Method::DELETE, "/api/v1/users"),
        (Method::PATCH, "/api/v1/users"),
        (Method::GET, "/api/v1/users/alice"),
        (Method::PUT, "/api/v1/users/alice"),
        (Method::POST, "/api/v1/users/alice"),
        (Method::GET, "/api/v1/db/clear"),
        (Method::PUT, "/api/v1/db/clear"),
        (Method::POST, "/api/v1/_count"),
        (Method::PUT, "/api/v1/_count"),
    ] {
        let r = call(m.clone(), &s.users.url(path), Body::Empty).await;
        expect(&r, 405, &format!("{m} {path}"));
    }
    expect(
        &get(&s.users.url("/api/v1/nothing")).await,
        404,
        "unknown path",
    );

    // Clear.
    let r = call(
        Method::POST,
        &s.users.url("/api/v1/db/clear"),
        Body::Json(json!({})),
    )
    .await;
    expect(&r, 200, "clear");
    assert_eq!(r.json, json!({}));
    expect(&get(&users).await, 204, "no users after clear");
    add_user(&s.users, "alice").await;
    drop(s);
}

#[tokio::test]
async fn rides_api_answers_every_status() {
    let s = Stack::start("rs-rides").await;
    let rides = &s.rides;
    add_user(&s.users, "alice").await;
    add_user(&s.users, "bob").await;
    let when = future();

    // Creation: JSON numbers, strings, form-encoded; past dates too.
    let r = add_ride(rides, "alice", &when, json!(1), json!(2)).await;
    expect(&r, 201, "create");
    assert_eq!(r.json, json!({}));
    expect(
        &add_ride(rides, "alice", &when, json!("1"), json!("2")).await,
        201,
        "string areas",
    );
    expect(
        &add_ride(rides, "bob", "21-08-2021:00-30-10", json!(1), json!(2)).await,
        201,
        "past date",
    );
    let r = call(
        Method::POST,
        &rides.url("/api/v1/rides"),
        Body::Form(vec![
            ("created_by", "bob".into()),
            ("timestamp", when.clone()),
            ("source", "198".into()),
            ("destination", "1".into()),
        ]),
    )
    .await;
    expect(&r, 201, "form-encoded ride");

    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"created_by": "nobody", "timestamp": when, "source": 1, "destination": 2}),
            "unknown user",
        ),
        (
            json!({"created_by": "Alice", "timestamp": when, "source": 1, "destination": 2}),
            "case-sensitive user",
        ),
        (
            json!({"created_by": "alice", "timestamp": "2030-01-01 10:00:00", "source": 1, "destination": 2}),
            "bad format",
        ),
        (
            json!({"created_by": "alice", "timestamp": "31-02-2030:00-00-10", "source": 1, "destination": 2}),
            "no such date",
        ),
        (
            json!({"created_by": "alice", "timestamp": "01-01-2030:00-60-10", "source": 1, "destination": 2}),
            "no such minute",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": 0, "destination": 2}),
            "area 0",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": 1, "destination": 199}),
            "area 199",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": "one", "destination": 2}),
            "area text",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": 1.5, "destination": 2}),
            "area fraction",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": "9".repeat(10_000), "destination": 2}),
            "huge area string",
        ),
        (
            json!({"created_by": "alice", "timestamp": "1".repeat(100_000), "source": 1, "destination": 2}),
            "huge timestamp",
        ),
        (
            json!({"timestamp": when, "source": 1, "destination": 2}),
            "no creator",
        ),
        (
            json!({"created_by": "alice", "source": 1, "destination": 2}),
            "no timestamp",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "destination": 2}),
            "no source",
        ),
        (
            json!({"created_by": "alice", "timestamp": when, "source": 1}),
            "no destination",
        ),
    ];
    for (body, what) in bad {
        let r = call(Method::POST, &rides.url("/api/v1/rides"), Body::Json(body)).await;
        expect(&r, 400, what);
    }
    let huge_number = format!(
        "{{\"created_by\": \"alice\", \"timestamp\": \"{when}\", \"source\": {}, \"destination\": 2}}",
        "9".repeat(100_000)
    );
    let r = call(
        Method::POST,
        &rides.url("/api/v1/rides"),
        Body::Raw("application/json", huge_number.into_bytes()),
    )
    .await;
    expect(&r, 400, "huge JSON number");

    // Listing: ids are unique and listed soonest first.
    let ids = ride_ids(rides, 1, 2).await;
    assert_eq!(
        ids.len(),
        2,
        "two upcoming 1→2 (the past one is not): {ids:?}"
    );
    assert_ne!(ids[0], ids[1]);
    let r = upcoming(rides, 1, 2).await;
    assert_eq!(r.json[0]["username"], "alice");
    assert_eq!(r.json[0]["timestamp"], when.as_str());
    assert_eq!(ride_ids(rides, 198, 1).await.len(), 1);
    expect(&upcoming(rides, 2, 1).await, 204, "nothing 2→1");
    for q in [
        "",
        "?source=1",
        "?destination=2",
        "?source=0&destination=2",
        "?source=1&destination=199",
        "?source=x&destination=2",
        "?source=-1&destination=2",
        &format!("?source={}&destination=2", "9".repeat(10_000)),
    ] {
        expect(&get(&rides.url(&format!("/api/v1/rides{q}"))).await, 400, q);
    }

    // Details and joining.
    let id = ids[0];
    let ride_url = rides.url(&format!("/api/v1/rides/{id}"));
    let r = get(&ride_url).await;
    expect(&r, 200, "details");
    assert_eq!(
        r.json,
        json!({"rideId": id, "created_by": "alice", "users": [], "timestamp": when, "source": 1, "destination": 2})
    );
    let join = |who: &'static str, url: String| async move {
        call(Method::POST, &url, Body::Json(json!({ "username": who }))).await
    };
    let r = join("bob", ride_url.clone()).await;
    expect(&r, 200, "bob joins");
    assert_eq!(r.json, json!({}));
    expect(&join("bob", ride_url.clone()).await, 200, "bob joins twice");
    expect(
        &join("alice", ride_url.clone()).await,
        200,
        "the creator joins",
    );
    expect(
        &join("nobody", ride_url.clone()).await,
        400,
        "unknown user joins",
    );
    let r = call(
        Method::POST,
        &ride_url,
        Body::Form(vec![("username", "alice".into())]),
    )
    .await;
    expect(&r, 200, "form-encoded join");
    expect(
        &call(Method::POST, &ride_url, Body::Json(json!({}))).await,
        400,
        "join without a username",
    );
    let r = get(&ride_url).await;
    assert_eq!(r.json["users"], json!(["bob"]));

    // The not-found rule: 204 for details and join, 400 for delete.
    for missing in [
        "999999".to_string(),
        "abc".into(),
        "-1".into(),
        "9".repeat(5_000),
    ] {
        let url = rides.url(&format!("/api/v1/rides/{missing}"));
        expect(&get(&url).await, 204, &format!("details of {missing:.20}"));
        expect(
            &join("bob", url.clone()).await,
            204,
            &format!("join {missing:.20}"),
        );
        expect(
            &call(Method::DELETE, &url, Body::Empty).await,
            400,
            &format!("delete {missing:.20}"),
        );
    }

    // Count, delete, 405s, 404, clear.
    let r = get(&rides.url("/api/v1/rides/count")).await;
    expect(&r, 200, "rides/count");
    assert_eq!(r.json, json!([4]));
    let r = call(Method::DELETE, &ride_url, Body::Empty).await;
    expect(&r, 200, "delete");
    assert_eq!(r.json, json!({}));
    expect(
        &call(Method::DELETE, &ride_url, Body::Empty).await,
        400,
        "delete again",
    );
    expect(&get(&ride_url).await, 204, "deleted ride details");
    assert_eq!(
        get(&rides.url("/api/v1/rides/count")).await.json,
        json!([3])
    );
    for (m, path) in [
        (Method::PUT, "/api/v1/rides".to_string()),
        (Method::DELETE, "/api/v1/rides".to_string()),
        (Method::PUT, format!("/api/v1/rides/{}", ids[1])),
        (Method::PATCH, format!("/api/v1/rides/{}", ids[1])),
        (Method::POST, "/api/v1/rides/count".to_string()),
        (Method::DELETE, "/api/v1/rides/count".to_string()),
        (Method::GET, "/api/v1/db/clear".to_string()),
        (Method::POST, "/api/v1/_count".to_string()),
    ] {
        let r = call(m.clone(), &rides.url(&path), Body::Empty).await;
        expect(&r, 405, &format!("{m} {path}"));
    }
    expect(
        &get(&rides.url("/api/v1/users")).await,
        404,
        "users API is not here",
    );
    let r = call(Method::POST, &rides.url("/api/v1/db/clear"), Body::Empty).await;
    expect(&r, 200, "clear");
    assert_eq!(r.json, json!({}));
    assert_eq!(
        get(&rides.url("/api/v1/rides/count")).await.json,
        json!([0])
    );
    expect(&upcoming(rides, 1, 2).await, 204, "nothing after clear");
    // Users are the users service's: still there.
    assert_eq!(
        get(&s.users.url("/api/v1/users")).await.json,
        json!(["alice", "bob"])
    );
    // Ride ids are never reused, even across a clear.
    expect(
        &add_ride(rides, "alice", &when, json!(1), json!(2)).await,
        201,
        "after clear",
    );
    let new = ride_ids(rides, 1, 2).await;
    assert_eq!(new.len(), 1);
    assert!(new[0] > ids[1].max(ids[0]), "{new:?} after {ids:?}");
    drop(s);
}

#[tokio::test]
async fn only_rides_still_to_come_are_listed() {
    let s = Stack::start("rs-upcoming").await;
    add_user(&s.users, "alice").await;
    let soon = ts(chrono::Duration::seconds(3));
    let past = ts(chrono::Duration::seconds(-60));
    let later = future();
    for t in [&soon, &past, &later] {
        expect(
            &add_ride(&s.rides, "alice", t, json!(7), json!(8)).await,
            201,
            t,
        );
    }
    let r = upcoming(&s.rides, 7, 8).await;
    expect(&r, 200, "upcoming");
    let times: Vec<&str> = r
        .json
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x["timestamp"].as_str().expect("timestamp"))
        .collect();
    assert_eq!(
        times,
        vec![soon.as_str(), later.as_str()],
        "soonest first, past left out"
    );
    // Once its time has passed, the soon ride leaves the listing.
    let gone = wait_until("the soon ride to pass", Duration::from_secs(15), || async {
        let r = upcoming(&s.rides, 7, 8).await;
        (r.json.as_array().map(Vec::len) == Some(1)).then_some(r.json)
    })
    .await
    .expect("soon ride dropped from the listing");
    assert_eq!(gone[0]["timestamp"], later.as_str());
    // Past rides still exist and have details.
    assert_eq!(
        get(&s.rides.url("/api/v1/rides/count")).await.json,
        json!([3])
    );
    drop(s);
}

/// A stand-in users service that records each request's `Origin` and answers
/// the list-users call with `names`.
async fn fake_users(names: Value) -> (String, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let record = record.clone();
            let body = names.to_string();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                let origin = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("origin")
                        .then(|| v.trim().to_string())
                });
                record.lock().expect("lock").push((line, origin));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn users_are_checked_across_services_with_one_list_call_and_origin() {
    let s = Stack::start("rs-check").await;
    let when = future();
    expect(
        &add_ride(&s.rides, "dave", &when, json!(3), json!(4)).await,
        400,
        "before dave exists",
    );
    add_user(&s.users, "dave").await;
    add_user(&s.users, "erin").await;
    expect(
        &add_ride(&s.rides, "dave", &when, json!(3), json!(4)).await,
        201,
        "once dave exists",
    );
    let id = ride_ids(&s.rides, 3, 4).await[0];
    expect(
        &add_ride(&s.rides, "erin", &when, json!(3), json!(5)).await,
        201,
        "erin's ride",
    );
    let erins = ride_ids(&s.rides, 3, 5).await[0];
    let r = call(
        Method::POST,
        &s.rides.url(&format!("/api/v1/rides/{erins}")),
        Body::Json(json!({"username": "dave"})),
    )
    .await;
    expect(&r, 200, "dave joins erin's ride");

    // Removing dave removes his ride and his membership; he can no longer create.
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/dave"),
            Body::Empty,
        )
        .await,
        200,
        "delete dave",
    );
    expect(
        &add_ride(&s.rides, "dave", &when, json!(3), json!(4)).await,
        400,
        "after dave left",
    );
    let gone = wait_until("dave's ride to go", Duration::from_secs(10), || async {
        let details = get(&s.rides.url(&format!("/api/v1/rides/{id}"))).await;
        let erin = get(&s.rides.url(&format!("/api/v1/rides/{erins}"))).await;
        (details.status == 204 && erin.json["users"] == json!([])).then_some(())
    })
    .await;
    assert!(gone.is_some(), "dave's ride and membership were removed");

    // One list call per creation, through USERS_URL, with Origin set.
    let (url, seen) = fake_users(json!(["zed"])).await;
    let rides = start_rides(&s.o.url, &url).await;
    expect(
        &add_ride(&rides, "zed", &when, json!(9), json!(10)).await,
        201,
        "zed via fake users",
    );
    expect(
        &add_ride(&rides, "yan", &when, json!(9), json!(10)).await,
        400,
        "yan unknown to fake users",
    );
    expect(
        &add_ride(&rides, "zed", "bad", json!(9), json!(10)).await,
        400,
        "invalid: no call",
    );
    let calls = seen.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            (
                "GET /api/v1/users HTTP/1.1".to_string(),
                Some(ORIGIN.to_string())
            ),
            (
                "GET /api/v1/users HTTP/1.1".to_string(),
                Some(ORIGIN.to_string())
            ),
        ]
    );
    drop(rides);
    drop(s);
}

/// Deleting a user removes them, their rides (with those rides' members) and
/// their memberships as ONE DBaaS write: the sequence advances by one.
#[tokio::test]
async fn deleting_a_user_is_one_transaction() {
    let s = Stack::start("rs-delete-txn").await;
    let when = future();
    for name in ["dave", "erin"] {
        add_user(&s.users, name).await;
    }
    expect(
        &add_ride(&s.rides, "dave", &when, json!(5), json!(6)).await,
        201,
        "dave's ride",
    );
    expect(
        &add_ride(&s.rides, "erin", &when, json!(5), json!(7)).await,
        201,
        "erin's ride",
    );
    let daves = ride_ids(&s.rides, 5, 6).await[0];
    let erins = ride_ids(&s.rides, 5, 7).await[0];
    for (ride, who) in [(daves, "erin"), (erins, "dave")] {
        let r = call(
            Method::POST,
            &s.rides.url(&format!("/api/v1/rides/{ride}")),
            Body::Json(json!({"username": who})),
        )
        .await;
        expect(&r, 200, &format!("{who} joins ride {ride}"));
    }
    // Writes straight to the DBaaS bracket the deletion's seq.
    let seq_of = |answer: Value| answer["seq"].as_u64().expect("seq");
    let before = seq_of(s.o.insert_user("marker-1").await);
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/dave"),
            Body::Empty,
        )
        .await,
        200,
        "delete dave",
    );
    let after = seq_of(s.o.insert_user("marker-2").await);
    assert_eq!(after, before + 2, "the deletion was one write");

    let rows = |table: &'static str| {
        let o = &s.o;
        async move {
            let (status, body) = o
                .read(json!({"table": table, "consistency": "strong", "order_by": [{"column": if table == "users" { "username" } else { "ride_id" }}]}))
                .await;
            assert_eq!(status, 200, "{body}");
            body["rows"].clone()
        }
    };
    let users: Vec<Value> = rows("users")
        .await
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["username"].clone())
        .collect();
    assert_eq!(
        users,
        vec![json!("erin"), json!("marker-1"), json!("marker-2")]
    );
    let rides = rows("rides").await;
    assert_eq!(rides.as_array().map(Vec::len), Some(1), "{rides}");
    assert_eq!(rides[0]["ride_id"], erins, "{rides}");
    assert_eq!(
        rows("ride_members").await,
        json!([]),
        "both memberships are gone"
    );
    // An unknown user is still a 400.
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/dave"),
            Body::Empty,
        )
        .await,
        400,
        "delete dave again",
    );
}

#[tokio::test]
async fn counters_count_api_requests_of_any_outcome_and_reset() {
    let s = Stack::start("rs-count").await;
    for svc in [&s.users, &s.rides] {
        assert_eq!(count(svc).await, 0, "nothing counted yet");
    }
    add_user(&s.users, "alice").await; // users 1
    expect(
        &call(Method::POST, &s.users.url("/api/v1/users"), Body::Empty).await,
        405,
        "405",
    ); // 2
    expect(
        &call(Method::PUT, &s.users.url("/api/v1/users"), Body::Empty).await,
        400,
        "400",
    ); // 3
    expect(
        &call(
            Method::DELETE,
            &s.users.url("/api/v1/users/nobody"),
            Body::Empty,
        )
        .await,
        400,
        "400",
    ); // 4
    expect(&get(&s.users.url("/api/v1/users")).await, 200, "list"); // 5
                                                                    // Not counted: _count, db/clear (any method), unknown paths.
    expect(
        &call(Method::POST, &s.users.url("/api/v1/_count"), Body::Empty).await,
        405,
        "_count 405",
    );
    expect(
        &call(Method::GET, &s.users.url("/api/v1/db/clear"), Body::Empty).await,
        405,
        "clear 405",
    );
    expect(&get(&s.users.url("/api/v1/elsewhere")).await, 404, "404");
    assert_eq!(count(&s.users).await, 5);
    assert_eq!(count(&s.users).await, 5, "reading the count is not counted");

    expect(
        &add_ride(&s.rides, "alice", &future(), json!(1), json!(2)).await,
        201,
        "ride",
    ); // rides 1, users 6
    expect(
        &add_ride(&s.rides, "alice", "x", json!(1), json!(2)).await,
        400,
        "bad ride",
    ); // rides 2
    expect(
        &get(&s.rides.url("/api/v1/rides/count")).await,
        200,
        "rides/count",
    ); // 3
    expect(
        &get(&s.rides.url("/api/v1/rides/42424242")).await,
        204,
        "no ride",
    ); // 4
    expect(
        &call(
            Method::PUT,
            &s.rides.url("/api/v1/rides/count"),
            Body::Empty,
        )
        .await,
        405,
        "405",
    ); // 5
    expect(
        &call(Method::POST, &s.rides.url("/api/v1/db/clear"), Body::Empty).await,
        200,
        "clear",
    );
    assert_eq!(count(&s.rides).await, 5);
    assert_eq!(
        count(&s.users).await,
        6,
        "the rides service's user check counts"
    );

    let r = call(Method::DELETE, &s.users.url("/api/v1/_count"), Body::Empty).await;
    expect(&r, 200, "reset");
    assert_eq!(r.json, json!({}));
    assert_eq!(count(&s.users).await, 0);
    assert_eq!(count(&s.rides).await, 5, "counters are per service");
    expect(
        &call(Method::DELETE, &s.rides.url("/api/v1/_count"), Body::Empty).await,
        200,
        "reset",
    );
    assert_eq!(count(&s.rides).await, 0);
    drop(s);
}

/// The upstream grader's main flow (ride date moved into the future).
#[tokio::test]
async fn upstream_grader_flow() {
    let s = Stack::start("rs-grader").await;
    for svc in [&s.users, &s.rides] {
        expect(
            &call(Method::POST, &svc.url("/api/v1/db/clear"), Body::Empty).await,
            200,
            "clear",
        );
    }
    add_user(&s.users, "user_1").await;
    let when = ts(chrono::Duration::days(400));
    expect(
        &add_ride(&s.rides, "user_1", &when, json!("1"), json!("2")).await,
        201,
        "create ride",
    );
    let r = upcoming(&s.rides, 1, 2).await;
    expect(&r, 200, "list");
    let list = r.json.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["username"], "user_1");
    assert_eq!(list[0]["timestamp"], when.as_str());
    let id = list[0]["rideId"].as_i64().expect("rideId");
    let r = get(&s.rides.url(&format!("/api/v1/rides/{id}"))).await;
    expect(&r, 200, "details");
    assert_eq!(r.json["rideId"], id);
    assert_eq!(r.json["created_by"], "user_1");
    assert_eq!(r.json["timestamp"], when.as_str());
    let r = call(
        Method::DELETE,
        &s.rides.url(&format!("/api/v1/rides/{id}")),
        Body::Empty,
    )
    .await;
    expect(&r, 200, "delete ride");
    let r = call(
        Method::DELETE,
        &s.users.url("/api/v1/users/user_1"),
        Body::Empty,
    )
    .await;
    expect(&r, 200, "delete user");
    let r = call(
        Method::DELETE,
        &s.users.url("/api/v1/users/user_1"),
        Body::Empty,
    )
    .await;
    expect(&r, 400, "delete unknown user");
    expect(&get(&s.users.url("/api/v1/users")).await, 204, "no users");
    expect(&upcoming(&s.rides, 1, 2).await, 204, "no rides");
    drop(s);
}

/// The upstream grader's count check: users `_count` = N + M + K (each ride
/// creation lists users once), rides `_count` = K + 2J + 1, `rides/count` = K.
#[tokio::test]
async fn upstream_count_check() {
    let s = Stack::start("rs-gradercount").await;
    let (n, m, k, j) = (5u64, 3u64, 4u64, 6u64);
    for svc in [&s.users, &s.rides] {
        expect(
            &call(Method::DELETE, &svc.url("/api/v1/_count"), Body::Empty).await,
            200,
            "reset",
        );
        expect(
            &call(Method::POST, &svc.url("/api/v1/db/clear"), Body::Empty).await,
            200,
            "clear",
        );
    }
    for i in 0..n {
        add_user(&s.users, &format!("user_{i}")).await;
    }
    for _ in 0..m {
        let r = call(
            Method::POST,
            &s.users.url("/api/v1/users"),
            Body::Json(json!({"username": "x", "password": PASSWORD})),
        )
        .await;
        expect(&r, 405, "POST users");
    }
    let when = ts(chrono::Duration::days(30));
    for i in 0..k {
        let r = add_ride(
            &s.rides,
            &format!("user_{}", i % n),
            &when,
            json!(11),
            json!(12),
        )
        .await;
        expect(&r, 201, "ride");
    }
    let r = get(&s.rides.url("/api/v1/rides/count")).await;
    expect(&r, 200, "rides/count");
    assert_eq!(r.json, json!([k]));
    for _ in 0..j {
        expect(
            &call(Method::PUT, &s.rides.url("/api/v1/rides"), Body::Empty).await,
            405,
            "PUT rides",
        );
    }
    for _ in 0..j {
        expect(&upcoming(&s.rides, 11, 12).await, 200, "listing");
    }
    assert_eq!(count(&s.users).await, n + m + k);
    assert_eq!(count(&s.rides).await, k + 2 * j + 1);
    drop(s);
}

/// With the DBaaS or the users service down, answers are JSON 503s, and the
/// services keep serving.
#[tokio::test]
async fn an_unreachable_dbaas_or_users_service_is_a_503() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let users = start_users(&dead).await;
    let rides = start_rides(&dead, &dead).await;
    let r = call(
        Method::PUT,
        &users.url("/api/v1/users"),
        Body::Json(json!({"username": "a", "password": PASSWORD})),
    )
    .await;
    expect(&r, 503, "add user");
    expect(&get(&users.url("/api/v1/users")).await, 503, "list users");
    expect(
        &add_ride(&rides, "a", &future(), json!(1), json!(2)).await,
        503,
        "users service down",
    );
    expect(&upcoming(&rides, 1, 2).await, 503, "list rides");
    expect(&get(&rides.url("/api/v1/rides/1")).await, 503, "details");
    expect(
        &call(Method::POST, &rides.url("/api/v1/db/clear"), Body::Empty).await,
        503,
        "clear",
    );
    // Validation still answers 400 without the DBaaS, and the counters still work.
    expect(
        &add_ride(&rides, "a", "nope", json!(1), json!(2)).await,
        400,
        "bad input",
    );
    assert_eq!(count(&rides).await, 4);
    assert_eq!(count(&users).await, 2);
}
