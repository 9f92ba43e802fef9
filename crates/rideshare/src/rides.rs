//! The rides service: create, list (upcoming), show, join and delete rides,
//! `rides/count`, `db/clear` and `_count`. Its data lives in the DBaaS `rides`
//! and `ride_members` tables; users are checked through the users service's
//! list API (via the load balancer). It keeps only its request counter.
//!
//! Not-found rule: a ride id that names no ride (including one that is not a
//! number) is answered 204 with an empty body by `GET` and `POST` (join)
//! `/api/v1/rides/{rideId}`, and 400 by `DELETE`.

use std::time::Duration;

use actix_web::http::header::{HeaderValue, ORIGIN};
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use super::counter::{self, count_requests};
use super::dbaas_client::{http_client, Constraint, DbError, DbaasClient, Read, Retry, Row, Write};
use super::error::ApiError;
use super::store::{Store, UserDirectory};
use super::validate::{self, Fields};
use super::web::{empty, not_found, read_fields, resource, serve};

/// How the rides service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address, e.g. `127.0.0.1:8002`.
    pub bind: String,
    /// Client timeouts and the connection cap of its HTTP server.
    pub http: dbaas_api::config::HttpLimits,
    /// The DBaaS orchestrator's base URL.
    pub dbaas_url: String,
    /// Base URL of the users API (the load balancer in production).
    pub users_url: String,
    /// This service's public address, sent as `Origin` to the users service.
    pub origin: String,
    /// How long a DBaaS call without an answer is retried in all (see
    /// [`super::dbaas_client::Retry`]).
    pub retry_budget: Duration,
    /// The DBaaS `data` token sent with every call (None: an open DBaaS).
    pub dbaas_token: Option<dbaas_api::config::Secret>,
    /// Timeout of each call to the DBaaS and the users service.
    pub timeout: Duration,
}

/// Asks the users service whether a user exists: one `GET /api/v1/users`.
pub struct UsersApi {
    http: reqwest::Client,
    list_url: String,
    origin: HeaderValue,
}

impl UsersApi {
    pub fn new(http: reqwest::Client, base: &str, origin: &str) -> anyhow::Result<UsersApi> {
        let origin = HeaderValue::from_str(origin)
            .map_err(|e| anyhow::anyhow!("origin {origin:?} is not a valid header value: {e}"))?;
        Ok(UsersApi {
            http,
            list_url: format!("{}/api/v1/users", base.trim_end_matches('/')),
            origin,
        })
    }

    pub async fn exists(&self, username: &str) -> Result<bool, ApiError> {
        let unavailable =
            |e: String| ApiError::unavailable(format!("users service {}: {e}", self.list_url));
        let resp = self
            .http
            .get(&self.list_url)
            .header(ORIGIN.as_str(), self.origin.as_bytes())
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match resp.status().as_u16() {
            204 => Ok(false),
            200 => {
                let names: Vec<String> = resp
                    .json()
                    .await
                    .map_err(|e| unavailable(format!("unexpected answer: {e}")))?;
                Ok(names.iter().any(|n| n == username))
            }
            s => Err(unavailable(format!("answered {s}"))),
        }
    }
}

/// What the handlers share: the DBaaS and the user check (the real ones,
/// or fakes in tests).
pub struct State<D = DbaasClient, U = UsersApi> {
    pub db: D,
    pub users: U,
}

fn no_ride() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

fn now_db() -> String {
    validate::to_db_timestamp(chrono::Local::now().naive_local())
}

fn text(row: &Row, col: &str) -> String {
    row.get(col)
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

fn user_missing(username: &str) -> ApiError {
    ApiError::bad_request(format!("no such user {:?}", validate::preview(username)))
}

/// `POST /api/v1/rides` → 201 `{}`; bad input or unknown user → 400.
async fn create<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields: Fields = read_fields(&req, body).await?;
    let created_by = validate::username(&fields, "created_by")?;
    let at = validate::parse_timestamp(&validate::required_string(&fields, "timestamp")?)?;
    let source = validate::area(&fields, "source")?;
    let destination = validate::area(&fields, "destination")?;
    if !state.users.exists(&created_by).await? {
        return Err(user_missing(&created_by));
    }
    state
        .db
        .insert(
            "rides",
            json!({
                "created_by": created_by,
                "timestamp": validate::to_db_timestamp(at),
                "source": source,
                "destination": destination,
            }),
        )
        .await?;
    Ok(empty(StatusCode::CREATED))
}

/// `GET /api/v1/rides?source=S&destination=D` → the rides still to come on
/// that route, soonest first; 204 when none; 400 for missing/invalid areas.
async fn upcoming<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?
        .into_inner();
    let param = |name: &str| -> Result<u16, ApiError> {
        let v = params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::bad_request(format!("missing query parameter {name:?}")))?;
        Ok(validate::area_str(name, v)?)
    };
    let (source, destination) = (param("source")?, param("destination")?);
    let rows = state
        .db
        .read(
            Read::table("rides")
                .columns(&["ride_id", "created_by", "timestamp"])
                .filter("source", json!(source))
                .filter("destination", json!(destination))
                .filter("timestamp", json!({ ">": now_db() }))
                .order_by("timestamp")
                .order_by("ride_id"),
        )
        .await?;
    if rows.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let rides: Vec<Json> = rows
        .iter()
        .map(|r| {
            json!({
                "rideId": r.get("ride_id").cloned().unwrap_or(Json::Null),
                "username": text(r, "created_by"),
                "timestamp": validate::db_to_api_timestamp(&text(r, "timestamp")),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(rides))
}

async fn find_ride(db: &impl Store, id: i64) -> Result<Option<Row>, ApiError> {
    let mut rows = db
        .read(Read::table("rides").filter("ride_id", json!(id)))
        .await?;
    Ok(rows.pop())
}

/// `GET /api/v1/rides/{rideId}` → the ride with the users who joined it.
async fn details<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(id) = validate::ride_id(&id) else {
        return Ok(no_ride());
    };
    let Some(ride) = find_ride(&state.db, id).await? else {
        return Ok(no_ride());
    };
    let members = state
        .db
        .read(
            Read::table("ride_members")
                .columns(&["username"])
                .filter("ride_id", json!(id))
                .order_by("username"),
        )
        .await?;
    let users: Vec<String> = members.iter().map(|m| text(m, "username")).collect();
    Ok(HttpResponse::Ok().json(json!({
        "rideId": id,
        "created_by": text(&ride, "created_by"),
        "users": users,
        "timestamp": validate::db_to_api_timestamp(&text(&ride, "timestamp")),
        "source": ride.get("source").cloned().unwrap_or(Json::Null),
        "destination": ride.get("destination").cloned().unwrap_or(Json::Null),
    })))
}

/// `POST /api/v1/rides/{rideId}` `{"username"}` → 200 `{}` (joining twice,
/// or joining one's own ride, changes nothing); unknown user → 400.
async fn join<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
    id: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = read_fields(&req, body).await?;
    let username = validate::username(&fields, "username")?;
    let Some(id) = validate::ride_id(&id) else {
        return Ok(no_ride());
    };
    let Some(ride) = find_ride(&state.db, id).await? else {
        return Ok(no_ride());
    };
    if !state.users.exists(&username).await? {
        return Err(user_missing(&username));
    }
    if text(&ride, "created_by") == username {
        return Ok(empty(StatusCode::OK));
    }
    match state
        .db
        .insert("ride_members", json!({"ride_id": id, "username": username}))
        .await
    {
        Ok(_) => Ok(empty(StatusCode::OK)),
        // The ride was deleted meanwhile.
        Err(DbError::Conflict {
            constraint: Some(Constraint::ForeignKey),
            ..
        }) => Ok(no_ride()),
        // Already a member.
        Err(DbError::Conflict { .. }) => Ok(empty(StatusCode::OK)),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /api/v1/rides/{rideId}` → 200 `{}`; unknown → 400.
async fn remove<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let unknown = || ApiError::bad_request(format!("no such ride {:?}", validate::preview(&id)));
    let Some(ride_id) = validate::ride_id(&id) else {
        return Err(unknown());
    };
    let out = state
        .db
        .delete("rides", json!({ "ride_id": ride_id }))
        .await?;
    if out.rows_affected == 0 {
        return Err(unknown());
    }
    Ok(empty(StatusCode::OK))
}

/// `GET /api/v1/rides/count` → `[n]`: the rides in the DBaaS, i.e. created
/// since the last clear and not deleted since.
async fn count<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
) -> Result<HttpResponse, ApiError> {
    let n = state.db.count(Read::table("rides")).await?;
    Ok(HttpResponse::Ok().json([n]))
}

/// `POST /api/v1/db/clear` → 200 `{}`: removes every ride and membership
/// (one transaction).
async fn clear<D: Store, U: UserDirectory>(
    state: web::Data<State<D, U>>,
) -> Result<HttpResponse, ApiError> {
    state
        .db
        .transaction(vec![Write::clear("ride_members"), Write::clear("rides")])
        .await?;
    Ok(empty(StatusCode::OK))
}

/// The rides service's routes; needs `web::Data<State<D, U>>` and `web::Data<Counter>`.
pub fn routes<D: Store, U: UserDirectory>(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource(
            "/api/v1/rides",
            vec![
                web::post().to(create::<D, U>),
                web::get().to(upcoming::<D, U>),
            ],
            "GET, POST",
        )
        .wrap(from_fn(count_requests)),
    )
    .service(
        resource(
            "/api/v1/rides/count",
            vec![web::get().to(count::<D, U>)],
            "GET",
        )
        .wrap(from_fn(count_requests)),
    )
    .service(
        resource(
            "/api/v1/rides/{rideId}",
            vec![
                web::get().to(details::<D, U>),
                web::post().to(join::<D, U>),
                web::delete().to(remove::<D, U>),
            ],
            "GET, POST, DELETE",
        )
        .wrap(from_fn(count_requests)),
    )
    .service(resource(
        "/api/v1/db/clear",
        vec![web::post().to(clear::<D, U>)],
        "POST",
    ))
    .configure(counter::routes)
    .default_service(web::to(not_found));
}

/// Serves the rides API until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let http = http_client(config.timeout)?;
    let state = web::Data::new(State {
        db: DbaasClient::new(http.clone(), &config.dbaas_url)
            .with_retry(Retry::new(config.timeout, config.retry_budget))
            .with_token(config.dbaas_token.clone()),
        users: UsersApi::new(http, &config.users_url, &config.origin)?,
    });
    tracing::info!(
        bind = %config.bind, dbaas = %config.dbaas_url, users = %config.users_url,
        origin = %config.origin, "rides service starting"
    );
    serve(
        "rides",
        &config.bind,
        config.http,
        state,
        routes::<DbaasClient, UsersApi>,
    )
    .await
}

#[cfg(test)]
mod tests;
