//! What a DBaaS request may say and what it can fail with: the schema, the
//! typed request model that validates client requests against it, and the
//! kinds of error a request can fail with ([`error`], what workers answer and
//! clients match on). The SQL, and the store that runs it, are the `dbaas`
//! crate's (`dbaas::db`), which re-exports these modules beside them.

pub mod error;
pub mod request;
pub mod schema;

pub use error::{Constraint, ErrorKind, Failure};
pub use request::{Consistency, ReadRequest, RequestError, WriteRequest};
