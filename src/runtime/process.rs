//! Workers as local OS processes: the worker binary is spawned with the
//! orchestrator's broker settings, its pid is its OS pid, and a task per child
//! waits for it so its exit is reported at once (and the zombie reaped).
//!
//! It signals only its own children and workers it adopted after checking
//! them (a restarted orchestrator finds its predecessor's workers registered
//! in ZooKeeper): `/proc/<pid>/exe` must be the worker binary, and the
//! process must have started shortly before the `started_at_ms` of its
//! record. Any other pid registered under `/dbaas/workers` (a fake znode, a
//! reused pid) is never signalled: [`ProcessRuntime::vouch`] refuses it, and
//! `kill`/`stop` refuse to signal a pid they have not vouched for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{lock, ExitSender, WorkerRuntime};

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
    /// Workers of an earlier orchestrator, verified: pid → the process's start
    /// time (clock ticks after boot), checked again before every signal.
    adopted: Arc<Mutex<HashMap<u32, u64>>>,
    /// The worker binary, canonical, as `/proc/<pid>/exe` shows it.
    worker_exe: PathBuf,
}

/// How much later than its process a worker may write `started_at_ms` (it
/// first connects to both brokers and gets its copy of the data).
const RECORD_AFTER_START: Duration = Duration::from_secs(15 * 60);
/// Clock slack between the kernel's boot time and the wall clock.
const CLOCK_SLACK_MS: i64 = 5_000;

impl ProcessRuntime {
    pub fn new(config: ProcessConfig, exits: ExitSender) -> Self {
        let worker_exe =
            std::fs::canonicalize(&config.worker_bin).unwrap_or_else(|_| config.worker_bin.clone());
        ProcessRuntime {
            config,
            exits,
            children: Arc::default(),
            adopted: Arc::default(),
            worker_exe,
        }
    }

    /// A worker this runtime may signal: its child, or an adopted worker
    /// whose process is still the one verified (same start time).
    fn ours(&self, pid: u32) -> anyhow::Result<()> {
        if lock(&self.children).contains_key(&pid) {
            return Ok(());
        }
        let verified = lock(&self.adopted).get(&pid).copied();
        match verified {
            Some(ticks) if start_ticks(pid) == Some(ticks) => Ok(()),
            Some(_) => {
                lock(&self.adopted).remove(&pid);
                Err(anyhow::anyhow!(
                    "pid {pid} is no longer the worker that was adopted; not signalling it"
                ))
            }
            None => Err(anyhow::anyhow!(
                "pid {pid} is not a worker this orchestrator started or verified; not signalling it"
            )),
        }
    }

    /// Checks that `pid` runs the worker binary and started shortly before
    /// its record says; the reason when not.
    fn verify(&self, pid: u32, started_at_ms: i64) -> Result<u64, String> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
        // A binary rebuilt while the worker runs shows as "<path> (deleted)".
        let exe_text = exe.to_string_lossy();
        let exe = PathBuf::from(exe_text.strip_suffix(" (deleted)").unwrap_or(&exe_text));
        if exe != self.worker_exe {
            return Err(format!(
                "runs {}, not the worker binary {}",
                exe.display(),
                self.worker_exe.display()
            ));
        }
        let ticks = start_ticks(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
        let started_ms = start_unix_ms(ticks).ok_or("cannot read the boot time")?;
        let after = started_at_ms - started_ms;
        let latest = i64::try_from(RECORD_AFTER_START.as_millis()).unwrap_or(i64::MAX);
        if after < -CLOCK_SLACK_MS || after > latest {
            return Err(format!(
                "its process started at {started_ms} ms, its record says {started_at_ms} ms"
            ));
        }
        Ok(ticks)
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

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// When `pid` started, in clock ticks after boot (field 22 of its stat).
fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(22 - 3)?.parse().ok()
}

/// Clock ticks after boot → Unix milliseconds.
fn start_unix_ms(ticks: u64) -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    let after_boot_ms = i64::try_from(ticks.checked_mul(1000)? / hz).ok()?;
    btime.checked_mul(1000)?.checked_add(after_boot_ms)
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
            self.ours(pid)?;
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
            self.ours(pid)?;
            signal(pid, libc::SIGTERM)?;
            if self.gone(pid, self.config.stop_grace).await {
                return Ok(());
            }
            warn!(pid, "worker did not stop in time; killing it");
            self.kill(pid).await
        })
    }

    fn vouch(&self, pid: u32, started_at_ms: i64) -> bool {
        if self.ours(pid).is_ok() {
            return true;
        }
        match self.verify(pid, started_at_ms) {
            Ok(ticks) => {
                lock(&self.adopted).insert(pid, ticks);
                info!(
                    pid,
                    "adopted a running worker process (binary and start time verified)"
                );
                true
            }
            Err(why) => {
                warn!(pid, why, "not a worker this orchestrator may signal");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(worker_bin: &str) -> ProcessRuntime {
        let (exits, _) = tokio::sync::mpsc::unbounded_channel();
        ProcessRuntime::new(
            ProcessConfig {
                worker_bin: PathBuf::from(worker_bin),
                env: Vec::new(),
                log_dir: None,
                stop_grace: Duration::from_secs(1),
            },
            exits,
        )
    }

    /// A process this runtime did not start, running `sleep`.
    struct Stranger(std::process::Child);

    impl Stranger {
        fn spawn() -> Stranger {
            Stranger(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn sleep"),
            )
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Stranger {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleep_bin() -> String {
        std::fs::canonicalize("/bin/sleep")
            .or_else(|_| std::fs::canonicalize("/usr/bin/sleep"))
            .expect("sleep binary")
            .display()
            .to_string()
    }

    #[tokio::test]
    async fn an_unrelated_process_is_neither_vouched_for_nor_signalled() {
        let stranger = Stranger::spawn();
        let pid = stranger.pid();
        let now = chrono::Utc::now().timestamp_millis();
        let rt = runtime("/nonexistent/worker");
        assert!(!rt.vouch(pid, now), "not the worker binary");
        assert!(rt.kill(pid).await.is_err());
        assert!(rt.stop(pid).await.is_err());
        assert!(alive(pid), "it was signalled");
    }

    #[tokio::test]
    async fn a_worker_binary_process_is_adopted_only_if_its_start_time_matches() {
        let stranger = Stranger::spawn();
        let pid = stranger.pid();
        let now = chrono::Utc::now().timestamp_millis();
        // The "worker binary" is sleep here: the record must still fit the process.
        let rt = runtime(&sleep_bin());
        assert!(
            !rt.vouch(pid, now - 3_600_000),
            "a record older than the process"
        );
        assert!(
            !rt.vouch(pid, now + 3_600_000),
            "a record far after the process"
        );
        assert!(rt.kill(pid).await.is_err());
        assert!(alive(pid));
        assert!(rt.vouch(pid, now), "exe and start time match");
        assert!(
            rt.kill(pid).await.is_ok(),
            "an adopted worker can be killed"
        );
        assert!(!alive(pid));
    }
}
