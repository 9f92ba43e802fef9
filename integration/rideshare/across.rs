//! The two services together: the rides service's user check is one call to
//! the users service's list API with `Origin` (against an actix-web stand-in
//! that records it, and against the real users service), deleting a user is
//! one DBaaS write that takes their rides and memberships, and services
//! whose DBaaS or users service cannot be reached answer 503 and keep serving.

use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::header::ORIGIN;
use actix_web::{web, HttpRequest, HttpResponse};
use reqwest::Method;
use serde_json::{json, Value};

use super::{
    add_ride, add_user, call, count, delete_user, expect, get, join, next_year, ride_ids, upcoming,
    Body,
};
use crate::common::fake_http::FakeServer;
use crate::common::rideshare::{Service, Stack, RIDES_ORIGIN};
use crate::common::{free_port, wait_until, Options, Orchestrator};

/// A users service that knows `names` and records each call and its `Origin`.
struct UsersStandIn {
    names: Value,
    calls: Mutex<Vec<(String, Option<String>)>>,
}

async fn list_users(req: HttpRequest, users: web::Data<UsersStandIn>) -> HttpResponse {
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let call = format!("{} {}", req.method(), req.path());
    users.calls.lock().expect("lock").push((call, origin));
    HttpResponse::Ok().json(&users.names)
}

#[tokio::test]
async fn the_user_check_is_one_list_call_with_origin() {
    let o = Orchestrator::start("rs-origin", Options::default()).await;
    let stand_in = web::Data::new(UsersStandIn {
        names: json!(["zed"]),
        calls: Mutex::default(),
    });
    let users = FakeServer::start({
        let stand_in = stand_in.clone();
        move |cfg| {
            cfg.app_data(stand_in.clone())
                .default_service(web::to(list_users));
        }
    });
    let rides = Service::rides(&o.url, &users.url).await;
    let when = next_year();
    expect(
        &add_ride(&rides, "zed", &when, (9, 10)).await,
        201,
        "zed is known",
    );
    expect(
        &add_ride(&rides, "yan", &when, (9, 10)).await,
        400,
        "yan is not",
    );
    expect(
        &add_ride(&rides, "zed", "bad", (9, 10)).await,
        400,
        "invalid: no call",
    );
    let one = (
        "GET /api/v1/users".to_string(),
        Some(RIDES_ORIGIN.to_string()),
    );
    assert_eq!(
        *stand_in.calls.lock().expect("lock"),
        vec![one.clone(), one]
    );
}

#[tokio::test]
async fn the_user_check_asks_the_users_service() {
    let s = Stack::start("rs-check").await;
    let when = next_year();
    expect(
        &add_ride(&s.rides, "dave", &when, (3, 4)).await,
        400,
        "before dave exists",
    );
    add_user(&s.users, "dave").await;
    expect(
        &add_ride(&s.rides, "dave", &when, (3, 4)).await,
        201,
        "once dave exists",
    );
    expect(&delete_user(&s.users, "dave").await, 200, "delete dave");
    expect(
        &add_ride(&s.rides, "dave", &when, (3, 4)).await,
        400,
        "after dave left",
    );
}

/// Deleting a user removes them, their rides (with those rides' members) and
/// their memberships as ONE DBaaS write: the sequence advances by one.
#[tokio::test]
async fn deleting_a_user_is_one_dbaas_write() {
    let s = Stack::start("rs-delete-txn").await;
    let when = next_year();
    for name in ["dave", "erin"] {
        add_user(&s.users, name).await;
    }
    expect(
        &add_ride(&s.rides, "dave", &when, (5, 6)).await,
        201,
        "dave's ride",
    );
    expect(
        &add_ride(&s.rides, "erin", &when, (5, 7)).await,
        201,
        "erin's ride",
    );
    let daves = ride_ids(&s.rides, (5, 6)).await[0];
    let erins = ride_ids(&s.rides, (5, 7)).await[0];
    expect(&join(&s.rides, daves, "erin").await, 200, "erin joins dave");
    expect(&join(&s.rides, erins, "dave").await, 200, "dave joins erin");

    // Writes straight to the DBaaS bracket the deletion's seq.
    let seq_of = |answer: Value| answer["seq"].as_u64().expect("seq");
    let before = seq_of(s.o.insert_user("marker-1").await);
    expect(&delete_user(&s.users, "dave").await, 200, "delete dave");
    let after = seq_of(s.o.insert_user("marker-2").await);
    assert_eq!(after, before + 2, "the deletion was one write");

    let rows = |table: &'static str, key: &'static str| {
        let o = &s.o;
        async move {
            let read =
                json!({"table": table, "consistency": "strong", "order_by": [{"column": key}]});
            let (status, body) = o.read(read).await;
            assert_eq!(status, 200, "{body}");
            body["rows"].clone()
        }
    };
    let users: Vec<Value> = rows("users", "username")
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
    let rides = rows("rides", "ride_id").await;
    assert_eq!(rides.as_array().map(Vec::len), Some(1), "{rides}");
    assert_eq!(rides[0]["ride_id"], erins, "{rides}");
    assert_eq!(
        rows("ride_members", "ride_id").await,
        json!([]),
        "both memberships are gone"
    );

    // The rides service sees it as soon as its slave has applied it.
    let gone = wait_until("dave's ride to go", Duration::from_secs(10), || async {
        let details = get(&s.rides.url(&format!("/api/v1/rides/{daves}"))).await;
        let erin = get(&s.rides.url(&format!("/api/v1/rides/{erins}"))).await;
        (details.status == 204 && erin.json["users"] == json!([])).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the rides service saw dave's ride and membership go"
    );
    expect(
        &delete_user(&s.users, "dave").await,
        400,
        "delete dave again",
    );
}

/// With the DBaaS or the users service down, the processes answer JSON 503s
/// once their retries are spent, and keep serving.
#[tokio::test]
async fn an_unreachable_dbaas_or_users_service_is_a_503() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let users = Service::users(&dead).await;
    let rides = Service::rides(&dead, &dead).await;
    let alice = json!({"username": "a", "password": super::PASSWORD});
    let r = call(Method::PUT, &users.url("/api/v1/users"), Body::Json(alice)).await;
    expect(&r, 503, "add user");
    expect(&get(&users.url("/api/v1/users")).await, 503, "list users");
    expect(
        &add_ride(&rides, "a", &next_year(), (1, 2)).await,
        503,
        "users down",
    );
    expect(&upcoming(&rides, (1, 2)).await, 503, "list rides");
    // Validation still answers 400, and the counters still count.
    expect(
        &add_ride(&rides, "a", "nope", (1, 2)).await,
        400,
        "bad input",
    );
    assert_eq!(count(&rides).await, 3);
    assert_eq!(count(&users).await, 2);
}
