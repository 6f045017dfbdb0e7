//! Reconcile's decisions: which guard skips a task (in the order SPEC §4 gives), and
//! what to do with a gate's answer (advance, roll back, re-run the stage's job, escalate
//! or wait). Pure: the command gathers the facts and acts on the answer.

use crate::core::gate::GateDecision;
use crate::core::intake::{meaning_of, Meaning};
use crate::core::job::JobOutcome;
use crate::core::plane::StateMeanings;
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
                escalate: crate::core::escalation::rollback_reaches_limit(
                    counts,
                    after,
                    limits.max_developer_retries,
                ),
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

/// What a pass learned about one work item from the project's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Seen, with its state's name and group.
    Seen {
        /// The state's name.
        name: String,
        /// The state's group.
        group: String,
    },
    /// Seen, but its state id is neither expanded nor cached nor known to the States API.
    UnknownState(String),
    /// Not on any page read: `complete` when every page was read.
    NotSeen {
        /// Whether the listing reached its last page.
        complete: bool,
    },
    /// The listing failed (Plane 5xx, timeout, refusal, malformed answer).
    Failed(String),
}

/// Tells the blocked guard what the listed work item's state means. A state matching
/// two meanings, an unknown state, an item the complete listing does not show, and a
/// failed or unfinished listing are all "could not tell" (skip, never advance).
pub fn plane_state_of(meanings: &StateMeanings, listed: &Listed) -> PlaneState {
    match listed {
        Listed::Seen { name, group } => match meaning_of(meanings, name, group) {
            Ok(Some(Meaning::Blocked)) => PlaneState::Blocked(name.clone()),
            Ok(_) => PlaneState::Clear(name.clone()),
            Err(_) => PlaneState::Unknown(format!("state {name:?} matches two meanings")),
        },
        Listed::UnknownState(id) => PlaneState::Unknown(format!("unknown state id {id}")),
        Listed::NotSeen { complete: true } => {
            PlaneState::Unknown("the work item is not in its project's listing".into())
        }
        Listed::NotSeen { complete: false } => PlaneState::Unknown(
            "the project's listing stopped early (rate limit); next pass".into(),
        ),
        Listed::Failed(why) => PlaneState::Unknown(why.clone()),
    }
}

/// Whether listing must stop before the next page: Plane said fewer than `floor`
/// requests are left in its window. An absent header does not stop (Plane sends it on
/// every allowed answer; other servers may not).
pub fn below_floor(remaining: Option<u32>, floor: u32) -> bool {
    remaining.is_some_and(|r| r < floor)
}

/// The idempotency key of one escalation: the Plane comment's `external_id` and the
/// notification's dedupe key. Derived from the task and the moment it was escalated,
/// so a re-announcement after a crash reuses it and a later, new escalation does not.
pub fn escalation_key(task_id: i64, escalated_at: i64) -> String {
    format!("orch-escalation-{task_id}-{escalated_at}")
}

/// Whether a task at the developer retry limit, not escalated, should be escalated now:
/// only when no person moved it since (a webhook or operator move clears an escalation
/// and the task is then theirs), i.e. its last stage event is by the pipeline itself.
pub fn needs_retry_escalation(
    developer_retries: u32,
    escalated: bool,
    last_event_actor: Option<&str>,
    limits: &Limits,
) -> bool {
    developer_retries >= limits.max_developer_retries
        && !escalated
        && !matches!(last_event_actor, Some("webhook" | "operator"))
}

/// What the branch step does with a task whose branch is not confirmed on Gitea.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchPlan {
    /// Done or cancelled: no branch is needed any more.
    NotNeeded,
    /// Ask Gitea for it (an existing branch counts as created).
    Create,
    /// Leave it for the next pass, and why.
    Wait(String),
}

/// Decides the branch step for a task that lacks its branch. Once Gitea could not be
/// reached this pass (timeout, refused connection, 5xx), the rest wait for the next
/// pass rather than each costing a timeout.
pub fn branch_plan(stage: Stage, gitea_unreachable: Option<&str>) -> BranchPlan {
    if matches!(stage, Stage::Done | Stage::Cancelled) {
        return BranchPlan::NotNeeded;
    }
    match gitea_unreachable {
        Some(why) => BranchPlan::Wait(format!("gitea unreachable earlier this pass: {why}")),
        None => BranchPlan::Create,
    }
}

/// What the pass does with one task, as `--dry-run` and `--json` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// A guard leaves it alone.
    Skip {
        /// The guard.
        #[serde(flatten)]
        skip: Skip,
    },
    /// The gate was evaluated: what follows.
    Act {
        /// The action.
        #[serde(flatten)]
        action: Action,
    },
    /// Not reached this pass (the per-pass cap, or the pass stopped early).
    Deferred {
        /// Why.
        because: String,
    },
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
    fn a_failed_deploy_waiting_on_the_merge_fact_never_reruns_nor_escalates() {
        use crate::core::artefact::DeployStatus;
        use crate::core::gate::{evaluate, GateInputs};
        let inputs = GateInputs {
            deploy: Ok(DeployStatus::Failed),
            pr: Err("connection refused".into()),
            recorded_pr: Some(4),
            ..GateInputs::empty()
        };
        let d = evaluate(Stage::Deploy, &inputs);
        // However many attempts the deployer had, at and past the cap.
        for attempt in [1, LIMITS.job_max_attempts, LIMITS.job_max_attempts + 1] {
            match decide(
                Stage::Deploy,
                &d,
                job(JobStatus::Succeeded, attempt),
                0,
                &LIMITS,
            ) {
                Action::Wait { because } => assert!(
                    because.contains("whether PR #4 was merged is unknown"),
                    "{because}"
                ),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
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

    #[test]
    fn listed_states_for_the_blocked_guard() {
        let mut m = StateMeanings::default();
        m.blocked.names = vec!["Blocked".into(), "Needs Input".into()];
        m.approved.names = vec!["Approved".into()];
        let seen = |n: &str, g: &str| Listed::Seen {
            name: n.into(),
            group: g.into(),
        };
        assert_eq!(
            plane_state_of(&m, &seen("needs input", "started")),
            PlaneState::Blocked("needs input".into())
        );
        assert_eq!(
            plane_state_of(&m, &seen("In Review", "started")),
            PlaneState::Clear("In Review".into())
        );
        for l in [
            Listed::UnknownState("s9".into()),
            Listed::NotSeen { complete: true },
            Listed::NotSeen { complete: false },
            Listed::Failed("HTTP 500".into()),
        ] {
            assert!(
                matches!(plane_state_of(&m, &l), PlaneState::Unknown(_)),
                "{l:?}"
            );
        }
        // A state with two meanings at one level is doubt, not clear.
        m.approved.names.push("Blocked".into());
        assert!(matches!(
            plane_state_of(&m, &seen("Blocked", "started")),
            PlaneState::Unknown(_)
        ));
    }

    #[test]
    fn rate_floor() {
        assert!(!below_floor(None, 10));
        assert!(!below_floor(Some(10), 10));
        assert!(below_floor(Some(9), 10));
        assert!(below_floor(Some(0), 1));
        assert!(!below_floor(Some(0), 0));
    }

    #[test]
    fn escalation_keys_and_retry_escalation() {
        assert_eq!(escalation_key(7, 100), "orch-escalation-7-100");
        assert_ne!(escalation_key(7, 100), escalation_key(7, 101));
        let l = LIMITS;
        assert!(needs_retry_escalation(3, false, Some("reconcile"), &l));
        assert!(needs_retry_escalation(4, false, Some("run-job"), &l));
        assert!(needs_retry_escalation(3, false, None, &l));
        assert!(!needs_retry_escalation(2, false, Some("run-job"), &l));
        assert!(!needs_retry_escalation(3, true, Some("run-job"), &l));
        assert!(!needs_retry_escalation(3, false, Some("webhook"), &l));
        assert!(!needs_retry_escalation(3, false, Some("operator"), &l));
    }

    #[test]
    fn the_branch_step_skips_finished_tasks_and_waits_after_gitea_failed() {
        for stage in Stage::ALL {
            let finished = matches!(stage, Stage::Done | Stage::Cancelled);
            let plan = branch_plan(stage, None);
            assert_eq!(plan == BranchPlan::NotNeeded, finished, "{stage}");
            assert_eq!(plan == BranchPlan::Create, !finished, "{stage}");
            let later = branch_plan(stage, Some("connection refused"));
            assert_eq!(matches!(later, BranchPlan::Wait(_)), !finished, "{stage}");
        }
        assert_eq!(
            branch_plan(Stage::Analysis, Some("timeout")),
            BranchPlan::Wait("gitea unreachable earlier this pass: timeout".into())
        );
    }

    #[test]
    fn verdicts_serialise_flat() {
        let v = Verdict::Skip {
            skip: Skip::Escalated("x".into()),
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"verdict": "skip", "guard": "escalated", "detail": "x"})
        );
        let v = Verdict::Act {
            action: Action::Advance { to: Stage::Review },
        };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"verdict": "act", "action": "advance", "to": "review"})
        );
    }
}
