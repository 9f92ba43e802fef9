//! What a request can fail with, as a kind rather than a status: workers
//! answer with a [`Failure`] on the request's `reply_to`, the orchestrator's
//! RPC boundary returns one, the HTTP edge alone picks the status for each [`ErrorKind`]
//! (`crate::http::error`), and clients of the API match on the kind that the
//! JSON error carries (`{"error": "...", "kind": "constraint", "constraint":
//! "foreign_key"}`) rather than on SQLite's text. Nothing here depends on
//! SQLite (the store, in the `dbaas` crate, classifies its errors and turns
//! them into a [`Failure`]), so API clients can share it.

use serde::{Deserialize, Serialize};

/// Why a request failed, in terms a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A constraint of the schema refused the write ([`Constraint`] says which).
    Constraint,
    /// The request cannot be understood or can never be served as asked.
    BadRequest,
    /// A value the database cannot take (too big, wrong type for the column).
    Invalid,
    /// An `Idempotency-Key` already used for a different request.
    KeyReused,
    /// A write that kept coming back unanswered, set aside in `writeQ.dead`
    /// without being applied.
    Quarantined,
    /// The answer is larger than a reply may carry: ask for less.
    TooLarge,
    /// Out of space: a full disk, or a key the database assigns at its largest value.
    Full,
    /// Not served now, worth retrying: a replica behind the requested
    /// `min_seq`, or the broker unreachable.
    Unavailable,
    /// No worker answered within the request deadline (reported by the
    /// orchestrator, never by a worker).
    Timeout,
    /// A bug or a failure of the database itself.
    Internal,
}

/// Which rule of the schema a [`ErrorKind::Constraint`] failure broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// A UNIQUE or PRIMARY KEY constraint: the row exists already.
    Unique,
    /// A FOREIGN KEY constraint: the row referred to does not exist.
    ForeignKey,
    /// Any other (NOT NULL, CHECK).
    Other,
}

/// A failed request: its kind, the rule for a constraint, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ErrorKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub constraint: Option<Constraint>,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            constraint: None,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(ErrorKind::BadRequest, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(ErrorKind::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_json_with_snake_case_kinds() {
        let mut f = Failure::new(ErrorKind::Constraint, "dup");
        f.constraint = Some(Constraint::ForeignKey);
        assert_eq!(
            serde_json::to_value(&f).expect("ser"),
            serde_json::json!({"kind": "constraint", "constraint": "foreign_key", "message": "dup"})
        );
        assert_eq!(
            serde_json::to_value(Failure::new(ErrorKind::KeyReused, "k")).expect("ser"),
            serde_json::json!({"kind": "key_reused", "message": "k"})
        );
    }
}
