//! The `tasks.priority` column's refresh from a reconcile listing (migration 13). The
//! jobs' `priority_rank` follows by trigger in the same transaction.

use crate::adapters::db::sql::params;
use anyhow::Result;

use crate::adapters::db::Db;
use crate::core::priority::Priority;

impl Db {
    /// Records each listed work item's priority on its task (items with no task are
    /// left alone), in one transaction; returns the tasks whose priority changed, with
    /// the old and new value. A page where nothing changed writes nothing.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn refresh_priorities(
        &mut self,
        listed: &[(&str, Priority)],
        now: i64,
    ) -> Result<Vec<(String, Priority, Priority)>> {
        let tx = self.immediate()?;
        let mut changed = Vec::new();
        {
            let mut read = tx.prepare_cached(
                "SELECT key, priority FROM tasks WHERE work_item_id = ?1 AND priority <> ?2",
            )?;
            let mut write = tx.prepare_cached(
                "UPDATE tasks SET priority = ?2, updated_at = ?3 WHERE work_item_id = ?1",
            )?;
            for (work_item, priority) in listed {
                let mut rows = read.query(params![work_item, priority.as_str()])?;
                let Some(row) = rows.next()? else { continue };
                let key: String = row.get(0)?;
                let old: String = row.get(1)?;
                drop(rows);
                write.execute(params![work_item, priority.as_str(), now])?;
                changed.push((key, old.parse().unwrap_or_default(), *priority));
            }
        }
        tx.commit()?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use crate::adapters::db::test_support::{db, new_task};
    use crate::adapters::db::JOB_COUNTS_DRIFT;
    use crate::core::priority::Priority;
    use crate::core::stage::{Actor, Agent, Stage};

    fn ranks(db: &crate::adapters::db::Db, task: i64) -> Vec<i64> {
        db.query_all(
            "SELECT priority_rank FROM jobs WHERE task_id = ?1 ORDER BY id",
            [task],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn jobs_carry_their_task_priority_however_written_and_follow_a_refresh() {
        let (_d, mut db) = db();
        let mut new = new_task(1);
        new.priority = Priority::High;
        let start = db.start_task(&new, Actor::Operator, "r", 1, None).unwrap();
        let t = start.task_id;
        assert_eq!(db.task(t).unwrap().unwrap().priority, Priority::High);
        assert_eq!(ranks(&db, t), vec![1], "the analyst job takes the task's");
        // A row written by hand with another rank takes the task's too.
        db.conn()
            .execute(
                "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, priority_rank)
                 VALUES (?1, 'developer', 'development', 'failed', 1, 2, 0)",
                [t],
            )
            .unwrap();
        assert_eq!(ranks(&db, t), vec![1, 1]);
        let w = new.work_item_id.as_str();
        let changed = db
            .refresh_priorities(&[(w, Priority::Urgent), ("no-such-item", Priority::Low)], 5)
            .unwrap();
        assert_eq!(
            changed,
            vec![("ORCH-1".into(), Priority::High, Priority::Urgent)]
        );
        assert_eq!(ranks(&db, t), vec![0, 0], "every job of the task follows");
        let task = db.task(t).unwrap().unwrap();
        assert_eq!((task.priority, task.updated_at), (Priority::Urgent, 5));
        // The same value again changes nothing (and writes nothing).
        assert!(db
            .refresh_priorities(&[(w, Priority::Urgent)], 6)
            .unwrap()
            .is_empty());
        assert_eq!(db.task(t).unwrap().unwrap().updated_at, 5);
        // A job enqueued later takes the current priority; the kept counts are untouched.
        db.enqueue_job(t, Agent::Developer, Stage::Development, 7)
            .unwrap();
        assert_eq!(ranks(&db, t), vec![0, 0, 0]);
        let drift: i64 = db
            .conn()
            .query_row(JOB_COUNTS_DRIFT, [], |r| r.get(0))
            .unwrap();
        assert_eq!(drift, 0);
    }

    #[test]
    fn the_priority_column_refuses_values_plane_does_not_have() {
        let (_d, mut db) = db();
        let t = db
            .start_task(&new_task(1), Actor::Operator, "r", 1, None)
            .unwrap()
            .task_id;
        let bad = db
            .conn()
            .execute("UPDATE tasks SET priority = 'critical' WHERE id = ?1", [t]);
        assert!(bad.is_err(), "the CHECK holds");
        assert_eq!(db.task(t).unwrap().unwrap().priority, Priority::None);
    }

    #[test]
    fn migration_13_gives_existing_tasks_and_jobs_none_and_dispatch_reads_one_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = crate::adapters::db::Db::open_unmigrated(&path).unwrap();
        db.migrate_to(12).unwrap();
        let t = db
            .create_task(&new_task(1), Actor::Operator, "t", 1)
            .unwrap()
            .id();
        db.enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        drop(db);
        let db = crate::adapters::db::Db::open(&path).unwrap();
        assert_eq!(db.task(t).unwrap().unwrap().priority, Priority::None);
        assert_eq!(ranks(&db, t), vec![4]);
        let heads = db.queued_heads(4, false).unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].priority, Priority::None);
        // The queue read walks the index in order: no sort of the queue.
        let plan: Vec<String> = db
            .query_all(
                "EXPLAIN QUERY PLAN SELECT j.id FROM jobs j JOIN tasks t ON t.id = j.task_id
                 WHERE j.project = 'orch' AND j.status = 'queued'
                   AND (j.stage = 'deploy-staging') = 0
                 ORDER BY j.priority_rank, j.enqueued_at, j.id",
                [],
                |r| r.get(3),
            )
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("jobs_queue_by_priority"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
