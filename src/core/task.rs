//! Tasks (one per Plane work item) and their stage events, as stored. Plain data.

use crate::core::priority::Priority;
use crate::core::stage::Stage;

/// One task: a Plane work item going through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Task {
    /// Row id.
    pub id: i64,
    /// Project name from the pipeline file.
    pub project: String,
    /// The Plane work item id (UUID).
    pub work_item_id: String,
    /// The sequence key, e.g. `ORCH-65`.
    pub key: String,
    /// The work item title when the task was created.
    pub title: String,
    /// Gitea `owner/name`.
    pub repo: String,
    /// The task branch.
    pub branch: String,
    /// The PR number, once seen.
    pub pr_number: Option<i64>,
    /// The current stage.
    pub stage: Stage,
    /// When it entered the stage (unix seconds).
    pub stage_entered_at: i64,
    /// The revision staging validated, which the merge pins.
    pub validated_revision: Option<String>,
    /// Developer rollbacks so far.
    pub developer_retries: u32,
    /// When the task was escalated to a human, if it is.
    pub escalated_at: Option<i64>,
    /// Why it was escalated.
    pub escalation_reason: Option<String>,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Last changed (unix seconds).
    pub updated_at: i64,
    /// The task's round: 1 at creation, one more for every move back to development
    /// after its PR was merged (a reopen).
    pub round: u32,
    /// When this round's branch was confirmed on Gitea; `None` while reconcile must
    /// still create it.
    pub branch_ready_at: Option<i64>,
    /// The Plane work item's priority (at start, then as reconcile last listed it).
    pub priority: Priority,
}

#[cfg(test)]
impl Task {
    /// A task for unit tests: row `id`, key `SHOP-<id>`, work item `item-<id>`, branch
    /// `shop-<id>` in `acme/shop`, at `stage`, round 1, no PR.
    pub(crate) fn sample(id: i64, stage: Stage) -> Task {
        Task {
            id,
            project: "shop".into(),
            work_item_id: format!("item-{id}"),
            key: format!("SHOP-{id}"),
            title: "t".into(),
            repo: "acme/shop".into(),
            branch: format!("shop-{id}"),
            pr_number: None,
            stage,
            stage_entered_at: 0,
            validated_revision: None,
            developer_retries: 0,
            escalated_at: None,
            escalation_reason: None,
            created_at: 0,
            updated_at: 0,
            round: 1,
            branch_ready_at: None,
            priority: Priority::None,
        }
    }
}

/// What is needed to create a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// Project name.
    pub project: String,
    /// Plane work item id.
    pub work_item_id: String,
    /// Sequence key.
    pub key: String,
    /// Title.
    pub title: String,
    /// Gitea `owner/name`.
    pub repo: String,
    /// Task branch.
    pub branch: String,
    /// The work item's priority as the start read it.
    pub priority: Priority,
}

/// One recorded transition. Never updated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageEvent {
    /// Row id.
    pub id: i64,
    /// The task.
    pub task_id: i64,
    /// Where it was (`None` for creation).
    pub from_stage: Option<Stage>,
    /// Where it went.
    pub to_stage: Stage,
    /// Why.
    pub reason: String,
    /// Who moved it.
    pub actor: String,
    /// When (unix seconds).
    pub at: i64,
    /// The Plane delivery (row id) whose acting made the move, if any.
    pub delivery: Option<i64>,
    /// That delivery's `X-Plane-Delivery` id, when it had one.
    pub delivery_id: Option<String>,
    /// The job whose agent ran the command that made the move, if any.
    pub agent_job: Option<i64>,
}
