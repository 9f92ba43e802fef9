//! RideShare DBaaS: a replicated SQLite service behind RabbitMQ, watched by ZooKeeper.
//!
//! # Layout
//! Data flows one way: HTTP → `Dispatcher` → AMQP → worker → `RpcWaiter` → HTTP.
//! - [`http`]: the orchestrator's thin HTTP handlers (parse, call, render); the
//!   only place an error kind becomes an HTTP status.
//! - [`actors`]: the orchestrator's actors and their messages: `Dispatcher`,
//!   `RpcWaiter`, `Election`, `ContainerSupervisor`, `Scaler`; and
//!   `actors::rpc`, the RPC boundary HTTP reaches them through (typed request,
//!   reply slot guard, deadline, the `responseQ` consumer).
//! - [`orchestrator`]: wiring of the orchestrator process.
//! - [`runtime`]: where workers run: local processes or Docker containers.
//! - [`worker`]: the worker process: sync stream, read service, election, write service.
//! - [`broker`]: RabbitMQ queue names, topology, connection and message bodies.
//! - [`coord`]: ZooKeeper layout, worker records and the election rule.
//! - [`db`]: the schema, the typed request model, the only SQL, a worker's
//!   store, and the error kinds requests fail with (on the wire and in the API).
//! - [`rideshare`]: the users and rides microservices, clients of the DBaaS.
//! - [`prometheus`]: the orchestrator's Prometheus metrics.
//! - [`config`]: command-line flags several binaries share.
//! - [`telemetry`]: logging setup shared by the binaries.
//! - [`backoff`]: jitter for the reconnecting loops.
//! - [`shutdown`]: the signals that stop a process gracefully.
//! - [`tasks`]: the orchestrator's supervised long-lived tasks.

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod actors;
pub(crate) mod backoff;
pub mod broker;
pub mod config;
pub(crate) mod coord;
pub mod db;
pub mod http;
pub mod orchestrator;
pub(crate) mod prometheus;
pub mod rideshare;
pub(crate) mod runtime;
pub(crate) mod shutdown;
pub(crate) mod tasks;
pub mod telemetry;
pub mod worker;
