//! Property tests of the request model: whatever body a client sends, `parse`
//! answers a request or a 400 (never a panic), and a request that validates
//! runs on a store without a database error of the server's own (no 500).

use std::cell::{Cell, RefCell};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value as Json};

use super::request::{parse, ReadRequest, WriteRequest};
use super::schema;
use super::store::{DbError, Store};

/// Words a request is made of, so that generated bodies get deep into validation.
const WORDS: &[&str] = &[
    "table",
    "columns",
    "where",
    "count",
    "order_by",
    "limit",
    "offset",
    "consistency",
    "min_seq",
    "insert",
    "delete",
    "update",
    "set",
    "clear",
    "transaction",
    "column",
    "desc",
    "users",
    "rides",
    "ride_members",
    "username",
    "password",
    "ride_id",
    "created_by",
    "timestamp",
    "source",
    "destination",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "eventual",
    "strong",
    "LIKE",
    "_meta",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(WORDS).prop_map(str::to_string),
        2 => ".{0,12}",
        1 => Just("x".repeat(4096)),
        1 => Just("x".repeat(4097)),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN)
        ]
        .prop_map(Json::from),
        prop_oneof![Just(u64::MAX), Just(10_000), Just(10_001)].prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        word().prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Json::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Usually `good`, sometimes any JSON in its place.
fn or_junk(good: impl Strategy<Value = Json> + 'static) -> BoxedStrategy<Json> {
    prop_oneof![8 => good, 1 => json()].boxed()
}

fn value() -> BoxedStrategy<Json> {
    or_junk(prop_oneof![
        word().prop_map(Json::from),
        prop_oneof![Just(0i64), Just(1), Just(2), Just(i64::MAX), Just(i64::MIN)]
            .prop_map(Json::from),
    ])
}

const OPS: &[&str] = &["=", "!=", "<", "<=", ">", ">=", "LIKE"];

/// One of `names` mostly, any word sometimes.
fn one_of(names: Vec<&'static str>) -> BoxedStrategy<String> {
    prop_oneof![
        6 => proptest::sample::select(names).prop_map(str::to_string),
        1 => word(),
    ]
    .boxed()
}

/// A table of the schema (or junk) and its column names.
fn table() -> impl Strategy<Value = (Json, Vec<&'static str>)> {
    proptest::sample::select(schema::TABLES).prop_flat_map(|t| {
        let names: Vec<&'static str> = t.columns.iter().map(|c| c.name).collect();
        (or_junk(Just(Json::from(t.name))), Just(names))
    })
}

fn column(names: &[&'static str]) -> BoxedStrategy<Json> {
    or_junk(one_of(names.to_vec()).prop_map(Json::from))
}

/// `{column: value}` or `{column: {op: value}}`.
fn filter(names: &[&'static str]) -> BoxedStrategy<Json> {
    let term = prop_oneof![
        value(),
        proptest::collection::vec((one_of(OPS.to_vec()), value()), 0..3)
            .prop_map(|ops| Json::Object(ops.into_iter().collect())),
    ];
    or_junk(
        proptest::collection::vec((one_of(names.to_vec()), term), 0..4)
            .prop_map(|kv| Json::Object(kv.into_iter().collect())),
    )
}

fn values(names: &[&'static str]) -> BoxedStrategy<Json> {
    or_junk(
        proptest::collection::vec((one_of(names.to_vec()), value()), 0..6)
            .prop_map(|kv| Json::Object(kv.into_iter().collect())),
    )
}

fn fields(pairs: Vec<(&'static str, Option<Json>)>) -> Vec<u8> {
    let map: Map<String, Json> = pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
    Json::Object(map).to_string().into_bytes()
}

fn read_body() -> impl Strategy<Value = Vec<u8>> {
    table().prop_flat_map(|(table, names)| {
        let order = or_junk(
            proptest::collection::vec(
                (column(&names), any::<bool>())
                    .prop_map(|(c, desc)| serde_json::json!({"column": c, "desc": desc})),
                0..4,
            )
            .prop_map(Json::Array),
        );
        let number = or_junk(
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(3),
                Just(10_000),
                Just(10_001),
                Just(u64::MAX)
            ]
            .prop_map(Json::from),
        );
        (
            Just(table),
            proptest::option::of(or_junk(
                proptest::collection::vec(column(&names), 0..5).prop_map(Json::Array),
            )),
            proptest::option::of(filter(&names)),
            proptest::option::of(or_junk(any::<bool>().prop_map(Json::from))),
            proptest::option::of(order),
            proptest::option::of(number.clone()),
            proptest::option::of(number),
        )
            .prop_map(|(table, columns, filter, count, order, limit, offset)| {
                fields(vec![
                    ("table", Some(table)),
                    ("columns", columns),
                    ("where", filter),
                    ("count", count),
                    ("order_by", order),
                    ("limit", limit),
                    ("offset", offset),
                ])
            })
    })
}

fn write_body() -> impl Strategy<Value = Vec<u8>> {
    table().prop_flat_map(|(table, names)| {
        let insert = prop_oneof![
            values(&names),
            proptest::collection::vec(values(&names), 0..4).prop_map(Json::Array),
        ];
        let update = (values(&names), filter(&names))
            .prop_map(|(set, filter)| serde_json::json!({"set": set, "where": filter}));
        let form = prop_oneof![
            insert.prop_map(|v| ("insert", v)),
            filter(&names).prop_map(|v| ("delete", v)),
            update.prop_map(|v| ("update", v)),
            any::<bool>().prop_map(|v| ("clear", Json::from(v))),
        ];
        (proptest::option::weighted(0.9, Just(table)), form)
            .prop_map(|(table, (form, v))| fields(vec![("table", table), (form, Some(v))]))
    })
}

/// `{"transaction": [...]}` of generated write bodies (sometimes a nested
/// transaction, sometimes none, sometimes junk among them).
fn transaction_body() -> impl Strategy<Value = Vec<u8>> {
    let write = prop_oneof![
        8 => write_body().prop_map(|b| serde_json::from_slice(&b).unwrap_or(Json::Null)),
        1 => json(),
    ];
    let writes = proptest::collection::vec(write, 0..3).prop_map(Json::Array);
    let nested = writes
        .clone()
        .prop_map(|w| serde_json::json!({"transaction": w}));
    prop_oneof![
        6 => writes.prop_map(|w| fields(vec![("transaction", Some(w))])),
        1 => nested.prop_map(|n| fields(vec![("transaction", Some(Json::Array(vec![n])))])),
    ]
}

/// A body: mostly request-shaped objects with junk here and there, sometimes
/// any JSON, sometimes any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => read_body(),
        4 => write_body(),
        3 => transaction_body(),
        1 => json().prop_map(|j| j.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// An error the server would answer with 5xx for a request it accepted.
fn server_fault(e: &DbError) -> bool {
    matches!(e.cause(), DbError::Internal(_))
}

#[test]
fn any_body_is_a_request_or_a_400_and_never_a_server_error() {
    let store = RefCell::new(Store::open_in_memory().expect("store"));
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    let (reads, writes, transactions) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    runner
        .run(&body(), |bytes| {
            let mut store = store.borrow_mut();
            if let Ok(r) = parse::<ReadRequest>(&bytes) {
                reads.set(reads.get() + 1);
                if let Err(e) = store.read(&r) {
                    prop_assert!(!server_fault(&e), "{r:?}: {e}");
                }
            }
            if let Ok(w) = parse::<WriteRequest>(&bytes) {
                writes.set(writes.get() + 1);
                if let WriteRequest::Transaction(_) = w {
                    transactions.set(transactions.get() + 1);
                }
                let id = format!("w{}", writes.get());
                let results = store.commit_batch(1, &[(id, w.clone())]);
                prop_assert!(results.is_ok(), "{w:?}: {results:?}");
                for r in results.into_iter().flatten() {
                    if let Err(e) = r {
                        prop_assert!(!server_fault(&e), "{w:?}: {e}");
                    }
                }
            }
            Ok(())
        })
        .expect("no body breaks the request model");
    // The generator reaches valid requests of both kinds, not only errors.
    let accepted = (reads.get(), writes.get(), transactions.get());
    assert!(
        accepted.0 > 100 && accepted.1 > 100 && accepted.2 > 10,
        "accepted {accepted:?}"
    );
}
