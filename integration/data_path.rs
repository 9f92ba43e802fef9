//! The data path: HTTP → Dispatcher → readQ/writeQ → workers → the
//! orchestrator's own reply queue → HTTP.

use std::time::Duration;

use serde_json::json;

use crate::common::{wait_until, Options, Orchestrator};

#[tokio::test]
async fn a_write_is_read_back_from_a_slave_once_synced() {
    let o = Orchestrator::start("roundtrip", Options::default()).await;
    let w = o.insert_user("alice").await;
    let seq = w["seq"].as_u64().expect("seq");
    assert_eq!(w["rows_affected"], 1);
    // Eventual read: poll until the slave has applied the sync entry.
    let row = wait_until("slave to see alice", Duration::from_secs(10), || async {
        let (status, body) = o
            .read(json!({"table": "users", "where": {"username": "alice"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["rows"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| (r[0].clone(), body.clone()))
    })
    .await
    .expect("slave caught up");
    assert_eq!(row.0["username"], "alice");
    assert!(row.1["seq"].as_u64().expect("seq") >= seq);
    let master = o.master_pid().await.expect("master");
    assert_ne!(
        row.1["worker"].as_u64(),
        Some(master),
        "eventual reads are served by a slave"
    );
    // Read-your-writes at the write's sequence number needs no polling.
    assert_eq!(o.usernames_at(seq).await, vec!["alice"]);
}

#[tokio::test]
async fn two_slaves_share_reads_round_robin() {
    let o = Orchestrator::start(
        "roundrobin",
        Options {
            slaves: 2,
            ..Options::default()
        },
    )
    .await;
    let mut served = std::collections::BTreeMap::<u64, usize>::new();
    for _ in 0..20 {
        let (status, body) = o.read(json!({"table": "users", "count": true})).await;
        assert_eq!(status, 200, "{body}");
        *served
            .entry(body["worker"].as_u64().expect("worker pid"))
            .or_default() += 1;
    }
    assert_eq!(served.len(), 2, "both slaves served: {served:?}");
    let counts: Vec<usize> = served.values().copied().collect();
    assert!(
        counts[0].abs_diff(counts[1]) <= 2,
        "round robin, got {served:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_the_service_keeps_serving() {
    let o = Orchestrator::start("badinput", Options::default()).await;
    let cases = [
        ("/api/v1/db/read", "{not json".to_string(), 400),
        (
            "/api/v1/db/read",
            json!({"table": "users", "where": "username='a' OR 1=1"}).to_string(),
            400,
        ),
        (
            "/api/v1/db/read",
            json!({"table": "users; DROP TABLE users"}).to_string(),
            400,
        ),
        (
            "/api/v1/db/read",
            json!({"table": "users", "columns": ["password FROM users --"]}).to_string(),
            400,
        ),
        (
            "/api/v1/db/read",
            json!({"table": "rides", "where": {"source": "one"}}).to_string(),
            400,
        ),
        (
            "/api/v1/db/read",
            json!({"columns": ["username"]}).to_string(),
            400,
        ),
        (
            "/api/v1/db/write",
            json!({"table": "users", "insert": {"username": "x"}}).to_string(),
            400,
        ),
        (
            "/api/v1/db/write",
            json!({"table": "users", "delete": {}}).to_string(),
            400,
        ),
        (
            "/api/v1/db/write",
            json!({"table": "users", "insert": {"username": "x", "password": "p"}, "clear": true})
                .to_string(),
            400,
        ),
        ("/api/v1/db/write", "x".repeat(2 << 20), 413),
    ];
    for (path, body, expected) in cases {
        let (status, reply) = o.post_raw(path, body.clone()).await;
        assert_eq!(
            status,
            expected,
            "{path} {}: {reply}",
            &body[..body.len().min(80)]
        );
        assert!(reply["error"].is_string(), "JSON error for {path}: {reply}");
    }
    let (status, reply) = o.get_json("/api/v1/db/read").await;
    assert_eq!((status, reply["error"].is_string()), (405, true));
    let (status, _) = o.get_json("/api/v1/nothing/here").await;
    assert_eq!(status, 404);

    // Conflicts are 409; hostile values are stored literally.
    o.insert_user("bob").await;
    let (status, reply) = o
        .write(json!({"table": "users", "insert": {"username": "bob", "password": "p"}}))
        .await;
    assert_eq!(status, 409, "{reply}");
    let evil = "x'); DROP TABLE users; --";
    let w = o.insert_user(evil).await;
    let names = o.usernames_at(w["seq"].as_u64().expect("seq")).await;
    assert_eq!(names, vec!["bob".to_string(), evil.to_string()]);
}

#[tokio::test]
async fn clear_empties_every_table() {
    let o = Orchestrator::start("clear", Options::default()).await;
    o.insert_user("carol").await;
    let (status, body) = o.post_json("/api/v1/db/clear", &json!({})).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = o
        .read(json!({"table": "users", "count": true, "consistency": "strong"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["count"], 0);
}

#[tokio::test]
async fn requests_without_workers_wait_out_their_deadline_and_a_queued_write_is_applied_later() {
    // Workers start behind a gate file: until it exists, there is no master.
    let dir = tempfile::tempdir().expect("tempdir");
    let (script, gate) = crate::common::gated_worker(dir.path());
    let o = Orchestrator::spawn(
        "nomaster",
        &Options {
            request_timeout_ms: 1500,
            worker_bin: Some(script),
            ..Options::default()
        },
    )
    .await;

    // Once the broker session is up (readiness then names only the missing
    // workers), nothing is refused for lack of a worker: the read waits for one
    // until its deadline (a failover takes far less), then says so.
    o.wait_for_broker_session().await;
    let (status, body) = o.read(json!({"table": "users"})).await;
    assert_eq!(status, 504, "no worker yet: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("no worker answered"),
        "{body}"
    );
    let (status, body) = o
        .write(json!({"table": "users", "insert": {"username": "patient", "password": "p"}}))
        .await;
    assert_eq!(status, 504, "no master yet: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("queued"),
        "{body}"
    );

    std::fs::write(&gate, b"").expect("open gate");
    o.wait_for_workers(1).await;
    let seen = wait_until("queued write applied", Duration::from_secs(20), || async {
        let (status, body) = o
            .read(json!({"table": "users", "consistency": "strong"}))
            .await;
        (status == 200 && body["rows"].as_array().is_some_and(|r| r.len() == 1)).then_some(body)
    })
    .await
    .expect("the queued write was applied");
    assert_eq!(seen["rows"][0]["username"], "patient");
}
