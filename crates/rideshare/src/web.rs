//! HTTP plumbing shared by both services: reading a request body (JSON or
//! form-encoded) into [`Fields`] with a size limit, resources that answer 405
//! to other methods, and the JSON 404 for unknown paths.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::Value as Json;

use super::error::ApiError;
use super::validate::Fields;
use dbaas_api::config::HttpLimits;
use dbaas_api::http::body::BodyError;

/// The largest request body accepted; larger ones get a clean 400.
pub const MAX_BODY: usize = 256 * 1024;

/// Reads the body and parses it as form fields when it is
/// `application/x-www-form-urlencoded`, as a JSON object otherwise. An empty
/// body is an empty object (so a missing field is reported by name).
pub async fn read_fields(req: &HttpRequest, payload: web::Payload) -> Result<Fields, ApiError> {
    let timeout = dbaas_api::http::body::timeout_of(req);
    let body = dbaas_api::http::body::read_limited(req, payload, MAX_BODY, timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => {
                ApiError::bad_request(format!("body larger than {MAX_BODY} bytes"))
            }
            e @ BodyError::TimedOut(_) => dbaas_api::http::body::timed_out(e),
            BodyError::Broken(e) => ApiError::bad_request(format!("reading body: {e}")),
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    if req.content_type() == mime_form() {
        parse_form(&body)
    } else {
        parse_json(&body)
    }
}

fn mime_form() -> &'static str {
    "application/x-www-form-urlencoded"
}

/// Form fields become JSON strings; the first of repeated names wins.
pub fn parse_form(body: &[u8]) -> Result<Fields, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("form body is not UTF-8"))?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
        .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?
        .into_inner();
    let mut fields = Fields::new();
    for (k, v) in pairs {
        fields.entry(k).or_insert(Json::String(v));
    }
    Ok(fields)
}

pub fn parse_json(body: &[u8]) -> Result<Fields, ApiError> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON body: {e}"))),
    }
}

/// `{}` with the given status.
pub fn empty(status: actix_web::http::StatusCode) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({}))
}

pub use dbaas_api::http::resource::{not_found, resource};

/// Serves a RideShare service until SIGINT/SIGTERM: its state, a fresh
/// `_count` counter, request logging and its routes, within `limits`.
pub async fn serve<S: Send + Sync + 'static>(
    name: &'static str,
    bind: &str,
    limits: HttpLimits,
    state: web::Data<S>,
    routes: fn(&mut web::ServiceConfig),
) -> anyhow::Result<()> {
    let counter = web::Data::new(super::counter::Counter::default());
    actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(counter.clone())
            .app_data(limits)
            .wrap(actix_web::middleware::Logger::default())
            .configure(routes)
    })
    .workers(limits.workers())
    .max_connections(limits.connections_per_worker())
    .client_request_timeout(limits.client_timeout)
    .client_disconnect_timeout(limits.disconnect_timeout())
    .bind(bind)?
    .shutdown_timeout(10)
    .run()
    .await?;
    tracing::info!("{name} service stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_json_give_the_same_fields() {
        let f = parse_form(b"username=a%20b&source=5&source=6").unwrap();
        assert_eq!(f["username"], "a b");
        assert_eq!(f["source"], "5");
        let j = parse_json(br#"{"username": "a b", "source": 5}"#).unwrap();
        assert_eq!(j["source"], 5);
        assert!(parse_json(b"[1]").is_err());
        assert!(parse_json(b"{nope").is_err());
        assert!(parse_form(&[0xff, 0xfe]).is_err());
        let deep = "[".repeat(100_000);
        assert!(parse_json(format!("{{\"a\":{deep}").as_bytes()).is_err());
    }
}
