//! `ContainerSupervisor`: keeps one master and the desired number of slaves
//! running through a [`WorkerRuntime`]. It reconciles whenever the membership
//! (from `Election`) or the desired count (from `Scaler`) changes, or a worker
//! exits: too few workers → start more (a dead one is so replaced); too many →
//! gracefully stop the highest-pid slaves (a stop on purpose is not a crash, so
//! nothing replaces it). It also carries out the crash API.
//!
//! A worker whose ZooKeeper registration vanished while its process lives (it
//! was paused or cut off past its session) is ended: its session is gone, so it
//! may no longer serve, and killing it hands the deliveries it holds back to
//! the queues at once, for its successor (it is then replaced like any death).
//!
//! With several orchestrators only the leader's supervisor acts
//! ([`Standing`], from `coord::leadership`): a follower's keeps watching but
//! starts, stops and kills nothing, and refuses the crash API
//! ([`CrashError::NotLeader`]: HTTP forwards it to the leader). A new leader
//! waits for a fresh membership, adopts the workers it shows, and carries on
//! with the slaves the previous leader last wanted. Every runtime action is
//! first checked against ZooKeeper ([`Fence`]): a leader deposed without
//! knowing it yet does nothing.
//!
//! Only workers the runtime vouches for ([`WorkerRuntime::vouch`]: started by
//! it, or adopted after verification) are seen at all: anything else
//! registered under `/dbaas/workers` is logged once and left out of the view,
//! so no reconciliation, scale-in or crash ever signals it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tracing::{error, info, warn};

use super::election::ForgetWorker;
use crate::coord::leadership::{Fence, Standing};
use crate::coord::Membership;
use crate::prometheus;
use crate::runtime::WorkerRuntime;

/// Which worker the crash API kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Master,
    /// The slave with the highest pid.
    Slave,
}

#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<u32, CrashError>")]
pub struct Crash(pub Target);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrashError {
    #[error("there is no {0} to crash")]
    NoTarget(&'static str),
    #[error("killing worker {pid} failed: {reason}")]
    Runtime { pid: u32, reason: String },
    #[error("this orchestrator does not lead")]
    NotLeader,
}

/// The number of slaves to keep (the master is not counted).
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct SetSlaves(pub usize);

/// A worker process/container exited (from the runtime).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct WorkerExited(pub u32);

/// Stop every worker this supervisor runs (orchestrator shutdown, process runtime).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

#[derive(Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetSupervisorStatus;

#[derive(Debug, Clone, Serialize)]
pub struct SupervisorStatus {
    pub runtime: &'static str,
    /// The leadership epoch it acts under (None: it does not lead, so it
    /// acts on nothing).
    pub leading: Option<u64>,
    pub desired_slaves: usize,
    pub starting: Vec<u32>,
    pub stopping: Vec<u32>,
    pub events: Vec<SupervisorEvent>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SupervisorEvent {
    pub at_ms: i64,
    pub what: String,
}

const START_PATIENCE: Duration = Duration::from_secs(60);
const EVENTS_KEPT: usize = 50;
const ENDED_KEPT: usize = 256;

pub struct ContainerSupervisor {
    runtime: Arc<dyn WorkerRuntime>,
    election: Option<Recipient<ForgetWorker>>,
    /// Removes a dead worker's znodes (set in production; None in unit tests).
    forget_znodes: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    desired_slaves: usize,
    view: Membership,
    /// `runtime.start()` calls not finished yet (shared so shutdown can wait for them).
    starts_in_flight: Arc<AtomicUsize>,
    /// Started, not registered in ZooKeeper yet.
    starting: HashMap<u32, Instant>,
    /// Being stopped on purpose (scale-in).
    stopping: BTreeSet<u32>,
    /// Known dead but maybe still listed by ZooKeeper.
    dead: BTreeSet<u32>,
    /// Being killed by the crash API.
    crashing: BTreeSet<u32>,
    /// Being ended because their registration vanished while they ran.
    lost: BTreeSet<u32>,
    /// The most recent deaths already handled (an exit can be reported twice:
    /// by the kill that caused it and by the runtime).
    ended: VecDeque<u32>,
    events: VecDeque<SupervisorEvent>,
    /// No decision before the first membership: registered workers are adopted, not duplicated.
    seen_membership: bool,
    /// Set by [`StopAll`]: nothing is started any more.
    shutting_down: bool,
    /// Registrations the runtime refused to vouch for: pid → the record's
    /// `started_at_ms` (asked again only when the record changes).
    impostors: HashMap<u32, i64>,
    /// The leadership epoch it acts under; None: it acts on nothing.
    leading: Option<u64>,
    /// A new leader's runtime is taking on the running workers: no decision yet.
    adopting: bool,
    /// Checks the epoch before each action (None: a supervisor on its own,
    /// leading for good: tests and single-process tools).
    fence: Option<Arc<dyn Fence>>,
}

impl ContainerSupervisor {
    pub fn new(runtime: Arc<dyn WorkerRuntime>, desired_slaves: usize) -> Self {
        ContainerSupervisor {
            runtime,
            election: None,
            forget_znodes: None,
            desired_slaves,
            view: Membership::default(),
            starts_in_flight: Arc::default(),
            starting: HashMap::new(),
            stopping: BTreeSet::new(),
            dead: BTreeSet::new(),
            crashing: BTreeSet::new(),
            lost: BTreeSet::new(),
            ended: VecDeque::new(),
            events: VecDeque::new(),
            seen_membership: false,
            shutting_down: false,
            impostors: HashMap::new(),
            leading: Some(0),
            adopting: false,
            fence: None,
        }
    }

    /// A supervisor that acts only while its orchestrator leads: it starts as
    /// a follower and is told ([`Standing`]) when it leads, each action first
    /// checked by `fence`.
    pub fn under_leadership(mut self, fence: Arc<dyn Fence>) -> Self {
        self.leading = None;
        self.fence = Some(fence);
        self
    }

    /// `action`, run only if the epoch this supervisor leads with still
    /// holds (checked by the fence), else an error.
    fn fenced<T: Send + 'static>(
        &self,
        action: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> impl std::future::Future<Output = anyhow::Result<T>> + 'static {
        let fence = self.fence.clone();
        let epoch = self.leading;
        async move {
            match (epoch, fence) {
                (None, _) => Err(anyhow::anyhow!("this orchestrator does not lead")),
                (Some(epoch), Some(fence)) if !fence.holds(epoch).await => Err(anyhow::anyhow!(
                    "leadership epoch {epoch} no longer holds: not acting"
                )),
                _ => action.await,
            }
        }
    }

    pub fn with_election(mut self, election: Recipient<ForgetWorker>) -> Self {
        self.election = Some(election);
        self
    }

    pub fn with_znode_cleanup(mut self, f: Arc<dyn Fn(u32) + Send + Sync>) -> Self {
        self.forget_znodes = Some(f);
        self
    }

    fn event(&mut self, what: String) {
        info!("{what}");
        self.events.push_back(SupervisorEvent {
            at_ms: chrono::Utc::now().timestamp_millis(),
            what,
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// Workers that count towards the target: registered or starting, minus the
    /// dead and those being stopped.
    fn live(&self) -> BTreeSet<u32> {
        self.view
            .pids()
            .into_iter()
            .chain(self.starting.keys().copied())
            .filter(|p| !self.dead.contains(p) && !self.stopping.contains(p))
            .collect()
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if !self.seen_membership || self.shutting_down || self.leading.is_none() || self.adopting {
            return;
        }
        let in_flight = self.starts_in_flight.load(Ordering::SeqCst);
        let have = self.live().len() + in_flight;
        let want = 1 + self.desired_slaves;
        if have < want {
            for _ in have..want {
                self.start_one(ctx);
            }
        } else if have > want && in_flight == 0 {
            let master = self.view.master_pid();
            let mut slaves: Vec<u32> = self
                .live()
                .into_iter()
                .filter(|p| Some(*p) != master && !self.starting.contains_key(p))
                .collect();
            slaves.sort_unstable_by(|a, b| b.cmp(a));
            for pid in slaves.into_iter().take(have - want) {
                self.stop_one(pid, ctx);
            }
        }
    }

    fn start_one(&mut self, ctx: &mut Context<Self>) {
        self.starts_in_flight.fetch_add(1, Ordering::SeqCst);
        let runtime = self.runtime.clone();
        let in_flight = self.starts_in_flight.clone();
        let start = self.fenced(async move { runtime.start().await });
        async move {
            let res = start.await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            res
        }
        .into_actor(self)
        .map(|res, act, ctx| match res {
            Ok(pid) if act.shutting_down => {
                let runtime = act.runtime.clone();
                actix::spawn(async move {
                    let _ = runtime.stop(pid).await;
                });
            }
            Ok(pid) => {
                prometheus::worker_started();
                act.starting.insert(pid, Instant::now());
                act.event(format!("started worker {pid}"));
            }
            Err(e) => {
                error!(error = %e, "starting a worker failed; retrying shortly");
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.reconcile(ctx));
            }
        })
        .spawn(ctx);
    }

    fn stop_one(&mut self, pid: u32, ctx: &mut Context<Self>) {
        self.stopping.insert(pid);
        self.event(format!("stopping slave {pid} (scale in)"));
        self.end(pid, false, ctx);
    }

    /// Ends a worker whose registration vanished while it may still run.
    fn end_lost(&mut self, pid: u32, ctx: &mut Context<Self>) {
        if self.shutting_down || self.leading.is_none() {
            return;
        }
        self.lost.insert(pid);
        warn!(
            pid,
            "worker's ZooKeeper registration vanished; ending the process"
        );
        self.end(pid, true, ctx);
    }

    /// Stops (or, with `kill`, kills) `pid` through the runtime, then records
    /// it as gone whatever the outcome (already gone is common: it may have
    /// exited on its own).
    fn end(&mut self, pid: u32, kill: bool, ctx: &mut Context<Self>) {
        let runtime = self.runtime.clone();
        self.fenced(async move {
            if kill {
                runtime.kill(pid).await
            } else {
                runtime.stop(pid).await
            }
        })
        .into_actor(self)
        .map(move |res, act, ctx| {
            if let Err(e) = res {
                info!(pid, error = %e, "ending worker");
            }
            act.mark_dead(pid, ctx);
        })
        .spawn(ctx);
    }

    /// Records `pid` as gone: hides it at once and removes its znodes.
    fn mark_dead(&mut self, pid: u32, ctx: &mut Context<Self>) {
        let on_purpose = self.stopping.remove(&pid);
        let crashed = self.crashing.remove(&pid);
        let lost = self.lost.remove(&pid);
        self.starting.remove(&pid);
        if self.ended.contains(&pid) {
            return;
        }
        self.ended.push_back(pid);
        if self.ended.len() > ENDED_KEPT {
            self.ended.pop_front();
        }
        self.dead.insert(pid);
        let cause = match (self.shutting_down, on_purpose, crashed, lost) {
            (true, ..) => "shutdown",
            (_, true, ..) => "scale_in",
            (_, _, true, _) => "crash_api",
            (.., true) => "lost",
            _ => "died",
        };
        prometheus::worker_stopped(cause);
        match cause {
            "crash_api" => self.event(format!(
                "worker {pid} killed by the crash API; replacing it"
            )),
            "died" => self.event(format!("worker {pid} died; replacing it")),
            "lost" => self.event(format!("worker {pid} ended; replacing it")),
            _ => {}
        }
        if let Some(e) = &self.election {
            e.do_send(ForgetWorker(pid));
        }
        if let Some(f) = &self.forget_znodes {
            f(pid);
        }
        self.reconcile(ctx);
    }
}

impl Actor for ContainerSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            let overdue: Vec<u32> = act
                .starting
                .iter()
                .filter(|(_, t)| t.elapsed() > START_PATIENCE)
                .map(|(p, _)| *p)
                .collect();
            for pid in overdue {
                warn!(pid, "worker never registered; giving up on it");
                act.starting.remove(&pid);
                let runtime = act.runtime.clone();
                let kill = act.fenced(async move { runtime.kill(pid).await });
                actix::spawn(async move {
                    if let Err(e) = kill.await {
                        info!(pid, error = %e, "ending a worker that never registered");
                    }
                });
            }
            act.reconcile(ctx);
        });
    }
}

impl ContainerSupervisor {
    /// Leaves out of `m` the registrations the runtime does not vouch for.
    fn vouched(&mut self, mut m: Membership) -> Membership {
        let runtime = self.runtime.clone();
        let mut impostors = HashMap::new();
        m.workers.retain(|w| {
            let known = self.impostors.get(&w.pid) == Some(&w.started_at_ms);
            if known || !runtime.vouch(w.pid, w.started_at_ms) {
                if !known {
                    warn!(
                        pid = w.pid,
                        "ignoring a registration under /dbaas/workers that is not a worker of this \
                         orchestrator: it will never be signalled"
                    );
                }
                impostors.insert(w.pid, w.started_at_ms);
                return false;
            }
            true
        });
        self.impostors = impostors;
        m
    }
}

impl Handler<Membership> for ContainerSupervisor {
    type Result = ();
    fn handle(&mut self, m: Membership, ctx: &mut Context<Self>) {
        let m = self.vouched(m);
        let listed = m.pids();
        let vanished: Vec<u32> = self
            .view
            .pids()
            .difference(&listed)
            .copied()
            .filter(|p| {
                !self.dead.contains(p)
                    && !self.stopping.contains(p)
                    && !self.crashing.contains(p)
                    && !self.lost.contains(p)
                    && !self.ended.contains(p)
            })
            .collect();
        for pid in vanished {
            self.end_lost(pid, ctx);
        }
        self.starting.retain(|p, _| !listed.contains(p));
        self.dead.retain(|p| listed.contains(p));
        self.view = m;
        self.seen_membership = true;
        self.reconcile(ctx);
    }
}

impl Handler<WorkerExited> for ContainerSupervisor {
    type Result = ();
    fn handle(&mut self, WorkerExited(pid): WorkerExited, ctx: &mut Context<Self>) {
        self.mark_dead(pid, ctx);
    }
}

impl Handler<SetSlaves> for ContainerSupervisor {
    type Result = ();
    fn handle(&mut self, SetSlaves(n): SetSlaves, ctx: &mut Context<Self>) {
        if n != self.desired_slaves {
            self.event(format!("slaves wanted: {} -> {n}", self.desired_slaves));
            self.desired_slaves = n;
        }
        // Recorded for the next leader (only while this epoch holds).
        if let (Some(epoch), Some(fence)) = (self.leading, &self.fence) {
            actix::spawn(fence.record_slaves(epoch, n));
        }
        self.reconcile(ctx);
    }
}

impl Handler<Standing> for ContainerSupervisor {
    type Result = ();
    fn handle(&mut self, standing: Standing, ctx: &mut Context<Self>) {
        match standing {
            Standing::Leading { epoch, slaves } => {
                if self.leading == Some(epoch) {
                    return;
                }
                self.leading = Some(epoch);
                match slaves {
                    Some(n) => self.desired_slaves = n,
                    // The first leader: its own number is the one to carry on.
                    None => {
                        if let Some(fence) = &self.fence {
                            actix::spawn(fence.record_slaves(epoch, self.desired_slaves));
                        }
                    }
                }
                // What an earlier term started and never saw register is the
                // runtime's to time out; this term decides from a fresh view,
                // once the runtime has taken on the running workers.
                self.starting.clear();
                self.seen_membership = false;
                self.adopting = true;
                self.event(format!(
                    "leading (epoch {epoch}): adopting the registered workers, {} slaves wanted",
                    self.desired_slaves
                ));
                let runtime = self.runtime.clone();
                async move { runtime.adopt_running().await }
                    .into_actor(self)
                    .map(|adopted, act, ctx| {
                        if let Err(e) = adopted {
                            warn!(error = %e, "taking on the running workers failed; deciding from ZooKeeper's view");
                        }
                        act.adopting = false;
                        act.seen_membership = false;
                        act.reconcile(ctx);
                    })
                    .spawn(ctx);
            }
            Standing::Following { .. } => {
                if let Some(epoch) = self.leading.take() {
                    self.event(format!(
                        "no longer leading (epoch {epoch}): supervision stopped"
                    ));
                }
            }
        }
    }
}

impl Handler<Crash> for ContainerSupervisor {
    type Result = ResponseActFuture<Self, Result<u32, CrashError>>;

    fn handle(&mut self, Crash(target): Crash, _: &mut Context<Self>) -> Self::Result {
        if self.leading.is_none() {
            return Box::pin(fut::ready(Err(CrashError::NotLeader)));
        }
        let live = self.live();
        let pid = match target {
            Target::Master => self.view.master_pid().filter(|p| live.contains(p)),
            Target::Slave => self
                .view
                .slave_pids()
                .into_iter()
                .filter(|p| live.contains(p))
                .max(),
        };
        let Some(pid) = pid else {
            let what = if target == Target::Master {
                "master"
            } else {
                "slave"
            };
            return Box::pin(fut::ready(Err(CrashError::NoTarget(what))));
        };
        self.crashing.insert(pid);
        let runtime = self.runtime.clone();
        Box::pin(
            self.fenced(async move { runtime.kill(pid).await })
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => {
                        act.mark_dead(pid, ctx);
                        Ok(pid)
                    }
                    Err(e) => {
                        act.crashing.remove(&pid);
                        Err(CrashError::Runtime {
                            pid,
                            reason: e.to_string(),
                        })
                    }
                }),
        )
    }
}

impl Handler<StopAll> for ContainerSupervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: StopAll, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let pids: Vec<u32> = self.live().into_iter().collect();
        self.stopping.extend(pids.iter().copied());
        // Slaves first, together, then the master: no slave is promoted on the
        // way down, and every copy is closed as a prefix of the log.
        let master = self.view.master_pid();
        let (masters, slaves): (Vec<u32>, Vec<u32>) =
            pids.into_iter().partition(|p| Some(*p) == master);
        let runtime = self.runtime.clone();
        let in_flight = self.starts_in_flight.clone();
        Box::pin(
            async move {
                // A worker whose start is under way is stopped when it completes;
                // wait for those so none outlives the orchestrator.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for group in [slaves, masters] {
                    let stops = group.iter().map(|&pid| {
                        let runtime = runtime.clone();
                        async move {
                            if let Err(e) = runtime.stop(pid).await {
                                warn!(pid, error = %e, "stopping worker failed");
                            }
                        }
                    });
                    futures_util::future::join_all(stops).await;
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<GetSupervisorStatus> for ContainerSupervisor {
    type Result = MessageResult<GetSupervisorStatus>;
    fn handle(&mut self, _: GetSupervisorStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SupervisorStatus {
            runtime: self.runtime.name(),
            leading: self.leading,
            desired_slaves: self.desired_slaves,
            starting: self.starting.keys().copied().collect(),
            stopping: self.stopping.iter().copied().collect(),
            events: self.events.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::{MasterInfo, Role, WorkerInfo};
    use futures_util::future::BoxFuture;
    use std::sync::Mutex;

    /// A runtime that records what it was asked and hands out pids 100, 101, ...
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
        next: Mutex<u32>,
        /// Pids it refuses to vouch for (not its workers).
        strangers: Vec<u32>,
    }

    impl Recording {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl WorkerRuntime for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn start(&self) -> BoxFuture<'_, anyhow::Result<u32>> {
            Box::pin(async move {
                let mut n = self.next.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let pid = 100 + *n;
                *n += 1;
                self.calls
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(format!("start {pid}"));
                Ok(pid)
            })
        }
        fn kill(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(format!("kill {pid}"));
                Ok(())
            })
        }
        fn stop(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(format!("stop {pid}"));
                Ok(())
            })
        }
        fn vouch(&self, pid: u32, _: i64) -> bool {
            !self.strangers.contains(&pid)
        }
    }

    fn membership(master: u32, pids: &[u32]) -> Membership {
        Membership {
            workers: pids
                .iter()
                .map(|&pid| WorkerInfo {
                    pid,
                    role: if pid == master {
                        Role::Master
                    } else {
                        Role::Slave
                    },
                    seq: 0,
                    epoch: 1,
                    started_at_ms: 0,
                    slot: None,
                    start: None,
                    host: None,
                })
                .collect(),
            master: Some(MasterInfo {
                pid: master,
                epoch: 1,
            }),
        }
    }

    async fn settle(sup: &Addr<ContainerSupervisor>) -> SupervisorStatus {
        // Two round trips let spawned start/stop futures complete.
        for _ in 0..3 {
            tokio::task::yield_now().await;
            let _ = sup.send(GetSupervisorStatus).await;
        }
        sup.send(GetSupervisorStatus).await.expect("status")
    }

    /// A fence whose answer the test sets, recording the slaves recorded.
    #[derive(Default)]
    struct Switch {
        holds: std::sync::atomic::AtomicBool,
        recorded: Mutex<Vec<(u64, usize)>>,
    }

    impl Fence for Switch {
        fn holds(&self, _: u64) -> BoxFuture<'static, bool> {
            let holds = self.holds.load(Ordering::SeqCst);
            Box::pin(async move { holds })
        }
        fn record_slaves(&self, epoch: u64, slaves: usize) -> BoxFuture<'static, ()> {
            if let Ok(mut r) = self.recorded.lock() {
                r.push((epoch, slaves));
            }
            Box::pin(async {})
        }
    }

    fn led(rt: &Arc<Recording>, fence: &Arc<Switch>, slaves: usize) -> Addr<ContainerSupervisor> {
        ContainerSupervisor::new(rt.clone(), slaves)
            .under_leadership(fence.clone())
            .start()
    }

    #[actix_rt::test]
    async fn a_follower_acts_on_nothing_until_it_leads_then_adopts_and_carries_on() {
        let rt = Arc::new(Recording::default());
        let fence = Arc::new(Switch::default());
        fence.holds.store(true, Ordering::SeqCst);
        let sup = led(&rt, &fence, 1);
        // A master alone, a slave's registration gone: a leader would start
        // one and end the vanished one; a follower does neither.
        sup.send(membership(5, &[5, 9])).await.expect("send");
        sup.send(membership(5, &[5])).await.expect("send");
        sup.send(SetSlaves(3)).await.expect("send");
        assert_eq!(
            sup.send(Crash(Target::Master)).await.expect("send"),
            Err(CrashError::NotLeader)
        );
        assert!(settle(&sup).await.leading.is_none());
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
        assert!(fence.recorded.lock().expect("lock").is_empty());

        // Told it leads, with the slaves the previous leader wanted: it waits
        // for a fresh membership, adopts it, and starts only what is missing.
        sup.send(Standing::Leading {
            epoch: 4,
            slaves: Some(2),
        })
        .await
        .expect("send");
        assert!(
            settle(&sup).await.starting.is_empty(),
            "nothing before a fresh view"
        );
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
        sup.send(membership(5, &[5, 9])).await.expect("send");
        let status = settle(&sup).await;
        assert_eq!(status.leading, Some(4));
        assert_eq!(status.desired_slaves, 2);
        assert_eq!(rt.calls(), vec!["start 100"]);

        // Deposed: nothing more, and the crash API is refused again.
        sup.send(Standing::Following { leader: None })
            .await
            .expect("send");
        sup.send(membership(5, &[5])).await.expect("send");
        assert_eq!(
            sup.send(Crash(Target::Master)).await.expect("send"),
            Err(CrashError::NotLeader)
        );
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["start 100"]);
    }

    #[actix_rt::test]
    async fn a_leader_whose_epoch_no_longer_holds_does_nothing() {
        let rt = Arc::new(Recording::default());
        let fence = Arc::new(Switch::default());
        let sup = led(&rt, &fence, 1);
        sup.send(Standing::Leading {
            epoch: 2,
            slaves: None,
        })
        .await
        .expect("send");
        // It believes it leads, but ZooKeeper says another epoch does.
        sup.send(membership(5, &[5])).await.expect("send");
        let crashed = sup.send(Crash(Target::Master)).await.expect("send");
        assert!(
            matches!(crashed, Err(CrashError::Runtime { pid: 5, .. })),
            "{crashed:?}"
        );
        settle(&sup).await;
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
    }

    #[actix_rt::test]
    async fn the_leaders_scaling_decisions_are_recorded_for_the_next_leader() {
        let rt = Arc::new(Recording::default());
        let fence = Arc::new(Switch::default());
        fence.holds.store(true, Ordering::SeqCst);
        let sup = led(&rt, &fence, 1);
        sup.send(Standing::Leading {
            epoch: 7,
            slaves: None,
        })
        .await
        .expect("send");
        sup.send(SetSlaves(3)).await.expect("send");
        settle(&sup).await;
        // Its own initial number first (nothing was recorded before it), then the decision.
        assert_eq!(*fence.recorded.lock().expect("lock"), vec![(7, 1), (7, 3)]);
    }

    #[actix_rt::test]
    async fn starts_one_master_and_one_slave_and_adopts_registered_workers() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        sup.send(membership(7, &[7])).await.expect("send");
        settle(&sup).await;
        assert_eq!(
            rt.calls(),
            vec!["start 100"],
            "one adopted worker, one started"
        );
    }

    #[actix_rt::test]
    async fn crash_master_kills_the_master_and_a_replacement_starts() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        sup.send(membership(5, &[5, 9])).await.expect("send");
        let killed = sup.send(Crash(Target::Master)).await.expect("send");
        assert_eq!(killed, Ok(5));
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["kill 5", "start 100"]);
    }

    #[actix_rt::test]
    async fn crash_slave_kills_the_highest_pid_slave() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 3).start();
        sup.send(membership(50, &[3, 50, 70, 20]))
            .await
            .expect("send");
        assert_eq!(sup.send(Crash(Target::Slave)).await.expect("send"), Ok(70));
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["kill 70", "start 100"]);
    }

    #[actix_rt::test]
    async fn registrations_the_runtime_does_not_vouch_for_are_never_signalled() {
        let rt = Arc::new(Recording {
            strangers: vec![999],
            ..Recording::default()
        });
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        // A fake slave with the highest pid: not counted, so no scale-in stops it.
        sup.send(membership(5, &[5, 9, 999])).await.expect("send");
        settle(&sup).await;
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
        assert_eq!(sup.send(Crash(Target::Slave)).await.expect("send"), Ok(9));
        // Its registration vanishing is no reason to end it either.
        sup.send(membership(5, &[5])).await.expect("send");
        settle(&sup).await;
        assert!(
            rt.calls().iter().all(|c| !c.ends_with(" 999")),
            "{:?}",
            rt.calls()
        );
        // A fake master is no master: nothing of it is killed.
        sup.send(membership(999, &[5, 999])).await.expect("send");
        let res = sup.send(Crash(Target::Master)).await.expect("send");
        assert_eq!(res, Err(CrashError::NoTarget("master")));
    }

    #[actix_rt::test]
    async fn crash_with_nothing_to_kill_is_refused() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 0).start();
        sup.send(membership(5, &[5])).await.expect("send");
        let res = sup.send(Crash(Target::Slave)).await.expect("send");
        assert_eq!(res, Err(CrashError::NoTarget("slave")));
        assert!(rt.calls().iter().all(|c| !c.starts_with("kill")));
    }

    #[actix_rt::test]
    async fn scale_in_stops_highest_slaves_and_does_not_replace_them() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 3).start();
        sup.send(membership(40, &[10, 20, 30, 40]))
            .await
            .expect("send");
        sup.send(SetSlaves(1)).await.expect("send");
        settle(&sup).await;
        let mut calls = rt.calls();
        calls.sort();
        assert_eq!(
            calls,
            vec!["stop 20", "stop 30"],
            "master 40 and lowest slave 10 stay"
        );
        // The stopped workers leave ZooKeeper; nothing is started for them.
        sup.send(membership(40, &[10, 40])).await.expect("send");
        settle(&sup).await;
        assert!(
            rt.calls().iter().all(|c| !c.starts_with("start")),
            "{:?}",
            rt.calls()
        );
    }

    #[actix_rt::test]
    async fn an_unexpected_exit_is_replaced_once() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        sup.send(membership(5, &[5, 9])).await.expect("send");
        sup.send(WorkerExited(9)).await.expect("send");
        sup.send(WorkerExited(9)).await.expect("send");
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["start 100"]);
        // ZooKeeper still lists 9 for a while: it is not counted.
        sup.send(membership(5, &[5, 9])).await.expect("send");
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["start 100"]);
    }

    #[actix_rt::test]
    async fn a_worker_whose_registration_vanished_is_ended_and_replaced() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        sup.send(membership(5, &[5, 9])).await.expect("send");
        // 5 was paused past its session: ZooKeeper dropped it, its process lives.
        sup.send(membership(9, &[9])).await.expect("send");
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["kill 5", "start 100"]);
        // Its exit, reported by the runtime afterwards, changes nothing.
        sup.send(WorkerExited(5)).await.expect("send");
        sup.send(membership(9, &[9])).await.expect("send");
        settle(&sup).await;
        assert_eq!(rt.calls(), vec!["kill 5", "start 100"]);
    }

    #[actix_rt::test]
    async fn stop_all_stops_the_slaves_then_the_master_and_starts_nothing_after() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 2).start();
        sup.send(membership(5, &[3, 5, 9])).await.expect("send");
        sup.send(StopAll).await.expect("send");
        sup.send(WorkerExited(5)).await.expect("send");
        sup.send(WorkerExited(9)).await.expect("send");
        sup.send(WorkerExited(3)).await.expect("send");
        sup.send(membership(5, &[])).await.expect("send");
        settle(&sup).await;
        let calls = rt.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        // The slaves (together, in any order), then the master: none is
        // promoted on the way down.
        assert_eq!(calls[2], "stop 5", "{calls:?}");
        assert!(
            calls[..2].contains(&"stop 3".to_string())
                && calls[..2].contains(&"stop 9".to_string()),
            "{calls:?}"
        );
    }

    #[actix_rt::test]
    async fn scale_out_starts_the_missing_slaves() {
        let rt = Arc::new(Recording::default());
        let sup = ContainerSupervisor::new(rt.clone(), 1).start();
        sup.send(membership(5, &[5, 9])).await.expect("send");
        sup.send(SetSlaves(3)).await.expect("send");
        let status = settle(&sup).await;
        assert_eq!(rt.calls(), vec!["start 100", "start 101"]);
        assert_eq!(status.desired_slaves, 3);
        assert_eq!(status.starting.len(), 2);
    }
}
