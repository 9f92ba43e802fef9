//! A worker's own SQLite copy: applies validated reads and writes, and keeps the
//! replication bookkeeping (applied sequence number, election epoch, and the ids of
//! applied writes for dedup) in the same transaction as the data it describes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::request::{ReadRequest, WriteRequest};
use super::{schema, sql};

/// Why a statement failed, mapped to an HTTP status by the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DbError {
    /// A constraint refused the write (duplicate key, unknown ride for a member): 409.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// The database itself failed: 500.
    #[error("database error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, msg)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                DbError::Constraint(msg.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => DbError::Internal(e.to_string()),
        }
    }
}

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The replication sequence number of this write.
    pub seq: u64,
    pub rows_affected: u64,
    /// The new row's id, for inserts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_insert_id: Option<i64>,
}

/// What a read returned, and how fresh the replica that served it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadOutcome {
    pub rows: Vec<Map<String, Json>>,
    /// The replica's applied sequence number when it answered.
    pub seq: u64,
    /// The pid of the worker that answered (set by the worker).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<u32>,
}

/// One committed write as it travels on `syncQ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub epoch: u64,
    pub write_id: String,
    pub request: WriteRequest,
}

/// The master's result for one write.
#[derive(Debug, Clone, PartialEq)]
pub enum Commit {
    /// Applied now; `entry` must be published on `syncQ`.
    New(LogEntry, WriteOutcome),
    /// This write id was applied before: its original outcome, nothing new to publish.
    Duplicate(WriteOutcome),
}

/// A replica's result for one sync entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncApplied {
    Applied,
    /// Already applied (seq at or below ours): ignored.
    Duplicate,
    /// From a master whose epoch is over: ignored.
    Stale,
    /// Entries are missing before this one: the replica must catch up first.
    Gap {
        expected: u64,
    },
}

pub struct Store {
    conn: Connection,
    seq: u64,
    epoch: u64,
}

const SEQ: &str = "seq";
const EPOCH: &str = "epoch";

impl Store {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Store, DbError> {
        Self::init(Connection::open(path)?)
    }

    /// Opens another process's copy read-only (tests and operators comparing
    /// replicas); it must already hold the schema.
    pub fn open_read_only(path: &Path) -> Result<Store, DbError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let seq = meta(&conn, SEQ)?;
        let epoch = meta(&conn, EPOCH)?;
        Ok(Store { conn, seq, epoch })
    }

    pub fn open_in_memory() -> Result<Store, DbError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(schema::DDL)?;
        let seq = meta(&conn, SEQ)?;
        let epoch = meta(&conn, EPOCH)?;
        Ok(Store { conn, seq, epoch })
    }

    /// The sequence number of the last write applied here.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The highest election epoch this replica has seen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn read(&self, r: &ReadRequest) -> Result<ReadOutcome, DbError> {
        let stmt = sql::select(r);
        let mut prepared = self.conn.prepare_cached(&stmt.sql)?;
        let names: Vec<String> = prepared
            .column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rows = prepared.query(params_from_iter(stmt.params.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut obj = Map::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                obj.insert(name.clone(), to_json(row.get_ref(i)?));
            }
            out.push(obj);
        }
        Ok(ReadOutcome {
            rows: out,
            seq: self.seq,
            worker: None,
        })
    }

    /// Master side: applies `request` once under `write_id` as the next sequence number.
    pub fn commit(
        &mut self,
        write_id: &str,
        epoch: u64,
        request: &WriteRequest,
    ) -> Result<Commit, DbError> {
        let mut results = self.commit_batch(epoch, &[(write_id.to_string(), request.clone())])?;
        results
            .pop()
            .unwrap_or_else(|| Err(DbError::Internal("empty batch result".into())))
    }

    /// Master side, group commit: applies a batch of writes in one SQLite
    /// transaction, each in its own savepoint, so a write that fails (a
    /// constraint) is rolled back alone and uses no sequence number, while the
    /// others share one durable commit. Results are in the batch's order.
    pub fn commit_batch(
        &mut self,
        epoch: u64,
        writes: &[(String, WriteRequest)],
    ) -> Result<Vec<Result<Commit, DbError>>, DbError> {
        let epoch = self.epoch.max(epoch);
        let mut seq = self.seq;
        let mut results = Vec::with_capacity(writes.len());
        let mut tx = self.conn.transaction()?;
        for (write_id, request) in writes {
            let earlier: Option<String> = tx
                .prepare_cached("SELECT outcome FROM _writes WHERE write_id = ?1")?
                .query_row([write_id], |r| r.get(0))
                .optional()?;
            if let Some(outcome) = earlier {
                let outcome = serde_json::from_str(&outcome)
                    .map_err(|e| DbError::Internal(format!("stored outcome: {e}")))?;
                results.push(Ok(Commit::Duplicate(outcome)));
                continue;
            }
            let sp = tx.savepoint()?;
            match apply(&sp, write_id, seq + 1, request) {
                Ok(outcome) => {
                    sp.commit()?;
                    seq += 1;
                    let entry = LogEntry {
                        seq,
                        epoch,
                        write_id: write_id.clone(),
                        request: request.clone(),
                    };
                    results.push(Ok(Commit::New(entry, outcome)));
                }
                // Dropping the savepoint rolls this write back alone.
                Err(e) => results.push(Err(e)),
            }
        }
        if epoch > self.epoch {
            set_meta(&tx, EPOCH, epoch)?;
        }
        tx.commit()?;
        self.seq = seq;
        self.epoch = epoch;
        Ok(results)
    }

    /// Replica side: applies one entry from `syncQ` strictly in sequence order.
    pub fn apply_sync(&mut self, entry: &LogEntry) -> Result<SyncApplied, DbError> {
        if entry.epoch < self.epoch {
            return Ok(SyncApplied::Stale);
        }
        if entry.seq <= self.seq {
            return Ok(SyncApplied::Duplicate);
        }
        if entry.seq != self.seq + 1 {
            return Ok(SyncApplied::Gap {
                expected: self.seq + 1,
            });
        }
        let tx = self.conn.transaction()?;
        // A write that failed on the master was never published, so a failure here
        // means this replica diverged: report it rather than skip it.
        apply(&tx, &entry.write_id, entry.seq, &entry.request)?;
        if entry.epoch > self.epoch {
            set_meta(&tx, EPOCH, entry.epoch)?;
        }
        tx.commit()?;
        self.seq = entry.seq;
        self.epoch = entry.epoch;
        Ok(SyncApplied::Applied)
    }

    /// Records that a master of `epoch` has taken over; later entries of older epochs
    /// are stale. Returns false if a newer epoch was already seen.
    pub fn observe_epoch(&mut self, epoch: u64) -> Result<bool, DbError> {
        if epoch < self.epoch {
            return Ok(false);
        }
        if epoch > self.epoch {
            set_meta(&self.conn, EPOCH, epoch)?;
            self.epoch = epoch;
        }
        Ok(true)
    }

    /// Writes a consistent copy of the whole database to `path` (SQLite's online
    /// backup) and returns the sequence number and epoch it holds.
    pub fn backup_to(&self, path: &Path) -> Result<(u64, u64), DbError> {
        let _ = std::fs::remove_file(path);
        self.conn.backup(rusqlite::MAIN_DB, path, None)?;
        Ok((self.seq, self.epoch))
    }

    /// A digest of every public table's rows, equal on replicas holding equal data.
    pub fn checksum(&self) -> Result<String, DbError> {
        let mut hasher = DefaultHasher::new();
        for table in schema::TABLES {
            let cols: Vec<String> = table
                .columns
                .iter()
                .map(|c| format!("\"{}\"", c.name))
                .collect();
            let sql = format!(
                "SELECT {} FROM \"{}\" ORDER BY {}",
                cols.join(", "),
                table.name,
                cols.join(", ")
            );
            let mut stmt = self.conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            table.name.hash(&mut hasher);
            while let Some(row) = rows.next()? {
                for i in 0..cols.len() {
                    to_json(row.get_ref(i)?).to_string().hash(&mut hasher);
                }
            }
        }
        Ok(format!("{:016x}", hasher.finish()))
    }
}

fn apply(
    tx: &Connection,
    write_id: &str,
    seq: u64,
    request: &WriteRequest,
) -> Result<WriteOutcome, DbError> {
    let mut rows_affected = 0u64;
    for stmt in sql::write(request) {
        let mut prepared = tx.prepare_cached(&stmt.sql)?;
        rows_affected += prepared.execute(params_from_iter(stmt.params.iter()))? as u64;
    }
    let last_insert_id =
        matches!(request, WriteRequest::Insert { .. }).then(|| tx.last_insert_rowid());
    let outcome = WriteOutcome {
        seq,
        rows_affected,
        last_insert_id,
    };
    let stored = serde_json::to_string(&outcome).map_err(|e| DbError::Internal(e.to_string()))?;
    tx.prepare_cached("INSERT INTO _writes (write_id, seq, outcome) VALUES (?1, ?2, ?3)")?
        .execute(rusqlite::params![write_id, seq as i64, stored])?;
    set_meta(tx, SEQ, seq)?;
    Ok(outcome)
}

fn meta(conn: &Connection, key: &str) -> Result<u64, DbError> {
    let v: Option<i64> = conn
        .query_row("SELECT value FROM _meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

fn set_meta(conn: &Connection, key: &str, value: u64) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO _meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![key, value as i64])?;
    Ok(())
}

fn to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) => Json::from(i),
        ValueRef::Real(f) => Json::from(f),
        ValueRef::Text(t) => Json::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Json::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::request::parse;

    fn w(body: &str) -> WriteRequest {
        parse(body.as_bytes()).expect("valid write")
    }
    fn r(body: &str) -> ReadRequest {
        parse(body.as_bytes()).expect("valid read")
    }
    fn user(name: &str) -> WriteRequest {
        w(&format!(
            r#"{{"table":"users","insert":{{"username":"{name}","password":"p"}}}}"#
        ))
    }
    fn committed(c: Commit) -> (LogEntry, WriteOutcome) {
        match c {
            Commit::New(e, o) => (e, o),
            Commit::Duplicate(_) => panic!("expected a new commit"),
        }
    }

    #[test]
    fn commit_numbers_writes_and_dedups_by_write_id() {
        let mut s = Store::open_in_memory().expect("db");
        let (e1, o1) = committed(s.commit("w1", 1, &user("a")).expect("commit"));
        assert_eq!((e1.seq, o1.seq, o1.rows_affected), (1, 1, 1));
        let again = s.commit("w1", 1, &user("a")).expect("dedup");
        assert_eq!(again, Commit::Duplicate(o1));
        let (e2, _) = committed(s.commit("w2", 1, &user("b")).expect("commit"));
        assert_eq!(e2.seq, 2);
        assert_eq!(s.seq(), 2);
    }

    #[test]
    fn a_batch_shares_one_commit_and_a_failure_stays_alone() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("w0", 1, &user("a")).expect("commit");
        let batch = vec![
            ("w1".to_string(), user("b")),
            ("w2".to_string(), user("a")), // duplicate username: fails alone
            ("w3".to_string(), user("c")),
            ("w1".to_string(), user("b")), // same write id again within the batch
            ("w0".to_string(), user("a")), // redelivery of an earlier write
        ];
        let results = s.commit_batch(1, &batch).expect("batch");
        let seqs: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(Commit::New(e, _)) => format!("new {}", e.seq),
                Ok(Commit::Duplicate(o)) => format!("dup {}", o.seq),
                Err(DbError::Constraint(_)) => "conflict".into(),
                Err(e) => format!("{e}"),
            })
            .collect();
        assert_eq!(seqs, vec!["new 2", "conflict", "new 3", "dup 2", "dup 1"]);
        assert_eq!(s.seq(), 3);
        let names = s
            .read(&r(r#"{"table":"users","count":true}"#))
            .expect("count");
        assert_eq!(names.rows[0]["count"], 3);
    }

    #[test]
    fn failed_write_uses_no_sequence_number() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("w1", 1, &user("a")).expect("commit");
        let err = s
            .commit("w2", 1, &user("a"))
            .expect_err("duplicate username");
        assert!(matches!(err, DbError::Constraint(_)), "{err:?}");
        assert_eq!(s.seq(), 1);
        let (e, _) = committed(s.commit("w3", 1, &user("b")).expect("commit"));
        assert_eq!(e.seq, 2);
    }

    #[test]
    fn usernames_are_case_sensitive() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("w1", 1, &user("Alice")).expect("commit");
        s.commit("w2", 1, &user("alice")).expect("a different user");
    }

    #[test]
    fn replica_applies_in_order_and_reports_gaps_duplicates_and_stale_epochs() {
        let mut master = Store::open_in_memory().expect("db");
        let mut replica = Store::open_in_memory().expect("db");
        let entries: Vec<LogEntry> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                committed(
                    master
                        .commit(&format!("w{i}"), 1, &user(n))
                        .expect("commit"),
                )
                .0
            })
            .collect();
        assert_eq!(
            replica.apply_sync(&entries[1]).expect("gap"),
            SyncApplied::Gap { expected: 1 }
        );
        assert_eq!(
            replica.apply_sync(&entries[0]).expect("apply"),
            SyncApplied::Applied
        );
        assert_eq!(
            replica.apply_sync(&entries[0]).expect("dup"),
            SyncApplied::Duplicate
        );
        assert_eq!(
            replica.apply_sync(&entries[1]).expect("apply"),
            SyncApplied::Applied
        );
        assert!(replica.observe_epoch(2).expect("epoch"));
        assert_eq!(
            replica.apply_sync(&entries[2]).expect("stale"),
            SyncApplied::Stale
        );
        let mut next = entries[2].clone();
        next.epoch = 2;
        assert_eq!(
            replica.apply_sync(&next).expect("apply"),
            SyncApplied::Applied
        );
        assert_eq!(replica.seq(), 3);
        assert_eq!(
            replica.checksum().expect("sum"),
            master.checksum().expect("sum")
        );
        assert!(!replica.observe_epoch(1).expect("older epoch refused"));
    }

    #[test]
    fn values_are_stored_literally() {
        let mut s = Store::open_in_memory().expect("db");
        let evil = "x'); DROP TABLE users; --";
        s.commit("w1", 1, &user(evil)).expect("commit");
        let out = s
            .read(&r(r#"{"table":"users","columns":["username"]}"#))
            .expect("read");
        assert_eq!(out.rows.len(), 1);
        assert_eq!(out.rows[0]["username"], evil);
    }

    #[test]
    fn reads_filter_order_count_and_limit() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("u", 1, &user("a")).expect("commit");
        for (i, ts) in [
            "2030-01-01 10:00:00",
            "2020-01-01 10:00:00",
            "2031-05-05 10:00:00",
        ]
        .iter()
        .enumerate()
        {
            s.commit(
                &format!("r{i}"),
                1,
                &w(&format!(
                    r#"{{"table":"rides","insert":{{"created_by":"a","timestamp":"{ts}","source":1,"destination":2}}}}"#
                )),
            )
            .expect("commit");
        }
        let out = s
            .read(&r(r#"{"table":"rides","columns":["ride_id","timestamp"],"where":{"source":1,"timestamp":{">":"2025-01-01 00:00:00"}},"order_by":[{"column":"timestamp","desc":true}]}"#))
            .expect("read");
        let ids: Vec<i64> = out
            .rows
            .iter()
            .map(|r| r["ride_id"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(ids, vec![3, 1]);
        let count = s
            .read(&r(r#"{"table":"rides","count":true}"#))
            .expect("count");
        assert_eq!(count.rows[0]["count"], 3);
        let limited = s.read(&r(r#"{"table":"rides","limit":1}"#)).expect("limit");
        assert_eq!(limited.rows.len(), 1);
    }

    #[test]
    fn ride_ids_are_not_reused_and_members_go_with_their_ride() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("u", 1, &user("a")).expect("commit");
        let ride = w(
            r#"{"table":"rides","insert":{"created_by":"a","timestamp":"2030-01-01 00:00:00","source":1,"destination":2}}"#,
        );
        let (_, first) = committed(s.commit("r1", 1, &ride).expect("commit"));
        s.commit(
            "m1",
            1,
            &w(&format!(
                r#"{{"table":"ride_members","insert":{{"ride_id":{},"username":"a"}}}}"#,
                first.last_insert_id.unwrap_or(0)
            )),
        )
        .expect("join");
        s.commit("d1", 1, &w(r#"{"table":"rides","delete":{"ride_id":1}}"#))
            .expect("delete");
        let members = s
            .read(&r(r#"{"table":"ride_members","count":true}"#))
            .expect("count");
        assert_eq!(members.rows[0]["count"], 0);
        let (_, second) = committed(s.commit("r2", 1, &ride).expect("commit"));
        assert_eq!(second.last_insert_id, Some(2));
        let orphan = s.commit(
            "m2",
            1,
            &w(r#"{"table":"ride_members","insert":{"ride_id":99,"username":"a"}}"#),
        );
        assert!(matches!(orphan, Err(DbError::Constraint(_))), "{orphan:?}");
    }

    #[test]
    fn a_backup_opens_as_an_equal_replica() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = Store::open(&dir.path().join("a.sqlite")).expect("db");
        for i in 0..50 {
            s.commit(&format!("w{i}"), 2, &user(&format!("u{i}")))
                .expect("commit");
        }
        let copy = dir.path().join("copy.sqlite");
        assert_eq!(s.backup_to(&copy).expect("backup"), (50, 2));
        let mut replica = Store::open(&copy).expect("open copy");
        assert_eq!((replica.seq(), replica.epoch()), (50, 2));
        assert_eq!(replica.checksum().expect("sum"), s.checksum().expect("sum"));
        // The copy keeps the dedup record, and continues the sequence.
        let Commit::New(next, _) = s.commit("w50", 2, &user("u50")).expect("commit") else {
            panic!("new write expected")
        };
        assert_eq!(
            replica.apply_sync(&next).expect("apply"),
            SyncApplied::Applied
        );
        assert_eq!(
            replica.commit("w3", 2, &user("u3")).expect("dedup"),
            s.commit("w3", 2, &user("u3")).expect("dedup")
        );
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        {
            let mut s = Store::open(&path).expect("db");
            s.commit("w1", 3, &user("a")).expect("commit");
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!((s.seq(), s.epoch()), (1, 3));
    }
}
