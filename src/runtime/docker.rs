//! Workers as containers, through the Docker Engine API (bollard): the same API
//! Docker and podman serve. A worker container gets a unique name, the label
//! `dbaas.worker=<instance>` (so an orchestrator finds and adopts its own workers
//! after a restart, and only those), the broker settings as env, and no restart
//! policy (the supervisor decides about replacements). Its host pid is read with
//! `inspect` and written to ZooKeeper at `/dbaas/assigned/<name>`, where the worker
//! (which sees itself as pid 1) reads the pid it is known by.
//!
//! Workers may run on several engines, one per host (`DBAAS_DOCKER_HOSTS`:
//! Docker or podman serving the Engine API over TCP or a socket): each new
//! worker goes to the answering engine that runs the fewest ([`place`]), so
//! the master and the slaves spread over the hosts; an engine that stops
//! answering its pings gets no new worker, and its workers, whose ZooKeeper
//! sessions end with their host's link, are replaced on the others by the
//! supervisor. Each container carries the engine's name (label
//! `dbaas.host`, env `DBAAS_WORKER_HOST`), which the worker publishes and
//! `worker/status` shows. Pids are host pids: on real hosts two engines can
//! hand out the same pid (the simulated hosts here share one pid space).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::{lock, ExitSender, WorkerRuntime};
use crate::coord::{self, session::Session};

/// The label that marks a worker container; its value is the instance.
pub const LABEL: &str = "dbaas.worker";
/// The label naming the engine (host) a worker container was started on.
pub const HOST_LABEL: &str = "dbaas.host";

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub image: String,
    /// `host`, or the compose network the brokers are on.
    pub network: String,
    /// Which orchestrator's workers these are (the label value).
    pub instance: String,
    /// Environment for every worker (broker URLs as the containers see them).
    pub env: Vec<(String, String)>,
    pub stop_grace: Duration,
    /// The engines workers may run on, by name (`DBAAS_DOCKER_HOSTS`); empty:
    /// the one DOCKER_HOST or the local socket names.
    pub hosts: Vec<(String, String)>,
}

/// The container a worker runs in: image, env (with the name it finds its pid
/// under), label, network, no restart policy.
pub fn container_spec(config: &DockerConfig, name: &str) -> ContainerCreateBody {
    let mut env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("DBAAS_WORKER_NAME={name}"));
    ContainerCreateBody {
        image: Some(config.image.clone()),
        env: Some(env),
        labels: Some(HashMap::from([(
            LABEL.to_string(),
            config.instance.clone(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some(config.network.clone()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(false),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// An engine error as an operator should read it.
pub fn describe(e: &DockerError, image: &str) -> String {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => {
            format!("image {image} not found on the Docker host (build it first: scripts/stack images): {message}")
        }
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => format!("no such container: {message}"),
        DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        } => format!("conflict: {message}"),
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            format!("Docker engine error {status_code}: {message}")
        }
        other => format!("Docker engine unreachable or failed: {other}"),
    }
}

/// One Docker engine workers may run on: a host, by the name `worker/status`
/// shows.
struct Engine {
    name: String,
    docker: Docker,
    /// Answered its last ping (new workers go only to engines that do).
    healthy: AtomicBool,
}

/// Where a worker runs: its engine (index into the runtime's engines) and
/// container name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    engine: usize,
    name: String,
}

pub struct DockerRuntime {
    engines: Arc<Vec<Engine>>,
    config: DockerConfig,
    zk: Session,
    exits: ExitSender,
    /// Host pid → where the worker runs, for the containers this runtime knows.
    containers: Arc<Mutex<HashMap<u32, Placed>>>,
    /// Workers placed on each engine and still starting (not yet in
    /// `containers`): the supervisor starts the master and the slaves at
    /// once, and each must count the others' places.
    starting: Arc<Mutex<Vec<usize>>>,
}

/// A place taken on an engine for a worker being started; given back when
/// dropped (by then the worker is tracked, or its start failed).
struct Reservation {
    starting: Arc<Mutex<Vec<usize>>>,
    engine: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.starting).get_mut(self.engine) {
            *n = n.saturating_sub(1);
        }
    }
}

/// [`place`] for a worker being started while others may be: `starting[i]`
/// workers are on their way to engine `i` and count as running there; the
/// place chosen is counted too.
pub fn reserve(load: &[(usize, bool)], starting: &mut [usize]) -> Option<usize> {
    let counted: Vec<(usize, bool)> = load
        .iter()
        .enumerate()
        .map(|(i, (n, healthy))| (n + starting.get(i).copied().unwrap_or(0), *healthy))
        .collect();
    let index = place(&counted)?;
    starting[index] += 1;
    Some(index)
}

/// How long one engine call may take (a host that stops answering must not
/// hold the supervisor up).
const ENGINE_CALL: Duration = Duration::from_secs(10);
/// How often each engine is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_PATIENCE: Duration = Duration::from_secs(2);

/// The engine a new worker goes to: of those that answer, the one running
/// the fewest workers (the first of equals), so the master and the slaves
/// spread over the hosts and one host's loss leaves the others a majority.
/// `load[i]`: (workers on engine i, whether it answers).
pub fn place(load: &[(usize, bool)]) -> Option<usize> {
    load.iter()
        .enumerate()
        .filter(|(_, (_, healthy))| *healthy)
        .min_by_key(|(i, (n, _))| (*n, *i))
        .map(|(i, _)| i)
}

/// `name=url` pairs (`DBAAS_DOCKER_HOSTS`): the engines workers may run on.
pub fn parse_hosts(spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once('=') {
            Some((name, url)) if !name.is_empty() && !url.is_empty() => {
                Ok((name.to_string(), url.to_string()))
            }
            _ => Err(anyhow::anyhow!(
                "DBAAS_DOCKER_HOSTS: {e:?} is not name=url (for example h1=tcp://10.0.0.1:2375)"
            )),
        })
        .collect()
}

fn engine_client(url: &str) -> anyhow::Result<Docker> {
    let docker = if let Some(path) = url.strip_prefix("unix://") {
        Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION)?
    } else {
        Docker::connect_with_http(url, 120, bollard::API_DEFAULT_VERSION)?
    };
    Ok(docker)
}

/// `call` on an engine, bounded by [`ENGINE_CALL`], its error as an operator
/// reads it.
async fn bounded<T>(
    engine: &Engine,
    image: &str,
    call: impl std::future::Future<Output = Result<T, DockerError>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(ENGINE_CALL, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "engine {}: {}",
            engine.name,
            describe(&e, image)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "engine {} did not answer within {ENGINE_CALL:?}",
            engine.name
        )),
    }
}

impl DockerRuntime {
    /// Connects to the engines (`config.hosts`; none: DOCKER_HOST or the
    /// local socket, named `local`) and adopts the running containers
    /// carrying this instance's label (again on
    /// [`WorkerRuntime::adopt_running`], skipping those it tracks). An engine
    /// that does not answer yet is kept and pinged until it does; none
    /// answering is an error.
    pub async fn connect(
        config: DockerConfig,
        zk: Session,
        exits: ExitSender,
    ) -> anyhow::Result<DockerRuntime> {
        let engines = if config.hosts.is_empty() {
            vec![Engine {
                name: "local".into(),
                docker: Docker::connect_with_defaults()?,
                healthy: AtomicBool::new(false),
            }]
        } else {
            config
                .hosts
                .iter()
                .map(|(name, url)| {
                    Ok(Engine {
                        name: name.clone(),
                        docker: engine_client(url)?,
                        healthy: AtomicBool::new(false),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let mut last_error = None;
        for engine in &engines {
            match bounded(engine, &config.image, engine.docker.ping()).await {
                Ok(_) => engine.healthy.store(true, Ordering::SeqCst),
                Err(e) => {
                    warn!(engine = %engine.name, error = %e, "Docker engine not answering yet");
                    last_error = Some(e);
                }
            }
        }
        if !engines.iter().any(|e| e.healthy.load(Ordering::SeqCst)) {
            return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no Docker engine")));
        }
        let rt = DockerRuntime {
            starting: Arc::new(Mutex::new(vec![0; engines.len()])),
            engines: Arc::new(engines),
            config,
            zk,
            exits,
            containers: Arc::default(),
        };
        tokio::spawn(watch_health(rt.engines.clone(), rt.config.image.clone()));
        rt.adopt().await?;
        Ok(rt)
    }

    async fn adopt(&self) -> anyhow::Result<()> {
        for (index, engine) in self.engines.iter().enumerate() {
            if !engine.healthy.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = self.adopt_from(index).await {
                warn!(engine = %engine.name, error = %e, "cannot list the engine's worker containers");
            }
        }
        Ok(())
    }

    async fn adopt_from(&self, index: usize) -> anyhow::Result<()> {
        let engine = &self.engines[index];
        let filters = HashMap::from([("label", vec![format!("{LABEL}={}", self.config.instance)])]);
        let list = bounded(
            engine,
            &self.config.image,
            engine.docker.list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(false)
                    .filters(&filters)
                    .build(),
            )),
        )
        .await?;
        for c in list {
            let Some(name) = c.names.and_then(|n| n.first().cloned()) else {
                continue;
            };
            let name = name.trim_start_matches('/').to_string();
            if lock(&self.containers).values().any(|p| p.name == name) {
                continue;
            }
            match self.pid_of(index, &name).await {
                Ok(pid) => {
                    info!(pid, name, engine = %engine.name, "adopted running worker container");
                    self.track(
                        pid,
                        Placed {
                            engine: index,
                            name,
                        },
                    );
                }
                Err(e) => warn!(name, error = %e, "cannot adopt container"),
            }
        }
        Ok(())
    }

    async fn pid_of(&self, index: usize, name: &str) -> anyhow::Result<u32> {
        let engine = &self.engines[index];
        let info = bounded(
            engine,
            &self.config.image,
            engine
                .docker
                .inspect_container(name, None::<InspectContainerOptions>),
        )
        .await?;
        let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
        u32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow::anyhow!("container {name} has no running process"))
    }

    /// Remembers the container and reports its exit (then removes it). A
    /// wait cut short by the engine's connection is taken up again once the
    /// engine says the container still runs; only a container that exited
    /// or is gone is reported.
    fn track(&self, pid: u32, placed: Placed) {
        lock(&self.containers).insert(pid, placed.clone());
        let engines = self.engines.clone();
        let exits = self.exits.clone();
        let containers = self.containers.clone();
        let zk = self.zk.clone();
        tokio::spawn(async move {
            let Placed { engine, name } = placed;
            let engine = &engines[engine];
            loop {
                let mut wait = engine
                    .docker
                    .wait_container(&name, None::<WaitContainerOptions>);
                let status = wait.next().await;
                if still_running(engine, &name).await {
                    warn!(
                        pid,
                        name,
                        ?status,
                        "lost the wait on a running worker container; waiting again"
                    );
                    tokio::time::sleep(PING_EVERY).await;
                    continue;
                }
                info!(pid, name, engine = %engine.name, ?status, "worker container exited");
                break;
            }
            lock(&containers).remove(&pid);
            let _ = exits.send(pid);
            let remove = RemoveContainerOptionsBuilder::new().force(true).build();
            match tokio::time::timeout(
                ENGINE_CALL,
                engine.docker.remove_container(&name, Some(remove)),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(name, error = %e, "could not remove exited container"),
                Err(_) => warn!(name, "removing the exited container timed out"),
            }
            if let Ok(zk) = zk.client() {
                let _ = zk.delete(&coord::assigned_path(&name), None).await;
            }
        });
    }

    fn placed(&self, pid: u32) -> anyhow::Result<Placed> {
        lock(&self.containers)
            .get(&pid)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no worker container with pid {pid}"))
    }

    async fn wait_gone(&self, pid: u32, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        while lock(&self.containers).contains_key(&pid) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Workers on each engine, and whether it answers.
    fn load(&self) -> Vec<(usize, bool)> {
        let containers = lock(&self.containers);
        self.engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    containers.values().filter(|p| p.engine == i).count(),
                    e.healthy.load(Ordering::SeqCst),
                )
            })
            .collect()
    }

    /// Takes a place for a new worker ([`reserve`]).
    fn reserve(&self) -> Option<Reservation> {
        let mut starting = lock(&self.starting);
        let engine = reserve(&self.load(), &mut starting)?;
        Some(Reservation {
            starting: self.starting.clone(),
            engine,
        })
    }

    async fn start_one(&self) -> anyhow::Result<u32> {
        // Held until the worker is tracked (or its start failed).
        let reservation = self
            .reserve()
            .ok_or_else(|| anyhow::anyhow!("no Docker engine answers: cannot start a worker"))?;
        let index = reservation.engine;
        let engine = &self.engines[index];
        let name = format!(
            "dbaas-worker-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut spec = container_spec(&self.config, &name);
        if let Some(env) = spec.env.as_mut() {
            env.push(format!("DBAAS_WORKER_HOST={}", engine.name));
        }
        if let Some(labels) = spec.labels.as_mut() {
            labels.insert(HOST_LABEL.to_string(), engine.name.clone());
        }
        let image = &self.config.image;
        bounded(
            engine,
            image,
            engine.docker.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                spec,
            ),
        )
        .await?;
        bounded(
            engine,
            image,
            engine
                .docker
                .start_container(&name, None::<StartContainerOptions>),
        )
        .await?;
        let pid = self.pid_of(index, &name).await?;
        self.zk
            .client()
            .map_err(|e| anyhow::anyhow!("assigning pid {pid} to {name}: {e}"))?
            .create(
                &coord::assigned_path(&name),
                pid.to_string().as_bytes(),
                &coord::persistent(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("assigning pid {pid} to {name}: {e}"))?;
        info!(pid, name, engine = %engine.name, "started worker container");
        self.track(
            pid,
            Placed {
                engine: index,
                name,
            },
        );
        drop(reservation);
        Ok(pid)
    }
}

/// Whether the engine says `name` still runs (an engine that does not answer
/// says nothing: treated as running, the wait is taken up again).
async fn still_running(engine: &Engine, name: &str) -> bool {
    let inspect = engine
        .docker
        .inspect_container(name, None::<InspectContainerOptions>);
    match tokio::time::timeout(ENGINE_CALL, inspect).await {
        Ok(Ok(info)) => info.state.and_then(|s| s.running).unwrap_or(false),
        Ok(Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        })) => false,
        Ok(Err(_)) | Err(_) => true,
    }
}

/// Pings every engine every [`PING_EVERY`]; logs each change of health.
async fn watch_health(engines: Arc<Vec<Engine>>, image: String) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        for engine in engines.iter() {
            let ok = matches!(
                tokio::time::timeout(PING_PATIENCE, engine.docker.ping()).await,
                Ok(Ok(_))
            );
            let was = engine.healthy.swap(ok, Ordering::SeqCst);
            if was && !ok {
                warn!(engine = %engine.name, image, "Docker engine stopped answering: no new workers go there");
            } else if ok && !was {
                info!(engine = %engine.name, "Docker engine answers");
            }
        }
    }
}

impl WorkerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<u32>> {
        Box::pin(self.start_one())
    }

    /// The labelled containers another orchestrator started since this one
    /// connected (it becomes leader).
    fn adopt_running(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.adopt())
    }

    fn kill(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let placed = self.placed(pid)?;
            let engine = &self.engines[placed.engine];
            bounded(
                engine,
                &self.config.image,
                engine.docker.kill_container(
                    &placed.name,
                    Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                ),
            )
            .await?;
            if self.wait_gone(pid, Duration::from_secs(10)).await {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "container of worker {pid} still running 10 s after SIGKILL"
                ))
            }
        })
    }

    fn stop(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let placed = self.placed(pid)?;
            let engine = &self.engines[placed.engine];
            let grace = i32::try_from(self.config.stop_grace.as_secs()).unwrap_or(10);
            let stop = engine.docker.stop_container(
                &placed.name,
                Some(StopContainerOptionsBuilder::new().t(grace).build()),
            );
            match tokio::time::timeout(self.config.stop_grace + ENGINE_CALL, stop).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(anyhow::anyhow!(
                        "engine {}: {}",
                        engine.name,
                        describe(&e, &self.config.image)
                    ))
                }
                Err(_) => {
                    return Err(anyhow::anyhow!(
                        "engine {} did not stop worker {pid} in time",
                        engine.name
                    ))
                }
            }
            self.wait_gone(pid, self.config.stop_grace + Duration::from_secs(5))
                .await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DockerConfig {
        DockerConfig {
            image: "localhost/dbaas-worker:dev".into(),
            network: "dbaas_default".into(),
            instance: "rabbit:2181".into(),
            env: vec![("DBAAS_AMQP_URL".into(), "amqp://rabbitmq:5672/%2f".into())],
            stop_grace: Duration::from_secs(10),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn a_new_worker_goes_to_the_answering_engine_with_the_fewest() {
        // Three hosts: the master and two slaves land one on each.
        assert_eq!(place(&[(0, true), (0, true), (0, true)]), Some(0));
        assert_eq!(place(&[(1, true), (0, true), (0, true)]), Some(1));
        assert_eq!(place(&[(1, true), (1, true), (0, true)]), Some(2));
        // A host that stops answering gets none, whatever its load.
        assert_eq!(place(&[(1, true), (0, false), (1, true)]), Some(0));
        assert_eq!(place(&[(0, false), (0, false)]), None);
        assert_eq!(place(&[]), None);
    }

    #[test]
    fn workers_started_at_once_spread_too() {
        // The master and two slaves started together, none running yet.
        let idle = [(0, true), (0, true), (0, true)];
        let mut starting = vec![0; 3];
        let places: Vec<_> = (0..3).map(|_| reserve(&idle, &mut starting)).collect();
        assert_eq!(places, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(starting, vec![1, 1, 1]);
        // One host lost: its two replacements go to the two others.
        let mut starting = vec![0; 3];
        let lost = [(1, true), (0, false), (0, true)];
        assert_eq!(reserve(&lost, &mut starting), Some(2));
        assert_eq!(reserve(&lost, &mut starting), Some(0));
        assert_eq!(reserve(&[(0, false)], &mut [0]), None);
    }

    #[test]
    fn engines_are_named_urls() {
        assert_eq!(
            parse_hosts("h1=tcp://10.0.0.1:2375, h2=unix:///run/p.sock").expect("valid"),
            vec![
                ("h1".to_string(), "tcp://10.0.0.1:2375".to_string()),
                ("h2".to_string(), "unix:///run/p.sock".to_string())
            ]
        );
        assert!(parse_hosts("tcp://10.0.0.1:2375").is_err());
        assert!(parse_hosts("").expect("none").is_empty());
    }

    #[test]
    fn container_spec_names_image_network_label_env_and_no_restarts() {
        let spec = container_spec(&config(), "dbaas-worker-abc");
        assert_eq!(spec.image.as_deref(), Some("localhost/dbaas-worker:dev"));
        let env = spec.env.unwrap_or_default();
        assert!(env.contains(&"DBAAS_AMQP_URL=amqp://rabbitmq:5672/%2f".to_string()));
        assert!(env.contains(&"DBAAS_WORKER_NAME=dbaas-worker-abc".to_string()));
        assert_eq!(
            spec.labels
                .unwrap_or_default()
                .get(LABEL)
                .map(String::as_str),
            Some("rabbit:2181")
        );
        let host = spec.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("dbaas_default"));
        assert_eq!(
            host.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::NO)
        );
    }

    #[test]
    fn engine_errors_read_as_what_to_do() {
        let missing = DockerError::DockerResponseServerError {
            status_code: 404,
            message: "No such image: localhost/dbaas-worker:dev".into(),
        };
        assert!(describe(&missing, "localhost/dbaas-worker:dev").contains("build it first"));
        let gone = DockerError::DockerResponseServerError {
            status_code: 404,
            message: "no container abc".into(),
        };
        assert!(describe(&gone, "img").starts_with("no such container"));
        let busy = DockerError::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        };
        assert_eq!(describe(&busy, "img"), "Docker engine error 500: boom");
    }
}
