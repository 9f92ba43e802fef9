//! What the users and rides handler tests share: a service built from a
//! service's routes on fakes, one call to it, and checks of the answer's
//! shape (a JSON error, an empty 204).

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::test::{self, TestRequest};
use serde_json::Value as Json;

use super::counter::Counter;

/// A valid password: 40 hex digits (SHA-1 of "hello").
pub const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";

/// What a request body is.
pub enum Body {
    Empty,
    Json(Json),
    Form(Vec<(&'static str, String)>),
    /// Bytes with a content type, as sent.
    Raw(&'static str, Vec<u8>),
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The body as JSON (`null` when it is not).
    pub json: Json,
    pub text: String,
    /// The `Allow` header.
    pub allow: Option<String>,
}

impl Answer {
    /// Asserts `status`, with a JSON `{"error": ...}` body for errors and an
    /// empty body for 204.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> &Answer {
        assert_eq!(self.status, status, "{what}: {self:?}");
        if status == 204 {
            assert!(self.text.is_empty(), "{what}: 204 with a body: {self:?}");
        } else if status >= 400 {
            assert!(
                self.json["error"].is_string(),
                "{what}: not a JSON error: {self:?}"
            );
        }
        self
    }
}

/// The request counter of a test app, to read `_count` without a request.
pub fn counter() -> actix_web::web::Data<Counter> {
    actix_web::web::Data::new(Counter::default())
}

/// Sends one request to `app` and reads the whole answer.
pub async fn call<S, B>(app: &S, method: Method, path: &str, body: Body) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::default().method(method).uri(path);
    let req = match body {
        Body::Empty => req,
        Body::Json(v) => req.set_json(v),
        Body::Form(pairs) => req.set_form(pairs),
        Body::Raw(content_type, bytes) => req
            .insert_header((header::CONTENT_TYPE, content_type))
            .set_payload(bytes),
    };
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = test::read_body(resp).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Json::Null),
        text,
        allow,
    }
}

/// `GET path`.
pub async fn get<S, B>(app: &S, path: &str) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call(app, Method::GET, path, Body::Empty).await
}
