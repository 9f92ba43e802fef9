//! The master's rule for poison writes (issue 14): a write that keeps coming
//! back from `writeQ` unanswered is quarantined in `writeQ.dead` instead of
//! being applied again.
//!
//! `writeQ` is a quorum queue, so each delivery says how many earlier
//! deliveries of it came back unacknowledged ([`dead::delivery_count`]): the
//! master that had it crashed, lost its connection or was deposed. With the
//! limit `L` (`DBAAS_WRITE_DELIVERY_LIMIT`, default 5):
//!
//! - count ≥ `L`: [`Verdict::Quarantine`]. `L` masters had it and none
//!   answered: it is not applied; it is published (confirmed) to `writeQ.dead`
//!   with why and when, its client gets a 422 saying so, and it is acked. So a
//!   write is tried at most `L` times.
//! - count ≥ [`SUSPECT_AFTER`] (2): [`Verdict::Suspect`]. It is applied, but
//!   alone: the master takes suspects one at a time (prefetch 1) so that when
//!   one kills it, nothing else it holds comes back with it. Writes that were
//!   only in flight when a master died (or in the batch of a poison write)
//!   come back once or twice; they are never near the limit.
//! - otherwise [`Verdict::Apply`], in the usual batches.
//!
//! The queue's own `x-delivery-limit` (`L` + 1) is the backstop: a write that
//! kills the master before it is even inspected is dead-lettered by the broker.

use lapin::options::BasicPublishOptions;
use lapin::{Channel, PublisherConfirm};

use crate::broker::dead::{self, DEAD_WRITE_Q};
use crate::broker::messages::Reply;
use crate::db::{ErrorKind, Failure};

/// From this many unanswered deliveries on, a write is a suspect.
pub const SUSPECT_AFTER: u64 = 2;

/// What the master does with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it, batched with others.
    Apply,
    /// Apply it, alone (it may be what killed earlier masters).
    Suspect,
    /// Do not apply it: to `writeQ.dead`.
    Quarantine,
}

/// The verdict on a delivery that came back `count` times, under `limit`.
pub fn verdict(count: u64, limit: u64) -> Verdict {
    if count >= limit {
        Verdict::Quarantine
    } else if count >= SUSPECT_AFTER {
        Verdict::Suspect
    } else {
        Verdict::Apply
    }
}

/// The reason recorded with a write quarantined after `count` unanswered deliveries.
pub fn reason(count: u64) -> String {
    format!(
        "delivered {count} times before, never answered: each master that took it crashed, lost its connection or was replaced"
    )
}

/// The client's answer for a quarantined write.
pub fn refusal(write_id: Option<&str>, count: u64) -> Reply {
    let id = write_id.map_or(String::new(), |id| format!(" {id}"));
    Reply::Error(Failure::new(
        ErrorKind::Quarantined,
        format!(
            "write{id} quarantined after {} deliveries: {} times a master took it and never answered, so it was not applied again; it waits in writeQ.dead (dbaasctl dead list, dbaasctl dead retry)",
            count + 1,
            count
        ),
    ))
}

/// Publishes `delivery` to `writeQ.dead` on `channel` (a confirmed channel)
/// with the quarantine headers; the caller waits for the confirm before the
/// delivery is acked.
pub async fn publish(
    channel: &Channel,
    delivery: &lapin::message::Delivery,
    count: u64,
    pid: u32,
) -> lapin::Result<PublisherConfirm> {
    let headers = dead::quarantine_headers(&delivery.properties, &reason(count), count + 1, pid);
    let props = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            DEAD_WRITE_Q.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            props,
        )
        .await?;
    Ok(confirm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_tried_limit_times_then_quarantined() {
        let limit = 5;
        let verdicts: Vec<Verdict> = (0..7).map(|count| verdict(count, limit)).collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::Apply,
                Verdict::Apply,
                Verdict::Suspect,
                Verdict::Suspect,
                Verdict::Suspect,
                Verdict::Quarantine,
                Verdict::Quarantine,
            ]
        );
        // The smallest limit still leaves room for writes that only came back
        // because a master died holding them.
        let min = dead::MIN_WRITE_DELIVERY_LIMIT;
        assert_eq!(verdict(SUSPECT_AFTER, min), Verdict::Suspect);
        assert_eq!(verdict(min, min), Verdict::Quarantine);
    }

    #[test]
    fn the_client_is_told_why_and_what_to_do() {
        match refusal(Some("key:abc"), 5) {
            Reply::Error(Failure {
                kind,
                message: error,
                ..
            }) => {
                assert_eq!(kind, ErrorKind::Quarantined);
                assert!(error.contains("key:abc"), "{error}");
                assert!(error.contains("quarantined after 6 deliveries"), "{error}");
                assert!(error.contains("writeQ.dead"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
