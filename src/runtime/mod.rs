//! Where workers run. [`WorkerRuntime`] is what the supervisor needs from a
//! runtime: start a worker and learn its pid, kill it, stop it gracefully, and
//! hear when one exits. Two real implementations: [`process`] (local OS
//! processes, the default) and [`docker`] (containers through the Docker Engine
//! API, for compose and real hosts).

pub mod docker;
pub mod process;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// A worker runtime. Exits of workers it started are reported on the channel
/// given at construction, as the worker's pid.
pub trait WorkerRuntime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Starts one worker and returns its pid (host pid for containers).
    fn start(&self) -> BoxFuture<'_, anyhow::Result<u32>>;
    /// Kills the worker at once (SIGKILL) and resolves once it is gone.
    fn kill(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Asks the worker to stop (SIGTERM: it unregisters and finishes in-flight
    /// work); kills it if it has not exited within the grace period.
    fn stop(&self, pid: u32) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Whether `pid`, registered under `/dbaas/workers` with `started_at_ms`,
    /// is a worker this runtime may act on: one it started, or one it adopts
    /// after verifying it is really a worker. The supervisor ignores (and never
    /// signals) the others. Runtimes that only ever act on what they track
    /// (docker: its labelled containers) vouch for every pid.
    fn vouch(&self, pid: u32, started_at_ms: i64) -> bool {
        let _ = (pid, started_at_ms);
        true
    }
    /// Takes on the workers running now that this runtime has not tracked
    /// (an orchestrator becoming leader: its predecessor started them).
    /// Runtimes that adopt through [`WorkerRuntime::vouch`] need nothing here.
    fn adopt_running(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Sender half of a runtime's exit notifications.
pub type ExitSender = mpsc::UnboundedSender<u32>;

/// A runtime's bookkeeping lock; a panic elsewhere while holding it leaves
/// the map as it was, still usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
