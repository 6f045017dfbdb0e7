//! `orch staging-check`: runs the pipeline file's staging checks at once, each with its
//! own deadline, classifies and judges them (`core::staging`), prints the verdict, and
//! writes the report the `deploy-staging → deploy` gate reads.
//!
//! With a task (`--task`, else `ORCH_TASK_ID`, which `run-job` gives every agent) it
//! writes the task's `10-staging-report.md` and, on SUCCESS, records the revision it
//! validated on the task: the pin `merge-guard` merges (`core::pin`). Where image
//! freshness applies that is the revision an image-freshness check read from staging
//! (expected, by default, to be the PR head); elsewhere it is the PR head read from
//! Gitea when the check starts and read again when the checks end.
//!
//! Never a false green: an internal error (database, report write, a PR head that moved,
//! no open PR) turns the verdict FAILED (exit 1) and records nothing. A task's PR head
//! that cannot be read from Gitea (no answer, 5xx, a refused token, an answer that is not
//! a pull request: `core::pin::HeadError::Unreadable`) gives no verdict at all: exit 2,
//! no report (an older one is removed), the validated revision cleared, so a Gitea outage
//! never sends a task back to its developer. Usage and configuration errors exit 2 too.
//! No pass lock: CI and agents may run it concurrently, and the report is written
//! atomically.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::adapters::artefacts::{task_dir, write_atomic};
use crate::adapters::checks::{command_probe, http_probe, run_all, Deadlined, Overrun};
use crate::adapters::db::Db;
use crate::adapters::forge::Forge;
use crate::adapters::gitea::GiteaClient;
use crate::config::Settings;
use crate::core::artefact::STAGING_REPORT_FILE;
use crate::core::gate::Need;
use crate::core::pin::{
    expected_is_head, head_at_end, head_at_start, HeadError, PinKind, PrHead, Unreadable,
};
use crate::core::stage::Stage;
use crate::core::staging::{
    classify, freshness_applies, judge_command, judge_freshness, judge_http, parse_revision,
    revision_from_command, revision_from_http, verdict, CheckDef, CheckKind, CheckResult, Outcome,
    Policy, RevisionSource, RoundtripTarget, VerdictStatus,
};
use crate::core::staging_report::{CheckLine, NoVerdictRun, StagingRun};
use crate::core::task::Task;
use crate::exit::ExitStatus;
use crate::ops::pass::{Context, PassReport};
use crate::ops::roundtrip::{RoundtripEnv, Trip};

/// Smoke-check a staging install and print a verdict
///
/// Runs every check of the pipeline file's `staging.checks` at once, each with its own
/// deadline. A check is SANDBOX_INFRA only when its id is in
/// ORCH_STAGING_INFRA_ALLOWLIST (default C9a,C9b); every other id is REAL. Prints a line
/// per check, `INFRA-WAIVED: <ids>` when allowlisted failures were waived, and
/// `VERDICT: SUCCESS|FAILED` last. Exit codes: 0 SUCCESS; 1 FAILED (a REAL failure, an
/// unwaived infra failure, no checks configured, a check that could not run, no open PR,
/// a PR head that moved, or any internal error); 2 no verdict (the task's PR head could
/// not be read from Gitea: nothing recorded, run it again), usage or configuration
/// error.
///
/// With a task (--task, else ORCH_TASK_ID) it writes the task's 10-staging-report.md
/// and, on SUCCESS, records the revision it validated (the pin merge-guard merges): the
/// image-freshness check's revision where image freshness applies, else the PR head read
/// from Gitea before and after the checks (FAILED if it moved).
#[derive(Debug, clap::Args)]
pub struct StagingCheckArgs {
    /// Print the result as JSON (the same facts as the text, plus exit_code)
    #[arg(long)]
    pub json: bool,

    /// Fail on any failure, allowlisted infra checks included (tolerance off for this
    /// run, whatever ORCH_STAGING_INFRA_TOLERANCE_ENABLED says)
    #[arg(long)]
    pub strict: bool,

    /// Also write the Markdown report (frontmatter staging_status, waived,
    /// checked_revision, checked_at) to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write the report into this task's artefacts (10-staging-report.md) and record
    /// the validated revision on the task (id, key or work item id) [default:
    /// ORCH_TASK_ID, set for agents by run-job]
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,

    /// The revision staging must run, for image-freshness checks [default with a task:
    /// its PR head, read from Gitea]
    #[arg(long, value_name = "SHA", env = "EXPECTED_REVISION")]
    pub expected_revision: Option<String>,
}

/// Runs `staging-check`.
///
/// # Errors
/// Only usage and configuration errors (exit 2): a bad `--expected-revision`, an
/// unknown `--task` or `ORCH_TASK_ID`, Gitea not configured when a task's PR head must
/// be read. Everything else ends in a verdict, or (exit 2 too, as a value) in none when
/// the task's PR head could not be read.
pub fn run(args: &StagingCheckArgs, ctx: &Context) -> Result<ExitStatus> {
    let started = Instant::now();
    let settings = &ctx.config.settings;
    let pipeline = &ctx.config.pipeline;
    let checks = &pipeline.staging_checks;
    let mut expected = match args.expected_revision.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            parse_revision(text)
                .map_err(|m| anyhow::anyhow!("--expected-revision / EXPECTED_REVISION: {m}"))?,
        ),
    };
    // Round trips need Plane, the webhook secret and (to wait for a branch) Gitea:
    // missing settings are configuration errors, reported before anything runs.
    let roundtrips: Vec<_> = checks
        .iter()
        .filter_map(|c| match &c.kind {
            CheckKind::WebhookRoundtrip(r) => Some(r),
            _ => None,
        })
        .collect();
    let roundtrip_env = if roundtrips.is_empty() {
        None
    } else {
        let needs_gitea = roundtrips
            .iter()
            .any(|r| r.wait_for == RoundtripTarget::Branch);
        Some(Arc::new(
            RoundtripEnv::from_config(&ctx.config, needs_gitea)
                .map_err(|e| e.context("webhook-roundtrip checks"))?,
        ))
    };
    let now = ctx.now();
    let mut internal: Vec<String> = Vec::new();

    // The task, when asked for (--task, else ORCH_TASK_ID): an unknown one is a usage
    // error; a database that cannot be read is an internal error (the verdict becomes
    // FAILED, nothing is skipped).
    let mut db = None;
    let mut task: Option<Task> = None;
    if let Some((reference, source)) = task_reference(args)? {
        match ctx.open_db() {
            Ok(d) => {
                match d.find_task(&reference) {
                    Ok(Some(t)) => task = Some(t),
                    Ok(None) => {
                        bail!("{source}: no task {reference:?} (give an id, key or work item id)")
                    }
                    Err(e) => internal.push(format!("reading task {reference}: {e:#}")),
                }
                db = Some(d);
            }
            Err(e) => internal.push(format!("opening the database: {e:#}")),
        }
    }
    let report_path = match &task {
        Some(t) => match task_dir(&settings.artefacts_dir, &t.key) {
            Ok(dir) => Some(dir.join(STAGING_REPORT_FILE)),
            Err(e) => {
                internal.push(format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    // Where this run's report goes: the task's report first (the gate reads it), then
    // --report FILE, once when both name the same file (a deployer may name the task's
    // own report, `$ORCH_TASK_ARTEFACTS/...`).
    let mut targets: Vec<PathBuf> = report_path.iter().cloned().collect();
    if let Some(extra) = &args.report {
        if !report_path.as_ref().is_some_and(|p| same_file(p, extra)) {
            targets.push(extra.clone());
        }
    }

    // The pin: which kind the task's repo gets, and its PR head when it is needed (for a
    // pr-head pin, or as the expected revision of an image-freshness pin).
    let kind = match &task {
        Some(t) => {
            let project = pipeline
                .project(&t.project)
                .map(|p| (p.name.as_str(), p.repo.as_str(), p.self_hosting));
            PinKind::for_repo(freshness_applies(
                settings.image_freshness_enabled,
                &settings.image_freshness_repos.0,
                project,
            ))
        }
        // Without a task only an image-freshness check can report a revision.
        None => PinKind::ImageFreshness,
    };
    let needs_head = kind == PinKind::PrHead || expected.is_none();
    let gitea = match &task {
        Some(t) if needs_head => match GiteaClient::from_config(&ctx.config) {
            Ok(g) => Some(g),
            // A pr-head pin cannot be made without Gitea: a configuration error.
            Err(e) if kind == PinKind::PrHead => {
                return Err(e).with_context(|| {
                    format!(
                        "staging-check reads task {}'s PR head from Gitea (the revision it pins)",
                        t.key
                    )
                })
            }
            // An image-freshness pin only loses its default expected revision: the
            // freshness check then fails for want of one, as it says.
            Err(e) => {
                log::warn!(
                    "staging-check: no default expected revision for task {} (its PR head): {e:#}",
                    t.key
                );
                None
            }
        },
        _ => None,
    };
    let mut head: Option<(GiteaClient, PrHead)> = None;
    if let (Some(t), Some(gitea)) = (&task, gitea) {
        match read_head(&gitea, t, db.as_ref(), now.as_second()) {
            Ok(h) => {
                log::info!(
                    "staging-check: task {} pin {kind}: PR #{} head {} when the check starts",
                    t.key,
                    h.number,
                    h.sha
                );
                match kind {
                    PinKind::ImageFreshness => {
                        if expected.is_none() {
                            log::info!(
                                "staging-check: expected revision defaults to PR #{}'s head {}",
                                h.number,
                                h.sha
                            );
                            expected = Some(h.sha.clone());
                        }
                    }
                    PinKind::PrHead => {
                        if let Err(e) = expected_is_head(expected.as_deref(), &h) {
                            internal.push(e);
                        }
                    }
                }
                head = Some((gitea, h));
            }
            Err(HeadError::Refused(e)) => internal.push(e),
            // Gitea gave no answer about the PR: no verdict, and no check is run for one.
            Err(HeadError::Unreadable(u)) => {
                let end = Unjudged {
                    unreadable: &u,
                    task: t,
                    db: db.as_ref(),
                    targets: &targets,
                    now: now.as_second(),
                    started,
                };
                return Ok(end.finish(args, &internal, Vec::new(), expected, settings));
            }
        }
    }

    // Decide what each check does before running anything.
    let default_project = task
        .as_ref()
        .and_then(|t| pipeline.project(&t.project))
        .or_else(|| pipeline.projects.iter().find(|p| p.self_hosting));
    let connect = settings
        .http_connect_timeout_s
        .0
        .max(Duration::from_secs(1));
    let mut units: Vec<Deadlined<(Outcome, Option<String>)>> = Vec::new();
    let mut fixed: Vec<Option<Outcome>> = Vec::new();
    // One round trip (one synthetic delivery) per project, endpoint and state; the
    // index of each check's trip, to append its clean-up note afterwards.
    let mut trips: Vec<Arc<Trip>> = Vec::new();
    let mut trip_of: Vec<Option<usize>> = Vec::new();
    for c in checks {
        let trip = match (&c.kind, &roundtrip_env) {
            (CheckKind::WebhookRoundtrip(r), Some(env)) => {
                let i = match trips.iter().position(|t| t.serves(r)) {
                    Some(i) => i,
                    None => {
                        let project = pipeline
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
        match plan(c, expected.clone(), connect, trip, |name| {
            let project = name
                .and_then(|n| pipeline.project(n))
                .or(default_project)
                .map(|p| (p.name.as_str(), p.repo.as_str(), p.self_hosting));
            freshness_applies(
                settings.image_freshness_enabled,
                &settings.image_freshness_repos.0,
                project,
            )
        }) {
            Planned::Fixed(o) => fixed.push(Some(o)),
            Planned::Run(unit) => {
                fixed.push(None);
                units.push(unit);
            }
        }
    }
    let mut ran = run_all(units).into_iter();

    let policy = Policy {
        allowlist: settings.staging_infra_allowlist.0.clone(),
        tolerance: settings.staging_infra_tolerance_enabled,
        strict: args.strict,
    };
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
                        Outcome::Error(format!(
                            "did not finish within its {}s deadline",
                            c.timeout.as_secs()
                        )),
                        took,
                    ),
                    Err(Overrun::Panicked) => (
                        Outcome::Error("internal error: the probe panicked".into()),
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
            category: classify(&c.id, &policy.allowlist),
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

    // A task whose repo image freshness applies to needs a checked revision: without one
    // the deploy-staging gate could never pass, while CI would read this run as green.
    if let Some(t) = &task {
        if kind == PinKind::ImageFreshness && checked_revision.is_none() {
            internal.push(format!(
                "image freshness applies to {} but no image-freshness check reported the revision staging runs",
                t.project
            ));
        }
    }
    // A PR head read at the start is read again now: the pin holds only if it did not move
    // while the checks ran. A pr-head pin is that head; nothing else is.
    if kind == PinKind::PrHead {
        checked_revision = None;
    }
    if let (Some((gitea, h)), Some(t)) = (&head, &task) {
        let again = gitea
            .get_pull(&t.repo, h.number)
            .map(|p| p.facts())
            .map_err(|e| e.to_string());
        match head_at_end(h, &again, &t.key) {
            Ok(()) => {
                if kind == PinKind::PrHead {
                    checked_revision = Some(h.sha.clone());
                }
            }
            Err(HeadError::Refused(e)) => internal.push(e),
            // The checks ran, but whether staging ran the head they were for is unknown.
            Err(HeadError::Unreadable(u)) => {
                let end = Unjudged {
                    unreadable: &u,
                    task: t,
                    db: db.as_ref(),
                    targets: &targets,
                    now: now.as_second(),
                    started,
                };
                return Ok(end.finish(args, &internal, lines, expected, settings));
            }
        }
    }

    let decide = |internal: &[String], lines: &mut Vec<CheckLine>| {
        let results: Vec<CheckResult> = lines
            .iter()
            .map(|l| CheckResult {
                id: l.id.clone(),
                outcome: l.outcome.clone(),
            })
            .collect();
        let v = verdict(&results, &policy, internal);
        for l in lines.iter_mut() {
            l.waived = v.waived.contains(&l.id);
        }
        v
    };
    let mut run = StagingRun {
        verdict: decide(&internal, &mut lines),
        checks: lines,
        pin: checked_revision.as_ref().map(|_| kind),
        pr_number: head.as_ref().map(|(_, h)| h.number),
        checked_revision,
        expected_revision: expected,
        checked_at: jiff::Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string(),
        strict: args.strict,
        tolerance: settings.staging_infra_tolerance_enabled,
        task: task.as_ref().map(|t| t.key.clone()),
    };

    let known_errors = internal.len();
    // Act: reports first, then the validated revision. Any failure turns the verdict
    // FAILED and the reports already written are rewritten to say so.
    // Every target is tried: a report that cannot be written is removed rather than left
    // to say an older verdict.
    let mut written: Vec<&PathBuf> = Vec::new();
    for path in &targets {
        match write_atomic(path, run.render_report().as_bytes()) {
            Ok(()) => written.push(path),
            Err(e) => {
                internal.push(format!("{e:#}"));
                match std::fs::remove_file(path) {
                    Ok(()) => log::warn!("staging-check: removed the older {}", path.display()),
                    Err(r) if r.kind() == std::io::ErrorKind::NotFound => {}
                    Err(r) => internal.push(format!("removing the older {}: {r}", path.display())),
                }
            }
        }
    }
    if internal.is_empty() && run.verdict.status == VerdictStatus::Success {
        if let (Some(t), Some(d), Some(rev)) = (&task, &db, &run.checked_revision) {
            match d.set_validated_revision(t.id, t.round, rev, now.as_second()) {
                Ok(true) => log::info!(
                    "staging-check: task {} validated revision {rev} (pin {kind})",
                    t.key
                ),
                Ok(false) => internal.push(format!(
                    "task {} left round {} during the check (reopened): revision {rev} not recorded",
                    t.key, t.round
                )),
                Err(e) => internal.push(format!("recording the validated revision: {e:#}")),
            }
        }
    }
    if internal.len() > known_errors {
        run.verdict = decide(&internal, &mut run.checks);
        for path in written {
            if let Err(e) = write_atomic(path, run.render_report().as_bytes()) {
                log::error!(
                    "staging-check: could not rewrite {} as FAILED: {e:#}",
                    path.display()
                );
            }
        }
    }
    // A FAILED run for a task leaves it no validated revision: what staging runs now was
    // not validated, so nothing older may be merged on its word.
    if run.verdict.status == VerdictStatus::Failed {
        if let (Some(t), Some(d)) = (&task, &db) {
            match d.clear_validated_revision(t.id, t.round, now.as_second()) {
                Ok(true) => log::warn!(
                    "staging-check: task {} no longer has a validated revision (was {}): this run failed",
                    t.key,
                    t.validated_revision.as_deref().unwrap_or("?")
                ),
                Ok(false) => {}
                Err(e) => log::error!(
                    "staging-check: clearing task {}'s validated revision: {e:#}",
                    t.key
                ),
            }
        }
    }
    for e in &internal {
        log::error!("staging-check: internal error: {e}");
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&run.render_json())?);
    } else {
        print!("{}", run.render_text());
    }
    let count = |f: &dyn Fn(&CheckLine) -> bool| run.checks.iter().filter(|l| f(l)).count();
    let report = PassReport::new("staging-check", started.elapsed().as_millis())
        .with("checks", run.checks.len())
        .with("passed", count(&|l| matches!(l.outcome, Outcome::Pass(_))))
        .with("failed", count(&|l| l.outcome.is_failure()))
        .with("waived", run.verdict.waived.len())
        .with("skipped", count(&|l| matches!(l.outcome, Outcome::Skip(_))))
        .with("verdict", run.verdict.status.as_str());
    log::info!("{report}");
    Ok(match run.verdict.status {
        VerdictStatus::Success => ExitStatus::Success,
        VerdictStatus::Failed => ExitStatus::No,
    })
}

/// Returns the task asked for and where it came from: `--task`, else `ORCH_TASK_ID`
/// (set by `run-job` for agents; empty counts as unset).
fn task_reference(args: &StagingCheckArgs) -> Result<Option<(String, &'static str)>> {
    if let Some(t) = &args.task {
        return Ok(Some((t.clone(), "--task")));
    }
    match std::env::var("ORCH_TASK_ID") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some((v.trim().to_string(), "ORCH_TASK_ID"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("ORCH_TASK_ID: not valid text"),
    }
}

/// Reads the task's PR head through the forge (its recorded PR, else the open PR of its
/// branch, whose number is then recorded) and judges it. Every failed read is
/// [`HeadError::Unreadable`]: the forge's `Err` is always a Gitea call that gave no
/// usable answer.
fn read_head(
    gitea: &GiteaClient,
    task: &Task,
    db: Option<&Db>,
    now: i64,
) -> Result<PrHead, HeadError> {
    let mut forge = Forge::new(Some(gitea.clone()));
    let facts = forge.facts(task, Stage::DeployStaging, &[Need::Pr]);
    let recorded = task.pr_number.and_then(|n| u64::try_from(n).ok());
    let head = head_at_start(&facts.pr, &task.key, &task.branch, recorded)?;
    if let (Some(n), Some(db)) = (facts.new_pr_number, db) {
        let number = i64::try_from(n).unwrap_or(i64::MAX);
        match db.set_pr_number(task.id, task.round, number, now) {
            Ok(false) => log::info!(
                "staging-check: PR #{n} not recorded on task {}: it started another round meanwhile",
                task.key
            ),
            Ok(true) => log::info!(
                "staging-check: recorded PR #{n} on task {} (head branch {})",
                task.key,
                task.branch
            ),
            Err(e) => log::warn!(
                "staging-check: recording PR #{n} on task {}: {e:#}",
                task.key
            ),
        }
    }
    Ok(head)
}

/// A run that ends without a verdict, and what ending it touches.
struct Unjudged<'a> {
    unreadable: &'a Unreadable,
    task: &'a Task,
    db: Option<&'a Db>,
    /// The reports this run would have written.
    targets: &'a [PathBuf],
    now: i64,
    started: Instant,
}

impl Unjudged<'_> {
    /// Ends the run without a verdict: removes the older reports (the gate must not read
    /// an earlier SUCCESS or FAILED as this run's answer), clears the task's validated
    /// revision (staging may run something nobody validated), prints the `no verdict`
    /// line (text or JSON) and returns exit 2. Writes no report.
    fn finish(
        &self,
        args: &StagingCheckArgs,
        internal: &[String],
        checks: Vec<CheckLine>,
        expected: Option<String>,
        settings: &Settings,
    ) -> ExitStatus {
        let u = self.unreadable;
        for e in internal {
            log::error!("staging-check: internal error: {e}");
        }
        log::error!("staging-check: {}: no verdict", u.reason());
        for path in self.targets {
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
        if let Some(db) = self.db {
            let t = self.task;
            match db.clear_validated_revision(t.id, t.round, self.now) {
                Ok(true) => log::warn!(
                    "staging-check: task {} no longer has a validated revision (was {}): this run has no verdict",
                    t.key,
                    t.validated_revision.as_deref().unwrap_or("?")
                ),
                Ok(false) => {}
                Err(e) => log::error!(
                    "staging-check: clearing task {}'s validated revision: {e:#}",
                    t.key
                ),
            }
        }
        let run = NoVerdictRun {
            no_verdict: u.line(),
            checks,
            pr_number: u.pr,
            expected_revision: expected,
            checked_at: jiff::Timestamp::from_second(self.now)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            strict: args.strict,
            tolerance: settings.staging_infra_tolerance_enabled,
            task: Some(self.task.key.clone()),
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&run.render_json()).expect("JSON renders")
            );
        } else {
            print!("{}", run.render_text());
        }
        let report = PassReport::new("staging-check", self.started.elapsed().as_millis())
            .with("checks", run.checks.len())
            .with("verdict", "NONE");
        log::info!("{report}");
        ExitStatus::Error
    }
}

/// Returns whether two paths name the same file (the second may not exist yet).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    if a == b {
        return true;
    }
    let canon = |p: &std::path::Path| -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

enum Planned {
    /// Known without running anything.
    Fixed(Outcome),
    /// A probe to run with its deadline; it yields the outcome and any revision read.
    Run(Deadlined<(Outcome, Option<String>)>),
}

fn append_reason(outcome: &mut Outcome, note: &str) {
    match outcome {
        Outcome::Pass(r) | Outcome::Fail(r) | Outcome::Skip(r) | Outcome::Error(r) => {
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
    let unit = |run: Box<dyn FnOnce() -> (Outcome, Option<String>) + Send>| {
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
                return Planned::Fixed(Outcome::Skip(
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
