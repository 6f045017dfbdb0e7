//! Observing a job's processes in `/proc`: the agent pid with its stamped start time, or,
//! before the pid is stamped, the supervisor. `reap` observes every running job this way
//! (through one snapshot when there are many); `job cancel` observes one.

use crate::adapters::process::{liveness, Liveness};
use crate::adapters::spawn::start_times;
use crate::core::job::Job;
use crate::core::reap::JobLiveness;

/// A pass's view of `/proc`: a snapshot of live processes' start times when the pass has
/// many jobs. The snapshot only ever confirms a match; anything else (a pid missing from
/// it, or a different start time) is read again directly, so a process started after the
/// snapshot is never judged dead from it.
#[derive(Debug, Default)]
pub struct ProcView {
    snapshot: Option<std::collections::HashMap<i64, i64>>,
}

impl ProcView {
    /// Reads `/proc` directly for every question.
    pub fn direct() -> ProcView {
        ProcView::default()
    }

    /// Takes one snapshot of `/proc` to answer from.
    pub fn snapshot() -> ProcView {
        ProcView {
            snapshot: Some(start_times()),
        }
    }

    fn liveness(&self, pid: i64, stamp: Option<i64>) -> Liveness {
        if let (Some(snap), Some(stamp)) = (&self.snapshot, stamp) {
            if snap.get(&pid) == Some(&stamp) {
                return Liveness::Alive;
            }
        }
        liveness(pid, stamp)
    }
}

impl ProcView {
    /// Whether the job's supervisor still runs: its pid alive with the start time
    /// stamped when it took the job (a row from before the stamp existed falls back to
    /// the pid), answered through this view.
    pub fn supervisor_alive(&self, job: &Job) -> bool {
        job.supervisor_pid
            .is_some_and(|s| self.liveness(s, job.supervisor_start_time) == Liveness::Alive)
    }
}

/// Observes a running job's processes, reading `/proc` directly.
pub fn observe(job: &Job) -> JobLiveness {
    observe_with(job, &ProcView::direct())
}

/// Observes a running job's processes through a pass's view of `/proc`.
pub fn observe_with(job: &Job, procs: &ProcView) -> JobLiveness {
    match job.pid {
        Some(pid) => match procs.liveness(pid, job.pid_start_time) {
            Liveness::Alive => JobLiveness::Alive,
            Liveness::Dead => JobLiveness::Dead,
            Liveness::Reused => JobLiveness::Reused,
        },
        // Claimed, pid not stamped yet: the supervisor may be about to spawn.
        None if procs.supervisor_alive(job) => JobLiveness::Alive,
        None => JobLiveness::NoPid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::process::start_time;

    #[test]
    fn the_snapshot_confirms_matches_and_rereads_everything_else() {
        let me = i64::from(std::process::id());
        let start = start_time(me).expect("own /proc entry");
        let snap = ProcView::snapshot();
        assert_eq!(snap.liveness(me, Some(start)), Liveness::Alive);
        assert_eq!(snap.liveness(me, Some(start + 1)), Liveness::Reused);
        // A process started after the snapshot is read directly, never judged dead.
        let mut late = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i64::from(late.id());
        let late_start = start_time(pid);
        assert_eq!(snap.liveness(pid, late_start), Liveness::Alive);
        late.kill().unwrap();
        late.wait().unwrap();
        assert_eq!(snap.liveness(pid, late_start), Liveness::Dead);
    }
}
