//! The bodies that travel on the queues, as JSON. Requests carry the typed
//! request model; replies carry either an outcome or an error with its HTTP status.

use serde::{Deserialize, Serialize};

use crate::db::{DbError, LogEntry, ReadOutcome, ReadRequest, WriteOutcome, WriteRequest};

/// A write on `writeQ`: the orchestrator's id for it makes redelivery harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMessage {
    pub write_id: String,
    pub request: WriteRequest,
}

/// A read on `readQ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMessage {
    pub request: ReadRequest,
}

/// What flows on `syncQ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncMessage {
    /// A committed write, in sequence order.
    Entry(LogEntry),
    /// A newly elected master's marker: everything before it in the stream came
    /// from earlier masters; once the new master has read up to its own barrier it
    /// has applied all of them and may start taking writes.
    Barrier { epoch: u64, pid: u32, nonce: String },
    /// A joining replica's marker: once it reads its own marker back it has
    /// applied everything published before it joined, and may serve reads.
    Marker { pid: u32, nonce: String },
}

/// An error a worker reports for a request, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub status: u16,
    pub error: String,
}

impl ErrorReply {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ErrorReply {
            status: 400,
            error: msg.into(),
        }
    }
}

impl From<DbError> for ErrorReply {
    fn from(e: DbError) -> Self {
        let status = match e.cause() {
            DbError::Constraint(_) => 409,
            DbError::Invalid(_) | DbError::KeyReused(_) => 422,
            DbError::Full(_) => 507,
            DbError::Internal(_) | DbError::Statement { .. } => 500,
        };
        ErrorReply {
            status,
            error: e.to_string(),
        }
    }
}

/// A worker's answer on `responseQ`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Read(ReadOutcome),
    Write(WriteOutcome),
    Error(ErrorReply),
}

impl Reply {
    pub fn from_read(r: Result<ReadOutcome, DbError>) -> Reply {
        r.map_or_else(|e| Reply::Error(e.into()), Reply::Read)
    }
    pub fn from_write(r: Result<WriteOutcome, DbError>) -> Reply {
        r.map_or_else(|e| Reply::Error(e.into()), Reply::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_map_to_their_status() {
        let e: ErrorReply = DbError::Constraint("UNIQUE".into()).into();
        assert_eq!(e.status, 409);
        let e: ErrorReply = DbError::Internal("disk".into()).into();
        assert_eq!(e.status, 500);
        let e: ErrorReply = DbError::Full("database or disk is full".into()).into();
        assert_eq!(e.status, 507);
        assert!(e.error.starts_with("out of space"), "{}", e.error);
        let e: ErrorReply = DbError::Invalid("string or blob too big".into()).into();
        assert_eq!(e.status, 422);
        let e: ErrorReply = DbError::KeyReused("used".into()).into();
        assert_eq!(e.status, 422);
        // A transaction's failure has its failing statement's status and index.
        let e: ErrorReply = DbError::Statement {
            index: 2,
            statement: "insert into users".into(),
            cause: Box::new(DbError::Constraint("UNIQUE".into())),
        }
        .into();
        assert_eq!(e.status, 409);
        assert!(
            e.error
                .starts_with("statement 2 of the transaction (insert into users) failed"),
            "{}",
            e.error
        );
        let e: ErrorReply = DbError::Statement {
            index: 0,
            statement: "insert into rides".into(),
            cause: Box::new(DbError::Full("database or disk is full".into())),
        }
        .into();
        assert_eq!(e.status, 507);
    }

    #[test]
    fn sync_messages_are_tagged() {
        let b = SyncMessage::Barrier {
            epoch: 2,
            pid: 10,
            nonce: "n".into(),
        };
        let json = serde_json::to_value(&b).expect("ser");
        assert_eq!(json["kind"], "barrier");
        let back: SyncMessage = serde_json::from_value(json).expect("de");
        assert_eq!(back, b);
    }
}
