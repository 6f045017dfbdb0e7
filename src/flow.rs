//! Pipeline moves with every effect they have, shared by the commands that move tasks
//! (webhook, reconcile, run-job, post-deploy, the operator's `task move`).
//!
//! A move goes through [`Db::move_task`] (the table, the event, the next job) and then
//! does what lives outside the database (arming post-deploy on `deploy → done`).

use anyhow::{Context as _, Result};

use crate::adapters::db::{Created, Db, Moved};
use crate::adapters::gitea::{BranchOutcome, GiteaClient};
use crate::context::Context;
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};

/// Moves `task` to `to` with every effect of the transition.
///
/// # Errors
/// When the table refuses the move, the task moved meanwhile, or a write fails.
pub fn move_task(
    ctx: &Context,
    db: &mut Db,
    task: &Task,
    to: Stage,
    reason: &str,
    actor: Actor,
) -> Result<Moved> {
    let moved = db.move_task_limited(
        task.id,
        task.stage,
        to,
        reason,
        actor,
        ctx.now_secs(),
        Some(ctx.config.settings.max_developer_retries.0),
    )?;
    if moved.escalated {
        log::warn!(
            "task {} escalated: developer retries {} reached ORCH_MAX_DEVELOPER_RETRIES; no developer job queued",
            task.key,
            moved.developer_retries
        );
    }
    log::info!(
        "task {} moved {} -> {} by {actor}: {reason}{}",
        task.key,
        moved.from,
        moved.to,
        moved
            .enqueued_job
            .map(|j| format!(" (enqueued job {j})"))
            .unwrap_or_default()
    );
    if moved.arms_post_deploy {
        crate::commands::post_deploy_tick::arm_after_deploy(ctx, task);
    }
    Ok(moved)
}

/// What starting a task did about its Gitea branch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BranchStep {
    /// Created now from the default branch (201).
    Created,
    /// It existed already (409): success.
    Existed,
    /// Not asked for: the start was already complete.
    NotNeeded,
    /// Gitea is not configured (`ORCH_GITEA_URL` unset): no branch was created.
    Skipped,
}

impl BranchStep {
    /// Returns how the step reads in outcome lines.
    pub fn describe(&self) -> &'static str {
        match self {
            BranchStep::Created => "created",
            BranchStep::Existed => "already existed",
            BranchStep::NotNeeded => "not requested",
            BranchStep::Skipped => "not created (gitea not configured)",
        }
    }
}

/// What starting a task did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    /// The task.
    pub task_id: i64,
    /// Whether the task was created now (false: it existed).
    pub created: bool,
    /// What happened to its branch.
    pub branch: BranchStep,
    /// The analyst job, when enqueued now.
    pub enqueued_job: Option<i64>,
}

/// Starts a task: creates it once per work item, creates its branch on Gitea from
/// `default_branch` (an existing branch is success), and enqueues the analyst job once.
///
/// The steps run in that order and each is idempotent, so a start that failed half-way
/// (Gitea down) is finished by running it again: the task is found, the branch request
/// is repeated, and the job is enqueued only when no analyst job ever existed. A task
/// that is past analysis, or whose analyst job exists, is left as it is.
///
/// # Errors
/// When a write fails, the key belongs to another work item, or Gitea refuses or cannot
/// be reached (then no job is enqueued; running again finishes the start).
pub fn start_task(
    ctx: &Context,
    db: &mut Db,
    new: &NewTask,
    default_branch: &str,
    actor: Actor,
    reason: &str,
) -> Result<Started> {
    let now = ctx.now_secs();
    let created = db.create_task(new, actor, reason, now)?;
    let task = db
        .task(created.id())?
        .expect("the task was just created or found");
    // The analyst job runs once per task: enqueued when the task is at analysis and no
    // analyst job ever existed (also after a crash between creating and enqueueing).
    let has_analyst_job = db
        .task_jobs(task.id)?
        .iter()
        .any(|j| j.agent == Agent::Analyst);
    let unfinished = task.stage == Stage::Analysis && !has_analyst_job;
    let branch = if unfinished {
        ensure_branch(ctx, &task, default_branch)?
    } else {
        BranchStep::NotNeeded
    };
    let enqueued_job = if unfinished {
        match db.enqueue_job(task.id, Agent::Analyst, Stage::Analysis, now)? {
            Created::New(id) => Some(id),
            Created::Existing(_) => None,
        }
    } else {
        None
    };
    Ok(Started {
        task_id: task.id,
        created: matches!(created, Created::New(_)),
        branch,
        enqueued_job,
    })
}

/// Creates the task's branch on Gitea from the default branch; 409 is success.
fn ensure_branch(ctx: &Context, task: &Task, default_branch: &str) -> Result<BranchStep> {
    if ctx.config.settings.gitea_url.is_none() {
        log::warn!(
            "task {}: gitea is not configured (ORCH_GITEA_URL): branch {} not created",
            task.key,
            task.branch
        );
        return Ok(BranchStep::Skipped);
    }
    let gitea = GiteaClient::from_config(&ctx.config)?;
    let step = match gitea
        .create_branch(&task.repo, &task.branch, default_branch)
        .with_context(|| format!("creating branch {} of task {}", task.branch, task.key))?
    {
        BranchOutcome::Created => BranchStep::Created,
        BranchOutcome::AlreadyExists => BranchStep::Existed,
    };
    log::info!(
        "task {}: branch {} {} in {} (from {default_branch})",
        task.key,
        task.branch,
        step.describe(),
        task.repo
    );
    Ok(step)
}
