//! The typed HTTP client the services use for all their data: `POST
//! {dbaas}/api/v1/db/read` and `POST {dbaas}/api/v1/db/write`, each with a
//! timeout. It remembers the highest write sequence number it has seen and
//! sends it as `min_seq` on every read, so a service always reads its own
//! writes (create-then-list is deterministic).
//!
//! A call that got no answer (the DBaaS unreachable, a timeout, 502/503/504)
//! is retried with capped exponential backoff and jitter, within a total
//! [`Retry::budget`]. Every logical write carries its own `Idempotency-Key`
//! (a fresh uuid), the same on each of its retries, so a write that was
//! applied but whose answer was lost is answered, not applied, again.
//!
//! Errors are told apart by the `kind` the DBaaS puts in its JSON error (and,
//! for a constraint, which rule: `"constraint": "foreign_key"`), never by the
//! database's message text; an answer without a kind (a proxy's 502, an older
//! DBaaS) is judged by its status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::error::ApiError;
pub use dbaas_api::db::{Constraint, ErrorKind};

/// Why a DBaaS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// A key or reference constraint was violated (kind `constraint`, a 409);
    /// `constraint` is the rule, when the DBaaS said which.
    #[error("conflict: {message}")]
    Conflict {
        constraint: Option<Constraint>,
        message: String,
    },
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
            DbError::Conflict { .. } | DbError::Failed { .. } => ApiError::internal(e.to_string()),
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

/// One write body of `db/write`; build with [`Write::insert`], [`Write::delete`],
/// [`Write::clear`], and send one with [`DbaasClient::write`] or several, all
/// or none, with [`DbaasClient::transaction`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Write(Json);

impl Write {
    /// One row (an object) or several (an array of objects).
    pub fn insert(table: &str, values: Json) -> Write {
        Write(json!({"table": table, "insert": values}))
    }
    /// The rows matching `filter` (a non-empty `where` object).
    pub fn delete(table: &str, filter: Json) -> Write {
        Write(json!({"table": table, "delete": filter}))
    }
    /// Every row of `table`.
    pub fn clear(table: &str) -> Write {
        Write(json!({"table": table, "clear": true}))
    }
}

/// What a write reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WriteOutcome {
    pub seq: u64,
    pub rows_affected: u64,
    #[serde(default)]
    pub last_insert_id: Option<i64>,
    /// A transaction's outcome per write, in order; empty otherwise.
    #[serde(default)]
    pub statements: Vec<StatementOutcome>,
}

/// What one write of a transaction did.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatementOutcome {
    pub rows_affected: u64,
    #[serde(default)]
    pub last_insert_id: Option<i64>,
}

/// How long and how often a call without an answer is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The pause after the first failed attempt; it doubles after each
    /// attempt, up to `max_delay`, and [`dbaas_api::backoff::jitter`] spreads it.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The most one attempt may take.
    pub attempt_timeout: Duration,
    /// The most all attempts of a call take together: no attempt runs past
    /// it. Zero tries once.
    pub budget: Duration,
}

impl Retry {
    /// Attempts of `attempt_timeout` each, retried for `budget` in all.
    pub fn new(attempt_timeout: Duration, budget: Duration) -> Retry {
        Retry {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            attempt_timeout,
            budget,
        }
    }
}

impl Default for Retry {
    /// 10 s per attempt, 15 s in all (the services' defaults).
    fn default() -> Retry {
        Retry::new(Duration::from_secs(10), Duration::from_secs(15))
    }
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
    retry: Retry,
    /// Sent as `Authorization: Bearer` with every call (a `data` token).
    token: Option<dbaas_api::config::Secret>,
}

/// An HTTP client with a total timeout per request (and a shorter connect timeout).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .build()
}

impl DbaasClient {
    /// `base` is the orchestrator's URL, e.g. `http://127.0.0.1:8000`; calls
    /// are retried as [`Retry::default`] says until [`DbaasClient::with_retry`].
    pub fn new(http: reqwest::Client, base: &str) -> DbaasClient {
        DbaasClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            seq: Arc::new(AtomicU64::new(0)),
            retry: Retry::default(),
            token: None,
        }
    }

    /// This client sending `token` (the DBaaS's `data` scope is enough) with every call.
    pub fn with_token(mut self, token: Option<dbaas_api::config::Secret>) -> DbaasClient {
        self.token = token;
        self
    }

    /// This client with another retry policy.
    pub fn with_retry(mut self, retry: Retry) -> DbaasClient {
        self.retry = retry;
        self
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
    /// DBaaS restarted with fresh data) or there is no answer, the read goes to
    /// the master instead, retried within the budget.
    async fn read_page(&self, mut q: Read) -> Result<ReadOutcome, DbError> {
        let seq = self.seq();
        if seq > 0 {
            q.min_seq = Some(seq);
        }
        let started = Instant::now();
        let first = self
            .post("read", &q, None, self.retry.attempt_timeout)
            .await;
        let body = match first {
            Err(DbError::Unavailable(why)) => {
                tracing::warn!(%why, "read failed; reading on the master");
                q.min_seq = None;
                q.consistency = Some("strong");
                self.post_retrying("read", &q, None, started).await?
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
        self.write(Write::insert(table, values)).await
    }

    pub async fn delete(&self, table: &str, filter: Json) -> Result<WriteOutcome, DbError> {
        self.write(Write::delete(table, filter)).await
    }

    pub async fn clear(&self, table: &str) -> Result<WriteOutcome, DbError> {
        self.write(Write::clear(table)).await
    }

    /// Applies `w` once, however often it has to be sent.
    pub async fn write(&self, w: Write) -> Result<WriteOutcome, DbError> {
        self.write_keyed(&w, &uuid::Uuid::new_v4().to_string())
            .await
    }

    /// Applies all of `writes` or none (one `transaction` write, one `seq`);
    /// the outcome lists each write's. A failure names the failing write's
    /// index (`statement i of the transaction ...`).
    pub async fn transaction(&self, writes: Vec<Write>) -> Result<WriteOutcome, DbError> {
        self.write(Write(json!({ "transaction": writes }))).await
    }

    /// Sends `w` under `key` until it is answered or the retry budget is
    /// spent. The DBaaS applies a key once, so sending it again is safe.
    pub async fn write_keyed(&self, w: &Write, key: &str) -> Result<WriteOutcome, DbError> {
        let answer = self
            .post_retrying("write", w, Some(key), Instant::now())
            .await?;
        let out: WriteOutcome = serde_json::from_value(answer).map_err(unexpected)?;
        self.seq.fetch_max(out.seq, Ordering::SeqCst);
        Ok(out)
    }

    /// Posts `body` until it is answered, retrying what got no answer
    /// ([`DbError::Unavailable`]) with capped, jittered exponential backoff
    /// while the budget counted from `started` lasts.
    async fn post_retrying(
        &self,
        op: &str,
        body: &impl Serialize,
        key: Option<&str>,
        started: Instant,
    ) -> Result<Json, DbError> {
        let mut delay = self.retry.first_delay;
        let mut attempts = 0u32;
        loop {
            let left = self.retry.budget.saturating_sub(started.elapsed());
            // The first attempt always runs; later ones only within the budget.
            let timeout = if attempts == 0 {
                self.retry.attempt_timeout
            } else {
                self.retry.attempt_timeout.min(left)
            };
            attempts += 1;
            let why = match self.post(op, body, key, timeout).await {
                Err(DbError::Unavailable(why)) => why,
                answered => return answered,
            };
            let pause = dbaas_api::backoff::jitter(delay);
            if started.elapsed() + pause >= self.retry.budget {
                return Err(DbError::Unavailable(format!(
                    "{why} (tried {attempts} times in {:?})",
                    started.elapsed()
                )));
            }
            tracing::warn!(%why, attempts, ?pause, op, "no answer from the DBaaS; trying again");
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(self.retry.max_delay);
        }
    }

    /// One attempt: an answer (the body of a 200, or the error the DBaaS
    /// gave), or [`DbError::Unavailable`] when there was none to trust.
    async fn post(
        &self,
        op: &str,
        body: &impl Serialize,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<Json, DbError> {
        let url = format!("{}/api/v1/db/{op}", self.base);
        let mut request = self.http.post(&url).json(body).timeout(timeout);
        if let Some(key) = key {
            request = request.header(dbaas_api::http::IDEMPOTENCY_KEY, key);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let resp = request
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
        Err(refusal(status.as_u16(), &text))
    }
}

/// The error a non-200 answer stands for: by the `kind` of its JSON error,
/// or, without one, by its status.
fn refusal(status: u16, text: &str) -> DbError {
    let body = serde_json::from_str::<Json>(text).unwrap_or(Json::Null);
    let message = body
        .get("error")
        .and_then(Json::as_str)
        .map_or_else(|| text.to_string(), str::to_string);
    // Unknown values (a newer DBaaS) count as absent.
    let field = |name: &str| body.get(name).cloned().unwrap_or(Json::Null);
    let kind = serde_json::from_value::<Option<ErrorKind>>(field("kind")).unwrap_or(None);
    let constraint =
        serde_json::from_value::<Option<Constraint>>(field("constraint")).unwrap_or(None);
    match (kind, status) {
        (Some(ErrorKind::Constraint), _) | (None, 409) => DbError::Conflict {
            constraint,
            message,
        },
        (Some(ErrorKind::Unavailable | ErrorKind::Timeout), _) | (None, 502..=504) => {
            DbError::Unavailable(message)
        }
        _ => DbError::Failed { status, message },
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
        )
        .with_retry(Retry::new(
            Duration::from_secs(2),
            Duration::from_millis(300),
        ));
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

    /// What the fake DBaaS saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        key: Option<String>,
        body: Json,
    }

    type Log = Arc<std::sync::Mutex<Vec<Seen>>>;

    /// The fake's answers, in order, and what it saw.
    struct Script {
        answers: Vec<(u16, Json)>,
        log: Log,
    }

    /// Records the request and gives the next answer of the script (the last
    /// one repeats). Status 0 is a reply lost on the way: the connection
    /// breaks before an answer arrives, as when a proxy or the network drops it.
    async fn scripted(
        req: actix_web::HttpRequest,
        body: actix_web::web::Bytes,
        script: actix_web::web::Data<Script>,
    ) -> actix_web::HttpResponse {
        let key = req
            .headers()
            .get(dbaas_api::http::IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let n = {
            let mut log = script.log.lock().expect("lock");
            log.push(Seen {
                path: req.path().to_string(),
                key,
                body: serde_json::from_slice(&body).unwrap_or(Json::Null),
            });
            log.len() - 1
        };
        let (status, answer) = script.answers[n.min(script.answers.len() - 1)].clone();
        match StatusCode::from_u16(status) {
            Ok(status) => actix_web::HttpResponse::build(status).json(answer),
            Err(_) => actix_web::HttpResponse::Ok().streaming(futures_util::stream::once(async {
                Err::<actix_web::web::Bytes, _>(std::io::Error::other("the reply is lost"))
            })),
        }
    }

    /// A DBaaS stand-in (actix-web on a thread of its own) answering each
    /// request with the next answer of `script`; see [`scripted`].
    async fn fake_dbaas(script: Vec<(u16, Json)>) -> (String, Log) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Log::default();
        let script = actix_web::web::Data::new(Script {
            answers: script,
            log: log.clone(),
        });
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(script.clone())
                        .default_service(actix_web::web::to(scripted))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("listen");
                let _ = server.run().await;
            })
        });
        (url, log)
    }

    fn client(url: &str, budget: Duration) -> DbaasClient {
        DbaasClient::new(http_client(Duration::from_secs(5)).expect("client"), url)
            .with_retry(Retry::new(Duration::from_secs(5), budget))
    }

    fn seen(log: &Log) -> Vec<Seen> {
        log.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn a_write_is_sent_again_under_its_key_until_answered() {
        let (url, log) = fake_dbaas(vec![
            (503, json!({"error": "the broker cannot be reached"})),
            (0, Json::Null),
            (504, json!({"error": "no master answered"})),
            (
                200,
                json!({"seq": 7, "rows_affected": 1, "last_insert_id": 3}),
            ),
        ])
        .await;
        let c = client(&url, Duration::from_secs(10));
        let out = c
            .insert("users", json!({"username": "a", "password": "p"}))
            .await
            .expect("answered in the end");
        assert_eq!((out.seq, out.last_insert_id), (7, Some(3)));
        assert_eq!(c.seq(), 7);
        let attempts = seen(&log);
        assert_eq!(attempts.len(), 4, "{attempts:?}");
        let key = attempts[0].key.clone().expect("a key");
        assert!(uuid::Uuid::parse_str(&key).is_ok(), "{key}");
        for a in &attempts {
            assert_eq!(a.path, "/api/v1/db/write");
            assert_eq!(
                a.key.as_deref(),
                Some(key.as_str()),
                "the same key each time"
            );
            assert_eq!(a.body, attempts[0].body);
        }
        // The next logical write has a key of its own.
        c.delete("users", json!({"username": "a"}))
            .await
            .expect("answered");
        let attempts = seen(&log);
        assert_eq!(attempts.len(), 5);
        assert!(
            attempts[4].key.as_ref().is_some_and(|k| *k != key),
            "{attempts:?}"
        );
    }

    #[tokio::test]
    async fn answers_are_not_retried() {
        let (url, log) = fake_dbaas(vec![
            (409, json!({"error": "constraint violated: UNIQUE"})),
            (
                422,
                json!({"error": "this Idempotency-Key was already used"}),
            ),
            (400, json!({"error": "unknown table"})),
        ])
        .await;
        let c = client(&url, Duration::from_secs(10));
        let users = json!({"username": "a", "password": "p"});
        assert!(matches!(
            c.insert("users", users.clone()).await,
            Err(DbError::Conflict {
                constraint: None,
                ..
            })
        ));
        assert!(matches!(
            c.insert("users", users.clone()).await,
            Err(DbError::Failed { status: 422, .. })
        ));
        assert!(matches!(
            c.read(Read::table("users")).await,
            Err(DbError::Failed { status: 400, .. })
        ));
        assert_eq!(seen(&log).len(), 3, "one attempt each");
        assert_eq!(c.seq(), 0);
    }

    #[test]
    fn errors_are_told_apart_by_kind_not_text() {
        let foreign_key = refusal(
            409,
            r#"{"error": "statement 1 failed: constraint violated: FOREIGN KEY constraint failed", "kind": "constraint", "constraint": "foreign_key"}"#,
        );
        assert!(
            matches!(
                &foreign_key,
                DbError::Conflict {
                    constraint: Some(Constraint::ForeignKey),
                    message
                } if message.starts_with("statement 1")
            ),
            "{foreign_key:?}"
        );
        // The kind decides, whatever the text says.
        let unique = refusal(
            409,
            r#"{"error": "FOREIGN KEY", "kind": "constraint", "constraint": "unique"}"#,
        );
        assert!(
            matches!(
                unique,
                DbError::Conflict {
                    constraint: Some(Constraint::Unique),
                    ..
                }
            ),
            "{unique:?}"
        );
        for (status, body) in [
            (503, r#"{"error": "replica behind", "kind": "unavailable"}"#),
            (504, r#"{"error": "no master answered", "kind": "timeout"}"#),
            (502, "<html>bad gateway</html>"),
        ] {
            assert!(
                matches!(refusal(status, body), DbError::Unavailable(_)),
                "{body}"
            );
        }
        assert_eq!(
            refusal(422, r#"{"error": "used", "kind": "key_reused"}"#),
            DbError::Failed {
                status: 422,
                message: "used".into()
            }
        );
        // A kind this client does not know is judged by the status.
        assert!(matches!(
            refusal(409, r#"{"error": "x", "kind": "from_the_future"}"#),
            DbError::Conflict {
                constraint: None,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn retries_end_within_the_budget() {
        let (url, log) = fake_dbaas(vec![(503, json!({"error": "no master"}))]).await;
        let budget = Duration::from_millis(400);
        let c = client(&url, budget);
        let started = Instant::now();
        let e = c
            .transaction(vec![Write::clear("rides")])
            .await
            .expect_err("never answered");
        let took = started.elapsed();
        assert!(
            matches!(&e, DbError::Unavailable(m) if m.contains("tried")),
            "{e}"
        );
        assert!(took < budget + Duration::from_millis(200), "{took:?}");
        let attempts = seen(&log);
        assert!(attempts.len() >= 3, "backed off and retried: {attempts:?}");
        assert_eq!(
            attempts[0].body,
            json!({"transaction": [{"table": "rides", "clear": true}]})
        );
        // No retry at all with no budget.
        let once = client(&url, Duration::ZERO);
        assert!(once.clear("rides").await.is_err());
        assert_eq!(seen(&log).len(), attempts.len() + 1);
    }

    #[tokio::test]
    async fn a_read_the_replica_cannot_serve_goes_to_the_master_and_is_retried() {
        let (url, log) = fake_dbaas(vec![
            (200, json!({"seq": 4, "rows_affected": 1})),
            (503, json!({"error": "replica behind min_seq"})),
            (503, json!({"error": "the broker cannot be reached"})),
            (200, json!({"rows": [{"username": "a"}], "seq": 4})),
        ])
        .await;
        let c = client(&url, Duration::from_secs(10));
        c.clear("users").await.expect("write");
        let rows = c.read(Read::table("users")).await.expect("read");
        assert_eq!(rows.len(), 1);
        let attempts = seen(&log);
        assert_eq!(attempts.len(), 4, "{attempts:?}");
        assert_eq!(attempts[1].body["min_seq"], 4);
        assert_eq!(attempts[1].key, None, "reads carry no key");
        for a in &attempts[2..] {
            assert_eq!(a.body["consistency"], "strong", "{a:?}");
            assert_eq!(a.body["min_seq"], Json::Null, "{a:?}");
        }
    }
}
