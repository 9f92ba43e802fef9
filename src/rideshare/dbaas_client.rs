//! The typed HTTP client the services use for all their data: `POST
//! {dbaas}/api/v1/db/read` and `POST {dbaas}/api/v1/db/write`, each with a
//! timeout. It remembers the highest write sequence number it has seen and
//! sends it as `min_seq` on every read, so a service always reads its own
//! writes (create-then-list is deterministic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::error::ApiError;

/// Why a DBaaS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// 409: a key or reference constraint was violated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Unreachable, timed out, or answered 503/504: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other answer: a bug on one side or the other.
    #[error("database refused the request ({status}): {message}")]
    Failed { status: u16, message: String },
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            DbError::Conflict(_) | DbError::Failed { .. } => ApiError::internal(e.to_string()),
        }
    }
}

/// A row as the DBaaS returns it.
pub type Row = Map<String, Json>;

/// `order_by` entry of a read.
#[derive(Debug, Clone, Serialize)]
pub struct OrderBy {
    pub column: &'static str,
    pub desc: bool,
}

/// A `db/read` request body; build with [`Read::table`] and the setters.
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    table: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    columns: Vec<&'static str>,
    #[serde(rename = "where", skip_serializing_if = "Map::is_empty")]
    filter: Map<String, Json>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    order_by: Vec<OrderBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consistency: Option<&'static str>,
}

impl Read {
    pub fn table(table: &'static str) -> Read {
        Read {
            table,
            columns: Vec::new(),
            filter: Map::new(),
            order_by: Vec::new(),
            count: None,
            offset: None,
            min_seq: None,
            consistency: None,
        }
    }
    pub fn columns(mut self, columns: &[&'static str]) -> Read {
        self.columns = columns.to_vec();
        self
    }
    /// Adds `column = value` (or `column <op> value` when `value` is an
    /// operator object such as `{">": v}`) to the conjunction.
    pub fn filter(mut self, column: &str, value: Json) -> Read {
        self.filter.insert(column.to_string(), value);
        self
    }
    pub fn order_by(mut self, column: &'static str) -> Read {
        self.order_by.push(OrderBy {
            column,
            desc: false,
        });
        self
    }
    fn counting(mut self) -> Read {
        self.count = Some(true);
        self
    }
}

/// What a write reports.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteOutcome {
    pub seq: u64,
    pub rows_affected: u64,
    #[serde(default)]
    pub last_insert_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ReadOutcome {
    rows: Vec<Row>,
    /// More rows follow this page (the DBaaS returns at most its default limit).
    #[serde(default)]
    more: bool,
}

/// The client; cheap to clone (clones share the connection pool and the seq).
#[derive(Clone)]
pub struct DbaasClient {
    http: reqwest::Client,
    base: String,
    seq: Arc<AtomicU64>,
}

/// An HTTP client with a total timeout per request (and a shorter connect timeout).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .build()
}

impl DbaasClient {
    /// `base` is the orchestrator's URL, e.g. `http://127.0.0.1:8000`.
    pub fn new(http: reqwest::Client, base: &str) -> DbaasClient {
        DbaasClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The highest sequence number this client's writes have produced.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// All rows matching `q`, page by page (the DBaaS answers at most a page
    /// per read and says when more follow; give `q` an order for stable pages).
    pub async fn read(&self, mut q: Read) -> Result<Vec<Row>, DbError> {
        let mut rows = Vec::new();
        loop {
            let page = self.read_page(q.clone()).await?;
            rows.extend(page.rows);
            if !page.more {
                return Ok(rows);
            }
            q.offset = Some(rows.len() as u64);
        }
    }

    /// One page of rows matching `q`, read at or after this client's last
    /// write. If the replica cannot reach that point (503: no slave, or a
    /// DBaaS restarted with fresh data), the read is retried once on the master.
    async fn read_page(&self, mut q: Read) -> Result<ReadOutcome, DbError> {
        let seq = self.seq();
        if seq > 0 {
            q.min_seq = Some(seq);
        }
        let first = self.post("read", &q).await;
        let body = match first {
            Err(DbError::Unavailable(why)) => {
                tracing::warn!(%why, "read failed; retrying once on the master");
                q.min_seq = None;
                q.consistency = Some("strong");
                self.post("read", &q).await?
            }
            other => other?,
        };
        serde_json::from_value(body).map_err(unexpected)
    }

    /// The number of rows matching `q`.
    pub async fn count(&self, q: Read) -> Result<u64, DbError> {
        let rows = self.read(q.counting()).await?;
        rows.first()
            .and_then(|r| r.get("count"))
            .and_then(Json::as_u64)
            .ok_or_else(|| unexpected("count answer without a count"))
    }

    pub async fn insert(&self, table: &str, values: Json) -> Result<WriteOutcome, DbError> {
        self.write(json!({"table": table, "insert": values})).await
    }

    pub async fn delete(&self, table: &str, filter: Json) -> Result<WriteOutcome, DbError> {
        self.write(json!({"table": table, "delete": filter})).await
    }

    pub async fn clear(&self, table: &str) -> Result<WriteOutcome, DbError> {
        self.write(json!({"table": table, "clear": true})).await
    }

    async fn write(&self, body: Json) -> Result<WriteOutcome, DbError> {
        let answer = self.post("write", &body).await?;
        let out: WriteOutcome = serde_json::from_value(answer).map_err(unexpected)?;
        self.seq.fetch_max(out.seq, Ordering::SeqCst);
        Ok(out)
    }

    async fn post(&self, op: &str, body: &impl Serialize) -> Result<Json, DbError> {
        let url = format!("{}/api/v1/db/{op}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| DbError::Unavailable(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| DbError::Unavailable(format!("{url}: reading the answer: {e}")))?;
        if status.as_u16() == 200 {
            return serde_json::from_str(&text).map_err(unexpected);
        }
        let message = serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
            .unwrap_or(text);
        Err(match status.as_u16() {
            409 => DbError::Conflict(message),
            502..=504 => DbError::Unavailable(message),
            s => DbError::Failed { status: s, message },
        })
    }
}

fn unexpected(e: impl std::fmt::Display) -> DbError {
    DbError::Failed {
        status: 200,
        message: format!("unexpected answer: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    #[test]
    fn reads_serialize_to_the_dbaas_shape() {
        let q = Read::table("rides")
            .columns(&["ride_id"])
            .filter("source", json!(3))
            .filter("timestamp", json!({">": "2030-01-01 00:00:00"}))
            .order_by("timestamp")
            .counting();
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            json!({"table": "rides", "columns": ["ride_id"],
                   "where": {"source": 3, "timestamp": {">": "2030-01-01 00:00:00"}},
                   "order_by": [{"column": "timestamp", "desc": false}], "count": true})
        );
        assert_eq!(
            serde_json::to_value(Read::table("users")).unwrap(),
            json!({"table": "users"})
        );
    }

    #[tokio::test]
    async fn an_unreachable_dbaas_is_unavailable_not_a_panic() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let c = DbaasClient::new(
            http_client(Duration::from_secs(2)).unwrap(),
            &format!("http://127.0.0.1:{port}/"),
        );
        let e = c.read(Read::table("users")).await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable(_)), "{e}");
        let api: ApiError = e.into();
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            c.clear("users").await,
            Err(DbError::Unavailable(_))
        ));
        assert_eq!(c.seq(), 0);
    }
}
