//! `orch reap`: rescues jobs left `running` by a dead process, and reclaims a stale merge
//! lease.
//!
//! Pages through running jobs by id, observes each one's processes in `/proc` (the agent
//! pid with its stamped start time, or, before the pid is stamped, the supervisor), lets
//! `core::reap::judge` decide, and acts: store or reset the dead-tick streak, or flip the
//! job with the guarded UPDATE (terminating its process group first on the backstop). A
//! flip never moves a task; reconcile re-drives the stage through its gate. One bad row is
//! logged and skipped. A job another host claimed is judged by its heartbeat
//! (`core::reap::judge_heartbeat`) and flipped by the UPDATE guarded on the heartbeat
//! horizon too.

use std::time::Duration;

use anyhow::Result;

use crate::adapters::db::Db;
use crate::adapters::lease::{LeaseFile, LeaseState, MergeLease};
use crate::adapters::lock::LockError;
use crate::core::job::Job;
use crate::core::reap::{
    heartbeat_horizon, judge, judge_heartbeat, judged_by, JobLiveness, Judged, LogFacts,
    ReapAction, ReapSettings, RunningFacts, Tier,
};
use crate::exit::ExitStatus;
use crate::ops::observe::{observe_with, ProcView};
use crate::ops::pass::{PassContext, PassOutcome};
use crate::ops::stop::stop_agent;

/// Running jobs read per query.
const PAGE: usize = 1000;
/// With more running jobs than this in the first page, the pass walks `/proc` once
/// instead of reading one `/proc/<pid>/stat` per job.
const SNAPSHOT_ABOVE: usize = 64;

/// Rescue jobs left running by dead processes, and reclaim a stale merge lease
///
/// Run by orch-reap.timer every ORCH_REAPER_INTERVAL_S. Tiers: a recorded exit code;
/// a dead (or reused) pid for ORCH_REAPER_DEAD_TICKS consecutive passes; running past
/// ORCH_REAPER_MAX_RUNNING_S, or alive with a log that has not grown for
/// ORCH_AGENT_STALL_S (the process group is terminated first). A job another host
/// (ORCH_HOST_ID) claimed is judged by its heartbeat instead: failed as
/// heartbeat-expired once older than ORCH_HEARTBEAT_TIMEOUT_S. Exit codes: 0
/// done, 2 error, 75 another reap pass holds the lock.
#[derive(Debug, clap::Args)]
pub struct ReapArgs {
    /// Say what would be flipped or reclaimed and why each job is left; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one `reap` pass.
///
/// # Errors
/// When the database cannot be read.
pub fn run(args: &ReapArgs, ctx: &PassContext) -> Result<ExitStatus> {
    if !ctx.config.settings.reaper_enabled {
        log::info!("reap: disabled by ORCH_REAPER_ENABLED=false; nothing read or written");
        return Ok(ExitStatus::Success);
    }
    ctx.run_pass("reap", args.dry_run, |db, _guard| {
        pass(ctx, db, args.dry_run)
    })
}

/// What a pass counted.
#[derive(Debug, Default)]
struct Tally {
    scanned: i64,
    alive: i64,
    streak: i64,
    reset: i64,
    flips: [i64; 5],
    elsewhere: i64,
    lost: i64,
    bad_rows: i64,
    unstoppable: i64,
    leases_reclaimed: i64,
    lease_malformed: i64,
}

/// One reap pass over an open database (the caller holds the pass lock; the guarded
/// UPDATEs keep it correct even when it does not).
///
/// # Errors
/// When the database cannot be read.
pub fn pass(ctx: &PassContext, db: &mut Db, dry_run: bool) -> Result<PassOutcome> {
    let s = &ctx.config.settings;
    let pass_started = std::time::SystemTime::now();
    let now = ctx.now_secs();
    let settings = ReapSettings {
        dead_ticks: s.reaper_dead_ticks.0,
        max_running_s: s.reaper_max_running_s.secs(),
        stall_s: s.agent_stall_s.secs(),
    };
    let grace = s.reaper_kill_grace_s.0;
    // Another host's jobs are judged by heartbeat, not by this host's /proc.
    let host = s.host_id();
    let heartbeat_timeout = s.heartbeat_timeout_s.secs();
    // Heartbeats are stamped with the database's clock (ORCH_NOW when pinned): judged
    // against the same clock, read once for the pass, so no host's clock skew counts.
    let heartbeat_now = match s.now.0 {
        Some(_) => now,
        None => db.clock()?,
    };
    let horizon = heartbeat_horizon(heartbeat_now, heartbeat_timeout);
    // Other hosts' jobs with a recent heartbeat are theirs: counted, never read.
    let elsewhere = db.running_elsewhere(&host)?;
    let mut t = Tally::default();
    let mut after = (i64::MIN, i64::MIN);
    let mut procs: Option<ProcView> = None;
    // Whether every page was read (no deadline stop).
    let mut read_all = false;
    // Between pages and jobs, never within one: past the pass deadline (a write lock
    // held elsewhere makes each write wait busy_timeout) the rest wait for the next pass.
    while !ctx.bounds().stop_for_deadline("reaping jobs") {
        let page = db.running_page(after, PAGE, &host, horizon)?;
        // Few jobs: read each pid directly; many: walk /proc once for the whole pass.
        let procs = procs.get_or_insert_with(|| {
            if page.len() > SNAPSHOT_ABOVE {
                ProcView::snapshot()
            } else {
                ProcView::direct()
            }
        });
        let Some((last, _)) = page.last() else {
            read_all = true;
            break;
        };
        after = *last;
        for ((_, id), row) in page {
            if ctx.bounds().past_deadline() {
                break;
            }
            t.scanned += 1;
            match row {
                Ok(job) if judged_by(job.host.as_deref(), &host) == Judged::ByHeartbeat => {
                    t.elsewhere += 1;
                    if let Err(e) =
                        reap_elsewhere(db, &job, heartbeat_now, heartbeat_timeout, dry_run, &mut t)
                    {
                        t.bad_rows += 1;
                        log::error!("reap: job {id} skipped: {e:#}");
                    }
                }
                Ok(job) => {
                    let observed = observe_with(&job, procs);
                    // The decision reads the supervisor only when an exit code is
                    // recorded; every other job skips that look at /proc.
                    let supervisor_alive = job.exit_code.is_some() && procs.supervisor_alive(&job);
                    let facts = RunningFacts {
                        exit_code: job.exit_code,
                        started_at: job.started_at,
                        dead_ticks: job.dead_ticks,
                        supervisor_alive,
                        log: log_facts(&job, settings.stall_s > 0),
                    };
                    if let Err(e) = reap_one(
                        db, &job, &facts, observed, now, &settings, grace, dry_run, &mut t,
                    ) {
                        t.bad_rows += 1;
                        log::error!("reap: job {id} skipped: {e:#}");
                    }
                }
                Err(e) => {
                    t.bad_rows += 1;
                    log::error!("reap: job {id} skipped: unreadable row: {e}");
                }
            }
        }
    }
    // After every page: the other hosts' jobs not read had a heartbeat within the
    // timeout (a pass stopped by its deadline cannot tell them from those not reached).
    let fresh_elsewhere = (elsewhere - t.elsewhere).max(0);
    t.elsewhere = t.elsewhere.max(elsewhere);
    if read_all && fresh_elsewhere > 0 {
        if dry_run {
            println!(
                "{fresh_elsewhere} job(s) of other hosts: skip: heartbeat within {heartbeat_timeout}s (ORCH_HEARTBEAT_TIMEOUT_S)"
            );
        } else {
            t.alive += fresh_elsewhere;
        }
    }
    if !dry_run {
        // The state dir's atomically written files (the merge lease, reconcile's
        // cursor): what a writer killed between its write and its rename left.
        crate::adapters::fs::sweep_temps(&s.state_dir, None, pass_started);
        remove_ended_slots(db, &s.state_dir);
    }
    if s.lease_reclaim_enabled {
        reclaim_lease(ctx, now, dry_run, &mut t)?;
    } else {
        log::info!("reap: lease reclaim disabled by ORCH_LEASE_RECLAIM_ENABLED=false");
    }
    let mut outcome = PassOutcome::ok(vec![
        ("scanned", t.scanned),
        ("alive", t.alive),
        ("dead_streak", t.streak),
        ("streak_reset", t.reset),
        ("flipped", t.flips.iter().sum()),
        ("flipped_exit_code", t.flips[0]),
        ("flipped_max_running", t.flips[1]),
        ("flipped_dead_pid", t.flips[2]),
        ("flipped_stalled", t.flips[3]),
        ("flipped_heartbeat_expired", t.flips[4]),
        ("other_hosts", t.elsewhere),
        ("lost_race", t.lost),
        ("bad_rows", t.bad_rows),
        ("unstoppable", t.unstoppable),
        ("leases_reclaimed", t.leases_reclaimed),
        ("lease_malformed", t.lease_malformed),
    ]);
    // A job it decided on but could not write (a read-only or locked database) was not
    // rescued: the pass says so with exit 2, so the unit fails instead of reading success.
    if t.unstoppable > 0 {
        log::error!(
            "reap: {} job(s) past their limit could not be stopped (see above); exit 2",
            t.unstoppable
        );
        outcome.status = ExitStatus::Error;
    }
    if t.bad_rows > 0 {
        log::error!(
            "reap: {} job(s) could not be handled (see above); exit 2",
            t.bad_rows
        );
        outcome.status = ExitStatus::Error;
    }
    Ok(outcome)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one pass's context, passed down once"
)]
fn reap_one(
    db: &Db,
    job: &Job,
    facts: &RunningFacts,
    observed: JobLiveness,
    now: i64,
    settings: &ReapSettings,
    grace: Duration,
    dry_run: bool,
    t: &mut Tally,
) -> Result<()> {
    let action = judge(facts, observed, now, settings);
    if dry_run {
        println!("{}", explain(job, observed, &action, settings));
        return Ok(());
    }
    match action {
        ReapAction::Leave => t.alive += 1,
        ReapAction::ResetStreak => {
            t.alive += 1;
            if db.set_dead_ticks(job.id, job.attempt, job.dead_ticks, 0)? {
                t.reset += 1;
                log::info!("reap: job {} alive again; dead streak reset", job.id);
            }
        }
        ReapAction::LogGrew { size } => {
            t.alive += 1;
            if !db.record_log_growth(job.id, job.attempt, size, now)? {
                t.lost += 1;
            }
        }
        ReapAction::Streak { ticks } => {
            if db.set_dead_ticks(job.id, job.attempt, job.dead_ticks, ticks)? {
                t.streak += 1;
                log::info!(
                    "reap: job {} process {} (pass {ticks} of {})",
                    job.id,
                    observed.as_str(),
                    settings.dead_ticks
                );
            } else {
                t.lost += 1;
            }
        }
        ReapAction::Flip {
            status,
            tier,
            kill,
            why,
        } => {
            if kill {
                let stop = stop_agent(job, grace);
                let line = stop.describe(job.supervisor_pid);
                note_in_job_log(job, &format!("== reap ({tier}): agent {line}"));
                if !stop.stopped() {
                    // Flipping now would free the slot while the agent works on: leave
                    // the job running, say so loudly, and try again next pass.
                    t.unstoppable += 1;
                    log::error!(
                        "reap: job {} ({tier}) NOT stopped: agent {line}; the job stays running. Stop it as root (kill -KILL -- -{}) or with systemctl stop orch-job@{}.service",
                        job.id,
                        stop.pgid,
                        job.id
                    );
                    return Ok(());
                }
                log::info!("reap: job {} agent {line}", job.id);
            }
            if db.reap_flip(job.id, job.attempt, status, tier, now)? {
                let i = Tier::ALL
                    .iter()
                    .position(|x| *x == tier)
                    .expect("known tier");
                t.flips[i] += 1;
                log::info!(
                    "reap: flipped job {} attempt {} to {status} ({tier}): {why}",
                    job.id,
                    job.attempt
                );
            } else {
                t.lost += 1;
                log::info!(
                    "reap: job {} changed since it was judged; left as it is",
                    job.id
                );
            }
        }
    }
    Ok(())
}

/// Judges and, once its heartbeat expired, flips a job another host claimed: by the
/// flip guarded on its attempt and the heartbeat horizon, so a heartbeat that lands
/// after this pass read the job makes the flip change nothing, and among reaps on
/// several hosts at once one flips it. Its processes are that host's: none is
/// signalled from here (its supervisor stops its agent when its next heartbeat finds
/// the job flipped).
fn reap_elsewhere(
    db: &Db,
    job: &Job,
    now: i64,
    timeout_s: i64,
    dry_run: bool,
    t: &mut Tally,
) -> Result<()> {
    let action = judge_heartbeat(job.heartbeat_at.or(job.started_at), now, timeout_s);
    if dry_run {
        let what = match &action {
            ReapAction::Flip {
                status, tier, why, ..
            } => {
                format!("would flip to {status} ({tier}): {why}")
            }
            _ => format!(
                "skip: runs on host {}, heartbeat within {timeout_s}s (ORCH_HEARTBEAT_TIMEOUT_S)",
                job.host.as_deref().unwrap_or("?")
            ),
        };
        println!("job {} attempt {}: {what}", job.id, job.attempt);
        return Ok(());
    }
    let ReapAction::Flip {
        status, tier, why, ..
    } = action
    else {
        t.alive += 1;
        return Ok(());
    };
    if db.reap_flip_expired(job.id, job.attempt, heartbeat_horizon(now, timeout_s), now)? {
        t.flips[Tier::ALL
            .iter()
            .position(|x| *x == tier)
            .expect("known tier")] += 1;
        log::info!(
            "reap: flipped job {} attempt {} of host {} to {status} ({tier}): {why}",
            job.id,
            job.attempt,
            job.host.as_deref().unwrap_or("?")
        );
    } else {
        t.lost += 1;
        log::info!(
            "reap: job {} heartbeat or state changed since it was judged; left as it is",
            job.id
        );
    }
    Ok(())
}

/// Removes the agent socket's request-slot lock files of jobs no longer running (one
/// per slot a job ever used; without this they would pile up, one set per job).
fn remove_ended_slots(db: &Db, state_dir: &std::path::Path) {
    use crate::commands::agent_socket::{slot_job, SLOTS_DIR};
    let Ok(entries) = std::fs::read_dir(state_dir.join(SLOTS_DIR)) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let Some(id) = e.file_name().to_str().and_then(slot_job) else {
            continue;
        };
        let ended = match db.job(id) {
            Ok(Some(job)) => job.status != crate::core::job::JobStatus::Running,
            Ok(None) => true,
            Err(_) => false,
        };
        if ended {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Appends `line` to the job's log (where its agent's output goes), when it has one.
pub fn note_in_job_log(job: &Job, line: &str) {
    use std::io::Write as _;
    if let Some(path) = job.log_path.as_deref() {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The job's log for stall detection: its size now (a `stat`, only when the stall check
/// is on and the job has no exit code) and what an earlier pass stored.
fn log_facts(job: &Job, stall_on: bool) -> LogFacts {
    let size = (stall_on && job.exit_code.is_none())
        .then_some(job.log_path.as_deref())
        .flatten()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX));
    LogFacts {
        size,
        stored_size: job.log_size,
        grew_at: job.log_grew_at,
    }
}

fn explain(job: &Job, observed: JobLiveness, action: &ReapAction, s: &ReapSettings) -> String {
    let what = match action {
        ReapAction::Leave => format!("skip: process {}, within the limit", observed.as_str()),
        ReapAction::ResetStreak => "would reset its dead streak: process alive again".into(),
        ReapAction::LogGrew { size } => {
            format!("skip: process alive, its log at {size} bytes is new (would store it)")
        }
        ReapAction::Streak { ticks } => format!(
            "skip for now: process {} (pass {ticks} of {})",
            observed.as_str(),
            s.dead_ticks
        ),
        ReapAction::Flip {
            status,
            tier,
            kill,
            why,
        } => format!(
            "would {}flip to {status} ({tier}): {why}",
            if *kill {
                "terminate its process group and "
            } else {
                ""
            }
        ),
    };
    format!("job {} attempt {}: {what}", job.id, job.attempt)
}

fn reclaim_lease(ctx: &PassContext, now: i64, dry_run: bool, t: &mut Tally) -> Result<()> {
    let lease = MergeLease::new(&ctx.config.settings.state_dir);
    let guard = match lease.lock() {
        Ok(g) => g,
        Err(LockError::Busy(_)) => {
            log::info!("reap: merge lease is being changed by its holder; left for the next pass");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match lease.read()? {
        LeaseFile::Free => {}
        LeaseFile::Malformed(why) => {
            t.lease_malformed += 1;
            log::warn!("reap: merge lease file is malformed; left for an operator: {why}");
        }
        LeaseFile::Held(l) => {
            let state = l.judge(now);
            let holder = format!(
                "job {} pid {}",
                l.job_id.map_or("-".into(), |j| j.to_string()),
                l.pid
            );
            match state {
                LeaseState::Held => log::debug!("reap: merge lease held by {holder}"),
                LeaseState::HolderDead | LeaseState::Expired if dry_run => {
                    println!("merge lease of {holder}: would reclaim ({state:?})");
                }
                LeaseState::HolderDead | LeaseState::Expired => {
                    if lease.remove(&guard)? {
                        t.leases_reclaimed += 1;
                        log::info!("reap: reclaimed the merge lease of {holder}: {state:?}");
                    }
                }
            }
        }
    }
    Ok(())
}
