//! `Election`: the orchestrator's view of ZooKeeper. A watch loop (children of
//! `/dbaas/workers`, the `/dbaas/master` znode and the records of workers between
//! roles, re-armed after every event, plus a slow poll for the workers'
//! progress) sends it [`Membership`] snapshots; it keeps the latest and answers
//! who is master and who the slaves are (the same snapshots go to the
//! supervisor), and tells the `Dispatcher` the [`Routes`] that follow from it
//! whenever they change. The election itself happens among the workers (see
//! [`crate::coord::election`]); this actor observes it.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};
use zookeeper_client as zk;

use crate::coord::session::Session;

use super::dispatcher::Routes;
use crate::coord::{self, Membership, Role, WorkerInfo, MASTER, WORKERS};

/// Who can take requests in `view`.
fn routes(view: &Membership) -> Routes {
    Routes {
        serving_slaves: view.serving_slaves(),
        master: view.master_pid().is_some(),
        latest_seq: view.workers.iter().map(|w| w.seq).max(),
    }
}

/// The supervisor hears each [`Membership`] ZooKeeper shows.
impl Message for Membership {
    type Result = ();
}

/// Latest membership.
#[derive(Message)]
#[rtype(result = "Membership")]
pub struct GetMembership;

/// A worker is known dead (killed and reaped): drop it from the view now rather
/// than when ZooKeeper catches up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetWorker(pub u32);

#[derive(Default)]
pub struct Election {
    view: Membership,
    forgotten: BTreeSet<u32>,
    /// Since when there has been no master (for the election duration metric).
    masterless_since: Option<std::time::Instant>,
    /// Told the routes whenever they change (the `Dispatcher`).
    routes_to: Option<Recipient<Routes>>,
    routes_sent: Option<Routes>,
}

impl Election {
    pub fn new() -> Self {
        Election::default()
    }

    pub fn with_routes(mut self, to: Recipient<Routes>) -> Self {
        self.routes_to = Some(to);
        self
    }

    /// Sends the routes of the current view if they changed.
    fn publish_routes(&mut self) {
        let routes = routes(&self.view);
        if self.routes_sent == Some(routes) {
            return;
        }
        if let Some(to) = &self.routes_to {
            to.do_send(routes);
            self.routes_sent = Some(routes);
        }
    }

    fn visible(&self, mut m: Membership) -> Membership {
        m.workers.retain(|w| !self.forgotten.contains(&w.pid));
        if m.master.is_some_and(|x| self.forgotten.contains(&x.pid)) {
            m.master = None;
        }
        m
    }
}

impl Actor for Election {
    type Context = Context<Self>;
}

impl Handler<Membership> for Election {
    type Result = ();
    fn handle(&mut self, m: Membership, _: &mut Context<Self>) {
        // A forgotten pid stays hidden until ZooKeeper no longer lists it.
        let listed = m.pids();
        self.forgotten.retain(|p| listed.contains(p));
        let m = self.visible(m);
        if m.master_pid() != self.view.master_pid() {
            info!(master = ?m.master_pid(), epoch = ?m.master.map(|x| x.epoch), "master changed");
            match m.master_pid() {
                None => self.masterless_since = Some(std::time::Instant::now()),
                Some(_) => {
                    crate::prometheus::election(self.masterless_since.take().map(|t| t.elapsed()))
                }
            }
        }
        crate::prometheus::membership(&m);
        if m.pids() != self.view.pids() {
            info!(workers = ?m.pids(), "workers changed");
        }
        self.view = m;
        self.publish_routes();
    }
}

impl Handler<GetMembership> for Election {
    type Result = MessageResult<GetMembership>;
    fn handle(&mut self, _: GetMembership, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view.clone())
    }
}

impl Handler<ForgetWorker> for Election {
    type Result = ();
    fn handle(&mut self, ForgetWorker(pid): ForgetWorker, _: &mut Context<Self>) {
        self.forgotten.insert(pid);
        let had_master = self.view.master_pid().is_some();
        self.view = self.visible(self.view.clone());
        if had_master && self.view.master_pid().is_none() {
            self.masterless_since = Some(std::time::Instant::now());
        }
        self.publish_routes();
    }
}

/// Reads the membership from ZooKeeper once.
pub async fn read_membership(client: &zk::Client) -> Result<Membership, zk::Error> {
    Ok(Membership {
        workers: coord::workers(client).await?,
        master: coord::master(client).await?,
    })
}

/// Watches ZooKeeper and sends a [`Membership`] to each of `to` on every change of
/// the worker set or the master, and every `poll` for the workers' progress.
/// Each round takes the session's current client, so a renewed session (after
/// ZooKeeper restarted) is picked up with its watches re-armed.
pub async fn watch(session: Session, to: Vec<Recipient<Membership>>, poll: Duration) {
    loop {
        let client = match session.client() {
            Ok(c) => c,
            Err(_) => {
                // No membership is sent while blind: nothing acts on a view
                // it cannot see.
                let _ = session.ready(Duration::from_secs(5)).await;
                continue;
            }
        };
        let children = client.get_and_watch_children(WORKERS).await;
        let master = client.check_and_watch_stat(MASTER).await;
        let (children_watch, master_watch) = match (children, master) {
            (Ok((_, _, c)), Ok((_, m))) => (c, m),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "ZooKeeper watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let m = match read_membership(&client).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "reading membership failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        to.iter().for_each(|r| r.do_send(m.clone()));
        let Some(transitions) = watch_transitions(&client, &m).await else {
            continue; // one moved on meanwhile: read again
        };
        tokio::select! {
            _ = children_watch.changed() => {}
            _ = master_watch.changed() => {}
            _ = transitions => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Watches the records of the workers in `m` that are between roles (joining,
/// promoting), so the moment one starts serving is seen at once rather than at
/// the next poll: with a single slave, reads wait for that moment. Resolves on
/// the first change; `None` if a record already differs from `m`.
async fn watch_transitions(
    client: &zk::Client,
    m: &Membership,
) -> Option<futures_util::future::BoxFuture<'static, ()>> {
    let mut watchers = Vec::new();
    for w in m
        .workers
        .iter()
        .filter(|w| matches!(w.role, Role::Joining | Role::Promoting))
    {
        // A record that is gone is reported by the children watch.
        if let Ok((data, _, watcher)) = client.get_and_watch_data(&coord::worker_path(w.pid)).await
        {
            let now = serde_json::from_slice::<WorkerInfo>(&data).ok();
            if now.is_none_or(|now| now.role != w.role) {
                return None;
            }
            watchers.push(Box::pin(async move {
                watcher.changed().await;
            }));
        }
    }
    Some(Box::pin(async move {
        if watchers.is_empty() {
            std::future::pending::<()>().await
        } else {
            futures_util::future::select_all(watchers).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::MasterInfo;

    fn worker(pid: u32, role: Role) -> WorkerInfo {
        WorkerInfo {
            pid,
            role,
            seq: 0,
            epoch: 0,
            started_at_ms: 0,
            slot: None,
            start: None,
            host: None,
        }
    }

    fn membership(master: u32, pids: &[u32]) -> Membership {
        Membership {
            workers: pids
                .iter()
                .map(|&p| {
                    worker(
                        p,
                        if p == master {
                            Role::Master
                        } else {
                            Role::Slave
                        },
                    )
                })
                .collect(),
            master: Some(MasterInfo {
                pid: master,
                epoch: 1,
            }),
        }
    }

    #[actix_rt::test]
    async fn keeps_the_latest_view_and_hides_forgotten_workers() {
        let election = Election::new().start();
        election
            .send(membership(10, &[10, 20, 30]))
            .await
            .expect("send");
        let m = election.send(GetMembership).await.expect("send");
        assert_eq!(m.master_pid(), Some(10));
        assert_eq!(m.slave_pids(), vec![20, 30]);
        election.send(ForgetWorker(10)).await.expect("send");
        let m = election.send(GetMembership).await.expect("send");
        assert_eq!(m.master_pid(), None);
        assert_eq!(m.pids().into_iter().collect::<Vec<_>>(), vec![20, 30]);
        // ZooKeeper still lists 10 for a moment: it stays hidden.
        election
            .send(membership(10, &[10, 20, 30]))
            .await
            .expect("send");
        assert_eq!(
            election
                .send(GetMembership)
                .await
                .expect("send")
                .master_pid(),
            None
        );
        // Then 20 is elected and 10 is gone from ZooKeeper.
        election
            .send(membership(20, &[20, 30]))
            .await
            .expect("send");
        assert_eq!(
            election
                .send(GetMembership)
                .await
                .expect("send")
                .master_pid(),
            Some(20)
        );
    }

    /// Keeps every `Routes` it is told.
    #[derive(Default)]
    struct RoutesLog(Vec<Routes>);
    impl Actor for RoutesLog {
        type Context = Context<Self>;
    }
    impl Handler<Routes> for RoutesLog {
        type Result = ();
        fn handle(&mut self, r: Routes, _: &mut Context<Self>) {
            self.0.push(r);
        }
    }
    #[derive(Message)]
    #[rtype(result = "Vec<Routes>")]
    struct Told;
    impl Handler<Told> for RoutesLog {
        type Result = MessageResult<Told>;
        fn handle(&mut self, _: Told, _: &mut Context<Self>) -> Self::Result {
            MessageResult(self.0.clone())
        }
    }

    #[actix_rt::test]
    async fn tells_the_dispatcher_each_change_of_routes_once() {
        let log = RoutesLog::default().start();
        let election = Election::new().with_routes(log.clone().recipient()).start();
        let both = Routes {
            serving_slaves: 2,
            master: true,
            latest_seq: Some(0),
        };
        election
            .send(membership(10, &[10, 20, 30]))
            .await
            .expect("send");
        // The same view again (the poll): nothing new to tell.
        election
            .send(membership(10, &[10, 20, 30]))
            .await
            .expect("send");
        election.send(ForgetWorker(10)).await.expect("send");
        // 20 is promoting: it serves neither reads nor writes yet.
        let mut promoting = membership(10, &[20, 30]);
        promoting.master = None;
        promoting.workers[0].role = Role::Promoting;
        election.send(promoting).await.expect("send");
        let told = log.send(Told).await.expect("send");
        assert_eq!(
            told,
            vec![
                both,
                Routes {
                    serving_slaves: 2,
                    master: false,
                    latest_seq: Some(0),
                },
                Routes {
                    serving_slaves: 1,
                    master: false,
                    latest_seq: Some(0),
                },
            ]
        );
    }

    #[test]
    fn a_master_znode_without_its_worker_is_no_master() {
        let m = Membership {
            workers: vec![worker(5, Role::Slave)],
            master: Some(MasterInfo { pid: 9, epoch: 3 }),
        };
        assert_eq!(m.master_pid(), None);
        assert_eq!(m.serving_slaves(), 1);
    }
}
