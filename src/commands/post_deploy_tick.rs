//! `orch post-deploy-tick`: one pass over every armed post-deploy window. What a tick
//! does next for a window, the classification, the decision and the window's
//! transitions are `core::post_deploy`'s; this pass loads the windows
//! (`adapters::windows`), probes, acts (rollback, alert, reopen, close), saves, logs to
//! the task's `16-post-deploy-log.md` and reports. Arming a window (on `deploy → done`, or
//! `--arm` by hand) is [`crate::ops::post_deploy`]'s.
//!
//! Crash safety: the window file records "rollback started" before the command runs and
//! "rollback done" after; a window found with a started rollback is finished (alert,
//! reopen, close) without running the command again.

use std::path::Path;

use anyhow::Result;

use crate::adapters::db::Db;
use crate::adapters::windows::{rollback_output, WindowStore};
use crate::adapters::{http, production_probe, rollback, spawn, workspace};
use crate::clock::{format_unix, human_duration};
use crate::core::job::JobStatus;
use crate::core::post_deploy::{
    final_verdict, next_step, tick_rank, Classification, NextStep, Thresholds, TickConclusion,
    TickDecision, WindowState,
};
use crate::core::stage::{Actor, Stage};
use crate::exit::ExitStatus;
use crate::ops::moves::{self, MoveRequest};
use crate::ops::notify::{self, Announced};
use crate::ops::pass::{PassContext, PassOutcome};
use crate::ops::post_deploy::{arm, write_log, Armed};

/// The pass name (lock file, `passes` row).
const PASS: &str = "post-deploy-tick";
/// Most windows one pass handles (bounded pass; the rest wait for the next tick).
const MAX_WINDOWS: usize = 200;

/// Watch production after deploy: probe, classify, roll back or alert, close windows
///
/// Run by `orch-post-deploy-tick.timer` every `ORCH_POST_DEPLOY_INTERVAL_S`. For each
/// armed window: probe the project's `health_url` and `metrics_url`, classify the
/// window (HEALTHY, DEGRADED, INCONCLUSIVE), and on DEGRADED run the project's
/// `rollback` once per window, alert and reopen the task to development (the
/// self-hosting repo only alerts). Windows past their end close with a verdict in
/// `16-post-deploy-log.md`. Exit codes: 0 pass done, 1 `--arm` refused, 2 error (some
/// window could not be handled), 75 another tick holds the lock.
#[derive(Debug, clap::Args)]
pub struct PostDeployTickArgs {
    /// Probe and classify, print what would be done, change nothing
    #[arg(long, conflicts_with = "arm")]
    pub dry_run: bool,

    /// Arm a window by hand for --task (ignores ORCH_POST_DEPLOY_REPOS, not the kill switch)
    #[arg(long, requires = "task")]
    pub arm: bool,

    /// The task to arm (id or key); only with --arm
    #[arg(long, value_name = "ID", requires = "arm")]
    pub task: Option<String>,

    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// One window's result in a pass (stdout, `--json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct WindowReport {
    /// Task id.
    pub task_id: i64,
    /// Task key.
    pub key: String,
    /// Project.
    pub project: String,
    /// Repo.
    pub repo: String,
    /// Classification this tick (`-` when not probed).
    pub classification: String,
    /// Decision this tick (`SKIP` when not due).
    pub decision: String,
    /// What acting did.
    pub action: String,
    /// The evidence line.
    pub evidence: String,
    /// Seconds left in the window (0 once over).
    pub time_left_s: i64,
}

impl WindowReport {
    fn new(w: &WindowState, now: i64, classification: &str, decision: &str, action: &str) -> Self {
        WindowReport {
            task_id: w.task_id,
            key: w.task_key.clone(),
            project: w.project.clone(),
            repo: w.repo.clone(),
            classification: classification.to_string(),
            decision: decision.to_string(),
            action: action.to_string(),
            evidence: w.last_evidence.clone().unwrap_or_default(),
            time_left_s: w.time_left(now),
        }
    }
}

fn thresholds(ctx: &PassContext) -> Thresholds {
    let s = &ctx.config.settings;
    Thresholds {
        fail_streak: s.post_deploy_fail_threshold.0,
        max_5xx_ratio: s.post_deploy_5xx_threshold.0,
        min_samples: s.post_deploy_min_samples.0,
    }
}

/// Runs `post-deploy-tick`.
///
/// # Errors
/// When the pass cannot run at all (database, state dir).
pub fn run(args: &PostDeployTickArgs, ctx: &PassContext) -> Result<ExitStatus> {
    if args.arm {
        return arm_by_hand(args, ctx);
    }
    let mut reports = Vec::new();
    let status = ctx.run_pass(PASS, args.dry_run, |db, _guard| {
        tick(ctx, db, args.dry_run, &mut reports)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!(
                "{} {} {} {} ({} left): {} [{}]",
                r.key,
                r.repo,
                r.classification,
                r.decision,
                human_duration(r.time_left_s),
                r.action,
                r.evidence
            );
        }
    }
    Ok(status)
}

fn arm_by_hand(args: &PostDeployTickArgs, ctx: &PassContext) -> Result<ExitStatus> {
    let reference = args.task.as_deref().unwrap_or_default();
    let db = ctx.open_db()?;
    let Some(task) = db.find_task(reference)? else {
        crate::logging::say(log::Level::Error, &format!("error: no task {reference:?}"));
        return Ok(ExitStatus::Error);
    };
    let armed = if task.stage == Stage::Done {
        arm(ctx, &db, &task, "operator", false)?
    } else {
        Armed::Skipped {
            reason: format!("task is at {}, not done", task.stage),
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&armed)?);
    } else {
        match &armed {
            Armed::Armed { ends_at } => {
                println!("{} armed until {}", task.key, format_unix(*ends_at));
            }
            Armed::AlreadyArmed { ends_at } => {
                println!("{} already armed until {}", task.key, format_unix(*ends_at));
            }
            Armed::Skipped { reason } => println!("{} not armed: {reason}", task.key),
        }
    }
    Ok(match armed {
        Armed::Skipped { .. } => ExitStatus::No,
        _ => ExitStatus::Success,
    })
}

/// The counters of one pass.
#[derive(Debug, Default)]
struct Tally {
    windows: i64,
    probed: i64,
    degraded: i64,
    rollbacks: i64,
    alerts: i64,
    closed: i64,
    skipped: i64,
    errors: i64,
}

fn tick(
    ctx: &PassContext,
    db: &mut Db,
    dry_run: bool,
    reports: &mut Vec<WindowReport>,
) -> Result<PassOutcome> {
    let s = &ctx.config.settings;
    let now = ctx.now_secs();
    let client = http::client_with(
        s.post_deploy_probe_timeout_s.0,
        s.post_deploy_probe_timeout_s.0,
    )?;
    let mut tally = Tally::default();
    let found = store(ctx, db, now).list()?;
    if !dry_run {
        // What a tick killed mid-write left (`.window.json.tmp.<pid>`).
        for (dir, _) in &found {
            crate::adapters::fs::remove_stale_temps(dir);
        }
    }
    // Unreadable windows first (reported, cheap), then `tick_rank`'s order: the cap
    // never starves a window, whatever the number armed.
    let (enabled, interval, t) = (
        s.post_deploy_enabled,
        s.post_deploy_interval_s.secs(),
        thresholds(ctx),
    );
    let mut open: Vec<_> = found
        .into_iter()
        .filter(|(_, w)| w.as_ref().map_or(true, WindowState::is_open))
        .map(|(dir, w)| {
            let rank = w.as_ref().ok().map(|w| {
                let step = next_step(w, now, enabled, interval, &t);
                tick_rank(w, &step)
            });
            (rank, dir, w)
        })
        .collect();
    open.sort_by_key(|(rank, _, _)| *rank);
    for (_, dir, window) in open.into_iter().take(MAX_WINDOWS) {
        // Between windows, never within one (a probe and its record, a rollback).
        if ctx.stop_between_items("between post-deploy windows") {
            break;
        }
        tally.windows += 1;
        let w = match window {
            Ok(w) => w,
            Err(e) => {
                tally.errors += 1;
                log::error!("post-deploy window {} unreadable: {e:#}", dir.display());
                continue;
            }
        };
        let key = w.task_key.clone();
        match one_window(ctx, db, &client, &dir, w, now, dry_run, &mut tally) {
            Ok(report) => reports.push(report),
            Err(e) => {
                tally.errors += 1;
                log::error!("post-deploy window of {key} failed: {e:#}");
            }
        }
    }
    // After the windows: a window closed just now frees its task's workspace now.
    let workspaces_removed = if dry_run {
        0
    } else {
        sweep_workspaces(ctx, db).unwrap_or_else(|e| {
            tally.errors += 1;
            log::error!("post-deploy: workspace sweep failed: {e:#}");
            0
        })
    };
    let counts = vec![
        ("windows", tally.windows),
        ("probed", tally.probed),
        ("degraded", tally.degraded),
        ("rollbacks", tally.rollbacks),
        ("alerts", tally.alerts),
        ("closed", tally.closed),
        ("skipped", tally.skipped),
        ("errors", tally.errors),
        ("workspaces_removed", workspaces_removed),
    ];
    Ok(PassOutcome {
        status: if tally.errors > 0 {
            ExitStatus::Error
        } else {
            ExitStatus::Success
        },
        counts,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "one pass's context, passed down once"
)]
fn one_window(
    ctx: &PassContext,
    db: &mut Db,
    client: &reqwest::blocking::Client,
    dir: &Path,
    mut w: WindowState,
    now: i64,
    dry_run: bool,
    tally: &mut Tally,
) -> Result<WindowReport> {
    let s = &ctx.config.settings;
    let t = thresholds(ctx);
    let report = |w: &WindowState, classification: &str, decision: &str, action: &str| {
        WindowReport::new(w, now, classification, decision, action)
    };
    let interval = s.post_deploy_interval_s.secs();
    match next_step(&w, now, s.post_deploy_enabled, interval, &t) {
        NextStep::FinishRollback => {
            let action = if dry_run {
                "would finish the recorded rollback".to_string()
            } else {
                finish_rollback(ctx, db, dir, &mut w, now, tally)?
            };
            return Ok(report(&w, "DEGRADED", "ROLLBACK", &action));
        }
        NextStep::Close(verdict) => {
            let action = format!("window closed: {verdict}");
            if !dry_run {
                close(ctx, db, dir, &mut w, now, verdict, "-", &action)?;
                tally.closed += 1;
            }
            return Ok(report(&w, verdict.as_str(), "CLOSE", &action));
        }
        NextStep::SkipDisabled => {
            tally.skipped += 1;
            return Ok(report(&w, "-", "SKIP", "ORCH_POST_DEPLOY_ENABLED is off"));
        }
        NextStep::SkipNotDue => {
            tally.skipped += 1;
            let last = w.last_classification.clone().unwrap_or_else(|| "-".into());
            let action = "sampled less than half an interval ago";
            return Ok(report(&w, &last, "SKIP", action));
        }
        NextStep::Probe => {}
    }
    let Some(project) = ctx.config.pipeline.project(&w.project).cloned() else {
        anyhow::bail!("project {} is no longer in the pipeline file", w.project);
    };
    let metric = s
        .post_deploy_requests_metric
        .clone()
        .unwrap_or_else(|| "http_requests_total".into());
    let sample = production_probe::probe(client, &project, &metric, now);
    tally.probed += 1;
    let summary = sample.summary();
    let has_rollback = project.rollback.is_some();
    let TickConclusion {
        assessment,
        decision,
    } = w.observe(sample, &t, project.self_hosting, has_rollback, now);
    let c = assessment.classification;
    let evidence = &assessment.evidence;
    log::info!(
        "post-deploy {} ({}): {c} -> {decision}: {evidence}",
        w.task_key,
        w.repo
    );
    if dry_run {
        let action = "dry run: nothing done";
        return Ok(report(&w, c.as_str(), decision.as_str(), action));
    }
    if w.record_classification(c) {
        tally.degraded += 1;
    }
    let at = format_unix(now);
    let action = match decision {
        TickDecision::Continue => "-".to_string(),
        TickDecision::AlertOnly => {
            let message = w.degraded_alert(evidence, project.self_hosting);
            alert(ctx, db, &w, "degraded", &message, tally)?
        }
        TickDecision::Rollback => {
            let argv = project.rollback.clone().unwrap_or_default();
            // "Started" is on disk before the command runs: a crash from here on never
            // runs it again.
            w.start_rollback(now, &at, &summary, c, &argv);
            store(ctx, db, now).save(dir, &w)?;
            // The output stays on this host (the alert names its path); the window's
            // folder holds nothing else under PostgreSQL, so it may not exist yet.
            let output = rollback_output(dir, w.armed_at);
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::warn!("post-deploy: creating {}: {e}", dir.display());
            }
            let (key, command) = (&w.task_key, argv.join(" "));
            log::info!("post-deploy {key}: running rollback {command}");
            let env = [
                ("ORCH_TASK_ID", w.task_id.to_string()),
                ("ORCH_TASK_KEY", w.task_key.clone()),
                ("ORCH_POST_DEPLOY_REPO", w.repo.clone()),
            ];
            let end = rollback::run(&argv, &env, &output, s.post_deploy_rollback_timeout_s.0)?;
            tally.rollbacks += 1;
            // The rollback command may run for minutes: its end is the time after it,
            // and what the pass records from here on happens then (the one re-read here).
            let ended_at = ctx.renew_now().as_second();
            w.end_rollback(now, ended_at, end.describe(), end.is_ok());
            store(ctx, db, now).save(dir, &w)?;
            let action = finish_rollback(ctx, db, dir, &mut w, now, tally)?;
            return Ok(report(&w, c.as_str(), "ROLLBACK", &action));
        }
        TickDecision::Close => {
            let verdict = final_verdict(&w.samples, w.ever_degraded, &t);
            let action = format!("window closed: {verdict}");
            close(ctx, db, dir, &mut w, now, verdict, &summary, &action)?;
            tally.closed += 1;
            return Ok(report(&w, c.as_str(), "CLOSE", &action));
        }
    };
    w.push_tick(&at, &summary, c.as_str(), decision.as_str(), &action);
    store(ctx, db, now).save(dir, &w)?;
    write_log(ctx, db, &w);
    Ok(report(&w, c.as_str(), decision.as_str(), &action))
}

/// After the rollback (or a crash during it): alert, reopen, close DEGRADED. Every step
/// is idempotent (the alert is deduplicated, the reopen guarded by the stage, the close
/// by `closed_at`), so repeating this after a crash is safe.
fn finish_rollback(
    ctx: &PassContext,
    db: &mut Db,
    dir: &Path,
    w: &mut WindowState,
    now: i64,
    tally: &mut Tally,
) -> Result<String> {
    if let Some(at) = w.interrupt_rollback(now) {
        log::warn!(
            "post-deploy {}: a rollback started at {} has no recorded end (the tick died); not running it again",
            w.task_key,
            format_unix(at)
        );
        store(ctx, db, now).save(dir, w)?;
    }
    let outcome = w.rollback_outcome().expect("the rollback has ended here");
    let evidence = w.last_evidence.clone().unwrap_or_else(|| "DEGRADED".into());
    let message = w.rollback_alert(&evidence, &outcome, &rollback_output(dir, w.armed_at));
    let alerted = alert(ctx, db, w, "rollback", &message, tally)?;
    let mut reopen = "task already reopened".to_string();
    if !w.reopened {
        // The log first, so the move's feedback copies every sample up to the one that
        // decided the rollback (its row is in the window state, not yet in the log).
        write_log(ctx, db, w);
        reopen = match db.task(w.task_id)? {
            Some(task) if task.stage == Stage::Done => {
                let reason = format!("post-deploy DEGRADED and {outcome}: {evidence}");
                let (to, actor) = (Stage::Development, Actor::PostDeploy);
                let moved =
                    moves::move_task(ctx, db, &MoveRequest::new(&task, to, &reason, actor))?;
                format!("task reopened to development (round {})", moved.round)
            }
            Some(task) => format!("task left at {} (not done)", task.stage),
            None => "task not found".into(),
        };
        w.reopened = true;
        store(ctx, db, now).save(dir, w)?;
    }
    let action = format!("{outcome}; {alerted}; {reopen}");
    close(ctx, db, dir, w, now, Classification::Degraded, "-", &action)?;
    tally.closed += 1;
    Ok(action)
}

/// Removes the workspace of every task that is cancelled, or done with no open
/// post-deploy window (closed, or never armed), and has no running job, and finishes
/// removals a crash interrupted; returns how many it removed. Idempotent: a removed workspace is not
/// listed again.
/// The window store of this pass (files, or the database under PostgreSQL).
fn store<'a>(ctx: &'a PassContext, db: &'a Db, now: i64) -> WindowStore<'a> {
    WindowStore::new(&ctx.config.settings.state_dir, db, now)
}

fn sweep_workspaces(ctx: &PassContext, db: &Db) -> Result<i64> {
    let s = &ctx.config.settings;
    let state_dir = &s.state_dir;
    let root = workspace::root(state_dir, s.workspaces_dir.as_deref());
    // With an agent user its files are its own: deleted as that user when this pass
    // may switch to it, else left renamed for the next job's supervisor, which may.
    let configured = s.agent_user.as_deref().filter(|u| !u.trim().is_empty());
    let agent = configured.and_then(|spec| {
        std::fs::read_to_string("/etc/passwd")
            .map_err(anyhow::Error::from)
            .and_then(|p| spawn::find_user(spec, &p))
            .map_err(|e| log::warn!("post-deploy: workspaces: {e:#}"))
            .ok()
    });
    let switch = agent.is_some() && spawn::may_switch_user();
    let remover = workspace::Remover {
        user: agent.as_ref().filter(|_| switch),
        keep_on_failure: configured.is_some() && !switch,
    };
    let leftovers = workspace::finish_removals(&root, &remover)?;
    let found = workspace::list(&root)?;
    let mut removed = i64::try_from(leftovers).unwrap_or(i64::MAX);
    for ws in found {
        let finished = match db.task(ws.task_id)? {
            None => true,
            Some(t) if t.stage == Stage::Cancelled => true,
            Some(t) if t.stage == Stage::Done => {
                let windows = store(ctx, db, ctx.now_secs());
                let dir = windows.dir(&t.repo, &t.work_item_id)?;
                !windows.load(&dir)?.is_some_and(|w| w.is_open())
            }
            Some(_) => false,
        };
        // A job still running in it (cancelled under it, say) keeps it until it ends.
        let in_use = || -> Result<bool> {
            Ok(db
                .task_jobs(ws.task_id)?
                .iter()
                .any(|j| j.status == JobStatus::Running))
        };
        if finished && !in_use()? && workspace::remove(&ws.dir, &remover)? {
            log::info!("post-deploy: removed workspace {}", ws.dir.display());
            removed += 1;
        }
    }
    Ok(removed)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one pass's context, passed down once"
)]
fn close(
    ctx: &PassContext,
    db: &Db,
    dir: &Path,
    w: &mut WindowState,
    now: i64,
    verdict: Classification,
    summary: &str,
    action: &str,
) -> Result<()> {
    w.close(now, &format_unix(now), verdict, summary, action);
    store(ctx, db, now).save(dir, w)?;
    write_log(ctx, db, w);
    let key = &w.task_key;
    log::info!("post-deploy {key}: window closed with verdict {verdict}");
    Ok(())
}

/// Announces the window's alert of `kind` (once per window and kind); returns what the
/// log row says (`alert sent`, `alert already sent` ...).
fn alert(
    ctx: &PassContext,
    db: &Db,
    w: &WindowState,
    kind: &str,
    message: &str,
    tally: &mut Tally,
) -> Result<String> {
    let (key, kind) = (w.alert_key(kind), format!("post-deploy-{kind}"));
    let announced = notify::announce(ctx, db, &key, &kind, Some(w.task_id), message)?;
    let word = match announced {
        Announced::Sent => "sent".into(),
        Announced::Recorded => "recorded".into(),
        Announced::Failed(e) => format!("failed ({e})"),
        Announced::AlreadyAnnounced => return Ok("alert already sent".into()),
    };
    tally.alerts += 1;
    Ok(format!("alert {word}"))
}
