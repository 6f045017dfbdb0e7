//! The SQL reconcile needs beyond the shared task and job queries: the live jobs of
//! every task in one query, parking an escalated
//! task's queued jobs, what the escalation sweep reads, and what the store knows of a
//! listed page's work items (read per page, not per item).

use std::collections::HashMap;

use crate::adapters::db::sql::params;
use anyhow::Result;

use crate::adapters::db::{parse_col, Db};
use crate::core::job::JobStatus;
use crate::core::priority::Priority;
use crate::core::stage::Stage;

/// The task of a listed work item, as much of it as the listing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTask {
    /// The task id.
    pub id: i64,
    /// Its key.
    pub key: String,
    /// Its stage.
    pub stage: Stage,
    /// Its priority.
    pub priority: Priority,
}

/// What the store knows of the work items of one listed page, read in two queries
/// (see [`Db::listed_known`]).
#[derive(Debug, Default)]
pub struct ListedKnown {
    /// Work item id → the newest update seen of it (microseconds), when one was.
    pub newest_us: HashMap<String, i64>,
    /// Work item id → its task, when it has one.
    pub tasks: HashMap<String, ListedTask>,
}

/// Returns `?1, ?2, ... ?n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The notification kind of an escalation.
pub const ESCALATION_KIND: &str = "escalation";

impl Db {
    /// Reads what the store knows of these work items (one listed page): the newest
    /// update seen of each and its task, in two queries, so a steady listing costs two
    /// reads a page instead of three a work item, and writes nothing.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn listed_known(&self, work_item_ids: &[&str]) -> Result<ListedKnown> {
        let mut known = ListedKnown::default();
        if work_item_ids.is_empty() {
            return Ok(known);
        }
        let marks = placeholders(work_item_ids.len());
        let ids = crate::adapters::db::sql::params_from_iter(work_item_ids.iter());
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT work_item_id, updated_us FROM work_item_updates WHERE work_item_id IN ({marks})"
        ))?;
        let mut rows = stmt.query(ids)?;
        while let Some(r) = rows.next()? {
            known.newest_us.insert(r.get(0)?, r.get(1)?);
        }
        drop(rows);
        let ids = crate::adapters::db::sql::params_from_iter(work_item_ids.iter());
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT work_item_id, id, key, stage, priority FROM tasks WHERE work_item_id IN ({marks})"
        ))?;
        let mut rows = stmt.query(ids)?;
        while let Some(r) = rows.next()? {
            known.tasks.insert(
                r.get(0)?,
                ListedTask {
                    id: r.get(1)?,
                    key: r.get(2)?,
                    stage: parse_col(&r, 3)?,
                    priority: parse_col(&r, 4)?,
                },
            );
        }
        Ok(known)
    }

    /// Returns the queued or running job of every task that has one (task id → job id
    /// and status), in one query.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn live_jobs_by_task(&self) -> Result<HashMap<i64, (i64, JobStatus)>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT task_id, id, status FROM jobs WHERE status IN ('queued','running') ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next()? {
            let status: String = r.get(2)?;
            let status = if status == "running" {
                JobStatus::Running
            } else {
                JobStatus::Queued
            };
            out.entry(r.get(0)?).or_insert((r.get(1)?, status));
        }
        Ok(out)
    }

    /// Cancels a task's queued jobs (an escalated task parks: no agent runs for it).
    /// Running jobs are left to finish. Returns how many were cancelled.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn cancel_queued_jobs(&self, task_id: i64, now: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2
             WHERE task_id = ?1 AND status = 'queued'",
            params![task_id, now],
        )?)
    }

    /// Returns the actor of a task's latest stage event.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn last_event_actor(&self, task_id: i64) -> Result<Option<String>> {
        self.query_one(
            "SELECT actor FROM stage_events WHERE task_id = ?1 ORDER BY id DESC LIMIT 1",
            [task_id],
            |r| r.get(0),
        )
    }

    /// Returns whether an escalation of the task was announced at or after `since`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalation_announced(&self, task_id: i64, since: i64) -> Result<bool> {
        Ok(self
            .query_one(
                "SELECT 1 FROM notifications WHERE task_id = ?1 AND kind = ?2 AND created_at >= ?3 LIMIT 1",
                params![task_id, ESCALATION_KIND, since],
                |_| Ok(()),
            )?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::db_with_task;
    use crate::core::stage::{Agent, Stage};

    #[test]
    fn rerun_only_an_ended_job_and_only_once_live() {
        let (_d, mut db, t) = db_with_task();
        let j = db
            .enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap()
            .id();
        assert_eq!(db.live_jobs_by_task().unwrap()[&t], (j, JobStatus::Queued));
        assert_eq!(db.rerun_job(j, 2).unwrap(), None, "queued is not ended");
        db.conn()
            .execute("UPDATE jobs SET status='failed' WHERE id=?1", [j])
            .unwrap();
        assert!(db.live_jobs_by_task().unwrap().is_empty());
        assert_eq!(db.rerun_job(j, 2).unwrap(), Some(2));
        assert_eq!(db.rerun_job(j, 3).unwrap(), None, "already re-run");
        assert_eq!(db.cancel_queued_jobs(t, 4).unwrap(), 1);
        assert_eq!(db.cancel_queued_jobs(t, 4).unwrap(), 0);
        assert_eq!(db.last_event_actor(t).unwrap().as_deref(), Some("operator"));
    }

    #[test]
    fn escalation_announcements_since() {
        let (_d, db, t) = db_with_task();
        assert!(!db.escalation_announced(t, 10).unwrap());
        db.insert_notification("k", ESCALATION_KIND, Some(t), "m", 10)
            .unwrap();
        assert!(db.escalation_announced(t, 10).unwrap());
        assert!(!db.escalation_announced(t, 11).unwrap());
    }
}
