//! The `hold_events` table: every `hold set` and `hold clear`, and the holds that stand.

use crate::adapters::db::sql::{params, OptionalExtension, Row};
use anyhow::Result;

use crate::adapters::db::Db;
use crate::core::hold::Hold;

/// Who sets or clears a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldActor {
    /// `--by`, else the OS user.
    pub by: String,
    /// The OS user running the command.
    pub os_user: String,
}

/// One row of the record: a `set` or a `clear`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HoldEvent {
    /// Row id (the order they were written in).
    pub id: i64,
    /// The project.
    pub project: String,
    /// `set` or `clear`.
    pub action: String,
    /// Why, as given.
    pub reason: String,
    /// When a `set` lapses by itself (unix seconds).
    pub until: Option<i64>,
    /// Who (`--by`, else the OS user).
    pub by: String,
    /// The OS user.
    pub os_user: String,
    /// The job whose agent made the call, when made from inside one.
    pub agent_job: Option<i64>,
    /// When (unix seconds, the pass's time).
    pub at: i64,
}

/// The newest row of each project, when it is a `set` still on at `?1`.
const STANDING: &str = "SELECT project, reason, until, at, by_name, os_user, agent_job
     FROM hold_events e
     WHERE id = (SELECT max(id) FROM hold_events WHERE project = e.project)
       AND action = 'set' AND (until IS NULL OR until > ?1)";

fn hold_row(r: &Row<'_>) -> crate::adapters::db::sql::Result<Hold> {
    Ok(Hold {
        project: r.get(0)?,
        reason: r.get(1)?,
        until: r.get(2)?,
        set_at: r.get(3)?,
        by: r.get(4)?,
        os_user: r.get(5)?,
        agent_job: r.get(6)?,
    })
}

impl Db {
    /// Returns the holds on at `now`, by project.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn holds(&self, now: i64) -> Result<Vec<Hold>> {
        self.query_all(&format!("{STANDING} ORDER BY project"), [now], hold_row)
    }

    /// Returns `project`'s hold when it is on at `now`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn hold_of(&self, project: &str, now: i64) -> Result<Option<Hold>> {
        self.query_one(
            &format!("{STANDING} AND project = ?2"),
            params![now, project],
            hold_row,
        )
    }

    /// Sets `project`'s hold at `now` (replacing one that stands), recorded with `who`
    /// and this handle's calling agent; returns the hold it replaced.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_hold(
        &mut self,
        project: &str,
        reason: &str,
        until: Option<i64>,
        who: &HoldActor,
        now: i64,
    ) -> Result<Option<Hold>> {
        self.write_hold(project, "set", reason, until, who, now)
    }

    /// Clears `project`'s hold at `now`, recorded with `who`; returns the hold cleared,
    /// or `None` (and records nothing) when none was on.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn clear_hold(
        &mut self,
        project: &str,
        reason: &str,
        who: &HoldActor,
        now: i64,
    ) -> Result<Option<Hold>> {
        self.write_hold(project, "clear", reason, None, who, now)
    }

    fn write_hold(
        &mut self,
        project: &str,
        action: &str,
        reason: &str,
        until: Option<i64>,
        who: &HoldActor,
        now: i64,
    ) -> Result<Option<Hold>> {
        let agent_job = self.agent_job();
        let tx = self.immediate()?;
        let standing = tx
            .query_row(
                &format!("{STANDING} AND project = ?2"),
                params![now, project],
                hold_row,
            )
            .optional()?;
        if action == "set" || standing.is_some() {
            tx.execute(
                "INSERT INTO hold_events (project, action, reason, until, by_name, os_user, agent_job, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![project, action, reason, until, who.by, who.os_user, agent_job, now],
            )?;
        }
        tx.commit()?;
        Ok(standing)
    }

    /// Returns every set and clear ever recorded, oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn hold_events(&self) -> Result<Vec<HoldEvent>> {
        self.query_all(
            "SELECT id, project, action, reason, until, by_name, os_user, agent_job, at
             FROM hold_events ORDER BY id",
            [],
            |r| {
                Ok(HoldEvent {
                    id: r.get(0)?,
                    project: r.get(1)?,
                    action: r.get(2)?,
                    reason: r.get(3)?,
                    until: r.get(4)?,
                    by: r.get(5)?,
                    os_user: r.get(6)?,
                    agent_job: r.get(7)?,
                    at: r.get(8)?,
                })
            },
        )
    }

    /// Returns the queued deployer jobs of every project on hold at `now`: `dispatch`
    /// leaves them queued.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn held_deployer_jobs(&self, now: i64) -> Result<Vec<(i64, String)>> {
        self.query_all(
            &format!(
                "SELECT j.id, j.project FROM jobs j
                 WHERE j.status = 'queued' AND j.agent = 'deployer'
                   AND j.project IN (SELECT project FROM ({STANDING}) AS standing)
                 ORDER BY j.id"
            ),
            [now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}
