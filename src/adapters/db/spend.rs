//! Spend rows (migration 14): a job's reported usage, and the per-task and per-project
//! totals written in the same transaction. SQL only; `core::spend` decides.

use std::collections::BTreeMap;

use crate::adapters::db::sql::{params, OptionalExtension as _};
use anyhow::Result;

use crate::adapters::db::Db;
use crate::core::spend::{SpendTotals, Usage};

const TOTALS: &str = "jobs, tokens_in, tokens_out, cost_micros";

fn totals_from_row(
    row: &crate::adapters::db::sql::Row<'_>,
    at: usize,
) -> crate::adapters::db::sql::Result<SpendTotals> {
    Ok(SpendTotals {
        jobs: row.get(at)?,
        tokens_in: row.get(at + 1)?,
        tokens_out: row.get(at + 2)?,
        cost_micros: row.get(at + 3)?,
    })
}

impl Db {
    /// Adds one attempt's usage to its job row and to its task's and project's totals,
    /// in one transaction, guarded by the attempt (one supervisor per attempt records
    /// once); `false` when the job moved to another attempt.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_usage(&mut self, job_id: i64, attempt: u32, u: &Usage) -> Result<bool> {
        let tx = self.immediate()?;
        let n = tx.execute(
            "UPDATE jobs SET
                tokens_in = CASE WHEN CAST(?3 AS BIGINT) IS NULL THEN tokens_in ELSE coalesce(tokens_in, 0) + ?3 END,
                tokens_out = CASE WHEN CAST(?4 AS BIGINT) IS NULL THEN tokens_out ELSE coalesce(tokens_out, 0) + ?4 END,
                cost_micros = CASE WHEN CAST(?5 AS BIGINT) IS NULL THEN cost_micros ELSE coalesce(cost_micros, 0) + ?5 END,
                currency = coalesce(?6, currency, 'USD')
             WHERE id = ?1 AND attempt = ?2",
            params![
                job_id,
                attempt,
                u.tokens_in,
                u.tokens_out,
                u.cost_micros,
                u.currency
            ],
        )?;
        if n == 0 {
            return Ok(false);
        }
        let (ti, to, c) = (
            u.tokens_in.unwrap_or(0),
            u.tokens_out.unwrap_or(0),
            u.cost_micros.unwrap_or(0),
        );
        tx.execute(
            "INSERT INTO task_spend (task_id, jobs, tokens_in, tokens_out, cost_micros)
                 SELECT task_id, 1, ?2, ?3, ?4 FROM jobs WHERE id = ?1
             ON CONFLICT (task_id) DO UPDATE SET jobs = task_spend.jobs + 1,
                 tokens_in = task_spend.tokens_in + ?2, tokens_out = task_spend.tokens_out + ?3,
                 cost_micros = task_spend.cost_micros + ?4",
            params![job_id, ti, to, c],
        )?;
        tx.execute(
            "INSERT INTO project_spend (project, jobs, tokens_in, tokens_out, cost_micros)
                 SELECT t.project, 1, ?2, ?3, ?4 FROM jobs AS j JOIN tasks AS t ON t.id = j.task_id
                 WHERE j.id = ?1
             ON CONFLICT (project) DO UPDATE SET jobs = project_spend.jobs + 1,
                 tokens_in = project_spend.tokens_in + ?2,
                 tokens_out = project_spend.tokens_out + ?3,
                 cost_micros = project_spend.cost_micros + ?4",
            params![job_id, ti, to, c],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// A task's spend so far (zeros when none of its jobs reported usage).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_spend(&self, task_id: i64) -> Result<SpendTotals> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {TOTALS} FROM task_spend WHERE task_id = ?1"),
                [task_id],
                |r| totals_from_row(r, 0),
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Each job of a task that reported usage, by job id: what its attempts reported
    /// together (the job row's sums).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_job_usage(&self, task_id: i64) -> Result<BTreeMap<i64, Usage>> {
        let mut stmt = self.conn().prepare(
            "SELECT id, tokens_in, tokens_out, cost_micros, currency FROM jobs
             WHERE task_id = ?1
               AND (tokens_in IS NOT NULL OR tokens_out IS NOT NULL OR cost_micros IS NOT NULL)",
        )?;
        let rows = stmt.query_map([task_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Usage {
                    tokens_in: r.get(1)?,
                    tokens_out: r.get(2)?,
                    cost_micros: r.get(3)?,
                    currency: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<crate::adapters::db::sql::Result<_>>()?)
    }

    /// Spend per project, for the projects with any (one row each).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn project_spend(&self) -> Result<BTreeMap<String, SpendTotals>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT project, {TOTALS} FROM project_spend"))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, totals_from_row(r, 1)?)))?;
        Ok(rows.collect::<crate::adapters::db::sql::Result<_>>()?)
    }

    /// Escalates a task that reached its budget and cancels its queued jobs, in one
    /// transaction. Returns whether it was escalated now (`false`: it already was) and
    /// how many queued jobs were cancelled.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalate_over_budget(
        &mut self,
        task_id: i64,
        reason: &str,
        now: i64,
    ) -> Result<(bool, usize)> {
        let tx = self.immediate()?;
        let escalated = tx.execute(
            "UPDATE tasks SET escalated_at = ?2, escalation_reason = ?3, updated_at = ?2
             WHERE id = ?1 AND escalated_at IS NULL",
            params![task_id, now, reason],
        )? == 1;
        let cancelled = tx.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2
             WHERE task_id = ?1 AND status = 'queued'",
            params![task_id, now],
        )?;
        tx.commit()?;
        Ok((escalated, cancelled))
    }
}

#[cfg(test)]
mod tests {
    use crate::adapters::db::test_support::db_with_task;
    use crate::core::spend::Usage;

    #[test]
    fn usage_adds_to_the_job_task_and_project_in_one_go() {
        let (_dir, mut db, t) = db_with_task();
        let j: i64 = db
            .conn()
            .query_row(
                "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at)
                 VALUES (?1, 'analyst', 'analysis', 'running', 1, 1) RETURNING id",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        let u = Usage {
            tokens_in: Some(100),
            tokens_out: Some(20),
            cost_micros: Some(1_500_000),
            currency: None,
        };
        assert!(db.record_usage(j, 1, &u).unwrap());
        assert!(db
            .record_usage(
                j,
                1,
                &Usage {
                    cost_micros: Some(1),
                    ..Usage::default()
                }
            )
            .unwrap());
        assert!(!db.record_usage(j, 2, &u).unwrap(), "another attempt");
        let s = db.task_spend(t).unwrap();
        assert_eq!(
            (s.jobs, s.tokens_in, s.tokens_out, s.cost_micros),
            (2, 100, 20, 1_500_001)
        );
        assert_eq!(db.project_spend().unwrap()["orch"], s);
        assert_eq!(db.task_spend(t + 1).unwrap(), Default::default());
    }
}
