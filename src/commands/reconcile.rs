//! `orch reconcile`: the level-triggered re-drive of work stuck by a lost event, and the
//! guard that leaves escalated work alone (SPEC §3, §4 "reconcile").
//!
//! One pass, under its lock: replay pending deliveries; list each project's work items
//! from Plane in pages (never one request per task; stop early on a low
//! `X-RateLimit-Remaining`, end cleanly on 429); replay work items whose start /
//! approved / rejected / cancel state the task does not reflect; finish or make
//! escalations (one Plane comment, one notification); then, for every task, apply the
//! guards in SPEC order with the rate limit, the per-pass cap and the listing
//! (`core::reconcile::judge`), evaluate the stage's gate on the facts it needs, and act
//! on `core::reconcile::decide`: advance, roll back, re-run the stage's job, escalate or
//! wait. A skip writes nothing and sends nothing. `--dry-run` reports all of it and
//! changes nothing.
//!
//! This file holds the pass's order and the per-task judging and acting; its steps live
//! beside it: `branches` (the branch step), `replay` (deliveries and work items),
//! `listing` (Plane, page by page), `escalate` (the sweep and the one announcement)
//! and `report` (what the pass prints). Every decision is in `core::reconcile`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use crate::adapters::db::shared_files::KIND_CURSOR;
use crate::adapters::db::{Db, Engine, GuardColumns, MoveError, PageTask, TaskHead};
use crate::adapters::forge::Forge;
use crate::adapters::plane::PlaneClient;
use crate::core::gate;
use crate::core::job::{Job, JobStatus};
use crate::core::plane::Project;
use crate::core::reconcile::{
    self, decide, Action, Deferral, GuardFacts, Judgement, Limits, Progress, TaskVerdict,
};
use crate::core::stage::{Actor, Stage};
use crate::core::task::Task;
use crate::exit::ExitStatus;
use crate::ops::moves::{self, MergeEvidence, MoveRequest};
use crate::ops::pass::{PassContext, PassOutcome};

use listing::ProjectListing;
use report::{Report, TaskLine};

mod branches;
mod escalate;
mod listing;
mod replay;
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
pub fn run(args: &ReconcileArgs, ctx: &PassContext) -> Result<ExitStatus> {
    ctx.run_pass("reconcile", args.dry_run, |db, _guard| {
        let report = pass(ctx, db, args.dry_run, args.json)?;
        if args.json {
            println!("{}", report::to_json(&report)?);
        } else {
            print!("{}", report::render(&report));
        }
        if let Some(why) = &report.stopped_early {
            log::warn!("reconcile: stopped early: {why}");
        }
        let mut outcome = PassOutcome::ok(report.counts());
        // A decision it could not write (a read-only or locked database) was not done:
        // the unit must fail instead of reading success.
        if report.unwritten > 0 {
            log::error!(
                "reconcile: {} decision(s) could not be written to the database (see above); exit 2",
                report.unwritten
            );
            outcome.status = ExitStatus::Error;
        }
        Ok(outcome)
    })
}

/// The pass's shared state.
struct Pass<'a> {
    ctx: &'a PassContext,
    dry_run: bool,
    now: i64,
    limits: Limits,
    plane: Option<&'a PlaneClient>,
    forge: Forge<'a>,
    report: Report,
    /// Set on a 429: no more Plane calls, no more actions.
    rate_limited: bool,
    /// Whether the report keeps every task's line (`--dry-run`, `--json`), or only the
    /// lines the text report prints: a real pass holds no line per unchanged task.
    every_line: bool,
    /// Per task, whether its PR was merged, as the gate just read it: a rollback decides
    /// its round from the very fact its gate judged, never from a second Gitea read
    /// that may fail in between.
    merged: std::collections::HashMap<i64, crate::core::facts::Fact<bool>>,
    /// Per task, the failed CI verdict (with its failing contexts) the development gate
    /// just read: a developer re-run for it writes them into the task's feedback.
    ci_failures: std::collections::HashMap<i64, crate::core::facts::CiFailure>,
}

/// Tasks are read in pages of this many (`Db::task_heads_page`): a pass holds one page
/// of tasks at a time, never all of them.
const TASK_PAGE: usize = 512;

/// Calls `each` on every task with `after < id <= upto`, page by page in id order,
/// until it returns `false`. A task is read whole only when `full` says so of its head
/// (the guards' columns); `each` gets the rest as a head, and what `on_page` read for
/// the task's page before.
fn for_each_task<S>(
    db: &mut Db,
    after: i64,
    upto: Option<i64>,
    mut full: impl FnMut(&TaskHead) -> bool,
    mut on_page: impl FnMut(&mut Db, &[PageTask]) -> Result<S>,
    mut each: impl FnMut(&mut Db, &PageTask, &mut S) -> Result<bool>,
) -> Result<()> {
    let mut after = after;
    loop {
        let page = db.task_heads_page(after, upto, TASK_PAGE, &mut full)?;
        let mut read = on_page(db, &page)?;
        for t in &page {
            if !each(db, t, &mut read)? {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == TASK_PAGE => after = last.id(),
            _ => return Ok(()),
        }
    }
}

/// The page cache of the connection the judging's pages are read on, in KiB (SQLite's
/// default is 2,000: a scan reads each page once, so only the tree's inner pages gain).
const READER_CACHE_KIB: u32 = 256;

/// What the judging's reader hands over: a page of tasks and what `on_page` read for
/// it, or the error that ended the reading.
type ReadPage<S> = Result<(Vec<PageTask>, S)>;

/// [`for_each_task`] over each segment `(after, upto)` in turn until `each` says stop,
/// with the pages read (and `on_page` run) on a thread of its own over `reader`, a
/// second connection, at most one page ahead of `each`: the store's reads of the next
/// page overlap the judging of this one. A page holds only rows of its own tasks, and
/// what `each` writes touches only its task's rows, so a page read ahead reads as it
/// would have after the tasks before it.
fn for_each_task_ahead<S: Send>(
    mut reader: Db,
    db: &mut Db,
    segments: &[(i64, Option<i64>)],
    mut full: impl FnMut(&TaskHead) -> bool + Send,
    mut on_page: impl FnMut(&mut Db, &[PageTask]) -> Result<S> + Send,
    mut each: impl FnMut(&mut Db, &PageTask, &mut S) -> Result<bool>,
) -> Result<()> {
    // A rendezvous: the next page is read while this one is judged, and waits for it.
    let (tx, rx) = std::sync::mpsc::sync_channel::<ReadPage<S>>(0);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for &(after, upto) in segments {
                let mut after = after;
                loop {
                    let read = reader
                        .task_heads_page(after, upto, TASK_PAGE, &mut full)
                        .and_then(|page| Ok((on_page(&mut reader, &page)?, page)));
                    let (read, page) = match read {
                        Ok(read) => read,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let next = match page.last() {
                        Some(last) if page.len() == TASK_PAGE => Some(last.id()),
                        _ => None,
                    };
                    // Gone: the walk stopped (or failed) and wants no more pages.
                    if tx.send(Ok((page, read))).is_err() {
                        return;
                    }
                    match next {
                        Some(id) => after = id,
                        None => break,
                    }
                }
            }
        });
        let walked = (|| {
            for read in &rx {
                let (page, mut read) = read?;
                for t in &page {
                    if !each(db, t, &mut read)? {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })();
        // The reader, blocked on a page no one will take, ends when this goes.
        drop(rx);
        walked
    })
}

fn pass(ctx: &PassContext, db: &mut Db, dry_run: bool, json: bool) -> Result<Report> {
    let s = &ctx.config.settings;
    let gitea = ctx.gitea()?;
    let mut p = Pass {
        ctx,
        dry_run,
        now: ctx.now_secs(),
        limits: Limits {
            grace_s: s.reconcile_grace_s.secs(),
            max_developer_retries: s.max_developer_retries.0,
            job_max_attempts: s.job_max_attempts.0,
        },
        plane: ctx.plane()?,
        forge: Forge::for_pass(gitea),
        merged: std::collections::HashMap::new(),
        ci_failures: std::collections::HashMap::new(),
        report: Report {
            dry_run,
            ..Report::default()
        },
        rate_limited: false,
        every_line: dry_run || json,
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
    // Replaying lists every project whatever the tasks: no walk over them then.
    let mut passing: HashSet<String> = HashSet::new();
    // The live jobs the guards read before the listing (which projects to list, which
    // repos to list ahead); the judging reads them again, after the replays.
    let live = if !replay && s.reconcile_skip_blocked_enabled {
        Some(db.live_jobs_by_task()?)
    } else if s.reconcile_skip_blocked_enabled {
        // Read only to list Gitea ahead: unread, the judging lists each repo it asks for.
        db.live_jobs_by_task()
            .inspect_err(|e| log::warn!("reading the live jobs to list Gitea ahead: {e:#}"))
            .ok()
    } else {
        None
    };
    if let (false, true, Some(live)) = (replay, s.reconcile_skip_blocked_enabled, &live) {
        let projects = ctx.config.pipeline.projects.len();
        for_each_task(
            db,
            0,
            None,
            |_| false,
            |_, _| Ok(()),
            |_, t, ()| {
                if !passing.contains(t.project())
                    && reconcile::passes_local_guards(&facts_of(t, live), p.now, &p.limits)
                {
                    passing.insert(t.project().to_string());
                }
                Ok(passing.len() < projects)
            },
        )?;
    }
    let mut to_list: Vec<&Project> = Vec::new();
    for project in &ctx.config.pipeline.projects {
        let passes = passing.contains(&project.name);
        if reconcile::needs_listing(replay, s.reconcile_skip_blocked_enabled, passes) {
            to_list.push(project);
        }
    }
    // The repos whose open pulls the judging will ask for are listed on a thread of
    // their own while Plane is listed: the same requests, off the pass's path. Each repo
    // is sent once Plane answered a page (so a pass that meets a 429, an outage or no
    // Plane at all lists none), as soon as the read of the store found it: the repos
    // are listed while the store is read, on the core that read leaves idle. When the
    // listing decides nothing (the blocked check off, nothing to list), they are sent
    // after the listing.
    let (now, limits) = (p.now, p.limits);
    // With the blocked check on, a task is judged only where its project's listing
    // answered: the repos are then sent once a page answered or not at all, and are
    // gathered by the read of the listed projects' tasks the listing makes anyway (a
    // project of the pipeline left unlisted has no task past the guards, and a task of
    // a project no longer in it is skipped as blocked: neither is evaluated).
    let listing_decides = s.reconcile_skip_blocked_enabled && !to_list.is_empty();
    let answered = std::sync::atomic::AtomicBool::new(false);
    let listings = std::thread::scope(|scope| -> Result<HashMap<String, ProjectListing>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let prefetch = gitea.map(|client| scope.spawn(move || prefetch_pulls(client, &rx)));
        // Owns the sender: dropped, it lets the reader end once it listed what it got.
        let ahead = std::cell::RefCell::new(Ahead {
            found: std::collections::BTreeSet::new(),
            unsent: Vec::new(),
            to: prefetch.as_ref().map(|_| tx),
        });
        let ahead = &ahead;
        let answered = &answered;
        let mut gather = |h: &GuardColumns, repo: &str| {
            let Some(live) = live.as_ref().filter(|_| listing_decides) else {
                return;
            };
            let mut ahead = ahead.borrow_mut();
            if ahead.to.is_none() {
                return;
            }
            if !ahead.found.contains(repo)
                && reconcile::reads_open_pulls(&head_facts(h, live), now, &limits)
            {
                ahead.found.insert(repo.to_string());
                ahead.unsent.push(repo.to_string());
            }
            // Checked at every row: Plane's first page usually answers after the rows
            // that name every repo were read.
            if !ahead.unsent.is_empty() && answered.load(std::sync::atomic::Ordering::Acquire) {
                ahead.send();
            }
        };
        let mut send_repos = move |db: &mut Db| -> Result<()> {
            let mut ahead = ahead.borrow_mut();
            if listing_decides {
                ahead.send();
            } else if ahead.to.is_some() {
                match repos_to_judge(db, now, &limits) {
                    Ok(repos) => {
                        ahead.unsent.extend(repos);
                        ahead.send();
                    }
                    // Only a head start lost: the judging lists each repo when it asks.
                    Err(e) => log::warn!("reading which repos to list ahead: {e:#}"),
                }
                ahead.to = None;
            }
            Ok(())
        };
        let listings = p.list_and_sweep(
            db,
            to_list,
            (replay, cap),
            &mut gather,
            &mut send_repos,
            answered,
        )?;
        if !p.rate_limited && !listing_decides {
            send_repos(db)?;
        }
        // Nothing more to list: the reader ends once it listed what it got.
        ahead.borrow_mut().to = None;
        if let Some(prefetch) = prefetch {
            let listed = prefetch
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (repo, pulls) in listed {
                p.forge.adopt(&repo, pulls);
            }
            // The listed heads' green verdicts, read per listing instead of per task.
            for (repo, heads) in p.forge.listed_heads() {
                let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
                match db.green_heads(&repo, &heads) {
                    Ok(green) => p.forge.note_green(&repo, green),
                    // Each gated task's verdict is then read alone, as before.
                    Err(e) => log::warn!("reading the CI verdicts of {repo}'s open pulls: {e:#}"),
                }
            }
        }
        Ok(listings)
    })?;
    // Judged from the rows as the replays and the sweep left them, read page by page.
    let live = db.live_jobs_by_task()?;
    p.judge_tasks(db, &live, &listings, cap)?;
    p.report.c.gitea_requests = p.forge.requests;
    Ok(p.report)
}

/// The repos with a task the judging will evaluate at a stage whose gate reads the PR
/// or its CI (the local guards pass), as the store holds them now.
fn repos_to_judge(
    db: &Db,
    now: i64,
    limits: &Limits,
) -> Result<std::collections::BTreeSet<String>> {
    let live = db.live_jobs_by_task()?;
    db.repos_of_tasks(&gate::stages_reading_pr(), TASK_PAGE, |h| {
        reconcile::reads_open_pulls(&head_facts(h, &live), now, limits)
    })
}

/// The repos to list ahead: those found, those not yet sent, and where they go (none
/// once nothing more will be sent, or when Gitea is not configured).
struct Ahead {
    found: std::collections::BTreeSet<String>,
    unsent: Vec<String>,
    to: Option<std::sync::mpsc::Sender<String>>,
}

impl Ahead {
    /// Sends the repos not sent yet.
    fn send(&mut self) {
        if let Some(to) = &self.to {
            // A reader that is gone (it panicked) is found at the join.
            for repo in self.unsent.drain(..) {
                let _ = to.send(repo);
            }
        }
    }
}

/// Lists the open pulls of each repo `repos` hands over, in order, until its sender is
/// dropped, for the pass's forge to adopt.
fn prefetch_pulls(
    client: &crate::adapters::gitea::GiteaClient,
    repos: &std::sync::mpsc::Receiver<String>,
) -> Vec<(String, crate::adapters::forge::ListedPulls)> {
    repos
        .iter()
        .map(|repo| {
            let listed = crate::adapters::forge::list_open_pulls(client, &repo);
            (repo, listed)
        })
        .collect()
}

impl<'a> Pass<'a> {
    /// Lists the projects of `to_list` in Plane, replays what the listings call for,
    /// and sweeps escalations: everything a pass does before it judges. `also` sees
    /// each listed project's task as the store is read for the listing
    /// (`Db::projects_known`); `first_page` runs once the pass takes Plane's first
    /// page; `answered` is raised as soon as the page reader has read one.
    fn list_and_sweep(
        &mut self,
        db: &mut Db,
        to_list: Vec<&'a Project>,
        (replay, cap): (bool, usize),
        also: &mut dyn FnMut(&GuardColumns, &str),
        first_page: &mut dyn FnMut(&mut Db) -> Result<()>,
        answered: &AtomicBool,
    ) -> Result<HashMap<String, ProjectListing>> {
        // What the store knows of the listed projects' tasks, in one read of each table
        // while the first pages are on their way; each project's part is dropped once
        // it is listed.
        let names: Vec<&str> = to_list.iter().map(|p| p.name.as_str()).collect();
        let known = |db: &mut Db| db.projects_known(&names, also);
        let listed = self.list_projects(db, &to_list, known, first_page, answered)?;
        let listings: HashMap<String, ProjectListing> =
            to_list.iter().map(|p| p.name.clone()).zip(listed).collect();

        if replay && !self.rate_limited {
            self.replay_work_items(db, &listings, cap)?;
        }
        if !self.rate_limited {
            self.escalation_sweep(db)?;
        }
        Ok(listings)
    }
}

/// The latest job at its stage of each task of `page` read whole (each is evaluated
/// unless its work item is blocked or the cap is reached), in one read per 32 tasks: an
/// entry for each, `None` when it has no job at its stage.
fn page_jobs(db: &mut Db, page: &[PageTask]) -> Result<HashMap<i64, Option<Job>>> {
    let whole: Vec<(i64, Stage)> = page
        .iter()
        .filter_map(|t| match t {
            PageTask::Full(t) => Some((t.id, t.stage)),
            PageTask::Head(_) => None,
        })
        .collect();
    let mut found = match db.latest_stage_jobs(&whole) {
        Ok(found) => found,
        Err(e) => {
            // Each task's job is then read alone, and a failure there waits that task.
            log::warn!("reading a page of tasks' latest jobs: {e:#}");
            return Ok(HashMap::new());
        }
    };
    Ok(whole
        .into_iter()
        .map(|(id, _)| (id, found.remove(&id)))
        .collect())
}

/// A task's verdict when its stage's latest job cannot be read: wait.
fn cannot_read_job(t: &Task, e: &anyhow::Error) -> TaskVerdict {
    log::warn!("task {}: reading its latest job: {e:#}", t.key);
    TaskVerdict::Act {
        action: Action::Wait {
            because: format!("could not read the stage's job: {e:#}"),
        },
    }
}

/// Where the walk over the tasks stands.
#[derive(Default)]
struct Walk {
    /// Tasks evaluated so far (the per-pass cap counts these).
    handled: usize,
    /// The last task evaluated.
    last_handled: Option<i64>,
    /// Whether the cap deferred a task.
    capped: bool,
    /// Whether the pass deadline stopped the walk.
    out_of_time: bool,
    /// The report's lines kept so far.
    lines: Vec<TaskLine>,
}

fn facts_of(t: &PageTask, live: &HashMap<i64, (i64, JobStatus)>) -> GuardFacts {
    head_facts(&t.guards(), live)
}

/// What the guards read of a task (with its live job, if any).
fn head_facts(h: &GuardColumns, live: &HashMap<i64, (i64, JobStatus)>) -> GuardFacts {
    GuardFacts {
        stage: h.stage,
        stage_entered_at: h.stage_entered_at,
        live_job: live.get(&h.id).map(|(id, s)| (*id, s.as_str())),
        developer_retries: h.developer_retries,
        escalated: h.escalated_at.is_some(),
    }
}

/// Whether the local guards let a task through (`core::reconcile::local_guards` on its
/// head): only such a task can be evaluated, so only it is read whole.
fn passes_local_guards(
    h: &TaskHead,
    live: &HashMap<i64, (i64, JobStatus)>,
    now: i64,
    limits: &Limits,
) -> bool {
    reconcile::passes_local_guards(&head_facts(&h.guards(), live), now, limits)
}

impl Pass<'_> {
    /// Counts an error, and a decision left unwritten when the database refused it.
    fn failed(&mut self, e: &anyhow::Error) {
        self.report.c.errors += 1;
        if crate::ops::pass::is_database_failure(e) {
            self.report.unwritten += 1;
        }
    }

    fn judge_tasks(
        &mut self,
        db: &mut Db,
        live: &HashMap<i64, (i64, JobStatus)>,
        listings: &HashMap<String, ProjectListing>,
        cap: usize,
    ) -> Result<()> {
        let skip_blocked = self.ctx.config.settings.reconcile_skip_blocked_enabled;
        let cursor_path = self.cursor_path();
        let cursor = read_cursor(db, &cursor_path);
        // Fairness under the cap: start after the last task the previous capped pass
        // reached, then wrap around (`reconcile::fair_order_key`'s order: the ids above
        // the cursor, then those up to it, each in id order).
        let mut walk = Walk::default();
        let segments: Vec<(i64, Option<i64>)> = [(cursor.max(0), None), (0, Some(cursor))]
            .into_iter()
            .filter(|(_, upto)| upto.is_none_or(|u| u > 0))
            .collect();
        let (now, limits) = (self.now, self.limits);
        let full = |h: &TaskHead| passes_local_guards(h, live, now, &limits);
        // The pages are read on a second connection, ahead of the judging; without one,
        // on the pass's own, between its tasks.
        // It scans each page once: a small page cache keeps a pass's memory where it was.
        let reader = self
            .ctx
            .open_db()
            .and_then(|r| r.cap_page_cache(READER_CACHE_KIB).map(|()| r));
        let mut each = |db: &mut Db, t: &PageTask, jobs: &mut HashMap<i64, Option<Job>>| {
            // Between tasks, never within one: the next pass starts after the last
            // task this one handled.
            if self.ctx.stop_between_items("judging tasks") {
                walk.out_of_time = true;
                return Ok(false);
            }
            let job = jobs.remove(&t.id());
            self.judge_one(db, t, job, live, listings, skip_blocked, cap, &mut walk)?;
            Ok(true)
        };
        match reader {
            Ok(reader) => for_each_task_ahead(reader, db, &segments, full, page_jobs, each)?,
            Err(e) => {
                log::debug!("reading the tasks on the pass's own connection: {e:#}");
                let (mut full, mut go_on) = (full, true);
                for &(after, upto) in &segments {
                    for_each_task(db, after, upto, &mut full, page_jobs, |db, t, jobs| {
                        go_on = each(db, t, jobs)?;
                        Ok(go_on)
                    })?;
                    if !go_on {
                        break;
                    }
                }
            }
        }
        let Walk {
            handled: _,
            last_handled,
            capped,
            out_of_time,
            mut lines,
        } = walk;
        lines.sort_by_key(|l| l.id);
        self.report.tasks = lines;
        if capped {
            self.report.stopped_early.get_or_insert_with(|| {
                format!("the per-pass cap ORCH_RECONCILE_MAX_TASKS={cap} was reached; the next pass goes on")
            });
        }
        if out_of_time {
            self.report.stopped_early.get_or_insert_with(|| {
                "the pass deadline ORCH_PASS_DEADLINE_S passed; the next pass goes on".into()
            });
        }
        // Stopped by the deadline before handling any task (the listing took the time):
        // the cursor stays where the last pass left it, or the next pass would start
        // again from the first task and never reach the last ones.
        let keep_cursor = out_of_time && last_handled.is_none();
        if !self.dry_run && !keep_cursor {
            match reconcile::next_cursor(capped || out_of_time, last_handled) {
                Some(id) => {
                    if let Err(e) = write_cursor(db, &cursor_path, id, self.now) {
                        log::warn!("could not keep the reconcile cursor: {e:#}");
                    }
                }
                None => {
                    if let Err(e) = clear_cursor(db, &cursor_path) {
                        log::warn!("could not clear the reconcile cursor: {e:#}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Judges one task, acts on the verdict, and keeps its report line when the report
    /// shows it.
    ///
    /// # Errors
    /// Only when a task the page read as a head must be read whole and cannot be (never
    /// in practice: the page reads whole every task its local guards let through).
    #[allow(clippy::too_many_arguments)]
    fn judge_one(
        &mut self,
        db: &mut Db,
        t: &PageTask,
        job: Option<Option<Job>>,
        live: &HashMap<i64, (i64, JobStatus)>,
        listings: &HashMap<String, ProjectListing>,
        skip_blocked: bool,
        cap: usize,
        walk: &mut Walk,
    ) -> Result<()> {
        self.report.c.scanned += 1;
        // Only a task past the local guards (one the page read whole) reaches the
        // blocked guard: a head is skipped before its listing is looked at.
        let listed = (skip_blocked && matches!(t, PageTask::Full(_))).then(|| {
            reconcile::listed(
                listings.get(t.project()).map(|l| &l.listing),
                t.work_item_id(),
            )
        });
        let progress = Progress {
            rate_limited: self.rate_limited,
            handled: walk.handled,
            cap,
        };
        let meanings = self
            .ctx
            .config
            .pipeline
            .project(t.project())
            .map(|p| &p.states);
        let facts = facts_of(t, live);
        // The whole task, once it is evaluated.
        let mut whole: Option<std::borrow::Cow<'_, Task>> = None;
        let verdict = match reconcile::judge(
            &facts,
            self.now,
            &self.limits,
            progress,
            listed.as_ref(),
            meanings,
        ) {
            Judgement::Skip(skip) => TaskVerdict::Skip { skip },
            Judgement::Deferred(why) => {
                walk.capped |= matches!(why, Deferral::Cap(_));
                TaskVerdict::Deferred {
                    because: why.to_string(),
                }
            }
            Judgement::Evaluate => {
                walk.handled += 1;
                walk.last_handled = Some(t.id());
                let task = match t {
                    PageTask::Full(task) => std::borrow::Cow::Borrowed(task),
                    PageTask::Head(h) => match db.task(h.id)? {
                        Some(task) => std::borrow::Cow::Owned(task),
                        None => anyhow::bail!("task {} disappeared during the pass", h.key),
                    },
                };
                let verdict = self.evaluate(db, &task, job);
                whole = Some(task);
                verdict
            }
        };
        let note = match (&verdict, &whole) {
            (TaskVerdict::Act { action }, Some(task)) if !self.dry_run => {
                self.act(db, task, action)
            }
            _ => None,
        };
        match &verdict {
            TaskVerdict::Skip { .. } => self.report.c.skipped += 1,
            TaskVerdict::Deferred { .. } => self.report.c.deferred += 1,
            TaskVerdict::Act {
                action: Action::Wait { .. },
            } => self.report.c.waiting += 1,
            TaskVerdict::Act { .. } => {}
        }
        if !(self.every_line || report::shown(false, &verdict, note.as_ref())) {
            return Ok(());
        }
        walk.lines.push(TaskLine {
            id: t.id(),
            key: t.key().to_string(),
            project: t.project().to_string(),
            stage: t.stage(),
            verdict,
            note,
        });
        Ok(())
    }

    fn cursor_path(&self) -> PathBuf {
        self.ctx.config.settings.state_dir.join("reconcile.cursor")
    }

    /// Gathers what the stage's gate needs and decides.
    /// `job`: the stage's latest job when the page's read found it (or found none).
    fn evaluate(&mut self, db: &mut Db, t: &Task, job: Option<Option<Job>>) -> TaskVerdict {
        let from_page = job.is_some();
        let (mut inputs, job_read) = crate::ops::gate::gate_inputs_and_job(
            self.ctx,
            db,
            t,
            &mut self.forge,
            !self.dry_run,
            job.clone(),
        );
        self.merged
            .insert(t.id, crate::core::round::merged(&inputs.pr));
        if let (Stage::Development, Some(failure)) = (t.stage, &inputs.ci_failure) {
            self.ci_failures.insert(t.id, failure.clone());
        }
        // The gate's own read of the job when it made one (the same query: nothing
        // writes in between), else the page's, else read now.
        let job_read = job_read
            .or(job.map(Ok))
            .unwrap_or_else(|| db.latest_stage_job(t.id, t.stage));
        let mut latest = match job_read {
            Ok(j) => j,
            Err(e) => return cannot_read_job(t, &e),
        };
        let mut action = self.decide_with(t, &mut inputs, latest.as_ref());
        // The page's read may be seconds old by now (the tasks before this one had
        // their CI read): an action is taken on the job as it is now, and decided again
        // when it changed meanwhile (a re-run queued, an attempt ended).
        if from_page && !matches!(action, Action::Wait { .. }) {
            match db.latest_stage_job(t.id, t.stage) {
                Ok(now) if now != latest => {
                    latest = now;
                    action = self.decide_with(t, &mut inputs, latest.as_ref());
                }
                Ok(_) => {}
                Err(e) => return cannot_read_job(t, &e),
            }
        }
        TaskVerdict::Act { action }
    }

    /// Decides from the gate's inputs with `latest` as the stage's latest job (also
    /// the gate's, when its stage reads the job).
    fn decide_with(
        &self,
        t: &Task,
        inputs: &mut crate::core::gate::GateInputs,
        latest: Option<&Job>,
    ) -> Action {
        if gate::needs(t.stage).contains(&gate::Need::Job) {
            inputs.last_job = latest.map(Job::outcome);
        }
        let decision = gate::evaluate(t.stage, inputs);
        let last = latest.map(|j| (j.id, j.outcome()));
        decide(t.stage, &decision, last, t.developer_retries, &self.limits)
    }

    /// Acts on a decision; returns a note when acting failed or lost a race.
    fn act(&mut self, db: &mut Db, t: &Task, action: &Action) -> Option<String> {
        let result: Result<Option<String>> = (|| match action {
            Action::Wait { .. } => Ok(None),
            Action::Advance { to } => {
                let req = MoveRequest::new(t, *to, "gate passed (reconcile)", Actor::Reconcile);
                moves::move_task(self.ctx, db, &req)?;
                self.report.c.advanced += 1;
                Ok(None)
            }
            Action::Rollback {
                to,
                because,
                escalate,
            } => {
                let merged = self
                    .merged
                    .get(&t.id)
                    .map_or(MergeEvidence::ReadFromGitea, MergeEvidence::Given);
                let req =
                    MoveRequest::new(t, *to, because, Actor::Reconcile).merge_evidence(merged);
                let moved = moves::move_task(self.ctx, db, &req)?;
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
            Action::Rerun {
                job_id,
                attempt,
                because,
            } if self.ci_failures.contains_key(&t.id) => {
                self.rerun_for_red_ci(db, t, (*job_id, *attempt), because)
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
                self.failed(&e);
                log::warn!("task {}: acting failed: {e:#}", t.key);
                Some(format!("failed: {e:#}"))
            }
        }
    }

    /// Re-runs a developer job held by red CI: writes the failing contexts into the
    /// task's next feedback file, then re-queues the job and counts the file in one
    /// transaction; the re-run gets the file as `ORCH_FEEDBACK`.
    fn rerun_for_red_ci(
        &mut self,
        db: &mut Db,
        t: &Task,
        (job_id, attempt): (i64, u32),
        because: &str,
    ) -> Result<Option<String>> {
        let failure = &self.ci_failures[&t.id];
        let ended = attempt.saturating_sub(1);
        let written = crate::ops::feedback::write_on_ci_rerun(
            &self.ctx.config.settings.artefacts_dir,
            db,
            t,
            (job_id, ended),
            failure,
            because,
            self.now,
        )?;
        let rerun = if written.is_some() {
            db.rerun_job_with_ci_feedback(job_id, ended, self.now)?
        } else {
            db.rerun_job(job_id, self.now)?
        };
        Ok(match rerun {
            Some(attempt) => {
                self.report.c.rerun += 1;
                log::info!(
                    "task {}: job {job_id} re-queued as attempt {attempt} (CI failed on {})",
                    t.key,
                    crate::core::revision::short(&failure.head_sha)
                );
                None
            }
            None => Some(format!("job {job_id} was re-run or is live meanwhile")),
        })
    }
}

/// The reconcile cursor's stored key (kind `cursor`) under PostgreSQL, where any host
/// may run the next pass; under SQLite it is the file `reconcile.cursor` of the state dir.
const CURSOR_KEY: &str = "reconcile";

/// Reads the cursor (the file's text, or the same text stored); 0 when there is none or
/// it cannot be read.
fn read_cursor(db: &Db, path: &std::path::Path) -> i64 {
    let text = match db.engine() {
        Engine::Postgres => match db.shared_file(KIND_CURSOR, CURSOR_KEY) {
            Ok(body) => body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            Err(e) => {
                log::warn!("could not read the reconcile cursor: {e:#}");
                None
            }
        },
        Engine::Sqlite => std::fs::read_to_string(path).ok(),
    };
    text.and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_cursor(db: &Db, path: &std::path::Path, id: i64, now: i64) -> Result<()> {
    let text = format!("{id}\n");
    match db.engine() {
        Engine::Postgres => db.put_shared_file(KIND_CURSOR, CURSOR_KEY, text.as_bytes(), now),
        Engine::Sqlite => crate::adapters::fs::write_atomic(path, text.as_bytes()),
    }
}

fn clear_cursor(db: &Db, path: &std::path::Path) -> Result<()> {
    match db.engine() {
        Engine::Postgres => db.delete_shared_file(KIND_CURSOR, CURSOR_KEY).map(|_| ()),
        Engine::Sqlite => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
    }
}
