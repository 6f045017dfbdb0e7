//! `orch status`: the queue at a glance, for people (text), scripts (`--json`) and
//! scrapers (`--prometheus FILE`, node_exporter's textfile format, written atomically).

use std::path::PathBuf;

use anyhow::Result;

use crate::adapters::db::{Db, Engine, PassRecord};
use crate::adapters::fs::write_atomic_readable;
use crate::adapters::lease::{LeaseFile, MergeLease};
use crate::adapters::process::liveness;
use crate::clock::format_unix;
use crate::core::job::{JobStatus, Liveness};
use crate::core::status::{
    render_prometheus, render_text, EscalatedTask, HoldView, LeaseView, PassView, PrometheusExtras,
    RunningJob, StagingHolderView, StagingView, StatusReport,
};
use crate::exit::ExitStatus;
use crate::ops::merge::MERGE_LEASE_ROW;
use crate::ops::pass::PassContext;

/// How many running jobs and escalated tasks the report lists one by one.
const LIST_LIMIT: usize = 20;

/// Show the queue: jobs, running jobs, tasks by stage, escalations, holds, last passes
///
/// Reads only. Exit codes: 0 shown, 2 the database could not be read.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,

    /// Also write the node_exporter textfile format to FILE (atomically: write, then rename)
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

/// Reads the merge lease for the report (without its lock: a snapshot): the file of
/// `state_dir` on SQLite, the `merge` row on PostgreSQL (where hosts share no state dir).
fn lease_view(db: &Db, state_dir: &std::path::Path, now: i64) -> Result<Option<LeaseView>> {
    if db.engine() == Engine::Postgres {
        return Ok(db
            .lease_row(MERGE_LEASE_ROW)?
            .and_then(|r| LeaseView::of_row(&r, now)));
    }
    Ok(match MergeLease::new(state_dir).read()? {
        LeaseFile::Free => None,
        LeaseFile::Malformed(why) => Some(LeaseView::malformed(why)),
        LeaseFile::Held(l) => Some(LeaseView::held(&l, l.judge(now), now)),
    })
}

/// Runs `status`.
///
/// # Errors
/// When the database cannot be read or the Prometheus file written.
pub fn run(args: &StatusArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let db = ctx.open_db()?;
    let mut report = gather(&db, ctx.now_secs())?;
    let state_dir = &ctx.config.settings.state_dir;
    report.post_deploy = crate::ops::post_deploy::armed_windows(
        &crate::adapters::windows::WindowStore::new(state_dir, &db, report.generated_at_unix),
        state_dir,
        report.generated_at_unix,
    );
    report.lease = lease_view(
        &db,
        &ctx.config.settings.state_dir,
        report.generated_at_unix,
    )?;
    if let Some(path) = &args.prometheus {
        let extra = PrometheusExtras {
            running_not_alive: running_not_alive(&db, report.running_total)?,
            version: crate::build_info::VERSION.into(),
            revision: crate::build_info::REVISION.into(),
            projects: ctx
                .config
                .pipeline
                .projects
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            plane_budget: db.plane_budget()?.map(|b| (b.remaining, b.seen_at)),
        };
        write_atomic_readable(path, render_prometheus(&report, &extra).as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(ExitStatus::Success)
}

/// Counts the running jobs whose process is not alive, over all `running_total` of them
/// (liveness is read from `/proc`, so it cannot be a SQL count; running jobs are few,
/// bounded by `ORCH_MAX_CONCURRENCY`).
///
/// # Errors
/// On SQL errors.
fn running_not_alive(db: &Db, running_total: i64) -> Result<u64> {
    let all = usize::try_from(running_total.max(0)).unwrap_or(usize::MAX);
    let dead = db
        .running_jobs(all)?
        .into_iter()
        .filter(|(j, _, _)| match j.pid {
            Some(pid) => liveness(pid, j.pid_start_time) != Liveness::Alive,
            None => true,
        })
        .count();
    Ok(dead as u64)
}

/// Reads everything the report shows.
///
/// # Errors
/// On SQL errors.
fn gather(db: &Db, now: i64) -> Result<StatusReport> {
    let jobs = db.job_counts()?;
    let running_total = jobs.get(&JobStatus::Running).copied().unwrap_or(0);
    // The listed tasks' totals: one primary-key read each, at most 2 x LIST_LIMIT.
    let task_spend = |task_id: i64| -> Result<Option<serde_json::Value>> {
        let t = db.task_spend(task_id)?;
        Ok((t.jobs > 0).then(|| crate::core::status::spend_json(&t)))
    };
    let running = db
        .running_jobs(LIST_LIMIT)?
        .into_iter()
        .map(|(j, key, priority)| -> Result<RunningJob> {
            Ok(RunningJob {
                spend: task_spend(j.task_id)?,
                id: j.id,
                task_id: j.task_id,
                key,
                priority,
                agent: j.agent.to_string(),
                stage: j.stage.to_string(),
                attempt: j.attempt,
                pid: j.pid,
                age_s: j.started_at.map(|s| now - s).unwrap_or(0),
                liveness: match j.pid {
                    Some(pid) => liveness(pid, j.pid_start_time).as_str().to_string(),
                    None => "no-pid".to_string(),
                },
            })
        })
        .collect::<Result<_>>()?;
    let escalated_total = db.escalated_count()?;
    let spend = db
        .project_spend()?
        .iter()
        .map(|(p, t)| (p.clone(), crate::core::status::spend_json(t)))
        .collect();
    let escalated = db
        .escalated_tasks(LIST_LIMIT)?
        .into_iter()
        .map(|t| -> Result<EscalatedTask> {
            Ok(EscalatedTask {
                spend: task_spend(t.id)?,
                id: t.id,
                key: t.key,
                priority: t.priority,
                project: t.project,
                stage: t.stage.to_string(),
                reason: t.escalation_reason.unwrap_or_default(),
                since: t.escalated_at.map(format_unix).unwrap_or_default(),
            })
        })
        .collect::<Result<_>>()?;
    let passes = db
        .passes()?
        .into_iter()
        .map(|p| pass_view(p, now))
        .collect();
    let holders: Vec<StagingHolderView> = db
        .staging_holders()?
        .into_iter()
        .map(|h| StagingHolderView {
            job_id: h.job_id,
            task_id: h.task_id,
            key: h.key,
            age_s: h.started_at.map(|s| now - s).unwrap_or(0),
        })
        .collect();
    let staging = StagingView {
        state: if holders.is_empty() { "free" } else { "held" }.into(),
        holders,
    };
    Ok(StatusReport {
        generated_at: format_unix(now),
        generated_at_unix: now,
        schema_version: db.schema_version()?,
        jobs: jobs.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
        running,
        running_total,
        tasks: db
            .task_counts()?
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect(),
        escalated,
        escalated_total,
        spend,
        deliveries: db.delivery_counts()?,
        passes,
        post_deploy: Vec::new(),
        lease: None,
        staging,
        holds: db
            .holds(now)?
            .iter()
            .map(|h| HoldView::of(h, now))
            .collect(),
    })
}

fn pass_view(p: PassRecord, now: i64) -> PassView {
    PassView {
        started_at: format_unix(p.started_at),
        started_at_unix: p.started_at,
        age_s: now - p.started_at,
        command: p.command,
        duration_ms: p.duration_ms,
        outcome: p.outcome,
        counts: p.counts,
    }
}
