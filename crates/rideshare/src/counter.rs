//! The `_count` API: a per-process counter of requests to a service's own API
//! routes (users or rides), counted as they arrive, whatever their outcome
//! (400s and 405s too). `_count` itself and `db/clear` are not counted: only
//! resources wrapped with [`count_requests`] are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::web::{empty, resource};

/// The request counter, shared by all of a server's workers.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Middleware (for `actix_web::middleware::from_fn`) counting every request
/// that reaches the wrapped resource, including its 405s, in the app's
/// `web::Data<Counter>`.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(counter) = req.app_data::<web::Data<Counter>>() {
        counter.hit();
    }
    next.call(req).await
}

async fn get(counter: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Ok().json([counter.get()])
}

async fn reset(counter: web::Data<Counter>) -> HttpResponse {
    counter.reset();
    empty(StatusCode::OK)
}

/// `GET /api/v1/_count` → `[n]`, `DELETE /api/v1/_count` → `{}`, 405 otherwise.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(
        "/api/v1/_count",
        vec![web::get().to(get), web::delete().to(reset)],
        "GET, DELETE",
    ));
}
