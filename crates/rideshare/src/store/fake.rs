//! In-memory fakes of [`Store`] and [`UserDirectory`] for the handlers' unit
//! tests.
//!
//! [`FakeDbaas`] keeps the three RideShare tables and answers the JSON the
//! real DBaaS gets (a `where` of equalities and comparisons, `order_by`,
//! `columns`, `count`; `insert`, `delete`, `clear`, `transaction`) with the
//! schema's rules (`crates/api/src/db/schema.rs`): usernames unique (case-sensitive),
//! ride ids that are never reused, a ride's members unique, naming a ride,
//! and deleted with it; a transaction applies all or nothing. It records
//! every call and can be told to fail reads or writes. [`FakeUsers`] answers
//! the user check from a list, or as a users service that is down.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value as Json};

use super::{Store, UserDirectory};
use crate::dbaas_client::{Constraint, DbError, Read, Row, StatementOutcome, Write, WriteOutcome};
use crate::error::ApiError;

/// The error the DBaaS gives for a duplicate key.
pub fn unique_violation(columns: &str) -> DbError {
    DbError::Conflict {
        constraint: Some(Constraint::Unique),
        message: format!("UNIQUE constraint failed: {columns}"),
    }
}

/// The error the DBaaS gives for a member of a ride that does not exist.
pub fn foreign_key_violation() -> DbError {
    DbError::Conflict {
        constraint: Some(Constraint::ForeignKey),
        message: "FOREIGN KEY constraint failed".into(),
    }
}

/// The error of a DBaaS that gave no answer (unreachable, 502-504), once the
/// client's retries are spent.
pub fn no_answer(why: &str) -> DbError {
    DbError::Unavailable(why.into())
}

/// An answer the client does not expect (a 4xx other than 409, a 500).
pub fn refused(why: &str) -> DbError {
    DbError::Failed {
        status: 400,
        message: why.into(),
    }
}

/// What the fake was asked, as the JSON the real client would send.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Read(Json),
    Write(Json),
}

/// The DBaaS in memory; clones share the tables, so a test keeps one to look
/// inside after the handlers ran.
#[derive(Clone, Default)]
pub struct FakeDbaas(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    tables: Tables,
    seq: u64,
    calls: Vec<Call>,
    failing_reads: Option<DbError>,
    failing_writes: Option<DbError>,
}

#[derive(Clone, Default)]
struct Tables {
    rows: BTreeMap<&'static str, Vec<Row>>,
    /// The last ride id given (AUTOINCREMENT: a clear does not reset it).
    last_ride_id: i64,
}

impl FakeDbaas {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().expect("the fake's lock is never poisoned")
    }

    /// The rows of `table`, in insertion order.
    pub fn rows(&self, table: &str) -> Vec<Row> {
        self.lock()
            .tables
            .rows
            .get(table)
            .cloned()
            .unwrap_or_default()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The writes so far (a transaction is one), oldest first.
    pub fn writes(&self) -> Vec<Json> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Write(w) => Some(w),
                Call::Read(_) => None,
            })
            .collect()
    }

    /// Forgets the calls so far (not the data).
    pub fn forget_calls(&self) {
        self.lock().calls.clear();
    }

    /// From now on every read fails with `e` (`None`: reads work again).
    pub fn fail_reads(&self, e: Option<DbError>) {
        self.lock().failing_reads = e;
    }

    /// From now on every write fails with `e` (`None`: writes work again).
    pub fn fail_writes(&self, e: Option<DbError>) {
        self.lock().failing_writes = e;
    }

    fn read_json(&self, q: &Read) -> Result<Vec<Row>, DbError> {
        let q = serde_json::to_value(q).expect("a read serializes");
        let mut inner = self.lock();
        inner.calls.push(Call::Read(q.clone()));
        if let Some(e) = &inner.failing_reads {
            return Err(e.clone());
        }
        Ok(inner.tables.select(&q))
    }

    fn write_json(&self, w: Json) -> Result<WriteOutcome, DbError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Write(w.clone()));
        if let Some(e) = &inner.failing_writes {
            return Err(e.clone());
        }
        let statements = match w.get("transaction") {
            Some(Json::Array(all)) => all.clone(),
            _ => vec![w],
        };
        // All or nothing: apply to a copy, keep it only if every statement worked.
        let mut tables = inner.tables.clone();
        let outcomes = statements
            .iter()
            .map(|s| tables.apply(s))
            .collect::<Result<Vec<StatementOutcome>, DbError>>()?;
        inner.tables = tables;
        inner.seq += 1;
        Ok(WriteOutcome {
            seq: inner.seq,
            rows_affected: outcomes.iter().map(|o| o.rows_affected).sum(),
            last_insert_id: outcomes.last().and_then(|o| o.last_insert_id),
            statements: if statements.len() > 1 {
                outcomes
            } else {
                Vec::new()
            },
        })
    }
}

fn json_of(w: &Write) -> Json {
    serde_json::to_value(w).expect("a write serializes")
}

impl Store for FakeDbaas {
    fn read(&self, q: Read) -> impl Future<Output = Result<Vec<Row>, DbError>> {
        ready(self.read_json(&q))
    }

    fn count(&self, q: Read) -> impl Future<Output = Result<u64, DbError>> {
        ready(self.read_json(&q).map(|rows| rows.len() as u64))
    }

    fn write(&self, w: Write) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        ready(self.write_json(json_of(&w)))
    }

    fn transaction(
        &self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        let all: Vec<Json> = writes.iter().map(json_of).collect();
        ready(self.write_json(json!({ "transaction": all })))
    }
}

impl Tables {
    fn table(&mut self, name: &str) -> &mut Vec<Row> {
        let name = match name {
            "users" => "users",
            "rides" => "rides",
            "ride_members" => "ride_members",
            other => panic!("the fake DBaaS has no table {other:?}"),
        };
        self.rows.entry(name).or_default()
    }

    /// The rows a `db/read` body asks for.
    fn select(&mut self, q: &Json) -> Vec<Row> {
        let table = q["table"].as_str().expect("a read names its table");
        let mut rows: Vec<Row> = self
            .table(table)
            .iter()
            .filter(|r| matches(r, &q["where"]))
            .cloned()
            .collect();
        if q["count"] == true {
            return vec![Map::from_iter([("count".to_string(), json!(rows.len()))])];
        }
        let order: Vec<(String, bool)> = q["order_by"]
            .as_array()
            .map(|o| {
                o.iter()
                    .map(|c| {
                        (
                            c["column"].as_str().unwrap_or("").to_string(),
                            c["desc"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        rows.sort_by(|a, b| {
            order
                .iter()
                .map(|(col, desc)| {
                    let o = compare(&a[col.as_str()], &b[col.as_str()]);
                    if *desc {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        match q["columns"].as_array() {
            Some(columns) => rows
                .into_iter()
                .map(|r| {
                    columns
                        .iter()
                        .filter_map(Json::as_str)
                        .map(|c| (c.to_string(), r.get(c).cloned().unwrap_or(Json::Null)))
                        .collect()
                })
                .collect(),
            None => rows,
        }
    }

    /// Applies one `insert`, `delete` or `clear` body.
    fn apply(&mut self, w: &Json) -> Result<StatementOutcome, DbError> {
        let table = w["table"].as_str().expect("a write names its table");
        let (rows_affected, last_insert_id) = if let Some(values) = w.get("insert") {
            let rows = match values {
                Json::Array(rows) => rows.clone(),
                row => vec![row.clone()],
            };
            let mut last = None;
            for row in rows {
                let row = row
                    .as_object()
                    .cloned()
                    .expect("an inserted row is an object");
                last = Some(self.insert(table, row)?);
            }
            (w["insert"].as_array().map_or(1, Vec::len) as u64, last)
        } else if let Some(filter) = w.get("delete") {
            (self.remove(table, filter), None)
        } else if w["clear"] == true {
            (self.remove(table, &Json::Null), None)
        } else {
            panic!("the fake DBaaS does not know the write {w}");
        };
        Ok(StatementOutcome {
            rows_affected,
            last_insert_id,
        })
    }

    /// Inserts a row by the schema's rules; its rowid.
    fn insert(&mut self, table: &str, mut row: Row) -> Result<i64, DbError> {
        match table {
            "users" => {
                let name = row.get("username").cloned();
                if self
                    .table("users")
                    .iter()
                    .any(|u| u.get("username") == name.as_ref())
                {
                    return Err(unique_violation("users.username"));
                }
            }
            "rides" => {
                self.last_ride_id += 1;
                row.insert("ride_id".into(), json!(self.last_ride_id));
            }
            _ => {
                let ride = row.get("ride_id").cloned();
                if !self
                    .table("rides")
                    .iter()
                    .any(|r| r.get("ride_id") == ride.as_ref())
                {
                    return Err(foreign_key_violation());
                }
                let dup = self.table("ride_members").iter().any(|m| {
                    m.get("ride_id") == row.get("ride_id")
                        && m.get("username") == row.get("username")
                });
                if dup {
                    return Err(unique_violation(
                        "ride_members.ride_id, ride_members.username",
                    ));
                }
            }
        }
        let rows = self.table(table);
        rows.push(row);
        let id = match table {
            "rides" => self.last_ride_id,
            _ => self.table(table).len() as i64,
        };
        Ok(id)
    }

    /// Removes the rows matching `filter` (all for `null`), and the members
    /// of removed rides (ON DELETE CASCADE); how many rows of `table` went.
    fn remove(&mut self, table: &str, filter: &Json) -> u64 {
        let rows = self.table(table);
        let (gone, kept): (Vec<Row>, Vec<Row>) = rows.drain(..).partition(|r| matches(r, filter));
        *rows = kept;
        if table == "rides" {
            let ids: Vec<&Json> = gone.iter().filter_map(|r| r.get("ride_id")).collect();
            self.table("ride_members")
                .retain(|m| !m.get("ride_id").is_some_and(|id| ids.contains(&id)));
        }
        gone.len() as u64
    }
}

/// Whether `row` passes a `where` object (`null`: every row). A condition is
/// a value (equality) or `{"op": value}` with `=`, `!=`, `<`, `<=`, `>`, `>=`.
fn matches(row: &Row, filter: &Json) -> bool {
    let Some(filter) = filter.as_object() else {
        return true;
    };
    filter.iter().all(|(col, cond)| {
        let have = row.get(col).unwrap_or(&Json::Null);
        match cond.as_object().and_then(|c| c.iter().next()) {
            Some((op, want)) => {
                let o = compare(have, want);
                match op.as_str() {
                    "=" => o.is_eq(),
                    "!=" => o.is_ne(),
                    "<" => o.is_lt(),
                    "<=" => o.is_le(),
                    ">" => o.is_gt(),
                    ">=" => o.is_ge(),
                    other => panic!("the fake DBaaS does not know the operator {other:?}"),
                }
            }
            None => compare(have, cond).is_eq(),
        }
    })
}

/// SQLite's order for the values the services store: numbers by value,
/// text by bytes.
fn compare(a: &Json, b: &Json) -> Ordering {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y))
            .unwrap_or(Ordering::Equal),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        (a, b) => a.to_string().cmp(&b.to_string()),
    }
}

/// The users service as the rides service sees it: a list of names, or down.
#[derive(Clone, Default)]
pub struct FakeUsers(Arc<Mutex<UsersInner>>);

#[derive(Default)]
struct UsersInner {
    /// `None`: the users service cannot be reached.
    names: Option<Vec<String>>,
    asked: Vec<String>,
}

impl FakeUsers {
    /// A users service knowing `names`.
    pub fn with(names: &[&str]) -> FakeUsers {
        let users = FakeUsers::default();
        users.lock().names = Some(names.iter().map(|n| n.to_string()).collect());
        users
    }

    /// A users service that cannot be reached.
    pub fn down() -> FakeUsers {
        FakeUsers::default()
    }

    fn lock(&self) -> MutexGuard<'_, UsersInner> {
        self.0.lock().expect("the fake's lock is never poisoned")
    }

    /// The names asked about, oldest first (one per user check).
    pub fn asked(&self) -> Vec<String> {
        self.lock().asked.clone()
    }
}

impl UserDirectory for FakeUsers {
    fn exists(&self, username: &str) -> impl Future<Output = Result<bool, ApiError>> {
        let mut inner = self.lock();
        inner.asked.push(username.to_string());
        ready(match &inner.names {
            Some(names) => Ok(names.iter().any(|n| n == username)),
            None => Err(ApiError::unavailable(
                "users service: connection refused (fake)",
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ride(by: &str, at: &str) -> Json {
        json!({"created_by": by, "timestamp": at, "source": 1, "destination": 2})
    }

    #[tokio::test]
    async fn keeps_the_schema_rules() {
        let db = FakeDbaas::default();
        let alice = json!({"username": "alice", "password": "p"});
        db.insert("users", alice.clone()).await.expect("alice");
        assert_eq!(
            db.insert("users", alice).await,
            Err(unique_violation("users.username"))
        );
        db.insert("users", json!({"username": "Alice", "password": "p"}))
            .await
            .expect("names are case-sensitive");
        let first = db
            .insert("rides", ride("alice", "2030-01-02 10:00:00"))
            .await
            .expect("ride");
        assert_eq!(first.last_insert_id, Some(1));
        let member = json!({"ride_id": 1, "username": "Alice"});
        db.insert("ride_members", member.clone())
            .await
            .expect("member");
        assert!(matches!(
            db.insert("ride_members", member).await,
            Err(DbError::Conflict {
                constraint: Some(Constraint::Unique),
                ..
            })
        ));
        assert_eq!(
            db.insert("ride_members", json!({"ride_id": 9, "username": "Alice"}))
                .await,
            Err(foreign_key_violation())
        );
        // Deleting a ride deletes its members; ride ids are never reused.
        assert_eq!(
            db.delete("rides", json!({"ride_id": 1}))
                .await
                .map(|o| o.rows_affected),
            Ok(1)
        );
        assert!(db.rows("ride_members").is_empty());
        db.clear("rides").await.expect("clear");
        let next = db
            .insert("rides", ride("alice", "2030-01-02 10:00:00"))
            .await
            .expect("ride");
        assert_eq!(next.last_insert_id, Some(2));
        assert_eq!(next.seq, 7, "one seq per write that was applied");
    }

    #[tokio::test]
    async fn a_transaction_applies_all_or_nothing() {
        let db = FakeDbaas::default();
        let user = |n: &str| Write::insert("users", json!({"username": n, "password": "p"}));
        let e = db.transaction(vec![user("a"), user("b"), user("a")]).await;
        assert_eq!(e, Err(unique_violation("users.username")));
        assert!(db.rows("users").is_empty(), "nothing applied");
        let out = db
            .transaction(vec![user("a"), user("b")])
            .await
            .expect("applied");
        assert_eq!(
            (out.seq, out.rows_affected, out.statements.len()),
            (1, 2, 2)
        );
    }

    #[tokio::test]
    async fn reads_filter_order_project_and_count() {
        let db = FakeDbaas::default();
        for at in [
            "2030-01-03 10:00:00",
            "2020-01-01 10:00:00",
            "2030-01-02 10:00:00",
        ] {
            db.insert("rides", ride("alice", at)).await.expect("ride");
        }
        let soon_first = Read::table("rides")
            .columns(&["ride_id"])
            .filter("source", json!(1))
            .filter("timestamp", json!({">": "2025-01-01 00:00:00"}))
            .order_by("timestamp");
        assert_eq!(
            db.read(soon_first.clone())
                .await
                .map(|r| Json::Array(r.into_iter().map(Json::Object).collect())),
            Ok(json!([{"ride_id": 3}, {"ride_id": 1}]))
        );
        assert_eq!(db.count(soon_first).await, Ok(2));
        assert_eq!(
            db.count(Read::table("rides").filter("source", json!(2)))
                .await,
            Ok(0)
        );
    }
}
