//! What every HTTP service of the project shares: the JSON error type (and
//! the one place an error kind becomes a status), reading request bodies with
//! limits, and the JSON 404/405 answers. The DBaaS API's handlers are the
//! `dbaas` crate's (`dbaas::http`), which re-exports these modules beside them.

pub mod body;
pub mod error;
pub mod resource;

/// The header a `db/write` may carry so that a retried write is applied once.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
