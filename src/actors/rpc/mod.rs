//! The RPC boundary: the one door the HTTP handlers use to reach the actors,
//! and the owner of a request's whole request/reply lifecycle as seen from
//! HTTP. It lives beside the actors it drives because it is their client, not
//! an HTTP concern: [`Dbaas`] is its shape, [`Rpc`] the real thing, and the
//! handlers in `crate::http::db` are tested against a fake.
//!
//! One call: the validated request becomes a typed [`request::Request`] (what
//! it is, where it goes, whether it can be served); a reply [`slot::Slot`] is
//! registered with the `RpcWaiter` (a guard: dropped, it removes the slot, so
//! a client that disconnects mid-wait leaks nothing); the `Dispatcher`
//! publishes; the [`replies`] consumer hands the worker's answer to the
//! `RpcWaiter`, which completes the slot; or the deadline passes and the
//! answer is a timeout (counted in `dbaas_rpc_timeouts_total`). Errors come
//! back typed ([`Failure`]); the HTTP edge alone turns them into statuses.

pub mod replies;
pub mod request;
pub mod slot;

use std::future::Future;
use std::time::Duration;

use actix::{Addr, MailboxError, Recipient};

use super::dispatcher::{Outbound, Publish};
use super::rpc_waiter::RpcWaiter;
use crate::broker::messages::Reply;
use crate::db::{ErrorKind, Failure, ReadOutcome, ReadRequest, WriteOutcome, WriteRequest};
pub use request::{Request, WriteId};
use slot::Slot;

/// What the HTTP handlers ask of the DBaaS. Requests arrive validated; every
/// failure is typed.
pub trait Dbaas: 'static {
    /// A read (only valid reads get here), served by a slave or the master
    /// as its consistency says; counted for the `Scaler` by the `Dispatcher`
    /// once it is known to be servable.
    fn read(
        &self,
        request: ReadRequest,
        request_id: &str,
    ) -> impl Future<Output = Result<ReadOutcome, Failure>>;

    /// A write, applied once under `id` however often it is delivered.
    fn write(
        &self,
        request: WriteRequest,
        id: WriteId,
        request_id: &str,
    ) -> impl Future<Output = Result<WriteOutcome, Failure>>;

    /// Empties every table (a write, through the master).
    fn clear(&self, request_id: &str) -> impl Future<Output = Result<WriteOutcome, Failure>> {
        self.write(
            WriteRequest::Clear { table: None },
            WriteId::fresh(),
            request_id,
        )
    }
}

/// The boundary over the orchestrator's actors.
#[derive(Clone)]
pub struct Rpc {
    dispatcher: Recipient<Publish>,
    waiter: Addr<RpcWaiter>,
    /// How long a request waits for its reply.
    timeout: Duration,
}

impl Rpc {
    pub fn new(dispatcher: Recipient<Publish>, waiter: Addr<RpcWaiter>, timeout: Duration) -> Rpc {
        Rpc {
            dispatcher,
            waiter,
            timeout,
        }
    }

    /// Sends `request` and waits (bounded) for its reply. A timeout says
    /// whether the request may still be applied (writes wait in `writeQ` for a
    /// master).
    async fn call(&self, request: Request, request_id: &str) -> Result<Reply, Failure> {
        let target = request.target();
        let body = request.encode()?;
        let mut slot = Slot::open(&self.waiter);
        let mut publish = std::pin::pin!(self.dispatcher.send(Publish(Outbound {
            target,
            correlation_id: slot.correlation_id().to_string(),
            body,
            expires_after: self.timeout,
            request_id: request_id.to_string(),
        })));
        // The reply can come before the broker's confirm of the request (for a
        // write the confirm waits for RabbitMQ's disk): a reply means a worker
        // took the request, so it is the answer either way.
        let early = tokio::select! {
            published = &mut publish => {
                published_ok(published)?;
                None
            }
            reply = slot.reply() => Some(reply),
        };
        match early {
            Some(Some(reply)) => return Ok(reply),
            // The waiter dropped the slot without a reply.
            Some(None) => {
                published_ok(publish.await)?;
                return Err(Failure::internal("reply channel closed"));
            }
            None => {}
        }
        match tokio::time::timeout(self.timeout, slot.reply()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(Failure::internal("reply channel closed")),
            // The slot's guard removes it from the waiter.
            Err(_) => {
                crate::prometheus::rpc_timeout(target.label());
                Err(Failure::new(
                    ErrorKind::Timeout,
                    target.timeout_message(self.timeout),
                ))
            }
        }
    }
}

fn published_ok(published: Result<Result<(), Failure>, MailboxError>) -> Result<(), Failure> {
    published.map_err(|e| Failure::internal(format!("internal actor unavailable: {e}")))?
}

impl Dbaas for Rpc {
    async fn read(&self, request: ReadRequest, request_id: &str) -> Result<ReadOutcome, Failure> {
        match self.call(Request::Read(request), request_id).await? {
            Reply::Read(outcome) => Ok(outcome),
            Reply::Error(failure) => Err(failure),
            Reply::Write(_) => Err(Failure::internal("a read got a write's reply")),
        }
    }

    async fn write(
        &self,
        request: WriteRequest,
        id: WriteId,
        request_id: &str,
    ) -> Result<WriteOutcome, Failure> {
        match self.call(Request::Write(id, request), request_id).await? {
            Reply::Write(outcome) => Ok(outcome),
            Reply::Error(failure) => Err(failure),
            Reply::Read(_) => Err(Failure::internal("a write got a read's reply")),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix::prelude::*;

    use super::*;
    use crate::actors::dispatcher::tests::{Counted, ReadCounter, Recording};
    use crate::actors::dispatcher::{Dispatcher, Routes};
    use crate::actors::rpc::request::MIN_SEQ_MARGIN;
    use crate::actors::rpc_waiter::{Delivered, Pending};
    use crate::db::request::parse;

    struct Harness {
        rpc: Rpc,
        waiter: Addr<RpcWaiter>,
        dispatcher: Addr<Dispatcher<Recording>>,
        publisher: Recording,
        /// The Scaler's stand-in.
        scaler: Addr<ReadCounter>,
    }

    impl Harness {
        /// The reads the Scaler has been told of so far.
        async fn counted(&self) -> usize {
            self.scaler.send(Counted).await.expect("send")
        }
    }

    fn harness(publisher: Recording, timeout: Duration) -> Harness {
        let waiter = RpcWaiter::default().start();
        let scaler = ReadCounter::default().start();
        let dispatcher = Dispatcher::new(Some(publisher.clone()))
            .counting_reads(scaler.clone().recipient())
            .start();
        Harness {
            rpc: Rpc::new(dispatcher.clone().recipient(), waiter.clone(), timeout),
            waiter,
            dispatcher,
            publisher,
            scaler,
        }
    }

    fn read_request() -> ReadRequest {
        parse(br#"{"table":"users"}"#).expect("valid")
    }

    async fn pending(waiter: &Addr<RpcWaiter>) -> usize {
        waiter.send(Pending).await.expect("send")
    }

    /// The correlation id of the one request published so far.
    fn published_id(publisher: &Recording) -> String {
        let sent = publisher.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent[0]
            .split_once(' ')
            .map(|(_, id)| id.to_string())
            .unwrap_or_default()
    }

    #[actix_rt::test]
    async fn a_client_that_goes_away_mid_wait_leaves_no_slot_behind() {
        let h = harness(Recording::default(), Duration::from_secs(60));
        // The handler's future, dropped (its client disconnected) while the
        // request waits for a reply that never comes.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(100),
            h.rpc.read(read_request(), "r-1"),
        )
        .await;
        assert!(abandoned.is_err(), "still waiting when dropped");
        assert_eq!(h.publisher.sent().len(), 1, "it was published");
        // The `Forget` is in the waiter's mailbox before this `Pending`.
        assert_eq!(pending(&h.waiter).await, 0);
    }

    #[actix_rt::test]
    async fn a_reply_answers_the_call_and_releases_the_slot() {
        let h = harness(Recording::default(), Duration::from_secs(60));
        let rpc = h.rpc.clone();
        let call = actix_rt::spawn(async move {
            rpc.write(WriteRequest::Clear { table: None }, WriteId::fresh(), "r")
                .await
        });
        while h.publisher.sent().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pending(&h.waiter).await, 1);
        let outcome = WriteOutcome {
            seq: 7,
            rows_affected: 1,
            last_insert_id: None,
            statements: Vec::new(),
        };
        h.waiter.do_send(Delivered {
            correlation_id: published_id(&h.publisher),
            reply: Reply::Write(outcome.clone()),
        });
        assert_eq!(call.await.expect("joined"), Ok(outcome));
        assert_eq!(pending(&h.waiter).await, 0);
    }

    #[actix_rt::test]
    async fn a_workers_typed_error_is_the_answer() {
        let h = harness(Recording::default(), Duration::from_secs(60));
        let rpc = h.rpc.clone();
        let call = actix_rt::spawn(async move { rpc.read(read_request(), "r").await });
        while h.publisher.sent().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let behind = Failure::unavailable("replica behind");
        h.waiter.do_send(Delivered {
            correlation_id: published_id(&h.publisher),
            reply: Reply::Error(behind.clone()),
        });
        assert_eq!(call.await.expect("joined"), Err(behind));
        assert_eq!(h.counted().await, 1, "the read was counted");
    }

    #[actix_rt::test]
    async fn a_write_nobody_answers_times_out_saying_it_is_queued() {
        let h = harness(Recording::default(), Duration::from_millis(50));
        let failed = h
            .rpc
            .write(WriteRequest::Clear { table: None }, WriteId::fresh(), "r")
            .await
            .expect_err("no worker");
        assert_eq!(failed.kind, ErrorKind::Timeout);
        assert!(
            failed.message.contains("queued in writeQ"),
            "{}",
            failed.message
        );
        let failed = h
            .rpc
            .read(read_request(), "r")
            .await
            .expect_err("no worker");
        assert_eq!(failed.kind, ErrorKind::Timeout);
        assert!(
            failed.message.starts_with("no worker answered within"),
            "{}",
            failed.message
        );
        assert_eq!(pending(&h.waiter).await, 0);
    }

    #[actix_rt::test]
    async fn refused_and_failed_publishes_leave_nothing_waiting() {
        let h = harness(
            Recording {
                fail: true,
                ..Recording::default()
            },
            Duration::from_secs(60),
        );
        let failed = h
            .rpc
            .write(WriteRequest::Clear { table: None }, WriteId::fresh(), "r")
            .await
            .expect_err("broker down");
        assert_eq!(failed.kind, ErrorKind::Unavailable);
        assert_eq!(pending(&h.waiter).await, 0);

        h.dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: true,
                latest_seq: Some(1),
            })
            .await
            .expect("send");
        let far: ReadRequest =
            parse(br#"{"table":"users","min_seq":1000000000000}"#).expect("valid");
        let refused = h.rpc.read(far, "r").await.expect_err("unservable");
        assert_eq!(refused.kind, ErrorKind::BadRequest);
        assert_eq!(pending(&h.waiter).await, 0);
    }

    /// Issue 14: a read refused as unservable (a 400) does not count for
    /// the Scaler; one just within the margin does, once, wherever it ends.
    #[actix_rt::test]
    async fn only_valid_servable_reads_count_for_the_scaler() {
        let h = harness(Recording::default(), Duration::from_millis(50));
        h.dispatcher
            .send(Routes {
                serving_slaves: 1,
                master: true,
                latest_seq: Some(7),
            })
            .await
            .expect("send");
        let at = |min: u64| -> ReadRequest {
            parse(format!(r#"{{"table":"users","min_seq":{min}}}"#).as_bytes()).expect("valid")
        };
        for _ in 0..30 {
            let refused = h
                .rpc
                .read(at(8 + MIN_SEQ_MARGIN), "r")
                .await
                .expect_err("unservable");
            assert_eq!(refused.kind, ErrorKind::BadRequest);
        }
        assert_eq!(h.counted().await, 0, "30 refused reads were counted");
        assert!(h.publisher.sent().is_empty());

        // Servable (nobody answers here: it times out, but it was a read).
        let late = h
            .rpc
            .read(at(7 + MIN_SEQ_MARGIN), "r")
            .await
            .expect_err("no worker");
        assert_eq!(late.kind, ErrorKind::Timeout);
        assert_eq!(h.counted().await, 1);
        assert_eq!(h.publisher.sent().len(), 1);
        // Writes never count.
        let _ = h
            .rpc
            .write(WriteRequest::Clear { table: None }, WriteId::fresh(), "r")
            .await;
        assert_eq!(h.counted().await, 1);
    }
}
