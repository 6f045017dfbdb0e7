//! SQL for starting a task: the task, its analyst job and (for a webhook delivery) the
//! delivery's outcome in one transaction; then the branch step's record
//! (`tasks.branch_ready_at`, migration 4). No decisions here beyond "the analyst runs
//! once per task".

use crate::adapters::db::sql::params;
use anyhow::Result;

use crate::adapters::db::jobs::enqueue_in;
use crate::adapters::db::recorder::Recorder;
use crate::adapters::db::tasks::create_in;
use crate::adapters::db::{sql_limit, Created, Db};
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};

/// What the start transaction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskStart {
    /// The task.
    pub task_id: i64,
    /// Whether the task was created now (false: it existed).
    pub created: bool,
    /// The analyst job, when enqueued now.
    pub enqueued_job: Option<i64>,
}

impl Db {
    /// Starts a task in one `IMMEDIATE` transaction: creates it once per work item
    /// (with its creation event), enqueues its analyst job when it is at analysis and no
    /// analyst job ever existed, and records `record`'s delivery outcome. A crash leaves
    /// all of it or none of it.
    ///
    /// # Errors
    /// SQL errors, a key that belongs to another work item, or
    /// [`AlreadyRecorded`](crate::adapters::db::AlreadyRecorded) when the
    /// delivery got its outcome meanwhile; nothing is written then.
    pub fn start_task(
        &mut self,
        new: &NewTask,
        actor: Actor,
        reason: &str,
        now: i64,
        record: Option<&Recorder<'_, TaskStart>>,
    ) -> Result<TaskStart> {
        let tx = self.immediate()?;
        let created = create_in(&tx, new, actor, reason, now)?;
        // The analyst job runs once per task: enqueued only while the task is at
        // analysis and no analyst job ever existed.
        let unstarted: bool = tx.query_row(
            "SELECT stage = 'analysis' AND NOT EXISTS
                 (SELECT 1 FROM jobs WHERE task_id = ?1 AND agent = ?2)
             FROM tasks WHERE id = ?1",
            params![created.id(), Agent::Analyst.as_str()],
            |r| r.get(0),
        )?;
        let enqueued_job = if unstarted {
            enqueue_in(&tx, created.id(), Agent::Analyst, Stage::Analysis, now)?
        } else {
            None
        };
        let start = TaskStart {
            task_id: created.id(),
            created: matches!(created, Created::New(_)),
            enqueued_job,
        };
        if let Some(r) = record {
            r.record_in(&tx, &start)?;
        }
        tx.commit()?;
        Ok(start)
    }

    /// Records that the task's branch is on Gitea (created, or found existing), for the
    /// round and branch name it was created for; `false` when the task has moved on
    /// meanwhile (another branch or round) or it was already recorded.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_branch_ready(&self, task: &Task, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET branch_ready_at = ?4, updated_at = ?4
             WHERE id = ?1 AND branch = ?2 AND round = ?3 AND branch_ready_at IS NULL",
            params![task.id, task.branch, task.round, now],
        )?;
        Ok(n == 1)
    }

    /// Lists live tasks (not done, not cancelled) whose branch is not confirmed on
    /// Gitea yet, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn tasks_without_branch(&self, limit: usize) -> Result<Vec<Task>> {
        let ids: Vec<i64> = self.query_all(
            "SELECT id FROM tasks WHERE branch_ready_at IS NULL
               AND stage NOT IN ('done', 'cancelled') ORDER BY id LIMIT ?1",
            [sql_limit(limit)],
            |r| r.get(0),
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.task(id)?);
        }
        Ok(out)
    }

    /// Counts live tasks whose branch is not confirmed on Gitea yet.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn count_tasks_without_branch(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM tasks WHERE branch_ready_at IS NULL
               AND stage NOT IN ('done', 'cancelled')",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::count;
    use crate::adapters::db::{
        AlreadyRecorded, Move, Moved, NewDelivery, Stored, Superseded, PENDING,
    };
    use crate::core::intake::{DeliveryOutcome, OutcomeKind};

    fn new_task() -> NewTask {
        NewTask {
            project: "orch".into(),
            work_item_id: "00000000-0000-4000-8000-000000000001".into(),
            key: "ORCH-1".into(),
            title: "t".into(),
            repo: "acme/orch".into(),
            branch: "orch-1-t".into(),
            priority: crate::core::priority::Priority::None,
        }
    }

    /// Stores a new delivery whose body hashes to `sha`; returns its row.
    fn new_delivery(db: &mut Db, sha: &str) -> i64 {
        let Stored::New(d) = db
            .insert_delivery(&NewDelivery {
                body_sha256: sha,
                delivery_id: None,
                event: "issue",
                body: b"{}",
                received_at: 1,
                update: None,
            })
            .unwrap()
        else {
            panic!("new row")
        };
        d
    }

    #[test]
    fn a_start_writes_task_job_and_outcome_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let d = new_delivery(&mut db, "x");
        let describe = |s: &TaskStart| DeliveryOutcome::new(OutcomeKind::Started, format!("{s:?}"));
        let rec = Recorder::new(d, 2, &describe);
        let first = db
            .start_task(&new_task(), Actor::Webhook, "r", 2, Some(&rec))
            .unwrap();
        assert!(first.created && first.enqueued_job.is_some());
        // The same delivery again (a replay racing the receiver): refused, and the
        // whole transaction rolled back.
        let err = db
            .start_task(&new_task(), Actor::Webhook, "r", 3, Some(&rec))
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<AlreadyRecorded>(),
            Some(&AlreadyRecorded(d))
        );
        assert_eq!(count(&db, "SELECT count(*) FROM tasks"), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM stage_events"), 1);
        // Without a delivery: found, and the analyst is never queued twice.
        let again = db
            .start_task(&new_task(), Actor::Operator, "r", 4, None)
            .unwrap();
        assert_eq!((again.created, again.enqueued_job), (false, None));
        db.conn()
            .execute("UPDATE jobs SET status = 'succeeded'", [])
            .unwrap();
        let after_run = db
            .start_task(&new_task(), Actor::Operator, "r", 5, None)
            .unwrap();
        assert_eq!(after_run.enqueued_job, None, "the analyst ran once already");
    }

    #[test]
    fn a_start_superseded_by_a_newer_update_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let d = new_delivery(&mut db, "z");
        let update = |micros: i64, source: &str| crate::core::intake::SeenUpdate {
            work_item_id: new_task().work_item_id,
            micros,
            text: format!("t{micros}"),
            source: source.into(),
        };
        db.note_updates(&[update(20, "listing")], 1).unwrap();
        let describe = |s: &TaskStart| DeliveryOutcome::new(OutcomeKind::Started, format!("{s:?}"));
        let older = update(10, "delivery");
        let rec = Recorder::new(d, 2, &describe).guarded(Some(&older));
        let err = db
            .start_task(&new_task(), Actor::Webhook, "r", 2, Some(&rec))
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<Superseded>().map(|s| s.newest.micros),
            Some(20)
        );
        assert_eq!(count(&db, "SELECT count(*) FROM tasks"), 0);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 0);
        assert_eq!(db.delivery(d).unwrap().unwrap().outcome, PENDING);
        // An equal time is current: it commits.
        let equal = update(20, "delivery");
        let rec = Recorder::new(d, 2, &describe).guarded(Some(&equal));
        db.start_task(&new_task(), Actor::Webhook, "r", 2, Some(&rec))
            .unwrap();
        assert_eq!(count(&db, "SELECT count(*) FROM tasks"), 1);
    }

    #[test]
    fn a_move_or_requeue_whose_delivery_is_already_recorded_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let s = db
            .start_task(&new_task(), Actor::Operator, "r", 1, None)
            .unwrap();
        let d = new_delivery(&mut db, "y");
        db.record_outcome(d, &DeliveryOutcome::no_action("first"), 2)
            .unwrap();
        let describe = |_: &Moved| DeliveryOutcome::no_action("again");
        let rec = Recorder::new(d, 3, &describe);
        let err = db
            .move_task(
                &Move::new(
                    s.task_id,
                    Stage::Analysis,
                    Stage::Development,
                    "r",
                    Actor::Webhook,
                    3,
                )
                .recorded(Some(&rec)),
            )
            .unwrap_err();
        assert!(err.downcast_ref::<AlreadyRecorded>().is_some(), "{err:#}");
        db.conn()
            .execute("UPDATE jobs SET status = 'succeeded'", [])
            .unwrap();
        let describe = |_: &Created| DeliveryOutcome::no_action("again");
        let rec = Recorder::new(d, 3, &describe);
        let err = db
            .enqueue_job_recorded(s.task_id, Agent::Analyst, Stage::Analysis, 3, Some(&rec))
            .unwrap_err();
        assert!(err.downcast_ref::<AlreadyRecorded>().is_some(), "{err:#}");
        assert_eq!(db.task(s.task_id).unwrap().unwrap().stage, Stage::Analysis);
        assert_eq!(count(&db, "SELECT count(*) FROM stage_events"), 1);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);
        assert_eq!(
            db.delivery(d).unwrap().unwrap().detail.as_deref(),
            Some("first")
        );
    }

    #[test]
    fn branch_readiness_is_recorded_once_for_its_round_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let s = db
            .start_task(&new_task(), Actor::Operator, "r", 1, None)
            .unwrap();
        let task = db.task(s.task_id).unwrap().unwrap();
        assert_eq!(db.tasks_without_branch(10).unwrap().len(), 1);
        assert_eq!(db.count_tasks_without_branch().unwrap(), 1);
        let mut other_round = task.clone();
        other_round.round += 1;
        assert!(
            !db.set_branch_ready(&other_round, 2).unwrap(),
            "another round"
        );
        assert!(db.set_branch_ready(&task, 2).unwrap());
        assert!(!db.set_branch_ready(&task, 3).unwrap(), "once");
        assert_eq!(db.task(task.id).unwrap().unwrap().branch_ready_at, Some(2));
        assert!(db.tasks_without_branch(10).unwrap().is_empty());
        assert_eq!(db.count_tasks_without_branch().unwrap(), 0);
    }
}
