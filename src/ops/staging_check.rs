//! `staging-check`'s I/O steps: running the configured checks at once, each with its own
//! deadline, into one line per check ([`run_checks`]); writing and removing the reports
//! ([`write_reports`], [`remove_reports`]); and the round trips' shared environment
//! ([`roundtrip_env`]). Which check passes, which failure is waived and the verdict are
//! `core::staging_check`'s; the report's shape is `core::staging_check_report`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::adapters::artefacts::write_atomic;
use crate::adapters::staging_probes::{command_probe, http_probe, run_all, Deadlined, Overrun};
use crate::config::Pipeline;
use crate::core::staging_check::{
    classify, judge_command, judge_freshness, judge_http, revision_from_command,
    revision_from_http, CheckDef, CheckKind, RevisionSource, RoundtripTarget, StagingCheckOutcome,
};
use crate::core::staging_check_report::CheckLine;
use crate::ops::pass::PassContext;
use crate::ops::roundtrip::{RoundtripEnv, Trip};

/// Returns the environment the webhook round trips share (Plane, the webhook secret and,
/// to wait for a branch, Gitea), or `None` when no check is a round trip.
///
/// # Errors
/// A missing setting, as a configuration error reported before anything runs.
pub fn roundtrip_env(ctx: &PassContext) -> Result<Option<Arc<RoundtripEnv>>> {
    let config = &ctx.config;
    let roundtrips: Vec<_> = config
        .pipeline
        .staging_checks
        .iter()
        .filter_map(|c| match &c.kind {
            CheckKind::WebhookRoundtrip(r) => Some(r),
            _ => None,
        })
        .collect();
    if roundtrips.is_empty() {
        return Ok(None);
    }
    let needs_gitea = roundtrips
        .iter()
        .any(|r| r.wait_for == RoundtripTarget::Branch);
    Ok(Some(Arc::new(
        RoundtripEnv::new(ctx, needs_gitea).map_err(|e| e.context("webhook-roundtrip checks"))?,
    )))
}

/// What [`run_checks`] needs besides the checks.
pub struct CheckPlan<'a, F: Fn(Option<&str>) -> bool> {
    /// The pipeline (the round trips' projects).
    pub pipeline: &'a Pipeline,
    /// The round trips' shared environment, when there are round trips.
    pub roundtrip_env: Option<&'a Arc<RoundtripEnv>>,
    /// The revision staging must run, for image-freshness checks.
    pub expected: Option<&'a str>,
    /// The HTTP connect timeout.
    pub connect: Duration,
    /// Whether image freshness applies to a check's project (`None`: the default one).
    pub applies: F,
    /// `ORCH_STAGING_INFRA_ALLOWLIST`, to classify each line.
    pub allowlist: &'a [String],
}

/// Runs every check at once, each with its own deadline, and returns one line per check
/// in file order (none waived yet) and the first revision an image-freshness check read.
pub fn run_checks<F: Fn(Option<&str>) -> bool>(
    checks: &[CheckDef],
    p: &CheckPlan<'_, F>,
) -> (Vec<CheckLine>, Option<String>) {
    let mut units: Vec<Deadlined<(StagingCheckOutcome, Option<String>)>> = Vec::new();
    let mut fixed: Vec<Option<StagingCheckOutcome>> = Vec::new();
    // One round trip (one synthetic delivery) per project, endpoint and state; the
    // index of each check's trip, to append its clean-up note afterwards.
    let mut trips: Vec<Arc<Trip>> = Vec::new();
    let mut trip_of: Vec<Option<usize>> = Vec::new();
    for c in checks {
        let trip = match (&c.kind, p.roundtrip_env) {
            (CheckKind::WebhookRoundtrip(r), Some(env)) => {
                let i = match trips.iter().position(|t| t.serves(r)) {
                    Some(i) => i,
                    None => {
                        let project = p
                            .pipeline
                            .project(&r.project)
                            .expect("parse_checks validated the project")
                            .clone();
                        trips.push(Arc::new(Trip::new(env.clone(), project, r)));
                        trips.len() - 1
                    }
                };
                trip_of.push(Some(i));
                Some(trips[i].clone())
            }
            _ => {
                trip_of.push(None);
                None
            }
        };
        match plan(
            c,
            p.expected.map(str::to_string),
            p.connect,
            trip,
            &p.applies,
        ) {
            Planned::Fixed(o) => fixed.push(Some(o)),
            Planned::Run(unit) => {
                fixed.push(None);
                units.push(unit);
            }
        }
    }
    let mut ran = run_all(units).into_iter();

    let mut lines: Vec<CheckLine> = Vec::new();
    let mut checked_revision: Option<String> = None;
    for (c, pre) in checks.iter().zip(fixed) {
        let (outcome, duration) = match pre {
            Some(o) => (o, Duration::ZERO),
            None => {
                let (result, took) = ran.next().expect("one result per planned unit");
                match result {
                    Ok((o, rev)) => {
                        if checked_revision.is_none() {
                            checked_revision = rev;
                        }
                        (o, took)
                    }
                    Err(Overrun::Deadline) => (
                        StagingCheckOutcome::Error(format!(
                            "did not finish within its {}s deadline",
                            c.timeout.as_secs()
                        )),
                        took,
                    ),
                    Err(Overrun::Panicked) => (
                        StagingCheckOutcome::Error("internal error: the probe panicked".into()),
                        took,
                    ),
                }
            }
        };
        log::debug!("staging-check: {} {}: {:?}", c.id, c.kind.as_str(), outcome);
        lines.push(CheckLine {
            id: c.id.clone(),
            name: c.name.clone(),
            kind: c.kind.as_str().into(),
            category: classify(&c.id, p.allowlist),
            outcome,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            waived: false,
        });
    }

    // Clean up after the round trips (every unit has ended or been abandoned) and say
    // what was done or left in each of their checks' reasons.
    for (i, trip) in trips.iter().enumerate() {
        if let Some(note) = trip.cleanup() {
            for (line, _) in lines
                .iter_mut()
                .zip(&trip_of)
                .filter(|(_, t)| **t == Some(i))
            {
                append_reason(&mut line.outcome, &note);
            }
        }
    }
    (lines, checked_revision)
}

/// Writes `body` atomically to every target, and returns the targets written and the
/// errors. A report that cannot be written is removed rather than left to say an older
/// verdict.
pub fn write_reports<'a>(targets: &'a [PathBuf], body: &str) -> (Vec<&'a PathBuf>, Vec<String>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for path in targets {
        match write_atomic(path, body.as_bytes()) {
            Ok(()) => written.push(path),
            Err(e) => {
                errors.push(format!("{e:#}"));
                match std::fs::remove_file(path) {
                    Ok(()) => log::warn!("staging-check: removed the older {}", path.display()),
                    Err(r) if r.kind() == std::io::ErrorKind::NotFound => {}
                    Err(r) => errors.push(format!("removing the older {}: {r}", path.display())),
                }
            }
        }
    }
    (written, errors)
}

/// Removes the older reports of a run with no verdict (the gate must not read an
/// earlier SUCCESS or FAILED as this run's answer); what cannot be removed is logged.
pub fn remove_reports(targets: &[PathBuf]) {
    for path in targets {
        match std::fs::remove_file(path) {
            Ok(()) => log::warn!(
                "staging-check: removed the older {} (this run has no verdict)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!(
                "staging-check: could not remove the older {}: {e}",
                path.display()
            ),
        }
    }
}

/// Returns whether two paths name the same file (the second may not exist yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let canon = |p: &Path| -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

enum Planned {
    /// Known without running anything.
    Fixed(StagingCheckOutcome),
    /// A probe to run with its deadline; it yields the outcome and any revision read.
    Run(Deadlined<(StagingCheckOutcome, Option<String>)>),
}

fn append_reason(outcome: &mut StagingCheckOutcome, note: &str) {
    match outcome {
        StagingCheckOutcome::Pass(r)
        | StagingCheckOutcome::Fail(r)
        | StagingCheckOutcome::Skip(r)
        | StagingCheckOutcome::Error(r) => {
            r.push_str("; ");
            r.push_str(note);
        }
    }
}

fn plan(
    c: &CheckDef,
    expected: Option<String>,
    connect: Duration,
    trip: Option<Arc<Trip>>,
    applies: impl Fn(Option<&str>) -> bool,
) -> Planned {
    let timeout = c.timeout;
    let unit = |run: Box<dyn FnOnce() -> (StagingCheckOutcome, Option<String>) + Send>| {
        Planned::Run(Deadlined {
            deadline: timeout,
            run,
        })
    };
    match &c.kind {
        CheckKind::Http(h) => {
            let h = h.clone();
            unit(Box::new(move || {
                let answer = http_probe(&h.method, &h.url, h.body.as_deref(), connect, timeout);
                (judge_http(&h, &answer), None)
            }))
        }
        CheckKind::Command(cmd) => {
            let cmd = cmd.clone();
            unit(Box::new(move || {
                (
                    judge_command(&cmd, &command_probe(&cmd.argv, timeout)),
                    None,
                )
            }))
        }
        CheckKind::ImageFreshness(f) => {
            if !applies(f.project.as_deref()) {
                return Planned::Fixed(StagingCheckOutcome::Skip(
                    "image freshness does not apply (ORCH_IMAGE_FRESHNESS_ENABLED / ORCH_IMAGE_FRESHNESS_REPOS)".into(),
                ));
            }
            let source = f.source.clone();
            unit(Box::new(move || {
                let running = match &source {
                    RevisionSource::Url { url, json_field } => revision_from_http(
                        json_field.as_deref(),
                        &http_probe("GET", url, None, connect, timeout),
                    ),
                    RevisionSource::Argv { argv } => {
                        revision_from_command(&command_probe(argv, timeout))
                    }
                };
                let outcome = judge_freshness(expected.as_deref(), &running);
                (outcome, running.ok())
            }))
        }
        CheckKind::WebhookRoundtrip(r) => {
            let trip = trip.expect("every webhook-roundtrip check has its trip");
            let r = r.clone();
            unit(Box::new(move || (trip.check(&r, timeout), None)))
        }
    }
}
