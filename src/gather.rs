//! Gathering the facts a stage's gate reads, and applying the gate's decision: the one
//! path by which a finished job (through `run-job`) or a re-drive moves a task.
//!
//! Artefacts are read with the `core::artefact` parsers; the stage's latest job comes
//! from the database. Forge facts (the PR and its CI state) need the Gitea client, which
//! is not wired in yet: they are gathered as `Err("gitea client not configured")`, so the
//! gates that need them wait (fail-safe: nothing advances without evidence) until the
//! lead wires Gitea in here.

use anyhow::Result;

use crate::adapters::artefacts;
use crate::adapters::db::{Db, Moved};
use crate::context::Context;
use crate::core::artefact::{self, ArtefactError, DeployStatus, ReviewVerdict};
use crate::core::gate::{self, GateDecision, GateInputs, Need};
use crate::core::job::JobOutcome;
use crate::core::stage::Actor;
use crate::core::task::Task;
use crate::flow;

/// Why forge facts are unknown in this build (the gates that need them wait).
pub const GITEA_NOT_CONFIGURED: &str = "gitea client not configured";

/// Reads what `task`'s current stage's gate needs.
///
/// Unknown facts stay errors (their checks say `Unknown`); this never fails the caller.
pub fn gate_inputs(ctx: &Context, db: &Db, task: &Task) -> GateInputs {
    let mut inputs = GateInputs::empty();
    let root = &ctx.config.settings.artefacts_dir;
    let read = |file: &str| -> Result<Option<String>, ArtefactError> {
        artefacts::read(root, &task.key, file).map_err(|e| ArtefactError::BadYaml {
            file: file.into(),
            message: format!("{e:#}"),
        })
    };
    for need in gate::needs(task.stage) {
        match need {
            Need::Job => {
                inputs.last_job = match db.latest_stage_job(task.id, task.stage) {
                    Ok(j) => j.map(|j| JobOutcome {
                        status: j.status,
                        attempt: j.attempt,
                        exit_code: j.exit_code,
                    }),
                    Err(e) => {
                        log::warn!("task {}: reading its latest job: {e:#}", task.key);
                        None
                    }
                };
            }
            // The Gitea client is wired in by the forge work; until then these wait.
            Need::Pr => inputs.pr = Err(GITEA_NOT_CONFIGURED.into()),
            Need::Ci => inputs.ci = Err(GITEA_NOT_CONFIGURED.into()),
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
    inputs.validated_revision = task.validated_revision.clone();
    inputs
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
/// [`flow::move_task`], or wait. An escalated task is left alone. Escalation on too many
/// developer retries is reconcile's decision, not made here.
///
/// # Errors
/// When the move fails (another pass moved the task meanwhile, or a write failed).
pub fn apply_gate(ctx: &Context, db: &mut Db, task: &Task, actor: Actor) -> Result<GateOutcome> {
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
            let moved = flow::move_task(ctx, db, task, *to, "gate passed", actor)?;
            Ok(GateOutcome::Advanced(moved))
        }
        GateDecision::Rollback { to, because, .. } => {
            let moved = flow::move_task(ctx, db, task, *to, because, actor)?;
            Ok(GateOutcome::RolledBack(moved))
        }
    }
}
