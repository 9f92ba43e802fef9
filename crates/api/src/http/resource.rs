//! Resources that answer the methods they do not serve with a JSON 405 (and
//! `Allow`), and the JSON 404 for paths no route matches: the same answers on
//! the DBaaS API and the RideShare services.

use actix_web::http::header;
use actix_web::{web, HttpResponse, Route};

/// A JSON 405 naming the allowed methods.
pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, allow))
        .json(serde_json::json!({ "error": format!("method not allowed; use {allow}") }))
}

/// A resource serving `routes` and answering 405 (allowed: `allow`) to the rest.
pub fn resource(path: &str, routes: Vec<Route>, allow: &'static str) -> actix_web::Resource {
    routes
        .into_iter()
        .fold(web::resource(path), |r, route| r.route(route))
        .default_service(web::to(move || async move { method_not_allowed(allow) }))
}

/// The JSON 404 for paths no route matches.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "no such route" }))
}
