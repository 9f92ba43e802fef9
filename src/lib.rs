//! RideShare DBaaS: a replicated SQLite service behind RabbitMQ, watched by ZooKeeper.
//!
//! # Layout
//! - [`broker`]: RabbitMQ queue names, topology, connection and message bodies.
//! - [`coord`]: ZooKeeper layout, worker records and the election rule.
//! - [`db`]: the schema, the typed request model, the only SQL, and a worker's store.
//! - [`worker`]: the worker process: sync stream, read service, election, write service.
pub mod actors;
pub mod broker;
pub mod coord;
pub mod db;
pub mod http;
pub mod orchestrator;
pub mod runtime;
pub mod telemetry;
pub mod worker;
