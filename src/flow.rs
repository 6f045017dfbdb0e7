//! Pipeline moves with every effect they have, shared by the commands that move tasks
//! (webhook, reconcile, run-job, post-deploy, the operator's `task move`).
//!
//! A move goes through [`Db::move_task`] (the table, the event, the next job, and a new
//! round when the move follows a merge) and then does what lives outside the database
//! (arming post-deploy on `deploy → done`, the new round's branch after a reopen).

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::{Created, Db, Moved};
use crate::adapters::gitea::{BranchOutcome, GiteaClient};
use crate::context::Context;
use crate::core::branch::round_branch_name;
use crate::core::gate::{Fact, Need};
use crate::core::round::{self, RoundChange};
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};
use crate::forge::Forge;

/// Moves `task` to `to` with every effect of the transition.
///
/// A move that needs to know whether the task's PR was merged (`deploy → development`,
/// see [`round::reopen`]) reads it from Gitea here; a caller that already gathered it
/// (the deploy gate) uses [`move_task_with`].
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
    let merged = if round::needs_merge_evidence(task.stage, to) {
        merge_evidence(ctx, task)
    } else {
        Err("not needed for this move".into())
    };
    move_task_with(ctx, db, task, to, reason, actor, &merged)
}

/// [`move_task`] with the merge evidence the caller gathered: whether the task's PR is
/// merged or its head contained in the base (`Err`: could not tell). It decides the
/// round with [`round::reopen`]; a move that starts a new round does so in the move's
/// own transaction, then makes the round's branch ([`ensure_branch`]), leaving it to
/// reconcile when Gitea fails or is not configured.
///
/// # Errors
/// When the table refuses the move, the task moved meanwhile, or a write fails (a
/// branch that could not be made is not an error: the move stands).
pub fn move_task_with(
    ctx: &Context,
    db: &mut Db,
    task: &Task,
    to: Stage,
    reason: &str,
    actor: Actor,
    merged: &Fact<bool>,
) -> Result<Moved> {
    let change = round::reopen(task.stage, to, merged);
    if let RoundChange::KeepUnsure { why } = &change {
        log::warn!("task {}: {} -> {to}: {why}", task.key, task.stage);
    }
    let moved = db.move_task_limited(
        task.id,
        task.stage,
        to,
        reason,
        actor,
        ctx.now_secs(),
        Some(ctx.config.settings.max_developer_retries.0),
        change.is_new(),
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
    if let (RoundChange::New { because }, true) = (&change, moved.new_round) {
        log::info!(
            "task {}: round {} starts ({because}): no PR, no validated revision",
            task.key,
            moved.round
        );
        start_round_branch(ctx, db, task.id);
    }
    Ok(moved)
}

/// Reads whether `task`'s PR is merged (or its head contained in its base), as the
/// deploy gate reads it; `Err` when it cannot be told (Gitea down or not configured).
fn merge_evidence(ctx: &Context, task: &Task) -> Fact<bool> {
    let mut forge = Forge::from_config(&ctx.config).map_err(|e| format!("{e:#}"))?;
    let facts = forge.facts(task, Stage::Deploy, &[Need::Pr]);
    round::merged(&facts.pr)
}

/// Makes the branch of the round a reopen just started; a failure is logged and left
/// for reconcile (`branch_ready_at` stays NULL).
fn start_round_branch(ctx: &Context, db: &Db, task_id: i64) {
    let task = match db.task(task_id) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            log::warn!("task {task_id}: reading it for its new round's branch: {e:#}");
            return;
        }
    };
    let Some(project) = ctx.config.pipeline.project(&task.project) else {
        log::warn!(
            "task {}: project {} is not in the pipeline file: round {} branch not made",
            task.key,
            task.project,
            task.round
        );
        return;
    };
    let left = match ensure_branch(ctx, db, &task, &project.default_branch) {
        Ok(BranchStep::Skipped) => "gitea not configured: ORCH_GITEA_URL is unset".to_string(),
        Ok(_) => return,
        Err(e) => format!("{e:#}"),
    };
    log::warn!(
        "task {}: round {} branch not made yet ({left}); reconcile completes it",
        task.key,
        task.round
    );
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
    /// A new round's branch, created under the round's own name
    /// ([`round_branch_name`]) because the old branch still exists.
    Renamed(String),
}

impl BranchStep {
    /// Returns how the step reads in outcome lines.
    pub fn describe(&self) -> &'static str {
        match self {
            BranchStep::Created => "created",
            BranchStep::Existed => "already existed",
            BranchStep::NotNeeded => "not requested",
            BranchStep::Skipped => "not created (gitea not configured)",
            BranchStep::Renamed(_) => "created under the round's new name",
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
        ensure_branch(ctx, db, &task, default_branch)?
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
///
/// From round 2 on (a reopen), the round's branch is made by `ensure_round_branch` (below),
/// which records the name it takes and `branch_ready_at`.
///
/// # Errors
/// When Gitea refuses or cannot be reached, or a write fails.
pub fn ensure_branch(
    ctx: &Context,
    db: &Db,
    task: &Task,
    default_branch: &str,
) -> Result<BranchStep> {
    if ctx.config.settings.gitea_url.is_none() {
        log::warn!(
            "task {}: gitea is not configured (ORCH_GITEA_URL): branch {} not created",
            task.key,
            task.branch
        );
        return Ok(BranchStep::Skipped);
    }
    let gitea = GiteaClient::from_config(&ctx.config)?;
    if task.round > 1 {
        return ensure_round_branch(ctx, db, &gitea, task, default_branch);
    }
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

/// Makes the branch of a task's round 2 or later from the current default branch and
/// records it; does nothing when the round's branch is already confirmed.
///
/// The round first tries the branch's current name: 201 means the old branch was gone
/// (the merge deleted it), and the round reuses the name. 409 means it still exists
/// (with the merged work on it): the round takes [`round_branch_name`] instead, recorded
/// on the task before it is created, so a repeat after a crash finds the chosen name and
/// takes 409 for it as success. `branch_ready_at` is set once Gitea confirmed.
///
/// # Errors
/// When Gitea refuses or cannot be reached (the branch stays unconfirmed for the next
/// try), a write fails, or another pass changed the task's round or branch meanwhile.
fn ensure_round_branch(
    ctx: &Context,
    db: &Db,
    gitea: &GiteaClient,
    task: &Task,
    default_branch: &str,
) -> Result<BranchStep> {
    if task.branch_ready_at.is_some() {
        return Ok(BranchStep::NotNeeded);
    }
    let now = ctx.now_secs();
    let create = |name: &str| {
        gitea
            .create_branch(&task.repo, name, default_branch)
            .with_context(|| {
                format!(
                    "creating branch {name} of task {} (round {})",
                    task.key, task.round
                )
            })
    };
    let round_name = round_branch_name(&task.branch, task.round);
    let mut name = task.branch.clone();
    if name != round_name {
        if create(&name)? == BranchOutcome::Created {
            db.set_branch_ready(task, now)?;
            log::info!(
                "task {}: round {} branch {name} created again in {} from {default_branch} (the old one was deleted)",
                task.key,
                task.round,
                task.repo
            );
            return Ok(BranchStep::Created);
        }
        if !db.set_round_branch(task.id, task.round, &name, &round_name, now)? {
            bail!(
                "task {} changed meanwhile (round {} branch {name} is no longer unconfirmed)",
                task.key,
                task.round
            );
        }
        log::info!(
            "task {}: branch {name} still exists in {}: round {} takes {round_name}",
            task.key,
            task.repo,
            task.round
        );
        name = round_name;
    }
    let outcome = create(&name)?;
    let renamed = Task {
        branch: name.clone(),
        ..task.clone()
    };
    db.set_branch_ready(&renamed, now)?;
    let step = if name != task.branch {
        BranchStep::Renamed(name.clone())
    } else if outcome == BranchOutcome::Created {
        BranchStep::Created
    } else {
        BranchStep::Existed
    };
    log::info!(
        "task {}: round {} branch {name} {} in {} (from {default_branch})",
        task.key,
        task.round,
        step.describe(),
        task.repo
    );
    Ok(step)
}
