//! Everything that touches SQLite: the only SQL builder and the store each
//! worker keeps its own copy of the data in. The schema, the typed request
//! model that validates client requests against it, and the kinds of error a
//! request can fail with ([`error`], what workers answer and clients match on)
//! are the DBaaS's public contract: they live in the `dbaas-api` crate
//! (crates/api), so its clients share them without SQLite, and are
//! re-exported here at their usual paths.

pub use dbaas_api::db::{error, request, schema};
#[cfg(test)]
mod properties;
pub(crate) mod sql;
pub(crate) mod store;

pub use error::{Constraint, ErrorKind, Failure};
pub use request::{Consistency, ReadRequest, RequestError, WriteRequest};
pub use store::{
    Commit, DbError, DiskState, LogEntry, ReadOutcome, StatementOutcome, Store, SyncApplied,
    WriteOutcome,
};
