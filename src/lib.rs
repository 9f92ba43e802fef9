//! RideShare DBaaS: a replicated SQLite service behind RabbitMQ, watched by ZooKeeper.
//!
//! # Layout
//! A Cargo workspace of three crates, layered one way (the compiler refuses
//! the other): this crate, `dbaas` (the orchestrator and the worker); beneath
//! it `dbaas-api` (`crates/api`), the DBaaS's public contract and the HTTP
//! pieces every service shares; beside it `rideshare` (`crates/rideshare`),
//! the users and rides services, which depend on `dbaas-api` only and so
//! compile no SQLite, RabbitMQ, Docker or ZooKeeper client.
//!
//! Data flows one way: HTTP → `Dispatcher` → AMQP → worker → `RpcWaiter` → HTTP.
//! - [`http`]: the orchestrator's thin HTTP handlers (parse, call, render); the
//!   JSON error type (the only place an error kind becomes an HTTP status),
//!   body reading and the 404/405 answers are `dbaas-api`'s, re-exported here.
//! - [`actors`]: the orchestrator's actors and their messages: `Dispatcher`,
//!   `RpcWaiter`, `Election`, `ContainerSupervisor`, `Scaler`; and
//!   `actors::rpc`, the RPC boundary HTTP reaches them through (typed request,
//!   reply slot guard, deadline, the consumer of the session's own reply queue).
//! - [`orchestrator`]: wiring of the orchestrator process.
//! - [`runtime`]: where workers run: local processes, or Docker containers
//!   spread over one or several engines (hosts).
//! - [`worker`]: the worker process: sync stream, read service, election, write service.
//! - [`broker`]: RabbitMQ queue names, topology, connection and message bodies.
//! - [`coord`]: ZooKeeper layout, worker records, the workers' election rule,
//!   and the orchestrators' leadership (who supervises, fenced by an epoch).
//! - [`db`]: the only SQL and a worker's store; the schema, the typed request
//!   model and the error kinds requests fail with (on the wire and in the API)
//!   are `dbaas-api`'s, re-exported here.
//! - [`prometheus`]: the orchestrator's Prometheus metrics.
//! - [`config`]: command-line flags several binaries share (the brokers' here,
//!   the HTTP ones re-exported from `dbaas-api`).
//! - [`telemetry`]: logging setup shared by the binaries (`dbaas-api`'s).
//! - [`backoff`]: jitter for the reconnecting loops (`dbaas-api`'s).
//! - [`shutdown`]: the signals that stop a process gracefully.
//! - [`tasks`]: the orchestrator's supervised long-lived tasks.

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod actors;
pub(crate) use dbaas_api::backoff;
pub mod broker;
pub mod config;
pub(crate) mod coord;
pub mod db;
pub mod http;
pub mod orchestrator;
pub(crate) mod prometheus;
pub(crate) mod runtime;
pub(crate) mod shutdown;
pub(crate) mod tasks;
pub use dbaas_api::telemetry;
pub mod worker;
