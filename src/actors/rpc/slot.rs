//! A request's reply slot in the `RpcWaiter`, held by a guard: opening it
//! registers the slot, dropping it removes the slot unless the reply came.
//! Every way a waiting request ends (answered, timed out, refused, failed to
//! publish, or its HTTP client gone and the handler's future dropped) releases
//! the slot, so none is left behind by a path someone forgot.

use actix::Addr;
use tokio::sync::oneshot;

use crate::actors::rpc_waiter::{Expect, Forget, RpcWaiter};
use crate::broker::messages::Reply;

pub struct Slot {
    waiter: Addr<RpcWaiter>,
    correlation_id: String,
    reply: oneshot::Receiver<Reply>,
    /// The waiter has let go of the slot (it sent the reply, or dropped the
    /// sender): nothing to remove.
    released: bool,
}

impl Slot {
    /// Registers a slot under a fresh correlation id. Done before the request
    /// is handed to the `Dispatcher`: the reply (which follows the publish)
    /// reaches the waiter's mailbox after this registration, always.
    pub fn open(waiter: &Addr<RpcWaiter>) -> Slot {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, reply) = oneshot::channel();
        waiter.do_send(Expect {
            correlation_id: correlation_id.clone(),
            reply: tx,
        });
        Slot {
            waiter: waiter.clone(),
            correlation_id,
            reply,
            released: false,
        }
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The reply, or None if the waiter dropped the slot without one.
    /// Cancel-safe: dropping this future keeps the slot (and its guard).
    pub async fn reply(&mut self) -> Option<Reply> {
        let reply = (&mut self.reply).await.ok();
        self.released = true;
        reply
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.released {
            // After the `Expect` in the same mailbox: always finds the slot.
            self.waiter.do_send(Forget {
                correlation_id: std::mem::take(&mut self.correlation_id),
            });
        }
    }
}
