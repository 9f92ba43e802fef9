//! The users API through the DBaaS: the real `users` table's rules as the
//! service answers them (a taken name is the DBaaS's 409, names are
//! case-sensitive, the longest name the request model takes is stored),
//! and every route's round trip.

use reqwest::Method;
use serde_json::json;

use super::{add_user, call, clear, delete_user, expect, get, Body, PASSWORD};
use crate::common::rideshare::Stack;

#[tokio::test]
async fn users_round_trip_through_the_dbaas() {
    let s = Stack::start("rs-users").await;
    let users = s.users.url("/api/v1/users");
    expect(&get(&users).await, 204, "no users yet");
    let longest = "u".repeat(dbaas::db::request::limits::MAX_TEXT);
    for name in ["bob", "alice", "Alice", &longest] {
        add_user(&s.users, name).await;
    }
    let again = json!({"username": "alice", "password": PASSWORD});
    let r = call(Method::PUT, &users, Body::Json(again)).await;
    expect(&r, 400, "a taken name (the DBaaS's 409)");
    let r = get(&users).await;
    expect(&r, 200, "list");
    assert_eq!(
        r.json,
        json!(["Alice", "alice", "bob", longest]),
        "sorted bytewise"
    );

    expect(&delete_user(&s.users, "bob").await, 200, "delete bob");
    expect(&delete_user(&s.users, "bob").await, 400, "delete bob again");
    clear(&s.users).await;
    expect(&get(&users).await, 204, "no users after the clear");
}
