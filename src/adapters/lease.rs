//! The merge lease: one file in the state dir naming who may merge right now.
//!
//! Merges across all projects are serialised through it. The file
//! `<state dir>/merge-lease.json` is created and removed only while holding the file lock
//! on `<state dir>/merge-lease.lock`, so "read, decide, write" is atomic between
//! processes. Its content names the holder (job, pid, the pid's start time, acquired at,
//! TTL). The reaper deletes it when the holder is dead or the TTL has passed, and
//! touches nothing else. A file that cannot be parsed is reported and left for a human.
//!
//! Under PostgreSQL the hosts share no state dir, so a lease is a row instead
//! ([`RowLease`]: the merge lease, and the passes that must run once across hosts):
//! taken when free or expired (or held by a dead process of this host), renewed once
//! half its TTL has passed, released on drop, each by the generation it took. Nothing
//! reaps a row: the next taker takes an expired one over.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use std::time::Instant;

use crate::adapters::db::{Db, LeaseTake};
use crate::adapters::fs::write_atomic;
use crate::adapters::lock::{LockError, LockFile, LockGuard};
use crate::adapters::process::{liveness, start_time};
use crate::core::job::Liveness;
use crate::core::lease::{holder_text, parse_holder, renewal_due, LeaseHolder, LeaseRow};

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

/// This process as a lease holder on host `host`.
pub fn this_process(host: &str) -> LeaseHolder {
    let pid = i64::from(std::process::id());
    LeaseHolder {
        host: host.to_string(),
        pid,
        start_time: start_time(pid),
    }
}

/// The liveness of a row's holder when it is a process of host `host` (read from
/// `/proc`), `None` for another host's holder or a holder that cannot be read.
pub fn local_liveness(host: &str, row: &LeaseRow) -> Option<Liveness> {
    parse_holder(&row.holder)
        .filter(|h| h.host == host)
        .map(|h| liveness(h.pid, h.start_time))
}

/// A lease row this process holds (its own database connection, so renewing never
/// waits for the pass's); released on drop.
pub struct RowLease {
    db: Db,
    name: String,
    generation: i64,
    ttl_s: i64,
    pinned: Option<i64>,
    renewed: Instant,
    lost: bool,
}

/// What taking a lease row came to.
pub enum RowTake {
    /// Taken; `over` is the row it replaced and why that could be taken.
    Held(RowLease, Option<(LeaseRow, crate::core::lease::RowVerdict)>),
    /// Someone else holds it (the row as read); the connection, to try again on.
    Busy(LeaseRow, Db),
}

impl RowLease {
    /// Tries once to take lease `name` for `ttl_s` seconds as `holder` (with
    /// `detail`), on its own connection `db`; time is `pinned` (`ORCH_NOW`) or the
    /// database's clock.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn take(
        mut db: Db,
        name: &str,
        holder: &LeaseHolder,
        ttl_s: i64,
        pinned: Option<i64>,
        detail: Option<&str>,
    ) -> Result<RowTake> {
        let host = holder.host.clone();
        let taken = db.take_lease(name, &holder_text(holder), ttl_s, pinned, detail, |r| {
            local_liveness(&host, r)
        })?;
        Ok(match taken {
            LeaseTake::Busy(row) => RowTake::Busy(row, db),
            LeaseTake::Taken {
                generation, over, ..
            } => RowTake::Held(
                RowLease {
                    db,
                    name: name.to_string(),
                    generation,
                    ttl_s,
                    pinned,
                    renewed: Instant::now(),
                    lost: false,
                },
                over,
            ),
        })
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation this holder took.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Renews the lease when half its TTL has passed since it was taken or last
    /// renewed; `false` once it is known to be lost (taken over by another holder),
    /// after which this holder must stop acting under it. A renewal that fails for
    /// another reason (the database unreachable a moment) is logged and tried again at
    /// the next call; the lease holds until it expires.
    pub fn keep(&mut self) -> bool {
        if self.lost {
            return false;
        }
        if !renewal_due(self.renewed.elapsed().as_secs(), self.ttl_s) {
            return true;
        }
        match self
            .db
            .renew_lease(&self.name, self.generation, self.ttl_s, self.pinned)
        {
            Ok(Some(expires_at)) => {
                log::info!(
                    "lease {} renewed (generation {}) until {expires_at}",
                    self.name,
                    self.generation
                );
                self.renewed = Instant::now();
                true
            }
            Ok(None) => {
                log::error!(
                    "lease {} (generation {}) was taken over by another holder",
                    self.name,
                    self.generation
                );
                self.lost = true;
                false
            }
            Err(e) => {
                log::warn!("renewing lease {}: {e:#}; trying again later", self.name);
                true
            }
        }
    }
}

impl Drop for RowLease {
    fn drop(&mut self) {
        if self.lost {
            return;
        }
        match self
            .db
            .release_lease(&self.name, self.generation, self.pinned)
        {
            Ok(true) => log::info!("lease {} released", self.name),
            Ok(false) => log::warn!(
                "lease {} (generation {}) had expired or was taken over; left as it is",
                self.name,
                self.generation
            ),
            Err(e) => log::error!(
                "releasing lease {}: {e:#}; it lapses at its expiry",
                self.name
            ),
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
