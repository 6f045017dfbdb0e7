//! The reaper's decision: what to do with one `running` job, as a pure function of the
//! job's stored facts, what `/proc` says about its processes, the time and the settings.
//!
//! Three tiers (SPEC §4 "reap"), checked in this order:
//! 1. **exit code**: the supervisor recorded one but died before the flip: flip now, to
//!    the status the exit code gives (a live supervisor is left to flip it itself);
//! 2. **dead pid**: no live process for `dead_ticks` consecutive passes (the streak is
//!    stored; seeing the process alive resets it): terminate what is left of its group,
//!    flip to `failed`;
//! 3. **backstop**: alive and running longer than the limit: terminate the process
//!    group, then flip to `failed`;
//! 4. **stall**: alive, but its log has not grown for `ORCH_AGENT_STALL_S` (0: off):
//!    terminate the process group, then flip to `failed` (`stalled`). Growth is judged
//!    by the log's size and the pass clock: each pass that sees a new size stores it
//!    with the pass time.
//!
//!
//! A job claimed by **another host** (`jobs.host` set and not this host's id) cannot be
//! judged by pid: its processes are not in this host's `/proc`. It is judged by its
//! supervisor's heartbeat instead ([`judge_heartbeat`]): failed (`heartbeat-expired`)
//! once its last heartbeat (before the first one, its start) is older than
//! `ORCH_HEARTBEAT_TIMEOUT_S`, never before; the flip is guarded by that same horizon.
//!
//! No I/O here: the command observes liveness and acts on the [`ReapAction`].

use std::fmt;

use crate::core::job::JobStatus;

/// Which tier flipped a job; stored as the job's `reap_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// The supervisor recorded an exit code and died before flipping.
    ExitCode,
    /// The process was dead for the configured number of passes.
    DeadPid,
    /// The job ran past `ORCH_REAPER_MAX_RUNNING_S`.
    MaxRunning,
    /// The job's log did not grow for `ORCH_AGENT_STALL_S`.
    Stalled,
    /// Another host's job whose heartbeat is older than `ORCH_HEARTBEAT_TIMEOUT_S`.
    HeartbeatExpired,
}

impl Tier {
    /// Every tier, in decision order.
    pub const ALL: [Tier; 5] = [
        Tier::ExitCode,
        Tier::MaxRunning,
        Tier::DeadPid,
        Tier::Stalled,
        Tier::HeartbeatExpired,
    ];

    /// Returns the stable name stored as `reap_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::ExitCode => "exit-code",
            Tier::DeadPid => "dead-pid",
            Tier::MaxRunning => "max-running",
            Tier::Stalled => "stalled",
            Tier::HeartbeatExpired => "heartbeat-expired",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/proc` says about a running job's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLiveness {
    /// The stamped agent pid runs with the stamped start time, or (no pid stamped yet)
    /// its supervisor runs.
    Alive,
    /// The stamped pid is gone.
    Dead,
    /// The stamped pid now belongs to another process (start time differs).
    Reused,
    /// No pid was ever stamped and no supervisor runs.
    NoPid,
}

impl JobLiveness {
    /// Returns whether the job's process counts as gone.
    pub fn is_dead(self) -> bool {
        !matches!(self, JobLiveness::Alive)
    }

    /// Returns the word logs and `--dry-run` print.
    pub fn as_str(self) -> &'static str {
        match self {
            JobLiveness::Alive => "alive",
            JobLiveness::Dead => "dead",
            JobLiveness::Reused => "reused",
            JobLiveness::NoPid => "no-pid",
        }
    }
}

/// The facts about one running job the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningFacts {
    /// The exit code the supervisor recorded, if any.
    pub exit_code: Option<i32>,
    /// When the job was claimed (unix seconds); `None` reads as "now".
    pub started_at: Option<i64>,
    /// The stored dead-tick streak.
    pub dead_ticks: u32,
    /// Whether the job's supervisor (`run-job`) process still runs.
    pub supervisor_alive: bool,
    /// The job's log as this pass sees it (stall detection).
    pub log: LogFacts,
}

/// A running job's log: its size now and what an earlier pass stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogFacts {
    /// Its size now, in bytes; `None` when it has no log or the log cannot be read
    /// (then the job is not judged for a stall).
    pub size: Option<i64>,
    /// The size an earlier pass stored, if any.
    pub stored_size: Option<i64>,
    /// The pass time the stored size was first seen (unix seconds).
    pub grew_at: Option<i64>,
}

/// The reaper's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapSettings {
    /// `ORCH_REAPER_DEAD_TICKS`: passes a process must be seen dead before the flip.
    pub dead_ticks: u32,
    /// `ORCH_REAPER_MAX_RUNNING_S`.
    pub max_running_s: i64,
    /// `ORCH_AGENT_STALL_S`: seconds a live job's log may stay the same size (0: off).
    pub stall_s: i64,
}

/// What to do with one running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapAction {
    /// Nothing: the job is alive and within its limit (and has no streak to reset).
    Leave,
    /// The process is alive again: reset the stored streak to 0.
    ResetStreak,
    /// The process is alive and its log has a size no pass stored yet: store `size`
    /// with the pass time (and reset any dead streak).
    LogGrew {
        /// The log's size now.
        size: i64,
    },
    /// The process is dead, not yet long enough: store the streak `ticks`.
    Streak {
        /// The new streak.
        ticks: u32,
    },
    /// Flip the job to `status` (terminating its process group first when `kill`).
    Flip {
        /// The terminal status.
        status: JobStatus,
        /// The tier, stored as the reason.
        tier: Tier,
        /// Whether the process group must be terminated before the flip.
        kill: bool,
        /// Why, for the log.
        why: String,
    },
}

/// How the reaper judges a running job's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// By its processes in this host's `/proc` ([`judge`]): a job this host claimed, or
    /// one claimed before hosts were recorded (`host` NULL).
    ByPid,
    /// By its heartbeat ([`judge_heartbeat`]): a job another host claimed.
    ByHeartbeat,
}

/// Whose job it is: `job_host` is the job's `host` column, `this_host` this host's id.
pub fn judged_by(job_host: Option<&str>, this_host: &str) -> Judged {
    match job_host {
        Some(h) if h != this_host => Judged::ByHeartbeat,
        _ => Judged::ByPid,
    }
}

/// The instant before which another host's job counts as dead: `now` less the
/// heartbeat timeout. The flip is guarded by the same value.
pub fn heartbeat_horizon(now: i64, timeout_s: i64) -> i64 {
    now.saturating_sub(timeout_s)
}

/// Whether a reap on `this_host` must read a running job at all: its own jobs and those
/// no host claimed (judged by pid), and another host's only once [`judge_heartbeat`]
/// could flip it (its last sign older than `horizon`, strictly). The others' live jobs
/// are theirs; `Db::running_page` filters by the same rule in SQL.
pub fn reap_reads(
    job_host: Option<&str>,
    this_host: &str,
    last_sign: Option<i64>,
    horizon: i64,
) -> bool {
    match judged_by(job_host, this_host) {
        Judged::ByPid => true,
        Judged::ByHeartbeat => last_sign.is_some_and(|at| at < horizon),
    }
}

/// Decides for a job running on another host, from its last sign of life
/// (`last_sign`: its last heartbeat, else its start; unix seconds): flip it to `failed`
/// (`heartbeat-expired`) when that is older than [`heartbeat_horizon`], strictly; leave
/// it otherwise (and when it has no sign at all, which the guarded flip could not
/// judge either). Its processes are another host's: never signalled from here.
pub fn judge_heartbeat(last_sign: Option<i64>, now: i64, timeout_s: i64) -> ReapAction {
    let horizon = heartbeat_horizon(now, timeout_s);
    match last_sign {
        Some(at) if at < horizon => ReapAction::Flip {
            status: JobStatus::Failed,
            tier: Tier::HeartbeatExpired,
            kill: false,
            why: format!(
                "another host's job, no heartbeat for {}s, limit {timeout_s}s (ORCH_HEARTBEAT_TIMEOUT_S)",
                now - at
            ),
        },
        _ => ReapAction::Leave,
    }
}

/// Decides what to do with one running job, tiers in SPEC order:
/// 1. a recorded exit code whose supervisor died before the flip (a live supervisor is
///    about to flip it itself, unless it has outlived the backstop);
/// 2. a dead, reused or never-stamped process for `dead_ticks` consecutive passes (its
///    leftover group members are terminated when the pid was ours);
/// 3. the backstop: alive past `max_running_s`, its whole group terminated;
/// 4. a stall: alive, its log the same size for `stall_s` since a pass first saw that
///    size (a size no pass stored yet is stored: [`ReapAction::LogGrew`]).
pub fn judge(
    job: &RunningFacts,
    observed: JobLiveness,
    now: i64,
    settings: &ReapSettings,
) -> ReapAction {
    let age = now - job.started_at.unwrap_or(now);
    if let Some(code) = job.exit_code {
        if job.supervisor_alive && age < settings.max_running_s {
            return ReapAction::Leave;
        }
        return ReapAction::Flip {
            status: JobStatus::from_exit_code(code),
            tier: Tier::ExitCode,
            kill: false,
            why: format!("supervisor recorded exit code {code} but never flipped the job"),
        };
    }
    if observed.is_dead() {
        let ticks = job.dead_ticks.saturating_add(1);
        return if ticks >= settings.dead_ticks.max(1) {
            ReapAction::Flip {
                status: JobStatus::Failed,
                tier: Tier::DeadPid,
                // The leader is gone, but children it forked may still run in its group.
                // A reused pid is someone else's: never signalled.
                kill: observed == JobLiveness::Dead,
                why: format!(
                    "process {} for {ticks} consecutive passes",
                    observed.as_str()
                ),
            }
        } else {
            ReapAction::Streak { ticks }
        };
    }
    if age >= settings.max_running_s {
        return ReapAction::Flip {
            status: JobStatus::Failed,
            tier: Tier::MaxRunning,
            kill: true,
            why: format!(
                "running {age}s, limit {}s (process {})",
                settings.max_running_s,
                observed.as_str()
            ),
        };
    }
    if let (true, Some(size)) = (settings.stall_s > 0, job.log.size) {
        match (job.log.stored_size, job.log.grew_at) {
            (Some(stored), Some(at)) if stored == size => {
                let quiet = now - at;
                if quiet >= settings.stall_s {
                    return ReapAction::Flip {
                        status: JobStatus::Failed,
                        tier: Tier::Stalled,
                        kill: true,
                        why: format!(
                            "log unchanged at {size} bytes for {quiet}s, limit {}s (ORCH_AGENT_STALL_S)",
                            settings.stall_s
                        ),
                    };
                }
            }
            _ => return ReapAction::LogGrew { size },
        }
    }
    if job.dead_ticks > 0 {
        ReapAction::ResetStreak
    } else {
        ReapAction::Leave
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ReapSettings = ReapSettings {
        dead_ticks: 3,
        max_running_s: 100,
        stall_s: 0,
    };

    fn facts(exit_code: Option<i32>, started_at: i64, dead_ticks: u32) -> RunningFacts {
        RunningFacts {
            exit_code,
            started_at: Some(started_at),
            dead_ticks,
            supervisor_alive: false,
            log: LogFacts::default(),
        }
    }

    fn flip(action: &ReapAction) -> Option<(JobStatus, Tier, bool)> {
        match action {
            ReapAction::Flip {
                status, tier, kill, ..
            } => Some((*status, *tier, *kill)),
            _ => None,
        }
    }

    /// (exit code, started at, stored streak, observed, now, expected).
    type Case<T> = (Option<i32>, i64, u32, JobLiveness, i64, T);

    #[test]
    fn tiers_in_order_with_their_boundaries() {
        use JobLiveness::{Alive, Dead, NoPid, Reused};
        use JobStatus::{Failed, Succeeded};
        // (exit code, started, streak, observed, now, expected)
        let cases: &[Case<ReapAction>] = &[
            (None, 0, 0, Alive, 50, ReapAction::Leave),
            (None, 0, 2, Alive, 50, ReapAction::ResetStreak),
            (None, 0, 0, Dead, 50, ReapAction::Streak { ticks: 1 }),
            (None, 0, 1, Reused, 50, ReapAction::Streak { ticks: 2 }),
            (None, 0, 1, NoPid, 99, ReapAction::Streak { ticks: 2 }),
        ];
        for (code, started, ticks, obs, now, want) in cases {
            assert_eq!(
                &judge(&facts(*code, *started, *ticks), *obs, *now, &S),
                want,
                "{code:?} {started} {ticks} {obs:?} {now}"
            );
        }
        let flips: &[Case<(JobStatus, Tier, bool)>] = &[
            // Tier 1 (supervisor dead) wins over everything; its status follows the code.
            (
                Some(0),
                0,
                0,
                Alive,
                500,
                (Succeeded, Tier::ExitCode, false),
            ),
            (Some(3), 0, 0, Dead, 1, (Failed, Tier::ExitCode, false)),
            // Backstop at exactly the limit for a live process: its group is killed.
            (None, 0, 0, Alive, 100, (Failed, Tier::MaxRunning, true)),
            // A dead process past the limit is a dead pid (tier 2 before tier 3), still
            // debounced, and its leftover group is terminated.
            (None, 0, 2, Dead, 100, (Failed, Tier::DeadPid, true)),
            // Dead pid on the third consecutive dead pass.
            (None, 0, 2, Dead, 99, (Failed, Tier::DeadPid, true)),
            (None, 0, 2, Reused, 99, (Failed, Tier::DeadPid, false)),
            (None, 0, 2, NoPid, 99, (Failed, Tier::DeadPid, false)),
            (None, 0, 7, Dead, 99, (Failed, Tier::DeadPid, true)),
        ];
        for (code, started, ticks, obs, now, want) in flips {
            let got = judge(&facts(*code, *started, *ticks), *obs, *now, &S);
            assert_eq!(
                flip(&got),
                Some(*want),
                "{code:?} {started} {ticks} {obs:?} {now}"
            );
        }
        // Just under the limit an alive job is left alone.
        assert_eq!(judge(&facts(None, 0, 0), Alive, 99, &S), ReapAction::Leave);
        // A dead process past the limit is debounced like any dead pid.
        assert_eq!(
            judge(&facts(None, 0, 0), Dead, 500, &S),
            ReapAction::Streak { ticks: 1 }
        );
    }

    #[test]
    fn a_recorded_exit_code_with_a_live_supervisor_is_left_to_the_supervisor() {
        let live = RunningFacts {
            supervisor_alive: true,
            ..facts(Some(0), 0, 0)
        };
        assert_eq!(judge(&live, JobLiveness::Dead, 99, &S), ReapAction::Leave);
        // ...unless the supervisor outlived the backstop (hung after recording).
        assert_eq!(
            flip(&judge(&live, JobLiveness::Dead, 100, &S)).map(|f| f.1),
            Some(Tier::ExitCode)
        );
    }

    #[test]
    fn one_tick_flips_on_the_first_dead_pass_and_unknown_start_is_now() {
        let one = ReapSettings {
            dead_ticks: 1,
            max_running_s: 100,
            stall_s: 0,
        };
        let got = judge(&facts(None, 0, 0), JobLiveness::Dead, 1, &one);
        assert_eq!(flip(&got).map(|f| f.1), Some(Tier::DeadPid));
        let no_start = RunningFacts {
            exit_code: None,
            started_at: None,
            dead_ticks: 0,
            supervisor_alive: false,
            log: LogFacts::default(),
        };
        assert_eq!(
            judge(&no_start, JobLiveness::Alive, i64::MAX, &S),
            ReapAction::Leave
        );
    }

    #[test]
    fn a_reap_reads_its_own_jobs_and_only_the_expired_of_other_hosts() {
        // (job's host, its last sign of life, read by a reap on "a" at horizon 100)
        let table: [(Option<&str>, Option<i64>, bool); 8] = [
            (Some("a"), Some(500), true),
            (Some("a"), None, true),
            (None, Some(500), true),
            (None, None, true),
            (Some("b"), Some(99), true),
            (Some("b"), Some(100), false),
            (Some("b"), Some(500), false),
            (Some("b"), None, false),
        ];
        for (host, last, read) in table {
            assert_eq!(reap_reads(host, "a", last, 100), read, "{host:?} {last:?}");
            // Whatever it skips, judge_heartbeat would have left.
            if !read {
                assert_eq!(judge_heartbeat(last, 100 + 8, 8), ReapAction::Leave);
            }
        }
    }

    #[test]
    fn another_hosts_job_is_judged_by_heartbeat_and_rescued_only_after_the_timeout() {
        use Judged::{ByHeartbeat, ByPid};
        // (job's host, this host, judged by)
        let whose: &[(Option<&str>, &str, Judged)] = &[
            (None, "a", ByPid),
            (Some("a"), "a", ByPid),
            (Some("b"), "a", ByHeartbeat),
            (Some(""), "a", ByHeartbeat),
        ];
        for (job, me, want) in whose {
            assert_eq!(judged_by(*job, me), *want, "{job:?} {me}");
        }
        // (last sign, now, timeout, flipped)
        let cases: &[(Option<i64>, i64, i64, bool)] = &[
            (Some(1_000), 1_000, 60, false),
            (Some(1_000), 1_059, 60, false),
            // Exactly at the horizon: not older than it, left.
            (Some(1_000), 1_060, 60, false),
            (Some(1_000), 1_061, 60, true),
            (Some(1_000), 9_999, 60, true),
            // A heartbeat from the future (clock skew) is alive.
            (Some(2_000), 1_061, 60, false),
            // No sign at all: nothing the guarded flip could judge.
            (None, 9_999, 60, false),
        ];
        for &(last, now, timeout, flipped) in cases {
            let got = judge_heartbeat(last, now, timeout);
            match (flipped, flip(&got)) {
                (true, Some(f)) => {
                    assert_eq!(f, (JobStatus::Failed, Tier::HeartbeatExpired, false));
                }
                (false, None) => assert_eq!(got, ReapAction::Leave),
                _ => panic!("{last:?} {now} {timeout}: {got:?}"),
            }
        }
        assert_eq!(heartbeat_horizon(1_061, 60), 1_001);
    }

    #[test]
    fn tier_names_are_stable() {
        assert_eq!(
            Tier::ALL.map(Tier::as_str),
            [
                "exit-code",
                "max-running",
                "dead-pid",
                "stalled",
                "heartbeat-expired"
            ]
        );
    }

    #[test]
    fn a_log_that_stops_growing_stalls_after_the_limit_and_not_before() {
        let on = ReapSettings { stall_s: 900, ..S };
        let with_log =
            |size: Option<i64>, stored: Option<i64>, at: Option<i64>, ticks: u32| RunningFacts {
                log: LogFacts {
                    size,
                    stored_size: stored,
                    grew_at: at,
                },
                ..facts(None, 0, ticks)
            };
        let alive = JobLiveness::Alive;
        let big = ReapSettings {
            max_running_s: 100_000,
            ..on
        };
        // First sight, and a new size: stored (with the pass time).
        assert_eq!(
            judge(&with_log(Some(10), None, None, 0), alive, 50, &big),
            ReapAction::LogGrew { size: 10 }
        );
        assert_eq!(
            judge(
                &with_log(Some(11), Some(10), Some(0), 2),
                alive,
                5_000,
                &big
            ),
            ReapAction::LogGrew { size: 11 }
        );
        // Unchanged: left alone just under the limit, stalled at it, its group killed.
        assert_eq!(
            judge(
                &with_log(Some(10), Some(10), Some(100), 0),
                alive,
                999,
                &big
            ),
            ReapAction::Leave
        );
        let got = judge(
            &with_log(Some(10), Some(10), Some(100), 0),
            alive,
            1_000,
            &big,
        );
        assert_eq!(flip(&got), Some((JobStatus::Failed, Tier::Stalled, true)));
        // Off (0), or no readable log: never stalled.
        let off = ReapSettings { stall_s: 0, ..big };
        assert_eq!(
            judge(
                &with_log(Some(10), Some(10), Some(0), 0),
                alive,
                99_999,
                &off
            ),
            ReapAction::Leave
        );
        assert_eq!(
            judge(&with_log(None, Some(10), Some(0), 0), alive, 99_999, &big),
            ReapAction::Leave
        );
        // A dead process is a dead pid, and the backstop comes first.
        assert_eq!(
            judge(
                &with_log(Some(10), Some(10), Some(0), 0),
                JobLiveness::Dead,
                5_000,
                &big
            ),
            ReapAction::Streak { ticks: 1 }
        );
        let got = judge(&with_log(Some(10), Some(10), Some(0), 0), alive, 100, &on);
        assert_eq!(flip(&got).map(|f| f.1), Some(Tier::MaxRunning));
    }
}
