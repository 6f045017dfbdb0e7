//! `orch task add|list|show|move`: tasks for the person at the terminal and for scripts.

use anyhow::{bail, Context as _, Result};
use log::Level;

use crate::clock::format_unix;
use crate::core::branch::branch_name;
use crate::core::round;
use crate::core::stage::{self, Actor, Stage};
use crate::core::task::{NewTask, StageEvent, Task};
use crate::exit::ExitStatus;
use crate::logging::say;
use crate::ops::jobs::job_json;
use crate::ops::moves::{self, MergeEvidence, MoveRequest};
use crate::ops::pass::PassContext;

/// Add, list, show and move tasks
#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Start a task by hand: the same path as a Plane start delivery, without Plane
    ///
    /// Stores the task once per work item with its analyst job (queued once), then
    /// creates its branch on Gitea from the project's default branch. When Gitea is
    /// down or ORCH_GITEA_URL is unset the branch is left for the next reconcile pass
    /// and a `left for reconcile: branch ...` line (JSON: left_for_reconcile) says so.
    /// Running it again finishes what is left. Exit codes: 0 the task and its job are
    /// stored (or already were), whatever was left for reconcile; 2 unknown project,
    /// bad value or database error (nothing stored).
    Add(AddArgs),
    /// List tasks, oldest first
    List(TaskListArgs),
    /// Show one task with its stage events and jobs
    Show(ShowArgs),
    /// Move a task along the pipeline table without evaluating gates (recorded as operator)
    ///
    /// The move has every effect of the transition: the next stage's job is enqueued.
    /// Exit codes: 0 moved, 1 the table does not allow the move, 2 error.
    Move(MoveArgs),
}

/// Flags of `task add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Project name from the pipeline file
    #[arg(long)]
    pub project: String,
    /// Plane work item id
    #[arg(long)]
    pub work_item: String,
    /// Task key [default: the project identifier, a dash, the first 8 characters of the work item id]
    #[arg(long)]
    pub key: Option<String>,
    /// Title (used for the branch name)
    #[arg(long, default_value = "")]
    pub title: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `task list`.
#[derive(Debug, clap::Args)]
pub struct TaskListArgs {
    /// Only tasks at this stage
    #[arg(long, value_parser = parse_stage)]
    pub stage: Option<Stage>,
    /// At most this many
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `task show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Task id, key (ORCH-65) or Plane work item id
    pub task: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Flags of `task move`.
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// Task id, key or Plane work item id
    pub task: String,
    /// The stage to move to
    #[arg(long, value_parser = parse_stage)]
    pub to: Stage,
    /// Why (recorded in the stage event)
    #[arg(long)]
    pub reason: String,
    /// For deploy -> development only: whether the move starts a new round (`new`: the
    /// PR was merged) or keeps it (`keep`: it was not), instead of asking Gitea.
    /// Without it, the move is refused (exit 1) while Gitea cannot tell
    #[arg(long, value_enum)]
    pub round: Option<RoundChoice>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// The operator's answer to whether a `deploy → development` move starts a new round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundChoice {
    /// The PR was merged: a fresh branch, no PR, no validated revision.
    New,
    /// The PR was not merged: the branch, PR and validated revision stay.
    Keep,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    s.parse()
}

/// Runs a `task` subcommand.
///
/// # Errors
/// When the database cannot be used or a value is bad.
pub fn run(cmd: &TaskCommand, ctx: &PassContext) -> Result<ExitStatus> {
    match cmd {
        TaskCommand::Add(a) => add(a, ctx),
        TaskCommand::List(a) => list(a, ctx),
        TaskCommand::Show(a) => show(a, ctx),
        TaskCommand::Move(a) => move_task(a, ctx),
    }
}

fn add(args: &AddArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let project = ctx
        .config
        .pipeline
        .project(&args.project)
        .with_context(|| {
            let known: Vec<&str> = ctx
                .config
                .pipeline
                .projects
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            format!(
                "unknown project {:?}; the pipeline file has: {}",
                args.project,
                if known.is_empty() {
                    "(none)".into()
                } else {
                    known.join(", ")
                }
            )
        })?;
    let work_item = args.work_item.trim();
    if work_item.is_empty() || work_item.len() > 100 || work_item.chars().any(|c| c.is_control()) {
        bail!("--work-item must be a Plane work item id (1 to 100 printable characters)");
    }
    let key = match &args.key {
        Some(k) => k.trim().to_string(),
        // The key rule every start shares (a start delivery without a sequence id).
        None => crate::core::intake::task_key(
            project.plane_identifier.as_deref(),
            &project.name,
            None,
            work_item,
        ),
    };
    crate::adapters::artefacts::task_dir(&ctx.config.settings.artefacts_dir, &key)
        .context("--key is not usable")?;
    let new = NewTask {
        project: project.name.clone(),
        work_item_id: work_item.to_string(),
        key: key.clone(),
        title: args.title.clone(),
        repo: project.repo.clone(),
        branch: branch_name(&key, &args.title),
        // Plane's value comes with the next reconcile listing.
        priority: crate::core::priority::Priority::None,
    };
    let mut db = ctx.open_db()?;
    let started = moves::start_task(
        ctx,
        &mut db,
        &new,
        Actor::Operator,
        "started by hand (task add)",
        None,
    )?;
    let task = db.task(started.task_id)?.expect("just started");
    // What this run could not do and the next reconcile pass completes.
    let left: Vec<String> = started
        .branch
        .left_because()
        .map(|why| format!("branch {} ({why})", task.branch))
        .into_iter()
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "task": task_json(&task),
                "created": started.created,
                "branch": started.branch,
                "enqueued_job": started.enqueued_job,
                "left_for_reconcile": left,
            }))?
        );
    } else {
        let job = started
            .enqueued_job
            .map(|j| format!(", analyst job {j} queued"))
            .unwrap_or_default();
        let branch = if started.branch.is_left() {
            String::new()
        } else {
            format!(", branch {} {}", task.branch, started.branch.describe())
        };
        if started.created {
            println!(
                "task {} ({}) created at analysis{job}{branch}",
                task.key, task.id
            );
        } else {
            println!(
                "task {} ({}) already exists at {}{job}{branch}",
                task.key, task.id, task.stage
            );
        }
        for l in &left {
            println!("left for reconcile: {l}");
        }
    }
    log::info!(
        "task add: {} created={} job={:?} branch={}",
        task.key,
        started.created,
        started.enqueued_job,
        started.branch.describe()
    );
    Ok(ExitStatus::Success)
}

/// Returns the stable JSON shape of a task.
fn task_json(t: &Task) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "key": t.key,
        "project": t.project,
        "work_item_id": t.work_item_id,
        "title": t.title,
        "repo": t.repo,
        "branch": t.branch,
        "branch_ready": t.branch_ready_at.is_some(),
        "pr_number": t.pr_number,
        "stage": t.stage,
        "stage_entered_at": format_unix(t.stage_entered_at),
        "validated_revision": t.validated_revision,
        "developer_retries": t.developer_retries,
        "round": t.round,
        "priority": t.priority,
        "escalated": t.escalated_at.is_some(),
        "escalation_reason": t.escalation_reason,
        "created_at": format_unix(t.created_at),
        "updated_at": format_unix(t.updated_at),
    })
}

/// What caused an event beyond its actor: the delivery, and the agent it came from.
fn provenance(e: &StageEvent) -> String {
    let mut out = String::new();
    match (e.delivery, &e.delivery_id) {
        (Some(row), Some(id)) => out.push_str(&format!(" (delivery {id}, #{row})")),
        (Some(row), None) => out.push_str(&format!(" (delivery #{row}, no delivery id)")),
        _ => {}
    }
    if let Some(job) = e.agent_job {
        out.push_str(&format!(" [FROM INSIDE job {job}'s agent]"));
    }
    out
}

fn event_json(e: &StageEvent) -> serde_json::Value {
    serde_json::json!({
        "from": e.from_stage,
        "to": e.to_stage,
        "reason": e.reason,
        "actor": e.actor,
        "at": format_unix(e.at),
        "delivery": e.delivery,
        "delivery_id": e.delivery_id,
        "agent_job": e.agent_job,
    })
}

fn list(args: &TaskListArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let db = ctx.open_db()?;
    let tasks = db.list_tasks(args.stage, args.limit)?;
    if args.json {
        let out: Vec<_> = tasks.iter().map(task_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitStatus::Success);
    }
    if tasks.is_empty() {
        println!(
            "no tasks{}",
            args.stage.map(|s| format!(" at {s}")).unwrap_or_default()
        );
    }
    for t in &tasks {
        let esc = if t.escalated_at.is_some() {
            "  ESCALATED"
        } else {
            ""
        };
        println!(
            "{:>5}  {:<12} {:<14} {:<10} {}{esc}",
            t.id,
            t.key,
            t.stage.as_str(),
            t.project,
            t.title
        );
    }
    Ok(ExitStatus::Success)
}

fn find(ctx: &PassContext, reference: &str) -> Result<(crate::adapters::db::Db, Task)> {
    let db = ctx.open_db()?;
    let task = db.find_task(reference)?.with_context(|| {
        format!("no task {reference:?} (give an id, a key such as ORCH-65, or a work item id)")
    })?;
    Ok((db, task))
}

fn show(args: &ShowArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let (db, t) = find(ctx, &args.task)?;
    let events = db.stage_events(t.id)?;
    let jobs = db.task_jobs(t.id)?;
    let spend = db.task_spend(t.id)?;
    let usage = db.task_job_usage(t.id)?;
    if args.json {
        let mut out = task_json(&t);
        out["events"] = events.iter().map(event_json).collect();
        out["jobs"] = jobs
            .iter()
            .map(|j| {
                let mut v = job_json(j);
                v["usage"] = usage
                    .get(&j.id)
                    .map_or(serde_json::Value::Null, |u| u.to_json());
                v
            })
            .collect();
        out["spend"] = crate::core::status::spend_json(&spend);
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitStatus::Success);
    }
    println!("task {} ({}) {}", t.key, t.id, t.title);
    let on_gitea = match t.branch_ready_at {
        Some(_) => "",
        None if matches!(t.stage, Stage::Done | Stage::Cancelled) => "",
        None => " (not on gitea yet: reconcile creates it)",
    };
    println!(
        "  project {}  repo {}  branch {}{on_gitea}",
        t.project, t.repo, t.branch
    );
    println!(
        "  stage {} since {}",
        t.stage,
        format_unix(t.stage_entered_at)
    );
    println!(
        "  PR {}  validated revision {}",
        t.pr_number
            .map(|n| format!("#{n}"))
            .unwrap_or_else(|| "-".into()),
        t.validated_revision.as_deref().unwrap_or("-")
    );
    println!(
        "  round {}  developer retries {}  priority {}",
        t.round, t.developer_retries, t.priority
    );
    println!("  spend {}", crate::core::status::spend_text(&spend));
    if let Some(at) = t.escalated_at {
        println!(
            "  ESCALATED since {}: {}",
            format_unix(at),
            t.escalation_reason.as_deref().unwrap_or("")
        );
    }
    println!("stage events:");
    for e in &events {
        let from = e
            .from_stage
            .map(|s| s.to_string())
            .unwrap_or_else(|| "(new)".into());
        println!(
            "  {}  {from} -> {}  by {}{}: {}",
            format_unix(e.at),
            e.to_stage,
            e.actor,
            provenance(e),
            e.reason
        );
    }
    println!("jobs:");
    if jobs.is_empty() {
        println!("  none");
    }
    for j in &jobs {
        let exit = j
            .exit_code
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        let reap = j
            .reap_reason
            .as_deref()
            .map(|r| format!(" reaped: {r}"))
            .unwrap_or_default();
        let spent = usage
            .get(&j.id)
            .map(|u| format!("  usage: {}", u.describe()))
            .unwrap_or_default();
        println!(
            "  job {} {} ({}) attempt {} {}{exit}{reap}{spent}",
            j.id, j.agent, j.stage, j.attempt, j.status
        );
    }
    Ok(ExitStatus::Success)
}

fn move_task(args: &MoveArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let reason = args.reason.trim();
    if reason.is_empty() {
        bail!("--reason must say why (it is recorded in the stage event)");
    }
    let (mut db, t) = find(ctx, &args.task)?;
    if stage::transition(t.stage, args.to).is_none() {
        let allowed: Vec<&str> = stage::transitions_from(t.stage)
            .map(|e| e.to.as_str())
            .collect();
        let allowed = if allowed.is_empty() {
            "none (terminal)".to_string()
        } else {
            allowed.join(", ")
        };
        say(
            Level::Warn,
            &format!(
                "task {} is at {}; the pipeline table does not allow {} -> {} (allowed: {allowed})",
                t.key, t.stage, t.stage, args.to
            ),
        );
        return Ok(ExitStatus::No);
    }
    let moved = match args.round {
        Some(choice) => {
            if !round::needs_merge_evidence(t.stage, args.to) {
                bail!(
                    "--round applies only to deploy -> development (task {} is at {})",
                    t.key,
                    t.stage
                );
            }
            let word = if choice == RoundChoice::New {
                "new"
            } else {
                "keep"
            };
            let reason = format!("{reason} (--round {word})");
            let merged = Ok(choice == RoundChoice::New);
            let req = MoveRequest::new(&t, args.to, &reason, Actor::Operator)
                .merge_evidence(MergeEvidence::Given(&merged));
            moves::move_task(ctx, &mut db, &req)?
        }
        None => match moves::move_task(
            ctx,
            &mut db,
            &MoveRequest::new(&t, args.to, reason, Actor::Operator),
        ) {
            Ok(moved) => moved,
            Err(e) => {
                let Some(u) = e.downcast_ref::<moves::RoundUndecided>() else {
                    return Err(e);
                };
                let pr = t
                    .pr_number
                    .map_or_else(|| "the task's PR".to_string(), |n| format!("PR #{n}"));
                say(
                    Level::Warn,
                    &format!(
                        "task {} not moved: {} -> {}: {}\n\
                         run the move again once Gitea answers, or say which round it is: \
                         --round new ({pr} was merged: a fresh branch from the default branch, no \
                         PR, no validated revision) or --round keep ({pr} was not merged: the \
                         developer goes on with branch {} and {pr})",
                        t.key, u.from, u.to, u.why, t.branch
                    ),
                );
                return Ok(ExitStatus::No);
            }
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&moved)?);
    } else {
        println!(
            "task {} moved {} -> {}{}",
            t.key,
            moved.from,
            moved.to,
            moved
                .enqueued_job
                .map(|j| format!("; job {j} queued"))
                .unwrap_or_default()
        );
    }
    Ok(ExitStatus::Success)
}
