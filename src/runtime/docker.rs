//! Workers as containers, through the Docker Engine API (bollard): the same API
//! Docker and podman serve. A worker container gets a unique name, the label
//! `dbaas.worker=<instance>` (so an orchestrator finds and adopts its own workers
//! after a restart, and only those), the broker settings as env, and no restart
//! policy (the supervisor decides about replacements). Its host pid is read with
//! `inspect` and written to ZooKeeper at `/dbaas/assigned/<name>`, where the worker
//! (which sees itself as pid 1) reads the pid it is known by.

use std::collections::HashMap;
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

pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    zk: Session,
    exits: ExitSender,
    /// Host pid → container name, for the containers this runtime knows.
    containers: Arc<Mutex<HashMap<u32, String>>>,
}

impl DockerRuntime {
    /// Connects (DOCKER_HOST or the local socket) and adopts the running
    /// containers carrying this instance's label (again on
    /// [`WorkerRuntime::adopt_running`], skipping those it tracks).
    pub async fn connect(
        config: DockerConfig,
        zk: Session,
        exits: ExitSender,
    ) -> anyhow::Result<DockerRuntime> {
        let docker = Docker::connect_with_defaults()?;
        docker
            .ping()
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e, &config.image)))?;
        let rt = DockerRuntime {
            docker,
            config,
            zk,
            exits,
            containers: Arc::default(),
        };
        rt.adopt().await?;
        Ok(rt)
    }

    async fn adopt(&self) -> anyhow::Result<()> {
        let filters = HashMap::from([("label", vec![format!("{LABEL}={}", self.config.instance)])]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(false)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e, &self.config.image)))?;
        for c in list {
            let Some(name) = c.names.and_then(|n| n.first().cloned()) else {
                continue;
            };
            let name = name.trim_start_matches('/').to_string();
            if lock(&self.containers).values().any(|n| *n == name) {
                continue;
            }
            match self.pid_of(&name).await {
                Ok(pid) => {
                    info!(pid, name, "adopted running worker container");
                    self.track(pid, name);
                }
                Err(e) => warn!(name, error = %e, "cannot adopt container"),
            }
        }
        Ok(())
    }

    async fn pid_of(&self, name: &str) -> anyhow::Result<u32> {
        let info = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e, &self.config.image)))?;
        let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
        u32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow::anyhow!("container {name} has no running process"))
    }

    /// Remembers the container and reports its exit (then removes it).
    fn track(&self, pid: u32, name: String) {
        lock(&self.containers).insert(pid, name.clone());
        let docker = self.docker.clone();
        let exits = self.exits.clone();
        let containers = self.containers.clone();
        let zk = self.zk.clone();
        tokio::spawn(async move {
            let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
            let status = wait.next().await;
            info!(pid, name, ?status, "worker container exited");
            lock(&containers).remove(&pid);
            let _ = exits.send(pid);
            let remove = RemoveContainerOptionsBuilder::new().force(true).build();
            if let Err(e) = docker.remove_container(&name, Some(remove)).await {
                warn!(name, error = %e, "could not remove exited container");
            }
            if let Ok(zk) = zk.client() {
                let _ = zk.delete(&coord::assigned_path(&name), None).await;
            }
        });
    }

    fn name_of(&self, pid: u32) -> anyhow::Result<String> {
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

    async fn start_one(&self) -> anyhow::Result<u32> {
        let name = format!(
            "dbaas-worker-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let describe = |e: DockerError| anyhow::anyhow!("{}", describe(&e, &self.config.image));
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                container_spec(&self.config, &name),
            )
            .await
            .map_err(describe)?;
        self.docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .map_err(describe)?;
        let pid = self.pid_of(&name).await?;
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
        info!(pid, name, "started worker container");
        self.track(pid, name);
        Ok(pid)
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
            let name = self.name_of(pid)?;
            self.docker
                .kill_container(
                    &name,
                    Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe(&e, &self.config.image)))?;
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
            let name = self.name_of(pid)?;
            let grace = i32::try_from(self.config.stop_grace.as_secs()).unwrap_or(10);
            self.docker
                .stop_container(
                    &name,
                    Some(StopContainerOptionsBuilder::new().t(grace).build()),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe(&e, &self.config.image)))?;
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
        }
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
