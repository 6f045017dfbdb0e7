//! Pipeline moves with every effect they have, shared by the commands that move tasks
//! (webhook, reconcile, run-job, post-deploy, the operator's `task move`).
//!
//! A move ([`move_task`], one [`MoveRequest`]) goes through [`Db::move_task`] (the
//! table, the event, the next job) and then does what lives outside the database
//! (arming post-deploy on `deploy → done`). A start writes the task and its analyst job
//! in one transaction, then runs the branch step ([`ensure_branch`]), which `reconcile` repeats for any live task still lacking its
//! branch. Remote calls never run inside a write transaction.

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::{Db, Move, Moved, Recorder, TaskStart};
use crate::adapters::forge::Forge;
use crate::adapters::gitea::{BranchOutcome, GiteaClient};
use crate::adapters::http::HttpError;
use crate::core::branch::round_branch_name;
use crate::core::facts::Fact;
use crate::core::gate::Need;
use crate::core::round::{self, RoundChange};
use crate::core::stage::{Actor, Stage};
use crate::core::task::{NewTask, Task};
use crate::ops::pass::PassContext;

/// Where a move's merge evidence comes from: whether the task's PR was merged (or its
/// head contained in the base; `Err`: could not tell). It decides with
/// [`round::reopen`] whether a `deploy → development` move starts a new round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeEvidence<'a> {
    /// Read from Gitea here when the move needs it (`deploy → development`, see
    /// [`round::needs_merge_evidence`]); not read for any other move.
    ReadFromGitea,
    /// Gathered by the caller (the deploy gate's PR fact, an operator's `--round`).
    Given(&'a Fact<bool>),
}

/// One move of a task with every effect it has, as [`move_task`] makes it.
/// [`MoveRequest::new`] takes what every move has; the setters add the rest.
#[derive(Clone, Copy)]
pub struct MoveRequest<'a> {
    /// The task, as the caller read it (the move is refused when it moved since).
    pub task: &'a Task,
    /// Where it goes.
    pub to: Stage,
    /// Why (the stage event's reason).
    pub reason: &'a str,
    /// Who moves it.
    pub actor: Actor,
    /// Where the merge evidence comes from ([`MergeEvidence::ReadFromGitea`] unless set).
    pub merged: MergeEvidence<'a>,
    /// The webhook delivery whose outcome the move records in its own transaction, so
    /// the move, its next job and the outcome are committed together.
    pub record: Option<&'a Recorder<'a, Moved>>,
}

impl<'a> MoveRequest<'a> {
    /// A move that reads its merge evidence from Gitea when it needs it and records no
    /// delivery.
    pub fn new(task: &'a Task, to: Stage, reason: &'a str, actor: Actor) -> MoveRequest<'a> {
        MoveRequest {
            task,
            to,
            reason,
            actor,
            merged: MergeEvidence::ReadFromGitea,
            record: None,
        }
    }

    /// Takes the merge evidence from `merged`.
    #[must_use]
    pub fn merge_evidence(self, merged: MergeEvidence<'a>) -> MoveRequest<'a> {
        MoveRequest { merged, ..self }
    }

    /// Records a webhook delivery's outcome in the move's transaction.
    #[must_use]
    pub fn recorded(self, record: Option<&'a Recorder<'a, Moved>>) -> MoveRequest<'a> {
        MoveRequest { record, ..self }
    }
}

/// A move refused because whether it starts a new round could not be decided: the
/// task's PR may have been merged, and Gitea could not tell ([`round::reopen`]).
/// Nothing moved; the deploy gate waits, and an operator is told how to proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {key}: {from} -> {to} not made: {why}")]
pub struct RoundUndecided {
    /// The task's key.
    pub key: String,
    /// Where it is.
    pub from: Stage,
    /// Where it was to go.
    pub to: Stage,
    /// Why the round cannot be decided.
    pub why: String,
}

/// Moves `req.task` to `req.to` with every effect of the transition.
///
/// It decides the round with [`round::reopen`] from the request's merge evidence; a
/// move that starts a new round does so in the move's own transaction, then makes the
/// round's branch ([`ensure_branch`]), leaving it to reconcile when Gitea fails or is
/// not configured. It applies `ORCH_MAX_DEVELOPER_RETRIES` in the move's transaction
/// and arms post-deploy on `deploy → done`. A move back to development first writes
/// the rollback's feedback file ([`crate::ops::feedback::write_on_rollback`]).
///
/// # Errors
/// When the table refuses the move, the task moved meanwhile, a write fails (a branch
/// that could not be made is not an error: the move stands), the merge evidence is
/// unknown where the round depends on it ([`RoundUndecided`]: nothing moved), or the
/// recorded delivery got its outcome meanwhile (nothing moved).
pub fn move_task(ctx: &PassContext, db: &mut Db, req: &MoveRequest<'_>) -> Result<Moved> {
    let MoveRequest {
        task,
        to,
        reason,
        actor,
        merged,
        record,
    } = *req;
    let read;
    let merged = match merged {
        MergeEvidence::ReadFromGitea => {
            read = merge_evidence_for(ctx, task, to);
            &read
        }
        MergeEvidence::Given(fact) => fact,
    };
    // Before the commit, so the entered stage's gate never reads an earlier visit's
    // artefact: a crash in between leaves the task where it was, and an error here fails
    // the move with nothing committed (docs/architecture.md, "Moving a task").
    crate::adapters::artefacts::ArtefactStore::new(&ctx.config.settings.artefacts_dir, db)
        .set_aside_on_entry(task, to, ctx.now_secs())?;
    let change = round::reopen(task.stage, to, merged);
    if let RoundChange::Undecided { why } = &change {
        // Either guess is wrong half the time: keeping the round sends the developer to
        // a merged PR's branch, a new round abandons an open PR. Nothing moves yet.
        return Err(RoundUndecided {
            key: task.key.clone(),
            from: task.stage,
            to,
            why: why.clone(),
        }
        .into());
    }
    // Also before the commit, for the same reason: a rollback is never committed
    // without its feedback, and a retry rewrites the same numbered file.
    crate::ops::feedback::write_on_rollback(
        &ctx.config.settings.artefacts_dir,
        db,
        task,
        to,
        reason,
        actor,
        ctx.now_secs(),
    )?;
    let moved = db.move_task(
        &Move::new(task.id, task.stage, to, reason, actor, ctx.now_secs())
            .retry_limit(Some(ctx.config.settings.max_developer_retries.0))
            .new_round(change.is_new())
            .recorded(record),
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
        crate::ops::post_deploy::arm_after_deploy(ctx, db, task);
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

/// The merge evidence the move of `task` to `to` needs: read from Gitea for
/// `deploy → development`, not needed (and not read) for any other move.
fn merge_evidence_for(ctx: &PassContext, task: &Task, to: Stage) -> Fact<bool> {
    if !round::needs_merge_evidence(task.stage, to) {
        return Err("not needed for this move".into());
    }
    let mut forge = Forge::new(ctx.gitea().map_err(|e| format!("{e:#}"))?);
    let facts = forge.facts(task, Stage::Deploy, &[Need::Pr]);
    round::merged(&facts.pr)
}

/// Makes the branch of the round a reopen just started; a branch left undone is
/// logged and left for reconcile (`branch_ready_at` stays NULL).
fn start_round_branch(ctx: &PassContext, db: &Db, task_id: i64) {
    let task = match db.task(task_id) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            log::warn!("task {task_id}: reading it for its new round's branch: {e:#}");
            return;
        }
    };
    let step = match ensure_branch(ctx, db, &task) {
        Ok(step) => step,
        Err(e) => BranchStep::Failed(format!("{e:#}")),
    };
    if let Some(why) = step.left_because() {
        log::warn!(
            "task {}: round {} branch not made yet ({why}); reconcile completes it",
            task.key,
            task.round
        );
    }
}

/// What the branch step did about the task's Gitea branch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", content = "reason", rename_all = "kebab-case")]
pub enum BranchStep {
    /// Created now from the default branch (201).
    Created,
    /// It existed already (409): success.
    Existed,
    /// Already confirmed on Gitea earlier (`branch_ready_at` set): nothing asked.
    Ready,
    /// Gitea is not configured (`ORCH_GITEA_URL` unset): nothing asked; `reconcile`
    /// creates it once Gitea is configured.
    NotConfigured,
    /// Asking Gitea failed (unreachable, 5xx, refused): `reconcile` tries again.
    Failed(String),
    /// A new round's branch, created under the round's own name
    /// ([`round_branch_name`]) because the old branch still exists.
    Renamed(String),
}

impl BranchStep {
    /// Returns how the step reads in outcome lines.
    pub fn describe(&self) -> String {
        match self {
            BranchStep::Created => "created".into(),
            BranchStep::Existed => "already existed".into(),
            BranchStep::Ready => "already there".into(),
            BranchStep::Renamed(name) => format!("created as {name} (the old branch still exists)"),
            BranchStep::NotConfigured | BranchStep::Failed(_) => format!(
                "left for reconcile ({})",
                self.left_because().unwrap_or_default()
            ),
        }
    }

    /// Returns whether the branch still lacks and is left for `reconcile`.
    pub fn is_left(&self) -> bool {
        self.left_because().is_some()
    }

    /// Returns why the branch is left for `reconcile`, when it is.
    pub fn left_because(&self) -> Option<String> {
        match self {
            BranchStep::NotConfigured => {
                Some("gitea not configured: ORCH_GITEA_URL is unset".into())
            }
            BranchStep::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Returns whether the step sent a request to Gitea.
    pub fn asked_gitea(&self) -> bool {
        matches!(
            self,
            BranchStep::Created
                | BranchStep::Existed
                | BranchStep::Failed(_)
                | BranchStep::Renamed(_)
        )
    }
}

/// What starting a task did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    /// The task.
    pub task_id: i64,
    /// Whether the task was created now (false: it existed).
    pub created: bool,
    /// The analyst job, when enqueued now.
    pub enqueued_job: Option<i64>,
    /// The branch step.
    pub branch: BranchStep,
}

/// Starts a task: one transaction creates it once per work item and enqueues its
/// analyst job once (and records `record`'s delivery outcome with them); then the
/// branch step ([`ensure_branch`]) creates its Gitea branch.
///
/// The branch is a separate, idempotent step because it is a remote call, which never
/// runs inside a write transaction: when Gitea is down or not configured the task and
/// its job are stored all the same, the step says why the branch is left (see
/// [`BranchStep::is_left`]), and the next `reconcile` pass creates it. Running a
/// start again creates nothing twice: the task is found, the analyst job is queued only
/// when none ever existed, and a branch already confirmed is not asked for again.
///
/// # Errors
/// When a write fails, the key belongs to another work item, or the delivery got its
/// outcome meanwhile (nothing is written then). Never because of Gitea.
pub fn start_task(
    ctx: &PassContext,
    db: &mut Db,
    new: &NewTask,
    actor: Actor,
    reason: &str,
    record: Option<&Recorder<'_, TaskStart>>,
) -> Result<Started> {
    let start = db.start_task(new, actor, reason, ctx.now_secs(), record)?;
    crate::crash::point("task-stored");
    let task = db
        .task(start.task_id)?
        .expect("the task was just created or found");
    let branch = match ensure_branch(ctx, db, &task) {
        Ok(step) => step,
        Err(e) => BranchStep::Failed(format!("{e:#}")),
    };
    if branch.is_left() {
        log::warn!(
            "task {}: branch {} {}",
            task.key,
            task.branch,
            branch.describe()
        );
    }
    Ok(Started {
        task_id: task.id,
        created: start.created,
        enqueued_job: start.enqueued_job,
        branch,
    })
}

/// The branch step: creates the task's branch on Gitea from its project's default
/// branch (409, already there, is success) and records it (`tasks.branch_ready_at`).
///
/// Idempotent, and cheap once done: a task whose branch is confirmed asks nothing.
/// Used by every start and by `reconcile` for live tasks that still lack their branch.
///
/// # Errors
/// When Gitea refuses or cannot be reached, the task's project is not in the pipeline
/// file, or the record cannot be written. `branch_ready_at` stays NULL then.
pub fn ensure_branch(ctx: &PassContext, db: &Db, task: &Task) -> Result<BranchStep> {
    if task.branch_ready_at.is_some() {
        return Ok(BranchStep::Ready);
    }
    if ctx.config.settings.gitea_url.is_none() {
        return Ok(BranchStep::NotConfigured);
    }
    let project = ctx
        .config
        .pipeline
        .project(&task.project)
        .with_context(|| {
            format!(
                "task {}: project {} is not in the pipeline file (its default branch is unknown)",
                task.key, task.project
            )
        })?;
    let default_branch = &project.default_branch;
    let gitea = ctx.require_gitea()?;
    if task.round > 1 {
        return ensure_round_branch(ctx, db, gitea, task, default_branch);
    }
    let answer = gitea
        .create_branch(&task.repo, &task.branch, default_branch)
        .map_err(|e| {
            let class = match &e {
                HttpError::Retryable(_) => "gitea unreachable",
                HttpError::RateLimited { .. } => "gitea rate limited",
                HttpError::Fatal(_) => "gitea refused",
            };
            anyhow::Error::from(e).context(class)
        })?;
    let step = match answer {
        BranchOutcome::Created => BranchStep::Created,
        BranchOutcome::AlreadyExists => BranchStep::Existed,
    };
    crate::crash::point("branch-created");
    db.set_branch_ready(task, ctx.now_secs())?;
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
/// records it (the caller, [`ensure_branch`], skips a round whose branch is confirmed).
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
    ctx: &PassContext,
    db: &Db,
    gitea: &GiteaClient,
    task: &Task,
    default_branch: &str,
) -> Result<BranchStep> {
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
    let what = match &step {
        BranchStep::Renamed(_) => step.describe(),
        _ => format!("{name} {}", step.describe()),
    };
    log::info!(
        "task {}: round {} branch {what} in {} (from {default_branch})",
        task.key,
        task.round,
        task.repo
    );
    Ok(step)
}
