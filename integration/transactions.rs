//! `{"transaction": [...]}` writes against a real orchestrator, master and
//! slave: one seq for all the writes, the same data on the slave, nothing
//! applied when a write fails, one application per Idempotency-Key; and the
//! RideShare DBaaS client retrying a write whose reply was lost without
//! applying it twice (issue 14, item 8).

use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use dbaas::http::db::IDEMPOTENCY_KEY;
use rideshare::dbaas_client::{http_client, DbaasClient, Retry};
use serde_json::{json, Value};

use crate::common::fake_http::{lost_reply, FakeServer};
use crate::common::{slave_pids, Options, Orchestrator};

fn user(name: &str) -> Value {
    json!({"table": "users", "insert": {"username": name, "password": "p"}})
}

fn ride(by: &str) -> Value {
    json!({"table": "rides", "insert": {"created_by": by, "timestamp": "2031-01-02 08:30:00", "source": 1, "destination": 2}})
}

/// `(status, body)` of a read with `extra` fields merged in.
async fn read(o: &Orchestrator, table: &str, extra: Value) -> Value {
    let mut body = json!({"table": table});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, answer) = o.read(body).await;
    assert_eq!(status, 200, "read {table}: {answer}");
    answer
}

async fn strong_count(o: &Orchestrator, table: &str) -> i64 {
    read(o, table, json!({"count": true, "consistency": "strong"})).await["rows"][0]["count"]
        .as_i64()
        .expect("a count")
}

fn seq(answer: &Value) -> u64 {
    answer["seq"].as_u64().expect("a seq")
}

#[tokio::test]
async fn a_transaction_is_one_write_on_the_master_and_on_its_slave() {
    let o = Orchestrator::start("txn-apply", Options::default()).await;
    let before = seq(&o.insert_user("alice").await);
    let (status, answer) = o
        .write(json!({"transaction": [
            user("bob"),
            ride("alice"),
            {"table": "ride_members", "insert": {"ride_id": 1, "username": "bob"}},
            {"table": "users", "update": {"set": {"password": "q"}, "where": {"username": "alice"}}},
        ]}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let at = seq(&answer);
    assert_eq!(
        at,
        before + 1,
        "one seq for the whole transaction: {answer}"
    );
    assert_eq!(answer["rows_affected"], 4, "{answer}");
    let statements = answer["statements"].as_array().expect("statements");
    let rows: Vec<&Value> = statements.iter().map(|s| &s["rows_affected"]).collect();
    assert_eq!(rows, vec![&json!(1), &json!(1), &json!(1), &json!(1)]);
    assert_eq!(
        statements[1]["last_insert_id"], 1,
        "the ride's id: {answer}"
    );
    assert_eq!(statements[3].get("last_insert_id"), None, "{answer}");

    // The slave applied the one entry: everything at `at`, read there.
    let slave = slave_pids(&o.status().await);
    assert_eq!(slave.len(), 1);
    let members = read(&o, "ride_members", json!({"min_seq": at})).await;
    assert_eq!(members["worker"].as_u64(), Some(slave[0]), "{members}");
    assert_eq!(
        members["rows"],
        json!([{"ride_id": 1, "username": "bob"}]),
        "{members}"
    );
    let users = read(
        &o,
        "users",
        json!({"min_seq": at, "order_by": [{"column": "username"}]}),
    )
    .await;
    assert_eq!(users["worker"].as_u64(), Some(slave[0]), "{users}");
    assert_eq!(
        users["rows"],
        json!([{"username": "alice", "password": "q"}, {"username": "bob", "password": "p"}])
    );
    // And the master, of course.
    let master = o.master_pid().await.expect("a master");
    let rides = read(&o, "rides", json!({"consistency": "strong"})).await;
    assert_eq!(rides["worker"].as_u64(), Some(master), "{rides}");
    assert_eq!(rides["rows"].as_array().map(Vec::len), Some(1), "{rides}");
    // The sequence goes on from there.
    assert_eq!(seq(&o.insert_user("carol").await), at + 1);
}

#[tokio::test]
async fn a_transaction_applies_all_or_nothing() {
    let o = Orchestrator::start("txn-atomic", Options::default()).await;
    let before = seq(&o.insert_user("alice").await);

    // A duplicate key in the third write: the first two go too.
    let (status, answer) = o
        .write(json!({"transaction": [user("carol"), ride("carol"), user("alice"), user("dave")]}))
        .await;
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("statement 2 of the transaction (insert into users) failed")
            && error.contains("UNIQUE constraint failed: users.username"),
        "{answer}"
    );
    // A member of a ride that does not exist: the user goes too.
    let (status, answer) = o
        .write(json!({"transaction": [
            user("erin"),
            {"table": "ride_members", "insert": {"ride_id": 99, "username": "erin"}},
        ]}))
        .await;
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("statement 1 of the transaction (insert into ride_members)")
            && error.contains("FOREIGN KEY"),
        "{answer}"
    );

    // Refused before any worker sees them.
    let many: Vec<Value> = (0..101).map(|i| user(&format!("u{i}"))).collect();
    for (body, expected) in [
        (json!({"transaction": []}), "\"transaction\" has no writes"),
        (
            json!({"transaction": [user("x"), {"transaction": [user("y")]}]}),
            "statement 1 of the transaction: transactions do not nest",
        ),
        (json!({"transaction": many}), "takes at most 100 writes"),
        (
            json!({"transaction": [user("x"), {"table": "users", "insert": {"username": "y"}}]}),
            "statement 1 of the transaction: insert into \"users\" needs column \"password\"",
        ),
    ] {
        let (status, answer) = o.write(body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains(expected)),
            "{expected}: {answer}"
        );
    }

    // None of it was applied, and none of it used a seq.
    assert_eq!(seq(&o.insert_user("frank").await), before + 1);
    assert_eq!(o.usernames_at(before + 1).await, vec!["alice", "frank"]);
    assert_eq!(strong_count(&o, "rides").await, 0);
    assert_eq!(strong_count(&o, "ride_members").await, 0);
}

#[tokio::test]
async fn a_keyed_transaction_applies_once() {
    let o = Orchestrator::start("txn-key", Options::default()).await;
    o.insert_user("alice").await;
    let send = |body: Value| {
        let req = o
            .http
            .post(o.url("/api/v1/db/write"))
            .header("Idempotency-Key", "ride-of-alice")
            .json(&body);
        async move {
            let r = req.send().await.expect("POST");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = json!({"transaction": [ride("alice"), {"table": "ride_members", "insert": {"ride_id": 1, "username": "alice"}}]});
    let (status, first) = send(body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(send(body).await, (200, first.clone()), "the first outcome");
    // The key covers the whole transaction: another body under it is refused.
    let (status, other) = send(json!({"transaction": [ride("alice")]})).await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(strong_count(&o, "rides").await, 1);
    assert_eq!(strong_count(&o, "ride_members").await, 1);
    assert_eq!(seq(&o.insert_user("bob").await), seq(&first) + 1);
}

// ------------------------------------------------- a proxy that loses replies

/// A proxy in front of the orchestrator: forwards every request, but loses
/// the answer of the first write (the write is applied, its client never
/// hears so). Keeps the Idempotency-Key of every write it forwarded.
struct LosingProxy {
    target: String,
    http: reqwest::Client,
    keys: Mutex<Vec<Option<String>>>,
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    proxy: web::Data<LosingProxy>,
) -> HttpResponse {
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let first_write = req.path().ends_with("/db/write") && {
        let mut keys = proxy.keys.lock().expect("lock");
        keys.push(key.clone());
        keys.len() == 1
    };
    let mut out = proxy
        .http
        .post(format!("{}{}", proxy.target, req.path()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = &key {
        out = out.header(IDEMPOTENCY_KEY, k);
    }
    let Ok(answer) = out.send().await else {
        return lost_reply();
    };
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    if first_write {
        // Applied by the DBaaS; the answer is lost on the way back.
        return lost_reply();
    }
    HttpResponse::build(StatusCode::from_u16(status).expect("an HTTP status"))
        .content_type("application/json")
        .body(text)
}

fn losing_proxy(target: String) -> (FakeServer, web::Data<LosingProxy>) {
    let proxy = web::Data::new(LosingProxy {
        target,
        http: reqwest::Client::new(),
        keys: Mutex::default(),
    });
    let server = FakeServer::start({
        let proxy = proxy.clone();
        move |cfg| {
            cfg.app_data(proxy.clone())
                .default_service(web::to(forward));
        }
    });
    (server, proxy)
}

#[tokio::test]
async fn the_client_retries_a_lost_reply_under_its_key_and_applies_the_write_once() {
    let o = Orchestrator::start("txn-client-retry", Options::default()).await;
    o.insert_user("alice").await;
    let (proxy, seen) = losing_proxy(o.url.clone());
    let timeout = Duration::from_secs(10);
    let client = DbaasClient::new(http_client(timeout).expect("client"), &proxy.url)
        .with_retry(Retry::new(timeout, Duration::from_secs(20)));
    let row = json!({"created_by": "alice", "timestamp": "2031-01-02 08:30:00", "source": 1, "destination": 2});
    let out = client
        .insert("rides", row)
        .await
        .expect("answered on a retry");
    let keys = seen.keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 2, "sent twice: {keys:?}");
    assert!(keys[0].is_some(), "{keys:?}");
    assert_eq!(keys[0], keys[1], "under the same key");
    // Applied once: one ride, and the answer is the first (and only) application's.
    assert_eq!(strong_count(&o, "rides").await, 1);
    assert_eq!(out.last_insert_id, Some(1));
    assert_eq!(seq(&o.insert_user("bob").await), out.seq + 1);
}
