//! RideShare DBaaS: a replicated SQLite service behind RabbitMQ, watched by ZooKeeper.
//!
//! # Layout
//! - [`db`]: the schema, the typed request model, the only SQL, and a worker's store.
pub mod db;
