//! Integration tests against real RabbitMQ and ZooKeeper (started by
//! `scripts/test`), each in its own vhost and ZooKeeper chroot.

mod cluster;
mod common;
mod compose;
mod containers;
mod data_path;
mod dead_letters;
mod docs;
mod failover;
mod faults;
mod ha;
mod inputs;
mod linearizability;
mod observability;
mod orchestrators;
mod replication;
mod replies;
mod restarts;
mod rideshare;
mod scaling;
mod security;
mod snapshots;
mod transactions;
