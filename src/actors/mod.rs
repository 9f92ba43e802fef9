//! The orchestrator's actors, each in its own file with the messages it handles:
//! [`dispatcher::Dispatcher`] publishes requests, [`rpc_waiter::RpcWaiter`] matches
//! replies to waiting requests, [`election::Election`] watches ZooKeeper,
//! [`supervisor::ContainerSupervisor`] starts and kills workers, and
//! [`scaler::Scaler`] sizes the slave pool from the read rate. [`rpc`] is not
//! an actor: it is the boundary HTTP calls, which owns a request's lifecycle
//! (typed request, reply slot, deadline) and the consumer of the session's
//! own reply queue.

// The request/reply path is public so that integration/replies.rs drives it
// against a real broker.
pub mod dispatcher;
pub(crate) mod election;
pub mod rpc;
pub mod rpc_waiter;
pub mod scaler;
pub(crate) mod supervisor;
