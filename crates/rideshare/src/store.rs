//! What the users and rides handlers need from outside their process, as two
//! small traits: [`Store`], the DBaaS's data calls, and [`UserDirectory`], the
//! rides service's user check. The services run on the real ones
//! ([`DbaasClient`], [`UsersApi`]); the handlers' unit tests run on the
//! in-memory fakes of [`fake`], so a status code, a 405 or a validation
//! failure is checked in milliseconds without brokers, the way rqlite tests
//! its HTTP layer against a mock store.
//!
//! The traits name what the handlers do (read, count, write, transaction),
//! not how the client does it: retries, `min_seq` and idempotency keys stay
//! the client's business.

use std::future::Future;

use serde_json::Value as Json;

use super::dbaas_client::{DbError, DbaasClient, Read, Row, Write, WriteOutcome};
use super::error::ApiError;
use super::rides::UsersApi;

#[cfg(test)]
pub mod fake;

/// The DBaaS as the handlers use it. The futures need not be `Send`: actix
/// runs each handler on its worker's thread.
pub trait Store: 'static {
    /// All rows matching `q` (every page).
    fn read(&self, q: Read) -> impl Future<Output = Result<Vec<Row>, DbError>>;

    /// The number of rows matching `q`.
    fn count(&self, q: Read) -> impl Future<Output = Result<u64, DbError>>;

    /// Applies `w` once.
    fn write(&self, w: Write) -> impl Future<Output = Result<WriteOutcome, DbError>>;

    /// Applies all of `writes` or none, as one write.
    fn transaction(
        &self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<WriteOutcome, DbError>>;

    /// Inserts one row (an object) or several (an array of objects).
    fn insert(
        &self,
        table: &str,
        values: Json,
    ) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        self.write(Write::insert(table, values))
    }

    /// Deletes the rows matching `filter`.
    fn delete(
        &self,
        table: &str,
        filter: Json,
    ) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        self.write(Write::delete(table, filter))
    }

    /// Deletes every row of `table`.
    fn clear(&self, table: &str) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        self.write(Write::clear(table))
    }
}

impl Store for DbaasClient {
    fn read(&self, q: Read) -> impl Future<Output = Result<Vec<Row>, DbError>> {
        DbaasClient::read(self, q)
    }

    fn count(&self, q: Read) -> impl Future<Output = Result<u64, DbError>> {
        DbaasClient::count(self, q)
    }

    fn write(&self, w: Write) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        DbaasClient::write(self, w)
    }

    fn transaction(
        &self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<WriteOutcome, DbError>> {
        DbaasClient::transaction(self, writes)
    }
}

/// Whether a user exists, as the rides service asks the users service.
pub trait UserDirectory: 'static {
    /// True when `username` is a user; an error (a 503) when that cannot be told.
    fn exists(&self, username: &str) -> impl Future<Output = Result<bool, ApiError>>;
}

impl UserDirectory for UsersApi {
    fn exists(&self, username: &str) -> impl Future<Output = Result<bool, ApiError>> {
        UsersApi::exists(self, username)
    }
}
