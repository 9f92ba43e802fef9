//! The RideShare schema: the tables and columns a request may name, their types,
//! and the DDL that creates them. Every name in a request is checked here first.

/// The SQLite type of a column, as far as requests are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Integer,
}

/// One column of a public table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// An insert must give this column a value (NOT NULL without default).
    pub required: bool,
    /// The database assigns the value (an AUTOINCREMENT key): requests may
    /// read and filter on it, never insert or update it.
    pub assigned: bool,
}

/// One public table: the only tables a request may name.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

const fn col(name: &'static str, ty: ColumnType, required: bool) -> Column {
    Column {
        name,
        ty,
        required,
        assigned: false,
    }
}

/// A key the database assigns (`INTEGER PRIMARY KEY AUTOINCREMENT`).
const fn assigned(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Integer,
        required: false,
        assigned: true,
    }
}

use ColumnType::{Integer, Text};

/// Users: the username is the key (case-sensitive); the password is a SHA1 hex digest.
pub const USERS: Table = Table {
    name: "users",
    columns: &[col("username", Text, true), col("password", Text, true)],
};

/// Rides: `ride_id` is assigned by the master and never reused (AUTOINCREMENT),
/// so no request may set it;
/// `timestamp` is stored as `YYYY-MM-DD HH:MM:SS` so it sorts and compares as time.
pub const RIDES: Table = Table {
    name: "rides",
    columns: &[
        assigned("ride_id"),
        col("created_by", Text, true),
        col("timestamp", Text, true),
        col("source", Integer, true),
        col("destination", Integer, true),
    ],
};

/// Who joined which ride; removed with the ride.
pub const RIDE_MEMBERS: Table = Table {
    name: "ride_members",
    columns: &[col("ride_id", Integer, true), col("username", Text, true)],
};

/// Every public table, in the order `clear` empties them (children first).
pub const TABLES: &[&Table] = &[&RIDE_MEMBERS, &RIDES, &USERS];

pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|t| t.name == name)
}

/// DDL for the public tables and the replication bookkeeping (`_meta`, `_writes`),
/// which requests can never name because they are not in [`TABLES`]. `_writes`
/// keeps, per applied write id, its sequence number, outcome, a hash of the
/// request (an Idempotency-Key reused for another request is refused) and the
/// entry's time (records expire).
pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY NOT NULL,
    password TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rides (
    ride_id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_by TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    source INTEGER NOT NULL,
    destination INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rides_by_route ON rides (source, destination, timestamp);
CREATE TABLE IF NOT EXISTS ride_members (
    ride_id INTEGER NOT NULL REFERENCES rides (ride_id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    PRIMARY KEY (ride_id, username)
);
CREATE TABLE IF NOT EXISTS _meta (
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _writes (
    write_id TEXT PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    request_hash TEXT,
    at_ms INTEGER NOT NULL DEFAULT 0
);
";

/// Run after [`DDL`] (and after copies of older versions got `_writes.at_ms`):
/// expired write records are found by time.
pub const DDL_WRITES_INDEX: &str = "CREATE INDEX IF NOT EXISTS _writes_by_time ON _writes (at_ms);";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_tables_match_the_public_schema() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory db");
        conn.execute_batch(DDL).expect("ddl");
        for t in TABLES {
            let mut stmt = conn
                .prepare(&format!("PRAGMA table_info({})", t.name))
                .expect("pragma");
            let names: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(1))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let expected: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
            assert_eq!(names, expected, "table {}", t.name);
        }
    }

    #[test]
    fn assigned_columns_are_exactly_the_autoincrement_keys() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory db");
        conn.execute_batch(DDL).expect("ddl");
        for t in TABLES {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [t.name],
                    |r| r.get(0),
                )
                .expect("table sql");
            for c in t.columns {
                let autoincrement = sql.lines().any(|l| {
                    l.trim_start().starts_with(&format!("{} ", c.name))
                        && l.contains("AUTOINCREMENT")
                });
                assert_eq!(c.assigned, autoincrement, "{}.{}", t.name, c.name);
            }
        }
        assert!(RIDES.column("ride_id").is_some_and(|c| c.assigned));
    }

    #[test]
    fn internal_tables_are_not_public() {
        assert!(table("_meta").is_none());
        assert!(table("_writes").is_none());
        assert!(table("sqlite_master").is_none());
        assert!(table("users").is_some());
    }
}
