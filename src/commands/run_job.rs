//! `orch run-job <id>`: the job supervisor that `dispatch` starts.
//!
//! Takes the claimed job (one supervisor per attempt), runs the agent's argv from the
//! pipeline file (no shell) in its own process group with the job's environment, stamps
//! pid and start time right after the spawn, streams output to the job's log file, waits,
//! records the exit code, flips the job (guarded by `status='running'` and the attempt),
//! then evaluates the stage's gate. The exit code never moves the task: the gate does.
//! TERM or INT to the supervisor is passed on to the agent's process group.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::adapters::artefacts;
use crate::adapters::db::Db;
use crate::adapters::process::start_time;
use crate::adapters::spawn::{self, exit_code_of};
use crate::adapters::workspace;
use crate::commands::agent_socket::SOCKET_ENV;
use crate::core::job::Job;
use crate::core::job::JobStatus;
use crate::core::stage::{Actor, Agent};
use crate::core::task::Task;
use crate::exit::ExitStatus;
use crate::ops::gate::{apply_gate, GateOutcome};
use crate::ops::jobs::{agent_env, job_log_path};
use crate::ops::pass::PassContext;

/// Exit code recorded when the agent command cannot be started (the shell's "command
/// not found").
const EXIT_NOT_STARTED: i32 = 127;
/// What `supervise` returns when the supervisor fenced itself before the agent's spawn
/// (never recorded: a fenced supervisor leaves the job as it is).
const EXIT_FENCED: i32 = 143;

/// Supervise one claimed job: run its agent, record how it ended, then evaluate the gate
///
/// Started by `dispatch` (directly, or as `orch-job@<id>.service`). Exit codes: 0 the
/// agent succeeded, 1 the agent failed or could not be started (the job is `failed`),
/// 2 the job is not running, belongs to another supervisor, or the database failed.
#[derive(Debug, clap::Args)]
pub struct RunJobArgs {
    /// The job id
    pub id: i64,
}

/// Runs the supervisor.
///
/// # Errors
/// When the job cannot be taken or the database fails.
pub fn run(args: &RunJobArgs, ctx: &PassContext) -> Result<ExitStatus> {
    crate::adapters::spawn::detach_session();
    let mut db = ctx.open_db()?;
    let job = db
        .job(args.id)?
        .with_context(|| format!("no job with id {}", args.id))?;
    if job.status != JobStatus::Running {
        bail!(
            "job {} is {}, not running: dispatch claims a job before run-job supervises it",
            job.id,
            job.status
        );
    }
    let task = db.task(job.task_id)?.with_context(|| {
        format!(
            "job {} names task {}, which does not exist",
            job.id, job.task_id
        )
    })?;
    let log_path = job_log_path(ctx, job.id);
    let me = i64::from(std::process::id());
    if !db.stamp_supervisor(job.id, job.attempt, me, &log_path.display().to_string())? {
        bail!(
            "job {} attempt {} already has a supervisor (or moved on); not running it twice",
            job.id,
            job.attempt
        );
    }
    // Liveness across hosts: a first heartbeat now, then one every
    // ORCH_HEARTBEAT_INTERVAL_S until the job is flipped below.
    let heartbeat = Heartbeat::start(ctx, &db, &job)?;
    let code = supervise(ctx, &db, &job, &task, &log_path, &heartbeat)?;
    if let Some(why) = heartbeat.stop() {
        if let Ok(mut log) = spawn::open_log(&log_path) {
            let _ = writeln!(log, "== run-job stopped its agent: {why}");
        }
        bail!(
            "job {} attempt {}: {why}; its agent was stopped, the job left as it is",
            job.id,
            job.attempt
        );
    }
    // Under PostgreSQL the agent's files reach the other hosts' gates before the job
    // ends: a pass elsewhere that sees the job ended finds what its agent wrote.
    // Only while the job is still this attempt's: a supervisor whose job was rescued
    // meanwhile (re-run on another host, maybe) must not overwrite the newer files.
    let store = artefacts::ArtefactStore::new(&ctx.config.settings.artefacts_dir, &db);
    let ours = || -> Result<bool> {
        Ok(db
            .job(job.id)?
            .is_some_and(|j| j.status == JobStatus::Running && j.attempt == job.attempt))
    };
    let published = match store.is_shared().then(ours) {
        Some(Ok(false)) => {
            log::warn!(
                "run-job: job {} moved on (rescued or cancelled); its agent's artefacts are not stored",
                job.id
            );
            Ok(0)
        }
        Some(Err(e)) => Err(e),
        _ => store.publish(&task.key, ctx.now_secs()),
    };
    match published {
        Ok(0) => {}
        Ok(n) => log::info!("run-job: job {}: {n} artefact file(s) stored", job.id),
        Err(e) => log::warn!(
            "run-job: job {}: artefacts not stored for the other hosts: {e:#}",
            job.id
        ),
    }
    record_usage(ctx, &mut db, &job, &task, &log_path);
    let status = JobStatus::from_exit_code(code);
    // The agent ran for minutes or hours: the job's end and the gate after it happen now,
    // not when the pass began, so the pass's time is read again (the one re-read here).
    let now = ctx.renew_now().as_second();
    if db.finish_job(job.id, job.attempt, status, now)? {
        log::info!(
            "run-job: job {} ({} {}) {status} with exit code {code}",
            job.id,
            task.key,
            job.agent
        );
    } else {
        log::warn!(
            "run-job: job {} was no longer running at attempt {} (cancelled or reaped); left as it is",
            job.id,
            job.attempt
        );
    }
    // The gate decides what the stage does next, only while the task is at the job's stage.
    match db.task(task.id)? {
        Some(t) if t.stage == job.stage => gate(ctx, &mut db, &t),
        Some(t) => log::info!(
            "run-job: task {} moved on to {}; no gate to evaluate for {}",
            t.key,
            t.stage,
            job.stage
        ),
        None => {}
    }
    Ok(if status == JobStatus::Succeeded {
        ExitStatus::Success
    } else {
        ExitStatus::No
    })
}

/// The supervisor's heartbeat (docs/scale-out.md, "Liveness without pids"): a thread
/// with its own connection stamps the job's `heartbeat_at` and its host's row every
/// `ORCH_HEARTBEAT_INTERVAL_S` while the attempt runs. Self-fencing: when a heartbeat
/// changes no row (the attempt was rescued, cancelled or re-run: it is not this
/// supervisor's any more), or no heartbeat got through for `ORCH_HEARTBEAT_TIMEOUT_S`
/// (the database unreachable: another host's reap may rescue the job meanwhile), the
/// supervisor stops its agent the way a TERM from `job cancel` or systemd does (the
/// signal forwarder: TERM to the agent's group, KILL after the grace) and exits
/// without flipping the job.
struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Fence>,
}

/// What the heartbeat thread and the supervisor share.
#[derive(Default)]
struct Fence {
    /// The agent's pid (its process group), once spawned; 0 before.
    agent: AtomicI64,
    /// Why the supervisor fenced itself, once it did.
    why: Mutex<Option<String>>,
    /// Set with `why`, read without the lock.
    fenced: AtomicBool,
    /// ORCH_REAPER_KILL_GRACE_S: between TERM and KILL.
    grace: Duration,
}

impl Fence {
    /// Fences: records why, then stops the agent's group if it was spawned (else the
    /// supervisor sees the fence before spawning, or right after: [`Heartbeat::agent_started`]).
    fn fence(&self, why: String) {
        *self.why.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        self.fenced.store(true, Ordering::SeqCst);
        let pid = self.agent.load(Ordering::SeqCst);
        if pid > 0 {
            stop_group(pid, self.grace);
        }
    }
}

/// Stops an agent's process group as the signal forwarder does: TERM, then KILL when
/// it is still there after `grace`.
fn stop_group(pid: i64, grace: Duration) {
    spawn::signal_group(pid, rustix::process::Signal::Term);
    if !spawn::wait_gone(pid, grace) {
        log::warn!(
            "run-job: the agent's process group {pid} is still running {} s after the signal; KILL",
            grace.as_secs()
        );
        spawn::signal_group(pid, rustix::process::Signal::Kill);
    }
}

impl Heartbeat {
    /// Writes the first heartbeat (on this connection) and starts the thread.
    ///
    /// # Errors
    /// When the first heartbeat cannot be written, or finds the attempt gone.
    fn start(ctx: &PassContext, db: &Db, job: &Job) -> Result<Heartbeat> {
        let s = &ctx.config.settings;
        let host = s.host_id();
        // The database's clock, unless ORCH_NOW pins it (tests): every host's
        // heartbeats and reap's horizon then read one clock.
        let pinned = s.now.0.map(jiff::Timestamp::as_second);
        let now = move || pinned;
        if !db.heartbeat(job.id, job.attempt, &host, now())? {
            bail!(
                "job {} attempt {} is no longer running (rescued, cancelled or re-run); not starting its agent",
                job.id,
                job.attempt
            );
        }
        let interval = s.heartbeat_interval_s.0;
        let timeout = s.heartbeat_timeout_s.0;
        let path = s.db.clone();
        let (id, attempt) = (job.id, job.attempt);
        let shared = Arc::new(Fence {
            grace: s.reaper_kill_grace_s.0,
            ..Fence::default()
        });
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fence = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut conn: Option<Db> = None;
            let mut last_ok = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                let beat = conn
                    .take()
                    .map_or_else(|| Db::open_existing(&path), Ok)
                    .and_then(|db| {
                        let ok = db.heartbeat(id, attempt, &host, now())?;
                        conn = Some(db);
                        Ok(ok)
                    });
                let why = match beat {
                    Ok(true) => {
                        last_ok = Instant::now();
                        continue;
                    }
                    Ok(false) => "the job is no longer running at this attempt (rescued, cancelled or re-run)".to_string(),
                    Err(e) if last_ok.elapsed() > timeout => format!(
                        "no heartbeat got through for {} s, more than ORCH_HEARTBEAT_TIMEOUT_S ({} s): {e:#}",
                        last_ok.elapsed().as_secs(),
                        timeout.as_secs()
                    ),
                    Err(e) => {
                        log::warn!(
                            "run-job: job {id} heartbeat failed (tried again in {} s): {e:#}",
                            interval.as_secs()
                        );
                        continue;
                    }
                };
                log::warn!("run-job: job {id} attempt {attempt}: {why}; stopping its agent");
                fence.fence(why);
                return;
            }
        });
        Ok(Heartbeat {
            stop: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// Records the spawned agent; stops it at once when the supervisor fenced itself
    /// meanwhile. Returns whether it did.
    fn agent_started(&self, pid: i64) -> bool {
        self.shared.agent.store(pid, Ordering::SeqCst);
        if self.shared.fenced.load(Ordering::SeqCst) {
            stop_group(pid, self.shared.grace);
            return true;
        }
        false
    }

    /// Whether the supervisor fenced itself (the agent must not start).
    fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::SeqCst)
    }

    /// Stops the thread and waits for it (a heartbeat under way ends first); returns
    /// why the supervisor fenced itself, if it did.
    fn stop(mut self) -> Option<String> {
        self.end();
        self.shared
            .why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn end(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.end();
    }
}

/// Reads the usage the agent reported (`usage-<job id>.json` in the task's artefact
/// folder, docs/jobs.md "Spend") and records it on the job and its totals. Never fails
/// the job: a missing file records nothing; a bad one (too big, not a regular file, a
/// bad form) is a warning in the job's log and records nothing. A read file is renamed
/// to `usage-<job id>.<attempt>.recorded.json`, so a later attempt of the same job only
/// counts what its own agent writes.
fn record_usage(ctx: &PassContext, db: &mut Db, job: &Job, task: &Task, log_path: &Path) {
    let Ok(dir) = artefacts::task_dir(&ctx.config.settings.artefacts_dir, &task.key) else {
        return;
    };
    let path = dir.join(crate::core::spend::usage_file_name(job.id));
    let outcome = match read_usage(&path) {
        Ok(None) => return,
        Ok(Some(u)) => match db.record_usage(job.id, job.attempt, &u) {
            Ok(true) => {
                let done = dir.join(format!("usage-{}.{}.recorded.json", job.id, job.attempt));
                if let Err(e) = std::fs::rename(&path, &done) {
                    log::warn!(
                        "run-job: job {}: could not set {} aside: {e}",
                        job.id,
                        path.display()
                    );
                }
                Ok(u.describe())
            }
            Ok(false) => Err("the job moved to another attempt".to_string()),
            Err(e) => Err(format!("{e:#}")),
        },
        Err(why) => Err(why),
    };
    let line = match outcome {
        Ok(what) => format!("== usage recorded: {what}"),
        Err(why) => {
            log::warn!("run-job: job {} usage not recorded: {why}", job.id);
            format!("== usage not recorded ({}): {why}", path.display())
        }
    };
    if let Ok(mut log) = spawn::open_log(log_path) {
        let _ = writeln!(log, "{line}");
    }
}

/// The usage file's form; `Ok(None)` when there is none.
fn read_usage(path: &Path) -> Result<Option<crate::core::spend::Usage>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never through a symlink: the agent may run as another user.
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it (a symlink is refused): {e}")),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let max = crate::core::spend::USAGE_MAX_BYTES;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("{} bytes, more than {max}", meta.len()));
    }
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("unreadable: {e}"))?;
    crate::core::spend::parse_usage(&text).map(Some)
}

fn gate(ctx: &PassContext, db: &mut Db, task: &Task) {
    match apply_gate(ctx, db, task, Actor::RunJob) {
        Ok(GateOutcome::Advanced(m) | GateOutcome::RolledBack(m)) => {
            log::info!(
                "run-job: gate moved task {} {} -> {}",
                task.key,
                m.from,
                m.to
            );
        }
        Ok(other) => log::debug!("run-job: gate for task {}: {other:?}", task.key),
        // Reconcile re-evaluates later; the job's own outcome is already recorded.
        Err(e) => log::warn!("run-job: gate for task {} not applied: {e:#}", task.key),
    }
}

/// Runs the agent and returns its exit code (or [`EXIT_NOT_STARTED`]).
fn supervise(
    ctx: &PassContext,
    db: &Db,
    job: &Job,
    task: &Task,
    log_path: &Path,
    heartbeat: &Heartbeat,
) -> Result<i32> {
    let mut log = spawn::open_log(log_path)?;
    let _ = writeln!(
        log,
        "== orch run-job {} attempt {} ({} for {})",
        job.id, job.attempt, job.agent, task.key
    );
    let art_dir =
        match artefacts::task_dir(&ctx.config.settings.artefacts_dir, &task.key).and_then(|d| {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating artefact folder {}", d.display()))?;
            Ok(d)
        }) {
            Ok(d) => d,
            Err(e) => return not_started(db, job, &mut log, &format!("{e:#}")),
        };
    // Under PostgreSQL what other hosts' agents and passes stored (artefacts, feedback)
    // is written here first, so the agent reads files as on one host.
    match artefacts::ArtefactStore::new(&ctx.config.settings.artefacts_dir, db)
        .materialise(&task.key)
    {
        Ok(0) => {}
        Ok(n) => {
            let _ = writeln!(
                log,
                "== {n} stored artefact file(s) written into {}",
                art_dir.display()
            );
        }
        Err(e) => {
            let why = format!("stored artefacts not written: {e:#}");
            return not_started(db, job, &mut log, &why);
        }
    }
    // The developer's next job after a rollback gets its newest feedback file; the
    // first round (and every other agent) gets none.
    let feedback = if job.agent == Agent::Developer {
        match crate::ops::feedback::newest(
            db,
            &ctx.config.settings.artefacts_dir,
            task.id,
            &task.key,
        ) {
            Ok(f) => f,
            Err(e) => return not_started(db, job, &mut log, &format!("{e:#}")),
        }
    } else {
        None
    };
    let mut job_env = vec![
        ("ORCH_TASK_ID", task.id.to_string()),
        ("ORCH_TASK_KEY", task.key.clone()),
        ("ORCH_JOB_ID", job.id.to_string()),
        ("ORCH_TASK_ARTEFACTS", art_dir.display().to_string()),
    ];
    if let Some(f) = &feedback {
        job_env.push(("ORCH_FEEDBACK", f.display().to_string()));
    }
    // An allowlist, never this process's whole environment (docs/security.md).
    let mut env = agent_env(std::env::vars_os(), &ctx.config, job.agent, &job_env);
    // The agent's user first: with one, the workspace is prepared as that user (its
    // HOME, its ssh keys) and is its own; without, git runs as orch with orch's HOME.
    let user = match agent_user(ctx, &art_dir, &mut env) {
        Ok(u) => u,
        Err(e) => return not_started(db, job, &mut log, &format!("{e:#}")),
    };
    // Before the agent starts: a workspace that cannot be prepared fails the job here.
    let workspace = match prepare_workspace(ctx, task, &env, &mut log, user.as_ref()) {
        Ok(ws) => ws,
        Err(e) => {
            let why = format!("workspace not prepared: {e:#}");
            return not_started(db, job, &mut log, &why);
        }
    };
    let ws_text = workspace.as_ref().map(|w| w.display().to_string());
    if let Some(w) = &ws_text {
        env.push(("ORCH_WORKSPACE".into(), w.into()));
    }
    let placeholders = Placeholders {
        artefacts: &art_dir,
        workspace: ws_text.as_deref(),
        feedback: feedback.as_deref(),
    };
    let argv = match ctx.config.pipeline.agent_argv(job.agent) {
        Some(template) => render_argv(template, job, task, &placeholders),
        None => {
            return not_started(
                db,
                job,
                &mut log,
                &format!(
                    "no agent command for {} in the pipeline file (agents.{})",
                    job.agent, job.agent
                ),
            )
        }
    };
    if heartbeat.is_fenced() {
        return Ok(EXIT_FENCED);
    }
    // Handlers go in before the spawn so a TERM in between is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let handle = signals.handle();
    let mut child = match spawn::spawn_agent(&argv, &env, &log, workspace.as_deref(), user.as_ref())
    {
        Ok(c) => c,
        Err(e) => {
            handle.close();
            return not_started(db, job, &mut log, &format!("{e:#}"));
        }
    };
    let pid = i64::from(child.id());
    heartbeat.agent_started(pid);
    if !db.stamp_pid(job.id, job.attempt, pid, start_time(pid))? {
        log::warn!(
            "run-job: job {} moved on before its pid was stamped",
            job.id
        );
    }
    log::info!(
        "run-job: job {} agent {} started, pid {pid}",
        job.id,
        job.agent
    );
    // TERM or INT (systemd's stop, reap or job cancel asking because the agent is
    // another user's) goes on to the agent's group; a group still there after
    // ORCH_REAPER_KILL_GRACE_S is KILLed (reap reads /proc for the outcome).
    let grace = ctx.config.settings.reaper_kill_grace_s.0;
    let forwarder = std::thread::spawn(move || {
        let mut killer = None;
        for sig in signals.forever() {
            let signal = if sig == SIGINT {
                rustix::process::Signal::Int
            } else {
                rustix::process::Signal::Term
            };
            log::warn!("run-job: passing signal {sig} on to the agent's process group {pid}");
            spawn::signal_group(pid, signal);
            killer.get_or_insert_with(|| {
                std::thread::spawn(move || {
                    if !spawn::wait_gone(pid, grace) {
                        log::warn!(
                            "run-job: the agent's process group {pid} is still running {} s after the signal; KILL",
                            grace.as_secs()
                        );
                        spawn::signal_group(pid, rustix::process::Signal::Kill);
                    }
                })
            });
        }
        if let Some(k) = killer {
            let _ = k.join();
        }
    });
    let status = child.wait().context("waiting for the agent")?;
    handle.close();
    let _ = forwarder.join();
    let code = exit_code_of(status);
    let _ = writeln!(log, "== agent exited with code {code}");
    // Recorded before the flip: a supervisor that dies in between leaves a known exit code.
    db.record_exit_code(job.id, job.attempt, code)?;
    Ok(code)
}

/// The agent's socket and user, when configured (docs/security.md, "Running
/// least-privileged"): sets `ORCH_AGENT_SOCKET` in `env` (the effective value, the
/// pipeline file's `settings:` included); with `ORCH_AGENT_USER`, checks that this
/// process may switch to it, gives the agent that user's `HOME`, `USER` and `LOGNAME`,
/// and hands the task's artefact folder to the user's group (`2770`: the agent writes
/// there, the supervisor's gate reads through the group).
///
/// # Errors
/// The reason the agent cannot be started: an unknown user, no `CAP_SETUID`, a folder
/// that cannot be handed over. The job fails before its agent starts.
fn agent_user(
    ctx: &PassContext,
    art_dir: &Path,
    env: &mut Vec<(String, std::ffi::OsString)>,
) -> Result<Option<spawn::AgentUser>> {
    let settings = &ctx.config.settings;
    let mut set = |k: &str, v: &str| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.into()));
    };
    if let Some(socket) = settings.agent_socket.as_deref().filter(|s| !s.is_empty()) {
        set(SOCKET_ENV, socket);
    }
    let Some(spec) = settings
        .agent_user
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok(None);
    };
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let user = spawn::find_user(spec, &passwd)?;
    if user.uid != rustix::process::geteuid().as_raw() && !spawn::may_switch_user() {
        bail!(
            "ORCH_AGENT_USER={} (uid {}) but run-job may not switch users: it needs CAP_SETUID and CAP_SETGID (root, or orch-job@.service's AmbientCapabilities=); the agent is not started as orch's own user",
            user.name,
            user.uid
        );
    }
    // Before any child runs as the user (git in the workspace, then the agent): a
    // switch between two non-root users keeps ambient capabilities.
    rustix::thread::clear_ambient_capability_set()
        .context("clearing the ambient capabilities before running anything as the agent user")?;
    for (k, v) in [
        ("HOME", &user.home),
        ("USER", &user.name),
        ("LOGNAME", &user.name),
    ] {
        set(k, v);
    }
    std::os::unix::fs::chown(art_dir, None, Some(user.gid)).with_context(|| {
        format!(
            "giving artefact folder {} to group {} (run-job's user must be in the agent user's group)",
            art_dir.display(),
            user.gid
        )
    })?;
    std::fs::set_permissions(art_dir, std::fs::Permissions::from_mode(0o2770))
        .with_context(|| format!("opening artefact folder {} to the agent", art_dir.display()))?;
    Ok(Some(user))
}

fn not_started(db: &Db, job: &Job, log: &mut std::fs::File, why: &str) -> Result<i32> {
    log::error!("run-job: job {} could not start its agent: {why}", job.id);
    let _ = writeln!(log, "== agent not started: {why}");
    db.record_exit_code(job.id, job.attempt, EXIT_NOT_STARTED)?;
    Ok(EXIT_NOT_STARTED)
}

/// Prepares the task's workspace when its project has a `clone_url`
/// (`adapters::workspace`); `None` for a project without one.
fn prepare_workspace(
    ctx: &PassContext,
    task: &Task,
    env: &[(String, std::ffi::OsString)],
    log: &mut std::fs::File,
    user: Option<&spawn::AgentUser>,
) -> Result<Option<PathBuf>> {
    let pipeline = &ctx.config.pipeline;
    let (Some(url), Some(project)) = (
        pipeline.clone_url(&task.project),
        pipeline.project(&task.project),
    ) else {
        return Ok(None);
    };
    let s = &ctx.config.settings;
    let root = workspace::root(&s.state_dir, s.workspaces_dir.as_deref());
    if let Some(u) = user {
        open_workspaces_root(&root, &s.state_dir, u)?;
        // Removals post-deploy-tick could not finish (the agent user's files).
        // Housekeeping: a leftover that cannot go is said, never this job's failure.
        let remover = workspace::Remover {
            user: Some(u),
            keep_on_failure: false,
        };
        if let Err(e) = workspace::finish_removals(&root, &remover) {
            log::warn!(
                "run-job: a deferred workspace removal under {} could not finish: {e:#}",
                root.display()
            );
        }
    }
    let dir = workspace::dir(&root, task.id, &task.key);
    let _ = writeln!(
        log,
        "== preparing workspace {} ({} at {})",
        dir.display(),
        url.url,
        task.branch
    );
    let source = workspace::WorkspaceSource {
        url,
        branch: &task.branch,
        default_branch: &project.default_branch,
        token: s.gitea_token.as_ref().map(|t| t.expose()),
    };
    let p = workspace::prepare(&dir, &source, env, log, user)?;
    let _ = writeln!(
        log,
        "== workspace {} at {} {}{}",
        if p.cloned { "cloned" } else { "reused" },
        task.branch,
        p.head,
        if p.branch_on_remote {
            ""
        } else {
            " (new local branch from the default branch: not on the remote yet)"
        }
    );
    Ok(Some(dir))
}

/// Makes the workspaces root one the agent user can work in: outside the state dir
/// (`0700`, which it cannot enter), owned by orch, the agent's group, `2770` (the agent
/// creates its task's folder there; orch lists and renames entries).
///
/// # Errors
/// A root inside the state dir, or one that cannot be created or handed over.
fn open_workspaces_root(root: &Path, state_dir: &Path, user: &spawn::AgentUser) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let inside = |a: &Path, b: &Path| {
        let (a, b) = (std::path::absolute(a), std::path::absolute(b));
        matches!((a, b), (Ok(a), Ok(b)) if a.starts_with(&b))
    };
    if inside(root, state_dir) {
        bail!(
            "ORCH_AGENT_USER={} cannot enter workspaces under the state dir {} (0700): set ORCH_WORKSPACES_DIR to a folder outside it (docs/jobs.md, \"The workspace\")",
            user.name,
            state_dir.display()
        );
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let meta = std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if meta.gid() != user.gid || meta.mode() & 0o070 != 0o070 {
        std::os::unix::fs::chown(root, None, Some(user.gid)).with_context(|| {
            format!(
                "giving {} to group {} (run-job's user must be in the agent user's group)",
                root.display(),
                user.gid
            )
        })?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o2770))
            .with_context(|| format!("opening {} to the agent", root.display()))?;
    }
    Ok(())
}

/// The per-job values of an agent argv template's placeholders beyond the task's own.
struct Placeholders<'a> {
    artefacts: &'a Path,
    /// Empty without a workspace.
    workspace: Option<&'a str>,
    /// The newest feedback file; empty when there is none.
    feedback: Option<&'a Path>,
}

/// Fills an agent argv template's placeholders.
fn render_argv(template: &[String], job: &Job, task: &Task, p: &Placeholders) -> Vec<String> {
    let art = p.artefacts.display().to_string();
    let feedback = p
        .feedback
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    template
        .iter()
        .map(|a| {
            a.replace("{task}", &task.key)
                .replace("{job}", &job.id.to_string())
                .replace("{branch}", &task.branch)
                .replace("{repo}", &task.repo)
                .replace("{artefacts}", &art)
                .replace("{workspace}", p.workspace.unwrap_or_default())
                .replace("{feedback}", &feedback)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::read_usage;

    #[test]
    fn a_usage_file_is_read_only_when_small_regular_and_not_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage-1.json");
        assert_eq!(read_usage(&p), Ok(None), "no file: nothing");
        std::fs::write(&p, r#"{"tokens_out": 7}"#).unwrap();
        assert_eq!(read_usage(&p).unwrap().unwrap().tokens_out, Some(7));
        let big = dir.path().join("usage-2.json");
        std::fs::write(&big, format!(r#"{{"cost": "1{}"}}"#, " ".repeat(5000))).unwrap();
        assert!(read_usage(&big).unwrap_err().contains("more than 4096"));
        let link = dir.path().join("usage-3.json");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_usage(&link).unwrap_err().contains("symlink"));
        let sub = dir.path().join("usage-4.json");
        std::fs::create_dir(&sub).unwrap();
        assert!(read_usage(&sub).is_err(), "a directory");
    }
}
