//! Everything that touches SQLite: the schema, the typed request model that
//! validates client requests against it, the only SQL builder, the store each
//! worker keeps its own copy of the data in, and the kinds of error a request
//! can fail with ([`error`], what workers answer and clients match on).

pub mod error;
#[cfg(test)]
mod properties;
pub mod request;
pub mod schema;
pub mod sql;
pub mod store;

pub use error::{Constraint, ErrorKind, Failure};
pub use request::{Consistency, ReadRequest, RequestError, WriteRequest};
pub use store::{
    Commit, DbError, DiskState, LogEntry, ReadOutcome, StatementOutcome, Store, SyncApplied,
    WriteOutcome,
};
