//! The quality gates: one registry of checks ([`QG_CHECKS`]), one gate per stage
//! ([`GATES`]), and [`evaluate`], a pure function of the facts a pass gathered.
//!
//! A check says `Pass`, `Fail` (the evidence says no: re-running the stage's job may
//! help) or `Unknown` (could not tell: wait, never re-run for it). A gate rolls back
//! when its rollback check passes, advances when all its checks pass, and otherwise
//! waits. A job's exit code is never an input: only whether the job has ended.
//! No I/O here: commands gather [`GateInputs`] through adapters.
//!
//! `deploy-staging → deploy` requires, for every repo, whether or not image freshness
//! applies to it: `staging_status: SUCCESS`; the revision pinned (`check_revision_pinned`:
//! the report's `checked_revision` and the task's validated revision are both the PR's
//! current head; a SUCCESS report without `checked_revision` fails naming the fix, `orch
//! staging-check --task ID`); and the branch mergeable. `staging-check` pins the image
//! freshness check's revision where freshness applies and the PR head everywhere else
//! (`core::pin`), so a default install's ordinary repo ships.
//!
//! `deploy → development` (`deploy_status: FAILED`) also requires `check_merge_known`:
//! whether the PR was merged decides whether the rollback starts a new round
//! (`core::round::reopen`), so while Gitea cannot tell, the rollback waits (an `Unknown`:
//! the deployer is not re-run and no attempt is counted) instead of guessing the round.

use crate::core::artefact::{
    ArtefactError, DeployStatus, ReviewVerdict, StagingReport, StagingStatus,
};
use crate::core::facts::{CiFailure, CiState, Fact, PrFacts};
use crate::core::job::JobOutcome;
use crate::core::revision::{revisions_match, short};
use crate::core::round;
use crate::core::stage::Stage;

/// Every fact a gate may read. Facts a stage does not need may stay `Err("not gathered")`.
#[derive(Debug, Clone)]
pub struct GateInputs {
    /// The stage's latest job, if one ever ran.
    pub last_job: Option<JobOutcome>,
    /// The task's PR: `Ok(None)` when there is none.
    pub pr: Fact<Option<PrFacts>>,
    /// The combined CI state of the PR head.
    pub ci: Fact<CiState>,
    /// When `ci` is a failure read from Gitea: the head and its failing contexts (the
    /// feedback of a developer re-run for red CI).
    pub ci_failure: Option<CiFailure>,
    /// `05-review.md`.
    pub review: Result<ReviewVerdict, ArtefactError>,
    /// `10-staging-report.md`.
    pub staging: Result<StagingReport, ArtefactError>,
    /// `12-deploy-report.md`.
    pub deploy: Result<DeployStatus, ArtefactError>,
    /// Whether image freshness applies to this task's repo.
    pub freshness_applies: bool,
    /// The revision the pipeline validated for this task, when recorded.
    pub validated_revision: Option<String>,
    /// The PR number recorded on the task, to name it when the PR cannot be read.
    pub recorded_pr: Option<u64>,
}

impl GateInputs {
    /// Inputs with nothing gathered (every fact unknown, every artefact missing).
    pub fn empty() -> GateInputs {
        let missing = |f: &str| ArtefactError::Missing { file: f.into() };
        GateInputs {
            last_job: None,
            pr: Err("not gathered".into()),
            ci: Err("not gathered".into()),
            ci_failure: None,
            review: Err(missing(crate::core::artefact::REVIEW_FILE)),
            staging: Err(missing(crate::core::artefact::STAGING_REPORT_FILE)),
            deploy: Err(missing(crate::core::artefact::DEPLOY_REPORT_FILE)),
            freshness_applies: false,
            validated_revision: None,
            recorded_pr: None,
        }
    }
}

/// What a pass must gather for a check (so it makes no needless remote call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// The stage's latest job.
    Job,
    /// The PR from Gitea.
    Pr,
    /// The combined CI status of the PR head.
    Ci,
    /// `05-review.md`.
    Review,
    /// `10-staging-report.md`.
    Staging,
    /// `12-deploy-report.md`.
    Deploy,
}

/// Whether a gate that needs `needs` reads the task's PR from the forge (its CI
/// included): what a pass lists a repo's open pulls for.
#[must_use]
pub fn reads_pr(needs: &[Need]) -> bool {
    needs.iter().any(|n| matches!(n, Need::Pr | Need::Ci))
}

/// The stages whose gate reads the task's PR (its CI included).
#[must_use]
pub fn stages_reading_pr() -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| reads_pr(&needs(*s)))
        .collect()
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "lowercase")]
pub enum CheckResult {
    /// The check holds.
    Pass,
    /// The evidence says no.
    Fail(String),
    /// Could not tell.
    Unknown(String),
}

/// The identity of a quality-gate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckId {
    /// The stage's job has ended.
    JobEnded,
    /// An open PR exists for the task branch.
    PrOpen,
    /// The combined CI status of the PR head is success.
    CiGreen,
    /// `review_verdict: APPROVE`.
    ReviewApproved,
    /// `review_verdict: REQUEST_CHANGES` (a rollback check).
    ReviewRequestsChanges,
    /// `staging_status: SUCCESS`.
    StagingSucceeded,
    /// `staging_status: FAILED` (a rollback check).
    StagingFailed,
    /// Staging validated the PR's current head, and the task records it (the pin).
    RevisionPinned,
    /// Gitea says the branch is mergeable.
    BranchMergeable,
    /// `deploy_status: SUCCESS`.
    DeploySucceeded,
    /// `deploy_status: FAILED` (a rollback check).
    DeployFailed,
    /// The PR is merged.
    PrMerged,
    /// Whether the PR was merged is known (the deploy rollback needs it to decide the
    /// round); never fails, only passes or is unknown.
    MergeKnown,
}

/// One registered check.
#[derive(Debug, Clone, Copy)]
pub struct CheckSpec {
    /// Its identity.
    pub id: CheckId,
    /// Its stable name, as logs and `--json` print it.
    pub name: &'static str,
    /// What it reads.
    pub needs: &'static [Need],
    /// The check itself.
    pub eval: fn(&GateInputs) -> CheckResult,
}

/// The registry of every quality-gate check.
pub const QG_CHECKS: &[CheckSpec] = &[
    CheckSpec {
        id: CheckId::JobEnded,
        name: "check_job_ended",
        needs: &[Need::Job],
        eval: job_ended,
    },
    CheckSpec {
        id: CheckId::PrOpen,
        name: "check_pr_open",
        needs: &[Need::Pr],
        eval: pr_open,
    },
    CheckSpec {
        id: CheckId::CiGreen,
        name: "check_ci_green",
        needs: &[Need::Pr, Need::Ci],
        eval: ci_green,
    },
    CheckSpec {
        id: CheckId::ReviewApproved,
        name: "check_review_approved",
        needs: &[Need::Review],
        eval: review_approved,
    },
    CheckSpec {
        id: CheckId::ReviewRequestsChanges,
        name: "check_review_requests_changes",
        needs: &[Need::Review],
        eval: review_requests_changes,
    },
    CheckSpec {
        id: CheckId::StagingSucceeded,
        name: "check_staging_succeeded",
        needs: &[Need::Staging],
        eval: staging_succeeded,
    },
    CheckSpec {
        id: CheckId::StagingFailed,
        name: "check_staging_failed",
        needs: &[Need::Staging],
        eval: staging_failed,
    },
    CheckSpec {
        id: CheckId::RevisionPinned,
        name: "check_revision_pinned",
        needs: &[Need::Staging, Need::Pr],
        eval: revision_pinned,
    },
    CheckSpec {
        id: CheckId::BranchMergeable,
        name: "check_branch_mergeable",
        needs: &[Need::Pr],
        eval: branch_mergeable,
    },
    CheckSpec {
        id: CheckId::DeploySucceeded,
        name: "check_deploy_succeeded",
        needs: &[Need::Deploy],
        eval: deploy_succeeded,
    },
    CheckSpec {
        id: CheckId::DeployFailed,
        name: "check_deploy_failed",
        needs: &[Need::Deploy],
        eval: deploy_failed,
    },
    CheckSpec {
        id: CheckId::PrMerged,
        name: "check_pr_merged",
        needs: &[Need::Pr],
        eval: pr_merged,
    },
    CheckSpec {
        id: CheckId::MergeKnown,
        name: "check_merge_known",
        needs: &[Need::Pr],
        eval: merge_known,
    },
];

/// Returns the registered check with this id.
pub fn check(id: CheckId) -> &'static CheckSpec {
    QG_CHECKS
        .iter()
        .find(|c| c.id == id)
        .expect("every CheckId is registered in QG_CHECKS")
}

/// A stage's gate: the checks that advance it and the one that rolls it back.
#[derive(Debug, Clone, Copy)]
pub struct GateSpec {
    /// The stage the gate guards.
    pub stage: Stage,
    /// Where it advances to.
    pub advance_to: Stage,
    /// All must pass to advance.
    pub checks: &'static [CheckId],
    /// When this check passes, the task rolls back to `development`.
    pub rollback_when: Option<CheckId>,
    /// What the rollback also needs to know to be made: when `rollback_when` passes
    /// and one of these does not, the gate waits.
    pub rollback_requires: &'static [CheckId],
}

/// The gate of every stage that has one (`analysis` is a human's call; `done` and
/// `cancelled` have none).
pub const GATES: &[GateSpec] = &[
    GateSpec {
        stage: Stage::Development,
        advance_to: Stage::Review,
        checks: &[CheckId::JobEnded, CheckId::PrOpen, CheckId::CiGreen],
        rollback_when: None,
        rollback_requires: &[],
    },
    GateSpec {
        stage: Stage::Review,
        advance_to: Stage::DeployStaging,
        checks: &[CheckId::ReviewApproved],
        rollback_when: Some(CheckId::ReviewRequestsChanges),
        rollback_requires: &[],
    },
    GateSpec {
        stage: Stage::DeployStaging,
        advance_to: Stage::Deploy,
        checks: &[
            CheckId::StagingSucceeded,
            CheckId::RevisionPinned,
            CheckId::BranchMergeable,
        ],
        rollback_when: Some(CheckId::StagingFailed),
        rollback_requires: &[],
    },
    GateSpec {
        stage: Stage::Deploy,
        advance_to: Stage::Done,
        checks: &[CheckId::DeploySucceeded, CheckId::PrMerged],
        rollback_when: Some(CheckId::DeployFailed),
        // A failed deploy may come before or after the merge: the round depends on it.
        rollback_requires: &[CheckId::MergeKnown],
    },
];

/// Returns the gate of `stage`, if it has one.
pub fn gate(stage: Stage) -> Option<&'static GateSpec> {
    GATES.iter().find(|g| g.stage == stage)
}

/// Returns what a pass must gather to evaluate `stage`'s gate.
pub fn needs(stage: Stage) -> Vec<Need> {
    let mut out: Vec<Need> = Vec::new();
    if let Some(g) = gate(stage) {
        for id in g
            .checks
            .iter()
            .chain(g.rollback_when.iter())
            .chain(g.rollback_requires)
        {
            for n in check(*id).needs {
                if !out.contains(n) {
                    out.push(*n);
                }
            }
        }
    }
    out
}

/// One check's result inside a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckOutcome {
    /// The check's name.
    pub check: &'static str,
    /// Its result.
    #[serde(flatten)]
    pub result: CheckResult,
}

/// What a gate decides.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum GateDecision {
    /// Every check passed: move forward.
    Advance {
        /// The next stage.
        to: Stage,
        /// The checks that passed.
        checks: Vec<CheckOutcome>,
    },
    /// The rollback check and what the rollback requires passed: back to development.
    Rollback {
        /// Where to (development).
        to: Stage,
        /// The rollback check's name.
        because: &'static str,
        /// Every check's result.
        checks: Vec<CheckOutcome>,
    },
    /// Some check did not pass: stay.
    Wait {
        /// Whether a check failed on evidence (re-running the job may help); `false` when
        /// only `Unknown`s held the gate.
        failed_on_evidence: bool,
        /// Every check's result.
        checks: Vec<CheckOutcome>,
    },
    /// The stage has no automatic gate.
    NoGate,
}

impl GateDecision {
    /// Returns a one-line summary of the checks that did not pass, for logs.
    pub fn blockers(&self) -> String {
        let checks = match self {
            GateDecision::Advance { checks, .. }
            | GateDecision::Rollback { checks, .. }
            | GateDecision::Wait { checks, .. } => checks,
            GateDecision::NoGate => return "no gate".into(),
        };
        let parts: Vec<String> = checks
            .iter()
            .filter_map(|c| match &c.result {
                CheckResult::Pass => None,
                CheckResult::Fail(r) => Some(format!("{}: {r}", c.check)),
                CheckResult::Unknown(r) => Some(format!("{}: unknown: {r}", c.check)),
            })
            .collect();
        if parts.is_empty() {
            "all checks pass".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Evaluates `stage`'s gate over `inputs`.
///
/// A rollback whose rollback check passes but whose requirements do not all pass waits
/// (on evidence only when a requirement failed), whatever the advance checks say.
pub fn evaluate(stage: Stage, inputs: &GateInputs) -> GateDecision {
    let Some(g) = gate(stage) else {
        return GateDecision::NoGate;
    };
    let run = |id: CheckId| {
        let spec = check(id);
        CheckOutcome {
            check: spec.name,
            result: (spec.eval)(inputs),
        }
    };
    let mut checks: Vec<CheckOutcome> = Vec::new();
    if let Some(rb) = g.rollback_when {
        let outcome = run(rb);
        if outcome.result == CheckResult::Pass {
            let because = outcome.check;
            checks.push(outcome);
            checks.extend(g.rollback_requires.iter().map(|id| run(*id)));
            if checks.iter().all(|c| c.result == CheckResult::Pass) {
                return GateDecision::Rollback {
                    to: Stage::Development,
                    because,
                    checks,
                };
            }
            let failed_on_evidence = checks
                .iter()
                .any(|c| matches!(c.result, CheckResult::Fail(_)));
            return GateDecision::Wait {
                failed_on_evidence,
                checks,
            };
        }
    }
    checks.extend(g.checks.iter().map(|id| run(*id)));
    if checks.iter().all(|c| c.result == CheckResult::Pass) {
        return GateDecision::Advance {
            to: g.advance_to,
            checks,
        };
    }
    let failed_on_evidence = checks
        .iter()
        .any(|c| matches!(c.result, CheckResult::Fail(_)));
    // Rollback checks that did not trigger are not reported as blockers.
    GateDecision::Wait {
        failed_on_evidence,
        checks,
    }
}

fn job_ended(i: &GateInputs) -> CheckResult {
    match i.last_job {
        None => CheckResult::Fail("no job has run in this stage".into()),
        Some(j) if j.status.is_terminal() => CheckResult::Pass,
        Some(j) => CheckResult::Unknown(format!("job attempt {} is still {}", j.attempt, j.status)),
    }
}

fn with_pr(i: &GateInputs, f: impl FnOnce(&PrFacts) -> CheckResult) -> CheckResult {
    match &i.pr {
        Err(e) => CheckResult::Unknown(format!("could not read the PR: {e}")),
        Ok(None) => CheckResult::Fail("no pull request for the task branch".into()),
        Ok(Some(pr)) => f(pr),
    }
}

fn pr_open(i: &GateInputs) -> CheckResult {
    with_pr(i, |pr| {
        if pr.open {
            CheckResult::Pass
        } else if pr.merged {
            CheckResult::Fail(format!("PR #{} is already merged", pr.number))
        } else {
            CheckResult::Fail(format!("PR #{} is closed", pr.number))
        }
    })
}

fn ci_green(i: &GateInputs) -> CheckResult {
    with_pr(i, |pr| match &i.ci {
        Err(e) => CheckResult::Unknown(format!("could not read CI status: {e}")),
        Ok(CiState::Success) => CheckResult::Pass,
        Ok(CiState::Pending) => {
            CheckResult::Unknown(format!("CI pending on {}", short(&pr.head_sha)))
        }
        Ok(CiState::None) => {
            CheckResult::Unknown(format!("no CI status reported on {}", short(&pr.head_sha)))
        }
        Ok(CiState::Failure) => CheckResult::Fail(format!("CI failed on {}", short(&pr.head_sha))),
        Ok(CiState::Warning) => {
            CheckResult::Fail(format!("CI reports warning on {}", short(&pr.head_sha)))
        }
        Ok(CiState::Other(s)) => CheckResult::Fail(format!(
            "CI state {s:?} on {} is not success",
            short(&pr.head_sha)
        )),
    })
}

fn artefact_fail(e: &ArtefactError) -> CheckResult {
    CheckResult::Fail(e.to_string())
}

fn review_approved(i: &GateInputs) -> CheckResult {
    match &i.review {
        Ok(ReviewVerdict::Approve) => CheckResult::Pass,
        Ok(v) => CheckResult::Fail(format!("review_verdict is {v}")),
        Err(e) => artefact_fail(e),
    }
}

fn review_requests_changes(i: &GateInputs) -> CheckResult {
    match &i.review {
        Ok(ReviewVerdict::RequestChanges) => CheckResult::Pass,
        Ok(v) => CheckResult::Fail(format!("review_verdict is {v}")),
        Err(e) => artefact_fail(e),
    }
}

fn staging_succeeded(i: &GateInputs) -> CheckResult {
    match &i.staging {
        Ok(r) if r.status == StagingStatus::Success => CheckResult::Pass,
        Ok(r) => CheckResult::Fail(format!("staging_status is {}", r.status)),
        Err(e) => artefact_fail(e),
    }
}

fn staging_failed(i: &GateInputs) -> CheckResult {
    match &i.staging {
        Ok(r) if r.status == StagingStatus::Failed => CheckResult::Pass,
        Ok(r) => CheckResult::Fail(format!("staging_status is {}", r.status)),
        Err(e) => artefact_fail(e),
    }
}

/// The pin, for every repo: the report's `checked_revision` is the PR's current head,
/// and so is the validated revision recorded on the task (what `merge-guard` will pin
/// the merge to). Where image freshness applies, `checked_revision` is what staging
/// said it runs; elsewhere it is the PR head `staging-check` validated. Either way a
/// report without one, or one for an older head, cannot let the task go to production.
fn revision_pinned(i: &GateInputs) -> CheckResult {
    let report = match &i.staging {
        Ok(r) => r,
        Err(e) => return artefact_fail(e),
    };
    let Some(checked) = report.checked_revision.as_deref() else {
        return CheckResult::Fail(
            "the staging report has no checked_revision, so no revision is pinned: deploy the \
             PR head to staging and run `orch staging-check --task <task id or key>` (an agent \
             may rely on ORCH_TASK_ID instead of --task)"
                .into(),
        );
    };
    let kind = if i.freshness_applies {
        "the image staging runs"
    } else {
        "the PR head staging-check validated"
    };
    with_pr(i, |pr| {
        if !revisions_match(checked, &pr.head_sha) {
            return CheckResult::Fail(format!(
                "staging checked {} ({kind}) but the PR head is now {}: deploy the new head to \
                 staging and run `orch staging-check` again",
                short(checked),
                short(&pr.head_sha)
            ));
        }
        match i.validated_revision.as_deref() {
            Some(v) if revisions_match(v, &pr.head_sha) => CheckResult::Pass,
            Some(v) => CheckResult::Fail(format!(
                "the task's validated revision is {} but the PR head is {}: run `orch \
                 staging-check --task <task id or key>` again",
                short(v),
                short(&pr.head_sha)
            )),
            None => CheckResult::Fail(
                "the task has no validated revision (the staging report was not written by \
                 `orch staging-check` for this task): run `orch staging-check --task <task id \
                 or key>`"
                    .into(),
            ),
        }
    })
}

fn branch_mergeable(i: &GateInputs) -> CheckResult {
    with_pr(i, |pr| {
        if pr.merged {
            return CheckResult::Pass;
        }
        match pr.mergeable {
            Some(true) => CheckResult::Pass,
            Some(false) => CheckResult::Unknown(format!(
                "Gitea reports PR #{} not mergeable (conflict check running, or a conflict)",
                pr.number
            )),
            None => CheckResult::Unknown(format!(
                "Gitea did not report mergeable for PR #{}",
                pr.number
            )),
        }
    })
}

fn deploy_succeeded(i: &GateInputs) -> CheckResult {
    match &i.deploy {
        Ok(DeployStatus::Success) => CheckResult::Pass,
        Ok(s) => CheckResult::Fail(format!("deploy_status is {s}")),
        Err(e) => artefact_fail(e),
    }
}

fn deploy_failed(i: &GateInputs) -> CheckResult {
    match &i.deploy {
        Ok(DeployStatus::Failed) => CheckResult::Pass,
        Ok(s) => CheckResult::Fail(format!("deploy_status is {s}")),
        Err(e) => artefact_fail(e),
    }
}

fn pr_merged(i: &GateInputs) -> CheckResult {
    with_pr(i, |pr| {
        if pr.merged {
            CheckResult::Pass
        } else {
            CheckResult::Fail(format!("PR #{} is not merged", pr.number))
        }
    })
}

fn merge_known(i: &GateInputs) -> CheckResult {
    match round::merged(&i.pr) {
        Ok(_) => CheckResult::Pass,
        Err(e) => {
            let pr = i
                .recorded_pr
                .map_or_else(|| "the task's PR".to_string(), |n| format!("PR #{n}"));
            let source = if e.starts_with("gitea") {
                e
            } else {
                format!("gitea: {e}")
            };
            CheckResult::Unknown(format!(
                "deploy_status is FAILED, but whether {pr} was merged is unknown ({source}): \
                 waiting to decide the round"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn which_stages_read_the_pr() {
        use crate::core::stage::Stage;
        for (stage, reads) in [
            (Stage::Analysis, false),
            (Stage::Development, true),
            (Stage::Review, false),
            (Stage::DeployStaging, true),
            (Stage::Deploy, true),
            (Stage::Done, false),
            (Stage::Cancelled, false),
        ] {
            assert_eq!(super::reads_pr(&super::needs(stage)), reads, "{stage}");
        }
        assert_eq!(
            super::stages_reading_pr(),
            [Stage::Development, Stage::DeployStaging, Stage::Deploy]
        );
        assert!(super::reads_pr(&[super::Need::Ci]));
        assert!(!super::reads_pr(&[super::Need::Job, super::Need::Review]));
    }

    use super::*;
    use crate::core::job::JobStatus;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    type PrFact = Fact<Option<PrFacts>>;
    type StagingFact = Result<StagingReport, ArtefactError>;
    type DeployFact = Result<DeployStatus, ArtefactError>;
    type DevCase = (
        &'static str,
        Option<JobOutcome>,
        PrFact,
        Fact<CiState>,
        &'static str,
    );

    fn pr(open: bool, merged: bool, mergeable: Option<bool>) -> PrFact {
        Ok(Some(PrFacts {
            number: 7,
            open,
            merged,
            mergeable,
            head_sha: SHA.into(),
        }))
    }

    fn ended() -> Option<JobOutcome> {
        Some(JobOutcome {
            status: JobStatus::Failed,
            attempt: 1,
            exit_code: Some(1),
        })
    }

    fn staging(status: StagingStatus, rev: Option<&str>) -> StagingFact {
        Ok(StagingReport {
            status,
            checked_revision: rev.map(str::to_string),
            waived: vec![],
        })
    }

    fn kind(d: &GateDecision) -> &'static str {
        match d {
            GateDecision::Advance { .. } => "advance",
            GateDecision::Rollback { .. } => "rollback",
            GateDecision::Wait {
                failed_on_evidence: true,
                ..
            } => "wait-fail",
            GateDecision::Wait {
                failed_on_evidence: false,
                ..
            } => "wait-unknown",
            GateDecision::NoGate => "no-gate",
        }
    }

    #[test]
    fn development_gate_table() {
        let running = Some(JobOutcome {
            status: JobStatus::Running,
            attempt: 2,
            exit_code: None,
        });
        let cases: Vec<DevCase> = vec![
            (
                "all green (exit code ignored)",
                ended(),
                pr(true, false, None),
                Ok(CiState::Success),
                "advance",
            ),
            (
                "job running",
                running,
                pr(true, false, None),
                Ok(CiState::Success),
                "wait-unknown",
            ),
            (
                "no job yet",
                None,
                pr(true, false, None),
                Ok(CiState::Success),
                "wait-fail",
            ),
            (
                "no PR",
                ended(),
                Ok(None),
                Ok(CiState::Success),
                "wait-fail",
            ),
            (
                "PR closed",
                ended(),
                pr(false, false, None),
                Ok(CiState::Success),
                "wait-fail",
            ),
            (
                "CI failed",
                ended(),
                pr(true, false, None),
                Ok(CiState::Failure),
                "wait-fail",
            ),
            (
                "CI empty is not success",
                ended(),
                pr(true, false, None),
                Ok(CiState::None),
                "wait-unknown",
            ),
            (
                "CI pending",
                ended(),
                pr(true, false, None),
                Ok(CiState::Pending),
                "wait-unknown",
            ),
            (
                "CI warning",
                ended(),
                pr(true, false, None),
                Ok(CiState::Warning),
                "wait-fail",
            ),
            (
                "Gitea down",
                ended(),
                Err("timeout".into()),
                Err("timeout".into()),
                "wait-unknown",
            ),
            (
                "CI unreadable",
                ended(),
                pr(true, false, None),
                Err("500".into()),
                "wait-unknown",
            ),
        ];
        for (name, job, p, ci, want) in cases {
            let inputs = GateInputs {
                last_job: job,
                pr: p,
                ci,
                ..GateInputs::empty()
            };
            assert_eq!(kind(&evaluate(Stage::Development, &inputs)), want, "{name}");
        }
    }

    #[test]
    fn review_gate_table() {
        let cases: Vec<(Result<ReviewVerdict, ArtefactError>, &str)> = vec![
            (Ok(ReviewVerdict::Approve), "advance"),
            (Ok(ReviewVerdict::RequestChanges), "rollback"),
            (
                Err(ArtefactError::Missing {
                    file: "05-review.md".into(),
                }),
                "wait-fail",
            ),
        ];
        for (review, want) in cases {
            let inputs = GateInputs {
                review,
                ..GateInputs::empty()
            };
            let d = evaluate(Stage::Review, &inputs);
            assert_eq!(kind(&d), want);
            if let GateDecision::Rollback { to, because, .. } = d {
                assert_eq!(to, Stage::Development);
                assert_eq!(because, "check_review_requests_changes");
            }
        }
    }

    #[test]
    fn deploy_staging_gate_table() {
        use StagingStatus::*;
        type Case = (
            &'static str,
            StagingFact,
            PrFact,
            bool,
            Option<&'static str>,
            &'static str,
        );
        const OLD: &str = "deadbeefdeadbeef";
        let cases: Vec<Case> = vec![
            (
                "green, image-freshness pin",
                staging(Success, Some(SHA)),
                pr(true, false, Some(true)),
                true,
                Some(SHA),
                "advance",
            ),
            (
                "green, pr-head pin (a default install's ordinary repo)",
                staging(Success, Some(SHA)),
                pr(true, false, Some(true)),
                false,
                Some(SHA),
                "advance",
            ),
            (
                "short sha matches",
                staging(Success, Some(&SHA[..12])),
                pr(true, false, Some(true)),
                true,
                Some(&SHA[..7]),
                "advance",
            ),
            (
                "failed",
                staging(Failed, Some(SHA)),
                pr(true, false, Some(true)),
                true,
                None,
                "rollback",
            ),
            (
                "stale image",
                staging(Success, Some(OLD)),
                pr(true, false, Some(true)),
                true,
                Some(OLD),
                "wait-fail",
            ),
            (
                "pr-head pin of an older head",
                staging(Success, Some(OLD)),
                pr(true, false, Some(true)),
                false,
                Some(OLD),
                "wait-fail",
            ),
            (
                "no revision, freshness applies",
                staging(Success, None),
                pr(true, false, Some(true)),
                true,
                Some(SHA),
                "wait-fail",
            ),
            (
                "no revision, ordinary repo",
                staging(Success, None),
                pr(true, false, Some(true)),
                false,
                None,
                "wait-fail",
            ),
            (
                "report pinned but the task records nothing",
                staging(Success, Some(SHA)),
                pr(true, false, Some(true)),
                false,
                None,
                "wait-fail",
            ),
            (
                "the task records an older revision",
                staging(Success, Some(SHA)),
                pr(true, false, Some(true)),
                false,
                Some(OLD),
                "wait-fail",
            ),
            (
                "mergeable computing",
                staging(Success, Some(SHA)),
                pr(true, false, Some(false)),
                true,
                Some(SHA),
                "wait-unknown",
            ),
            (
                "mergeable absent",
                staging(Success, Some(SHA)),
                pr(true, false, None),
                true,
                Some(SHA),
                "wait-unknown",
            ),
            (
                "gitea down",
                staging(Success, Some(SHA)),
                Err("connection refused".into()),
                false,
                Some(SHA),
                "wait-unknown",
            ),
            (
                "already merged",
                staging(Success, Some(SHA)),
                pr(false, true, Some(false)),
                true,
                Some(SHA),
                "advance",
            ),
            (
                "report missing",
                Err(ArtefactError::Missing {
                    file: "10-staging-report.md".into(),
                }),
                pr(true, false, Some(true)),
                true,
                Some(SHA),
                "wait-fail",
            ),
        ];
        for (name, st, p, fresh, validated, want) in cases {
            let inputs = GateInputs {
                staging: st,
                pr: p,
                freshness_applies: fresh,
                validated_revision: validated.map(str::to_string),
                ..GateInputs::empty()
            };
            assert_eq!(
                kind(&evaluate(Stage::DeployStaging, &inputs)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn an_unpinned_report_names_the_fix() {
        let inputs = GateInputs {
            staging: staging(StagingStatus::Success, None),
            pr: pr(true, false, Some(true)),
            ..GateInputs::empty()
        };
        let d = evaluate(Stage::DeployStaging, &inputs);
        let blockers = d.blockers();
        assert!(
            blockers
                .starts_with("check_revision_pinned: the staging report has no checked_revision"),
            "{blockers}"
        );
        assert!(blockers.contains("orch staging-check --task"), "{blockers}");
    }

    #[test]
    fn deploy_gate_table() {
        let cases: Vec<(DeployFact, PrFact, &str)> = vec![
            (Ok(DeployStatus::Success), pr(false, true, None), "advance"),
            (
                Ok(DeployStatus::Success),
                pr(true, false, Some(true)),
                "wait-fail",
            ),
            (Ok(DeployStatus::Failed), pr(false, true, None), "rollback"),
            (
                Ok(DeployStatus::Failed),
                pr(true, false, Some(true)),
                "rollback",
            ),
            (Ok(DeployStatus::Failed), Ok(None), "rollback"),
            (
                Ok(DeployStatus::Failed),
                Err("connection refused".into()),
                "wait-unknown",
            ),
            (
                Ok(DeployStatus::Success),
                Err("gitea down".into()),
                "wait-unknown",
            ),
        ];
        for (deploy, p, want) in cases {
            let inputs = GateInputs {
                deploy,
                pr: p,
                ..GateInputs::empty()
            };
            assert_eq!(kind(&evaluate(Stage::Deploy, &inputs)), want);
        }
    }

    #[test]
    fn a_failed_deploy_with_an_unknown_merge_waits_naming_the_fact() {
        let inputs = GateInputs {
            deploy: Ok(DeployStatus::Failed),
            pr: Err("retryable: connection refused".into()),
            recorded_pr: Some(7),
            ..GateInputs::empty()
        };
        let d = evaluate(Stage::Deploy, &inputs);
        // Only unknowns hold it: reconcile neither re-runs the deployer nor counts it.
        assert_eq!(kind(&d), "wait-unknown");
        assert_eq!(
            d.blockers(),
            "check_merge_known: unknown: deploy_status is FAILED, but whether PR #7 was \
             merged is unknown (gitea: retryable: connection refused): waiting to decide the \
             round"
        );
        let unnamed = GateInputs {
            recorded_pr: None,
            pr: Err("gitea is not configured (ORCH_GITEA_URL)".into()),
            ..inputs
        };
        let blockers = evaluate(Stage::Deploy, &unnamed).blockers();
        assert!(
            blockers.contains(
                "whether the task's PR was merged is unknown (gitea is not configured \
                 (ORCH_GITEA_URL))"
            ),
            "{blockers}"
        );
    }

    #[test]
    fn a_rollback_to_development_requires_the_merge_fact_exactly_where_the_round_needs_it() {
        for g in GATES {
            let needs_it = g.rollback_when.is_some()
                && round::needs_merge_evidence(g.stage, Stage::Development);
            assert_eq!(
                g.rollback_requires.contains(&CheckId::MergeKnown),
                needs_it,
                "{}",
                g.stage
            );
        }
        // Other rollbacks do not wait on Gitea.
        let inputs = GateInputs {
            staging: staging(StagingStatus::Failed, None),
            ..GateInputs::empty()
        };
        assert_eq!(kind(&evaluate(Stage::DeployStaging, &inputs)), "rollback");
    }

    #[test]
    fn stages_without_a_gate() {
        for s in [Stage::Analysis, Stage::Done, Stage::Cancelled] {
            assert_eq!(evaluate(s, &GateInputs::empty()), GateDecision::NoGate);
            assert!(needs(s).is_empty());
        }
        assert_eq!(needs(Stage::Review), vec![Need::Review]);
        assert_eq!(
            needs(Stage::Development),
            vec![Need::Job, Need::Pr, Need::Ci]
        );
    }

    #[test]
    fn every_gate_check_is_registered_once() {
        for g in GATES {
            for id in g
                .checks
                .iter()
                .chain(g.rollback_when.iter())
                .chain(g.rollback_requires)
            {
                assert_eq!(QG_CHECKS.iter().filter(|c| c.id == *id).count(), 1);
            }
            assert!(crate::core::stage::transition(g.stage, g.advance_to).is_some());
        }
    }

    #[test]
    fn revision_matching() {
        assert!(revisions_match(SHA, &SHA[..7]));
        assert!(revisions_match(&SHA.to_uppercase(), SHA));
        assert!(!revisions_match(SHA, &SHA[..6]));
        assert!(!revisions_match("", SHA));
        assert!(!revisions_match(SHA, "1123456789abcdef"));
    }
}
