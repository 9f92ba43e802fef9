//! Which orchestrator leads. Every orchestrator serves HTTP; exactly one (the
//! leader) runs the `ContainerSupervisor` and the `Scaler`'s decisions. This
//! module owns the znodes of that election and the leader's fence:
//!
//! ```text
//! /dbaas/orchestrators/<id>  ephemeral, one per live orchestrator: OrchestratorInfo
//!                            (its HTTP address and its cumulative count of reads)
//! /dbaas/leader              ephemeral, held by the leader: LeaderInfo (id, address, epoch)
//! /dbaas/leader_epoch        persistent counter, bumped by each new leader in the
//!                            same transaction that creates /dbaas/leader
//! /dbaas/scale               persistent: the slaves the last leader wanted
//! ```
//!
//! A leader holds office only while its session is connected: on a lost
//! connection it steps down at once (it cannot know whether its session
//! outlives the partition), and every action on workers is first checked
//! against ZooKeeper ([`Fence::holds`]: `/dbaas/leader` still carries this
//! epoch and belongs to this session), the same epoch idea as the workers'
//! master fence. The [`campaign`] task tells the actors what this orchestrator
//! is ([`Standing`]); [`share_reads`] publishes this orchestrator's read count
//! and, on the leader, hands the Scaler what the others counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};
use zookeeper_client as zk;

use super::session::Session;
use crate::tasks::Round;

pub const ORCHESTRATORS: &str = "/dbaas/orchestrators";
pub const LEADER: &str = "/dbaas/leader";
pub const LEADER_EPOCH: &str = "/dbaas/leader_epoch";
pub const SCALE: &str = "/dbaas/scale";

pub fn member_path(id: &str) -> String {
    format!("{ORCHESTRATORS}/{id}")
}

/// Who this orchestrator is, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorInfo {
    pub id: String,
    /// Base URL of its HTTP API (`http://host:port`).
    pub http: String,
    pub started_at_ms: i64,
    /// `db/read` requests it has counted since it started (never reset).
    pub reads: u64,
}

/// The leader znode's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    pub http: String,
    pub epoch: u64,
}

/// What this orchestrator is now (also the message that tells the actors).
#[derive(actix::Message, Debug, Clone, PartialEq, Eq, Serialize)]
#[rtype(result = "()")]
#[serde(tag = "standing", rename_all = "lowercase")]
pub enum Standing {
    /// It holds `/dbaas/leader` with this epoch; `slaves` is what the previous
    /// leader last wanted (None: never recorded).
    Leading { epoch: u64, slaves: Option<usize> },
    /// Another orchestrator leads (None: nobody, or not known: no session).
    Following { leader: Option<LeaderInfo> },
}

impl Standing {
    pub fn leading(&self) -> Option<u64> {
        match self {
            Standing::Leading { epoch, .. } => Some(*epoch),
            Standing::Following { .. } => None,
        }
    }
}

/// Checks, before every action on workers, that an epoch still leads; and
/// records the leader's scaling decisions under the same condition.
pub trait Fence: Send + Sync + 'static {
    fn holds(&self, epoch: u64) -> BoxFuture<'static, bool>;
    fn record_slaves(&self, epoch: u64, slaves: usize) -> BoxFuture<'static, ()>;
}

/// The [`Fence`] kept in ZooKeeper.
pub struct ZkFence(pub Session);

impl ZkFence {
    /// The leader znode's version if `epoch` holds it in this session.
    async fn held(session: &Session, epoch: u64) -> Result<Option<i32>, zk::Error> {
        let client = session.client()?;
        match client.get_data(LEADER).await {
            Ok((data, stat)) => {
                let ours = stat.ephemeral_owner == client.session_id().0
                    && serde_json::from_slice::<LeaderInfo>(&data).is_ok_and(|l| l.epoch == epoch);
                Ok(ours.then_some(stat.version))
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Fence for ZkFence {
    fn holds(&self, epoch: u64) -> BoxFuture<'static, bool> {
        let session = self.0.clone();
        Box::pin(async move {
            let check = tokio::time::timeout(Duration::from_secs(5), Self::held(&session, epoch));
            match check.await {
                Ok(Ok(held)) => held.is_some(),
                Ok(Err(e)) => {
                    warn!(epoch, error = %e, "fence: cannot check the leadership; not acting");
                    false
                }
                Err(_) => {
                    warn!(epoch, "fence: ZooKeeper did not answer; not acting");
                    false
                }
            }
        })
    }

    fn record_slaves(&self, epoch: u64, slaves: usize) -> BoxFuture<'static, ()> {
        let session = self.0.clone();
        Box::pin(async move {
            let write = async {
                let Some(version) = Self::held(&session, epoch).await? else {
                    return Ok(false);
                };
                let client = session.client()?;
                let mut multi = client.new_multi_writer();
                multi.add_check_version(LEADER, version)?;
                multi.add_set_data(SCALE, slaves.to_string().as_bytes(), None)?;
                multi.commit().await.map_err(zk::Error::from)?;
                Ok::<bool, zk::Error>(true)
            };
            match tokio::time::timeout(Duration::from_secs(5), write).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => info!(epoch, slaves, "not recording slaves: no longer leading"),
                Ok(Err(e)) => {
                    warn!(epoch, slaves, error = %e, "recording the slaves wanted failed")
                }
                Err(_) => warn!(epoch, slaves, "recording the slaves wanted timed out"),
            }
        })
    }
}

/// The slaves the last leader wanted, if recorded.
async fn recorded_slaves(client: &zk::Client) -> Result<Option<usize>, zk::Error> {
    match client.get_data(SCALE).await {
        Ok((data, _)) => Ok(std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.trim().parse().ok())),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bumps the epoch and creates the leader znode in one transaction; the epoch
/// won, or None if another orchestrator leads.
async fn try_lead(client: &zk::Client, me: &OrchestratorInfo) -> Result<Option<u64>, zk::Error> {
    let (data, stat) = client.get_data(LEADER_EPOCH).await?;
    let epoch = std::str::from_utf8(&data)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let record = LeaderInfo {
        id: me.id.clone(),
        http: me.http.clone(),
        epoch,
    };
    let record = serde_json::to_vec(&record).map_err(|_| zk::Error::MarshallingError)?;
    let mut multi = client.new_multi_writer();
    multi.add_set_data(
        LEADER_EPOCH,
        epoch.to_string().as_bytes(),
        Some(stat.version),
    )?;
    multi.add_create(LEADER, &record, &super::ephemeral())?;
    match multi.commit().await.map_err(zk::Error::from) {
        Ok(_) => Ok(Some(epoch)),
        // Someone leads, or another orchestrator bumped the epoch first.
        Err(zk::Error::NodeExists) | Err(zk::Error::BadVersion) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The current leader, with the version of its znode.
async fn leader(client: &zk::Client) -> Result<Option<LeaderInfo>, zk::Error> {
    match client.get_data(LEADER).await {
        Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Registers this orchestrator under `/dbaas/orchestrators` in this session
/// (a record left by an earlier session of the same id is replaced).
async fn register(client: &zk::Client, me: &OrchestratorInfo) -> Result<(), zk::Error> {
    let path = member_path(&me.id);
    let record = serde_json::to_vec(me).map_err(|_| zk::Error::MarshallingError)?;
    loop {
        match client.create(&path, &record, &super::ephemeral()).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => {
                let (_, stat) = match client.get_data(&path).await {
                    Ok(found) => found,
                    Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                if stat.ephemeral_owner == client.session_id().0 {
                    return Ok(());
                }
                warn!(
                    path,
                    "an earlier session's record of this orchestrator is still there; replacing it"
                );
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tells everyone what this orchestrator is now.
struct Herald {
    standing: Arc<watch::Sender<Standing>>,
    actors: Vec<Recipient<Standing>>,
}

impl Herald {
    fn announce(&self, now: Standing) {
        let was = self.standing.borrow().clone();
        if was == now {
            return;
        }
        match (&was, &now) {
            (_, Standing::Leading { epoch, .. }) => {
                info!(
                    epoch,
                    "leading: this orchestrator now runs the supervisor and the scaler"
                );
                crate::prometheus::leadership(true);
            }
            (Standing::Leading { epoch, .. }, Standing::Following { .. }) => {
                warn!(epoch, "no longer leading: supervision stopped");
                crate::prometheus::leadership(false);
            }
            (_, Standing::Following { leader }) => {
                info!(leader = ?leader.as_ref().map(|l| &l.id), "following");
                crate::prometheus::leadership(false);
            }
        }
        self.standing.send_replace(now.clone());
        for actor in &self.actors {
            actor.do_send(now.clone());
        }
    }
}

/// What the campaign needs; cloned into each round.
#[derive(Clone)]
pub struct Campaign {
    pub session: Session,
    pub me: OrchestratorInfo,
    /// This orchestrator's read count (the Scaler counts into it).
    pub reads: Arc<AtomicU64>,
    pub standing: Arc<watch::Sender<Standing>>,
    /// Told every change of [`Standing`] (the supervisor and the scaler).
    pub actors: Vec<Recipient<Standing>>,
}

/// One round of the campaign (a supervised task, `crate::tasks::keep`): with
/// the current session, register, then lead or follow until the session is
/// lost; returns why it ended. Whatever ends it, this orchestrator is no
/// longer leading when it returns.
pub async fn campaign(c: Campaign, round: Round) -> String {
    let herald = Herald {
        standing: c.standing.clone(),
        actors: c.actors.clone(),
    };
    let why = match c.session.ready(Duration::from_secs(10)).await {
        Ok(client) => run(&c, &client, &herald, &round).await,
        Err(e) => format!("no ZooKeeper session: {e}"),
    };
    herald.announce(Standing::Following { leader: None });
    why
}

async fn run(c: &Campaign, client: &zk::Client, herald: &Herald, round: &Round) -> String {
    let mut me = c.me.clone();
    me.reads = c.reads.load(Ordering::Relaxed);
    if let Err(e) = register(client, &me).await {
        return format!("registering under {ORCHESTRATORS} failed: {e}");
    }
    loop {
        if client.state() != zk::SessionState::SyncConnected {
            herald.announce(Standing::Following { leader: None });
            if let Err(e) = super::reconnected(client).await {
                return format!("ZooKeeper session lost: {e}");
            }
            // Back in the same session: give up an office held before the
            // disconnection (a new epoch is needed to act again).
            if let Err(e) = resign(client).await {
                return format!("resigning after a disconnection failed: {e}");
            }
        }
        let step = async {
            let leading = herald.standing.borrow().leading();
            match (held_by_this_session(client).await?, leading) {
                // Still in office: keep watching.
                (Some(held), Some(epoch)) if held == epoch => {}
                // Held in this session but not acted on (an error in between):
                // give it up and stand again.
                (Some(_), _) => {
                    resign(client).await?;
                    return Ok(());
                }
                (None, _) => elect(client, c, herald, round).await?,
            }
            // Until the leader znode changes (or goes), or the connection
            // does; at once if it is gone already (stand again).
            let (stat, watcher) = client.check_and_watch_stat(LEADER).await?;
            let mut states = client.state_watcher();
            if stat.is_none() || client.state() != zk::SessionState::SyncConnected {
                return Ok(());
            }
            tokio::select! {
                event = watcher.changed() => info!(event = ?event.event_type, "leader znode changed"),
                state = states.changed() => info!(?state, "ZooKeeper connection state changed"),
            }
            Ok::<(), zk::Error>(())
        };
        match step.await {
            Ok(()) => {}
            Err(e) if super::is_transient(&e) => {
                warn!(error = %e, "leadership: ZooKeeper connection lost");
            }
            Err(e) => return format!("leadership: {e}"),
        }
    }
}

/// Stands for election once: leads, or follows whoever leads.
async fn elect(
    client: &zk::Client,
    c: &Campaign,
    herald: &Herald,
    round: &Round,
) -> Result<(), zk::Error> {
    match try_lead(client, &c.me).await? {
        Some(epoch) => {
            let slaves = recorded_slaves(client).await?;
            round.up(format!("leading, epoch {epoch}"));
            herald.announce(Standing::Leading { epoch, slaves });
        }
        None => {
            let leader = leader(client).await?;
            round.up(match &leader {
                Some(l) => format!("following {}", l.id),
                None => "following".to_string(),
            });
            herald.announce(Standing::Following { leader });
        }
    }
    Ok(())
}

/// The epoch of the leader znode if this session holds it.
async fn held_by_this_session(client: &zk::Client) -> Result<Option<u64>, zk::Error> {
    match client.get_data(LEADER).await {
        Ok((data, stat)) if stat.ephemeral_owner == client.session_id().0 => Ok(Some(
            serde_json::from_slice::<LeaderInfo>(&data)
                .map(|l| l.epoch)
                .unwrap_or(0),
        )),
        Ok(_) | Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the leader znode if this session holds it.
async fn resign(client: &zk::Client) -> Result<(), zk::Error> {
    match client.get_data(LEADER).await {
        Ok((_, stat)) if stat.ephemeral_owner == client.session_id().0 => {
            warn!("resigning the leadership held before the disconnection");
            match client.delete(LEADER, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Ok(_) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Leaves the election for good (graceful shutdown): gives up the office if
/// held and removes this orchestrator's record, so another takes over at once.
pub async fn step_down(client: &zk::Client, id: &str) -> Result<(), zk::Error> {
    resign(client).await?;
    match client.delete(&member_path(id), None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads other orchestrators counted, as the leader's Scaler hears them.
#[derive(actix::Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ReadsElsewhere(pub u64);

/// How reads counted elsewhere reach the leader: the counts it last saw of
/// each orchestrator; each new look yields what was added since. Counts of an
/// orchestrator seen for the first time during a leadership are all new, but
/// at the start of a leadership they are only the baseline (they were the
/// previous leader's to count).
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashMap<String, u64>,
    baseline_taken: bool,
}

impl Tally {
    /// What was added since the last look, given every other orchestrator's count now.
    pub fn added(&mut self, now: &[(String, u64)]) -> u64 {
        let mut added = 0u64;
        for (id, count) in now {
            let before = match self.seen.get(id) {
                Some(before) => Some(*before),
                None if self.baseline_taken => Some(0),
                None => None,
            };
            if let Some(before) = before {
                // A count that went down is a restarted orchestrator: all new.
                added += if *count >= before {
                    count - before
                } else {
                    *count
                };
            }
            self.seen.insert(id.clone(), *count);
        }
        self.seen.retain(|id, _| now.iter().any(|(n, _)| n == id));
        self.baseline_taken = true;
        added
    }

    /// Leadership ended: the next one starts from a new baseline.
    pub fn reset(&mut self) {
        *self = Tally::default();
    }
}

/// Every `every`: writes this orchestrator's read count into its record when
/// it changed, and on the leader sends the Scaler what the others counted
/// since the last look. Never ends (ZooKeeper errors are logged and retried on
/// the next beat).
pub async fn share_reads(
    session: Session,
    me: OrchestratorInfo,
    reads: Arc<AtomicU64>,
    standing: watch::Receiver<Standing>,
    scaler: Recipient<ReadsElsewhere>,
    every: Duration,
) {
    let mut written = None;
    let mut tally = Tally::default();
    loop {
        tokio::time::sleep(every).await;
        let Ok(client) = session.client() else {
            written = None;
            continue;
        };
        let count = reads.load(Ordering::Relaxed);
        if written != Some((client.session_id(), count)) {
            let record = OrchestratorInfo {
                reads: count,
                ..me.clone()
            };
            if let Ok(data) = serde_json::to_vec(&record) {
                match client.set_data(&member_path(&me.id), &data, None).await {
                    Ok(_) => written = Some((client.session_id(), count)),
                    Err(e) => info!(error = %e, "publishing the read count failed; next beat"),
                }
            }
        }
        if standing.borrow().leading().is_none() {
            tally.reset();
            continue;
        }
        match others_counts(&client, &me.id).await {
            Ok(now) => {
                let added = tally.added(&now);
                if added > 0 {
                    scaler.do_send(ReadsElsewhere(added));
                }
            }
            Err(e) => {
                info!(error = %e, "reading the other orchestrators' counts failed; next beat")
            }
        }
    }
}

/// Every other orchestrator's id and read count.
async fn others_counts(client: &zk::Client, me: &str) -> Result<Vec<(String, u64)>, zk::Error> {
    let mut out = Vec::new();
    for child in client.list_children(ORCHESTRATORS).await? {
        if child == me {
            continue;
        }
        match client.get_data(&member_path(&child)).await {
            Ok((data, _)) => {
                if let Ok(info) = serde_json::from_slice::<OrchestratorInfo>(&data) {
                    out.push((child, info.reads));
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Every live orchestrator's record.
pub async fn orchestrators(client: &zk::Client) -> Result<Vec<OrchestratorInfo>, zk::Error> {
    let mut out = Vec::new();
    for child in client.list_children(ORCHESTRATORS).await? {
        match client.get_data(&member_path(&child)).await {
            Ok((data, _)) => {
                if let Ok(info) = serde_json::from_slice::<OrchestratorInfo>(&data) {
                    out.push(info);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(id, n)| (id.to_string(), *n)).collect()
    }

    #[test]
    fn the_first_look_of_a_leadership_is_only_the_baseline() {
        let mut t = Tally::default();
        assert_eq!(t.added(&counts(&[("a", 100), ("b", 7)])), 0);
        assert_eq!(t.added(&counts(&[("a", 130), ("b", 7)])), 30);
        assert_eq!(t.added(&counts(&[("a", 130), ("b", 19)])), 12);
    }

    #[test]
    fn an_orchestrator_that_appears_later_counts_from_zero() {
        let mut t = Tally::default();
        t.added(&counts(&[("a", 5)]));
        assert_eq!(t.added(&counts(&[("a", 5), ("c", 4)])), 4);
    }

    #[test]
    fn a_restarted_orchestrator_counts_all_its_reads_as_new() {
        let mut t = Tally::default();
        t.added(&counts(&[("a", 50)]));
        assert_eq!(t.added(&counts(&[("a", 3)])), 3);
    }

    #[test]
    fn after_a_reset_the_next_leadership_takes_a_new_baseline() {
        let mut t = Tally::default();
        t.added(&counts(&[("a", 50)]));
        t.reset();
        assert_eq!(t.added(&counts(&[("a", 80)])), 0);
        assert_eq!(t.added(&counts(&[("a", 81)])), 1);
    }

    #[test]
    fn only_a_leader_standing_leads() {
        assert_eq!(
            Standing::Leading {
                epoch: 4,
                slaves: None
            }
            .leading(),
            Some(4)
        );
        assert_eq!(Standing::Following { leader: None }.leading(), None);
    }
}
