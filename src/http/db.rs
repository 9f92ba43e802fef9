//! `POST /api/v1/db/read`, `POST /api/v1/db/write`, `POST /api/v1/db/clear`:
//! parse into the typed request model, call the DBaaS through its boundary
//! ([`Dbaas`]), render the outcome or the typed failure; never touch a
//! database, a queue or an actor.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body;
use super::error::ApiError;
use crate::actors::rpc::{Dbaas, WriteId};
use crate::db::request::parse;
use crate::db::{ErrorKind, ReadRequest, WriteRequest};

pub use dbaas_api::http::IDEMPOTENCY_KEY;

pub async fn read<D: Dbaas>(
    dbaas: web::Data<D>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: ReadRequest = parse(&request_body(&req, payload).await?)?;
    // Only a read that validated gets here, and only these are counted for
    // the Scaler: junk cannot scale the cluster.
    let outcome = dbaas
        .read(request, &super::observe::request_id(&req))
        .await?;
    Ok(HttpResponse::Ok().json(outcome))
}

pub async fn write<D: Dbaas>(
    dbaas: web::Data<D>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: WriteRequest = parse(&request_body(&req, payload).await?)?;
    let id = write_id(&req)?;
    let outcome = dbaas
        .write(request, id, &super::observe::request_id(&req))
        .await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Empties every table through the master (the upstream grader calls this).
pub async fn clear<D: Dbaas>(
    dbaas: web::Data<D>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    dbaas.clear(&super::observe::request_id(&req)).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

async fn request_body(req: &HttpRequest, payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    body::read(req, payload)
        .await
        .map_err(|e| match e.status.as_u16() {
            400 => e.with_kind(ErrorKind::BadRequest),
            413 => e.with_kind(ErrorKind::TooLarge),
            _ => e,
        })
}

/// The write's id: from its `Idempotency-Key` (1 to 200 visible ASCII
/// characters), or a fresh one.
fn write_id(req: &HttpRequest) -> Result<WriteId, ApiError> {
    let Some(key) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(WriteId::fresh());
    };
    let invalid = |why: &str| ApiError::bad_request(why).with_kind(ErrorKind::BadRequest);
    let key = key
        .to_str()
        .map_err(|_| invalid("Idempotency-Key must be visible ASCII"))?;
    if key.is_empty() || key.len() > 200 {
        return Err(invalid("Idempotency-Key must be 1 to 200 characters"));
    }
    Ok(WriteId::keyed(key))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use actix_web::http::StatusCode;
    use actix_web::{test, App};
    use serde_json::Value;

    use super::*;
    use crate::db::{Constraint, Failure, ReadOutcome, WriteOutcome};

    /// What the fake was asked.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Read(ReadRequest),
        Write(WriteRequest, WriteId),
    }

    /// A DBaaS that records its calls and answers each with `answer`.
    struct Fake {
        calls: RefCell<Vec<Call>>,
        answer: Result<(), Failure>,
    }

    impl Fake {
        fn answering(answer: Result<(), Failure>) -> web::Data<Fake> {
            web::Data::new(Fake {
                calls: RefCell::new(Vec::new()),
                answer,
            })
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
    }

    impl Dbaas for Fake {
        async fn read(&self, request: ReadRequest, _: &str) -> Result<ReadOutcome, Failure> {
            self.calls.borrow_mut().push(Call::Read(request));
            self.answer.clone().map(|()| ReadOutcome {
                rows: Vec::new(),
                seq: 3,
                worker: Some(42),
                more: false,
            })
        }
        async fn write(
            &self,
            request: WriteRequest,
            id: WriteId,
            _: &str,
        ) -> Result<WriteOutcome, Failure> {
            self.calls.borrow_mut().push(Call::Write(request, id));
            self.answer.clone().map(|()| WriteOutcome {
                seq: 4,
                rows_affected: 1,
                last_insert_id: Some(9),
                statements: Vec::new(),
            })
        }
    }

    /// Posts `body` to `path` (with `headers`) against `fake`; the status and JSON body.
    async fn post(
        fake: &web::Data<Fake>,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> (StatusCode, Value) {
        let app = test::init_service(
            App::new()
                .app_data(fake.clone())
                .route("/api/v1/db/read", web::post().to(read::<Fake>))
                .route("/api/v1/db/write", web::post().to(write::<Fake>))
                .route("/api/v1/db/clear", web::post().to(clear::<Fake>)),
        )
        .await;
        let mut req = test::TestRequest::post()
            .uri(path)
            .set_payload(body.to_string());
        for (name, value) in headers {
            let value = actix_web::http::header::HeaderValue::from_bytes(value).expect("header");
            req = req.insert_header((*name, value));
        }
        let res = test::call_service(&app, req.to_request()).await;
        let status = res.status();
        let bytes = test::read_body(res).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const INSERT: &str = r#"{"table":"users","insert":{"username":"a","password":"p"}}"#;

    #[actix_rt::test]
    async fn a_valid_read_is_asked_once_and_answered_as_json() {
        let fake = Fake::answering(Ok(()));
        let (status, body) = post(&fake, "/api/v1/db/read", &[], r#"{"table":"users"}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"rows": [], "seq": 3, "worker": 42}));
        let expected: ReadRequest = parse(br#"{"table":"users"}"#).expect("valid");
        assert_eq!(fake.calls(), vec![Call::Read(expected)]);
    }

    #[actix_rt::test]
    async fn only_valid_reads_reach_the_dbaas_and_so_the_scaler() {
        let fake = Fake::answering(Ok(()));
        for junk in [
            "",
            "{",
            r#"{"table":"accounts"}"#,
            r#"{"table":"users","where":"1=1"}"#,
        ] {
            let (status, body) = post(&fake, "/api/v1/db/read", &[], junk).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{junk:?}");
            assert!(body["error"].is_string(), "{body}");
            assert_eq!(body["kind"], "bad_request", "{body}");
        }
        assert_eq!(fake.calls(), vec![], "no malformed read was counted");
    }

    #[actix_rt::test]
    async fn a_write_carries_its_idempotency_key_or_a_fresh_id() {
        let fake = Fake::answering(Ok(()));
        let (status, body) = post(
            &fake,
            "/api/v1/db/write",
            &[(IDEMPOTENCY_KEY, b"abc-1")],
            INSERT,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"seq": 4, "rows_affected": 1, "last_insert_id": 9})
        );
        post(&fake, "/api/v1/db/write", &[], INSERT).await;
        let calls = fake.calls();
        let ids: Vec<&str> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Write(_, id) => Some(id.as_str()),
                Call::Read(_) => None,
            })
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], "key:abc-1");
        assert!(uuid::Uuid::parse_str(ids[1]).is_ok(), "{}", ids[1]);
    }

    #[actix_rt::test]
    async fn a_bad_idempotency_key_is_refused_before_the_dbaas() {
        let fake = Fake::answering(Ok(()));
        let long = "k".repeat(201);
        for key in [&b""[..], long.as_bytes(), &b"caf\xc3\xa9"[..]] {
            let (status, body) =
                post(&fake, "/api/v1/db/write", &[(IDEMPOTENCY_KEY, key)], INSERT).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("Idempotency-Key must be"), "{body}");
        }
        let exactly_200 = "k".repeat(200);
        let (status, _) = post(
            &fake,
            "/api/v1/db/write",
            &[(IDEMPOTENCY_KEY, exactly_200.as_bytes())],
            INSERT,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.calls().len(), 1);
    }

    #[actix_rt::test]
    async fn failures_are_rendered_with_their_status_and_kind() {
        let mut foreign_key = Failure::new(
            ErrorKind::Constraint,
            "constraint violated: FOREIGN KEY constraint failed",
        );
        foreign_key.constraint = Some(Constraint::ForeignKey);
        let cases = [
            (
                foreign_key,
                409,
                json!({"error": "constraint violated: FOREIGN KEY constraint failed", "kind": "constraint", "constraint": "foreign_key"}),
            ),
            (
                Failure::new(ErrorKind::KeyReused, "used"),
                422,
                json!({"error": "used", "kind": "key_reused"}),
            ),
            (
                Failure::new(ErrorKind::Full, "out of space"),
                507,
                json!({"error": "out of space", "kind": "full"}),
            ),
            (
                Failure::unavailable("replica behind"),
                503,
                json!({"error": "replica behind", "kind": "unavailable"}),
            ),
            (
                Failure::new(ErrorKind::TooLarge, "page"),
                413,
                json!({"error": "page", "kind": "too_large"}),
            ),
        ];
        for (failure, status, expected) in cases {
            let fake = Fake::answering(Err(failure));
            let (got, body) = post(&fake, "/api/v1/db/write", &[], INSERT).await;
            assert_eq!((got.as_u16(), body), (status, expected));
        }
    }

    #[actix_rt::test]
    async fn a_write_timeout_is_a_504_saying_the_write_is_queued() {
        use crate::actors::rpc::request::Target;
        let message = Target::Write.timeout_message(std::time::Duration::from_secs(5));
        let fake = Fake::answering(Err(Failure::new(ErrorKind::Timeout, message)));
        let (status, body) = post(&fake, "/api/v1/db/clear", &[], "").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body["kind"], "timeout");
        assert_eq!(
            body["error"],
            "no master answered within 5s; the write is queued in writeQ and will be applied once, when a master takes it"
        );
        assert!(
            matches!(
                &fake.calls()[..],
                [Call::Write(WriteRequest::Clear { table: None }, _)]
            ),
            "{:?}",
            fake.calls()
        );
    }

    #[actix_rt::test]
    async fn an_oversized_body_is_a_413_that_never_reaches_the_dbaas() {
        let fake = Fake::answering(Ok(()));
        let huge = format!(
            r#"{{"table":"users","insert":{{"username":"{}","password":"p"}}}}"#,
            "a".repeat(body::MAX_BODY)
        );
        let (status, body) = post(&fake, "/api/v1/db/write", &[], &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["kind"], "too_large");
        assert_eq!(fake.calls(), vec![]);
    }
}
