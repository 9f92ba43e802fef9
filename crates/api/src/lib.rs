//! The RideShare DBaaS's public contract, and what every HTTP service of the
//! project shares: the orchestrator (`dbaas`) and the RideShare services
//! (`rideshare`) both depend on this crate, never on each other, and it
//! depends on no SQLite, RabbitMQ, Docker or ZooKeeper client, so neither do
//! the RideShare services.
//!
//! # Layout
//! - [`db`]: what a request may say and what it can fail with: the schema,
//!   the typed request model that validates while it deserializes (with its
//!   limits), and the error kinds workers answer and clients match on.
//! - [`http`]: the JSON error type and the one place an error kind becomes an
//!   HTTP status, body reading with size and time limits, the JSON 404/405
//!   answers, and the `Idempotency-Key` header's name.
//! - [`config`]: the command-line flags the HTTP services share (server
//!   limits, how to reach the DBaaS, secrets).
//! - [`telemetry`]: logging setup shared by the binaries.
//! - [`backoff`]: jitter for the reconnecting and retrying loops.
//!
//! The `dbaas` crate re-exports these modules at their old paths
//! (`dbaas::db::request`, `dbaas::http::error`, `dbaas::config`, ...): one
//! place for each concept.

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod config;
pub mod db;
pub mod http;
pub mod telemetry;
