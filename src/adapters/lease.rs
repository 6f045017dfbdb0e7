//! The merge lease: one file in the state dir naming who may merge right now.
//!
//! Merges across all projects are serialised through it. The file
//! `<state dir>/merge-lease.json` is created and removed only while holding the file lock
//! on `<state dir>/merge-lease.lock`, so "read, decide, write" is atomic between
//! processes. Its content names the holder (job, pid, the pid's start time, acquired at,
//! TTL). The reaper deletes it when the holder is dead or the TTL has passed, and
//! touches nothing else. A file that cannot be parsed is reported and left for a human.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::adapters::fs::write_atomic;
use crate::adapters::lock::{LockError, LockFile, LockGuard};
use crate::adapters::process::liveness;

/// The lease file's name in the state dir.
pub const LEASE_FILE: &str = "merge-lease.json";
/// The lock file that guards it.
pub const LEASE_LOCK: &str = "merge-lease.lock";

pub use crate::core::lease::{Lease, LeaseState};

/// Reading the holder's liveness: the I/O half of judging a lease.
impl Lease {
    /// Judges the lease at `now`, reading the holder's liveness from `/proc`.
    pub fn judge(&self, now: i64) -> LeaseState {
        self.state(now, liveness(self.pid, self.pid_start_time))
    }
}

/// What is in the lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseFile {
    /// No lease file: nobody holds it.
    Free,
    /// A parsed lease.
    Held(Lease),
    /// A file that could not be parsed (left for a human).
    Malformed(String),
}

/// The merge lease in a state dir.
#[derive(Debug, Clone)]
pub struct MergeLease {
    dir: PathBuf,
}

impl MergeLease {
    /// The lease of `state_dir`.
    pub fn new(state_dir: &Path) -> MergeLease {
        MergeLease {
            dir: state_dir.to_path_buf(),
        }
    }

    /// Returns the lease file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LEASE_FILE)
    }

    /// Takes the guarding lock without waiting.
    ///
    /// # Errors
    /// [`LockError::Busy`] while another process reads or writes the lease.
    pub fn lock(&self) -> Result<LockGuard, LockError> {
        LockFile::try_acquire(&self.dir.join(LEASE_LOCK))
    }

    /// Reads the lease file (callers that decide on it hold [`MergeLease::lock`]).
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn read(&self) -> Result<LeaseFile> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(match serde_json::from_slice::<Lease>(&bytes) {
                Ok(l) => LeaseFile::Held(l),
                Err(e) => LeaseFile::Malformed(format!("{}: {e}", path.display())),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaseFile::Free),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `lease` (the caller holds the lock and found the lease free or stale).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, _proof: &LockGuard, lease: &Lease) -> Result<()> {
        write_atomic(&self.path(), &serde_json::to_vec_pretty(lease)?)
    }

    /// Removes the lease file (the caller holds the lock); `false` when there was none.
    ///
    /// # Errors
    /// When the file exists but cannot be removed.
    pub fn remove(&self, _proof: &LockGuard) -> Result<bool> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path().display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::sample as lease;

    #[test]
    fn read_write_remove_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let m = MergeLease::new(dir.path());
        assert_eq!(m.read().unwrap(), LeaseFile::Free);
        let guard = m.lock().unwrap();
        assert!(matches!(m.lock(), Err(LockError::Busy(_))));
        m.write(&guard, &lease(1, 2)).unwrap();
        assert_eq!(m.read().unwrap(), LeaseFile::Held(lease(1, 2)));
        assert!(m.remove(&guard).unwrap());
        assert!(!m.remove(&guard).unwrap());
        std::fs::write(m.path(), "{not json").unwrap();
        assert!(matches!(m.read().unwrap(), LeaseFile::Malformed(_)));
    }
}
