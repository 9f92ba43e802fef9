//! The RideShare `users` and `rides` HTTP microservices: stateless clients of
//! the DBaaS (every read and write is a `db/read` or `db/write` call), each
//! keeping only its `_count` request counter. See `docs/rideshare.md`.
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
//! - [`error`]: the JSON error type.

pub mod counter;
pub mod dbaas_client;
pub mod error;
pub mod rides;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod users;
pub mod validate;
pub mod web;
