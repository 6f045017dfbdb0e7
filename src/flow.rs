//! Pipeline moves with every effect they have, shared by the commands that move tasks
//! (webhook, reconcile, run-job, post-deploy, the operator's `task move`).
//!
//! A move goes through [`Db::move_task`] (the table, the event, the next job) and then
//! does what lives outside the database (arming post-deploy on `deploy → done`).

use anyhow::Result;

use crate::adapters::db::{Created, Db, Moved};
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
    let moved = db.move_task(task.id, task.stage, to, reason, actor, ctx.now_secs())?;
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

/// What starting a task did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Started {
    /// The task.
    pub task_id: i64,
    /// Whether the task was created now (false: it existed).
    pub created: bool,
    /// The analyst job, when enqueued now.
    pub enqueued_job: Option<i64>,
}

/// Starts a task: creates it once per work item and enqueues the analyst job once.
///
/// # Errors
/// When a write fails or the key belongs to another work item.
pub fn start_task(
    ctx: &Context,
    db: &mut Db,
    new: &NewTask,
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
    let enqueued_job = if task.stage == Stage::Analysis && !has_analyst_job {
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
        enqueued_job,
    })
}
