//! What every command gets: the validated configuration, the clock, and the pass
//! lifecycle (lock, open the database, run, record, summarise).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use jiff::Timestamp;

use crate::adapters::db::{Db, PassRecord};
use crate::adapters::lock::{LockError, LockFile, LockGuard};
use crate::clock::Clock;
use crate::config::Config;
use crate::exit::ExitStatus;

/// The validated configuration and the clock, built once by `main`.
pub struct Context {
    /// Settings and the pipeline file.
    pub config: Config,
    /// The clock; read once per pass.
    pub clock: Box<dyn Clock>,
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

impl Context {
    /// Returns the current time as read once by the caller.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Returns the current time in unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.clock.now().as_second()
    }

    /// Opens (and migrates) the database.
    ///
    /// # Errors
    /// When it cannot be opened or migrated.
    pub fn open_db(&self) -> Result<Db> {
        Db::open(&self.config.settings.db)
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

    /// Runs one pass of `name` under its lock: exit 75 at once when another copy holds
    /// the lock; otherwise opens the database, runs `body`, records the pass for `status`
    /// (unless `dry_run`) and logs one summary line.
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
        let mut db = self.open_db()?;
        let started_at = self.now_secs();
        let clock = Instant::now();
        let result = body(&mut db, &guard);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::config::{Config, Layers};

    fn ctx(dir: &std::path::Path) -> Context {
        let mut layers = Layers::default();
        layers
            .env
            .insert("ORCH_DB".into(), dir.join("orch.db").display().to_string());
        layers.env.insert(
            "ORCH_STATE_DIR".into(),
            dir.join("state").display().to_string(),
        );
        Context {
            config: Config::from_parts(None, None, layers).unwrap(),
            clock: Box::new(FixedClock(jiff::Timestamp::from_second(1_000).unwrap())),
        }
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
