//! Replies reach the orchestrator that asked (issue 20, item 2). Two RPC
//! clients on one broker, each wired as the orchestrator's broker session
//! wires itself (its own connection, the session's reply queue from
//! `replies::consume`, the `Dispatcher` with the AMQP publisher naming that
//! queue as `reply_to`, an `RpcWaiter` fed by `Replies::feed`, the `Rpc`
//! boundary), send reads and writes at the same time to one responder that
//! answers `reply_to` with the workers' own `broker::reply`: each gets every
//! one of its replies, and not one of the other's reaches it. A session's
//! reply queue is refused to any other connection, is gone with its own, and
//! a reply sent to it afterwards is dropped without harming the responder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::{stream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Map, Value};

use dbaas::actors::dispatcher::{AmqpPublisher, Dispatcher};
use dbaas::actors::rpc::{replies, Dbaas, Rpc, WriteId};
use dbaas::actors::rpc_waiter::{Pending, RpcWaiter, Unmatched};
use dbaas::broker::messages::Reply;
use dbaas::broker::{self, MASTER_READ_Q, WRITE_Q};
use dbaas::db::request::parse;
use dbaas::db::{ReadOutcome, ReadRequest, WriteOutcome, WriteRequest};

use crate::common::{namespace, wait_until};

/// One RPC client, built as `orchestrator::serve_broker` builds a session.
struct Client {
    conn: lapin::Connection,
    rpc: Rpc,
    waiter: Addr<RpcWaiter>,
    reply_queue: String,
}

async fn client(url: &str, name: &str) -> Client {
    let conn = broker::open(url, name, Duration::from_secs(20))
        .await
        .expect("connect");
    let replies = replies::consume(&conn).await.expect("reply queue");
    let reply_queue = replies.queue().to_string();
    let publisher = AmqpPublisher {
        reads: conn.create_channel().await.expect("channel"),
        writes: broker::confirmed_channel(&conn).await.expect("channel"),
        reply_to: reply_queue.clone(),
        refused: Arc::new(tokio::sync::Notify::new()),
    };
    let waiter = RpcWaiter::default().start();
    let dispatcher = Dispatcher::new(Some(publisher)).start();
    let fed = waiter.clone();
    actix::spawn(async move {
        let why = replies.feed(&fed).await;
        eprintln!("reply consumer ended: {why}");
    });
    let rpc = Rpc::new(
        dispatcher.recipient(),
        waiter.clone(),
        Duration::from_secs(10),
    );
    Client {
        conn,
        rpc,
        waiter,
        reply_queue,
    }
}

/// What the responder answers to the request with this request id: a read
/// gets one row naming it, a write the sequence number `k * 1 000 000 + i`
/// for the id `c<k>-write-<i>`.
fn answer(queue: &str, request_id: &str) -> Reply {
    if queue == WRITE_Q {
        let mut parts = request_id.split('-');
        let k = parts.next().and_then(|c| c.strip_prefix('c'));
        let i = parts.nth(1);
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Reply::Write(WriteOutcome {
            seq: number(k) * 1_000_000 + number(i),
            rows_affected: 0,
            last_insert_id: None,
            statements: Vec::new(),
        })
    } else {
        let mut row = Map::new();
        row.insert("request_id".into(), json!(request_id));
        Reply::Read(ReadOutcome {
            rows: vec![row],
            seq: 0,
            worker: Some(4242),
            more: false,
        })
    }
}

/// Serves `readQ.master` (where reads go while no slave serves) and
/// `writeQ`, answering each request at its `reply_to` as a worker does.
struct Responder {
    _conn: lapin::Connection,
    /// The channel its replies go out on.
    channel: lapin::Channel,
    answered: Arc<AtomicUsize>,
}

async fn responder(url: &str) -> Responder {
    let conn = broker::open(url, "responder", Duration::from_secs(20))
        .await
        .expect("connect");
    let requests = broker::consumer_channel(&conn, 64).await.expect("channel");
    let channel = conn.create_channel().await.expect("channel");
    let mut consumers = Vec::new();
    for queue in [MASTER_READ_Q, WRITE_Q] {
        let consumer = requests
            .basic_consume(
                queue.into(),
                format!("responder-{queue}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        consumers.push(consumer);
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let (replies, count) = (channel.clone(), answered.clone());
    actix::spawn(async move {
        let mut deliveries = stream::select_all(consumers);
        while let Some(Ok(d)) = deliveries.next().await {
            let id = broker::request_id(&d.properties).unwrap_or_default();
            let reply = answer(d.routing_key.as_str(), &id);
            // Counted before the reply goes, so the count is complete by the
            // time the last reply has arrived.
            count.fetch_add(1, Ordering::Relaxed);
            broker::reply(&replies, &d.properties, &reply)
                .await
                .expect("reply");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    });
    Responder {
        _conn: conn,
        channel,
        answered,
    }
}

fn any_read() -> ReadRequest {
    parse(br#"{"table":"users"}"#).expect("valid")
}

/// `n` reads and `n` writes from client number `k`, 16 at a time; each
/// answer checked to be the one for its own request.
async fn round_trips(c: &Client, k: u64, n: u64) -> usize {
    let answered = stream::iter(0..n)
        .map(|i| async move {
            let read_id = format!("c{k}-read-{i}");
            let read = c
                .rpc
                .read(any_read(), &read_id)
                .await
                .expect("read answered");
            assert_eq!(read.rows.len(), 1);
            assert_eq!(read.rows[0]["request_id"], Value::from(read_id));
            let write_id = format!("c{k}-write-{i}");
            let write = c
                .rpc
                .write(
                    WriteRequest::Clear { table: None },
                    WriteId::fresh(),
                    &write_id,
                )
                .await
                .expect("write answered");
            assert_eq!(write.seq, k * 1_000_000 + i, "{write_id}");
            2
        })
        .buffer_unordered(16)
        .collect::<Vec<usize>>()
        .await;
    answered.into_iter().sum()
}

#[actix_rt::test]
async fn two_orchestrators_on_one_broker_each_get_all_their_own_replies_and_none_of_the_others() {
    let ns = namespace("replies-two").await;
    let responder = responder(&ns.amqp_url).await;
    let a = client(&ns.amqp_url, "client-a").await;
    let b = client(&ns.amqp_url, "client-b").await;
    assert_ne!(a.reply_queue, b.reply_queue);
    assert!(a.reply_queue.starts_with(replies::REPLY_Q_PREFIX));

    const N: u64 = 150;
    let (from_a, from_b) = tokio::join!(round_trips(&a, 1, N), round_trips(&b, 2, N));
    assert_eq!((from_a, from_b), (2 * N as usize, 2 * N as usize));
    assert_eq!(responder.answered.load(Ordering::Relaxed), 4 * N as usize);
    for (name, c) in [("a", &a), ("b", &b)] {
        // Every reply that reached this client was for one of its requests.
        assert_eq!(c.waiter.send(Unmatched).await.expect("send"), 0, "{name}");
        assert_eq!(c.waiter.send(Pending).await.expect("send"), 0, "{name}");
    }
}

/// The AMQP reply code of a channel error, if it is one.
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

#[actix_rt::test]
async fn a_reply_queue_is_its_sessions_alone_and_goes_with_it() {
    let ns = namespace("replies-own").await;
    let responder = responder(&ns.amqp_url).await;
    let a = client(&ns.amqp_url, "client-a").await;
    let other = broker::open(&ns.amqp_url, "intruder", Duration::from_secs(20))
        .await
        .expect("connect");

    // Another connection may not consume it (405 RESOURCE_LOCKED).
    let intruder = other.create_channel().await.expect("channel");
    let refused = intruder
        .basic_consume(
            a.reply_queue.as_str().into(),
            "intruder".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a second consumer is refused");
    assert_eq!(amqp_code(&refused), Some(405), "{refused}");
    // Nor a second consumer on its own connection (the consumer is exclusive).
    let twice = a
        .conn
        .create_channel()
        .await
        .expect("channel")
        .basic_consume(
            a.reply_queue.as_str().into(),
            "second".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a second consumer is refused");
    assert_eq!(amqp_code(&twice), Some(403), "{twice}");
    // The session goes on being answered.
    assert_eq!(round_trips(&a, 1, 5).await, 10);

    // Its connection closes: the broker deletes the queue (404 from then on).
    let gone_queue = a.reply_queue.clone();
    a.conn
        .close(200, "session over".into())
        .await
        .expect("close");
    let gone = wait_until("the reply queue deleted", Duration::from_secs(10), || {
        let (other, q) = (&other, gone_queue.clone());
        async move {
            let ch = other.create_channel().await.ok()?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match ch
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await
            {
                Err(e) if amqp_code(&e) == Some(404) => Some(()),
                _ => None,
            }
        }
    })
    .await;
    assert!(gone.is_some(), "{gone_queue} outlived its connection");

    // A reply to it now (a late worker, a write retried from writeQ.dead) is
    // dropped by the broker, and the responder goes on serving others.
    let late = lapin::BasicProperties::default()
        .with_reply_to(gone_queue.as_str().into())
        .with_correlation_id("late".into());
    broker::reply(&responder.channel, &late, &answer(WRITE_Q, "c1-write-1"))
        .await
        .expect("a reply to a gone queue is no error");
    let b = client(&ns.amqp_url, "client-b").await;
    assert_eq!(round_trips(&b, 2, 5).await, 10);
    assert_eq!(b.waiter.send(Unmatched).await.expect("send"), 0);
}
