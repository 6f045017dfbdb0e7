//! `orch job list|enqueue|cancel`: jobs for the person at the terminal and for scripts.

use anyhow::{bail, Context as _, Result};

use crate::adapters::db::Created;
use crate::core::job::JobStatus;
use crate::core::reap::JobLiveness;
use crate::core::stage::Agent;
use crate::exit::ExitStatus;
use crate::ops::jobs::job_json;
use crate::ops::observe::observe;
use crate::ops::pass::PassContext;
use crate::ops::stop::stop_agent;

/// List, enqueue and cancel jobs
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// List jobs, newest first
    List(JobListArgs),
    /// Enqueue a job for a task's current stage (once: an existing live job is kept)
    ///
    /// On an escalated task it also clears the escalation: a person running the
    /// stage's agent again has taken the task back.
    ///
    /// Exit codes: 0 enqueued (or already queued or running), 2 unknown task or agent,
    /// or an agent that does not work at the task's stage.
    Enqueue(EnqueueArgs),
    /// Cancel a job: a queued one is dropped; a running one has its process group
    /// terminated (TERM, then KILL after ORCH_REAPER_KILL_GRACE_S), then is flipped
    ///
    /// An agent of another user (ORCH_AGENT_USER) is stopped through its supervisor;
    /// one that cannot be stopped leaves the job running. Exit codes: 0 cancelled, 1 the
    /// job had already ended, 2 unknown job, or its agent could not be stopped.
    Cancel(CancelArgs),
}

/// Flags of `job list`.
#[derive(Debug, clap::Args)]
pub struct JobListArgs {
    /// Only jobs with this status (queued, running, succeeded, failed, cancelled)
    #[arg(long, value_parser = parse_status)]
    pub status: Option<JobStatus>,
    /// At most this many
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `job enqueue`.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// Task id, key or Plane work item id
    #[arg(long)]
    pub task: String,
    /// The agent (analyst, developer, reviewer, deployer)
    #[arg(long)]
    pub agent: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `job cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job id
    pub id: i64,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_status(s: &str) -> Result<JobStatus, String> {
    s.parse()
}

/// Runs a `job` subcommand.
///
/// # Errors
/// When the database cannot be used or a value is bad.
pub fn run(cmd: &JobCommand, ctx: &PassContext) -> Result<ExitStatus> {
    match cmd {
        JobCommand::List(a) => list(a, ctx),
        JobCommand::Enqueue(a) => enqueue(a, ctx),
        JobCommand::Cancel(a) => cancel(a, ctx),
    }
}

fn list(args: &JobListArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let db = ctx.open_db()?;
    let jobs = db.list_jobs(args.status, args.limit)?;
    if args.json {
        let out: Vec<_> = jobs.iter().map(job_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitStatus::Success);
    }
    if jobs.is_empty() {
        println!("no jobs");
    }
    for j in &jobs {
        println!(
            "job {} task {} {} ({}) {} attempt {} pid {} exit {}{}",
            j.id,
            j.task_id,
            j.agent,
            j.stage,
            j.status,
            j.attempt,
            j.pid.map_or("-".into(), |p| p.to_string()),
            j.exit_code.map_or("-".into(), |c| c.to_string()),
            j.reap_reason
                .as_deref()
                .map(|r| format!(" reaped ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitStatus::Success)
}

fn enqueue(args: &EnqueueArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let agent = Agent::parse(&args.agent).with_context(|| {
        format!(
            "unknown agent {:?}; expected analyst, developer, reviewer or deployer",
            args.agent
        )
    })?;
    let mut db = ctx.open_db()?;
    let task = db
        .find_task(&args.task)?
        .with_context(|| format!("no task {:?}", args.task))?;
    match task.stage.agent() {
        Some(a) if a == agent => {}
        Some(a) => bail!(
            "task {} is at {}, whose agent is {a}, not {agent}",
            task.key,
            task.stage
        ),
        None => bail!(
            "task {} is at {}, which runs no agent",
            task.key,
            task.stage
        ),
    }
    let (created, cleared) =
        db.enqueue_job_by_operator(task.id, agent, task.stage, ctx.now_secs())?;
    if let Some(why) = &cleared {
        log::warn!(
            "task {}: escalation cleared ({why}): a person runs its {agent} again",
            task.key
        );
    }
    let (id, new) = match created {
        Created::New(id) => (id, true),
        Created::Existing(id) => (id, false),
    };
    if args.json {
        let job = db.job(id)?.context("the job was just enqueued")?;
        let mut out = job_json(&job);
        out["created"] = serde_json::Value::Bool(new);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if new {
        println!(
            "job {id} queued: {agent} for {} at {}",
            task.key, task.stage
        );
    } else {
        println!(
            "job {id} already live for {} at {}; nothing added",
            task.key, task.stage
        );
    }
    Ok(ExitStatus::Success)
}

fn cancel(args: &CancelArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let db = ctx.open_db()?;
    let job = db
        .job(args.id)?
        .with_context(|| format!("no job with id {}", args.id))?;
    let now = ctx.now_secs();
    let done = match job.status {
        JobStatus::Queued => db.cancel_job(job.id, JobStatus::Queued, job.attempt, now)?,
        JobStatus::Running => {
            // Only a process that is still the one stamped (pids are reused).
            if observe(&job) == JobLiveness::Alive {
                let stop = stop_agent(&job, ctx.config.settings.reaper_kill_grace_s.0);
                let line = stop.describe(job.supervisor_pid);
                crate::commands::reap::note_in_job_log(
                    &job,
                    &format!("== job cancel: agent {line}"),
                );
                if !stop.stopped() {
                    log::error!("job cancel: job {} agent {line}", job.id);
                    eprintln!(
                        "error: job {} not cancelled: its agent {line}; the job stays running. Stop it as root (kill -KILL -- -{}) or with systemctl stop orch-job@{}.service",
                        job.id, stop.pgid, job.id
                    );
                    return Ok(ExitStatus::Error);
                }
                log::info!("job cancel: job {} agent {line}", job.id);
            }
            // Its supervisor may have flipped it to failed first: it ended all the same.
            db.cancel_job(job.id, JobStatus::Running, job.attempt, now)?
                || db
                    .job(job.id)?
                    .is_some_and(|j| j.attempt == job.attempt && j.status.is_terminal())
        }
        _ => false,
    };
    let after = db.job(job.id)?.context("the job exists")?;
    if args.json {
        let mut out = job_json(&after);
        out["cancelled"] = serde_json::Value::Bool(done);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if done {
        println!("job {} cancelled (was {})", job.id, job.status);
    } else {
        println!("job {} not cancelled: it is {}", job.id, after.status);
    }
    Ok(if done {
        ExitStatus::Success
    } else {
        ExitStatus::No
    })
}
