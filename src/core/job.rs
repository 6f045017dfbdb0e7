//! Jobs as stored, their statuses, and the facts about a job that decisions read. No
//! I/O here.

use std::fmt;
use std::str::FromStr;

use crate::core::stage::{Agent, Stage};

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// The task.
    pub task_id: i64,
    /// The agent.
    pub agent: Agent,
    /// The stage it works for.
    pub stage: Stage,
    /// Its status.
    pub status: JobStatus,
    /// 1 for the first run; a re-run is a new attempt of the same job.
    pub attempt: u32,
    /// The agent's pid, stamped right after spawn.
    pub pid: Option<i64>,
    /// The agent process's start time (`/proc/<pid>/stat` field 22), to tell pid reuse.
    pub pid_start_time: Option<i64>,
    /// The supervisor's pid.
    pub supervisor_pid: Option<i64>,
    /// The agent's exit code, when known.
    pub exit_code: Option<i32>,
    /// Enqueued (unix seconds).
    pub enqueued_at: i64,
    /// Started (unix seconds).
    pub started_at: Option<i64>,
    /// Finished (unix seconds).
    pub finished_at: Option<i64>,
    /// Why the reaper flipped it (`exit-code`, `dead-pid`, `max-running`, `stalled`).
    pub reap_reason: Option<String>,
    /// Consecutive reaper passes that found its process dead.
    pub dead_ticks: u32,
    /// How many times the reaper rescued it.
    pub rescue_count: u32,
    /// The job's log file.
    pub log_path: Option<String>,
    /// The supervisor's process start time, to tell pid reuse.
    pub supervisor_start_time: Option<i64>,
    /// The log's size when `reap` last saw it change (stall detection), if seen.
    pub log_size: Option<i64>,
    /// The pass time `reap` last saw the log's size change (unix seconds), if seen.
    pub log_grew_at: Option<i64>,
    /// The `ORCH_HOST_ID` of the host that claimed it (`None`: claimed before hosts were
    /// recorded, judged as this host's).
    pub host: Option<String>,
    /// Its supervisor's last heartbeat (unix seconds; the claim time until the first).
    pub heartbeat_at: Option<i64>,
}

/// The life of a job: `queued` → `running` → one terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for `dispatch`.
    Queued,
    /// Claimed by `dispatch`; its supervisor runs the agent.
    Running,
    /// The agent exited 0.
    Succeeded,
    /// The agent exited non-zero, died, or was reaped.
    Failed,
    /// An operator cancelled it, or its task moved on.
    Cancelled,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// Returns the stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Returns whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Returns the terminal status for an agent's exit code.
    pub fn from_exit_code(code: i32) -> JobStatus {
        if code == 0 {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job status {s:?}; expected one of {}",
                    JobStatus::ALL.map(JobStatus::as_str).join(", ")
                )
            })
    }
}

impl Job {
    /// How it ended (or that it has not), as a gate and a decision read it.
    #[must_use]
    pub fn outcome(&self) -> JobOutcome {
        JobOutcome {
            status: self.status,
            attempt: self.attempt,
            exit_code: self.exit_code,
        }
    }
}

/// How a stage's latest job ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JobOutcome {
    /// Its status.
    pub status: JobStatus,
    /// Its attempt number (1 for the first run).
    pub attempt: u32,
    /// The agent's exit code, when known.
    pub exit_code: Option<i32>,
}

/// What `/proc` says about a stamped pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// The pid runs and its start time matches the stamp (or no stamp to compare).
    Alive,
    /// No such process, or a zombie.
    Dead,
    /// The pid now belongs to another process (start time differs).
    Reused,
}

impl Liveness {
    /// Returns the word `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Reused => "reused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_terminality() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
        }
        assert!("done".parse::<JobStatus>().is_err());
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Cancelled.is_terminal());
        assert_eq!(JobStatus::from_exit_code(0), JobStatus::Succeeded);
        assert_eq!(JobStatus::from_exit_code(137), JobStatus::Failed);
    }
}
