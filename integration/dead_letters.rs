//! Poison writes end in `writeQ.dead` (issue 14), against real RabbitMQ: a
//! write whose consumer dies every time it holds it is quarantined by the
//! master (its client gets the error, later writes are applied), the broker's
//! delivery limit catches one the master never got to see, `dbaasctl dead`
//! lists, retries and drops them, and a classic `writeQ` of an earlier release
//! is migrated once it is empty.
//!
//! A consumer "dies" here the way a crashed master does for the broker: its
//! connection goes away while it holds the delivery unacknowledged.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

use crate::common::{namespace, wait_until, Options, Orchestrator};
use dbaas::broker::dead::{delivery_count, DEAD_WRITE_Q};
use dbaas::broker::WRITE_Q;

const LIMIT: u64 = 3;

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

/// Takes `n` deliveries from `writeQ` on a new connection, then drops the
/// connection without acknowledging them; returns (write id, delivery count).
async fn take_and_die(url: &str, n: u16) -> Vec<(String, u64)> {
    let conn = connect(url).await;
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_qos(n, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            WRITE_Q.into(),
            "doomed".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume writeQ");
    let mut taken = Vec::new();
    while taken.len() < usize::from(n) {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a write on writeQ within 30 s")
            .expect("consumer open")
            .expect("delivery");
        let body: Value = serde_json::from_slice(&delivery.data).expect("a write message");
        taken.push((
            body["write_id"].as_str().unwrap_or("?").to_string(),
            delivery_count(&delivery.properties),
        ));
    }
    conn.close(200, "dying".into()).await.expect("close");
    taken.sort();
    taken
}

async fn depth(conn: &Connection, queue: &str) -> u32 {
    let channel = conn.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = channel.close(200, "counted".into()).await;
    q.message_count()
}

fn dbaasctl(amqp_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbaasctl"))
        .env("DBAAS_AMQP_URL", amqp_url)
        .arg("dead")
        .args(args)
        .output()
        .expect("run dbaasctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn user(name: &str) -> Value {
    json!({"table": "users", "insert": {"username": name, "password": "p"}})
}

#[tokio::test]
async fn writes_that_keep_killing_their_consumer_are_quarantined_and_the_others_applied() {
    // No master until the gate opens: meanwhile this test is the only consumer of writeQ.
    let dir = tempfile::tempdir().expect("tempdir");
    let (script, gate) = crate::common::gated_worker(dir.path());
    let o = Orchestrator::spawn(
        "poison",
        &Options {
            request_timeout_ms: 60_000,
            worker_bin: Some(script),
            extra_env: vec![("DBAAS_WRITE_DELIVERY_LIMIT".into(), LIMIT.to_string())],
            ..Options::default()
        },
    )
    .await;
    o.wait_for_broker_session().await;
    let amqp = o.ns.amqp_url.clone();
    let conn = connect(&amqp).await;

    // The backstop: a write that dies more often than the queue's own limit
    // (LIMIT + 1) is dead-lettered by the broker, never seen by a master.
    let body = json!({"write_id": "backstop-1", "request": user("backstop")});
    let ch = dbaas::broker::confirmed_channel(&conn)
        .await
        .expect("channel");
    dbaas::broker::publish_confirmed(
        &ch,
        WRITE_Q,
        body.to_string().as_bytes(),
        BasicProperties::default(),
        Duration::from_secs(10),
    )
    .await
    .expect("publish");
    for round in 0..=LIMIT + 1 {
        let taken = take_and_die(&amqp, 1).await;
        assert_eq!(taken, vec![("backstop-1".to_string(), round)]);
    }
    wait_until(
        "the broker dead-letters it",
        Duration::from_secs(10),
        || async { (depth(&conn, DEAD_WRITE_Q).await == 1).then_some(()) },
    )
    .await
    .expect("writeQ.dead holds the write the broker gave up on");
    assert_eq!(depth(&conn, WRITE_Q).await, 0);

    // Two clients' writes that kill every consumer that takes them.
    let send = |name: &'static str| {
        let http = o.http.clone();
        let url = o.url("/api/v1/db/write");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("Idempotency-Key", name)
                .json(&user(name))
                .send()
                .await
                .expect("POST");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let poison = [send("poison-1"), send("poison-2")];
    let first = take_and_die(&amqp, 2).await;
    assert_eq!(
        first,
        vec![("key:poison-1".into(), 0), ("key:poison-2".into(), 0)]
    );
    // Innocent writes queue up behind them; the doomed consumers take only the
    // poison ones (they are redelivered first), so these never come back.
    let innocent: Vec<_> = ["ann", "bob", "cy"].into_iter().map(send).collect();
    wait_until(
        "the innocent writes queued",
        Duration::from_secs(10),
        || async { (depth(&conn, WRITE_Q).await == 5).then_some(()) },
    )
    .await
    .expect("five writes in writeQ");
    for round in 1..LIMIT {
        let taken = take_and_die(&amqp, 2).await;
        assert_eq!(
            taken,
            vec![
                ("key:poison-1".into(), round),
                ("key:poison-2".into(), round)
            ]
        );
    }

    // A master comes: it sees both came back LIMIT times, and quarantines them.
    std::fs::write(&gate, b"").expect("open gate");
    for p in poison {
        let (status, body) = p.await.expect("client task");
        assert_eq!(status, 422, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("quarantined after {} deliveries", LIMIT + 1))
                && error.contains("writeQ.dead"),
            "{body}"
        );
    }
    let mut last_seq = 0;
    for i in innocent {
        let (status, body) = i.await.expect("client task");
        assert_eq!(status, 200, "an innocent write: {body}");
        last_seq = last_seq.max(body["seq"].as_u64().unwrap_or(0));
    }
    o.wait_for_workers(1).await;
    let later = o.insert_user("later").await;
    assert!(later["seq"].as_u64() > Some(last_seq), "{later}");
    assert_eq!(
        o.usernames_at(later["seq"].as_u64().unwrap_or(0)).await,
        vec!["ann", "bob", "cy", "later"]
    );

    // Visible: worker/status and /metrics.
    let status = wait_until(
        "status shows 3 dead writes",
        Duration::from_secs(10),
        || async {
            let s = o.status().await;
            (s["dead_writes"] == 3).then_some(s)
        },
    )
    .await;
    assert!(status.is_some(), "{}", o.status().await);
    let metrics = o.metrics_text().await;
    assert!(
        metrics.lines().any(|l| l == "dbaas_dead_writes 3"),
        "{metrics}"
    );

    // dbaasctl dead list, twice: listing loses nothing.
    for _ in 0..2 {
        let (ok, out) = dbaasctl(&amqp, &["list", "--json"]);
        assert!(ok, "{out}");
        let listed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(listed.len(), 3, "{out}");
        let by_id = |id: &str| {
            listed
                .iter()
                .find(|w| w["write_id"] == id)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let backstop = by_id("backstop-1");
        assert_eq!(backstop["what"], "insert into users", "{out}");
        assert!(
            backstop["reason"]
                .as_str()
                .is_some_and(|r| r.contains("delivery_limit")),
            "{out}"
        );
        for id in ["key:poison-1", "key:poison-2"] {
            let w = by_id(id);
            assert_eq!(w["deliveries"], LIMIT + 1, "{out}");
            assert!(
                w["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("never answered")),
                "{out}"
            );
            assert!(w["at"].is_string(), "{out}");
        }
    }
    let (ok, table) = dbaasctl(&amqp, &["list"]);
    assert!(
        ok && table.contains("WRITE ID") && table.contains("key:poison-1"),
        "{table}"
    );

    // Retry one: back on writeQ with a fresh count, applied by the master.
    let (ok, out) = dbaasctl(&amqp, &["retry", "key:poison-1"]);
    assert!(ok && out.contains("1 write(s) retried"), "{out}");
    let applied = wait_until("the retried write applied", Duration::from_secs(20), || async {
        let (status, body) = o
            .read(json!({"table": "users", "where": {"username": "poison-1"}, "consistency": "strong"}))
            .await;
        (status == 200 && body["rows"].as_array().is_some_and(|r| r.len() == 1)).then_some(())
    })
    .await;
    assert!(applied.is_some(), "the retried write was never applied");
    let (ok, out) = dbaasctl(&amqp, &["retry", "key:poison-1"]);
    assert!(
        !ok && out.contains("no dead write with id key:poison-1"),
        "{out}"
    );

    // Drop the rest.
    let (ok, out) = dbaasctl(&amqp, &["drop", "--all"]);
    assert!(ok && out.contains("2 write(s) dropped"), "{out}");
    let (ok, out) = dbaasctl(&amqp, &["list"]);
    assert!(ok && out.contains("writeQ.dead is empty"), "{out}");
    assert_eq!(depth(&conn, DEAD_WRITE_Q).await, 0);
    let (_, body) = o
        .read(json!({"table": "users", "where": {"username": "poison-2"}, "consistency": "strong"}))
        .await;
    assert_eq!(body["rows"], json!([]), "a dropped write is not applied");
}

#[tokio::test]
async fn a_classic_write_queue_of_an_earlier_release_is_migrated_once_empty() {
    let ns = namespace("writeq-migration").await;
    let conn = connect(&ns.amqp_url).await;
    let ch = dbaas::broker::confirmed_channel(&conn)
        .await
        .expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(WRITE_Q.into(), durable, FieldTable::default())
        .await
        .expect("declare a classic writeQ");
    dbaas::broker::publish_confirmed(
        &ch,
        WRITE_Q,
        br#"{"write_id":"old","request":{"table":"users","clear":true}}"#,
        BasicProperties::default(),
        Duration::from_secs(10),
    )
    .await
    .expect("publish");

    // A write waits in it: not deleted, and the error says what to do.
    let refused = dbaas::broker::open_once(&ns.amqp_url, "migration-test").await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("classic queue")
            && error.contains("holds 1 write")
            && error.contains("Drain"),
        "{error}"
    );
    assert_eq!(depth(&conn, WRITE_Q).await, 1);

    // Drained: the next attempt replaces it with the quorum queue.
    let got = ch
        .basic_get(WRITE_Q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(got.is_some());
    let migrated = dbaas::broker::open_once(&ns.amqp_url, "migration-test").await;
    assert!(migrated.is_ok(), "{:?}", migrated.err());
    // It is a quorum queue now: the classic declaration is refused.
    let ch = conn.create_channel().await.expect("channel");
    let classic = ch
        .queue_declare(WRITE_Q.into(), durable, FieldTable::default())
        .await;
    assert!(
        classic.is_err_and(|e| e.to_string().contains("PRECONDITION_FAILED")),
        "writeQ is still classic"
    );
    // And declaring it again (every process does) is fine.
    assert!(dbaas::broker::open_once(&ns.amqp_url, "again")
        .await
        .is_ok());
    assert_eq!(depth(&conn, DEAD_WRITE_Q).await, 0);
}

#[tokio::test]
async fn processes_that_disagree_on_the_delivery_limit_are_told() {
    let ns = namespace("writeq-limit").await;
    let conn = connect(&ns.amqp_url).await;
    let ch = conn.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(
        WRITE_Q.into(),
        durable,
        dbaas::broker::dead::write_queue_arguments(97),
    )
    .await
    .expect("declare writeQ with another limit");
    let refused = dbaas::broker::open_once(&ns.amqp_url, "limit-test").await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("DBAAS_WRITE_DELIVERY_LIMIT"), "{error}");
    // Nothing was deleted.
    assert_eq!(depth(&conn, WRITE_Q).await, 0);
}
