//! `orch reconcile`: the level-triggered re-drive of work stuck by a lost event, and the
//! guard that leaves escalated work alone (SPEC §3, §4 "reconcile").
//!
//! One pass, under its lock: replay pending deliveries; list each project's work items
//! from Plane in pages (never one request per task; stop early on a low
//! `X-RateLimit-Remaining`, end cleanly on 429); replay work items whose start /
//! approved / rejected / cancel state the task does not reflect; finish or make
//! escalations (one Plane comment, one notification); then, for every task, apply the
//! guards in SPEC order (`core::reconcile::local_guards`, then the blocked guard on the
//! listed state), evaluate the stage's gate on the facts it needs, and act on
//! `core::reconcile::decide`: advance, roll back, re-run the stage's job, escalate or
//! wait. A skip writes nothing and sends nothing. `--dry-run` reports all of it and
//! changes nothing.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::adapters::db::{Db, MoveError};
use crate::adapters::db_reconcile::ESCALATION_KIND;
use crate::adapters::forge::Forge;
use crate::adapters::http::HttpError;
use crate::adapters::plane::{NewComment, PlaneClient};
use crate::core::gate::{self, GateInputs};
use crate::core::intake::{self, PlaneState as CachedState};
use crate::core::job::{JobOutcome, JobStatus};
use crate::core::plane::Project;
use crate::core::reconcile::{
    self, decide, local_guards, Action, Deferral, Judgement, Limits, Listed, Progress, Replay,
    TaskFacts, Verdict,
};
use crate::core::stage::{Actor, Agent, Stage};
use crate::core::task::{NewTask, Task};
use crate::exit::ExitStatus;
use crate::ops::moves;
use crate::ops::pass::{Context, PassOutcome};

use report::{BranchLine, ReplayLine, Report, TaskLine};

mod report;

/// Re-drive tasks stuck by a lost event; leave escalated and blocked ones alone
///
/// Run by orch-reconcile.timer. Replays pending webhook deliveries and work items whose
/// Plane state the task does not reflect, then evaluates the gate of every task that
/// no guard skips (analysis, no gate, live job, grace, escalated, blocked in Plane) and
/// advances, rolls back, re-runs the stage's job or escalates it. Plane is listed per
/// project in pages; a 429 ends the pass cleanly. Exit codes: 0 done (also when it
/// stopped early: the next pass goes on), 2 configuration or database error, 75
/// another reconcile pass holds the lock.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// List every task with what the pass would do or which guard skips it; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `reconcile`.
///
/// # Errors
/// Configuration that cannot build a client, or a database that cannot be read.
pub fn run(args: &ReconcileArgs, ctx: &Context) -> Result<ExitStatus> {
    ctx.run_pass("reconcile", args.dry_run, |db, _guard| {
        let report = pass(ctx, db, args.dry_run)?;
        if args.json {
            println!("{}", report::to_json(&report)?);
        } else {
            print!("{}", report::render(&report));
        }
        if let Some(why) = &report.stopped_early {
            log::warn!("reconcile: stopped early: {why}");
        }
        Ok(PassOutcome::ok(report.counts()))
    })
}

/// What listing a project gave.
#[derive(Default)]
struct ProjectListing {
    /// What the blocked guard reads.
    listing: reconcile::Listing,
    /// Work items seen, with their resolved state, for replay.
    resolved: Vec<(crate::adapters::plane::WorkItem, CachedState)>,
}

/// The pass's shared state.
struct Pass<'a> {
    ctx: &'a Context,
    dry_run: bool,
    now: i64,
    limits: Limits,
    plane: Option<PlaneClient>,
    forge: Forge,
    report: Report,
    /// Set on a 429: no more Plane calls, no more actions.
    rate_limited: bool,
    /// Per task, whether its PR was merged, as the gate just read it: a rollback decides
    /// its round from the very fact its gate judged, never from a second Gitea read
    /// that may fail in between.
    merged: std::collections::HashMap<i64, crate::core::facts::Fact<bool>>,
}

fn pass(ctx: &Context, db: &mut Db, dry_run: bool) -> Result<Report> {
    let s = &ctx.config.settings;
    let plane = if s.plane_url.is_some() {
        Some(PlaneClient::from_config(&ctx.config)?)
    } else {
        None
    };
    let mut p = Pass {
        ctx,
        dry_run,
        now: ctx.now_secs(),
        limits: Limits {
            grace_s: s.reconcile_grace_s.secs(),
            max_developer_retries: s.max_developer_retries.0,
            job_max_attempts: s.job_max_attempts.0,
        },
        plane,
        forge: Forge::from_config(&ctx.config)?,
        merged: std::collections::HashMap::new(),
        report: Report {
            dry_run,
            ..Report::default()
        },
        rate_limited: false,
    };
    let replay = s.reconcile_replay_enabled;
    let cap = usize::try_from(s.reconcile_max_tasks.0).unwrap_or(usize::MAX);

    // First the branches earlier starts left (Gitea down or not configured then); the
    // starts this pass replays run their own branch step.
    p.complete_branches(db, cap)?;
    if replay {
        p.replay_deliveries(db, cap)?;
    }

    // Which projects must be listed: all when replaying; otherwise only those with a task
    // that passes the local guards and needs the blocked check. An escalated task alone
    // costs no request at all.
    let tasks = db.list_tasks(None, usize::MAX)?;
    let live = db.live_jobs_by_task()?;
    let mut to_list: Vec<&Project> = Vec::new();
    for project in &ctx.config.pipeline.projects {
        let passes = tasks.iter().any(|t| {
            t.project == project.name
                && local_guards(&facts_of(t, &live), p.now, &p.limits).is_none()
        });
        if reconcile::needs_listing(replay, s.reconcile_skip_blocked_enabled, passes) {
            to_list.push(project);
        }
    }
    let mut listings: HashMap<String, ProjectListing> = HashMap::new();
    for project in to_list {
        let l = p.list_project(db, project)?;
        listings.insert(project.name.clone(), l);
    }

    let mut tasks = tasks;
    let mut live = live;
    if replay && !p.rate_limited && p.replay_work_items(db, &tasks, &listings, cap)? {
        tasks = db.list_tasks(None, usize::MAX)?;
        live = db.live_jobs_by_task()?;
    }
    if !p.rate_limited {
        p.escalation_sweep(db, &tasks)?;
        // The sweep may have escalated tasks: judge the fresh rows.
        if !p.report.escalations.is_empty() {
            tasks = db.list_tasks(None, usize::MAX)?;
            live = db.live_jobs_by_task()?;
        }
    }
    p.judge_tasks(db, &tasks, &live, &listings, cap)?;
    p.report.c.gitea_requests = p.forge.requests;
    Ok(p.report)
}

fn facts_of(t: &Task, live: &HashMap<i64, (i64, JobStatus)>) -> TaskFacts {
    TaskFacts {
        stage: t.stage,
        stage_entered_at: t.stage_entered_at,
        live_job: live.get(&t.id).map(|(id, s)| (*id, s.as_str())),
        developer_retries: t.developer_retries,
        escalated: t.escalated_at.is_some(),
    }
}

impl Pass<'_> {
    /// The branch step for live tasks whose branch is not confirmed on Gitea, at most
    /// `cap` per pass, oldest first ([`moves::ensure_branch`]: 409 counts as created).
    fn complete_branches(&mut self, db: &mut Db, cap: usize) -> Result<()> {
        let lacking = db.tasks_without_branch(cap)?;
        let beyond_cap = db.count_tasks_without_branch()? - lacking.len() as i64;
        self.report.c.branches_left += beyond_cap;
        if beyond_cap > 0 {
            self.report.stopped_early.get_or_insert_with(|| {
                format!(
                    "{beyond_cap} more task(s) lack their branch beyond ORCH_RECONCILE_MAX_TASKS={cap}; the next pass goes on"
                )
            });
        }
        let mut unreachable: Option<String> = None;
        let mut not_configured = 0;
        for t in lacking {
            let line = |detail: String| BranchLine {
                id: t.id,
                key: t.key.clone(),
                branch: t.branch.clone(),
                detail,
            };
            let plan = reconcile::branch_plan(t.stage, unreachable.as_deref());
            let detail = match plan {
                reconcile::BranchPlan::NotNeeded => continue,
                reconcile::BranchPlan::Wait(why) => {
                    self.report.c.branches_left += 1;
                    why
                }
                reconcile::BranchPlan::Create if self.ctx.config.settings.gitea_url.is_none() => {
                    self.report.c.branches_left += 1;
                    not_configured += 1;
                    "left: gitea is not configured (ORCH_GITEA_URL is unset)".into()
                }
                reconcile::BranchPlan::Create if self.dry_run => {
                    self.report.c.branches_left += 1;
                    let from = self
                        .ctx
                        .config
                        .pipeline
                        .project(&t.project)
                        .map_or("(project not in the pipeline file)", |p| {
                            p.default_branch.as_str()
                        });
                    format!(
                        "would create it in {} from {from} (its start left it)",
                        t.repo
                    )
                }
                reconcile::BranchPlan::Create => match moves::ensure_branch(self.ctx, db, &t) {
                    Ok(step) if step.is_left() => {
                        self.report.c.branches_left += 1;
                        step.describe()
                    }
                    Ok(step) => {
                        self.forge.requests += i64::from(step.asked_gitea());
                        self.report.c.branches += 1;
                        step.describe()
                    }
                    Err(e) => {
                        self.forge.requests += 1;
                        self.report.c.branches_left += 1;
                        self.report.c.errors += 1;
                        if matches!(e.downcast_ref::<HttpError>(), Some(HttpError::Retryable(_))) {
                            unreachable = Some(format!("{e:#}"));
                        }
                        log::warn!(
                            "task {}: branch {} still missing (next pass tries again): {e:#}",
                            t.key,
                            t.branch
                        );
                        format!("failed, next pass tries again: {e:#}")
                    }
                },
            };
            self.report.branches.push(line(detail));
        }
        if not_configured > 0 {
            log::warn!(
                "{not_configured} task(s) lack their branch: gitea is not configured (ORCH_GITEA_URL); reconcile creates them once it is"
            );
        }
        Ok(())
    }

    fn replay_deliveries(&mut self, db: &mut Db, cap: usize) -> Result<()> {
        for row in db.pending_deliveries(cap)? {
            let id = row.id.to_string();
            if self.dry_run {
                self.report.replays.push(ReplayLine {
                    source: "delivery",
                    id,
                    detail: "pending: would be processed again".into(),
                });
                continue;
            }
            match crate::ops::delivery::process_delivery(self.ctx, db, row.id) {
                Ok(o) => {
                    self.report.c.replayed += 1;
                    log::info!(
                        "replayed delivery {}: {} {}",
                        row.id,
                        o.kind.as_str(),
                        o.detail
                    );
                    self.report.replays.push(ReplayLine {
                        source: "delivery",
                        id,
                        detail: format!("{}: {}", o.kind.as_str(), o.detail),
                    });
                }
                Err(e) => {
                    self.report.c.errors += 1;
                    log::warn!(
                        "replaying delivery {} failed (stays pending): {e:#}",
                        row.id
                    );
                    self.report.replays.push(ReplayLine {
                        source: "delivery",
                        id,
                        detail: format!("failed, stays pending: {e:#}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Lists one project's work items page by page, resolving each state.
    fn list_project(&mut self, db: &mut Db, project: &Project) -> Result<ProjectListing> {
        let mut l = ProjectListing::default();
        let Some(plane) = self.plane.clone() else {
            l.listing.failed = Some("plane is not configured (ORCH_PLANE_URL)".into());
            return Ok(l);
        };
        if self.rate_limited || self.report.stopped_early.is_some() {
            return Ok(l);
        }
        let pid = &project.plane_project_id;
        let floor = self.ctx.config.settings.reconcile_rate_limit_floor.0;
        let mut cursor: Option<String> = None;
        let mut states_refreshed = false;
        loop {
            self.report.c.plane_requests += 1;
            let page = match plane.list_work_items_page(pid, cursor.as_deref()) {
                Ok(page) => page,
                Err(HttpError::RateLimited { retry_after, .. }) => {
                    self.rate_limit(retry_after);
                    return Ok(l);
                }
                Err(e) => {
                    log::warn!("project {}: listing work items failed: {e}", project.name);
                    l.listing.failed =
                        Some(format!("listing the project's work items failed: {e}"));
                    return Ok(l);
                }
            };
            for item in page.items {
                let state = match &item.state {
                    Some(s) => Some(CachedState {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        group: s.group.clone(),
                    }),
                    None => match &item.state_id {
                        None => None,
                        Some(id) => {
                            let mut found = db.plane_state(pid, id)?;
                            if found.is_none() && !states_refreshed {
                                states_refreshed = true;
                                found = self.refresh_states(db, &plane, project, id)?;
                            }
                            found
                        }
                    },
                };
                match state {
                    Some(st) => {
                        l.listing.items.insert(
                            item.id.clone(),
                            Listed::Seen {
                                name: st.name.clone(),
                                group: st.group.clone(),
                            },
                        );
                        l.resolved.push((item, st));
                    }
                    None => {
                        let id = item.state_id.clone().unwrap_or_else(|| "(none)".into());
                        l.listing
                            .items
                            .insert(item.id.clone(), Listed::UnknownState(id));
                    }
                }
            }
            let Some(next) = page.next_cursor else {
                l.listing.complete = true;
                return Ok(l);
            };
            if reconcile::below_floor(page.rate_limit_remaining, floor) {
                self.report.stopped_early = Some(format!(
                    "plane X-RateLimit-Remaining {} is below ORCH_RECONCILE_RATE_LIMIT_FLOOR {floor}",
                    page.rate_limit_remaining.unwrap_or(0)
                ));
                return Ok(l);
            }
            cursor = Some(next);
        }
    }

    fn rate_limit(&mut self, retry_after: Option<std::time::Duration>) {
        self.rate_limited = true;
        self.report.stopped_early = Some(format!(
            "plane answered 429 (rate limited{}); the next pass goes on",
            retry_after
                .map(|d| format!(", retry after {}s", d.as_secs()))
                .unwrap_or_default()
        ));
    }

    /// Refreshes a project's state cache from the States API once per pass.
    fn refresh_states(
        &mut self,
        db: &mut Db,
        plane: &PlaneClient,
        project: &Project,
        wanted: &str,
    ) -> Result<Option<CachedState>> {
        self.report.c.plane_requests += 1;
        match plane.list_states(&project.plane_project_id) {
            Ok(states) => {
                let states: Vec<CachedState> = states
                    .into_iter()
                    .map(|s| CachedState {
                        id: s.id,
                        name: s.name,
                        group: s.group,
                    })
                    .collect();
                let found = states.iter().find(|s| s.id == wanted).cloned();
                if !self.dry_run {
                    db.replace_plane_states(&project.plane_project_id, &states, self.now)?;
                }
                Ok(found)
            }
            Err(HttpError::RateLimited { retry_after, .. }) => {
                self.rate_limit(retry_after);
                Ok(None)
            }
            Err(e) => {
                log::warn!("project {}: refreshing states failed: {e}", project.name);
                Ok(None)
            }
        }
    }

    /// Acts on work items whose meaning the task does not reflect, as their webhook
    /// would have. Returns whether anything changed.
    fn replay_work_items(
        &mut self,
        db: &mut Db,
        tasks: &[Task],
        listings: &HashMap<String, ProjectListing>,
        cap: usize,
    ) -> Result<bool> {
        let by_item: HashMap<&str, &Task> =
            tasks.iter().map(|t| (t.work_item_id.as_str(), t)).collect();
        let mut changed = false;
        let mut done = 0usize;
        for project in &self.ctx.config.pipeline.projects {
            let Some(l) = listings.get(&project.name) else {
                continue;
            };
            for (item, state) in &l.resolved {
                let Some(meaning) =
                    reconcile::replayable_meaning(&project.states, &state.name, &state.group)
                else {
                    continue;
                };
                let task = by_item.get(item.id.as_str()).copied();
                let facts = match task {
                    Some(t) if t.stage == Stage::Analysis => {
                        let jobs = db.task_jobs(t.id)?;
                        let analyst = || jobs.iter().filter(|j| j.agent == Agent::Analyst);
                        Some(intake::TaskFacts {
                            key: t.key.clone(),
                            stage: t.stage,
                            has_analyst_job: analyst().next().is_some(),
                            has_live_analyst_job: analyst().any(|j| !j.status.is_terminal()),
                        })
                    }
                    Some(t) => Some(intake::TaskFacts {
                        key: t.key.clone(),
                        stage: t.stage,
                        has_analyst_job: true,
                        has_live_analyst_job: false,
                    }),
                    None => None,
                };
                let decision = reconcile::replay(meaning, &state.name, facts.as_ref(), done, cap);
                let reason = format!(
                    "replayed: work item is in {:?} in Plane (its webhook was lost)",
                    state.name
                );
                let detail = match decision {
                    Replay::Ignore => continue,
                    Replay::Capped => {
                        self.report.stopped_early.get_or_insert_with(|| {
                            format!("replayed ORCH_RECONCILE_MAX_TASKS={cap} work items")
                        });
                        return Ok(changed);
                    }
                    Replay::Start if self.dry_run => "would start the task".to_string(),
                    Replay::Move { from, to } if self.dry_run => {
                        format!("would move the task {from} -> {to}")
                    }
                    Replay::Start => {
                        done += 1;
                        match self.replay_start(db, project, item, &reason) {
                            Ok(d) => {
                                changed = true;
                                self.report.c.replayed += 1;
                                d
                            }
                            Err(e) => {
                                self.report.c.errors += 1;
                                log::warn!("replaying the start of {} failed: {e:#}", item.id);
                                format!("start failed: {e:#}")
                            }
                        }
                    }
                    Replay::Move { from, to } => {
                        done += 1;
                        let t = task.expect("moves are decided for existing tasks");
                        match moves::move_task(self.ctx, db, t, to, &reason, Actor::Reconcile) {
                            Ok(_) => {
                                changed = true;
                                self.report.c.replayed += 1;
                                format!("task {} {from} -> {to}", t.key)
                            }
                            Err(e) => {
                                self.report.c.errors += 1;
                                log::warn!("replaying the move of {} failed: {e:#}", t.key);
                                format!("move failed: {e:#}")
                            }
                        }
                    }
                };
                self.report.replays.push(ReplayLine {
                    source: "work-item",
                    id: item.id.clone(),
                    detail,
                });
            }
        }
        Ok(changed)
    }

    fn replay_start(
        &mut self,
        db: &mut Db,
        project: &Project,
        item: &crate::adapters::plane::WorkItem,
        reason: &str,
    ) -> Result<String> {
        let seq = i64::try_from(item.sequence_id).ok();
        let key = intake::task_key(
            project.plane_identifier.as_deref(),
            &project.name,
            seq,
            &item.id,
        );
        let new = NewTask {
            project: project.name.clone(),
            work_item_id: item.id.clone(),
            key: key.clone(),
            title: item.name.clone(),
            repo: project.repo.clone(),
            branch: crate::core::branch::branch_name(&key, &item.name),
        };
        let started = moves::start_task(self.ctx, db, &new, Actor::Reconcile, reason, None)?;
        if started.branch.asked_gitea() {
            self.forge.requests += 1;
        }
        Ok(format!(
            "task {key} {}, {}, branch {}",
            if started.created {
                "created"
            } else {
                "already existed"
            },
            started
                .enqueued_job
                .map_or("analyst job already there".to_string(), |j| format!(
                    "analyst job {j} queued"
                )),
            started.branch.describe()
        ))
    }

    /// Finishes escalations whose announcement is missing (a crash, Plane down) and
    /// escalates tasks that reached the developer retry limit through another path.
    fn escalation_sweep(&mut self, db: &mut Db, tasks: &[Task]) -> Result<()> {
        for t in tasks {
            if self.rate_limited {
                return Ok(());
            }
            if matches!(t.stage, Stage::Cancelled | Stage::Done) {
                continue;
            }
            if let Some(at) = t.escalated_at {
                if !db.escalation_announced(t.id, at)? {
                    let reason = t.escalation_reason.clone().unwrap_or_default();
                    self.announce_escalation(db, t, at, &reason)?;
                }
                continue;
            }
            if t.developer_retries >= self.limits.max_developer_retries {
                let actor = db.last_event_actor(t.id)?;
                if reconcile::needs_retry_escalation(
                    t.developer_retries,
                    false,
                    actor.as_deref(),
                    &self.limits,
                ) {
                    let reason = format!(
                        "developer retries {} reached ORCH_MAX_DEVELOPER_RETRIES {}",
                        t.developer_retries, self.limits.max_developer_retries
                    );
                    self.escalate(db, t, &reason)?;
                }
            }
        }
        Ok(())
    }

    /// Parks the task for a human (once) and announces it.
    fn escalate(&mut self, db: &mut Db, t: &Task, reason: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        if db.escalate(t.id, reason, self.now)? {
            let cancelled = db.cancel_queued_jobs(t.id, self.now)?;
            log::warn!(
                "task {} escalated at {}: {reason}{}",
                t.key,
                t.stage,
                if cancelled > 0 {
                    format!(" ({cancelled} queued job(s) cancelled)")
                } else {
                    String::new()
                }
            );
            self.report.c.escalated += 1;
            self.announce_escalation(db, t, self.now, reason)?;
        }
        Ok(())
    }

    /// Posts the one Plane comment (idempotent through its external id), then records
    /// and sends the one notification. The notification row is written last, so a pass
    /// that could not comment leaves the announcement for the next pass to finish.
    fn announce_escalation(&mut self, db: &mut Db, t: &Task, at: i64, reason: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let key = reconcile::escalation_key(t.id, at);
        let project = self.ctx.config.pipeline.project(&t.project);
        if let (Some(plane), Some(project)) = (self.plane.clone(), project) {
            let comment = NewComment {
                comment_html: format!(
                    "<p><strong>orch escalated {}</strong> at stage <code>{}</code>: {}. \
                     Nothing re-drives it until a person moves it in Plane.</p>",
                    html_escape(&t.key),
                    t.stage,
                    html_escape(reason)
                ),
                external_source: "orch".into(),
                external_id: key.clone(),
            };
            self.report.c.plane_requests += 1;
            match plane.create_comment(&project.plane_project_id, &t.work_item_id, &comment) {
                Ok(_) => {}
                Err(HttpError::RateLimited { retry_after, .. }) => {
                    self.rate_limit(retry_after);
                    return Ok(());
                }
                Err(e) => {
                    self.report.c.errors += 1;
                    log::warn!(
                        "task {}: escalation comment failed (next pass tries again): {e}",
                        t.key
                    );
                    return Ok(());
                }
            }
        }
        let message = format!(
            "orch: task {} escalated at {}: {reason}. Nothing re-drives it until a person moves it in Plane.",
            t.key, t.stage
        );
        crate::ops::notify::announce(self.ctx, db, &key, ESCALATION_KIND, Some(t.id), &message)?;
        self.report.escalations.push(t.key.clone());
        Ok(())
    }

    fn judge_tasks(
        &mut self,
        db: &mut Db,
        tasks: &[Task],
        live: &HashMap<i64, (i64, JobStatus)>,
        listings: &HashMap<String, ProjectListing>,
        cap: usize,
    ) -> Result<()> {
        let skip_blocked = self.ctx.config.settings.reconcile_skip_blocked_enabled;
        let cursor_path = self.cursor_path();
        let cursor = read_cursor(&cursor_path);
        // Fairness under the cap: start after the last task the previous capped pass
        // reached, then wrap around.
        let mut order: Vec<&Task> = tasks.iter().collect();
        order.sort_by_key(|t| reconcile::fair_order_key(t.id, cursor));
        let mut handled = 0usize;
        let mut last_handled: Option<i64> = None;
        let mut capped = false;
        let mut lines = Vec::with_capacity(order.len());
        for t in order {
            self.report.c.scanned += 1;
            let listed = skip_blocked.then(|| {
                reconcile::listed(
                    listings.get(&t.project).map(|l| &l.listing),
                    &t.work_item_id,
                )
            });
            let progress = Progress {
                rate_limited: self.rate_limited,
                handled,
                cap,
            };
            let meanings = self
                .ctx
                .config
                .pipeline
                .project(&t.project)
                .map(|p| &p.states);
            let facts = facts_of(t, live);
            let verdict = match reconcile::judge(
                &facts,
                self.now,
                &self.limits,
                progress,
                listed.as_ref(),
                meanings,
            ) {
                Judgement::Skip(skip) => Verdict::Skip { skip },
                Judgement::Deferred(why) => {
                    capped |= matches!(why, Deferral::Cap(_));
                    Verdict::Deferred {
                        because: why.to_string(),
                    }
                }
                Judgement::Evaluate => {
                    handled += 1;
                    last_handled = Some(t.id);
                    self.evaluate(db, t)
                }
            };
            let note = match &verdict {
                Verdict::Act { action } if !self.dry_run => self.act(db, t, action),
                _ => None,
            };
            match &verdict {
                Verdict::Skip { .. } => self.report.c.skipped += 1,
                Verdict::Deferred { .. } => self.report.c.deferred += 1,
                Verdict::Act {
                    action: Action::Wait { .. },
                } => self.report.c.waiting += 1,
                Verdict::Act { .. } => {}
            }
            lines.push(TaskLine {
                id: t.id,
                key: t.key.clone(),
                project: t.project.clone(),
                stage: t.stage,
                verdict,
                note,
            });
        }
        lines.sort_by_key(|l| l.id);
        self.report.tasks = lines;
        if capped {
            self.report.stopped_early.get_or_insert_with(|| {
                format!("the per-pass cap ORCH_RECONCILE_MAX_TASKS={cap} was reached; the next pass goes on")
            });
        }
        if !self.dry_run {
            match reconcile::next_cursor(capped, last_handled) {
                Some(id) => {
                    if let Err(e) = write_cursor(&cursor_path, id) {
                        log::warn!("could not keep the reconcile cursor: {e:#}");
                    }
                }
                None => {
                    let _ = std::fs::remove_file(&cursor_path);
                }
            }
        }
        Ok(())
    }

    fn cursor_path(&self) -> PathBuf {
        self.ctx.config.settings.state_dir.join("reconcile.cursor")
    }

    /// Gathers what the stage's gate needs and decides.
    fn evaluate(&mut self, db: &mut Db, t: &Task) -> Verdict {
        let inputs = self.gate_inputs(db, t);
        self.merged
            .insert(t.id, crate::core::round::merged(&inputs.pr));
        let decision = gate::evaluate(t.stage, &inputs);
        let last = match db.latest_stage_job(t.id, t.stage) {
            Ok(j) => j.map(|j| {
                (
                    j.id,
                    JobOutcome {
                        status: j.status,
                        attempt: j.attempt,
                        exit_code: j.exit_code,
                    },
                )
            }),
            Err(e) => {
                log::warn!("task {}: reading its latest job: {e:#}", t.key);
                return Verdict::Act {
                    action: Action::Wait {
                        because: format!("could not read the stage's job: {e:#}"),
                    },
                };
            }
        };
        let action = decide(t.stage, &decision, last, t.developer_retries, &self.limits);
        Verdict::Act { action }
    }

    fn gate_inputs(&mut self, db: &Db, t: &Task) -> GateInputs {
        crate::ops::gate::gate_inputs_with(self.ctx, db, t, &mut self.forge, !self.dry_run)
    }

    /// Acts on a decision; returns a note when acting failed or lost a race.
    fn act(&mut self, db: &mut Db, t: &Task, action: &Action) -> Option<String> {
        let result: Result<Option<String>> = (|| match action {
            Action::Wait { .. } => Ok(None),
            Action::Advance { to } => {
                moves::move_task(
                    self.ctx,
                    db,
                    t,
                    *to,
                    "gate passed (reconcile)",
                    Actor::Reconcile,
                )?;
                self.report.c.advanced += 1;
                Ok(None)
            }
            Action::Rollback {
                to,
                because,
                escalate,
            } => {
                let moved = match self.merged.get(&t.id) {
                    Some(merged) => moves::move_task_with(
                        self.ctx,
                        db,
                        t,
                        *to,
                        because,
                        Actor::Reconcile,
                        merged,
                    )?,
                    None => moves::move_task(self.ctx, db, t, *to, because, Actor::Reconcile)?,
                };
                self.report.c.rolled_back += 1;
                if moved.escalated {
                    // The move itself parked the task (no developer job was queued):
                    // announce it now, once.
                    let fresh = db.task(t.id)?.expect("the task was just moved");
                    let at = fresh.escalated_at.unwrap_or(self.now);
                    let reason = fresh.escalation_reason.clone().unwrap_or_default();
                    self.report.c.escalated += 1;
                    self.announce_escalation(db, &fresh, at, &reason)?;
                } else if *escalate {
                    let fresh = db.task(t.id)?.expect("the task was just moved");
                    let reason = format!(
                        "developer retries {} reached ORCH_MAX_DEVELOPER_RETRIES {} (last: {because})",
                        moved.developer_retries, self.limits.max_developer_retries
                    );
                    self.escalate(db, &fresh, &reason)?;
                }
                Ok(None)
            }
            Action::Rerun { job_id, .. } => match db.rerun_job(*job_id, self.now)? {
                Some(attempt) => {
                    self.report.c.rerun += 1;
                    log::info!(
                        "task {}: job {job_id} re-queued as attempt {attempt}",
                        t.key
                    );
                    Ok(None)
                }
                None => Ok(Some(format!(
                    "job {job_id} was re-run or is live meanwhile"
                ))),
            },
            Action::Escalate { reason } => {
                self.escalate(db, t, reason)?;
                Ok(None)
            }
        })();
        match result {
            Ok(note) => note,
            Err(e) => {
                if let Some(MoveError::Stale { actual, .. }) = e.downcast_ref::<MoveError>() {
                    return Some(format!("moved to {actual} meanwhile: left alone"));
                }
                self.report.c.errors += 1;
                log::warn!("task {}: acting failed: {e:#}", t.key);
                Some(format!("failed: {e:#}"))
            }
        }
    }
}

fn read_cursor(path: &std::path::Path) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_cursor(path: &std::path::Path, id: i64) -> Result<()> {
    crate::adapters::fs::write_atomic(path, format!("{id}\n").as_bytes())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
