//! A worker's stable identity on disk. Pids change with every start, so a
//! worker's SQLite file is named by a *slot*, not by its pid: at start it takes
//! the lowest slot of the data directory that no live worker holds, by an
//! exclusive advisory lock (`flock`) on `slot-<n>.lock`. The lock lives as long
//! as the process (the kernel drops it when the process dies, however it dies),
//! so two live workers never share a file, and a worker started after another
//! one stopped takes over its file and resumes from where that file ends
//! instead of copying everything again.

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
                    return Ok(Slot {
                        index,
                        dir: dir.to_path_buf(),
                        _lock: file,
                    })
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

    /// Removes this slot's SQLite file (and its WAL), so that the next worker
    /// in the slot starts from a snapshot.
    pub fn discard_data(&self) {
        let db = self.db_path();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
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
}
