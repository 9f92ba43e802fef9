//! Hostile and careless inputs against a real orchestrator and workers: no
//! request takes the service away from the others (issue 14).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{slave_pids, wait_until, Options, Orchestrator};

fn ride(extra: Value) -> Value {
    let mut row = json!({"created_by": "alice", "timestamp": "2031-01-02 08:30:00", "source": 1, "destination": 2});
    if let (Some(row), Some(extra)) = (row.as_object_mut(), extra.as_object()) {
        row.extend(extra.clone());
    }
    json!({"table": "rides", "insert": row})
}

/// The master's pid and epoch, and every worker's pid.
async fn cluster(o: &Orchestrator) -> (Option<u64>, Option<u64>, Vec<u64>) {
    let s = o.status().await;
    (s["master"].as_u64(), s["epoch"].as_u64(), o.pids().await)
}

#[tokio::test]
async fn the_largest_ride_id_is_refused_and_writes_go_on() {
    let o = Orchestrator::start("ride-id-max", Options::default()).await;
    o.insert_user("alice").await;
    let before = cluster(&o).await;
    assert!(before.0.is_some(), "{before:?}");

    // The sequence of issue 14: the largest ride id, then ordinary inserts.
    let (status, body) = o.write(ride(json!({"ride_id": i64::MAX}))).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"ride_id\"") && error.contains("assigned by the database"),
        "{body}"
    );
    let (status, body) = o
        .write(json!({"table": "rides", "update": {"set": {"ride_id": i64::MAX}, "where": {"created_by": "alice"}}}))
        .await;
    assert_eq!(status, 400, "{body}");
    for expected_id in [1, 2] {
        let (status, body) = o.write(ride(json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["last_insert_id"], expected_id, "{body}");
    }
    let (status, body) = o.post_json("/api/v1/db/clear", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    // No master exited: the same master of the same epoch, the same workers.
    assert_eq!(cluster(&o).await, before);
}

#[tokio::test]
async fn malformed_reads_do_not_count_for_the_scaler() {
    let o = Orchestrator::start("scaler-junk", Options::default()).await;
    let junk = [
        "{not json".to_string(),
        "[]".to_string(),
        json!({"table": "accounts"}).to_string(),
        json!({"table": "users", "where": "1=1"}).to_string(),
        json!({"table": "users", "limit": 1_000_000}).to_string(),
        json!({"table": "users", "columns": vec!["username"; 3000]}).to_string(),
        // Valid, but beyond any seq a write has been given: refused, uncounted.
        json!({"table": "users", "min_seq": 1_000_000_000_000_000u64}).to_string(),
    ];
    for i in 0..30 {
        let (status, body) = o
            .post_raw("/api/v1/db/read", junk[i % junk.len()].clone())
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let (_, scaler) = o.get_json("/api/v1/scaler").await;
    assert_eq!(scaler["reads"], 0, "{scaler}");
    assert_eq!(scaler["timer_started"], false, "{scaler}");
    assert_eq!(
        (scaler["min_slaves"].as_u64(), scaler["max_slaves"].as_u64()),
        (Some(1), Some(8))
    );
    let (status, body) = o.read(json!({"table": "users", "count": true})).await;
    assert_eq!(status, 200, "{body}");
    let (_, scaler) = o.get_json("/api/v1/scaler").await;
    assert_eq!(scaler["reads"], 1, "a valid read counts: {scaler}");
}

/// The value of a counter line of the `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const READS_SENT: &str = r#"dbaas_publishes_total{queue="readQ",outcome="sent"}"#;

#[tokio::test]
async fn reads_waiting_for_their_min_seq_leave_the_slave_free_for_other_reads() {
    // Waits far longer than the test takes: without parking, the 40 waiting
    // reads would hold the slave's 32 delivery slots all that time.
    let o = Orchestrator::start(
        "parked-reads",
        Options {
            request_timeout_ms: 25_000,
            extra_env: vec![("DBAAS_READ_WAIT_MS".into(), "20000".into())],
            ..Options::default()
        },
    )
    .await;
    let seq = o.insert_user("ann").await["seq"].as_u64().expect("seq");
    let before = metric(&o.metrics_text().await, READS_SENT);

    // 40 reads of a seq no write has been given yet: a little beyond the
    // latest (well within the refusal margin), so they wait on the slave.
    let waiting: Vec<_> = (0..40)
        .map(|_| {
            let http = o.http.clone();
            let url = o.url("/api/v1/db/read");
            let body = json!({"table": "users", "columns": ["username"], "order_by": [{"column": "username"}], "min_seq": seq + 1});
            tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await.expect("POST");
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let published = wait_until("the 40 reads on readQ", Duration::from_secs(10), || async {
        (metric(&o.metrics_text().await, READS_SENT) - before >= 40.0).then_some(())
    })
    .await;
    assert!(published.is_some(), "the 40 reads were never published");
    // Parked: the slave took every one of them and gave its delivery back
    // (acknowledged), so readQ holds nothing, ready or unacknowledged.
    let parked = wait_until("the 40 reads parked", Duration::from_secs(10), || async {
        (o.queue_depth("readQ") == Some((0, 0))).then_some(())
    })
    .await;

    // Meanwhile an ordinary read goes through the same slave at once.
    let started = Instant::now();
    let (status, body) = o.read(json!({"table": "users", "count": true})).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "an ordinary read took {took:?} while 40 reads waited for seq {}",
        seq + 1
    );
    assert!(
        parked.is_some(),
        "the waiting reads hold readQ deliveries (ready, unacked): {:?}",
        o.queue_depth("readQ")
    );
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a read was answered before its min_seq was reached"
    );

    // The write they wait for: each one is answered, and sees it.
    let bob = o.insert_user("bob").await;
    assert_eq!(bob["seq"].as_u64(), Some(seq + 1), "{bob}");
    for w in waiting {
        let (status, body) = w.await.expect("joined");
        assert_eq!(status, 200, "{body}");
        assert!(body["seq"].as_u64() >= Some(seq + 1), "{body}");
        assert_eq!(
            body["rows"],
            json!([{"username": "ann"}, {"username": "bob"}]),
            "{body}"
        );
    }
}

#[tokio::test]
async fn an_idempotency_key_is_bound_to_its_request() {
    let o = Orchestrator::start("idempotency", Options::default()).await;
    let write = |key: &'static str, name: &'static str| {
        let req = o
            .http
            .post(o.url("/api/v1/db/write"))
            .header("Idempotency-Key", key)
            .json(&json!({"table": "users", "insert": {"username": name, "password": "p"}}));
        async move {
            let r = req.send().await.expect("POST");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, first) = write("k1", "ann").await;
    assert_eq!(status, 200, "{first}");
    // A retry of the same request: the first outcome, applied once.
    assert_eq!(write("k1", "ann").await, (200, first.clone()));
    // The same key with another body: refused, and nothing applied.
    let (status, body) = write("k1", "bob").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("different request")),
        "{body}"
    );
    let (status, other) = write("k2", "bob").await;
    assert_eq!(status, 200, "{other}");
    let seq = other["seq"].as_u64().expect("seq");
    assert_eq!(
        seq,
        first["seq"].as_u64().expect("seq") + 1,
        "the refusal used no seq"
    );
    assert_eq!(o.usernames_at(seq).await, vec!["ann", "bob"]);
}

/// Sends `head` and then `trickle` one byte per 300 ms; returns what the server
/// answered and how long it took to close the connection.
async fn slow_client(addr: String, head: String, trickle: usize) -> (String, Duration) {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        if tx.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..trickle {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    // Until the server closes the connection (or a patience far beyond its timeout).
    let read = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    writer.abort();
    assert!(read.is_ok(), "the connection was still open after 20 s");
    (String::from_utf8_lossy(&answer).into_owned(), took)
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let o = Orchestrator::start(
        "slow-clients",
        Options {
            extra_env: vec![("HTTP_CLIENT_TIMEOUT_MS".into(), "1500".into())],
            ..Options::default()
        },
    )
    .await;
    let addr = o.url.trim_start_matches("http://").to_string();
    // A body of 200 bytes, one every 300 ms: a minute to send, cut at 1.5 s.
    let body_head = format!(
        "POST /api/v1/db/read HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{"
    );
    let slow_body = tokio::spawn(slow_client(addr.clone(), body_head, 200));
    // Headers that never end.
    let header_head = format!("POST /api/v1/db/read HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let slow_head = tokio::spawn(slow_client(addr.clone(), header_head, 200));
    // Meanwhile everyone else is served.
    let (status, body) = o.read(json!({"table": "users", "count": true})).await;
    assert_eq!(status, 200, "{body}");

    let (answer, took) = slow_body.await.expect("joined");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
    let (answer, took) = slow_head.await.expect("joined");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
}

#[tokio::test]
async fn a_read_over_the_reply_limit_is_refused_and_the_slave_keeps_serving() {
    let o = Orchestrator::start(
        "reply-limit",
        Options {
            extra_env: vec![("DBAAS_MAX_REPLY_BYTES".into(), "4096".into())],
            ..Options::default()
        },
    )
    .await;
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"username": format!("user-{i:04}-with-a-longish-name"), "password": "p"}))
        .collect();
    let (status, body) = o.write(json!({"table": "users", "insert": rows})).await;
    assert_eq!(status, 200, "{body}");
    let seq = body["seq"].as_u64().expect("seq");
    let slaves = slave_pids(&o.status().await);
    assert_eq!(slaves.len(), 1);
    for _ in 0..3 {
        let (status, body) = o.read(json!({"table": "users", "min_seq": seq})).await;
        assert_eq!(status, 413, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("\"limit\"") && error.contains("\"offset\""),
            "{body}"
        );
        // The same slave answers the next read, page by page.
        let (status, page) = o
            .read(json!({"table": "users", "columns": ["username"], "order_by": [{"column": "username"}], "limit": 10, "offset": 190, "min_seq": seq}))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["rows"].as_array().map(Vec::len), Some(10), "{page}");
        assert_eq!(page["rows"][0]["username"], "user-0190-with-a-longish-name");
        assert_eq!(page["more"], Value::Null, "the last page: {page}");
        assert_eq!(page["worker"].as_u64(), Some(slaves[0]));
    }
    assert_eq!(
        slave_pids(&o.status().await),
        slaves,
        "the slave was never replaced"
    );
}
