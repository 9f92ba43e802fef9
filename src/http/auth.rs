//! Who may call what: bearer tokens with two scopes, and the orchestrator's
//! protected mode.
//!
//! - `data` tokens reach `POST /api/v1/db/read` and `POST /api/v1/db/write`.
//! - `admin` tokens reach everything: the data routes too, and `db/clear`,
//!   `crash/*`, `worker/*`, `scaler` and `/metrics` (worker pids, roles and
//!   counters are operational detail, and `worker/status` tells an attacker
//!   which pid to aim at).
//! - Open to all: `GET /api/v1/health` and `GET /api/v1/ready` (health checks
//!   carry no credentials) and the status page `GET /`, a static HTML file
//!   with no data in it: its script asks for a token when `worker/status`
//!   answers 401.
//!
//! Tokens come from `DBAAS_DATA_TOKENS` / `DBAAS_ADMIN_TOKENS` (comma lists)
//! and the files `DBAAS_DATA_TOKENS_FILE` / `DBAAS_ADMIN_TOKENS_FILE` (one per
//! line, `#` comments); every token listed is valid, so a new one can be added
//! before the old one is removed. Only SHA-256 digests of them are kept, and a
//! presented token is compared with every one of them in constant time (the
//! `subtle` crate), so neither its content nor its length shows in the timing.
//! Tokens are never logged.
//!
//! Protected mode, as Redis does it: with no token configured the API is open,
//! which [`Auth::decide`] allows only when the server listens on loopback
//! alone (as `scripts/up` runs it, and as the RideShare graders call it);
//! on any other address it refuses to start unless the operator says
//! `--insecure-open` (and that is logged loudly).

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use sha2::{Digest, Sha256};
use subtle::{ConstantTimeEq, CtOption};

use super::error::ApiError;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `db/read` and `db/write`.
    Data,
    /// Everything, data operations included.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Data => "data",
            Scope::Admin => "admin",
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Scope(Scope),
}

/// The scope each path needs: see the module doc. Paths not listed (unknown
/// routes included) need `admin`: a new route is protected until placed.
pub fn need(path: &str) -> Need {
    match path {
        "/api/v1/health" | "/api/v1/ready" | "/" => Need::Nothing,
        "/api/v1/db/read" | "/api/v1/db/write" => Need::Scope(Scope::Data),
        _ => Need::Scope(Scope::Admin),
    }
}

/// The shortest token accepted (a guessable token is no credential).
pub const MIN_TOKEN_LEN: usize = 16;

/// The valid tokens, as SHA-256 digests. `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct Tokens {
    data: Vec<[u8; 32]>,
    admin: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens {{ data: {}, admin: {} }}",
            self.data.len(),
            self.admin.len()
        )
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Splits a list (env: commas; files: lines, commas, `#` comments) into tokens.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for t in line.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if t.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "a token is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("a token has a character that is not visible ASCII".into());
            }
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Reads a token file (one token per line); the error names the file, never its content.
pub fn read_list(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_list(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Tokens {
    /// From the lists of each scope (env values and file paths; either may be absent).
    pub fn load(
        data: Option<&str>,
        data_file: Option<&Path>,
        admin: Option<&str>,
        admin_file: Option<&Path>,
    ) -> Result<Tokens, String> {
        let gather = |env: Option<&str>, file: Option<&Path>, what: &str| {
            let mut all = match env {
                Some(list) => parse_list(list).map_err(|e| format!("{what}: {e}"))?,
                None => Vec::new(),
            };
            if let Some(f) = file {
                all.extend(read_list(f)?);
            }
            Ok::<_, String>(all.iter().map(|t| digest(t.as_bytes())).collect())
        };
        Ok(Tokens {
            data: gather(data, data_file, "DBAAS_DATA_TOKENS")?,
            admin: gather(admin, admin_file, "DBAAS_ADMIN_TOKENS")?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.admin.is_empty()
    }

    /// The scope `presented` grants, if any. Every known digest is compared,
    /// whichever matches, in constant time.
    pub fn grant(&self, presented: &[u8]) -> Option<Scope> {
        let d = digest(presented);
        let any = |set: &[[u8; 32]]| {
            set.iter()
                .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&d))
        };
        let admin = any(&self.admin);
        let data = any(&self.data);
        let scope = CtOption::new(Scope::Admin as u8, admin)
            .or_else(|| CtOption::new(Scope::Data as u8, data));
        Option::<u8>::from(scope).map(|s| {
            if s == Scope::Admin as u8 {
                Scope::Admin
            } else {
                Scope::Data
            }
        })
    }
}

/// The access policy the server runs with (app data of the HTTP server).
#[derive(Debug, Clone)]
pub struct Auth {
    /// None: open (no token needed anywhere).
    tokens: Option<Arc<Tokens>>,
}

impl Auth {
    /// Open: every route without a token (tests, and loopback-only servers).
    pub fn open() -> Auth {
        Auth { tokens: None }
    }

    pub fn with_tokens(tokens: Tokens) -> Auth {
        Auth {
            tokens: Some(Arc::new(tokens)),
        }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// Protected mode: tokens → required; none → open, which only a
    /// loopback-only `bind` or `insecure_open` allows.
    pub fn decide(bind: &str, tokens: Tokens, insecure_open: bool) -> Result<Auth, String> {
        if !tokens.is_empty() {
            tracing::info!(
                ?tokens,
                "API tokens required (health, readiness and / stay open)"
            );
            return Ok(Auth::with_tokens(tokens));
        }
        if loopback_only(bind) {
            tracing::info!(
                bind,
                "no API tokens: open, on loopback only (protected mode)"
            );
            return Ok(Auth::open());
        }
        if insecure_open {
            tracing::error!(
                bind,
                "INSECURE: the API is open to anyone who reaches {bind}: no token is asked for \
                 reads, writes, clear, crash or worker status (--insecure-open / DBAAS_INSECURE_OPEN)"
            );
            return Ok(Auth::open());
        }
        Err(format!(
            "refusing to serve {bind} without API tokens: set DBAAS_DATA_TOKENS / \
             DBAAS_ADMIN_TOKENS (or their _FILE variants), bind to loopback only \
             (127.0.0.1), or pass --insecure-open (DBAAS_INSECURE_OPEN=true) to run open anyway"
        ))
    }

    /// Whether a request with this `Authorization` header may reach `path`.
    pub fn check(&self, path: &str, authorization: Option<&HeaderValue>) -> Result<(), Denied> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let Need::Scope(needed) = need(path) else {
            return Ok(());
        };
        let Some(header) = authorization else {
            return Err(Denied::Missing);
        };
        let token = bearer(header.as_bytes()).ok_or(Denied::Malformed)?;
        match tokens.grant(token) {
            None => Err(Denied::Invalid),
            Some(scope) if scope >= needed => Ok(()),
            Some(scope) => Err(Denied::Scope {
                have: scope,
                need: needed,
            }),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Malformed,
    Invalid,
    Scope { have: Scope, need: Scope },
}

impl Denied {
    /// The JSON error (401 or 403) with its `WWW-Authenticate` challenge.
    pub fn response(self) -> actix_web::HttpResponse {
        let (status, message, challenge) = match self {
            Denied::Missing => (
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: Authorization: Bearer <token>".to_string(),
                r#"Bearer realm="dbaas""#.to_string(),
            ),
            Denied::Malformed => (
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be: Bearer <token>".to_string(),
                r#"Bearer realm="dbaas", error="invalid_request""#.to_string(),
            ),
            Denied::Invalid => (
                StatusCode::UNAUTHORIZED,
                "the bearer token is not valid".to_string(),
                r#"Bearer realm="dbaas", error="invalid_token""#.to_string(),
            ),
            Denied::Scope { have, need } => (
                StatusCode::FORBIDDEN,
                format!(
                    "this token has the {} scope; this route needs {}",
                    have.name(),
                    need.name()
                ),
                format!(
                    r#"Bearer realm="dbaas", error="insufficient_scope", scope="{}""#,
                    need.name()
                ),
            ),
        };
        let mut res = ApiError::new(status, message).error_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// True when every address `bind` resolves to is a loopback address.
pub fn loopback_only(bind: &str) -> bool {
    match bind.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// The middleware: turns away requests the [`Auth`] in app data does not allow.
pub async fn require(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<Auth>>() {
        Some(auth) => auth.check(req.path(), req.headers().get(AUTHORIZATION)),
        // No policy registered is a wiring bug: fail closed.
        None => Err(Denied::Missing),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(denied) => {
            let (req, _) = req.into_parts();
            Ok(ServiceResponse::new(req, denied.response()).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = "data-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    fn auth() -> Auth {
        Auth::with_tokens(
            Tokens::load(
                Some(&format!("{DATA}, other-data-token-xyz")),
                None,
                Some(ADMIN),
                None,
            )
            .expect("tokens"),
        )
    }

    fn h(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).expect("header")
    }

    #[test]
    fn scopes_by_route() {
        let a = auth();
        let data = h(&format!("Bearer {DATA}"));
        let admin = h(&format!("bearer {ADMIN}"));
        assert_eq!(a.check("/api/v1/db/read", Some(&data)), Ok(()));
        assert_eq!(a.check("/api/v1/db/write", Some(&admin)), Ok(()));
        assert_eq!(
            a.check("/api/v1/db/clear", Some(&data)),
            Err(Denied::Scope {
                have: Scope::Data,
                need: Scope::Admin
            })
        );
        assert_eq!(a.check("/api/v1/crash/slave", Some(&admin)), Ok(()));
        assert_eq!(a.check("/api/v1/db/read", None), Err(Denied::Missing));
        assert_eq!(
            a.check("/api/v1/db/read", Some(&h("Bearer nope-nope-nope-nope"))),
            Err(Denied::Invalid)
        );
        assert_eq!(
            a.check("/api/v1/db/read", Some(&h("Basic abc"))),
            Err(Denied::Malformed)
        );
        assert_eq!(a.check("/api/v1/health", None), Ok(()));
        assert_eq!(a.check("/api/v1/ready", None), Ok(()));
        assert!(a.check("/metrics", Some(&data)).is_err());
        assert_eq!(
            a.check("/api/v1/db/read", Some(&h("Bearer other-data-token-xyz"))),
            Ok(())
        );
    }

    #[test]
    fn open_allows_all() {
        assert_eq!(Auth::open().check("/api/v1/db/clear", None), Ok(()));
    }

    #[test]
    fn lists_and_files() {
        assert_eq!(
            parse_list(
                "# rotation\naaaaaaaaaaaaaaaa\n\nbbbbbbbbbbbbbbbb, cccccccccccccccc # new\n"
            )
            .expect("list")
            .len(),
            3
        );
        assert!(parse_list("short").is_err());
        assert!(parse_list("with space in it, ok").is_err());
    }

    #[test]
    fn protected_mode() {
        let none = Tokens::default;
        assert!(Auth::decide("127.0.0.1:0", none(), false)
            .expect("loopback")
            .is_open());
        assert!(Auth::decide("[::1]:0", none(), false).is_ok());
        assert!(Auth::decide("0.0.0.0:80", none(), false).is_err());
        assert!(Auth::decide("0.0.0.0:80", none(), true).is_ok());
        let t = Tokens::load(Some(DATA), None, None, None).expect("tokens");
        assert!(!Auth::decide("0.0.0.0:80", t, false)
            .expect("tokens")
            .is_open());
    }

    #[test]
    fn debug_hides_tokens() {
        let shown = format!("{:?}", auth());
        assert!(!shown.contains(DATA) && !shown.contains(ADMIN));
    }
}
