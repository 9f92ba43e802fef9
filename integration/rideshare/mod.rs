//! The RideShare users and rides services end to end, on a real DBaaS
//! (orchestrator, master and slave; `common::rideshare` starts them): what
//! only the whole system shows. Each status code, 405, validation rule and
//! the `_count` rules are unit-tested against a fake DBaaS in
//! `crates/rideshare/src/{users,rides}/tests.rs`; here are the real DBaaS's
//! answers mapped end to end (its 409s, its time order, its AUTOINCREMENT),
//! the services calling each other, a user's deletion as one DBaaS write,
//! and the upstream grader's flows.
//!
//! - [`users`], [`rides`]: each service's API round trip through the DBaaS.
//! - [`across`]: the services together (the user check, deleting a user,
//!   services whose DBaaS or users service is down).
//! - [`grader`]: the upstream grader's flows, counts included.

mod across;
mod grader;
mod rides;
mod users;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::rideshare::Service;

pub const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";

pub enum Body {
    Empty,
    Json(Value),
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub json: Value,
    pub text: String,
}

pub async fn call(method: Method, url: &str, body: Body) -> Resp {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let r = http.request(method.clone(), url);
    let r = match body {
        Body::Empty => r,
        Body::Json(v) => r.json(&v),
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

pub async fn get(url: &str) -> Resp {
    call(Method::GET, url, Body::Empty).await
}

/// Asserts a status and, for errors, a JSON `{"error": ...}` body; for 204 an
/// empty body.
#[track_caller]
pub fn expect(r: &Resp, status: u16, what: &str) {
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

/// A time `offset` from now in the API's format.
pub fn ts(offset: chrono::Duration) -> String {
    (chrono::Local::now() + offset)
        .format("%d-%m-%Y:%S-%M-%H")
        .to_string()
}

pub fn next_year() -> String {
    ts(chrono::Duration::days(365))
}

pub async fn add_user(users: &Service, name: &str) {
    let body = json!({"username": name, "password": PASSWORD});
    let r = call(Method::PUT, &users.url("/api/v1/users"), Body::Json(body)).await;
    expect(&r, 201, &format!("add user {name}"));
    assert_eq!(r.json, json!({}));
}

pub async fn delete_user(users: &Service, name: &str) -> Resp {
    let path = format!("/api/v1/users/{name}");
    call(Method::DELETE, &users.url(&path), Body::Empty).await
}

pub async fn add_ride(rides: &Service, by: &str, at: &str, route: (u32, u32)) -> Resp {
    let body =
        json!({"created_by": by, "timestamp": at, "source": route.0, "destination": route.1});
    call(Method::POST, &rides.url("/api/v1/rides"), Body::Json(body)).await
}

pub async fn join(rides: &Service, ride: i64, who: &str) -> Resp {
    let url = rides.url(&format!("/api/v1/rides/{ride}"));
    call(Method::POST, &url, Body::Json(json!({ "username": who }))).await
}

pub async fn upcoming(rides: &Service, route: (u32, u32)) -> Resp {
    let (src, dst) = route;
    get(&rides.url(&format!("/api/v1/rides?source={src}&destination={dst}"))).await
}

/// The ids of the upcoming rides on `route`, soonest first.
pub async fn ride_ids(rides: &Service, route: (u32, u32)) -> Vec<i64> {
    let r = upcoming(rides, route).await;
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

/// A service's `_count`.
pub async fn count(svc: &Service) -> u64 {
    let r = get(&svc.url("/api/v1/_count")).await;
    expect(&r, 200, "_count");
    r.json[0].as_u64().expect("[n]")
}

/// `rides/count`.
pub async fn rides_count(rides: &Service) -> Value {
    let r = get(&rides.url("/api/v1/rides/count")).await;
    expect(&r, 200, "rides/count");
    r.json
}

/// `POST /api/v1/db/clear` on a service.
pub async fn clear(svc: &Service) {
    let r = call(Method::POST, &svc.url("/api/v1/db/clear"), Body::Empty).await;
    expect(&r, 200, "clear");
    assert_eq!(r.json, json!({}));
}
