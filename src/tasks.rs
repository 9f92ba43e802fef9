//! The long-lived tasks of both processes, named and supervised, under one of
//! two policies (Garage's background task runner is the model):
//!
//! - **restart** ([`keep`]): a task's rounds run forever (a round opens a
//!   connection, serves on it until it breaks, and says why it ended), with
//!   capped exponential backoff and jitter between rounds. The orchestrator's
//!   RabbitMQ and ZooKeeper sessions run so.
//! - **crash-only** ([`CrashOnly`]): tasks meant to run as long as the
//!   process; the first that ends (or panics) is reported with its name and
//!   the process stops, to be restarted whole by its supervisor. Every task of
//!   a worker runs so (its supervisor is the orchestrator's
//!   `ContainerSupervisor`: a worker that is alive is one whose tasks all
//!   run), and the orchestrator's HTTP server, membership watch, worker-exit
//!   forwarder and broker session (compose's restart policy or `scripts/up`
//!   restarts it; it adopts the running workers).
//!
//! Each task's state is recorded in a [`Tasks`] registry: what `worker/status`
//! shows under `tasks` and `/metrics` exports as `dbaas_task_up{task}` and
//! `dbaas_task_restarts_total{task}`, so a connection that is down is visible,
//! not only a line in the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

/// What one task is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskState {
    /// Its connection is up and serving.
    pub up: bool,
    /// What it is doing, or why it is down.
    pub state: String,
    /// Rounds that ended (connections lost or never made).
    pub restarts: u64,
    /// Since when (Unix ms) it is in this state.
    pub since_ms: i64,
}

/// The registry of named tasks; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Tasks(Arc<Mutex<BTreeMap<&'static str, TaskState>>>);

impl Tasks {
    fn update(&self, name: &'static str, up: bool, state: String, ended: bool) {
        let mut tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tasks.entry(name).or_insert_with(|| TaskState {
            up,
            state: String::new(),
            restarts: 0,
            since_ms: 0,
        });
        if ended {
            entry.restarts += 1;
        }
        if entry.up != up || entry.since_ms == 0 {
            entry.since_ms = chrono::Utc::now().timestamp_millis();
        }
        entry.up = up;
        entry.state = state;
        crate::prometheus::task(name, up, entry.restarts);
    }

    /// Records that `name` is up, doing `what`.
    pub fn up(&self, name: &'static str, what: impl Into<String>) {
        self.update(name, true, what.into(), false);
    }

    /// Records that a round of `name` ended (or could not start) because `why`.
    pub fn ended(&self, name: &'static str, why: impl Into<String>) {
        self.update(name, false, why.into(), true);
    }

    /// Records that `name` is not up yet, doing `what` (no round ended).
    pub fn starting(&self, name: &'static str, what: impl Into<String>) {
        self.update(name, false, what.into(), false);
    }

    /// Every task's state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, TaskState> {
        let tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .iter()
            .map(|(name, state)| (name.to_string(), state.clone()))
            .collect()
    }

    /// Whether every registered task is up.
    pub fn all_up(&self) -> bool {
        let tasks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tasks.values().all(|t| t.up)
    }
}

/// The handle a round uses to say it is up.
#[derive(Clone)]
pub struct Round {
    tasks: Tasks,
    name: &'static str,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Round {
    /// The round's connection is up and serving, doing `what`.
    pub fn up(&self, what: impl Into<String>) {
        self.up.store(true, std::sync::atomic::Ordering::Relaxed);
        self.tasks.up(self.name, what);
    }
}

/// Shortest and longest waits between two rounds.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs task `name` forever: each round is `round(handle)`, which returns why
/// it ended; between rounds it waits with capped exponential backoff and jitter
/// (back to the shortest wait after a round that was up). A round's failures
/// are logged once per kind, not once per attempt.
pub async fn keep<F, Fut>(tasks: Tasks, name: &'static str, mut round: F)
where
    F: FnMut(Round) -> Fut,
    Fut: Future<Output = String>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut last_failure = String::new();
    tasks.starting(name, "starting");
    loop {
        let handle = Round {
            tasks: tasks.clone(),
            name,
            up: Arc::default(),
        };
        let was_up = handle.up.clone();
        let why = round(handle).await;
        tasks.ended(name, why.clone());
        if was_up.load(std::sync::atomic::Ordering::Relaxed) {
            warn!(task = name, reason = %why, "task's connection ended; starting it again");
            backoff = FIRST_BACKOFF;
            last_failure.clear();
        } else if why != last_failure {
            warn!(task = name, reason = %why, "task could not start; retrying with backoff");
            last_failure = why;
        }
        tokio::time::sleep(crate::backoff::jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        info!(task = name, "task starting again");
    }
}

/// Tasks under the crash-only policy: each named and recorded in [`Tasks`]
/// as up while it runs; [`CrashOnly::ended`] waits for the first one to end
/// and says which and why. Dropping the group aborts the others.
pub struct CrashOnly {
    tasks: Tasks,
    set: tokio::task::JoinSet<&'static str>,
    names: BTreeMap<tokio::task::Id, &'static str>,
}

impl CrashOnly {
    pub fn new(tasks: Tasks) -> Self {
        CrashOnly {
            tasks,
            set: tokio::task::JoinSet::new(),
            names: BTreeMap::new(),
        }
    }

    /// Runs `task` (on the multi-threaded runtime) as long as the process.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(async move {
            task.await;
            name
        });
        self.started(name, handle.id());
    }

    /// Runs `task` on the current thread's `LocalSet` (actix's system).
    pub fn spawn_local<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + 'static,
    {
        let handle = self.set.spawn_local(async move {
            task.await;
            name
        });
        self.started(name, handle.id());
    }

    fn started(&mut self, name: &'static str, id: tokio::task::Id) {
        self.names.insert(id, name);
        self.tasks.up(name, "running (crash-only)");
    }

    /// Waits until one task ends; why, naming it (recorded in the registry).
    /// Never returns while there is none.
    pub async fn ended(&mut self) -> String {
        let Some(ended) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (name, why) = match ended {
            Ok((_, name)) => (name, format!("the {name} task ended")),
            Err(e) => {
                let name = self.names.get(&e.id()).copied().unwrap_or("unnamed");
                (name, format!("the {name} task failed: {e}"))
            }
        };
        self.tasks.ended(name, why.clone());
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn rounds_are_run_again_and_their_state_recorded() {
        let tasks = Tasks::default();
        let rounds = Arc::new(AtomicU32::new(0));
        let (seen_up, mut up_rx) = tokio::sync::mpsc::unbounded_channel();
        let kept = {
            let tasks = tasks.clone();
            let rounds = rounds.clone();
            tokio::spawn(keep(tasks, "broker", move |round| {
                let n = rounds.fetch_add(1, Ordering::SeqCst);
                let seen_up = seen_up.clone();
                async move {
                    if n < 2 {
                        return format!("refused {n}");
                    }
                    round.up("serving");
                    let _ = seen_up.send(());
                    // Up until the test has looked.
                    std::future::pending::<String>().await
                }
            }))
        };
        up_rx.recv().await.expect("a round came up");
        let state = tasks.snapshot()["broker"].clone();
        assert!(state.up, "{state:?}");
        assert_eq!(state.state, "serving");
        assert_eq!(state.restarts, 2, "two rounds ended before");
        assert!(tasks.all_up());
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
        kept.abort();
    }

    #[test]
    fn a_task_that_ended_is_down_with_its_reason() {
        let tasks = Tasks::default();
        tasks.up("zookeeper", "session 1");
        tasks.ended("zookeeper", "session expired");
        let state = tasks.snapshot()["zookeeper"].clone();
        assert!(!state.up);
        assert_eq!(state.state, "session expired");
        assert_eq!(state.restarts, 1);
        assert!(!tasks.all_up());
    }
    #[tokio::test]
    async fn the_first_crash_only_task_to_end_is_named_and_recorded() {
        let tasks = Tasks::default();
        let mut group = CrashOnly::new(tasks.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        group.spawn("forever", std::future::pending());
        group.spawn("short", async move {
            let _ = stopped.await;
        });
        assert!(tasks.all_up(), "{:?}", tasks.snapshot());
        let _ = stop.send(());
        assert_eq!(group.ended().await, "the short task ended");
        let snapshot = tasks.snapshot();
        assert!(!snapshot["short"].up);
        assert_eq!(snapshot["short"].restarts, 1);
        assert!(snapshot["forever"].up);
    }
    #[tokio::test]
    async fn a_crash_only_task_that_panics_is_named() {
        let mut group = CrashOnly::new(Tasks::default());
        group.spawn("forever", std::future::pending());
        group.spawn("panicky", async { panic!("boom") });
        let why = group.ended().await;
        assert!(why.starts_with("the panicky task failed"), "{why}");
    }
}
