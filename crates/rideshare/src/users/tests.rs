//! The users handlers on a fake DBaaS, in milliseconds: every status code of
//! `docs/rideshare.md`, 405s with `Allow`, input refused before any DBaaS
//! call, the DBaaS's failures answered 503 or 500, and `_count`.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::{test, web, App};
use serde_json::{json, Value as Json};

use super::{routes, State};
use crate::counter::Counter;
use crate::store::fake::{no_answer, refused, FakeDbaas};
use crate::store::Store;
use crate::test_support::{call, counter, get, Body, PASSWORD};
use dbaas_api::db::request::limits::MAX_TEXT;

/// The users service's routes on `db`, counting in `counter`.
async fn users_on(
    db: &FakeDbaas,
    counter: &web::Data<Counter>,
) -> impl Service<
    actix_http::Request,
    Response = ServiceResponse<impl MessageBody>,
    Error = actix_web::Error,
> {
    test::init_service(
        App::new()
            .app_data(web::Data::new(State { db: db.clone() }))
            .app_data(counter.clone())
            .configure(routes::<FakeDbaas>),
    )
    .await
}

fn user(name: &str) -> Body {
    Body::Json(json!({"username": name, "password": PASSWORD}))
}

fn names(db: &FakeDbaas) -> Vec<Json> {
    db.rows("users")
        .iter()
        .map(|r| r["username"].clone())
        .collect()
}

#[actix_web::test]
async fn users_are_added_and_listed_sorted() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    get(&app, "/api/v1/users").await.expect(204, "no users yet");

    for name in ["bob", "alice"] {
        let r = call(&app, Method::PUT, "/api/v1/users", user(name)).await;
        r.expect(201, name);
        assert_eq!(r.json, json!({}));
    }
    // A form-encoded body, and uppercase hex.
    let form = Body::Form(vec![
        ("username", "Carol".into()),
        ("password", PASSWORD.to_uppercase()),
    ]);
    call(&app, Method::PUT, "/api/v1/users", form)
        .await
        .expect(201, "form");
    assert_eq!(
        db.rows("users")[2],
        json!({"username": "Carol", "password": PASSWORD.to_uppercase()})
            .as_object()
            .cloned()
            .expect("row"),
        "stored as given"
    );

    let r = get(&app, "/api/v1/users").await;
    r.expect(200, "list");
    assert_eq!(r.json, json!(["Carol", "alice", "bob"]));
}

#[actix_web::test]
async fn invalid_users_are_400_before_any_dbaas_call() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    let bad: Vec<(Body, &str)> = vec![
        (
            Body::Json(json!({"username": "x", "password": "abc"})),
            "short password",
        ),
        (
            Body::Json(json!({"username": "x", "password": format!("{PASSWORD}0")})),
            "41 digits",
        ),
        (
            Body::Json(json!({"username": "x", "password": PASSWORD.replace('3', "g")})),
            "not hex",
        ),
        (Body::Json(json!({"username": "x"})), "no password"),
        (Body::Json(json!({"password": PASSWORD})), "no username"),
        (
            Body::Json(json!({"username": "", "password": PASSWORD})),
            "empty username",
        ),
        (
            Body::Json(json!({"username": 5, "password": PASSWORD})),
            "numeric username",
        ),
        (
            Body::Json(json!({"username": null, "password": PASSWORD})),
            "null username",
        ),
        (Body::Json(json!(["alice", PASSWORD])), "not an object"),
        (
            Body::Raw("application/json", b"{oops".to_vec()),
            "malformed JSON",
        ),
        (
            Body::Raw("application/x-www-form-urlencoded", vec![0xff, 0xfe]),
            "form not UTF-8",
        ),
        (Body::Empty, "empty body"),
        (
            user(&"v".repeat(MAX_TEXT + 1)),
            "a name longer than the DBaaS stores",
        ),
        (user(&"y".repeat(300 * 1024)), "a body over 256 KiB"),
        (
            Body::Raw(
                "application/json",
                format!(
                    "{{\"username\": \"z\", \"password\": {}}}",
                    "9".repeat(100_000)
                )
                .into_bytes(),
            ),
            "a huge number as password",
        ),
    ];
    for (body, what) in bad {
        call(&app, Method::PUT, "/api/v1/users", body)
            .await
            .expect(400, what);
    }
    assert_eq!(db.calls(), vec![], "validation comes first");
    // The longest name the DBaaS stores is valid.
    call(
        &app,
        Method::PUT,
        "/api/v1/users",
        user(&"u".repeat(MAX_TEXT)),
    )
    .await
    .expect(201, "a name of MAX_TEXT bytes");
}

#[actix_web::test]
async fn a_taken_username_is_400_and_names_are_case_sensitive() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    call(&app, Method::PUT, "/api/v1/users", user("alice"))
        .await
        .expect(201, "alice");
    let r = call(&app, Method::PUT, "/api/v1/users", user("alice")).await;
    r.expect(400, "alice again");
    assert_eq!(r.json["error"], "user \"alice\" already exists");
    call(&app, Method::PUT, "/api/v1/users", user("Alice"))
        .await
        .expect(201, "Alice");
    assert_eq!(names(&db), vec![json!("alice"), json!("Alice")]);
}

#[actix_web::test]
async fn removing_a_user_takes_their_rides_and_memberships_in_one_write() {
    let db = FakeDbaas::default();
    for name in ["alice", "bob"] {
        db.insert("users", json!({"username": name, "password": PASSWORD}))
            .await
            .expect("user");
    }
    for by in ["alice", "bob"] {
        let ride = json!({
            "created_by": by, "timestamp": "2030-01-01 10:00:00", "source": 1, "destination": 2,
        });
        db.insert("rides", ride).await.expect("ride");
    }
    // bob rides with alice (ride 1), alice with bob (ride 2).
    for (ride, who) in [(1, "bob"), (2, "alice")] {
        db.insert("ride_members", json!({"ride_id": ride, "username": who}))
            .await
            .expect("member");
    }
    db.forget_calls();
    let app = users_on(&db, &counter()).await;

    let r = call(&app, Method::DELETE, "/api/v1/users/alice", Body::Empty).await;
    r.expect(200, "delete alice");
    assert_eq!(r.json, json!({}));
    assert_eq!(
        db.writes(),
        vec![json!({"transaction": [
            {"table": "users", "delete": {"username": "alice"}},
            {"table": "ride_members", "delete": {"username": "alice"}},
            {"table": "rides", "delete": {"created_by": "alice"}},
        ]})],
        "one transaction"
    );
    assert_eq!(names(&db), vec![json!("bob")]);
    assert_eq!(db.rows("rides").len(), 1);
    assert_eq!(db.rows("rides")[0]["created_by"], "bob");
    assert!(db.rows("ride_members").is_empty(), "both memberships went");

    for (path, what) in [
        ("/api/v1/users/alice", "alice again"),
        ("/api/v1/users/BOB", "names are case-sensitive"),
        ("/api/v1/users/a%20b", "an unknown encoded name"),
    ] {
        call(&app, Method::DELETE, path, Body::Empty)
            .await
            .expect(400, what);
    }
    assert_eq!(
        db.writes()[3]["transaction"][0],
        json!({"table": "users", "delete": {"username": "a b"}})
    );
}

#[actix_web::test]
async fn clearing_removes_every_user() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    call(&app, Method::PUT, "/api/v1/users", user("alice"))
        .await
        .expect(201, "alice");
    let r = call(
        &app,
        Method::POST,
        "/api/v1/db/clear",
        Body::Json(json!({})),
    )
    .await;
    r.expect(200, "clear");
    assert_eq!(r.json, json!({}));
    assert_eq!(
        db.writes().last(),
        Some(&json!({"table": "users", "clear": true}))
    );
    get(&app, "/api/v1/users")
        .await
        .expect(204, "none after the clear");
}

#[actix_web::test]
async fn other_methods_are_405_naming_the_allowed_ones_and_other_paths_404() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    for (method, path, allow) in [
        (Method::POST, "/api/v1/users", "GET, PUT"),
        (Method::DELETE, "/api/v1/users", "GET, PUT"),
        (Method::PATCH, "/api/v1/users", "GET, PUT"),
        (Method::GET, "/api/v1/users/alice", "DELETE"),
        (Method::PUT, "/api/v1/users/alice", "DELETE"),
        (Method::POST, "/api/v1/users/alice", "DELETE"),
        (Method::GET, "/api/v1/db/clear", "POST"),
        (Method::PUT, "/api/v1/db/clear", "POST"),
        (Method::POST, "/api/v1/_count", "GET, DELETE"),
        (Method::PUT, "/api/v1/_count", "GET, DELETE"),
    ] {
        let r = call(&app, method.clone(), path, Body::Empty).await;
        r.expect(405, &format!("{method} {path}"));
        assert_eq!(r.allow.as_deref(), Some(allow), "{method} {path}");
    }
    for path in ["/api/v1/nothing", "/api/v1/rides", "/"] {
        get(&app, path).await.expect(404, path);
    }
    assert_eq!(db.calls(), vec![]);
}

#[actix_web::test]
async fn a_dbaas_without_an_answer_is_503_and_a_refusal_500() {
    let db = FakeDbaas::default();
    let app = users_on(&db, &counter()).await;
    let requests = || {
        [
            (Method::PUT, "/api/v1/users", user("alice")),
            (Method::GET, "/api/v1/users", Body::Empty),
            (Method::DELETE, "/api/v1/users/alice", Body::Empty),
            (Method::POST, "/api/v1/db/clear", Body::Empty),
        ]
    };
    for (failure, status) in [
        (no_answer("no master answered"), 503),
        (refused("unknown column"), 500),
    ] {
        db.fail_reads(Some(failure.clone()));
        db.fail_writes(Some(failure.clone()));
        for (method, path, body) in requests() {
            let r = call(&app, method.clone(), path, body).await;
            r.expect(status, &format!("{method} {path} with {failure}"));
            assert!(
                r.json["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&failure.to_string())),
                "{r:?}"
            );
        }
    }
}

#[actix_web::test]
async fn count_counts_api_requests_whatever_their_outcome() {
    let db = FakeDbaas::default();
    let hits = counter();
    let app = users_on(&db, &hits).await;
    let count = |app| async move { get(app, "/api/v1/_count").await.json.clone() };
    assert_eq!(count(&app).await, json!([0]));

    call(&app, Method::PUT, "/api/v1/users", user("alice"))
        .await
        .expect(201, "1");
    call(&app, Method::POST, "/api/v1/users", Body::Empty)
        .await
        .expect(405, "2");
    call(&app, Method::PUT, "/api/v1/users", Body::Empty)
        .await
        .expect(400, "3");
    call(&app, Method::DELETE, "/api/v1/users/nobody", Body::Empty)
        .await
        .expect(400, "4");
    get(&app, "/api/v1/users").await.expect(200, "5");
    db.fail_reads(Some(no_answer("down")));
    get(&app, "/api/v1/users").await.expect(503, "6");
    // Not counted: _count itself, db/clear (any method), unknown paths.
    call(&app, Method::POST, "/api/v1/_count", Body::Empty)
        .await
        .expect(405, "_count 405");
    call(&app, Method::POST, "/api/v1/db/clear", Body::Empty)
        .await
        .expect(200, "clear");
    get(&app, "/api/v1/db/clear").await.expect(405, "clear 405");
    get(&app, "/api/v1/elsewhere").await.expect(404, "404");
    assert_eq!(count(&app).await, json!([6]));
    assert_eq!(
        count(&app).await,
        json!([6]),
        "reading the count is not counted"
    );
    assert_eq!(hits.get(), 6);

    let r = call(&app, Method::DELETE, "/api/v1/_count", Body::Empty).await;
    r.expect(200, "reset");
    assert_eq!(r.json, json!({}));
    assert_eq!(count(&app).await, json!([0]));
}
