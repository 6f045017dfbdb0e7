//! `orch dispatch`: starts queued jobs while fewer than `ORCH_MAX_CONCURRENCY` run.
//!
//! Loads the first queued jobs per project (by priority, then age), the running counts
//! and who holds staging, lets `core::dispatch::plan` choose (fair across projects, then
//! by priority, then oldest first, one
//! `deploy-staging` job at a time), claims each with one guarded UPDATE, then launches
//! `orch run-job <id>` with `ORCH_JOB_LAUNCHER`. A launch that fails flips the claimed job
//! to `failed` so it never sits `running` with nothing behind it. The deployer jobs of a
//! project on hold (`orch hold`) stay queued (`hold_waits` in the summary line).

use std::ffi::OsString;

use anyhow::{Context as _, Result};

use crate::adapters::db::Db;
use crate::adapters::spawn;
use crate::config::JobLauncher;
use crate::core::dispatch::{plan_slots, Caps, Wait};
use crate::core::job::JobStatus;
use crate::core::spend::{over_budget, Budget};
use crate::exit::ExitStatus;
use crate::ops::jobs::job_log_path;
use crate::ops::pass::{PassContext, PassOutcome};

/// Start queued jobs, fair across projects, by priority then age, up to ORCH_MAX_CONCURRENCY
///
/// Run by orch-dispatch.timer. One deploy-staging job runs at a time (staging is one
/// shared environment), whatever the limit. Priority is the task's Plane work item
/// priority (urgent, high, medium, low, none): the project with the fewest jobs running
/// gets the next slot, its most urgent (then oldest) job. Each job runs under `orch run-job <id>`, launched as
/// ORCH_JOB_LAUNCHER says (direct: a detached child; systemd: `systemctl start
/// orch-job@<id>.service`), on this host: the claim records ORCH_HOST_ID, and with
/// ORCH_MAX_CONCURRENCY_PER_HOST set no more than that many run here. A project on
/// hold (`orch hold`) starts no deployer job: they
/// stay queued, counted as hold_waits. Exit codes: 0 done (or nothing to start), 2 error, 75
/// another dispatch pass holds the lock.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// Say which jobs would start and why the others wait; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How to start run-job, over ORCH_JOB_LAUNCHER: `direct` or `systemd`.
    /// `orch-dispatch.service` passes `systemd`, since a value in its EnvironmentFile
    /// would otherwise win over the unit's own and start jobs inside the dispatch
    /// unit, which stops them when it ends
    #[arg(long, value_name = "direct|systemd")]
    pub launcher: Option<String>,
}

/// Runs one `dispatch` pass.
///
/// # Errors
/// When the database cannot be read or written.
pub fn run(args: &DispatchArgs, ctx: &PassContext) -> Result<ExitStatus> {
    ctx.run_pass("dispatch", args.dry_run, |db, _guard| {
        pass(ctx, db, args.dry_run)
    })
}

/// One dispatch pass over an open database (the caller holds the pass lock).
///
/// # Errors
/// When the database cannot be read or written.
pub fn pass(ctx: &PassContext, db: &mut Db, dry_run: bool) -> Result<PassOutcome> {
    let now = ctx.now_secs();
    let limit = ctx.config.settings.max_concurrency.0;
    let caps = Caps {
        limit,
        per_host: ctx.config.settings.per_host_cap(),
    };
    let host = ctx.config.settings.host_id();
    let running = db.running_by_project()?;
    let running_total: u32 = running.values().sum();
    let running_here = match caps.per_host {
        Some(_) => db.running_on_host(&host)?,
        None => 0,
    };
    let free = caps.free(running_total, running_here);
    // Only the first `free` jobs of each project (by priority, then age) can be picked
    // this pass. With Gitea
    // configured, a job whose task's branch is not confirmed there waits for reconcile.
    let hold_branchless = ctx.config.settings.gitea_url.is_some();
    // A project on hold (`orch hold`) starts none of its deployer jobs: they stay
    // queued. Read past them, so they cannot crowd the project's other jobs out.
    let on_hold = db.held_deployer_jobs(now)?;
    let queued: Vec<_> = if free == 0 {
        Vec::new()
    } else {
        let extra = u32::try_from(on_hold.len()).unwrap_or(u32::MAX);
        db.queued_heads(free.saturating_add(extra), hold_branchless)?
    }
    .into_iter()
    .filter(|q| !on_hold.iter().any(|(id, _)| *id == q.id))
    .collect();
    let queued_total = db.queued_count()?;
    let holders = db.staging_holders()?;
    let holder = holders.first().map(|h| h.job_id);
    let decided = plan_slots(&queued, &running, free, holder);
    let picked = decided.start;
    let staging_waits = decided
        .waits
        .iter()
        .filter(|(_, w)| matches!(w, Wait::StagingHeld { .. } | Wait::StagingTaken { .. }))
        .count() as i64;
    let branch_waits: Vec<i64> = decided
        .waits
        .iter()
        .filter(|(_, w)| *w == Wait::BranchMissing)
        .map(|(id, _)| *id)
        .collect();
    if dry_run {
        println!(
            "dispatch: {running_total} running, limit {limit}, {queued_total} queued: would start {}",
            picked.len()
        );
        match holders.first() {
            Some(h) => println!("  staging: held by job {} ({})", h.job_id, h.key),
            None => println!("  staging: free"),
        }
        let project = |id: i64| {
            queued
                .iter()
                .find(|q| q.id == id)
                .map_or("?", |q| q.project.as_str())
        };
        for id in &picked {
            match budget_stop(ctx, db, *id)? {
                Some((_, why)) => println!(
                    "  job {id} ({}): would not start: its task is escalated and the job cancelled: {why}",
                    project(*id)
                ),
                None => println!("  job {id} ({}): would start", project(*id)),
            }
        }
        for (id, wait) in &decided.waits {
            let why = match wait {
                Wait::NoSlot if caps.host_is_full(running_total, running_here) => format!(
                    "no free slot on host {host} (ORCH_MAX_CONCURRENCY_PER_HOST {}, {running_here} running here)",
                    caps.per_host.unwrap_or_default()
                ),
                Wait::NoSlot => format!("no free slot (limit {limit}, fair share across projects)"),
                Wait::StagingHeld { by_job } => format!(
                    "staging is held by deploy-staging job {by_job}{} (one deploy-staging job at a time)",
                    holders
                        .iter()
                        .find(|h| h.job_id == *by_job)
                        .map(|h| format!(" of {}", h.key))
                        .unwrap_or_default()
                ),
                Wait::StagingTaken { by_job } => format!(
                    "staging goes to deploy-staging job {by_job}, started first (one deploy-staging job at a time)"
                ),
                Wait::BranchMissing => BRANCH_MISSING.to_string(),
            };
            println!("  job {id} ({}): waits: {why}", project(*id));
        }
        for (id, project) in &on_hold {
            println!(
                "  job {id} ({project}): waits: {}",
                held_why(db, project, now)?
            );
        }
        if queued_total > (queued.len() + on_hold.len()) as i64 {
            println!(
                "  {} more queued jobs wait: no free slot",
                queued_total - (queued.len() + on_hold.len()) as i64
            );
        }
        return Ok(PassOutcome::ok(vec![
            ("queued", queued_total),
            ("running", i64::from(running_total)),
            ("started", 0),
            ("would_start", picked.len() as i64),
            ("staging_waits", staging_waits),
            ("branch_waits", branch_waits.len() as i64),
            ("hold_waits", on_hold.len() as i64),
        ]));
    }
    for id in &branch_waits {
        log::info!("dispatch: job {id} waits: {BRANCH_MISSING}");
    }
    for (id, project) in &on_hold {
        log::info!(
            "dispatch: job {id} stays queued: {}",
            held_why(db, project, now)?
        );
    }
    // Passes on several hosts read the same queue heads at once, and all but one lose
    // each claim: a lost claim goes on to the next job in the same order (fair across
    // projects, then priority, then age), from a few more heads per project than there
    // are slots, so every host fills its free slots in one pass.
    let order: Vec<i64> = if picked.is_empty() {
        Vec::new()
    } else {
        let extra = u32::try_from(on_hold.len()).unwrap_or(u32::MAX);
        let spares: Vec<_> = db
            .queued_heads(
                free.saturating_mul(CLAIM_SPARES).saturating_add(extra),
                hold_branchless,
            )?
            .into_iter()
            .filter(|q| !on_hold.iter().any(|(id, _)| *id == q.id))
            .collect();
        let all = u32::try_from(spares.len()).unwrap_or(u32::MAX);
        plan_slots(&spares, &running, all, holder).start
    };
    let mut started = 0i64;
    let mut lost = 0i64;
    let mut failed = 0i64;
    let mut budget_stopped = 0i64;
    // The slots this pass used: claims (launched or not) and over-budget stops.
    let mut used = 0u32;
    let mut rest = order.as_slice();
    while used < free && !rest.is_empty() {
        // Between batches, never within one: the rest start on the next pass.
        if ctx.bounds().stop_for_deadline("starting jobs") {
            break;
        }
        // The next batch: up to CLAIM_BATCH jobs of the free slots left, less the
        // jobs whose task is over its budget (each uses a slot of this pass).
        let mut batch = Vec::with_capacity(CLAIM_BATCH as usize);
        while (batch.len() as u32) < CLAIM_BATCH.min(free - used) {
            let Some((&id, after)) = rest.split_first() else {
                break;
            };
            rest = after;
            if let Some((task_id, why)) = budget_stop(ctx, db, id)? {
                budget_stopped += 1;
                used += 1;
                let (escalated, cancelled) = db.escalate_over_budget(task_id, &why, now)?;
                log::warn!(
                    "dispatch: job {id} not started: task {task_id} {}: {why} ({cancelled} queued job(s) cancelled; reconcile announces it)",
                    if escalated { "escalated" } else { "already escalated" }
                );
                continue;
            }
            batch.push(id);
        }
        if batch.is_empty() {
            break;
        }
        let claims = db.claim_batch(&batch, now, caps, &host)?;
        for id in &claims.lost {
            lost += 1;
            log::info!(
                "dispatch: job {id} not claimed: another pass took it, or staging was taken; trying the next"
            );
        }
        // Every claimed job is launched, deadline or not, and an error failing one job
        // stops none of the others: a claimed job nobody launches would sit running
        // until reap's dead-pid tier rescues it. The first such error ends the pass.
        let mut error = None;
        for &id in &claims.claimed {
            used += 1;
            match launch(ctx, id) {
                Ok(how) => {
                    started += 1;
                    log::info!("dispatch: started job {id} ({how})");
                }
                Err(e) => {
                    failed += 1;
                    log::error!("dispatch: could not launch job {id}: {e:#}");
                    if let Err(e) = fail_unlaunched(db, id, now) {
                        log::error!(
                            "dispatch: job {id} stays running until reap rescues it: {e:#}"
                        );
                        error.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        if let Some(id) = claims.untried.first() {
            lost += 1;
            log::info!(
                "dispatch: job {id} not claimed: no slot left (ORCH_MAX_CONCURRENCY, or this host's ORCH_MAX_CONCURRENCY_PER_HOST) since the pass counted"
            );
            break;
        }
    }
    Ok(PassOutcome::ok(vec![
        ("queued", queued_total),
        ("running", i64::from(running_total) + started),
        ("started", started),
        ("lost_race", lost),
        ("launch_failed", failed),
        ("over_budget", budget_stopped),
        ("staging_waits", staging_waits),
        ("branch_waits", branch_waits.len() as i64),
        ("hold_waits", on_hold.len() as i64),
    ]))
}

/// Flips a claimed job that could not be launched to `failed`, so it never sits
/// `running` with nothing behind it.
fn fail_unlaunched(db: &Db, id: i64, now: i64) -> Result<()> {
    let attempt = db.job(id)?.map(|j| j.attempt).unwrap_or(1);
    db.finish_job(id, attempt, JobStatus::Failed, now)?;
    Ok(())
}

/// Why a deployer job of a held project waits (dry run and log).
fn held_why(db: &Db, project: &str, now: i64) -> Result<String> {
    Ok(db
        .hold_of(project, now)?
        .map_or_else(|| format!("project {project} is on hold"), |h| h.describe()))
}

/// The budget check, separate from the plan (docs/jobs.md, "Spend"): with
/// `ORCH_TASK_BUDGET` or `ORCH_TASK_TOKEN_BUDGET` set, a job whose task's reported totals
/// reached a cap is not started; returns its task and why. Reads only.
///
/// # Errors
/// When the database cannot be read.
fn budget_stop(ctx: &PassContext, db: &Db, id: i64) -> Result<Option<(i64, String)>> {
    let s = &ctx.config.settings;
    let budget = Budget {
        cost_micros: s.task_budget.0,
        tokens: s.task_token_budget.0,
    };
    if budget == Budget::default() {
        return Ok(None);
    }
    let Some(job) = db.job(id)? else {
        return Ok(None);
    };
    let totals = db.task_spend(job.task_id)?;
    Ok(over_budget(&totals, &budget).map(|why| (job.task_id, why)))
}

/// Queue heads read per free slot for a real pass (the spares a lost claim goes on to).
const CLAIM_SPARES: u32 = 4;

/// Jobs claimed in one write transaction at most: one transaction (and one commit to
/// disk) per batch rather than per job, and few enough that a dispatch killed between
/// its claim and the launches leaves few jobs for reap to rescue.
const CLAIM_BATCH: u32 = 32;

/// Why a job waits for its task's branch (dry run and log).
const BRANCH_MISSING: &str = "its task's branch is not on Gitea yet (a start or reopen found Gitea down or unconfigured); the next reconcile creates it, and the job starts on the pass after";

fn launch(ctx: &PassContext, id: i64) -> Result<String> {
    let s = &ctx.config.settings;
    match s.job_launcher {
        JobLauncher::Direct => {
            let exe = std::env::current_exe().context("locating the orch binary")?;
            // The supervisor reads the same database, state dir and pipeline file.
            let mut env: Vec<(String, OsString)> = vec![
                ("ORCH_DB".into(), s.db.clone().into_os_string()),
                (
                    "ORCH_STATE_DIR".into(),
                    s.state_dir.clone().into_os_string(),
                ),
            ];
            if let Some(p) = &ctx.config.pipeline.path {
                env.push(("ORCH_CONFIG".into(), p.clone().into_os_string()));
            }
            let withheld = crate::config::WITHHELD_FROM_JOBS;
            let pid = spawn::launch_direct(&exe, id, &job_log_path(ctx, id), &env, withheld)?;
            Ok(format!("direct, supervisor pid {pid}"))
        }
        JobLauncher::Systemd => {
            spawn::launch_systemd(id, std::env::var_os("PATH").as_deref())?;
            Ok(format!("systemd, orch-job@{id}.service"))
        }
    }
}
