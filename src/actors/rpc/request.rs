//! The typed request the boundary hands the `Dispatcher`: what it is
//! ([`Request`]), and, once encoded, where it goes and whether it can be
//! served ([`Target`] under the [`Routes`] the `Election` reported). No queue
//! name is spelled outside [`Queue`], and no flag says "is this a write".

use std::time::Duration;

use actix::Message;

use crate::broker::messages::{ReadMessage, WriteMessage};
use crate::broker::{MASTER_READ_Q, READ_Q, WRITE_Q};
use crate::db::{Consistency, Failure, ReadRequest, WriteRequest};

/// A validated request for the workers.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Read(ReadRequest),
    Write(WriteId, WriteRequest),
}

/// A write's id, which makes its redelivery (and a client's retry under the
/// same `Idempotency-Key`) harmless: the master applies an id once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteId(String);

impl WriteId {
    /// A write sent once: a fresh id.
    pub fn fresh() -> WriteId {
        WriteId(uuid::Uuid::new_v4().to_string())
    }
    /// The id of every write sent with this client key (already validated by
    /// the HTTP edge); its own namespace, so no fresh id can equal it.
    pub fn keyed(key: &str) -> WriteId {
        WriteId(format!("key:{key}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the `Dispatcher` needs to know of a request to route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A read, with the sequence number it must reflect (if any).
    Read {
        consistency: Consistency,
        min_seq: Option<u64>,
    },
    /// A write: persistent and confirmed; waits durably in `writeQ` for a master.
    Write,
}

/// The queues requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Eventual reads, served round-robin by the slaves.
    Read,
    /// Strong reads, and eventual ones while no slave serves: the master's.
    MasterRead,
    /// Writes, for the master.
    Write,
}

impl Queue {
    pub fn name(self) -> &'static str {
        match self {
            Queue::Read => READ_Q,
            Queue::MasterRead => MASTER_READ_Q,
            Queue::Write => WRITE_Q,
        }
    }
}

/// Who can take requests now, as the `Election` sees it.
#[derive(Message, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Routes {
    /// Slaves serving `readQ`.
    pub serving_slaves: usize,
    /// Whether a master serves `writeQ` and `readQ.master`.
    pub master: bool,
    /// The highest sequence number a worker reported (None: no worker known).
    pub latest_seq: Option<u64>,
}

/// How far beyond the latest reported sequence number a `min_seq` may be:
/// workers report their progress every 500 ms, so a client may legitimately
/// hold a `seq` somewhat newer than the last report, never this much newer.
pub const MIN_SEQ_MARGIN: u64 = 100_000;

impl Request {
    /// Where it goes and whether it can be served.
    pub fn target(&self) -> Target {
        match self {
            Request::Read(r) => Target::Read {
                consistency: r.consistency,
                min_seq: r.min_seq,
            },
            Request::Write(..) => Target::Write,
        }
    }

    /// The body the workers read (`ReadMessage` / `WriteMessage`).
    pub fn encode(self) -> Result<Vec<u8>, Failure> {
        let encoded = match self {
            Request::Read(request) => serde_json::to_vec(&ReadMessage { request }),
            Request::Write(id, request) => serde_json::to_vec(&WriteMessage {
                write_id: id.0,
                request,
            }),
        };
        encoded.map_err(|e| Failure::internal(format!("encoding the request: {e}")))
    }
}

impl Target {
    /// The queue it goes to under `routes`.
    pub fn queue(self, routes: Routes) -> Queue {
        match self {
            Target::Write => Queue::Write,
            Target::Read {
                consistency: Consistency::Strong,
                ..
            } => Queue::MasterRead,
            // The master holds every acknowledged write: it answers while no
            // slave serves; with neither (mid-failover) the next master will.
            Target::Read { .. } if routes.serving_slaves == 0 => Queue::MasterRead,
            Target::Read { .. } => Queue::Read,
        }
    }

    /// Refuses what can never be served: a `min_seq` far beyond any sequence
    /// number a write has been given (rather than parking it on a replica
    /// until its wait runs out). Nothing is refused for lack of a worker: a
    /// request published while nobody serves waits in its queue.
    pub fn servable(self, routes: Routes) -> Result<(), Failure> {
        if let (
            Target::Read {
                min_seq: Some(min), ..
            },
            Some(latest),
        ) = (self, routes.latest_seq)
        {
            if min > latest.saturating_add(MIN_SEQ_MARGIN) {
                return Err(Failure::bad_request(format!(
                    "min_seq {min} is beyond any sequence number a write has been given (latest {latest})"
                )));
            }
        }
        Ok(())
    }

    /// Persistent and confirmed by the broker (writes); reads expire instead.
    pub fn durable(self) -> bool {
        self == Target::Write
    }

    /// Its label in `dbaas_rpc_timeouts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Target::Write => "write",
            Target::Read {
                consistency: Consistency::Strong,
                ..
            } => "strong_read",
            Target::Read { .. } => "read",
        }
    }

    /// What a client is told when no worker answered within `timeout`: a
    /// write is not lost, it waits in `writeQ`.
    pub fn timeout_message(self, timeout: Duration) -> String {
        match self {
            Target::Write => format!("no master answered within {timeout:?}; the write is queued in writeQ and will be applied once, when a master takes it"),
            Target::Read { .. } => format!("no worker answered within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ErrorKind;

    const EVENTUAL: Target = Target::Read {
        consistency: Consistency::Eventual,
        min_seq: None,
    };
    const STRONG: Target = Target::Read {
        consistency: Consistency::Strong,
        min_seq: None,
    };

    fn routes(serving_slaves: usize, master: bool, latest_seq: Option<u64>) -> Routes {
        Routes {
            serving_slaves,
            master,
            latest_seq,
        }
    }

    #[test]
    fn eventual_reads_go_to_the_slaves_only_while_one_serves() {
        for r in [routes(0, false, None), routes(0, true, Some(3))] {
            assert_eq!(EVENTUAL.queue(r), Queue::MasterRead);
            assert_eq!(STRONG.queue(r), Queue::MasterRead);
            assert_eq!(Target::Write.queue(r), Queue::Write);
        }
        let r = routes(2, true, Some(3));
        assert_eq!(EVENTUAL.queue(r), Queue::Read);
        assert_eq!(STRONG.queue(r), Queue::MasterRead);
        assert_eq!(Queue::Read.name(), "readQ");
        assert_eq!(Queue::MasterRead.name(), "readQ.master");
        assert_eq!(Queue::Write.name(), "writeQ");
    }

    #[test]
    fn only_a_min_seq_far_beyond_the_latest_is_unservable() {
        let at = |min| Target::Read {
            consistency: Consistency::Eventual,
            min_seq: Some(min),
        };
        // No worker reported yet: nothing to judge by, the read waits.
        assert!(at(u64::MAX).servable(routes(0, false, None)).is_ok());
        let r = routes(1, true, Some(40));
        assert!(at(40 + MIN_SEQ_MARGIN).servable(r).is_ok());
        let refused = at(41 + MIN_SEQ_MARGIN).servable(r).expect_err("refused");
        assert_eq!(refused.kind, ErrorKind::BadRequest);
        assert!(Target::Write.servable(r).is_ok());
    }

    #[test]
    fn a_request_encodes_to_the_message_the_workers_read() {
        let read: ReadRequest =
            crate::db::request::parse(br#"{"table":"users","min_seq":4}"#).expect("valid");
        let request = Request::Read(read.clone());
        assert_eq!(
            request.target(),
            Target::Read {
                consistency: Consistency::Eventual,
                min_seq: Some(4)
            }
        );
        let body: ReadMessage =
            serde_json::from_slice(&request.encode().expect("encoded")).expect("a ReadMessage");
        assert_eq!(body.request, read);

        let write = WriteRequest::Clear { table: None };
        let request = Request::Write(WriteId::keyed("k1"), write.clone());
        assert!(request.target().durable());
        let body: WriteMessage =
            serde_json::from_slice(&request.encode().expect("encoded")).expect("a WriteMessage");
        assert_eq!((body.write_id.as_str(), body.request), ("key:k1", write));
        assert_ne!(WriteId::fresh(), WriteId::fresh());
    }
}
