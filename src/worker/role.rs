//! The worker's role as a state machine: the one place that says which
//! changes of role are possible, so no task can set one out of turn.
//!
//! ```text
//! Joining ──caught up──▶ Slave ──won the election──▶ Promoting ──own barrier read──▶ Master
//!    ▲                     │
//!    └──lost RabbitMQ──────┘   (a joiner that loses it stays Joining)
//! ```
//!
//! Only `worker::run` and `serve` advance it; every other task reads it or
//! waits for its changes. A refused change is a bug, and the worker ends on
//! it (crash-only) rather than serve in a role it did not reach.

use tokio::sync::watch;

use crate::coord::Role;

/// Whether a worker in role `from` may move to `to`.
pub fn allowed(from: Role, to: Role) -> bool {
    use Role::*;
    matches!(
        (from, to),
        (Joining, Slave) | (Slave, Promoting) | (Promoting, Master) | (Slave | Joining, Joining)
    )
}

/// The worker's current role; starts `Joining`.
#[derive(Debug)]
pub struct RoleCell(watch::Sender<Role>);

impl Default for RoleCell {
    fn default() -> Self {
        RoleCell(watch::channel(Role::Joining).0)
    }
}

impl RoleCell {
    pub fn get(&self) -> Role {
        *self.0.borrow()
    }

    /// Follows the changes of role.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.0.subscribe()
    }

    /// Moves to `to`, if [`allowed`] from the current role.
    pub fn advance(&self, to: Role) -> anyhow::Result<()> {
        let mut refused = None;
        self.0.send_if_modified(|role| {
            if allowed(*role, to) {
                let changed = *role != to;
                *role = to;
                changed
            } else {
                refused = Some(*role);
                false
            }
        });
        match refused {
            None => Ok(()),
            Some(from) => Err(anyhow::anyhow!(
                "the worker cannot go from {from:?} to {to:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    #[test]
    fn a_worker_goes_up_one_step_at_a_time() {
        let role = RoleCell::default();
        assert_eq!(role.get(), Joining);
        assert!(role.advance(Master).is_err(), "a joiner cannot lead");
        assert!(
            role.advance(Promoting).is_err(),
            "a joiner cannot run for master"
        );
        role.advance(Slave).expect("caught up");
        assert!(role.advance(Master).is_err(), "a slave must promote first");
        role.advance(Promoting).expect("won");
        role.advance(Master).expect("barrier read back");
        assert_eq!(role.get(), Master);
    }

    #[test]
    fn only_replicas_go_back_to_joining() {
        for (from, back) in [
            (Joining, true),
            (Slave, true),
            (Promoting, false),
            (Master, false),
        ] {
            assert_eq!(allowed(from, Joining), back, "{from:?}");
        }
        let role = RoleCell::default();
        role.advance(Slave).expect("caught up");
        role.advance(Joining).expect("lost RabbitMQ");
        assert_eq!(role.get(), Joining);
    }

    #[test]
    fn a_refused_change_leaves_the_role_and_wakes_no_one() {
        let role = RoleCell::default();
        let mut seen = role.subscribe();
        seen.mark_unchanged();
        assert!(role.advance(Master).is_err());
        assert_eq!(role.get(), Joining);
        assert!(!seen.has_changed().unwrap_or(true));
    }
}
