//! The election rule, as a pure function of what ZooKeeper shows.
//!
//! When the master dies, the live slave with the lowest pid becomes master. To
//! avoid a herd, only that slave watches the master znode; every other slave
//! watches the slave just below it (its predecessor), and looks again only when
//! that one goes. A master is never displaced by a slave with a lower pid.

/// What a worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This worker holds the master znode.
    Lead,
    /// There is no master and this is the lowest live pid: try to take the master znode.
    Promote,
    /// This is the lowest slave: watch the master znode.
    WatchMaster,
    /// Watch the znode of the slave with this pid, the next lower one.
    WatchPredecessor(u32),
}

/// The pids that take part in the election: every registered worker but those
/// still catching up (`joining`: not slaves yet, they enter once they serve).
/// A joiner with the lowest pid would otherwise hold up a failover until it
/// has caught up.
pub fn contenders(registered: &[u32], joining: &[u32], me: u32) -> Vec<u32> {
    registered
        .iter()
        .copied()
        .filter(|p| *p == me || !joining.contains(p))
        .collect()
}

/// `me`: this worker's pid; `master`: the master's pid, if any; `live`: the pids of
/// every contender ([`contenders`]; in any order, `me` included).
pub fn decide(me: u32, master: Option<u32>, live: &[u32]) -> Decision {
    if master == Some(me) {
        return Decision::Lead;
    }
    let predecessor = live
        .iter()
        .copied()
        .filter(|&p| p < me && Some(p) != master)
        .max();
    match (predecessor, master) {
        (Some(p), _) => Decision::WatchPredecessor(p),
        (None, Some(_)) => Decision::WatchMaster,
        (None, None) => Decision::Promote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joiner_with_the_lowest_pid_does_not_hold_up_the_failover() {
        let live = contenders(&[3, 9, 12], &[3], 9);
        assert_eq!(live, vec![9, 12]);
        assert_eq!(decide(9, None, &live), Decision::Promote);
        assert_eq!(decide(12, None, &live), Decision::WatchPredecessor(9));
        // Once it serves, it is a contender like any slave.
        assert_eq!(contenders(&[3, 9, 12], &[], 9), vec![3, 9, 12]);
        // A worker never leaves itself out.
        assert_eq!(contenders(&[3, 9], &[3], 3), vec![3, 9]);
    }

    #[test]
    fn the_master_leads() {
        assert_eq!(decide(7, Some(7), &[3, 7, 9]), Decision::Lead);
    }

    #[test]
    fn lowest_slave_watches_the_master_others_their_predecessor() {
        assert_eq!(decide(3, Some(5), &[3, 5, 9, 12]), Decision::WatchMaster);
        assert_eq!(
            decide(9, Some(5), &[3, 5, 9, 12]),
            Decision::WatchPredecessor(3)
        );
        assert_eq!(
            decide(12, Some(5), &[3, 5, 9, 12]),
            Decision::WatchPredecessor(9)
        );
    }

    #[test]
    fn without_a_master_only_the_lowest_pid_promotes() {
        assert_eq!(decide(3, None, &[9, 3, 12]), Decision::Promote);
        assert_eq!(decide(9, None, &[9, 3, 12]), Decision::WatchPredecessor(3));
    }

    #[test]
    fn a_new_lower_pid_slave_does_not_take_over() {
        // Master 50 is alive; a slave 2 joins: it only watches the master.
        assert_eq!(decide(2, Some(50), &[2, 50, 60]), Decision::WatchMaster);
        assert_eq!(
            decide(60, Some(50), &[2, 50, 60]),
            Decision::WatchPredecessor(2)
        );
    }

    #[test]
    fn alone_without_master_promotes() {
        assert_eq!(decide(42, None, &[42]), Decision::Promote);
        assert_eq!(decide(42, None, &[]), Decision::Promote);
    }
}
