//! Gathering the facts a stage's gate reads, and applying the gate's decision: the one
//! path by which a finished job (through `run-job`) or a re-drive moves a task.
//!
//! Artefacts are read with the `core::artefact` parsers; the stage's latest job comes
//! from the database; forge facts (the PR, its CI state, merged-or-contained) come from
//! Gitea through [`crate::adapters::forge::Forge`] (without `ORCH_GITEA_URL` they are unknown and
//! the gates that need them wait: nothing advances without evidence). Only what
//! `gate::needs(stage)` lists is read.

use anyhow::Result;

use crate::adapters::artefacts::ArtefactStore;
use crate::adapters::db::{Db, Moved};
use crate::adapters::forge::Forge;
use crate::core::artefact::{self, ArtefactError, DeployStatus, ReviewVerdict};
use crate::core::gate::{self, GateDecision, GateInputs, Need};
use crate::core::job::Job;
use crate::core::stage::Actor;
use crate::core::task::Task;
use crate::ops::moves::{self, MergeEvidence, MoveRequest};
use crate::ops::pass::PassContext;

/// Why forge facts are unknown without Gitea (the gates that need them wait).
pub const GITEA_NOT_CONFIGURED: &str = crate::adapters::forge::GITEA_NOT_CONFIGURED;

/// Reads what `task`'s current stage's gate needs, through the pass's Gitea client.
///
/// Unknown facts stay errors (their checks say `Unknown`); this never fails the caller.
pub fn gate_inputs(ctx: &PassContext, db: &Db, task: &Task) -> GateInputs {
    let mut forge = match ctx.gitea() {
        Ok(client) => Forge::new(client),
        Err(e) => {
            log::warn!("task {}: gitea client: {e:#}", task.key);
            Forge::new(None)
        }
    };
    gate_inputs_with(ctx, db, task, &mut forge, true)
}

/// Reads what `task`'s current stage's gate needs through `forge` (a pass shares one,
/// so each repo's open pulls are listed once). A PR seen for the first time, or the open
/// PR that replaces a recorded closed one, has its number recorded on the task when
/// `record` (not in dry runs); so has a green CI verdict of the PR head
/// (`ci_verdicts`), which is then never read from Gitea again.
pub fn gate_inputs_with(
    ctx: &PassContext,
    db: &Db,
    task: &Task,
    forge: &mut Forge<'_>,
    record: bool,
) -> GateInputs {
    gate_inputs_and_job(ctx, db, task, forge, record, None).0
}

/// [`gate_inputs_with`], also handing back the stage's latest job as read for the gate
/// (`None` when the stage's gate does not read one), so a caller that needs the job
/// itself (its id, to re-run it) does not read it a second time. `latest`: that job
/// when the caller already read it (a pass reads a page of tasks' jobs at once).
pub fn gate_inputs_and_job(
    ctx: &PassContext,
    db: &Db,
    task: &Task,
    forge: &mut Forge<'_>,
    record: bool,
    mut latest: Option<Option<Job>>,
) -> (GateInputs, Option<Result<Option<Job>>>) {
    let mut inputs = GateInputs::empty();
    let mut job_read = None;
    // Under PostgreSQL from the database: the agent may have run on another host.
    let store = ArtefactStore::new(&ctx.config.settings.artefacts_dir, db);
    let read = |file: &str| -> Result<Option<String>, ArtefactError> {
        store
            .read(&task.key, file)
            .map_err(|e| ArtefactError::BadYaml {
                file: file.into(),
                message: format!("{e:#}"),
            })
    };
    for need in gate::needs(task.stage) {
        match need {
            Need::Job => {
                let read = match latest.take() {
                    Some(job) => Ok(job),
                    None => db.latest_stage_job(task.id, task.stage),
                };
                inputs.last_job = match &read {
                    Ok(j) => j.as_ref().map(Job::outcome),
                    Err(e) => {
                        log::warn!("task {}: reading its latest job: {e:#}", task.key);
                        None
                    }
                };
                job_read = Some(read);
            }
            Need::Pr | Need::Ci => {}
            Need::Review => {
                inputs.review = read(artefact::REVIEW_FILE)
                    .and_then(|t| artefact::parse_status::<ReviewVerdict>(t.as_deref()));
            }
            Need::Staging => {
                inputs.staging = read(artefact::STAGING_REPORT_FILE)
                    .and_then(|t| artefact::parse_staging_report(t.as_deref()));
            }
            Need::Deploy => {
                inputs.deploy = read(artefact::DEPLOY_REPORT_FILE)
                    .and_then(|t| artefact::parse_status::<DeployStatus>(t.as_deref()));
            }
        }
    }
    let needs = gate::needs(task.stage);
    let facts = forge.gate_facts(task, task.stage, &needs, Some(db));
    inputs.pr = facts.pr;
    inputs.ci = facts.ci;
    inputs.ci_failure = facts.ci_failure;
    if let (Some((sha, verdict)), true) = (&facts.final_ci, record) {
        if let Err(e) = db.record_ci_verdict(&task.repo, sha, verdict, ctx.now_secs()) {
            log::warn!(
                "task {}: recording the CI verdict of {sha}: {e:#}",
                task.key
            );
        }
    }
    if let (Some(n), true) = (facts.new_pr_number, record) {
        match db.set_pr_number(
            task.id,
            task.round,
            i64::try_from(n).unwrap_or(i64::MAX),
            ctx.now_secs(),
        ) {
            Ok(false) => log::info!(
                "task {}: PR #{n} not recorded: the task started another round meanwhile",
                task.key
            ),
            Ok(true) => log::info!(
                "task {}: PR #{n} found for branch {}{}",
                task.key,
                task.branch,
                task.pr_number
                    .map(|old| format!(" (replaces #{old}, which is closed)"))
                    .unwrap_or_default()
            ),
            Err(e) => log::warn!("task {}: recording PR #{n}: {e:#}", task.key),
        }
    }
    let s = &ctx.config.settings;
    let project = ctx.config.pipeline.project(&task.project);
    inputs.freshness_applies = crate::core::staging_check::freshness_applies(
        s.image_freshness_enabled,
        &s.image_freshness_repos.0,
        project.map(|p| (p.name.as_str(), p.repo.as_str(), p.self_hosting)),
    );
    inputs.validated_revision = task.validated_revision.clone();
    inputs.recorded_pr = task.pr_number.and_then(|n| u64::try_from(n).ok());
    (inputs, job_read)
}

/// What applying a gate did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum GateOutcome {
    /// The task moved forward.
    Advanced(Moved),
    /// The task rolled back.
    RolledBack(Moved),
    /// The gate held; the blockers say why.
    Waiting {
        /// The checks that did not pass.
        blockers: String,
    },
    /// The stage has no automatic gate (analysis, done, cancelled).
    NoGate,
    /// The task is escalated to a human: nothing re-drives it.
    Escalated,
}

/// Evaluates `task`'s current stage's gate and acts on it: advance or roll back through
/// [`moves::move_task`], or wait. An escalated task is left alone. Escalation on too many
/// developer retries is reconcile's decision, not made here.
///
/// # Errors
/// When the move fails (another pass moved the task meanwhile, or a write failed).
pub fn apply_gate(
    ctx: &PassContext,
    db: &mut Db,
    task: &Task,
    actor: Actor,
) -> Result<GateOutcome> {
    if task.escalated_at.is_some() {
        return Ok(GateOutcome::Escalated);
    }
    let inputs = gate_inputs(ctx, db, task);
    let decision = gate::evaluate(task.stage, &inputs);
    match &decision {
        GateDecision::NoGate => Ok(GateOutcome::NoGate),
        GateDecision::Wait { .. } => {
            let blockers = decision.blockers();
            log::info!("task {} waits at {}: {blockers}", task.key, task.stage);
            Ok(GateOutcome::Waiting { blockers })
        }
        GateDecision::Advance { to, .. } => {
            let moved =
                moves::move_task(ctx, db, &MoveRequest::new(task, *to, "gate passed", actor))?;
            Ok(GateOutcome::Advanced(moved))
        }
        GateDecision::Rollback { to, because, .. } => {
            // The deploy gate's PR fact says whether the rollback follows a merge (it
            // rolls back only once that is known: `check_merge_known`).
            let merged = crate::core::round::merged(&inputs.pr);
            let moved = moves::move_task(
                ctx,
                db,
                &MoveRequest::new(task, *to, because, actor)
                    .merge_evidence(MergeEvidence::Given(&merged)),
            )?;
            Ok(GateOutcome::RolledBack(moved))
        }
    }
}
