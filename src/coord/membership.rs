//! What ZooKeeper shows of the workers at one moment: who is registered and
//! which one the master znode names. A plain value, read by the orchestrator's
//! actors and its metrics alike.

use std::collections::BTreeSet;

use super::{MasterInfo, Role, WorkerInfo};

/// What ZooKeeper showed at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    pub workers: Vec<WorkerInfo>,
    pub master: Option<MasterInfo>,
}

impl Membership {
    pub fn pids(&self) -> BTreeSet<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// The master's pid, if its znode exists and its worker is registered.
    pub fn master_pid(&self) -> Option<u32> {
        self.master
            .map(|m| m.pid)
            .filter(|pid| self.workers.iter().any(|w| w.pid == *pid))
    }

    /// Registered workers other than the master, by pid.
    pub fn slave_pids(&self) -> Vec<u32> {
        let master = self.master_pid();
        self.workers
            .iter()
            .map(|w| w.pid)
            .filter(|p| Some(*p) != master)
            .collect()
    }

    /// Slaves that serve reads (not in the middle of a promotion).
    pub fn serving_slaves(&self) -> usize {
        let master = self.master_pid();
        self.workers
            .iter()
            .filter(|w| Some(w.pid) != master && w.role == Role::Slave)
            .count()
    }

    /// How far `worker` is behind the most advanced worker (the master, once
    /// its progress is published), in sequence numbers.
    pub fn lag(&self, worker: &WorkerInfo) -> u64 {
        let top = self.workers.iter().map(|w| w.seq).max().unwrap_or(0);
        top.saturating_sub(worker.seq)
    }
}
