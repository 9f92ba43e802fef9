//! The bodies that travel on the queues, as JSON. Requests carry the typed
//! request model; replies carry either an outcome or a typed error
//! ([`Failure`]: a kind and a message, no HTTP status).

use serde::{Deserialize, Serialize};

use crate::db::{DbError, Failure, LogEntry, ReadOutcome, ReadRequest, WriteOutcome, WriteRequest};

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

/// A worker's answer on the request's `reply_to` queue. An error is a typed
/// [`Failure`] (its kind, not an HTTP status: the orchestrator's HTTP edge
/// picks that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Read(ReadOutcome),
    Write(WriteOutcome),
    Error(#[serde(deserialize_with = "legacy::failure")] Failure),
}

impl Reply {
    pub fn from_read(r: Result<ReadOutcome, DbError>) -> Reply {
        r.map_or_else(|e| Reply::Error(e.into()), Reply::Read)
    }
}

/// Rolling upgrades: a worker of an earlier release answers errors as
/// `{"status": 409, "error": "..."}`; the orchestrator reads that too, as the
/// kind the status stood for (the HTTP status the client gets is the same).
mod legacy {
    use serde::{Deserialize, Deserializer};

    use crate::db::{ErrorKind, Failure};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Typed(Failure),
        Status { status: u16, error: String },
    }

    pub fn failure<'de, D: Deserializer<'de>>(d: D) -> Result<Failure, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::Typed(f) => f,
            Either::Status { status, error } => Failure::new(kind_of(status), error),
        })
    }

    fn kind_of(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::BadRequest,
            409 => ErrorKind::Constraint,
            413 => ErrorKind::TooLarge,
            422 => ErrorKind::Invalid,
            503 => ErrorKind::Unavailable,
            504 => ErrorKind::Timeout,
            507 => ErrorKind::Full,
            _ => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Constraint, ErrorKind};

    #[test]
    fn error_replies_are_typed_on_the_wire() {
        let reply = Reply::from_read(Err(DbError::Constraint(
            Constraint::Unique,
            "UNIQUE constraint failed: users.username".into(),
        )));
        let json = serde_json::to_value(&reply).expect("ser");
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "kind": "constraint",
                "constraint": "unique",
                "message": "constraint violated: UNIQUE constraint failed: users.username"
            }})
        );
        assert_eq!(serde_json::from_value::<Reply>(json).expect("de"), reply);
    }

    #[test]
    fn an_older_workers_status_reply_is_read_as_its_kind() {
        let cases = [
            (400, ErrorKind::BadRequest),
            (409, ErrorKind::Constraint),
            (413, ErrorKind::TooLarge),
            (422, ErrorKind::Invalid),
            (503, ErrorKind::Unavailable),
            (507, ErrorKind::Full),
            (500, ErrorKind::Internal),
        ];
        for (status, kind) in cases {
            let old = format!(r#"{{"error": {{"status": {status}, "error": "why"}}}}"#);
            match serde_json::from_str::<Reply>(&old).expect("an old reply") {
                Reply::Error(f) => {
                    assert_eq!(
                        (f.kind, f.constraint, f.message.as_str()),
                        (kind, None, "why")
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(serde_json::from_str::<Reply>(r#"{"error": {"nothing": 1}}"#).is_err());
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
