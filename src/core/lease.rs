//! The merge lease as data and the rule that judges it (whether a holder may be
//! overtaken); `adapters::lease` keeps the file and its lock, and reads the holder's
//! liveness from `/proc`.

use crate::core::job::Liveness;

/// Who holds the lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The job that holds it, when a job does (`None` for an operator's run).
    pub job_id: Option<i64>,
    /// The task it merges for, when known.
    pub task: Option<String>,
    /// The holder's pid.
    pub pid: i64,
    /// The holder's start time (`/proc/<pid>/stat` field 22), to tell pid reuse.
    pub pid_start_time: Option<i64>,
    /// When it was taken (unix seconds).
    pub acquired_at: i64,
    /// How long it may be held (seconds) before it counts as stale.
    pub ttl_s: i64,
}

/// Why a lease counts as stale, or that it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// The holder lives and the TTL has not passed.
    Held,
    /// The holder's process is gone (or its pid now belongs to another process).
    HolderDead,
    /// `acquired_at + ttl_s` has passed.
    Expired,
}

impl Lease {
    /// Judges the lease at `now` with the holder's liveness.
    pub fn state(&self, now: i64, holder: Liveness) -> LeaseState {
        if holder != Liveness::Alive {
            LeaseState::HolderDead
        } else if now >= self.acquired_at.saturating_add(self.ttl_s) {
            LeaseState::Expired
        } else {
            LeaseState::Held
        }
    }
}

/// A lease held by job 1 for `ORCH-1` (pid 1), for tests here and in the adapter.
#[cfg(test)]
pub(crate) fn sample(acquired_at: i64, ttl_s: i64) -> Lease {
    Lease {
        job_id: Some(1),
        task: Some("ORCH-1".into()),
        pid: 1,
        pid_start_time: None,
        acquired_at,
        ttl_s,
    }
}

#[cfg(test)]
mod tests {
    use super::sample as lease;
    use super::*;

    #[test]
    fn lease_states_at_their_boundaries() {
        let l = lease(100, 60);
        assert_eq!(l.state(100, Liveness::Alive), LeaseState::Held);
        assert_eq!(l.state(159, Liveness::Alive), LeaseState::Held);
        assert_eq!(l.state(160, Liveness::Alive), LeaseState::Expired);
        assert_eq!(l.state(100, Liveness::Dead), LeaseState::HolderDead);
        assert_eq!(l.state(100, Liveness::Reused), LeaseState::HolderDead);
    }
}
