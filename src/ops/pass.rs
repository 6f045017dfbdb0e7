//! What every command gets: the validated configuration, the pass's time (read once),
//! the HTTP clients (built once, when first used), and the pass lifecycle (lock, open
//! the database, run, record, summarise).

use std::cell::{Cell, OnceCell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use jiff::Timestamp;

use crate::adapters::bounds::{Bound, PassBounds};
use crate::adapters::db::{is_postgres_url, Db, PassRecord};
use crate::adapters::gitea::GiteaClient;
use crate::adapters::lease::{this_process, RowLease, RowTake};
use crate::adapters::lock::{LockError, LockFile, LockGuard};
use crate::adapters::plane::PlaneClient;
use crate::adapters::telegram::Telegram;
use crate::clock::Clock;
use crate::config::Config;
use crate::exit::ExitStatus;

/// What one pass uses, built once by `main` (every subcommand runs one pass per
/// process): the validated configuration, the pass's time and the clients.
///
/// The time is read from the clock once, when the context is built, and every step of
/// the pass reads that value ([`PassContext::now`]); only a pass that must know the time
/// after a long wait re-reads it, by name ([`PassContext::renew_now`]). The clients are
/// built the first time a step asks for one and shared afterwards, so a pass that never
/// talks to Gitea neither pays for a Gitea client nor fails for want of its settings.
pub struct PassContext {
    /// Settings and the pipeline file.
    pub config: Config,
    clock: Box<dyn Clock>,
    now: Cell<Timestamp>,
    gitea: OnceCell<GiteaClient>,
    plane: OnceCell<PlaneClient>,
    telegram: OnceCell<Option<Telegram>>,
    bounds: Arc<PassBounds>,
    /// The pass's lease across hosts while `run_pass` holds it (PostgreSQL).
    pass_lease: RefCell<Option<RowLease>>,
}

/// The passes that must run on one host at a time when hosts share a PostgreSQL
/// database: beside their local lock they hold the lease row `pass:<name>`.
pub const ONCE_ACROSS_HOSTS: &[&str] = &["reconcile", "post-deploy-tick"];

/// The lease row of pass `name`.
pub fn pass_lease_name(name: &str) -> String {
    format!("pass:{name}")
}

/// The counts a pass reports, in the order its summary line prints them.
pub type Counts = Vec<(&'static str, i64)>;

/// A pass's one summary line, `reap: scanned=12 flipped=1 duration_ms=4`: the pass's
/// name, its counts in order, and how long it took. Every pass prints it this way
/// (through `run_pass`, or itself where the pass has no lock or database of its own);
/// the `log` call stays with the pass so the line keeps its module as log target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport<'a> {
    /// The pass (subcommand) name.
    pub pass: &'a str,
    /// `key=value` pairs, in the order printed.
    pub fields: Vec<(&'a str, String)>,
    /// Milliseconds the pass took.
    pub duration_ms: u128,
}

impl<'a> PassReport<'a> {
    /// Starts a report of `pass` that took `duration_ms`.
    pub fn new(pass: &'a str, duration_ms: u128) -> PassReport<'a> {
        PassReport {
            pass,
            fields: Vec::new(),
            duration_ms,
        }
    }

    /// Adds `key=value`.
    #[must_use]
    pub fn with(mut self, key: &'a str, value: impl std::fmt::Display) -> PassReport<'a> {
        self.fields.push((key, value.to_string()));
        self
    }
}

impl std::fmt::Display for PassReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}: {} duration_ms={}",
            self.pass,
            fields.join(" "),
            self.duration_ms
        )
    }
}

/// How a pass ended.
#[derive(Debug)]
pub struct PassOutcome {
    /// The exit status.
    pub status: ExitStatus,
    /// Its counts, for the summary line and `status`.
    pub counts: Counts,
}

impl PassOutcome {
    /// A pass that did its work.
    pub fn ok(counts: Counts) -> PassOutcome {
        PassOutcome {
            status: ExitStatus::Success,
            counts,
        }
    }
}

/// Returns the value in `cell`, building it with `build` the first time. A failed build
/// is not kept: the next call builds again and fails the same way (configuration errors
/// are deterministic), so the error keeps its type and message.
fn built_once<T>(cell: &OnceCell<T>, build: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = build()?;
    Ok(cell.get_or_init(|| value))
}

impl PassContext {
    /// Builds the context of one pass and reads its time from `clock`.
    pub fn new(config: Config, clock: Box<dyn Clock>) -> PassContext {
        let now = Cell::new(clock.now());
        let s = &config.settings;
        let bounds = Arc::new(PassBounds::new(
            usize::try_from(s.list_max_pages.0).unwrap_or(usize::MAX),
            Some(s.pass_deadline_s.0),
            s.http_timeout_s.0,
        ));
        PassContext {
            bounds,
            config,
            clock,
            now,
            gitea: OnceCell::new(),
            plane: OnceCell::new(),
            telegram: OnceCell::new(),
            pass_lease: RefCell::new(None),
        }
    }

    /// Returns the pass's bounds: the page cap, the deadline (running once `run_pass`
    /// starts the pass) and the bounds hit so far.
    pub fn bounds(&self) -> &PassBounds {
        &self.bounds
    }

    /// Returns the pass's time: read from the clock once, when the pass began (or at
    /// its last [`PassContext::renew_now`]).
    pub fn now(&self) -> Timestamp {
        self.now.get()
    }

    /// Returns the pass's time in unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.now().as_second()
    }

    /// Reads the clock again and makes that the pass's time from here on. Only for a
    /// pass that waits a long time in the middle and must act at the time after the
    /// wait (`run-job` after its agent exits, `post-deploy-tick` after a rollback
    /// command, `merge-guard` taking the merge lease after waiting on Gitea); the caller
    /// says why in a comment.
    pub fn renew_now(&self) -> Timestamp {
        self.now.set(self.clock.now());
        self.now.get()
    }

    /// Returns the pass's Gitea client, built on first use; `None` without
    /// `ORCH_GITEA_URL`.
    ///
    /// # Errors
    /// A half configuration (URL without token), or the HTTP client's construction error.
    pub fn gitea(&self) -> Result<Option<&GiteaClient>> {
        if self.config.settings.gitea_url.is_none() {
            return Ok(None);
        }
        self.require_gitea().map(Some)
    }

    /// Returns the pass's Gitea client, built on first use, for a step that cannot do
    /// without it.
    ///
    /// # Errors
    /// A [`crate::config::ConfigError`] naming the missing setting, or the HTTP client's
    /// construction error.
    pub fn require_gitea(&self) -> Result<&GiteaClient> {
        built_once(&self.gitea, || {
            GiteaClient::from_config(&self.config).map(|c| c.with_bounds(self.bounds.clone()))
        })
    }

    /// Returns the pass's Plane client, built on first use; `None` without
    /// `ORCH_PLANE_URL`.
    ///
    /// # Errors
    /// Another missing Plane setting, or the HTTP client's construction error.
    pub fn plane(&self) -> Result<Option<&PlaneClient>> {
        if self.config.settings.plane_url.is_none() {
            return Ok(None);
        }
        self.require_plane().map(Some)
    }

    /// Returns the pass's Plane client, built on first use, for a step that cannot do
    /// without it.
    ///
    /// # Errors
    /// A [`crate::config::ConfigError`] naming the first missing setting, or the HTTP
    /// client's construction error.
    pub fn require_plane(&self) -> Result<&PlaneClient> {
        built_once(&self.plane, || {
            PlaneClient::from_config(&self.config).map(|c| c.with_bounds(self.bounds.clone()))
        })
    }

    /// Keeps the Plane budget this process's Plane client last read (its
    /// `X-RateLimit-Remaining`) in the database for the metrics, stamped with the pass's
    /// time; nothing when no Plane answer carried one. Called by `main` after every
    /// command that may have called Plane, whatever its outcome: a failed pass's
    /// readings are as true as a successful one's. A failure to record is only logged.
    pub fn record_plane_budget(&self) {
        let Some(remaining) = self.plane.get().and_then(PlaneClient::last_budget) else {
            return;
        };
        let budget = crate::adapters::db::PlaneBudget {
            remaining: i64::from(remaining),
            seen_at: self.now_secs(),
        };
        if let Err(e) = self.open_db().and_then(|db| db.record_plane_budget(budget)) {
            log::warn!("could not record Plane's rate-limit budget ({remaining} left): {e:#}");
        }
    }

    /// Returns the pass's Telegram client, built on first use; `None` unless both
    /// `ORCH_TELEGRAM_BOT_TOKEN` and `ORCH_TELEGRAM_CHAT_ID` are set.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn telegram(&self) -> Result<Option<&Telegram>> {
        built_once(&self.telegram, || {
            Telegram::from_settings(&self.config.settings)
        })
        .map(Option::as_ref)
    }

    /// Opens (and migrates) the database, which must exist (only `init` creates it).
    ///
    /// # Errors
    /// When it is missing (its path named), cannot be opened or migrated.
    pub fn open_db(&self) -> Result<Db> {
        let mut db = Db::open_existing(&self.config.settings.db)?;
        db.set_agent_job(calling_agent_job(&db));
        Ok(db)
    }

    /// Returns the path of a pass's lock file.
    pub fn lock_path(&self, pass: &str) -> PathBuf {
        self.config
            .settings
            .state_dir
            .join("locks")
            .join(format!("{pass}.lock"))
    }

    /// Takes a pass's lock without waiting.
    ///
    /// # Errors
    /// [`LockError::Busy`] when another copy holds it.
    pub fn lock_pass(&self, pass: &str) -> Result<LockGuard, LockError> {
        LockFile::try_acquire(&self.lock_path(pass))
    }

    /// Between two items of a pass: renews the pass's lease across hosts once half its
    /// TTL has passed, and says whether the pass must stop before its next item (the
    /// deadline passed, or the lease was taken over: both noted as bounds hit).
    pub fn stop_between_items(&self, what: &str) -> bool {
        let lost = self
            .pass_lease
            .borrow_mut()
            .as_mut()
            .and_then(|l| (!l.keep()).then(|| l.name().to_string()));
        if let Some(name) = lost {
            self.bounds.hit(
                Bound::LeaseLost,
                format!("the lease {name} was taken over by another host; stopped {what}"),
            );
            return true;
        }
        self.bounds.stop_for_deadline(what)
    }

    /// Takes pass `name`'s lease row when the pass runs once across hosts and the
    /// database is PostgreSQL; `Ok(Some(row))` is the row of another holder (busy).
    fn take_pass_lease(&self, name: &str) -> Result<Option<crate::core::lease::LeaseRow>> {
        let s = &self.config.settings;
        if !ONCE_ACROSS_HOSTS.contains(&name) || !is_postgres_url(&s.db) {
            return Ok(None);
        }
        let pinned = s.now.0.map(Timestamp::as_second);
        let detail = serde_json::json!({ "pass": name }).to_string();
        match RowLease::take(
            self.open_db()?,
            &pass_lease_name(name),
            &this_process(&s.host_id()),
            s.pass_lease_ttl_s.secs(),
            pinned,
            Some(&detail),
        )
        .with_context(|| {
            format!("{name}: the pass lease could not be written to the database (nothing done)")
        })? {
            RowTake::Held(lease, over) => {
                if let Some((old, verdict)) = over {
                    log::info!(
                        "{name}: took the pass lease ({verdict:?} from {}, generation {})",
                        old.holder,
                        lease.generation()
                    );
                }
                *self.pass_lease.borrow_mut() = Some(lease);
                Ok(None)
            }
            RowTake::Busy(row, _) => Ok(Some(row)),
        }
    }

    /// Runs one pass of `name` under its lock: exit 75 at once when another copy holds
    /// the lock (or, for a pass that runs once across hosts under PostgreSQL, when
    /// another host holds its lease row); otherwise opens the database, runs `body`,
    /// records the pass for `status` (unless `dry_run`), releases the lease row and logs
    /// one summary line.
    ///
    /// The pass's deadline (`ORCH_PASS_DEADLINE_S`) starts here. A pass that hit a
    /// bound (a listing stopped at the page cap, the deadline passed: its loops stop
    /// between items) exits 2, with `page_cap_hit` / `deadline_hit` in its counts and
    /// record, and a warning saying what was stopped.
    ///
    /// # Errors
    /// Whatever `body` returns; the pass is recorded as `error` first.
    pub fn run_pass(
        &self,
        name: &str,
        dry_run: bool,
        body: impl FnOnce(&mut Db, &LockGuard) -> Result<PassOutcome>,
    ) -> Result<ExitStatus> {
        let guard = match self.lock_pass(name) {
            Ok(g) => g,
            Err(LockError::Busy(path)) => {
                log::warn!(
                    "{name}: skipped: another {name} pass holds {}",
                    path.display()
                );
                return Ok(ExitStatus::Busy);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(held) = self.take_pass_lease(name)? {
            log::warn!(
                "{name}: skipped: another host's {name} pass holds its lease ({}, until {})",
                held.holder,
                held.expires_at
            );
            return Ok(ExitStatus::Busy);
        }
        let mut db = self.open_db()?;
        let started_at = self.now_secs();
        let clock = Instant::now();
        self.bounds.start();
        let result = body(&mut db, &guard).map(|o| self.bounded(o));
        // Released before the record: the pass's work is done.
        drop(self.pass_lease.borrow_mut().take());
        let duration_ms = i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (outcome, counts) = match &result {
            Ok(o) if o.status == ExitStatus::No => ("no", o.counts.clone()),
            Ok(o) if o.status == ExitStatus::Error => ("error", o.counts.clone()),
            Ok(o) => ("ok", o.counts.clone()),
            Err(_) => ("error", Vec::new()),
        };
        if !dry_run {
            let record = PassRecord {
                command: name.to_string(),
                started_at,
                duration_ms,
                outcome: outcome.to_string(),
                counts: counts
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                    .collect(),
            };
            if let Err(e) = db.record_pass(&record) {
                log::warn!("{name}: could not record the pass for status: {e:#}");
            }
        }
        let millis = u128::try_from(duration_ms).unwrap_or_default();
        let report = counts
            .iter()
            .fold(PassReport::new(name, millis), |r, (k, v)| r.with(k, v));
        let dry = if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        };
        match &result {
            Ok(_) => log::info!("{report}{dry}"),
            Err(e) => log::error!("{name}: pass failed after {duration_ms} ms: {e:#}"),
        }
        result.map(|o| o.status)
    }
}

/// Whether `e` is the database failing (a write refused, the lock not obtained within the
/// busy timeout, a read-only or full disk) rather than a remote or a decision: a pass
/// that could not write what it decided exits 2 and says so (docs/architecture.md).
pub fn is_database_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some()
            || c.downcast_ref::<crate::adapters::db::sql::Error>()
                .is_some()
    })
}

impl PassContext {
    /// Turns the bounds the pass hit into its outcome: exit 2 and a count per bound.
    /// A pass that overran its deadline but left nothing undone (one long step, e.g. a
    /// rollback command under its own timeout) is only warned about: the deadline exists
    /// to stop work cleanly between items, and none was stopped.
    fn bounded(&self, mut outcome: PassOutcome) -> PassOutcome {
        let hits = self.bounds.hits();
        if hits.is_empty() && self.bounds.past_deadline() {
            log::warn!(
                "the pass ran past its deadline (ORCH_PASS_DEADLINE_S) but stopped nothing: \
                 one step took longer than the deadline allows; raise the setting if this repeats"
            );
        }
        if hits.is_empty() {
            return outcome;
        }
        outcome.status = ExitStatus::Error;
        for (bound, _) in &hits {
            let name = bound.count_name();
            match outcome.counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => *n += 1,
                None => outcome.counts.push((name, 1)),
            }
        }
        outcome
    }
}

/// The job whose agent this process runs inside, for the provenance of the stage events
/// it writes: the running job whose agent leads this process group (an agent's `orch`
/// calls share its group unless it left it), else the `ORCH_JOB_ID` run-job gave the
/// agent. Neither is proof (an agent can leave its group and drop the variable:
/// docs/security.md); both make an ordinary call from inside an agent visible.
fn calling_agent_job(db: &Db) -> Option<i64> {
    let pgid = i64::from(rustix::process::getpgrp().as_raw_nonzero().get());
    let by_group = db.running_job_of_group(pgid).ok().flatten();
    by_group.or_else(|| std::env::var("ORCH_JOB_ID").ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::clock::FixedClock;
    use crate::config::{Config, Layers};

    fn layers(dir: &std::path::Path) -> Layers {
        let mut layers = Layers::default();
        layers
            .env
            .insert("ORCH_DB".into(), dir.join("orch.db").display().to_string());
        layers.env.insert(
            "ORCH_STATE_DIR".into(),
            dir.join("state").display().to_string(),
        );
        layers
    }

    fn ctx(dir: &std::path::Path) -> PassContext {
        PassContext::new(
            Config::from_parts(None, None, layers(dir)).unwrap(),
            Box::new(FixedClock(jiff::Timestamp::from_second(1_000).unwrap())),
        )
    }

    /// Creates the database, as `orch init` does (a pass never creates it).
    fn init(ctx: &PassContext) {
        crate::adapters::db::Db::open(&ctx.config.settings.db).unwrap();
    }

    /// A clock that moves one second forward every time it is read.
    struct Ticking(AtomicI64);

    impl Clock for Ticking {
        fn now(&self) -> jiff::Timestamp {
            jiff::Timestamp::from_second(self.0.fetch_add(1, Ordering::SeqCst)).unwrap()
        }
    }

    #[test]
    fn the_pass_time_is_read_once_however_often_it_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_parts(None, None, layers(dir.path())).unwrap();
        let ctx = PassContext::new(config, Box::new(Ticking(AtomicI64::new(1_000))));
        init(&ctx);
        assert_eq!(ctx.now_secs(), 1_000);
        assert_eq!(ctx.now(), ctx.now());
        assert_eq!(
            ctx.now_secs(),
            1_000,
            "the clock moved, the pass's time did not"
        );
        ctx.run_pass("tick", false, |_, _| Ok(PassOutcome::ok(vec![])))
            .unwrap();
        let passes = ctx.open_db().unwrap().passes().unwrap();
        assert_eq!(
            passes[0].started_at, 1_000,
            "run_pass records the pass's time"
        );
        assert_eq!(
            ctx.renew_now().as_second(),
            1_001,
            "renewing reads the clock"
        );
        assert_eq!(ctx.now_secs(), 1_001);
        assert_eq!(ctx.now_secs(), 1_001);
    }

    #[test]
    fn a_client_is_built_once_when_first_asked_for_and_absent_without_its_url() {
        let dir = tempfile::tempdir().unwrap();
        let bare = ctx(dir.path());
        assert!(bare.gitea().unwrap().is_none());
        assert!(bare.plane().unwrap().is_none());
        assert!(bare.telegram().unwrap().is_none());
        let missing = bare.require_gitea().err().unwrap().to_string();
        assert!(missing.contains("ORCH_GITEA_URL"), "{missing}");

        let mut layers = layers(dir.path());
        for (k, v) in [
            ("ORCH_GITEA_URL", "http://127.0.0.1:9"),
            ("ORCH_GITEA_TOKEN", "t"),
            ("ORCH_PLANE_URL", "http://127.0.0.1:9"),
            ("ORCH_PLANE_API_KEY", "k"),
            ("ORCH_TELEGRAM_BOT_TOKEN", "b"),
            ("ORCH_TELEGRAM_CHAT_ID", "1"),
        ] {
            layers.env.insert(k.into(), v.into());
        }
        let config = Config::from_parts(None, None, layers).unwrap();
        let ctx = PassContext::new(config, Box::new(FixedClock(jiff::Timestamp::UNIX_EPOCH)));
        let first = ctx.gitea().unwrap().unwrap();
        assert!(std::ptr::eq(first, ctx.gitea().unwrap().unwrap()));
        assert!(std::ptr::eq(first, ctx.require_gitea().unwrap()));
        let first = ctx.telegram().unwrap().unwrap();
        assert!(std::ptr::eq(first, ctx.telegram().unwrap().unwrap()));
        // Plane needs the pipeline's workspace too: the same error every time it is asked.
        let missing = ctx.plane().err().unwrap().to_string();
        assert!(missing.contains("plane.workspace"), "{missing}");
        assert_eq!(ctx.require_plane().err().unwrap().to_string(), missing);
    }

    #[test]
    fn the_summary_line_is_name_counts_then_duration() {
        let r = PassReport::new("reap", 4)
            .with("scanned", 12)
            .with("flipped", 1);
        assert_eq!(r.to_string(), "reap: scanned=12 flipped=1 duration_ms=4");
        let quoted = PassReport::new("webhook-handle", 0).with("outcome", format!("{:?}", "ok"));
        assert_eq!(
            quoted.to_string(),
            "webhook-handle: outcome=\"ok\" duration_ms=0"
        );
        assert_eq!(
            PassReport::new("tick", 7).to_string(),
            "tick:  duration_ms=7"
        );
    }

    #[test]
    fn a_pass_that_exits_2_is_recorded_as_error_and_a_busy_lock_is_75() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        init(&ctx);
        let status = ctx
            .run_pass("tick", false, |_, _| {
                Ok(PassOutcome {
                    status: ExitStatus::Error,
                    counts: vec![("errors", 1)],
                })
            })
            .unwrap();
        assert_eq!(status, ExitStatus::Error);
        let passes = ctx.open_db().unwrap().passes().unwrap();
        assert_eq!(passes[0].outcome, "error");
        let _held = ctx.lock_pass("tick").unwrap();
        let busy = ctx
            .run_pass("tick", false, |_, _| Ok(PassOutcome::ok(vec![])))
            .unwrap();
        assert_eq!(busy, ExitStatus::Busy);
    }
}
