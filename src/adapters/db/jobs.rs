//! The `jobs` rows: enqueueing once per live job, reading and listing, and the job SQL
//! of `dispatch`, `run-job`, `reap` and `job`: claims, stamps and flips.
//!
//! Every write to a job is guarded in its `WHERE` clause by the status (and, once a job
//! runs, the attempt) its caller judged, so two passes that race, with or without the
//! pass locks, change a job at most once, and a job re-run since (a new attempt) is never
//! changed by a pass that judged the old one. Each method reports whether its row was
//! written (`false`: another pass won the race). No decisions here.

use std::collections::{BTreeMap, HashMap};

use crate::adapters::db::sql::{params, Conn, OptionalExtension as _, Row, Value};
use anyhow::Result;

use crate::adapters::db::recorder::Recorder;
use crate::adapters::db::{parse_col, sql, sql_limit, Created, Db};
use crate::core::dispatch::{Caps, Queued};
use crate::core::job::Job;
use crate::core::job::JobStatus;
use crate::core::priority::Priority;
use crate::core::reap::Tier;
use crate::core::stage::{Agent, Stage};

/// One running job as paged: its key `(enqueued_at, id)` and the parsed row (or why it
/// could not be parsed).
pub type RunningRow = ((i64, i64), Result<Job, String>);

/// The stage whose jobs use the one staging environment.
const STAGING_STAGE: Stage = Stage::DeployStaging;

/// How one claim went ([`Db::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The job runs now, on the claiming host.
    Claimed,
    /// No slot: the global limit or the host's cap is reached.
    Full,
    /// The job is not queued any more (another pass took it) or staging is held.
    Lost,
}

/// How a batch of claims went ([`Db::claim_batch`]); each id in exactly one list, each
/// list in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The jobs that run now, on the claiming host.
    pub claimed: Vec<i64>,
    /// Not queued any more (another pass took them) or staging was held.
    pub lost: Vec<i64>,
    /// Not tried: no slot was left under the caps (no other claim can succeed now).
    pub untried: Vec<i64>,
}

/// Jobs one claim statement takes at most (one chunked `IN`, `super::IN_CHUNK`).
const CLAIM_CHUNK: usize = super::IN_CHUNK;

/// What a claim sets: running on the host `?2` since `?1`, its first heartbeat the
/// claim time, and nothing a previous attempt left.
const CLAIM_SET: &str = "status = 'running', started_at = ?1, finished_at = NULL,
    pid = NULL, pid_start_time = NULL, supervisor_pid = NULL, exit_code = NULL,
    reap_reason = NULL, dead_ticks = 0, log_size = NULL, log_grew_at = NULL,
    host = ?2, heartbeat_at = ?1";

/// The queued jobs among a chunk of ids, with their stage (`{IN}`: the ids).
const CHUNK_QUEUED: &str = "SELECT id, stage FROM jobs WHERE id IN ({IN}) AND status = 'queued'";

/// Claims the jobs of a chunk that are still queued (none of them a `deploy-staging`
/// job), returning the ids it flipped (`{IN}`: the ids, after `?1` and `?2`).
const CHUNK_CLAIM: &str =
    "UPDATE jobs SET {SET} WHERE id IN ({IN}) AND status = 'queued' AND stage <> '{STAGING}' RETURNING id";

/// `sql` with `{IN}` as [`CLAIM_CHUNK`] placeholders numbered after the fixed ones
/// (`?1`, `?2` when `sql` uses them), `{SET}` as [`CLAIM_SET`] and `{STAGING}` the
/// staging stage.
fn in_chunk(sql: &str) -> String {
    let first = if sql.contains("{SET}") { 3 } else { 1 };
    sql.replace("{SET}", CLAIM_SET)
        .replace("{STAGING}", STAGING_STAGE.as_str())
        .replace("{IN}", &super::in_marks(first))
}

/// `head`, then `ids` padded to [`CLAIM_CHUNK`] values by repeating the first (an id
/// twice in `IN` is the same id).
fn padded(ids: &[i64], head: &[Value]) -> Vec<Value> {
    let ids = ids.iter().map(|id| Value::Int(*id)).collect();
    super::padded_in(head.to_vec(), ids)
}

/// A running `deploy-staging` job: who holds the staging environment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagingHolder {
    /// The job.
    pub job_id: i64,
    /// Its task.
    pub task_id: i64,
    /// The task's key.
    pub key: String,
    /// When the job started (unix seconds), once claimed.
    pub started_at: Option<i64>,
}

const JOB_COLUMNS: &str = "id, task_id, agent, stage, status, attempt, pid, pid_start_time, \
     supervisor_pid, exit_code, enqueued_at, started_at, finished_at, reap_reason, dead_ticks, \
     rescue_count, log_path, supervisor_start_time, log_size, log_grew_at, host, heartbeat_at";

/// Parses a job row selected with `JOB_COLUMNS`.
fn job_from_row(row: &Row<'_>) -> crate::adapters::db::sql::Result<Job> {
    let agent: String = row.get(2)?;
    Ok(Job {
        id: row.get(0)?,
        task_id: row.get(1)?,
        agent: Agent::parse(&agent)
            .ok_or_else(|| sql::Error::conversion(2, format!("unknown agent {agent:?}")))?,
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
        log_size: row.get(18)?,
        log_grew_at: row.get(19)?,
        host: row.get(20)?,
        heartbeat_at: row.get(21)?,
    })
}

/// The number of (project, status) rows of `job_counts` (kept by triggers, migration 8)
/// that differ from counting the jobs, either way: 0 unless a trigger is wrong. Tests
/// and diagnostics run it; no pass does.
pub const JOB_COUNTS_DRIFT: &str = "SELECT
    (SELECT count(*) FROM (SELECT t.project AS p, j.status AS s, count(*) AS n
                             FROM jobs j JOIN tasks t ON t.id = j.task_id GROUP BY 1, 2) x
      LEFT JOIN job_counts c ON c.project = x.p AND c.status = x.s
      WHERE c.n IS DISTINCT FROM x.n)
  + (SELECT count(*) FROM job_counts c
      WHERE c.n <> (SELECT count(*) FROM jobs j JOIN tasks t ON t.id = j.task_id
                     WHERE t.project = c.project AND j.status = c.status))";

impl Db {
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
    /// On SQL errors; [`AlreadyRecorded`](crate::adapters::db::AlreadyRecorded)
    /// when the delivery got its outcome meanwhile (nothing is written then).
    pub fn enqueue_job_recorded(
        &mut self,
        task_id: i64,
        agent: Agent,
        stage: Stage,
        now: i64,
        record: Option<&Recorder<'_, Created>>,
    ) -> Result<Created> {
        let tx = self.immediate()?;
        let out = enqueue_or_existing(&tx, task_id, agent, stage, now)?;
        if let Some(r) = record {
            r.record_in(&tx, &out)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// An operator's [`Db::enqueue_job`] (`orch job enqueue`): in the same transaction it
    /// clears the task's escalation, if any, since a person who runs the stage's agent
    /// again has taken the parked task back (otherwise the job would run and its gate
    /// would never be applied). Returns the job and the escalation reason it cleared.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn enqueue_job_by_operator(
        &mut self,
        task_id: i64,
        agent: Agent,
        stage: Stage,
        now: i64,
    ) -> Result<(Created, Option<String>)> {
        let tx = self.immediate()?;
        let out = enqueue_or_existing(&tx, task_id, agent, stage, now)?;
        let cleared: Option<Option<String>> = tx
            .query_row(
                "SELECT escalation_reason FROM tasks WHERE id = ?1 AND escalated_at IS NOT NULL",
                [task_id],
                |r| r.get(0),
            )
            .optional()?;
        if cleared.is_some() {
            tx.execute(
                "UPDATE tasks SET escalated_at = NULL, escalation_reason = NULL, updated_at = ?2
                 WHERE id = ?1",
                params![task_id, now],
            )?;
        }
        tx.commit()?;
        Ok((out, cleared.map(Option::unwrap_or_default)))
    }

    /// Returns the job with this id.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn job(&self, id: i64) -> Result<Option<Job>> {
        self.query_one(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            job_from_row,
        )
    }

    /// Lists jobs, optionally with one status, newest first, at most `limit`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn list_jobs(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<Job>> {
        self.query_all(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (status = ?1 OR ?1 IS NULL) ORDER BY id DESC LIMIT ?2"
            ),
            params![status.map(JobStatus::as_str), sql_limit(limit)],
            job_from_row,
        )
    }

    /// Returns a task's jobs, oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn task_jobs(&self, task_id: i64) -> Result<Vec<Job>> {
        self.query_all(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ?1 ORDER BY id"),
            [task_id],
            job_from_row,
        )
    }

    /// Whether a task ever had an analyst job, and whether one is queued or running now
    /// (what `intake::decide` asks of a task at analysis).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn analyst_jobs(&self, task_id: i64) -> Result<(bool, bool)> {
        let jobs = self.task_jobs(task_id)?;
        let analyst = || jobs.iter().filter(|j| j.agent == Agent::Analyst);
        Ok((
            analyst().next().is_some(),
            analyst().any(|j| !j.status.is_terminal()),
        ))
    }

    /// Returns the latest job of a task at a stage.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn latest_stage_job(&self, task_id: i64, stage: Stage) -> Result<Option<Job>> {
        self.query_one(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE task_id = ?1 AND stage = ?2 ORDER BY id DESC LIMIT 1"
            ),
            params![task_id, stage.as_str()],
            job_from_row,
        )
    }

    /// The latest job of each task at the stage given with it (what
    /// [`Db::latest_stage_job`] reads for one), for many tasks at once: one query per
    /// 32 tasks. A task with no job at its stage is absent from the answer.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn latest_stage_jobs(&self, tasks: &[(i64, Stage)]) -> Result<HashMap<i64, Job>> {
        let sql = in_chunk(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (
                 SELECT max(id) FROM jobs WHERE task_id IN ({{IN}}) GROUP BY task_id, stage)"
        ));
        let wanted: HashMap<i64, Stage> = tasks.iter().copied().collect();
        let ids: Vec<i64> = wanted.keys().copied().collect();
        let mut out = HashMap::new();
        for chunk in ids.chunks(CLAIM_CHUNK) {
            for job in self.query_all(&sql, padded(chunk, &[]), job_from_row)? {
                if wanted.get(&job.task_id) == Some(&job.stage) {
                    out.insert(job.task_id, job);
                }
            }
        }
        Ok(out)
    }

    /// Counts jobs by status (every status present, zeros included), from the counts
    /// the triggers keep current: a handful of rows, whatever the history.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn job_counts(&self) -> Result<BTreeMap<JobStatus, i64>> {
        let mut out: BTreeMap<JobStatus, i64> = JobStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT status, sum(n) FROM job_counts GROUP BY status")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let status: JobStatus = parse_col(&row, 0)?;
            out.insert(status, row.get(1)?);
        }
        Ok(out)
    }

    /// Counts queued jobs (the queue's length), from the kept counts.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn queued_count(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT coalesce(sum(n), 0) FROM job_counts WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Returns running jobs, oldest start first, at most `limit`, with their task keys and
    /// priorities:
    /// the first `limit` entries of `jobs_running_by_start`, never a sort of them all.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_jobs(&self, limit: usize) -> Result<Vec<(Job, String, Priority)>> {
        let cols = JOB_COLUMNS
            .split(", ")
            .map(|c| format!("j.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.query_all(
            &format!(
                "SELECT {cols}, t.key, t.priority
                 FROM jobs j INDEXED BY jobs_running_by_start JOIN tasks t ON t.id = j.task_id
                 WHERE j.status = 'running' ORDER BY j.started_at, j.id LIMIT ?1"
            ),
            [sql_limit(limit)],
            // The key and priority follow the job's columns, however many there are.
            |r| {
                let n = JOB_COLUMNS.split(", ").count();
                Ok((
                    job_from_row(r)?,
                    r.get::<_, String>(n)?,
                    parse_col(r, n + 1)?,
                ))
            },
        )
    }

    /// Returns the first `per_project` queued jobs of every project in start order
    /// (priority, then age, then id), counted apart for
    /// `deploy-staging` jobs, for jobs that wait for their task's branch, and for the
    /// others (so jobs that must wait never crowd out the ones that could start).
    ///
    /// `hold_branchless`: whether a job of any agent but the analyst is marked
    /// `branch_missing` while its task's branch is not confirmed on Gitea (true when Gitea
    /// is configured; without Gitea no branch is ever confirmed, and nothing waits for one).
    ///
    /// Reads each project's queue (the projects with queued jobs come from the kept
    /// counts) along `jobs_queue_by_priority` in order, staging jobs and the others
    /// apart, and stops once `per_project` jobs that could start are read: the work
    /// grows with the heads, not the queue. Jobs waiting for their branch are listed as
    /// far as the scan went (the ones queued after the last job read could not start
    /// this pass anyway).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn queued_heads(&self, per_project: u32, hold_branchless: bool) -> Result<Vec<Queued>> {
        debug_assert_eq!(
            STAGING_STAGE.as_str(),
            "deploy-staging",
            "the index's expression"
        );
        let per = per_project as usize;
        let mut out = Vec::new();
        if per == 0 {
            return Ok(out);
        }
        let projects: Vec<String> = self.query_all(
            "SELECT project FROM job_counts WHERE status = 'queued' AND n > 0 ORDER BY project",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn().prepare_cached(
            "SELECT j.id, j.enqueued_at,
                    (?3 AND j.agent <> 'analyst' AND t.branch_ready_at IS NULL) AS branch_missing,
                    j.priority_rank
             FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.project = ?1 AND j.status = 'queued' AND (j.stage = 'deploy-staging') = ?2
             ORDER BY j.priority_rank, j.enqueued_at, j.id",
        )?;
        for project in projects {
            for uses_staging in [true, false] {
                let mut rows = stmt.query(params![project, uses_staging, hold_branchless])?;
                let (mut ready, mut missing) = (0usize, 0usize);
                while let Some(row) = rows.next()? {
                    let branch_missing: bool = row.get(2)?;
                    let taken = if branch_missing {
                        &mut missing
                    } else {
                        &mut ready
                    };
                    if *taken < per {
                        *taken += 1;
                        out.push(Queued {
                            id: row.get(0)?,
                            project: project.clone(),
                            enqueued_at: row.get(1)?,
                            priority: Priority::from_rank(row.get(3)?),
                            uses_staging,
                            branch_missing,
                        });
                    }
                    if ready >= per {
                        break;
                    }
                }
            }
        }
        out.sort_by_key(Queued::start_order);
        Ok(out)
    }

    /// Counts running jobs per project (from `job_counts`; projects with none left out).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_by_project(&self) -> Result<BTreeMap<String, u32>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT project, n FROM job_counts WHERE status = 'running' AND n > 0",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<crate::adapters::db::sql::Result<BTreeMap<_, _>>>()?)
    }

    /// Returns the running `deploy-staging` jobs (the holders of the staging
    /// environment; one at most unless rows were written by hand), oldest first.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn staging_holders(&self) -> Result<Vec<StagingHolder>> {
        self.query_all(
            "SELECT j.id, j.task_id, t.key, j.started_at FROM jobs j JOIN tasks t ON t.id = j.task_id
             WHERE j.status = 'running' AND j.stage = ?1 ORDER BY j.started_at, j.id LIMIT 20",
            [STAGING_STAGE.as_str()],
            |r| {
                Ok(StagingHolder {
                    job_id: r.get(0)?,
                    task_id: r.get(1)?,
                    key: r.get(2)?,
                    started_at: r.get(3)?,
                })
            },
        )
    }

    /// Claims a queued job for running on `host`: [`Db::claim_batch`] of one job.
    ///
    /// # Errors
    /// As [`Db::claim_batch`].
    pub fn claim_job(&self, id: i64, now: i64, caps: Caps, host: &str) -> Result<bool> {
        Ok(self.claim(id, now, caps, host)? == Claim::Claimed)
    }

    /// [`Db::claim_job`], saying why a claim failed: [`Claim::Full`] (no slot under the
    /// caps: no other claim can succeed now either) or [`Claim::Lost`] (this job was
    /// taken, or staging is held: another job may still be claimed).
    ///
    /// # Errors
    /// As [`Db::claim_batch`].
    pub fn claim(&self, id: i64, now: i64, caps: Caps, host: &str) -> Result<Claim> {
        let b = self.claim_batch(&[id], now, caps, host)?;
        Ok(if !b.claimed.is_empty() {
            Claim::Claimed
        } else if b.lost.is_empty() {
            Claim::Full
        } else {
            Claim::Lost
        })
    }

    /// Claims queued jobs for running on `host`, in `ids`' order, in one write
    /// transaction (the writer lock: one claimer at a time on either engine). Reads the
    /// running jobs, all (the kept `job_counts`) and, under a per-host cap, `host`'s,
    /// and [`Caps::free`] says how many may start; then flips the ids still queued,
    /// `CLAIM_CHUNK` (32) at a time, by UPDATEs guarded by `status='queued'` and, for a
    /// `deploy-staging` job, by no other `deploy-staging` job running (each of those has
    /// its own statement: staging is one shared environment). So racing passes, on one
    /// host or several, never start a job twice, never exceed the limit or a host's
    /// cap, and never put two jobs on staging, whatever each pass decided; a batch
    /// another pass took first costs one read. Stamps the host and the first heartbeat
    /// (the claim time) and clears what a previous attempt left.
    ///
    /// # Errors
    /// On SQL errors (the writer lock not obtained within the busy timeout among them);
    /// nothing is claimed then.
    pub fn claim_batch(&self, ids: &[i64], now: i64, caps: Caps, host: &str) -> Result<Claims> {
        let tx = self.conn().begin(sql::Begin::Write)?;
        let total: i64 = tx.query_row(
            "SELECT coalesce(sum(n), 0) FROM job_counts WHERE status = 'running'",
            [],
            |r| r.get(0),
        )?;
        let here: i64 = match caps.per_host {
            Some(_) => tx.query_row(
                "SELECT count(*) FROM jobs WHERE status = 'running' AND host = ?1",
                [host],
                |r| r.get(0),
            )?,
            None => 0,
        };
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let mut room = caps.free(count(total), count(here)) as usize;
        let mut out = Claims::default();
        let mut rest = ids;
        while room > 0 && !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(room).min(CLAIM_CHUNK));
            rest = after;
            // Which of them are still queued, and which are staging jobs: stable until
            // the commit, since every writer holds the writer lock.
            let queued: Vec<(i64, String)> =
                tx.query_all(&in_chunk(CHUNK_QUEUED), padded(chunk, &[]), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let (staging, others): (Vec<_>, Vec<_>) = queued
                .iter()
                .partition(|(_, stage)| stage == STAGING_STAGE.as_str());
            let others: Vec<i64> = others.iter().map(|(id, _)| *id).collect();
            let mut won: Vec<i64> = if others.is_empty() {
                Vec::new()
            } else {
                let head = [Value::Int(now), Value::Text(host.to_owned())];
                tx.query_all(&in_chunk(CHUNK_CLAIM), padded(&others, &head), |r| r.get(0))?
            };
            for (id, _) in staging {
                let n = tx.execute(
                    &format!(
                        "UPDATE jobs SET {CLAIM_SET}
                         WHERE id = ?3 AND status = 'queued'
                           AND NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'running' AND stage = ?4)"
                    ),
                    params![now, host, *id, STAGING_STAGE.as_str()],
                )?;
                if n == 1 {
                    won.push(*id);
                }
            }
            room = room.saturating_sub(won.len());
            for id in chunk {
                if won.contains(id) {
                    out.claimed.push(*id);
                } else {
                    out.lost.push(*id);
                }
            }
        }
        out.untried = rest.to_vec();
        if !out.claimed.is_empty() {
            upsert_host(&tx, host, now)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Counts the running jobs claimed by `host` (the per-host cap's count).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_on_host(&self, host: &str) -> Result<u32> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND host = ?1",
            [host],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The database's clock, unix seconds: what heartbeats are stamped with and judged
    /// against when the clock is not pinned, so the hosts' clocks never enter the
    /// comparison on PostgreSQL (on SQLite, the one host's clock).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn clock(&self) -> Result<i64> {
        clock_in(self.conn())
    }

    /// A running attempt's heartbeat: stamps `heartbeat_at = now` (`None`: the
    /// database's clock, [`Db::clock`]) while the job is still
    /// running at `attempt`, and its host's row, in one write transaction. `false` (and
    /// nothing written): the attempt is not running any more (rescued, cancelled, ended
    /// or re-run), and its supervisor must stop its agent.
    ///
    /// # Errors
    /// On SQL errors (an unreachable database among them).
    pub fn heartbeat(&self, id: i64, attempt: u32, host: &str, now: Option<i64>) -> Result<bool> {
        let tx = self.conn().begin(sql::Begin::Write)?;
        let now = match now {
            Some(n) => n,
            None => clock_in(&tx)?,
        };
        let n = tx.execute(
            "UPDATE jobs SET heartbeat_at = ?3
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, now],
        )?;
        if n == 1 {
            upsert_host(&tx, host, now)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Records the supervisor of a running attempt and its log file; `false` when the job
    /// is not running at this attempt or another supervisor already took it.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn stamp_supervisor(
        &self,
        id: i64,
        attempt: u32,
        supervisor_pid: i64,
        log_path: &str,
    ) -> Result<bool> {
        let start = crate::adapters::process::start_time(supervisor_pid);
        let n = self.conn().execute(
            "UPDATE jobs SET supervisor_pid = ?3, log_path = ?4, supervisor_start_time = ?5
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'
               AND supervisor_pid IS NULL AND pid IS NULL",
            params![id, attempt, supervisor_pid, log_path, start],
        )?;
        Ok(n == 1)
    }

    /// Stamps the agent's pid and process start time right after the spawn.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn stamp_pid(&self, id: i64, attempt: u32, pid: i64, start: Option<i64>) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET pid = ?3, pid_start_time = ?4, dead_ticks = 0
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, pid, start],
        )?;
        Ok(n == 1)
    }

    /// Records the agent's exit code (before the flip, so a supervisor that dies in
    /// between leaves the reaper a known exit code).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_exit_code(&self, id: i64, attempt: u32, code: i32) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET exit_code = ?3 WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, code],
        )?;
        Ok(n == 1)
    }

    /// The supervisor's terminal flip, guarded by `status='running'` and the attempt.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn finish_job(&self, id: i64, attempt: u32, status: JobStatus, now: i64) -> Result<bool> {
        debug_assert!(status.is_terminal());
        let n = self.conn().execute(
            "UPDATE jobs SET status = ?3, finished_at = ?4
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, status.as_str(), now],
        )?;
        Ok(n == 1)
    }

    /// The reaper's terminal flip: guarded by `status='running'` and the attempt judged;
    /// records the tier as the reason and counts the rescue.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn reap_flip(
        &self,
        id: i64,
        attempt: u32,
        status: JobStatus,
        tier: Tier,
        now: i64,
    ) -> Result<bool> {
        debug_assert!(status.is_terminal());
        let n = self.conn().execute(
            "UPDATE jobs SET status = ?3, finished_at = ?4, reap_reason = ?5,
                    rescue_count = rescue_count + 1
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, status.as_str(), now, tier.as_str()],
        )?;
        Ok(n == 1)
    }

    /// The reaper's flip of another host's job whose heartbeat expired: as
    /// [`Db::reap_flip`] (to `failed`, reason `heartbeat-expired`, one more rescue), and
    /// also guarded by the heartbeat horizon: the job's last heartbeat (before the first
    /// one, its start) must still be older than `horizon`. A heartbeat that lands after
    /// the reaper read the job makes this change nothing, so a live job is never rescued
    /// on a stale read.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn reap_flip_expired(&self, id: i64, attempt: u32, horizon: i64, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET status = 'failed', finished_at = ?4, reap_reason = ?5,
                    rescue_count = rescue_count + 1
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'
               AND coalesce(heartbeat_at, started_at) < ?3",
            params![id, attempt, horizon, now, Tier::HeartbeatExpired.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Moves a running attempt's dead-tick streak from `from` to `to` (compare and set).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_dead_ticks(&self, id: i64, attempt: u32, from: u32, to: u32) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET dead_ticks = ?4
             WHERE id = ?1 AND attempt = ?2 AND status = 'running' AND dead_ticks = ?3",
            params![id, attempt, from, to],
        )?;
        Ok(n == 1)
    }

    /// Records that a running attempt's log was seen at `size` bytes, changed since the
    /// last pass (or seen for the first time), at `now`; also resets the dead-tick streak
    /// (the process was seen alive). `false` when the attempt is no longer running.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_log_growth(&self, id: i64, attempt: u32, size: i64, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET log_size = ?3, log_grew_at = ?4, dead_ticks = 0
             WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            params![id, attempt, size, now],
        )?;
        Ok(n == 1)
    }

    /// Flips a job to `cancelled` if it is still `expected` at `attempt`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn cancel_job(&self, id: i64, expected: JobStatus, attempt: u32, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?4
             WHERE id = ?1 AND status = ?2 AND attempt = ?3",
            params![id, expected.as_str(), attempt, now],
        )?;
        Ok(n == 1)
    }

    /// Re-queues an ended job as its next attempt (reconcile re-drives a stage this way);
    /// returns the new attempt, or `None` when the job has not ended or another live job
    /// of its task and stage exists.
    ///
    /// # Errors
    /// On SQL errors other than the one-live-job constraint.
    pub fn rerun_job(&self, id: i64, now: i64) -> Result<Option<u32>> {
        let res = self.conn().execute(
            "UPDATE jobs SET status = 'queued', attempt = attempt + 1, enqueued_at = ?2,
                    started_at = NULL, finished_at = NULL, pid = NULL, pid_start_time = NULL,
                    supervisor_pid = NULL, exit_code = NULL, reap_reason = NULL, dead_ticks = 0,
                    host = NULL, heartbeat_at = NULL
             WHERE id = ?1 AND status IN ('succeeded','failed','cancelled')",
            params![id, now],
        );
        match res {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(self.conn().query_row(
                "SELECT attempt FROM jobs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?)),
            Err(e) if e.is_constraint_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Re-queues ended job `id` at `attempt` as its next attempt, as [`Db::rerun_job`]
    /// does, and counts a red-CI feedback on its task (`tasks.ci_feedbacks`) in the same
    /// transaction, so the feedback file written just before under the next number
    /// becomes the task's newest exactly when the re-run is made. `None` (nothing
    /// changed) when the job is not ended at `attempt` any more or another live job of
    /// its task and stage exists.
    ///
    /// # Errors
    /// On SQL errors other than the one-live-job constraint.
    pub fn rerun_job_with_ci_feedback(
        &mut self,
        id: i64,
        attempt: u32,
        now: i64,
    ) -> Result<Option<u32>> {
        let tx = self.immediate()?;
        let res = tx.execute(
            "UPDATE jobs SET status = 'queued', attempt = attempt + 1, enqueued_at = ?3,
                    started_at = NULL, finished_at = NULL, pid = NULL, pid_start_time = NULL,
                    supervisor_pid = NULL, exit_code = NULL, reap_reason = NULL, dead_ticks = 0,
                    host = NULL, heartbeat_at = NULL
             WHERE id = ?1 AND attempt = ?2 AND status IN ('succeeded','failed','cancelled')",
            params![id, attempt, now],
        );
        match res {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.is_constraint_violation() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        tx.execute(
            "UPDATE tasks SET ci_feedbacks = ci_feedbacks + 1
             WHERE id = (SELECT task_id FROM jobs WHERE id = ?1)",
            [id],
        )?;
        tx.commit()?;
        Ok(Some(attempt + 1))
    }

    /// Returns up to `limit` running jobs after the key `after` (`(enqueued_at, id)`), in
    /// that order, that a reap on `host` judges: its own and those no host claimed (by
    /// pid), and another host's only once its last sign of life (heartbeat, else start)
    /// is older than `horizon` ([`crate::core::reap::heartbeat_horizon`]; the rule is
    /// [`crate::core::reap::reap_reads`], which a test holds this SQL to): the others'
    /// live jobs are theirs to judge, counted by [`Db::running_elsewhere`] without being
    /// fetched (the database still walks their index entries). Keyset paging along the `jobs_by_status` index, so a pass over n running
    /// jobs reads each index entry once, whatever the page size.
    ///
    /// A row that cannot be parsed comes back as `Err` with its id, so the reaper logs it
    /// and goes on. Pass `(i64::MIN, i64::MIN)` for the first page.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_page(
        &self,
        after: (i64, i64),
        limit: usize,
        host: &str,
        horizon: i64,
    ) -> Result<Vec<RunningRow>> {
        let limit = sql_limit(limit);
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE status = 'running' AND (enqueued_at, id) > (?1, ?2)
               AND (host IS NULL OR host = ?4 OR coalesce(heartbeat_at, started_at) < ?5)
             ORDER BY enqueued_at, id LIMIT ?3"
        ))?;
        let mut rows = stmt.query(params![after.0, after.1, limit, host, horizon])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let key: (i64, i64) = (row.get(10)?, row.get(0)?);
            out.push((key, job_from_row(&row).map_err(|e| e.to_string())));
        }
        Ok(out)
    }

    /// Counts the running jobs other hosts than `host` claimed (what a reap on `host`
    /// judges by heartbeat), along the `jobs_running_by_host` index.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn running_elsewhere(&self, host: &str) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND host <> ?1",
            [host],
            |r| r.get(0),
        )?)
    }

    /// Returns the log path of a job, if recorded.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn job_log_path(&self, id: i64) -> Result<Option<String>> {
        Ok(self
            .query_one("SELECT log_path FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })?
            .flatten())
    }
}

/// The database's clock in unix seconds, on `conn`.
fn clock_in(conn: &Conn) -> Result<i64> {
    let sql = match conn.engine() {
        sql::Engine::Sqlite => "SELECT CAST(strftime('%s', 'now') AS INTEGER)",
        sql::Engine::Postgres => {
            "SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)"
        }
    };
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// Records `host`'s last sign of life (`hosts`), in the caller's transaction.
fn upsert_host(tx: &Conn, host: &str, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO hosts (id, heartbeat_at) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
         WHERE hosts.heartbeat_at < excluded.heartbeat_at",
        params![host, now],
    )?;
    Ok(())
}

/// Inserts a queued job unless one is live for the task and stage.
pub(super) fn enqueue_in(
    tx: &Conn,
    task_id: i64,
    agent: Agent,
    stage: Stage,
    now: i64,
) -> Result<Option<i64>> {
    Ok(tx
        .query_row(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at)
             VALUES (?1, ?2, ?3, 'queued', 1, ?4)
             ON CONFLICT DO NOTHING RETURNING id",
            params![task_id, agent.as_str(), stage.as_str(), now],
            |r| r.get(0),
        )
        .optional()?)
}

/// Enqueues the stage's job in `tx`, or names the live (queued or running) one the
/// stage already has: one live job per task and stage.
fn enqueue_or_existing(
    tx: &Conn,
    task_id: i64,
    agent: Agent,
    stage: Stage,
    now: i64,
) -> Result<Created> {
    Ok(match enqueue_in(tx, task_id, agent, stage, now)? {
        Some(id) => Created::New(id),
        None => Created::Existing(tx.query_row(
            "SELECT id FROM jobs WHERE task_id = ?1 AND stage = ?2 AND status IN ('queued','running')",
            params![task_id, stage.as_str()],
            |r| r.get(0),
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::{db, db_with_task, new_task};
    use crate::core::stage::Actor;
    use crate::core::task::NewTask;

    fn db_with_job() -> (tempfile::TempDir, Db, i64) {
        let (dir, mut db, t) = db_with_task();
        let j = db
            .enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        let Created::New(j) = j else { panic!() };
        (dir, db, j)
    }

    /// Read for many tasks at once, each task's latest job at its stage is the one
    /// `latest_stage_job` reads alone (past one chunk of 32, with jobs at other stages
    /// and tasks with none).
    #[test]
    fn latest_stage_jobs_read_as_one_task_at_a_time() {
        let (_d, mut db) = db();
        let mut asked = Vec::new();
        for n in 1..=40u32 {
            let id = db
                .create_task(&new_task(n), Actor::Operator, "t", 1)
                .unwrap()
                .id();
            // Task n: n % 3 finished development jobs, then one review job when n is even.
            for _ in 0..n % 3 {
                let j = db
                    .enqueue_job(id, Agent::Developer, Stage::Development, 1)
                    .unwrap()
                    .id();
                db.conn()
                    .execute("UPDATE jobs SET status = 'succeeded' WHERE id = ?1", [j])
                    .unwrap();
            }
            if n % 2 == 0 {
                db.enqueue_job(id, Agent::Reviewer, Stage::Review, 1)
                    .unwrap();
            }
            let stage = if n % 4 == 0 {
                Stage::Review
            } else {
                Stage::Development
            };
            asked.push((id, stage));
        }
        let many = db.latest_stage_jobs(&asked).unwrap();
        for (id, stage) in &asked {
            let alone = db.latest_stage_job(*id, *stage).unwrap();
            assert_eq!(many.get(id), alone.as_ref(), "task {id} at {stage}");
        }
        assert!(many.len() > 20 && many.len() < 40, "{}", many.len());
        assert!(db.latest_stage_jobs(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_new_attempt_is_not_flipped_by_a_pass_that_judged_the_old_one() {
        let (_d, db, j) = db_with_job();
        assert!(db.claim_job(j, 10, Caps::global(1), "h").unwrap());
        assert!(
            !db.claim_job(j, 10, Caps::global(1), "h").unwrap(),
            "claimed once"
        );
        let judged = db.job(j).unwrap().unwrap();
        assert_eq!(judged.attempt, 1);
        // Meanwhile the job ends and is re-run as attempt 2, claimed again.
        assert!(db.finish_job(j, 1, JobStatus::Failed, 11).unwrap());
        assert_eq!(db.rerun_job(j, 12).unwrap(), Some(2));
        assert!(db.claim_job(j, 13, Caps::global(1), "h").unwrap());
        // The pass that judged attempt 1 loses every write.
        assert!(!db
            .reap_flip(j, judged.attempt, JobStatus::Failed, Tier::DeadPid, 14)
            .unwrap());
        assert!(!db.set_dead_ticks(j, judged.attempt, 0, 1).unwrap());
        assert!(!db.record_exit_code(j, judged.attempt, 1).unwrap());
        let now = db.job(j).unwrap().unwrap();
        assert_eq!(
            (now.status, now.attempt, now.rescue_count),
            (JobStatus::Running, 2, 0)
        );
        // The pass judging attempt 2 flips it once.
        assert!(db
            .reap_flip(j, 2, JobStatus::Failed, Tier::DeadPid, 15)
            .unwrap());
        assert!(!db
            .reap_flip(j, 2, JobStatus::Failed, Tier::DeadPid, 15)
            .unwrap());
        let now = db.job(j).unwrap().unwrap();
        assert_eq!(now.rescue_count, 1);
        assert_eq!(now.reap_reason.as_deref(), Some("dead-pid"));
    }

    #[test]
    fn claims_respect_the_host_cap_and_stamp_the_host_and_first_heartbeat() {
        let (_d, mut db, t) = db_with_task();
        let mut jobs = Vec::new();
        for stage in [Stage::Analysis, Stage::Development, Stage::Review] {
            let agent = if stage == Stage::Analysis {
                Agent::Analyst
            } else {
                Agent::Developer
            };
            jobs.push(db.enqueue_job(t, agent, stage, 1).unwrap().id());
        }
        let caps = Caps {
            limit: 10,
            per_host: Some(1),
        };
        assert!(db.claim_job(jobs[0], 10, caps, "a").unwrap());
        assert!(
            !db.claim_job(jobs[1], 10, caps, "a").unwrap(),
            "host a is full"
        );
        assert!(
            db.claim_job(jobs[1], 11, caps, "b").unwrap(),
            "host b is not"
        );
        assert_eq!(db.running_on_host("a").unwrap(), 1);
        let j = db.job(jobs[1]).unwrap().unwrap();
        assert_eq!((j.host.as_deref(), j.heartbeat_at), (Some("b"), Some(11)));
        // The global limit binds before a host's cap.
        let tight = Caps {
            limit: 2,
            per_host: Some(5),
        };
        assert!(!db.claim_job(jobs[2], 12, tight, "c").unwrap());
        let hosts: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM hosts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(hosts, 2, "each claiming host is recorded");
    }

    #[test]
    fn a_heartbeat_after_the_flip_changes_nothing_and_the_expired_flip_needs_an_old_one() {
        let (_d, db, j) = db_with_job();
        assert!(db.claim_job(j, 100, Caps::global(1), "a").unwrap());
        // Horizon 100: the claim's heartbeat (100) is not older than it.
        assert!(!db.reap_flip_expired(j, 1, 100, 200).unwrap());
        assert!(db.heartbeat(j, 1, "a", Some(150)).unwrap());
        // A reaper that read heartbeat 100 and judged with horizon 140 loses to the
        // heartbeat at 150 that landed meanwhile.
        assert!(!db.reap_flip_expired(j, 1, 140, 200).unwrap());
        assert!(
            !db.reap_flip_expired(j, 2, 151, 200).unwrap(),
            "other attempt"
        );
        assert!(db.reap_flip_expired(j, 1, 151, 200).unwrap());
        assert!(
            !db.reap_flip_expired(j, 1, 151, 200).unwrap(),
            "rescued once"
        );
        let now = db.job(j).unwrap().unwrap();
        assert_eq!(
            (now.status, now.reap_reason.as_deref(), now.rescue_count),
            (JobStatus::Failed, Some("heartbeat-expired"), 1)
        );
        assert!(
            !db.heartbeat(j, 1, "a", Some(160)).unwrap(),
            "the supervisor must fence"
        );
        let clock = db.clock().unwrap();
        let wall = jiff::Timestamp::now().as_second();
        assert!(
            (clock - wall).abs() <= 2,
            "the database's clock {clock} vs {wall}"
        );
        // A re-run clears the host and the heartbeat.
        assert_eq!(db.rerun_job(j, 300).unwrap(), Some(2));
        let j = db.job(j).unwrap().unwrap();
        assert_eq!((j.host, j.heartbeat_at), (None, None));
    }

    #[test]
    fn claims_respect_the_limit_and_rerun_needs_an_ended_job() {
        let (_d, db, j) = db_with_job();
        assert!(
            !db.claim_job(j, 10, Caps::global(0), "h").unwrap(),
            "limit 0 starts nothing"
        );
        assert_eq!(db.rerun_job(j, 10).unwrap(), None, "queued is not ended");
        assert!(db.claim_job(j, 10, Caps::global(1), "h").unwrap());
        assert_eq!(db.rerun_job(j, 10).unwrap(), None, "running is not ended");
        assert!(db.stamp_supervisor(j, 1, 42, "/x.log").unwrap());
        assert!(
            !db.stamp_supervisor(j, 1, 43, "/x.log").unwrap(),
            "one supervisor"
        );
        assert!(db.cancel_job(j, JobStatus::Running, 1, 11).unwrap());
        assert!(!db.cancel_job(j, JobStatus::Running, 1, 11).unwrap());
        assert_eq!(db.job_log_path(j).unwrap().as_deref(), Some("/x.log"));
    }

    #[track_caller]
    fn assert_counts_match(db: &Db, after: &str) {
        let off: i64 = db
            .conn()
            .query_row(JOB_COUNTS_DRIFT, [], |r| r.get(0))
            .unwrap();
        assert_eq!(off, 0, "job_counts differ from count(*) after {after}");
        let queued: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM jobs WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            db.queued_count().unwrap(),
            queued,
            "queue length after {after}"
        );
        let total: i64 = db.job_counts().unwrap().values().sum();
        let rows: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, rows, "every job counted once after {after}");
    }

    #[test]
    fn kept_counts_match_count_star_after_every_kind_of_change() {
        let (_d, mut db, t) = db_with_task();
        let other = db
            .create_task(
                &NewTask {
                    project: "shop".into(),
                    ..crate::adapters::db::test_support::new_task(2)
                },
                Actor::Operator,
                "t",
                1,
            )
            .unwrap()
            .id();
        assert_counts_match(&db, "creating tasks");
        let Created::New(a) = db
            .enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap()
        else {
            panic!()
        };
        let Created::New(b) = db
            .enqueue_job(other, Agent::Analyst, Stage::Analysis, 1)
            .unwrap()
        else {
            panic!()
        };
        assert_counts_match(&db, "enqueue");
        db.enqueue_job(t, Agent::Analyst, Stage::Analysis, 2)
            .unwrap();
        assert_counts_match(&db, "an enqueue that found a live job");
        assert!(db.claim_job(a, 3, Caps::global(5), "h").unwrap());
        assert!(!db.claim_job(a, 3, Caps::global(5), "h").unwrap());
        assert_counts_match(&db, "claim");
        assert!(db.finish_job(a, 1, JobStatus::Succeeded, 4).unwrap());
        assert_counts_match(&db, "finish");
        assert_eq!(db.rerun_job(a, 5).unwrap(), Some(2));
        assert_counts_match(&db, "re-run");
        assert!(db.claim_job(a, 6, Caps::global(5), "h").unwrap());
        assert!(db
            .reap_flip(a, 2, JobStatus::Failed, Tier::DeadPid, 7)
            .unwrap());
        assert_counts_match(&db, "reap flip");
        assert!(db.cancel_job(b, JobStatus::Queued, 1, 8).unwrap());
        assert_counts_match(&db, "cancel");
        // A move cancels queued jobs of other stages and enqueues the new stage's.
        db.enqueue_job(t, Agent::Analyst, Stage::Analysis, 9)
            .unwrap();
        db.move_task(&crate::adapters::db::Move::new(
            t,
            Stage::Analysis,
            Stage::Development,
            "t",
            Actor::Operator,
            10,
        ))
        .unwrap();
        assert_counts_match(&db, "a move");
        // A write rolled back (a crash inside the transaction) leaves the counts as the
        // rows are.
        {
            let tx = db.conn_mut().transaction().unwrap();
            tx.execute(
                "UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'",
                [],
            )
            .unwrap();
            enqueue_in(&tx, other, Agent::Reviewer, Stage::Review, 11).unwrap();
            drop(tx);
        }
        assert_counts_match(&db, "a rolled-back transaction");
        db.conn()
            .execute("DELETE FROM jobs WHERE id = ?1", [b])
            .unwrap();
        assert_counts_match(&db, "a delete");
        let counts = db.job_counts().unwrap();
        assert_eq!(
            counts.len(),
            JobStatus::ALL.len(),
            "every status, zeros included"
        );
    }

    #[test]
    fn queue_heads_are_the_oldest_of_each_project_and_kind_whatever_the_queue_behind() {
        let (_d, mut db) = crate::adapters::db::test_support::db();
        // Two projects, five queued development jobs each, then one deploy-staging job
        // each (the newest): the heads are the two oldest of each project's development
        // jobs and each project's staging job, oldest first.
        let mut ids = std::collections::HashMap::new();
        for n in 1..=12u32 {
            let project = if n % 2 == 0 { "shop" } else { "orch" };
            let t = db
                .create_task(
                    &NewTask {
                        project: project.into(),
                        ..crate::adapters::db::test_support::new_task(n)
                    },
                    Actor::Operator,
                    "t",
                    1,
                )
                .unwrap()
                .id();
            let (agent, stage) = if n > 10 {
                (Agent::Deployer, Stage::DeployStaging)
            } else {
                (Agent::Developer, Stage::Development)
            };
            let job = db.enqueue_job(t, agent, stage, i64::from(n)).unwrap().id();
            ids.insert(n, job);
        }
        let heads = db.queued_heads(2, false).unwrap();
        let got: Vec<(i64, &str, bool)> = heads
            .iter()
            .map(|q| (q.id, q.project.as_str(), q.uses_staging))
            .collect();
        let want = |n: u32, p, staging| (ids[&n], p, staging);
        assert_eq!(
            got,
            vec![
                want(1, "orch", false),
                want(2, "shop", false),
                want(3, "orch", false),
                want(4, "shop", false),
                want(11, "orch", true),
                want(12, "shop", true),
            ]
        );
        // Holding branchless jobs: none of these tasks has its branch confirmed, so every
        // job but the analyst's waits; they are still listed, oldest first, as many as
        // there are slots.
        let held = db.queued_heads(2, true).unwrap();
        assert_eq!(held.len(), 6);
        assert!(held.iter().all(|q| q.branch_missing));
        assert_eq!(db.queued_count().unwrap(), 12);
    }

    #[test]
    fn migration_8_counts_the_jobs_already_there_and_gives_them_their_project() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open_unmigrated(&path).unwrap();
        db.migrate_to(7).unwrap();
        let t = db
            .create_task(
                &crate::adapters::db::test_support::new_task(1),
                Actor::Operator,
                "t",
                1,
            )
            .unwrap()
            .id();
        db.enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_counts_match(&db, "migration 8");
        assert_eq!(db.queued_count().unwrap(), 1);
        let project: String = db
            .conn()
            .query_row("SELECT project FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(project, "orch");
        let heads = db.queued_heads(4, false).unwrap();
        assert_eq!(heads.len(), 1);
    }

    /// Two tasks in `deploy-staging`, each with a queued deployer job; returns the path
    /// and the two job ids.
    fn two_staging_jobs() -> (tempfile::TempDir, std::path::PathBuf, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open(&path).unwrap();
        let mut jobs = Vec::new();
        for (i, project) in ["orch", "shop"].iter().enumerate() {
            let t = db
                .create_task(
                    &NewTask {
                        project: (*project).into(),
                        work_item_id: format!("w{i}"),
                        key: format!("T-{i}"),
                        title: "t".into(),
                        repo: format!("acme/{project}"),
                        branch: format!("t-{i}"),
                        priority: crate::core::priority::Priority::None,
                    },
                    Actor::Operator,
                    "t",
                    1,
                )
                .unwrap()
                .id();
            let Created::New(j) = db
                .enqueue_job(t, Agent::Deployer, Stage::DeployStaging, 1)
                .unwrap()
            else {
                panic!()
            };
            jobs.push(j);
        }
        (dir, path, jobs)
    }

    #[test]
    fn a_batch_claims_in_order_under_the_limit_and_one_staging_job_at_most() {
        let (_d, path, staging) = two_staging_jobs();
        let mut db = Db::open(&path).unwrap();
        let task = |j: i64| db.job(j).unwrap().unwrap().task_id;
        let (t0, t1) = (task(staging[0]), task(staging[1]));
        let mut enqueue =
            |t: i64, agent: Agent, stage: Stage| db.enqueue_job(t, agent, stage, 1).unwrap().id();
        let d0 = enqueue(t0, Agent::Developer, Stage::Development);
        let d1 = enqueue(t1, Agent::Developer, Stage::Development);
        let a0 = enqueue(t0, Agent::Analyst, Stage::Analysis);
        let a1 = enqueue(t1, Agent::Analyst, Stage::Analysis);
        assert!(db.claim_job(d0, 5, Caps::global(4), "a").unwrap());
        // 1 running, limit 4: room for 3. d0 is taken; of the two staging jobs one runs.
        let b = db
            .claim_batch(
                &[d0, staging[0], staging[1], d1, a0, a1],
                10,
                Caps::global(4),
                "b",
            )
            .unwrap();
        assert_eq!(b.claimed, vec![staging[0], d1, a0]);
        assert_eq!(b.lost, vec![d0, staging[1]]);
        assert_eq!(b.untried, vec![a1], "no slot left for it");
        for j in &b.claimed {
            let job = db.job(*j).unwrap().unwrap();
            assert_eq!(
                (job.status, job.host.as_deref(), job.heartbeat_at),
                (JobStatus::Running, Some("b"), Some(10))
            );
        }
        assert_eq!(db.job(a1).unwrap().unwrap().status, JobStatus::Queued);
        assert_eq!(db.claim(a1, 11, Caps::global(4), "b").unwrap(), Claim::Full);
        assert_eq!(db.claim(d0, 11, Caps::global(9), "b").unwrap(), Claim::Lost);
        // More ids than one statement takes: every one claimed once.
        let many: Vec<i64> = (0..2 * CLAIM_CHUNK as u32 + 3)
            .map(|i| {
                let t = db
                    .create_task(
                        &crate::adapters::db::test_support::new_task(100 + i),
                        Actor::Operator,
                        "t",
                        1,
                    )
                    .unwrap()
                    .id();
                db.enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
                    .unwrap()
                    .id()
            })
            .collect();
        let b = db.claim_batch(&many, 12, Caps::global(1000), "c").unwrap();
        assert_eq!(b.claimed, many);
        assert!(b.lost.is_empty() && b.untried.is_empty());
        assert_eq!(db.running_on_host("c").unwrap() as usize, many.len());
    }

    #[test]
    fn the_reap_page_fetches_exactly_what_the_core_rule_says_a_reap_reads() {
        use crate::core::reap::reap_reads;
        let (_d, mut db) = crate::adapters::db::test_support::db();
        // (host, heartbeat_at, started_at) of running jobs; a reap on "a", horizon 100.
        let rows: [(Option<&str>, Option<i64>, Option<i64>); 9] = [
            (Some("a"), Some(500), Some(1)),
            (None, None, None),
            (None, Some(500), Some(500)),
            (Some("b"), Some(99), Some(1)),
            (Some("b"), Some(100), Some(1)),
            (Some("b"), Some(500), Some(1)),
            (Some("b"), None, Some(99)),
            (Some("b"), None, Some(100)),
            (Some("b"), None, None),
        ];
        let mut want = Vec::new();
        for (n, (host, beat, started)) in rows.iter().enumerate() {
            let t = db
                .create_task(
                    &crate::adapters::db::test_support::new_task(n as u32 + 1),
                    Actor::Operator,
                    "t",
                    1,
                )
                .unwrap()
                .id();
            let j = db
                .enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
                .unwrap()
                .id();
            db.conn()
                .execute(
                    "UPDATE jobs SET status = 'running', host = ?2, heartbeat_at = ?3,
                            started_at = ?4 WHERE id = ?1",
                    params![j, *host, *beat, *started],
                )
                .unwrap();
            if reap_reads(*host, "a", beat.or(*started), 100) {
                want.push(j);
            }
        }
        let got: Vec<i64> = db
            .running_page((i64::MIN, i64::MIN), 100, "a", 100)
            .unwrap()
            .into_iter()
            .map(|((_, id), _)| id)
            .collect();
        assert_eq!(got, want);
        assert_eq!(want.len(), 5, "3 by pid, 2 of b's expired");
        assert_eq!(db.running_elsewhere("a").unwrap(), 6);
    }

    #[test]
    fn the_claim_guard_keeps_staging_to_one_job_across_connections() {
        let (_d, path, jobs) = two_staging_jobs();
        // Two passes on their own connections, each sure it may start "its" job under a
        // limit of 5: the SQL guard lets one through.
        let a = Db::open(&path).unwrap();
        let b = Db::open(&path).unwrap();
        assert!(a.claim_job(jobs[0], 10, Caps::global(5), "h").unwrap());
        assert!(
            !b.claim_job(jobs[1], 10, Caps::global(5), "h").unwrap(),
            "staging is held"
        );
        let holders = b.staging_holders().unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(
            (holders[0].job_id, holders[0].key.as_str()),
            (jobs[0], "T-0")
        );
        // Once the holder ended, the other claims staging.
        assert!(a.finish_job(jobs[0], 1, JobStatus::Succeeded, 11).unwrap());
        assert!(b.staging_holders().unwrap().is_empty());
        assert!(b.claim_job(jobs[1], 12, Caps::global(5), "h").unwrap());
        // queued_heads marks the staging jobs.
        let (_d, path, jobs) = two_staging_jobs();
        let heads = Db::open(&path).unwrap().queued_heads(1, true).unwrap();
        assert_eq!(heads.iter().map(|q| q.id).collect::<Vec<_>>(), jobs);
        assert!(heads.iter().all(|q| q.uses_staging));
    }

    #[test]
    fn racing_claims_never_put_two_jobs_on_staging() {
        for _ in 0..20 {
            let (_d, path, jobs) = two_staging_jobs();
            let barrier = std::sync::Barrier::new(2);
            let won: Vec<bool> = std::thread::scope(|s| {
                let handles: Vec<_> = jobs
                    .iter()
                    .map(|&j| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            let db = Db::open(path).unwrap();
                            barrier.wait();
                            db.claim_job(j, 10, Caps::global(5), "h").unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
            let db = Db::open(&path).unwrap();
            assert_eq!(db.staging_holders().unwrap().len(), 1);
        }
    }
}
