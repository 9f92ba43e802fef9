//! A worker's own SQLite copy: applies validated reads and writes, and keeps the
//! replication bookkeeping (applied sequence number, election epoch, and the ids of
//! applied writes for dedup) in the same transaction as the data it describes.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::error::{Constraint, ErrorKind, Failure};
use super::request::{ReadRequest, WriteRequest};
use super::{schema, sql};

/// Why a statement failed. Workers report it as a [`super::error::Failure`]
/// of the matching kind; the orchestrator's HTTP edge picks the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DbError {
    /// A constraint refused the write (duplicate key, unknown ride for a
    /// member), with the rule it broke: 409.
    #[error("constraint violated: {1}")]
    Constraint(Constraint, String),
    /// A value the database cannot take (too big, wrong type for the column): 422.
    #[error("value refused by the database: {0}")]
    Invalid(String),
    /// Out of space (SQLITE_FULL): the disk is full, or a key the database
    /// assigns (AUTOINCREMENT) reached its largest value: 507.
    #[error("out of space: {0} (the disk is full, or a key the database assigns reached its largest value)")]
    Full(String),
    /// An Idempotency-Key already used for a different request: 422.
    #[error("{0}")]
    KeyReused(String),
    /// The database itself failed: 500.
    #[error("database error: {0}")]
    Internal(String),
    /// A write of a transaction failed, so nothing of the transaction was
    /// applied; answered with its cause's status.
    #[error(
        "statement {index} of the transaction ({statement}) failed, nothing was applied: {cause}"
    )]
    Statement {
        index: usize,
        statement: String,
        cause: Box<DbError>,
    },
}

impl DbError {
    /// What went wrong, under any transaction statement it happened in.
    pub fn cause(&self) -> &DbError {
        match self {
            DbError::Statement { cause, .. } => cause.cause(),
            other => other,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let text = msg.clone().unwrap_or_else(|| e.to_string());
                match f.code {
                    C::ConstraintViolation => DbError::Constraint(rule(f.extended_code), text),
                    C::DiskFull => DbError::Full(text),
                    C::TooBig | C::TypeMismatch => DbError::Invalid(text),
                    _ => DbError::Internal(e.to_string()),
                }
            }
            _ => DbError::Internal(e.to_string()),
        }
    }
}

/// The rule behind a constraint violation, from SQLite's extended result code.
fn rule(extended_code: std::os::raw::c_int) -> Constraint {
    use rusqlite::ffi;
    match extended_code {
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => Constraint::Unique,
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Constraint::ForeignKey,
        _ => Constraint::Other,
    }
}

/// How long the record of a write (its id, request hash and outcome) is kept
/// for deduplication: a retry with the same Idempotency-Key within this window
/// gets the first outcome; after it, the key is new again.
pub const WRITE_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Expired write records are deleted at most this often (by entry time).
pub const WRITE_RECORD_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a committed write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The replication sequence number of this write.
    pub seq: u64,
    pub rows_affected: u64,
    /// The new row's id, for inserts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_insert_id: Option<i64>,
    /// A transaction's outcome per write, in order (`rows_affected` above is
    /// their sum); empty for any other write.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub statements: Vec<StatementOutcome>,
}

/// What one write of a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementOutcome {
    pub rows_affected: u64,
    /// The new row's id, for inserts (the last row's, for several).
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
    /// More rows match beyond this page (`limit`): ask again with `offset`.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub more: bool,
}

/// One committed write as it travels on `syncQ`; a transaction is one entry
/// (its `request` lists its writes), applied by a replica in one SQLite
/// transaction like any other entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub epoch: u64,
    pub write_id: String,
    pub request: WriteRequest,
    /// The master's clock when it committed the write (ms since the epoch):
    /// write records expire by this time, the same way on every replica.
    #[serde(default)]
    pub at_ms: u64,
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
/// The entry time of the last pruning of expired write records.
const PRUNED_AT: &str = "writes_pruned_at_ms";
/// The `syncQ` offset to resume reading from: every entry before it is applied.
const STREAM_OFFSET: &str = "stream_offset";
/// Non-zero while this copy leads (the epoch): it may hold commits that never
/// reached `syncQ`, so it is no prefix of the log until cleared.
const LEADING: &str = "leading_epoch";

/// Where a copy on disk stands, read when a worker reopens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskState {
    pub seq: u64,
    pub epoch: u64,
    /// The `syncQ` offset to resume from (0: never recorded).
    pub stream_offset: u64,
    /// Non-zero: the copy was a master's and was not closed with every commit
    /// confirmed on `syncQ`.
    pub leading_epoch: u64,
}

/// How one attempt at a batch ended.
enum Attempt {
    /// Committed: the results and the new sequence number.
    Done(Vec<Result<Commit, DbError>>, u64),
    /// The write at this index made SQLite roll back the whole transaction.
    RolledBack(usize, DbError),
}

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
        migrate_writes(&conn)?;
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
        // The statement asks for one row past the page (see `sql::select`).
        let more = !r.count && out.len() as u64 > r.limit;
        if more {
            out.pop();
        }
        Ok(ReadOutcome {
            rows: out,
            seq: self.seq,
            worker: None,
            more,
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
    ///
    /// A write fails alone even when its error makes SQLite roll back the
    /// whole transaction (SQLITE_FULL from a full disk or an exhausted
    /// AUTOINCREMENT key, SQLITE_IOERR, SQLITE_NOMEM): that write is answered
    /// with its error and the rest of the batch runs again in a new
    /// transaction. If the commit itself fails and nothing was stored, every
    /// new write of the batch is answered with that error. An `Err` means this
    /// copy can no longer be trusted (the worker should stop).
    ///
    /// A transaction (`WriteRequest::Transaction`) is one write here: its
    /// statements share its savepoint and its one sequence number, so a
    /// failing statement (a constraint, or SQLITE_FULL rolling back the whole
    /// transaction) takes the others with it and the rest of the batch is
    /// unaffected, as for any write.
    pub fn commit_batch(
        &mut self,
        epoch: u64,
        writes: &[(String, WriteRequest)],
    ) -> Result<Vec<Result<Commit, DbError>>, DbError> {
        self.commit_batch_at(epoch, now_ms(), writes)
    }

    /// [`Store::commit_batch`] with the entries' time given.
    fn commit_batch_at(
        &mut self,
        epoch: u64,
        at_ms: u64,
        writes: &[(String, WriteRequest)],
    ) -> Result<Vec<Result<Commit, DbError>>, DbError> {
        let epoch = self.epoch.max(epoch);
        let mut failed = BTreeMap::new();
        // Each retry leaves one more write out, so this ends.
        loop {
            match self.attempt_batch(epoch, at_ms, writes, &failed)? {
                Attempt::Done(results, seq) => {
                    self.seq = seq;
                    self.epoch = epoch;
                    return Ok(results);
                }
                Attempt::RolledBack(i, e) => {
                    tracing::warn!(write = %writes[i].1, error = %e, "a write rolled back its whole transaction; the rest of the batch runs again");
                    failed.insert(i, e);
                }
            }
        }
    }

    /// One transaction over `writes`, answering those in `failed` with their error.
    fn attempt_batch(
        &mut self,
        epoch: u64,
        at_ms: u64,
        writes: &[(String, WriteRequest)],
        failed: &BTreeMap<usize, DbError>,
    ) -> Result<Attempt, DbError> {
        let mut seq = self.seq;
        let mut results = Vec::with_capacity(writes.len());
        let mut tx = self.conn.transaction()?;
        for (i, (write_id, request)) in writes.iter().enumerate() {
            if let Some(e) = failed.get(&i) {
                results.push(Err(e.clone()));
                continue;
            }
            let hash = request_hash(request)?;
            if let Some(earlier) = earlier_write(&tx, write_id, &hash)? {
                results.push(earlier);
                continue;
            }
            let sp = tx.savepoint()?;
            match apply(&sp, write_id, seq + 1, at_ms, &hash, request) {
                Ok(outcome) => {
                    sp.commit()?;
                    seq += 1;
                    let entry = LogEntry {
                        seq,
                        epoch,
                        write_id: write_id.clone(),
                        request: request.clone(),
                        at_ms,
                    };
                    results.push(Ok(Commit::New(entry, outcome)));
                }
                Err(e) => {
                    // Dropping the savepoint rolls this write back alone,
                    // unless SQLite rolled back the whole transaction.
                    drop(sp);
                    if tx.is_autocommit() {
                        return Ok(Attempt::RolledBack(i, e));
                    }
                    results.push(Err(e));
                }
            }
        }
        if epoch > self.epoch {
            set_meta(&tx, EPOCH, epoch)?;
        }
        if let Err(e) = tx.commit() {
            let e = DbError::from(e);
            // A failed COMMIT is rolled back; make sure nothing was stored
            // before answering the batch's new writes with the error.
            let stored = meta(&self.conn, SEQ)?;
            if stored != self.seq {
                return Err(DbError::Internal(format!(
                    "commit failed ({e}) yet the stored seq is {stored}, not {}",
                    self.seq
                )));
            }
            tracing::warn!(error = %e, "a batch could not commit: its new writes are refused");
            let results = results
                .into_iter()
                .map(|r| match r {
                    Ok(Commit::New(..)) => Err(e.clone()),
                    other => other,
                })
                .collect();
            return Ok(Attempt::Done(results, self.seq));
        }
        Ok(Attempt::Done(results, seq))
    }

    /// Replica side: applies one entry from `syncQ` strictly in sequence order.
    pub fn apply_sync(&mut self, entry: &LogEntry) -> Result<SyncApplied, DbError> {
        let outcome = self.apply_sync_batch(std::slice::from_ref(entry))?;
        outcome
            .into_iter()
            .next()
            .ok_or_else(|| DbError::Internal("no outcome for a sync entry".into()))
    }

    /// Applies `entries` in order in one transaction, each as
    /// [`Store::apply_sync`] would, and stops after the first gap (what came
    /// before it is kept). One outcome per entry considered. If one fails to
    /// apply (this copy diverged), nothing of the batch is kept.
    pub fn apply_sync_batch(&mut self, entries: &[LogEntry]) -> Result<Vec<SyncApplied>, DbError> {
        let tx = self.conn.transaction()?;
        let (mut seq, mut epoch) = (self.seq, self.epoch);
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let outcome = if entry.epoch < epoch {
                SyncApplied::Stale
            } else if entry.seq <= seq {
                SyncApplied::Duplicate
            } else if entry.seq != seq + 1 {
                SyncApplied::Gap { expected: seq + 1 }
            } else {
                // A write that failed on the master was never published, so a
                // failure here means this replica diverged: report it rather
                // than skip it.
                apply(
                    &tx,
                    &entry.write_id,
                    entry.seq,
                    entry.at_ms,
                    &request_hash(&entry.request)?,
                    &entry.request,
                )?;
                if entry.epoch > epoch {
                    set_meta(&tx, EPOCH, entry.epoch)?;
                }
                seq = entry.seq;
                epoch = entry.epoch;
                SyncApplied::Applied
            };
            let gap = matches!(outcome, SyncApplied::Gap { .. });
            outcomes.push(outcome);
            if gap {
                break;
            }
        }
        tx.commit()?;
        self.seq = seq;
        self.epoch = epoch;
        Ok(outcomes)
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

    /// The replication bookkeeping of this copy.
    pub fn disk_state(&self) -> Result<DiskState, DbError> {
        Ok(DiskState {
            seq: self.seq,
            epoch: self.epoch,
            stream_offset: meta(&self.conn, STREAM_OFFSET)?,
            leading_epoch: meta(&self.conn, LEADING)?,
        })
    }

    /// Records that every `syncQ` entry before `offset` is applied here (it may
    /// lag: resuming earlier only meets entries already applied).
    pub fn record_stream_offset(&mut self, offset: u64) -> Result<(), DbError> {
        set_meta(&self.conn, STREAM_OFFSET, offset)
    }

    /// Marks this copy as a master's of `epoch` (before its first own commit),
    /// or, with 0, as a prefix of the log again (every commit confirmed).
    pub fn record_leading(&mut self, epoch: u64) -> Result<(), DbError> {
        set_meta(&self.conn, LEADING, epoch)
    }

    /// Writes a consistent copy of the whole database to `path` (SQLite's online
    /// backup) and returns the sequence number and epoch it holds.
    pub fn backup_to(&self, path: &Path) -> Result<(u64, u64), DbError> {
        let _ = std::fs::remove_file(path);
        self.conn.backup(rusqlite::MAIN_DB, path, None)?;
        Ok((self.seq, self.epoch))
    }

    /// Writes a consistent copy of the database file at `db` to `dest` without
    /// the store's own connection: a connection of its own opens a read
    /// transaction (WAL mode: writers go on meanwhile), reads the seq and epoch
    /// *in* it, and copies that very state with SQLite's online backup,
    /// `pages_per_step` pages at a time (`between_steps` runs after each step).
    /// Returns the (seq, epoch) the copy holds. A caller that read the `syncQ`
    /// offset before calling resumes from it without missing anything.
    pub fn snapshot_file(
        db: &Path,
        dest: &Path,
        pages_per_step: i32,
        mut between_steps: impl FnMut(),
    ) -> Result<(u64, u64), DbError> {
        let _ = std::fs::remove_file(dest);
        let conn = Connection::open(db)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.execute_batch("BEGIN DEFERRED")?;
        // The first read starts the transaction: the copy holds this state.
        let seq = meta(&conn, SEQ)?;
        let epoch = meta(&conn, EPOCH)?;
        {
            let mut out = Connection::open(dest)?;
            let backup = rusqlite::backup::Backup::new(&conn, &mut out)?;
            loop {
                match backup.step(pages_per_step)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => between_steps(),
                    rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    _ => between_steps(),
                }
            }
        }
        conn.execute_batch("COMMIT")?;
        Ok((seq, epoch))
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

/// The hash a write's record keeps, to tell a retry of the same request from
/// another request under the same Idempotency-Key: SHA-256 of the request's
/// canonical JSON (its wire form with object keys sorted).
pub fn request_hash(request: &WriteRequest) -> Result<String, DbError> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_value(request).map_err(|e| DbError::Internal(e.to_string()))?;
    let mut text = String::new();
    canonical(&json, &mut text);
    Ok(Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `v` as JSON with every object's keys in sorted order.
fn canonical(v: &Json, out: &mut String) {
    match v {
        Json::Object(map) => {
            let sorted: BTreeMap<&String, &Json> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::from(k.as_str()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The answer to a write whose id was applied before: its first outcome if it
/// is the same request, a refusal if the id (a client's Idempotency-Key) came
/// with another request. Records without a hash (older copies) match any request.
fn earlier_write(
    tx: &Connection,
    write_id: &str,
    hash: &str,
) -> Result<Option<Result<Commit, DbError>>, DbError> {
    let earlier: Option<(String, Option<String>, i64)> = tx
        .prepare_cached("SELECT outcome, request_hash, seq FROM _writes WHERE write_id = ?1")?
        .query_row([write_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((outcome, stored_hash, seq)) = earlier else {
        return Ok(None);
    };
    if stored_hash.is_some_and(|h| h != hash) {
        return Ok(Some(Err(DbError::KeyReused(format!(
            "this Idempotency-Key was already used for a different request (applied as seq {seq}); send a new key with a new request"
        )))));
    }
    let outcome = serde_json::from_str(&outcome)
        .map_err(|e| DbError::Internal(format!("stored outcome: {e}")))?;
    Ok(Some(Ok(Commit::Duplicate(outcome))))
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Copies made before write records had a request hash and a time get the
/// columns (NULL hash: matches any request; time 0: expires at the next pruning).
fn migrate_writes(conn: &Connection) -> Result<(), DbError> {
    let columns: Vec<String> = conn
        .prepare("PRAGMA table_info(_writes)")?
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<_, _>>()?;
    if !columns.iter().any(|c| c == "request_hash") {
        conn.execute_batch("ALTER TABLE _writes ADD COLUMN request_hash TEXT")?;
    }
    if !columns.iter().any(|c| c == "at_ms") {
        conn.execute_batch("ALTER TABLE _writes ADD COLUMN at_ms INTEGER NOT NULL DEFAULT 0")?;
    }
    conn.execute_batch(schema::DDL_WRITES_INDEX)?;
    Ok(())
}

/// Deletes write records older than [`WRITE_RECORD_TTL`] before `at_ms`, at
/// most once per [`WRITE_RECORD_PRUNE_EVERY`]. Driven by entry times only, so
/// the master and every replica prune at the same entries.
fn prune_writes(tx: &Connection, at_ms: u64) -> Result<(), DbError> {
    let every = WRITE_RECORD_PRUNE_EVERY.as_millis() as u64;
    if at_ms < meta(tx, PRUNED_AT)?.saturating_add(every) {
        return Ok(());
    }
    let before = at_ms.saturating_sub(WRITE_RECORD_TTL.as_millis() as u64);
    tx.prepare_cached("DELETE FROM _writes WHERE at_ms < ?1")?
        .execute([before as i64])?;
    set_meta(tx, PRUNED_AT, at_ms)
}

fn apply(
    tx: &Connection,
    write_id: &str,
    seq: u64,
    at_ms: u64,
    hash: &str,
    request: &WriteRequest,
) -> Result<WriteOutcome, DbError> {
    let outcome = match request {
        // All or nothing: the caller holds a savepoint (the master) or a
        // transaction (a replica) around the whole write, so returning at the
        // first failure leaves nothing of the transaction once it is dropped.
        WriteRequest::Transaction(writes) => {
            let mut statements = Vec::with_capacity(writes.len());
            for (index, write) in writes.iter().enumerate() {
                let done = execute(tx, write).map_err(|cause| DbError::Statement {
                    index,
                    statement: write.to_string(),
                    cause: Box::new(cause),
                })?;
                statements.push(done);
            }
            WriteOutcome {
                seq,
                rows_affected: statements.iter().map(|s| s.rows_affected).sum(),
                last_insert_id: None,
                statements,
            }
        }
        single => {
            let done = execute(tx, single)?;
            WriteOutcome {
                seq,
                rows_affected: done.rows_affected,
                last_insert_id: done.last_insert_id,
                statements: Vec::new(),
            }
        }
    };
    let stored = serde_json::to_string(&outcome).map_err(|e| DbError::Internal(e.to_string()))?;
    prune_writes(tx, at_ms)?;
    tx.prepare_cached(
        "INSERT INTO _writes (write_id, seq, outcome, request_hash, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![
        write_id,
        seq as i64,
        stored,
        hash,
        at_ms as i64
    ])?;
    set_meta(tx, SEQ, seq)?;
    Ok(outcome)
}

/// Runs the statements of one write (not a transaction's bookkeeping).
fn execute(tx: &Connection, request: &WriteRequest) -> Result<StatementOutcome, DbError> {
    let mut rows_affected = 0u64;
    for stmt in sql::write(request) {
        let mut prepared = tx.prepare_cached(&stmt.sql)?;
        rows_affected += prepared.execute(params_from_iter(stmt.params.iter()))? as u64;
    }
    let last_insert_id =
        matches!(request, WriteRequest::Insert { .. }).then(|| tx.last_insert_rowid());
    Ok(StatementOutcome {
        rows_affected,
        last_insert_id,
    })
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

// Here, beside `DbError`, rather than in `error`: the error kinds are the
// `dbaas-api` crate's, which knows no SQLite; the store classifies its errors.
impl From<DbError> for Failure {
    /// The kind of what went wrong, under any transaction statement it
    /// happened in; the message names the statement.
    fn from(e: DbError) -> Failure {
        let (kind, constraint) = match e.cause() {
            DbError::Constraint(rule, _) => (ErrorKind::Constraint, Some(*rule)),
            DbError::Invalid(_) => (ErrorKind::Invalid, None),
            DbError::KeyReused(_) => (ErrorKind::KeyReused, None),
            DbError::Full(_) => (ErrorKind::Full, None),
            DbError::Internal(_) | DbError::Statement { .. } => (ErrorKind::Internal, None),
        };
        Failure {
            kind,
            constraint,
            message: e.to_string(),
        }
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
    /// Commits one user per name on `master` (write ids w0, w1, ...): its log entries.
    fn log_of(master: &mut Store, names: &[&str]) -> Vec<LogEntry> {
        names
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
            .collect()
    }

    fn committed(c: Commit) -> (LogEntry, WriteOutcome) {
        match c {
            Commit::New(e, o) => (e, o),
            Commit::Duplicate(_) => panic!("expected a new commit"),
        }
    }

    #[test]
    fn database_errors_have_their_kind_under_a_transaction_statement() {
        let f = Failure::from(DbError::Constraint(Constraint::Unique, "UNIQUE".into()));
        assert_eq!(
            (f.kind, f.constraint),
            (ErrorKind::Constraint, Some(Constraint::Unique))
        );
        assert_eq!(f.message, "constraint violated: UNIQUE");
        let f = Failure::from(DbError::Full("database or disk is full".into()));
        assert_eq!(f.kind, ErrorKind::Full);
        assert!(f.message.starts_with("out of space"), "{}", f.message);
        assert_eq!(
            Failure::from(DbError::Invalid("string or blob too big".into())).kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            Failure::from(DbError::KeyReused("used".into())).kind,
            ErrorKind::KeyReused
        );
        assert_eq!(
            Failure::from(DbError::Internal("disk".into())).kind,
            ErrorKind::Internal
        );
        let f = Failure::from(DbError::Statement {
            index: 2,
            statement: "insert into ride_members".into(),
            cause: Box::new(DbError::Constraint(Constraint::ForeignKey, "FK".into())),
        });
        assert_eq!(
            (f.kind, f.constraint),
            (ErrorKind::Constraint, Some(Constraint::ForeignKey))
        );
        assert!(
            f.message
                .starts_with("statement 2 of the transaction (insert into ride_members) failed"),
            "{}",
            f.message
        );
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
                Err(DbError::Constraint(..)) => "conflict".into(),
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

    fn ride() -> WriteRequest {
        w(
            r#"{"table":"rides","insert":{"created_by":"a","timestamp":"2030-01-01 00:00:00","source":1,"destination":2}}"#,
        )
    }

    /// A ride with the largest id there is: the next AUTOINCREMENT insert
    /// gets SQLITE_FULL. (Requests cannot set `ride_id`; this goes around them.)
    fn exhaust_ride_ids(s: &Store) {
        s.conn
            .execute(
                "INSERT INTO rides (ride_id, created_by, timestamp, source, destination) VALUES (?1, 'a', '2030-01-01 00:00:00', 1, 2)",
                [i64::MAX],
            )
            .expect("insert the last ride id");
    }

    #[test]
    fn sqlite_full_rolls_back_the_whole_transaction() {
        // The premise of the batch handling below, checked on SQLite itself.
        let mut s = Store::open_in_memory().expect("db");
        exhaust_ride_ids(&s);
        let tx = s.conn.transaction().expect("tx");
        tx.execute_batch("SAVEPOINT a").expect("savepoint");
        let e = tx
            .execute(
                "INSERT INTO rides (created_by, timestamp, source, destination) VALUES ('a', 't', 1, 2)",
                [],
            )
            .expect_err("no ride id left");
        assert!(matches!(DbError::from(e), DbError::Full(_)));
        assert!(tx.is_autocommit(), "SQLite ended the transaction");
    }

    #[test]
    fn a_write_that_rolls_back_the_transaction_fails_alone() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("u", 1, &user("a")).expect("commit");
        exhaust_ride_ids(&s);
        let batch = vec![
            ("w1".to_string(), user("b")),
            ("w2".to_string(), ride()), // SQLITE_FULL: SQLite rolls back everything
            ("w3".to_string(), user("c")),
            ("u".to_string(), user("a")), // a redelivery, still answered
            ("w4".to_string(), user("a")), // a constraint, fails alone as before
            ("w5".to_string(), user("d")),
        ];
        let results = s.commit_batch(1, &batch).expect("the batch is answered");
        let seen: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(Commit::New(e, _)) => format!("new {}", e.seq),
                Ok(Commit::Duplicate(o)) => format!("dup {}", o.seq),
                Err(DbError::Full(_)) => "full".into(),
                Err(DbError::Constraint(..)) => "conflict".into(),
                Err(e) => format!("{e}"),
            })
            .collect();
        assert_eq!(
            seen,
            vec!["new 2", "full", "new 3", "dup 1", "conflict", "new 4"]
        );
        assert_eq!(s.seq(), 4);
        let users = s
            .read(&r(r#"{"table":"users","count":true}"#))
            .expect("count");
        assert_eq!(users.rows[0]["count"], 4, "a, b, c and d are stored");
        let rides = s
            .read(&r(r#"{"table":"rides","count":true}"#))
            .expect("count");
        assert_eq!(rides.rows[0]["count"], 1, "only the seeded ride");
        // The store keeps working, one write at a time or in a batch.
        let (e, _) = committed(s.commit("w6", 1, &user("e")).expect("commit"));
        assert_eq!(e.seq, 5);
        let again = s.commit("w7", 1, &ride()).expect_err("still no ride id");
        assert!(matches!(again, DbError::Full(_)), "{again:?}");
        assert_eq!(s.seq(), 5);
    }

    #[test]
    fn every_write_of_a_batch_can_fail_alone() {
        let mut s = Store::open_in_memory().expect("db");
        exhaust_ride_ids(&s);
        let batch: Vec<(String, WriteRequest)> =
            (0..5).map(|i| (format!("r{i}"), ride())).collect();
        let results = s.commit_batch(1, &batch).expect("answered");
        assert!(results.iter().all(|r| matches!(r, Err(DbError::Full(_)))));
        assert_eq!(s.seq(), 0);
    }

    #[test]
    fn an_idempotency_key_is_bound_to_its_request() {
        let mut s = Store::open_in_memory().expect("db");
        let (_, first) = committed(s.commit("key:k", 1, &user("a")).expect("commit"));
        // The same request again (its keys in another order): the first outcome.
        let same = w(r#"{"insert":{"password":"p","username":"a"},"table":"users"}"#);
        assert_eq!(
            s.commit("key:k", 1, &same).expect("dedup"),
            Commit::Duplicate(first)
        );
        let other = s
            .commit("key:k", 1, &user("b"))
            .expect_err("another request");
        assert!(matches!(other, DbError::KeyReused(_)), "{other:?}");
        // Within one batch too.
        let results = s
            .commit_batch(
                1,
                &[
                    ("key:n".to_string(), user("c")),
                    ("key:n".to_string(), user("d")),
                ],
            )
            .expect("batch");
        assert!(matches!(results[0], Ok(Commit::New(..))));
        assert!(matches!(results[1], Err(DbError::KeyReused(_))));
        assert_eq!(s.seq(), 2);
        assert_eq!(
            request_hash(&user("a")).expect("hash"),
            request_hash(&same).expect("hash")
        );
        assert_ne!(
            request_hash(&user("a")).expect("hash"),
            request_hash(&user("b")).expect("hash")
        );
    }

    fn write_ids(s: &Store) -> Vec<String> {
        let mut stmt = s
            .conn
            .prepare("SELECT write_id FROM _writes ORDER BY write_id")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn write_records_expire_alike_on_the_master_and_its_replicas() {
        let hour = 3_600_000;
        let t0 = 1_000 * hour;
        let mut master = Store::open_in_memory().expect("db");
        let mut replica = Store::open_in_memory().expect("db");
        let mut entries = Vec::new();
        for (id, name, at) in [
            ("key:a", "a", t0),
            ("key:b", "b", t0 + hour),
            ("key:c", "c", t0 + 2 * hour),
            // 24 h after b: a and b expire (at most one pruning a minute).
            ("key:d", "d", t0 + 25 * hour + 1),
            ("key:e", "e", t0 + 25 * hour + 2),
        ] {
            let mut results = master
                .commit_batch_at(1, at, &[(id.to_string(), user(name))])
                .expect("commit");
            match results.pop() {
                Some(Ok(Commit::New(entry, _))) => entries.push(entry),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(write_ids(&master), vec!["key:c", "key:d", "key:e"]);
        for e in &entries {
            assert_eq!(replica.apply_sync(e).expect("apply"), SyncApplied::Applied);
        }
        assert_eq!(write_ids(&replica), write_ids(&master));
        // An expired key is new again: here it meets the username it inserted.
        let again = master
            .commit_batch_at(1, t0 + 26 * hour, &[("key:a".to_string(), user("a"))])
            .expect("commit");
        assert!(
            matches!(again[0], Err(DbError::Constraint(Constraint::Unique, _))),
            "{again:?}"
        );
    }

    #[test]
    fn an_older_copy_gets_the_new_write_record_columns() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE _writes (write_id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, outcome TEXT NOT NULL);
                 INSERT INTO _writes VALUES ('key:old', 1, '{\"seq\":1,\"rows_affected\":1}');",
            )
            .expect("old schema");
        }
        let mut s = Store::open(&path).expect("migrated");
        // A record without a hash matches any request: its first outcome.
        assert!(matches!(
            s.commit("key:old", 1, &user("x")).expect("dedup"),
            Commit::Duplicate(WriteOutcome { seq: 1, .. })
        ));
        committed(s.commit("key:new", 1, &user("y")).expect("commit"));
    }

    #[test]
    fn reads_page_with_limit_and_offset() {
        let mut s = Store::open_in_memory().expect("db");
        let batch: Vec<(String, WriteRequest)> = (0..5)
            .map(|i| (format!("w{i}"), user(&format!("u{i}"))))
            .collect();
        s.commit_batch(1, &batch).expect("batch");
        let page = |body: &str| {
            let out = s.read(&r(body)).expect("read");
            let names: Vec<String> = out
                .rows
                .iter()
                .map(|r| r["username"].as_str().unwrap_or("").to_string())
                .collect();
            (names, out.more)
        };
        let q = r#"{"table":"users","columns":["username"],"order_by":[{"column":"username"}],"limit":2"#;
        assert_eq!(
            page(&format!("{q}}}")),
            (vec!["u0".into(), "u1".into()], true)
        );
        assert_eq!(
            page(&format!("{q},\"offset\":2}}")),
            (vec!["u2".into(), "u3".into()], true)
        );
        assert_eq!(
            page(&format!("{q},\"offset\":4}}")),
            (vec!["u4".into()], false)
        );
        assert_eq!(page(&format!("{q},\"offset\":9}}")), (vec![], false));
        let count = s
            .read(&r(r#"{"table":"users","count":true,"limit":0}"#))
            .expect("count");
        assert_eq!(
            (count.rows[0]["count"].as_i64(), count.more),
            (Some(5), false)
        );
    }

    #[test]
    fn failed_write_uses_no_sequence_number() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("w1", 1, &user("a")).expect("commit");
        let err = s
            .commit("w2", 1, &user("a"))
            .expect_err("duplicate username");
        assert!(
            matches!(err, DbError::Constraint(Constraint::Unique, _)),
            "{err:?}"
        );
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
        let entries = log_of(&mut master, &["a", "b", "c"]);
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
    fn a_batch_of_entries_applies_in_one_go_and_stops_at_a_gap() {
        let mut master = Store::open_in_memory().expect("db");
        let entries = log_of(&mut master, &["a", "b", "c", "d", "e"]);
        let mut replica = Store::open_in_memory().expect("db");
        // a, a again, b, then d (c missing): a and b are kept, the rest not looked at.
        let batch = [
            entries[0].clone(),
            entries[0].clone(),
            entries[1].clone(),
            entries[3].clone(),
            entries[4].clone(),
        ];
        assert_eq!(
            replica.apply_sync_batch(&batch).expect("batch"),
            [
                SyncApplied::Applied,
                SyncApplied::Duplicate,
                SyncApplied::Applied,
                SyncApplied::Gap { expected: 3 }
            ]
        );
        assert_eq!(replica.seq(), 2);
        // The rest, one transaction: equal to the master.
        let outcomes = replica.apply_sync_batch(&entries[2..]).expect("rest");
        assert!(outcomes.iter().all(|o| *o == SyncApplied::Applied));
        assert_eq!(replica.seq(), 5);
        assert_eq!(
            replica.checksum().expect("sum"),
            master.checksum().expect("sum")
        );
    }

    #[test]
    fn a_batch_with_an_entry_that_cannot_apply_keeps_nothing() {
        let mut master = Store::open_in_memory().expect("db");
        let entries = log_of(&mut master, &["a", "b"]);
        let mut replica = Store::open_in_memory().expect("db");
        // The second inserts the first's username again: this copy diverged.
        let mut clash = entries[0].clone();
        clash.seq = 2;
        clash.write_id = "other".into();
        assert!(replica
            .apply_sync_batch(&[entries[0].clone(), clash])
            .is_err());
        assert_eq!(replica.seq(), 0);
        assert_eq!(
            replica
                .read(&r(r#"{"table":"users","count":true}"#))
                .expect("read")
                .rows[0]["count"],
            0
        );
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
        assert!(
            matches!(orphan, Err(DbError::Constraint(Constraint::ForeignKey, _))),
            "{orphan:?}"
        );
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
    fn a_snapshot_holds_the_state_its_read_transaction_began_with() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        let mut s = Store::open(&path).expect("db");
        for i in 0..2000 {
            s.commit(
                &format!("w{i}"),
                1,
                &user(&format!("u{i:05}-{}", "x".repeat(200))),
            )
            .expect("commit");
        }
        let copy = dir.path().join("snap.sqlite");
        let mut more = 0;
        // Writes go on between the steps, on the store's own connection.
        let (seq, epoch) = Store::snapshot_file(&path, &copy, 8, || {
            more += 1;
            s.commit(&format!("later{more}"), 1, &user(&format!("later{more}")))
                .expect("commit during the snapshot");
        })
        .expect("snapshot");
        assert!(more > 5, "the backup ran in several steps ({more})");
        assert_eq!((seq, epoch), (2000, 1));
        let copy = Store::open(&copy).expect("open copy");
        assert_eq!(
            copy.seq(),
            2000,
            "the copy is the state the seq was read in"
        );
        assert_eq!(count(&copy, "users"), 2000);
        assert_eq!(s.seq(), 2000 + more);
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

    fn txn(writes: &[WriteRequest]) -> WriteRequest {
        WriteRequest::Transaction(writes.to_vec())
    }

    fn count(s: &Store, table: &str) -> i64 {
        let out = s
            .read(&r(&format!(r#"{{"table":"{table}","count":true}}"#)))
            .expect("count");
        out.rows[0]["count"].as_i64().unwrap_or(-1)
    }

    #[test]
    fn a_transaction_commits_every_statement_under_one_seq() {
        let mut master = Store::open_in_memory().expect("db");
        let (first, _) = committed(master.commit("w0", 1, &user("a")).expect("commit"));
        let t = txn(&[
            user("b"),
            ride(),
            w(r#"{"table":"ride_members","insert":{"ride_id":1,"username":"b"}}"#),
            w(
                r#"{"table":"users","update":{"set":{"password":"q"},"where":{"username":{">=":"a"}}}}"#,
            ),
        ]);
        let (entry, outcome) = committed(master.commit("t1", 1, &t).expect("commit"));
        assert_eq!((entry.seq, outcome.seq, master.seq()), (2, 2, 2));
        let per: Vec<(u64, Option<i64>)> = outcome
            .statements
            .iter()
            .map(|s| (s.rows_affected, s.last_insert_id))
            .collect();
        assert_eq!(
            per,
            vec![(1, Some(2)), (1, Some(1)), (1, Some(1)), (2, None)]
        );
        assert_eq!((outcome.rows_affected, outcome.last_insert_id), (5, None));
        assert_eq!(entry.request, t);
        // Redelivered under its id: the first outcome, nothing applied again.
        assert_eq!(
            master.commit("t1", 1, &t).expect("dedup"),
            Commit::Duplicate(outcome)
        );
        assert_eq!(master.seq(), 2);
        // A replica applies the one entry, through its wire form, to the same data.
        let mut replica = Store::open_in_memory().expect("db");
        let wire: LogEntry =
            serde_json::from_slice(&serde_json::to_vec(&entry).expect("ser")).expect("de");
        assert_eq!(wire, entry);
        for e in [&first, &wire] {
            assert_eq!(replica.apply_sync(e).expect("apply"), SyncApplied::Applied);
        }
        assert_eq!(replica.seq(), 2);
        assert_eq!(
            replica.checksum().expect("sum"),
            master.checksum().expect("sum")
        );
        assert_eq!(
            (count(&replica, "users"), count(&replica, "ride_members")),
            (2, 1)
        );
    }

    #[test]
    fn a_failing_statement_undoes_its_transaction_and_nothing_else() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("w0", 1, &user("a")).expect("commit");
        let batch = vec![
            ("w1".to_string(), user("b")),
            (
                "t".to_string(),
                // The third statement conflicts: the first two go with it.
                txn(&[user("c"), ride(), user("a"), user("d")]),
            ),
            ("w2".to_string(), user("e")),
        ];
        let results = s.commit_batch(1, &batch).expect("batch");
        assert!(
            matches!(&results[0], Ok(Commit::New(e, _)) if e.seq == 2),
            "{results:?}"
        );
        match &results[1] {
            Err(e @ DbError::Statement { index: 2, .. }) => {
                assert!(matches!(e.cause(), DbError::Constraint(..)), "{e:?}");
                assert!(
                    e.to_string()
                        .starts_with("statement 2 of the transaction (insert into users) failed"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&results[2], Ok(Commit::New(e, _)) if e.seq == 3),
            "{results:?}"
        );
        assert_eq!(s.seq(), 3, "the transaction used no seq");
        let names = s
            .read(&r(
                r#"{"table":"users","columns":["username"],"order_by":[{"column":"username"}]}"#,
            ))
            .expect("read");
        let names: Vec<&str> = names
            .rows
            .iter()
            .filter_map(|r| r["username"].as_str())
            .collect();
        assert_eq!(names, vec!["a", "b", "e"]);
        assert_eq!(count(&s, "rides"), 0);
        // Its key was not recorded: the same transaction, fixed, applies under it.
        let (e, _) = committed(
            s.commit("t", 1, &txn(&[user("c"), ride()]))
                .expect("commit"),
        );
        assert_eq!(e.seq, 4);
    }

    #[test]
    fn a_transaction_rolled_back_by_sqlite_fails_alone() {
        let mut s = Store::open_in_memory().expect("db");
        s.commit("u", 1, &user("a")).expect("commit");
        exhaust_ride_ids(&s);
        let batch = vec![
            ("w1".to_string(), user("b")),
            // SQLITE_FULL on its second statement: SQLite ends the whole transaction.
            ("t".to_string(), txn(&[user("x"), ride(), user("y")])),
            ("w2".to_string(), user("c")),
            ("t2".to_string(), txn(&[user("d"), user("e")])),
        ];
        let results = s.commit_batch(1, &batch).expect("answered");
        let seen: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(Commit::New(e, _)) => format!("new {}", e.seq),
                Err(e @ DbError::Statement { index, .. }) => match e.cause() {
                    DbError::Full(_) => format!("full at {index}"),
                    other => format!("{other}"),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(seen, vec!["new 2", "full at 1", "new 3", "new 4"]);
        assert_eq!(s.seq(), 4);
        assert_eq!(count(&s, "users"), 5, "a, b, c, d and e; neither x nor y");
        assert_eq!(count(&s, "rides"), 1, "only the seeded ride");
    }
}
