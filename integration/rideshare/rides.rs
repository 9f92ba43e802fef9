//! The rides API through the DBaaS: timestamps stored and read back in the
//! API's format, upcoming rides chosen and ordered by the DBaaS's time
//! comparison, joining twice meeting the real key, deletes, counts, the
//! clear, and ride ids that the DBaaS's AUTOINCREMENT never reuses.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{
    add_ride, add_user, call, clear, expect, get, join, next_year, ride_ids, rides_count, ts,
    upcoming, Body,
};
use crate::common::rideshare::Stack;
use crate::common::wait_until;

#[tokio::test]
async fn rides_round_trip_through_the_dbaas() {
    let s = Stack::start("rs-rides").await;
    let rides = &s.rides;
    for name in ["alice", "bob"] {
        add_user(&s.users, name).await;
    }
    let when = next_year();
    for (by, at) in [
        ("alice", when.as_str()),
        ("bob", "21-08-2021:00-30-10"),
        ("bob", &when),
    ] {
        expect(
            &add_ride(rides, by, at, (1, 2)).await,
            201,
            &format!("{by} at {at}"),
        );
    }
    let ids = ride_ids(rides, (1, 2)).await;
    assert_eq!(ids.len(), 2, "the past ride is not upcoming: {ids:?}");
    assert_ne!(ids[0], ids[1]);
    let r = upcoming(rides, (1, 2)).await;
    assert_eq!(r.json[0]["username"], "alice");
    assert_eq!(
        r.json[0]["timestamp"],
        when.as_str(),
        "read back as written"
    );

    let id = ids[0];
    let ride_url = rides.url(&format!("/api/v1/rides/{id}"));
    let r = get(&ride_url).await;
    expect(&r, 200, "details");
    assert_eq!(
        r.json,
        json!({
            "rideId": id, "created_by": "alice", "users": [], "timestamp": when,
            "source": 1, "destination": 2,
        })
    );
    expect(&join(rides, id, "bob").await, 200, "bob joins");
    expect(
        &join(rides, id, "bob").await,
        200,
        "bob joins again (the DBaaS's 409)",
    );
    expect(&join(rides, id, "alice").await, 200, "the creator joins");
    assert_eq!(get(&ride_url).await.json["users"], json!(["bob"]));

    assert_eq!(rides_count(rides).await, json!([3]));
    expect(
        &call(Method::DELETE, &ride_url, Body::Empty).await,
        200,
        "delete",
    );
    expect(
        &call(Method::DELETE, &ride_url, Body::Empty).await,
        400,
        "delete again",
    );
    expect(&get(&ride_url).await, 204, "a deleted ride");
    assert_eq!(rides_count(rides).await, json!([2]));

    clear(rides).await;
    assert_eq!(rides_count(rides).await, json!([0]));
    expect(
        &upcoming(rides, (1, 2)).await,
        204,
        "nothing after the clear",
    );
    let users = get(&s.users.url("/api/v1/users")).await;
    assert_eq!(
        users.json,
        json!(["alice", "bob"]),
        "users are the users service's"
    );
    expect(
        &add_ride(rides, "alice", &when, (1, 2)).await,
        201,
        "after the clear",
    );
    let new = ride_ids(rides, (1, 2)).await;
    assert_eq!(new.len(), 1);
    assert!(
        new[0] > ids[0].max(ids[1]),
        "ids are never reused: {new:?} after {ids:?}"
    );
}

#[tokio::test]
async fn only_rides_still_to_come_are_listed() {
    let s = Stack::start("rs-upcoming").await;
    add_user(&s.users, "alice").await;
    let soon = ts(chrono::Duration::seconds(3));
    let past = ts(chrono::Duration::seconds(-60));
    let later = next_year();
    for t in [&soon, &past, &later] {
        expect(&add_ride(&s.rides, "alice", t, (7, 8)).await, 201, t);
    }
    let r = upcoming(&s.rides, (7, 8)).await;
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
        let r = upcoming(&s.rides, (7, 8)).await;
        (r.json.as_array().map(Vec::len) == Some(1)).then_some(r.json)
    })
    .await
    .expect("soon ride dropped from the listing");
    assert_eq!(gone[0]["timestamp"], later.as_str());
    assert_eq!(
        rides_count(&s.rides).await,
        json!([3]),
        "past rides still count"
    );
}
