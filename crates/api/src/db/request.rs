//! The typed request model shared by the orchestrator and the workers.
//!
//! JSON bodies of `db/read` and `db/write` deserialize straight into [`ReadRequest`]
//! and [`WriteRequest`]; deserializing *is* validating: every table and column name
//! is checked against [`super::schema`], every value against its column's type, so
//! a value of these types is always safe to turn into SQL (values are bound as
//! parameters, never spliced). The same types travel over AMQP to the workers,
//! which deserialize, and so validate, them again.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::schema::{self, ColumnType, Table};

/// Why a request was refused; always the client's fault (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError(msg.into()))
}

/// The bounds on every request, so that whatever a client sends, a request
/// that validates can run (SQLite's own limits are far above these) and its
/// error messages stay short. Documented in docs/api.md.
pub mod limits {
    /// Entries of a read's `columns` (repeats count).
    pub const MAX_COLUMNS: usize = 32;
    /// Entries of a read's `order_by`.
    pub const MAX_ORDER_BY: usize = 16;
    /// Rows of one insert.
    pub const MAX_INSERT_ROWS: usize = 10_000;
    /// Bytes of one string value.
    pub const MAX_TEXT: usize = 4096;
    /// Characters of a name (table, column, operator) quoted back in an error.
    pub const MAX_NAME_SHOWN: usize = 64;
    /// Characters of an error message.
    pub const MAX_ERROR: usize = 512;
    /// Rows a read returns when it gives no `limit`.
    pub const DEFAULT_LIMIT: u64 = 1000;
    /// The largest `limit` of a read; page with `offset` for more.
    pub const MAX_LIMIT: u64 = 10_000;
    /// The largest `offset` (SQLite takes a signed 64-bit integer).
    pub const MAX_OFFSET: u64 = i64::MAX as u64;
    /// Writes of one `transaction`.
    pub const MAX_TRANSACTION: usize = 100;
}
use limits::*;

/// `name` quoted for an error message, cut at [`MAX_NAME_SHOWN`] characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_SHOWN) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}

/// `msg` cut at [`MAX_ERROR`] characters.
fn capped(msg: String) -> String {
    match msg.char_indices().nth(MAX_ERROR) {
        Some((cut, _)) => format!("{}…", &msg[..cut]),
        None => msg,
    }
}

/// A value bound to a column: only what the schema's columns can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Integer(i64),
    Text(String),
}

impl Scalar {
    fn for_column(table: &Table, column: &str, value: &Json) -> Result<Scalar, RequestError> {
        let Some(col) = table.column(column) else {
            return bad(format!(
                "unknown column {} in table {:?}",
                shown(column),
                table.name
            ));
        };
        match (col.ty, value) {
            (ColumnType::Text, Json::String(s)) if s.len() > MAX_TEXT => bad(format!(
                "value of column {column:?} is {} bytes long; at most {MAX_TEXT} are accepted",
                s.len()
            )),
            (ColumnType::Text, Json::String(s)) => Ok(Scalar::Text(s.clone())),
            (ColumnType::Integer, Json::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Scalar::Integer(i)),
                None => bad(format!("column {column:?} takes a 64-bit integer, got {n}")),
            },
            (ColumnType::Text, other) => bad(format!(
                "column {column:?} takes a string, got {}",
                kind(other)
            )),
            (ColumnType::Integer, other) => bad(format!(
                "column {column:?} takes an integer, got {}",
                kind(other)
            )),
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Scalar::Integer(i) => Json::from(*i),
            Scalar::Text(s) => Json::from(s.clone()),
        }
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Comparison operators allowed in a `where` clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    fn parse(s: &str) -> Result<Op, RequestError> {
        Ok(match s {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            other => {
                return bad(format!(
                    "unknown operator {}: use one of = != < <= > >=",
                    shown(other)
                ))
            }
        })
    }

    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Ne => "!=",
            other => other.sql(),
        }
    }
}

/// One `column op value` term; a filter is the AND of its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: &'static str,
    pub op: Op,
    pub value: Scalar,
}

/// A validated `where` clause: `{"col": value}` means equality,
/// `{"col": {">": value, "<=": value}}` compares; all terms are ANDed. A JSON
/// object names each column once and each operator once per column, so a
/// filter has at most one term per column and operator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter(pub Vec<Condition>);

impl Filter {
    fn parse(table: &Table, raw: &Json) -> Result<Filter, RequestError> {
        let Json::Object(map) = raw else {
            return bad(format!(
                "\"where\" must be an object such as {{\"username\": \"alice\"}}, got {} (raw SQL is not accepted)",
                kind(raw)
            ));
        };
        let mut conditions = Vec::new();
        for (column, value) in map {
            let name = column_name(table, column)?;
            match value {
                Json::Object(ops) => {
                    if ops.is_empty() {
                        return bad(format!("no operator given for column {column:?}"));
                    }
                    for (op, v) in ops {
                        conditions.push(Condition {
                            column: name,
                            op: Op::parse(op)?,
                            value: Scalar::for_column(table, column, v)?,
                        });
                    }
                }
                v => conditions.push(Condition {
                    column: name,
                    op: Op::Eq,
                    value: Scalar::for_column(table, column, v)?,
                }),
            }
        }
        Ok(Filter(conditions))
    }

    fn to_json(&self) -> Json {
        let mut map = serde_json::Map::new();
        for c in &self.0 {
            let entry = map
                .entry(c.column.to_string())
                .or_insert_with(|| Json::Object(Default::default()));
            if let Json::Object(ops) = entry {
                ops.insert(c.op.symbol().to_string(), c.value.to_json());
            }
        }
        Json::Object(map)
    }
}

fn table_named(name: &str) -> Result<&'static Table, RequestError> {
    schema::table(name).ok_or_else(|| {
        RequestError(format!(
            "unknown table {}: use one of users, rides, ride_members",
            shown(name)
        ))
    })
}

fn column_name(table: &Table, name: &str) -> Result<&'static str, RequestError> {
    table.column(name).map(|c| c.name).ok_or_else(|| {
        RequestError(format!(
            "unknown column {} in table {:?}",
            shown(name),
            table.name
        ))
    })
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Any slave may answer (the spec's eventual consistency).
    #[default]
    Eventual,
    /// The master answers.
    Strong,
}

/// `order_by` entry: `{"column": "timestamp", "desc": false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub column: String,
    #[serde(default)]
    pub desc: bool,
}

/// The JSON shape of `POST /api/v1/db/read`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRead {
    table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<String>>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    filter: Option<Json>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    count: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    order_by: Vec<OrderBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default)]
    consistency: Consistency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_seq: Option<u64>,
}

/// A validated read: `SELECT columns FROM table WHERE filter ORDER BY … LIMIT …
/// OFFSET …`, or `SELECT COUNT(*)` when `count` is set (no limit or offset then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: &'static str,
    /// Empty means every column.
    pub columns: Vec<&'static str>,
    pub filter: Filter,
    pub count: bool,
    pub order_by: Vec<(&'static str, bool)>,
    /// Rows at most: the client's `limit`, or [`DEFAULT_LIMIT`]; never over [`MAX_LIMIT`].
    pub limit: u64,
    /// Rows skipped first (paging).
    pub offset: u64,
    pub consistency: Consistency,
    /// Read-your-writes: answer only once the replica has applied this sequence number.
    pub min_seq: Option<u64>,
}

impl TryFrom<RawRead> for ReadRequest {
    type Error = RequestError;

    fn try_from(raw: RawRead) -> Result<Self, RequestError> {
        let table = table_named(&raw.table)?;
        let columns = match &raw.columns {
            None => Vec::new(),
            Some(cols) if cols.is_empty() => return bad("\"columns\" must not be empty"),
            Some(cols) if cols.len() > MAX_COLUMNS => {
                return bad(format!(
                    "\"columns\" has {} entries; at most {MAX_COLUMNS} are accepted",
                    cols.len()
                ))
            }
            Some(cols) => cols
                .iter()
                .map(|c| column_name(table, c))
                .collect::<Result<_, _>>()?,
        };
        let filter = match &raw.filter {
            None => Filter::default(),
            Some(f) => Filter::parse(table, f)?,
        };
        if raw.order_by.len() > MAX_ORDER_BY {
            return bad(format!(
                "\"order_by\" has {} entries; at most {MAX_ORDER_BY} are accepted",
                raw.order_by.len()
            ));
        }
        let order_by = raw
            .order_by
            .iter()
            .map(|o| Ok((column_name(table, &o.column)?, o.desc)))
            .collect::<Result<_, RequestError>>()?;
        let limit = raw.limit.unwrap_or(DEFAULT_LIMIT);
        if limit > MAX_LIMIT {
            return bad(format!(
                "\"limit\" is at most {MAX_LIMIT}; page through more rows with \"offset\""
            ));
        }
        let offset = raw.offset.unwrap_or(0);
        if offset > MAX_OFFSET {
            return bad(format!("\"offset\" is at most {MAX_OFFSET}"));
        }
        if raw.count && offset > 0 {
            return bad("\"offset\" does not apply to a count");
        }
        Ok(ReadRequest {
            table: table.name,
            columns,
            filter,
            count: raw.count,
            order_by,
            limit,
            offset,
            consistency: raw.consistency,
            min_seq: raw.min_seq,
        })
    }
}

impl From<ReadRequest> for RawRead {
    fn from(r: ReadRequest) -> RawRead {
        RawRead {
            table: r.table.to_string(),
            columns: (!r.columns.is_empty())
                .then(|| r.columns.iter().map(|c| c.to_string()).collect()),
            filter: (!r.filter.0.is_empty()).then(|| r.filter.to_json()),
            count: r.count,
            order_by: r
                .order_by
                .iter()
                .map(|(c, desc)| OrderBy {
                    column: c.to_string(),
                    desc: *desc,
                })
                .collect(),
            limit: Some(r.limit),
            offset: (r.offset > 0).then_some(r.offset),
            consistency: r.consistency,
            min_seq: r.min_seq,
        }
    }
}

/// `update` body: `{"set": {...}, "where": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    set: Json,
    #[serde(rename = "where")]
    filter: Json,
}

/// The JSON shape of `POST /api/v1/db/write`: exactly one of the five forms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    insert: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<RawUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clear: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transaction: Option<Statements>,
}

/// The writes of a `transaction`: as read (JSON; `WriteRequest`'s `TryFrom`
/// validates each as a write body of its own, so an error names its index),
/// or as validated (to serialize).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Statements {
    Read(Vec<Json>),
    Valid(Vec<WriteRequest>),
}

impl<'de> Deserialize<'de> for Statements {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Json>::deserialize(d).map(Statements::Read)
    }
}

/// A transaction of `statements`: 1 to [`MAX_TRANSACTION`] writes, none of
/// them a transaction.
fn transaction(statements: Statements) -> Result<WriteRequest, RequestError> {
    let items: Vec<Result<WriteRequest, Json>> = match statements {
        Statements::Read(items) => items.into_iter().map(Err).collect(),
        Statements::Valid(writes) => writes.into_iter().map(Ok).collect(),
    };
    if items.is_empty() {
        return bad("\"transaction\" has no writes");
    }
    if items.len() > MAX_TRANSACTION {
        return bad(format!(
            "\"transaction\" has {} writes; it takes at most {MAX_TRANSACTION} writes",
            items.len()
        ));
    }
    let mut writes = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let at = |e: String| RequestError(format!("statement {index} of the transaction: {e}"));
        let write = match item {
            Ok(write) => write,
            Err(json) => WriteRequest::deserialize(json).map_err(|e| at(e.to_string()))?,
        };
        if let WriteRequest::Transaction(_) = write {
            return Err(at("transactions do not nest".into()));
        }
        writes.push(write);
    }
    Ok(WriteRequest::Transaction(writes))
}

/// A validated write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRequest {
    /// One row (`"insert": {...}`) or several (`"insert": [{...}, ...]`), in one transaction.
    Insert {
        table: &'static str,
        rows: Vec<BTreeMap<&'static str, Scalar>>,
    },
    /// Deletes the rows matching a non-empty filter (use `Clear` to empty a table).
    Delete { table: &'static str, filter: Filter },
    Update {
        table: &'static str,
        set: BTreeMap<&'static str, Scalar>,
        filter: Filter,
    },
    /// Empties one table, or every table when `table` is `None`.
    Clear { table: Option<&'static str> },
    /// 1 to [`MAX_TRANSACTION`] writes (none of them a transaction), applied
    /// all or none, in order, as one write with one sequence number.
    Transaction(Vec<WriteRequest>),
}

fn values(
    table: &Table,
    raw: &Json,
    what: &str,
) -> Result<BTreeMap<&'static str, Scalar>, RequestError> {
    let Json::Object(map) = raw else {
        return bad(format!(
            "\"{what}\" must be an object of column values, got {}",
            kind(raw)
        ));
    };
    if map.is_empty() {
        return bad(format!("\"{what}\" names no column"));
    }
    map.iter()
        .map(|(c, v)| {
            let name = column_name(table, c)?;
            if table.column(name).is_some_and(|col| col.assigned) {
                return bad(format!(
                    "column {name:?} of {:?} is assigned by the database and cannot be written",
                    table.name
                ));
            }
            Ok((name, Scalar::for_column(table, c, v)?))
        })
        .collect()
}

const EXACTLY_ONE: &str =
    "a write takes exactly one of \"insert\", \"delete\", \"update\", \"clear\", \"transaction\"";

impl TryFrom<RawWrite> for WriteRequest {
    type Error = RequestError;

    fn try_from(raw: RawWrite) -> Result<Self, RequestError> {
        let forms = [
            raw.insert.is_some(),
            raw.delete.is_some(),
            raw.update.is_some(),
            raw.clear.is_some(),
            raw.transaction.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return bad(EXACTLY_ONE);
        }
        if let Some(statements) = raw.transaction {
            if raw.table.is_some() {
                return bad("a transaction names its tables in its writes, not in \"table\"");
            }
            return transaction(statements);
        }
        let table = raw.table.as_deref().map(table_named).transpose()?;
        if let Some(clear) = raw.clear {
            if !clear {
                return bad("\"clear\" must be true");
            }
            return Ok(WriteRequest::Clear {
                table: table.map(|t| t.name),
            });
        }
        let Some(table) = table else {
            return bad("missing field \"table\"");
        };
        if let Some(insert) = &raw.insert {
            let raw_rows: Vec<&Json> = match insert {
                Json::Array(items) if items.is_empty() => return bad("\"insert\" has no rows"),
                Json::Array(items) if items.len() > MAX_INSERT_ROWS => {
                    return bad(format!("\"insert\" takes at most {MAX_INSERT_ROWS} rows"))
                }
                Json::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            let mut rows = Vec::with_capacity(raw_rows.len());
            for raw_row in raw_rows {
                let values = values(table, raw_row, "insert")?;
                if let Some(missing) = table
                    .columns
                    .iter()
                    .find(|c| c.required && !values.contains_key(c.name))
                {
                    return bad(format!(
                        "insert into {:?} needs column {:?}",
                        table.name, missing.name
                    ));
                }
                rows.push(values);
            }
            return Ok(WriteRequest::Insert {
                table: table.name,
                rows,
            });
        }
        if let Some(delete) = &raw.delete {
            let filter = Filter::parse(table, delete)?;
            if filter.0.is_empty() {
                return bad("\"delete\" needs a condition; use {\"clear\": true} to empty a table");
            }
            return Ok(WriteRequest::Delete {
                table: table.name,
                filter,
            });
        }
        match &raw.update {
            Some(update) => {
                let set = values(table, &update.set, "set")?;
                let filter = Filter::parse(table, &update.filter)?;
                if filter.0.is_empty() {
                    return bad("\"update\" needs a condition in \"where\"");
                }
                Ok(WriteRequest::Update {
                    table: table.name,
                    set,
                    filter,
                })
            }
            None => bad(EXACTLY_ONE),
        }
    }
}

fn values_json(values: &BTreeMap<&'static str, Scalar>) -> Json {
    Json::Object(
        values
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_json()))
            .collect(),
    )
}

impl From<WriteRequest> for RawWrite {
    fn from(w: WriteRequest) -> RawWrite {
        let mut raw = RawWrite {
            table: None,
            insert: None,
            delete: None,
            update: None,
            clear: None,
            transaction: None,
        };
        match w {
            WriteRequest::Insert { table, rows } => {
                raw.table = Some(table.to_string());
                raw.insert = Some(match rows.as_slice() {
                    [one] => values_json(one),
                    many => Json::Array(many.iter().map(values_json).collect()),
                });
            }
            WriteRequest::Delete { table, filter } => {
                raw.table = Some(table.to_string());
                raw.delete = Some(filter.to_json());
            }
            WriteRequest::Update { table, set, filter } => {
                raw.table = Some(table.to_string());
                raw.update = Some(RawUpdate {
                    set: values_json(&set),
                    filter: filter.to_json(),
                });
            }
            WriteRequest::Clear { table } => {
                raw.table = table.map(str::to_string);
                raw.clear = Some(true);
            }
            WriteRequest::Transaction(writes) => raw.transaction = Some(Statements::Valid(writes)),
        }
        raw
    }
}

impl fmt::Display for WriteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteRequest::Insert { table, .. } => write!(f, "insert into {table}"),
            WriteRequest::Delete { table, .. } => write!(f, "delete from {table}"),
            WriteRequest::Update { table, .. } => write!(f, "update {table}"),
            WriteRequest::Clear { table: Some(t) } => write!(f, "clear {t}"),
            WriteRequest::Clear { table: None } => write!(f, "clear all"),
            WriteRequest::Transaction(writes) => {
                write!(f, "transaction of {} writes", writes.len())
            }
        }
    }
}

/// Serde for a validated type goes through its raw JSON shape: deserializing
/// validates, serializing gives back the documented wire form.
macro_rules! serde_via_raw {
    ($typed:ty, $raw:ty) => {
        impl<'de> Deserialize<'de> for $typed {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$typed>::try_from(<$raw>::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $typed {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$raw>::from(self.clone()).serialize(s)
            }
        }
    };
}
serde_via_raw!(ReadRequest, RawRead);
serde_via_raw!(WriteRequest, RawWrite);

/// Parses a request body; the error text is what the client sees with a 400
/// (cut at [`MAX_ERROR`] characters: serde quotes unknown fields and strings).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    serde_json::from_slice(body).map_err(|e| RequestError(capped(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Json) -> Result<ReadRequest, RequestError> {
        parse(v.to_string().as_bytes())
    }
    fn write(v: Json) -> Result<WriteRequest, RequestError> {
        parse(v.to_string().as_bytes())
    }
    fn err_text<T: fmt::Debug>(r: Result<T, RequestError>) -> String {
        r.expect_err("should be refused").0
    }

    #[test]
    fn read_with_equality_and_comparison() {
        let r = read(json!({
            "table": "rides",
            "columns": ["ride_id", "created_by"],
            "where": {"source": 3, "timestamp": {">": "2030-01-01 00:00:00"}},
            "order_by": [{"column": "timestamp"}],
            "limit": 5
        }))
        .expect("valid");
        assert_eq!(r.table, "rides");
        assert_eq!(r.columns, vec!["ride_id", "created_by"]);
        assert_eq!(r.filter.0.len(), 2);
        assert!(r.filter.0.contains(&Condition {
            column: "timestamp",
            op: Op::Gt,
            value: Scalar::Text("2030-01-01 00:00:00".into())
        }));
        assert_eq!(r.order_by, vec![("timestamp", false)]);
        assert_eq!(r.consistency, Consistency::Eventual);
    }

    #[test]
    fn read_round_trips_through_its_wire_form() {
        let r = read(json!({"table": "users", "where": {"username": {"!=": "x", ">=": "a"}}, "count": true, "min_seq": 7, "consistency": "strong"}))
            .expect("valid");
        let back: ReadRequest =
            parse(serde_json::to_vec(&r).expect("ser").as_slice()).expect("valid");
        assert_eq!(r, back);
    }

    #[test]
    fn paged_reads_round_trip_through_their_wire_form() {
        let r = read(json!({"table": "rides", "order_by": [{"column": "ride_id"}], "limit": 10, "offset": 30}))
            .expect("valid");
        let back: ReadRequest =
            parse(serde_json::to_vec(&r).expect("ser").as_slice()).expect("valid");
        assert_eq!(r, back);
    }

    #[test]
    fn raw_sql_where_is_refused() {
        let e = err_text(read(
            json!({"table": "users", "where": "username='a' OR 1=1"}),
        ));
        assert!(e.contains("raw SQL is not accepted"), "{e}");
    }

    #[test]
    fn injection_in_names_is_refused() {
        assert!(
            err_text(read(json!({"table": "users; DROP TABLE users"}))).contains("unknown table")
        );
        assert!(err_text(read(
            json!({"table": "users", "columns": ["username FROM users --"]})
        ))
        .contains("unknown column"));
        assert!(err_text(read(
            json!({"table": "users", "where": {"1=1 OR username": "a"}})
        ))
        .contains("unknown column"));
        assert!(err_text(read(
            json!({"table": "users", "order_by": [{"column": "password; --"}]})
        ))
        .contains("unknown column"));
        assert!(err_text(read(json!({"table": "_meta"}))).contains("unknown table"));
    }

    #[test]
    fn injection_in_values_is_kept_as_a_value() {
        let w = write(json!({"table": "users", "insert": {"username": "a'); DROP TABLE users; --", "password": "x"}}))
            .expect("values are data");
        let WriteRequest::Insert { rows, .. } = w else {
            panic!("insert expected")
        };
        assert_eq!(
            rows[0]["username"],
            Scalar::Text("a'); DROP TABLE users; --".into())
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(
            err_text(read(json!({"table": "rides", "where": {"source": "3"}})))
                .contains("takes an integer")
        );
        assert!(
            err_text(read(json!({"table": "users", "where": {"username": 3}})))
                .contains("takes a string")
        );
        assert!(
            err_text(read(json!({"table": "rides", "where": {"source": 1.5}})))
                .contains("64-bit integer")
        );
        assert!(err_text(read(
            json!({"table": "rides", "where": {"source": 18446744073709551616u128 as f64}})
        ))
        .contains("64-bit integer"));
        assert!(
            err_text(read(json!({"table": "users", "where": {"username": null}}))).contains("null")
        );
        assert!(err_text(read(
            json!({"table": "users", "where": {"username": {"LIKE": "a%"}}})
        ))
        .contains("unknown operator"));
    }

    #[test]
    fn missing_and_unknown_fields_are_refused() {
        assert!(err_text(read(json!({"columns": ["username"]}))).contains("missing field"));
        assert!(
            err_text(read(json!({"table": "users", "sql": "SELECT 1"}))).contains("unknown field")
        );
        assert!(
            err_text(read(json!({"table": "users", "columns": []}))).contains("must not be empty")
        );
        assert!(err_text(write(json!({"insert": {"username": "a"}})))
            .contains("missing field \"table\""));
        assert!(err_text(write(
            json!({"table": "users", "insert": {"username": "a"}})
        ))
        .contains("needs column \"password\""));
        assert!(err_text(write(json!({"table": "users"}))).contains("exactly one"));
        assert!(err_text(write(json!({"table": "users", "insert": {"username": "a", "password": "b"}, "delete": {"username": "a"}})))
            .contains("exactly one"));
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(parse::<ReadRequest>(b"{not json").is_err());
        assert!(parse::<WriteRequest>(b"").is_err());
        assert!(parse::<WriteRequest>(b"[1,2]").is_err());
    }

    #[test]
    fn multi_row_inserts_check_every_row() {
        let e = err_text(write(
            json!({"table": "users", "insert": [{"username": "a", "password": "b"}, {"username": "c"}]}),
        ));
        assert!(e.contains("needs column \"password\""), "{e}");
        assert!(err_text(write(json!({"table": "users", "insert": []}))).contains("no rows"));
        let many: Vec<Json> = (0..=MAX_INSERT_ROWS)
            .map(|i| json!({"username": i.to_string(), "password": "p"}))
            .collect();
        assert!(err_text(write(json!({"table": "users", "insert": many}))).contains("at most"));
    }

    #[test]
    fn delete_and_update_need_a_condition() {
        assert!(
            err_text(write(json!({"table": "users", "delete": {}}))).contains("needs a condition")
        );
        assert!(err_text(write(
            json!({"table": "users", "update": {"set": {"password": "p"}, "where": {}}})
        ))
        .contains("needs a condition"));
        assert!(err_text(write(
            json!({"table": "users", "update": {"set": {}, "where": {"username": "a"}}})
        ))
        .contains("names no column"));
    }

    #[test]
    fn assigned_columns_cannot_be_written() {
        let e = err_text(write(
            json!({"table": "rides", "insert": {"ride_id": i64::MAX, "created_by": "a", "timestamp": "2030-01-01 00:00:00", "source": 1, "destination": 2}}),
        ));
        assert!(
            e.contains("\"ride_id\" of \"rides\" is assigned by the database"),
            "{e}"
        );
        let e = err_text(write(
            json!({"table": "rides", "update": {"set": {"ride_id": 5}, "where": {"ride_id": 1}}}),
        ));
        assert!(e.contains("assigned by the database"), "{e}");
        // Filtering on it, and naming a ride in ride_members, are fine.
        write(json!({"table": "rides", "delete": {"ride_id": 1}})).expect("valid");
        write(json!({"table": "ride_members", "insert": {"ride_id": 1, "username": "a"}}))
            .expect("valid");
    }

    #[test]
    fn lists_and_values_are_bounded() {
        let many = |n: usize| vec![json!("username"); n];
        read(json!({"table": "users", "columns": many(MAX_COLUMNS)})).expect("at the limit");
        assert!(
            err_text(read(json!({"table": "users", "columns": many(3000)}))).contains("at most 32")
        );
        let order = vec![json!({"column": "username"}); MAX_ORDER_BY + 1];
        assert!(err_text(read(json!({"table": "users", "order_by": order}))).contains("at most 16"));
        let long = "x".repeat(MAX_TEXT + 1);
        assert!(err_text(write(
            json!({"table": "users", "insert": {"username": long, "password": "p"}})
        ))
        .contains("at most 4096"));
        assert!(
            err_text(read(json!({"table": "users", "where": {"username": long}})))
                .contains("at most 4096")
        );
        write(json!({"table": "users", "insert": {"username": "x".repeat(MAX_TEXT), "password": "p"}}))
            .expect("at the limit");
    }

    #[test]
    fn limit_has_a_default_and_a_maximum_and_offset_pages() {
        let r = read(json!({"table": "users"})).expect("valid");
        assert_eq!((r.limit, r.offset), (DEFAULT_LIMIT, 0));
        let r = read(json!({"table": "users", "limit": MAX_LIMIT, "offset": 20})).expect("valid");
        assert_eq!((r.limit, r.offset), (MAX_LIMIT, 20));
        assert!(
            err_text(read(json!({"table": "users", "limit": MAX_LIMIT + 1})))
                .contains("page through more rows with \"offset\"")
        );
        assert!(
            err_text(read(json!({"table": "users", "offset": u64::MAX})))
                .contains("\"offset\" is at most")
        );
        assert!(
            err_text(read(json!({"table": "users", "count": true, "offset": 1})))
                .contains("does not apply to a count")
        );
        assert!(err_text(read(json!({"table": "users", "limit": -1}))).contains("invalid value"));
    }

    #[test]
    fn errors_do_not_echo_huge_input() {
        let huge = "n".repeat(100_000);
        for e in [
            err_text(read(json!({"table": huge}))),
            err_text(read(json!({"table": "users", "columns": [huge]}))),
            err_text(read(
                json!({"table": "users", "where": {"username": {huge.as_str(): "a"}}}),
            )),
            err_text(read(json!({"table": "users", huge.as_str(): 1}))),
            err_text(read(json!({"table": "users", "limit": huge}))),
        ] {
            assert!(e.len() < 700, "{} bytes: {}", e.len(), &e[..200]);
        }
    }

    #[test]
    fn every_write_form_round_trips() {
        for body in [
            json!({"table": "users", "insert": {"username": "a", "password": "b"}}),
            json!({"table": "users", "insert": [{"username": "a", "password": "b"}, {"username": "c", "password": "d"}]}),
            json!({"table": "rides", "delete": {"ride_id": 3}}),
            json!({"table": "users", "update": {"set": {"password": "p"}, "where": {"username": {"=": "a"}}}}),
            json!({"clear": true}),
            json!({"table": "rides", "clear": true}),
        ] {
            let w = write(body.clone()).expect("valid");
            let back: WriteRequest =
                parse(serde_json::to_vec(&w).expect("ser").as_slice()).expect("valid");
            assert_eq!(w, back, "{body}");
        }
        assert!(err_text(write(json!({"clear": false}))).contains("must be true"));
    }

    fn users_insert(name: &str) -> Json {
        json!({"table": "users", "insert": {"username": name, "password": "p"}})
    }

    #[test]
    fn a_transaction_validates_each_write_and_round_trips() {
        let body = json!({"transaction": [
            users_insert("a"),
            {"table": "rides", "delete": {"created_by": "a"}},
            {"table": "users", "update": {"set": {"password": "q"}, "where": {"username": "a"}}},
            {"table": "ride_members", "clear": true},
        ]});
        let w = write(body.clone()).expect("valid");
        let WriteRequest::Transaction(writes) = &w else {
            panic!("a transaction expected: {w:?}")
        };
        assert_eq!(writes.len(), 4);
        assert!(matches!(
            writes[1],
            WriteRequest::Delete { table: "rides", .. }
        ));
        assert_eq!(w.to_string(), "transaction of 4 writes");
        let back: WriteRequest =
            parse(serde_json::to_vec(&w).expect("ser").as_slice()).expect("valid");
        assert_eq!(w, back);
    }

    #[test]
    fn a_transactions_errors_name_the_statement() {
        let e = err_text(write(json!({"transaction": [
            users_insert("a"),
            {"table": "users", "insert": {"username": "b"}},
        ]})));
        assert!(
            e.starts_with(
                "statement 1 of the transaction: insert into \"users\" needs column \"password\""
            ),
            "{e}"
        );
        let e = err_text(write(json!({"transaction": [
            users_insert("a"), users_insert("b"),
            {"table": "users", "delete": {"username": "a"}, "sql": "DROP TABLE users"},
        ]})));
        assert!(
            e.starts_with("statement 2 of the transaction: unknown field `sql`"),
            "{e}"
        );
        let e = err_text(write(json!({"transaction": [users_insert("a"), 7]})));
        assert!(
            e.starts_with("statement 1 of the transaction: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn transactions_are_bounded_flat_and_not_empty() {
        let at_limit: Vec<Json> = (0..MAX_TRANSACTION)
            .map(|i| users_insert(&i.to_string()))
            .collect();
        let Ok(WriteRequest::Transaction(writes)) = write(json!({"transaction": at_limit})) else {
            panic!("a transaction at the limit is valid")
        };
        assert_eq!(writes.len(), MAX_TRANSACTION);
        let over: Vec<Json> = (0..=MAX_TRANSACTION)
            .map(|i| users_insert(&i.to_string()))
            .collect();
        let e = err_text(write(json!({"transaction": over})));
        assert_eq!(
            e,
            "\"transaction\" has 101 writes; it takes at most 100 writes"
        );
        let e = err_text(write(json!({"transaction": []})));
        assert_eq!(e, "\"transaction\" has no writes");
        let e = err_text(write(json!({"transaction": [
            users_insert("a"),
            {"transaction": [users_insert("b")]},
        ]})));
        assert_eq!(
            e,
            "statement 1 of the transaction: transactions do not nest"
        );
        let e = err_text(write(json!({"transaction": [{"transaction": []}]})));
        assert!(e.contains("statement 0 of the transaction"), "{e}");
        assert!(err_text(write(json!({"transaction": {"table": "users"}})))
            .contains("expected a sequence"));
        assert!(err_text(write(
            json!({"transaction": [users_insert("a")], "table": "users"})
        ))
        .contains("not in \"table\""));
        assert!(err_text(write(
            json!({"transaction": [users_insert("a")], "clear": true})
        ))
        .contains("exactly one"));
    }
}
