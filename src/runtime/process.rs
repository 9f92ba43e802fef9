//! Workers as local OS processes: the worker binary is spawned with the
//! orchestrator's broker settings, its pid is its OS pid, and a task per child
//! waits for it so its exit is reported at once (and the zombie reaped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{ExitSender, WorkerRuntime};

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub worker_bin: PathBuf,
    /// Environment given to every worker (broker URLs, data dir, ...).
    pub env: Vec<(String, String)>,
    /// Where each worker's log goes (`worker-<pid>.log`); inherited stderr if None.
    pub log_dir: Option<PathBuf>,
    pub stop_grace: Duration,
}

pub struct ProcessRuntime {
    config: ProcessConfig,
    exits: ExitSender,
    /// Per child started here: flips to true when it has exited.
    children: Arc<Mutex<HashMap<u32, watch::Receiver<bool>>>>,
}

impl ProcessRuntime {
    pub fn new(config: ProcessConfig, exits: ExitSender) -> Self {
        ProcessRuntime {
            config,
            exits,
            children: Arc::default(),
        }
    }

    async fn spawn(&self) -> anyhow::Result<u32> {
        let mut cmd = Command::new(&self.config.worker_bin);
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(false);
        let log = match &self.config.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("worker-starting-{}.log", uuid::Uuid::new_v4()));
                let file = std::fs::File::create(&path)?;
                cmd.stdout(file.try_clone()?).stderr(file);
                Some((dir.clone(), path))
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
                None
            }
        };
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!("cannot start {}: {e}", self.config.worker_bin.display())
        })?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("worker exited before its pid was read"))?;
        if let Some((dir, path)) = log {
            let _ = std::fs::rename(path, dir.join(format!("worker-{pid}.log")));
        }
        let (tx, rx) = watch::channel(false);
        lock(&self.children).insert(pid, rx);
        let exits = self.exits.clone();
        let children = self.children.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            info!(pid, ?status, "worker process exited");
            let _ = tx.send(true);
            lock(&children).remove(&pid);
            let _ = exits.send(pid);
        });
        info!(pid, "started worker process");
        Ok(pid)
    }

    /// Waits until `pid` is gone: our own child's exit, or for a process adopted
    /// from an earlier orchestrator, until it no longer exists.
    async fn gone(&self, pid: u32, patience: Duration) -> bool {
        let rx = lock(&self.children).get(&pid).cloned();
        let wait = async {
            match rx {
                Some(mut rx) => {
                    let _ = rx.wait_for(|exited| *exited).await;
                }
                None => {
                    while alive(pid) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        };
        tokio::time::timeout(patience, wait).await.is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl WorkerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<u32>> {
        Box::pin(self.spawn())
    }

    fn kill(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            signal(pid, libc::SIGKILL)?;
            if self.gone(pid, Duration::from_secs(10)).await {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "worker {pid} still alive 10 s after SIGKILL"
                ))
            }
        })
    }

    fn stop(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            signal(pid, libc::SIGTERM)?;
            if self.gone(pid, self.config.stop_grace).await {
                return Ok(());
            }
            warn!(pid, "worker did not stop in time; killing it");
            self.kill(pid).await
        })
    }
}
