//! Reconcile's decisions: which guard skips a task (in the order SPEC §4 gives), and
//! what to do with a gate's answer (advance, roll back, re-run the stage's job, escalate
//! or wait). Pure: the command gathers the facts and acts on the answer.

use crate::core::gate::GateDecision;
use crate::core::job::JobOutcome;
use crate::core::stage::{transition, Stage};

/// The facts the guards read, all local (no network) except `plane_blocked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    /// The task's stage.
    pub stage: Stage,
    /// When it entered the stage (unix seconds).
    pub stage_entered_at: i64,
    /// A queued or running job of the task, if any (id and status word).
    pub live_job: Option<(i64, &'static str)>,
    /// Developer rollbacks so far.
    pub developer_retries: u32,
    /// Whether the task is already parked for a human.
    pub escalated: bool,
}

/// The limits the guards and decisions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `ORCH_RECONCILE_GRACE_S`.
    pub grace_s: i64,
    /// `ORCH_MAX_DEVELOPER_RETRIES`.
    pub max_developer_retries: u32,
    /// `ORCH_JOB_MAX_ATTEMPTS`.
    pub job_max_attempts: u32,
}

/// Why a task is left alone this pass. A skip writes nothing and sends nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "guard", content = "detail", rename_all = "kebab-case")]
pub enum Skip {
    /// Analysis: a human decides in Plane.
    Analysis,
    /// The stage has no gate.
    NoGate(String),
    /// A job is queued or running.
    JobLive(String),
    /// The task entered its stage too recently.
    Grace(String),
    /// The task is escalated; nothing re-drives it until a human acts.
    Escalated(String),
    /// The Plane work item is in a blocked or needs-input state (or that could not be told).
    Blocked(String),
}

impl Skip {
    /// Returns the guard's stable name.
    pub fn guard(&self) -> &'static str {
        match self {
            Skip::Analysis => "analysis",
            Skip::NoGate(_) => "no-gate",
            Skip::JobLive(_) => "job-live",
            Skip::Grace(_) => "grace",
            Skip::Escalated(_) => "escalated",
            Skip::Blocked(_) => "blocked",
        }
    }
}

/// Applies the local guards, in order: analysis, no gate, live job, grace, escalated.
/// `None` means the task goes on to the blocked check and then its gate.
pub fn local_guards(t: &TaskFacts, now: i64, limits: &Limits) -> Option<Skip> {
    if t.stage == Stage::Analysis {
        return Some(Skip::Analysis);
    }
    if crate::core::gate::gate(t.stage).is_none() {
        return Some(Skip::NoGate(format!("{} has no gate", t.stage)));
    }
    if let Some((id, status)) = t.live_job {
        return Some(Skip::JobLive(format!("job {id} is {status}")));
    }
    let age = now - t.stage_entered_at;
    if age < limits.grace_s {
        return Some(Skip::Grace(format!(
            "entered {} {}s ago (grace {}s)",
            t.stage, age, limits.grace_s
        )));
    }
    if t.developer_retries >= limits.max_developer_retries {
        return Some(Skip::Escalated(format!(
            "developer retries {} reached the limit {}",
            t.developer_retries, limits.max_developer_retries
        )));
    }
    if t.escalated {
        return Some(Skip::Escalated("escalated to a human".into()));
    }
    None
}

/// What Plane said about the work item's state, for the blocked guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaneState {
    /// A state that is not blocked (its name).
    Clear(String),
    /// A blocked or needs-input state (its name).
    Blocked(String),
    /// Could not tell (error, timeout, unknown state): skip, never advance.
    Unknown(String),
}

/// Applies the blocked guard (only when `ORCH_RECONCILE_SKIP_BLOCKED_ENABLED`).
pub fn blocked_guard(state: &PlaneState) -> Option<Skip> {
    match state {
        PlaneState::Clear(_) => None,
        PlaneState::Blocked(name) => Some(Skip::Blocked(format!("work item is in {name:?}"))),
        PlaneState::Unknown(why) => Some(Skip::Blocked(format!(
            "could not tell the work item's state: {why}"
        ))),
    }
}

/// What reconcile does with a task whose guards let it through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Move forward (the next stage's job is enqueued by the move).
    Advance {
        /// The next stage.
        to: Stage,
    },
    /// Move back to development; `escalate` when this rollback reaches the retry limit.
    Rollback {
        /// Where to.
        to: Stage,
        /// The check that triggered it.
        because: String,
        /// Whether the task is escalated right after the move.
        escalate: bool,
    },
    /// Re-run the stage's ended job as a new attempt.
    Rerun {
        /// The job.
        job_id: i64,
        /// The new attempt number.
        attempt: u32,
        /// Why the gate failed.
        because: String,
    },
    /// Park the task for a human, once.
    Escalate {
        /// Why.
        reason: String,
    },
    /// Nothing to do yet.
    Wait {
        /// What holds the gate.
        because: String,
    },
}

/// Decides what to do with a gate's answer.
///
/// `last_job` is the stage's latest job with its id. Only failures on evidence count
/// against the attempt cap; a gate held by unknowns (Gitea still computing, CI pending,
/// an unreachable forge) waits and never re-runs a job.
pub fn decide(
    stage: Stage,
    decision: &GateDecision,
    last_job: Option<(i64, JobOutcome)>,
    developer_retries: u32,
    limits: &Limits,
) -> Action {
    match decision {
        GateDecision::NoGate => Action::Wait {
            because: "no gate".into(),
        },
        GateDecision::Advance { to, .. } => Action::Advance { to: *to },
        GateDecision::Rollback { to, because, .. } => {
            let counts = transition(stage, *to).is_some_and(|t| t.counts_developer_retry);
            let after = developer_retries + u32::from(counts);
            Action::Rollback {
                to: *to,
                because: (*because).to_string(),
                escalate: counts && after >= limits.max_developer_retries,
            }
        }
        GateDecision::Wait {
            failed_on_evidence: false,
            ..
        } => Action::Wait {
            because: decision.blockers(),
        },
        GateDecision::Wait {
            failed_on_evidence: true,
            ..
        } => match last_job {
            Some((id, job)) if job.status.is_terminal() => {
                if job.attempt >= limits.job_max_attempts {
                    Action::Escalate {
                        reason: format!(
                            "gate still fails after {} attempts of job {id}: {}",
                            job.attempt,
                            decision.blockers()
                        ),
                    }
                } else {
                    Action::Rerun {
                        job_id: id,
                        attempt: job.attempt + 1,
                        because: decision.blockers(),
                    }
                }
            }
            Some(_) => Action::Wait {
                because: "the stage's job has not ended".into(),
            },
            None => Action::Wait {
                because: format!("no job has run yet: {}", decision.blockers()),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::gate::{CheckOutcome, CheckResult};
    use crate::core::job::JobStatus;

    const LIMITS: Limits = Limits {
        grace_s: 300,
        max_developer_retries: 3,
        job_max_attempts: 3,
    };

    fn facts() -> TaskFacts {
        TaskFacts {
            stage: Stage::Review,
            stage_entered_at: 0,
            live_job: None,
            developer_retries: 0,
            escalated: false,
        }
    }

    #[test]
    fn guards_apply_in_spec_order() {
        let now = 1_000;
        // Every guard true at once: the first in order wins.
        let all = TaskFacts {
            stage: Stage::Analysis,
            stage_entered_at: now,
            live_job: Some((1, "running")),
            developer_retries: 9,
            escalated: true,
        };
        assert_eq!(
            local_guards(&all, now, &LIMITS).unwrap().guard(),
            "analysis"
        );
        let t = TaskFacts {
            stage: Stage::Done,
            ..all.clone()
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "no-gate");
        let t = TaskFacts {
            stage: Stage::Review,
            ..all.clone()
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "job-live");
        let t = TaskFacts {
            live_job: None,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "grace");
        let t = TaskFacts {
            stage_entered_at: now - 300,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "escalated");
        let t = TaskFacts {
            developer_retries: 0,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS).unwrap().guard(), "escalated");
        let t = TaskFacts {
            escalated: false,
            ..t
        };
        assert_eq!(local_guards(&t, now, &LIMITS), None);
    }

    #[test]
    fn grace_boundary() {
        let t = TaskFacts {
            stage_entered_at: 700,
            ..facts()
        };
        assert!(matches!(
            local_guards(&t, 999, &LIMITS),
            Some(Skip::Grace(_))
        ));
        assert_eq!(local_guards(&t, 1_000, &LIMITS), None);
    }

    #[test]
    fn blocked_guard_skips_on_blocked_and_on_doubt() {
        assert_eq!(blocked_guard(&PlaneState::Clear("In Review".into())), None);
        assert!(blocked_guard(&PlaneState::Blocked("Blocked".into())).is_some());
        assert!(blocked_guard(&PlaneState::Unknown("HTTP 500".into())).is_some());
    }

    fn wait(evidence: bool) -> GateDecision {
        GateDecision::Wait {
            failed_on_evidence: evidence,
            checks: vec![CheckOutcome {
                check: "check_ci_green",
                result: if evidence {
                    CheckResult::Fail("CI failed".into())
                } else {
                    CheckResult::Unknown("pending".into())
                },
            }],
        }
    }

    fn job(status: JobStatus, attempt: u32) -> Option<(i64, JobOutcome)> {
        Some((
            7,
            JobOutcome {
                status,
                attempt,
                exit_code: Some(0),
            },
        ))
    }

    #[test]
    fn decisions() {
        let adv = GateDecision::Advance {
            to: Stage::DeployStaging,
            checks: vec![],
        };
        assert_eq!(
            decide(Stage::Review, &adv, None, 0, &LIMITS),
            Action::Advance {
                to: Stage::DeployStaging
            }
        );
        assert_eq!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Failed, 1),
                0,
                &LIMITS
            ),
            Action::Rerun {
                job_id: 7,
                attempt: 2,
                because: "check_ci_green: CI failed".into()
            }
        );
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Succeeded, 3),
                0,
                &LIMITS
            ),
            Action::Escalate { .. }
        ));
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(true),
                job(JobStatus::Running, 1),
                0,
                &LIMITS
            ),
            Action::Wait { .. }
        ));
        assert!(matches!(
            decide(Stage::Review, &wait(true), None, 0, &LIMITS),
            Action::Wait { .. }
        ));
        // Unknowns never re-run a job, however many attempts.
        assert!(matches!(
            decide(
                Stage::Review,
                &wait(false),
                job(JobStatus::Failed, 1),
                0,
                &LIMITS
            ),
            Action::Wait { .. }
        ));
        assert!(matches!(
            decide(Stage::Review, &GateDecision::NoGate, None, 0, &LIMITS),
            Action::Wait { .. }
        ));
    }

    #[test]
    fn the_third_review_rollback_escalates() {
        let rb = GateDecision::Rollback {
            to: Stage::Development,
            because: "check_review_requests_changes",
            checks: vec![],
        };
        for (retries, escalate) in [(0, false), (1, false), (2, true)] {
            assert_eq!(
                decide(Stage::Review, &rb, None, retries, &LIMITS),
                Action::Rollback {
                    to: Stage::Development,
                    because: "check_review_requests_changes".into(),
                    escalate
                }
            );
        }
        // Staging and deploy rollbacks do not count developer retries.
        let rb = GateDecision::Rollback {
            to: Stage::Development,
            because: "check_staging_failed",
            checks: vec![],
        };
        assert!(matches!(
            decide(Stage::DeployStaging, &rb, None, 2, &LIMITS),
            Action::Rollback {
                escalate: false,
                ..
            }
        ));
    }
}
