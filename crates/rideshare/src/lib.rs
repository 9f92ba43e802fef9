//! The RideShare `users` and `rides` HTTP microservices: stateless clients of
//! the DBaaS (every read and write is a `db/read` or `db/write` call), each
//! keeping only its `_count` request counter. See `docs/rideshare.md`.
//!
//! A crate of its own (the `rideshare` package, binaries `users` and `rides`
//! in `src/bin/`): it depends on the DBaaS's contract, `dbaas-api` (the
//! request model and its limits, the error kinds, the JSON error, body
//! reading, the 404/405 answers, the shared flags), and never on the `dbaas`
//! package, so the compiler keeps the services to the HTTP API and they
//! compile no SQLite, RabbitMQ, Docker or ZooKeeper client (`scripts/test`
//! checks `cargo tree -p rideshare`).
//!
//! # Layout
//! - [`users`], [`rides`]: each service's handlers, routes and `run`.
//! - [`dbaas_client`]: the typed, time-limited HTTP client to the DBaaS, with
//!   read-your-writes through `min_seq`, transactions, and retries that send
//!   a write's `Idempotency-Key` again so it is applied once.
//! - [`store`]: what the handlers need from outside (the DBaaS's data calls,
//!   the user check) as two small traits, so their unit tests run on
//!   in-memory fakes.
//! - [`counter`]: the `_count` request counter and its routes.
//! - [`validate`]: parsing of timestamps, passwords, areas, ids, usernames.
//! - [`web`]: request bodies (JSON or form), 405/404 answers.
//! - [`error`]: the JSON error type (`dbaas_api`'s), and validation failures as one.

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub(crate) mod counter;
pub mod dbaas_client;
pub(crate) mod error;
pub mod rides;
pub(crate) mod store;
#[cfg(test)]
mod test_support;
pub mod users;
pub(crate) mod validate;
pub(crate) mod web;
