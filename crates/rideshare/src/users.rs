//! The users service: add, list and remove users; `db/clear` and `_count`.
//! Its data lives in the DBaaS `users` table; it keeps only its request counter.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use super::counter::{self, count_requests};
use super::dbaas_client::{http_client, DbError, DbaasClient, Read, Retry, Write};
use super::error::ApiError;
use super::store::Store;
use super::validate;
use super::web::{empty, not_found, read_fields, resource, serve};

/// How the users service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address, e.g. `127.0.0.1:8001`.
    pub bind: String,
    /// Client timeouts and the connection cap of its HTTP server.
    pub http: dbaas_api::config::HttpLimits,
    /// The DBaaS orchestrator's base URL.
    pub dbaas_url: String,
    /// How long a DBaaS call without an answer is retried in all (see
    /// [`super::dbaas_client::Retry`]).
    pub retry_budget: Duration,
    /// The DBaaS `data` token sent with every call (None: an open DBaaS).
    pub dbaas_token: Option<dbaas_api::config::Secret>,
    /// Timeout of each call to the DBaaS.
    pub timeout: Duration,
}

/// What the handlers share: the DBaaS (the client, or a fake in tests).
pub struct State<D = DbaasClient> {
    pub db: D,
}

/// `PUT /api/v1/users` `{"username", "password"}` → 201 `{}`; invalid or
/// duplicate → 400.
async fn add<D: Store>(
    state: web::Data<State<D>>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let fields = read_fields(&req, body).await?;
    let username = validate::username(&fields, "username")?;
    let password = validate::password(&fields)?;
    match state
        .db
        .insert("users", json!({"username": username, "password": password}))
        .await
    {
        Ok(_) => Ok(empty(StatusCode::CREATED)),
        Err(DbError::Conflict { .. }) => Err(ApiError::bad_request(format!(
            "user {:?} already exists",
            validate::preview(&username)
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/v1/users` → 200 `["name", ...]` (sorted), 204 when there are none.
async fn list<D: Store>(state: web::Data<State<D>>) -> Result<HttpResponse, ApiError> {
    let rows = state
        .db
        .read(
            Read::table("users")
                .columns(&["username"])
                .order_by("username"),
        )
        .await?;
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.get("username").and_then(Json::as_str))
        .collect();
    if names.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    Ok(HttpResponse::Ok().json(names))
}

/// `DELETE /api/v1/users/{username}` → 200 `{}`; unknown → 400. The user's
/// memberships and the rides they created (with their members) go with them,
/// in one transaction: all of it is gone, or nothing is.
async fn remove<D: Store>(
    state: web::Data<State<D>>,
    username: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let username = username.into_inner();
    let out = state
        .db
        .transaction(vec![
            Write::delete("users", json!({ "username": username })),
            Write::delete("ride_members", json!({ "username": username })),
            Write::delete("rides", json!({ "created_by": username })),
        ])
        .await?;
    // The first statement removed the user, or there was none (then rides
    // and memberships naming them, left by a race with a deletion, go too).
    let removed = out.statements.first().map_or(0, |s| s.rows_affected);
    if removed == 0 {
        return Err(ApiError::bad_request(format!(
            "no such user {:?}",
            validate::preview(&username)
        )));
    }
    Ok(empty(StatusCode::OK))
}

/// `POST /api/v1/db/clear` → 200 `{}`: removes every user.
async fn clear<D: Store>(state: web::Data<State<D>>) -> Result<HttpResponse, ApiError> {
    state.db.clear("users").await?;
    Ok(empty(StatusCode::OK))
}

/// The users service's routes; needs `web::Data<State<D>>` and `web::Data<Counter>`.
pub fn routes<D: Store>(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource(
            "/api/v1/users",
            vec![web::put().to(add::<D>), web::get().to(list::<D>)],
            "GET, PUT",
        )
        .wrap(from_fn(count_requests)),
    )
    .service(
        resource(
            "/api/v1/users/{username}",
            vec![web::delete().to(remove::<D>)],
            "DELETE",
        )
        .wrap(from_fn(count_requests)),
    )
    .service(resource(
        "/api/v1/db/clear",
        vec![web::post().to(clear::<D>)],
        "POST",
    ))
    .configure(counter::routes)
    .default_service(web::to(not_found));
}

/// Serves the users API until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let http = http_client(config.timeout)?;
    let state = web::Data::new(State {
        db: DbaasClient::new(http, &config.dbaas_url)
            .with_retry(Retry::new(config.timeout, config.retry_budget))
            .with_token(config.dbaas_token.clone()),
    });
    tracing::info!(bind = %config.bind, dbaas = %config.dbaas_url, "users service starting");
    serve(
        "users",
        &config.bind,
        config.http,
        state,
        routes::<DbaasClient>,
    )
    .await
}

#[cfg(test)]
mod tests;
