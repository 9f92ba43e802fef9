//! The upstream grader's flows, on both services and the DBaaS.

use reqwest::Method;
use serde_json::json;

use super::{
    add_ride, add_user, call, clear, count, delete_user, expect, get, rides_count, ts, upcoming,
    Body, PASSWORD,
};
use crate::common::rideshare::Stack;

/// The grader's main flow (the ride's date moved into the future).
#[tokio::test]
async fn upstream_grader_flow() {
    let s = Stack::start("rs-grader").await;
    clear(&s.users).await;
    clear(&s.rides).await;
    add_user(&s.users, "user_1").await;
    let when = ts(chrono::Duration::days(400));
    expect(
        &add_ride(&s.rides, "user_1", &when, (1, 2)).await,
        201,
        "create ride",
    );
    let r = upcoming(&s.rides, (1, 2)).await;
    expect(&r, 200, "list");
    let list = r.json.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["username"], "user_1");
    assert_eq!(list[0]["timestamp"], when.as_str());
    let id = list[0]["rideId"].as_i64().expect("rideId");
    let ride_url = s.rides.url(&format!("/api/v1/rides/{id}"));
    let r = get(&ride_url).await;
    expect(&r, 200, "details");
    assert_eq!(r.json["rideId"], id);
    assert_eq!(r.json["created_by"], "user_1");
    assert_eq!(r.json["timestamp"], when.as_str());
    expect(
        &call(Method::DELETE, &ride_url, Body::Empty).await,
        200,
        "delete ride",
    );
    expect(&delete_user(&s.users, "user_1").await, 200, "delete user");
    expect(
        &delete_user(&s.users, "user_1").await,
        400,
        "delete unknown user",
    );
    expect(&get(&s.users.url("/api/v1/users")).await, 204, "no users");
    expect(&upcoming(&s.rides, (1, 2)).await, 204, "no rides");
}

/// The grader's count check: users `_count` = N + M + K (each ride creation
/// lists users once, counted by the users service), rides `_count` =
/// K + 2J + 1, `rides/count` = K.
#[tokio::test]
async fn upstream_count_check() {
    let s = Stack::start("rs-gradercount").await;
    let (n, m, k, j) = (5u64, 3u64, 4u64, 6u64);
    for svc in [&s.users, &s.rides] {
        let r = call(Method::DELETE, &svc.url("/api/v1/_count"), Body::Empty).await;
        expect(&r, 200, "reset");
        clear(svc).await;
    }
    for i in 0..n {
        add_user(&s.users, &format!("user_{i}")).await;
    }
    for _ in 0..m {
        let body = json!({"username": "x", "password": PASSWORD});
        let r = call(
            Method::POST,
            &s.users.url("/api/v1/users"),
            Body::Json(body),
        )
        .await;
        expect(&r, 405, "POST users");
    }
    let when = ts(chrono::Duration::days(30));
    for i in 0..k {
        let by = format!("user_{}", i % n);
        expect(&add_ride(&s.rides, &by, &when, (11, 12)).await, 201, "ride");
    }
    assert_eq!(rides_count(&s.rides).await, json!([k]));
    for _ in 0..j {
        let r = call(Method::PUT, &s.rides.url("/api/v1/rides"), Body::Empty).await;
        expect(&r, 405, "PUT rides");
    }
    for _ in 0..j {
        expect(&upcoming(&s.rides, (11, 12)).await, 200, "listing");
    }
    assert_eq!(count(&s.users).await, n + m + k);
    assert_eq!(count(&s.rides).await, k + 2 * j + 1);
}
