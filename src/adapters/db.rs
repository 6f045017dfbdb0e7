//! The SQLite store: the connection, the numbered migrations and all SQL.
//!
//! Every pass opens the database read-write with WAL, a busy timeout and foreign keys
//! on, and brings the schema up to date (migrations are idempotent and numbered by
//! `PRAGMA user_version`). A database written by a newer `orch` is refused. Each
//! read-modify-write runs in one `IMMEDIATE` transaction; guarded `UPDATE`s are the
//! second line of defence behind the pass locks. This module returns `core` types and
//! makes no decisions beyond the transition table it enforces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use crate::adapters::db_deliveries::Recorder;
use crate::core::job::Job;
use crate::core::job::JobStatus;
use crate::core::stage::{self, Actor, Agent, Stage};
use crate::core::task::{NewTask, StageEvent, Task};

/// The numbered migrations; index + 1 is the `user_version` each one brings.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_pipeline.sql"),
    include_str!("migrations/0002_intake_and_passes.sql"),
    include_str!("migrations/0003_supervisor_start_time.sql"),
    include_str!("migrations/0004_rounds.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a writer waits for another writer before `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// The open database.
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// What `migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    /// The version found.
    pub from: i64,
    /// The version now.
    pub to: i64,
}

/// The result of creating a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new row.
    New(i64),
    /// The row already existed (same unique key).
    Existing(i64),
}

impl Created {
    /// Returns the row id either way.
    pub fn id(self) -> i64 {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// Why a move was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The table has no such edge.
    #[error("transition {from} -> {to} is not allowed by the pipeline table")]
    NotAllowed {
        /// Where the task is.
        from: Stage,
        /// Where it was asked to go.
        to: Stage,
    },
    /// The task is no longer where the caller judged it (another pass moved it).
    #[error("task {task_id} is at {actual}, not {expected}: another pass moved it")]
    Stale {
        /// The task.
        task_id: i64,
        /// Where the caller thought it was.
        expected: Stage,
        /// Where it is.
        actual: Stage,
    },
    /// No such task.
    #[error("no task with id {0}")]
    NoTask(i64),
}

/// What a successful move did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// The task.
    pub task_id: i64,
    /// From.
    pub from: Stage,
    /// To.
    pub to: Stage,
    /// The job enqueued for the new stage's agent, if any (`None` when one was live).
    pub enqueued_job: Option<i64>,
    /// Queued jobs of other stages that were cancelled by the move.
    pub cancelled_jobs: usize,
    /// Whether the transition arms post-deploy (the caller arms it).
    pub arms_post_deploy: bool,
    /// The developer retry count after the move.
    pub developer_retries: u32,
    /// Whether the move reached the developer retry limit and parked the task.
    pub escalated: bool,
    /// The task's round after the move.
    pub round: u32,
    /// Whether the move started that round (a reopen after a merge).
    pub new_round: bool,
}

/// One pass's record for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PassRecord {
    /// The subcommand.
    pub command: String,
    /// When it started (unix seconds).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// `ok`, `error`, or `no`.
    pub outcome: String,
    /// Its counts.
    pub counts: BTreeMap<String, serde_json::Value>,
}

const TASK_COLUMNS: &str =
    "id, project, work_item_id, key, title, repo, branch, pr_number, stage, \
     stage_entered_at, validated_revision, developer_retries, escalated_at, escalation_reason, \
     created_at, updated_at, round, branch_ready_at";

pub(crate) const JOB_COLUMNS: &str =
    "id, task_id, agent, stage, status, attempt, pid, pid_start_time, \
     supervisor_pid, exit_code, enqueued_at, started_at, finished_at, reap_reason, dead_ticks, \
     rescue_count, log_path, supervisor_start_time";

fn parse_col<T: std::str::FromStr<Err = String>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    text.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
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
    })
}

/// Parses a job row selected with `JOB_COLUMNS`.
pub fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let agent: String = row.get(2)?;
    Ok(Job {
        id: row.get(0)?,
        task_id: row.get(1)?,
        agent: Agent::parse(&agent).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown agent {agent:?}").into(),
            )
        })?,
        stage: parse_col(row, 3)?,
        status: parse_col(row, 4)?,
        attempt: row.get(5)?,
        pid: row.get(6)?,
        pid_start_time: row.get(7)?,
        supervisor_pid: row.get(8)?,
        exit_code: row.get(9)?,
        enqueued_at: row.get(10)?,
        started_at: row.get(11)?,
        finished_at: row.get(12)?,
        reap_reason: row.get(13)?,
        dead_ticks: row.get(14)?,
        rescue_count: row.get(15)?,
        log_path: row.get(16)?,
        supervisor_start_time: row.get(17)?,
    })
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it.
    ///
    /// # Errors
    /// When the file cannot be opened, was written by a newer `orch`, or a migration fails.
    pub fn open(path: &Path) -> Result<Db> {
        let mut db = Db::open_unmigrated(path)?;
        db.migrate()?;
        Ok(db)
    }

    /// Opens the database without migrating (for `init`, which reports what it did).
    ///
    /// # Errors
    /// When the file cannot be opened or was written by a newer `orch`.
    pub fn open_unmigrated(path: &Path) -> Result<Db> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("creating the directory of database {}", path.display())
            })?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        let version = db.schema_version()?;
        if version > SCHEMA_VERSION {
            bail!(
                "database {} has schema version {version}, written by a newer orch (this orch knows up to {SCHEMA_VERSION}); upgrade orch, or point --db at another file",
                path.display()
            );
        }
        db.conn
            .pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("enabling WAL on {}", path.display()))?;
        db.conn.pragma_update(None, "synchronous", "NORMAL")?;
        db.conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(db)
    }

    /// Returns the file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the raw connection, for adapters that own their own SQL module.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Returns the raw connection mutably (transactions).
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Returns `PRAGMA user_version`.
    ///
    /// # Errors
    /// When SQLite cannot read it (not a database, say).
    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .with_context(|| format!("reading the schema version of {}", self.path.display()))
    }

    /// Applies every migration above the current version, each in its own transaction.
    ///
    /// # Errors
    /// When a migration fails (the transaction rolls back; the version stays).
    pub fn migrate(&mut self) -> Result<Migration> {
        self.migrate_to(SCHEMA_VERSION)
    }

    /// Migrates up to `target` (tests build databases at earlier versions with it).
    ///
    /// # Errors
    /// When a migration fails or `target` is beyond this build.
    pub fn migrate_to(&mut self, target: i64) -> Result<Migration> {
        if target > SCHEMA_VERSION {
            bail!("schema version {target} is unknown to this orch (latest {SCHEMA_VERSION})");
        }
        let from = self.schema_version()?;
        let mut version = from;
        while version < target {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)?;
            // Re-read inside the lock: another process may have migrated meanwhile.
            let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if current > version {
                version = current;
                tx.commit()?;
                continue;
            }
            let sql = MIGRATIONS[usize::try_from(version).expect("versions are small")];
            tx.execute_batch(sql)
                .with_context(|| format!("applying migration {}", version + 1))?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
            version += 1;
        }
        Ok(Migration {
            from,
            to: version.max(from),
        })
    }

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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created = create_in(&tx, t, actor, reason, now)?;
        tx.commit()?;
        Ok(created)
    }

    /// Returns the task with this id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task(&self, id: i64) -> Result<Option<Task>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                [id],
                task_from_row,
            )
            .optional()?)
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
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE key = ?1 COLLATE NOCASE OR work_item_id = ?1 COLLATE NOCASE"
                ),
                [reference],
                task_from_row,
            )
            .optional()?)
    }

    /// Returns the task of a Plane work item.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_by_work_item(&self, work_item_id: &str) -> Result<Option<Task>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE work_item_id = ?1 COLLATE NOCASE"),
                [work_item_id],
                task_from_row,
            )
            .optional()?)
    }

    /// Lists tasks, optionally at one stage, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn list_tasks(&self, stage: Option<Stage>, limit: usize) -> Result<Vec<Task>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR stage = ?1) ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![stage.map(Stage::as_str), limit], task_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Returns a task's stage events, oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn stage_events(&self, task_id: i64) -> Result<Vec<StageEvent>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, task_id, from_stage, to_stage, reason, actor, at
             FROM stage_events WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([task_id], |r| {
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
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Moves a task from `from` to `to`, the only way a stage changes.
    ///
    /// In one transaction: refuses an edge the table does not list, or a task no longer
    /// at `from`; writes the stage, its entry time and the `stage_events` row; adds a
    /// developer retry on a review rollback; cancels queued jobs of other stages; and
    /// enqueues the new stage's agent job unless one is live. A move by a person
    /// (webhook or operator) clears an escalation.
    ///
    /// # Errors
    /// [`MoveError`] (inside `anyhow`) when refused; SQL errors otherwise.
    pub fn move_task(
        &mut self,
        task_id: i64,
        from: Stage,
        to: Stage,
        reason: &str,
        actor: Actor,
        now: i64,
    ) -> Result<Moved> {
        self.move_task_limited(task_id, from, to, reason, actor, now, None, false)
    }

    /// [`Db::move_task`] with the developer retry limit applied in the same transaction:
    /// a review rollback that brings the count to `retry_limit` parks the task (sets its
    /// escalation) and enqueues no developer job, so no agent runs past the limit, even
    /// when `dispatch` runs before reconcile announces the escalation.
    ///
    /// With `new_round` (the caller decided with `core::round::reopen` that the move
    /// follows a merge) the same transaction starts the task's next round: `round` + 1,
    /// no PR number, no validated revision, `branch_ready_at` cleared (the round's branch
    /// is still to be made), and the event's reason ends with `(reopened: round N)`.
    ///
    /// # Errors
    /// As [`Db::move_task`].
    #[expect(
        clippy::too_many_arguments,
        reason = "one move's facts, kept flat like move_task"
    )]
    pub fn move_task_limited(
        &mut self,
        task_id: i64,
        from: Stage,
        to: Stage,
        reason: &str,
        actor: Actor,
        now: i64,
        retry_limit: Option<u32>,
        new_round: bool,
    ) -> Result<Moved> {
        self.move_task_recorded(
            task_id,
            from,
            to,
            reason,
            actor,
            now,
            retry_limit,
            new_round,
            None,
        )
    }

    /// [`Db::move_task_limited`] that also records a webhook delivery's outcome in the
    /// move's transaction (`record`), so the move, its job and the outcome are committed
    /// together or not at all.
    ///
    /// # Errors
    /// As [`Db::move_task`]; [`AlreadyRecorded`](crate::adapters::db_deliveries::AlreadyRecorded)
    /// when the delivery got its outcome meanwhile (nothing is written then).
    #[expect(
        clippy::too_many_arguments,
        reason = "one move's facts, kept flat like move_task"
    )]
    pub fn move_task_recorded(
        &mut self,
        task_id: i64,
        from: Stage,
        to: Stage,
        reason: &str,
        actor: Actor,
        now: i64,
        retry_limit: Option<u32>,
        new_round: bool,
        record: Option<&Recorder<'_, Moved>>,
    ) -> Result<Moved> {
        let edge = stage::transition(from, to).ok_or(MoveError::NotAllowed { from, to })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let actual: Option<String> = tx
            .query_row("SELECT stage FROM tasks WHERE id = ?1", [task_id], |r| {
                r.get(0)
            })
            .optional()?;
        let actual: Stage = actual
            .ok_or(MoveError::NoTask(task_id))?
            .parse()
            .map_err(anyhow::Error::msg)?;
        if actual != from {
            return Err(MoveError::Stale {
                task_id,
                expected: from,
                actual,
            }
            .into());
        }
        let clears_escalation = matches!(actor, Actor::Webhook | Actor::Operator);
        tx.execute(
            "UPDATE tasks SET stage = ?2, stage_entered_at = ?3, updated_at = ?3,
                    developer_retries = developer_retries + ?4,
                    escalated_at = CASE WHEN ?5 THEN NULL ELSE escalated_at END,
                    escalation_reason = CASE WHEN ?5 THEN NULL ELSE escalation_reason END
             WHERE id = ?1 AND stage = ?6",
            params![
                task_id,
                to.as_str(),
                now,
                i64::from(edge.counts_developer_retry),
                clears_escalation,
                from.as_str()
            ],
        )?;
        if new_round {
            tx.execute(
                "UPDATE tasks SET round = round + 1, pr_number = NULL, validated_revision = NULL,
                        branch_ready_at = NULL
                 WHERE id = ?1",
                [task_id],
            )?;
        }
        let round: u32 = tx.query_row("SELECT round FROM tasks WHERE id = ?1", [task_id], |r| {
            r.get(0)
        })?;
        let reason = if new_round {
            format!("{reason} (reopened: round {round})")
        } else {
            reason.to_string()
        };
        tx.execute(
            "INSERT INTO stage_events (task_id, from_stage, to_stage, reason, actor, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                task_id,
                from.as_str(),
                to.as_str(),
                reason,
                actor.as_str(),
                now
            ],
        )?;
        let cancelled_jobs = tx.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?3
             WHERE task_id = ?1 AND status = 'queued' AND stage <> ?2",
            params![task_id, to.as_str(), now],
        )?;
        let developer_retries: u32 = tx.query_row(
            "SELECT developer_retries FROM tasks WHERE id = ?1",
            [task_id],
            |r| r.get(0),
        )?;
        let escalated = retry_limit.is_some_and(|max| {
            crate::core::escalation::rollback_reaches_limit(
                edge.counts_developer_retry,
                developer_retries,
                max,
            )
        });
        if escalated {
            tx.execute(
                "UPDATE tasks SET escalated_at = ?2, escalation_reason = ?3
                 WHERE id = ?1 AND escalated_at IS NULL",
                params![
                    task_id,
                    now,
                    format!(
                        "developer retries {developer_retries} reached ORCH_MAX_DEVELOPER_RETRIES {}",
                        retry_limit.unwrap_or(0)
                    )
                ],
            )?;
        }
        let enqueued_job = match to.agent() {
            Some(agent) if !escalated => enqueue_in(&tx, task_id, agent, to, now)?,
            _ => None,
        };
        let moved = Moved {
            task_id,
            from,
            to,
            enqueued_job,
            cancelled_jobs,
            arms_post_deploy: edge.arms_post_deploy,
            developer_retries,
            escalated,
            round,
            new_round,
        };
        if let Some(r) = record {
            r.record_in(&tx, &moved)?;
        }
        tx.commit()?;
        Ok(moved)
    }

    /// Records the task's PR number as seen in `round` (the round the caller read the
    /// task in); returns `false`, writing nothing, when the task has started another
    /// round since (a PR of the old round never becomes the new round's).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_pr_number(&self, task_id: i64, round: u32, pr: i64, now: i64) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE tasks SET pr_number = ?3,
                    updated_at = CASE WHEN pr_number IS ?3 THEN updated_at ELSE ?4 END
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
        let n = self.conn.execute(
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
        let n = self.conn.execute(
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
        let n = self.conn.execute(
            "UPDATE tasks SET escalated_at = ?2, escalation_reason = ?3, updated_at = ?2
             WHERE id = ?1 AND escalated_at IS NULL",
            params![task_id, now, reason],
        )?;
        Ok(n == 1)
    }

    /// Enqueues a job for `agent` at `stage` unless one is live; returns the new id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn enqueue_job(
        &mut self,
        task_id: i64,
        agent: Agent,
        stage: Stage,
        now: i64,
    ) -> Result<Created> {
        self.enqueue_job_recorded(task_id, agent, stage, now, None)
    }

    /// [`Db::enqueue_job`] that also records a webhook delivery's outcome in the same
    /// transaction (`record`): the job and the outcome are committed together or not at
    /// all.
    ///
    /// # Errors
    /// On SQL errors; [`AlreadyRecorded`](crate::adapters::db_deliveries::AlreadyRecorded)
    /// when the delivery got its outcome meanwhile (nothing is written then).
    pub fn enqueue_job_recorded(
        &mut self,
        task_id: i64,
        agent: Agent,
        stage: Stage,
        now: i64,
        record: Option<&Recorder<'_, Created>>,
    ) -> Result<Created> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = match enqueue_in(&tx, task_id, agent, stage, now)? {
            Some(id) => Created::New(id),
            None => Created::Existing(tx.query_row(
                "SELECT id FROM jobs WHERE task_id = ?1 AND stage = ?2 AND status IN ('queued','running')",
                params![task_id, stage.as_str()],
                |r| r.get(0),
            )?),
        };
        if let Some(r) = record {
            r.record_in(&tx, &out)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Returns the job with this id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn job(&self, id: i64) -> Result<Option<Job>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    /// Lists jobs, optionally with one status, newest first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn list_jobs(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<Job>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![status.map(JobStatus::as_str), limit], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Returns a task's jobs, oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_jobs(&self, task_id: i64) -> Result<Vec<Job>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([task_id], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Returns the latest job of a task at a stage.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn latest_stage_job(&self, task_id: i64, stage: Stage) -> Result<Option<Job>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ?1 AND stage = ?2 ORDER BY id DESC LIMIT 1"
                ),
                params![task_id, stage.as_str()],
                job_from_row,
            )
            .optional()?)
    }

    /// Counts jobs by status (every status present, zeros included).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn job_counts(&self) -> Result<BTreeMap<JobStatus, i64>> {
        let mut out: BTreeMap<JobStatus, i64> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        // One index range count per status: cheap even with 100,000 jobs.
        let mut stmt = self
            .conn
            .prepare_cached("SELECT count(*) FROM jobs WHERE status = ?1")?;
        for s in JobStatus::ALL {
            let n: i64 = stmt.query_row([s.as_str()], |r| r.get(0))?;
            out.insert(s, n);
        }
        Ok(out)
    }

    /// Counts tasks by stage (every stage present, zeros included).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_counts(&self) -> Result<BTreeMap<Stage, i64>> {
        let mut out: BTreeMap<Stage, i64> = Stage::ALL.iter().map(|s| (*s, 0)).collect();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT count(*) FROM tasks WHERE stage = ?1")?;
        for s in Stage::ALL {
            let n: i64 = stmt.query_row([s.as_str()], |r| r.get(0))?;
            out.insert(s, n);
        }
        Ok(out)
    }

    /// Returns running jobs, oldest start first, at most `limit`, with their task keys.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_jobs(&self, limit: usize) -> Result<Vec<(Job, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cols = JOB_COLUMNS
            .split(", ")
            .map(|c| format!("j.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {cols}, t.key FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'running' ORDER BY j.started_at, j.id LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], |r| Ok((job_from_row(r)?, r.get::<_, String>(18)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Returns escalated tasks, oldest escalation first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalated_tasks(&self, limit: usize) -> Result<Vec<Task>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE escalated_at IS NOT NULL ORDER BY escalated_at LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], task_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Records a pass for `status` (one row per subcommand, replaced each pass).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_pass(&self, pass: &PassRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO passes (command, started_at, duration_ms, outcome, counts)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (command) DO UPDATE SET started_at = excluded.started_at,
                 duration_ms = excluded.duration_ms, outcome = excluded.outcome,
                 counts = excluded.counts",
            params![
                pass.command,
                pass.started_at,
                pass.duration_ms,
                pass.outcome,
                serde_json::to_string(&pass.counts)?
            ],
        )?;
        Ok(())
    }

    /// Returns the last pass of every subcommand that has run, by name.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn passes(&self) -> Result<Vec<PassRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT command, started_at, duration_ms, outcome, counts FROM passes ORDER BY command",
        )?;
        let rows = stmt.query_map([], |r| {
            let counts: String = r.get(4)?;
            Ok(PassRecord {
                command: r.get(0)?,
                started_at: r.get(1)?,
                duration_ms: r.get(2)?,
                outcome: r.get(3)?,
                counts: serde_json::from_str(&counts).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

/// Creates a task at `analysis` with its creation event unless the work item has one.
pub(crate) fn create_in(
    tx: &rusqlite::Transaction<'_>,
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
    tx.execute(
        "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage,
                            stage_entered_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'analysis', ?7, ?7, ?7)",
        params![
            t.project,
            t.work_item_id,
            t.key,
            t.title,
            t.repo,
            t.branch,
            now
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO stage_events (task_id, from_stage, to_stage, reason, actor, at)
         VALUES (?1, NULL, 'analysis', ?2, ?3, ?4)",
        params![id, reason, actor.as_str(), now],
    )?;
    Ok(Created::New(id))
}

/// Inserts a queued job unless one is live for the task and stage.
pub(crate) fn enqueue_in(
    tx: &rusqlite::Transaction<'_>,
    task_id: i64,
    agent: Agent,
    stage: Stage,
    now: i64,
) -> Result<Option<i64>> {
    let n = tx.execute(
        "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at)
         VALUES (?1, ?2, ?3, 'queued', 1, ?4)
         ON CONFLICT DO NOTHING",
        params![task_id, agent.as_str(), stage.as_str(), now],
    )?;
    Ok((n == 1).then(|| tx.last_insert_rowid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_task(n: u32) -> NewTask {
        NewTask {
            project: "orch".into(),
            work_item_id: format!("00000000-0000-4000-8000-{n:012}"),
            key: format!("ORCH-{n}"),
            title: "t".into(),
            repo: "acme/orch".into(),
            branch: format!("orch-{n}"),
        }
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        (dir, db)
    }

    fn count(db: &Db, sql: &str) -> i64 {
        db.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn fresh_database_is_at_the_latest_version_and_wal() {
        let (_d, db) = db();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = db
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = db
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn every_earlier_version_upgrades_cleanly() {
        for start in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("orch.db");
            let mut db = Db::open_unmigrated(&path).unwrap();
            db.migrate_to(start).unwrap();
            assert_eq!(db.schema_version().unwrap(), start);
            drop(db);
            let mut db = Db::open(&path).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            assert_eq!(
                db.migrate().unwrap(),
                Migration {
                    from: SCHEMA_VERSION,
                    to: SCHEMA_VERSION
                }
            );
        }
    }

    #[test]
    fn migration_4_confirms_only_the_branches_of_tasks_past_development() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open_unmigrated(&path).unwrap();
        db.migrate_to(3).unwrap();
        for (n, stage) in ["analysis", "development", "review", "deploy", "done"]
            .iter()
            .enumerate()
        {
            db.conn()
                .execute(
                    "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage,
                                        stage_entered_at, created_at, updated_at)
                     VALUES ('p', ?1, ?1, 't', 'a/b', ?1, ?2, 1, 1, 7)",
                    params![format!("K-{n}"), stage],
                )
                .unwrap();
        }
        drop(db);
        let db = Db::open(&path).unwrap();
        let ready: Vec<(String, Option<i64>, u32)> = db
            .conn()
            .prepare("SELECT stage, branch_ready_at, round FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want = |s: &str, at: Option<i64>| (s.to_string(), at, 1);
        assert_eq!(
            ready,
            vec![
                want("analysis", None),
                want("development", None),
                want("review", Some(7)),
                want("deploy", Some(7)),
                want("done", Some(7)),
            ],
            "reconcile confirms only the branches that may be missing"
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        drop(Db::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Db::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer orch"), "{err}");
    }

    #[test]
    fn every_allowed_transition_moves_and_records_its_event() {
        let (_d, mut db) = db();
        for (n, t) in stage::STAGE_TRANSITIONS.iter().enumerate() {
            let id = db
                .create_task(&new_task(n as u32), Actor::Operator, "test", 1)
                .unwrap()
                .id();
            // Put the task at `from` through the table itself.
            let path: &[Stage] = match t.from {
                Stage::Analysis => &[],
                Stage::Development => &[Stage::Development],
                Stage::Review => &[Stage::Development, Stage::Review],
                Stage::DeployStaging => &[Stage::Development, Stage::Review, Stage::DeployStaging],
                Stage::Deploy => &[
                    Stage::Development,
                    Stage::Review,
                    Stage::DeployStaging,
                    Stage::Deploy,
                ],
                Stage::Done => &[
                    Stage::Development,
                    Stage::Review,
                    Stage::DeployStaging,
                    Stage::Deploy,
                    Stage::Done,
                ],
                Stage::Cancelled => unreachable!(),
            };
            let mut at = Stage::Analysis;
            for s in path {
                db.move_task(id, at, *s, "setup", Actor::Operator, 2)
                    .unwrap();
                at = *s;
            }
            let before = db.stage_events(id).unwrap().len();
            let moved = db
                .move_task(id, t.from, t.to, "under test", Actor::Reconcile, 3)
                .unwrap();
            assert_eq!(moved.to, t.to);
            assert_eq!(moved.arms_post_deploy, t.arms_post_deploy);
            let task = db.task(id).unwrap().unwrap();
            assert_eq!(task.stage, t.to);
            assert_eq!(task.stage_entered_at, 3);
            let events = db.stage_events(id).unwrap();
            assert_eq!(events.len(), before + 1);
            let last = events.last().unwrap();
            assert_eq!((last.from_stage, last.to_stage), (Some(t.from), t.to));
            assert_eq!(last.actor, "reconcile");
            // The new stage's job is enqueued exactly once.
            let live = count(&db, &format!(
                "SELECT count(*) FROM jobs WHERE task_id = {id} AND status = 'queued' AND stage = '{}'",
                t.to
            ));
            assert_eq!(
                live,
                i64::from(t.to.agent().is_some()),
                "{} -> {}",
                t.from,
                t.to
            );
        }
    }

    #[test]
    fn a_forbidden_transition_writes_nothing() {
        let (_d, mut db) = db();
        let id = db
            .create_task(&new_task(1), Actor::Operator, "test", 1)
            .unwrap()
            .id();
        let events = count(&db, "SELECT count(*) FROM stage_events");
        let jobs = count(&db, "SELECT count(*) FROM jobs");
        for to in [Stage::Review, Stage::Deploy, Stage::Done, Stage::Analysis] {
            let err = db
                .move_task(id, Stage::Analysis, to, "x", Actor::Operator, 2)
                .unwrap_err();
            assert!(matches!(
                err.downcast_ref::<MoveError>(),
                Some(MoveError::NotAllowed { .. })
            ));
        }
        // Stale: the caller thinks the task is elsewhere.
        let err = db
            .move_task(
                id,
                Stage::Review,
                Stage::DeployStaging,
                "x",
                Actor::Operator,
                2,
            )
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<MoveError>(),
            Some(MoveError::Stale { .. })
        ));
        assert_eq!(count(&db, "SELECT count(*) FROM stage_events"), events);
        assert_eq!(count(&db, "SELECT count(*) FROM jobs"), jobs);
        assert_eq!(db.task(id).unwrap().unwrap().stage, Stage::Analysis);
    }

    #[test]
    fn review_rollback_counts_a_developer_retry_and_cancel_drops_queued_jobs() {
        let (_d, mut db) = db();
        let id = db
            .create_task(&new_task(1), Actor::Operator, "test", 1)
            .unwrap()
            .id();
        db.enqueue_job(id, Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        let m = db
            .move_task(
                id,
                Stage::Analysis,
                Stage::Development,
                "ok",
                Actor::Webhook,
                2,
            )
            .unwrap();
        assert_eq!(m.cancelled_jobs, 1, "the queued analyst job is dropped");
        db.move_task(
            id,
            Stage::Development,
            Stage::Review,
            "ok",
            Actor::Reconcile,
            3,
        )
        .unwrap();
        let m = db
            .move_task(
                id,
                Stage::Review,
                Stage::Development,
                "changes",
                Actor::Reconcile,
                4,
            )
            .unwrap();
        assert_eq!(m.developer_retries, 1);
        let m = db
            .move_task(
                id,
                Stage::Development,
                Stage::Cancelled,
                "cancel",
                Actor::Webhook,
                5,
            )
            .unwrap();
        assert_eq!(m.enqueued_job, None);
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM jobs WHERE status IN ('queued','running')"
            ),
            0
        );
    }

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

    #[test]
    fn the_rollback_that_reaches_the_retry_limit_parks_the_task_without_a_job() {
        let (_d, mut db) = db();
        let id = db
            .create_task(&new_task(1), Actor::Operator, "test", 1)
            .unwrap()
            .id();
        db.move_task(
            id,
            Stage::Analysis,
            Stage::Development,
            "ok",
            Actor::Webhook,
            2,
        )
        .unwrap();
        for round in 1..=2u32 {
            db.move_task(
                id,
                Stage::Development,
                Stage::Review,
                "ok",
                Actor::Reconcile,
                3,
            )
            .unwrap();
            let m = db
                .move_task_limited(
                    id,
                    Stage::Review,
                    Stage::Development,
                    "rc",
                    Actor::Reconcile,
                    4,
                    Some(2),
                    false,
                )
                .unwrap();
            assert_eq!(m.escalated, round == 2, "round {round}");
            assert_eq!(m.enqueued_job.is_some(), round < 2, "round {round}");
        }
        let t = db.task(id).unwrap().unwrap();
        assert_eq!(t.escalated_at, Some(4));
        assert!(t
            .escalation_reason
            .unwrap()
            .contains("reached ORCH_MAX_DEVELOPER_RETRIES 2"));
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM jobs WHERE status IN ('queued','running')"
            ),
            0
        );
    }

    #[test]
    fn a_reopen_starts_the_next_round_in_the_same_move() {
        let (_d, mut db) = db();
        let id = db
            .create_task(&new_task(1), Actor::Operator, "test", 1)
            .unwrap()
            .id();
        for (from, to) in [
            (Stage::Analysis, Stage::Development),
            (Stage::Development, Stage::Review),
            (Stage::Review, Stage::DeployStaging),
            (Stage::DeployStaging, Stage::Deploy),
            (Stage::Deploy, Stage::Done),
        ] {
            db.move_task(id, from, to, "t", Actor::Reconcile, 2)
                .unwrap();
        }
        assert!(db.set_pr_number(id, 1, 1, 2).unwrap());
        assert!(db.set_validated_revision(id, 1, "abc", 2).unwrap());
        db.conn()
            .execute("UPDATE tasks SET branch_ready_at = 2 WHERE id = ?1", [id])
            .unwrap();
        let m = db
            .move_task_limited(
                id,
                Stage::Done,
                Stage::Development,
                "degraded",
                Actor::PostDeploy,
                5,
                Some(3),
                true,
            )
            .unwrap();
        assert_eq!((m.round, m.new_round), (2, true));
        assert!(m.enqueued_job.is_some());
        let t = db.task(id).unwrap().unwrap();
        assert_eq!(t.round, 2);
        assert_eq!(t.pr_number, None);
        assert_eq!(t.validated_revision, None);
        assert_eq!(t.branch_ready_at, None);
        // A check or a gate that read the task in round 1 and writes after the reopen
        // writes nothing: the new round starts with no PR and no validated revision.
        assert!(!db.set_pr_number(id, 1, 1, 5).unwrap());
        assert!(!db.set_validated_revision(id, 1, "abc", 5).unwrap());
        let t = db.task(id).unwrap().unwrap();
        assert_eq!((t.pr_number, t.validated_revision), (None, None));
        let last = db.stage_events(id).unwrap().pop().unwrap();
        assert_eq!(last.reason, "degraded (reopened: round 2)");
        // A move that keeps the round leaves the PR and the revision alone.
        db.move_task(
            id,
            Stage::Development,
            Stage::Review,
            "t",
            Actor::Reconcile,
            6,
        )
        .unwrap();
        assert!(db.set_pr_number(id, 2, 2, 6).unwrap());
        let m = db
            .move_task(
                id,
                Stage::Review,
                Stage::Development,
                "rc",
                Actor::Reconcile,
                7,
            )
            .unwrap();
        assert_eq!((m.round, m.new_round), (2, false));
        let t = db.task(id).unwrap().unwrap();
        assert_eq!((t.round, t.pr_number), (2, Some(2)));
        // A refused move starts nothing.
        assert!(db
            .move_task_limited(
                id,
                Stage::Review,
                Stage::Development,
                "x",
                Actor::Reconcile,
                8,
                None,
                true
            )
            .is_err());
        assert_eq!(db.task(id).unwrap().unwrap().round, 2);
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
}
