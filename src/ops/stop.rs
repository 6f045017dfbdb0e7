//! Stopping a running job's agent, the one way `reap` (the backstop, a stall) and
//! `job cancel` do it, whoever the agent runs as (docs/jobs.md, "Stopping an agent").
//!
//! The agent's process group is signalled directly when this process may (same user,
//! root, `CAP_KILL`). An agent running as `ORCH_AGENT_USER` is another user's group: as
//! `orch` without `CAP_KILL` the kernel refuses (`EPERM`). Then the job's supervisor,
//! `orch run-job` (orch's own user, so always signallable, and allowed to signal its
//! agent: root under the direct launcher, `CAP_KILL` under `orch-job@.service`), gets the
//! TERM: it passes TERM on to its agent's group and KILLs the group after
//! `ORCH_REAPER_KILL_GRACE_S`. Either way the outcome is read from `/proc`: the group is
//! gone, or the stop is reported as failed, naming the pid and its user, and the caller
//! leaves the job running rather than pretending it stopped.

use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{kill_process, test_kill_process_group, Pid, Signal};

use crate::adapters::process::{liveness, Liveness};
use crate::adapters::spawn::{group_alive, terminate_group, wait_gone, Terminated};
use crate::core::job::Job;

/// How long a supervisor's group takes to vanish after its own KILL, beyond the grace.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Which way the stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRoute {
    /// This process signalled the group itself.
    Direct,
    /// The group was another user's: the job's supervisor was asked (TERM), and it
    /// passed the stop on.
    Supervisor,
    /// Neither: the group is another user's and the supervisor is dead (or is not the
    /// stamped process any more).
    NoRoute,
}

/// What stopping one job's agent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStop {
    /// The process group aimed at (the agent's pid, or the supervisor's before the stamp).
    pub pgid: i64,
    /// How it ended: gone (`AlreadyGone`, `ByTerm`, `ByKill`) or `Survived`.
    pub how: Terminated,
    /// Which way.
    pub route: StopRoute,
    /// The user the group's leader runs as, when `/proc` could tell.
    pub user: Option<String>,
}

impl AgentStop {
    /// Whether no process of the group is left.
    pub fn stopped(&self) -> bool {
        self.how != Terminated::Survived
    }

    /// One line for the logs: `process group 123 (user orch-agent) stopped through
    /// its supervisor 120`.
    pub fn describe(&self, supervisor: Option<i64>) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!(" (user {u})"))
            .unwrap_or_default();
        let route = match (self.route, supervisor) {
            (StopRoute::Direct, _) => "directly".to_string(),
            (StopRoute::Supervisor, Some(s)) => format!("through its supervisor {s}"),
            (StopRoute::Supervisor, None) => "through its supervisor".to_string(),
            (StopRoute::NoRoute, _) => {
                "not reachable: another user's group, and no live supervisor to pass the stop on"
                    .to_string()
            }
        };
        let how = match self.how {
            // Through the supervisor, the signal that ended it is the supervisor's to
            // tell (the job's log has the agent's exit code).
            Terminated::ByTerm | Terminated::ByKill if self.route == StopRoute::Supervisor => {
                "stopped"
            }
            Terminated::AlreadyGone => "already gone",
            Terminated::ByTerm => "stopped by TERM",
            Terminated::ByKill => "stopped by KILL",
            Terminated::Survived => "STILL RUNNING",
        };
        format!("process group {}{user} {how}, {route}", self.pgid)
    }
}

/// Stops the agent of a running `job` (TERM, KILL after `grace`), directly when this
/// process may signal its group, through its supervisor when not. Reads `/proc` for the
/// outcome; never signals a supervisor whose start time does not match its stamp.
pub fn stop_agent(job: &Job, grace: Duration) -> AgentStop {
    let pgid = job.pid.or(job.supervisor_pid).unwrap_or(0);
    let user = owner_of(pgid);
    let done = |how, route| AgentStop {
        pgid,
        how,
        route,
        user: user.clone(),
    };
    if pgid <= 1 || !group_alive(pgid) {
        return done(Terminated::AlreadyGone, StopRoute::Direct);
    }
    if may_signal_group(pgid) {
        return done(terminate_group(pgid, grace), StopRoute::Direct);
    }
    // Another user's group: its supervisor is orch's own user and may signal it.
    // Only a supervisor whose start time was stamped: without it, the pid may by now
    // be any process of orch's user.
    let supervisor = job.supervisor_pid.filter(|s| {
        *s > 1
            && *s != pgid
            && job.supervisor_start_time.is_some()
            && liveness(*s, job.supervisor_start_time) == Liveness::Alive
    });
    let Some(pid) = supervisor.and_then(|s| i32::try_from(s).ok().and_then(Pid::from_raw)) else {
        return done(Terminated::Survived, StopRoute::NoRoute);
    };
    if kill_process(pid, Signal::Term).is_err() {
        return done(Terminated::Survived, StopRoute::NoRoute);
    }
    // The supervisor passes TERM on and KILLs after the same grace; which of the two
    // ended the group only it knows (the job's log has the exit code), so one wait.
    let how = if wait_gone(pgid, grace + AFTER_KILL + Duration::from_secs(1)) {
        Terminated::ByTerm
    } else {
        Terminated::Survived
    };
    done(how, StopRoute::Supervisor)
}

/// Whether a signal to group `pgid` would be delivered: signal 0 checks permission
/// without sending anything.
fn may_signal_group(pgid: i64) -> bool {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process_group(pid) {
        Ok(()) => true,
        Err(Errno::PERM) => false,
        Err(_) => true,
    }
}

/// The user name (or `uid N`) owning `/proc/<pid>`.
fn owner_of(pid: i64) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if pid <= 0 {
        return None;
    }
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
        })
    });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}
