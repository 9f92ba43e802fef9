//! A worker's stable identity on disk. Pids change with every start, so a
//! worker's SQLite file is named by a *slot*, not by its pid: at start it takes
//! the lowest slot of the data directory that no live worker holds, by an
//! exclusive advisory lock (`flock`) on `slot-<n>.lock`. The lock lives as long
//! as the process (the kernel drops it when the process dies, however it dies),
//! so two live workers never share a file, and a worker started after another
//! one stopped takes over its file and resumes from where that file ends
//! instead of copying everything again.
//!
//! The slot also names the two snapshot files a worker may have in transit
//! (`slot-<n>.snapshot-in` while it receives one, `slot-<n>.snapshot-out`
//! while it serves one); the next owner of the slot removes whatever a dead
//! one left. The data directory therefore holds one file per slot ever used
//! (a free slot's file waits for the next worker, which resumes it) plus at
//! most one snapshot per transfer under way.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Slots tried before giving up (far above any worker count this runs).
const MAX_SLOTS: u32 = 4096;

/// A slot held by this process until it is dropped (or the process ends).
#[derive(Debug)]
pub struct Slot {
    pub index: u32,
    dir: PathBuf,
    _lock: File,
}

impl Slot {
    /// Takes the lowest free slot in `dir` (creating `dir` if needed).
    pub fn claim(dir: &Path) -> anyhow::Result<Slot> {
        std::fs::create_dir_all(dir)?;
        for index in 0..MAX_SLOTS {
            let path = dir.join(format!("slot-{index}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match file.try_lock() {
                Ok(()) => {
                    let slot = Slot {
                        index,
                        dir: dir.to_path_buf(),
                        _lock: file,
                    };
                    slot.remove_transfers();
                    return Ok(slot);
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
                }
            }
        }
        Err(anyhow::anyhow!(
            "all {MAX_SLOTS} slots of {} are held by live workers",
            dir.display()
        ))
    }

    /// This slot's SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(format!("slot-{}.sqlite", self.index))
    }

    /// Where a snapshot this slot's worker receives is written until checked.
    pub fn incoming_path(&self) -> PathBuf {
        self.dir.join(format!("slot-{}.snapshot-in", self.index))
    }

    /// Where a snapshot this slot's worker serves is taken.
    pub fn outgoing_path(&self) -> PathBuf {
        self.dir.join(format!("slot-{}.snapshot-out", self.index))
    }

    /// Removes this slot's SQLite file (and its WAL), so that the next worker
    /// in the slot starts from a snapshot.
    pub fn discard_data(&self) {
        let db = self.db_path();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        self.remove_transfers();
    }

    /// Removes snapshot files a transfer left (a worker of this slot that
    /// died during one).
    pub fn remove_transfers(&self) {
        for path in [self.incoming_path(), self.outgoing_path()] {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_slots_are_never_shared_and_a_freed_slot_is_taken_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Slot::claim(dir.path()).expect("slot");
        let b = Slot::claim(dir.path()).expect("slot");
        let c = Slot::claim(dir.path()).expect("slot");
        assert_eq!((a.index, b.index, c.index), (0, 1, 2));
        assert_ne!(a.db_path(), b.db_path());
        drop(b);
        let again = Slot::claim(dir.path()).expect("slot");
        assert_eq!(again.index, 1, "the freed slot, with its file, is reused");
        assert_eq!(again.db_path(), dir.path().join("slot-1.sqlite"));
    }

    #[test]
    fn discarding_removes_the_database_and_its_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slot = Slot::claim(dir.path()).expect("slot");
        for suffix in ["", "-wal", "-shm"] {
            std::fs::write(format!("{}{suffix}", slot.db_path().display()), b"x").expect("write");
        }
        slot.discard_data();
        for suffix in ["", "-wal", "-shm"] {
            assert!(!Path::new(&format!("{}{suffix}", slot.db_path().display())).exists());
        }
    }

    #[test]
    fn the_next_owner_removes_the_snapshots_a_dead_one_left_in_transit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slot = Slot::claim(dir.path()).expect("slot");
        std::fs::write(slot.db_path(), b"kept").expect("write");
        std::fs::write(slot.incoming_path(), b"partial").expect("write");
        std::fs::write(slot.outgoing_path(), b"backup").expect("write");
        drop(slot);
        let next = Slot::claim(dir.path()).expect("slot");
        assert!(!next.incoming_path().exists() && !next.outgoing_path().exists());
        assert!(next.db_path().exists(), "the slot's own copy is kept");
    }
}
