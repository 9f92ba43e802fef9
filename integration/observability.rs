//! Observing the service: `/metrics` counters move by exactly the traffic and
//! crashes caused; request ids come back; the status page works in a real
//! headless browser (Debian's chromium), shows the master and follows a failover.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{wait_until, Options, Orchestrator};

/// `name{labels}` → value, from the Prometheus text format.
async fn scrape(o: &Orchestrator) -> BTreeMap<String, f64> {
    o.metrics_text()
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_the_traffic_and_the_crashes() {
    let o = Orchestrator::start("metrics", Options::default()).await;
    let before = scrape(&o).await;
    for i in 0..7 {
        let (status, _) = o
            .read(json!({"table": "users", "count": true, "min_seq": 0, "limit": i}))
            .await;
        assert_eq!(status, 200);
    }
    for i in 0..3 {
        o.insert_user(&format!("m{i}")).await;
    }
    let (status, _) = o.post_raw("/api/v1/db/read", "not json").await;
    assert_eq!(status, 400);
    let master = o.master_pid().await.expect("master");
    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let s = o.wait_for_workers(1).await;
    assert_ne!(s["master"].as_u64(), Some(master));
    let after = wait_until(
        "metrics of the failover",
        Duration::from_secs(10),
        || async {
            let m = scrape(&o).await;
            (get(&m, "dbaas_workers_started_total") - get(&before, "dbaas_workers_started_total")
                >= 1.0)
                .then_some(m)
        },
    )
    .await
    .expect("replacement counted");
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta(r#"dbaas_http_requests_total{endpoint="/api/v1/db/read",status="200"}"#),
        7.0
    );
    assert_eq!(
        delta(r#"dbaas_http_requests_total{endpoint="/api/v1/db/read",status="400"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"dbaas_http_requests_total{endpoint="/api/v1/db/write",status="200"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"dbaas_http_requests_total{endpoint="/api/v1/crash/master",status="200"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"dbaas_publishes_total{queue="writeQ",outcome="confirmed"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"dbaas_publishes_total{queue="readQ",outcome="sent"}"#),
        7.0
    );
    assert_eq!(
        delta(r#"dbaas_workers_stopped_total{cause="crash_api"}"#),
        1.0
    );
    assert_eq!(delta("dbaas_workers_started_total"), 1.0);
    assert!(
        delta("dbaas_elections_total") >= 1.0,
        "the failover was an election"
    );
    assert!(get(&after, "dbaas_election_duration_seconds_count") >= 1.0);
    // Every long-lived task of the orchestrator is named and up, whatever its
    // policy: restarted connections and crash-only tasks alike.
    let tasks = o.status().await["tasks"].clone();
    for task in [
        "rabbitmq",
        "zookeeper",
        "broker session",
        "membership watch",
        "worker exit forwarder",
        "http server",
    ] {
        assert!(tasks[task]["up"] == true, "{task}: {tasks}");
        assert_eq!(
            get(&after, &format!(r#"dbaas_task_up{{task="{task}"}}"#)),
            1.0,
            "{task}"
        );
    }
    assert!(
        get(
            &after,
            r#"dbaas_http_request_duration_seconds_count{endpoint="/api/v1/db/read"}"#
        ) >= 8.0
    );
}

#[tokio::test]
async fn the_request_id_comes_back_and_reaches_the_worker() {
    let o = Orchestrator::start("requestid", Options::default()).await;
    let r = o
        .http
        .post(o.url("/api/v1/db/read"))
        .header("x-request-id", "trace-me-42")
        .json(&json!({"table": "users"}))
        .send()
        .await
        .expect("read");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-42")
    );
    let generated = o
        .http
        .get(o.url("/api/v1/worker/list"))
        .send()
        .await
        .expect("list");
    assert!(generated
        .headers()
        .get("x-request-id")
        .is_some_and(|v| v.len() >= 16));
}

/// Renders the status page in headless chromium after its scripts ran.
fn render(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shown_master(dom: &str) -> Option<String> {
    let start = dom.find(r#"id="master">"#)? + r#"id="master">"#.len();
    Some(dom[start..].split('<').next()?.to_string())
}

#[tokio::test]
#[ignore = "needs Debian's chromium: scripts/test runs it"]
async fn the_status_page_shows_the_master_and_follows_a_failover() {
    let o = Orchestrator::start("statuspage", Options::default()).await;
    let url = o.url("/");
    let master = o.master_pid().await.expect("master").to_string();
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || render(&url, None)
    })
    .await
    .expect("render");
    assert_eq!(
        shown_master(&dom).as_deref(),
        Some(master.as_str()),
        "page shows the master"
    );
    assert!(
        dom.contains(&format!(r#"data-pid="{master}""#)),
        "the workers table lists it"
    );

    let (status, _) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200);
    let s = o.wait_for_workers(1).await;
    let new_master = s["master"].as_u64().expect("new master").to_string();
    let dom = tokio::task::spawn_blocking(move || render(&url, None))
        .await
        .expect("render");
    assert_eq!(
        shown_master(&dom).as_deref(),
        Some(new_master.as_str()),
        "page follows the failover"
    );
    assert!(
        !dom.contains(&format!(r#"data-pid="{master}""#)),
        "the dead master is gone"
    );

    if let Ok(path) = std::env::var("DBAAS_TEST_SCREENSHOT") {
        let url = o.url("/");
        tokio::task::spawn_blocking(move || render(&url, Some(std::path::Path::new(&path))))
            .await
            .expect("screenshot");
    }
}
