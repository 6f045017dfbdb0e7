//! The `tasks` and `stage_events` rows: creating a task once per work item, finding and
//! listing tasks, and the per-round fields (PR number, validated revision) whose writes
//! are guarded by the round the caller read. A stage changes only through
//! [`Db::move_task`](super::Db::move_task) (`moves.rs`).

use std::collections::BTreeMap;

use crate::adapters::db::sql::{params, Conn, OptionalExtension, Row};
use anyhow::{bail, Result};

use crate::adapters::db::{parse_col, sql_limit, Created, Db};
use crate::core::priority::Priority;
use crate::core::stage::{Actor, Stage};
use crate::core::task::{NewTask, StageEvent, Task};

const TASK_COLUMNS: &str =
    "id, project, work_item_id, key, title, repo, branch, pr_number, stage, \
     stage_entered_at, validated_revision, developer_retries, escalated_at, escalation_reason, \
     created_at, updated_at, round, branch_ready_at, priority";

fn task_from_row(row: &Row<'_>) -> crate::adapters::db::sql::Result<Task> {
    Ok(Task {
        id: row.get(0)?,
        project: row.get(1)?,
        work_item_id: row.get(2)?,
        key: row.get(3)?,
        title: row.get(4)?,
        repo: row.get(5)?,
        branch: row.get(6)?,
        pr_number: row.get(7)?,
        stage: parse_col(row, 8)?,
        stage_entered_at: row.get(9)?,
        validated_revision: row.get(10)?,
        developer_retries: row.get(11)?,
        escalated_at: row.get(12)?,
        escalation_reason: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        round: row.get(16)?,
        branch_ready_at: row.get(17)?,
        priority: parse_col(row, 18)?,
    })
}

/// What the local guards read of a task (with its live job, looked up by id): what a
/// read that needs only them hands over, rather than a head with empty names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardColumns {
    /// The task id.
    pub id: i64,
    /// Its stage.
    pub stage: Stage,
    /// When it entered the stage.
    pub stage_entered_at: i64,
    /// Its developer retries.
    pub developer_retries: u32,
    /// When it was escalated, if it is.
    pub escalated_at: Option<i64>,
}

impl TaskHead {
    /// What the guards read of it.
    #[must_use]
    pub fn guards(&self) -> GuardColumns {
        GuardColumns {
            id: self.id,
            stage: self.stage,
            stage_entered_at: self.stage_entered_at,
            developer_retries: self.developer_retries,
            escalated_at: self.escalated_at,
        }
    }
}

/// What a pass's walk over the tasks reads of every task: enough for the guards that
/// skip most of them and for the report's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskHead {
    /// The task id.
    pub id: i64,
    /// Its project.
    pub project: String,
    /// Its Plane work item.
    pub work_item_id: String,
    /// Its key.
    pub key: String,
    /// Its stage.
    pub stage: Stage,
    /// When it entered the stage.
    pub stage_entered_at: i64,
    /// Its developer retries.
    pub developer_retries: u32,
    /// When it was escalated, if it is.
    pub escalated_at: Option<i64>,
}

/// One task of a page [`Db::task_heads_page`] read: the whole row, or only its head
/// when the caller said it would not need the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageTask {
    /// The whole row.
    Full(Task),
    /// The head only.
    Head(TaskHead),
}

impl PageTask {
    /// What the guards read of it.
    #[must_use]
    pub fn guards(&self) -> GuardColumns {
        GuardColumns {
            id: self.id(),
            stage: self.stage(),
            stage_entered_at: self.stage_entered_at(),
            developer_retries: self.developer_retries(),
            escalated_at: self.escalated_at(),
        }
    }

    /// The task id.
    #[must_use]
    pub fn id(&self) -> i64 {
        match self {
            PageTask::Full(t) => t.id,
            PageTask::Head(h) => h.id,
        }
    }

    /// Its project.
    #[must_use]
    pub fn project(&self) -> &str {
        match self {
            PageTask::Full(t) => &t.project,
            PageTask::Head(h) => &h.project,
        }
    }

    /// Its Plane work item.
    #[must_use]
    pub fn work_item_id(&self) -> &str {
        match self {
            PageTask::Full(t) => &t.work_item_id,
            PageTask::Head(h) => &h.work_item_id,
        }
    }

    /// Its key.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            PageTask::Full(t) => &t.key,
            PageTask::Head(h) => &h.key,
        }
    }

    /// Its stage.
    #[must_use]
    pub fn stage(&self) -> Stage {
        match self {
            PageTask::Full(t) => t.stage,
            PageTask::Head(h) => h.stage,
        }
    }

    /// When it entered the stage.
    #[must_use]
    pub fn stage_entered_at(&self) -> i64 {
        match self {
            PageTask::Full(t) => t.stage_entered_at,
            PageTask::Head(h) => h.stage_entered_at,
        }
    }

    /// Its developer retries.
    #[must_use]
    pub fn developer_retries(&self) -> u32 {
        match self {
            PageTask::Full(t) => t.developer_retries,
            PageTask::Head(h) => h.developer_retries,
        }
    }

    /// When it was escalated, if it is.
    #[must_use]
    pub fn escalated_at(&self) -> Option<i64> {
        match self {
            PageTask::Full(t) => t.escalated_at,
            PageTask::Head(h) => h.escalated_at,
        }
    }
}

/// Reads a row of [`TASK_COLUMNS`] as a head, and as a whole task when `full` says so
/// of its head: the other columns of a task a guard skips are never decoded.
fn page_task_from_row(
    row: &Row<'_>,
    full: &mut impl FnMut(&TaskHead) -> bool,
) -> crate::adapters::db::sql::Result<PageTask> {
    let head = TaskHead {
        id: row.get(0)?,
        project: row.get(1)?,
        work_item_id: row.get(2)?,
        key: row.get(3)?,
        stage: parse_col(row, 8)?,
        stage_entered_at: row.get(9)?,
        developer_retries: row.get(11)?,
        escalated_at: row.get(12)?,
    };
    if !full(&head) {
        return Ok(PageTask::Head(head));
    }
    Ok(PageTask::Full(Task {
        id: head.id,
        project: head.project,
        work_item_id: head.work_item_id,
        key: head.key,
        title: row.get(4)?,
        repo: row.get(5)?,
        branch: row.get(6)?,
        pr_number: row.get(7)?,
        stage: head.stage,
        stage_entered_at: head.stage_entered_at,
        validated_revision: row.get(10)?,
        developer_retries: head.developer_retries,
        escalated_at: head.escalated_at,
        escalation_reason: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        round: row.get(16)?,
        branch_ready_at: row.get(17)?,
        priority: parse_col(row, 18)?,
    }))
}

impl Db {
    /// Creates a task at `analysis`, once per work item, with its creation event.
    ///
    /// # Errors
    /// On SQL errors, or a key that belongs to another work item.
    pub fn create_task(
        &mut self,
        t: &NewTask,
        actor: Actor,
        reason: &str,
        now: i64,
    ) -> Result<Created> {
        let tx = self.immediate()?;
        let created = create_in(&tx, t, actor, reason, now)?;
        tx.commit()?;
        Ok(created)
    }

    /// Returns the task with this id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task(&self, id: i64) -> Result<Option<Task>> {
        self.query_one(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
            [id],
            task_from_row,
        )
    }

    /// Returns the task named by an id, a key (`ORCH-65`, any case) or a work item id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn find_task(&self, reference: &str) -> Result<Option<Task>> {
        if let Ok(id) = reference.parse::<i64>() {
            if let Some(t) = self.task(id)? {
                return Ok(Some(t));
            }
        }
        self.query_one(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE lower(key) = lower(?1) OR lower(work_item_id) = lower(?1)"
            ),
            [reference],
            task_from_row,
        )
    }

    /// Returns the task of a Plane work item.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_by_work_item(&self, work_item_id: &str) -> Result<Option<Task>> {
        self.query_one(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE lower(work_item_id) = lower(?1)"),
            [work_item_id],
            task_from_row,
        )
    }

    /// Returns the task of a Plane work item, matched exactly (along the column's unique
    /// index: a pass looks up every listed work item).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_of_work_item(&self, work_item_id: &str) -> Result<Option<Task>> {
        self.query_one(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE work_item_id = ?1"),
            [work_item_id],
            task_from_row,
        )
    }

    /// Returns the tasks with `after < id <= upto` (no upper bound without `upto`), in
    /// id order, at most `limit`: one page of a pass that walks every task without
    /// holding them all.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn tasks_page(&self, after: i64, upto: Option<i64>, limit: usize) -> Result<Vec<Task>> {
        self.query_all(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id > ?1 AND (id <= ?2 OR ?2 IS NULL)
                 ORDER BY id LIMIT ?3"
            ),
            params![after, upto, sql_limit(limit)],
            task_from_row,
        )
    }

    /// [`Db::tasks_page`], each task read whole only when `full` says so of its head
    /// ([`PageTask`]): a pass whose guards skip most tasks decodes only what they read.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_heads_page(
        &self,
        after: i64,
        upto: Option<i64>,
        limit: usize,
        mut full: impl FnMut(&TaskHead) -> bool,
    ) -> Result<Vec<PageTask>> {
        self.query_all(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id > ?1 AND (id <= ?2 OR ?2 IS NULL)
                 ORDER BY id LIMIT ?3"
            ),
            params![after, upto, sql_limit(limit)],
            |row| page_task_from_row(row, &mut full),
        )
    }

    /// The repos of the tasks at one of `stages` whose guard columns `wanted` accepts,
    /// read in keyset pages of
    /// `page` rows: what a reconcile pass reads, before its listing, to know which repos'
    /// open pulls its judging will ask for.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn repos_of_tasks(
        &self,
        stages: &[Stage],
        page: usize,
        mut wanted: impl FnMut(&GuardColumns) -> bool,
    ) -> Result<std::collections::BTreeSet<String>> {
        let mut repos = std::collections::BTreeSet::new();
        if stages.is_empty() {
            return Ok(repos);
        }
        let listed: Vec<String> = stages.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let sql = format!(
            "SELECT id, repo, stage, stage_entered_at, developer_retries, escalated_at FROM tasks
             WHERE id > ?1 AND stage IN ({}) ORDER BY id LIMIT ?2",
            listed.join(", ")
        );
        self.keyset_pages(&sql, page, |r, id| {
            if r.with_text(1, |repo| repos.contains(repo))? {
                return Ok(());
            }
            let head = GuardColumns {
                id,
                stage: parse_col(r, 2)?,
                stage_entered_at: r.get(3)?,
                developer_retries: r.get(4)?,
                escalated_at: r.get(5)?,
            };
            if wanted(&head) {
                repos.insert(r.get(1)?);
            }
            Ok(())
        })?;
        Ok(repos)
    }

    /// Returns, in id order, the live tasks the escalation sweep acts on: escalated ones
    /// whose escalation has no notification at or after it (announcement unfinished),
    /// and not-escalated ones with at least `max_retries` developer retries. One query
    /// a pass, along `notifications_by_task`, in place of one per escalated task.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalation_sweep_tasks(&self, max_retries: u32) -> Result<Vec<Task>> {
        self.query_all(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks AS t
                 WHERE t.stage NOT IN ('cancelled', 'done')
                   AND ((t.escalated_at IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM notifications AS n
                           WHERE n.task_id = t.id AND n.kind = ?2
                             AND n.created_at >= t.escalated_at))
                        OR (t.escalated_at IS NULL AND t.developer_retries >= ?1))
                 ORDER BY t.id"
            ),
            params![max_retries, super::ESCALATION_KIND],
            task_from_row,
        )
    }

    /// Lists tasks, optionally at one stage, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn list_tasks(&self, stage: Option<Stage>, limit: usize) -> Result<Vec<Task>> {
        self.query_all(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE (stage = ?1 OR ?1 IS NULL) ORDER BY id LIMIT ?2"
            ),
            params![stage.map(Stage::as_str), sql_limit(limit)],
            task_from_row,
        )
    }

    /// Counts the escalated tasks (from `task_counts`, kept by triggers: migration 9).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalated_count(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT coalesce(sum(n), 0) FROM task_counts WHERE escalated = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// Returns escalated tasks, oldest escalation first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalated_tasks(&self, limit: usize) -> Result<Vec<Task>> {
        self.query_all(
            &format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE escalated_at IS NOT NULL ORDER BY escalated_at LIMIT ?1"
            ),
            [sql_limit(limit)],
            task_from_row,
        )
    }

    /// Returns a task's stage events, oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn stage_events(&self, task_id: i64) -> Result<Vec<StageEvent>> {
        self.query_all(
            "SELECT e.id, e.task_id, e.from_stage, e.to_stage, e.reason, e.actor, e.at,
                    e.delivery, d.delivery_id, e.agent_job
             FROM stage_events e LEFT JOIN deliveries d ON d.id = e.delivery
             WHERE e.task_id = ?1 ORDER BY e.id",
            [task_id],
            |r| {
                let from: Option<String> = r.get(2)?;
                Ok(StageEvent {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    from_stage: match from {
                        Some(_) => Some(parse_col(r, 2)?),
                        None => None,
                    },
                    to_stage: parse_col(r, 3)?,
                    reason: r.get(4)?,
                    actor: r.get(5)?,
                    at: r.get(6)?,
                    delivery: r.get(7)?,
                    delivery_id: r.get(8)?,
                    agent_job: r.get(9)?,
                })
            },
        )
    }

    /// Records the task's PR number as seen in `round` (the round the caller read the
    /// task in); returns `false`, writing nothing, when the task has started another
    /// round since (a PR of the old round never becomes the new round's).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_pr_number(&self, task_id: i64, round: u32, pr: i64, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET pr_number = ?3,
                    updated_at = CASE WHEN pr_number IS NOT DISTINCT FROM ?3 THEN updated_at ELSE ?4 END
             WHERE id = ?1 AND round = ?2",
            params![task_id, round, pr, now],
        )?;
        Ok(n == 1)
    }

    /// Records the revision staging validated for the task in `round` (the round the
    /// check read the task in); returns `false` when the task has started another round
    /// since (nothing is written: the new round starts with no validated revision).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_validated_revision(
        &self,
        task_id: i64,
        round: u32,
        revision: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET validated_revision = ?3, updated_at = ?4
             WHERE id = ?1 AND round = ?2",
            params![task_id, round, revision, now],
        )?;
        Ok(n == 1)
    }

    /// Forgets the task's validated revision in `round` (a staging check of it just
    /// failed); returns whether there was one.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn clear_validated_revision(&self, task_id: i64, round: u32, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET validated_revision = NULL, updated_at = ?3
             WHERE id = ?1 AND round = ?2 AND validated_revision IS NOT NULL",
            params![task_id, round, now],
        )?;
        Ok(n == 1)
    }

    /// Marks a task escalated (parked for a human); `false` when it already was.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalate(&self, task_id: i64, reason: &str, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET escalated_at = ?2, escalation_reason = ?3, updated_at = ?2
             WHERE id = ?1 AND escalated_at IS NULL",
            params![task_id, now, reason],
        )?;
        Ok(n == 1)
    }

    /// Counts tasks by stage (every stage present, zeros included), from
    /// `task_counts` (kept by triggers: migration 9), whatever the number of tasks.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_counts(&self) -> Result<BTreeMap<Stage, i64>> {
        self.count_each(
            "SELECT coalesce(sum(n), 0) FROM task_counts WHERE stage = ?1",
            Stage::ALL,
            Stage::as_str,
        )
    }
}

/// The number of (project, stage, escalated) rows of `task_counts` (kept by triggers,
/// migration 9) that differ from counting the tasks, either way: 0 unless a trigger is
/// wrong. Tests and diagnostics run it; no pass does.
pub const TASK_COUNTS_DRIFT: &str = "SELECT
    (SELECT count(*) FROM (SELECT project AS p, stage AS s,
                                  CASE WHEN escalated_at IS NULL THEN 0 ELSE 1 END AS e,
                                  count(*) AS n FROM tasks GROUP BY 1, 2, 3) x
      LEFT JOIN task_counts c ON c.project = x.p AND c.stage = x.s AND c.escalated = x.e
      WHERE c.n IS DISTINCT FROM x.n)
  + (SELECT count(*) FROM task_counts c
      WHERE c.n <> (SELECT count(*) FROM tasks t WHERE t.project = c.project
                     AND t.stage = c.stage
                     AND CASE WHEN t.escalated_at IS NULL THEN 0 ELSE 1 END = c.escalated))";

/// Creates a task at `analysis` with its creation event unless the work item has one.
pub(super) fn create_in(
    tx: &Conn,
    t: &NewTask,
    actor: Actor,
    reason: &str,
    now: i64,
) -> Result<Created> {
    if let Some(id) = tx
        .query_row(
            "SELECT id FROM tasks WHERE work_item_id = ?1",
            [&t.work_item_id],
            |r| r.get(0),
        )
        .optional()?
    {
        return Ok(Created::Existing(id));
    }
    let clash: Option<String> = tx
        .query_row(
            "SELECT work_item_id FROM tasks WHERE key = ?1",
            [&t.key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(other) = clash {
        bail!("task key {} already belongs to work item {other}", t.key);
    }
    let id: i64 = tx.query_row(
        "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage,
                            stage_entered_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'analysis', ?7, ?7, ?7) RETURNING id",
        params![
            t.project,
            t.work_item_id,
            t.key,
            t.title,
            t.repo,
            t.branch,
            now
        ],
        |r| r.get(0),
    )?;
    // `none` is the column's default: written only when the work item has another (so
    // the insert is the same on every schema since 1).
    if t.priority != Priority::None {
        tx.execute(
            "UPDATE tasks SET priority = ?2 WHERE id = ?1",
            params![id, t.priority.as_str()],
        )?;
    }
    tx.execute(
        "INSERT INTO stage_events (task_id, from_stage, to_stage, reason, actor, at)
         VALUES (?1, NULL, 'analysis', ?2, ?3, ?4)",
        params![id, reason, actor.as_str(), now],
    )?;
    Ok(Created::New(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::{db, new_task};
    use crate::core::stage::Agent;

    #[test]
    fn enqueue_is_once_per_live_job_and_tasks_once_per_work_item() {
        let (_d, mut db) = db();
        let a = db
            .create_task(&new_task(1), Actor::Operator, "t", 1)
            .unwrap();
        let b = db
            .create_task(&new_task(1), Actor::Operator, "t", 1)
            .unwrap();
        assert!(matches!(a, Created::New(_)));
        assert_eq!(b, Created::Existing(a.id()));
        let j1 = db
            .enqueue_job(a.id(), Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        let j2 = db
            .enqueue_job(a.id(), Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        assert!(matches!(j1, Created::New(_)));
        assert_eq!(j2, Created::Existing(j1.id()));
        let mut clash = new_task(2);
        clash.key = "ORCH-1".into();
        assert!(db.create_task(&clash, Actor::Operator, "t", 1).is_err());
    }

    /// The repos are those of the tasks at the stages asked for that `wanted` accepts,
    /// read across keyset pages; `wanted` sees each task's guard columns.
    #[test]
    fn repos_of_tasks_are_the_wanted_tasks_repos_at_the_stages() {
        let (_d, mut db) = db();
        // (repo, stage, escalated): a repo with only an escalated task, one at a stage
        // not asked for, two with wanted tasks (one of them twice).
        let rows = [
            ("acme/a", "development", false),
            ("acme/b", "review", true),
            ("acme/c", "analysis", false),
            ("acme/d", "review", false),
            ("acme/a", "review", false),
            ("acme/d", "development", false),
        ];
        for (n, (repo, stage, escalated)) in rows.iter().enumerate() {
            let mut t = new_task(n as u32 + 1);
            t.repo = (*repo).into();
            let id = db.create_task(&t, Actor::Operator, "t", 1).unwrap().id();
            db.conn()
                .execute(
                    "UPDATE tasks SET stage = ?2, escalated_at = ?3 WHERE id = ?1",
                    params![id, *stage, escalated.then_some(5_i64)],
                )
                .unwrap();
        }
        let stages = [Stage::Development, Stage::Review];
        let mut seen = Vec::new();
        let repos = db
            .repos_of_tasks(&stages, 2, |h| {
                seen.push((h.id, h.stage));
                h.escalated_at.is_none()
            })
            .unwrap();
        assert_eq!(repos.into_iter().collect::<Vec<_>>(), ["acme/a", "acme/d"]);
        // Each task at those stages is judged once, except where its repo is already
        // in (the second acme/a and acme/d tasks are not asked about).
        assert_eq!(
            seen,
            [
                (1, Stage::Development),
                (2, Stage::Review),
                (4, Stage::Review)
            ]
        );
        assert!(db.repos_of_tasks(&[], 2, |_| true).unwrap().is_empty());
    }

    /// A page reads whole exactly the tasks the caller asks for, each as the task read
    /// alone; the others' heads carry the same values.
    #[test]
    fn a_page_reads_whole_only_the_tasks_asked_for() {
        let (_d, mut db) = db();
        for n in 1..=5 {
            db.create_task(&new_task(n), Actor::Operator, "t", 1)
                .unwrap();
        }
        db.conn()
            .execute(
                "UPDATE tasks SET escalated_at = 9, developer_retries = 2, stage = 'review' WHERE id = 2",
                [],
            )
            .unwrap();
        let mut asked = Vec::new();
        let page = db
            .task_heads_page(1, Some(4), 10, |h| {
                asked.push(h.id);
                h.id % 2 == 0
            })
            .unwrap();
        assert_eq!(asked, vec![2, 3, 4]);
        assert_eq!(
            page.iter().map(PageTask::id).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        for t in &page {
            let whole = db.task(t.id()).unwrap().unwrap();
            match t {
                PageTask::Full(task) => assert_eq!(task, &whole),
                PageTask::Head(h) => assert_eq!(h.id % 2, 1, "only odd ids are heads"),
            }
            assert_eq!(
                (t.project(), t.work_item_id(), t.key(), t.stage()),
                (
                    whole.project.as_str(),
                    whole.work_item_id.as_str(),
                    whole.key.as_str(),
                    whole.stage
                )
            );
            assert_eq!(
                (
                    t.stage_entered_at(),
                    t.developer_retries(),
                    t.escalated_at()
                ),
                (
                    whole.stage_entered_at,
                    whole.developer_retries,
                    whole.escalated_at
                )
            );
        }
        assert!(matches!(&page[0], PageTask::Full(t) if t.escalated_at == Some(9)));
        let all = db.task_heads_page(0, None, 10, |_| true).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|t| matches!(t, PageTask::Full(_))));
    }

    #[test]
    fn stage_events_cannot_be_updated() {
        let (_d, mut db) = db();
        db.create_task(&new_task(1), Actor::Operator, "t", 1)
            .unwrap();
        assert!(db
            .conn()
            .execute("UPDATE stage_events SET reason = 'x'", [])
            .is_err());
    }

    #[test]
    fn find_task_by_id_key_or_work_item() {
        let (_d, mut db) = db();
        let id = db
            .create_task(&new_task(7), Actor::Operator, "t", 1)
            .unwrap()
            .id();
        for r in [
            id.to_string(),
            "ORCH-7".into(),
            "orch-7".into(),
            new_task(7).work_item_id,
        ] {
            assert_eq!(db.find_task(&r).unwrap().unwrap().id, id, "{r}");
        }
        assert!(db.find_task("ORCH-8").unwrap().is_none());
    }

    #[track_caller]
    fn assert_task_counts_match(db: &Db, after: &str) {
        let off: i64 = db
            .conn()
            .query_row(TASK_COUNTS_DRIFT, [], |r| r.get(0))
            .unwrap();
        assert_eq!(off, 0, "task_counts differ from count(*) after {after}");
        for (stage, n) in db.task_counts().unwrap() {
            let rows: i64 = db
                .conn()
                .query_row(
                    "SELECT count(*) FROM tasks WHERE stage = ?1",
                    [stage.as_str()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, rows, "tasks at {stage} after {after}");
        }
        let escalated: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            db.escalated_count().unwrap(),
            escalated,
            "escalated tasks after {after}"
        );
    }

    #[test]
    fn kept_task_counts_match_count_star_after_every_kind_of_change() {
        use crate::adapters::db::Move;
        let (_d, mut db) = db();
        assert_task_counts_match(&db, "nothing");
        let a = db
            .create_task(&new_task(1), Actor::Operator, "t", 1)
            .unwrap()
            .id();
        let b = db
            .create_task(
                &NewTask {
                    project: "shop".into(),
                    ..new_task(2)
                },
                Actor::Operator,
                "t",
                1,
            )
            .unwrap()
            .id();
        db.create_task(&new_task(1), Actor::Operator, "t", 2)
            .unwrap();
        assert_task_counts_match(&db, "creating tasks (and one that existed)");
        db.move_task(&Move::new(
            a,
            Stage::Analysis,
            Stage::Development,
            "t",
            Actor::Operator,
            3,
        ))
        .unwrap();
        assert_task_counts_match(&db, "a move");
        assert!(db.escalate(a, "stuck", 4).unwrap());
        assert!(!db.escalate(a, "stuck", 4).unwrap());
        assert_task_counts_match(&db, "an escalation");
        db.move_task(&Move::new(
            a,
            Stage::Development,
            Stage::Review,
            "t",
            Actor::RunJob,
            5,
        ))
        .unwrap();
        assert_task_counts_match(&db, "an agent's move (keeps the escalation)");
        db.move_task(&Move::new(
            a,
            Stage::Review,
            Stage::Development,
            "t",
            Actor::Operator,
            6,
        ))
        .unwrap();
        assert_task_counts_match(&db, "a person's move (clears the escalation)");
        db.move_task(&Move::new(
            b,
            Stage::Analysis,
            Stage::Cancelled,
            "t",
            Actor::Operator,
            7,
        ))
        .unwrap();
        assert_task_counts_match(&db, "a cancel");
        // A write rolled back leaves the counts as the rows are.
        {
            let tx = db.conn_mut().transaction().unwrap();
            tx.execute("UPDATE tasks SET stage = 'done', escalated_at = 9", [])
                .unwrap();
            create_in(&tx, &new_task(3), Actor::Operator, "t", 9).unwrap();
            drop(tx);
        }
        assert_task_counts_match(&db, "a rolled-back transaction");
        db.conn()
            .execute(
                "INSERT INTO tasks (project, work_item_id, key, repo, branch, stage,
                                    stage_entered_at, created_at, updated_at, escalated_at)
                 VALUES ('shop', 'wi-x', 'SHOP-9', 'acme/shop', 'shop-9', 'review', 1, 1, 1, 1)",
                [],
            )
            .unwrap();
        assert_task_counts_match(&db, "a row written by hand");
        db.conn()
            .execute("DELETE FROM tasks WHERE key = 'SHOP-9'", [])
            .unwrap();
        assert_task_counts_match(&db, "a delete");
        let counts = db.task_counts().unwrap();
        assert_eq!(
            counts.len(),
            Stage::ALL.len(),
            "every stage, zeros included"
        );
        assert_eq!(counts[&Stage::Development], 1);
        assert_eq!(counts[&Stage::Cancelled], 1);
    }

    #[test]
    fn migration_9_counts_the_tasks_and_deliveries_already_there() {
        use crate::adapters::db::{NewDelivery, DELIVERY_COUNTS_DRIFT};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open_unmigrated(&path).unwrap();
        db.migrate_to(8).unwrap();
        for n in 1..=3 {
            db.create_task(&new_task(n), Actor::Operator, "t", 1)
                .unwrap();
        }
        db.escalate(1, "stuck", 2).unwrap();
        for sha in ["a", "b"] {
            db.insert_delivery(&NewDelivery {
                body_sha256: sha,
                delivery_id: None,
                event: "issue",
                body: b"{}",
                received_at: 1,
                update: None,
            })
            .unwrap();
        }
        db.conn()
            .execute(
                "UPDATE deliveries SET outcome = 'stale' WHERE body_sha256 = 'a'",
                [],
            )
            .unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_task_counts_match(&db, "migration 9");
        assert_eq!(db.task_counts().unwrap()[&Stage::Analysis], 3);
        assert_eq!(db.escalated_count().unwrap(), 1);
        let off: i64 = db
            .conn()
            .query_row(DELIVERY_COUNTS_DRIFT, [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            off, 0,
            "delivery_counts differ from count(*) after migration 9"
        );
        let deliveries = db.delivery_counts().unwrap();
        assert_eq!((deliveries["pending"], deliveries["stale"]), (1, 1));
    }
}
