//! The rides handlers on a fake DBaaS and a fake users service, in
//! milliseconds: every status code of `docs/rideshare.md` (the not-found
//! rule included), 405s with `Allow`, input refused before the user check and
//! any DBaaS call, one user check per creation or join, the DBaaS's and the
//! users service's failures answered 503 or 500, and `_count`.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::{test, web, App};
use chrono::{Duration, Local};
use serde_json::{json, Value as Json};

use super::{routes, State};
use crate::counter::Counter;
use crate::store::fake::{foreign_key_violation, no_answer, refused, FakeDbaas, FakeUsers};
use crate::store::Store;
use crate::test_support::{call, counter, get, Body};
use crate::validate::{format_timestamp, to_db_timestamp};

/// The rides service's routes on `db` and `users`, counting in `counter`.
async fn rides_on(
    db: &FakeDbaas,
    users: &FakeUsers,
    counter: &web::Data<Counter>,
) -> impl Service<
    actix_http::Request,
    Response = ServiceResponse<impl MessageBody>,
    Error = actix_web::Error,
> {
    let state = State {
        db: db.clone(),
        users: users.clone(),
    };
    test::init_service(
        App::new()
            .app_data(web::Data::new(state))
            .app_data(counter.clone())
            .configure(routes::<FakeDbaas, FakeUsers>),
    )
    .await
}

/// A time `offset` from now in the API's format.
fn api_time(offset: Duration) -> String {
    format_timestamp(Local::now().naive_local() + offset)
}

fn next_year() -> String {
    api_time(Duration::days(365))
}

fn ride(by: &str, at: &str, source: Json, destination: Json) -> Body {
    Body::Json(
        json!({"created_by": by, "timestamp": at, "source": source, "destination": destination}),
    )
}

/// Stores a ride straight in the fake, `offset` from now; its id.
async fn stored_ride(db: &FakeDbaas, by: &str, offset: Duration, route: (u16, u16)) -> i64 {
    let at = to_db_timestamp(Local::now().naive_local() + offset);
    let row = json!({"created_by": by, "timestamp": at, "source": route.0, "destination": route.1});
    let out = db.insert("rides", row).await.expect("stored ride");
    out.last_insert_id.expect("a ride id")
}

#[actix_web::test]
async fn rides_are_created_from_numbers_strings_and_forms_past_times_too() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice", "bob"]));
    let app = rides_on(&db, &users, &counter()).await;
    let when = next_year();
    for (body, what) in [
        (ride("alice", &when, json!(1), json!(2)), "numbers"),
        (ride("alice", &when, json!("1"), json!("2")), "strings"),
        (
            ride("bob", "21-08-2021:00-30-10", json!(1), json!(2)),
            "in the past",
        ),
        (
            Body::Form(vec![
                ("created_by", "bob".into()),
                ("timestamp", when.clone()),
                ("source", "198".into()),
                ("destination", "1".into()),
            ]),
            "form-encoded",
        ),
    ] {
        let r = call(&app, Method::POST, "/api/v1/rides", body).await;
        r.expect(201, what);
        assert_eq!(r.json, json!({}), "{what}");
    }
    assert_eq!(
        users.asked(),
        vec!["alice", "alice", "bob", "bob"],
        "one check each"
    );
    let stored: Vec<Json> = db.rows("rides").into_iter().map(Json::Object).collect();
    assert_eq!(
        stored[2],
        json!({
            "ride_id": 3, "created_by": "bob", "timestamp": "2021-08-21 10:30:00",
            "source": 1, "destination": 2,
        })
    );
    assert_eq!(
        (&stored[1]["source"], &stored[3]["source"]),
        (&json!(1), &json!(198)),
        "areas are numbers"
    );
}

#[actix_web::test]
async fn invalid_rides_are_400_before_the_user_check_and_any_dbaas_call() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice"]));
    let app = rides_on(&db, &users, &counter()).await;
    let when = next_year();
    let huge_number = format!(
        "{{\"created_by\": \"alice\", \"timestamp\": \"{when}\", \
         \"source\": {}, \"destination\": 2}}",
        "9".repeat(100_000)
    );
    let bad: Vec<(Body, &str)> = vec![
        (
            ride("alice", "2030-01-01 10:00:00", json!(1), json!(2)),
            "bad format",
        ),
        (
            ride("alice", "31-02-2030:00-00-10", json!(1), json!(2)),
            "no such date",
        ),
        (
            ride("alice", "01-01-2030:00-60-10", json!(1), json!(2)),
            "no such minute",
        ),
        (
            ride("alice", &"1".repeat(100_000), json!(1), json!(2)),
            "huge timestamp",
        ),
        (ride("alice", &when, json!(0), json!(2)), "area 0"),
        (ride("alice", &when, json!(1), json!(199)), "area 199"),
        (ride("alice", &when, json!("one"), json!(2)), "area text"),
        (ride("alice", &when, json!(1.5), json!(2)), "area fraction"),
        (
            ride("alice", &when, json!("9".repeat(10_000)), json!(2)),
            "huge area string",
        ),
        (
            Body::Raw("application/json", huge_number.into_bytes()),
            "huge JSON number",
        ),
        (
            Body::Json(json!({"timestamp": when, "source": 1, "destination": 2})),
            "no creator",
        ),
        (
            Body::Json(json!({"created_by": "alice", "source": 1, "destination": 2})),
            "no timestamp",
        ),
        (
            Body::Json(json!({"created_by": "alice", "timestamp": when, "destination": 2})),
            "no source",
        ),
        (
            Body::Json(json!({"created_by": "alice", "timestamp": when, "source": 1})),
            "no destination",
        ),
        (
            Body::Raw("application/json", b"[1, 2]".to_vec()),
            "not an object",
        ),
        (Body::Empty, "empty body"),
    ];
    for (body, what) in bad {
        call(&app, Method::POST, "/api/v1/rides", body)
            .await
            .expect(400, what);
    }
    assert_eq!(users.asked(), Vec::<String>::new(), "no user check");
    assert_eq!(db.calls(), vec![], "no DBaaS call");
}

#[actix_web::test]
async fn a_ride_of_an_unknown_user_is_400_and_not_stored() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice"]));
    let app = rides_on(&db, &users, &counter()).await;
    for who in ["nobody", "Alice"] {
        let r = call(
            &app,
            Method::POST,
            "/api/v1/rides",
            ride(who, &next_year(), json!(1), json!(2)),
        )
        .await;
        r.expect(400, who);
        assert_eq!(r.json["error"], format!("no such user {who:?}"));
    }
    assert_eq!(users.asked(), vec!["nobody", "Alice"]);
    assert_eq!(db.writes(), Vec::<Json>::new());
}

#[actix_web::test]
async fn upcoming_rides_are_listed_soonest_first_without_past_ones() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&[]));
    let in_two_days = stored_ride(&db, "bob", Duration::days(2), (1, 2)).await;
    stored_ride(&db, "alice", Duration::minutes(-1), (1, 2)).await;
    let tomorrow = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    stored_ride(&db, "alice", Duration::days(1), (2, 1)).await;
    let app = rides_on(&db, &users, &counter()).await;

    let r = get(&app, "/api/v1/rides?source=1&destination=2").await;
    r.expect(200, "upcoming 1 to 2");
    let stored = db.rows("rides");
    let api = |i: usize| {
        let at = stored[i]["timestamp"].as_str().expect("stored timestamp");
        crate::validate::db_to_api_timestamp(at)
    };
    assert_eq!(
        r.json,
        json!([
            {"rideId": tomorrow, "username": "alice", "timestamp": api(2)},
            {"rideId": in_two_days, "username": "bob", "timestamp": api(0)},
        ])
    );
    get(&app, "/api/v1/rides?source=2&destination=3")
        .await
        .expect(204, "none on 2 to 3");
    db.forget_calls();
    for q in [
        "",
        "?source=1",
        "?destination=2",
        "?source=0&destination=2",
        "?source=1&destination=199",
        "?source=x&destination=2",
        "?source=-1&destination=2",
        &format!("?source={}&destination=2", "9".repeat(10_000)),
    ] {
        get(&app, &format!("/api/v1/rides{q}")).await.expect(400, q);
    }
    assert_eq!(db.calls(), vec![], "no DBaaS call");
}

#[actix_web::test]
async fn details_name_who_joined_sorted_without_the_creator() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&[]));
    let id = stored_ride(&db, "alice", Duration::days(1), (5, 6)).await;
    for who in ["zed", "bob"] {
        db.insert("ride_members", json!({"ride_id": id, "username": who}))
            .await
            .expect("member");
    }
    let app = rides_on(&db, &users, &counter()).await;
    let r = get(&app, &format!("/api/v1/rides/{id}")).await;
    r.expect(200, "details");
    let at = db.rows("rides")[0]["timestamp"]
        .as_str()
        .map(crate::validate::db_to_api_timestamp);
    assert_eq!(
        r.json,
        json!({
            "rideId": id, "created_by": "alice", "users": ["bob", "zed"],
            "timestamp": at, "source": 5, "destination": 6,
        })
    );
}

#[actix_web::test]
async fn joining_twice_or_ones_own_ride_changes_nothing() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice", "bob"]));
    let id = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    let app = rides_on(&db, &users, &counter()).await;
    let path = format!("/api/v1/rides/{id}");
    let join = |who: &str| Body::Json(json!({ "username": who }));

    let r = call(&app, Method::POST, &path, join("bob")).await;
    r.expect(200, "bob joins");
    assert_eq!(r.json, json!({}));
    call(&app, Method::POST, &path, join("bob"))
        .await
        .expect(200, "bob joins twice");
    call(&app, Method::POST, &path, join("alice"))
        .await
        .expect(200, "the creator joins");
    let form = Body::Form(vec![("username", "bob".into())]);
    call(&app, Method::POST, &path, form)
        .await
        .expect(200, "form-encoded");
    call(&app, Method::POST, &path, join("nobody"))
        .await
        .expect(400, "an unknown user");
    call(&app, Method::POST, &path, Body::Json(json!({})))
        .await
        .expect(400, "no username");
    let members: Vec<Json> = db
        .rows("ride_members")
        .into_iter()
        .map(Json::Object)
        .collect();
    assert_eq!(members, vec![json!({"ride_id": id, "username": "bob"})]);
    assert_eq!(users.asked(), vec!["bob", "bob", "alice", "bob", "nobody"]);
}

#[actix_web::test]
async fn a_ride_that_is_not_there_is_204_to_see_or_join_and_400_to_delete() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["bob"]));
    stored_ride(&db, "bob", Duration::days(1), (1, 2)).await;
    let app = rides_on(&db, &users, &counter()).await;
    for missing in [
        "999999".to_string(),
        "abc".into(),
        "-1".into(),
        "9".repeat(5_000),
    ] {
        let path = format!("/api/v1/rides/{missing}");
        let what = |m: &str| format!("{m} {missing:.20}");
        get(&app, &path).await.expect(204, &what("details of"));
        let join = Body::Json(json!({"username": "nobody"}));
        call(&app, Method::POST, &path, join)
            .await
            .expect(204, &what("join (the ride before the user)"));
        let no_name = Body::Json(json!({}));
        call(&app, Method::POST, &path, no_name)
            .await
            .expect(400, &what("join (the body first)"));
        call(&app, Method::DELETE, &path, Body::Empty)
            .await
            .expect(400, &what("delete"));
    }
    assert_eq!(users.asked(), Vec::<String>::new());
    assert_eq!(db.rows("rides").len(), 1);
}

#[actix_web::test]
async fn a_ride_deleted_while_it_is_joined_is_204() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["bob"]));
    let id = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    let app = rides_on(&db, &users, &counter()).await;
    let path = format!("/api/v1/rides/{id}");
    // Found by the read, gone by the insert: the reference fails.
    db.fail_writes(Some(foreign_key_violation()));
    call(
        &app,
        Method::POST,
        &path,
        Body::Json(json!({"username": "bob"})),
    )
    .await
    .expect(204, "gone meanwhile");
    db.fail_writes(Some(refused("no such table")));
    call(
        &app,
        Method::POST,
        &path,
        Body::Json(json!({"username": "bob"})),
    )
    .await
    .expect(500, "a refusal");
}

#[actix_web::test]
async fn deleting_a_ride_takes_its_members_and_counts_go_down() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&[]));
    let id = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    stored_ride(&db, "bob", Duration::days(1), (1, 2)).await;
    db.insert("ride_members", json!({"ride_id": id, "username": "bob"}))
        .await
        .expect("member");
    let app = rides_on(&db, &users, &counter()).await;
    let count = |app| async move { get(app, "/api/v1/rides/count").await };

    let r = count(&app).await;
    r.expect(200, "count");
    assert_eq!(r.json, json!([2]));
    let path = format!("/api/v1/rides/{id}");
    let r = call(&app, Method::DELETE, &path, Body::Empty).await;
    r.expect(200, "delete");
    assert_eq!(r.json, json!({}));
    assert!(db.rows("ride_members").is_empty());
    call(&app, Method::DELETE, &path, Body::Empty)
        .await
        .expect(400, "delete again");
    get(&app, &path)
        .await
        .expect(204, "details of a deleted ride");
    assert_eq!(count(&app).await.json, json!([1]));
}

#[actix_web::test]
async fn clearing_removes_every_ride_and_membership_in_one_write() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&[]));
    let id = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    db.insert("ride_members", json!({"ride_id": id, "username": "bob"}))
        .await
        .expect("member");
    db.forget_calls();
    let app = rides_on(&db, &users, &counter()).await;
    let r = call(&app, Method::POST, "/api/v1/db/clear", Body::Empty).await;
    r.expect(200, "clear");
    assert_eq!(r.json, json!({}));
    assert_eq!(
        db.writes(),
        vec![json!({"transaction": [
            {"table": "ride_members", "clear": true},
            {"table": "rides", "clear": true},
        ]})]
    );
    assert_eq!(get(&app, "/api/v1/rides/count").await.json, json!([0]));
    get(&app, "/api/v1/rides?source=1&destination=2")
        .await
        .expect(204, "nothing after the clear");
}

#[actix_web::test]
async fn other_methods_are_405_naming_the_allowed_ones_and_other_paths_404() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&[]));
    let app = rides_on(&db, &users, &counter()).await;
    for (method, path, allow) in [
        (Method::PUT, "/api/v1/rides", "GET, POST"),
        (Method::DELETE, "/api/v1/rides", "GET, POST"),
        (Method::PUT, "/api/v1/rides/7", "GET, POST, DELETE"),
        (Method::PATCH, "/api/v1/rides/7", "GET, POST, DELETE"),
        (Method::POST, "/api/v1/rides/count", "GET"),
        (Method::DELETE, "/api/v1/rides/count", "GET"),
        (Method::GET, "/api/v1/db/clear", "POST"),
        (Method::POST, "/api/v1/_count", "GET, DELETE"),
    ] {
        let r = call(&app, method.clone(), path, Body::Empty).await;
        r.expect(405, &format!("{method} {path}"));
        assert_eq!(r.allow.as_deref(), Some(allow), "{method} {path}");
    }
    get(&app, "/api/v1/users")
        .await
        .expect(404, "the users API is not here");
    assert_eq!(db.calls(), vec![]);
}

#[actix_web::test]
async fn a_dbaas_or_users_service_without_an_answer_is_503_and_a_refusal_500() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice"]));
    let id = stored_ride(&db, "alice", Duration::days(1), (1, 2)).await;
    let app = rides_on(&db, &users, &counter()).await;
    let ride_path = format!("/api/v1/rides/{id}");
    let requests = || {
        [
            (
                Method::POST,
                "/api/v1/rides",
                ride("alice", &next_year(), json!(1), json!(2)),
            ),
            (
                Method::GET,
                "/api/v1/rides?source=1&destination=2",
                Body::Empty,
            ),
            (Method::GET, ride_path.as_str(), Body::Empty),
            (
                Method::POST,
                ride_path.as_str(),
                Body::Json(json!({"username": "alice"})),
            ),
            (Method::DELETE, ride_path.as_str(), Body::Empty),
            (Method::GET, "/api/v1/rides/count", Body::Empty),
            (Method::POST, "/api/v1/db/clear", Body::Empty),
        ]
    };
    for (failure, status) in [
        (no_answer("no master answered"), 503),
        (refused("bad column"), 500),
    ] {
        db.fail_reads(Some(failure.clone()));
        db.fail_writes(Some(failure.clone()));
        for (method, path, body) in requests() {
            let r = call(&app, method.clone(), path, body).await;
            r.expect(status, &format!("{method} {path} with {failure}"));
        }
    }
    db.fail_reads(None);
    db.fail_writes(None);
    let app = rides_on(&db, &FakeUsers::down(), &counter()).await;
    let r = call(
        &app,
        Method::POST,
        "/api/v1/rides",
        ride("alice", &next_year(), json!(1), json!(2)),
    )
    .await;
    r.expect(503, "create with the users service down");
    assert!(
        r.json["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("users service")),
        "{r:?}"
    );
    call(
        &app,
        Method::POST,
        &ride_path,
        Body::Json(json!({"username": "bob"})),
    )
    .await
    .expect(503, "join with the users service down");
    assert_eq!(db.rows("rides").len(), 1, "nothing was stored");
}

/// The upstream grader's check, on this service: K creations, one
/// `rides/count`, J refused `PUT`s and J listings count K + 2J + 1.
#[actix_web::test]
async fn count_counts_api_requests_whatever_their_outcome() {
    let (db, users) = (FakeDbaas::default(), FakeUsers::with(&["alice"]));
    let app = rides_on(&db, &users, &counter()).await;
    let (k, j) = (4, 3);
    for _ in 0..k {
        call(
            &app,
            Method::POST,
            "/api/v1/rides",
            ride("alice", &next_year(), json!(11), json!(12)),
        )
        .await
        .expect(201, "ride");
    }
    assert_eq!(get(&app, "/api/v1/rides/count").await.json, json!([k]));
    for _ in 0..j {
        call(&app, Method::PUT, "/api/v1/rides", Body::Empty)
            .await
            .expect(405, "PUT");
        get(&app, "/api/v1/rides?source=11&destination=12")
            .await
            .expect(200, "listing");
    }
    // Not counted: _count, db/clear (any method), unknown paths.
    call(&app, Method::PUT, "/api/v1/_count", Body::Empty)
        .await
        .expect(405, "_count 405");
    call(&app, Method::GET, "/api/v1/db/clear", Body::Empty)
        .await
        .expect(405, "clear 405");
    get(&app, "/api/v1/users").await.expect(404, "404");
    assert_eq!(
        get(&app, "/api/v1/_count").await.json,
        json!([k + 2 * j + 1])
    );
    call(&app, Method::DELETE, "/api/v1/_count", Body::Empty)
        .await
        .expect(200, "reset");
    assert_eq!(get(&app, "/api/v1/_count").await.json, json!([0]));
}
